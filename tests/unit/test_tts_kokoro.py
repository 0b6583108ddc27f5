"""KokoroEngine on the tiny random-weight Kokoro, fully offline.

One engine is loaded per module (loading takes a few seconds) with the hub and spaCy's
downloader replaced by functions that fail the test, and with spaCy's English model reported
absent, so "auto" G2P must pick espeak-ng.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("kokoro")

from services.tts import g2p, pieces  # noqa: E402
from services.tts.config import KokoroConfig  # noqa: E402
from services.tts.engine import UnknownVoiceError  # noqa: E402
from services.tts.engines import kokoro as kokoro_engine  # noqa: E402
from services.tts.engines import load_engine  # noqa: E402

SAMPLE_RATE = 24_000
TWO_WORDS = "Hello there."
TWELVE_WORDS = "The quick brown fox jumps over the lazy dog while the cat sleeps."


def _no_network(*args, **kwargs):
    raise AssertionError(f"tried to download: {args} {kwargs}")


def _offline(mp: pytest.MonkeyPatch, spacy_model_installed: bool = False) -> None:
    import huggingface_hub
    import kokoro.model
    import kokoro.pipeline
    import spacy.cli
    import spacy.util

    mp.setenv("HF_HUB_OFFLINE", "1")
    for module in (huggingface_hub, kokoro.model, kokoro.pipeline):
        mp.setattr(module, "hf_hub_download", _no_network)
    mp.setattr(spacy.cli, "download", _no_network)
    real_is_package = spacy.util.is_package

    def is_package(name: str) -> bool:
        return spacy_model_installed if name.startswith("en_core_web") else real_is_package(name)

    mp.setattr(spacy.util, "is_package", is_package)


@pytest.fixture(scope="module")
def engine(tiny_kokoro):
    with pytest.MonkeyPatch.context() as mp:
        _offline(mp)
        config = KokoroConfig(model=str(tiny_kokoro), device="cpu", g2p="auto", torch_threads=1)
        tts = load_engine(config)
        yield tts
        tts.close()


def _duration(audio: np.ndarray) -> float:
    return audio.size / SAMPLE_RATE


def test_tiny_model_has_the_real_layout(tiny_kokoro):
    import json

    config = json.loads((tiny_kokoro / "config.json").read_text(encoding="utf-8"))
    keys = {"istftnet", "plbert", "vocab", "n_token", "hidden_dim", "style_dim", "max_dur"}
    assert keys <= set(config)
    assert config["vocab"]["ˈ"] == 156 and config["vocab"][" "] == 16 and config["n_token"] == 178
    assert (tiny_kokoro / "kokoro-v1_0.pth").is_file()
    voices = sorted(p.name for p in (tiny_kokoro / "voices").glob("*.pt"))
    assert voices == ["af_heart.pt", "am_adam.pt"]


def test_loads_offline_and_auto_picks_espeak(engine):
    assert isinstance(engine, kokoro_engine.KokoroEngine)
    assert engine.sample_rate == SAMPLE_RATE
    assert engine.g2p_name == "espeak"


def test_voices(engine):
    assert engine.voices() == ["af_heart", "am_adam"]


def test_synthesize_audio(engine):
    speech = engine.synthesize(TWO_WORDS, "af_heart", 1.0)
    audio = speech.audio
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 0.2 < _duration(audio) < 5.0
    assert np.isfinite(audio).all()
    assert float(np.sqrt(np.mean(audio ** 2))) > 1e-3  # not silent


def test_length_grows_with_text(engine):
    short = engine.synthesize(TWO_WORDS, "af_heart", 1.0).audio
    long = engine.synthesize(TWELVE_WORDS, "af_heart", 1.0).audio
    assert _duration(long) > 2 * _duration(short)


def test_speed_shortens_audio(engine):
    normal = engine.synthesize(TWELVE_WORDS, "am_adam", 1.0).audio
    fast = engine.synthesize(TWELVE_WORDS, "am_adam", 2.0).audio
    assert 0 < fast.size < 0.8 * normal.size
    with pytest.raises(ValueError):
        engine.synthesize(TWO_WORDS, "af_heart", 0.0)


def test_word_timings(engine):
    speech = engine.synthesize(TWELVE_WORDS, "af_heart", 1.0)
    assert [w.word for w in speech.words] == TWELVE_WORDS.rstrip(".").split()
    ends = [0.0]
    for word in speech.words:
        assert ends[-1] <= word.start_s <= word.end_s
        ends.append(word.end_s)
    assert speech.words[-1].end_s <= _duration(speech.audio) + 1e-6
    assert all(w.end_s > w.start_s for w in speech.words)


def test_unknown_voice(engine):
    with pytest.raises(UnknownVoiceError) as caught:
        engine.synthesize(TWO_WORDS, "zz_nobody", 1.0)
    assert "af_heart" in str(caught.value) and "am_adam" in str(caught.value)
    with pytest.raises(UnknownVoiceError):
        engine.synthesize("", "zz_nobody", 1.0)


def test_voice_by_absolute_path(engine, tiny_kokoro):
    path = str((tiny_kokoro / "voices" / "am_adam.pt").resolve())
    assert engine.synthesize(TWO_WORDS, path, 1.0).audio.size > 0


@pytest.mark.parametrize("text", ["", "   \n\t", "...", "?!", "—", '"'])
def test_no_speech_gives_empty_audio(engine, text):
    speech = engine.synthesize(text, "af_heart", 1.0)
    assert speech.audio.dtype == np.float32 and speech.audio.size == 0
    assert speech.words == ()


def test_long_text_is_split_into_pieces(engine):
    text = " ".join(["Then the little engine went up the hill, slowly but surely."] * 12)
    speech = engine.synthesize(text, "af_heart", 4.0)  # speed 4: one frame per phoneme
    assert speech.audio.size > 0
    assert len(speech.words) == len(text.split())
    starts = [w.start_s for w in speech.words]
    assert starts == sorted(starts)
    assert speech.words[-1].end_s > 0.9 * _duration(speech.audio) - 0.5


def test_auto_g2p_choice_never_downloads(monkeypatch):
    _offline(monkeypatch, spacy_model_installed=False)
    assert g2p.choose_g2p("auto") == "espeak"
    with pytest.raises(RuntimeError, match="en_core_web_sm"):
        g2p.MisakiG2P(british=False)  # refused, not downloaded
    monkeypatch.undo()
    _offline(monkeypatch, spacy_model_installed=True)
    assert g2p.choose_g2p("auto") == "misaki"
    assert g2p.choose_g2p("espeak") == "espeak"


def test_misaki_g2p_with_word_timings(engine, monkeypatch):
    """misaki's G2P through the engine, with a blank spaCy English pipeline standing in for
    en_core_web_sm (no tagger: punctuation stays on words, which the engine strips)."""
    import spacy

    _offline(monkeypatch, spacy_model_installed=True)
    monkeypatch.setattr(spacy, "load", lambda name, **kwargs: spacy.blank("en"))
    monkeypatch.setattr(engine, "_g2p", g2p.MisakiG2P(british=False))
    speech = engine.synthesize("Hello there, my old friend!", "af_heart", 1.0)
    assert speech.audio.size > 0
    assert [w.word for w in speech.words] == ["Hello", "there", "my", "old", "friend"]
    assert all(a.end_s <= b.start_s for a, b in zip(speech.words, speech.words[1:]))


def test_align_words():
    # espeak joins weak words ("in the" -> "ɪnðə") and uses weak forms ("a" -> "ɐ").
    phonemes = "bˈɔːt ɐ lˈOf ɪnðə mˈɔːɹnɪŋ."
    references = ["bˈɔːt", "ˈA", "lˈOf", "ˈɪn", "ðə", "mˈɔːɹnɪŋ"]
    owners = g2p.align_words(phonemes, references)
    spelled: dict[int, str] = {}
    for symbol, owner in zip(phonemes, owners):
        if owner is not None:
            spelled[owner] = spelled.get(owner, "") + symbol
    assert spelled == {0: "bˈɔːt", 1: "ɐ", 2: "lˈOf", 3: "ɪn", 4: "ðə", 5: "mˈɔːɹnɪŋ"}


def test_split_ids():
    split = pieces.split_ids
    assert split(list("ab cd. ef gh, ij kl mn"), 8) == [(0, 6), (7, 13), (14, 22)]
    assert split(list("abcdefghijklmnopqrst"), 8) == [(0, 8), (8, 16), (16, 20)]
    assert split(list("  ab  cd  "), 8) == [(2, 8)]
    assert split(list("   "), 8) == []


def test_tiny_build_is_deterministic(tmp_path):
    """Two builds give identical weights and voices (a few seconds: two 220 MB checkpoints)."""
    import torch

    from services.tts import tiny

    tiny.build(tmp_path / "a")
    tiny.build(tmp_path / "b")
    a = torch.load(tmp_path / "a" / tiny.WEIGHTS_NAME, weights_only=True)
    b = torch.load(tmp_path / "b" / tiny.WEIGHTS_NAME, weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[m][k], b[m][k]) for m in a for k in a[m])
    for voice in tiny.VOICES:
        pa = torch.load(tmp_path / "a" / "voices" / f"{voice}.pt", weights_only=True)
        pb = torch.load(tmp_path / "b" / "voices" / f"{voice}.pt", weights_only=True)
        assert pa.shape == (510, 1, 256) and torch.equal(pa, pb)
