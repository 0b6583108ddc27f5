"""The pieces both Kokoro engines share: the default voice rule, and word spans from durations
(the model's, or estimated ones for an ONNX export that outputs audio only)."""

from __future__ import annotations

import numpy as np
import pytest

from services.tts import pieces
from services.tts.config import KokoroOnnxConfig, TTSConfig
from services.tts.engine import pick_default_voice
from services.tts.g2p import Phonemes


def test_a_pulled_english_voice_wins_over_the_configured_one():
    assert pick_default_voice(["af_heart", "jf_alpha"], "jf_alpha", "af_heart") == "af_heart"
    assert pick_default_voice(["jf_alpha", "jm_kumo"], "jf_alpha", "af_heart") == "jf_alpha"
    assert pick_default_voice(["af_heart", "jf_alpha"], "jf_alpha", None) == "jf_alpha"


def test_the_cpu_config_shape_validates():
    config = TTSConfig.model_validate({"engine": {"kind": "kokoro_onnx", "model": "models/cpu/kokoro-82m-onnx",
                                                  "default_voice": "jf_alpha", "lang": "en-us"}})
    assert isinstance(config.engine, KokoroOnnxConfig) and config.engine.g2p == "auto"
    with pytest.raises(ValueError, match="lang"):
        TTSConfig.model_validate({"engine": {"kind": "kokoro_onnx", "lang": "fr"}})


def phonemes_of(words: list[str]) -> Phonemes:
    """Symbols of space-separated words, each owned by its word ('.' owned by none)."""
    symbols, owners = [], []
    for index, word in enumerate(words):
        if index:
            symbols.append(" ")
            owners.append(None)
        for symbol in word:
            symbols.append(symbol)
            owners.append(None if symbol == "." else index)
    return Phonemes(symbols, owners, [w.strip(".") for w in words])


VOCAB = {s: i + 1 for i, s in enumerate(" .abcdefghijklmnopqrstuvwxyzˈː")}


def test_estimated_spans_follow_the_phonemes_and_cover_the_audio():
    seen = []

    def run(ids):
        seen.append(ids)
        return np.ones(24_000, dtype=np.float32), None  # one second, no durations

    speech = pieces.speak(phonemes_of(["ab", "ˈkaːdefgh", "i."]), VOCAB, pieces.MAX_IDS, run)
    assert len(seen) == 1 and speech.audio.size == 24_000
    words = speech.words
    assert [w.word for w in words] == ["ab", "ˈkaːdefgh", "i"]
    assert all(a.end_s < b.start_s for a, b in zip(words, words[1:]))  # a space between words
    # Spans grow with the word's symbols, the sound before a sentence end is drawn out, speech
    # starts after the lead-in silence and ends before the sentence end's pause.
    lengths = [w.end_s - w.start_s for w in words]
    assert lengths[1] > 3 * lengths[0] and lengths[2] > 3 * lengths[0]
    assert 0.1 < words[0].start_s < 0.3 and 0.8 < words[-1].end_s < 0.95


def test_model_durations_are_used_when_given():
    def run(ids):
        durations = np.array([0, *([1] * len(ids)), 0])
        durations[1:3] = 5  # "ab" is long
        return np.ones(600 * int(durations.sum()), dtype=np.float32), durations

    words = pieces.speak(phonemes_of(["ab", "cd"]), VOCAB, pieces.MAX_IDS, run).words
    assert [(w.start_s, w.end_s) for w in words] == [(0.0, 0.25), (0.275, 0.325)]


def test_long_text_goes_through_several_pieces():
    seen = []

    def run(ids):
        seen.append(len(ids))
        return np.ones(10 * len(ids), dtype=np.float32), None

    speech = pieces.speak(phonemes_of(["abcd."] * 50), VOCAB, 40, run)
    assert max(seen) <= 40 and sum(seen) == 50 * 5 + 49 - (len(seen) - 1)
    assert len(speech.words) == 50
