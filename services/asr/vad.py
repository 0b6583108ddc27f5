"""Streaming voice-activity detection with the silero VAD model bundled in faster-whisper's wheel.

The model scores 512-sample windows of 16 kHz audio (32 ms). Each window is fed with the last 64
samples of the previous window prepended, and the LSTM state (h, c) carries from window to
window, so a stream scored chunk by chunk gets the same probabilities as the whole buffer scored
at once. The ONNX model treats its batch axis as time (state flows from row to row), so all
complete windows of one push go through a single `run` call.

One onnxruntime session per process serves every StreamingVAD (InferenceSession.run is
thread-safe); each StreamingVAD holds only its own state and is not itself thread-safe.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000
WINDOW_SAMPLES = 512
CONTEXT_SAMPLES = 64
WINDOW_S = WINDOW_SAMPLES / SAMPLE_RATE
_STATE_SHAPE = (1, 1, 128)
_MAX_BATCH = 4096  # windows per run call (~131 s of audio)
MODEL_FILE = "silero_vad_v6.onnx"

_session = None
_session_lock = threading.Lock()


def model_path() -> Path:
    """The silero VAD ONNX file shipped in the faster-whisper wheel (found without importing it)."""
    spec = importlib.util.find_spec("faster_whisper")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("faster-whisper is not installed; it ships the silero VAD model")
    path = Path(list(spec.submodule_search_locations)[0]) / "assets" / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"silero VAD model not found at {path}")
    return path


def shared_session():
    """The process-wide onnxruntime session (created on first use, one intra-op thread)."""
    global _session
    if _session is None:
        with _session_lock:
            if _session is None:
                import onnxruntime

                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads = 1
                options.inter_op_num_threads = 1
                options.enable_cpu_mem_arena = False
                options.log_severity_level = 3
                _session = onnxruntime.InferenceSession(
                    str(model_path()), sess_options=options, providers=["CPUExecutionProvider"]
                )
    return _session


class StreamingVAD:
    """Speech probability per 32 ms window of a 16 kHz mono float32 stream."""

    sample_rate = SAMPLE_RATE
    window_samples = WINDOW_SAMPLES

    def __init__(self, session=None):
        self._session = session if session is not None else shared_session()
        self.reset()

    def reset(self) -> None:
        self._h = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._c = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros(CONTEXT_SAMPLES, dtype=np.float32)
        self._remainder = np.zeros(0, dtype=np.float32)
        self.windows = 0  # windows scored since the last reset

    @property
    def buffered_samples(self) -> int:
        """Samples waiting for a complete window."""
        return self._remainder.size

    def push(self, audio: np.ndarray) -> list[float]:
        """Score every complete window now available; the remainder waits for the next push."""
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1:
            raise ValueError(f"VAD expects mono 1-D audio, got shape {audio.shape}")
        buffer = np.concatenate([self._remainder, audio]) if self._remainder.size else audio
        count = buffer.size // WINDOW_SAMPLES
        self._remainder = buffer[count * WINDOW_SAMPLES:].copy()
        if count == 0:
            return []
        windows = buffer[: count * WINDOW_SAMPLES].reshape(count, WINDOW_SAMPLES)
        probs: list[float] = []
        for first in range(0, count, _MAX_BATCH):
            probs.extend(self._score(windows[first:first + _MAX_BATCH]))
        return probs

    def _score(self, windows: np.ndarray) -> list[float]:
        contexts = np.empty((windows.shape[0], CONTEXT_SAMPLES), dtype=np.float32)
        contexts[0] = self._context
        contexts[1:] = windows[:-1, -CONTEXT_SAMPLES:]
        inputs = np.ascontiguousarray(np.concatenate([contexts, windows], axis=1))
        out, self._h, self._c = self._session.run(
            None, {"input": inputs, "h": self._h, "c": self._c}
        )
        self._context = windows[-1, -CONTEXT_SAMPLES:].copy()
        self.windows += windows.shape[0]
        return np.asarray(out, dtype=np.float32).reshape(-1).tolist()
