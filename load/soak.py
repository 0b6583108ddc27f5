"""Soak: continuous simulated calls for a long time while stage replicas are killed now and then.

    python load/soak.py [--minutes 30] [--callers 2] [--kill-every-s 240] [--out out/soak.json]

Starts its own local cluster (GCS 6432, dashboard 8332, HTTP 18302, gRPC 19302) with
serve_config.cpu.yaml, then keeps `--callers` calls going back to back (services/assets/hello.wav
and a little silence; one turn each) for `--minutes`. Every `--kill-every-s` it kills one stage
replica's Ray actor, as a crash would, in turn asr -> tts -> llm; Serve starts a replacement and
the edge's live calls re-open their streams on it (services/edge/streams/).

Reports: calls completed and dropped (a call that did not end with the agent's reply to its
final transcript, or closed abnormally), each call's TTFAT, the worst gap a caller heard inside
a reply (a caller playing frames as they arrive), the edge's stage re-opens, and the resident
memory of each long-lived process (edge, proxies, controller, GCS, raylet) after warm-up and at
the end. Replicas that were killed are new processes at the end: their memory is reported too,
but is not a growth figure.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from load.edge_overhead import StampedResult, _group, heard_gaps, pct, token, turn_frames  # noqa: E402
from load.local import cpu_cluster, ray_driver  # noqa: E402
from services.cluster import LocalCluster  # noqa: E402
from services.common.audio import read_wav  # noqa: E402
from services.edge import caller  # noqa: E402

GCS_PORT, DASHBOARD_PORT, HTTP_PORT, GRPC_PORT = 6432, 8332, 18302, 19302
AUDIO = ROOT / "services" / "assets" / "hello.wav"
VICTIMS = (("asr", "SpeechRecognition"), ("tts", "SpeechSynthesis"), ("llm", "LanguageModel"))


def memory_by_group(cluster: LocalCluster) -> dict[str, float]:
    """Resident MB per process group (the same grouping as the edge overhead benchmark)."""
    totals: dict[str, float] = {}
    for process in cluster._processes():
        try:
            group, rss = _group(process), process.memory_info().rss / 2**20
        except psutil.Error:
            continue
        totals[group] = totals.get(group, 0.0) + rss
    return {group: round(mb, 1) for group, mb in sorted(totals.items())}


def outcome(result: StampedResult | None, error: str | None) -> dict:
    if result is None:
        return {"ok": False, "why": error}
    metrics = result.of_type("metrics")
    gaps = [heard_gaps(turn_frames(result, m["turn_id"]))[1] for m in metrics]
    ok = result.close_code in (1000, None) and caller.settled(result) and not result.of_type("error")
    return {"ok": ok, "why": None if ok else f"close {result.close_code}, events "
            f"{[e['type'] for e in result.events if e['type'] not in ('transcript', 'agent_text')]}",
            "ttfat_ms": [m["ttfat_ms"] for m in metrics], "worst_gap_ms": max(gaps, default=0.0)}


async def caller_loop(url: str, tokens, audio: np.ndarray, rate: int, until: float, calls: list[dict]) -> None:
    while time.monotonic() < until:
        try:
            result = await caller.call(url, next(tokens), audio, rate, tail_s=60, until=caller.settled)
            calls.append(outcome(result, None))
        except Exception as error:  # refused at connect, dropped mid-handshake
            calls.append(outcome(None, f"{type(error).__name__}: {error}"[:200]))


async def killer(every_s: float, until: float, dashboard: str, kills: list[dict]) -> None:
    started = time.monotonic()
    import ray
    from ray.util.state import list_actors

    for application, deployment in itertools.cycle(VICTIMS):
        await asyncio.sleep(every_s)
        if time.monotonic() + 30 > until:
            return
        actors = await asyncio.to_thread(list_actors, address=dashboard, filters=[
            ("class_name", "=", f"ServeReplica:{application}:{deployment}"), ("state", "=", "ALIVE")])
        for actor in actors:
            ray.kill(ray.get_actor(actor.name, namespace="serve"), no_restart=True)
        kills.append({"at_s": round(time.monotonic() - started, 1), "stage": application, "replicas": len(actors)})
        print(f"  killed {len(actors)} {application} replica(s); {len(kills)} kills so far", flush=True)


async def report_progress(calls: list[dict], until: float) -> None:
    while True:
        await asyncio.sleep(60)
        left = max(0.0, until - time.monotonic()) / 60
        print(f"  {len(calls)} calls, {sum(not c['ok'] for c in calls)} dropped, {left:.0f} min left", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--callers", type=int, default=2)
    parser.add_argument("--kill-every-s", type=float, default=240)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "soak.json")
    args = parser.parse_args()

    from services.cli import edge_secret

    secret = edge_secret(ROOT / "serve_config.cpu.yaml")
    tokens = (token(secret, greeting="", max_tokens=12) for _ in itertools.count())
    audio, rate = read_wav(AUDIO)
    audio = np.concatenate([audio, np.zeros(rate * 2, audio.dtype)])
    url = f"ws://127.0.0.1:{HTTP_PORT}/v1/conversation"
    os.environ["RAY_AUTH_MODE"] = "disabled"
    calls: list[dict] = []
    kills: list[dict] = []

    async def soak(cluster: LocalCluster) -> dict:
        from ray import serve

        async with ray_driver(GCS_PORT):
            await caller.call(url, next(tokens), audio, rate, tail_s=30, until=caller.settled)  # warm-up
            memory_start = memory_by_group(cluster)
            until = time.monotonic() + args.minutes * 60
            progress = asyncio.create_task(report_progress(calls, until))
            await asyncio.gather(killer(args.kill_every_s, until, cluster.dashboard, kills),
                                 *(caller_loop(url, tokens, audio, rate, until, calls) for _ in range(args.callers)))
            progress.cancel()
            edge = await serve.get_app_handle("edge").stats.remote()
            return {"memory_start_mb": memory_start, "memory_end_mb": memory_by_group(cluster),
                    "stage_retries": edge.get("stage_retries", {}), "edge_tasks_end": edge["tasks"]}

    caller.CallResult = StampedResult  # keeps arrival times of agent audio (heard gaps)
    with cpu_cluster(GCS_PORT, DASHBOARD_PORT, HTTP_PORT, GRPC_PORT) as cluster:
        extra = asyncio.run(soak(cluster))
    ttfat = [t for call in calls for t in call.get("ttfat_ms", [])]
    results = {"minutes": args.minutes, "callers": args.callers, "calls": len(calls),
               "completed": sum(c["ok"] for c in calls), "dropped": sum(not c["ok"] for c in calls),
               "why_dropped": [c["why"] for c in calls if not c["ok"]][:20], "kills": kills,
               "ttfat_ms_p50": pct(ttfat, 50), "ttfat_ms_p95": pct(ttfat, 95), "ttfat_ms_max": max(ttfat, default=None),
               "worst_gap_heard_ms": max((c.get("worst_gap_ms", 0.0) for c in calls), default=0.0), **extra}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "why_dropped"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
