"""The end of the caller's turn, over time: when the detector is asked, with what, and the
longest silence after which the turn ends anyway.

With silence endpointing the ASR's VAD waits `min_silence_ms` and every final with words is a
turn. With a model (Smart Turn) the VAD waits only `short_silence_ms`; each final is added to the
turn's text and the model hears the caller's last 8 s up to that pause. Finished: the turn is
answered at once. Not finished: the agent waits; if the caller speaks again their words join the
same turn, and if they stay silent until `max_silence_ms` after their speech ended, the turn ends
anyway. The deadline is checked as caller audio arrives (no task of its own).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from functools import cache

import numpy as np

from services.common.audio import StreamResampler, pcm16_to_float
from services.edge.config import TurnTakingConfig
from services.edge.turn_taking.end_of_turn import EndOfTurnDetector, SilenceEndpointing
from services.edge.turn_taking.features import SAMPLE_RATE

_KEEP_S = 10  # caller audio kept for the detector (it reads the last 8 s)


@cache
def _smart_turn(model: str, threshold: float, threads: int) -> EndOfTurnDetector:
    from services.edge.turn_taking.smart_turn import SmartTurn

    return SmartTurn(model, threshold, threads)  # one session per replica, shared by its calls


def detector_for(settings: TurnTakingConfig) -> EndOfTurnDetector:
    """The configured detector (a model is loaded once per process)."""
    eot = settings.end_of_turn
    if eot.kind == "smart_turn":
        return _smart_turn(eot.model, eot.threshold, eot.threads)
    return SilenceEndpointing()


class Endpointing:
    """One call's end-of-turn state: the turn's text so far, the caller's recent audio, the deadline."""

    def __init__(self, detector: EndOfTurnDetector, settings: TurnTakingConfig, input_rate: int,
                 on_turn: Callable[[str, int], Awaitable[None]]):
        self.detector, self._on_turn = detector, on_turn
        eot = settings.end_of_turn
        self.uses_audio = bool(getattr(detector, "needs_audio", False))
        # What the ASR's VAD waits before it ends an utterance.
        self.silence_ms = eot.short_silence_ms if self.uses_audio else settings.min_silence_ms
        self._wait_s = (eot.max_silence_ms - eot.short_silence_ms) / 1000
        self._resampler = StreamResampler(input_rate, SAMPLE_RATE) if self.uses_audio else None
        self._audio = np.zeros(0, np.float32)
        self._audio_end_s = 0.0  # stream offset of the last sample kept
        self._stop_offset_s: float | None = None
        self._text: list[str] = []
        self._utterance_id = 0
        self._deadline: float | None = None
        self.waits = 0  # turns the detector held back (the caller sounded unfinished)

    def push(self, pcm: bytes, rate: int) -> None:
        """Caller audio as sent to the ASR."""
        self._audio_end_s += len(pcm) / 2 / rate
        if self._resampler is None:
            return
        self._audio = np.concatenate([self._audio, self._resampler.push(pcm16_to_float(pcm))])[-_KEEP_S * SAMPLE_RATE:]

    async def tick(self) -> None:
        """End a held turn whose longest silence has passed."""
        if self._deadline is not None and time.monotonic() >= self._deadline:
            await self._finish()

    def speech_started(self) -> None:
        self._deadline = None  # the caller goes on: the held words wait for the rest

    def speech_stopped(self, offset_s: float) -> None:
        self._stop_offset_s = offset_s

    async def final(self, text: str, utterance_id: int) -> None:
        """A final transcript with words, that is the caller's (not a backchannel)."""
        if not text.strip():
            return
        self._text.append(text.strip())
        self._utterance_id = utterance_id
        if not self.uses_audio:
            if self.detector.is_end_of_turn(text):
                await self._finish()
            return
        done = await asyncio.to_thread(self.detector.is_end_of_turn, " ".join(self._text), self._pause_audio())
        if done:
            await self._finish()
        else:
            self.waits += 1
            self._deadline = time.monotonic() + self._wait_s

    def _pause_audio(self) -> np.ndarray:
        """The caller's audio up to the short silence after their speech (not the decode time after it)."""
        if self._stop_offset_s is None:
            return self._audio
        cut_s = self._stop_offset_s + self.silence_ms / 1000
        drop = int(max(0.0, self._audio_end_s - cut_s) * SAMPLE_RATE)
        return self._audio[:self._audio.size - drop] if drop else self._audio

    async def _finish(self) -> None:
        text, self._text, self._deadline = " ".join(self._text), [], None
        if text:
            await self._on_turn(text, self._utterance_id)
