"""Real speech through the real engines in-process: Whisper base transcribes espeak-ng speech of
known sentences, and Kokoro (ONNX, int8) speaks sentences that Whisper transcribes back.

Measured on the 2-core box: espeak-ng speech (en-us, 150 wpm) gives 19% WER at beam 1 (what a
call decodes with) and 10% at beam 5; Kokoro's jf_alpha voice transcribes back at 2%; the word
spans estimated from phonemes start within 48 ms (median; 161 ms at most) of the model's own. The
bounds leave room for a different espeak-ng build, not for a broken engine (which scores ~100%).
"""

from __future__ import annotations

import numpy as np
import pytest

from services.asr.engine import SAMPLE_RATE, DecodeOptions
from services.common.audio import resample
from tests.speech import espeak, wer

TINY_EN_WER_BOUND = 0.25  # measured 18.8% at beam 1, the same as base

SENTENCES = (
    "The capital of France is Paris.",
    "Please book a table for two people tonight.",
    "The weather will be sunny tomorrow morning.",
    "I would like to order a large coffee with milk.",
    "Our store opens at nine and closes at six.",
    "Can you call me back in ten minutes?",
)


def padded(audio: np.ndarray, seconds: float = 0.5) -> np.ndarray:
    """Silence around an utterance, as the ASR stage's pre-roll and end-of-speech wait give it."""
    silence = np.zeros(int(seconds * SAMPLE_RATE), np.float32)
    return np.concatenate([silence, audio, silence])


@pytest.fixture(scope="module")
def spoken():
    return [padded(espeak(text)) for text in SENTENCES]


@pytest.mark.parametrize(("beam_size", "bound"), [(1, 0.25), (5, 0.18)])
def test_whisper_transcribes_espeak_speech(whisper, spoken, beam_size, bound):
    pairs = [(text, whisper.transcribe(audio, DecodeOptions(beam_size=beam_size)).text)
             for text, audio in zip(SENTENCES, spoken)]
    score = wer(pairs)
    print(f"\nWhisper base on espeak-ng speech, beam {beam_size}: WER {score:.1%}")
    for reference, heard in pairs:
        print(f"  {reference!r} -> {heard!r}")
    assert score <= bound


def test_whisper_tiny_en_transcribes_espeak_speech(whisper_tiny_en, spoken):
    """The cpu-fast set's ASR: fetched, loaded and decoding English (its speed: docs/benchmarks.md)."""
    heard = [whisper_tiny_en.transcribe(audio, DecodeOptions(beam_size=1)).text for audio in spoken]
    score = wer(list(zip(SENTENCES, heard)))
    print(f"\nWhisper tiny.en on espeak-ng speech, beam 1: WER {score:.1%}")
    for reference, text in zip(SENTENCES, heard):
        print(f"  {reference!r} -> {text!r}")
    assert score <= TINY_EN_WER_BOUND


def test_kokoro_speech_transcribes_back(whisper, kokoro):
    pairs = []
    for text in SENTENCES:
        speech = kokoro.synthesize(text, kokoro.default_voice, 1.0)
        assert speech.audio.dtype == np.float32 and 0.5 < speech.audio.size / kokoro.sample_rate < 6
        heard = whisper.transcribe(padded(resample(speech.audio, kokoro.sample_rate, SAMPLE_RATE)), DecodeOptions())
        pairs.append((text, heard.text))
    score = wer(pairs)
    print(f"\nKokoro {kokoro.default_voice} -> Whisper base: WER {score:.1%}")
    assert score <= 0.1, pairs


def test_kokoro_word_timings_come_from_the_models_durations(kokoro):
    """The export's own durations give the spans; the phoneme-based estimate (for exports without
    them) is measured against those."""
    from services.tts import pieces

    assert kokoro.exact_timings
    run = kokoro.run_piece(kokoro.default_voice, 1.0)
    errors = []
    for text in SENTENCES:
        speech = kokoro.synthesize(text, kokoro.default_voice, 1.0)
        words = speech.words
        assert [w.word for w in words] == [w.strip(".?!,") for w in text.split()]
        assert 0 < words[0].start_s and words[-1].end_s <= speech.audio.size / kokoro.sample_rate
        assert all(a.end_s <= b.start_s and a.start_s < a.end_s for a, b in zip(words, words[1:]))
        estimated = pieces.speak(kokoro.phonemize(text), kokoro.vocab, pieces.MAX_IDS,
                                 lambda ids: (run(ids)[0], None)).words
        errors += [abs(a.start_s - b.start_s) for a, b in zip(words, estimated)]
    print(f"\nestimated word starts vs the model's: median {np.median(errors) * 1000:.0f} ms, "
          f"max {max(errors) * 1000:.0f} ms over {len(errors)} words")
    assert np.median(errors) < 0.1
