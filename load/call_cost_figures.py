"""The pure arithmetic of load/call_cost.py: when each caller speaks, CPU per call, and what the
callers heard (time to first agent audio, gaps in the agent's audio), from recorded times only."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from load.edge_overhead import heard_gaps, pct


@dataclass
class CallerLog:
    """What one caller did and heard, on the host's monotonic clock."""

    utterances: list[tuple[float, float]] = field(default_factory=list)  # (first frame left, last loud frame left)
    frames: list[tuple[float, float]] = field(default_factory=list)  # (arrival, seconds of audio) per agent frame
    edge_ttfat_ms: list[float] = field(default_factory=list)  # the edge's own figure (WebSocket `metrics`)
    # Arrival of each "that reply's audio is over" (WebSocket `agent_audio_end`, Twilio's `turn-<n>-end` mark).
    reply_ends: list[float] = field(default_factory=list)
    error: str | None = None


def speech_plan(callers: int, seconds: float, every_s: float, first_s: float = 2.0) -> list[list[float]]:
    """Per caller, the offsets (s from the start of the measured window) where it starts an
    utterance: one every `every_s`, the callers' first ones spread evenly over one period so
    their turns do not all land at once."""
    if every_s <= 0:
        raise ValueError("the speech period must be positive")
    plan = []
    for index in range(callers):
        at, starts = first_s + index * every_s / max(callers, 1), []
        while at < seconds:
            starts.append(round(at, 3))
            at += every_s
        plan.append(starts)
    return plan


def replies(log: CallerLog) -> list[tuple[float, list[tuple[float, float]]]]:
    """(end of the caller's speech, agent frames that arrived after it and before the caller's
    next utterance began) for each utterance: the reply to that utterance as the caller got it."""
    out = []
    for index, (_, speech_end) in enumerate(log.utterances):
        until = log.utterances[index + 1][0] if index + 1 < len(log.utterances) else float("inf")
        out.append((speech_end, [frame for frame in log.frames if speech_end <= frame[0] < until]))
    return out


def split_at(frames: list[tuple[float, float]], ends: list[float]) -> list[list[tuple[float, float]]]:
    """`frames` cut after each reply end: the edge may answer one utterance with two replies (the
    ASR heard two), and the silence between two replies is not an underrun."""
    parts: list[list[tuple[float, float]]] = [[]]
    bounds = iter(sorted(ends))
    bound = next(bounds, float("inf"))
    for frame in frames:
        while frame[0] > bound:
            parts.append([])
            bound = next(bounds, float("inf"))
        parts[-1].append(frame)
    return [part for part in parts if part]


def heard(logs: list[CallerLog], tolerance_s: float = 0.010) -> dict:
    """Turns, TTFAT at the caller (end of its speech to the reply's first frame arriving) p50/p95,
    and underruns: gaps in a reply's audio playing each frame back to back from its first arrival."""
    ttfat, gaps, gap_ms, with_gaps, unanswered = [], 0, 0.0, 0, 0
    edge = [value for log in logs for value in log.edge_ttfat_ms]
    for log in logs:
        for speech_end, frames in replies(log):
            if not frames:
                unanswered += 1
                continue
            ttfat.append((frames[0][0] - speech_end) * 1000)
            counted = [heard_gaps(part, tolerance_s) for part in split_at(frames, log.reply_ends)]
            count, total_ms = sum(c for c, _ in counted), sum(ms for _, ms in counted)
            gaps, gap_ms, with_gaps = gaps + count, gap_ms + total_ms, with_gaps + (count > 0)
    return {"turns": len(ttfat) + unanswered, "unanswered": unanswered,
            "ttfat_ms_p50": _round(pct(ttfat, 50)), "ttfat_ms_p95": _round(pct(ttfat, 95)),
            "edge_ttfat_ms_p50": _round(pct(edge, 50)) if edge else None,
            "underruns": gaps, "underrun_ms": round(gap_ms, 1), "replies_with_underruns": with_gaps,
            "caller_errors": [log.error for log in logs if log.error]}


def per_call_cpu(idle: dict[str, float], busy: dict[str, float], callers: int, seconds: float) -> dict:
    """CPU ms per second of call per caller, per process group: the busy window minus the same
    cluster idle over as long, groups under 0.5 ms/s left out, largest first."""
    if callers <= 0 or seconds <= 0:
        raise ValueError("callers and seconds must be positive")
    per_call = {group: (busy.get(group, 0.0) - idle.get(group, 0.0)) * 1000 / seconds / callers for group in busy}
    per_call = {group: round(value, 1) for group, value in sorted(per_call.items(), key=lambda kv: -kv[1])
                if abs(value) >= 0.5}
    return {"callers": callers, "seconds": seconds, "ms_per_s_per_call": per_call,
            "total_ms_per_s_per_call": round(sum(per_call.values()), 1),
            "loadavg_1m": round(os.getloadavg()[0], 2)}


def _round(value: float | None) -> float | None:
    return None if value is None or np.isnan(value) else round(value, 1)
