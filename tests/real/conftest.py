"""The real-speech tier in-process: trained models from models/cpu (`parley models cpu`), loaded
once per session through the engines' real loading code and shared by the tests."""

from __future__ import annotations

import pytest

from tests.speech import require_real_models


@pytest.fixture(scope="session")
def real_models():
    return require_real_models()


def _whisper(model_dir):
    from services.asr.config import FasterWhisperConfig
    from services.asr.engines import load_engine

    return load_engine(FasterWhisperConfig(model=str(model_dir), device="cpu", cpu_threads=2))


@pytest.fixture(scope="session")
def whisper(real_models):
    engine = _whisper(real_models / "whisper-base")
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def whisper_tiny_en():
    """Whisper tiny.en, the ASR of the cpu-fast set (`parley models cpu-fast`)."""
    engine = _whisper(require_real_models(("whisper-tiny.en",), "parley models cpu-fast") / "whisper-tiny.en")
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def kokoro(real_models):
    from services.tts.config import KokoroOnnxConfig
    from services.tts.engines import load_engine

    engine = load_engine(KokoroOnnxConfig(model=str(real_models / "kokoro-82m-onnx"), default_voice="jf_alpha",
                                          threads=2))
    yield engine
    engine.close()
