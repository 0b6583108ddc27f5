"""Async clients for the stage services, through Serve's gRPC proxy.

Used by the CLI demo, the tests and the benchmarks. Request messages come from
services/common/requests.py, the builders the edge's stage streams use too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

import grpc
import numpy as np

from services.common.aio import paced
from services.common.audio import float_to_pcm16, pcm16_to_float
from services.common.requests import Converse, Generate, Recognize, Synthesize
from services.common.rpc import DEFAULT_GRPC_ADDRESS, SESSION_METADATA, channel_options, stage_metadata
from services.proto import (
    asr_pb2,
    asr_pb2_grpc,
    llm_pb2,
    llm_pb2_grpc,
    moshi_pb2,
    moshi_pb2_grpc,
    tts_pb2,
    tts_pb2_grpc,
)


def open_channel(address: str = DEFAULT_GRPC_ADDRESS) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=channel_options())


async def audio_requests(audio: np.ndarray, rate: int, frame_ms: int = 100, *, realtime: bool = False,
                         config: asr_pb2.RecognitionConfig | None = None) -> AsyncIterator[asr_pb2.RecognizeRequest]:
    """A config message, then the audio cut into frames (paced in real time if asked)."""
    yield asr_pb2.RecognizeRequest(config=config) if config is not None else Recognize.config(rate)
    step = rate * frame_ms // 1000
    frames = (audio[start:start + step] for start in range(0, audio.size, step))
    async for frame in paced(frames, frame_ms / 1000 if realtime else 0.0):
        yield Recognize.audio(float_to_pcm16(frame))


async def recognize(channel: grpc.aio.Channel, requests: AsyncIterator[asr_pb2.RecognizeRequest] | Iterable,
                    application: str = "asr") -> list[asr_pb2.RecognizeResponse]:
    stub = asr_pb2_grpc.SpeechRecognitionStub(channel)
    return [event async for event in stub.Recognize(requests, metadata=stage_metadata(application))]


@dataclass
class Reply:
    text: str
    deltas: int
    done: llm_pb2.GenerationDone | None
    first_delta_s: float | None  # client-side, request sent -> first delta


async def generate(channel: grpc.aio.Channel, messages: list[tuple[str, str]], application: str = "llm",
                   session_id: str = "", **sampling) -> Reply:
    """One reply; `session_id` (a conversation id) is Serve's routing key for replica affinity."""
    stub = llm_pb2_grpc.LanguageModelStub(channel)
    request = Generate.request(messages, **sampling)
    started, first, parts, done = time.perf_counter(), None, [], None
    session = ((SESSION_METADATA, session_id),) if session_id else ()
    async for response in stub.Generate(request, metadata=stage_metadata(application, *session)):
        if response.WhichOneof("event") == "delta":
            first = first if first is not None else time.perf_counter() - started
            parts.append(response.delta.text)
        else:
            done = response.done
    return Reply("".join(parts), len(parts), done, first)


async def text_requests(chunks: Iterable[str], *, voice: str = "", sample_rate: int = 0, speed: float = 0.0,
                        delay_s: float = 0.0) -> AsyncIterator[tts_pb2.SynthesizeRequest]:
    yield Synthesize.config(voice=voice, sample_rate=sample_rate, speed=speed)
    for chunk in chunks:
        if delay_s:
            await asyncio.sleep(delay_s)
        yield Synthesize.text(chunk)
    yield Synthesize.end()


@dataclass
class Speech:
    audio: np.ndarray
    sample_rate: int
    chunks: list[tts_pb2.SpeechAudio] = field(default_factory=list)
    done: tts_pb2.SynthesisDone | None = None
    first_audio_s: float | None = None  # client-side, stream opened -> first audio chunk


async def synthesize(channel: grpc.aio.Channel, requests: AsyncIterator[tts_pb2.SynthesizeRequest],
                     application: str = "tts") -> Speech:
    stub = tts_pb2_grpc.SpeechSynthesisStub(channel)
    speech, started = Speech(np.zeros(0, np.float32), 0), time.perf_counter()
    async for response in stub.Synthesize(requests, metadata=stage_metadata(application)):
        if response.WhichOneof("event") == "audio":
            if speech.first_audio_s is None:
                speech.first_audio_s = time.perf_counter() - started
            speech.chunks.append(response.audio)
            speech.sample_rate = response.audio.sample_rate_hz
        else:
            speech.done = response.done
    if speech.chunks:
        speech.audio = np.concatenate([pcm16_to_float(chunk.pcm) for chunk in speech.chunks])
    return speech


async def duplex_requests(frames: Iterable[bytes], *, pace_s: float = 0.08, sample_rate: int = 24_000,
                          config: moshi_pb2.DuplexConfig | None = None) -> AsyncIterator[moshi_pb2.ConverseRequest]:
    """A DuplexConfig, then one PCM frame every pace_s (0.08 = real time; less runs ahead of the server)."""
    yield moshi_pb2.ConverseRequest(config=config) if config is not None else Converse.config(sample_rate)
    index = 0
    async for pcm in paced(frames, pace_s):
        yield Converse.frame(pcm, index)
        index += 1


@dataclass
class Duplex:
    started: moshi_pb2.SessionStarted | None = None
    frames: list[moshi_pb2.AudioFrame] = field(default_factory=list)
    texts: list[moshi_pb2.TextToken] = field(default_factory=list)
    frame_times_s: list[float] = field(default_factory=list)  # client-side arrival of each frame


async def converse(channel: grpc.aio.Channel, requests: AsyncIterator[moshi_pb2.ConverseRequest],
                   application: str = "moshi") -> Duplex:
    stub = moshi_pb2_grpc.DuplexSpeechStub(channel)
    reply = Duplex()
    async for response in stub.Converse(requests, metadata=stage_metadata(application)):
        kind = response.WhichOneof("event")
        if kind == "started":
            reply.started = response.started
        elif kind == "audio":
            reply.frames.append(response.audio)
            reply.frame_times_s.append(time.perf_counter())
        else:
            reply.texts.append(response.text)
    return reply


class RequestStream:
    """The request side of a bidi call, fed message by message: `put()` to send, `close()` to half-close."""

    _CLOSE = object()

    def __init__(self, first) -> None:
        self._queue: asyncio.Queue = asyncio.Queue()
        self._queue.put_nowait(first)

    def put(self, request) -> None:
        self._queue.put_nowait(request)

    def close(self) -> None:
        self._queue.put_nowait(self._CLOSE)

    def __aiter__(self):
        return self

    async def __anext__(self):
        request = await self._queue.get()
        if request is self._CLOSE:
            raise StopAsyncIteration
        return request
