"""Load a Moshi checkpoint (tiny or real) from a local directory through moshi's own loaders.

Supported layouts, both fully offline:

* the tiny model from `parley models tiny` (`services.moshi.tiny`): config.json + a sidecar
  `mimi_config.json` describing the tiny Mimi architecture;
* a local copy of `kyutai/moshiko-pytorch-bf16` (or a sibling repo): `model.safetensors`,
  `tokenizer-e351c8d8-checkpoint125.safetensors`, `tokenizer_spm_32k_3.model`, with or without
  config.json (without it moshi assumes the Moshi 7B config, as its legacy-repo path does).

Every file is handed to `CheckpointInfo.from_hf_repo` as a `Path`, which moshi never resolves
through the hub; file names given in config.json (`moshi_name`, `mimi_name`, `tokenizer_name`,
`mimi_config_name`, `lora_name`) are resolved inside the directory here for the same reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # moshi is imported lazily: it is an optional, heavy dependency
    import sentencepiece
    import torch
    from moshi.models.compression import MimiModel
    from moshi.models.lm import LMModel
    from moshi.models.loaders import CheckpointInfo

MIMI_CONFIG_NAME = "mimi_config.json"  # sidecar written by services.moshi.tiny

_DEFAULT_NAMES = {
    "moshi_name": "model.safetensors",
    "mimi_name": "tokenizer-e351c8d8-checkpoint125.safetensors",
    "tokenizer_name": "tokenizer_spm_32k_3.model",
}


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(
            f"Moshi {what} not found at {path}. Build the tiny offline models with "
            "`parley models tiny`, or point the config at a local copy of kyutai/moshiko-pytorch-bf16."
        )
    return path


def checkpoint_info(model_dir: Path) -> CheckpointInfo:
    """moshi's CheckpointInfo for a local checkpoint directory, without touching the hub."""
    from moshi.models import loaders

    model_dir = Path(model_dir).expanduser()
    if not model_dir.is_dir():
        raise FileNotFoundError(
            f"Moshi model directory not found at {model_dir}. Build the tiny offline models with "
            "`parley models tiny`, or point the config at a local copy of kyutai/moshiko-pytorch-bf16."
        )
    config_path = model_dir / "config.json"
    raw: dict[str, Any] = json.loads(config_path.read_text()) if config_path.is_file() else {}
    names = {key: raw.get(key, default) for key, default in _DEFAULT_NAMES.items()}
    moshi_weights = _require(model_dir / names["moshi_name"], "LM weights")
    mimi_weights = _require(model_dir / names["mimi_name"], "Mimi weights")
    tokenizer = _require(model_dir / names["tokenizer_name"], "text tokenizer")

    if not config_path.is_file():
        # Legacy layout: what from_hf_repo does when a repo has no config.json (Moshi 7B defaults),
        # minus the hub lookup for config.json.
        return loaders.CheckpointInfo(moshi_weights, mimi_weights, tokenizer)

    mimi_config_path = None
    if raw.get("mimi_config_name"):
        mimi_config_path = _require(model_dir / raw["mimi_config_name"], "Mimi config")
    elif (model_dir / MIMI_CONFIG_NAME).is_file():
        mimi_config_path = model_dir / MIMI_CONFIG_NAME
    lora_weights = _require(model_dir / raw["lora_name"], "LoRA weights") if raw.get("lora_name") else None

    return loaders.CheckpointInfo.from_hf_repo(
        str(model_dir),  # never used: every file below is a Path
        moshi_weights=moshi_weights,
        mimi_weights=mimi_weights,
        tokenizer=tokenizer,
        config_path=config_path,
        mimi_config_path=mimi_config_path,
        lora_weights=lora_weights,
    )


def load_moshi(
    model_dir: Path, device: str, *, dtype: torch.dtype | None = None
) -> tuple[MimiModel, LMModel, sentencepiece.SentencePieceProcessor, CheckpointInfo]:
    """(mimi, lm, text_tokenizer, checkpoint_info) for the checkpoint in model_dir.

    The LM runs in bfloat16 on CUDA and float32 on CPU unless dtype says otherwise; Mimi stays in
    float32 (as moshi's loader builds it). Both are in eval mode; wrap them in `LMGen` and use
    `.streaming(batch_size)` for serving.
    """
    import torch

    info = checkpoint_info(model_dir)
    if dtype is None:
        dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    mimi = info.get_mimi(device=device)
    lm = info.get_moshi(device=device, dtype=dtype)
    text_tokenizer = info.get_text_tokenizer()
    if text_tokenizer.get_piece_size() < lm.text_card:
        raise ValueError(
            f"text tokenizer {info.tokenizer} has {text_tokenizer.get_piece_size()} pieces, "
            f"fewer than the LM's text_card {lm.text_card}"
        )
    return mimi, lm, text_tokenizer, info
