"""What every model-stage deployment shares: config validated once, its GPU share enforced,
engine calls on a worker pool, a live count of the streams it is serving, and a server span per
stream that continues the caller's trace."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic import BaseModel

from services.common import attributes as attr
from services.common import autoscaling, telemetry
from services.common.aio import first_leaf
from services.common.audio import AudioFormatError
from services.common.config import model_dump_public
from services.common.unserved import RefusesUnservedMethods
from services.common.workers import EngineWorker

logger = logging.getLogger("ray.serve")

ConfigT = TypeVar("ConfigT", bound=BaseModel)

# gRPC codes that mark a server span as failed (OpenTelemetry RPC conventions): UNKNOWN,
# DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
_SERVER_FAULTS = frozenset({2, 4, 12, 13, 14, 15})


def assigned_gpu_fraction() -> float | None:
    """The GPU share Ray gave this replica (`num_gpus`), or None outside Ray or without GPUs."""
    try:
        import ray

        if not ray.is_initialized():  # else get_runtime_context() would start or join a cluster
            return None
        return ray.get_runtime_context().get_assigned_resources().get("GPU") or None
    except Exception:  # not inside a Ray worker
        return None


def replica_id() -> str:
    """This Serve replica's id (the one Serve's own spans and logs use), or the process id outside Serve."""
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # not inside a replica
        return f"pid-{os.getpid()}"


def cap_gpu_memory(fraction: float | None) -> None:
    """Hold torch's allocator to this replica's share: Ray's GPU fractions are bookkeeping only.

    Engines with their own allocator take the share from config instead (vLLM's
    gpu_memory_utilization); CTranslate2 has no cap, so give it a share with headroom.
    """
    if not fraction or fraction >= 1:
        return
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(fraction)
        logger.info("capped torch CUDA memory to %.0f%% of the GPU", fraction * 100)


class StageDeployment(RefusesUnservedMethods, Generic[ConfigT]):
    """Base of the asr/llm/tts/moshi deployment classes (plain classes that Serve decorates); another
    stage's gRPC method is refused UNIMPLEMENTED (services/common/unserved.py)."""

    config_type: type[ConfigT]
    stage: str = "stage"  # asr | llm | tts | moshi: names the tracer, the service and the spans' parley.stage

    def __init__(self, config: ConfigT | dict[str, Any], load_engine: Callable[[Any], Any], worker_threads: int = 1):
        self.config: ConfigT = self.config_type.model_validate(config)
        telemetry.setup(f"parley-{self.stage}")  # OTEL_SERVICE_NAME, when set, names it instead
        self.tracer = telemetry.tracer(f"parley.{self.stage}")
        self.replica_id = replica_id()
        cap_gpu_memory(assigned_gpu_fraction())
        logger.info("loading %s engine %s", type(self).__name__, model_dump_public(self.config.engine))
        self.engine = load_engine(self.config.engine)
        self.worker = EngineWorker(worker_threads, type(self).__name__)
        self.active_streams = 0
        self.cancelled_streams = 0

    @contextmanager
    def track(self, span_name: str, grpc_context: Any = None, **attributes: Any) -> Iterator[trace.Span]:
        """Hold one stream or RPC for its whole life: count it as active (the autoscaling signal)
        and trace it with a server span that continues the caller's trace (`traceparent` in the
        gRPC metadata). Yields the span, the parent of the session's own spans.

            with self.track(attr.SPAN_GENERATE, grpc_context) as span:
                async for response in ...: yield response
        """
        span = self.tracer.start_span(span_name, context=telemetry.context_from_grpc(grpc_context),
                                      kind=SpanKind.SERVER)
        if span.is_recording():
            span.set_attributes({**attr.rpc(span_name), attr.STAGE: self.stage, attr.REPLICA_ID: self.replica_id,
                                 **attributes})
        self.active_streams += 1
        code = 0  # grpc.StatusCode.OK
        try:
            yield span
        except (GeneratorExit, asyncio.CancelledError):
            self.cancelled_streams += 1  # the caller hung up or cancelled (e.g. a barge-in)
            code = 1  # CANCELLED: the caller's choice, not an error of this stage
            span.set_attribute(attr.RPC_CANCELLED, True)
            raise
        except BaseException as raised:
            error = first_leaf(raised) if isinstance(raised, BaseExceptionGroup) else raised
            status = getattr(error, "code", None)  # a StageError (or AioRpcError) carries its status code
            if isinstance(status, grpc.StatusCode):
                code = status.value[0]
            elif isinstance(error, AudioFormatError):
                code = grpc.StatusCode.INVALID_ARGUMENT.value[0]  # what grpc_stream answers
            else:
                code = grpc.StatusCode.UNKNOWN.value[0]
                span.record_exception(error)
            if code in _SERVER_FAULTS:  # a caller's mistake (INVALID_ARGUMENT...) is not this stage's error
                span.set_status(Status(StatusCode.ERROR, getattr(error, "message", None) or type(error).__name__))
            raise
        finally:
            self.active_streams -= 1
            span.set_attribute(attr.RPC_GRPC_STATUS_CODE, code)
            span.end()

    def record_autoscaling_stats(self) -> dict[str, float]:
        """What Serve's autoscaler reads for this replica (SessionAutoscalingPolicy)."""
        return {autoscaling.SESSIONS: float(self.active_streams),
                autoscaling.QUEUE_WAIT: autoscaling.recent_waits.p95()}

    async def stats(self) -> dict[str, Any]:
        """Live counters for operators, autoscaling and tests."""
        engine_stats = getattr(self.engine, "stats", None)
        return {"active_streams": self.active_streams, "cancelled_streams": self.cancelled_streams,
                **({"engine": vars(engine_stats).copy()} if engine_stats is not None else {})}

    def __del__(self):
        worker = getattr(self, "worker", None)
        if worker is not None:
            worker.close()
