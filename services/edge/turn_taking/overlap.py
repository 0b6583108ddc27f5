"""Caller speech over an agent turn, from its onset to a verdict (services/edge/turn_taking/interrupt.py).

Enough speech pauses the agent's audio (the caller hears it stop within `barge_in_min_speech_ms`)
while the LLM and TTS go on filling the queue; a reply not heard yet is held at the speech's onset
(a caller going on after a pause is not answered mid-sentence). Then a transcript with real words,
or speech long enough, interrupts the turn; a backchannel, a final without words, or no transcript
within `false_interruption_timeout_ms` of the speech ending resumes the agent where it stopped (a
false interruption). The timeout is checked as caller audio arrives, so it needs no task of its own.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from services.edge.events import AgentPaused, AgentResumed, Backchannel, Event
from services.edge.playout import Playout
from services.edge.turn import Turn
from services.edge.turn_taking.interrupt import InterruptPolicy, Verdict


class Overlap:
    """One call's tracker of caller speech over the agent; the cascade feeds it ASR events."""

    def __init__(self, policy: InterruptPolicy, playout: Playout, emit: Callable[[Event], Awaitable[None]],
                 interrupt: Callable[[], Awaitable[None]], clear_audio: Callable[[], Awaitable[None]],
                 false_interruption_timeout_ms: int):
        self.policy, self._playout, self._emit = policy, playout, emit
        self._interrupt, self._clear_audio = interrupt, clear_audio
        self._timeout_s = false_interruption_timeout_ms / 1000
        self._speech_from: float | None = None  # stream offset where speech over the agent began
        self._stopped_at: float | None = None  # when that speech ended, while the agent is paused
        self._paused: Turn | None = None
        self.false_interruptions = 0
        self.backchannels = 0

    def reset(self) -> None:
        """The agent's turn ended (or was interrupted): nothing is overlapping any more."""
        self._speech_from = self._stopped_at = None
        self._paused = None

    def speech_started(self, offset_s: float) -> None:
        self._speech_from, self._stopped_at = offset_s, None

    def speech_stopped(self) -> None:
        self._speech_from = None
        if self._paused is not None:
            self._stopped_at = time.monotonic()

    async def audio(self, turn: Turn | None, sent_s: float) -> None:
        """Caller audio up to stream offset `sent_s` has been sent to the ASR."""
        if turn is None:
            return
        if self._speech_from is not None:
            verdict = self.policy.on_speech(sent_s - self._speech_from, agent_heard=turn.audio_started)
            if verdict is Verdict.INTERRUPT:
                await self._interrupt()
            elif verdict is Verdict.PAUSE:
                await self._pause(turn)
        elif self._stopped_at is not None and time.monotonic() - self._stopped_at >= self._timeout_s:
            await self._resume()  # the speech left no transcript: noise

    async def partial(self, turn: Turn | None, text: str, language: str, sent_s: float) -> None:
        speech_s = 0.0 if self._speech_from is None else sent_s - self._speech_from
        if turn is not None and self.policy.on_partial(text, language, speech_s) is Verdict.INTERRUPT:
            await self._interrupt()

    async def final(self, turn: Turn | None, text: str, language: str, utterance_id: int) -> bool:
        """A final transcript; True when it is the caller's (it interrupted any agent turn)."""
        if turn is None:
            return bool(text.strip())
        if self.policy.on_final(text, language) is Verdict.INTERRUPT:
            await self._interrupt()
            return True
        if text.strip():
            self.backchannels += 1
            await self._emit(Backchannel(utterance_id, text))
        await self._resume()
        return False

    async def _pause(self, turn: Turn) -> None:
        if self._paused is not None:
            return
        self._paused = turn
        self._playout.pause(turn.id)
        await self._clear_audio()  # the caller's side drops what it buffered; resume sends it again
        await self._emit(AgentPaused(turn.id))

    async def _resume(self) -> None:
        turn, self._paused, self._stopped_at = self._paused, None, None
        if turn is None or turn.over:
            return
        self.false_interruptions += 1
        self._playout.resume(turn.id)
        await self._emit(AgentResumed(turn.id))
