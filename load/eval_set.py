"""The turn-taking evaluation set: labelled dialogues from load/eval/dialogues.yaml, turned into
caller audio deterministically at run time (espeak-ng for speech, seeded noise bursts).

Each dialogue yields its audio and its spans: what each spoken or noise step is, and where its
sound starts and ends in the audio (sample offsets), which is what the scoring compares the
agent's behaviour against (load/turn_scoring.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

SPEC = Path(__file__).resolve().parent / "eval" / "dialogues.yaml"
RATE = 16_000
LEAD_S = 0.5  # silence before the first step
TAIL_S = 5.0  # silence after the last step: the agent's reaction is watched this long
Category = Literal["complete", "pause", "backchannel", "barge_in", "noise", "silent"]
Label = Literal["question", "continuation", "backchannel", "barge_in"]


class Step(BaseModel):
    """One step of a dialogue: exactly one of say, pause, noise, wait_agent."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    say: str | None = None
    label: Label = "question"
    pause: float | None = Field(None, gt=0, le=30)
    noise: float | None = Field(None, gt=0, le=2)
    wait_agent: float | None = Field(None, ge=0, le=10)

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        if sum(value is not None for value in (self.say, self.pause, self.noise, self.wait_agent)) != 1:
            raise ValueError("a step is exactly one of say, pause, noise, wait_agent")
        return self


class EvalSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    categories: dict[Category, list[list[Step]]]


@dataclass(frozen=True)
class Span:
    """A sound of the caller: what it is and where it is (seconds from the start of the audio)."""

    kind: str  # a say step's label, or "noise"
    start_s: float
    end_s: float


@dataclass(frozen=True)
class Wait:
    """At `offset` samples the caller keeps silent until the agent's audio has been arriving for
    `speaking_s` seconds (0: until any agent audio arrives)."""

    offset: int
    speaking_s: float


@dataclass(frozen=True)
class Dialogue:
    name: str
    category: str
    steps: tuple[Step, ...]


def load_spec(path: Path = SPEC) -> list[Dialogue]:
    """Every dialogue of the spec, named category-index, validated."""
    spec = EvalSpec.model_validate(yaml.safe_load(path.read_text()))
    return [Dialogue(f"{category}-{index + 1}", category, tuple(steps))
            for category, dialogues in spec.categories.items() for index, steps in enumerate(dialogues)]


def noise_burst(seconds: float, seed: int) -> np.ndarray:
    """A cough-like burst: seeded noise with a fast attack and an exponential decay."""
    rng = np.random.default_rng(seed)
    samples = int(seconds * RATE)
    envelope = np.minimum(1.0, np.arange(samples) / (0.01 * RATE)) * np.exp(-np.arange(samples) / (0.35 * samples))
    noise = np.convolve(rng.standard_normal(samples), np.ones(4) / 4, mode="same")  # a little low-passed
    return (0.4 * envelope * noise / np.abs(noise).max()).astype(np.float32)


def _pad_to_frame(parts: list[np.ndarray], offset: int) -> int:
    """Pad with silence to the next caller frame boundary (a wait must sit on one, see
    load/timed_call.py: the sound after it is then stamped after the wait, the sound before it before)."""
    from load.timed_call import FRAME_MS

    frame = RATE * FRAME_MS // 1000
    padding = -offset % frame
    parts.append(np.zeros(padding, np.float32))
    return offset + padding


def render(dialogue: Dialogue, speak=None) -> tuple[np.ndarray, list[Span], list[Wait]]:
    """The dialogue's caller audio at RATE, its spans and its waits for the agent: each
    `wait_agent` step, and one after the last step (before the tail) for the agent's reply to
    start, so a slow system is watched long enough. `speak(text, rate)` synthesizes speech
    (default: espeak-ng through tests/speech.py)."""
    if speak is None:
        from tests.speech import espeak as speak
    from load.timed_call import speech_bounds

    parts, spans, offset = [np.zeros(int(LEAD_S * RATE), np.float32)], [], int(LEAD_S * RATE)
    waits = []
    for index, step in enumerate(dialogue.steps):
        if step.wait_agent is not None:
            offset = _pad_to_frame(parts, offset)
            waits.append(Wait(offset, step.wait_agent))
            continue
        if step.pause is not None:
            sound, kind = np.zeros(int(step.pause * RATE), np.float32), None
        elif step.noise is not None:
            sound, kind = noise_burst(step.noise, seed=index + 17 * len(dialogue.name)), "noise"
        else:
            speech = np.asarray(speak(step.say, RATE), np.float32)
            first, last = speech_bounds(speech, RATE)
            sound, kind = speech[first:last], step.label  # the synthesizer's own silences would lengthen pauses
        if kind is not None:
            first, last = speech_bounds(sound, RATE)
            spans.append(Span(kind, (offset + first) / RATE, (offset + last) / RATE))
        parts.append(sound)
        offset += sound.size
    if spans:
        offset = _pad_to_frame(parts, offset)
        waits.append(Wait(offset, 0.0))
    parts.append(np.zeros(int(TAIL_S * RATE), np.float32))
    return np.concatenate(parts), spans, waits
