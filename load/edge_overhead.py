"""Benchmark: what the edge and the transport add to a turn's critical path beyond engine compute.

    python load/edge_overhead.py [--levels 1 10 50] [--max-tokens 12] [--out out/edge_overhead.json]

Starts its own local Ray cluster (GCS 6430, dashboard 8330, HTTP 18300, gRPC 19300), deploys
serve_config.cpu.yaml (tiny models), then for each concurrency level N runs N simulated callers
at once (services.edge.caller.call on services/assets/hello.wav, starts staggered uniformly over
~3 s; levels with few callers run several rounds so every level has at least --min-calls calls).
Tokens carry persona overrides `greeting=""` and a short reply (`max_tokens`), to keep engine load
small: this measures orchestration, not engine capacity.

After each level it reads the edge's raw turn timelines (edge monotonic clock) through a Serve
handle and joins each to the caller's `metrics` event of the same turn. Per turn:
  (a) edge dispatch      llm_request - asr_final        (final transcript in -> LLM request sent)
  (b) TTS send           tts_request - first_sentence   (0 by construction: same timestamp)
  (c) playout pick-up    first_audio_sent - tts_first_audio
  (d) edge -> caller     the caller receives the first agent audio frame - first_audio_sent
      (the WebSocket leg through Serve's HTTP proxy; the caller and the edge share the host's
      CLOCK_MONOTONIC, so this is a one-way time, caller event-loop delay included)
and total = a + b + c + d + two gRPC proxy hops (LLM request, TTS request) taken from the stage
hop benchmark in docs/benchmarks.md (--hop-p50-ms / --hop-p95-ms). Also: playout underruns
(sum of `underruns` in metrics events) next to the gaps a caller playing frames on arrival would
hear, failed/refused calls, how many calls were open, streaming and being answered at each turn's
first agent audio, the gap between the caller receiving
`agent_audio_start` and the first audio frame, the caller's event-loop lag, CPU per process
group, and the TTFAT decomposition (median of each metrics field) at the lowest level.
Prints markdown tables for docs/benchmarks.md and writes JSON.

`--pad-silence-s S` appends S seconds of silence to the WAV, so callers keep streaming audio in
real time while their replies are produced (sustained load; a call then lasts at least 4 + S s).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from load.local import cpu_cluster, ray_driver  # noqa: E402
from services.cluster import LocalCluster  # noqa: E402
from services.common.audio import read_wav  # noqa: E402
from services.common.timeline import TurnTimeline  # noqa: E402
from services.edge import caller  # noqa: E402
from services.edge.auth import ALGORITHM, mint_token  # noqa: E402

GCS_PORT, DASHBOARD_PORT, HTTP_PORT, GRPC_PORT = 6430, 8330, 18300, 19300
AUDIO = ROOT / "services" / "assets" / "hello.wav"
STAGGER_S = 3.0
# Serve gRPC proxy hop, client send -> replica user code, from docs/benchmarks.md ("Stage hops"):
# the largest p50 and p95 of its table (100 ms frames: 2.25 ms; 40 ms frames: 3.08 ms).
HOP_P50_MS, HOP_P95_MS = 2.25, 3.08
METRIC_FIELDS = ("endpointing_ms", "asr_final_ms", "llm_ttft_ms", "first_sentence_ms", "tts_ttfb_ms", "ttfat_ms")
COMPONENTS = ("dispatch", "tts_send", "pickup", "transport")


# -- a caller that also records when each message arrived (host monotonic clock) ------------------

class _Stamped(list):
    """A list that records (arrival order, time.monotonic()) for every append."""

    def __init__(self, clock):
        super().__init__()
        self.clock = clock
        self.stamps: list[tuple[int, float]] = []

    def append(self, item) -> None:
        self.stamps.append(self.clock())
        super().append(item)


@dataclass
class StampedResult(caller.CallResult):
    """CallResult whose event and audio lists keep absolute arrival times. `caller.call` keeps no
    event arrival times and audio ones only relative to a private start, so the benchmark swaps
    this class in (caller.CallResult) while it runs; the protocol handling is the caller's own."""

    def __post_init__(self) -> None:
        order = itertools.count()

        def clock():
            return next(order), time.monotonic()

        self.events = _Stamped(clock)
        self.agent_audio = _Stamped(clock)


def token(secret: str, **persona) -> str:
    import jwt

    claims = jwt.decode(mint_token(secret, ttl_s=3600), secret, algorithms=[ALGORITHM])
    return jwt.encode({**claims, "persona": persona}, secret, algorithm=ALGORITHM)


@dataclass
class CallOutcome:
    result: StampedResult | None
    error: str | None
    started: float
    ended: float


async def one_call(url: str, token_: str, audio: np.ndarray, rate: int, delay_s: float) -> CallOutcome:
    await asyncio.sleep(delay_s)
    started = time.monotonic()
    try:
        result = await caller.call(url, token_, audio, rate, tail_s=60, until=caller.settled)
        return CallOutcome(result, None, started, time.monotonic())
    except Exception as error:  # refused at connect, closed mid-handshake, ...
        return CallOutcome(None, f"{type(error).__name__}: {error}"[:200], started, time.monotonic())


async def loop_lag(samples: list[float], stop: asyncio.Event, period_s: float = 0.01) -> None:
    """How late this process's event loop wakes up (the callers' own scheduling delay)."""
    while not stop.is_set():
        before = time.monotonic()
        await asyncio.sleep(period_s)
        samples.append((time.monotonic() - before - period_s) * 1000)


# -- CPU per process group -------------------------------------------------------------------------

def _group(process: psutil.Process) -> str:
    if process.pid == os.getpid():
        return "callers (this script)"
    try:
        cmdline = process.cmdline()
    except psutil.Error:
        return "?"
    head = cmdline[0] if cmdline else process.name()
    if head.startswith("ray::"):
        name = head.split()[0][5:]
        if name.startswith("ServeReplica:"):
            return name.split(":")[1]  # the application
        if name.startswith("ProxyActor"):
            return "serve proxy"
        return "ray:" + name.split(".")[0]  # an actor's title carries its current method
    return "ray system" if any(part in head for part in ("gcs_server", "raylet", "dashboard", "python")) else head


def cpu_by_group(processes: list[psutil.Process]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        group = _group(process)
        totals[group] = totals.get(group, 0.0) + times.user + times.system
    return totals


# -- the measurement ---------------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def metrics_key(event: dict) -> tuple:
    return (event["turn_id"], *(event[name] for name in METRIC_FIELDS), event["interrupted"], event["underruns"])


def first_frame_after(result: StampedResult, turn_id: int) -> tuple[float | None, float | None]:
    """(arrival of `agent_audio_start` for the turn, arrival of the first audio frame after it)."""
    start = next((stamp for event, stamp in zip(result.events, result.events.stamps)
                  if event["type"] == "agent_audio_start" and event["turn_id"] == turn_id), None)
    if start is None:
        return None, None
    frame = next((stamp for stamp in result.agent_audio.stamps if stamp[0] > start[0]), None)
    return start[1], None if frame is None else frame[1]


def turn_frames(result: StampedResult, turn_id: int) -> list[tuple[float, float]]:
    """(arrival, seconds of audio) of each agent frame between the turn's agent_audio_start and
    agent_audio_end (or the next agent_audio_start)."""
    marks = [(stamp[0], event) for event, stamp in zip(result.events, result.events.stamps)
             if event["type"] in ("agent_audio_start", "agent_audio_end")]
    begin = next((order for order, e in marks if e["type"] == "agent_audio_start" and e["turn_id"] == turn_id), None)
    if begin is None:
        return []
    end = next((order for order, e in marks if order > begin), float("inf"))
    return [(stamp[1], frame.size / result.output_sample_rate)
            for frame, stamp in zip(result.agent_audio, result.agent_audio.stamps) if begin < stamp[0] < end]


def heard_gaps(frames: list[tuple[float, float]], tolerance_s: float = 0.010) -> tuple[int, float]:
    """Gaps a caller would hear playing each frame on arrival, back to back, with no jitter buffer
    of its own: a frame arriving after the previous one has finished playing (+ tolerance)."""
    count, total, playing_until = 0, 0.0, None
    for arrival, seconds in frames:
        if playing_until is not None and arrival > playing_until + tolerance_s:
            count, total = count + 1, total + arrival - playing_until
        playing_until = max(playing_until or arrival, arrival) + seconds
    return count, total * 1000


def classify(outcome: CallOutcome) -> str:
    if outcome.result is None:
        return "error"
    result = outcome.result
    if result.close_code == 4503:
        return "refused"
    if not result.of_type("ready"):
        return "error"
    if result.close_code not in (1000, None) or result.of_type("error"):
        return "failed"
    if not any(e["type"] == "transcript" and e["final"] for e in result.events):
        return "no_final"
    if not caller.settled(result):
        return "unsettled"
    return "ok"


def analyse(level: int, outcomes: list[CallOutcome], timelines: list[dict], lag: list[float],
            cpu: dict[str, float], wall_s: float, hop_p50: float, hop_p95: float, speech_s: float) -> dict:
    # When each call streamed caller audio, and when agent audio was playing to it (caller clock).
    calls = [o for o in outcomes if o.result is not None]
    playing = []
    for o in calls:
        frames_at = [stamp[1] for stamp in o.result.agent_audio.stamps]
        if frames_at:
            playing.append((frames_at[0], frames_at[-1]))

    def concurrency(at: float) -> dict:
        return {"calls_open": sum(o.started <= at <= o.ended for o in outcomes),
                "callers_streaming": sum(o.started <= at <= o.started + speech_s for o in calls),
                "agents_playing": sum(first <= at <= last for first, last in playing)}

    kinds = [classify(outcome) for outcome in outcomes]
    by_key: dict[tuple, list[dict]] = {}
    for timeline in timelines:
        if timeline.get("speech_end") is None:
            continue  # a greeting (none here: greeting="") has no caller speech before it
        event = TurnTimeline(**timeline).to_event()
        by_key.setdefault(metrics_key(event), []).append(timeline)

    turns, unmatched, ambiguous = [], 0, 0
    for outcome in outcomes:
        if outcome.result is None:
            continue
        for event in outcome.result.of_type("metrics"):
            candidates = by_key.get(metrics_key(event), [])
            if len(candidates) != 1:
                unmatched += not candidates
                ambiguous += len(candidates) > 1
                continue
            t = candidates[0]
            event_at, frame_at = first_frame_after(outcome.result, event["turn_id"])

            def ms(a, b):
                return None if a is None or b is None else (b - a) * 1000

            frames = turn_frames(outcome.result, event["turn_id"])
            gaps, gap_ms = heard_gaps(frames)
            turns.append({
                "metrics": {k: v for k, v in event.items() if k != "t"},
                "segments": sum(e["type"] == "agent_text" and e["turn_id"] == event["turn_id"]
                                for e in outcome.result.events),
                "reply_audio_s": round(sum(seconds for _, seconds in frames), 2),
                "heard_gaps": gaps, "heard_gap_ms": round(gap_ms, 1),
                "at_first_audio": None if frame_at is None else concurrency(frame_at),
                "dispatch": ms(t["asr_final"], t["llm_request"]),
                "tts_send": ms(t["first_sentence"], t["tts_request"]),
                "pickup": ms(t["tts_first_audio"], t["first_audio_sent"]),
                "transport": ms(t["first_audio_sent"], frame_at),
                "event_to_frame": ms(event_at, frame_at),
            })
    for turn in turns:
        parts = [turn[name] for name in COMPONENTS]
        turn["measured"] = None if any(p is None for p in parts) else sum(parts)

    def summary(name: str) -> dict:
        values = [turn[name] for turn in turns if turn[name] is not None]
        return {"n": len(values), "p50": pct(values, 50), "p95": pct(values, 95),
                "max": max(values) if values else None}

    stats = {name: summary(name) for name in (*COMPONENTS, "event_to_frame", "measured")}
    measured = stats["measured"]
    stats["total"] = {"n": measured["n"],
                      "p50": None if measured["p50"] is None else measured["p50"] + 2 * hop_p50,
                      "p95": None if measured["p95"] is None else measured["p95"] + 2 * hop_p95}
    metric_values = {name: [t["metrics"][name] for t in turns if t["metrics"][name] is not None]
                     for name in METRIC_FIELDS}
    all_metrics = [e for o in outcomes if o.result is not None for e in o.result.of_type("metrics")]
    return {
        "callers": level, "calls": len(outcomes),
        "outcomes": {kind: kinds.count(kind) for kind in sorted(set(kinds))},
        "errors": sorted({o.error for o in outcomes if o.error}),
        "problem_calls": [{"kind": kind, "error": o.error, "seconds": round(o.ended - o.started, 1),
                           "close_code": None if o.result is None else o.result.close_code,
                           "events": [] if o.result is None else [
                               e["type"] + (f":{e['turn_id']}" if "turn_id" in e else "") for e in o.result.events
                               if e["type"] not in ("transcript", "agent_text")]}
                          for o, kind in zip(outcomes, kinds) if kind != "ok"],
        "close_codes": sorted({str(o.result.close_code) for o in outcomes if o.result is not None}),
        "turns": len(all_metrics), "turns_matched": len(turns), "turns_unmatched": unmatched,
        "turns_ambiguous": ambiguous,
        "interrupted_turns": sum(bool(e["interrupted"]) for e in all_metrics),
        "underruns": sum(e["underruns"] for e in all_metrics),
        "turns_with_underruns": sum(e["underruns"] > 0 for e in all_metrics),
        "heard_gaps": sum(t["heard_gaps"] for t in turns),
        "turns_with_heard_gaps": sum(t["heard_gaps"] > 0 for t in turns),
        "heard_gap_ms_max": max((t["heard_gap_ms"] for t in turns), default=None),
        "segments_p50": pct([t["segments"] for t in turns], 50),
        "reply_audio_s_p50": pct([t["reply_audio_s"] for t in turns], 50),
        "at_first_audio_p50": {key: pct([t["at_first_audio"][key] for t in turns if t["at_first_audio"]], 50)
                               for key in ("calls_open", "callers_streaming", "agents_playing")},
        "at_first_audio_max": {key: max((t["at_first_audio"][key] for t in turns if t["at_first_audio"]),
                                        default=None)
                               for key in ("calls_open", "callers_streaming", "agents_playing")},
        "overhead_ms": stats,
        "metrics_p50_ms": {name: pct(values, 50) for name, values in metric_values.items()},
        "metrics_p95_ms": {name: pct(values, 95) for name, values in metric_values.items()},
        "caller_loop_lag_ms": {"p50": pct(lag, 50), "p95": pct(lag, 95), "max": max(lag) if lag else None},
        "cores_busy": {group: round(seconds / wall_s, 3) for group, seconds in
                       sorted(cpu.items(), key=lambda item: -item[1]) if seconds / wall_s >= 0.005},
        "wall_s": round(wall_s, 1),
        "per_turn": turns,
    }


async def run_level(level: int, rounds: int, url: str, tokens, audio: np.ndarray, rate: int,
                    cluster: LocalCluster, hop_p50: float, hop_p95: float) -> dict:
    from ray import serve

    edge = serve.get_app_handle("edge")
    processes = cluster._processes() + [psutil.Process()]
    cpu_before = cpu_by_group(processes)
    psutil.cpu_percent(None)  # the machine's CPU use from here on (other users' load included)
    lag, stop = [], asyncio.Event()
    lag_task = asyncio.create_task(loop_lag(lag, stop))
    started = time.monotonic()
    outcomes: list[CallOutcome] = []
    before = len((await edge.stats.remote(turns=True))["turns"])
    for round_ in range(rounds):
        delays = [STAGGER_S * i / level for i in range(level)] if level > 1 else [0.0]
        outcomes += await asyncio.gather(*(one_call(url, next(tokens), audio, rate, d) for d in delays))
        print(f"  {level} callers, round {round_ + 1}/{rounds}: "
              f"{sum(classify(o) == 'ok' for o in outcomes)}/{len(outcomes)} calls ok", flush=True)
    wall = time.monotonic() - started
    stop.set()
    await lag_task
    cpu_after = cpu_by_group(processes)
    machine = {"cpu_percent": psutil.cpu_percent(None), "loadavg_1m_at_end": round(os.getloadavg()[0], 2)}
    cpu = {group: cpu_after.get(group, 0.0) - cpu_before.get(group, 0.0) for group in cpu_after}
    turns = (await edge.stats.remote(turns=True))["turns"]
    # The edge keeps the last 1024 turns: this level's are the new ones (the join below also
    # matches each to its caller's metrics event, so a wrapped deque cannot mix levels up).
    new = turns[before:] if len(turns) < 1024 else turns
    return {**analyse(level, outcomes, new, lag, cpu, wall, hop_p50, hop_p95, audio.size / rate), "machine": machine}


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def tables(results: dict) -> str:
    hop50, hop95 = results["hop_ms"]["p50"], results["hop_ms"]["p95"]
    lines = ["| callers | turns | (a) edge dispatch | (b) TTS send | (c) playout pick-up | (d) edge -> caller "
             f"| a+b+c+d | total (+ 2 gRPC hops: {2 * hop50:.1f} / {2 * hop95:.1f}) "
             "| underruns (gaps heard at the caller) | failed or unsettled / refused |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for level in results["levels"]:
        o = level["overhead_ms"]
        cells = [f"{fmt(o[name]['p50'])} / {fmt(o[name]['p95'])}" for name in (*COMPONENTS, "measured", "total")]
        bad = sum(n for kind, n in level["outcomes"].items() if kind not in ("ok", "refused"))
        lines.append(f"| {level['callers']} | {level['turns_matched']} | " + " | ".join(cells)
                     + f" | {level['underruns']} ({level['heard_gaps']} heard"
                     + (f", longest {level['heard_gap_ms_max']:.0f} ms)" if level["heard_gaps"] else ")")
                     + f" | {bad} / {level['outcomes'].get('refused', 0)} |")
    lines += ["", "| callers | calls | outcomes | TTFAT p50 / p95 | tts_ttfb p50 / p95 | llm_ttft p50 / p95 "
              "| agent_audio_start -> 1st frame at caller p50 / p95 / max | caller loop lag p50 / p95 / max "
              "| cores busy (this cluster, this script) | machine CPU % |", "|---|---|---|---|---|---|---|---|---|---|"]
    for level in results["levels"]:
        m50, m95, gap, lag = (level["metrics_p50_ms"], level["metrics_p95_ms"], level["overhead_ms"]["event_to_frame"],
                              level["caller_loop_lag_ms"])
        cores = ", ".join(f"{group} {value:.2f}" for group, value in list(level["cores_busy"].items())[:6])
        lines.append(f"| {level['callers']} | {level['calls']} | "
                     + ", ".join(f"{kind} {n}" for kind, n in level["outcomes"].items())
                     + f" | {fmt(m50['ttfat_ms'], 0)} / {fmt(m95['ttfat_ms'], 0)}"
                     + f" | {fmt(m50['tts_ttfb_ms'], 0)} / {fmt(m95['tts_ttfb_ms'], 0)}"
                     + f" | {fmt(m50['llm_ttft_ms'], 0)} / {fmt(m95['llm_ttft_ms'], 0)}"
                     + f" | {fmt(gap['p50'])} / {fmt(gap['p95'])} / {fmt(gap['max'])}"
                     + f" | {fmt(lag['p50'])} / {fmt(lag['p95'])} / {fmt(lag['max'])} | {cores}"
                     + f" | {level['machine']['cpu_percent']:.0f} % |")
    lines += ["", "| callers | at each turn's first agent audio (median / max): calls open | callers streaming audio "
              "| agents playing | reply: segments, audio s (median) |", "|---|---|---|---|---|"]
    for level in results["levels"]:
        p50, top = level["at_first_audio_p50"], level["at_first_audio_max"]
        lines.append(f"| {level['callers']} | " + " | ".join(f"{fmt(p50[key], 0)} / {fmt(top[key], 0)}" for key in
                                                             ("calls_open", "callers_streaming", "agents_playing"))
                     + f" | {fmt(level['segments_p50'], 0)}, {fmt(level['reply_audio_s_p50'])} |")
    first = results["levels"][0]
    lines += ["", f"TTFAT of a typical turn at {first['callers']} caller(s) (median of each field, "
              f"{first['turns_matched']} turns):", "",
              "| " + " | ".join(name[:-3] for name in METRIC_FIELDS) + " | edge overhead inside TTFAT (a+b+c) |",
              "|" + "---|" * (len(METRIC_FIELDS) + 1)]
    inside = [t["dispatch"] + t["tts_send"] + t["pickup"] for t in first["per_turn"]
              if None not in (t["dispatch"], t["tts_send"], t["pickup"])]
    lines.append("| " + " | ".join(f"{fmt(first['metrics_p50_ms'][name], 0)} ms" for name in METRIC_FIELDS)
                 + f" | {fmt(pct(inside, 50))} ms |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--max-tokens", type=int, default=12, help="the reply's length (persona max_tokens)")
    parser.add_argument("--min-calls", type=int, default=20,
                        help="levels with fewer callers run rounds until they have this many calls")
    parser.add_argument("--warmup", type=int, default=1, help="calls before the first level, not counted")
    parser.add_argument("--hop-p50-ms", type=float, default=HOP_P50_MS)
    parser.add_argument("--hop-p95-ms", type=float, default=HOP_P95_MS)
    parser.add_argument("--pad-silence-s", type=float, default=0.0,
                        help="silence after the speech, streamed in real time (callers keep their audio stream busy)")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "edge_overhead.json")
    args = parser.parse_args()

    from services.cli import edge_secret

    secret = edge_secret(ROOT / "serve_config.cpu.yaml")
    tokens = (token(secret, greeting="", max_tokens=args.max_tokens) for _ in itertools.count())
    audio, rate = read_wav(AUDIO)
    audio = np.concatenate([audio, np.zeros(int(args.pad_silence_s * rate), audio.dtype)])
    url = f"ws://127.0.0.1:{HTTP_PORT}/v1/conversation"
    os.environ["RAY_AUTH_MODE"] = "disabled"
    load_before = os.getloadavg()

    async def measure(cluster: LocalCluster) -> list[dict]:
        async with ray_driver(GCS_PORT):
            for _ in range(args.warmup):
                outcome = await one_call(url, next(tokens), audio, rate, 0.0)
                print(f"  warm-up call: {classify(outcome)}", flush=True)
            return [await run_level(level, max(1, math.ceil(args.min_calls / level)), url, tokens, audio, rate,
                                    cluster, args.hop_p50_ms, args.hop_p95_ms) for level in args.levels]

    original = caller.CallResult
    with cpu_cluster(GCS_PORT, DASHBOARD_PORT, HTTP_PORT, GRPC_PORT) as cluster:
        try:
            caller.CallResult = StampedResult
            levels = asyncio.run(measure(cluster))
        finally:
            caller.CallResult = original
    results = {"hop_ms": {"p50": args.hop_p50_ms, "p95": args.hop_p95_ms}, "max_tokens": args.max_tokens,
               "pad_silence_s": args.pad_silence_s,
               "loadavg_before": [round(x, 2) for x in load_before], "levels": levels}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print()
    print(tables(results))
    print(f"\nJSON with every turn: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
