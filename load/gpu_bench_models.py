"""The models load/gpu_bench.py runs, in their engines' real on-disk formats, built where it runs.

Full size (the default): the production architectures with random weights, which cost what the
trained ones cost when generation lengths are fixed. Whisper large-v3-turbo's dimensions are built
by the tiny Whisper builder (services/asr/tiny.py) and converted to CTranslate2 float16; Kokoro-82M's
own config by the tiny Kokoro builder (services/tts/tiny.py), with its duration predictor pinned to
a speaking rate (random weights would give ~0.6 s per phoneme, so 8x too much audio per word);
Moshi 7B and the real Mimi by moshi's own loaders (load/moshi_step.py). `--tiny`: the tiny models of
`parley models tiny`. Nothing is downloaded: a bare GPU machine builds them in a minute or two.
"""

from __future__ import annotations

import math
from pathlib import Path

from services.models.tiny import ensure_tiny

# openai/whisper-large-v3-turbo: the large-v3 encoder (32 layers) with a 4-layer decoder, 128 mels.
# The vocabulary is the tiny builder's (the 80-mel layout, one language token fewer than large-v3):
# the cost of a decode does not depend on it.
WHISPER_TURBO_DIMS = dict(
    d_model=1280,
    encoder_layers=32,
    encoder_attention_heads=20,
    encoder_ffn_dim=5120,
    decoder_layers=4,
    decoder_attention_heads=20,
    decoder_ffn_dim=5120,
    max_source_positions=1500,
    max_target_positions=448,
)
WHISPER_TURBO_MELS = 128

# Kokoro at ~13 phonemes per second, an ordinary English speaking rate (40 duration frames per second).
KOKORO_FRAMES_PER_PHONEME = 3

_COMPLETE = ".complete"


def kokoro_82m_config() -> dict:
    """hexgrad/Kokoro-82M's config.json (the real vocabulary and dimensions)."""
    from services.tts.tiny import tiny_config

    config = tiny_config()
    config["istftnet"].update(upsample_kernel_sizes=[20, 12], upsample_rates=[10, 6], gen_istft_hop_size=5,
                              gen_istft_n_fft=20, resblock_dilation_sizes=[[1, 3, 5]] * 3,
                              resblock_kernel_sizes=[3, 7, 11])
    config.update(max_dur=50, n_layer=3)
    config["plbert"].update(hidden_size=768, num_attention_heads=12, intermediate_size=2048, num_hidden_layers=12)
    return config


def pin_kokoro_durations(model_dir: Path, frames_per_phoneme: int = KOKORO_FRAMES_PER_PHONEME) -> None:
    """Make the duration predictor say `frames_per_phoneme` for every phoneme: KModel sums
    sigmoid(duration_proj(x)) over max_dur outputs, so a zero weight and a bias b give
    max_dur * sigmoid(b) frames."""
    import json

    import torch

    max_dur = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))["max_dur"]
    weights_path = next(model_dir.glob("*.pth"))
    weights = torch.load(weights_path, map_location="cpu", weights_only=True)
    share = frames_per_phoneme / max_dur
    for name, tensor in weights["predictor"].items():
        if name.startswith("duration_proj.") and name.endswith(".weight"):
            tensor.zero_()
        elif name.startswith("duration_proj.") and name.endswith(".bias"):
            tensor.fill_(math.log(share / (1 - share)))
    torch.save(weights, weights_path)


def _built(out: Path, build) -> Path:
    if not (out / _COMPLETE).exists():
        out.mkdir(parents=True, exist_ok=True)
        build(out)
        (out / _COMPLETE).write_text("built by load/gpu_bench_models.py\n")
    return out


def whisper_model(root: Path, tiny: bool) -> Path:
    """A CTranslate2 Whisper directory: the tiny one, or large-v3-turbo's architecture in float16."""
    if tiny:
        return ensure_tiny(root / "tiny", ["whisper"], log=lambda *_: None) / "whisper"
    from services.asr import tiny as whisper_tiny

    return _built(root / "bench" / "whisper-large-v3-turbo-random", lambda out: whisper_tiny.build(
        out, dims=WHISPER_TURBO_DIMS, n_mels=WHISPER_TURBO_MELS, quantization="float16"))


def kokoro_model(root: Path, tiny: bool) -> Path:
    """A Kokoro directory in hexgrad/Kokoro-82M's layout: the tiny one, or Kokoro-82M's architecture."""
    if tiny:
        return ensure_tiny(root / "tiny", ["kokoro"], log=lambda *_: None) / "kokoro"
    from services.tts import tiny as kokoro_tiny

    def build(out: Path) -> None:
        kokoro_tiny.build(out, config=kokoro_82m_config())
        pin_kokoro_durations(out)

    return _built(root / "bench" / "kokoro-82m-random", build)


def moshi_checkpoint(root: Path) -> Path:
    """The tiny Moshi checkpoint: the model itself with --tiny, else only its text tokenizer is read."""
    return ensure_tiny(root / "tiny", ["moshi"], log=lambda *_: None) / "moshi"
