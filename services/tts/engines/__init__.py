"""TTS engines by kind. Each module is imported only when a config selects its kind."""

from __future__ import annotations

from services.common import registry

ENGINES = {
    "kokoro": "services.tts.engines.kokoro:KokoroEngine",  # PyTorch (GPUs)
    "kokoro_onnx": "services.tts.engines.kokoro_onnx:KokoroOnnxEngine",  # onnxruntime (CPUs)
}


def load_engine(config):
    """The TTS engine `config.kind` names, built from `config`."""
    return registry.load_engine(ENGINES, config, "TTS")
