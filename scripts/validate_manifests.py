"""Validate every Kubernetes manifest under cluster/ against the schemas of the pinned versions.

    python scripts/validate_manifests.py          exit 1 and list the problems if any manifest fails

Built-in kinds are checked against the Kubernetes JSON schemas that the `kubernetes-validate`
package ships (strict: unknown fields are errors, as `kubectl apply --validate=strict` would
report them), custom resources against the KubeRay CRDs vendored in cluster/schemas/, made strict
the same way (the API server would silently prune an unknown field, so a misspelt
`rayClusterDeletionDelaySeconds` would deploy and do nothing). Versions and CRD hashes are pinned
in cluster/versions.yaml.

Every YAML document under cluster/ that has `apiVersion` and `kind` is a manifest and must
validate (a kind without a schema is an error, not a skip); other YAML files are the configs of
other programs and must be listed in NOT_MANIFESTS, so a manifest cannot slip past unchecked.
CEL rules (`x-kubernetes-validations`) and the operator's own reconcile-time checks are not run
here: only a real cluster proves those (docs/deploy.md).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.resources
import json
import sys
from functools import cache
from pathlib import Path

import jsonschema
import yaml
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
VERSIONS = CLUSTER / "versions.yaml"
SCHEMAS = CLUSTER / "schemas"
_OBJECT_META = "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"

# YAML under cluster/ read by programs other than Kubernetes (relative to cluster/).
NOT_MANIFESTS = frozenset({
    "versions.yaml",                    # the pins above
    "gpu-plans.yaml",                   # services/packing.py
    "launcher/parley-cluster.yaml",     # the Ray cluster launcher (checked by Ray's own schema)
    "livekit/livekit.yaml",             # livekit-server's config
    "observability/docker-compose.yaml",
    "observability/otel-collector.yaml",
    "observability/prometheus.yaml",
    "observability/grafana/provisioning/dashboards/parley.yaml",
    "observability/grafana/provisioning/datasources/parley.yaml",
})


def pins() -> dict:
    """cluster/versions.yaml: the KubeRay and Kubernetes versions and the vendored CRDs' sha256."""
    return yaml.safe_load(VERSIONS.read_text())


@cache
def _k8s_dir(version: str):
    root = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    folder = root / f"v{version}.0-local-strict"
    if not folder.is_dir():
        raise SystemExit(f"kubernetes-validate has no schemas for Kubernetes {version}; pin another in {VERSIONS}")
    return folder


@cache
def _registry(version: str) -> Registry:
    definitions = json.loads((_k8s_dir(version) / "_definitions.json").read_text())
    return Resource.from_contents(definitions) @ Registry()


def _strict(schema):
    """A copy of an OpenAPI v3 CRD schema where objects with declared properties refuse others."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict(value) for key, value in schema.items()}
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@cache
def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> strict JSON schema, from the vendored CRDs of the pinned KubeRay."""
    pinned = pins()
    folder = SCHEMAS / f"kuberay-v{pinned['kuberay']}"
    found = {}
    for name, sha256 in pinned["crds"].items():
        raw = (folder / name).read_bytes()
        if hashlib.sha256(raw).hexdigest() != sha256:
            raise SystemExit(f"{folder / name} is not the file pinned in {VERSIONS} (sha256 differs)")
        crd = yaml.safe_load(raw)
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
            # The CRD leaves metadata open; the API server checks it as ObjectMeta.
            schema["properties"]["metadata"] = {"$ref": _OBJECT_META}
            found[(f"{group}/{version['name']}", kind)] = schema
    return found


def _builtin_schema(api_version: str, kind: str, version: str) -> dict | None:
    group_version = api_version.split("/")
    # apps/v1 -> apps-v1, rbac.authorization.k8s.io/v1 -> rbac-v1, v1 -> v1 (kubernetes-validate's names)
    suffix = group_version[0] if len(group_version) == 1 else f"{group_version[0].split('.')[0]}-{group_version[1]}"
    path = _k8s_dir(version) / f"{kind.lower()}-{suffix}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def document_problems(document: dict, version: str | None = None) -> list[str]:
    """Why one manifest would not validate (empty when it does)."""
    version = version or str(pins()["kubernetes"])
    api_version, kind = document.get("apiVersion"), document.get("kind")
    schema = crd_schemas().get((api_version, kind)) or _builtin_schema(str(api_version), str(kind), version)
    if schema is None:
        return [f"no schema for {kind} {api_version} (Kubernetes {version}, KubeRay {pins()['kuberay']})"]
    validator = jsonschema.Draft202012Validator(schema, registry=_registry(version))
    problems = []
    for error in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(part) for part in error.absolute_path) or "(top)"
        problems.append(f"{where}: {error.message[:300]}")
    return problems


def manifest_files() -> list[Path]:
    """Every YAML file under cluster/ except the vendored schemas."""
    files = [*CLUSTER.rglob("*.yaml"), *CLUSTER.rglob("*.yml")]
    return sorted(path for path in files if SCHEMAS not in path.parents)


def file_problems(path: Path) -> list[str]:
    """Schema problems of every manifest in one file, or why the file is neither a manifest nor listed."""
    relative = path.relative_to(CLUSTER).as_posix()
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    manifests = [d for d in documents if isinstance(d, dict) and "apiVersion" in d and "kind" in d]
    if relative in NOT_MANIFESTS:
        return [f"{relative}: listed as another program's config but holds {len(manifests)} manifest(s)"] if manifests else []
    if not manifests or len(manifests) != len(documents):
        return [f"{relative}: a document without apiVersion/kind (a manifest) and not in NOT_MANIFESTS"]
    problems = []
    for index, document in enumerate(manifests):
        name = f"{document['kind']}/{(document.get('metadata') or {}).get('name', '?')}"
        problems += [f"{relative} [{index}] {name}: {p}" for p in document_problems(document)]
    return problems


def main() -> int:
    problems = [p for path in manifest_files() for p in file_problems(path)]
    pinned = pins()
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{len(manifest_files())} files under cluster/, Kubernetes {pinned['kubernetes']}, KubeRay {pinned['kuberay']}: "
          f"{'FAILED' if problems else 'ok'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
