"""Benchmark: orchestration latency with reference engines (fixed engine timings), N callers at once.

    python load/turn_latency.py [--levels 1 10 50] [--utterances 3] [--end-of-turn silence|smart_turn]
                                [--asr-ms 50 --ttft-ms 100 --tok-ms 20 --ttfb-ms 80 --silence-ms 300]
                                [--edge segments.first_min_words=1 turn_taking.preemptive.silence_ms=100 ...]
                                [--transport websocket|direct]
                                [--out out/turn_latency.json]

Starts its own local Ray cluster (GCS 6450, dashboard 8350, HTTP 18500, gRPC 19500) running the
cascade on the reference engines (load/reference_cluster.py): a known transcript `asr_ms` after
the ASR's VAD ends the utterance, a known 28-word reply streamed at `ttft_ms` + `tok_ms` per
token, audio `ttfb_ms` after each text segment. For each level N, N WebSocket callers connect
(starts spread over 3 s), each speaks `--utterances` questions synthesized by espeak-ng, waits
out the agent's reply in silence after each, and stays connected throughout (real time).
`--transport direct` admits each call with `POST /v1/calls` and holds it on the edge replica's
direct media endpoint instead of Serve's HTTP proxy (docs/websocket-protocol.md, "Direct media").

Per turn: TTFAT at the caller = the first agent audio frame of the reply (after its
`agent_audio_start`) minus the time the frame holding the end of the caller's speech actually
left (host monotonic clock; both ends live on this machine). A turn whose reply has not started
before the caller's next utterance, or that ends while earlier replies are still pending, counts
as unanswered. Reported per level: TTFAT p50/p95/max, the edge's own TTFAT p50
(`metrics` events), the engine budget of a strictly serial pipeline (silence + ASR + first
sentence's tokens + TTS first audio), the time the pipeline hides by overlapping (budget - p50;
negative: orchestration overhead), the edge's latency components (p50 of each `metrics` field,
and `other_ms`: TTFAT less endpointing, ASR final, first clause and TTS first audio, i.e. what
the edge adds between those events), the preemptive replies thrown away (the caller went on
after a pause inside an utterance) and their LLM tokens, the CPU the cluster and the callers used (cores, over the
level's wall time), and the callers' own event-loop lag (so a late caller is seen, not blamed on
the system).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from load.call_cost import cluster_processes  # noqa: E402
from load.edge_overhead import METRIC_FIELDS, cpu_by_group, loop_lag, pct  # noqa: E402
from load.real_ttfat import QUESTIONS  # noqa: E402
from load.reference_cluster import Ports, Timings, caller_token, edge_setting, nested, reference_cluster  # noqa: E402
from load.reference_engines import REPLY  # noqa: E402
from load.timed_call import TimedCall, speech_bounds, timed_call  # noqa: E402
from tests.speech import espeak  # noqa: E402

PORTS = Ports(gcs=6450, dashboard=8350, http=18500, grpc=19500)
RATE = 16_000
STAGGER_S = 3.0
REPLY_WAIT_S = 11.0  # the 28-word reply plays ~9.2 s: the caller waits it out before speaking again
FIRST_SENTENCE_WORDS = len(REPLY.split(".")[0].split())
# The `metrics` fields that add up to TTFAT along the reply's path; the rest is the edge's own time.
ENGINE_FIELDS = ("endpointing_ms", "asr_final_ms", "first_sentence_ms", "tts_ttfb_ms")


def caller_audio(index: int, utterances: int, rng: random.Random) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """One caller's whole call: a random lead-in, then each question and the silence after it.
    Returns the audio and each utterance's (speech start, speech end) sample offsets."""
    parts = [np.zeros(int(rng.uniform(0.5, STAGGER_S) * RATE), np.float32)]
    offset, bounds = parts[0].size, []
    for turn in range(utterances):
        speech = espeak(QUESTIONS[(index + turn) % len(QUESTIONS)], RATE).astype(np.float32)
        first, last = speech_bounds(speech, RATE)
        bounds.append((offset + first, offset + last))
        parts += [speech, np.zeros(int(REPLY_WAIT_S * RATE), np.float32)]
        offset += speech.size + parts[-1].size
    return np.concatenate(parts), bounds


def turn_rows(call: TimedCall, bounds: list[tuple[int, int]]) -> list[dict]:
    """Per utterance: its TTFAT at the caller, None when its reply did not start before the next
    utterance. The reply to utterance k is the (k+1)-th `agent_audio_start`: when earlier replies
    are still pending at the end of utterance k (a backlog), its reply cannot be told apart from
    theirs and it counts as unanswered rather than be credited with a late reply's audio."""
    starts = sorted(at for at, _ in call.of_type("agent_audio_start"))
    rows = []
    for turn, (_, end) in enumerate(bounds):
        ended = call.sent.get(end)
        following = call.sent.get(bounds[turn + 1][0], float("inf")) if turn + 1 < len(bounds) else float("inf")
        first = None
        if ended is not None and sum(at < ended for at in starts) == turn:
            start = next((at for at in starts if ended <= at < following), None)
            first = None if start is None else call.first_audio_between(start, following)
        rows.append({"turn": turn, "ttfat_ms": None if first is None else (first - ended) * 1000})
    return rows


async def call_target(url: str, transport: str) -> tuple[str, str]:
    """(the URL to open the call on, its token): over Serve's proxy, or admitted for direct media
    with a token of its own (the direct endpoint spends it)."""
    token = caller_token()
    if transport == "websocket":
        return url, token
    from services.edge.caller import admit

    return await admit(url.replace("ws://", "http://").removesuffix("/v1/conversation"), token), token


async def run_level(url: str, transport: str, callers: int, utterances: int, processes) -> dict:
    rng = random.Random(callers)
    plans = [caller_audio(index, utterances, rng) for index in range(callers)]
    targets = [await call_target(url, transport) for _ in plans]
    lag: list[float] = []
    stop = asyncio.Event()
    lagging = asyncio.create_task(loop_lag(lag, stop))
    cpu_before, wall_before = cpu_by_group(processes), time.monotonic()
    calls = await asyncio.gather(*(timed_call(media_url, token, audio, RATE, [b for pair in bounds for b in pair],
                                              tail_s=1.0)
                                   for (media_url, token), (audio, bounds) in zip(targets, plans, strict=True)))
    wall = time.monotonic() - wall_before
    cpu_after = cpu_by_group(processes)
    stop.set()
    await lagging
    rows = [row for call, (_, bounds) in zip(calls, plans, strict=True) for row in turn_rows(call, bounds)]
    ttfats = [row["ttfat_ms"] for row in rows if row["ttfat_ms"] is not None]
    edge = [event["ttfat_ms"] for call in calls for _, event in call.of_type("metrics") if event.get("ttfat_ms")]
    events = [event for call in calls for _, event in call.of_type("metrics")]
    components = {name: pct([e[name] for e in events if e.get(name) is not None], 50) for name in METRIC_FIELDS}
    components["other_ms"] = pct([e["ttfat_ms"] - sum(e[name] for name in ENGINE_FIELDS) for e in events
                                  if all(e.get(name) is not None for name in ("ttfat_ms", *ENGINE_FIELDS))], 50)
    cpu = {group: round(cpu_after[group] - cpu_before.get(group, 0.0), 2) for group in cpu_after}
    return {"callers": callers, "turns": len(rows), "answered": len(ttfats),
            "errors": [call.error for call in calls if call.error],
            "ttfat_p50_ms": pct(ttfats, 50), "ttfat_p95_ms": pct(ttfats, 95),
            "ttfat_max_ms": max(ttfats) if ttfats else None, "edge_ttfat_p50_ms": pct(edge, 50),
            "cpu_s": cpu, "cluster_cores": round((sum(cpu.values()) - cpu.get("callers (this script)", 0.0)) / wall, 2),
            "caller_cores": round(cpu.get("callers (this script)", 0.0) / wall, 2), "wall_s": round(wall, 1),
            "caller_lag_p95_ms": pct(lag, 95), "edge_components_p50_ms": components,
            "discarded_replies": sum(e.get("discarded_replies", 0) for e in events),
            "discarded_llm_tokens": sum(e.get("discarded_llm_tokens", 0) for e in events)}


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def table(levels: list[dict], budget: float) -> str:
    lines = ["| callers | turns answered | TTFAT p50 | p95 | max | edge TTFAT p50 | engine budget | hidden by overlap "
             "| cluster CPU (cores) | callers' CPU (cores) | callers' loop lag p95 |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for level in levels:
        hidden = None if level["ttfat_p50_ms"] is None else budget - level["ttfat_p50_ms"]
        lines.append(f"| {level['callers']} | {level['answered']}/{level['turns']} | {fmt(level['ttfat_p50_ms'])} ms "
                     f"| {fmt(level['ttfat_p95_ms'])} ms | {fmt(level['ttfat_max_ms'])} ms "
                     f"| {fmt(level['edge_ttfat_p50_ms'])} ms | {budget:.0f} ms | {fmt(hidden)} ms "
                     f"| {level['cluster_cores']:.2f} | {level['caller_cores']:.2f} | {fmt(level['caller_lag_p95_ms'])} ms |")
    return "\n".join(lines)


async def run_levels(url: str, transport: str, levels: list[int], utterances: int, processes) -> list[dict]:
    results = []
    await timed_call(*await call_target(url, transport), np.zeros(RATE, np.float32), RATE, [], tail_s=0.5)  # warm
    for callers in levels:
        print(f"-- {callers} caller(s)", flush=True)
        level = await run_level(url, transport, callers, utterances, processes)
        print(json.dumps({k: v for k, v in level.items() if k != "cpu_s"}), flush=True)
        results.append(level)
        await asyncio.sleep(3)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--utterances", type=int, default=3)
    parser.add_argument("--end-of-turn", choices=("silence", "smart_turn"), default="silence")
    parser.add_argument("--no-preemptive", action="store_true", help="reply only once the turn is confirmed")
    for name, default in (("asr-ms", 50), ("ttft-ms", 100), ("tok-ms", 20), ("ttfb-ms", 80), ("silence-ms", 300)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--edge", nargs="*", default=[], metavar="PATH=VALUE", type=edge_setting,
                        help="edge args to set, e.g. segments.first_min_words=1 turn_taking.preemptive.silence_ms=100")
    parser.add_argument("--transport", choices=("websocket", "direct"), default="websocket")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "turn_latency.json")
    args = parser.parse_args(argv)
    edge_args = nested(args.edge)
    timings = Timings(args.asr_ms, args.ttft_ms, args.tok_ms, args.ttfb_ms, args.silence_ms)
    budget = timings.budget_ms(FIRST_SENTENCE_WORDS)
    print(f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)", flush=True)
    with reference_cluster(timings, PORTS, end_of_turn=args.end_of_turn, preemptive=not args.no_preemptive,
                           edge_args=edge_args) as (url, cluster):
        import psutil

        processes = [*cluster_processes(cluster), psutil.Process()]
        levels = asyncio.run(run_levels(url, args.transport, args.levels, args.utterances, processes))
    mode = "serial (no preemptive reply)" if args.no_preemptive else "preemptive reply"
    print(f"\nreference engines {timings}, end of turn {args.end_of_turn}, {mode}, {args.transport} transport, "
          f"edge args {edge_args}\n\n"
          f"{table(levels, budget)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"timings": vars(timings), "end_of_turn": args.end_of_turn, "budget_ms": budget,
                                    "preemptive": not args.no_preemptive, "edge_args": edge_args,
                                    "transport": args.transport,
                                    "levels": levels, "loadavg_after": os.getloadavg()}, indent=1))
    print(f"-> {args.out}")
    return 0 if all(level["answered"] for level in levels) else 1


if __name__ == "__main__":
    sys.exit(main())
