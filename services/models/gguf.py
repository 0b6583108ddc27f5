"""Turn a GGUF checkpoint into a plain transformers folder, once, at fetch time.

transformers reads GGUF (with the `gguf` package) by de-quantizing every tensor, which takes
~20 s for a 135M model; the engine then loads the saved fp32 folder in ~2 s. The tokenizer comes
from the same file, chat template included (taken from the GGUF metadata if transformers left
it out), so the LLM stage formats chats exactly as the model was trained to.
"""

from __future__ import annotations

import os
from pathlib import Path

from services.models.manifest import ModelError

CHAT_TEMPLATE_KEY = "tokenizer.chat_template"


def gguf_chat_template(path: Path) -> str | None:
    """The chat template stored in a GGUF file's metadata, if any."""
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get(CHAT_TEMPLATE_KEY)
    if field is None:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def gguf_to_hf(gguf: Path, out: Path) -> None:
    """De-quantize `gguf` and save model + tokenizer (with its chat template) to `out`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local file: nothing is looked up on the hub
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as error:
        raise ModelError(f"building the LLM folder needs transformers and torch ({error}); "
                         "install Parley's `llm` extra") from error
    try:  # transformers needs both for gguf_file=
        import accelerate  # noqa: F401
        import gguf as _gguf  # noqa: F401
    except ImportError as error:
        raise ModelError(f"reading a GGUF checkpoint needs `gguf` and `accelerate` ({error}); "
                         "install Parley's `llm` extra") from error

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not tokenizer.chat_template:
        tokenizer.chat_template = gguf_chat_template(gguf)
    if not tokenizer.chat_template:
        raise ModelError(f"{gguf} has no chat template: it is not an instruct model the LLM stage can use")
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The tensors are de-quantized already, but the model still counts as GGUF-quantized and
    # transformers refuses to save it: copy them into a plain model of the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
