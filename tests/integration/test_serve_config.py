"""serve_config.yaml (production) and serve_config.cpu.yaml (embedded default) are valid, and
the production GPU fractions pack onto a GPU as planned (on a cluster with one fake GPU)."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from services.common.rpc import SERVICER_FUNCTIONS

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = [ROOT / "serve_config.yaml", ROOT / "serve_config.cpu.yaml"]


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_matches_serve_schema_and_typed_args(path):
    config = load(path)
    ServeDeploySchema.model_validate(config)
    assert config["grpc_options"]["grpc_servicer_functions"] == list(SERVICER_FUNCTIONS)
    for function in SERVICER_FUNCTIONS:
        module, name = function.rsplit(".", 1)
        assert callable(getattr(importlib.import_module(module), name))
    for app in config["applications"]:
        # Serve's gRPC proxy only routes to applications that have a route prefix.
        assert app["route_prefix"] == ("/" if app["name"] == "edge" else f"/{app['name']}")
        module, name = app["import_path"].split(":")
        builder = getattr(importlib.import_module(module), name)
        args_type = next(iter(inspect.signature(builder).parameters.values())).annotation
        if isinstance(args_type, str):
            args_type = builder.__globals__[args_type]
        args_type.model_validate(app["args"])  # the same validation Serve runs at deploy time


def test_typed_args_reject_unknown_keys():
    from services.asr.config import ASRConfig

    with pytest.raises(ValueError, match="beam_sise"):
        ASRConfig.model_validate({"beam_sise": 3})


def gpu_plan() -> list[tuple[str, float, int]]:
    plan = []
    for app in load(ROOT / "serve_config.yaml")["applications"]:
        for deployment in app["deployments"]:
            num_gpus = deployment["ray_actor_options"].get("num_gpus")
            if not num_gpus or num_gpus >= 1 or deployment["ray_actor_options"].get("resources"):
                continue  # CPU-only (the edge), or on a worker group of its own (moshi): not packed here
            replicas = deployment.get("autoscaling_config", {}).get("min_replicas", deployment.get("num_replicas", 1))
            plan.append((app["name"], deployment["ray_actor_options"]["num_gpus"], replicas))
    return plan


@pytest.mark.cluster
async def test_gpu_fractions_pack_onto_one_gpu_as_planned(ray_client):
    from ray import serve

    @serve.deployment(ray_actor_options={"num_cpus": 0.01})
    class GpuProbe:
        def where(self) -> tuple[str, float]:
            import ray

            return os.environ.get("CUDA_VISIBLE_DEVICES", ""), ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0)

    plan = gpu_plan()
    assert sum(fraction * replicas for _, fraction, replicas in plan) <= 1.0
    try:
        for name, fraction, replicas in plan:
            app = GpuProbe.options(num_replicas=replicas, ray_actor_options={"num_cpus": 0.01, "num_gpus": fraction})
            serve.run(app.bind(), name=f"gpu-{name}", route_prefix=None)
            placements = {await serve.get_app_handle(f"gpu-{name}").where.remote() for _ in range(4 * replicas)}
            assert placements == {("0", fraction)}
        # One more replica of the largest share no longer fits: it stays pending.
        name, fraction, _ = max(plan, key=lambda entry: entry[1])
        extra = GpuProbe.options(num_replicas=1, ray_actor_options={"num_cpus": 0.01, "num_gpus": fraction})
        serve._run(extra.bind(), name="gpu-overflow", route_prefix=None, _blocking=False)
        await asyncio.sleep(8)
        status = serve.status().applications["gpu-overflow"]
        assert status.status != "RUNNING"
        replicas = status.deployments["GpuProbe"].replica_states
        assert replicas.get("RUNNING", 0) == 0 and sum(replicas.values()) == 1
    finally:
        for name, *_ in plan:
            serve.delete(f"gpu-{name}", _blocking=False)
        serve.delete("gpu-overflow", _blocking=False)
