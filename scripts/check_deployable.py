"""Check that the RayService can run what its serve config asks for, before a cluster tries.

    python scripts/check_deployable.py            exit 1 and list the problems

The schemas (scripts/validate_manifests.py) say a manifest is well formed; this says it is
deployable as shipped:
- every application has a worker group (and a launcher node type) whose resources fit its deployments (GPUs, custom
  resources such as parley_moshi) and whose image installs the extras the application imports;
- every pod gets, through `envFrom` Secrets, the variables the edge and the stages read (edge
  token secret, gRPC token, LiveKit settings when LiveKit is on; Twilio's may be optional), and
  each Secret it names exists (with those keys) among the example Secrets under cluster/;
- every pod sets the autoscaling metric push intervals to 2 s and the gRPC ingress's 4 MiB message limit;
- GCS fault tolerance points at a Redis Service and a password Secret defined under cluster/;
- a new-cluster upgrade keeps the old cluster at least as long as the longest replica drain.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from functools import cache
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from validate_manifests import manifest_files  # noqa: E402

from services.cluster import INGRESS_ENV  # noqa: E402

CLUSTER = ROOT / "cluster"
IMAGES = CLUSTER / "images"
# What every node's environment must set: the autoscaling push intervals, the ingress limits.
NODE_ENV = {"RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "2",
            "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "2", **INGRESS_ENV}
_SERVE_DEFAULT_GRACEFUL_S = 20  # Serve's default graceful_shutdown_timeout_s


def image_extras(image: str) -> set[str] | None:
    """The package extras an image built from cluster/images installs, its parents' included."""
    path = IMAGES / f"{image.split(':')[0].removeprefix('parley-')}.Dockerfile"
    if not path.is_file():
        return None
    text = path.read_text()
    extras = {e.strip() for group in re.findall(r"\"\.\[([^\]]+)\]\"", text) for e in group.split(",")}
    parent = re.search(r"ARG BASE_IMAGE=(\S+)", text)
    return extras | (image_extras(parent.group(1)) or set() if parent else set())


def needed_extras(app: dict) -> set[str]:
    """The extras an application imports: its stage's (asr, llm, tts, moshi), plus vLLM's."""
    stage = app["import_path"].split(".")[1]
    if stage == "edge":
        return set()  # the edge needs only the core package
    engine = (app.get("args") or {}).get("engine") or {}
    return {stage} | ({"llm-vllm"} if engine.get("kind") == "vllm" else set())


def _groups(cluster: dict) -> list[tuple[str, dict, bool]]:
    head = cluster["headGroupSpec"]
    out = [("head", head, head.get("rayStartParams", {}).get("num-cpus") == "0")]
    return out + [(g["groupName"], g, False) for g in cluster.get("workerGroupSpecs", [])]


def _container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]


def group_resources(group: dict) -> dict[str, float]:
    """What Ray sees on one pod of a group: GPUs from the container limit, custom resources."""
    limits = _container(group).get("resources", {}).get("limits", {})
    found = {"GPU": float(limits.get("nvidia.com/gpu", 0))}
    found.update({k: float(v) for k, v in (group.get("resources") or {}).items()})
    return found


@cache
def _cluster_documents() -> tuple[dict, ...]:
    """Every manifest under cluster/ (not the vendored schemas), parsed once."""
    return tuple(doc for path in manifest_files() for doc in yaml.safe_load_all(path.read_text())
                 if isinstance(doc, dict) and "kind" in doc)


def _example_secrets() -> dict[str, set[str]]:
    return {doc["metadata"]["name"]: set(doc.get("stringData") or {}) | set(doc.get("data") or {})
            for doc in _cluster_documents() if doc["kind"] == "Secret"}


def _services() -> dict[str, set[int]]:
    return {doc["metadata"]["name"]: {p["port"] for p in doc["spec"].get("ports", [])}
            for doc in _cluster_documents() if doc["kind"] == "Service"}


def required_env(serve_config: dict) -> tuple[set[str], set[str]]:
    """(variables every pod must get, variables it may get) from the typed configs of the apps."""
    from services.common.rpc import GRPC_TOKEN_ENV

    required, optional = {GRPC_TOKEN_ENV}, set()
    for app in serve_config["applications"]:
        if app["import_path"].split(".")[1] != "edge":
            continue
        module, name = app["import_path"].split(":")
        builder = getattr(importlib.import_module(module), name)
        args_type = next(iter(inspect.signature(builder).parameters.values())).annotation
        if isinstance(args_type, str):
            args_type = builder.__globals__[args_type]
        edge = args_type.model_validate(app.get("args") or {})
        required.add(edge.auth.secret_env)
        if edge.livekit.enabled:
            required |= {edge.livekit.url_env, edge.livekit.api_key_env, edge.livekit.api_secret_env}
        optional.add(edge.twilio.auth_token_env)
    return required, optional


def _placement_problems(cluster: dict, serve_config: dict) -> list[str]:
    problems = []
    groups = [(name, group) for name, group, no_replicas in _groups(cluster) if not no_replicas]
    for app, needs, asks in _placements(serve_config):
        fits = [name for name, group in groups
                if all(group_resources(group).get(k, 0.0) >= v for k, v in asks.items() if v > 0)
                and needs <= (image_extras(_container(group)["image"]) or set())]
        if not fits:
            problems.append(f"{app}: no worker group has {asks} and an image with the extras {sorted(needs)}")
    return problems


def _placements(serve_config: dict):
    """(application, the extras its image needs, the resources a replica asks for) per deployment."""
    for app in serve_config["applications"]:
        needs = needed_extras(app)
        for deployment in app.get("deployments", []):
            options = deployment.get("ray_actor_options") or {}
            asks = {"GPU": float(options.get("num_gpus") or 0)}
            asks.update({k: float(v) for k, v in (options.get("resources") or {}).items()})
            yield app["name"], needs, asks


def _env_problems(cluster: dict, serve_config: dict) -> list[str]:
    problems, secrets = [], _example_secrets()
    required, optional = required_env(serve_config)
    for name, group, _ in _groups(cluster):
        container = _container(group)
        provided, maybe = set(), set()
        for source in container.get("envFrom") or []:
            ref = source.get("secretRef")
            if not ref:
                continue
            keys = secrets.get(ref["name"])
            if keys is None:
                problems.append(f"{name}: envFrom Secret {ref['name']} is not defined under cluster/")
                continue
            (maybe if ref.get("optional") else provided).update(keys)
        problems += [f"{name}: no envFrom Secret provides {var}" for var in sorted(required - provided)]
        problems += [f"{name}: no envFrom Secret provides {var}" for var in sorted(optional - provided - maybe)]
        env = {e["name"]: e.get("value") for e in container.get("env") or []}
        problems += [f"{name}: env {var} is {env.get(var)!r}, not {value!r}"
                     for var, value in NODE_ENV.items() if env.get(var) != value]
    return problems


def _upgrade_problems(spec: dict, serve_config: dict) -> list[str]:
    problems = []
    cluster = spec["rayClusterConfig"]
    ft = cluster.get("gcsFaultToleranceOptions")
    if not ft or not ft.get("redisAddress"):
        problems.append("no GCS fault tolerance (rayClusterConfig.gcsFaultToleranceOptions.redisAddress)")
    else:
        host, _, port = ft["redisAddress"].removeprefix("redis://").partition(":")
        if int(port or 6379) not in _services().get(host.split(".")[0], set()):
            problems.append(f"GCS fault tolerance: no Service {host} with port {port or 6379} under cluster/")
        ref = ((ft.get("redisPassword") or {}).get("valueFrom") or {}).get("secretKeyRef")
        if not ref or ref["key"] not in _example_secrets().get(ref["name"], set()):
            problems.append("GCS fault tolerance: the Redis password is not a secretKeyRef to a Secret under cluster/")
    drains = [d.get("graceful_shutdown_timeout_s", _SERVE_DEFAULT_GRACEFUL_S)
              for app in serve_config["applications"] for d in app.get("deployments", [])]
    strategy = (spec.get("upgradeStrategy") or {}).get("type", "NewCluster")
    delay = spec.get("rayClusterDeletionDelaySeconds", 60)  # KubeRay's default
    if strategy not in ("NewCluster", "NewClusterWithIncrementalUpgrade"):
        # The operator refuses unknown types; None never rolls out a changed cluster spec.
        problems.append(f"upgradeStrategy {strategy}: a changed cluster spec would not be rolled out to a new cluster")
    elif delay < max(drains):
        problems.append(f"rayClusterDeletionDelaySeconds {delay} is shorter than the longest drain ({max(drains)} s)")
    return problems


def launcher_problems(launcher: dict, serve_config: dict) -> list[str]:
    """The same placement and environment checks for the Ray cluster launcher's node types."""
    problems = []
    default_image = launcher["docker"]["image"]
    types = {name: t for name, t in launcher["available_node_types"].items()
             if name != launcher["head_node_type"] and t.get("max_workers", 0) > 0}
    for app, needs, asks in _placements(serve_config):
        if not any(all(float(t["resources"].get(k, 0)) >= v for k, v in asks.items() if v > 0)
                   and needs <= (image_extras((t.get("docker") or {}).get("worker_image", default_image)) or set())
                   for t in types.values()):
            problems.append(f"launcher: {app}: no node type has {asks} and an image with {sorted(needs)}")
    passed = {}
    for option in launcher["docker"].get("run_options", []):
        name, _, value = option.removeprefix("-e ").partition("=")
        if option.startswith("-e "):
            passed[name] = value or None
    required, optional = required_env(serve_config)
    problems += [f"launcher: {var} is not passed into the containers" for var in sorted((required | optional) - set(passed))]
    problems += [f"launcher: {var} is {passed.get(var)!r}, not {value!r}"
                 for var, value in NODE_ENV.items() if passed.get(var) != value]
    return problems


def deployability_problems(manifest: dict, serve_config: dict) -> list[str]:
    """Everything that would keep the RayService from running its serve config as shipped."""
    spec = manifest["spec"]
    cluster = spec["rayClusterConfig"]
    return (_placement_problems(cluster, serve_config) + _env_problems(cluster, serve_config)
            + _upgrade_problems(spec, serve_config))


def main() -> int:
    path = CLUSTER / "kuberay" / "rayservice.yaml"
    manifest = next(d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "RayService")
    problems = deployability_problems(manifest, yaml.safe_load(manifest["spec"]["serveConfigV2"]))
    launcher = CLUSTER / "launcher" / "parley-cluster.yaml"
    problems += launcher_problems(yaml.safe_load(launcher.read_text()), yaml.safe_load((ROOT / "serve_config.yaml").read_text()))
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{path.relative_to(ROOT)}, {launcher.relative_to(ROOT)}: {'NOT deployable' if problems else 'deployable'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
