"""A simulated caller: plays a WAV into a conversation in real time over the edge WebSocket.

Used by `parley call`, the tests and the load benchmarks. It speaks the documented protocol
(docs/websocket-protocol.md) and nothing else.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import numpy as np
import websockets

from services.common.audio import float_to_pcm16, pcm16_to_float
from services.common.timeline import COMPONENTS

FRAME_MS = 20
CALL_RATE = 16_000  # the rate `parley call` streams at


class CallAudioError(Exception):
    """An audio file `parley call` cannot play (one line, for the command's error)."""


def read_call_audio(path, rate: int = CALL_RATE) -> np.ndarray:
    """Any WAV or FLAC soundfile reads (PCM of any width, float, WAVE_FORMAT_EXTENSIBLE), as mono
    float32 resampled to `rate`."""
    import soundfile

    from services.common.audio import resample

    try:
        audio, source_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (OSError, RuntimeError, soundfile.LibsndfileError) as error:
        raise CallAudioError(f"cannot read {path}: {str(error).splitlines()[0] if str(error) else error!r}") from None
    if audio.size == 0:
        raise CallAudioError(f"{path} holds no audio")
    return resample(audio.mean(axis=1), source_rate, rate)


class AdmissionRefused(Exception):
    """`POST /v1/calls` said no: `status` 401 (token), 404 (direct media off), 503 (full, `retry_after_s`)."""

    def __init__(self, status: int, message: str, retry_after_s: float | None = None):
        super().__init__(f"{status}: {message}")
        self.status, self.retry_after_s = status, retry_after_s


async def admit(edge_url: str, token: str, timeout_s: float = 10.0) -> str:
    """Admission for a direct media call (docs/websocket-protocol.md, "Direct media"): the edge's
    `POST /v1/calls` with the call token; the `media_url` to open the call on."""
    import httpx

    async with httpx.AsyncClient(timeout=timeout_s) as client:
        answer = await client.post(edge_url.rstrip("/") + "/v1/calls", headers={"Authorization": f"Bearer {token}"})
    if answer.status_code != 200:
        retry = answer.headers.get("Retry-After")
        raise AdmissionRefused(answer.status_code, answer.json().get("error", answer.text),
                               float(retry) if retry else None)
    return answer.json()["media_url"]


@dataclass
class CallResult:
    events: list[dict] = field(default_factory=list)
    agent_audio: list[np.ndarray] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""
    output_sample_rate: int = 24_000
    # Caller-side clock: when each agent audio frame and each event arrived (seconds since the call started).
    audio_arrivals: list[float] = field(default_factory=list)
    event_arrivals: list[float] = field(default_factory=list)

    def of_type(self, kind: str) -> list[dict]:
        return [event for event in self.events if event["type"] == kind]

    @property
    def audio(self) -> np.ndarray:
        return np.concatenate(self.agent_audio) if self.agent_audio else np.zeros(0, np.float32)


async def call(url: str, token: str, audio: np.ndarray, rate: int, *, tail_s: float = 8.0,
               output_sample_rate: int = 24_000, until=None, extra_start: dict | None = None,
               result: CallResult | None = None) -> CallResult:
    """Stream `audio` in real time, then keep listening for `tail_s` (or until `until(result)` is true).
    Pass `result` to watch the call while it runs."""
    result = result or CallResult(output_sample_rate=output_sample_rate)
    started = time.monotonic()
    async with websockets.connect(url, max_size=2**22) as socket:
        await socket.send(json.dumps({"type": "start", "token": token, "input_sample_rate": rate,
                                      "output_sample_rate": output_sample_rate, **(extra_start or {})}))

        async def listen() -> None:
            async for message in socket:
                if isinstance(message, bytes):
                    result.agent_audio.append(pcm16_to_float(message))
                    result.audio_arrivals.append(time.monotonic() - started)
                else:
                    result.events.append(json.loads(message))
                    result.event_arrivals.append(time.monotonic() - started)

        listener = asyncio.create_task(listen())
        try:
            step = rate * FRAME_MS // 1000
            for index, start in enumerate(range(0, audio.size, step)):
                await asyncio.sleep(max(0.0, started + index * FRAME_MS / 1000 - time.monotonic()))
                if listener.done():
                    break
                await socket.send(float_to_pcm16(audio[start:start + step]))
            deadline = time.monotonic() + tail_s
            while time.monotonic() < deadline and not listener.done():
                if until is not None and until(result):
                    break
                await asyncio.sleep(0.05)
            if not listener.done():
                await socket.send(json.dumps({"type": "stop"}))
                await asyncio.wait_for(listener, 10)
        except websockets.ConnectionClosed:
            pass
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
    result.close_code, result.close_reason = socket.close_code, socket.close_reason or ""
    return result


def settled(result: CallResult) -> bool:
    """The agent has finished (or abandoned) its reply to the caller's last final transcript."""
    last_final = max((i for i, e in enumerate(result.events) if e["type"] == "transcript" and e["final"]),
                     default=None)
    return last_final is not None and any(e["type"] == "metrics" for e in result.events[last_final:])


def turn_table(metrics: list[dict]) -> str:
    """The per-turn latency table of `metrics` events (columns: the turn timeline's components)."""
    columns = [component.event_field for component in COMPONENTS]
    lines = ["turn  " + "  ".join(f"{name[:-3]:>14s}" for name in columns) + "  interrupted"]
    for event in metrics:
        cells = "  ".join(f"{'-' if event.get(name) is None else format(event[name], '.0f') + ' ms':>14s}"
                          for name in columns)
        lines.append(f"{event['turn_id']:>4d}  {cells}  {event['interrupted']}")
    return "\n".join(lines)
