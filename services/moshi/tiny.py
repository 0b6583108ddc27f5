"""A tiny random-weight Moshi checkpoint, built offline in the layout of `kyutai/moshiko-pytorch-bf16`.

`build(out_dir)` writes, deterministically (fixed seeds, single-threaded tokenizer training):

    config.json                                   LM kwargs + file names, read by moshi's
                                                  `CheckpointInfo.from_hf_repo(config_path=...)`
    model.safetensors                             LM weights (bf16, like moshiko-pytorch-bf16)
    tokenizer-e351c8d8-checkpoint125.safetensors  Mimi weights (float32)
    tokenizer_spm_32k_3.model                     sentencepiece text tokenizer (trained here)
    mimi_config.json                              the tiny Mimi architecture (see below)

The LM keeps moshiko's stream layout (n_q=16, dep_q=8, card=2048, the same 17 delays), so the
serving code sees exactly the token shapes of the real model; only the widths and depths shrink.

Custom Mimi config. `loaders.get_mimi(filename, mimi_config)` builds any architecture from a
dict (`seanet` / `quantizer` / `transformer` / `sample_rate` / `channels` / `frame_rate`); without
one it uses moshi's built-in full-size config. `CheckpointInfo.from_hf_repo` takes that dict from
a JSON file, either named by the `mimi_config_name` key of config.json or given as the
`mimi_config_path` argument. The config key is resolved through `hf_get(name, hf_repo)`, i.e. a
hub download, so it cannot be used offline; the supported local route is the explicit argument.
Hence the tiny Mimi config lives in the sidecar file `mimi_config.json` (no `mimi_config_name`
key in config.json), and `services.moshi.loading.load_moshi` passes it as
`mimi_config_path=<dir>/mimi_config.json` when the file is present. A real moshiko directory has
no such file and gets the built-in full-size Mimi config.

The tiny Mimi keeps 24 kHz audio, the 960-sample SEANet hop (ratios 8*6*5*4) downsampled x2 to
12.5 Hz (1920-sample frames) and 2048-entry codebooks; it has 8 codebooks in total, which is what
the LM uses (`CheckpointInfo.get_mimi` sets max(dep_q, n_q - dep_q) = 8). Codebook centroids are
drawn from the latents the random encoder produces for calibration audio (noise, tones, chirps),
so that different audio gives different codes.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: torch is heavy
    import torch

MOSHI_NAME = "model.safetensors"
MIMI_NAME = "tokenizer-e351c8d8-checkpoint125.safetensors"
TOKENIZER_NAME = "tokenizer_spm_32k_3.model"
MIMI_CONFIG_NAME = "mimi_config.json"  # sidecar; deliberately not referenced from config.json

SEED = 1234
# Bumped when the built files change, so `parley models tiny` rebuilds older copies.
# 2: Mimi codebooks fitted to the random encoder's latents (with version 1 every frame got the same codes).
VERSION = 2
TEXT_VOCAB = 512  # sentencepiece vocab size; the LM's text_card equals it

_MIMI_DIM = 64
TINY_MIMI_CONFIG = {
    "sample_rate": 24000,
    "channels": 1,
    "frame_rate": 12.5,
    "seanet": {
        "channels": 1,
        "dimension": _MIMI_DIM,
        "causal": True,
        "n_filters": 4,
        "n_residual_layers": 1,
        "activation": "ELU",
        "compress": 2,
        "dilation_base": 2,
        "disable_norm_outer_blocks": 0,
        "kernel_size": 7,
        "residual_kernel_size": 3,
        "last_kernel_size": 3,
        "norm": "none",
        "pad_mode": "constant",
        "ratios": [8, 6, 5, 4],
        "true_skip": True,
    },
    "quantizer": {
        "dimension": 32,
        "n_q": 8,
        "bins": 2048,
        "input_dimension": _MIMI_DIM,
        "output_dimension": _MIMI_DIM,
    },
    "transformer": {
        "d_model": _MIMI_DIM,
        "num_heads": 4,
        "num_layers": 1,
        "causal": True,
        "layer_scale": 0.01,
        "context": 250,
        "conv_layout": True,
        "max_period": 10000,
        "gating": "none",
        "norm": "layer_norm",
        "positional_embedding": "rope",
        "dim_feedforward": 128,
        "input_dimension": _MIMI_DIM,
        "output_dimensions": [_MIMI_DIM],
    },
}

_LM_DIM = 64
_DEP_DIM = 64
TINY_LM_KWARGS = {
    "dim": _LM_DIM,
    "text_card": TEXT_VOCAB,
    "existing_text_padding_id": 3,
    "n_q": 16,
    "dep_q": 8,
    "card": 2048,
    "num_heads": 4,
    "num_layers": 2,
    "hidden_scale": 4.125,
    "causal": True,
    "layer_scale": None,
    "context": 3000,
    "max_period": 10000,
    "gating": "silu",
    "norm": "rms_norm_f32",
    "positional_embedding": "rope",
    "depformer_dim": _DEP_DIM,
    "depformer_dim_feedforward": int(4.125 * _DEP_DIM),
    "depformer_num_heads": 4,
    "depformer_num_layers": 2,
    "depformer_layer_scale": None,
    "depformer_multi_linear": True,
    "depformer_context": 8,
    "depformer_max_period": 10000,
    "depformer_gating": "silu",
    "depformer_pos_emb": "none",
    "depformer_weights_per_step": True,
    "delays": [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1],
}

# Training text for the tokenizer: enough for a few hundred BPE merges; byte fallback covers the rest.
_CORPUS = """\
Hello, how are you doing today? I am doing well, thank you for asking.
What would you like to talk about? We could talk about the weather, music, or travel.
The weather is lovely this morning, with a clear sky and a light breeze from the sea.
I have been listening to a lot of jazz lately, especially piano trios and old recordings.
Have you ever been to Paris? The museums are wonderful and the bread is even better.
Tell me a story about a dragon who wanted to learn how to cook dinner for his friends.
Once upon a time there was a small village at the foot of a tall and quiet mountain.
Every evening the children gathered around the fire to hear the old woman tell stories.
Sure, I can help you with that. Let me think about it for a second.
That is a great question. The answer depends on what you mean by a good day.
Could you repeat that please? I did not quite catch the last part of your sentence.
Thank you so much, this has been a really nice conversation. Have a good night!
Numbers like one, two, three, four, five, six, seven, eight, nine and ten are easy.
The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun.
Voice agents listen, think and speak in real time, one frame every eighty milliseconds.
"""


def _train_tokenizer(path: Path) -> int:
    import sentencepiece as spm

    lines = [line for line in _CORPUS.splitlines() if line.strip()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines * 4),
        model_writer=model,
        model_type="bpe",
        vocab_size=TEXT_VOCAB,
        # Moshi's text ids: 0 and 3 are the padding tokens it never prints.
        unk_id=0, bos_id=1, eos_id=2, pad_id=3,
        byte_fallback=True,
        character_coverage=1.0,
        hard_vocab_limit=True,
        num_threads=1,
        minloglevel=2,
    )
    path.write_bytes(model.getvalue())
    size = spm.SentencePieceProcessor(model_file=str(path)).get_piece_size()
    if size != TEXT_VOCAB:
        raise RuntimeError(f"tiny tokenizer has {size} pieces, expected {TEXT_VOCAB}")
    return size


def _calibration_audio(generator: torch.Generator) -> torch.Tensor:
    """Two seconds each of noise, tones and chirps at several levels: [N, 1, samples] at 24 kHz."""
    import torch

    t = torch.arange(2 * 24_000) / 24_000
    signals = [torch.randn(t.shape, generator=generator) * level for level in (0.01, 0.1, 0.5)]
    signals += [level * torch.sin(2 * torch.pi * freq * t) for freq in (110, 440, 1500, 5000) for level in (0.1, 0.8)]
    signals += [0.5 * torch.sin(2 * torch.pi * (100 + 2000 * t) * t), torch.zeros_like(t)]
    return torch.stack(signals)[:, None, :]


def _fit_codebooks(mimi) -> None:
    """Centroids drawn from the latents the random encoder actually produces, layer by layer of each
    residual quantizer (the way a codebook is initialised from data before training). With
    centroids from a standard normal instead, the random encoder's latents, which vary little
    with the input, all land on one centroid and every frame gets the same codes."""
    import torch

    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        latent = mimi._encode_to_unquantized_latent(_calibration_audio(generator))  # [N, D, frames]
        for rvq in (mimi.quantizer.rvq_first, mimi.quantizer.rvq_rest):
            residual = rvq.input_proj(latent)
            for layer in rvq.vq.layers:
                codebook = layer._codebook
                vectors = layer.project_in(residual.transpose(1, 2)).reshape(-1, codebook.embedding_sum.shape[1])
                picks = torch.randint(len(vectors), (codebook.embedding_sum.shape[0],), generator=generator)
                jitter = torch.randn(codebook.embedding_sum.shape, generator=generator) * vectors.std(dim=0) * 0.1
                codebook.embedding_sum.copy_(vectors[picks] + jitter)
                codebook.cluster_usage.fill_(1.0)
                codebook._initialized.fill_(1.0)
                codebook._embedding = None  # drop the cached centroids
                residual = residual - layer.decode(layer.encode(residual))


def build(out_dir: Path) -> None:
    import torch
    from moshi.models import loaders
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    vocab = _train_tokenizer(out_dir / TOKENIZER_NAME)
    lm_kwargs = dict(TINY_LM_KWARGS, text_card=vocab)

    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(SEED)
        mimi = loaders.get_mimi(None, TINY_MIMI_CONFIG, device="cpu", num_codebooks=8)
        _fit_codebooks(mimi)
        mimi_state = {k: v.detach().contiguous().clone() for k, v in mimi.state_dict().items()}

        torch.manual_seed(SEED + 1)
        lm = loaders.get_moshi_lm(None, lm_kwargs=lm_kwargs, device="cpu", dtype=torch.float32)
        lm_state = {k: v.detach().to(torch.bfloat16).contiguous().clone() if v.dtype.is_floating_point
                    else v.detach().contiguous().clone() for k, v in lm.state_dict().items()}
    finally:
        torch.random.set_rng_state(generator_state)

    save_file(mimi_state, str(out_dir / MIMI_NAME))
    save_file(lm_state, str(out_dir / MOSHI_NAME))
    (out_dir / MIMI_CONFIG_NAME).write_text(json.dumps(TINY_MIMI_CONFIG, indent=2) + "\n")
    config = {
        "moshi_name": MOSHI_NAME,
        "mimi_name": MIMI_NAME,
        "tokenizer_name": TOKENIZER_NAME,
        "model_type": "moshi",
        "model_id": {"sig": "parley-tiny-random", "epoch": 0},
        "lm_gen_config": {"temp": 0.8, "temp_text": 0.7, "top_k": 250, "top_k_text": 25},
        **lm_kwargs,
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")


if __name__ == "__main__":
    import sys

    build(Path(sys.argv[1] if len(sys.argv) > 1 else "models/tiny/moshi"))
