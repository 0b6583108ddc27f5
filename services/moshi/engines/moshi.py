"""Kyutai Moshi (Mimi codec + temporal/depth transformers) as a batched duplex engine.

One `LMGen` and one Mimi are kept in streaming mode for `slots` conversations at once. Every
step encodes the slots' input frames with Mimi, runs one LM step (which samples the text token
and, through the depth transformer, the 8 audio codebooks) and decodes the audio codes, all as
one batch. moshi's streaming modules carry a per-row execution mask and a per-row reset, which
is what makes slots independent:

- `set_exec_mask(active)`: rows of inactive slots are computed but their streaming state (conv
  buffers, KV caches, LM offsets and token cache) does not move, so a free slot costs compute
  but never state.
- `reset_streaming(mask)`: clears one row's state (offsets to zero, KV cache positions
  invalidated, conv buffers zeroed), so a reused slot starts like a fresh stream.

LMGen runs with `support_out_of_sync=True`: it then returns tokens every step for every row and
marks rows still inside their first `max(delays)` steps with `ungenerated_token_id`. Those rows
get silence out (and code 0 into the decoder, the same for every conversation, so a slot's output
still depends only on its own input).
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from typing import TYPE_CHECKING

import numpy as np
import torch

from services.common.config import require_path, resolve_device
from services.moshi.config import MoshiEngineConfig
from services.moshi.engine import FRAME_SAMPLES, SAMPLE_RATE, DuplexEngine, StepResult
from services.moshi.loading import load_moshi

if TYPE_CHECKING:
    import sentencepiece
    from moshi.models.compression import MimiModel
    from moshi.models.lm import LMModel

logger = logging.getLogger("ray.serve")

# Moshi's text padding tokens: the model emits them between words; they are never printed.
_TEXT_PADDING_IDS = (0, 3)


class MoshiEngine(DuplexEngine):
    def __init__(self, config: MoshiEngineConfig, mimi: MimiModel, lm: LMModel,
                 tokenizer: sentencepiece.SentencePieceProcessor):
        """Serve `config.slots` conversations with models already built (see `load`)."""
        from moshi.models.lm import LMGen

        if mimi.sample_rate != SAMPLE_RATE or mimi.frame_size != FRAME_SAMPLES:
            raise ValueError(f"Mimi runs at {mimi.sample_rate} Hz with {mimi.frame_size}-sample frames; "
                             f"this engine serves {SAMPLE_RATE} Hz, {FRAME_SAMPLES}-sample frames")
        self.slots = config.slots
        self.mimi, self.lm, self.tokenizer = mimi, lm, tokenizer
        self.device = next(lm.parameters()).device
        self.lm_gen = LMGen(lm, use_sampling=True, temp=config.audio_temperature, temp_text=config.text_temperature,
                            top_k=config.audio_top_k, top_k_text=config.text_top_k, support_out_of_sync=True)
        self._streams = ExitStack()
        self._streams.enter_context(mimi.streaming(self.slots))
        self._streams.enter_context(self.lm_gen.streaming(self.slots))
        self._exec_mask: torch.Tensor | None = None
        # Text ids the tokenizer cannot spell (a random-weight benchmark model) print nothing.
        self._pieces = [self._piece(i) for i in range(min(lm.text_card, tokenizer.get_piece_size()))]
        self._warm_up()
        logger.info("Moshi engine on %s with %d slots (LM %s, %d codebooks)", self.device, self.slots, lm.dtype,
                    mimi.num_codebooks)

    @classmethod
    def load(cls, config: MoshiEngineConfig) -> MoshiEngine:
        """The checkpoint in config.model, through moshi's own loaders."""
        torch.set_num_threads(config.torch_threads)
        if config.seed is not None:
            torch.manual_seed(config.seed)
        device = resolve_device(config.device)
        mimi, lm, tokenizer, _ = load_moshi(require_path(config.model, "Moshi model"), device)
        return cls(config, mimi, lm, tokenizer)

    @torch.no_grad()
    def step(self, frames: np.ndarray, active: np.ndarray) -> StepResult:
        if frames.shape != (self.slots, FRAME_SAMPLES):
            raise ValueError(f"expected frames of shape {(self.slots, FRAME_SAMPLES)}, got {frames.shape}")
        self._set_exec_mask(active)
        pcm = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32)).to(self.device)[:, None, :]
        codes = self.mimi.encode(pcm)
        tokens = self.lm_gen.step(codes)[:, :, 0]  # [slots, 1 + dep_q]
        spoke = (tokens >= 0).all(dim=1) & self._exec_mask
        audio_codes = torch.where(spoke[:, None], tokens[:, 1:], torch.zeros_like(tokens[:, 1:]))
        audio = self.mimi.decode(audio_codes[:, :, None])[:, 0, :]
        audio = torch.where(spoke[:, None], audio, torch.zeros_like(audio))
        spoke_np = spoke.cpu().numpy()
        text_ids = tokens[:, 0].cpu().tolist()
        text = [self._pieces[t] if ok and t not in _TEXT_PADDING_IDS and 0 <= t < len(self._pieces) else None
                for t, ok in zip(text_ids, spoke_np)]
        return StepResult(audio=audio.float().cpu().numpy(), spoke=spoke_np, text=text)

    def reset_slot(self, slot: int) -> None:
        mask = torch.zeros(self.slots, dtype=torch.bool, device=self.device)
        mask[slot] = True
        self.mimi.reset_streaming(mask)
        self.lm_gen.reset_streaming(mask)
        self._exec_mask = None  # a reset marks the row as executing: set the mask again next step

    def _warm_up(self) -> None:
        """One step with every slot idle: moshi compiles its rope and gating kernels on first use
        (seconds), which must not happen inside the first conversation's tick. Idle rows keep their
        state, so every slot still starts fresh."""
        self.step(np.zeros((self.slots, FRAME_SAMPLES), dtype=np.float32), np.zeros(self.slots, dtype=bool))

    def _piece(self, token: int) -> str:
        if self.tokenizer.is_byte(token):  # byte fallback: <0x41> -> "A" (a lone non-ASCII byte -> "")
            return self.tokenizer.decode([token])
        return self.tokenizer.id_to_piece(token).replace("\u2581", " ")  # sentencepiece's word-start mark

    def _set_exec_mask(self, active: np.ndarray) -> None:
        mask = torch.as_tensor(np.asarray(active, dtype=bool), device=self.device)
        if self._exec_mask is None or not torch.equal(mask, self._exec_mask):
            self.mimi.set_exec_mask(mask)
            self.lm_gen.set_exec_mask(mask)
            self._exec_mask = mask

    def close(self) -> None:
        self._streams.close()
