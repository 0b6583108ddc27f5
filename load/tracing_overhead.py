"""Benchmark: what tracing every conversation at 100% sampling costs, against tracing off.

    python load/tracing_overhead.py [--callers 2] [--calls 20] [--cycles 2] [--out out/tracing_overhead.json]

Runs the same workload on a fresh local cluster per phase, alternating off / on for --cycles
cycles (so slow drift in the machine's other load hits both modes alike):

- off: serve_config.cpu.yaml as shipped (no tracing_config, no OTLP endpoint: the no-op API);
- on: the same config with Serve's tracing_config, every Ray process started with
  services.cluster.tracing_env (100% sampling, Serve's proxy/replica spans and Parley's), spans
  exported by the SDK's batching OTLP/gRPC exporter to a real OTLP receiver in this process
  (tests/otlp_receiver.py: the Export RPC Jaeger and the Collector serve).

Each phase: one warm-up call, then --calls calls of services/assets/hello.wav (one short turn
each: persona greeting="" and max_tokens=12), --callers at a time. Reported per mode: TTFAT p50
and the edge's own share of it (a+b+c of load/edge_overhead.py: dispatch, TTS send, playout
pick-up, on the edge's clock), llm_ttft and tts_ttfb p50, CPU seconds per conversation of every
process of the cluster (callers and receiver excluded), spans exported per conversation; and the
cost of one span measured in-process with the real SDK and exporter, which bounds what the
spans on a turn's critical path add to TTFAT.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from load.edge_overhead import classify, cpu_by_group, one_call, pct, token  # noqa: E402
from load.local import cpu_cluster, ray_driver  # noqa: E402
from services.cluster import LocalCluster, tracing_env  # noqa: E402
from services.common.audio import read_wav  # noqa: E402
from tests.otlp_receiver import OTLPReceiver  # noqa: E402

GCS_PORT, DASHBOARD_PORT, HTTP_PORT, GRPC_PORT = 6431, 8331, 18301, 19301
AUDIO = ROOT / "services" / "assets" / "hello.wav"
FIELDS = ("ttfat_ms", "llm_ttft_ms", "tts_ttfb_ms")


async def run_calls(url: str, tokens, audio: np.ndarray, rate: int, callers: int, calls: int,
                    cluster: LocalCluster) -> dict:
    from ray import serve

    edge = serve.get_app_handle("edge")
    before_turns = len((await edge.stats.remote(turns=True))["turns"])
    processes = cluster._processes()
    cpu_before = sum(cpu_by_group(processes).values())
    started = time.monotonic()
    outcomes = []
    for first in range(0, calls, callers):
        batch = min(callers, calls - first)
        outcomes += await asyncio.gather(*(one_call(url, next(tokens), audio, rate, 3.0 * i / batch)
                                           for i in range(batch)))
    wall = time.monotonic() - started
    cpu_s = sum(cpu_by_group(processes).values()) - cpu_before
    timelines = (await edge.stats.remote(turns=True))["turns"][before_turns:]
    metrics = [e for o in outcomes if o.result is not None for e in o.result.of_type("metrics")]
    inside = [(t["llm_request"] - t["asr_final"]) + (t["tts_request"] - t["first_sentence"])
              + (t["first_audio_sent"] - t["tts_first_audio"]) for t in timelines
              if None not in (t.get("llm_request"), t.get("asr_final"), t.get("tts_request"),
                              t.get("first_sentence"), t.get("first_audio_sent"), t.get("tts_first_audio"))]
    ok = sum(classify(o) == "ok" for o in outcomes)
    return {"calls": len(outcomes), "ok": ok, "turns": len(metrics), "wall_s": round(wall, 1),
            "cpu_s": round(cpu_s, 2), "cpu_s_per_call": round(cpu_s / max(1, len(outcomes)), 3),
            "edge_inside_ttfat_ms": [x * 1000 for x in inside],
            **{name: [e[name] for e in metrics if e[name] is not None] for name in FIELDS}}


def phase(traced: bool, args, receiver: OTLPReceiver, tokens, audio, rate) -> dict:
    url = f"ws://127.0.0.1:{HTTP_PORT}/v1/conversation"

    async def measure(cluster: LocalCluster) -> dict:
        async with ray_driver(GCS_PORT):
            await one_call(url, next(tokens), audio, rate, 0.0)  # warm-up
            spans_before = len(receiver.spans())
            result = await run_calls(url, tokens, audio, rate, args.callers, args.calls, cluster)
            await asyncio.sleep(6)  # the exporters' 5 s batch interval
            result["spans"] = len(receiver.spans()) - spans_before
            return result

    env = tracing_env(receiver.endpoint) if traced else {}
    with cpu_cluster(GCS_PORT, DASHBOARD_PORT, HTTP_PORT, GRPC_PORT, env=env, tracing=traced, quiet=True) as cluster:
        return asyncio.run(measure(cluster))


def span_cost_us(receiver: OTLPReceiver, n: int = 20000) -> dict:
    """Microseconds to start and end one span with ten attributes, with the real SDK, the batching
    processor and the OTLP exporter (export runs on the processor's thread, off the caller's path)."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=receiver.endpoint, insecure=True)))
    tracer = provider.get_tracer("bench")
    attributes = {f"parley.bench.{i}": float(i) for i in range(10)}
    samples = []
    for _ in range(n):
        started = time.perf_counter_ns()
        tracer.start_span("bench", attributes=attributes).end()
        samples.append((time.perf_counter_ns() - started) / 1000)
    provider.shutdown()
    return {"p50": pct(samples, 50), "p95": pct(samples, 95), "mean": float(np.mean(samples))}


def summarise(phases: list[dict]) -> dict:
    merged: dict[str, dict] = {}
    for mode in ("off", "on"):
        runs = [p for p in phases if p["mode"] == mode]
        values = {name: [v for p in runs for v in p[name]] for name in (*FIELDS, "edge_inside_ttfat_ms")}
        calls = sum(p["calls"] for p in runs)
        merged[mode] = {
            "calls": calls, "ok": sum(p["ok"] for p in runs), "turns": sum(p["turns"] for p in runs),
            **{f"{name}_p50": pct(v, 50) for name, v in values.items()},
            "ttfat_ms_p50_per_phase": [pct(p["ttfat_ms"], 50) for p in runs],
            "cpu_s_per_call": sum(p["cpu_s"] for p in runs) / max(1, calls),
            "spans_per_call": sum(p["spans"] for p in runs) / max(1, calls),
        }
    return merged


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Few callers at a time: with more, the tiny TTS's queue dominates TTFAT and hides everything else.
    parser.add_argument("--callers", type=int, default=2, help="calls at a time")
    parser.add_argument("--calls", type=int, default=20, help="calls per phase")
    parser.add_argument("--cycles", type=int, default=2, help="off/on cycles")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "tracing_overhead.json")
    args = parser.parse_args()

    from services.cli import edge_secret

    secret = edge_secret(ROOT / "serve_config.cpu.yaml")
    tokens = (token(secret, greeting="", max_tokens=12) for _ in itertools.count())
    audio, rate = read_wav(AUDIO)
    os.environ["RAY_AUTH_MODE"] = "disabled"
    receiver = OTLPReceiver().start()
    phases = []
    try:
        for cycle in range(args.cycles):
            for mode in ("off", "on"):
                print(f"cycle {cycle + 1}/{args.cycles}, tracing {mode}: {args.calls} calls, {args.callers} at a time",
                      flush=True)
                result = phase(mode == "on", args, receiver, tokens, audio, rate)
                phases.append({"mode": mode, **result})
                print(f"  {result['ok']}/{result['calls']} ok, TTFAT p50 {pct(result['ttfat_ms'], 50):.0f} ms, "
                      f"{result['cpu_s_per_call']:.2f} CPU s per call, {result['spans']} spans", flush=True)
        span = span_cost_us(receiver)
    finally:
        receiver.stop()
    summary = summarise(phases)
    load = os.getloadavg()
    results = {"callers": args.callers, "calls_per_phase": args.calls, "span_cost_us": span, "summary": summary,
               "loadavg_at_end": [round(x, 2) for x in load], "phases": phases}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))

    off, on = summary["off"], summary["on"]
    print("\n| tracing | calls (ok) | TTFAT p50 (per phase) | edge share of TTFAT p50 | llm_ttft p50 | tts_ttfb p50 "
          "| cluster CPU s per call | spans per call |\n|---|---|---|---|---|---|---|---|")
    for mode, row in (("off", off), ("on, 100%", on)):
        phases_ = ", ".join(f"{v:.0f}" for v in row["ttfat_ms_p50_per_phase"] if v is not None)
        print(f"| {mode} | {row['calls']} ({row['ok']}) | {row['ttfat_ms_p50']:.0f} ms ({phases_}) "
              f"| {row['edge_inside_ttfat_ms_p50']:.2f} ms | {row['llm_ttft_ms_p50']:.0f} ms "
              f"| {row['tts_ttfb_ms_p50']:.0f} ms | {row['cpu_s_per_call']:.2f} | {row['spans_per_call']:.0f} |")
    print(f"\nOne span (start + 10 attributes + end, batching OTLP exporter): p50 {span['p50']:.1f} us, "
          f"p95 {span['p95']:.1f} us. CPU per call: {100 * (on['cpu_s_per_call'] / off['cpu_s_per_call'] - 1):+.1f}%.")
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
