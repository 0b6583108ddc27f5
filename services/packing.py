"""GPU packing plans (cluster/gpu-plans.yaml): how stage replicas share one GPU, and the checks
that keep a serve config honest about it.

Ray's `num_gpus` only decides placement. A plan is sound when the shares on each GPU of a worker
group add up to at most 1.0 and every engine holds itself to its share: vLLM through
`gpu_memory_utilization`, torch engines through the per-process memory fraction the replica sets
from `num_gpus` (services/common/stage.py), and CTranslate2 (no allocator cap) by a measured peak
that fits. A slotted stage (Moshi) is sized by its slots: its weights plus one KV cache per slot
must fit in its share.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, model_validator

from services.common.config import Config

PLANS_PATH = Path(__file__).resolve().parents[1] / "cluster" / "gpu-plans.yaml"


# Duplex replicas are sized to keep this share of their slots busy, so a new call finds a free one.
DUPLEX_TARGET_OCCUPANCY = 0.75


class StageShare(Config):
    """One stage replica's share of a GPU and how its engine holds itself to it."""

    num_gpus: float = Field(gt=0.0, le=1.0)
    engine_cap: Literal["vllm", "torch", "none"]
    gpu_memory_utilization: float | None = Field(None, gt=0.0, le=1.0)
    # Measured peak use (GB) with headroom; for a slotted engine, what it holds besides the slots.
    expected_gb: float | None = Field(None, gt=0.0)
    # A slotted engine (Moshi): conversations per replica, each with its own KV cache.
    slots: int | None = Field(None, ge=1)
    per_slot_gb: float | None = Field(None, gt=0.0)
    note: str = ""

    @model_validator(mode="after")
    def _cap_is_described(self) -> StageShare:
        if self.engine_cap == "vllm" and self.gpu_memory_utilization is None:
            raise ValueError("a vllm share needs gpu_memory_utilization")
        if self.engine_cap == "none" and self.expected_gb is None:
            raise ValueError("an uncapped engine needs expected_gb (its measured peak)")
        if self.slots is not None and (self.per_slot_gb is None or self.expected_gb is None):
            raise ValueError("a slotted share needs expected_gb (weights) and per_slot_gb (each slot's cache)")
        return self

    def needed_gb(self) -> float | None:
        """The memory this replica needs at most: its measured peak plus every slot's cache."""
        if self.expected_gb is None:
            return None
        return self.expected_gb + (self.slots or 0) * (self.per_slot_gb or 0.0)


class PackingPlan(Config):
    """Shares per stage on one GPU model, and what one GPU of each worker group holds."""

    gpu: str
    memory_gb: float = Field(gt=0.0)
    stages: dict[str, StageShare]
    # Worker group (the RayService's groupName) -> stage -> replicas on each of its GPUs.
    gpus: dict[str, dict[str, int]]

    def problems(self) -> list[str]:
        """Why this plan would oversubscribe a GPU (empty when it is sound)."""
        found = []
        for group, layout in self.gpus.items():
            unknown = set(layout) - set(self.stages)
            if unknown:
                found.append(f"{self.gpu}: group {group} holds stages without a share: {sorted(unknown)}")
                continue
            total = sum(self.stages[stage].num_gpus * replicas for stage, replicas in layout.items())
            if total > 1.0 + 1e-9:
                found.append(f"{self.gpu}: group {group}: shares add up to {total:.2f} of one GPU")
        placed = {stage for layout in self.gpus.values() for stage in layout}
        found += [f"{self.gpu}: {stage} has a share but no GPU holds it" for stage in sorted(set(self.stages) - placed)]
        for stage, share in self.stages.items():
            if share.engine_cap == "vllm" and share.gpu_memory_utilization > share.num_gpus:
                found.append(f"{self.gpu}: {stage} gpu_memory_utilization {share.gpu_memory_utilization} "
                             f"exceeds its share {share.num_gpus}")
            needed = share.needed_gb()
            if needed is not None and needed > share.num_gpus * self.memory_gb + 1e-9:
                found.append(f"{self.gpu}: {stage} needs ~{needed:.1f} GB but its share is "
                             f"{share.num_gpus * self.memory_gb:.1f} GB")
        return found


def load_plans(path: Path = PLANS_PATH) -> dict[str, PackingPlan]:
    """Every plan in cluster/gpu-plans.yaml, validated."""
    data = yaml.safe_load(Path(path).read_text())
    return {name: PackingPlan.model_validate(plan) for name, plan in data["plans"].items()}


def _gpu_deployments(config: dict):
    """(application, deployment) of every deployment in a serve config that takes GPU."""
    for app in config["applications"]:
        for deployment in app.get("deployments", []):
            if ((deployment.get("ray_actor_options") or {}).get("num_gpus") or 0) > 0:
                yield app, deployment


def duplex_target(slots: int) -> int:
    """The autoscaling target (live calls per replica) of a slotted stage with this many slots."""
    return max(1, int(slots * DUPLEX_TARGET_OCCUPANCY))


def apply_plan(config: dict, plan: PackingPlan) -> dict:
    """A copy of a serve config with the plan's GPU shares, engine caps and slot counts
    (applications are matched to plan stages by name; each must have a share)."""
    config = copy.deepcopy(config)
    for app, deployment in _gpu_deployments(config):
        share = plan.stages.get(app["name"])
        if share is None:
            raise ValueError(f"plan for {plan.gpu} has no share for the GPU application {app['name']!r}")
        deployment["ray_actor_options"]["num_gpus"] = share.num_gpus
        engine = (app.get("args") or {}).get("engine") or {}
        if share.engine_cap == "vllm":
            engine["gpu_memory_utilization"] = share.gpu_memory_utilization
        if share.slots is not None:
            engine["slots"] = share.slots
            if "autoscaling_config" in deployment:
                deployment["autoscaling_config"]["target_ongoing_requests"] = duplex_target(share.slots)
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
        if share.slots is not None:
            if engine.get("slots") != share.slots:
                found.append(f"{name}: {engine.get('slots')} slots but the plan sizes its share for {share.slots}")
            target = (deployment.get("autoscaling_config") or {}).get("target_ongoing_requests")
            if target is not None and target > share.slots:
                found.append(f"{name}: target_ongoing_requests {target} exceeds its {share.slots} slots")
    return found
