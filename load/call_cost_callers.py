"""The callers of load/call_cost.py: each streams 20 ms frames in real time for a fixed time,
silence except for the utterances it is told to say, over the edge's WebSocket protocol (through
Serve's proxy, or admitted by `POST /v1/calls` and then on the replica's direct media endpoint) or as
Twilio Media Streams does (signed upgrade, `start` with the token, base64 mu-law 8 kHz), and
stamps every agent audio frame's arrival (load/call_cost_figures.CallerLog)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable

import numpy as np
import websockets

from load.call_cost_figures import CallerLog
from load.timed_call import speech_bounds
from services.common.audio import float_to_pcm16, pcm16_to_float
from services.edge.transports import mulaw

FRAME_MS = 20
TRANSPORT_RATES = {"websocket": 16_000, "direct": 16_000, "twilio": 8_000}


async def paced(send: Callable[[np.ndarray], Awaitable[None]], log: CallerLog, rate: int, seconds: float,
                started: asyncio.Event, speech: np.ndarray, speak_at: list[float]) -> None:
    """Once `started` is set, send `seconds` of 20 ms frames in real time: `speech` from each
    offset in `speak_at`, silence otherwise; log when each utterance's first frame and the frame
    holding its last loud sample left."""
    step = rate * FRAME_MS // 1000
    loud_end = speech_bounds(speech, rate)[1]
    silence = np.zeros(step, np.float32)
    starts = [round(at * 1000 / FRAME_MS) for at in speak_at]
    await started.wait()
    began, speaking_since = time.monotonic(), None
    for index in range(round(seconds * 1000 / FRAME_MS)):
        if index in starts:
            speaking_since, first_left = index, None
        frame = silence
        if speaking_since is not None:
            offset = (index - speaking_since) * step
            frame = speech[offset:offset + step]
            if frame.size < step:
                frame = np.concatenate([frame, silence[:step - frame.size]])
        await asyncio.sleep(max(0.0, began + index * FRAME_MS / 1000 - time.monotonic()))
        await send(frame)
        if speaking_since is not None:
            offset, now = (index - speaking_since) * step, time.monotonic()
            first_left = first_left or now
            if offset < loud_end <= offset + step:
                log.utterances.append((first_left, now))
            if offset + step >= speech.size:
                speaking_since = None


async def websocket_caller(url: str, token: str, seconds: float, started: asyncio.Event, speech: np.ndarray,
                           speak_at: list[float]) -> CallerLog:
    """One call over the edge WebSocket (no greeting), 16 kHz both ways."""
    rate, log = TRANSPORT_RATES["websocket"], CallerLog()
    try:
        async with websockets.connect(url, max_size=None) as socket:
            await socket.send(json.dumps({"type": "start", "token": token, "input_sample_rate": rate,
                                          "output_sample_rate": rate, "greeting": False}))
            while True:  # wait for `ready`
                message = await socket.recv()
                if isinstance(message, str) and json.loads(message).get("type") == "ready":
                    break

            async def listen() -> None:
                async for message in socket:
                    if isinstance(message, bytes):
                        log.frames.append((time.monotonic(), pcm16_to_float(message).size / rate))
                    elif (event := json.loads(message)).get("type") == "agent_audio_end":
                        log.reply_ends.append(time.monotonic())
                    elif event.get("type") == "metrics" and event.get("ttfat_ms") is not None:
                        log.edge_ttfat_ms.append(float(event["ttfat_ms"]))

            async def send(frame: np.ndarray) -> None:
                await socket.send(float_to_pcm16(frame))

            await _run(listen(), paced(send, log, rate, seconds, started, speech, speak_at))
            await socket.send(json.dumps({"type": "stop"}))
    except (OSError, websockets.WebSocketException, TimeoutError) as error:
        log.error = f"{type(error).__name__}: {error}"[:200]
    return log


async def direct_caller(edge_url: str, token: str, seconds: float, started: asyncio.Event, speech: np.ndarray,
                        speak_at: list[float]) -> CallerLog:
    """One call admitted by the edge's `POST /v1/calls`, then held on the replica's direct media endpoint."""
    from services.edge.caller import AdmissionRefused, admit

    try:
        media_url = await admit(edge_url, token)
    except (AdmissionRefused, OSError, ValueError) as error:
        return CallerLog(error=f"admission: {error}"[:200])
    return await websocket_caller(media_url, token, seconds, started, speech, speak_at)


async def twilio_caller(url: str, signature: str, token: str, call_sid: str, seconds: float,
                        started: asyncio.Event, speech: np.ndarray, speak_at: list[float]) -> CallerLog:
    """One call as Twilio Media Streams makes it: `url` signed with the account's auth token,
    `start` carrying the edge token as a custom parameter, mu-law 8 kHz media both ways. Marks
    are echoed at once (Twilio echoes them when the audio before them has played)."""
    rate, log, sid = TRANSPORT_RATES["twilio"], CallerLog(), "MZ" + call_sid[2:]
    try:
        async with websockets.connect(url, additional_headers={"X-Twilio-Signature": signature}) as socket:
            await socket.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await socket.send(json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": sid, "start": {
                "streamSid": sid, "accountSid": "AC0", "callSid": call_sid, "tracks": ["inbound"],
                "customParameters": {"token": token},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": rate, "channels": 1}}}))
            chunk = 0

            async def listen() -> None:
                async for message in socket:
                    event = json.loads(message)
                    if event.get("event") == "media":
                        log.frames.append((time.monotonic(), len(base64.b64decode(event["media"]["payload"])) / rate))
                    elif event.get("event") == "mark":
                        if str(event["mark"].get("name", "")).endswith("-end"):
                            log.reply_ends.append(time.monotonic())
                        await socket.send(json.dumps({"event": "mark", "streamSid": sid, "mark": event["mark"]}))

            async def send(frame: np.ndarray) -> None:
                nonlocal chunk
                chunk += 1
                await socket.send(json.dumps({"event": "media", "streamSid": sid, "media": {
                    "track": "inbound", "chunk": str(chunk), "timestamp": str((chunk - 1) * FRAME_MS),
                    "payload": base64.b64encode(mulaw.encode(frame)).decode()}}))

            await _run(listen(), paced(send, log, rate, seconds, started, speech, speak_at))
            await socket.send(json.dumps({"event": "stop", "streamSid": sid, "stop": {"callSid": call_sid}}))
    except (OSError, websockets.WebSocketException, TimeoutError) as error:
        log.error = f"{type(error).__name__}: {error}"[:200]
    return log


async def _run(listen: Awaitable[None], talk: Awaitable[None]) -> None:
    """Talk while listening; the listener is cancelled once the talking is over (or fails)."""
    listener = asyncio.ensure_future(listen)
    try:
        await talk
        if listener.done():
            listener.result()  # the edge closed the call early: say so
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
