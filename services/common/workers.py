"""Run blocking engine calls off the event loop without oversubscribing the replica's CPUs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class EngineWorker:
    """A small thread pool owned by one replica: engine calls queue here, not on the loop."""

    def __init__(self, threads: int = 1, name: str = "engine"):
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)

    async def run(self, fn: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
