"""The GPU bench kit on CPU: `load/gpu_bench.py --device cpu --tiny` end to end in a process where Ray
cannot be imported (as on the bench machine), its JSON fed to load/capacity.py; and capacity's
arithmetic on synthetic results whose answers are known."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

from load import capacity

ROOT = Path(__file__).resolve().parents[2]
SMART_TURN = ROOT / "models" / "cpu" / "smart-turn-v3.2" / "smart-turn-v3.2-cpu.onnx"
BATCHES, DURATIONS, BACKGROUNDS, CONCURRENCY, REPEATS = [1, 2], [1, 3], [0, 2], [1, 2], 3

# Runs the bench with `import ray` refused, the way it fails on a machine without Ray.
_WITHOUT_RAY = """
import runpy, sys
class NoRay:
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError("ray is not on the bench machine", name=name)
sys.meta_path.insert(0, NoRay())
sys.argv = ["load/gpu_bench.py", *sys.argv[1:]]
runpy.run_path("load/gpu_bench.py", run_name="__main__")
"""


@pytest.fixture(scope="module")
def bench(tmp_path_factory, tiny_moshi, tiny_whisper, tiny_kokoro) -> dict:
    sections = ["moshi", "asr", "tts", "smart_turn"]
    if not SMART_TURN.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{SMART_TURN} is missing (CI runs `parley models cpu` first)")
        sections.remove("smart_turn")
    out = tmp_path_factory.mktemp("bench")
    command = [sys.executable, "-c", _WITHOUT_RAY, "--device", "cpu", "--tiny", "--sections", *sections,
               "--batches", *map(str, BATCHES), "--steps", "4", "--warmup", "1",
               "--asr-durations", *map(str, DURATIONS), "--asr-backgrounds", *map(str, BACKGROUNDS),
               "--asr-workers", "1", "--repeats", str(REPEATS), "--tts-concurrency", *map(str, CONCURRENCY),
               "--tts-rounds", "1", "--threads", "1", "--out", str(out / "bench.json"), "--markdown", str(out / "bench.md")]
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return {"json": json.loads((out / "bench.json").read_text()), "dir": out, "stdout": done.stdout}


def _ordered(row: dict) -> None:
    assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["max_ms"], row


def test_bench_runs_every_section_without_ray(bench):
    result = bench["json"]
    assert result["ray_imported"] is False
    assert result["environment"]["tiny"] and result["environment"]["device"] == "cpu"
    assert not [name for name, section in result["sections"].items() if "error" in section]
    assert "| batch |" in (bench["dir"] / "bench.md").read_text() and "| batch |" in bench["stdout"]


def test_moshi_rows_are_plausible(bench):
    moshi = bench["json"]["sections"]["moshi"]
    assert [row["batch"] for row in moshi["rows"]] == BATCHES
    for row in moshi["rows"]:
        _ordered(row)
        assert row["n"] == 4 and row["realtime"] == (row["p95_ms"] < 80)
        assert row["state_mb_per_slot"] > 0
    one, two = (row["state_mb_per_slot"] for row in moshi["rows"])
    assert two == pytest.approx(one, rel=0.2)  # the streaming state is per slot: it grows with the batch
    assert moshi["weights_gb"] > 0 and moshi["cuda_graphs"] is False


def test_asr_rows_are_plausible(bench):
    rows = bench["json"]["sections"]["asr"]["rows"]
    assert [(row["utterance_s"], row["background_streams"]) for row in rows] == [
        (d, n) for d in DURATIONS for n in BACKGROUNDS]
    for row in rows:
        _ordered(row)
        assert row["n"] == REPEATS
        # the background streams really decoded beside the finals (and none ran when there were none)
        assert (row["background_decodes"] > 0) == (row["background_streams"] > 0)


def test_tts_rows_are_plausible(bench):
    (engine,) = bench["json"]["sections"]["tts"]["engines"]
    rows = {(row["text"], row["concurrent"]): row for row in engine["rows"]}
    for row in rows.values():
        _ordered(row)
        assert row["rtf"] > 0 and row["audio_s"] > 0
    assert rows["sentence_20_words", 1]["audio_s"] > 2 * rows["clause_4_words", 1]["audio_s"]
    # one engine serialises its requests: with two at once, one of them waits for the other
    assert rows["sentence_20_words", 2]["max_ms"] > rows["sentence_20_words", 1]["p50_ms"]


def test_smart_turn_row_is_plausible(bench):
    turn = bench["json"]["sections"].get("smart_turn")
    if turn is None:
        pytest.skip(f"{SMART_TURN} is missing: run `parley models cpu`")
    (row,) = turn["rows"]
    _ordered(row)
    assert 0 <= row["probability"] <= 1


def test_capacity_reads_the_bench_json(bench, capsys):
    out = bench["dir"] / "capacity.json"
    assert capacity.main([str(bench["dir"] / "bench.json"), "--gpu-hourly", "3.0", "--out", str(out)]) == 0
    (found,) = json.loads(out.read_text())
    rows = bench["json"]["sections"]["moshi"]["rows"]
    assert found["duplex"]["calls_per_gpu"] == capacity.duplex_calls(rows)
    assert len(found["cascade"]) == len(BACKGROUNDS)
    for level in found["cascade"]:
        assert level["ttfat_p50_ms"] == pytest.approx(sum(p50 for p50, _ in level["components_ms"].values()), abs=0.1)
        assert level["ttfat_p50_ms"] <= level["ttfat_p95_ms"]
    assert "proves the kit, not capacity" in capsys.readouterr().out


def _moshi_result(rows: list[dict], memory_gb: float | None = 80.0) -> dict:
    return {"environment": {"device_name": "test GPU", "device_memory_gb": memory_gb, "tiny": False},
            "sections": {"moshi": {"weights_gb": 16.0, "tick_ms": 80.0, "rows": rows}}}


def _row(batch: int, p95: float) -> dict:
    return {"batch": batch, "p50_ms": p95 * 0.9, "p95_ms": p95, "max_ms": p95 * 1.1, "state_mb_per_slot": 1638.4}


def test_capacity_picks_the_largest_batch_under_the_tick():
    rows = [_row(1, 20), _row(8, 40), _row(16, 70), _row(32, 79.9), _row(48, 80.0), _row(64, 60)]
    # 48 misses the tick; 64's pass above a miss is noise, not capacity
    assert capacity.duplex_calls(rows) == 32
    assert capacity.duplex_calls(list(reversed(rows))) == 32
    assert capacity.duplex_calls([_row(1, 95)]) == 0
    assert capacity.duplex_calls([_row(1, 20), {"batch": 8, "error": "out of GPU memory"}]) == 1


def test_capacity_memory_slots_and_cost():
    args = capacity.parse_args(["unused.json", "--gpu-hourly", "2.56"])
    found = capacity.capacity(_moshi_result([_row(1, 20), _row(32, 70), _row(64, 90)]), args)
    # (80 - 16) GB / 1.6 GB per slot = 40 slots; 32 calls at $2.56/h = 2.56 / (32 * 60) per minute
    assert found["duplex"]["memory_slots"] == 40
    assert found["duplex"]["calls_per_gpu"] == 32
    assert found["duplex"]["usd_per_conversation_minute"] == pytest.approx(2.56 / 1920, abs=1e-5)
    assert capacity.capacity(_moshi_result([_row(1, 20)], memory_gb=None), args)["duplex"]["memory_slots"] is None


def test_cascade_components_add_up():
    result = _moshi_result([_row(1, 20)])
    result["sections"]["asr"] = {"rows": [
        {"utterance_s": u, "background_streams": n, "p50_ms": 40.0 + n, "p95_ms": 60.0 + n} for u in (1, 3) for n in (0, 8)]}
    result["sections"]["tts"] = {"engines": [{"engine": "kokoro", "rows": [
        {"text": "clause_4_words", "concurrent": c, "p50_ms": 30.0 * c, "p95_ms": 50.0 * c} for c in (1, 8)]}]}
    result["sections"]["smart_turn"] = {"rows": [{"where": "cpu", "p50_ms": 12.0, "p95_ms": 15.0}]}
    args = Namespace(utterance_s=3.0, endpointing_ms=300.0, llm_ttft_ms=100.0, llm_ms_per_token=10.0,
                     first_clause_tokens=6, edge_ms=10.0)
    quiet, loaded = capacity.cascade(result, args)
    # 300 + 12 (end of turn) + 40 (ASR) + 100 (TTFT) + 60 (6 tokens) + 30 (TTS) + 10 (edge)
    assert quiet["ttfat_p50_ms"] == pytest.approx(552)
    assert quiet["ttfat_p95_ms"] == pytest.approx(300 + 15 + 60 + 100 + 60 + 50 + 10)
    assert (loaded["asr_background_streams"], loaded["tts_concurrent"]) == (8, 8)
    assert loaded["components_ms"]["tts_first_audio"] == (240.0, 400.0)
