"""One Converse stream: a config, then 80 ms frames in; frames and inner-monologue text out.

The session validates the config and every frame, holds one slot of the replica's ticker for the
stream's life and always gives it back (the stream ends, fails or is cancelled). A bad frame ends
this stream with INVALID_ARGUMENT; the other slots never see it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
from opentelemetry import trace

from services.common import attributes as attr
from services.common.audio import BYTES_PER_SAMPLE, float_to_pcm16, pcm16_to_float
from services.common.rpc import first_message, invalid_argument
from services.moshi.config import MoshiConfig
from services.moshi.engine import FRAME_SAMPLES, SAMPLE_RATE
from services.moshi.ticker import DuplexTicker, Slot, SlotOutput
from services.proto import moshi_pb2

FRAME_BYTES = FRAME_SAMPLES * BYTES_PER_SAMPLE

# DuplexConfig sampling fields, each of which must match the deployment's setting of the same
# name: one batched step samples every slot alike, so a stream cannot choose its own.
_SAMPLING_FIELDS = ("text_temperature", "audio_temperature", "text_top_k", "audio_top_k")


def check_config(request: moshi_pb2.DuplexConfig, config: MoshiConfig) -> None:
    if request.sample_rate_hz != SAMPLE_RATE:
        raise invalid_argument(f"sample_rate_hz must be {SAMPLE_RATE} (Mimi's rate), got {request.sample_rate_hz}")
    for name in _SAMPLING_FIELDS:
        if request.HasField(name):
            wanted, served = getattr(request, name), getattr(config.engine, name)
            if abs(wanted - served) > 1e-6:
                raise invalid_argument(
                    f"{name}={wanted:g} differs from this deployment's {served:g}: conversations in one batch "
                    "share their sampling settings (leave it unset)")
    if request.HasField("seed"):
        raise invalid_argument("per-stream seeds are not supported: conversations in one batch share one generator")


def frame_audio(request: moshi_pb2.ConverseRequest) -> np.ndarray:
    """A message after the config: its frame as float32; anything but one 80 ms frame is INVALID_ARGUMENT."""
    kind = request.WhichOneof("request")
    if kind != "audio":
        raise invalid_argument(f"expected `audio` after the config, got `{kind}`")
    if len(request.audio.pcm) != FRAME_BYTES:
        raise invalid_argument(f"an audio frame must be {FRAME_SAMPLES} samples of 24 kHz PCM s16le "
                               f"({FRAME_BYTES} bytes), got {len(request.audio.pcm)} bytes")
    return pcm16_to_float(request.audio.pcm)


class DuplexSession:
    def __init__(self, ticker: DuplexTicker, config: MoshiConfig, span: trace.Span = trace.INVALID_SPAN):
        self._ticker, self._config, self._span = ticker, config, span

    async def run(self, requests: AsyncIterator[moshi_pb2.ConverseRequest]) -> AsyncIterator[moshi_pb2.ConverseResponse]:
        check_config(await first_message(requests, "config"), self._config)
        slot = self._ticker.acquire()
        if self._span.is_recording():
            self._span.set_attributes({attr.MODEL: self._config.engine.model, attr.MOSHI_SLOT: slot.index})
        frames_out = 0
        try:
            yield moshi_pb2.ConverseResponse(started=moshi_pb2.SessionStarted(
                frame_samples=FRAME_SAMPLES, sample_rate_hz=SAMPLE_RATE, slot=slot.index))
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._read(requests, slot))
                while (output := await slot.outbox.get()) is not None:
                    if isinstance(output, Exception):
                        raise output
                    frames_out += 1
                    for response in _responses(output, frames_out - 1):
                        yield response
        finally:
            self._ticker.release(slot)
            if self._span.is_recording():
                self._span.set_attributes({attr.MOSHI_FRAMES_OUT: frames_out, attr.MOSHI_DROPPED_FRAMES: slot.dropped})

    async def _read(self, requests: AsyncIterator[moshi_pb2.ConverseRequest], slot: Slot) -> None:
        async for request in requests:
            slot.push(request.audio.index, frame_audio(request))
        slot.end_input()


def _responses(output: SlotOutput, frame_number: int) -> list[moshi_pb2.ConverseResponse]:
    responses = [moshi_pb2.ConverseResponse(audio=moshi_pb2.AudioFrame(pcm=float_to_pcm16(output.audio),
                                                                        index=output.index))]
    if output.text:
        responses.append(moshi_pb2.ConverseResponse(text=moshi_pb2.TextToken(text=output.text,
                                                                              frame_index=frame_number)))
    return responses
