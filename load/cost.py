"""What a conversation-minute costs, from measured concurrency and hourly prices.

    python load/cost.py --conversations-per-gpu 40 --gpu-hourly 2.50 \\
        --edge-conversations-per-node 200 --edge-node-hourly 0.70 [--utilization 0.6]

A GPU running the packing plan (docs/gpu-packing.md) holds N conversations at once within the
latency target (measured with load/loadgen.py, docs/benchmarks.md): one GPU-hour then serves
N x 60 conversation-minutes. The edge's CPU nodes add their price over the calls each holds.
`--utilization` is the fleet's average load over its peak: autoscaling follows demand, but
replicas that wait for calls still cost money. Measured per replica set instead of per GPU
(a set of asr + llm + tts replicas taking F GPUs)? Pass --conversations-per-replica-set and
--gpus-per-replica-set.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

# Reference prices per conversation-minute (late 2025): self-hosted open-model voice stacks in the
# field, and proprietary realtime speech-to-speech APIs.
OPEN_STACK_PER_MIN = 0.18
PROPRIETARY_PER_MIN = 0.50


@dataclass(frozen=True)
class CostInputs:
    conversations_per_gpu: float
    gpu_hourly: float
    edge_conversations_per_node: float = 0.0  # 0: the edge runs on the GPU nodes (no CPU nodes)
    edge_node_hourly: float = 0.0
    utilization: float = 1.0  # average load / peak load over the billing period

    def __post_init__(self) -> None:
        if self.conversations_per_gpu <= 0:
            raise ValueError("conversations_per_gpu must be > 0 (measure it with load/loadgen.py)")
        if self.gpu_hourly < 0 or self.edge_node_hourly < 0:
            raise ValueError("prices cannot be negative")
        if not 0 < self.utilization <= 1:
            raise ValueError("utilization must be in (0, 1]")
        if self.edge_node_hourly > 0 and self.edge_conversations_per_node <= 0:
            raise ValueError("an edge node price needs edge_conversations_per_node > 0")


@dataclass(frozen=True)
class CostBreakdown:
    gpu_per_min: float
    edge_per_min: float

    @property
    def per_min(self) -> float:
        return self.gpu_per_min + self.edge_per_min

    @property
    def per_hour_of_talk(self) -> float:
        return self.per_min * 60


def conversations_per_gpu(per_replica_set: float, gpus_per_replica_set: float) -> float:
    """Concurrency per GPU from a measurement on one replica set that takes a fraction (or several) of GPUs."""
    if per_replica_set <= 0 or gpus_per_replica_set <= 0:
        raise ValueError("both the concurrency and the GPUs per replica set must be > 0")
    return per_replica_set / gpus_per_replica_set


def cost_per_minute(inputs: CostInputs) -> CostBreakdown:
    """$ per conversation-minute: each resource's hourly price over the conversation-minutes it
    serves in that hour (concurrency x 60), scaled up by the idle share (1 / utilization)."""
    gpu = inputs.gpu_hourly / (inputs.conversations_per_gpu * 60) / inputs.utilization
    edge = 0.0
    if inputs.edge_node_hourly:
        edge = inputs.edge_node_hourly / (inputs.edge_conversations_per_node * 60) / inputs.utilization
    return CostBreakdown(gpu_per_min=gpu, edge_per_min=edge)


def report(inputs: CostInputs, cost: CostBreakdown) -> str:
    lines = [
        f"GPU:  ${inputs.gpu_hourly:.2f}/h over {inputs.conversations_per_gpu:g} conversations "
        f"-> ${cost.gpu_per_min:.4f}/conversation-minute",
    ]
    if inputs.edge_node_hourly:
        lines.append(f"edge: ${inputs.edge_node_hourly:.2f}/h over {inputs.edge_conversations_per_node:g} conversations "
                     f"-> ${cost.edge_per_min:.4f}/conversation-minute")
    if inputs.utilization < 1:
        lines.append(f"(at {inputs.utilization:.0%} average utilization of the provisioned capacity)")
    lines += [
        f"total: ${cost.per_min:.4f} per conversation-minute (${cost.per_hour_of_talk:.2f} per hour of talk)",
        f"  vs open-model stacks in the field  ${OPEN_STACK_PER_MIN:.2f}/min: {cost.per_min / OPEN_STACK_PER_MIN:.1%} of it",
        f"  vs proprietary realtime APIs       ${PROPRIETARY_PER_MIN:.2f}/min: {cost.per_min / PROPRIETARY_PER_MIN:.1%} of it",
        f"break-even concurrency per GPU vs ${OPEN_STACK_PER_MIN:.2f}/min: "
        f"{break_even_concurrency(inputs, OPEN_STACK_PER_MIN):.1f} conversations",
    ]
    return "\n".join(lines)


def break_even_concurrency(inputs: CostInputs, price_per_min: float) -> float:
    """Conversations per GPU at which this deployment costs `price_per_min` (inf if the edge alone costs more)."""
    edge = cost_per_minute(CostInputs(1.0, 0.0, inputs.edge_conversations_per_node, inputs.edge_node_hourly,
                                      inputs.utilization)).edge_per_min
    budget = price_per_min - edge
    if budget <= 0:
        return float("inf")
    return inputs.gpu_hourly / (budget * 60 * inputs.utilization)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    measured = parser.add_mutually_exclusive_group(required=True)
    measured.add_argument("--conversations-per-gpu", type=float)
    measured.add_argument("--conversations-per-replica-set", type=float)
    parser.add_argument("--gpus-per-replica-set", type=float, default=1.0,
                        help="GPUs one asr+llm+tts replica set takes (the sum of its num_gpus shares)")
    parser.add_argument("--gpu-hourly", type=float, required=True, help="$ per GPU-hour")
    parser.add_argument("--edge-conversations-per-node", type=float, default=0.0)
    parser.add_argument("--edge-node-hourly", type=float, default=0.0, help="$ per CPU node-hour for the edge")
    parser.add_argument("--utilization", type=float, default=1.0)
    args = parser.parse_args(argv)
    per_gpu = args.conversations_per_gpu
    if per_gpu is None:
        per_gpu = conversations_per_gpu(args.conversations_per_replica_set, args.gpus_per_replica_set)
    try:
        inputs = CostInputs(per_gpu, args.gpu_hourly, args.edge_conversations_per_node, args.edge_node_hourly,
                            args.utilization)
    except ValueError as error:
        parser.error(str(error))
    print(report(inputs, cost_per_minute(inputs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
