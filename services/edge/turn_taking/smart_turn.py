"""Semantic end of turn: the Smart Turn v3.2 model (BSD-2-Clause) on onnxruntime.

The model reads the last 8 s of the caller's audio (16 kHz; shorter audio is zero-padded at the
start) as Whisper log-mel features, 80 bins x 800 frames, and returns the probability that the
caller has finished their turn. It hears prosody (a falling pitch, a trailing "and..."), so a caller
who pauses mid-thought gets more time than one who asked a complete question. The transcript has a
say too: Whisper writes an ellipsis where the caller trailed off ("I need a taxi from the airport
to..."), and such a turn is unfinished whatever the audio sounds like (robotic or flat speech fools
the prosody model more than it fools Whisper). The model file comes from a registry wheel
(services/models/manifest.yaml, `parley models cpu`); nothing of the package that ships it is
imported.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from services.edge.turn_taking.features import SAMPLE_RATE, whisper_log_mel

MODEL_FILE = "smart-turn-v3.2-cpu.onnx"
WINDOW_S = 8
TRAILING_OFF = ("...", "…")  # how Whisper ends the words of a caller who trailed off


def trails_off(text: str) -> bool:
    """The transcript ends in an ellipsis: the caller left the sentence hanging."""
    return text.rstrip().endswith(TRAILING_OFF)


class SmartTurn:
    """The end-of-turn detector backed by Smart Turn; one ONNX session per edge replica."""

    needs_audio = True

    def __init__(self, model: str | Path, threshold: float = 0.5, threads: int = 1):
        import onnxruntime

        path = Path(model)
        path = path / MODEL_FILE if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"Smart Turn model not found at {path}; fetch it with `parley models cpu`")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        self._session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self.threshold = threshold
        self.calls, self.cpu_s = 0, 0.0  # for the CPU-per-turn figure

    def probability(self, audio: np.ndarray) -> float:
        """P(turn complete) for 16 kHz float32 audio that ends where the caller paused."""
        audio = np.asarray(audio, dtype=np.float32)[-WINDOW_S * SAMPLE_RATE:]
        padded = np.zeros(WINDOW_S * SAMPLE_RATE, np.float32)
        padded[padded.size - audio.size:] = audio
        started = time.thread_time()
        features = whisper_log_mel(padded)[None]
        (output,) = self._session.run(None, {self._input: features})
        self.calls += 1
        self.cpu_s += time.thread_time() - started
        return float(np.asarray(output).reshape(-1)[0])

    def is_end_of_turn(self, final_text: str, audio: np.ndarray | None = None) -> bool:
        if not final_text.strip() or trails_off(final_text):
            return False
        if audio is None or audio.size == 0:
            return True  # nothing to judge by: the silence decides, as without the model
        return self.probability(audio) >= self.threshold
