"""StreamingVAD (real silero model from the faster-whisper wheel) and UtteranceSegmenter."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from services.asr.segmenter import (
    SpeechStarted,
    SpeechStopped,
    UtteranceEnded,
    UtteranceSegmenter,
)
from services.asr.vad import WINDOW_SAMPLES, StreamingVAD, shared_session
from services.common.audio import read_wav, resample, write_wav

SR = 16_000
DATA = Path(__file__).resolve().parents[2] / "services" / "assets"
PHRASE = "Hello, I would like to book a table for two tonight."
TOLERANCE_S = 0.15


# --- audio ------------------------------------------------------------------------------------


def _make_speech_wav(path: Path) -> None:
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-w", str(raw), PHRASE], check=True, capture_output=True)
    audio, rate = read_wav(raw)
    raw.unlink()
    pad = np.zeros(SR // 2, dtype=np.float32)
    write_wav(path, np.concatenate([pad, resample(audio, rate, SR), pad]), SR)


@pytest.fixture(scope="session")
def hello(tmp_path_factory) -> np.ndarray:
    path = DATA / "hello.wav"
    if not path.exists():
        if not shutil.which("espeak-ng"):
            pytest.skip("services/assets/hello.wav is missing and espeak-ng is not installed")
        path = tmp_path_factory.mktemp("speech") / "hello.wav"
        _make_speech_wav(path)
    audio, rate = read_wav(path)
    assert rate == SR
    return audio


def speech_bounds(audio: np.ndarray) -> tuple[float, float]:
    """First and last loud sample, in seconds (the espeak file has digital silence around it)."""
    loud = np.nonzero(np.abs(audio) > 0.01)[0]
    return loud[0] / SR, (loud[-1] + 1) / SR


def silence(seconds: float, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * SR)) * noise).astype(np.float32)


def push_chunked(seg: UtteranceSegmenter, audio: np.ndarray, chunk_ms: int) -> list:
    step = SR * chunk_ms // 1000
    events = []
    for i in range(0, audio.size, step):
        events += seg.push(audio[i:i + step])
    return events


def kinds(events) -> list[str]:
    return [type(e).__name__ for e in events]


def summary(events) -> list[tuple]:
    """Events as comparable tuples (the audio by content)."""
    out = []
    for e in events:
        if isinstance(e, UtteranceEnded):
            out.append(("end", e.utterance_id, round(e.start_s, 6), round(e.end_s, 6),
                        e.audio.size, e.audio.tobytes()))
        else:
            out.append((type(e).__name__, e.utterance_id, round(e.offset_s, 6)))
    return out


# --- a scripted VAD: each window's probability is the window's mean sample value ---------------


class ScriptedVAD:
    def push(self, audio: np.ndarray) -> list[float]:
        assert audio.size % WINDOW_SAMPLES == 0
        return audio.reshape(-1, WINDOW_SAMPLES).mean(axis=1).tolist()


def scripted(*spans: tuple[float, float]) -> np.ndarray:
    """(probability, seconds) spans as a signal for ScriptedVAD; durations round to windows."""
    parts = [np.full(round(s * SR / WINDOW_SAMPLES) * WINDOW_SAMPLES, p, np.float32)
             for p, s in spans]
    return np.concatenate(parts)


W = WINDOW_SAMPLES / SR  # one VAD window in seconds


# --- StreamingVAD -------------------------------------------------------------------------------


def test_vad_one_probability_per_complete_window_and_buffers_remainder():
    vad = StreamingVAD()
    assert vad.push(np.zeros(1000, np.float32)) != []
    assert len(vad.push(np.zeros(0, np.float32))) == 0
    assert vad.buffered_samples == 1000 - WINDOW_SAMPLES
    assert len(vad.push(np.zeros(24, np.float32))) == 1  # 1024 samples: the second window
    assert vad.buffered_samples == 0
    probs = vad.push(silence(1.0))
    assert len(probs) == SR // WINDOW_SAMPLES
    assert max(probs) < 0.1


def test_vad_scores_speech_high_and_silence_low(hello):
    probs = np.array(StreamingVAD().push(hello))
    start, end = speech_bounds(hello)
    times = np.arange(probs.size) * W
    assert probs[(times > start + 0.3) & (times < end - 0.3)].mean() > 0.8
    assert probs[times + W < start - 0.1].max() < 0.2


def test_vad_state_carries_across_pushes(hello):
    whole = StreamingVAD().push(hello)
    vad = StreamingVAD()
    chunked = []
    for i in range(0, hello.size, 333):  # chunks that never align with windows
        chunked += vad.push(hello[i:i + 333])
    assert len(chunked) == len(whole)
    np.testing.assert_allclose(chunked, whole, atol=1e-5)


def test_vad_reset_and_shared_session(hello):
    a, b = StreamingVAD(), StreamingVAD()
    assert a._session is b._session is shared_session()
    fresh = b.push(hello[:SR])
    a.push(hello)
    a.push(np.zeros(100, np.float32))
    a.reset()
    assert a.buffered_samples == 0
    np.testing.assert_allclose(a.push(hello[:SR]), fresh, atol=1e-6)
    with pytest.raises(ValueError):
        a.push(np.zeros((2, 512), np.float32))


# --- UtteranceSegmenter with the real VAD --------------------------------------------------------


def segmenter(**kwargs) -> UtteranceSegmenter:
    params = dict(threshold=0.5, min_speech_ms=90, min_silence_ms=300, pre_roll_ms=200,
                  max_utterance_s=30.0)
    params.update(kwargs)
    return UtteranceSegmenter(StreamingVAD(), **params)


def test_silence_gives_no_events():
    seg = segmenter()
    events = push_chunked(seg, silence(3.0), 20) + push_chunked(seg, silence(2.0, 0.003), 20)
    assert events == []
    assert not seg.in_speech and seg.current_audio() is None
    assert seg.flush() == []
    assert seg.audio_s == pytest.approx(5.0)


def test_one_phrase_gives_one_utterance_at_the_speech_bounds(hello):
    seg = segmenter()
    events = push_chunked(seg, hello, 20)
    assert kinds(events) == ["SpeechStarted", "SpeechStopped", "UtteranceEnded"]
    started, stopped, ended = events
    start, end = speech_bounds(hello)
    assert started.offset_s == pytest.approx(start, abs=TOLERANCE_S)
    assert stopped.offset_s == pytest.approx(end, abs=TOLERANCE_S)
    assert started.utterance_id == stopped.utterance_id == ended.utterance_id == 0
    # The audio holds the pre-roll, the speech and at most pre_roll of trailing silence.
    assert ended.audio.dtype == np.float32
    assert ended.audio.size == round((ended.end_s - ended.start_s) * SR)
    assert ended.start_s == pytest.approx(started.offset_s - 0.2, abs=1e-6)
    assert stopped.offset_s <= ended.end_s <= stopped.offset_s + 0.2 + 1e-6
    first = round(ended.start_s * SR)
    np.testing.assert_array_equal(ended.audio, hello[first:first + ended.audio.size])
    assert not seg.in_speech
    assert seg.flush() == []
    assert seg.audio_s == pytest.approx(hello.size / SR)


def test_two_phrases_separated_by_a_second_give_two_utterances(hello):
    gap = silence(1.0)
    stream = np.concatenate([hello, gap, hello])
    events = push_chunked(segmenter(), stream, 40)
    assert kinds(events) == ["SpeechStarted", "SpeechStopped", "UtteranceEnded"] * 2
    assert [e.utterance_id for e in events] == [0, 0, 0, 1, 1, 1]
    start, end = speech_bounds(hello)
    second = (hello.size + gap.size) / SR
    assert events[3].offset_s == pytest.approx(second + start, abs=TOLERANCE_S)
    assert events[4].offset_s == pytest.approx(second + end, abs=TOLERANCE_S)
    assert events[2].end_s <= events[5].start_s


@pytest.mark.parametrize("chunks_ms", [(20, 100), (20, 1000)])
def test_events_do_not_depend_on_chunk_size(hello, chunks_ms):
    stream = np.concatenate([silence(0.3), hello, silence(0.7), hello[: hello.size // 2]])
    results = []
    for ms in chunks_ms:
        seg = segmenter()
        results.append(summary(push_chunked(seg, stream, ms) + seg.flush()))
    assert results[0] == results[1]
    assert len(results[0]) == 6


def test_flush_mid_speech_closes_the_utterance(hello):
    seg = segmenter()
    start, _ = speech_bounds(hello)
    cut = int((start + 1.0) * SR) + 100  # mid-speech, not on a window boundary
    events = push_chunked(seg, hello[:cut], 20)
    assert kinds(events) == ["SpeechStarted"]
    assert seg.in_speech and seg.utterance_id == 0
    partial = seg.current_audio()
    assert partial is not None
    # The partial audio runs up to the last sample pushed.
    assert seg.current_start_s + partial.size / SR == pytest.approx(seg.audio_s)
    np.testing.assert_array_equal(partial, hello[cut - partial.size:cut])

    flushed = seg.flush()
    assert kinds(flushed) == ["SpeechStopped", "UtteranceEnded"]
    assert flushed[0].offset_s == pytest.approx(start + 1.0, abs=TOLERANCE_S)
    assert flushed[1].audio.size > SR
    assert not seg.in_speech and seg.current_audio() is None and seg.flush() == []
    # Speech that goes on opens a new utterance.
    rest = push_chunked(seg, hello[cut:], 20)
    assert kinds(rest)[:1] == ["SpeechStarted"] and rest[0].utterance_id == 1


def test_a_short_click_does_not_open_an_utterance_with_the_real_vad(hello):
    start, _ = speech_bounds(hello)
    burst = hello[int(start * SR) + 1600: int(start * SR) + 1600 + int(0.03 * SR)]
    stream = np.concatenate([silence(1.0), burst, silence(1.0)])
    seg = segmenter()
    assert push_chunked(seg, stream, 20) + seg.flush() == []


# --- UtteranceSegmenter state machine, with a scripted VAD ----------------------------------------


def scripted_segmenter(**kwargs) -> UtteranceSegmenter:
    params = dict(threshold=0.5, min_speech_ms=90, min_silence_ms=300, pre_roll_ms=200,
                  max_utterance_s=30.0)
    params.update(kwargs)
    return UtteranceSegmenter(ScriptedVAD(), **params)


def test_min_speech_filters_a_30ms_click():
    click = scripted((0.0, 1.0), (0.9, 0.03), (0.0, 1.0))  # one window of "speech"
    assert push_chunked(scripted_segmenter(min_speech_ms=90), click, 20) == []
    # Without the minimum the same click is an utterance: the filter is what removed it.
    events = push_chunked(scripted_segmenter(min_speech_ms=0), click, 20)
    assert kinds(events) == ["SpeechStarted", "SpeechStopped", "UtteranceEnded"]
    assert events[0].offset_s == pytest.approx(1.0, abs=W)


def test_speech_start_is_the_first_voiced_window_once_confirmed():
    stream = scripted((0.0, 1.0), (0.9, 0.5), (0.0, 1.0))
    seg = scripted_segmenter(min_speech_ms=90)
    events = push_chunked(seg, stream, 20)
    assert kinds(events) == ["SpeechStarted", "SpeechStopped", "UtteranceEnded"]
    speech_start = round(1.0 * SR / WINDOW_SAMPLES) * W
    speech_end = speech_start + round(0.5 * SR / WINDOW_SAMPLES) * W
    assert events[0].offset_s == pytest.approx(speech_start)
    assert events[1].offset_s == pytest.approx(speech_end)
    assert events[2].start_s == pytest.approx(speech_start - 0.2)
    assert events[2].end_s == pytest.approx(speech_end + 0.2)


def test_hysteresis_keeps_speech_through_dips_above_threshold_minus_015():
    dip = scripted((0.0, 0.5), (0.9, 0.3), (0.4, 0.5), (0.9, 0.3), (0.0, 1.0))
    assert kinds(push_chunked(scripted_segmenter(), dip, 20)) == [
        "SpeechStarted", "SpeechStopped", "UtteranceEnded"]
    # A dip below threshold - 0.15 that lasts min_silence_ms splits the speech in two.
    gap = scripted((0.0, 0.5), (0.9, 0.3), (0.3, 0.5), (0.9, 0.3), (0.0, 1.0))
    assert kinds(push_chunked(scripted_segmenter(), gap, 20)) == [
        "SpeechStarted", "SpeechStopped", "UtteranceEnded"] * 2
    # 0.4 never opens speech on its own (it is below threshold).
    assert push_chunked(scripted_segmenter(), scripted((0.4, 2.0)), 20) == []


def test_short_pauses_do_not_end_the_utterance():
    stream = scripted((0.0, 0.5), (0.9, 0.5), (0.0, 0.2), (0.9, 0.5), (0.0, 0.5))
    events = push_chunked(scripted_segmenter(min_silence_ms=300), stream, 20)
    assert kinds(events) == ["SpeechStarted", "SpeechStopped", "UtteranceEnded"]


def test_a_pause_inside_an_utterance_is_told_with_the_audio_so_far_and_a_resume_after_it():
    # Speech, a 200 ms pause (pause_ms 64: told; min_silence_ms 300: not an end), speech, silence.
    stream = scripted((0.0, 0.5), (0.9, 0.5), (0.0, 0.2), (0.9, 0.5), (0.0, 0.5))
    events = push_chunked(scripted_segmenter(min_silence_ms=300, pause_ms=64), stream, 20)
    assert kinds(events) == ["SpeechStarted", "SpeechPaused", "SpeechResumed", "SpeechPaused",
                             "SpeechStopped", "UtteranceEnded"]
    started, paused, resumed, last_pause, stopped, ended = events
    assert {e.utterance_id for e in events} == {0}
    first_end = started.offset_s + round(0.5 * SR / WINDOW_SAMPLES) * W
    assert paused.speech_end_s == pytest.approx(first_end)
    # Told after 2 silent windows (64 ms), with everything from the pre-roll up to then.
    assert paused.end_s == pytest.approx(first_end + 2 * W)
    assert paused.start_s == pytest.approx(ended.start_s)
    assert paused.audio.size == round((paused.end_s - paused.start_s) * SR)
    assert resumed.offset_s == pytest.approx(first_end + round(0.2 * SR / WINDOW_SAMPLES) * W)
    # The pause before the end is told too, with the speech end that the stop then reports.
    assert last_pause.speech_end_s == pytest.approx(stopped.offset_s)
    # Without pause_ms the same stream tells no pause: it is opt-in.
    assert "SpeechPaused" not in kinds(push_chunked(scripted_segmenter(min_silence_ms=300), stream, 20))


@pytest.mark.parametrize("pause_ms", [-1, 300, 400])
def test_pause_ms_must_be_below_min_silence(pause_ms):
    with pytest.raises(ValueError, match="pause_ms"):
        scripted_segmenter(min_silence_ms=300, pause_ms=pause_ms)


def test_max_utterance_cuts_long_speech_and_keeps_memory_bounded():
    stream = scripted((0.0, 0.5), (0.9, 5.0), (0.0, 1.0))
    seg = scripted_segmenter(max_utterance_s=2.0)
    events = push_chunked(seg, stream, 100)
    ends = [e for e in events if isinstance(e, UtteranceEnded)]
    assert len(ends) == 3
    assert all(e.audio.size <= 2 * SR for e in ends)
    # The pieces cover the stream without gaps or overlaps after the first one's pre-roll.
    for before, after in zip(ends, ends[1:]):
        assert after.start_s == pytest.approx(before.end_s)
    starts = [e for e in events if isinstance(e, SpeechStarted)]
    stops = [e for e in events if isinstance(e, SpeechStopped)]
    assert [e.utterance_id for e in starts] == [0, 1, 2] == [e.utterance_id for e in stops]
    assert stops[-1].offset_s == pytest.approx(0.5 + 5.0, abs=W)


def test_pre_roll_is_bounded_by_the_stream_and_by_its_setting():
    seg = scripted_segmenter(pre_roll_ms=200, min_speech_ms=0)
    events = push_chunked(seg, scripted((0.9, 0.5), (0.0, 1.0)), 20)
    assert events[2].start_s == 0.0  # no audio before the stream started
    seg = scripted_segmenter(pre_roll_ms=200)
    push_chunked(seg, scripted((0.0, 20.0)), 1000)
    assert seg._pre_roll.size <= 0.2 * SR and seg._chunks == []


def test_events_are_frozen_and_compare_without_audio():
    a = UtteranceEnded(1, np.zeros(3, np.float32), 0.0, 1.0)
    b = UtteranceEnded(1, np.ones(3, np.float32), 0.0, 1.0)
    assert a == b and hash(a) == hash(b)
    with pytest.raises(AttributeError):
        a.start_s = 2.0  # type: ignore[misc]
    assert SpeechStarted(0.5, 0) == SpeechStarted(0.5, 0) != SpeechStopped(0.5, 0)
