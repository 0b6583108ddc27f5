"""Shared fixtures: tiny random-weight models, built once per machine under models/tiny."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.models import ensure_tiny

ROOT = Path(__file__).resolve().parents[1]
TINY_ROOT = ROOT / "models" / "tiny"
SPEECH_WAV = ROOT / "services" / "assets" / "hello.wav"  # espeak-ng: "Hello, I would like to book a table for two tonight."


def _tiny(name: str) -> Path:
    return ensure_tiny(TINY_ROOT, [name]) / name


@pytest.fixture(scope="session")
def tiny_whisper() -> Path:
    return _tiny("whisper")


@pytest.fixture(scope="session")
def tiny_llm() -> Path:
    return _tiny("llm")


@pytest.fixture(scope="session")
def tiny_kokoro() -> Path:
    return _tiny("kokoro")


@pytest.fixture(scope="session")
def tiny_moshi() -> Path:
    return _tiny("moshi")
