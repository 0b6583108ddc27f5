"""A duplex call's Moshi stream: 80 ms caller frames in, 80 ms agent frames and text out.

Opening waits for a slot (SessionStarted); a full stage is asked again until the queue timeout
(`DuplexFull` after it). Caller frames never run more than `AHEAD_FRAMES` ahead of real time: a
backlog (audio that queued up while the call waited for a slot, or a client's burst) is dropped
instead of delaying the whole call. The stage answers every 80 ms: a stream that breaks or falls
silent for `stall_timeout_s` is re-opened within the retry budget as a new session (the model's
context of the call so far is lost; the call goes on).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc

from services.common.requests import MOSHI_FRAME, MOSHI_RATE, Converse
from services.edge.config import ResilienceConfig
from services.edge.streams.base import BidiCall, Metadata, RetryBudget, StageClients, StageTimeout, within

MOSHI_FRAME_S = MOSHI_FRAME / MOSHI_RATE
AHEAD_FRAMES = 3  # caller frames may run this far ahead of real time (network jitter)
QUEUE_RETRY_S = 0.5  # how often a queued call asks the duplex stage for a slot again


class DuplexFull(Exception):
    """Every duplex slot is taken (the stage answered RESOURCE_EXHAUSTED before the call started)."""


class MoshiStream:
    """One duplex call's stream to the `moshi` stage, continuous across re-opens."""

    def __init__(self, stages: StageClients, config: ResilienceConfig, metadata: Metadata = ()):
        self._stages, self._config, self._metadata = stages, config, metadata
        self._budget = RetryBudget("moshi", config)
        self._call: BidiCall | None = None
        self._responses: AsyncIterator | None = None
        # Where this stream's frames are counted from (reset when it is re-opened).
        self._frames_sent, self._stream_started = 0, 0.0

    async def open(self, queue_timeout_s: float = 0.0) -> None:
        """Start a stream and wait until it holds a slot. Raises DuplexFull, StageTimeout, or the RPC's error."""
        deadline = time.monotonic() + queue_timeout_s
        while True:
            call = BidiCall(self._stages.moshi.Converse, Converse.config(), self._stages.config.moshi_application,
                            self._metadata)
            responses = aiter(call)
            try:
                await asyncio.wait_for(anext(responses), self._config.response_timeout_s)
                self._call, self._responses = call, responses
                self._frames_sent, self._stream_started = 0, time.monotonic()
                return
            except TimeoutError:
                call.cancel()
                raise StageTimeout("no duplex session started in time") from None
            except grpc.aio.AioRpcError as error:
                call.cancel()
                if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                if time.monotonic() >= deadline:
                    raise DuplexFull(error.details()) from None
            await asyncio.sleep(QUEUE_RETRY_S)

    def send(self, frame: bytes) -> bool:
        """Send one 80 ms caller frame (PCM s16le, 24 kHz); False when it was dropped as too far ahead."""
        if self._frames_sent >= (time.monotonic() - self._stream_started) / MOSHI_FRAME_S + AHEAD_FRAMES:
            return False
        self._call.send(Converse.frame(frame, self._frames_sent))
        self._frames_sent += 1
        return True

    async def events(self) -> AsyncIterator:
        """The agent's `audio` and `text` responses, across re-opened sessions."""
        stall = within(self._config.stall_timeout_s)
        while True:
            try:
                async for response in stall.read(self._responses):
                    yield response
                return
            except (grpc.aio.AioRpcError, StageTimeout) as error:
                await self._reopen(error)

    async def _reopen(self, error: BaseException) -> None:
        """A new stream for the call, within the retry budget (full or failing stages spend it)."""
        self._call.cancel()
        while True:
            await self._budget.spend(error)
            try:
                return await self.open()
            except (grpc.aio.AioRpcError, DuplexFull, StageTimeout) as failed:
                error = failed

    def cancel(self) -> None:
        if self._call is not None:
            self._call.cancel()
