"""What every call shares, cascade or duplex: the run skeleton, events, the playout clock, turn
reports and the fallback line.

A call owns every task it starts in one TaskGroup (the playout clock plus what the mode adds);
when the caller hangs up, or anything fails, the group cancels them all together and every stage
RPC is cancelled with its task. Events go out typed (services/edge/events.py) and are serialized
in one place (`emit`). Tracing follows the same structure: a `conversation` span for the call, the
mode's stage stream as a client span under it (services/edge/tracing.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from services.common.aio import first_leaf
from services.common.timeline import TurnTimeline
from services.edge.config import EdgeConfig, PersonaConfig
from services.edge.events import AgentAudioStart, AgentState, Dtmf, Event, Metrics, Ready, serialize
from services.edge.playout import Playout, Segment, play_alone
from services.edge.record.log import CallLog
from services.edge.streams.base import Metadata, StageClients, StageUnavailable
from services.edge.streams.fallback import FallbackLine
from services.edge.tracing import ConversationTracing
from services.edge.transport import AudioOutput, CallerHungUp, Transport

logger = logging.getLogger("ray.serve")

Observer = Callable[[TurnTimeline], None]


class CallCore:
    """The base of CascadeCall and DuplexCall; subclasses fill in the hooks below `run`."""

    mode: str | None = None  # sent in `ready` (duplex only, as the protocol documents)

    def __init__(self, transport: Transport, stages: StageClients, config: EdgeConfig, call_id: str,
                 persona: PersonaConfig | None = None, *, observers: tuple[Observer, ...] = (),
                 tracing: ConversationTracing | None = None, fallback: FallbackLine | None = None,
                 log: CallLog | None = None):
        self.id = call_id
        self.transport, self.stages, self.config = transport, stages, config
        self.persona = persona or config.persona
        self.tracing = tracing or ConversationTracing(call_id)  # without a tracer: off
        self.fallback = fallback or FallbackLine(config.resilience.fallback_text)
        self.log = log or CallLog()  # for the post-call record
        # See each finished turn's timeline; they must not block.
        self.observers = (*observers, self.tracing.turn_finished)
        self._started = time.monotonic()
        self.agent_state = "initializing"  # sent as `agent_state` events when it changes
        lead_ms, prebuffer_ms = self._playout_timing()
        self.playout = Playout(self._output(), config.playout_frame_ms, lead_ms, self._on_first_audio,
                               self._on_underrun, prebuffer_ms, on_segment_start=self._on_segment_start)

    # -- the skeleton ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Hold the call until the caller hangs up. Other errors propagate (the host maps them)."""
        with self.tracing.conversation(), self._stage_span() as metadata:
            await self._open(metadata)
            try:
                await self.emit(Ready(self.id, self.transport.input_sample_rate, self.transport.output_sample_rate,
                                      mode=self.mode))
                await self.set_agent_state("listening")
                self.fallback.warm(self.stages, self.persona.voice, self.transport.output_sample_rate,
                                  self.tracing.span_context)
                self.transport.on_dtmf = self.on_dtmf
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(self.playout.run(), name=f"{self.id}:playout")
                    self._start(tasks)
            except* CallerHungUp:
                pass
            except* StageUnavailable as group:
                # The call cannot go on without this stage: say so, then end it.
                await self.say_fallback(first_leaf(group))
                raise
            finally:
                self._close()

    def _stage_span(self) -> AbstractContextManager[Metadata]:
        """The client span of the mode's call-long stage stream; yields the stream's metadata."""
        raise NotImplementedError

    async def _open(self, metadata: Metadata) -> None:
        """Open the call-long stage stream (before `ready`)."""
        raise NotImplementedError

    def _start(self, tasks: asyncio.TaskGroup) -> None:
        """Start the mode's tasks in the call's group."""
        raise NotImplementedError

    def _close(self) -> None:
        """Cancel the call-long stage stream."""

    def _playout_timing(self) -> tuple[int, int]:
        """(lead_ms, prebuffer_ms) of the call's playout clock."""
        return self.config.playout_lead_ms, 0

    def _output(self) -> AudioOutput:
        return self.transport

    async def _on_first_audio(self, turn_id: int) -> None:
        await self.emit(AgentAudioStart(turn_id))

    def _on_underrun(self, turn_id: int) -> None:
        """The caller heard a gap in turn `turn_id`'s audio."""

    async def on_dtmf(self, digit: str) -> None:
        """The caller pressed a key: a `dtmf` event (the cascade also hands it to the LLM)."""
        await self.emit(Dtmf(digit))

    async def _on_segment_start(self, turn_id: int, segment: Segment) -> None:
        """The caller starts hearing `segment` of turn `turn_id`: the transport may caption it in step."""
        await self.transport.agent_speech(turn_id, segment.text)

    # -- shared pieces --------------------------------------------------------------------------

    async def emit(self, event: Event) -> None:
        """Send an event to the client; the one place events are serialized."""
        self.log.event(event)
        await self.transport.send_event(serialize(event, time.monotonic() - self._started))

    async def set_agent_state(self, state: str) -> None:
        """Tell the client what the agent does now (`agent_state`), once per change."""
        if state != self.agent_state:
            self.agent_state = state
            await self.emit(AgentState(state))

    async def report(self, timeline: TurnTimeline) -> None:
        """A turn is over: observers (tracing, Prometheus, stats) and the client's `metrics` event."""
        for observe in self.observers:
            observe(timeline)
        await self.emit(Metrics(timeline))

    async def say_fallback(self, error: StageUnavailable, turn_id: int | None = None) -> None:
        """A stage stayed unavailable: tell the client, and say the cached fallback line (if any) in
        turn `turn_id`'s place on the call's clock, or, with no turn (the call is ending), on a
        playout clock of its own."""
        logger.warning("conversation %s: %s", self.id, error)
        clip = await self.fallback.announce(error, self.emit, self.persona.voice, self.transport.output_sample_rate,
                                            turn_id or 0)
        if clip is None:
            return
        segment = Segment(self.fallback.text)
        if turn_id is not None:
            self.playout.add_audio(turn_id, clip, segment)
            return
        await play_alone(self.transport, self.config.playout_frame_ms, self.config.playout_lead_ms, clip, segment,
                         self._on_first_audio)
