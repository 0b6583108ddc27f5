"""Typed configuration of the duplex stage (the `args` of the `moshi` Serve application)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from services.common.config import Config, Device
from services.common.registry import PluginEngineConfig, engine_config_union


class DuplexSlots(Config):
    """What the duplex deployment itself reads of any engine's config: its slots and the sampling
    settings they share (streams may only repeat them)."""

    # Conversations advanced together by one batched step: the replica's capacity.
    slots: int = Field(4, ge=1, le=256)
    # Sampling is shared by every slot of a replica (one batched LM step); 0 = greedy.
    text_temperature: float = Field(0.7, ge=0.0, le=2.0)
    audio_temperature: float = Field(0.8, ge=0.0, le=2.0)
    text_top_k: int = Field(25, ge=0)
    audio_top_k: int = Field(250, ge=0)


class MoshiEngineConfig(DuplexSlots):
    kind: Literal["moshi"] = "moshi"
    # A local checkpoint directory in kyutai/moshiko-pytorch-bf16's layout (LM weights, Mimi
    # weights, sentencepiece tokenizer, optional config.json); `parley models tiny` builds one.
    model: str = "models/tiny/moshi"
    device: Device = "auto"
    seed: int | None = None  # seeds torch's generator once at load (reproducible replicas)
    torch_threads: int = Field(1, ge=1)


class DuplexPluginConfig(PluginEngineConfig, DuplexSlots):
    """Any duplex engine class by import path (services.common.registry.PluginEngineConfig), with
    the settings the deployment itself reads (DuplexSlots)."""

    model_config = PluginEngineConfig.model_config  # its own arguments beside `kind` (DuplexSlots forbids them)
    interface = "services.moshi.engine:DuplexEngine"


DuplexEngineConfig = engine_config_union(DuplexPluginConfig, MoshiEngineConfig)


class MoshiConfig(Config):
    engine: DuplexEngineConfig = MoshiEngineConfig()
    # A client may run ahead of the tick by this many frames (jitter); beyond it the oldest
    # buffered frames are dropped so the conversation's delay stays bounded.
    max_buffered_frames: int = Field(25, ge=1, le=250)
    # Ticks are 80 ms (Mimi's frame); a slower clock is for tests on overloaded machines only.
    tick_ms: float = Field(80.0, ge=10.0, le=1000.0)
