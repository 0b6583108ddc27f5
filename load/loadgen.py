"""Load generator: simulated callers on a running Parley deployment, with a report.

    # callers over the edge WebSocket, 2 more every 30 s up to 20, replica counts from the dashboard
    python -m load.loadgen --url ws://HOST:8000/v1/conversation --dashboard http://HOST:8265 \\
        --profile step --callers 2 --step 2 --every-s 30 --max-callers 20 --duration-s 600 --out out/load/step

    # one stage directly through Serve's gRPC proxy (asr: WAV streamed in real time; llm; tts)
    python -m load.loadgen --grpc HOST:9000 --stage asr --profile spike --callers 2 --peak 10 ...

    # rebuild the report of an earlier run from its JSONL files
    python -m load.loadgen --report-only out/load/step

Each caller slot follows the profile (load/profiles.py): while wanted it places calls back to
back, `--think-s` apart, each playing the next `--wav` in real time (plus `--pad-silence-s` of
silence, to keep a conversation on the line). Every finished call is appended to
`calls.jsonl`, every change of replica counts (and the target callers every 5 s) to
`timeline.jsonl`; memory holds only per-window aggregates (load/stats.py), so a run can last
hours. At the end: `report.md` and `report.png`.

Outcomes: ok; refused (the edge's 4503 or an HTTP 503 at connect, or RESOURCE_EXHAUSTED /
UNAVAILABLE before a stage answered); dropped (a conversation or stream that was live and ended
abnormally); unanswered (a final transcript the agent never replied to: dead air); error (the
rest, e.g. a bad token or a refused TCP connection).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from load import report  # noqa: E402
from load.profiles import Profile, schedule, target_at  # noqa: E402
from load.serve_status import poll_replicas  # noqa: E402
from load.stats import TURN_METRICS, RunStats  # noqa: E402
from services.common.audio import read_wav  # noqa: E402

DEFAULT_WAV = ROOT / "services" / "assets" / "hello.wav"
REFUSED_GRPC = {"RESOURCE_EXHAUSTED", "UNAVAILABLE"}


# -- one call ----------------------------------------------------------------------------------------

def classify_websocket(result) -> str:
    """The outcome of a finished caller.call (see the module docstring)."""
    if result.close_code == 4503:
        return "refused"
    if not result.of_type("ready"):
        return "error"
    if result.close_code not in (1000, None) or result.of_type("error"):
        return "dropped"
    last_final = max((i for i, e in enumerate(result.events) if e["type"] == "transcript" and e["final"]),
                     default=None)
    if last_final is not None and not any(e["type"] == "metrics" for e in result.events[last_final:]):
        return "unanswered"
    return "ok"


async def websocket_call(url: str, token: str, audio: np.ndarray, rate: int, tail_s: float) -> dict:
    import websockets

    from services.edge import caller

    try:
        result = await caller.call(url, token, audio, rate, tail_s=tail_s, until=caller.settled)
    except websockets.InvalidStatus as error:
        status = error.response.status_code
        return {"outcome": "refused" if status == 503 else "error", "error": f"HTTP {status} at connect"}
    except (TimeoutError, OSError, websockets.WebSocketException) as error:
        return {"outcome": "error", "error": f"{type(error).__name__}: {error}"[:200]}
    turns = [{"t": event["t"], **{m: event.get(m) for m in TURN_METRICS}, "interrupted": event["interrupted"],
              "underruns": event["underruns"]} for event in result.of_type("metrics")]
    errors = [event.get("code") for event in result.of_type("error")]
    return {"outcome": classify_websocket(result), "close_code": result.close_code,
            "error": ", ".join(map(str, errors)) or None, "turns": turns}


async def grpc_call(channel, stage: str, audio: np.ndarray, rate: int, prompt: str, max_tokens: int) -> dict:
    """One call straight to a stage through Serve's gRPC proxy. Its latencies become 'turns': each
    ASR final, or the LLM's first token, or the TTS's first audio."""
    import grpc

    from services.common import clients

    answered = False
    started = time.monotonic()
    try:
        if stage == "asr":
            from services.common.rpc import stage_metadata
            from services.proto import asr_pb2_grpc

            audio_from: list[float] = []  # when the first audio frame went out

            async def requests():
                async for request in clients.audio_requests(audio, rate, 100, realtime=True):
                    if request.HasField("audio") and not audio_from:
                        audio_from.append(time.monotonic())
                    yield request

            # Each final is a turn: from the end of the audio it covers (end_s; sent in real time,
            # so at audio_from + end_s) to the final's arrival.
            turns = []
            stub = asr_pb2_grpc.SpeechRecognitionStub(channel)
            async for event in stub.Recognize(requests(), metadata=stage_metadata("asr")):
                answered = True
                if event.WhichOneof("event") == "final":
                    now = time.monotonic()
                    turns.append({"t": now - started, "asr_final_ms": round((now - audio_from[0] - event.final.end_s) * 1000, 1)})
            if not turns:
                return {"outcome": "unanswered", "error": None, "turns": []}
            return {"outcome": "ok", "error": None, "turns": turns}
        if stage == "llm":
            reply = await clients.generate(channel, [("user", prompt)], max_tokens=max_tokens)
            answered = reply.deltas > 0
            latency, metric = None if reply.first_delta_s is None else reply.first_delta_s * 1000, "llm_ttft_ms"
        else:
            speech = await clients.synthesize(channel, clients.text_requests([prompt]))
            answered = bool(speech.chunks)
            latency, metric = None if speech.first_audio_s is None else speech.first_audio_s * 1000, "tts_ttfb_ms"
    except grpc.aio.AioRpcError as error:
        code = error.code().name
        outcome = "refused" if code in REFUSED_GRPC and not answered else "dropped" if answered else "error"
        return {"outcome": outcome, "error": f"{code}: {error.details()}"[:200]}
    if latency is None:
        return {"outcome": "unanswered", "error": None, "turns": []}
    return {"outcome": "ok", "error": None, "turns": [{"t": time.monotonic() - started, metric: latency}]}


# -- the run -------------------------------------------------------------------------------------------

@dataclass
class RunConfig:
    profile: Profile
    place_call: Callable[[int, np.ndarray, int], asyncio.Future[dict]]  # (slot, audio, rate) -> record fields
    inputs: list[tuple[np.ndarray, int]]
    out: Path
    think_s: float = 1.0
    window_s: float = 10.0
    dashboard: str | None = None
    poll_s: float = 2.0
    linger_s: float = 10.0  # keep polling replicas after the last call: the scale-down shows


class Recorder:
    """Appends each record to its JSONL file as it comes and feeds the rolling aggregates."""

    def __init__(self, out: Path, stats: RunStats) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.stats = stats
        self.calls = (out / "calls.jsonl").open("a")
        self.timeline = (out / "timeline.jsonl").open("a")
        self.in_flight = 0

    def call(self, record: dict) -> None:
        self.calls.write(json.dumps(record) + "\n")
        self.calls.flush()
        self.stats.add_call(record)

    def target(self, t_s: float, callers: int) -> None:
        self.stats.add_target(t_s, callers)
        self.timeline.write(json.dumps({"t_s": round(t_s, 3), "target_callers": callers}) + "\n")

    def replica_sample(self, t_s: float, counts: dict) -> None:
        if self.stats.add_replicas(t_s, counts):
            self.timeline.write(json.dumps({"t_s": round(t_s, 3), "deployments": counts}) + "\n")
            self.timeline.flush()

    def close(self) -> None:
        self.calls.close()
        self.timeline.close()


async def run(config: RunConfig, log=print) -> RunStats:
    stats = RunStats(config.window_s)
    recorder = Recorder(config.out, stats)
    started = time.monotonic()
    stop = asyncio.Event()
    inputs = itertools.cycle(config.inputs)

    async def slot_loop(slot: int, start_s: float, stop_s: float) -> None:
        await asyncio.sleep(max(0.0, started + start_s - time.monotonic()))
        while time.monotonic() - started < stop_s:
            audio, rate = next(inputs)
            call_start = time.monotonic() - started
            recorder.in_flight += 1
            try:
                fields = await config.place_call(slot, audio, rate)
            except Exception as error:  # a caller bug must not end an hours-long run: count it
                fields = {"outcome": "error", "error": f"{type(error).__name__}: {error}"[:200]}
            finally:
                recorder.in_flight -= 1
            # Turn times: the call's start on this run's clock + the server's time into the call.
            turns = [{"t_s": round(call_start + turn.pop("t"), 3), **turn} for turn in fields.pop("turns", [])]
            recorder.call({"slot": slot, "start_s": round(call_start, 3),
                           "end_s": round(time.monotonic() - started, 3), **fields, "turns": turns})
            await asyncio.sleep(config.think_s)

    async def progress() -> None:
        while not stop.is_set():
            now = time.monotonic() - started
            recorder.target(now, target_at(config.profile, now))
            total = stats.total
            log(f"  t={now:6.0f}s  target {target_at(config.profile, now):3d}  in flight {recorder.in_flight:3d}  "
                f"calls {total.calls_started}  " + " ".join(f"{k} {v}" for k, v in sorted(total.outcomes.items())))
            try:
                await asyncio.wait_for(stop.wait(), 5.0)
            except TimeoutError:
                pass

    background = [asyncio.create_task(progress())]
    if config.dashboard:
        background.append(asyncio.create_task(poll_replicas(config.dashboard, recorder.replica_sample, stop,
                                                            started=started, period_s=config.poll_s, on_error=log)))
    try:
        await asyncio.gather(*(slot_loop(w.slot, w.start_s, w.stop_s) for w in schedule(config.profile)))
        if config.dashboard:
            await asyncio.sleep(config.linger_s)
    finally:
        stop.set()
        await asyncio.gather(*background, return_exceptions=True)
        recorder.close()
    return stats


def replay(out: Path, window_s: float) -> RunStats:
    """RunStats rebuilt from a run's JSONL files, one line at a time."""
    stats = RunStats(window_s)
    with (out / "calls.jsonl").open() as calls:
        for line in calls:
            stats.add_call(json.loads(line))
    timeline = out / "timeline.jsonl"
    if timeline.exists():
        with timeline.open() as samples:
            for line in samples:
                sample = json.loads(line)
                if "deployments" in sample:
                    stats.add_replicas(sample["t_s"], sample["deployments"])
                else:
                    stats.add_target(sample["t_s"], sample["target_callers"])
    return stats


def write_report(stats: RunStats, out: Path, title: str, description: list[str]) -> tuple[Path, Path]:
    md = out / "report.md"
    md.write_text(report.markdown(stats, title, description))
    return md, report.plot(stats, out / "report.png", title)


# -- command line ----------------------------------------------------------------------------------------

def _profile(args: argparse.Namespace) -> Profile:
    fields = {"kind": args.profile, "callers": args.callers, "duration_s": args.duration_s, "ramp_s": args.ramp_s,
              "step": args.step, "every_s": args.every_s, "max_callers": args.max_callers, "peak": args.peak,
              "spike_at_s": args.spike_at_s, "spike_s": args.spike_s}
    return Profile.model_validate(fields)


def _tokens(args: argparse.Namespace) -> Iterator[str]:
    from load.edge_overhead import token
    from services.cli import edge_secret

    secret = args.secret or edge_secret(args.config)
    persona = {}
    if args.max_tokens:
        persona["max_tokens"] = args.max_tokens
    if args.no_greeting:
        persona["greeting"] = ""
    while True:
        yield token(secret, **persona)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="the edge WebSocket, ws://HOST:PORT/v1/conversation")
    target.add_argument("--grpc", help="Serve's gRPC proxy, HOST:PORT (with --stage)")
    target.add_argument("--report-only", type=Path, metavar="DIR", help="rebuild the report of a finished run")
    parser.add_argument("--stage", choices=["asr", "llm", "tts"], default="asr")
    parser.add_argument("--dashboard", help="Ray dashboard URL, for replica counts (e.g. http://HOST:8265)")
    parser.add_argument("--profile", choices=["steady", "step", "spike"], default="steady")
    parser.add_argument("--callers", type=int, default=1)
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--ramp-s", type=float, default=2.0)
    parser.add_argument("--step", type=int, default=1)
    parser.add_argument("--every-s", type=float, default=30.0)
    parser.add_argument("--max-callers", type=int)
    parser.add_argument("--peak", type=int)
    parser.add_argument("--spike-at-s", type=float, default=30.0)
    parser.add_argument("--spike-s", type=float, default=30.0)
    parser.add_argument("--wav", type=Path, nargs="+", default=[DEFAULT_WAV])
    parser.add_argument("--pad-silence-s", type=float, default=0.0)
    parser.add_argument("--think-s", type=float, default=1.0, help="pause between one slot's calls")
    parser.add_argument("--tail-s", type=float, default=30.0, help="how long a caller waits for the last reply")
    parser.add_argument("--secret", default=os.environ.get("PARLEY_EDGE_SECRET"))
    parser.add_argument("--config", type=Path, default=ROOT / "serve_config.cpu.yaml",
                        help="where to read the edge secret from when $PARLEY_EDGE_SECRET is unset")
    parser.add_argument("--max-tokens", type=int, help="persona override: the reply's length")
    parser.add_argument("--no-greeting", action="store_true", help="persona override: no greeting turn")
    parser.add_argument("--prompt", default="Hello, I would like to book a table for two tonight.",
                        help="the text for --stage llm and tts")
    parser.add_argument("--window-s", type=float, default=10.0)
    parser.add_argument("--poll-s", type=float, default=2.0)
    parser.add_argument("--linger-s", type=float, default=10.0,
                        help="keep reading replica counts this long after the load ends (set it past "
                             "downscale_delay_s to see the scale-down)")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "load" / time.strftime("%Y%m%d-%H%M%S"))
    args = parser.parse_args(argv)

    if args.report_only:
        stats = replay(args.report_only, args.window_s)
        md, png = write_report(stats, args.report_only, f"Load run {args.report_only.name}", ["(rebuilt from JSONL)"])
        print(f"wrote {md} and {png}")
        return 0

    try:
        profile = _profile(args)
    except ValueError as error:
        parser.error(str(error))
    inputs = []
    for path in args.wav:
        audio, rate = read_wav(path)
        inputs.append((np.concatenate([audio, np.zeros(int(args.pad_silence_s * rate), audio.dtype)]), rate))

    async def go() -> RunStats:
        if args.url:
            tokens = _tokens(args)

            async def place(slot, audio, rate):
                return await websocket_call(args.url, next(tokens), audio, rate, args.tail_s)

            return await run(RunConfig(profile, place, inputs, args.out, args.think_s, args.window_s,
                                       args.dashboard, args.poll_s, args.linger_s))
        from services.common import clients

        async with clients.open_channel(args.grpc) as channel:
            async def place(slot, audio, rate):
                return await grpc_call(channel, args.stage, audio, rate, args.prompt, args.max_tokens or 32)

            return await run(RunConfig(profile, place, inputs, args.out, args.think_s, args.window_s,
                                       args.dashboard, args.poll_s, args.linger_s))

    print(f"load: {profile.kind} profile for {profile.duration_s:g} s -> {args.out}")
    stats = asyncio.run(go())
    mode = f"WebSocket callers on {args.url}" if args.url else f"gRPC calls to the {args.stage} stage at {args.grpc}"
    description = [f"Mode: {mode}.",
                   f"Profile: {profile.describe()}.",
                   f"Input: {', '.join(p.name for p in args.wav)} (+{args.pad_silence_s:g} s silence), real time; "
                   f"{args.think_s:g} s between a slot's calls.",
                   "Command: `python -m load.loadgen " + " ".join(sys.argv[1:] if argv is None else argv) + "`."]
    md, png = write_report(stats, args.out, f"Load run {args.out.name}", description)
    print(md.read_text())
    print(f"wrote {md}, {png}, {args.out / 'calls.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
