"""A WebSocket caller that keeps the host's monotonic time of everything: when each marked frame
of its audio actually left (not when it was due: a late caller must not flatter the system), and
when each agent audio frame and event arrived. It speaks docs/websocket-protocol.md, in real time.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import numpy as np
import websockets

from services.common.audio import float_to_pcm16

FRAME_MS = 20


@dataclass
class TimedCall:
    """What one call saw, on the host's monotonic clock."""

    sent: dict[int, float] = field(default_factory=dict)  # marked sample offset -> when its frame left
    audio: list[float] = field(default_factory=list)  # arrival of each agent audio frame
    events: list[tuple[float, dict]] = field(default_factory=list)
    started: float = 0.0  # the first frame left
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
                     tail_s: float = 2.0, result: TimedCall | None = None) -> TimedCall:
    """Stream `audio` in real time (20 ms frames) and listen `tail_s` longer; `marks` are sample
    offsets whose frame's send time is recorded (a mark inside a frame counts from that frame)."""
    result = result or TimedCall()
    step = rate * FRAME_MS // 1000
    pending = sorted(marks)
    try:
        async with websockets.connect(url, max_size=2**22) as socket:
            await socket.send(json.dumps({"type": "start", "token": token, "input_sample_rate": rate,
                                          "output_sample_rate": 24_000}))

            async def listen() -> None:
                async for message in socket:
                    if isinstance(message, bytes):
                        result.audio.append(time.monotonic())
                    else:
                        result.events.append((time.monotonic(), json.loads(message)))

            listener = asyncio.create_task(listen())
            try:
                result.started = began = time.monotonic()
                for index, start in enumerate(range(0, audio.size, step)):
                    await asyncio.sleep(max(0.0, began + index * FRAME_MS / 1000 - time.monotonic()))
                    if listener.done():
                        break
                    await socket.send(float_to_pcm16(audio[start:start + step]))
                    while pending and pending[0] < start + step:
                        result.sent[pending.pop(0)] = time.monotonic()
                await asyncio.sleep(tail_s)
                if not listener.done():
                    await socket.send(json.dumps({"type": "stop"}))
                    await asyncio.wait_for(listener, 10)
            finally:
                listener.cancel()
                await asyncio.gather(listener, return_exceptions=True)
    except (OSError, websockets.WebSocketException, TimeoutError) as error:
        result.error = f"{type(error).__name__}: {error}"[:200]
    return result
