"""Every Kubernetes manifest under cluster/ validates against the schemas of the pinned versions
(Kubernetes built-ins from kubernetes-validate, KubeRay's vendored RayService CRD), and the
validator refuses what the API server or the operator would refuse or silently drop."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import validate_manifests as vm  # noqa: E402

RAYSERVICE = ROOT / "cluster" / "kuberay" / "rayservice.yaml"


def _documents(path: Path) -> list[dict]:
    # A JSON round trip gives every YAML alias its own copy, so a test can change one pod alone.
    return [json.loads(json.dumps(d)) for d in yaml.safe_load_all(path.read_text()) if d]


def _rayservice() -> dict:
    return next(d for d in _documents(RAYSERVICE) if d["kind"] == "RayService")


@pytest.mark.parametrize("path", vm.manifest_files(), ids=lambda p: str(p.relative_to(vm.CLUSTER)))
def test_every_file_under_cluster_validates(path):
    assert vm.file_problems(path) == []


def test_the_manifests_checked_cover_every_kind_shipped():
    kinds = {d["kind"] for path in vm.manifest_files() if path.relative_to(vm.CLUSTER).as_posix() not in vm.NOT_MANIFESTS
             for d in _documents(path)}
    assert {"RayService", "Service", "StatefulSet", "Secret", "PersistentVolumeClaim", "Deployment"} <= kinds


def test_the_vendored_crd_is_the_pinned_release():
    pins = vm.pins()
    folder = vm.SCHEMAS / f"kuberay-v{pins['kuberay']}"
    for name, sha256 in pins["crds"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == sha256
    assert ("ray.io/v1", "RayService") in vm.crd_schemas()
    # The manifest says which operator it is written for: the pinned one.
    assert f"v{pins['kuberay']}" in RAYSERVICE.read_text().split("apiVersion:")[0]


def test_a_misspelt_rayservice_field_fails_though_the_api_server_would_drop_it():
    service = _rayservice()
    service["spec"]["rayClusterDeletionDelaySecond"] = service["spec"].pop("rayClusterDeletionDelaySeconds")
    assert any("rayClusterDeletionDelaySecond" in p for p in vm.document_problems(service))


def test_pod_template_errors_inside_the_rayservice_fail():
    service = _rayservice()
    group = service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    group["template"]["spec"]["containers"][0]["envFrom"] = [{"secretRef": {"nme": "parley-grpc"}}]
    group["template"]["spec"]["terminationGracePeriodSeconds"] = "660"
    problems = vm.document_problems(service)
    assert any(p.startswith("spec.rayClusterConfig.workerGroupSpecs.0.template.spec.containers.0.envFrom.0.secretRef")
               for p in problems)
    assert any("terminationGracePeriodSeconds" in p for p in problems)
    service = _rayservice()
    service["metadata"]["labels"] = {"tier": 3}  # ObjectMeta is checked too
    assert any(p.startswith("metadata.labels.tier") for p in vm.document_problems(service))


def test_builtin_kinds_are_checked_strictly():
    redis = {d["kind"]: d for d in _documents(ROOT / "cluster" / "kuberay" / "redis.yaml")}
    statefulset = redis["StatefulSet"]
    statefulset["spec"]["replicas"] = "one"
    statefulset["spec"]["template"]["spec"]["containers"][0]["envv"] = []
    problems = vm.document_problems(statefulset)
    assert any(p.startswith("spec.replicas") for p in problems)
    assert any("envv" in p for p in problems)
    assert vm.document_problems({"apiVersion": "v1", "kind": "Sekret", "metadata": {"name": "x"}})[0].startswith("no schema")


def test_yaml_that_is_neither_a_manifest_nor_listed_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(vm, "CLUSTER", tmp_path)
    (tmp_path / "extra.yaml").write_text("replicas: 2\n")
    assert "not in NOT_MANIFESTS" in vm.file_problems(tmp_path / "extra.yaml")[0]
    (tmp_path / "versions.yaml").write_text("apiVersion: v1\nkind: Secret\nmetadata: {name: x}\n")
    assert "holds 1 manifest" in vm.file_problems(tmp_path / "versions.yaml")[0]
