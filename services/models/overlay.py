"""Point a serve config at a model set: each model's `engine` settings replace its stage's.

An engine of the same kind is updated in place (its other settings, such as device or GPU memory
share, stay); an engine of another kind is replaced whole, since each kind's settings are typed
separately and a kind's keys are errors for another. Stages the set has no model for (moshi in
the CPU sets) keep what the config says. The end-of-turn model (stage "turn") is not a stage
engine: it becomes the edge's `turn_taking.end_of_turn` (kind and model path).
"""

from __future__ import annotations

import copy
from pathlib import Path

from services.models.manifest import ModelError, load_manifest


def set_engines(name: str, root: Path | str | None = None) -> dict[str, dict]:
    """Application name -> the engine settings a set gives it (model paths under `root`)."""
    model_set = load_manifest().get(name)
    base = Path(root or model_set.root)
    return {spec.stage: {**spec.engine, "model": str(base / model)} for model, spec in model_set.models.items()}


def apply_set(config: dict, name: str, root: Path | str | None = None) -> dict:
    """A copy of a parsed serve config whose stage engines point at the set's models."""
    config = copy.deepcopy(config)
    engines = set_engines(name, root)
    apps = {app["name"]: app for app in config.get("applications", [])}
    # A set without an end-of-turn model (the tiny one) ends turns on silence alone.
    _set_end_of_turn(apps.get("edge"), engines.get("turn", {"kind": "silence", "model": ""}))
    for stage, engine in engines.items():
        if stage == "turn":
            continue
        app = apps.get(stage)
        if app is None:
            continue  # a config without that stage (e.g. only the asr app)
        args = app["args"] = app.get("args") or {}
        current = args.get("engine") or {}
        if current.get("kind") == engine["kind"]:
            args["engine"] = {**current, **engine}
        else:
            args["engine"] = dict(engine)
    return config


def _set_end_of_turn(edge: dict | None, engine: dict) -> None:
    """The edge asks the set's end-of-turn model; its other end-of-turn settings stay."""
    if edge is None:
        return
    turn_taking = (edge.setdefault("args", {}) or {}).setdefault("turn_taking", {})
    turn_taking["end_of_turn"] = {**turn_taking.get("end_of_turn", {}), **engine}


def model_paths(config: dict) -> dict[str, str]:
    """Application name -> the local model path its engine loads (for an up-front existence check)."""
    paths = {}
    for app in config.get("applications", []):
        args = app.get("args") or {}
        model = (args.get("engine") or {}).get("model") or ((args.get("turn_taking") or {}).get("end_of_turn")
                                                            or {}).get("model")
        if isinstance(model, str):
            paths[app["name"]] = model
    return paths


def missing_models(config: dict, workdir: Path) -> list[str]:
    """Descriptions of model directories a config names that do not exist under `workdir`."""
    from services.common.config import is_local_path

    missing = []
    for app, model in model_paths(config).items():
        path = Path(model).expanduser()
        path = path if path.is_absolute() else workdir / path
        if is_local_path(model) and not path.exists():
            missing.append(f"{app}: {model}")
    return missing


def fetch_command_for(path: str) -> str:
    """The command that makes a missing model directory: the first set with that root that has a
    model of that name (cpu and cpu-fast share a root)."""
    for name, model_set in load_manifest().sets.items():
        root = model_set.root.rstrip("/") + "/"
        if path.startswith(root) and path[len(root):].split("/")[0] in model_set.models:
            if model_set.source == "hub":
                return f"parley models pull {name.removeprefix('hub-')}"
            return f"parley models {name}"
    return "point the config at a checkpoint directory (docs/models.md)"


__all__ = ["ModelError", "apply_set", "fetch_command_for", "missing_models", "model_paths", "set_engines"]
