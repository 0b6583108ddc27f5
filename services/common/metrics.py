"""Prometheus metrics for Parley, recorded through Ray's metrics API.

Every Ray node runs a metrics agent that serves Prometheus text at
`http://<node>:<metrics_export_port>/metrics`; metrics recorded with `ray.util.metrics` in any
process of that node (Serve replicas included) are exported there, each name prefixed `ray_`:

    parley_ttfat_seconds (Histogram)  ->  ray_parley_ttfat_seconds_bucket / _count / _sum
    parley_turns (Counter)            ->  ray_parley_turns_total
    parley_active_conversations       ->  ray_parley_active_conversations
    parley_tool_calls (Counter)       ->  ray_parley_tool_calls_total{tool, outcome}

`EXPORTED_SERIES` lists every series name as it appears at the endpoint; the Grafana dashboard
(cluster/observability/grafana) may use only those. Two properties of Ray's export to keep in mind
when reading the numbers: the agent rebuilds each histogram from its bucket counts, so `_sum` is
approximate (bucket midpoints) while `_bucket` and `_count` are exact, and values reach the
endpoint at Ray's report interval (`metrics_report_interval_ms`, 10 s by default).

Importing this module does not import Ray. The metric objects are created on first use, once per
process, and recording is a no-op in a process that is not connected to Ray (unit tests of the
edge, tools), so observers can be installed unconditionally.

Nothing here records user text or audio, and no label carries a caller, conversation or turn id:
labels stay low-cardinality (stage, gRPC status code, replica, a declared tool's name).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any

from services.common import autoscaling
from services.common.timeline import COMPONENTS, TurnTimeline

logger = logging.getLogger("ray.serve")

PROMETHEUS_PREFIX = "ray_"  # what Ray's metrics agent puts before every application metric name

# Voice latency: tens of ms (a stage's first result) to seconds (a slow turn). Resolution is finest
# around 200-1500 ms, where TTFAT targets sit. Ray requires positive boundaries; +Inf is implicit.
LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.75,
                     1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)
# A request waiting for a stage replica (or an engine worker): from a millisecond upward.
QUEUE_WAIT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# A tool call: a local function (ms) to a slow webhook (tens of seconds, up to a tool's timeout).
TOOL_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.7, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
# A tool name label for a call the model made to a tool that does not exist: model output must not
# create label values (the names of declared tools are the operator's, bounded by the persona).
UNKNOWN_TOOL = "unknown"


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str  # "histogram" | "counter" | "gauge"
    description: str
    tag_keys: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()

    @property
    def exported_series(self) -> tuple[str, ...]:
        """The series names Prometheus sees at a Ray node's metrics endpoint."""
        base = PROMETHEUS_PREFIX + self.name
        if self.kind == "histogram":
            return (f"{base}_bucket", f"{base}_count", f"{base}_sum")
        if self.kind == "counter":
            return (f"{base}_total",)
        return (base,)


# One histogram per component of the turn timeline (services/common/timeline.py).
TURN_HISTOGRAMS = {component.name: MetricSpec(f"parley_{component.name}_seconds", "histogram",
                                              f"Per turn, seconds: {component.description}.",
                                              boundaries=LATENCY_BUCKETS_S)
                   for component in COMPONENTS}
TURNS = MetricSpec("parley_turns", "counter", "Agent turns finished (answered or interrupted).")
BARGE_INS = MetricSpec("parley_barge_ins", "counter", "Agent turns interrupted by the caller (barge-in).")
UNDERRUNS = MetricSpec("parley_playout_underruns", "counter",
                       "Playout underruns: the caller's audio ran dry mid-reply while the agent had more to say.")
PREEMPTIVE_REPLIES = MetricSpec("parley_preemptive_replies", "counter",
                                "Replies started before the caller's turn was confirmed, by outcome "
                                "(confirmed: played; discarded: the caller went on).", tag_keys=("outcome",))
DISCARDED_LLM_TOKENS = MetricSpec("parley_preemptive_discarded_llm_tokens", "counter",
                                  "LLM tokens generated for preemptive replies that were discarded.")
DISCARDED_TTS_SECONDS = MetricSpec("parley_preemptive_discarded_tts_seconds", "counter",
                                   "Seconds of TTS audio synthesized for preemptive replies that were discarded.")
STAGE_ERRORS = MetricSpec("parley_stage_errors", "counter", "Failed stage RPCs by stage and gRPC status code.",
                          tag_keys=("stage", "code"))
ACTIVE_CONVERSATIONS = MetricSpec("parley_active_conversations", "gauge",
                                  "Live conversations held by one edge replica.",
                                  tag_keys=("application", "deployment", "replica"))
TWILIO_CALLS = MetricSpec("parley_twilio_calls", "counter",
                          "Twilio call outcomes: Twilio's status callbacks (CallStatus or StreamEvent) and calls "
                          "the edge turned away busy (`rejected_busy`).", tag_keys=("status",))
QUEUE_WAIT = MetricSpec("parley_stage_queue_wait_seconds", "histogram",
                        "Seconds a stage request waited before a replica or engine worker started it.",
                        tag_keys=("stage",), boundaries=QUEUE_WAIT_BUCKETS_S)

TOOL_CALLS = MetricSpec("parley_tool_calls", "counter",
                        "Tool calls of the agent by tool name and outcome (ok, error, cancelled).",
                        tag_keys=("tool", "outcome"))
TOOL_LATENCY = MetricSpec("parley_tool_latency_seconds", "histogram",
                          "Seconds a tool call ran, from its start to its result (or its cancellation).",
                          tag_keys=("tool",), boundaries=TOOL_LATENCY_BUCKETS_S)

SPECS: tuple[MetricSpec, ...] = (*TURN_HISTOGRAMS.values(), TURNS, BARGE_INS, UNDERRUNS, PREEMPTIVE_REPLIES,
                                 DISCARDED_LLM_TOKENS, DISCARDED_TTS_SECONDS, STAGE_ERRORS, ACTIVE_CONVERSATIONS,
                                 QUEUE_WAIT, TOOL_CALLS, TOOL_LATENCY, TWILIO_CALLS)
EXPORTED_SERIES: frozenset[str] = frozenset(series for spec in SPECS for series in spec.exported_series)


# -- the per-process metric objects ---------------------------------------------------------------

_lock = threading.Lock()
_metrics: dict[str, Any] | None = None
_replica_tags: dict[str, str] | None = None


def _create(spec: MetricSpec) -> Any:
    from ray.util import metrics as ray_metrics

    if spec.kind == "histogram":
        return ray_metrics.Histogram(spec.name, spec.description, boundaries=list(spec.boundaries),
                                     tag_keys=spec.tag_keys)
    if spec.kind == "counter":
        return ray_metrics.Counter(spec.name, spec.description, tag_keys=spec.tag_keys)
    return ray_metrics.Gauge(spec.name, spec.description, tag_keys=spec.tag_keys)


def _get() -> dict[str, Any] | None:
    """This process's metric objects by name, created on first use; None when not in Ray."""
    global _metrics
    if _metrics is not None:
        return _metrics
    ray = sys.modules.get("ray")  # every Ray worker has imported it; elsewhere, do not pay for it
    if ray is None or not ray.is_initialized():
        return None
    with _lock:
        if _metrics is None:
            _metrics = {spec.name: _create(spec) for spec in SPECS}
    return _metrics


_warned: set[str] = set()


def _warn(what: str, error: Exception) -> None:
    # Metrics must never break a call; say so once per kind of failure, at debug level after.
    key = f"{what}:{type(error).__name__}"
    if key in _warned:
        logger.debug("metrics: %s failed: %r", what, error)
    else:
        _warned.add(key)
        logger.warning("metrics: %s failed (further failures at debug level): %r", what, error)


# -- recording ------------------------------------------------------------------------------------

class TurnMetricsObserver:
    """A Conversation observer: records each finished turn's latency components and counters.

    Components a turn did not reach (a greeting has no caller speech; a turn cut by barge-in may
    have no audio yet) are left out of their histograms rather than recorded as zero.
    """

    def __call__(self, timeline: TurnTimeline) -> None:
        try:
            metrics = _get()
            if metrics is None:
                return
            for component in COMPONENTS:
                seconds = timeline.seconds(component)
                if seconds is not None:
                    metrics[TURN_HISTOGRAMS[component.name].name].observe(seconds)
            metrics[TURNS.name].inc()
            if timeline.interrupted:
                metrics[BARGE_INS.name].inc()
            if timeline.underruns > 0:
                metrics[UNDERRUNS.name].inc(timeline.underruns)
        except Exception as error:  # noqa: BLE001 - an observer must not break the conversation
            _warn("turn", error)


def record_preemptive(confirmed: bool, llm_tokens: int = 0, tts_s: float = 0.0) -> None:
    """Count one preemptive reply's outcome; a discarded one's engine work goes to its own counters."""
    try:
        metrics = _get()
        if metrics is None:
            return
        metrics[PREEMPTIVE_REPLIES.name].inc(tags={"outcome": "confirmed" if confirmed else "discarded"})
        if not confirmed and llm_tokens > 0:
            metrics[DISCARDED_LLM_TOKENS.name].inc(llm_tokens)
        if not confirmed and tts_s > 0:
            metrics[DISCARDED_TTS_SECONDS.name].inc(tts_s)
    except Exception as error:  # noqa: BLE001 - metrics must not break the call
        _warn("preemptive", error)


def record_stage_error(stage: str, code: Any) -> None:
    """Count one failed stage RPC; `code` is a grpc.StatusCode or its name (e.g. "UNAVAILABLE")."""
    try:
        metrics = _get()
        if metrics is not None:
            name = getattr(code, "name", None) or str(code)
            metrics[STAGE_ERRORS.name].inc(tags={"stage": str(stage), "code": name})
    except Exception as error:  # noqa: BLE001
        _warn("stage error", error)


def record_twilio_call(status: str) -> None:
    """Count one Twilio call outcome (a status Twilio reported, or `rejected_busy`)."""
    try:
        metrics = _get()
        if metrics is not None:
            metrics[TWILIO_CALLS.name].inc(tags={"status": status})
    except Exception as error:  # noqa: BLE001
        _warn("twilio call", error)


def replica_tags() -> dict[str, str]:
    """This process's Serve application, deployment and replica id (the labels Serve's own metrics
    use), from the replica context; outside a replica, empty names and the process id."""
    global _replica_tags
    if _replica_tags is not None:
        return _replica_tags
    serve = sys.modules.get("ray.serve")  # imported in every Serve replica; elsewhere not needed
    try:
        context = serve.get_replica_context()
        _replica_tags = {"application": context.app_name, "deployment": context.deployment,
                         "replica": context.replica_id.unique_id}
        return _replica_tags
    except Exception:  # noqa: BLE001 - not (yet) inside a Serve replica: do not cache
        return {"application": "", "deployment": "", "replica": f"pid-{os.getpid()}"}


def set_active_conversations(n: int) -> None:
    """Set this edge replica's live conversation count; call it whenever the count changes (Ray
    re-exports the last value every report interval while the process lives)."""
    try:
        metrics = _get()
        if metrics is not None:
            metrics[ACTIVE_CONVERSATIONS.name].set(n, tags=replica_tags())
    except Exception as error:  # noqa: BLE001
        _warn("active conversations", error)


def observe_queue_wait(stage: str, seconds: float) -> None:
    """Record how long a request to `stage` waited before it started being served (also this
    replica's autoscaling signal, services/common/autoscaling.py)."""
    autoscaling.recent_waits.add(seconds)
    try:
        metrics = _get()
        if metrics is not None and seconds >= 0:
            metrics[QUEUE_WAIT.name].observe(float(seconds), tags={"stage": str(stage)})
    except Exception as error:  # noqa: BLE001
        _warn("queue wait", error)


def record_tool_call(tool: str, outcome: str, seconds: float) -> None:
    """Count one finished tool call and observe its duration. `tool` is a declared tool's name or
    UNKNOWN_TOOL (the caller maps the model's other names to it); `outcome` ok | error | cancelled."""
    try:
        metrics = _get()
        if metrics is not None:
            metrics[TOOL_CALLS.name].inc(tags={"tool": tool, "outcome": outcome})
            metrics[TOOL_LATENCY.name].observe(max(0.0, float(seconds)), tags={"tool": tool})
    except Exception as error:  # noqa: BLE001
        _warn("tool call", error)
