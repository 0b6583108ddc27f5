"""Every module of the model stages imports on its own (no import cycle, whatever is imported
first), the interfaces and registries pull in no engine library, and every registered engine
kind names a class that exists."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from services.common import registry

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("asr", "llm", "tts", "moshi")
# Libraries an engine wraps: importing an interface or a registry must not load them.
HEAVY = ("torch", "transformers", "faster_whisper", "ctranslate2", "onnxruntime", "kokoro", "moshi", "vllm")


def stage_modules() -> list[str]:
    modules = []
    for stage in STAGES:
        for path in sorted((ROOT / "services" / stage).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


def run_python(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_each_stage_module_imports_first_with_no_cycle():
    # One interpreter; before each import every services.* module is dropped, so each module is
    # imported first, as a Serve replica or a test might (libraries stay cached: it is quick).
    code = f"""
import importlib, json, sys, traceback
failures = {{}}
for name in {stage_modules()!r}:
    for loaded in [m for m in sys.modules if m == "services" or m.startswith("services.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failures[name] = traceback.format_exc(limit=3)
print(json.dumps(failures))
"""
    failures = run_python(code)
    assert not failures, "\n".join(f"{name}:\n{error}" for name, error in failures.items())
    assert len(stage_modules()) > 30  # the walk found the packages


def test_interfaces_and_registries_load_no_engine_library():
    imports = "; ".join(f"import services.{stage}.engine, services.{stage}.engines, services.{stage}.config"
                        for stage in STAGES)
    code = f"""
import json, sys
{imports}
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & {set(HEAVY)!r})))
"""
    assert run_python(code) == []


@pytest.mark.parametrize("stage", STAGES)
def test_every_registered_kind_names_a_class(stage):
    import importlib

    table = importlib.import_module(f"services.{stage}.engines").ENGINES
    for kind, path in table.items():
        target = registry.import_object(path)
        assert callable(target), (kind, path)


def test_an_unknown_kind_is_refused_by_name():
    class Config:
        kind = "nope"

    with pytest.raises(ValueError, match="unknown TTS engine kind 'nope'; known kinds: a, b"):
        registry.load_engine({"b": "x:Y", "a": "x:Z"}, Config(), "TTS")
    with pytest.raises(ValueError, match="package.module:Class"):
        registry.import_object("services.common.registry")
    with pytest.raises(ImportError, match="has no attribute 'Missing'"):
        registry.import_object("services.common.registry:Missing")
