"""The narrow interface every ASR engine meets.

The deployment owns streaming (VAD, partial cadence); an engine only turns a finished buffer of
16 kHz float32 audio into text. `transcribe` is blocking and is called from a worker thread.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class DecodeOptions:
    language: str | None = "en"
    beam_size: int = 1
    word_timestamps: bool = False


@dataclass(frozen=True)
class Word:
    word: str
    start_s: float  # relative to the start of the transcribed buffer
    end_s: float
    probability: float = 0.0


@dataclass(frozen=True)
class Transcription:
    text: str
    language: str
    words: tuple[Word, ...] = field(default_factory=tuple)


class ASREngine(ABC):
    @abstractmethod
    def transcribe(self, audio: np.ndarray, options: DecodeOptions) -> Transcription:
        """Transcribe mono float32 audio at SAMPLE_RATE. Blocking."""

    def close(self) -> None:
        """Release engine resources."""
