"""The fallback line: what the agent says when a stage stays unavailable.

Synthesized once per voice and rate while TTS is up, kept in memory (PCM s16le), played from
there when it is not. Shared by every call of an edge replica, so with tracing on each attempt is a
trace of its own (a `fallback_line` client span), linked to the conversation that asked for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from services.common import attributes as attr
from services.common import metrics, telemetry
from services.common.requests import Synthesize
from services.edge.events import AgentText, Error, Event
from services.edge.streams.base import RETRYABLE, StageClients, StageUnavailable, describe
from services.edge.streams.tts import open_synthesis

logger = logging.getLogger("ray.serve")


class FallbackLine:
    """The replica's fallback line, ready per (voice, rate) once synthesized."""

    def __init__(self, text: str, tracer: trace.Tracer | None = None):
        self.text = text
        self._tracer = tracer
        self._clips: dict[tuple[str, int], bytes] = {}
        self._warming: dict[tuple[str, int], asyncio.Task] = {}

    def clip(self, voice: str, rate: int) -> bytes | None:
        return self._clips.get((voice, rate))

    @property
    def clips(self) -> int:
        """How many voice and rate pairs the line is ready in (an edge replica's stats)."""
        return len(self._clips)

    async def announce(self, error: StageUnavailable, emit: Callable[[Event], Awaitable[None]], voice: str, rate: int,
                       turn_id: int) -> bytes | None:
        """Tell the client a stage stayed unavailable (an `error` event, then the line's `agent_text`
        when there is a clip to say it with). Returns the clip for the caller to play, or None."""
        metrics.record_stage_error(error.stage, "UNAVAILABLE")
        await emit(Error("stage_unavailable", str(error), stage=error.stage))
        clip = self.clip(voice, rate)
        if clip is not None:
            await emit(AgentText(turn_id, self.text, fallback=True))
        return clip

    def warm(self, stages: StageClients, voice: str, rate: int,
             asked_by: trace.SpanContext = trace.INVALID_SPAN_CONTEXT) -> None:
        """Start synthesizing the line in the background, if not done or under way (`asked_by`:
        the conversation that needs it, for the trace's link)."""
        key = (voice, rate)
        if not self.text or key in self._clips or key in self._warming:
            return
        task = asyncio.get_running_loop().create_task(self._synthesize(stages, voice, rate, asked_by))
        self._warming[key] = task
        task.add_done_callback(lambda _: self._warming.pop(key, None))

    async def _synthesize(self, stages: StageClients, voice: str, rate: int, asked_by: trace.SpanContext) -> None:
        for attempt in range(10):
            span = self._span(voice, rate, asked_by)
            call = open_synthesis(stages, voice, rate, telemetry.grpc_metadata_with_context(
                context=trace.set_span_in_context(span)) if span.is_recording() else ())
            try:
                call.send(Synthesize.text(self.text))
                call.close()
                chunks = [r.audio.pcm async for r in call if r.WhichOneof("event") == "audio"]
                if chunks:
                    self._clips[(voice, rate)] = b"".join(chunks)
                    return
            except grpc.aio.AioRpcError as error:
                if error.code() not in RETRYABLE:  # e.g. an unknown voice: asking again will not help
                    logger.warning("fallback line not synthesized: %s", describe(error))
                    return
                logger.info("fallback line not synthesized yet (%s); retrying", describe(error))
            finally:
                call.cancel()
                span.end()
            await asyncio.sleep(min(30.0, 2.0 ** attempt))

    def _span(self, voice: str, rate: int, asked_by: trace.SpanContext) -> trace.Span:
        """A root span for one synthesis attempt: the line outlives the call that asked for it."""
        if self._tracer is None:
            return trace.INVALID_SPAN
        links = [trace.Link(asked_by)] if asked_by.is_valid else []
        return self._tracer.start_span(attr.SPAN_FALLBACK_LINE, otel_context.Context(), kind=SpanKind.CLIENT,
                                       links=links, attributes={**attr.rpc(attr.SPAN_SYNTHESIZE), attr.STAGE: "tts",
                                                                attr.TTS_VOICE: voice, attr.AUDIO_SAMPLE_RATE: rate})
