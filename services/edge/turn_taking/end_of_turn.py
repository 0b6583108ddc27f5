"""Has the caller's turn ended? The detector interface and the silence-only default."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class EndOfTurnDetector(Protocol):
    """Decides whether the caller has finished, from their last words and (optionally) audio."""

    # True when the detector reads the caller's audio (16 kHz float32, the end of the turn so far).
    needs_audio: bool

    def is_end_of_turn(self, final_text: str, audio: np.ndarray | None = None) -> bool:
        """Called after a pause with the turn's text so far: True starts the agent's reply."""


class SilenceEndpointing:
    """The default: the VAD's silence ended the turn; any non-empty final is a turn."""

    needs_audio = False

    def is_end_of_turn(self, final_text: str, audio: np.ndarray | None = None) -> bool:
        return bool(final_text.strip())
