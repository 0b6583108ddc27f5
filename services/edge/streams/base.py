"""What every stage stream shares: the bidi call, the retry budget, deadlines and their errors.

A voice call cannot be retried by the caller, so the edge retries for it. When a stage RPC breaks
(the replica died, the proxy lost it, it is full) or misses a deadline for what it owes
(`Deadline`: a slow stage is handled as a dead one), the stream opens the RPC again within a
`RetryBudget` and Serve routes the new one to a live replica. When the budget is spent the stage
is `StageUnavailable` and the call says its fallback line (fallback.py) instead of dead air.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Sequence

import grpc

from services.common.clients import RequestStream, open_channel
from services.common.rpc import is_permanent, stage_metadata
from services.edge.config import ResilienceConfig, StagesConfig
from services.proto import asr_pb2_grpc, llm_pb2_grpc, moshi_pb2_grpc, tts_pb2_grpc

logger = logging.getLogger("ray.serve")

Metadata = Sequence[tuple[str, str]]

# Codes worth another attempt on another replica; a caller mistake (INVALID_ARGUMENT...) is not.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                       grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED,
                       grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED})

# Re-opened stage RPCs per stage in this process (an edge replica): for stats() and tests.
retries_by_stage: Counter[str] = Counter()


class StageUnavailable(Exception):
    """A stage could not be reached within the retry budget."""

    def __init__(self, stage: str, cause: str):
        super().__init__(f"the {stage} stage is unavailable: {cause}")
        self.stage, self.cause = stage, cause


class StageRefused(Exception):
    """A stage answered with a status no retry can cure (a caller mistake, a prompt over the model's
    context): the stage that refused, its status code and a short message."""

    def __init__(self, stage: str, error: grpc.aio.AioRpcError):
        super().__init__(f"the {stage} stage refused the request: {describe(error)}")
        self.stage, self.code = stage, error.code()


class StageTimeout(Exception):
    """A stage stream missed the deadline for what it owes (a slow, not a dead, stage)."""


class BidiCall:
    """A bidi RPC whose requests are pushed one by one; iterate it for the responses."""

    def __init__(self, method, first_request, application: str, metadata: Metadata = ()):
        self.requests = RequestStream(first_request)
        self.call = method(self.requests, metadata=stage_metadata(application, *metadata))

    def __aiter__(self) -> AsyncIterator:
        return self.call.__aiter__()

    def send(self, request) -> None:
        self.requests.put(request)

    def close(self) -> None:
        self.requests.close()

    def cancel(self) -> None:
        self.call.cancel()


class StageClients:
    """The replica's channel to Serve's gRPC proxy and one stub per stage; streams open calls here."""

    def __init__(self, config: StagesConfig, channel: grpc.aio.Channel | None = None):
        self.config = config
        self.channel = channel or open_channel(config.grpc_address)
        self.asr = asr_pb2_grpc.SpeechRecognitionStub(self.channel)
        self.llm = llm_pb2_grpc.LanguageModelStub(self.channel)
        self.tts = tts_pb2_grpc.SpeechSynthesisStub(self.channel)
        self.moshi = moshi_pb2_grpc.DuplexSpeechStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()


class RetryBudget:
    """At most `retry_attempts` re-opens within `retry_window_s`, with exponential backoff between
    them; of those, at most `timeout_retries` after a missed deadline (each one cost the caller a
    whole `response_timeout_s` of silence already)."""

    def __init__(self, stage: str, config: ResilienceConfig):
        self.stage, self.config = stage, config
        self._failures: deque[float] = deque()
        self._timeouts: deque[float] = deque()
        self.retries = 0

    async def spend(self, error: BaseException) -> None:
        """Wait before the next attempt, or raise StageUnavailable when the budget is spent
        (StageRefused at once for an error no retry can cure)."""
        if isinstance(error, grpc.aio.AioRpcError) and not retryable(error):
            raise StageRefused(self.stage, error) from error
        now = time.monotonic()
        for spent in (self._failures, self._timeouts):
            while spent and now - spent[0] > self.config.retry_window_s:
                spent.popleft()
        if len(self._failures) >= self.config.retry_attempts or (
                isinstance(error, StageTimeout) and len(self._timeouts) >= self.config.timeout_retries):
            raise StageUnavailable(self.stage, describe(error)) from error
        self._failures.append(now)
        if isinstance(error, StageTimeout):
            self._timeouts.append(now)
        self.retries += 1
        retries_by_stage[self.stage] += 1
        delay = self.config.retry_backoff_ms / 1000 * 2 ** (len(self._failures) - 1)
        logger.warning("%s stream broke (%s): retry %d in %.2f s", self.stage, describe(error), self.retries, delay)
        await asyncio.sleep(delay)


def retryable(error: grpc.aio.AioRpcError) -> bool:
    """Worth another attempt: a broken or full replica, not a request no replica can serve."""
    return error.code() in RETRYABLE and not is_permanent(error.code(), error.details() or "")


# A stage's details are one short line; a longer one (a traceback from an older or foreign stage)
# is cut, so a client's `error` event never carries it.
MAX_DETAILS_CHARS = 160


def describe(error: BaseException) -> str:
    """A one-line, short account of a stage failure for logs and error events."""
    if isinstance(error, grpc.aio.AioRpcError):
        text = f"{error.code().name}: {error.details() or ''}"
    else:
        text = type(error).__name__ if not str(error) else f"{type(error).__name__}: {error}"
    line = text.strip().splitlines()[0] if text.strip() else text
    return line if len(line) <= MAX_DETAILS_CHARS else line[:MAX_DETAILS_CHARS - 1] + "…"


class Deadline:
    """Reads a stream, failing with StageTimeout when an item is late.

    `due(waiting_since)` is the monotonic time by which the next item must arrive (None: no
    deadline yet). The stream's owner calls `moved()` when what it owes changes (text sent, input
    closed), and the wait in progress takes the new deadline at once. A read is cancelled only
    when its deadline has passed, and then the stream is abandoned anyway.
    """

    def __init__(self, due: Callable[[float], float | None]):
        self._due = due
        self._timeout: asyncio.Timeout | None = None
        self._waiting_since = 0.0

    def moved(self) -> None:
        """What the stream owes changed: the wait in progress takes the new deadline now."""
        if self._timeout is not None and not self._timeout.expired():  # expired: the read is being cancelled
            self._timeout.reschedule(self._loop_time(self._due(self._waiting_since)))

    @staticmethod
    def _loop_time(when: float | None) -> float | None:
        # The event loop keeps its own clock (uvloop's is not time.monotonic()).
        return None if when is None else asyncio.get_running_loop().time() + when - time.monotonic()

    async def read(self, stream: AsyncIterator) -> AsyncIterator:
        """The stream's items, each within its deadline."""
        iterator = stream.__aiter__()
        while True:
            self._waiting_since = time.monotonic()
            try:
                async with asyncio.timeout_at(self._loop_time(self._due(self._waiting_since))) as self._timeout:
                    item = await anext(iterator)
            except StopAsyncIteration:
                return
            except TimeoutError:
                waited = time.monotonic() - self._waiting_since
                raise StageTimeout(f"no answer in time (waited {waited:.1f} s)") from None
            finally:
                self._timeout = None
            yield item


def within(timeout_s: float) -> Deadline:
    """Each next item of the stream is due `timeout_s` after it is asked for."""
    return Deadline(lambda waiting_since: waiting_since + timeout_s)
