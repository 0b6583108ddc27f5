"""The spans of one conversation, as an operator reads them in Jaeger.

    conversation                               the whole call
      parley.v1.SpeechRecognition/Recognize    client span: the call's ASR stream
      turn                                     end of the caller's speech -> the turn's end
        endpointing, asr, llm, tts             the turn's latency components (its TurnTimeline)
        parley.v1.LanguageModel/Generate       client span: the turn's LLM RPC
        parley.v1.SpeechSynthesis/Synthesize   client span: the turn's TTS stream
        execute_tool                           one tool call (name, id, outcome)

Each client span travels with its RPC as W3C `traceparent` metadata, so the stage replica's
server span (and Serve's proxy and replica spans before it) join the same trace under it. The
`turn` span carries the latency components the caller's `metrics` event reports, same values.

The call (services/edge/core.py, cascade.py, duplex.py) calls `conversation()`, `asr_call()`,
`turn_started()`, `llm_call()` and `tts_call()` as things happen; `turn_finished` is one of its
turn observers. With tracing off there is no valid span: every call returns at once, builds no
attribute and adds no metadata. A trace sampled out still propagates that decision, so the stages
do not start traces of their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from services.common import attributes as attr
from services.common import telemetry
from services.common.timeline import COMPONENTS, TurnTimeline
from services.edge.transport import CallerHungUp

Metadata = tuple[tuple[str, str], ...]


class ConversationTracing:
    def __init__(self, conversation_id: str, tracer: trace.Tracer | None = None, transport: str = ""):
        self.conversation_id, self.transport = conversation_id, transport
        self._tracer = tracer
        self._span: trace.Span = trace.INVALID_SPAN
        self._turns: dict[int, trace.Span] = {}
        self._utterances: dict[int, int] = {}  # turn id -> the caller utterance it answers

    @property
    def _on(self) -> bool:
        return self._span.get_span_context().is_valid

    @property
    def span_context(self) -> trace.SpanContext:
        """The `conversation` span's context (invalid with tracing off), for links from other traces."""
        return self._span.get_span_context()

    # -- the call -----------------------------------------------------------------------------------

    @contextmanager
    def conversation(self) -> Iterator[None]:
        """The `conversation` span around the whole call. Its parent is the current context: Serve's
        spans for the WebSocket request, which continue a `traceparent` the caller's backend sent."""
        if self._tracer is None:
            yield
            return
        self._span = self._tracer.start_span(attr.SPAN_CONVERSATION)
        if self._span.is_recording():
            self._span.set_attributes({attr.GEN_AI_CONVERSATION_ID: self.conversation_id,
                                       attr.TRANSPORT: self.transport})
        try:
            yield
        except BaseException as error:
            _record_failure(self._span, error)
            raise
        finally:
            for span in self._turns.values():  # the call ended mid-turn (a hang-up)
                span.set_attribute(attr.TURN_UNFINISHED, True)
                span.end()
            self._turns.clear()
            self._span.end()

    def asr_call(self, sample_rate: int):
        """Client span of the call's ASR stream (child of `conversation`); yields its metadata."""
        return self._call(attr.SPAN_RECOGNIZE, self._span, "asr",
                          lambda: {attr.AUDIO_SAMPLE_RATE: sample_rate})

    def duplex_call(self):
        """Client span of the call's duplex stream (child of `conversation`); yields its metadata."""
        return self._call(attr.SPAN_CONVERSE, self._span, "moshi", lambda: {attr.AUDIO_SAMPLE_RATE: 24_000})

    # -- turns ----------------------------------------------------------------------------------------

    def turn_started(self, timeline: TurnTimeline, utterance_id: int | None = None,
                     user_text: str | None = None) -> None:
        """Open the `turn` span; it starts at the end of the caller's speech (a greeting: now)."""
        if not self._on:
            return
        start = telemetry.epoch_ns(timeline.speech_end) if timeline.speech_end is not None else None
        span = self._tracer.start_span(attr.SPAN_TURN, trace.set_span_in_context(self._span), start_time=start)
        if span.is_recording():
            span.set_attributes({attr.TURN_ID: timeline.turn_id,
                                 attr.TURN_KIND: "greeting" if utterance_id is None else "reply"})
            if utterance_id is not None:
                span.set_attribute(attr.UTTERANCE_ID, utterance_id)
                self._utterances[timeline.turn_id] = utterance_id
            if user_text is not None and telemetry.content_enabled():
                span.set_attribute(attr.TURN_USER_TEXT, user_text)
        self._turns[timeline.turn_id] = span

    def turn_finished(self, timeline: TurnTimeline) -> None:
        """A turn observer: the latency components as child spans and attributes; end the turn."""
        span = self._turns.pop(timeline.turn_id, None)
        if span is None:
            return
        utterance_id = self._utterances.pop(timeline.turn_id, None)
        if span.is_recording():
            parent = trace.set_span_in_context(span)
            for component in COMPONENTS:
                start, end = getattr(timeline, component.start), getattr(timeline, component.end)
                if component.span is not None and start is not None and end is not None:
                    child = self._tracer.start_span(component.span, parent, start_time=telemetry.epoch_ns(start))
                    if component.span == attr.SPAN_ASR and utterance_id is not None:
                        child.set_attribute(attr.UTTERANCE_ID, utterance_id)
                    child.end(telemetry.epoch_ns(end))
            latencies = timeline.latencies_ms()
            span.set_attributes({component.attribute: latencies[component.event_field] for component in COMPONENTS
                                 if latencies[component.event_field] is not None})
            span.set_attributes({attr.TURN_INTERRUPTED: timeline.interrupted, attr.TURN_UNDERRUNS: timeline.underruns,
                                 attr.TURN_PREEMPTIVE: timeline.preemptive})
        span.end()

    def turn_discarded(self, timeline: TurnTimeline) -> None:
        """End a preemptive turn's span that was thrown away (its LLM and TTS spans stay under it)."""
        span = self._turns.pop(timeline.turn_id, None)
        self._utterances.pop(timeline.turn_id, None)
        if span is None:
            return
        if span.is_recording():
            span.set_attributes({attr.TURN_PREEMPTIVE: True, attr.TURN_DISCARDED: True})
        span.end()

    def llm_call(self, turn_id: int, *, max_tokens: int, temperature: float):
        """Client span of a turn's LLM RPC (child of `turn`); yields its metadata."""
        return self._call(attr.SPAN_GENERATE, self._turns.get(turn_id, self._span), "llm", lambda: {
            attr.GEN_AI_OPERATION_NAME: "chat", attr.GEN_AI_REQUEST_MAX_TOKENS: max_tokens,
            attr.GEN_AI_REQUEST_TEMPERATURE: temperature, attr.TURN_ID: turn_id})

    def tts_call(self, turn_id: int, *, voice: str, sample_rate: int):
        """Client span of a turn's TTS stream (child of `turn`); yields its metadata."""
        return self._call(attr.SPAN_SYNTHESIZE, self._turns.get(turn_id, self._span), "tts", lambda: {
            attr.AUDIO_SAMPLE_RATE: sample_rate, attr.TURN_ID: turn_id, **({attr.TTS_VOICE: voice} if voice else {})})

    @contextmanager
    def tool_call(self, turn_id: int, tool_call_id: str, name: str) -> Iterator[trace.Span]:
        """Span of one tool call (child of its turn); the caller sets the outcome on it. Arguments
        and results go on it only with content capture on (they are the caller's data)."""
        if not self._on:
            yield trace.INVALID_SPAN
            return
        span = self._tracer.start_span(attr.SPAN_TOOL, trace.set_span_in_context(self._turns.get(turn_id, self._span)),
                                       attributes={attr.GEN_AI_OPERATION_NAME: "execute_tool",
                                                   attr.GEN_AI_TOOL_NAME: name, attr.GEN_AI_TOOL_CALL_ID: tool_call_id,
                                                   attr.TURN_ID: turn_id})
        try:
            yield span
        finally:
            span.end()

    # -- helpers --------------------------------------------------------------------------------------

    @contextmanager
    def _call(self, name: str, parent: trace.Span, stage: str, attributes) -> Iterator[Metadata]:
        if not self._on:
            yield ()
            return
        span = self._tracer.start_span(name, trace.set_span_in_context(parent), kind=SpanKind.CLIENT)
        if span.is_recording():
            span.set_attributes({**attr.rpc(name), attr.STAGE: stage, **attributes()})
        try:
            yield telemetry.grpc_metadata_with_context(context=trace.set_span_in_context(span))
        except (asyncio.CancelledError, GeneratorExit):
            span.set_attribute(attr.RPC_CANCELLED, True)  # a barge-in or a hang-up
            raise
        except BaseException as error:
            _record_failure(span, error)
            raise
        finally:
            span.end()


def _record_failure(span: trace.Span, error: BaseException) -> None:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    if isinstance(error, grpc.aio.AioRpcError):
        span.set_attribute(attr.RPC_GRPC_STATUS_CODE, error.code().value[0])
        span.set_status(Status(StatusCode.ERROR, error.code().name))
    elif not isinstance(error, CallerHungUp):  # hanging up ends a call; it is not a failure
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
