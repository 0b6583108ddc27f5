"""Small asyncio helpers shared by the stages and the edge."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from typing import TypeVar

T = TypeVar("T")


def first_leaf(error: BaseException) -> BaseException:
    """The first real exception inside (possibly nested) exception groups from TaskGroups."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


async def paced(items: Iterable[T], interval_s: float) -> AsyncIterator[T]:
    """`items` one every `interval_s` on a fixed schedule from the first (a real-time audio source:
    a late item does not delay the ones after it)."""
    started = time.perf_counter()
    for index, item in enumerate(items):
        await asyncio.sleep(max(0.0, started + index * interval_s - time.perf_counter()))
        yield item
