"""Load profiles: how many simulated callers are on the line over time.

A profile is a piecewise-constant target of concurrent callers. Each caller slot i is wanted
while the target exceeds i; while wanted it places calls back to back (a closed loop: the
concurrency is what the profile says, whatever the latency). When a level rises, its new slots
join spread over `ramp_s` rather than all in the same instant; when it falls, the slots above the
new target finish the call they are in (a call is never cut) and place no more.

    steady  `callers` for `duration_s`
    step    `callers`, then `step` more every `every_s`, up to `max_callers`
    spike   `callers`, `peak` from `spike_at_s` for `spike_s`, then `callers` again
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, model_validator

from services.common.config import Config


class Profile(Config):
    kind: Literal["steady", "step", "spike"] = "steady"
    callers: int = Field(1, ge=0)
    duration_s: float = Field(60.0, gt=0)
    ramp_s: float = Field(2.0, ge=0)
    # step
    step: int = Field(1, ge=1)
    every_s: float = Field(30.0, gt=0)
    max_callers: int | None = Field(None, ge=1)
    # spike
    peak: int | None = Field(None, ge=1)
    spike_at_s: float = Field(30.0, ge=0)
    spike_s: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _complete(self) -> Profile:
        if self.kind == "spike" and (self.peak is None or self.peak <= self.callers):
            raise ValueError("a spike profile needs peak > callers")
        if self.kind == "spike" and self.spike_at_s >= self.duration_s:
            raise ValueError("the spike must start before the end (spike_at_s < duration_s)")
        if self.kind == "step" and self.max_callers is not None and self.max_callers < self.callers:
            raise ValueError("max_callers must be >= callers")
        return self

    def describe(self) -> str:
        if self.kind == "steady":
            shape = f"{self.callers} callers"
        elif self.kind == "step":
            top = "" if self.max_callers is None else f" up to {self.max_callers}"
            shape = f"{self.callers} callers, +{self.step} every {self.every_s:g} s{top}"
        else:
            shape = f"{self.callers} callers, {self.peak} from {self.spike_at_s:g} s for {self.spike_s:g} s"
        return f"{self.kind}: {shape}, for {self.duration_s:g} s (new callers join over {self.ramp_s:g} s)"


def levels(profile: Profile) -> list[tuple[float, int]]:
    """(from time s, target callers) at each change, starting at 0 s."""
    if profile.kind == "steady":
        return [(0.0, profile.callers)]
    if profile.kind == "step":
        top = profile.max_callers if profile.max_callers is not None else 10**9
        found, at, n = [], 0.0, profile.callers
        while at < profile.duration_s:
            found.append((at, min(n, top)))
            if n >= top:
                break
            at, n = at + profile.every_s, n + profile.step
        return found
    end = min(profile.spike_at_s + profile.spike_s, profile.duration_s)
    found = [(0.0, profile.callers)] if profile.spike_at_s > 0 else []
    found.append((profile.spike_at_s, profile.peak))
    if end < profile.duration_s:
        found.append((end, profile.callers))
    return found


@dataclass(frozen=True)
class SlotWindow:
    """Caller slot `slot` places calls from `start_s` until `stop_s` (a call in progress at
    `stop_s` runs to its end)."""

    slot: int
    start_s: float
    stop_s: float


def schedule(profile: Profile) -> list[SlotWindow]:
    """Every slot's active windows, sorted by start time."""
    windows: list[SlotWindow] = []
    open_since: dict[int, float] = {}
    steps = levels(profile)
    previous = 0
    for at, target in steps:
        if target > previous:
            joining = target - previous
            for k, slot in enumerate(range(previous, target)):
                open_since[slot] = at + profile.ramp_s * k / joining
        for slot in range(target, previous):
            windows.append(SlotWindow(slot, open_since.pop(slot), at))
        previous = target
    windows += [SlotWindow(slot, start, profile.duration_s) for slot, start in open_since.items()]
    return sorted((w for w in windows if w.start_s < w.stop_s), key=lambda w: (w.start_s, w.slot))


def target_at(profile: Profile, t: float) -> int:
    """The profile's target concurrency at time t (before ramping)."""
    current = 0
    for at, target in levels(profile):
        if at <= t:
            current = target
    return current if t < profile.duration_s else 0
