"""A tiny random-weight Kokoro model in hexgrad/Kokoro-82M's on-disk layout, built offline.

The directory holds what the real repository holds, by the same names:

    config.json          the real keys and the real phoneme vocabulary (114 symbols, ids 1..177),
                         smaller dims
    kokoro-v1_0.pth      {"bert": ..., "bert_encoder": ..., "predictor": ..., "text_encoder": ...,
                          "decoder": ...}: one state dict per KModel submodule, as in the real file
    voices/<name>.pt     one voice pack per voice: float32 [510, 1, 256], the style vector for an
                         utterance of n phonemes being pack[n - 1]

The weights come from a KModel built through kokoro's own constructor with a fixed seed, so the
engine loads them through exactly the path a real checkpoint takes and every build is identical.

Not everything can shrink: kokoro hard-codes parts of the architecture. `style_dim` must be 128
(KModel slices the 256-wide voice vector at 128), `hidden_dim` must be 512 (the decoder's
`asr_res` conv takes 512 channels) and the iSTFTNet generator's `upsample_initial_channel` must be
512 (the decoder's last block emits 512 channels); the decoder's 1024-channel blocks are fixed
too. What does shrink: the PL-BERT (64 wide, 2 layers), the depth of the duration/text encoders
(1 layer) and the generator's work: one residual-block kernel instead of three, and upsample
rates [2, 6] with an iSTFT hop of 25 (n_fft 100) instead of [10, 6] with hop 5, so its
convolutions run at 160 and 960 frames per second instead of 800 and 4800 (about 3x less compute
in all). The product rates x hop stays 300 per decoder frame: 600 samples per duration frame, i.e.
24 kHz audio at Kokoro's 40 duration frames per second (the sine source is fixed at 24 kHz).
Upsample rates must be even, with kernels twice the rate, for the stages' lengths to line up.
`max_dur` is 6 instead of 50: random weights predict about half of max_dur frames per phoneme, so
6 gives ~75 ms phonemes (50 would give ~0.6 s phonemes).

Random weights speak noise; the model exists to exercise loading, G2P, voices and the
synthesis loop.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

SEED = 0
REPO_ID = "hexgrad/Kokoro-82M"
WEIGHTS_NAME = "kokoro-v1_0.pth"
VOICES = ("af_heart", "am_adam")
VOICE_PACK_LEN = 510  # one style vector per phoneme count 1..510
STYLE_DIM = 128  # fixed by kokoro: voice vectors are 2 * 128 wide

# Kokoro-82M's phoneme vocabulary (id 0 is the pad/boundary token and has no symbol).
VOCAB = {
    ";": 1, ":": 2, ",": 3, ".": 4, "!": 5, "?": 6, "—": 9, "…": 10, '"': 11, "(": 12, ")": 13,
    "“": 14, "”": 15, " ": 16, "\u0303": 17, "ʣ": 18, "ʥ": 19, "ʦ": 20, "ʨ": 21, "ᵝ": 22,
    "\uab67": 23, "A": 24, "I": 25, "O": 31, "Q": 33, "S": 35, "T": 36, "W": 39, "Y": 41, "ᵊ": 42,
    "a": 43, "b": 44, "c": 45, "d": 46, "e": 47, "f": 48, "h": 50, "i": 51, "j": 52, "k": 53,
    "l": 54, "m": 55, "n": 56, "o": 57, "p": 58, "q": 59, "r": 60, "s": 61, "t": 62, "u": 63,
    "v": 64, "w": 65, "x": 66, "y": 67, "z": 68, "ɑ": 69, "ɐ": 70, "ɒ": 71, "æ": 72, "β": 75,
    "ɔ": 76, "ɕ": 77, "ç": 78, "ɖ": 80, "ð": 81, "ʤ": 82, "ə": 83, "ɚ": 85, "ɛ": 86, "ɜ": 87,
    "ɟ": 90, "ɡ": 92, "ɥ": 99, "ɨ": 101, "ɪ": 102, "ʝ": 103, "ɯ": 110, "ɰ": 111, "ŋ": 112,
    "ɳ": 113, "ɲ": 114, "ɴ": 115, "ø": 116, "ɸ": 118, "θ": 119, "œ": 120, "ɹ": 123, "ɾ": 125,
    "ɻ": 126, "ʁ": 128, "ɽ": 129, "ʂ": 130, "ʃ": 131, "ʈ": 132, "ʧ": 133, "ʊ": 135, "ʋ": 136,
    "ʌ": 138, "ɣ": 139, "ɤ": 140, "χ": 142, "ʎ": 143, "ʒ": 147, "ʔ": 148, "ˈ": 156, "ˌ": 157,
    "ː": 158, "ʰ": 162, "ʲ": 164, "↓": 169, "→": 171, "↗": 172, "↘": 173, "ᵻ": 177,
}


def tiny_config() -> dict:
    """config.json: Kokoro-82M's keys; the comments give the real values where they differ."""
    return {
        "istftnet": {
            "upsample_kernel_sizes": [4, 12],  # real: [20, 12]
            "upsample_rates": [2, 6],  # real: [10, 6]
            "gen_istft_hop_size": 25,  # real: 5
            "gen_istft_n_fft": 100,  # real: 20
            "resblock_dilation_sizes": [[1, 3, 5]],  # real: three of these
            "resblock_kernel_sizes": [3],  # real: [3, 7, 11]
            "upsample_initial_channel": 512,
        },
        "dim_in": 64,
        "dropout": 0.2,
        "hidden_dim": 512,
        "max_conv_dim": 512,
        "max_dur": 6,  # real: 50
        "multispeaker": True,
        "n_layer": 1,  # real: 3
        "n_mels": 80,
        "n_token": 178,
        "style_dim": STYLE_DIM,
        "text_encoder_kernel_size": 5,
        "plbert": {
            "hidden_size": 64,  # real: 768
            "num_attention_heads": 2,  # real: 12
            "intermediate_size": 128,  # real: 2048
            "max_position_embeddings": 512,  # the context: 510 phonemes plus two boundary tokens
            "num_hidden_layers": 2,  # real: 12
            "dropout": 0.1,
        },
        "vocab": dict(VOCAB),
    }


def build(out_dir: Path, config: dict | None = None) -> None:
    """Write the model to out_dir; `config` gives another architecture in the same layout (the GPU
    benchmark builds Kokoro-82M's own this way)."""
    import torch
    from kokoro import KModel

    out_dir = Path(out_dir)
    (out_dir / "voices").mkdir(parents=True, exist_ok=True)
    config = config or tiny_config()
    (out_dir / "config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n",
                                         encoding="utf-8")

    with torch.random.fork_rng(devices=[]), tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(SEED)
        # An empty state dict: KModel's constructor keeps its seeded random initialisation.
        empty = Path(tmp) / "empty.pth"
        torch.save({}, empty)
        model = KModel(repo_id=REPO_ID, config=config, model=str(empty))
    names = ("bert", "bert_encoder", "predictor", "text_encoder", "decoder")
    weights = {name: getattr(model, name).state_dict() for name in names}
    torch.save(weights, out_dir / WEIGHTS_NAME)

    generator = torch.Generator().manual_seed(SEED + 1)
    for name in VOICES:
        pack = 0.3 * torch.randn(VOICE_PACK_LEN, 1, 2 * STYLE_DIM, generator=generator)
        torch.save(pack, out_dir / "voices" / f"{name}.pt")
