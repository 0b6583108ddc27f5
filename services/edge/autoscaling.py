"""Edge autoscaling on live calls, not HTTP requests.

A LiveKit room holds no request open on the edge (the agent runs in a task the dispatch request
left behind), so Serve's default ongoing-requests policy cannot see it. Each edge replica reports
`active_calls` (LiveKit rooms, including ones waiting for their caller, plus WebSocket and Twilio
conversations) through `record_autoscaling_stats`; this policy asks for enough replicas to keep
that at `target_calls_per_replica`. Serve applies min/max replicas and the up/down delays.

    autoscaling_config:
      policy:
        policy_function: services.edge.autoscaling:CallsPerReplica
        policy_kwargs: {target_calls_per_replica: 40}
"""

from __future__ import annotations

import math
from typing import Any

CALLS_METRIC = "active_calls"


class CallsPerReplica:
    def __init__(self, target_calls_per_replica: float = 40):
        if target_calls_per_replica <= 0:
            raise ValueError("target_calls_per_replica must be positive")
        self.target = float(target_calls_per_replica)

    def __call__(self, ctx) -> tuple[int, dict[str, Any]]:
        per_replica = (ctx.aggregated_metrics or {}).get(CALLS_METRIC)
        if not per_replica:  # no report yet (replicas starting): keep what we have
            return ctx.target_num_replicas, ctx.policy_state
        return desired_replicas(sum(per_replica.values()), self.target), ctx.policy_state


def desired_replicas(total_calls: float, target_per_replica: float) -> int:
    return max(1, math.ceil(total_calls / target_per_replica))
