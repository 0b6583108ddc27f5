"""Rolling aggregates of a load run, in memory that does not grow with the number of calls.

Every finished call is written whole to a JSONL file as it ends (load/loadgen.py); here only
counts and log-bucketed latency histograms per time window are kept (a window's histogram holds
at most a few hundred buckets however many turns fall in it), plus the replica counts each time
they change. The report is computed from these; `load/loadgen.py --report-only DIR` rebuilds
them by streaming the JSONL files again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# Latencies per turn from the edge's `metrics` event (docs/websocket-protocol.md), and per call
# in the gRPC mode (one stage directly).
TURN_METRICS = ("ttfat_ms", "endpointing_ms", "asr_final_ms", "llm_ttft_ms", "first_sentence_ms", "tts_ttfb_ms")
STAGE_METRICS = ("asr_final_ms", "llm_ttft_ms", "tts_ttfb_ms")
OUTCOMES = ("ok", "refused", "dropped", "unanswered", "error")
_RATIO = 1.02  # bucket width: percentiles are within 1% of the true value
_LOG_RATIO = math.log(_RATIO)


@dataclass
class LogHistogram:
    """Counts of values in geometric buckets (sparse), for percentiles in bounded memory."""

    buckets: dict[int, int] = field(default_factory=dict)
    count: int = 0
    total: float = 0.0
    max: float = 0.0

    def add(self, value: float) -> None:
        value = max(float(value), 0.0)
        index = -1 if value < 0.01 else int(math.floor(math.log(value / 0.01) / _LOG_RATIO))
        self.buckets[index] = self.buckets.get(index, 0) + 1
        self.count += 1
        self.total += value
        self.max = max(self.max, value)

    def merge(self, other: LogHistogram) -> None:
        for index, n in other.buckets.items():
            self.buckets[index] = self.buckets.get(index, 0) + n
        self.count += other.count
        self.total += other.total
        self.max = max(self.max, other.max)

    def percentile(self, q: float) -> float | None:
        """The q-th percentile (0-100), as the geometric middle of its bucket; None when empty."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q / 100 * self.count))
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                if index < 0:
                    return 0.0
                return min(0.01 * _RATIO ** (index + 0.5), self.max)
        return self.max


@dataclass
class Window:
    """What happened in one time window of the run."""

    start_s: float
    calls_started: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)  # by the window the call ended in
    turns: int = 0
    latency: dict[str, LogHistogram] = field(default_factory=dict)
    target_callers: int = 0
    replicas: dict[str, int] = field(default_factory=dict)  # running replicas at the window's end

    def observe(self, metric: str, value: float | None) -> None:
        if value is not None:
            self.latency.setdefault(metric, LogHistogram()).add(value)


@dataclass
class ScaleEvent:
    """A deployment's target replica count changed; `running_at_s`: when exactly that many replicas
    were running with none starting or stopping (None: not within the run)."""

    deployment: str
    at_s: float
    before: int
    target: int
    running_at_s: float | None = None


class RunStats:
    def __init__(self, window_s: float = 10.0) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        self.window_s = window_s
        self.windows: dict[int, Window] = {}
        self.total = Window(0.0)
        self.replica_samples: list[tuple[float, dict[str, dict[str, int]]]] = []  # only on change
        self.scale_events: list[ScaleEvent] = []
        self._last_replicas: dict[str, dict[str, int]] = {}

    def window(self, t_s: float) -> Window:
        index = max(0, int(t_s // self.window_s))
        if index not in self.windows:
            self.windows[index] = Window(index * self.window_s)
        return self.windows[index]

    def add_call(self, record: dict) -> None:
        """One finished call (a JSONL record of load/loadgen.py)."""
        self.window(record["start_s"]).calls_started += 1
        self.total.calls_started += 1
        for window in (self.window(record["end_s"]), self.total):
            window.outcomes[record["outcome"]] = window.outcomes.get(record["outcome"], 0) + 1
        for turn in record.get("turns", []):
            window = self.window(turn["t_s"])
            window.turns += 1
            self.total.turns += 1
            for metric in TURN_METRICS:
                window.observe(metric, turn.get(metric))
                self.total.observe(metric, turn.get(metric))

    def add_target(self, t_s: float, callers: int) -> None:
        window = self.window(t_s)
        window.target_callers = max(window.target_callers, callers)

    def add_replicas(self, t_s: float, deployments: dict[str, dict[str, int]]) -> bool:
        """A sample of the Serve status poller: {deployment: {running, target, ...}}. Kept only
        when something changed; returns whether it did."""
        window = self.window(t_s)
        window.replicas = {name: counts["running"] for name, counts in deployments.items()}
        for name, counts in deployments.items():
            before = self._last_replicas.get(name)
            if before is not None and counts["target"] != before["target"]:
                self.scale_events.append(ScaleEvent(name, t_s, before["target"], counts["target"]))
            for event in self.scale_events:
                settled = counts["running"] == event.target and not counts.get("starting") and not counts.get("stopping")
                if event.deployment == name and event.running_at_s is None and settled:
                    event.running_at_s = t_s
        changed = deployments != self._last_replicas
        if changed:
            self.replica_samples.append((t_s, deployments))
            self._last_replicas = deployments
        return changed

    def ordered_windows(self) -> list[Window]:
        """Every window from the first to the last, empty ones included (carrying the replica
        counts forward, as they hold until the next change)."""
        if not self.windows:
            return []
        found, replicas = [], {}
        for index in range(max(self.windows) + 1):
            window = self.windows.get(index) or Window(index * self.window_s)
            replicas = window.replicas or replicas
            window.replicas = replicas
            found.append(window)
        return found
