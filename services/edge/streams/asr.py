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

Caller silence goes through the speech gate (services/edge/streams/speech_gate.py), so the RPC
hears only the audio around speech: its offsets skip the held silence. The stream maps them back
to call offsets (`_OffsetMap`) before anyone sees an event; the call counts in call offsets only.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator

import grpc

from services.common.requests import Recognize
from services.edge.config import ResilienceConfig, SpeechGateConfig
from services.edge.streams.base import BidiCall, Deadline, Metadata, RetryBudget, StageClients, StageTimeout
from services.edge.streams.speech_gate import SpeechGate

# The ASR stream reports its progress this often (in audio): how the edge tells a quiet caller
# from a stalled stream.
PROGRESS_MS = 500
# Caller audio positions kept to map ASR stream offsets back to wall-clock time.
_AUDIO_CLOCK_ENTRIES = 600
# How long after an onset an ASR's VAD may still be deciding it is speech (min speech + a window).
_ONSET_LAG_S = 0.5
# Gaps the gate left in one RPC's audio that are kept to map its offsets (older ones are long answered).
_OFFSET_ANCHORS = 256


class _OffsetMap:
    """One RPC's audio offsets -> the call's offsets, across the gaps the speech gate left."""

    def __init__(self):
        self.sent_s = 0.0  # audio sent on this RPC
        self._call_end: float | None = None  # call offset just after the last audio sent
        self._anchors: deque[tuple[float, float]] = deque(maxlen=_OFFSET_ANCHORS)  # (RPC offset, call offset)

    def sent(self, call_offset_s: float, duration_s: float) -> None:
        if self._call_end is None or abs(call_offset_s - self._call_end) > 1e-6:
            self._anchors.append((self.sent_s, call_offset_s))
        self.sent_s += duration_s
        self._call_end = call_offset_s + duration_s

    def to_call(self, rpc_offset_s: float) -> float:
        for rpc_s, call_s in reversed(self._anchors):
            if rpc_s <= rpc_offset_s + 1e-9:
                return call_s + rpc_offset_s - rpc_s
        return self._anchors[0][1] + rpc_offset_s - self._anchors[0][0] if self._anchors else rpc_offset_s


class AsrStream:
    """One call's recognizer stream, continuous across re-opens."""

    def __init__(self, stages: StageClients, sample_rate: int, min_silence_ms: int, config: ResilienceConfig,
                 metadata: Metadata = (), gate: SpeechGateConfig | None = None, pause_ms: int = 0):
        self._stages, self._rate, self._config, self._metadata = stages, sample_rate, config, metadata
        self.gate = SpeechGate(gate, sample_rate) if gate is not None and gate.enabled else None
        self._min_silence_ms, self._pause_ms = min_silence_ms, pause_ms
        self._budget = RetryBudget("asr", config)
        self._call = self._open()
        self._sent: deque[tuple[float, bytes]] = deque()  # (stream offset, audio) kept for replay
        self.sent_s = 0.0  # caller audio sent, in seconds (the call's stream offsets)
        self._clock: deque[tuple[float, float]] = deque(maxlen=_AUDIO_CLOCK_ENTRIES)  # (offset, arrival)
        self._offsets = _OffsetMap()  # the current RPC's offsets in the call's
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
        first = Recognize.config(self._rate, min_silence_ms=self._min_silence_ms, progress_interval_ms=PROGRESS_MS,
                                 pause_ms=self._pause_ms)
        return BidiCall(self._stages.asr.Recognize, first, self._stages.config.asr_application, self._metadata)

    @property
    def retries(self) -> int:
        return self._budget.retries

    def send(self, pcm: bytes) -> None:
        """Caller audio (PCM s16le at the stream's rate) that reached the edge just now: counted,
        and sent to the ASR unless the speech gate holds it back as silence."""
        offset_s = self.sent_s
        self.sent_s += len(pcm) / 2 / self._rate
        self._clock.append((self.sent_s, time.monotonic()))
        chunks = [(offset_s, pcm)] if self.gate is None else self.gate.push(offset_s, pcm, self._speech_from is not None)
        for chunk_offset_s, chunk in chunks:
            self._call.send(Recognize.audio(chunk))
            self._sent.append((chunk_offset_s, chunk))
            self._offsets.sent(chunk_offset_s, len(chunk) / 2 / self._rate)
        self._trim()
        if chunks and self._owed_since is None and self._owes_progress():
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
        return self._offsets.sent_s - 2 * PROGRESS_MS / 1000 > self._acked_s

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
        # Keep the utterance in progress (from its start), else a short pre-roll for the VAD. An ASR
        # running behind may not have said yet that speech started: audio it has not acknowledged
        # (less the time its VAD takes to call an onset) may hold one, so it is kept too.
        preroll = self._config.asr_preroll_s
        keep_from = self.sent_s - preroll
        if self._speech_from is not None:
            keep_from = min(keep_from, self._speech_from - preroll)
        elif self._offsets.sent_s > 0:
            keep_from = min(keep_from, self._offsets.to_call(self._acked_s) - _ONSET_LAG_S - preroll)
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
        if kind in ("speech_started", "speech_stopped", "speech_resumed"):
            body.audio_offset_s = self._offsets.to_call(body.audio_offset_s)
        elif kind == "pause":
            body.speech_end_s = self._offsets.to_call(body.speech_end_s)
            body = body.transcript
        if kind in ("speech_started", "speech_stopped", "speech_resumed", "pause", "partial", "final"):
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
        self._offsets = _OffsetMap()
        self._utterance_base = self._next_utterance
        for offset_s, pcm in self._sent:
            self._call.send(Recognize.audio(pcm))
            self._offsets.sent(offset_s, len(pcm) / 2 / self._rate)
        self._answering, self._acked_s, self._stopped_at = False, 0.0, None
        self._owed_since = time.monotonic() if self._owes_progress() else None

    def cancel(self) -> None:
        self._call.cancel()
