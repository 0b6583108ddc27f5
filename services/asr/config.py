"""Typed configuration of the ASR stage (the `args` of the `asr` Serve application)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from services.common.config import Config, Device
from services.common.registry import PluginEngineConfig, engine_config_union


class FasterWhisperConfig(Config):
    kind: Literal["faster_whisper"] = "faster_whisper"
    # A CTranslate2 Whisper directory (with tokenizer.json), or a faster-whisper model id.
    model: str = "models/tiny/whisper"
    device: Device = "auto"
    # "auto": int8 on CPU, float16 on CUDA.
    compute_type: str = "auto"
    cpu_threads: int = Field(1, ge=0)
    # Parallel decodes inside one replica (CTranslate2 workers).
    num_workers: int = Field(1, ge=1)
    # Decoding quality controls, defaulting to faster-whisper's own: temperature fallback (a decode
    # that repeats itself or is unsure is retried hotter) and the thresholds that judge it, and
    # no_speech_threshold, which drops a segment the model thinks is not speech. A random-weight
    # test model fails every check, so its overlay turns them off (services.asr.tiny.DECODING):
    # else each decode runs six times.
    temperature: float | tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    compression_ratio_threshold: float | None = 2.4
    log_prob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6
    # A cap on tokens per decode (None: the model's own limit). Random-weight models never stop on
    # their own; real ones do, and a cap would cut long utterances short.
    max_new_tokens: int | None = Field(None, ge=1, le=440)


class ASRPluginConfig(PluginEngineConfig):
    """Any ASR engine class by import path (services.common.registry.PluginEngineConfig)."""

    interface = "services.asr.engine:ASREngine"
    # Parallel transcribe calls inside one replica (the engine worker's threads).
    num_workers: int = Field(1, ge=1)


ASREngineConfig = engine_config_union(ASRPluginConfig, FasterWhisperConfig)


class ASRConfig(Config):
    engine: ASREngineConfig = FasterWhisperConfig()
    # Defaults a RecognitionConfig can override per stream.
    language: str | None = "en"
    beam_size: int = Field(1, ge=1, le=10)
    min_silence_ms: int = Field(300, ge=50, le=5000)
    partial_interval_ms: int = Field(400, ge=100)
    # VAD: speech probability threshold, shortest speech that opens an utterance, and audio kept
    # from before the VAD fired so first syllables are not clipped.
    vad_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    min_speech_ms: int = Field(90, ge=0)
    pre_roll_ms: int = Field(200, ge=0, le=1000)
    max_utterance_s: float = Field(30.0, gt=1.0, le=120.0)
    # Admission: the largest single audio frame accepted, in ms of audio.
    max_frame_ms: int = Field(1000, ge=20, le=10_000)
