"""Stage streams that survive a replica dying under them.

A voice call cannot be retried by the caller, so the edge retries for it. When a stage RPC
breaks (the replica died, the proxy lost it, it is full) or misses a deadline for what it owes
(`Deadline`: a slow stage is handled as a dead one), the conversation opens the RPC again, within
a retry budget, and Serve routes the new one to a live replica:

- ASR (`ResilientRecognizer`): re-sends the config and the caller audio since the start of the
  unfinished utterance (a bounded buffer), and shifts the new stream's audio offsets and
  utterance ids so the conversation sees one continuous stream.
- LLM (`resilient_deltas`): re-sends the turn's request and skips the text already received.
- TTS (`ResilientSpeech`): re-sends the turn's text and skips, per segment, the audio samples
  already received (synthesis of the same text has the same length).

When the budget is spent the stage is `StageUnavailable`: the conversation plays a cached
fallback line (`FallbackLine`) instead of dead air. (Duplex calls re-open their Moshi stream the
same way: services/edge/duplex.py.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import numpy as np

from services.common import metrics
from services.common.audio import pcm16_to_float
from services.edge.config import ResilienceConfig
from services.edge.stages import ASR_PROGRESS_MS, BidiCall, StageClients

logger = logging.getLogger("ray.serve")

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


class StageTimeout(Exception):
    """A stage stream missed the deadline for what it owes (a slow, not a dead, stage)."""


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
        """Wait before the next attempt, or raise StageUnavailable when the budget is spent."""
        if isinstance(error, grpc.aio.AioRpcError) and error.code() not in RETRYABLE:
            raise error
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


def describe(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return type(error).__name__ if not str(error) else f"{type(error).__name__}: {error}"


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
        if self._timeout is not None and not self._timeout.expired():  # expired: the read is being cancelled
            self._timeout.reschedule(self._loop_time(self._due(self._waiting_since)))

    @staticmethod
    def _loop_time(when: float | None) -> float | None:
        # The event loop keeps its own clock (uvloop's is not time.monotonic()).
        return None if when is None else asyncio.get_running_loop().time() + when - time.monotonic()

    async def read(self, stream: AsyncIterator) -> AsyncIterator:
        iterator = stream.__aiter__()
        while True:
            self._waiting_since = time.monotonic()
            try:
                async with asyncio.timeout_at(self._loop_time(self._due(self._waiting_since))) as self._timeout:
                    item = await anext(iterator)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise StageTimeout(f"no answer in time (waited {time.monotonic() - self._waiting_since:.1f} s)") from None
            finally:
                self._timeout = None
            yield item


def within(timeout_s: float) -> Deadline:
    """Each next item of the stream is due `timeout_s` after it is asked for."""
    return Deadline(lambda waiting_since: waiting_since + timeout_s)


# -- ASR ---------------------------------------------------------------------------------------------

class ResilientRecognizer:
    """The call's ASR stream, re-opened on failure with the unfinished utterance replayed.

    Deadlines: the stream reports its progress through the caller's audio every
    `ASR_PROGRESS_MS` (stages.py). Audio left unacknowledged for `stall_timeout_s` by a stream
    that has been answering means it stalled; a new stream (which may be waiting for a replica to
    start) gets `response_timeout_s` to begin. After the end of speech the final is due within
    `response_timeout_s`.
    """

    def __init__(self, open_call: Callable[[], BidiCall], sample_rate: int, config: ResilienceConfig):
        self._open, self._rate, self._config = open_call, sample_rate, config
        self._budget = RetryBudget("asr", config)
        self._call = open_call()
        self._sent: deque[tuple[float, np.ndarray]] = deque()  # (stream offset, audio) kept for replay
        self._sent_s = 0.0  # caller audio sent, in seconds (the conversation's stream offsets)
        self._base_s = 0.0  # offset of the current RPC's first sample
        self._utterance_base = 0  # utterance ids of the current RPC start after this one
        self._next_utterance = 0  # the first not yet finished: a replay starts its ids here
        self._speech_from: float | None = None  # start of the utterance in progress
        # This attempt's clock: whether it has answered, audio it has acknowledged, since when it
        # owes more, when speech ended.
        self._answering = False
        self._acked_s = 0.0
        self._owed_since: float | None = None
        self._stopped_at: float | None = None
        self._deadline = Deadline(self._due)

    @property
    def retries(self) -> int:
        return self._budget.retries

    def send(self, audio: np.ndarray) -> None:
        StageClients.audio(self._call, audio)
        self._sent.append((self._sent_s, audio))
        self._sent_s += audio.size / self._rate
        self._trim()
        if self._owed_since is None and self._owes_progress():
            self._owed_since = time.monotonic()
            self._deadline.moved()

    def _owes_progress(self) -> bool:
        # Progress comes every ASR_PROGRESS_MS of audio, so the newest two intervals may be unreported.
        return self._sent_s - self._base_s - 2 * ASR_PROGRESS_MS / 1000 > self._acked_s

    def _due(self, waiting_since: float) -> float | None:
        deadlines = []
        if self._owed_since is not None:
            config = self._config
            deadlines.append(self._owed_since + (config.stall_timeout_s if self._answering else config.response_timeout_s))
        if self._stopped_at is not None:
            deadlines.append(self._stopped_at + self._config.response_timeout_s)
        return min(deadlines, default=None)

    def _trim(self) -> None:
        # Keep the utterance in progress (from its start), else a short pre-roll for the VAD.
        keep_from = self._sent_s - self._config.asr_preroll_s
        if self._speech_from is not None:
            keep_from = min(keep_from, self._speech_from - self._config.asr_preroll_s)
        keep_from = max(keep_from, self._sent_s - self._config.asr_replay_max_s)
        while len(self._sent) > 1 and self._sent[1][0] <= keep_from:
            self._sent.popleft()

    async def events(self) -> AsyncIterator:
        """The stream's events, offsets and utterance ids continuous across re-opens."""
        while True:
            try:
                async for event in self._deadline.read(self._call):
                    self._answering = True
                    if event.WhichOneof("event") == "progress":
                        self._acked_s = event.progress.audio_s
                        self._owed_since = time.monotonic() if self._owes_progress() else None
                    else:
                        yield self._shift(event)
                return
            except (grpc.aio.AioRpcError, StageTimeout) as error:
                await self._budget.spend(error)
                self._reopen()

    def _shift(self, event):
        kind = event.WhichOneof("event")
        body = getattr(event, kind) if kind else None
        if kind in ("speech_started", "speech_stopped"):
            body.audio_offset_s += self._base_s
        if kind in ("speech_started", "speech_stopped", "partial", "final"):
            body.utterance_id += self._utterance_base
        if kind == "speech_started":
            self._speech_from = body.audio_offset_s
        elif kind == "speech_stopped":
            self._stopped_at = time.monotonic()
        elif kind == "final":
            self._speech_from = self._stopped_at = None
            self._next_utterance = max(self._next_utterance, body.utterance_id + 1)
        return event

    def _reopen(self) -> None:
        self._call.cancel()
        self._call = self._open()
        self._base_s = self._sent[0][0] if self._sent else self._sent_s
        self._utterance_base = self._next_utterance
        for _, audio in self._sent:
            StageClients.audio(self._call, audio)
        self._answering, self._acked_s, self._stopped_at = False, 0.0, None
        self._owed_since = time.monotonic() if self._owes_progress() else None

    def cancel(self) -> None:
        self._call.cancel()


# -- LLM ---------------------------------------------------------------------------------------------

async def resilient_deltas(open_call: Callable[[], AsyncIterator], config: ResilienceConfig) -> AsyncIterator[str]:
    """The reply's text deltas; on failure the request goes again and the text already yielded is skipped."""
    budget, received = RetryBudget("llm", config), 0
    while True:
        call = open_call()
        skip = received
        try:
            async for response in within(config.response_timeout_s).read(call):
                if response.WhichOneof("event") != "delta":
                    continue
                text = response.delta.text
                if skip:
                    text, skip = text[skip:], max(0, skip - len(text))
                if text:
                    received += len(text)
                    yield text
            return
        except (grpc.aio.AioRpcError, StageTimeout) as error:
            await budget.spend(error)
        finally:
            call.cancel()  # a barge-in lands here too: the LLM stage aborts the generation


# -- TTS ---------------------------------------------------------------------------------------------

class ResilientSpeech:
    """A turn's TTS stream: segments in, audio chunks out, re-opened with the turn's text on failure.

    Deadlines: the first audio is due `response_timeout_s` after the first text; once the text is
    complete (`close`), every next chunk is due that long after the one before. While the reply
    is still being written the stream may rightly be quiet (it has said everything it was given).
    """

    def __init__(self, open_call: Callable[[], BidiCall], config: ResilienceConfig):
        self._open, self._config = open_call, config
        self._budget = RetryBudget("tts", config)
        self._call = open_call()
        self._segments: list[str] = []
        self._received: dict[int, int] = {}  # samples received per segment id
        # This attempt's clock: its first text, the end of its text (set once the text is complete),
        # its latest answer.
        self._text_at: float | None = None
        self._closed_at: float | None = None
        self._answered_at: float | None = None
        self._deadline = Deadline(self._due)

    def send(self, text: str) -> None:
        self._segments.append(text)
        StageClients.text(self._call, text)
        StageClients.flush(self._call)  # a segment is complete: speak it now
        if self._text_at is None:
            self._text_at = time.monotonic()
            self._deadline.moved()

    def close(self) -> None:
        self._closed_at = time.monotonic()
        self._call.close()
        self._deadline.moved()

    def cancel(self) -> None:
        self._call.cancel()

    def _due(self, waiting_since: float) -> float | None:
        timeout = self._config.response_timeout_s
        if self._answered_at is None:
            asked_at = self._text_at or self._closed_at
            return None if asked_at is None else asked_at + timeout
        if self._closed_at is not None:
            return max(self._answered_at, self._closed_at, waiting_since) + timeout
        return None

    async def audio(self) -> AsyncIterator:
        """Audio chunks (SpeechAudio, pcm trimmed of what an earlier attempt already delivered)."""
        while True:
            skip = dict(self._received)
            try:
                async for response in self._deadline.read(self._call):
                    self._answered_at = time.monotonic()
                    if response.WhichOneof("event") != "audio":
                        continue
                    chunk = response.audio
                    samples = len(chunk.pcm) // 2
                    already = skip.get(chunk.segment_id, 0)
                    if already >= samples:
                        skip[chunk.segment_id] = already - samples
                        continue
                    if already:
                        skip[chunk.segment_id] = 0
                        chunk.pcm = chunk.pcm[already * 2:]
                        del chunk.words[:]  # timings of a cut chunk no longer line up
                    self._received[chunk.segment_id] = self._received.get(chunk.segment_id, 0) + len(chunk.pcm) // 2
                    yield chunk
                return
            except (grpc.aio.AioRpcError, StageTimeout) as error:
                await self._budget.spend(error)
                self._reopen()

    def _reopen(self) -> None:
        self._call.cancel()
        self._call = self._open()
        for text in self._segments:
            StageClients.text(self._call, text)
            StageClients.flush(self._call)
        now = time.monotonic()
        if self._closed_at is not None:
            self._call.close()
            self._closed_at = now
        self._text_at = now if self._segments else None
        self._answered_at = None


# -- the fallback line -------------------------------------------------------------------------------

class FallbackLine:
    """What the agent says when a stage is gone: synthesized once per voice and rate while TTS is
    up, kept in memory, played from there when it is not."""

    def __init__(self, text: str):
        self.text = text
        self._clips: dict[tuple[str, int], np.ndarray] = {}
        self._warming: dict[tuple[str, int], asyncio.Task] = {}

    def clip(self, voice: str, rate: int) -> np.ndarray | None:
        return self._clips.get((voice, rate))

    @property
    def clips(self) -> int:
        """How many voice and rate pairs the line is ready in (an edge replica's stats)."""
        return len(self._clips)

    async def announce(self, error: StageUnavailable, emit: Callable[..., Awaitable[None]], voice: str, rate: int,
                       turn_id: int) -> np.ndarray | None:
        """Tell the client a stage stayed unavailable (an `error` event, then the line's `agent_text`
        when there is a clip to say it with). Returns the clip for the caller to play, or None."""
        metrics.record_stage_error(error.stage, "UNAVAILABLE")
        await emit("error", code="stage_unavailable", stage=error.stage, message=str(error))
        clip = self.clip(voice, rate)
        if clip is not None:
            await emit("agent_text", turn_id=turn_id, text=self.text, fallback=True)
        return clip

    def warm(self, stages: StageClients, voice: str, rate: int) -> None:
        """Start synthesizing the line in the background, if not done or under way."""
        key = (voice, rate)
        if not self.text or key in self._clips or key in self._warming:
            return
        task = asyncio.get_running_loop().create_task(self._synthesize(stages, voice, rate))
        self._warming[key] = task
        task.add_done_callback(lambda _: self._warming.pop(key, None))

    async def _synthesize(self, stages: StageClients, voice: str, rate: int) -> None:
        for attempt in range(10):
            call = stages.synthesize(voice, rate)
            try:
                StageClients.text(call, self.text)
                call.close()
                chunks = [r.audio.pcm async for r in call if r.WhichOneof("event") == "audio"]
                if chunks:
                    self._clips[(voice, rate)] = pcm16_to_float(b"".join(chunks))
                    return
            except grpc.aio.AioRpcError as error:
                if error.code() not in RETRYABLE:  # e.g. an unknown voice: asking again will not help
                    logger.warning("fallback line not synthesized: %s", describe(error))
                    return
                logger.info("fallback line not synthesized yet (%s); retrying", describe(error))
            finally:
                call.cancel()
            await asyncio.sleep(min(30.0, 2.0 ** attempt))
