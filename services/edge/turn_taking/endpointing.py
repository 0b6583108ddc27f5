"""The end of the caller's turn, over time: when the detector is asked, with what, the silence
that confirms the turn, and the preemptive reply started before it is confirmed.

With silence endpointing a turn is over after `min_silence_ms` of silence and every final with
words is a turn. With a model (Smart Turn) each final is added to the turn's text and the model
hears the caller's last 8 s up to the pause: finished, the turn is over after `short_silence_ms`;
not finished, the agent waits, and if the caller stays silent until `max_silence_ms` after their
speech ended, the turn ends anyway. If the caller speaks again first, their words join the same
turn.

The ASR's VAD ends an utterance after the shortest of these silences (with preemptive replies on,
`preemptive.silence_ms`), so a final comes early: `on_pause` is told the turn's text at once and
may start a reply, held until `on_turn` confirms it: once the rest of the turn's silence has
passed after the final with no new speech, checked as caller audio arrives and by a timer
(`wake`, which sleeps again while `due_in` is still ahead) for a caller whose audio stops.
Earlier still, the ASR decodes the utterance so far at a shorter pause inside it
(`preemptive.pause_ms`, `paused`): `on_pause` is told then.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import cache

import numpy as np

from services.common.audio import pcm16_to_float, resample
from services.common.recent_audio import RecentAudio
from services.edge.config import TurnTakingConfig
from services.edge.turn_taking.end_of_turn import EndOfTurnDetector, SilenceEndpointing
from services.edge.turn_taking.features import SAMPLE_RATE

_KEEP_S = 10  # caller audio kept for the detector (it reads the last 8 s)
# A detector that has not answered by then is not waited for: the silence decides, as without a
# model (a stuck model run must not leave the caller's turn unconfirmed for the rest of the call).
DETECTOR_TIMEOUT_S = 2.0
logger = logging.getLogger(__name__)


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
                 on_turn: Callable[[str, int], Awaitable[None]],
                 on_pause: Callable[[str, int], Awaitable[None]] | None = None,
                 wake: Callable[[float], None] | None = None):
        self.detector, self._on_turn, self._wake = detector, on_turn, wake
        eot = settings.end_of_turn
        self.uses_audio = bool(getattr(detector, "needs_audio", False))
        # The silence that ends a turn the caller sounds done with (the detector's "finished").
        self._done_s = (eot.short_silence_ms if self.uses_audio else settings.min_silence_ms) / 1000
        self._max_s = eot.max_silence_ms / 1000  # ... and one they do not
        self._on_pause = on_pause if settings.preemptive.enabled else None
        # What the ASR's VAD waits before it ends an utterance (and a preemptive reply may start).
        done_ms = round(self._done_s * 1000)
        self.silence_ms = min(done_ms, settings.preemptive.silence_ms) if self._on_pause else done_ms
        # ... and the pause inside an utterance at which it decodes the words so far (0: never).
        pause_ms = settings.preemptive.pause_ms if self._on_pause else 0
        self.pause_ms = pause_ms if pause_ms < self.silence_ms else 0
        # The caller's recent PCM as it came (int16, input rate): decoded and resampled only when read.
        self._input_rate = input_rate
        self._audio = RecentAudio(_KEEP_S * input_rate, np.int16) if self.uses_audio else None
        self._audio_end_s = 0.0  # stream offset of the last sample kept
        self._stop_offset_s: float | None = None
        self._text: list[str] = []
        self._utterance_id = 0
        self._needed_s = self._done_s  # the silence the held text needs to be a turn
        self._confirm_at: float | None = None  # when (monotonic) the held text becomes the turn
        self._speaking = False  # the caller speaks now (a final may come after their next words began)
        self._latest_utterance = -1  # the caller's latest utterance (an older one's final waits for its final)
        self.waits = 0  # turns the detector held back (the caller sounded unfinished)
        self.detector_timeouts = 0

    def push(self, pcm: bytes, rate: int) -> None:
        """Caller audio as sent to the ASR."""
        self._audio_end_s += len(pcm) / 2 / rate
        if self._audio is not None:
            self._audio.push(np.frombuffer(pcm, "<i2"))

    async def tick(self) -> None:
        """End a held turn whose silence is long enough."""
        if self._confirm_at is not None and time.monotonic() >= self._confirm_at:
            await self._finish()

    def due_in(self) -> float | None:
        """Seconds until the held words become the turn (<= 0: now), or None with nothing held."""
        return None if self._confirm_at is None else self._confirm_at - time.monotonic()

    def speech_started(self, utterance_id: int = -1) -> None:
        self._confirm_at = None  # the caller goes on: the held words wait for the rest
        self._stop_offset_s = None
        self._speaking = True
        self._latest_utterance = max(self._latest_utterance, utterance_id)

    def speech_stopped(self, offset_s: float) -> None:
        self._stop_offset_s = offset_s
        self._speaking = False

    async def paused(self, text: str, utterance_id: int) -> None:
        """The ASR's decode of the caller's utterance so far, at a short pause inside it: a reply
        may start on the turn's words with it (the caller may yet go on: it is only held)."""
        if self._on_pause is None or not text.strip() or utterance_id < self._latest_utterance:
            return
        await self._on_pause(" ".join([*self._text, text.strip()]), utterance_id)

    async def final(self, text: str, utterance_id: int) -> None:
        """A final transcript that is the caller's (not a backchannel); it may have no words (noise
        after words still held: they wait for their silence again)."""
        if text.strip():
            self._text.append(text.strip())
            self._utterance_id = utterance_id
        elif not self._text:
            return
        if self._speaking or utterance_id < self._latest_utterance:
            # The final of an utterance the caller has already gone on from (a lagging ASR may
            # send it after the next one has ended too): its words wait for the next one's final.
            return
        turn_text = " ".join(self._text)
        vad_s = self.silence_ms / 1000
        # A reply starts before the turn is confirmed: before the model is asked, or while the
        # silence that ends the turn is still to come.
        if self._on_pause is not None and (self.uses_audio or self._needed_s > vad_s):
            await self._on_pause(turn_text, self._utterance_id)
        if text.strip():
            self._needed_s = await self._needed_silence(turn_text)
        # The VAD has heard silence_ms of it; the rest is counted from now, not from the caller audio
        # already sent: the ASR may not have heard that yet (a lagging ASR would report the caller
        # going on too late).
        missing_s = self._needed_s - vad_s
        if missing_s <= 0:
            await self._finish()  # the VAD's silence was the turn's: confirmed now
            return
        self._confirm_at = time.monotonic() + missing_s
        if self._wake is not None:
            self._wake(missing_s)

    async def _needed_silence(self, text: str) -> float:
        """The silence after which `text` is the caller's turn: short if they sound done."""
        if not self.uses_audio:
            return self._done_s if self.detector.is_end_of_turn(text) else self._max_s
        try:
            done = await asyncio.wait_for(asyncio.to_thread(self.detector.is_end_of_turn, text, self._pause_audio()),
                                          DETECTOR_TIMEOUT_S)
        except TimeoutError:
            self.detector_timeouts += 1
            logger.warning("the end-of-turn detector took over %.1f s: the silence ends this turn", DETECTOR_TIMEOUT_S)
            done = True
        if not done:
            self.waits += 1
        return self._done_s if done else self._max_s

    def _pause_audio(self) -> np.ndarray:
        """The caller's audio up to the short silence after their speech (not the decode time after it)."""
        drop = 0
        if self._stop_offset_s is not None:
            cut_s = self._stop_offset_s + self.silence_ms / 1000
            drop = int(max(0.0, self._audio_end_s - cut_s) * self._input_rate)
        pcm = self._audio.held(drop_newest=drop)
        return resample(pcm16_to_float(pcm.tobytes()), self._input_rate, SAMPLE_RATE)

    async def _finish(self) -> None:
        text, self._text, self._confirm_at, self._needed_s = " ".join(self._text), [], None, self._done_s
        if text:
            await self._on_turn(text, self._utterance_id)
