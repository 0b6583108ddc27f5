"""Typed configuration: every stage's config is a pydantic model validated once, at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

Device = Literal["auto", "cpu", "cuda"]


class Config(BaseModel):
    """Base for Parley config models: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def resolve_device(device: Device) -> str:
    if device != "auto":
        return device
    import torch  # engines that call this already depend on torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def is_local_path(value: str) -> bool:
    """A model string names a local directory rather than a hub id (`org/name`) or a size name.

    Paths start with / . ~, exist already, or have two or more separators (models/tiny/llm).
    """
    if value.startswith(("/", "./", "../", "~", "\\")) or Path(value).expanduser().exists():
        return True
    return value.count("/") >= 2 or "\\" in value


def require_path(value: str | Path, what: str) -> Path:
    """A local model path that must exist; the error names the fix."""
    path = Path(value).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"{what} not found at {path}. Build tiny offline models with `parley models tiny`, "
            "or point the config at a downloaded checkpoint."
        )
    return path


def model_dump_public(config: BaseModel) -> dict[str, Any]:
    """Config as a dict for logs, with secrets masked."""
    data = config.model_dump(mode="json")
    for key in list(data):
        if any(word in key for word in ("key", "token", "secret", "password")) and data[key]:
            data[key] = "***"
    return data
