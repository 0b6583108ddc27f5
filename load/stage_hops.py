"""Benchmark: what Serve's gRPC proxy adds per hop, and the CPU cost of a real-time audio stream.

    python load/stage_hops.py [--seconds 10] [--out out/stage_hops.json]

Starts its own local Ray cluster (ports 6420/8320, gRPC 19200), deploys the `probe` app
(services.common.probe) and the real `asr` app from serve_config.cpu.yaml, then measures:
  1. hop latency, client send -> replica user code receives, for 20/40/100 ms audio frames
     (one real-time stream), p50/p95;
  2. CPU of every Ray process (proxy, replicas, raylet, GCS) per real-time stream of 100 ms frames
     at 1, 10 and 50 concurrent streams, for the probe (transport only) and for the real ASR on
     silence (transport + resampling + VAD).
Prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.cluster import LocalCluster, render_config  # noqa: E402
from services.common.aio import paced  # noqa: E402
from services.common.audio import float_to_pcm16  # noqa: E402
from services.common.clients import open_channel  # noqa: E402
from services.common.rpc import stage_metadata  # noqa: E402
from services.proto import asr_pb2, asr_pb2_grpc, common_pb2  # noqa: E402

RATE = 16_000
GRPC_PORT = 19200


async def stream(channel, app: str, frame_ms: int, seconds: float, sends: dict | None, receipts: list | None):
    """One real-time audio stream of low noise; records send times and probe receipts."""
    frame = float_to_pcm16(np.random.default_rng(0).normal(0, 1e-4, RATE * frame_ms // 1000).astype(np.float32))
    frames = int(seconds * 1000 / frame_ms)

    async def requests():
        yield asr_pb2.RecognizeRequest(config=asr_pb2.RecognitionConfig(sample_rate_hz=RATE))
        async for index in paced(range(frames), frame_ms / 1000):
            if sends is not None:
                sends[index] = time.time()
            yield asr_pb2.RecognizeRequest(audio=common_pb2.AudioChunk(pcm=frame))

    stub = asr_pb2_grpc.SpeechRecognitionStub(channel)
    async for response in stub.Recognize(requests(), metadata=stage_metadata(app)):
        if receipts is not None and response.WhichOneof("event") == "speech_started":
            receipts.append((response.speech_started.utterance_id, response.speech_started.audio_offset_s))


async def hop_latency(frame_ms: int, seconds: float) -> dict:
    sends, receipts = {}, []
    async with open_channel(f"127.0.0.1:{GRPC_PORT}") as channel:
        await stream(channel, "probe", frame_ms, seconds, sends, receipts)
    latencies = np.array([(received - sends[index]) * 1000 for index, received in receipts[5:]])
    return {"frame_ms": frame_ms, "frames": len(latencies), "p50_ms": float(np.percentile(latencies, 50)),
            "p95_ms": float(np.percentile(latencies, 95))}


def ray_processes() -> list[psutil.Process]:
    me = psutil.Process().pid
    found = []
    for process in psutil.process_iter(["cmdline", "pid"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if process.info["pid"] != me and ("ray" in cmdline or "gcs_server" in cmdline or "raylet" in cmdline):
            found.append(process)
    return found


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


async def cpu_per_stream(app: str, streams: int, seconds: float) -> dict:
    processes = ray_processes()
    idle_before = cpu_seconds(processes)
    await asyncio.sleep(3)
    idle_rate = (cpu_seconds(processes) - idle_before) / 3  # cores used by an idle cluster
    async with open_channel(f"127.0.0.1:{GRPC_PORT}") as channel:
        before, started = cpu_seconds(processes), time.perf_counter()
        await asyncio.gather(*(stream(channel, app, 100, seconds, None, None) for _ in range(streams)))
        wall = time.perf_counter() - started
        used = cpu_seconds(processes) - before
    busy = max(used / wall - idle_rate, 0.0)
    return {"app": app, "streams": streams, "cores_busy": round(busy, 3),
            "percent_core_per_stream": round(100 * busy / streams, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "stage_hops.json")
    args = parser.parse_args()

    cluster = LocalCluster(gcs_port=6420, dashboard_port=8320, num_cpus=4, workdir=ROOT,
                           env={"RAY_AUTH_MODE": "disabled"})
    with tempfile.TemporaryDirectory() as tmp:
        config = render_config(ROOT / "serve_config.cpu.yaml", Path(tmp) / "serve.yaml", http_port=18200,
                               grpc_port=GRPC_PORT, applications=["asr"], models="tiny")
        data = yaml.safe_load(config.read_text())
        data["applications"].append({"name": "probe", "route_prefix": "/probe",
                                     "import_path": "services.common.probe:build_app"})
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        cluster.stop()
        cluster.start()
        try:
            cluster.deploy(config)
            cluster.wait_running(["asr", "probe"])
            results = {"latency": [asyncio.run(hop_latency(ms, args.seconds)) for ms in (20, 40, 100)],
                       "cpu": [asyncio.run(cpu_per_stream(app, n, args.seconds))
                               for app in ("probe", "asr") for n in (1, 10, 50)]}
        finally:
            cluster.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print("\n| frame | frames | hop p50 | hop p95 |\n|---|---|---|---|")
    for row in results["latency"]:
        print(f"| {row['frame_ms']} ms | {row['frames']} | {row['p50_ms']:.2f} ms | {row['p95_ms']:.2f} ms |")
    print("\n| app | streams | cores busy | % of a core per stream |\n|---|---|---|---|")
    for row in results["cpu"]:
        print(f"| {row['app']} | {row['streams']} | {row['cores_busy']} | {row['percent_core_per_stream']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
