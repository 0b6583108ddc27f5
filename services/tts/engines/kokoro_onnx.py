"""Kokoro-82M exported to ONNX (the official kokoro-v1.0 int8 or fp32 file) on onnxruntime: the
usual CPU deployment of Kokoro, behind the TTSEngine interface, offline.

The model directory holds the .onnx file, a voices file (an .npz archive of name -> [510, 1, 256]
style packs: voices.npz, or the release's voices-v1.0.bin, which is the same format) and
vocab.json ({"vocab": {phoneme: id}}). Text -> phonemes with the same offline English G2P as the
PyTorch engine (services.tts.g2p: espeak-ng, or misaki where spaCy's English model is installed),
then pieces of at most 510 ids through the graph (services.tts.pieces).

The graph is run directly with onnxruntime rather than through the `kokoro-onnx` package: that
package depends on `phonemizer` (GPL-3.0), and the graph's interface is three inputs (token ids
with the boundary token 0 at both ends, the voice's style row for that length, the speed) and the
waveform out.

Word timings: the kokoro-v1.0 export outputs audio only, but its graph computes the duration of
every token (in 600-sample frames) on the way: with the `onnx` package present that tensor is made
a graph output when the session is built, and words get exact spans, as with the PyTorch engine.
An export that outputs durations itself (an output named like "duration") needs no change; any
other gets spans estimated from its phonemes (services.tts.pieces.estimated_durations; on
kokoro-v1.0 the estimated word starts fall within ~50 ms of the model's, median).
"""

from __future__ import annotations

import json
import logging
import math
import threading
from pathlib import Path

import numpy as np

from services.common.config import require_path
from services.tts import pieces
from services.tts.config import KokoroOnnxConfig
from services.tts.engine import Speech, TTSEngine, UnknownVoiceError, pick_default_voice
from services.tts.g2p import Phonemes, make_g2p

log = logging.getLogger(__name__)

SAMPLE_RATE = 24_000
# kokoro-v1.0's predicted durations after rounding and clipping to >= 1 frame: int64 [1, tokens].
DURATIONS_TENSOR = "/encoder/Cast_output_0"
VOICE_FILES = ("voices.npz", "voices-v1.0.bin")  # the first one present is used
STYLE_WIDTH = 256


def find_one(model_dir: Path, pattern: str, what: str) -> Path:
    """The single file matching `pattern` in model_dir; none or several is a config error."""
    found = sorted(model_dir.glob(pattern))
    if len(found) != 1:
        listed = ", ".join(p.name for p in found) or "none"
        raise FileNotFoundError(f"expected one {what} ({pattern}) in {model_dir}, found {listed}")
    return found[0]


def load_voices(path: Path) -> dict[str, np.ndarray]:
    """Every style pack in a voices archive, checked for Kokoro's [N, 1, 256] shape."""
    voices = {}
    with np.load(path, allow_pickle=False) as archive:
        for name in archive.files:
            pack = np.asarray(archive[name], dtype=np.float32)
            if pack.ndim == 2:
                pack = pack[:, None, :]
            if pack.ndim != 3 or pack.shape[1:] != (1, STYLE_WIDTH) or not len(pack):
                raise ValueError(f"voice {name!r} in {path} has shape {pack.shape}; expected [N, 1, {STYLE_WIDTH}]")
            voices[name] = pack
    if not voices:
        raise ValueError(f"no voices in {path}")
    return voices


def graph_with_durations(path: Path) -> bytes | None:
    """The model with its internal durations tensor made an output, or None (no `onnx` package,
    or a graph without that tensor, or one that outputs durations already)."""
    try:
        import onnx
    except ImportError:
        log.info("the onnx package is not installed: Kokoro word timings are estimated")
        return None
    model = onnx.load(str(path))
    outputs = [output.name for output in model.graph.output]
    if any("duration" in name for name in outputs[1:]):
        return None
    if not any(DURATIONS_TENSOR in node.output for node in model.graph.node):
        log.info("%s has no %s tensor: Kokoro word timings are estimated", path, DURATIONS_TENSOR)
        return None
    model.graph.output.append(onnx.helper.make_tensor_value_info(DURATIONS_TENSOR, onnx.TensorProto.INT64, None))
    return model.SerializeToString()


class KokoroOnnxEngine(TTSEngine):
    """Kokoro on onnxruntime (CPU)."""

    sample_rate = SAMPLE_RATE

    def __init__(self, config: KokoroOnnxConfig):
        import onnxruntime

        self.config = config
        model_dir = require_path(config.model, "Kokoro ONNX model directory")
        self.model_path = find_one(model_dir, "*.onnx", "Kokoro ONNX model")
        voices_path = next((model_dir / name for name in VOICE_FILES if (model_dir / name).is_file()), None)
        if voices_path is None:
            raise FileNotFoundError(f"no voices file ({' or '.join(VOICE_FILES)}) in {model_dir}")
        self._voices = load_voices(voices_path)
        vocab_path = require_path(model_dir / "vocab.json", "Kokoro vocab.json")
        self.vocab: dict[str, int] = json.loads(vocab_path.read_text(encoding="utf-8"))["vocab"]

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = config.threads
        options.inter_op_num_threads = 1
        graph = graph_with_durations(self.model_path)
        self._session = onnxruntime.InferenceSession(graph or str(self.model_path), options,
                                                     providers=["CPUExecutionProvider"])
        inputs = {i.name: i for i in self._session.get_inputs()}
        self._ids_input = "input_ids" if "input_ids" in inputs else "tokens"  # newer exports rename it
        missing = {self._ids_input, "style", "speed"} - set(inputs)
        if missing:
            raise ValueError(f"{self.model_path} is not a Kokoro export: inputs {sorted(inputs)} lack {sorted(missing)}")
        self._speed_dtype = np.int32 if "int" in inputs["speed"].type else np.float32
        outputs = [o.name for o in self._session.get_outputs()]
        self._durations_output = next((name for name in outputs[1:] if "duration" in name or name == DURATIONS_TENSOR),
                                      None)
        self._outputs = [outputs[0], *([self._durations_output] if self._durations_output else [])]
        self.exact_timings = self._durations_output is not None  # else estimated from the phonemes

        self._g2p = make_g2p(config.g2p, british=config.lang == "en-gb")
        self.g2p_name = self._g2p.name
        self.default_voice = pick_default_voice(self.voices(), config.default_voice, config.preferred_voice)
        if self.default_voice not in self._voices:
            raise UnknownVoiceError(f"default voice {self.default_voice!r} is not in {voices_path.name}; "
                                    f"it has {', '.join(self.voices())}")
        self._lock = threading.Lock()
        # onnxruntime plans and allocates on the first run (the first sentence takes twice as long):
        # done here, so the first caller's turn does not wait for it.
        self.synthesize("Hello.", self.default_voice, 1.0)
        log.info("Kokoro ONNX %s: %d voices (default %s), g2p %s (%s), word timings %s", self.model_path,
                 len(self._voices), self.default_voice, self.g2p_name, config.lang,
                 "from the model" if self.exact_timings else "estimated")

    def voices(self) -> list[str]:
        return sorted(self._voices)

    def phonemize(self, text: str) -> Phonemes:
        """Text -> phoneme symbols tied to words, with the configured G2P."""
        return self._g2p(text)

    def run_piece(self, voice: str, speed: float) -> pieces.RunPiece:
        """One forward pass of the graph for `voice` and `speed`: ids -> (audio, durations or None)."""
        pack = self._voices.get(voice)
        if pack is None:
            raise UnknownVoiceError(f"unknown voice {voice!r}; known voices: {', '.join(self.voices())}")

        def run(ids: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
            feed = {
                self._ids_input: np.array([[0, *ids, 0]], dtype=np.int64),
                "style": pack[min(len(ids), len(pack)) - 1],
                "speed": np.array([speed], dtype=self._speed_dtype),
            }
            results = self._session.run(self._outputs, feed)
            return results[0], (results[1] if len(results) > 1 else None)

        return run

    def synthesize(self, text: str, voice: str, speed: float) -> Speech:
        speed = float(speed)
        if not (math.isfinite(speed) and speed > 0):
            raise ValueError(f"speed must be a positive number, got {speed!r}")
        run = self.run_piece(voice, speed)
        if not text.strip():
            return Speech(audio=np.zeros(0, dtype=np.float32))
        with self._lock:
            if self._session is None:
                raise RuntimeError("the Kokoro ONNX engine is closed")
            return pieces.speak(self.phonemize(text), self.vocab, pieces.MAX_IDS, run)

    def close(self) -> None:
        with self._lock:
            self._session = None
