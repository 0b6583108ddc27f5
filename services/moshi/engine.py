"""The narrow interface of a batched duplex engine.

An engine owns a fixed number of slots and advances all of them together, one 80 ms frame per
`step`. The tick loop (services.moshi.ticker) owns timing and slot bookkeeping; the engine owns
the model's streaming state. Both methods are blocking and run on the replica's engine worker.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 24_000
FRAME_SAMPLES = 1920  # 80 ms at 24 kHz: one Mimi frame (12.5 Hz)


@dataclass(frozen=True)
class StepResult:
    audio: np.ndarray  # [slots, FRAME_SAMPLES] float32; silence where `spoke` is False
    spoke: np.ndarray  # [slots] bool: the model produced audio for this slot (not still warming up)
    text: list[str | None]  # per slot: the text piece of this frame's inner monologue, if any


class DuplexEngine(ABC):
    slots: int
    frame_samples: int = FRAME_SAMPLES

    @abstractmethod
    def step(self, frames: np.ndarray, active: np.ndarray) -> StepResult:
        """Advance every active slot by one frame. frames: [slots, FRAME_SAMPLES] float32 in
        [-1, 1]; active: [slots] bool. Inactive slots keep their state untouched."""

    @abstractmethod
    def reset_slot(self, slot: int) -> None:
        """Forget a slot's conversation: its next step starts a fresh stream."""

    def close(self) -> None:
        """Release engine resources."""
