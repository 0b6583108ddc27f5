"""Any OpenAI-compatible `/chat/completions` endpoint (vLLM serve, llama.cpp server, TGI, ...).

Streams with server-sent events. For a remote server the abort is closing the HTTP response:
OpenAI-compatible servers (vLLM's included) abort the request when the client disconnects.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

from services.llm.config import OpenAIConfig
from services.llm.engine import ChatRequest, Delta, Finished, LLMEngine, chat_messages


class OpenAIEngineError(RuntimeError):
    """The remote endpoint failed, answered an HTTP error, or broke the streaming protocol."""


def request_body(model: str, request: ChatRequest) -> dict[str, Any]:
    """The JSON body of a streaming chat completion for `request`."""
    sampling = request.sampling
    body: dict[str, Any] = {
        "model": model,
        "messages": chat_messages(request),
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
    }
    if sampling.top_k > 0:  # not in OpenAI's API; vLLM, llama.cpp and TGI accept it
        body["top_k"] = sampling.top_k
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    if request.tools:
        body["tools"] = list(request.tools)
    return body


class OpenAIEngine(LLMEngine):
    def __init__(self, config: OpenAIConfig) -> None:
        super().__init__()
        import httpx

        self.config = config
        self.model_name = config.model
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        headers = {"Accept": "text/event-stream"}
        if config.api_key_env:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise ValueError(
                    f"the environment variable {config.api_key_env!r} (named by the LLM engine's api_key_env) "
                    "is not set or empty: export the API key there"
                )
            headers["Authorization"] = f"Bearer {key}"
        # timeout_s bounds connecting and each wait for the next chunk, not the whole stream.
        self._client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(config.timeout_s))

    async def generate(self, request: ChatRequest) -> AsyncIterator[Delta | Finished]:
        import httpx

        request_id = request.request_id or f"chat-{uuid.uuid4().hex[:16]}"
        with self.stats.track(request_id) as tracked:
            finish_reason: str | None = None
            usage: dict[str, Any] | None = None
            deltas = 0
            try:
                async with self._client.stream(
                    "POST", self.url, json=request_body(self.config.model, request),
                    headers={"X-Request-Id": request_id},
                ) as response:
                    if response.status_code >= 400:
                        detail = (await response.aread()).decode("utf-8", errors="replace").strip()
                        raise OpenAIEngineError(
                            f"{self.url} answered HTTP {response.status_code} {response.reason_phrase}: {detail[:500]}"
                        )
                    async for line in response.aiter_lines():
                        if not line.startswith("data:"):
                            continue  # blank separators, ": keep-alive" comments, event:/id:/retry: fields
                        data = line[5:].strip()
                        if data == "[DONE]":
                            break
                        try:
                            chunk = json.loads(data)
                        except json.JSONDecodeError as exc:
                            raise OpenAIEngineError(f"{self.url} sent a malformed stream chunk: {data[:200]!r}") from exc
                        if not isinstance(chunk, dict):
                            raise OpenAIEngineError(f"{self.url} sent an unexpected stream chunk: {data[:200]!r}")
                        if chunk.get("error"):
                            raise OpenAIEngineError(f"{self.url} reported an error mid-stream: {chunk['error']}")
                        if chunk.get("usage"):
                            usage = chunk["usage"]
                        for choice in chunk.get("choices") or ():
                            if choice.get("index", 0) != 0:
                                continue
                            text = (choice.get("delta") or {}).get("content")
                            if text:
                                deltas += 1
                                yield Delta(text, 1)
                            if choice.get("finish_reason"):
                                finish_reason = choice["finish_reason"]
            except httpx.HTTPError as exc:
                raise OpenAIEngineError(f"streaming from {self.url} failed: {type(exc).__name__}: {exc}") from exc
            if finish_reason is None:
                raise OpenAIEngineError(f"{self.url} ended the stream without a finish_reason")
            prompt_tokens = int((usage or {}).get("prompt_tokens") or 0)
            completion_tokens = int((usage or {}).get("completion_tokens") or deltas)
            tracked.finish()
            # Leaving the `async with` above closed the response: for a remote server, that is the abort.
            yield Finished("length" if finish_reason == "length" else "stop", prompt_tokens, completion_tokens)

    async def close(self) -> None:
        await self._client.aclose()
