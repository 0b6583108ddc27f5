"""GPU packing plans (cluster/gpu-plans.yaml): how stage replicas share one GPU, and the checks
that keep a serve config honest about it.

Ray's `num_gpus` only decides placement. A plan is sound when the shares on one GPU add up to at
most 1.0 and every engine holds itself to its share: vLLM through `gpu_memory_utilization`,
torch engines through the per-process memory fraction the replica sets from `num_gpus`
(services/common/stage.py), and CTranslate2 (no allocator cap) by a measured peak that fits.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, model_validator

from services.common.config import Config

PLANS_PATH = Path(__file__).resolve().parents[1] / "cluster" / "gpu-plans.yaml"


class StageShare(Config):
    num_gpus: float = Field(gt=0.0, le=1.0)
    replicas_per_gpu: int = Field(1, ge=1)
    engine_cap: Literal["vllm", "torch", "none"]
    gpu_memory_utilization: float | None = Field(None, gt=0.0, le=1.0)
    expected_gb: float | None = Field(None, gt=0.0)
    note: str = ""

    @model_validator(mode="after")
    def _cap_is_described(self) -> "StageShare":
        if self.engine_cap == "vllm" and self.gpu_memory_utilization is None:
            raise ValueError("a vllm share needs gpu_memory_utilization")
        if self.engine_cap == "none" and self.expected_gb is None:
            raise ValueError("an uncapped engine needs expected_gb (its measured peak)")
        return self


class PackingPlan(Config):
    gpu: str
    memory_gb: float = Field(gt=0.0)
    stages: dict[str, StageShare]

    def problems(self) -> list[str]:
        """Why this plan would oversubscribe its GPU (empty when it is sound)."""
        found = []
        total = sum(share.num_gpus * share.replicas_per_gpu for share in self.stages.values())
        if total > 1.0 + 1e-9:
            found.append(f"{self.gpu}: shares add up to {total:.2f} of one GPU")
        for stage, share in self.stages.items():
            if share.engine_cap == "vllm" and share.gpu_memory_utilization > share.num_gpus:
                found.append(f"{self.gpu}: {stage} gpu_memory_utilization {share.gpu_memory_utilization} "
                             f"exceeds its share {share.num_gpus}")
            if share.engine_cap == "none" and share.expected_gb > share.num_gpus * self.memory_gb:
                found.append(f"{self.gpu}: {stage} needs ~{share.expected_gb} GB but its share is "
                             f"{share.num_gpus * self.memory_gb:.1f} GB")
        return found


def load_plans(path: Path = PLANS_PATH) -> dict[str, PackingPlan]:
    data = yaml.safe_load(Path(path).read_text())
    return {name: PackingPlan.model_validate(plan) for name, plan in data["plans"].items()}


def _gpu_deployments(config: dict):
    """(application, deployment) of every deployment in a serve config that shares a GPU. One that
    takes whole GPUs (Moshi: all its slots step together) is not packed with the others."""
    for app in config["applications"]:
        for deployment in app.get("deployments", []):
            if 0 < ((deployment.get("ray_actor_options") or {}).get("num_gpus") or 0) < 1:
                yield app, deployment


def apply_plan(config: dict, plan: PackingPlan) -> dict:
    """A copy of a serve config with the plan's GPU shares and engine caps (applications are
    matched to plan stages by name; each must have a share)."""
    config = copy.deepcopy(config)
    for app, deployment in _gpu_deployments(config):
        share = plan.stages.get(app["name"])
        if share is None:
            raise ValueError(f"plan for {plan.gpu} has no share for the GPU application {app['name']!r}")
        deployment["ray_actor_options"]["num_gpus"] = share.num_gpus
        engine = (app.get("args") or {}).get("engine") or {}
        if share.engine_cap == "vllm":
            engine["gpu_memory_utilization"] = share.gpu_memory_utilization
    return config


def config_problems(config: dict, plan: PackingPlan) -> list[str]:
    """Where a serve config departs from a plan, or lets an engine outgrow its share."""
    found = list(plan.problems())
    for app, deployment in _gpu_deployments(config):
        name, fraction = app["name"], deployment["ray_actor_options"]["num_gpus"]
        share = plan.stages.get(name)
        if share is None:
            found.append(f"{name}: takes {fraction} of a GPU but the plan has no share for it")
            continue
        if fraction != share.num_gpus:
            found.append(f"{name}: num_gpus {fraction} but the plan says {share.num_gpus}")
        engine = (app.get("args") or {}).get("engine") or {}
        if engine.get("kind") == "vllm":
            if share.engine_cap != "vllm":
                found.append(f"{name}: a vLLM engine but the plan caps it as {share.engine_cap!r}")
            utilization = engine.get("gpu_memory_utilization")
            if utilization is None or utilization > fraction:
                found.append(f"{name}: vLLM gpu_memory_utilization {utilization} is not within its share {fraction}")
    return found
