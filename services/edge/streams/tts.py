"""A turn's TTS stream: sentences in, PCM chunks out, re-opened with the turn's text on failure.

Each sentence or clause is sent with a flush (it is complete: speak it now). On a re-open the
turn's text goes again and, per segment, the audio samples already received are skipped
(synthesis of the same text has the same length).

Deadlines: the first audio is due `response_timeout_s` after the first text; once the text is
complete (`close`), every next chunk is due that long after the one before. While the reply is
still being written the stream may rightly be quiet (it has said everything it was given).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc

from services.common.requests import Synthesize
from services.edge.config import ResilienceConfig
from services.edge.streams.base import BidiCall, Deadline, Metadata, RetryBudget, StageClients, StageTimeout


def open_synthesis(stages: StageClients, voice: str, sample_rate: int, metadata: Metadata = ()) -> BidiCall:
    """A bare Synthesize call with its config sent."""
    return BidiCall(stages.tts.Synthesize, Synthesize.config(voice=voice, sample_rate=sample_rate),
                    stages.config.tts_application, metadata)


class TtsStream:
    """One turn's speech: `send` segments, `close` when the text is complete, iterate `audio()`."""

    def __init__(self, stages: StageClients, voice: str, sample_rate: int, config: ResilienceConfig,
                 metadata: Metadata = ()):
        self._open = lambda: open_synthesis(stages, voice, sample_rate, metadata)
        self._config = config
        self._budget = RetryBudget("tts", config)
        self._call = self._open()
        self._segments: list[str] = []
        self._received: dict[int, int] = {}  # samples received per segment id
        # This attempt's clock: its first text, the end of its text (set once the text is complete),
        # its latest answer.
        self._text_at: float | None = None
        self._closed_at: float | None = None
        self._answered_at: float | None = None
        self._deadline = Deadline(self._due)

    def _say(self, text: str) -> None:
        self._call.send(Synthesize.text(text))
        self._call.send(Synthesize.flush())  # a segment is complete: speak it now

    def send(self, text: str) -> None:
        self._segments.append(text)
        self._say(text)
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
            self._say(text)
        now = time.monotonic()
        if self._closed_at is not None:
            self._call.close()
            self._closed_at = now
        self._text_at = now if self._segments else None
        self._answered_at = None
