"""One agent turn with a lifecycle: prepared -> started (first audio) -> ended or interrupted.

The turn owns its task (LLM -> sentences -> TTS -> playout); the call holds at most one turn at a
time. A turn ends exactly once, through `Turn.close`, whether it played out or was cut by the
caller, and once it has ended nothing it still had in flight reaches the client: `emit` drops
events of an ended turn.

A preemptive turn is prepared while it is `held`: it answers a caller turn not yet confirmed, so
its events wait (and its audio, in the playout) until `release`, and it is `discard`ed, never
heard, if the caller goes on.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable

from services.common.timeline import TurnTimeline
from services.edge.events import AgentAudioEnd, Event, Interruption


class TurnState(enum.Enum):
    PREPARED = "prepared"  # created; no audio has gone to the caller yet
    STARTED = "started"  # its first audio went to the caller
    ENDED = "ended"  # played out (or abandoned) to its end
    INTERRUPTED = "interrupted"  # cut by the caller
    DISCARDED = "discarded"  # a preemptive turn thrown away before the caller heard any of it


class Turn:
    """An agent turn: its timeline, its task, the text it sent to speech, and how it ended."""

    def __init__(self, timeline: TurnTimeline, emit: Callable[[Event], Awaitable[None]], *,
                 pending_user: str | None = None):
        self.timeline = timeline
        self.state = TurnState.PREPARED
        self.task: asyncio.Task | None = None
        self.spoken: list[str] = []  # segments sent to TTS, in order
        self.heard = ""  # an interrupted turn: what the caller heard of it
        # A preemptive turn: the caller's words it answers, not yet in the history (None once confirmed).
        self.pending_user = pending_user
        self.llm_tokens = 0  # engine work done for the turn (what a discarded one cost)
        self.tts_audio_s = 0.0
        self._emit = emit
        self._held: list[Event] = []
        self._released = asyncio.Event()
        if pending_user is None:
            self._released.set()

    @property
    def id(self) -> int:
        return self.timeline.turn_id

    @property
    def over(self) -> bool:
        return self.state in (TurnState.ENDED, TurnState.INTERRUPTED, TurnState.DISCARDED)

    @property
    def held(self) -> bool:
        """A preemptive turn whose caller turn is not confirmed yet."""
        return not self._released.is_set()

    async def wait_released(self) -> None:
        """Return once the turn is confirmed (at once for a turn that was never held)."""
        await self._released.wait()

    async def release(self) -> None:
        """The caller's turn is confirmed: the held events go out, later ones at once."""
        self.pending_user = None
        self._released.set()
        held, self._held = self._held, []
        for event in held:
            await self.emit(event)

    def discard(self) -> None:
        """Throw a held turn away: its task (and so its LLM and TTS RPCs) is cancelled, its events dropped."""
        if self.over:
            return
        self.state = TurnState.DISCARDED
        self._held.clear()
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()

    @property
    def audio_started(self) -> bool:
        return self.timeline.first_audio_sent is not None

    def first_audio(self) -> None:
        """Its first audio frame goes to the caller now."""
        if self.state is TurnState.PREPARED:
            self.state = TurnState.STARTED
            self.timeline.first_audio_sent = time.monotonic()

    async def emit(self, event: Event) -> None:
        """Send an event of this turn, unless the turn has already ended (a held turn keeps it)."""
        if self.over:
            return
        if self.held:
            self._held.append(event)
        else:
            await self._emit(event)

    def close(self, heard: str | None = None) -> str | None:
        """End the turn, once: later calls return None. `heard` is None for a turn that played to
        its end, else the text the caller heard before interrupting it (its task is cancelled
        then, unless this is that task). Returns the assistant text the history keeps. Nothing
        here awaits, so no other turn can start between the end and the history's update."""
        if self.over:
            return None
        interrupted = heard is not None
        self.state = TurnState.INTERRUPTED if interrupted else TurnState.ENDED
        self.timeline.interrupted = interrupted
        self.heard = heard or ""
        if interrupted and self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
        return heard if interrupted else " ".join(self.spoken)

    async def announce_end(self) -> None:
        """The client's view of the end (after `close`): `interruption`, then `agent_audio_end` if
        any audio went out."""
        interrupted = self.state is TurnState.INTERRUPTED
        if interrupted:
            await self._emit(Interruption(self.id, self.heard))
        if self.audio_started:
            await self._emit(AgentAudioEnd(self.id, interrupted=interrupted))
