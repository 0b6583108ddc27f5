"""Parley's Prometheus metrics: recorded through Ray's metrics API, read back where Prometheus reads them.

The end-to-end test starts a throwaway single-node Ray in a child process (so it neither touches
this test process's Ray state nor any other cluster on the machine), records a synthetic turn from
an actor (as an edge replica would), runs a call with tool calls through the reply loop in that
actor, and scrapes the node's metrics export endpoint until the series appear. Then every bucket,
count and counter is checked against what was recorded.
"""

from __future__ import annotations

import bisect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.common import metrics
from services.common.timeline import COMPONENTS, TurnTimeline

ROOT = Path(__file__).resolve().parents[2]
BY_NAME = {component.name: component for component in COMPONENTS}

# A caller turn with every component, and a greeting cut by barge-in (no caller speech before it).
# No duration sits on a bucket boundary, so float rounding cannot move a value between buckets.
ANSWERED = dict(turn_id=2, speech_end=100.0, vad_stopped=100.33, asr_final=100.39, turn_confirmed=100.43,
                llm_request=100.40,
                llm_first_token=100.47, first_sentence=100.58, tts_request=100.59, tts_first_audio=101.0,
                first_audio_sent=101.32, underruns=2)
GREETING = dict(turn_id=1, tts_request=1.0, tts_first_audio=1.47, first_audio_sent=1.48, interrupted=True)

# Runs in the child process: start Ray, record from an actor, scrape until every series is there.
PROBE = r"""
import json, os, sys, time, urllib.request
import ray

ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
         _system_config={"metrics_report_interval_ms": 1000})
try:
    port = ray._private.worker.global_worker.node.metrics_export_port

    @ray.remote(num_cpus=0)
    class EdgeLike:
        def record(self, turns):
            import grpc
            from services.common import metrics
            from services.common.timeline import TurnTimeline

            observe = metrics.TurnMetricsObserver()
            for turn in turns:
                observe(TurnTimeline(**turn))
            metrics.record_stage_error("llm", grpc.StatusCode.UNAVAILABLE)
            metrics.set_active_conversations(3)
            metrics.observe_queue_wait("tts", 0.004)
            metrics.record_twilio_call("completed")
            metrics.record_preemptive(True)
            metrics.record_preemptive(False, llm_tokens=7, tts_s=1.5)
            return metrics.replica_tags()

        async def call_with_tools(self):
            # A cascade call in this process (in-process stages, a scripted LLM): its tool calls
            # are recorded by the reply loop itself, as in an edge replica.
            from tests.unit.edge import test_tools as t

            llm = t.engine([{"call": "lookup", "arguments": {"seconds": 0.3}}, {"call": "broken"},
                            {"call": "made_up"}], ["Done."])
            tools = [t.tool("lookup", {"kind": "python", "path": "tests.unit.edge.test_tools:slow_lookup"}),
                     t.tool("broken", {"kind": "python", "path": "tests.unit.edge.test_tools:broken_tool"})]
            transport, call, _ = await t.call_with(llm, tools, [(0.1, "look it up")], 20.0, t.played(1))
            # Its turn may itself have been a confirmed preemptive reply: counted too.
            return [(e["name"], e["outcome"]) for e in transport.of_type("tool_call")], call.preemptive.confirmed

    actor = EdgeLike.remote()
    tags = ray.get(actor.record.remote(json.loads(sys.argv[1])))
    tool_calls, preemptive_confirmed = ray.get(actor.call_with_tools.remote())
    wanted = set(json.loads(sys.argv[2]))
    deadline, text, error = time.monotonic() + float(sys.argv[3]), "", None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                text = response.read().decode()
            error = None
        except OSError as exc:
            error = repr(exc)
        seen = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line.startswith("ray_parley_")}
        # Series of one metric can reach the endpoint in different reports: wait for every tool's.
        tools = sum(line.startswith("ray_parley_tool_calls_total{") for line in text.splitlines())
        if wanted <= seen and tools >= len(tool_calls):
            break
        time.sleep(0.5)
    print(json.dumps({"port": port, "replica_tags": tags, "tool_calls": tool_calls,
                      "preemptive_confirmed": preemptive_confirmed, "text": text, "error": error}))
finally:
    ray.shutdown()
"""


def _cumulative(values: list[float], boundaries: tuple[float, ...]) -> dict[str, float]:
    """Expected Prometheus `_bucket` values: le -> how many values are <= le."""
    counts = {str(float(b)): float(bisect.bisect_right(sorted(values), b)) for b in boundaries}
    counts["+Inf"] = float(len(values))
    return counts


@pytest.fixture(scope="module")
def scraped():
    """Samples from the Ray node's Prometheus endpoint after one recorded answered turn and greeting."""
    from prometheus_client.parser import text_string_to_metric_families

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # never join someone's cluster
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps([ANSWERED, GREETING]), json.dumps(sorted(metrics.EXPORTED_SERIES)),
         "90"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"Ray probe failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    result = json.loads(done.stdout.strip().splitlines()[-1])
    samples = [sample for family in text_string_to_metric_families(result["text"]) for sample in family.samples
               if sample.name.startswith("ray_parley_")]
    missing = metrics.EXPORTED_SERIES - {sample.name for sample in samples}
    assert not missing, (f"not exported by port {result['port']} within 90 s (scrape error {result['error']}): "
                         f"{sorted(missing)}")
    return result, samples


def _values(samples, name: str, key: str | None = None, **labels) -> dict | float:
    """One series' value, or {label[key]: value} over its samples, for samples matching labels."""
    matching = [s for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    if key is None:
        assert len(matching) == 1, f"{name}{labels}: {matching}"
        return matching[0].value
    return {s.labels[key]: s.value for s in matching}


# -- without Ray ----------------------------------------------------------------------------------

def test_exported_names_are_ray_prefixed_prometheus_series():
    assert {"ray_parley_ttfat_seconds_bucket", "ray_parley_ttfat_seconds_count", "ray_parley_ttfat_seconds_sum",
            "ray_parley_turns_total", "ray_parley_barge_ins_total", "ray_parley_playout_underruns_total",
            "ray_parley_stage_errors_total", "ray_parley_active_conversations",
            "ray_parley_stage_queue_wait_seconds_bucket", "ray_parley_tool_calls_total",
            "ray_parley_tool_latency_seconds_bucket"} <= metrics.EXPORTED_SERIES
    for component in ("endpointing", "asr_final", "llm_ttft", "first_sentence", "tts_ttfb"):
        assert f"ray_parley_{component}_seconds_bucket" in metrics.EXPORTED_SERIES
    for spec in metrics.SPECS:
        assert spec.name.startswith("parley_")
        if spec.kind == "histogram":
            assert list(spec.boundaries) == sorted(set(spec.boundaries)) and spec.boundaries[0] > 0


def test_outside_ray_recording_is_a_cheap_noop():
    # A fresh interpreter: importing and recording must neither import Ray nor create metrics.
    code = ("import sys\n"
            "from services.common import metrics\n"
            "from services.common.timeline import TurnTimeline\n"
            f"metrics.TurnMetricsObserver()(TurnTimeline(**{ANSWERED!r}))\n"
            "metrics.record_stage_error('asr', 'UNAVAILABLE'); metrics.set_active_conversations(1)\n"
            "metrics.observe_queue_wait('asr', 0.1); metrics.record_tool_call('lookup', 'ok', 0.2)\n"
            "metrics.record_preemptive(False, 3, 0.5)\n"
            "assert 'ray' not in sys.modules and metrics._metrics is None\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_components_follow_the_timeline_and_skip_what_a_turn_never_reached():
    answered, greeting = TurnTimeline(**ANSWERED), TurnTimeline(**GREETING)
    ttfat, llm = BY_NAME["ttfat"], BY_NAME["llm_ttft"]
    assert answered.seconds(ttfat) == pytest.approx(1.32)
    assert greeting.seconds(ttfat) is None  # no caller speech
    assert TurnTimeline(1, llm_request=2.0, llm_first_token=1.0).seconds(llm) is None  # never a negative latency
    # The histograms measure what the client event reports, in seconds instead of milliseconds.
    event = answered.to_event()
    for component in COMPONENTS:
        assert answered.seconds(component) * 1000 == pytest.approx(event[component.event_field], abs=0.1)
    assert set(metrics.TURN_HISTOGRAMS) == {component.name for component in COMPONENTS}


# -- through a real Ray node's Prometheus endpoint ------------------------------------------------

def test_turn_histograms_reach_the_endpoint_with_exact_buckets(scraped):
    _, samples = scraped
    for component in COMPONENTS:
        recorded = [s for turn in (ANSWERED, GREETING) if (s := TurnTimeline(**turn).seconds(component)) is not None]
        name = f"ray_parley_{component.name}_seconds"
        assert _values(samples, f"{name}_bucket", key="le") == _cumulative(recorded, metrics.LATENCY_BUCKETS_S), name
        assert _values(samples, f"{name}_count") == len(recorded), name
    # The greeting has TTS audio but no caller speech: one TTFAT, two TTS first-byte latencies.
    assert _values(samples, "ray_parley_ttfat_seconds_count") == 1
    assert _values(samples, "ray_parley_ttfat_seconds_bucket", le="1.25") == 0
    assert _values(samples, "ray_parley_ttfat_seconds_bucket", le="1.5") == 1
    assert _values(samples, "ray_parley_tts_ttfb_seconds_count") == 2
    # Ray's agent rebuilds histograms from bucket midpoints, so _sum is only near the true sum.
    assert 1.25 <= _values(samples, "ray_parley_ttfat_seconds_sum") <= 1.5


def test_counters_and_gauge_reach_the_endpoint(scraped):
    result, samples = scraped
    assert _values(samples, "ray_parley_turns_total") == 2
    assert _values(samples, "ray_parley_barge_ins_total") == 1
    assert _values(samples, "ray_parley_playout_underruns_total") == 2
    assert _values(samples, "ray_parley_stage_errors_total", stage="llm", code="UNAVAILABLE") == 1
    # Outside a Serve replica the gauge is labelled with the process id; in one, with Serve's ids.
    assert result["replica_tags"]["replica"].startswith("pid-")
    assert _values(samples, "ray_parley_active_conversations", replica=result["replica_tags"]["replica"]) == 3
    assert _values(samples, "ray_parley_stage_queue_wait_seconds_count", stage="tts") == 1
    assert _values(samples, "ray_parley_twilio_calls_total", status="completed") == 1
    confirmed = 1 + result["preemptive_confirmed"]  # the tool test's call runs in the same process
    assert _values(samples, "ray_parley_preemptive_replies_total", key="outcome") == {"confirmed": confirmed,
                                                                                      "discarded": 1}
    assert _values(samples, "ray_parley_preemptive_discarded_llm_tokens_total") == 7
    assert _values(samples, "ray_parley_preemptive_discarded_tts_seconds_total") == 1.5
    assert _values(samples, "ray_parley_stage_queue_wait_seconds_bucket", key="le", stage="tts") == \
        _cumulative([0.004], metrics.QUEUE_WAIT_BUCKETS_S)


def test_tool_calls_through_the_reply_loop_reach_the_endpoint(scraped):
    result, samples = scraped
    # The loop ran all three: a tool that answered, one that raised, and a name the model made up.
    assert sorted(result["tool_calls"]) == [["broken", "error"], ["lookup", "ok"], ["made_up", "error"]]
    assert _values(samples, "ray_parley_tool_calls_total", tool="lookup", outcome="ok") == 1
    assert _values(samples, "ray_parley_tool_calls_total", tool="broken", outcome="error") == 1
    # A tool the persona does not declare is counted under one label: model output makes no new series.
    assert _values(samples, "ray_parley_tool_calls_total", tool=metrics.UNKNOWN_TOOL, outcome="error") == 1
    assert not [s for s in samples if s.labels.get("tool") == "made_up"]
    # The lookup slept 0.3 s: above the 0.25 s bucket, one observation.
    assert _values(samples, "ray_parley_tool_latency_seconds_count", tool="lookup") == 1
    assert _values(samples, "ray_parley_tool_latency_seconds_bucket", tool="lookup", le="0.25") == 0
    assert _values(samples, "ray_parley_tool_latency_seconds_bucket", tool="lookup", le="+Inf") == 1
