"""Scoring one evaluation dialogue from what the caller observed, against its labels.

A timeline is on one clock (seconds): when each of the caller's sounds started and ended (the
frame holding it left the caller), when each agent audio frame and each event arrived. Pure
functions: the unit tests feed them synthetic timelines whose answer is known.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

BARGE_IN_STOP_MS = 400  # a real barge-in must stop the agent this soon after its onset
SPEAKING_WINDOW_S = 0.25  # the agent counts as speaking at t when a frame arrived in the 250 ms before
STOP_GAP_S = 0.25  # agent audio that pauses this long has stopped
REACTION_S = 3.0  # how long after a sound its consequence (interruption, resume) is looked for


@dataclass(frozen=True)
class Sound:
    kind: str  # question | continuation | backchannel | barge_in | noise
    start: float
    end: float


@dataclass
class Timeline:
    sounds: list[Sound]
    audio: list[float] = field(default_factory=list)  # agent audio frame arrivals, ascending
    events: list[tuple[float, dict]] = field(default_factory=list)
    ended: float = float("inf")  # the caller hung up

    def events_between(self, kind: str, begin: float, end: float) -> list[float]:
        return [at for at, event in self.events if event["type"] == kind and begin <= at < end]

    def speaking_at(self, t: float) -> bool:
        return any(t - SPEAKING_WINDOW_S <= at <= t for at in self.audio)

    def stopped_after(self, t: float) -> float | None:
        """When the last agent audio frame arrived before the agent's audio first paused for
        STOP_GAP_S after t (t itself when none came after it); None when it never paused before
        the call ended."""
        previous = t
        for at in (at for at in self.audio if at >= t):
            if at - previous >= STOP_GAP_S:
                return previous
            previous = at
        return previous if self.ended - previous >= STOP_GAP_S else None


def score(category: str, timeline: Timeline) -> dict:
    """The dialogue's outcome: the fields its category is judged on (see load/eval/dialogues.yaml)."""
    sounds = timeline.sounds
    if category in ("complete", "pause"):
        speech_end = sounds[-1].end
        early = [at for at in timeline.audio if sounds[0].start <= at < speech_end]
        first = next((at for at in timeline.audio if at >= speech_end), None)
        return {"premature": bool(early), "answered": first is not None,
                "ttfat_ms": None if first is None or early else (first - speech_end) * 1000}
    if category == "silent":
        return {"spurious_reply": bool(timeline.audio)}
    sound = next(s for s in sounds if s.kind in ("backchannel", "barge_in", "noise"))
    window = (sound.start, sound.end + REACTION_S)
    # The caller says nothing after this sound: an interruption however late is its doing (a slow
    # ASR's final may come after the agent resumed, and real words interrupt then).
    interrupted = bool(timeline.events_between("interruption", sound.start, float("inf")))
    outcome = {"agent_speaking": timeline.speaking_at(sound.start), "interrupted": interrupted,
               "paused": bool(timeline.events_between("agent_paused", *window)),
               "resumed": bool(timeline.events_between("agent_resumed", *window))}
    if category == "barge_in":
        stopped = timeline.stopped_after(sound.start)
        stop_ms = None if stopped is None else max(0.0, (stopped - sound.start) * 1000)
        outcome.update(stop_ms=stop_ms, missed=not interrupted or stop_ms is None or stop_ms > BARGE_IN_STOP_MS)
    return outcome


def summarize(rows: list[dict]) -> dict:
    """Counts over a run: rows are {"category", **score(...)}."""
    def of(category: str) -> list[dict]:
        return [row for row in rows if row["category"] == category]

    turns = of("complete") + of("pause")
    ttfats = [row["ttfat_ms"] for row in of("complete") if row["ttfat_ms"] is not None]
    stops = [row["stop_ms"] for row in of("barge_in") if row["stop_ms"] is not None]
    return {
        "premature_replies": sum(row["premature"] for row in turns), "turns": len(turns),
        "premature_in_pauses": sum(row["premature"] for row in of("pause")), "pauses": len(of("pause")),
        "missed_barge_ins": sum(row["missed"] for row in of("barge_in")), "barge_ins": len(of("barge_in")),
        "barge_in_stop_p50_ms": float(np.percentile(stops, 50)) if stops else None,
        "barge_in_stop_max_ms": max(stops) if stops else None,
        "backchannels_interrupted": sum(row["interrupted"] for row in of("backchannel")),
        "backchannels": len(of("backchannel")),
        "noise_interrupted": sum(row["interrupted"] for row in of("noise")), "noises": len(of("noise")),
        "false_interruption_recoveries": sum(row["resumed"] for row in of("backchannel") + of("noise")),
        "not_speaking_at_overlap": sum(not row["agent_speaking"] for row in rows if "agent_speaking" in row),
        "spurious_replies": sum(row["spurious_reply"] for row in of("silent")), "silent": len(of("silent")),
        "ttfat_p50_ms": float(np.percentile(ttfats, 50)) if ttfats else None,
        "ttfat_p95_ms": float(np.percentile(ttfats, 95)) if ttfats else None,
        "unanswered": sum(not row["answered"] for row in turns),
    }
