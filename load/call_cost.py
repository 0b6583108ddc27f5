"""Benchmark: CPU cost of a live call, per process group, with callers that only stream silence.

    python load/call_cost.py [--callers 10] [--seconds 60] [--code DIR] [--out out/call_cost.json]

Starts its own local Ray cluster (GCS 6440, dashboard 8340, HTTP 18400, gRPC 19400) with the
embedded default's applications on the tiny models, measures the idle cluster for `--seconds`,
then connects N WebSocket callers (no greeting) that each send 20 ms frames of silence in real
time for `--seconds`, and reports the CPU every Ray process used, minus the idle cluster's, per
call and per second of call (ms/s). Nobody speaks, so no turn is taken: this is the floor cost
of holding a call open (transport in, edge, caller audio to ASR, ASR's VAD).

`--code DIR` runs the cluster on another checkout of Parley (its PYTHONPATH and working
directory), so two versions are measured the same way on the same machine, one after the other.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from load.edge_overhead import cpu_by_group  # noqa: E402
from load.local import cpu_cluster  # noqa: E402

GCS_PORT, DASHBOARD_PORT, HTTP_PORT, GRPC_PORT = 6440, 8340, 18400, 19400
RATE, FRAME_MS = 16_000, 20


async def silent_caller(url: str, token: str, seconds: float, started: asyncio.Event) -> int:
    """One call that streams silence in real time; returns the agent audio bytes it received."""
    import websockets

    frame = bytes(RATE * FRAME_MS // 1000 * 2)
    received = 0
    async with websockets.connect(url, max_size=None) as socket:
        await socket.send(json.dumps({"type": "start", "token": token, "input_sample_rate": RATE,
                                      "output_sample_rate": RATE, "greeting": False}))
        while True:  # wait for `ready`
            message = await socket.recv()
            if isinstance(message, str) and json.loads(message).get("type") == "ready":
                break
        await started.wait()
        deadline = loop_start = time.monotonic()
        while deadline - loop_start < seconds:
            await socket.send(frame)
            deadline += FRAME_MS / 1000
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            while True:  # drain what the edge sent without blocking the pace
                try:
                    message = await asyncio.wait_for(socket.recv(), 0)
                except TimeoutError:
                    break
                if isinstance(message, bytes):
                    received += len(message)
        await socket.send(json.dumps({"type": "stop"}))
    return received


def cluster_processes(cluster) -> list[psutil.Process]:
    return [process for process in cluster._processes() if process.pid != os.getpid()]


def cpu_over(processes: list[psutil.Process], seconds: float) -> dict[str, float]:
    """CPU seconds per process group over a window that starts now and lasts `seconds`."""
    before = cpu_by_group(processes)
    time.sleep(seconds)
    after = cpu_by_group(processes)
    return {group: after[group] - before.get(group, 0.0) for group in after}


async def measure_calls(url: str, token: str, callers: int, seconds: float,
                        processes: list[psutil.Process]) -> dict[str, float]:
    started = asyncio.Event()
    calls = [asyncio.create_task(silent_caller(url, token, seconds + 2, started)) for _ in range(callers)]
    await asyncio.sleep(3)  # every call connected and `ready`
    started.set()
    await asyncio.sleep(1)
    cpu = await asyncio.to_thread(cpu_over, processes, seconds)
    await asyncio.gather(*calls)
    return cpu


def report(idle: dict[str, float], busy: dict[str, float], callers: int, seconds: float) -> dict:
    per_call = {group: (busy.get(group, 0.0) - idle.get(group, 0.0)) * 1000 / seconds / callers
                for group in busy}
    per_call = {group: round(value, 1) for group, value in sorted(per_call.items(), key=lambda kv: -kv[1])
                if abs(value) >= 0.5}
    return {"callers": callers, "seconds": seconds, "ms_per_s_per_call": per_call,
            "total_ms_per_s_per_call": round(sum(per_call.values()), 1),
            "loadavg_1m": round(os.getloadavg()[0], 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--callers", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--code", type=Path, default=ROOT, help="the Parley checkout the cluster runs")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "call_cost.json")
    args = parser.parse_args()

    import jwt

    from services.cli import edge_secret

    code = args.code.resolve()
    secret = edge_secret(ROOT / "serve_config.cpu.yaml")
    token = jwt.encode({"sub": "call-cost", "exp": int(time.time()) + 3600}, secret, algorithm="HS256")
    url = f"ws://127.0.0.1:{HTTP_PORT}/v1/conversation"
    with cpu_cluster(GCS_PORT, DASHBOARD_PORT, HTTP_PORT, GRPC_PORT, workdir=code,
                     env={"PYTHONPATH": str(code)}) as cluster:
        processes = cluster_processes(cluster)
        time.sleep(5)  # let the freshly deployed cluster settle
        idle = cpu_over(processes, args.seconds)
        busy = asyncio.run(measure_calls(url, token, args.callers, args.seconds, processes))
    result = {"code": str(code), **report(idle, busy, args.callers, args.seconds)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
