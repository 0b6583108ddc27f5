"""The RayService rendered from serve_config.yaml, and the VM launcher, can run every application
as shipped: a worker group and an image for each, secrets and env in every pod, GCS fault
tolerance, and an upgrade that outlasts the longest drain. Each check is shown to fail."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import check_deployable as cd  # noqa: E402
import render_rayservice  # noqa: E402

LAUNCHER = ROOT / "cluster" / "launcher" / "parley-cluster.yaml"


def _fresh(document):
    # A JSON round trip gives every YAML alias (the pods' shared env) its own copy.
    return json.loads(json.dumps(document))


def rendered(plan: str | None = None) -> tuple[dict, dict]:
    """The RayService as render_rayservice writes it, and the serve config inside it."""
    manifest = next(d for d in yaml.safe_load_all(render_rayservice.render(plan)) if d and d["kind"] == "RayService")
    return _fresh(manifest), yaml.safe_load(manifest["spec"]["serveConfigV2"])


def _groups(manifest: dict) -> dict[str, dict]:
    return {g["groupName"]: g for g in manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]}


def _container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("plan", [None, "l4", "h100", "h200"])
def test_the_rendered_rayservice_is_deployable(plan):
    manifest, config = rendered(plan)
    assert {app["name"] for app in config["applications"]} == {"asr", "llm", "tts", "moshi", "edge"}
    assert cd.deployability_problems(manifest, config) == []


def test_the_launcher_is_deployable():
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    assert cd.launcher_problems(yaml.safe_load(LAUNCHER.read_text()), config) == []


def test_images_provide_what_their_groups_run():
    assert cd.image_extras("parley-base:0.1.0") >= {"asr", "tts"}
    assert "llm-vllm" in cd.image_extras("parley-llm:0.1.0") and "moshi" not in cd.image_extras("parley-llm:0.1.0")
    assert cd.image_extras("parley-moshi:0.1.0") >= {"asr", "tts", "llm", "llm-vllm", "moshi"}
    assert cd.image_extras("parley-nope:1") is None


def test_a_missing_moshi_group_or_image_fails():
    manifest, config = rendered()
    groups = _groups(manifest)
    manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"] = [g for name, g in groups.items() if name != "moshi"]
    assert [p for p in cd.deployability_problems(manifest, config) if p.startswith("moshi:")]
    manifest, config = rendered()
    _container(_groups(manifest)["moshi"])["image"] = "parley-llm:0.1.0"  # no Moshi in it
    assert [p for p in cd.deployability_problems(manifest, config) if p.startswith("moshi:")]
    manifest, config = rendered()
    del _groups(manifest)["moshi"]["resources"]  # Moshi replicas would find no node
    assert [p for p in cd.deployability_problems(manifest, config) if p.startswith("moshi:")]


def test_an_llm_on_vllm_needs_a_gpu_group_with_vllm():
    manifest, config = rendered()
    for group in _groups(manifest).values():
        if _container(group)["image"].startswith(("parley-llm", "parley-moshi")):
            _container(group)["image"] = "parley-base:0.1.0"
    problems = cd.deployability_problems(manifest, config)
    assert any(p.startswith("llm:") and "llm-vllm" in p for p in problems)
    assert any(p.startswith("moshi:") for p in problems)


def test_a_pod_without_a_secret_fails():
    manifest, config = rendered()
    edge = _container(_groups(manifest)["edge"])
    edge["envFrom"] = [s for s in edge["envFrom"] if s["secretRef"]["name"] != "parley-grpc"]
    assert cd.deployability_problems(manifest, config) == ["edge: no envFrom Secret provides PARLEY_GRPC_TOKEN"]
    manifest, config = rendered()
    head = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head["envFrom"] = [s for s in head["envFrom"] if s["secretRef"]["name"] != "parley-edge"]
    assert cd.deployability_problems(manifest, config) == ["head: no envFrom Secret provides PARLEY_EDGE_SECRET"]
    manifest, config = rendered()
    _container(_groups(manifest)["gpu"])["envFrom"][0]["secretRef"]["name"] = "parley-edge-typo"
    assert "gpu: envFrom Secret parley-edge-typo is not defined under cluster/" in cd.deployability_problems(manifest, config)


def test_livekit_secrets_are_required_only_while_livekit_is_on():
    manifest, config = rendered()
    for group in _groups(manifest).values():
        _container(group)["envFrom"] = [s for s in _container(group)["envFrom"] if s["secretRef"]["name"] != "parley-livekit"]
    assert any("LIVEKIT_API_SECRET" in p for p in cd.deployability_problems(manifest, config))
    edge = next(app for app in config["applications"] if app["name"] == "edge")
    edge["args"]["livekit"]["enabled"] = False
    assert not any("LIVEKIT" in p for p in cd.deployability_problems(manifest, config))


def test_push_intervals_must_be_two_seconds_in_every_pod():
    manifest, config = rendered()
    env = _container(_groups(manifest)["moshi"])["env"]
    next(e for e in env if e["name"] == "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S")["value"] = "10"
    assert cd.deployability_problems(manifest, config) == [
        "moshi: env RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S is '10', not '2'"]


def test_gcs_fault_tolerance_and_upgrade_delay_are_required():
    manifest, config = rendered()
    del manifest["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert any("no GCS fault tolerance" in p for p in cd.deployability_problems(manifest, config))
    manifest, config = rendered()
    manifest["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]["redisAddress"] = "redis:6379"
    assert any("no Service redis" in p for p in cd.deployability_problems(manifest, config))
    manifest, config = rendered()
    del manifest["spec"]["rayClusterDeletionDelaySeconds"]  # KubeRay's default, 60 s
    assert cd.deployability_problems(manifest, config) == [
        "rayClusterDeletionDelaySeconds 60 is shorter than the longest drain (900 s)"]
    manifest, config = rendered()
    manifest["spec"]["upgradeStrategy"]["type"] = "None"  # the CRD takes any string; the operator does not
    assert any(p.startswith("upgradeStrategy None") for p in cd.deployability_problems(manifest, config))
    # The delay follows the serve config: a longer edge drain needs a longer delay.
    manifest, config = rendered()
    edge = next(app for app in config["applications"] if app["name"] == "edge")
    edge["deployments"][0]["graceful_shutdown_timeout_s"] = 1200
    assert any("shorter than the longest drain (1200 s)" in p for p in cd.deployability_problems(manifest, config))


def test_the_launcher_checks_fail_on_a_missing_node_type_or_variable():
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    launcher = yaml.safe_load(LAUNCHER.read_text())
    del launcher["available_node_types"]["gpu_moshi"]
    launcher["docker"]["run_options"].remove("-e PARLEY_GRPC_TOKEN")
    problems = cd.launcher_problems(launcher, config)
    assert any(p.startswith("launcher: moshi:") for p in problems)
    assert "launcher: PARLEY_GRPC_TOKEN is not passed into the containers" in problems


def test_render_refuses_to_write_an_undeployable_manifest(monkeypatch, capsys):
    monkeypatch.setattr(render_rayservice, "deployability_problems", lambda manifest, config: ["edge: broken"])
    monkeypatch.setattr(sys, "argv", ["render_rayservice.py", "--check"])
    assert render_rayservice.main() == 1
    assert "edge: broken" in capsys.readouterr().err
