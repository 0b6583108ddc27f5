"""The call host: every call an edge replica holds goes through here, whatever its transport.

Admission (`max_conversations`), the live-call registry, the time limit (`max_call_s`), the
persona and voice checked at `start`, the cascade/duplex choice (a duplex call that finds no slot
may fall back to the cascade), ONE table from errors to close codes and `error` events, and the
post-call record sent once a call has closed (services/edge/record/). It
knows nothing of Serve: services/edge/deployment.py is a thin shell of routes over it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import grpc

from services.common import autoscaling, metrics
from services.common.aio import first_leaf
from services.common.timeline import TurnTimeline
from services.edge.cascade import CascadeCall
from services.edge.config import EdgeConfig, PersonaConfig
from services.edge.core import CallCore
from services.edge.duplex import DuplexCall, call_mode
from services.edge.persona import VoiceCatalog, persona_for
from services.edge.record.log import CallLog
from services.edge.record.sender import RecordSender, end_reason
from services.edge.streams.base import StageClients, StageRefused, StageUnavailable, describe
from services.edge.streams.fallback import FallbackLine
from services.edge.streams.moshi import DuplexFull
from services.edge.tools.transfer import CallEnded
from services.edge.tracing import ConversationTracing
from services.edge.transport import CallerHungUp, ProtocolError, Transport

logger = logging.getLogger("ray.serve")


class OverCapacity(Exception):
    """The replica holds `max_conversations` calls already."""


@dataclass(frozen=True)
class Failure:
    """How a call that failed ends: the close code and the `error` event's code and message."""

    close_code: int
    code: str
    message: str
    error_event: bool = True  # False for a normal end the agent chose (the close reason says why)
    stage: str = ""  # the stage that refused, for a `stage_error` event


def _rpc_failure(error: grpc.aio.AioRpcError) -> Failure:
    # Stage streams turn what they do not retry into StageRefused; an RPC error that arrives bare
    # came from none of them, so the edge is the honest label.
    metrics.record_stage_error("edge", error.code())
    return Failure(1011, "stage_error", f"a stage failed: {describe(error)}")


def _refused(error: StageRefused) -> Failure:
    metrics.record_stage_error(error.stage, error.code)
    return Failure(1011, "stage_error", str(error), stage=error.stage)


# The one table from errors to how the call ends, first match wins.
FAILURES: tuple[tuple[type[BaseException], Callable[[BaseException, EdgeConfig], Failure]], ...] = (
    (CallEnded, lambda e, c: Failure(1000, e.reason, e.reason, error_event=False)),
    (OverCapacity, lambda e, c: Failure(4503, "over_capacity", "this edge is at its conversation limit; try again")),
    (ProtocolError, lambda e, c: Failure(e.close_code, "unauthorized" if e.close_code == 4401 else "bad_request",
                                         str(e))),
    (TimeoutError, lambda e, c: Failure(4408, "call_time_limit",
                                        f"the call reached its time limit ({c.max_call_s:g} s)")),
    (DuplexFull, lambda e, c: Failure(4503, "over_capacity", "every duplex slot is taken; try again")),
    (StageUnavailable, lambda e, c: Failure(1013, "stage_unavailable",
                                            f"the {e.stage} stage is unavailable; call again shortly")),
    (StageRefused, lambda e, c: _refused(e)),
    (grpc.aio.AioRpcError, lambda e, c: _rpc_failure(e)),
    (Exception, lambda e, c: Failure(1011, "internal", "the conversation failed")),
)


def failure_of(error: BaseException, config: EdgeConfig) -> Failure:
    """The table's entry for an error (the first leaf of an exception group)."""
    leaf = first_leaf(error)
    for kind, make in FAILURES:
        if isinstance(leaf, kind):
            return make(leaf, config)
    raise error


class CallHost:
    """The replica's calls: one host per edge replica."""

    def __init__(self, config: EdgeConfig, stages: Callable[[], StageClients], voices: VoiceCatalog,
                 tracer=None):
        self.config = config
        self._stages, self.voices, self._tracer = stages, voices, tracer
        self.calls: dict[str, CallCore] = {}
        self.room_calls: set[str] = set()  # those of self.calls held in LiveKit rooms
        self.recent_turns: deque[TurnTimeline] = deque(maxlen=1024)  # for stats() and benchmarks
        self.turn_metrics = metrics.TurnMetricsObserver()  # Prometheus histograms and counters
        self.fallback = FallbackLine(config.resilience.fallback_text, tracer)  # shared by the replica's calls
        self.records = RecordSender()  # post-call records being delivered

    # -- admission and checks at `start` -----------------------------------------------------------

    @property
    def full(self) -> bool:
        """No more calls fit on this replica (a Twilio call is then turned away before its stream)."""
        return len(self.calls) >= self.config.max_conversations

    def admit(self) -> None:
        """Raise OverCapacity when no more calls fit."""
        if self.full:
            raise OverCapacity()

    async def persona(self, claims: dict, requested_voice: str = "") -> PersonaConfig:
        """The call's persona, validated (ProtocolError 4400), its voice known to the TTS."""
        persona = persona_for(self.config.persona, claims, requested_voice, self.config.tools.allowed_hosts)
        await self.voices.check(persona.voice)
        return persona

    # -- holding a call ------------------------------------------------------------------------------

    async def hold(self, open_transport: Callable[[], Awaitable[Transport]], fail: Callable[[Failure], Awaitable[None]],
                   transport_name: str, in_room: bool = False) -> Failure | None:
        """Hold one call from its transport's opening to its end. `fail` ends the wire with a
        Failure; returns the Failure, or None for a call that ended normally (or a caller gone)."""
        held: list[CallCore] = []  # the call, once there is one (its post-call record)
        failure: Failure | None = None
        try:
            self.admit()
            transport = await open_transport()
            mode = call_mode(self.config.duplex, transport.claims)
            persona = await self.persona(transport.claims, transport.requested_voice)
            await self._converse(transport, mode, persona, transport_name, in_room, held)
        except CallerHungUp:
            pass
        except Exception as error:  # noqa: BLE001 - every failure ends through the table
            failure = failure_of(error, self.config)
            if failure.code == "internal":
                logger.exception("conversation failed", exc_info=error)
            elif failure.close_code in (1011, 1013):
                logger.warning("conversation ended: %s (%s)", failure.message, first_leaf(error))
            await fail(failure)
        if held:  # after the call closed: its record never delays the teardown
            self._send_record(held[-1], transport_name, failure)
        return failure

    def _send_record(self, call: CallCore, transport_name: str, failure: Failure | None) -> None:
        config = call.persona.post_call or self.config.post_call
        if config.enabled:
            reason = end_reason(failure.code if failure else None, call.log.idle_ended)
            self.records.send(config, call.log.record(call.id, transport_name, call.mode or "cascade", reason))

    async def _converse(self, transport: Transport, mode: str, persona: PersonaConfig, transport_name: str,
                        in_room: bool, held: list[CallCore]) -> None:
        call_id = uuid.uuid4().hex[:12]
        tracing = ConversationTracing(call_id, self._tracer, transport=transport_name)
        record = persona.post_call or self.config.post_call
        log = CallLog(record.enabled and record.capture_content, record.max_transcript_chars)
        call = self._new_call(mode, transport, persona, call_id, tracing, log)
        held.append(call)
        async with self._live(call_id, call, in_room):
            try:
                await call.run()
            except* DuplexFull:
                if self.config.duplex.when_full != "cascade":  # refused, or queued too long
                    raise
                logger.info("conversation %s: every duplex slot is taken; answering with the cascade", call_id)
                call = self.calls[call_id] = self._new_call("cascade", transport, persona, call_id, tracing, log)
                held.append(call)
                await call.run()

    def _new_call(self, mode: str, transport: Transport, persona: PersonaConfig, call_id: str,
                  tracing: ConversationTracing, log: CallLog) -> CallCore:
        kind = DuplexCall if mode == "duplex" else CascadeCall
        call = kind(transport, self._stages(), self.config, call_id, persona,
                    observers=(self.recent_turns.append, self.turn_metrics), tracing=tracing, fallback=self.fallback,
                    log=log)
        history = getattr(call, "history", None)
        if history is not None and log.capture_content:  # the transcript: only under content capture
            history.listener = log.message
        return call

    @contextlib.asynccontextmanager
    async def _live(self, call_id: str, call: CallCore, in_room: bool) -> AsyncIterator[None]:
        """Hold a call in the registry (admission, stats, autoscaling), at most `max_call_s` long."""
        self.calls[call_id] = call
        if in_room:
            self.room_calls.add(call_id)
        metrics.set_active_conversations(len(self.calls))
        try:
            async with asyncio.timeout(self.config.max_call_s):
                yield
        finally:
            del self.calls[call_id]
            self.room_calls.discard(call_id)
            metrics.set_active_conversations(len(self.calls))

    async def hold_room(self, transport: Transport) -> None:
        """A call in a LiveKit room (RoomAgents runs it, one task per room): the same path as a
        socket's, duplex included; a failure leaves the room instead of closing a socket."""
        async def leave(failure: Failure) -> None:
            logger.info("livekit call ends: %s (%s)", failure.message, failure.close_code)

        async def opened() -> Transport:
            return transport

        await self.hold(opened, leave, "livekit", in_room=True)

    # -- stats -------------------------------------------------------------------------------------

    def live_calls(self, rooms: int) -> dict[str, float]:
        """Serve's custom autoscaling metrics: live calls are the rooms the agent is in (joined or
        waiting for a caller) plus the WebSocket and Twilio calls."""
        return {autoscaling.SESSIONS: rooms + len(self.calls) - len(self.room_calls), "active_rooms": rooms,
                "active_conversations": len(self.calls)}
