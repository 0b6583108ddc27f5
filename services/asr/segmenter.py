"""Utterance segmentation of a 16 kHz stream on top of StreamingVAD.

The segmenter cuts the stream into the VAD's 32 ms windows itself, so its events depend only on
the samples pushed, never on how they were chunked. Per window it decides voiced/unvoiced with
hysteresis (voiced from p >= threshold, unvoiced again below threshold - 0.15), then:

- silence: only the last pre_roll_ms of audio is kept;
- a voiced run opens a candidate; once it has lasted min_speech_ms, SpeechStarted fires with the
  offset of the run's first window (an unvoiced window before that drops the candidate: clicks);
- in speech, min_silence_ms of unvoiced windows end the utterance: SpeechStopped (offset of the
  end of the last voiced window) then UtteranceEnded with the audio from pre_roll_ms before the
  start to pre_roll_ms after the end (less where the stream has less);
- with pause_ms set, pause_ms of unvoiced windows inside an utterance are a pause: SpeechPaused
  with the utterance's audio so far, and SpeechResumed if a voiced window follows before the
  utterance ends (a pause is a hint; the utterance goes on);
- an utterance whose audio reaches max_utterance_s is cut there (SpeechStopped at the cut, then
  UtteranceEnded); speech that goes on opens a new utterance starting at the cut.

Offsets are stream time: seconds of audio pushed since the segmenter was made.
UtteranceEnded.start_s/end_s bound exactly the samples in UtteranceEnded.audio.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from services.asr.vad import SAMPLE_RATE, WINDOW_SAMPLES, StreamingVAD

HYSTERESIS = 0.15


@dataclass(frozen=True)
class SpeechStarted:
    offset_s: float
    utterance_id: int


@dataclass(frozen=True)
class SpeechStopped:
    offset_s: float  # where speech ended, before the trailing silence
    utterance_id: int


@dataclass(frozen=True)
class UtteranceEnded:
    utterance_id: int
    audio: np.ndarray = field(compare=False, repr=False)
    start_s: float = 0.0  # stream time of audio[0]
    end_s: float = 0.0  # stream time just after audio[-1]


@dataclass(frozen=True)
class SpeechPaused:
    speech_end_s: float  # where the speech before the pause ended
    utterance_id: int
    audio: np.ndarray = field(compare=False, repr=False)  # the utterance so far, pre-roll included
    start_s: float = 0.0  # stream time of audio[0]
    end_s: float = 0.0  # stream time just after audio[-1]


@dataclass(frozen=True)
class SpeechResumed:
    offset_s: float
    utterance_id: int


SegmenterEvent = SpeechStarted | SpeechStopped | UtteranceEnded | SpeechPaused | SpeechResumed

_SILENCE, _CANDIDATE, _SPEECH = "silence", "candidate", "speech"


def check_pause_ms(pause_ms: int, min_silence_ms: int) -> None:
    """A pause is 0 (off) or a silence shorter than the one that ends an utterance."""
    if pause_ms < 0 or (pause_ms and pause_ms >= min_silence_ms):
        raise ValueError(f"pause_ms must be 0 (off) or below min_silence_ms ({min_silence_ms}), got {pause_ms}")


def _ms_to_samples(ms: float) -> int:
    return int(round(ms * SAMPLE_RATE / 1000))


class UtteranceSegmenter:
    def __init__(
        self,
        vad: StreamingVAD | None = None,
        threshold: float = 0.5,
        min_speech_ms: int = 90,
        min_silence_ms: int = 300,
        pre_roll_ms: int = 200,
        max_utterance_s: float = 30.0,
        pause_ms: int = 0,
    ):
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        if min_speech_ms < 0 or min_silence_ms <= 0 or pre_roll_ms < 0:
            raise ValueError("min_speech_ms and pre_roll_ms must be >= 0, min_silence_ms > 0")
        if max_utterance_s * SAMPLE_RATE < 2 * WINDOW_SAMPLES:
            raise ValueError(f"max_utterance_s is too short: {max_utterance_s}")
        check_pause_ms(pause_ms, min_silence_ms)
        self.vad = vad if vad is not None else StreamingVAD()
        self.threshold = threshold
        self.neg_threshold = max(threshold - HYSTERESIS, 0.01)
        self.min_speech_samples = _ms_to_samples(min_speech_ms)
        self.min_silence_samples = _ms_to_samples(min_silence_ms)
        self.pre_roll_samples = _ms_to_samples(pre_roll_ms)
        self.max_utterance_samples = int(max_utterance_s * SAMPLE_RATE)
        self.pause_samples = _ms_to_samples(pause_ms)

        self._pending = np.zeros(0, dtype=np.float32)  # samples short of a whole window
        self._samples_in = 0  # samples pushed
        self._window_index = 0  # windows classified
        self._voiced = False
        self._state = _SILENCE
        self._next_id = 0
        # The last pre_roll_samples heard outside an utterance, ending where the next window starts.
        self._pre_roll = np.zeros(0, dtype=np.float32)
        # Candidate / utterance in progress.
        self._chunks: list[np.ndarray] = []
        self._chunk_samples = 0
        self._audio_start = 0  # stream sample of the first sample in _chunks
        self._speech_start = 0
        self._speech_end = 0
        self._voiced_run = 0
        self._silence_run = 0
        self._paused = False  # a SpeechPaused was sent for the silence run in progress
        self._utterance_id = -1

    # --- public state -------------------------------------------------------------------------

    @property
    def audio_s(self) -> float:
        """Stream time so far: seconds of audio pushed."""
        return self._samples_in / SAMPLE_RATE

    @property
    def in_speech(self) -> bool:
        return self._state == _SPEECH

    @property
    def utterance_id(self) -> int | None:
        """Id of the utterance in progress, if any."""
        return self._utterance_id if self._state == _SPEECH else None

    def current_audio(self) -> np.ndarray | None:
        """Audio of the utterance in progress, pre-roll included, up to the last sample pushed
        (so it spans [audio_s - len/16000, audio_s]); None outside speech."""
        if self._state != _SPEECH:
            return None
        return np.concatenate(self._chunks + [self._pending])

    @property
    def current_start_s(self) -> float | None:
        """Stream time of current_audio()[0]; None outside speech."""
        return self._audio_start / SAMPLE_RATE if self._state == _SPEECH else None

    # --- feeding ------------------------------------------------------------------------------

    def push(self, audio: np.ndarray) -> list[SegmenterEvent]:
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1:
            raise ValueError(f"segmenter expects mono 1-D audio, got shape {audio.shape}")
        self._samples_in += audio.size
        buffer = np.concatenate([self._pending, audio]) if self._pending.size else audio
        count = buffer.size // WINDOW_SAMPLES
        self._pending = buffer[count * WINDOW_SAMPLES:].copy()
        if count == 0:
            return []
        windows = buffer[: count * WINDOW_SAMPLES].reshape(count, WINDOW_SAMPLES).copy()
        probs = self.vad.push(windows.reshape(-1))
        if len(probs) != count:
            raise RuntimeError("the VAD given to the segmenter must not be fed by anyone else")
        events: list[SegmenterEvent] = []
        for window, prob in zip(windows, probs):
            self._step(window, prob, events)
        return events

    def flush(self) -> list[SegmenterEvent]:
        """Close the utterance in progress now; an unconfirmed candidate is dropped."""
        events: list[SegmenterEvent] = []
        if self._state == _SPEECH:
            self._end_utterance(events, self._speech_end)
        elif self._state == _CANDIDATE:
            self._to_silence(keep_audio=True)
        self._voiced = False
        return events

    # --- the state machine ----------------------------------------------------------------------

    def _step(self, window: np.ndarray, prob: float, events: list[SegmenterEvent]) -> None:
        start = self._window_index * WINDOW_SAMPLES
        end = start + WINDOW_SAMPLES
        self._window_index += 1
        self._voiced = prob >= (self.neg_threshold if self._voiced else self.threshold)

        if self._state == _SILENCE:
            if not self._voiced:
                self._remember(window)
                return
            self._open_candidate(start)

        if self._state == _CANDIDATE:
            if not self._voiced:  # too short to be speech: its audio becomes pre-roll again
                self._to_silence(keep_audio=True)
                self._remember(window)
                return
            self._append(window)
            self._voiced_run += WINDOW_SAMPLES
            self._speech_end = end
            if self._voiced_run >= self.min_speech_samples:
                self._state = _SPEECH
                self._utterance_id = self._next_id
                self._next_id += 1
                self._silence_run = 0
                events.append(SpeechStarted(self._speech_start / SAMPLE_RATE, self._utterance_id))
            self._check_cap(end, events)
            return

        # _SPEECH
        self._append(window)
        if self._voiced:
            if self._paused:
                self._paused = False
                events.append(SpeechResumed(start / SAMPLE_RATE, self._utterance_id))
            self._speech_end = end
            self._silence_run = 0
        else:
            self._silence_run += WINDOW_SAMPLES
            if self._silence_run >= self.min_silence_samples:
                self._end_utterance(events, self._speech_end)
                return
            if self.pause_samples and not self._paused and self._silence_run >= self.pause_samples:
                self._paused = True
                audio = np.concatenate(self._chunks)
                start_s = self._audio_start / SAMPLE_RATE
                events.append(SpeechPaused(self._speech_end / SAMPLE_RATE, self._utterance_id, audio, start_s,
                                           start_s + audio.size / SAMPLE_RATE))
        self._check_cap(end, events)

    def _remember(self, audio: np.ndarray) -> None:
        if self.pre_roll_samples == 0:
            return
        joined = np.concatenate([self._pre_roll, audio]) if self._pre_roll.size else audio
        self._pre_roll = joined[-self.pre_roll_samples:].copy()

    def _open_candidate(self, start: int) -> None:
        self._state = _CANDIDATE
        self._speech_start = start
        self._voiced_run = 0
        self._chunks = [self._pre_roll] if self._pre_roll.size else []
        self._chunk_samples = self._pre_roll.size
        self._audio_start = start - self._pre_roll.size
        self._pre_roll = np.zeros(0, dtype=np.float32)

    def _append(self, window: np.ndarray) -> None:
        self._chunks.append(window)
        self._chunk_samples += window.size

    def _check_cap(self, end: int, events: list[SegmenterEvent]) -> None:
        if self._chunk_samples + WINDOW_SAMPLES <= self.max_utterance_samples:
            return
        if self._state == _CANDIDATE:  # cannot happen with sane settings; keep memory bounded
            self._to_silence()
            return
        # Cut here; audio after the cut starts afresh (a voiced window reopens right away).
        self._end_utterance(events, end if self._silence_run == 0 else self._speech_end,
                            keep_tail=False)

    def _end_utterance(self, events: list[SegmenterEvent], speech_end: int,
                       keep_tail: bool = True) -> None:
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        if keep_tail:
            tail = min(self.pre_roll_samples, self._audio_start + audio.size - speech_end)
            audio = audio[: speech_end - self._audio_start + max(tail, 0)]
        start_s = self._audio_start / SAMPLE_RATE
        events.append(SpeechStopped(speech_end / SAMPLE_RATE, self._utterance_id))
        events.append(UtteranceEnded(
            self._utterance_id, audio, start_s, start_s + audio.size / SAMPLE_RATE
        ))
        # After a natural end the trailing silence can serve as the next pre-roll; after a cut at
        # max_utterance_s the next utterance starts at the cut, without overlap.
        self._to_silence(keep_audio=keep_tail)

    def _to_silence(self, keep_audio: bool = False) -> None:
        """Back to silence; keep_audio turns the tail of the audio held into the pre-roll."""
        if keep_audio and self._chunks:
            self._pre_roll = np.zeros(0, dtype=np.float32)
            self._remember(np.concatenate(self._chunks))
        else:
            self._pre_roll = np.zeros(0, dtype=np.float32)
        self._state = _SILENCE
        self._chunks, self._chunk_samples = [], 0
        self._voiced_run = self._silence_run = 0
        self._paused = False
