"""Engine registries: each stage maps its engine kinds to import paths, imported on selection.

A stage's `engines/__init__.py` holds its table (kind -> "package.module:Class" or
"package.module:Class.factory"); the engine module, and the heavy library it wraps, is imported
only when a config selects that kind. The interface modules (`engine.py`) never import engines,
so engines can import their interface without a cycle.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any


def import_object(path: str) -> Any:
    """The object named by "package.module:Name" (or "package.module:Name.attribute")."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"an engine import path looks like 'package.module:Class', got {path!r}")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ImportError(f"{module_name} has no attribute {attribute!r} (engine import path {path!r})") from None
    return target


def load_engine(table: Mapping[str, str], config: Any, stage: str) -> Any:
    """Build the engine `config.kind` names in `table`, passing it the config. Kind "plugin" names
    any engine class by its import path (`config.path`): reference engines, out-of-tree engines."""
    path = config.path if config.kind == "plugin" else table.get(config.kind)
    if path is None:
        raise ValueError(f"unknown {stage} engine kind {config.kind!r}; known kinds: {', '.join(sorted(table))}")
    return import_object(path)(config)
