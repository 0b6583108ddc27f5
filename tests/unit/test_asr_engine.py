"""FasterWhisperEngine on the tiny random-weight Whisper built by services.asr.tiny."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from services.asr import tiny
from services.asr.config import FasterWhisperConfig
from services.asr.engine import DecodeOptions, Transcription, Word
from services.asr.engines import load_engine
from services.asr.engines.faster_whisper import (
    FasterWhisperEngine,
    resolve_compute_type,
)
from services.common.audio import read_wav
from services.common.config import is_local_path

SR = 16_000
HELLO = Path(__file__).resolve().parents[2] / "services" / "assets" / "hello.wav"


@pytest.fixture(scope="module")
def engine(tiny_whisper) -> FasterWhisperEngine:
    eng = FasterWhisperEngine(FasterWhisperConfig(model=str(tiny_whisper), device="cpu",
                                                  **{**tiny.DECODING, "max_new_tokens": 32}))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """3 s of audio: the espeak fixture where it exists, else a deterministic voiced-like signal."""
    if HELLO.exists():
        audio, rate = read_wav(HELLO)
        assert rate == SR
        return audio[: 3 * SR]
    t = np.arange(3 * SR) / SR
    return (0.1 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def test_tiny_model_has_whisper_layout(tiny_whisper):
    for name in ("model.bin", "config.json", "vocabulary.json", "tokenizer.json",
                 "preprocessor_config.json"):
        assert (tiny_whisper / name).is_file(), name
    tok = tiny.build_tokenizer()
    assert tok.get_vocab_size() == 51865
    ids = {t: tok.token_to_id(t) for t in (
        "<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
        "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>", "<|0.00|>",
        "<|30.00|>", "")}
    assert ids == {"<|endoftext|>": 50257, "<|startoftranscript|>": 50258, "<|en|>": 50259,
                   "<|translate|>": 50358, "<|transcribe|>": 50359, "<|startoflm|>": 50360,
                   "<|startofprev|>": 50361, "<|nocaptions|>": 50362, "<|notimestamps|>": 50363,
                   "<|0.00|>": 50364, "<|30.00|>": 51864, "": 50256}
    text = "Hello, I would like to book a table."
    assert tok.decode(tok.encode(text, add_special_tokens=False).ids) == text
    # Deterministic: the file shipped with the model is the one the builder makes.
    assert json.loads((tiny_whisper / "tokenizer.json").read_text()) == json.loads(tok.to_str())


def test_engine_loads_multilingual_on_cpu_int8(engine):
    assert engine.device == "cpu" and engine.compute_type == "int8"
    assert engine.model.model.is_multilingual


def test_transcribe_returns_text_in_english(engine, speech):
    started = time.perf_counter()
    result = engine.transcribe(speech, DecodeOptions(language="en"))
    elapsed = time.perf_counter() - started
    assert isinstance(result, Transcription)
    assert isinstance(result.text, str) and result.text == result.text.strip()
    assert result.language == "en"
    assert result.words == ()
    assert elapsed < 15.0


def test_word_timestamps_lie_within_the_buffer(engine, speech):
    result = engine.transcribe(speech, DecodeOptions(language="en", word_timestamps=True))
    assert result.words, "the tiny model emits tokens, so there are words to time"
    duration = speech.size / SR
    for word in result.words:
        assert isinstance(word, Word) and isinstance(word.word, str)
        assert 0.0 <= word.start_s <= word.end_s <= duration
        assert 0.0 <= word.probability <= 1.0
    starts = [w.start_s for w in result.words]
    assert starts == sorted(starts)


def test_beam_search_and_empty_audio(engine, speech):
    result = engine.transcribe(speech[: SR], DecodeOptions(language="en", beam_size=2))
    assert isinstance(result.text, str) and result.language == "en"
    empty = engine.transcribe(np.zeros(0, np.float32), DecodeOptions(language="en"))
    assert empty == Transcription(text="", language="en")


def test_concurrent_calls_from_worker_threads_agree(engine, speech):
    expected = engine.transcribe(speech, DecodeOptions(language="en"))
    results: list[Transcription] = []
    errors: list[BaseException] = []

    def work():
        try:
            results.append(engine.transcribe(speech, DecodeOptions(language="en")))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(results) == 3
    assert all(r == expected for r in results)


def test_load_engine_selects_faster_whisper(tiny_whisper):
    eng = load_engine(FasterWhisperConfig(model=str(tiny_whisper), device="cpu",
                                          **{**tiny.DECODING, "max_new_tokens": 8}))
    try:
        assert isinstance(eng, FasterWhisperEngine)
    finally:
        eng.close()


def test_missing_model_path_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="parley models tiny"):
        FasterWhisperEngine(FasterWhisperConfig(model=str(tmp_path / "nope" / "whisper")))


def test_path_and_compute_type_resolution():
    assert is_local_path("models/tiny/whisper") and is_local_path("./whisper")
    assert not is_local_path("large-v3")
    assert resolve_compute_type("auto", "cpu") == "int8"
    assert resolve_compute_type("auto", "cuda") == "float16"
    assert resolve_compute_type("int8_float16", "cuda") == "int8_float16"


def test_defaults_are_faster_whispers_own_and_the_tiny_overlay_turns_them_off():
    import inspect

    from faster_whisper import WhisperModel

    defaults = {name: p.default for name, p in inspect.signature(WhisperModel.transcribe).parameters.items()}
    config = FasterWhisperConfig()
    assert tuple(defaults["temperature"]) == config.temperature
    for key in ("compression_ratio_threshold", "log_prob_threshold", "no_speech_threshold", "max_new_tokens"):
        assert getattr(config, key) == defaults[key], key
    tiny_config = FasterWhisperConfig(**tiny.DECODING)
    assert tiny_config.temperature == 0.0 and tiny_config.no_speech_threshold is None
    assert tiny_config.max_new_tokens == 96


def test_a_local_model_is_loaded_without_the_hub(tiny_whisper, monkeypatch):
    import faster_whisper.transcribe
    import faster_whisper.utils

    def no_hub(*args, **kwargs):
        raise AssertionError(f"tried the hub: {args} {kwargs}")

    seen = {}
    real = faster_whisper.transcribe.ctranslate2.models.Whisper

    def whisper(path, *args, **kwargs):
        seen["path"] = path
        return real(path, *args, **kwargs)

    monkeypatch.setattr(faster_whisper.utils, "download_model", no_hub)
    monkeypatch.setattr(faster_whisper.transcribe, "download_model", no_hub)
    monkeypatch.setattr(faster_whisper.transcribe.ctranslate2.models, "Whisper", whisper)
    monkeypatch.setattr(faster_whisper.transcribe.tokenizers.Tokenizer, "from_pretrained", no_hub)
    eng = FasterWhisperEngine(FasterWhisperConfig(model=str(tiny_whisper), device="cpu", **tiny.DECODING))
    try:
        assert seen["path"] == str(tiny_whisper)
    finally:
        eng.close()
    # A model id is looked up in the local cache only, never downloaded.
    asked = {}

    def lookup(name, **kwargs):
        asked.update(kwargs, name=name)
        raise FileNotFoundError("not in the local cache")

    monkeypatch.setattr(faster_whisper.transcribe, "download_model", lookup)
    with pytest.raises(FileNotFoundError, match="local cache"):
        FasterWhisperEngine(FasterWhisperConfig(model="base.en", device="cpu"))
    assert asked["name"] == "base.en" and asked["local_files_only"] is True


def test_a_model_directory_without_its_tokenizer_is_refused(tiny_whisper, tmp_path):
    for item in tiny_whisper.iterdir():
        if item.name != "tokenizer.json":
            (tmp_path / item.name).symlink_to(item)
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        FasterWhisperEngine(FasterWhisperConfig(model=str(tmp_path), device="cpu"))
