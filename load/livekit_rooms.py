"""Benchmark: concurrent LiveKit rooms one edge process holds in real time, and its CPU per room.

    python load/livekit_rooms.py [--levels 5 10 20] [--seconds 20] [--playout-frame-ms 20]
        [--out out/livekit_rooms.json]

Per level N: the LiveKit stand-in server (tests/livekit_standin; no real LiveKit server can run
here) and N human callers (rtc SDK, each streaming speech in a loop) run in this process; the
agents run in a separate process, one per level, standing for one edge replica: N rooms joined
through the edge's own dispatch code (RoomAgents + LiveKitTransport), each doing the edge's
per-call media work with the agent talking all the time (its worst case): caller audio 48 kHz in,
resampled to 16 kHz and consumed; agent audio (24 kHz) through the real playout clock
(services/edge/playout.py) into the published track. The stages (ASR/LLM/TTS) are not involved:
this is the edge's share of a room, which is what sets rooms per edge replica.

Measured over a steady window after every room is live: the agent process's CPU time (user+sys)
per room, playout underruns (the edge fell a frame behind its clock), caller audio received vs
real time, and agent audio the humans received vs real time. The stand-in and the humans share
the machine with the agents, so the level at which the machine runs out is lower than one edge
process alone would reach; CPU per room is the number to extrapolate from.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KEY, SECRET = "bench-key", "bench-secret-that-is-long-enough-for-hs256"
TURN_S = 5.0  # the agent speaks in 5 s turns, back to back


async def _agents(url: str, rooms: list[str], warmup_s: float, seconds: float, frame_ms: int) -> dict:
    from services.common.audio import float_to_pcm16
    from services.edge.config import LiveKitConfig
    from services.edge.livekit_dispatch import LiveKitCredentials, RoomAgents
    from services.edge.playout import Playout, Segment
    from services.edge.transport import CallerHungUp

    counters = {"underruns": 0, "caller_samples": 0, "live": 0}
    per_room: dict[str, int] = {}
    speech = float_to_pcm16(0.3 * np.sin(2 * np.pi * 220 * np.arange(int(24_000 * TURN_S)) / 24_000))

    async def no_event(turn_id: int) -> None:
        pass

    def underrun(turn_id: int) -> None:
        counters["underruns"] += 1

    async def converse(transport) -> None:
        playout = Playout(transport, frame_ms, 100, no_event, underrun)

        async def listen() -> None:
            while True:
                size = len(await transport.receive_audio()) // 2  # PCM s16le
                counters["caller_samples"] += size
                per_room[transport.room.name] = per_room.get(transport.room.name, 0) + size

        async def talk() -> None:
            turn = 0
            while True:
                turn += 1
                playout.add_audio(turn, speech, Segment("..."))
                playout.finish_turn(turn)
                await playout.wait_played(turn)

        counters["live"] += 1
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(playout.run())
                tasks.create_task(talk())
                tasks.create_task(listen())
        except* CallerHungUp:
            pass
        finally:
            counters["live"] -= 1

    config = LiveKitConfig(enabled=True, url=url)
    agents = RoomAgents(config, LiveKitCredentials(url, KEY, SECRET), converse, max_calls=len(rooms))
    for room in rooms:
        await agents.dispatch(room)
    deadline = time.monotonic() + 60
    while counters["live"] < len(rooms) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    await asyncio.sleep(warmup_s)
    process = psutil.Process()
    cpu0, wall0 = process.cpu_times(), time.monotonic()
    underruns0, samples0 = counters["underruns"], counters["caller_samples"]
    rooms0 = dict(per_room)
    await asyncio.sleep(seconds)
    cpu1, wall1 = process.cpu_times(), time.monotonic()
    result = {
        "live_rooms": counters["live"], "wall_s": wall1 - wall0,
        "cpu_s": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
        "underruns": counters["underruns"] - underruns0,
        "caller_audio_s": (counters["caller_samples"] - samples0) / 16_000,
        "threads": process.num_threads(),
        "caller_audio_s_min": min((per_room.get(r, 0) - rooms0.get(r, 0)) / 16_000 for r in rooms),
    }
    await agents.close()
    return result


def _agent_process(url: str, rooms: list[str], warmup_s: float, seconds: float, frame_ms: int, out) -> None:
    out.send(asyncio.run(_agents(url, rooms, warmup_s, seconds, frame_ms)))


async def run_level(n: int, seconds: float, warmup_s: float, frame_ms: int = 20) -> dict:
    from services.common.audio import read_wav
    from tests.conftest import SPEECH_WAV
    from tests.livekit_standin.human import Human, room_token
    from tests.livekit_standin.server import StandInServer

    audio, rate = read_wav(SPEECH_WAV)
    long_speech = np.tile(audio, int((seconds + warmup_s + 60) / (audio.size / rate)) + 1)
    async with StandInServer(KEY, SECRET) as server:
        rooms = [f"bench-{n}-{i}" for i in range(n)]
        humans = []
        for room in rooms:
            human = await Human(server.url, room_token(KEY, SECRET, room, "caller"), keep_audio=False).join()
            human.say(long_speech, rate)
            humans.append(human)
        receiver, sender = multiprocessing.Pipe(duplex=False)
        context = multiprocessing.get_context("spawn")
        agent = context.Process(target=_agent_process, args=(server.url, rooms, warmup_s, seconds, frame_ms, sender))
        me = psutil.Process()
        agent.start()
        # Count what the humans hear over (roughly) the agents' window.
        await asyncio.sleep(2.0)
        while not all(h.heard_samples for h in humans) and agent.is_alive():
            await asyncio.sleep(0.2)
        await asyncio.sleep(warmup_s)
        heard0 = [h.heard_samples for h in humans]
        voiced0 = [h.voiced_samples for h in humans]
        cpu0, wall0 = me.cpu_times(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu1, wall1 = me.cpu_times(), time.monotonic()
        heard = [(h.heard_samples - a) / 48_000 for h, a in zip(humans, heard0)]
        voiced = [(h.voiced_samples - a) / 48_000 for h, a in zip(humans, voiced0)]
        result = await asyncio.to_thread(receiver.recv)
        await asyncio.to_thread(agent.join, 30)
        for human in humans:
            await human.leave()
    window = wall1 - wall0
    result.update({
        "rooms": n, "playout_frame_ms": frame_ms,
        "agent_cpu_per_room_pct": 100 * result["cpu_s"] / result["wall_s"] / n,
        "rooms_per_vcpu": n * result["wall_s"] / result["cpu_s"] if result["cpu_s"] else None,
        "caller_audio_ratio": result["caller_audio_s"] / result["wall_s"] / n,
        "heard_ratio_min": min(heard) / window, "heard_voiced_ratio_min": min(voiced) / window,
        "standin_and_humans_cpu_pct": 100 * ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / window,
        "load_average_1m": os.getloadavg()[0],
    })
    return result


def table(results: list[dict]) -> str:
    lines = ["| rooms | agent CPU per room | rooms per vCPU (agent) | underruns | caller audio in / real time | "
             "agent audio heard / real time (worst room) | stand-in + humans CPU | load avg |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['rooms']} | {r['agent_cpu_per_room_pct']:.1f}% | {r['rooms_per_vcpu']:.1f} | "
                     f"{r['underruns']} | {r['caller_audio_ratio']:.2f} | {r['heard_ratio_min']:.2f} "
                     f"(voiced {r['heard_voiced_ratio_min']:.2f}) | {r['standin_and_humans_cpu_pct']:.0f}% | "
                     f"{r['load_average_1m']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--playout-frame-ms", type=int, default=20, help="the edge's playout_frame_ms")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results = []
    for n in args.levels:
        results.append(asyncio.run(run_level(n, args.seconds, args.warmup, args.playout_frame_ms)))
        print(json.dumps(results[-1]), flush=True)
    print(table(results))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
