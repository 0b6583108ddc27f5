"""The session autoscaling policy and the queue-wait window a replica reports."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from ray.serve.schema import ServeDeploySchema

from services.common.autoscaling import QUEUE_WAIT, SESSIONS, RecentWaits, SessionAutoscalingPolicy


def test_recent_waits_p95_over_the_window_only():
    waits = RecentWaits(window_s=10.0)
    assert waits.p95(now=0.0) == 0.0
    for i in range(100):
        waits.add(i / 1000, now=1.0)  # 0..99 ms
    assert waits.p95(now=2.0) == pytest.approx(0.094)
    waits.add(0.5, now=12.0)
    assert waits.p95(now=12.0) == 0.5  # the first 100 fell out of the window


def test_recent_waits_stay_bounded():
    waits = RecentWaits(window_s=1e9, max_samples=50)
    for i in range(1000):
        waits.add(float(i), now=0.0)
    assert waits.p95(now=0.0) >= 950.0  # only the newest 50 are kept


def ctx(current: int, sessions: list[float] | None, waits: list[float] | None = None, ongoing: float = 0.0,
        target: int | None = None):
    metrics = {}
    if sessions is not None:
        metrics[SESSIONS] = {f"r{i}": value for i, value in enumerate(sessions)}
    if waits is not None:
        metrics[QUEUE_WAIT] = {f"r{i}": value for i, value in enumerate(waits)}
    return SimpleNamespace(current_num_replicas=current, target_num_replicas=target or current,
                           aggregated_metrics=metrics, total_num_requests=ongoing)


@pytest.mark.parametrize(("context", "desired"), [
    (ctx(2, [16, 16]), 2.0),                          # exactly at target
    (ctx(2, [30, 34]), 4.0),                          # sessions beyond target: proportional
    (ctx(2, [4, 4]), 0.5),                            # idle: shrink (Serve rounds and applies min/delays)
    (ctx(2, [4, 4], waits=[0.01, 0.4]), 3.0),         # few sessions but one engine queues: one more
    (ctx(2, [40, 40], waits=[0.4, 0.0]), 5.0),        # sessions already ask for more than +1
    (ctx(2, [4, 4], waits=[0.1, 0.0]), 2.0),          # busy engine: hold, do not shrink into a queue
    (ctx(3, None, ongoing=48), 3.0),                  # no reports yet: Serve's ongoing-request count
    (ctx(0, None, target=1), 1),                      # cold start: leave it to Serve
])
def test_policy_scales_on_sessions_and_queue_wait(context, desired):
    policy = SessionAutoscalingPolicy(target_sessions=16, max_queue_wait_s=0.15)
    assert policy(context) == (desired, {})


def test_policy_rejects_nonsense_settings():
    with pytest.raises(ValueError):
        SessionAutoscalingPolicy(target_sessions=0)


def test_serve_schema_accepts_the_policy_as_configured():
    config = ServeDeploySchema.model_validate({"applications": [{
        "name": "tts", "route_prefix": "/tts", "import_path": "services.tts.deployment:build_app",
        "deployments": [{"name": "SpeechSynthesis", "autoscaling_config": {
            "min_replicas": 1, "max_replicas": 4,
            "policy": {"policy_function": "services.common.autoscaling:SessionAutoscalingPolicy",
                       "policy_kwargs": {"target_sessions": 16, "max_queue_wait_s": 0.15}}}}]}]})
    policy = config.applications[0].deployments[0].autoscaling_config["policy"]
    assert policy["policy_kwargs"]["target_sessions"] == 16
