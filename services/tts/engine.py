"""The narrow interface every TTS engine meets.

The deployment owns streaming (splitting text into sentences and clauses, resampling);
an engine speaks one segment of text. `synthesize` is blocking and runs in a worker thread.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from services.tts.config import TTSEngineConfig


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

    @abstractmethod
    def voices(self) -> list[str]:
        """Voice names this engine can speak with."""

    @abstractmethod
    def synthesize(self, text: str, voice: str, speed: float) -> Speech:
        """Speak `text`. Raises UnknownVoiceError for a voice not in voices(). Blocking."""

    def close(self) -> None:
        """Release engine resources."""


def load_engine(config: TTSEngineConfig) -> TTSEngine:
    # Engines import heavy libraries, so they are imported only when selected.
    if config.kind == "kokoro":
        from services.tts.engines.kokoro import KokoroEngine

        return KokoroEngine(config)
    raise ValueError(f"unknown TTS engine {config.kind!r}")
