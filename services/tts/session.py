"""One synthesis stream: text chunks in, audio out as soon as each sentence or clause is spoken.

The reader splits incoming text into segments (services.common.text) and queues them; the
synthesizer speaks them in order on the replica's engine worker, so the first sentence is
playing while the LLM is still writing the second.

With tracing on, each segment adds two children to the stream's server span: `tts.queue` (the
segment waiting for the replica's engine worker, from when its text was complete) and
`tts.synthesize`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
from opentelemetry import trace

from services.common import attributes as attr
from services.common import metrics, telemetry
from services.common.audio import check_sample_rate, float_to_pcm16, resample
from services.common.rpc import check_size, first_message, invalid_argument
from services.common.text import TextChunker
from services.common.workers import EngineWorker
from services.proto import common_pb2, tts_pb2
from services.tts.config import TTSConfig
from services.tts.engine import TTSEngine

# Long segments are sent in pieces so playout can start before the whole segment is on the wire.
CHUNK_S = 0.5
_END = object()
_tracer = telemetry.tracer("parley.tts")


@dataclass(frozen=True)
class VoiceSettings:
    voice: str
    speed: float
    sample_rate: int

    @classmethod
    def from_request(cls, request: tts_pb2.SynthesisConfig, engine: TTSEngine, default_voice: str) -> VoiceSettings:
        # Callers pick voices by name only; a voice file path comes from the operator's config.
        if request.voice and request.voice not in engine.voices():
            raise invalid_argument(f"unknown voice {request.voice!r}; this deployment has {sorted(engine.voices())}")
        voice = request.voice or default_voice
        speed = request.speed or 1.0
        if not 0.5 <= speed <= 2.0:
            raise invalid_argument(f"speed must be within [0.5, 2.0], got {speed}")
        rate = check_sample_rate(request.sample_rate_hz) if request.sample_rate_hz else engine.sample_rate
        return cls(voice, speed, rate)


def check_message(request: tts_pb2.SynthesizeRequest, config: TTSConfig) -> str:
    """A message after the config: its kind (`text`, `flush` or `end`) once it is checked; an empty
    or oversized text chunk, or a second config, is the caller's error."""
    kind = request.WhichOneof("request")
    if kind == "text":
        if not request.text.text:
            raise invalid_argument("a text chunk must not be empty")
        check_size(len(request.text.text), config.max_chunk_chars, "text chunk length")
    elif kind not in ("flush", "end"):
        raise invalid_argument(f"unexpected `{kind}` message after the config")
    return kind


class SynthesisSession:
    def __init__(self, engine: TTSEngine, worker: EngineWorker, config: TTSConfig,
                 span: trace.Span = trace.INVALID_SPAN):
        self._engine, self._worker, self._config = engine, worker, config
        self._span = span  # the stream's server span: parent of the synthesis spans
        self._segments: asyncio.Queue = asyncio.Queue()
        self._events: asyncio.Queue = asyncio.Queue()

    async def run(self, requests: AsyncIterator[tts_pb2.SynthesizeRequest]) -> AsyncIterator[tts_pb2.SynthesizeResponse]:
        request = await first_message(requests, "config")
        voice = VoiceSettings.from_request(request, self._engine, self._engine.default_voice)
        if self._span.is_recording():
            self._span.set_attributes({attr.MODEL: self._config.engine.model, attr.TTS_VOICE: voice.voice,
                                       attr.AUDIO_SAMPLE_RATE: voice.sample_rate})
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._read(requests))
            tasks.create_task(self._synthesize_loop(voice))
            while (event := await self._events.get()) is not _END:
                yield event

    async def _read(self, requests) -> None:
        chunker = TextChunker(self._config.min_clause_words, self._config.max_segment_chars)
        total_chars = 0
        async for request in requests:
            kind = check_message(request, self._config)
            if kind == "end":
                break
            if kind == "text":
                total_chars += len(request.text.text)
                check_size(total_chars, self._config.max_stream_chars, "text in this stream")
                segments = chunker.push(request.text.text, chunk_end=True)
            else:
                segments = chunker.flush()
            for segment in segments:
                self._segments.put_nowait((segment, time.monotonic()))
        for segment in chunker.flush():
            self._segments.put_nowait((segment, time.monotonic()))
        self._segments.put_nowait(_END)

    async def _synthesize_loop(self, voice: VoiceSettings) -> None:
        segment_id, audio_s = 0, 0.0
        while (item := await self._segments.get()) is not _END:
            text, queued_at = item
            speech, began, ended = await self._worker.run(telemetry.timed, self._engine.synthesize, text, voice.voice,
                                                          voice.speed)
            metrics.observe_queue_wait("tts", began - queued_at)
            audio = resample(speech.audio, self._engine.sample_rate, voice.sample_rate)
            if self._span.is_recording():
                self._trace_segment(segment_id, text, audio.size / voice.sample_rate, queued_at, began, ended)
            if audio.size == 0:
                continue  # punctuation-only segment: nothing to say
            audio_s += audio.size / voice.sample_rate
            self._emit_segment(segment_id, text, audio, speech.words, voice.sample_rate)
            segment_id += 1
        if self._span.is_recording():
            self._span.set_attributes({attr.TTS_SEGMENTS: segment_id, attr.AUDIO_SECONDS: round(audio_s, 3)})
        self._events.put_nowait(tts_pb2.SynthesizeResponse(done=tts_pb2.SynthesisDone(segments=segment_id, audio_s=audio_s)))
        self._events.put_nowait(_END)

    def _emit_segment(self, segment_id: int, text: str, audio: np.ndarray, words, rate: int) -> None:
        step = int(CHUNK_S * rate)
        for start in range(0, audio.size, step):
            t0, t1 = start / rate, min(start + step, audio.size) / rate
            self._events.put_nowait(tts_pb2.SynthesizeResponse(audio=tts_pb2.SpeechAudio(
                pcm=float_to_pcm16(audio[start:start + step]), sample_rate_hz=rate, text=text, segment_id=segment_id,
                words=[common_pb2.WordTiming(word=w.word, start_s=w.start_s - t0, end_s=w.end_s - t0)
                       for w in words if t0 <= w.start_s < t1],
                segment_end=start + step >= audio.size,
            )))

    def _trace_segment(self, segment_id: int, text: str, audio_s: float, queued_at: float, began: float,
                       ended: float) -> None:
        parent = trace.set_span_in_context(self._span)
        _tracer.start_span(attr.SPAN_TTS_QUEUE, parent, attributes={attr.TTS_SEGMENT_ID: segment_id},
                           start_time=telemetry.epoch_ns(queued_at)).end(telemetry.epoch_ns(began))
        span = _tracer.start_span(attr.SPAN_TTS_SYNTHESIZE, parent, start_time=telemetry.epoch_ns(began), attributes={
            attr.TTS_SEGMENT_ID: segment_id, attr.TTS_CHARACTERS: len(text), attr.AUDIO_SECONDS: round(audio_s, 3),
            attr.QUEUE_WAIT_MS: round((began - queued_at) * 1000, 1)})
        if telemetry.content_enabled():
            span.set_attribute(attr.TTS_TEXT, text)
        span.end(telemetry.epoch_ns(ended))
