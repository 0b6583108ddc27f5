"""The tiny random-weight models used offline (tests, CI, and the fallback when no registry answers).

Each stage's `tiny.py` builds a small model in its engine's real on-disk format, so the engines
load it through exactly the code path a real checkpoint takes. Random weights speak and write
gibberish: they exercise the system, not the models.
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

# name -> module whose build(out_dir: Path) writes the model into out_dir
TINY_BUILDERS = {
    "whisper": "services.asr.tiny",
    "llm": "services.llm.tiny",
    "kokoro": "services.tts.tiny",
    "moshi": "services.moshi.tiny",
}
DEFAULT_TINY_ROOT = Path("models/tiny")
_COMPLETE = ".complete"


def ensure_tiny(root: Path = DEFAULT_TINY_ROOT, names: list[str] | None = None, *, force: bool = False,
                log=print) -> Path:
    """Build the named tiny models under root (all of them by default), skipping finished ones."""
    root = Path(root)
    for name in names or list(TINY_BUILDERS):
        if name not in TINY_BUILDERS:
            raise ValueError(f"unknown tiny model {name!r}; choose from {sorted(TINY_BUILDERS)}")
        out = root / name
        builder = importlib.import_module(TINY_BUILDERS[name])
        version = getattr(builder, "VERSION", 1)  # a builder bumps it when its output changes
        if _built_version(out) == version and not force:
            log(f"  {name:8s} ready at {out}")
            continue
        log(f"  {name:8s} building at {out} ...")
        started = time.perf_counter()
        out.mkdir(parents=True, exist_ok=True)
        builder.build(out)
        (out / _COMPLETE).write_text(f"built by `parley models tiny`, version {version}\n")
        log(f"  {name:8s} built in {time.perf_counter() - started:.1f}s")
    return root


def _built_version(out: Path) -> int | None:
    """The builder version a finished model was built with (1 before versions were recorded)."""
    marker = out / _COMPLETE
    if not marker.exists():
        return None
    _, _, version = marker.read_text().strip().rpartition("version ")
    return int(version) if version.isdigit() else 1


if __name__ == "__main__":
    ensure_tiny(names=sys.argv[1:] or None)
