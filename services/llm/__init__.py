"""Language-model stage: vLLM, transformers or an OpenAI-compatible endpoint behind the LanguageModel gRPC service."""
