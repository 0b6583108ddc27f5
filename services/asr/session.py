"""One recognition stream: audio in, VAD events, partials and finals out.

The reader feeds audio to the segmenter as it arrives; a single decoder task runs the engine so
decodes never pile up: at most one partial is pending, finals are never dropped, and every event
of an utterance is emitted before the next utterance's final.

A pause inside an utterance (when the client asks for them) is decoded at once with the final's
options; when the utterance then ends with no speech after the pause, its final reuses that
decode, so a client that starts its reply on the pause loses nothing and the engine decodes once.

With tracing on, each decode adds two children to the stream's server span: `asr.queue` (the
job waiting for the replica's engine worker, from when its audio was ready) and `asr.decode`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np
from opentelemetry import trace

from services.asr import segmenter as seg
from services.asr.config import ASRConfig
from services.asr.engine import SAMPLE_RATE, ASREngine, DecodeOptions
from services.asr.vad import StreamingVAD
from services.common import attributes as attr
from services.common import metrics, telemetry
from services.common.audio import StreamResampler, check_sample_rate, pcm16_to_float
from services.common.rpc import check_size, first_message, invalid_argument
from services.common.workers import EngineWorker
from services.proto import asr_pb2, common_pb2

_tracer = telemetry.tracer("parley.asr")
# Progress events: often enough to be a liveness signal, rarely enough to cost nothing.
MIN_PROGRESS_MS, MAX_PROGRESS_MS = 100, 60_000


@dataclass(frozen=True)
class StreamSettings:
    sample_rate: int
    options: DecodeOptions
    min_silence_ms: int
    partial_interval_s: float | None  # None: no partials
    progress_interval_s: float | None  # None: no Progress events
    max_frame_bytes: int
    pause_ms: int = 0  # 0: no pause decodes

    @classmethod
    def from_request(cls, request: asr_pb2.RecognitionConfig, defaults: ASRConfig) -> StreamSettings:
        rate = check_sample_rate(request.sample_rate_hz)
        if request.beam_size < 0 or request.beam_size > 10:
            raise invalid_argument(f"beam_size must be 0-10, got {request.beam_size}")
        if request.min_silence_ms < 0:
            raise invalid_argument("min_silence_ms must not be negative")
        if request.progress_interval_ms and not MIN_PROGRESS_MS <= request.progress_interval_ms <= MAX_PROGRESS_MS:
            raise invalid_argument(f"progress_interval_ms must be 0 or {MIN_PROGRESS_MS}-{MAX_PROGRESS_MS}, "
                                   f"got {request.progress_interval_ms}")
        partial_ms = request.partial_interval_ms or defaults.partial_interval_ms
        min_silence_ms = request.min_silence_ms or defaults.min_silence_ms
        try:
            seg.check_pause_ms(request.pause_ms, min_silence_ms)
        except ValueError as error:
            raise invalid_argument(str(error)) from None
        return cls(
            sample_rate=rate,
            options=DecodeOptions(
                language=request.language or defaults.language,
                beam_size=request.beam_size or defaults.beam_size,
                word_timestamps=request.word_timestamps,
            ),
            min_silence_ms=min_silence_ms,
            partial_interval_s=None if partial_ms < 0 else partial_ms / 1000,
            progress_interval_s=request.progress_interval_ms / 1000 or None,
            max_frame_bytes=rate * defaults.max_frame_ms // 1000 * 2,
            pause_ms=request.pause_ms,
        )


def frame_audio(request: asr_pb2.RecognizeRequest, settings: StreamSettings) -> np.ndarray | None:
    """A message after the config: its audio as float32, or None for a flush; anything else is
    the caller's error (INVALID_ARGUMENT, RESOURCE_EXHAUSTED for an oversized frame)."""
    kind = request.WhichOneof("request")
    if kind == "audio":
        check_size(len(request.audio.pcm), settings.max_frame_bytes, "audio frame size in bytes")
        return pcm16_to_float(request.audio.pcm)
    if kind == "flush":
        return None
    raise invalid_argument(f"unexpected `{kind}` message after the config")


@dataclass
class _Pause:
    """A pause inside an utterance: its decode, once done, and whether the caller went on since."""

    speech_end_s: float
    resumed: bool = False
    result: asr_pb2.Transcript | None = None


@dataclass(frozen=True)
class _Decode:
    utterance_id: int
    audio: np.ndarray
    start_s: float
    end_s: float
    final: bool
    queued_at: float = field(default_factory=time.monotonic)  # its audio was ready to decode
    # A pause's decode (not final), or the pause whose decode a final reuses when it is done.
    pause: _Pause | None = None


_END = object()


class RecognitionSession:
    def __init__(self, engine: ASREngine, worker: EngineWorker, config: ASRConfig,
                 span: trace.Span = trace.INVALID_SPAN):
        self._engine, self._worker, self._config = engine, worker, config
        self._span = span  # the stream's server span: parent of the decode spans
        self._events: asyncio.Queue = asyncio.Queue()
        self._decodes: asyncio.Queue = asyncio.Queue()
        self._pending_partial: _Decode | None = None
        self._open_pause: _Pause | None = None  # the utterance in progress paused, not resumed since
        self._utterances = 0

    async def run(self, requests: AsyncIterator[asr_pb2.RecognizeRequest]) -> AsyncIterator[asr_pb2.RecognizeResponse]:
        settings = StreamSettings.from_request(await first_message(requests, "config"), self._config)
        if self._span.is_recording():
            self._span.set_attributes({attr.MODEL: self._config.engine.model,
                                       attr.AUDIO_SAMPLE_RATE: settings.sample_rate})
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._read(requests, settings))
            tasks.create_task(self._decode_loop(settings.options))
            while (event := await self._events.get()) is not _END:
                yield event

    async def _read(self, requests, settings: StreamSettings) -> None:
        resampler = StreamResampler(settings.sample_rate, SAMPLE_RATE)
        segmenter = seg.UtteranceSegmenter(
            StreamingVAD(),
            threshold=self._config.vad_threshold,
            min_speech_ms=self._config.min_speech_ms,
            min_silence_ms=settings.min_silence_ms,
            pre_roll_ms=self._config.pre_roll_ms,
            max_utterance_s=self._config.max_utterance_s,
            pause_ms=settings.pause_ms,
        )
        next_partial_at = 0.0
        next_progress_at = settings.progress_interval_s
        async for request in requests:
            audio = frame_audio(request, settings)
            events = segmenter.flush() if audio is None else segmenter.push(resampler.push(audio))
            for event in events:
                if isinstance(event, seg.SpeechStarted):
                    next_partial_at = event.offset_s + (settings.partial_interval_s or 0)
                self._on_segment_event(event)
            if segmenter.in_speech and settings.partial_interval_s and segmenter.audio_s >= next_partial_at:
                next_partial_at = segmenter.audio_s + settings.partial_interval_s
                self._request_partial(segmenter)
            if next_progress_at is not None and segmenter.audio_s >= next_progress_at:
                next_progress_at = segmenter.audio_s + settings.progress_interval_s
                self._emit(progress=asr_pb2.Progress(audio_s=segmenter.audio_s))
        for event in segmenter.flush():
            self._on_segment_event(event)
        self._decodes.put_nowait(_END)
        self._summary = asr_pb2.StreamSummary(audio_s=segmenter.audio_s, utterances=self._utterances)
        if self._span.is_recording():
            self._span.set_attributes({attr.AUDIO_SECONDS: segmenter.audio_s, attr.ASR_UTTERANCES: self._utterances})

    def _on_segment_event(self, event) -> None:
        if isinstance(event, seg.SpeechStarted):
            self._emit(speech_started=asr_pb2.SpeechStarted(
                audio_offset_s=event.offset_s, utterance_id=event.utterance_id))
        elif isinstance(event, seg.SpeechStopped):
            self._emit(speech_stopped=asr_pb2.SpeechStopped(
                audio_offset_s=event.offset_s, utterance_id=event.utterance_id))
        elif isinstance(event, seg.UtteranceEnded):
            self._utterances += 1
            self._pending_partial = None  # the final supersedes it
            pause, self._open_pause = self._open_pause, None
            self._decodes.put_nowait(_Decode(event.utterance_id, event.audio, event.start_s, event.end_s, True,
                                             pause=pause))
        elif isinstance(event, seg.SpeechPaused):
            self._pending_partial = None  # the pause's decode is newer
            self._open_pause = _Pause(event.speech_end_s)
            self._decodes.put_nowait(_Decode(event.utterance_id, event.audio, event.start_s, event.end_s, False,
                                             pause=self._open_pause))
        elif isinstance(event, seg.SpeechResumed):
            if self._open_pause is not None:
                self._open_pause.resumed = True
                self._open_pause = None
            self._emit(speech_resumed=asr_pb2.SpeechResumed(
                audio_offset_s=event.offset_s, utterance_id=event.utterance_id))

    def _request_partial(self, segmenter: seg.UtteranceSegmenter) -> None:
        audio = segmenter.current_audio()
        if audio is None or audio.size == 0:
            return
        utterance_id, end_s = segmenter.utterance_id, segmenter.audio_s
        queued = self._pending_partial is not None and self._pending_partial.utterance_id == utterance_id
        self._pending_partial = _Decode(utterance_id, audio, end_s - audio.size / SAMPLE_RATE, end_s, False)
        if not queued:
            # A token, not the job: when the decoder reaches it, it takes the newest partial of
            # this utterance, or nothing if the utterance's final has superseded it.
            self._decodes.put_nowait(("partial", utterance_id))

    async def _decode_loop(self, options: DecodeOptions) -> None:
        partial_options = DecodeOptions(language=options.language, beam_size=1, word_timestamps=False)
        while (job := await self._decodes.get()) is not _END:
            if isinstance(job, tuple):
                pending = self._pending_partial
                if pending is None or pending.utterance_id != job[1]:
                    continue
                job, self._pending_partial = pending, None
            pause = job.pause
            if job.final and pause is not None and pause.result is not None:
                # Nothing was said after the pause: the final's words are the pause's.
                transcript = asr_pb2.Transcript()
                transcript.CopyFrom(pause.result)
                transcript.end_s, transcript.decode_s = job.end_s, 0.0
                self._emit(final=transcript)
                continue
            if pause is not None and not job.final and pause.resumed:
                continue  # the caller went on before its decode began
            transcript = await self._transcribe(job, options if job.final or pause else partial_options)
            if job.final:
                self._emit(final=transcript)
            elif pause is None:
                self._emit(partial=transcript)
            else:
                pause.result = transcript
                if not pause.resumed:
                    self._emit(pause=asr_pb2.Pause(transcript=transcript, speech_end_s=pause.speech_end_s))
        self._emit(summary=self._summary)
        self._events.put_nowait(_END)

    async def _transcribe(self, job: _Decode, options: DecodeOptions) -> asr_pb2.Transcript:
        started = time.perf_counter()
        result, began, ended = await self._worker.run(telemetry.timed, self._engine.transcribe, job.audio, options)
        transcript = asr_pb2.Transcript(
            utterance_id=job.utterance_id, text=result.text.strip(), start_s=job.start_s, end_s=job.end_s,
            language=result.language, decode_s=time.perf_counter() - started,
            words=[common_pb2.WordTiming(word=w.word, start_s=job.start_s + w.start_s, end_s=job.start_s + w.end_s,
                                         probability=w.probability) for w in result.words],
        )
        metrics.observe_queue_wait("asr", began - job.queued_at)
        if self._span.is_recording():
            self._trace_decode(job, transcript.text, began, ended)
        return transcript

    def _emit(self, **event) -> None:
        self._events.put_nowait(asr_pb2.RecognizeResponse(**event))

    def _trace_decode(self, job: _Decode, text: str, began: float, ended: float) -> None:
        parent = trace.set_span_in_context(self._span)
        facts = {attr.UTTERANCE_ID: job.utterance_id, attr.ASR_FINAL: job.final,
                 attr.ASR_PAUSE: job.pause is not None and not job.final}
        _tracer.start_span(attr.SPAN_ASR_QUEUE, parent, attributes=facts,
                           start_time=telemetry.epoch_ns(job.queued_at)).end(telemetry.epoch_ns(began))
        decode = _tracer.start_span(attr.SPAN_ASR_DECODE, parent, start_time=telemetry.epoch_ns(began), attributes={
            **facts, attr.AUDIO_SECONDS: round(job.audio.size / SAMPLE_RATE, 3),
            attr.QUEUE_WAIT_MS: round((began - job.queued_at) * 1000, 1)})
        if telemetry.content_enabled():
            decode.set_attribute(attr.ASR_TRANSCRIPT, text)
        decode.end(telemetry.epoch_ns(ended))
