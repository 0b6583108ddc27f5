"""Model resolution and the tiny random-weight models used offline (tests, CI, the embedded default).

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
        if (out / _COMPLETE).exists() and not force:
            log(f"  {name:8s} ready at {out}")
            continue
        log(f"  {name:8s} building at {out} ...")
        started = time.perf_counter()
        out.mkdir(parents=True, exist_ok=True)
        importlib.import_module(TINY_BUILDERS[name]).build(out)
        (out / _COMPLETE).write_text("built by `parley models tiny`\n")
        log(f"  {name:8s} built in {time.perf_counter() - started:.1f}s")
    return root


if __name__ == "__main__":
    ensure_tiny(names=sys.argv[1:] or None)
