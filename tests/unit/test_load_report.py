"""The load generator's pieces that need no cluster: profile schedules, rolling aggregates,
the Serve status poller (against a local HTTP server answering in the API's shape), the run loop
(driven by a local call function instead of a deployment: the real callers are exercised in the
smoke run of docs/benchmarks.md), the markdown report and the PNG plot."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from load import loadgen, report
from load.profiles import Profile, SlotWindow, levels, schedule, target_at
from load.serve_status import poll_replicas, replica_counts
from load.stats import LogHistogram, RunStats
from services.edge.caller import CallResult

# -- profiles -----------------------------------------------------------------------------------------


def test_step_profile_adds_callers_spread_over_the_ramp():
    profile = Profile(kind="step", callers=2, step=2, every_s=10, max_callers=5, duration_s=40, ramp_s=2)
    assert levels(profile) == [(0.0, 2), (10.0, 4), (20.0, 5)]
    assert schedule(profile) == [SlotWindow(0, 0.0, 40), SlotWindow(1, 1.0, 40), SlotWindow(2, 10.0, 40),
                                 SlotWindow(3, 11.0, 40), SlotWindow(4, 20.0, 40)]
    assert [target_at(profile, t) for t in (0, 9.9, 10, 25, 40)] == [2, 2, 4, 5, 0]
    assert profile.describe() == "step: 2 callers, +2 every 10 s up to 5, for 40 s (new callers join over 2 s)"


def test_spike_profile_retires_the_extra_callers_after_the_spike():
    profile = Profile(kind="spike", callers=1, peak=4, spike_at_s=5, spike_s=10, duration_s=30, ramp_s=3)
    assert levels(profile) == [(0.0, 1), (5.0, 4), (15.0, 1)]
    assert schedule(profile) == [SlotWindow(0, 0.0, 30), SlotWindow(1, 5.0, 15), SlotWindow(2, 6.0, 15),
                                 SlotWindow(3, 7.0, 15)]


def test_steady_profile_and_bad_profiles():
    assert schedule(Profile(kind="steady", callers=3, duration_s=10, ramp_s=0)) == [
        SlotWindow(0, 0.0, 10), SlotWindow(1, 0.0, 10), SlotWindow(2, 0.0, 10)]
    with pytest.raises(ValueError, match="peak"):
        Profile(kind="spike", callers=3, peak=2)
    with pytest.raises(ValueError, match="max_callers"):
        Profile(kind="step", callers=3, max_callers=2)


# -- aggregates ------------------------------------------------------------------------------------------


def test_histogram_percentiles_match_exact_ones_within_a_bucket():
    values = np.random.default_rng(7).lognormal(mean=6.0, sigma=0.6, size=5000)
    histogram = LogHistogram()
    for value in values:
        histogram.add(value)
    for q in (50, 95, 99):
        assert histogram.percentile(q) == pytest.approx(np.percentile(values, q), rel=0.02)
    assert len(histogram.buckets) < 300  # bounded by the value range, not by the 5000 samples
    assert LogHistogram().percentile(50) is None
    other = LogHistogram()
    other.add(0.0)
    histogram.merge(other)
    assert histogram.count == 5001 and histogram.percentile(0) == 0.0


def _record(slot, start, end, outcome, *ttfats):
    return {"slot": slot, "start_s": start, "end_s": end, "outcome": outcome,
            "turns": [{"t_s": start + 2 + i, "ttfat_ms": v, "asr_final_ms": 100.0, "llm_ttft_ms": None}
                      for i, v in enumerate(ttfats)]}


def _sample_stats() -> RunStats:
    stats = RunStats(window_s=10)
    stats.add_call(_record(0, 1, 8, "ok", 400.0, 500.0))
    stats.add_call(_record(1, 3, 12, "ok", 900.0))
    stats.add_call(_record(2, 11, 11.5, "refused"))
    stats.add_call(_record(3, 12, 25, "dropped", 1500.0))
    stats.add_target(0, 2)
    stats.add_target(12, 4)
    up = {"asr/SpeechRecognition": {"running": 1, "target": 1, "starting": 0, "stopping": 0}}
    assert stats.add_replicas(0.5, up)
    assert not stats.add_replicas(2.5, dict(up))  # unchanged: not kept
    stats.add_replicas(13, {"asr/SpeechRecognition": {"running": 1, "target": 3, "starting": 2, "stopping": 0}})
    stats.add_replicas(21, {"asr/SpeechRecognition": {"running": 3, "target": 3, "starting": 0, "stopping": 0}})
    return stats


def test_run_stats_windows_outcomes_and_scaling():
    stats = _sample_stats()
    windows = stats.ordered_windows()
    assert [w.start_s for w in windows] == [0, 10, 20]
    assert [w.calls_started for w in windows] == [2, 2, 0]
    assert windows[0].outcomes == {"ok": 1} and windows[1].outcomes == {"ok": 1, "refused": 1}
    assert windows[2].outcomes == {"dropped": 1}
    assert [w.turns for w in windows] == [3, 1, 0]  # by when each turn happened (start + 2 + i s)
    assert windows[0].latency["ttfat_ms"].count == 3 and "llm_ttft_ms" not in windows[0].latency
    assert [w.replicas["asr/SpeechRecognition"] for w in windows] == [1, 1, 3]
    assert stats.total.outcomes == {"ok": 2, "refused": 1, "dropped": 1}
    assert len(stats.replica_samples) == 3
    [event] = stats.scale_events
    assert (event.deployment, event.at_s, event.before, event.target, event.running_at_s) == \
        ("asr/SpeechRecognition", 13, 1, 3, 21)


# -- Serve status ------------------------------------------------------------------------------------------

SERVE_STATUS = {"applications": {
    "asr": {"status": "RUNNING", "deployments": {"SpeechRecognition": {
        "status": "UPSCALING", "target_num_replicas": 3,
        "replicas": [{"replica_id": "a", "state": "RUNNING"}, {"replica_id": "b", "state": "STARTING"},
                     {"replica_id": "c", "state": "RUNNING"}, {"replica_id": "d", "state": "STOPPING"}]}}},
    "edge": {"status": "RUNNING", "deployments": {"Edge": {"target_num_replicas": 1,
                                                           "replicas": [{"replica_id": "e", "state": "RUNNING"}]}}},
}}


def test_replica_counts_from_serve_status():
    assert replica_counts(SERVE_STATUS) == {
        "asr/SpeechRecognition": {"running": 2, "target": 3, "starting": 1, "stopping": 1},
        "edge/Edge": {"running": 1, "target": 1, "starting": 0, "stopping": 0},
    }
    assert replica_counts({"applications": {}}) == {}


async def test_poller_reads_the_dashboard_api_over_http():
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.path == "/api/serve/applications/"
            body = json.dumps(SERVE_STATUS if ok else {}).encode()
            self.send_response(200 if ok else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    samples, errors, stop = [], [], asyncio.Event()
    try:
        task = asyncio.create_task(poll_replicas(f"http://127.0.0.1:{server.server_port}", lambda t, c: samples.append(c),
                                                 stop, started=0.0, period_s=0.05, on_error=errors.append))
        await asyncio.sleep(0.5)
        stop.set()
        await task
        # A dashboard that is gone: one error reported, no crash.
        stop = asyncio.Event()
        task = asyncio.create_task(poll_replicas("http://127.0.0.1:9", lambda t, c: None, stop, started=0.0,
                                                 period_s=0.05, on_error=errors.append))
        await asyncio.sleep(0.3)
        stop.set()
        await task
    finally:
        server.shutdown()
    assert len(samples) >= 2 and samples[0]["asr/SpeechRecognition"]["running"] == 2
    assert len(errors) == 1 and "127.0.0.1:9" in errors[0]


# -- call classification and the run loop ----------------------------------------------------------------


def _result(*events, close_code=1000):
    result = CallResult(close_code=close_code)
    result.events = [{"t": 0.1 * i, **event} for i, event in enumerate(events)]
    return result


def test_websocket_outcomes():
    ready = {"type": "ready"}
    final = {"type": "transcript", "final": True, "text": "hi"}
    metrics = {"type": "metrics", "turn_id": 1}
    assert loadgen.classify_websocket(_result(ready, final, metrics)) == "ok"
    assert loadgen.classify_websocket(_result(ready, final)) == "unanswered"
    assert loadgen.classify_websocket(_result(ready, final, metrics, close_code=1011)) == "dropped"
    assert loadgen.classify_websocket(_result(close_code=4503)) == "refused"
    assert loadgen.classify_websocket(_result(close_code=4401)) == "error"


async def test_run_follows_the_profile_and_streams_records_to_disk(tmp_path):
    """Calls last 0.3 s; slot 2 is refused. Every call lands in calls.jsonl, and replaying the
    files gives the same aggregates as the live run."""
    profile = Profile(kind="spike", callers=1, peak=3, spike_at_s=0.5, spike_s=1.0, duration_s=2.0, ramp_s=0)
    concurrent, peak = [0], [0]

    async def place(slot, audio, rate):
        concurrent[0] += 1
        peak[0] = max(peak[0], concurrent[0])
        await asyncio.sleep(0.3)
        concurrent[0] -= 1
        if slot == 2:
            return {"outcome": "refused", "error": "over_capacity"}
        return {"outcome": "ok", "error": None, "turns": [{"t": 0.25, "ttfat_ms": 200.0 + 100 * slot}]}

    config = loadgen.RunConfig(profile, place, [(np.zeros(160, np.float32), 16000)], tmp_path, think_s=0.05,
                               window_s=1.0)
    stats = await loadgen.run(config, log=lambda line: None)
    records = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert peak[0] == 3
    assert {r["slot"] for r in records} == {0, 1, 2}
    # Slots 1 and 2 only call during the spike (a call started before its end runs to completion).
    assert all(0.5 <= r["start_s"] < 1.5 for r in records if r["slot"] > 0)
    assert all(r["end_s"] - r["start_s"] >= 0.29 for r in records)
    assert stats.total.calls_started == len(records)
    assert stats.total.outcomes["refused"] == sum(r["slot"] == 2 for r in records)
    assert all(turn["t_s"] == pytest.approx(r["start_s"] + 0.25, abs=0.01) for r in records for turn in r["turns"])
    assert not any(r["outcome"] == "error" for r in records)
    replayed = loadgen.replay(tmp_path, 1.0)
    assert replayed.total.outcomes == stats.total.outcomes
    assert replayed.total.latency["ttfat_ms"].buckets == stats.total.latency["ttfat_ms"].buckets


# -- report ----------------------------------------------------------------------------------------------


def test_markdown_report_has_totals_windows_and_scaling():
    text = report.markdown(_sample_stats(), "Load run test", ["Mode: synthetic."])
    lines = text.splitlines()
    totals = lines[lines.index("## Totals") + 4]
    # 4 calls: ok 2, refused 1, dropped 1, unanswered 0, error 0; 4 turns; TTFAT p50 of
    # {400, 500, 900, 1500} is 500 (bucket middle within 1%).
    cells = [c.strip() for c in totals.strip("|").split("|")]
    assert cells[:7] == ["4", "2", "1", "1", "0", "0", "4"]
    p50, p95, p99 = (float(v) for v in cells[7].split(" / "))
    assert p50 == pytest.approx(500, rel=0.02) and p99 == pytest.approx(1500, rel=0.02)
    assert "Dropped or failed calls: 1; refused at admission: 1." in text
    window_rows = [line for line in lines if line.startswith("| 0 |") or line.startswith("| 10 |")
                   or line.startswith("| 20 |")]
    assert len(window_rows) == 3 and window_rows[2].rstrip(" |").endswith("3")
    assert "| asr/SpeechRecognition | 13.0 | 1 -> 3 | 21.0 | 8.0 |" in text


def test_plot_writes_a_png_with_content(tmp_path):
    import matplotlib.image

    path = report.plot(_sample_stats(), tmp_path / "report.png", "Load run test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] > 500 and pixels.std() > 0.05  # three panels drawn, not a blank canvas


def test_scale_down_settles_only_when_draining_replicas_are_gone():
    stats = RunStats(window_s=10)
    counts = lambda running, target, stopping=0: {"d": {"running": running, "target": target,  # noqa: E731
                                                        "starting": 0, "stopping": stopping}}
    stats.add_replicas(0, counts(3, 3))
    stats.add_replicas(5, counts(1, 1, stopping=2))  # two replicas draining their live calls
    stats.add_replicas(9, counts(1, 1, stopping=1))
    assert stats.scale_events[0].running_at_s is None
    stats.add_replicas(12, counts(1, 1))
    assert (stats.scale_events[0].before, stats.scale_events[0].running_at_s) == (3, 12)


async def test_a_failing_call_is_counted_not_fatal(tmp_path):
    profile = Profile(kind="steady", callers=1, duration_s=0.3, ramp_s=0)

    async def place(slot, audio, rate):
        raise RuntimeError("caller bug")

    config = loadgen.RunConfig(profile, place, [(np.zeros(160, np.float32), 16000)], tmp_path, think_s=0.1)
    stats = await loadgen.run(config, log=lambda line: None)
    assert stats.total.outcomes["error"] == stats.total.calls_started >= 2
    assert "RuntimeError: caller bug" in (tmp_path / "calls.jsonl").read_text()
