"""The tiny Moshi checkpoint loads through moshi's own loaders and streams full-duplex on CPU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip(
    "moshi.models.loaders",
    reason="moshi is not installed (install it with `pip install --no-deps moshi==0.2.13` plus its "
    "requirements, see the Makefile)",
)
import torch  # noqa: E402
from moshi.models.lm import LMGen  # noqa: E402

from services.moshi.loading import load_moshi  # noqa: E402

FRAME = 1920  # samples per 80 ms frame at 24 kHz


@pytest.fixture(scope="module")
def loaded(tiny_moshi: Path):
    return load_moshi(tiny_moshi, "cpu")


def _run_session(mimi, lm, gen_config: dict, batch: int, frames: int, seed: int = 0):
    """Stream `frames` frames of noise through Mimi + LMGen; per-frame outputs. (Step time is a
    benchmark: load/moshi_step.py, load/gpu_bench.py.)"""
    lm_gen = LMGen(lm, **gen_config)
    generator = torch.Generator().manual_seed(seed)
    outputs = []
    with torch.no_grad(), mimi.streaming(batch), lm_gen.streaming(batch):
        for _ in range(frames):
            pcm = 0.1 * torch.randn(batch, 1, FRAME, generator=generator)
            codes = mimi.encode(pcm)
            assert codes.shape == (batch, 8, 1)
            tokens = lm_gen.step(codes)
            wav = None if tokens is None else mimi.decode(tokens[:, 1:])
            outputs.append((tokens, wav))
    return outputs


def test_layout_and_config(tiny_moshi: Path, loaded):
    mimi, lm, tokenizer, info = loaded
    for name in ("config.json", "model.safetensors", "tokenizer-e351c8d8-checkpoint125.safetensors",
                 "tokenizer_spm_32k_3.model", "mimi_config.json"):
        assert (tiny_moshi / name).is_file(), name
    assert "mimi_config_name" not in json.loads((tiny_moshi / "config.json").read_text())
    assert info.mimi_config is not None  # the tiny Mimi, not moshi's built-in full-size one
    assert (lm.n_q, lm.dep_q, lm.card, lm.num_codebooks) == (16, 8, 2048, 17)
    assert lm.text_card <= tokenizer.get_piece_size()
    assert mimi.sample_rate == 24000 and mimi.frame_rate == 12.5 and mimi.frame_size == FRAME
    assert mimi.num_codebooks == 8
    assert not lm.training and not mimi.training


def test_streaming_session_batch_2(loaded):
    mimi, lm, tokenizer, info = loaded
    frames, batch = 10, 2
    outputs = _run_session(mimi, lm, info.lm_gen_config, batch, frames)
    delay = max(lm.delays)  # LMGen returns None until the delayed codebooks are complete
    assert all(tokens is None for tokens, _ in outputs[:delay])
    texts = []
    for tokens, wav in outputs[delay:]:
        assert tokens is not None and tokens.shape == (batch, 1 + lm.dep_q, 1)
        assert ((tokens[:, 1:] >= 0) & (tokens[:, 1:] < lm.card)).all()
        assert wav.shape == (batch, 1, FRAME)
        assert torch.isfinite(wav).all()
        text_ids = tokens[:, 0, 0].tolist()
        assert all(0 <= t < lm.text_card for t in text_ids)
        texts.append([tokenizer.id_to_piece(t) for t in text_ids])
        assert isinstance(tokenizer.decode(text_ids), str)
    assert len(texts) == frames - delay


def test_missing_dir_names_the_fix(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="parley models tiny"):
        load_moshi(tmp_path / "nope", "cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="parley models tiny"):
        load_moshi(tmp_path / "empty", "cpu")


def test_mimi_config_name_resolved_locally(tiny_moshi: Path, tmp_path: Path):
    """A config.json naming its Mimi config is read from the directory, never from the hub."""
    model_dir = tmp_path / "renamed"
    shutil.copytree(tiny_moshi, model_dir)
    (model_dir / "mimi_config.json").rename(model_dir / "my_mimi.json")
    config = json.loads((model_dir / "config.json").read_text())
    config["mimi_config_name"] = "my_mimi.json"
    (model_dir / "config.json").write_text(json.dumps(config))
    mimi, _, _, info = load_moshi(model_dir, "cpu")
    assert info.mimi_config["seanet"]["dimension"] == mimi.dimension


def test_legacy_moshiko_layout_without_config(tmp_path: Path):
    """A moshiko directory without config.json maps to moshi's Moshi-7B defaults, with no hub call."""
    from services.moshi.loading import checkpoint_info

    for name in ("model.safetensors", "tokenizer-e351c8d8-checkpoint125.safetensors",
                 "tokenizer_spm_32k_3.model"):
        (tmp_path / name).write_bytes(b"")
    info = checkpoint_info(tmp_path)
    assert info.lm_config is None and info.mimi_config is None
    assert info.moshi_weights == tmp_path / "model.safetensors"
    assert info.tokenizer == tmp_path / "tokenizer_spm_32k_3.model"


def test_a_copy_from_an_older_builder_is_rebuilt(tmp_path: Path):
    from services.models import ensure_tiny
    from services.moshi import tiny

    logs: list[str] = []
    ensure_tiny(tmp_path, ["moshi"], log=logs.append)
    marker = tmp_path / "moshi" / ".complete"
    assert marker.read_text().strip().endswith(f"version {tiny.VERSION}")
    ensure_tiny(tmp_path, ["moshi"], log=logs.append)
    assert "ready" in logs[-1]  # current: kept
    marker.write_text("built by `parley models tiny`\n")  # what builds before versions wrote
    ensure_tiny(tmp_path, ["moshi"], log=logs.append)
    assert any("building" in line for line in logs[-2:])
    assert marker.read_text().strip().endswith(f"version {tiny.VERSION}")


def test_different_audio_gets_different_codes(loaded):
    mimi, *_ = loaded
    generator = torch.Generator().manual_seed(3)
    audio = torch.stack([0.3 * torch.randn(1, 4 * FRAME, generator=generator),
                         0.5 * torch.sin(torch.arange(4 * FRAME) / 24_000 * 2 * torch.pi * 440)[None]])
    with torch.no_grad():
        codes = mimi.encode(audio)
    assert not torch.equal(codes[0], codes[1])
    assert len(set(codes[0, 0].tolist())) > 1  # codes change from frame to frame as well
