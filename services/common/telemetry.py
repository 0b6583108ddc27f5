"""OpenTelemetry tracing for every Parley process: set up once, from the standard OTEL_* variables.

One trace per conversation: the edge opens `conversation` -> `turn` spans and sends W3C
`traceparent` as gRPC metadata with each stage RPC; each stage replica continues that trace with
a server span (`context_from_grpc`) and children for queue wait and engine work. Names of spans
and attributes live in `services.common.attributes`.

Switching it on and off:
- Ray Serve's own tracing (`tracing_config` in the serve config, or RAY_SERVE_TRACING_* in the
  cluster's environment) installs an SDK TracerProvider in each proxy and replica, exporting
  through `span_processors()` below. `setup()` then reuses that provider and adds nothing.
- Otherwise `setup()` installs its own provider only when an OTLP endpoint is configured
  (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT), with the sampler from
  OTEL_TRACES_SAMPLER/OTEL_TRACES_SAMPLER_ARG and the resource from OTEL_SERVICE_NAME /
  OTEL_RESOURCE_ATTRIBUTES. Without one there is no provider at all: tracers are the API's no-op
  tracers, spans are non-recording, and callers skip building attributes (`span.is_recording()`).

User text (transcripts, prompts, replies) goes into spans only with PARLEY_TRACE_CONTENT=1.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from opentelemetry import propagate, trace
from opentelemetry.context import Context

logger = logging.getLogger("ray.serve")

T = TypeVar("T")
CONTENT_ENV = "PARLEY_TRACE_CONTENT"
_ENDPOINT_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")

_lock = threading.Lock()
_configured = False
_enabled = False


def _sdk_provider_installed() -> bool:
    try:
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:  # API only: nothing can record
        return False
    return isinstance(trace.get_tracer_provider(), TracerProvider)


def _endpoint_configured() -> bool:
    return any(os.environ.get(name, "").strip() for name in _ENDPOINT_ENVS)


def _disabled_by_env() -> bool:
    return (os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
            or os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none")


def setup(service_name: str) -> bool:
    """Make this process trace, once; returns whether spans can record here.

    Reuses an SDK provider someone installed already (Ray Serve's, in proxies and replicas with
    Serve tracing on); else installs one exporting by OTLP/gRPC when an endpoint is configured;
    else leaves tracing off. `service_name` is used only when OTEL_SERVICE_NAME (or service.name
    in OTEL_RESOURCE_ATTRIBUTES) does not name the service.
    """
    global _configured, _enabled
    with _lock:
        if _configured:
            return _enabled
        _configured = True
        if _sdk_provider_installed():
            _enabled = True
        elif _endpoint_configured() and not _disabled_by_env():
            from opentelemetry.sdk.resources import SERVICE_NAME, Resource
            from opentelemetry.sdk.trace import TracerProvider

            resource = Resource.create({})
            if str(resource.attributes.get(SERVICE_NAME, "unknown_service")).startswith("unknown_service"):
                resource = resource.merge(Resource({SERVICE_NAME: service_name}))
            provider = TracerProvider(resource=resource)  # sampler: OTEL_TRACES_SAMPLER(_ARG)
            for processor in span_processors():
                provider.add_span_processor(processor)
            trace.set_tracer_provider(provider)
            _enabled = True
        logger.info("tracing %s for %s", "on" if _enabled else "off", service_name)
        return _enabled


def span_processors() -> list[Any]:
    """Ray Serve's tracing exporter (`tracing_config.exporter_import_path`) and ours: a batching
    OTLP/gRPC exporter to OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT (default localhost:4317, the node's
    collector). Batching keeps the export off the request path."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    return [BatchSpanProcessor(OTLPSpanExporter())]


def tracer(name: str) -> trace.Tracer:
    """A tracer; a proxy to the no-op tracer while no provider is installed."""
    return trace.get_tracer(name)


def content_enabled() -> bool:
    """Whether an operator allowed user text (transcripts, prompts, replies) in spans."""
    return os.environ.get(CONTENT_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def epoch_ns(monotonic_s: float) -> int:
    """A `time.monotonic()` reading as epoch nanoseconds, for span start and end times.

    The offset is read at each call, so a span built from two readings keeps their exact
    difference (to within a microsecond) and lines up with spans timed live.
    """
    return time.time_ns() - time.monotonic_ns() + round(monotonic_s * 1e9)


def timed(fn: Callable[..., T], *args: Any) -> tuple[T, float, float]:
    """`fn(*args)`, and when it began and ended (monotonic): run this on an engine worker to tell
    the time a job waited for the worker from the time the engine spent on it."""
    began = time.monotonic()
    result = fn(*args)
    return result, began, time.monotonic()


def grpc_metadata_with_context(metadata: Sequence[tuple[str, str]] = (),
                               context: Context | None = None) -> tuple[tuple[str, str], ...]:
    """`metadata` plus the W3C `traceparent` (and `tracestate`) of `context` (default: current).

    Nothing is added for an invalid span context (tracing off), so the metadata stays as it was.
    A sampled-out trace still propagates its decision, so the stages do not sample on their own.
    """
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    if not carrier:
        return tuple(metadata)
    return (*metadata, *carrier.items())


def context_from_grpc(grpc_context: Any) -> Context | None:
    """The parent context for a server span that continues the caller's trace, from a gRPC call's
    metadata (Serve's RayServegRPCContext or a grpc ServicerContext); pass it to `start_span`.

    None means "the current context": when the caller sent no `traceparent`, and when Serve's own
    tracing has already continued the caller's trace in this replica (its proxy and replica spans
    are current), so our span nests under Serve's hops instead of beside them.
    """
    carrier = _metadata_dict(grpc_context)
    if not carrier.get("traceparent"):
        return None
    extracted = propagate.extract(carrier)
    caller = trace.get_current_span(extracted).get_span_context()
    current = trace.get_current_span().get_span_context()
    if not caller.is_valid or (current.is_valid and current.trace_id == caller.trace_id):
        return None
    return extracted


def _metadata_dict(grpc_context: Any) -> dict[str, str]:
    if grpc_context is None:
        return {}
    try:
        pairs: Iterable[tuple[str, Any]] = grpc_context.invocation_metadata() or ()
    except Exception:  # noqa: BLE001 - a context without metadata
        return {}
    found: dict[str, str] = {}
    for key, value in pairs:
        if key in ("traceparent", "tracestate", "baggage"):
            found[key] = value.decode() if isinstance(value, bytes) else str(value)
    return found
