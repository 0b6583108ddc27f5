"""Deciding that the caller's turn has ended.

The ASR stage's VAD already waits out `min_silence_ms` before it sends a final transcript; the
default detector accepts every non-empty final. A smarter detector (a semantic end-of-turn model,
or one that starts generating on stable partials) implements the same interface.
"""

from __future__ import annotations

from typing import Protocol


class EndOfTurnDetector(Protocol):
    def is_end_of_turn(self, final_text: str) -> bool:
        """Called with each final transcript: True starts the agent's reply to it."""


class SilenceEndpointing:
    def is_end_of_turn(self, final_text: str) -> bool:
        return bool(final_text.strip())
