"""A WebSocket caller that keeps the host's monotonic time of everything: when each marked frame
of its audio actually left (not when it was due: a late caller must not flatter the system), and
when each agent audio frame and event arrived. It speaks docs/websocket-protocol.md, in real time.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import websockets

from services.common.audio import float_to_pcm16

FRAME_MS = 20
MAX_HOLD_S = 20.0  # a hold whose condition never comes true ends after this long


# A hold: at this sample offset the caller sends silence until ready(call, held_since) is true.
Hold = tuple[int, Callable[["TimedCall", float], bool]]


@dataclass
class TimedCall:
    """What one call saw, on the host's monotonic clock."""

    sent: dict[int, float] = field(default_factory=dict)  # marked sample offset -> when its frame left
    audio: list[float] = field(default_factory=list)  # arrival of each agent audio frame
    events: list[tuple[float, dict]] = field(default_factory=list)
    started: float = 0.0  # the first frame left
    ended: float = 0.0  # the caller stopped listening
    hung_up: float | None = None  # the server closed the call before the caller asked it to
    close_code: int | None = None
    error: str | None = None

    def of_type(self, kind: str) -> list[tuple[float, dict]]:
        return [(at, event) for at, event in self.events if event["type"] == kind]

    def first_audio_between(self, begin: float, end: float) -> float | None:
        return next((at for at in self.audio if begin <= at < end), None)


def speech_bounds(audio: np.ndarray, rate: int, floor: float = 0.01) -> tuple[int, int]:
    """Sample offsets of the first and just after the last sample louder than `floor` (-40 dBFS)."""
    loud = np.flatnonzero(np.abs(audio) > floor)
    if loud.size == 0:
        return 0, 0
    return int(loud[0]), int(loud[-1]) + 1


async def timed_call(url: str, token: str, audio: np.ndarray, rate: int, marks: list[int], *,
                     tail_s: float = 2.0, holds: list[Hold] = (), result: TimedCall | None = None) -> TimedCall:
    """Stream `audio` in real time (20 ms frames) and listen `tail_s` longer; `marks` are sample
    offsets whose frame's send time is recorded (a mark inside a frame counts from that frame).
    At each hold's offset the caller goes on sending silence until the hold is ready (reacting
    to the agent, e.g. speaking only once the agent's reply is playing), at most MAX_HOLD_S. Put
    holds on frame boundaries (multiples of FRAME_MS): a mark in the frame that starts at a hold
    is stamped after it, a mark in an earlier frame before it."""
    result = result or TimedCall()
    step = rate * FRAME_MS // 1000
    pending, waits = sorted(marks), sorted(holds, key=lambda hold: hold[0])
    silence = np.zeros(step, np.float32)
    try:
        async with websockets.connect(url, max_size=2**22) as socket:
            await socket.send(json.dumps({"type": "start", "token": token, "input_sample_rate": rate,
                                          "output_sample_rate": 24_000}))

            stopping = False

            async def listen() -> None:
                async for message in socket:
                    if isinstance(message, bytes):
                        result.audio.append(time.monotonic())
                    else:
                        result.events.append((time.monotonic(), json.loads(message)))
                if not stopping:
                    result.hung_up = time.monotonic()

            listener = asyncio.create_task(listen())
            try:
                result.started = began = time.monotonic()
                frames = 0

                async def send(chunk: np.ndarray) -> None:
                    nonlocal frames
                    await asyncio.sleep(max(0.0, began + frames * FRAME_MS / 1000 - time.monotonic()))
                    await socket.send(float_to_pcm16(chunk))
                    frames += 1

                for start in range(0, audio.size, step):
                    while waits and waits[0][0] <= start:
                        ready, since = waits.pop(0)[1], time.monotonic()
                        while not (ready(result, since) or time.monotonic() - since > MAX_HOLD_S or listener.done()):
                            await send(silence)
                    if listener.done():
                        break
                    try:
                        await send(audio[start:start + step])
                    except websockets.ConnectionClosedOK:
                        break  # the server ended the call (its close may reach the listener a moment later)
                    while pending and pending[0] < start + step:
                        result.sent[pending.pop(0)] = time.monotonic()
                await asyncio.sleep(tail_s)
                result.ended = time.monotonic()
                if not listener.done():
                    stopping = True
                    await socket.send(json.dumps({"type": "stop"}))
                    await asyncio.wait_for(listener, 10)
            finally:
                listener.cancel()
                await asyncio.gather(listener, return_exceptions=True)
                result.close_code = socket.close_code
    except (OSError, websockets.WebSocketException, TimeoutError) as error:
        result.error = f"{type(error).__name__}: {error}"[:200]
    return result
