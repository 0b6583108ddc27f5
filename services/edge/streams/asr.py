"""The call's ASR stream: caller audio in (PCM s16le), VAD events and transcripts out.

It is the one place that counts the caller's audio: the stream offset of every sample sent and
when it reached the edge (`wall_time_at`), which the turn timeline and barge-in read. When the
RPC breaks or stalls it is re-opened with the config and the caller audio since the start of the
unfinished utterance replayed (a bounded buffer), and the new stream's offsets and utterance ids
are shifted so the call sees one continuous stream.

Deadlines: the stream reports its progress through the caller's audio every `PROGRESS_MS`.
Audio left unacknowledged for `stall_timeout_s` by a stream that has been answering means it
stalled; a new stream (which may be waiting for a replica to start) gets `response_timeout_s` to
begin. After the end of speech the final is due within `response_timeout_s`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator

import grpc

from services.common.requests import Recognize
from services.edge.config import ResilienceConfig
from services.edge.streams.base import BidiCall, Deadline, Metadata, RetryBudget, StageClients, StageTimeout

# The ASR stream reports its progress this often (in audio): how the edge tells a quiet caller
# from a stalled stream.
PROGRESS_MS = 500
# Caller audio positions kept to map ASR stream offsets back to wall-clock time.
_AUDIO_CLOCK_ENTRIES = 600


class AsrStream:
    """One call's recognizer stream, continuous across re-opens."""

    def __init__(self, stages: StageClients, sample_rate: int, min_silence_ms: int, config: ResilienceConfig,
                 metadata: Metadata = ()):
        self._stages, self._rate, self._config, self._metadata = stages, sample_rate, config, metadata
        self._min_silence_ms = min_silence_ms
        self._budget = RetryBudget("asr", config)
        self._call = self._open()
        self._sent: deque[tuple[float, bytes]] = deque()  # (stream offset, audio) kept for replay
        self.sent_s = 0.0  # caller audio sent, in seconds (the call's stream offsets)
        self._clock: deque[tuple[float, float]] = deque(maxlen=_AUDIO_CLOCK_ENTRIES)  # (offset, arrival)
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

    def _open(self) -> BidiCall:
        first = Recognize.config(self._rate, min_silence_ms=self._min_silence_ms, progress_interval_ms=PROGRESS_MS)
        return BidiCall(self._stages.asr.Recognize, first, self._stages.config.asr_application, self._metadata)

    @property
    def retries(self) -> int:
        return self._budget.retries

    def send(self, pcm: bytes) -> None:
        """Send caller audio (PCM s16le at the stream's rate) that reached the edge just now."""
        self._call.send(Recognize.audio(pcm))
        self._sent.append((self.sent_s, pcm))
        self.sent_s += len(pcm) / 2 / self._rate
        self._clock.append((self.sent_s, time.monotonic()))
        self._trim()
        if self._owed_since is None and self._owes_progress():
            self._owed_since = time.monotonic()
            self._deadline.moved()

    def wall_time_at(self, offset_s: float) -> float:
        """When the caller's audio at this stream offset reached the edge."""
        for end_s, at in self._clock:
            if end_s >= offset_s:
                return at - (end_s - offset_s)
        return time.monotonic()

    def _owes_progress(self) -> bool:
        # Progress comes every PROGRESS_MS of audio, so the newest two intervals may be unreported.
        return self.sent_s - self._base_s - 2 * PROGRESS_MS / 1000 > self._acked_s

    def _due(self, waiting_since: float) -> float | None:
        deadlines = []
        if self._owed_since is not None:
            config = self._config
            allowed = config.stall_timeout_s if self._answering else config.response_timeout_s
            deadlines.append(self._owed_since + allowed)
        if self._stopped_at is not None:
            deadlines.append(self._stopped_at + self._config.response_timeout_s)
        return min(deadlines, default=None)

    def _trim(self) -> None:
        # Keep the utterance in progress (from its start), else a short pre-roll for the VAD.
        keep_from = self.sent_s - self._config.asr_preroll_s
        if self._speech_from is not None:
            keep_from = min(keep_from, self._speech_from - self._config.asr_preroll_s)
        keep_from = max(keep_from, self.sent_s - self._config.asr_replay_max_s)
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
        self._base_s = self._sent[0][0] if self._sent else self.sent_s
        self._utterance_base = self._next_utterance
        for _, pcm in self._sent:
            self._call.send(Recognize.audio(pcm))
        self._answering, self._acked_s, self._stopped_at = False, 0.0, None
        self._owed_since = time.monotonic() if self._owes_progress() else None

    def cancel(self) -> None:
        self._call.cancel()
