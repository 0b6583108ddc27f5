"""The narrow interface every TTS engine meets.

The deployment owns streaming (splitting text into sentences and clauses, resampling);
an engine speaks one segment of text. `synthesize` is blocking and runs in a worker thread.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np


class UnknownVoiceError(ValueError):
    pass


@dataclass(frozen=True)
class Word:
    word: str
    start_s: float  # relative to the start of this segment's audio
    end_s: float


@dataclass(frozen=True)
class Speech:
    audio: np.ndarray  # mono float32 at the engine's sample_rate
    words: tuple[Word, ...] = field(default_factory=tuple)


class TTSEngine(ABC):
    sample_rate: int
    default_voice: str  # what a stream that names no voice gets (see pick_default_voice)

    @abstractmethod
    def voices(self) -> list[str]:
        """Voice names this engine can speak with."""

    @abstractmethod
    def synthesize(self, text: str, voice: str, speed: float) -> Speech:
        """Speak `text`. Raises UnknownVoiceError for a voice not in voices(). Blocking."""

    def close(self) -> None:
        """Release engine resources."""


def pick_default_voice(voices: list[str], configured: str, preferred: str | None) -> str:
    """The preferred voice (an English one, such as af_heart) wherever the model has it, else the
    configured default: one config serves both a pulled English voice set and a fallback set."""
    return preferred if preferred and preferred in voices else configured
