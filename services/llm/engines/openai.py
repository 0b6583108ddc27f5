"""Any OpenAI-compatible `/chat/completions` endpoint (vLLM serve, llama.cpp server, TGI, ...).

Streams through the `openai` SDK (its retries cover a request that failed before streaming).
Tool calls arrive as `delta.tool_calls` fragments keyed by index; they are joined and yielded as
complete ToolCall items once the server says the reply is finished. For a remote server the
abort is closing the HTTP response: OpenAI-compatible servers (vLLM's included) abort the
request when the client disconnects.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

from services.llm.config import OpenAIConfig
from services.llm.engine import ChatRequest, Delta, Finished, LLMEngine, ToolCall, chat_messages
from services.llm.tool_calls import MAX_RAW_CHARS, new_call_id


class OpenAIEngineError(RuntimeError):
    """The remote endpoint failed, answered an HTTP error, or broke the streaming protocol."""


def request_body(model: str, request: ChatRequest) -> dict[str, Any]:
    """The JSON body of a streaming chat completion for `request`."""
    sampling = request.sampling
    body: dict[str, Any] = {
        "model": model,
        "messages": chat_messages(request, arguments_as_text=True),
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


class ToolCallFragments:
    """Joins streamed `delta.tool_calls` fragments (id and name once, arguments piece by piece)."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, str]] = {}

    def add(self, fragment: Any) -> None:
        call = self._calls.setdefault(getattr(fragment, "index", 0) or 0, {"id": "", "name": "", "arguments": ""})
        call["id"] = call["id"] or (getattr(fragment, "id", None) or "")
        function = getattr(fragment, "function", None)
        if function is not None:
            call["name"] = call["name"] or (function.name or "")
            call["arguments"] += function.arguments or ""

    def complete(self) -> list[ToolCall]:
        """The joined calls in index order; one whose arguments are not a JSON object has `error`."""
        calls = []
        for _, call in sorted(self._calls.items()):
            arguments, error = call["arguments"] or "{}", ""
            try:
                if not isinstance(json.loads(arguments), dict):
                    error = "the tool call's arguments are not a JSON object"
            except (ValueError, RecursionError) as exc:
                error = f"the tool call's arguments are not valid JSON: {exc}"
            if not call["name"]:
                error = error or "the tool call has no name"
            calls.append(ToolCall(call["id"] or new_call_id(), call["name"], arguments[:MAX_RAW_CHARS] if error
                                  else arguments, error))
        self._calls.clear()
        return calls


class OpenAIEngine(LLMEngine):
    """Streams chat completions from a remote OpenAI-compatible server."""

    def __init__(self, config: OpenAIConfig) -> None:
        super().__init__()
        import openai

        self.config = config
        self.model_name = config.model
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        key = "unused"  # the SDK insists on a key; keyless servers ignore it
        if config.api_key_env:
            key = os.environ.get(config.api_key_env, "")
            if not key:
                raise ValueError(
                    f"the environment variable {config.api_key_env!r} (named by the LLM engine's api_key_env) "
                    "is not set or empty: export the API key there"
                )
        # timeout_s bounds connecting and each wait for the next chunk, not the whole stream.
        self._client = openai.AsyncOpenAI(base_url=config.base_url.rstrip("/"), api_key=key,
                                          timeout=config.timeout_s, max_retries=config.max_retries)

    async def generate(self, request: ChatRequest) -> AsyncIterator[Delta | ToolCall | Finished]:
        import openai

        request_id = request.request_id or f"chat-{uuid.uuid4().hex[:16]}"
        body = request_body(self.config.model, request)
        extra = {name: body.pop(name) for name in ("top_k",) if name in body}  # outside the SDK's signature
        with self.stats.track(request_id) as tracked:
            finish_reason: str | None = None
            usage: Any = None
            deltas = 0
            calls = ToolCallFragments()
            try:
                stream = await self._client.chat.completions.create(
                    **body, extra_body=extra or None, extra_headers={"X-Request-Id": request_id})
                try:
                    async for chunk in stream:
                        if chunk.usage is not None:
                            usage = chunk.usage
                        for choice in chunk.choices or ():
                            if choice.index != 0:
                                continue
                            delta = choice.delta
                            if delta is not None and delta.content:
                                deltas += 1
                                yield Delta(delta.content, 1)
                            for fragment in (delta.tool_calls or ()) if delta is not None else ():
                                calls.add(fragment)
                            if choice.finish_reason:
                                finish_reason = choice.finish_reason
                finally:
                    await stream.close()  # for a remote server, closing the response is the abort
            except openai.APIStatusError as exc:
                raise OpenAIEngineError(f"{self.url} answered HTTP {exc.status_code}: {exc.message[:500]}") from exc
            except openai.APIError as exc:
                raise OpenAIEngineError(f"streaming from {self.url} failed: {type(exc).__name__}: {exc}") from exc
            if finish_reason is None:
                raise OpenAIEngineError(f"{self.url} ended the stream without a finish_reason")
            completed = calls.complete()
            for call in completed:
                yield call
            prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
            completion_tokens = int(getattr(usage, "completion_tokens", 0) or deltas)
            reason = "tool_calls" if completed else "length" if finish_reason == "length" else "stop"
            tracked.finish()
            yield Finished(reason, prompt_tokens, completion_tokens)

    async def close(self) -> None:
        await self._client.close()
