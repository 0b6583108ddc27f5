"""Benchmark: CPU cost of a live call, per process group, with callers that stream silence or
now and then speak.

    python load/call_cost.py [--callers 10] [--seconds 60] [--speech] [--speak-every 20]
                             [--transport websocket|direct|twilio] [--engines tiny|reference]
                             [--code DIR] [--out out/call_cost.json]

Starts its own local Ray cluster (GCS 6440, dashboard 8340, HTTP 18400, gRPC 19400) with the
embedded default's applications on the tiny models, measures the idle cluster for `--seconds`,
then connects N callers (no greeting) that each send 20 ms frames in real time for `--seconds`,
and reports the CPU every Ray process used, minus the idle cluster's, per call and per second of
call (ms/s). Without `--speech` nobody speaks, so no turn is taken: the floor cost of holding a
call open (transport in, edge, caller audio to ASR). With `--speech` each caller says the bundled
sentence (services/assets/hello.wav, 4 s) every `--speak-every` seconds, the callers' first
utterances spread over one period; the report adds, measured at the callers: TTFAT p50/p95 (end of
the caller's speech to the reply's first audio frame arriving) and underruns (a reply frame
arriving after the audio before it would have finished playing, frames played back to back from
the reply's first arrival, 10 ms tolerance). Over the WebSocket the edge's own TTFAT p50 (its
`metrics` events) is listed beside the callers' for comparison.

`--transport direct` admits each call with `POST /v1/calls` (its own single-use token) and holds it
on the edge replica's direct media endpoint (docs/websocket-protocol.md, "Direct media"), so its
frames skip Serve's HTTP proxy. `--transport twilio` calls /v1/twilio/media as Twilio Media Streams does (signed upgrade, edge
token minted for the call as the voice webhook mints it, mu-law 8 kHz). LiveKit is not offered:
its calls need the LiveKit server, which runs here only as the tests' protocol stand-in.

`--engines reference` deploys the turn-taking benchmark's reference engines (load/reference_engines.py:
fixed latencies, next to no CPU) instead of the tiny models, so a run with many callers measures the
call path (transport, edge, the ASR's VAD) rather than two cores' worth of model inference.

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
from contextlib import contextmanager
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from load.call_cost_callers import TRANSPORT_RATES, direct_caller, twilio_caller, websocket_caller  # noqa: E402
from load.call_cost_figures import CallerLog, heard, per_call_cpu, speech_plan  # noqa: E402
from load.edge_overhead import cpu_by_group  # noqa: E402
from load.local import cpu_cluster  # noqa: E402

GCS_PORT, DASHBOARD_PORT, HTTP_PORT, GRPC_PORT = 6440, 8340, 18400, 19400
SPEECH_WAV = ROOT / "services" / "assets" / "hello.wav"
SETTLE_S = 4  # callers connected and `ready` before the measured window opens


@contextmanager
def deployed(engines: str, code: Path):
    """The running cluster of a run: the embedded default on the tiny models (of checkout `code`),
    or the reference engines (this checkout)."""
    if engines == "reference":
        from load.reference_cluster import Ports, Timings, reference_cluster

        with reference_cluster(Timings(), Ports(GCS_PORT, DASHBOARD_PORT, HTTP_PORT, GRPC_PORT)) as (_, cluster):
            yield cluster
        return
    with cpu_cluster(GCS_PORT, DASHBOARD_PORT, HTTP_PORT, GRPC_PORT, workdir=code, env={"PYTHONPATH": str(code)}) as cluster:
        yield cluster


def cluster_processes(cluster) -> list[psutil.Process]:
    return [process for process in cluster._processes() if process.pid != os.getpid()]


def cpu_over(processes: list[psutil.Process], seconds: float) -> dict[str, float]:
    """CPU seconds per process group over a window that starts now and lasts `seconds`."""
    before = cpu_by_group(processes)
    time.sleep(seconds)
    after = cpu_by_group(processes)
    return {group: after[group] - before.get(group, 0.0) for group in after}


def caller_factory(transport: str, secret: str):
    """(index, seconds, started, speech, speak_at) -> the coroutine of one call over `transport`."""
    from services.edge.auth import mint_token

    if transport == "websocket":
        url = f"ws://127.0.0.1:{HTTP_PORT}/v1/conversation"
        token = mint_token(secret, subject="call-cost")
        return lambda index, *rest: websocket_caller(url, token, *rest)
    if transport == "direct":  # a token per call: the direct endpoint spends it
        edge_url = f"http://127.0.0.1:{HTTP_PORT}"
        return lambda index, *rest: direct_caller(edge_url, mint_token(secret, ttl_s=600, subject="call-cost"), *rest)
    from services.edge.transports.twilio import call_subject
    from services.edge.twilio_auth import compute_signature

    url = f"ws://127.0.0.1:{HTTP_PORT}/v1/twilio/media"
    signature = compute_signature(twilio_auth_token(), url)

    def make(index: int, *rest):
        call_sid = f"CA{index:032d}"
        token = mint_token(secret, ttl_s=600, subject=call_subject(call_sid), claims={"persona": {"greeting": ""}})
        return twilio_caller(url, signature, token, call_sid, *rest)
    return make


def twilio_auth_token() -> str:
    """The stand-in Twilio account auth token the CPU serve config gives the edge."""
    import yaml

    for app in yaml.safe_load((ROOT / "serve_config.cpu.yaml").read_text())["applications"]:
        if app["name"] == "edge":
            return app["runtime_env"]["env_vars"]["TWILIO_AUTH_TOKEN"]
    raise SystemExit("serve_config.cpu.yaml has no edge application")


async def measure_calls(make_call, callers: int, seconds: float, speech, plan: list[list[float]],
                        processes: list[psutil.Process]) -> tuple[dict[str, float], list[CallerLog]]:
    """CPU over `seconds` of N calls, and what each caller heard; the calls run a second past the window."""
    started = asyncio.Event()
    calls = [asyncio.create_task(make_call(index, seconds + 2, started, speech, plan[index]))
             for index in range(callers)]
    await asyncio.sleep(SETTLE_S)
    started.set()
    await asyncio.sleep(1)
    cpu = await asyncio.to_thread(cpu_over, processes, seconds)
    return cpu, await asyncio.gather(*calls)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="LiveKit is not a --transport here: it needs the LiveKit server.")
    parser.add_argument("--callers", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--speech", action="store_true", help="each caller speaks one sentence every --speak-every s")
    parser.add_argument("--speak-every", type=float, default=20.0)
    parser.add_argument("--transport", choices=sorted(TRANSPORT_RATES), default="websocket")
    parser.add_argument("--engines", choices=("tiny", "reference"), default="tiny",
                        help="the stages' engines: the tiny models, or the reference engines of load/reference_engines.py")
    parser.add_argument("--code", type=Path, default=ROOT, help="the Parley checkout the cluster runs")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "call_cost.json")
    args = parser.parse_args()
    if args.callers <= 0 or args.seconds <= 0:
        parser.error("--callers and --seconds must be positive")
    if args.engines == "reference" and args.code.resolve() != ROOT:
        parser.error("--engines reference runs this checkout's reference engines: leave out --code")

    from services.cli import edge_secret
    from services.common.audio import read_wav, resample

    rate = TRANSPORT_RATES[args.transport]
    speech, native = read_wav(SPEECH_WAV)
    speech = resample(speech, native, rate)
    # The last utterance starts early enough for the reply to be heard before the call ends.
    last_start = args.seconds - speech.size / rate - 2
    plan = speech_plan(args.callers, last_start, args.speak_every) if args.speech else [[]] * args.callers
    make_call = caller_factory(args.transport, edge_secret(ROOT / "serve_config.cpu.yaml"))
    code = args.code.resolve()
    with deployed(args.engines, code) as cluster:
        processes = cluster_processes(cluster)
        time.sleep(5)  # let the freshly deployed cluster settle
        idle = cpu_over(processes, args.seconds)
        busy, logs = asyncio.run(measure_calls(make_call, args.callers, args.seconds, speech, plan, processes))
    result = {"code": str(code), "transport": args.transport, "engines": args.engines, "speech": args.speech,
              **per_call_cpu(idle, busy, args.callers, args.seconds), "heard": heard(logs)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
