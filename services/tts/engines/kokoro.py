"""Kokoro-82M (StyleTTS 2 with an iSTFTNet vocoder) on PyTorch behind the TTSEngine interface,
offline: the engine for GPUs (on CPUs the ONNX engine, kokoro_onnx, is the usual deployment).

The model directory has hexgrad/Kokoro-82M's layout: config.json, one weights file (*.pth) and
voices/<name>.pt. Everything is loaded from it through kokoro's own `KModel`; nothing is fetched
from the hub (KModel only downloads when it is given no config or no weights, and voices here are
always files).

Text -> phonemes (services.tts.g2p) -> ids in pieces of at most 510 -> audio (services.tts.pieces).
Word timings come from the durations the model predicts per id (`forward_with_tokens` returns
them; one duration frame is 600 samples at 24 kHz).

`synthesize` holds a lock: calls from several threads run one at a time.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

from services.common.config import require_path, resolve_device
from services.tts import pieces
from services.tts.config import KokoroConfig
from services.tts.engine import Speech, TTSEngine, UnknownVoiceError, pick_default_voice
from services.tts.g2p import make_g2p

log = logging.getLogger(__name__)

SAMPLE_RATE = 24_000
REPO_ID = "hexgrad/Kokoro-82M"  # names the layout; never contacted (config and weights are given)
DEFAULT_WEIGHTS = "kokoro-v1_0.pth"
MAX_IDS = pieces.MAX_IDS


class KokoroEngine(TTSEngine):
    sample_rate = SAMPLE_RATE

    def __init__(self, config: KokoroConfig):
        from kokoro import KModel

        self.config = config
        self.model_dir = require_path(config.model, "Kokoro model directory")
        config_path = require_path(self.model_dir / "config.json", "Kokoro config.json")
        model_config = json.loads(config_path.read_text(encoding="utf-8"))
        self.weights_path = self._find_weights(self.model_dir)
        self.device = resolve_device(config.device)
        torch.set_num_threads(config.torch_threads)
        # repo_id only names the layout: with a config and a weights path KModel reads files only.
        with warnings.catch_warnings():  # construction noise from kokoro's modules, every load
            warnings.filterwarnings("ignore", message="dropout option adds dropout")
            warnings.filterwarnings("ignore", message=".*weight_norm` is deprecated")
            self.model = KModel(repo_id=REPO_ID, config=model_config, model=str(self.weights_path))
        self.model = self.model.to(self.device).eval()
        self.vocab: dict[str, int] = dict(self.model.vocab)
        self.max_ids = min(MAX_IDS, self.model.context_length - 2)
        self.style_width = 2 * int(model_config["style_dim"])

        voices_dir = self.model_dir / "voices"
        self._voice_files = (
            {p.stem: p for p in sorted(voices_dir.glob("*.pt"))} if voices_dir.is_dir() else {}
        )
        self._packs: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()

        british = config.lang_code == "b"
        self._g2p = make_g2p(config.g2p, british)
        self.g2p_name = self._g2p.name
        self.default_voice = pick_default_voice(self.voices(), config.default_voice, config.preferred_voice)
        self._pack(self.default_voice)  # fail fast on a missing default voice, and cache it
        self.synthesize("Hello.", self.default_voice, 1.0)  # first-run set-up here, not in the first call
        log.info("Kokoro %s loaded on %s: %d voices, g2p %s (%s)", self.weights_path, self.device,
                 len(self._voice_files), self.g2p_name, "en-gb" if british else "en-us")

    @staticmethod
    def _find_weights(model_dir: Path) -> Path:
        found = sorted(model_dir.glob("*.pth"))
        if not found:
            raise FileNotFoundError(f"no Kokoro weights (*.pth) in {model_dir}")
        if len(found) == 1:
            return found[0]
        preferred = model_dir / DEFAULT_WEIGHTS
        if preferred in found:
            return preferred
        raise ValueError(f"several weight files in {model_dir}: {[p.name for p in found]}; "
                         f"keep one, or name it {DEFAULT_WEIGHTS}")

    def voices(self) -> list[str]:
        return list(self._voice_files)

    def _pack(self, voice: str) -> torch.Tensor:
        pack = self._packs.get(voice)
        if pack is not None:
            return pack
        path = self._voice_files.get(voice)
        if path is None and voice.endswith(".pt") and Path(voice).is_absolute():
            path = Path(voice) if Path(voice).is_file() else None
        if path is None:
            raise UnknownVoiceError(
                f"unknown voice {voice!r}; known voices: {', '.join(self.voices()) or '(none)'}"
            )
        pack = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(pack, torch.Tensor):
            raise ValueError(f"voice file {path} holds {type(pack).__name__}, not a tensor")
        if pack.dim() == 2:
            pack = pack.unsqueeze(1)
        if pack.dim() != 3 or pack.shape[1:] != (1, self.style_width) or not len(pack):
            raise ValueError(f"voice file {path} has shape {tuple(pack.shape)}; "
                             f"expected [N, 1, {self.style_width}]")
        pack = pack.to(device=self.device, dtype=torch.float32)
        self._packs[voice] = pack
        return pack

    def synthesize(self, text: str, voice: str, speed: float) -> Speech:
        speed = float(speed)
        if not (math.isfinite(speed) and speed > 0):
            raise ValueError(f"speed must be a positive number, got {speed!r}")
        with self._lock:
            if self.model is None:
                raise RuntimeError("the Kokoro engine is closed")
            pack = self._pack(voice)
            if not text.strip():
                return Speech(audio=np.zeros(0, dtype=np.float32))

            def run(ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
                input_ids = torch.tensor([[0, *ids, 0]], dtype=torch.long, device=self.device)
                audio, durations = self.model.forward_with_tokens(input_ids, pack[min(len(ids), len(pack)) - 1], speed)
                return audio.reshape(-1).float().cpu().numpy(), durations.reshape(-1).cpu().numpy()

            with torch.inference_mode():
                return pieces.speak(self._g2p(text), self.vocab, self.max_ids, run)

    def close(self) -> None:
        with self._lock:
            self._packs.clear()
            self.model = None
        if self.device == "cuda":
            torch.cuda.empty_cache()
