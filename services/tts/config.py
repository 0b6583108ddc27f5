"""Typed configuration of the TTS stage (the `args` of the `tts` Serve application)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from services.common.config import Config, Device
from services.common.registry import PluginEngineConfig, engine_config_union


class KokoroVoiceConfig(Config):
    """What both Kokoro engines share: the voice and the English G2P."""

    # A voice the model has (PyTorch: a name from <model>/voices or an absolute path to a .pt file;
    # callers choose voices by name only, since a path from a caller would load arbitrary files).
    default_voice: str = "af_heart"
    # Used instead of default_voice wherever the model has it (a pulled English voice).
    preferred_voice: str | None = "af_heart"
    # "auto": misaki's spaCy-based G2P when en_core_web_sm is installed, else espeak-ng.
    g2p: Literal["auto", "misaki", "espeak"] = "auto"


class KokoroConfig(KokoroVoiceConfig):
    kind: Literal["kokoro"] = "kokoro"
    # Directory with config.json, the weights (*.pth) and voices/*.pt, in hexgrad/Kokoro-82M's layout.
    model: str = "models/tiny/kokoro"
    device: Device = "auto"
    # misaki language code: "a" American English, "b" British English.
    lang_code: Literal["a", "b"] = "a"
    torch_threads: int = Field(1, ge=1)


class KokoroOnnxConfig(KokoroVoiceConfig):
    """Kokoro-82M exported to ONNX (kokoro-v1.0, int8 or fp32) on onnxruntime: the CPU deployment."""

    kind: Literal["kokoro_onnx"] = "kokoro_onnx"
    # Directory with one *.onnx model, voices.npz (or voices-v1.0.bin: name -> [510, 1, 256]) and
    # vocab.json ({"vocab": {phoneme: id}}).
    model: str = "models/cpu/kokoro-82m-onnx"
    lang: Literal["en-us", "en-gb"] = "en-us"
    # onnxruntime's intra-op threads (0 = one per core).
    threads: int = Field(1, ge=0)


class TTSPluginConfig(PluginEngineConfig):
    """Any TTS engine class by import path (services.common.registry.PluginEngineConfig)."""

    interface = "services.tts.engine:TTSEngine"
    # Parallel synthesize calls inside one replica (the engine worker's threads).
    num_workers: int = Field(1, ge=1)


TTSEngineConfig = engine_config_union(TTSPluginConfig, KokoroConfig, KokoroOnnxConfig)


class TTSConfig(Config):
    engine: TTSEngineConfig = KokoroConfig()
    # Clause splitting: a clause break (, ; :) ends a segment once it holds this many words,
    # so the first audio comes out early; sentences always end a segment.
    min_clause_words: int = Field(4, ge=1)
    max_segment_chars: int = Field(300, ge=20)
    # Admission: the largest text chunk and the most text one stream may carry.
    max_chunk_chars: int = Field(4096, ge=1)
    max_stream_chars: int = Field(100_000, ge=1)
