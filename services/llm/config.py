"""Typed configuration of the LLM stage (the `args` of the `llm` Serve application)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from services.common.config import Config, Device
from services.common.registry import PluginEngineConfig, engine_config_union


class TransformersConfig(Config):
    """Hugging Face transformers on CPU (or a small GPU): the embedded default."""

    kind: Literal["transformers"] = "transformers"
    model: str = "models/tiny/llm"
    device: Device = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    torch_threads: int = Field(1, ge=1)
    # How the model writes tool calls (services/llm/tool_calls.py); None: tools are rendered in
    # the prompt but calls are not parsed (the model has no tool format).
    tool_parser: Literal["hermes"] | None = "hermes"


class VLLMConfig(Config):
    """vLLM's async engine (CUDA)."""

    kind: Literal["vllm"] = "vllm"
    model: str
    # The share of the GPU this replica may use; match it to the deployment's num_gpus.
    gpu_memory_utilization: float = Field(0.3, gt=0.0, le=0.95)
    max_model_len: int | None = Field(None, ge=128)
    dtype: str = "auto"
    enforce_eager: bool = False
    tensor_parallel_size: int = Field(1, ge=1)
    enable_prefix_caching: bool = True
    # vLLM's tool-call parser for this model ("hermes" for Hermes/Qwen, "llama3_json",
    # "mistral", ...: the names of `vllm serve --tool-call-parser`); None: calls are not parsed.
    tool_parser: str | None = "hermes"


class OpenAIConfig(Config):
    """Any OpenAI-compatible /v1/chat/completions endpoint (vLLM serve, llama.cpp, TGI...)."""

    kind: Literal["openai"] = "openai"
    base_url: str  # e.g. http://vllm.internal:8000/v1
    model: str
    # Name of an environment variable holding the API key: secrets never live in config files.
    api_key_env: str | None = None
    timeout_s: float = Field(30.0, gt=0)
    # Retries of a request that failed before its first chunk (connection errors, 408/429/5xx).
    max_retries: int = Field(2, ge=0, le=10)


class PluginConfig(PluginEngineConfig):
    """Any LLM engine class by import path (services.common.registry.PluginEngineConfig); the
    older spelling `{kind: plugin, path: "pkg.mod:Class", options: {...}}` is still read."""

    interface = "services.llm.engine:LLMEngine"


LLMEngineConfig = engine_config_union(PluginConfig, TransformersConfig, VLLMConfig, OpenAIConfig)


class LLMConfig(Config):
    engine: LLMEngineConfig = TransformersConfig()
    # Defaults for SamplingParams fields a request leaves unset.
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(256, ge=1)
    # Hard cap on max_tokens a request may ask for, and on the chat size.
    max_tokens_limit: int = Field(2048, ge=1)
    max_messages: int = Field(512, ge=1)
    max_request_chars: int = Field(200_000, ge=1)
