"""What every model-stage deployment shares: config validated once, its GPU share enforced,
engine calls on a worker pool, and a live count of the streams it is serving."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from services.common.config import model_dump_public
from services.common.workers import EngineWorker

logger = logging.getLogger("ray.serve")

ConfigT = TypeVar("ConfigT", bound=BaseModel)


def assigned_gpu_fraction() -> float | None:
    """The GPU share Ray gave this replica (`num_gpus`), or None outside Ray or without GPUs."""
    try:
        import ray

        return ray.get_runtime_context().get_assigned_resources().get("GPU") or None
    except Exception:  # not inside a Ray worker
        return None


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


class StageDeployment(Generic[ConfigT]):
    """Base of the asr/llm/tts/moshi deployment classes (plain classes that Serve decorates)."""

    config_type: type[ConfigT]

    def __init__(self, config: ConfigT | dict[str, Any], load_engine: Callable[[Any], Any], worker_threads: int = 1):
        self.config: ConfigT = self.config_type.model_validate(config)
        cap_gpu_memory(assigned_gpu_fraction())
        logger.info("loading %s engine %s", type(self).__name__, model_dump_public(self.config.engine))
        self.engine = load_engine(self.config.engine)
        self.worker = EngineWorker(worker_threads, type(self).__name__)
        self.active_streams = 0
        self.cancelled_streams = 0

    async def track(self, stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """Yield from a session's stream while counting it as active (the autoscaling signal)."""
        self.active_streams += 1
        try:
            async for item in stream:
                yield item
        except (GeneratorExit, asyncio.CancelledError):
            self.cancelled_streams += 1  # the caller hung up or cancelled (e.g. a barge-in)
            raise
        finally:
            self.active_streams -= 1

    async def stats(self) -> dict[str, Any]:
        """Live counters for operators, autoscaling and tests."""
        engine_stats = getattr(self.engine, "stats", None)
        return {"active_streams": self.active_streams, "cancelled_streams": self.cancelled_streams,
                **({"engine": vars(engine_stats).copy()} if engine_stats is not None else {})}

    def __del__(self):
        worker = getattr(self, "worker", None)
        if worker is not None:
            worker.close()
