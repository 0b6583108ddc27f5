"""ASR engines by kind. Each module is imported only when a config selects its kind."""

from __future__ import annotations

from services.common import registry

ENGINES = {
    "faster_whisper": "services.asr.engines.faster_whisper:FasterWhisperEngine",
}


def load_engine(config):
    """The ASR engine `config.kind` names, built from `config`."""
    return registry.load_engine(ENGINES, config, "ASR")
