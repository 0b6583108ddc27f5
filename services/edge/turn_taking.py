"""Turn-taking decisions, each one small, named and replaceable.

- `EndOfTurnDetector`: has the caller's turn ended? The ASR stage's VAD already waits out
  `min_silence_ms` before it sends a final transcript; the default accepts every non-empty final.
- `InterruptPolicy`: does what the caller says over the agent interrupt it? Today any final
  transcript does, and so does speech that lasts `barge_in_min_speech_ms`; a backchannel
  ("mm-hmm") therefore interrupts too. A smarter policy (barge-in vs backchannel vs noise)
  replaces this class.
"""

from __future__ import annotations

from typing import Protocol

from services.edge.config import TurnTakingConfig


class EndOfTurnDetector(Protocol):
    """Decides when the caller's turn is over."""

    def is_end_of_turn(self, final_text: str) -> bool:
        """Called with each final transcript: True starts the agent's reply to it."""


class SilenceEndpointing:
    """The default: the VAD's silence ended the turn; any non-empty final is a turn."""

    def is_end_of_turn(self, final_text: str) -> bool:
        return bool(final_text.strip())


class InterruptPolicy:
    """Whether caller speech over an agent turn (thinking or speaking) interrupts it."""

    def __init__(self, settings: TurnTakingConfig):
        self._enabled = settings.barge_in
        self._min_speech_s = settings.barge_in_min_speech_ms / 1000

    def on_speech(self, speech_s: float) -> bool:
        """The caller has been speaking over the agent for `speech_s` (VAD): interrupt now?"""
        return self._enabled and speech_s >= self._min_speech_s

    def on_final(self, text: str) -> bool:
        """A final transcript arrived while the agent has a turn: interrupt it (and answer `text`)?"""
        return bool(text.strip())
