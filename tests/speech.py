"""Speech helpers for the real-speech tests: word error rate, offline speech synthesis with
espeak-ng, and the rule for when the real CPU model set is missing (skip locally, fail in CI)."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from services.common.audio import resample

ROOT = Path(__file__).resolve().parents[1]
REAL_MODELS = ROOT / "models" / "cpu"
REAL_SET = ("whisper-base", "smollm2-135m-instruct", "kokoro-82m-onnx")

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
         "seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> list[str]:
    """English words of 0 <= n < 1000 ("21" -> twenty one), as Whisper may write either."""
    if n < 20:
        return [_ONES[n]]
    if n < 100:
        return [_TENS[n // 10]] + ([] if n % 10 == 0 else [_ONES[n % 10]])
    return [_ONES[n // 100], "hundred"] + ([] if n % 100 == 0 else number_words(n % 100))


def normalize(text: str) -> list[str]:
    """Lower-case words without punctuation; numbers below 1000 spelled out."""
    words = []
    for token in re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower().replace("’", "'")):
        words += number_words(int(token)) if token.isdigit() and int(token) < 1000 else [token]
    return words


def edit_distance(reference: list[str], hypothesis: list[str]) -> int:
    """Word-level Levenshtein distance (substitutions, deletions, insertions)."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        current = [i]
        for j, hyp in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref != hyp)))
        previous = current
    return previous[-1]


def wer(pairs: list[tuple[str, str]]) -> float:
    """Word error rate over (reference, hypothesis) pairs: all edits over all reference words."""
    edits = sum(edit_distance(normalize(ref), normalize(hyp)) for ref, hyp in pairs)
    words = sum(len(normalize(ref)) for ref, _ in pairs)
    if not words:
        raise ValueError("the references hold no words")
    return edits / words


def _missing(reason: str) -> None:
    """Skip locally; in CI (CI set) a missing prerequisite of the real-speech tier is a failure."""
    import pytest  # here, not above: the benchmarks use this module without pytest

    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: the real-speech tests must run)")
    pytest.skip(reason)


def require_real_models(names: tuple[str, ...] = REAL_SET, command: str = "parley models cpu") -> Path:
    """models/cpu with the named trained models (the real CPU set), or a skip (a failure in CI)
    naming the command that fetches them."""
    absent = [name for name in names if not (REAL_MODELS / name).is_dir()]
    if absent:
        shown = REAL_MODELS.relative_to(ROOT) if REAL_MODELS.is_relative_to(ROOT) else REAL_MODELS
        _missing(f"the real CPU model set is not in {shown} (missing {', '.join(absent)}): run `{command}`")
    return REAL_MODELS


def require_espeak() -> str:
    """The espeak-ng program (Debian package espeak-ng), or a skip (a failure in CI)."""
    program = shutil.which("espeak-ng")
    if program is None:
        _missing("espeak-ng is not installed (apt-get install -y espeak-ng): it speaks the test sentences")
    return program


def espeak(text: str, rate: int = 16_000, voice: str = "en-us", words_per_minute: int = 150) -> np.ndarray:
    """`text` spoken by espeak-ng, mono float32 at `rate`."""
    import soundfile

    wav = subprocess.run([require_espeak(), "-v", voice, "-s", str(words_per_minute), "--stdout", text],
                         capture_output=True, check=True, timeout=60).stdout
    audio, native = soundfile.read(io.BytesIO(wav), dtype="float32")
    return resample(audio.reshape(-1), native, rate)
