"""The real-speech tier in-process: trained models from models/cpu (`parley models cpu`), loaded
once per session through the engines' real loading code and shared by the tests."""

from __future__ import annotations

import pytest

from tests.speech import require_real_models


@pytest.fixture(scope="session")
def real_models():
    return require_real_models()


@pytest.fixture(scope="session")
def whisper(real_models):
    from services.asr.config import FasterWhisperConfig
    from services.asr.engines import load_engine

    engine = load_engine(FasterWhisperConfig(model=str(real_models / "whisper-base"), device="cpu", cpu_threads=2))
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
