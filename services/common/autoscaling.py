"""Autoscaling that follows conversations: the signals stage replicas report and the policy that reads them.

Serve's default policy scales on ongoing requests. For the stages that hold one stream per call
(ASR, Moshi), ongoing requests *are* live conversations, and the default with a
`target_ongoing_requests` of the sessions a replica holds comfortably is the right signal. The
edge uses `SessionAutoscalingPolicy` on its live calls, because a LiveKit room holds no request. For
the compute-bound stages (TTS per agent turn, LLM per turn) a replica is full when work starts
to wait for its engine, whatever the stream count, so `SessionAutoscalingPolicy` adds queue
wait: scale up one replica at a time while the recent queue wait exceeds its bound, scale down
only while both the sessions and the wait leave room.

Each replica reports (StageDeployment.record_autoscaling_stats):
  sessions      live streams/RPCs on the replica
  queue_wait_s  p95 of its engine's queue wait over the last few seconds (0 when idle)

    autoscaling_config:
      policy:
        policy_function: services.common.autoscaling:SessionAutoscalingPolicy
        policy_kwargs: {target_sessions: 16, max_queue_wait_s: 0.15}

Serve applies min/max replicas and the upscale/downscale delays around the policy. A replica
chosen for removal stops taking new streams and drains its live ones for up to
`graceful_shutdown_timeout_s`, which the configs set longer than a call.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Any

SESSIONS = "sessions"
QUEUE_WAIT = "queue_wait_s"


class RecentWaits:
    """Queue waits of the last `window_s` seconds, for a replica's autoscaling report (bounded)."""

    def __init__(self, window_s: float = 10.0, max_samples: int = 4096):
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self._lock = threading.Lock()  # written from engine worker threads too

    def add(self, seconds: float, now: float | None = None) -> None:
        with self._lock:
            self._samples.append((time.monotonic() if now is None else now, seconds))

    def p95(self, now: float | None = None) -> float:
        cutoff = (time.monotonic() if now is None else now) - self.window_s
        with self._lock:
            while self._samples and self._samples[0][0] < cutoff:
                self._samples.popleft()
            waits = sorted(wait for _, wait in self._samples)
        if not waits:
            return 0.0
        return waits[min(len(waits) - 1, math.ceil(0.95 * len(waits)) - 1)]


recent_waits = RecentWaits()  # this process's (one replica's) queue waits


class SessionAutoscalingPolicy:
    """Replicas for the sessions at `target_sessions` each, plus one more while work queues too long."""

    def __init__(self, target_sessions: float, max_queue_wait_s: float = 0.15):
        if target_sessions <= 0 or max_queue_wait_s <= 0:
            raise ValueError("target_sessions and max_queue_wait_s must be positive")
        self.target_sessions = float(target_sessions)
        self.max_queue_wait_s = float(max_queue_wait_s)

    def desired_replicas(self, current: int, sessions: float, queue_wait_s: float) -> float:
        by_sessions = sessions / self.target_sessions
        if queue_wait_s > self.max_queue_wait_s:
            return max(by_sessions, current + 1)  # saturated: add one, then look again
        if queue_wait_s > self.max_queue_wait_s / 2:
            return max(by_sessions, current)  # busy: never shrink into a queue
        return by_sessions

    def __call__(self, ctx: Any) -> tuple[float, dict]:
        if ctx.current_num_replicas == 0:
            return ctx.target_num_replicas, {}
        metrics = ctx.aggregated_metrics or {}
        reported = metrics.get(SESSIONS) or {}
        # Replicas that have not reported yet count by Serve's own ongoing-request total.
        sessions = sum(reported.values()) if reported else ctx.total_num_requests
        wait = max((metrics.get(QUEUE_WAIT) or {}).values(), default=0.0)
        return self.desired_replicas(ctx.current_num_replicas, sessions, wait), {}
