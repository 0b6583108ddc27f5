"""LLM engines by kind. Each module is imported only when a config selects its kind."""

from __future__ import annotations

from services.common import registry

ENGINES = {
    "transformers": "services.llm.engines.transformers:TransformersEngine",
    "vllm": "services.llm.engines.vllm:VLLMEngine",
    "openai": "services.llm.engines.openai:OpenAIEngine",
}


def load_engine(config):
    """The LLM engine `config.kind` names, built from `config`."""
    return registry.load_engine(ENGINES, config, "LLM")
