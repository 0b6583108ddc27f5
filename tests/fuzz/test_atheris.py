"""Every atheris target for a bounded run (fixed seed, from its seed corpus) in its own process.

A crash fails the test with the crashing input and the traceback. Each run stops at its run
count or after MAX_SECONDS, whichever comes first, so the module stays within about a minute on
a 2-core machine. Longer runs: `python -m tests.fuzz <target> -max_total_time=120`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="atheris is not installed (the dev extra pins it): no coverage-guided fuzzing")

from tests.fuzz.__main__ import CORPUS_ROOT, TARGETS  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MAX_SECONDS = 5
# Runs per target: about 2 s each on a quiet 2-core machine (their speeds differ 30-fold).
RUNS = {"websocket": 20_000, "twilio": 20_000, "mulaw": 20_000, "auth": 50_000,
        "asr": 50_000, "llm": 200_000, "tts": 150_000, "moshi": 30_000, "tool_calls": 100_000}
# Where libFuzzer says the crashing input is: the file it wrote, or the file it was replaying.
CRASH_INPUT = re.compile(r"(?:Test unit written to|Running:) (\S+)")


def fuzz(target: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "tests.fuzz", target, "-seed=1", f"-artifact_prefix={tmp_path}/", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=MAX_SECONDS + 60)


def crash_report(result: subprocess.CompletedProcess) -> str:
    output = result.stdout + result.stderr
    paths = CRASH_INPUT.findall(output)
    data = Path(paths[-1]).read_bytes() if paths else b"(not found)"
    traceback = next((text[text.find("=== Uncaught"):] for text in (result.stdout, result.stderr)
                      if "=== Uncaught" in text), output)
    return (f"fuzz target crashed (exit {result.returncode}) on input {data[:2000]!r}"
            f"{' ...' if len(data) > 2000 else ''}\n{traceback[:6000]}")


def test_every_target_has_runs_and_seeds():
    assert set(RUNS) == set(TARGETS)
    assert all(any((CORPUS_ROOT / target).iterdir()) for target in TARGETS)


@pytest.mark.parametrize("target", list(TARGETS))
def test_target_survives_bounded_fuzzing(target, tmp_path):
    work = tmp_path / "corpus"
    work.mkdir()
    result = fuzz(target, tmp_path, f"-runs={RUNS[target]}", f"-max_total_time={MAX_SECONDS}",
                  str(work), str(CORPUS_ROOT / target))
    assert result.returncode == 0, crash_report(result)
    done = re.search(r"Done (\d+) runs", result.stderr)
    assert done and int(done.group(1)) > 0, result.stderr[-2000:]
