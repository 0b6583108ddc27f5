"""vLLM's async engine (CUDA): continuous batching, paged KV cache, prefix caching.

Tool calls: vLLM's own tool-call parser for the model (`tool_parser`, the names of `vllm serve
--tool-call-parser`) reads the text from the parser's start marker on, which is held back and
never yielded as text; the calls come out as ToolCall items.

Written against vLLM >= 0.11 (the v1 engine; `AsyncLLMEngine` is its `AsyncLLM`). vLLM is
imported only when this engine is built, so the module imports anywhere. Closing or cancelling
`generate` aborts the request inside vLLM at once, freeing its KV-cache blocks for the next turn.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

from services.common.config import is_local_path, require_path
from services.common.rpc import context_exceeded
from services.llm.config import VLLMConfig
from services.llm.engine import (
    ChatRequest,
    Delta,
    Finished,
    LLMEngine,
    Sampling,
    TemplateTraits,
    ToolCall,
    chat_messages,
)
from services.llm.tool_calls import new_call_id, split_stream


def _import_vllm():
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(
            "the vllm LLM engine needs the `vllm` package (CUDA only): install `parley[llm-vllm]` in the GPU "
            "image, or choose the transformers or openai engine"
        ) from exc
    return vllm


def queue_seconds(output: Any) -> float | None:
    """Time the request spent in vLLM's scheduler queue, when vLLM attaches its request stats."""
    stats = getattr(output, "metrics", None)
    queued, scheduled = getattr(stats, "queued_ts", None), getattr(stats, "scheduled_ts", None)
    if queued and scheduled:  # the v1 engine's RequestStateStats (engine-core monotonic clock)
        return max(0.0, scheduled - queued)
    return getattr(stats, "time_in_queue", None)  # older engines' RequestMetrics


def _tool_parser_class(name: str) -> Any:
    try:
        from vllm.tool_parsers import ToolParserManager  # newer layout
    except ImportError:
        from vllm.entrypoints.openai.tool_parsers import ToolParserManager
    return ToolParserManager.get_tool_parser(name)


def _openai_request(request: ChatRequest, model: str) -> Any:
    """The OpenAI-protocol request vLLM's tool parsers read their tool list from."""
    try:
        from vllm.entrypoints.openai.protocol import ChatCompletionRequest
    except ImportError:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    return ChatCompletionRequest(model=model, messages=chat_messages(request, arguments_as_text=True),
                                 tools=list(request.tools))


class VLLMSplitter:
    """Holds the model's text from the parser's start marker (or an opening `{` for JSON-only
    formats such as llama3_json) and hands it to vLLM's parser at the end."""

    def __init__(self, parser: Any, request: Any) -> None:
        self.parser, self.request = parser, request
        self.marker = getattr(parser, "tool_call_start_token", None) or ""
        self.text, self.sent, self.holding = "", 0, False

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        self.text += text
        if self.holding:
            return "", []
        if self.marker:
            at = self.text.find(self.marker, self.sent)
            cut = at if at >= 0 else len(self.text) - _partial(self.text[self.sent:], self.marker)
            self.holding = at >= 0
        else:
            self.holding = self.text.lstrip()[:1] in ("{", "[")
            cut = self.sent if self.holding else len(self.text)
        out, self.sent = self.text[self.sent:cut], cut
        return out, []

    def finish(self) -> tuple[str, list[ToolCall]]:
        held = self.text[self.sent:]
        if not self.holding:
            return held, []
        try:
            info = self.parser.extract_tool_calls(self.text, self.request)
        except Exception as error:  # noqa: BLE001 - a parser bug must not end the call
            return "", [ToolCall(new_call_id(), "", held[:2000], f"the tool call could not be parsed: {error}")]
        if not info.tools_called:
            return "", [ToolCall(new_call_id(), "", held[:2000], "the model wrote a malformed tool call")]
        calls = [ToolCall(c.id or new_call_id(), c.function.name, c.function.arguments or "{}")
                 for c in info.tool_calls]
        content = info.content or ""
        # The parser's content is the whole reply's text before the calls: yield only what is new.
        return content[self.sent:] if content.startswith(self.text[:self.sent]) else "", calls


def _partial(text: str, marker: str) -> int:
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


class VLLMEngine(LLMEngine):
    def __init__(self, config: VLLMConfig) -> None:
        super().__init__()
        vllm = _import_vllm()
        try:
            from vllm import AsyncLLMEngine  # v1: an alias of vllm.v1.engine.async_llm.AsyncLLM
        except ImportError:
            from vllm.v1.engine.async_llm import AsyncLLM as AsyncLLMEngine
        try:
            from vllm.sampling_params import RequestOutputKind
        except ImportError:
            RequestOutputKind = None  # noqa: N806 - very old vLLM: outputs are cumulative

        self.config = config
        self.model_name = config.model
        source: str | Path = config.model
        if is_local_path(config.model):
            source = require_path(config.model, "LLM model directory")
        self._vllm = vllm
        self._delta_kind = getattr(RequestOutputKind, "DELTA", None) if RequestOutputKind is not None else None
        args = vllm.AsyncEngineArgs(
            model=str(source),
            gpu_memory_utilization=config.gpu_memory_utilization,
            max_model_len=config.max_model_len,
            dtype=config.dtype,
            enforce_eager=config.enforce_eager,
            tensor_parallel_size=config.tensor_parallel_size,
            enable_prefix_caching=config.enable_prefix_caching,
        )
        self.engine = AsyncLLMEngine.from_engine_args(args)
        self._tokenizer: Any = None
        self._template: TemplateTraits | None = None

    async def tokenizer(self) -> Any:
        if self._tokenizer is None:
            tokenizer = self.engine.get_tokenizer()  # a coroutine before vLLM 0.12, a plain call after
            if inspect.isawaitable(tokenizer):
                tokenizer = await tokenizer
            self._tokenizer = tokenizer
            # What the template accepts (system role, chats opening with the assistant), found once.
            self._template = TemplateTraits.probe(
                lambda messages: tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        return self._tokenizer

    async def encode_prompt(self, request: ChatRequest) -> list[int]:
        tokenizer = await self.tokenizer()
        text = tokenizer.apply_chat_template(
            chat_messages(request, self._template or TemplateTraits()),
            tools=list(request.tools) or None,
            add_generation_prompt=True,
            tokenize=False,
        )
        # The chat template already wrote BOS and other special tokens: add none here.
        return list(tokenizer.encode(text, add_special_tokens=False))

    def context_tokens(self) -> int | None:
        """The model's context length as vLLM runs it (max_model_len, or the model's own)."""
        model_config = getattr(self.engine, "model_config", None)
        return getattr(model_config, "max_model_len", None) or self.config.max_model_len

    def sampling_params(self, sampling: Sampling) -> Any:
        greedy = sampling.temperature <= 0.0
        kwargs: dict[str, Any] = dict(
            n=1,
            temperature=0.0 if greedy else float(sampling.temperature),
            top_p=1.0 if greedy or not 0.0 < sampling.top_p <= 1.0 else float(sampling.top_p),
            top_k=int(sampling.top_k) if sampling.top_k > 0 else 0,  # 0 = off (vLLM >= 0.8; -1 before)
            max_tokens=int(sampling.max_tokens),
            stop=list(sampling.stop) or None,
            seed=sampling.seed,
        )
        if self._delta_kind is not None:
            kwargs["output_kind"] = self._delta_kind
        return self._vllm.SamplingParams(**kwargs)

    async def generate(self, request: ChatRequest) -> AsyncIterator[Delta | ToolCall | Finished]:
        """With tools offered and a `tool_parser` configured, tool calls come out typed."""
        stream = self._generate(request)
        if request.tools and self.config.tool_parser:
            tokenizer = await self.tokenizer()
            splitter = VLLMSplitter(_tool_parser_class(self.config.tool_parser)(tokenizer),
                                    _openai_request(request, self.model_name))
            stream = split_stream(stream, splitter)
        async with aclosing(stream) as items:
            async for item in items:
                yield item

    async def _generate(self, request: ChatRequest) -> AsyncIterator[Delta | Finished]:
        request_id = request.request_id or f"chat-{uuid.uuid4().hex[:16]}"
        submitted = False
        with self.stats.track(request_id) as tracked:
            try:
                prompt_ids = await self.encode_prompt(request)
                context = self.context_tokens()
                if context is not None and len(prompt_ids) >= context:  # vLLM would raise its own traceback
                    raise context_exceeded(len(prompt_ids), context)
                params = self.sampling_params(request.sampling)
                delta_mode = self._delta_kind is not None
                sent_text = 0  # cumulative mode only: characters already yielded
                sent_tokens = 0  # cumulative mode only: tokens already reported
                completion_tokens = 0
                finish_reason: str | None = None
                queue_s: float | None = None
                submitted = True
                outputs = self.engine.generate({"prompt_token_ids": prompt_ids}, params, request_id)
                try:
                    async for output in outputs:
                        completion = output.outputs[0]
                        if queue_s is None:
                            queue_s = queue_seconds(output)
                        if delta_mode:
                            text, tokens = completion.text, len(completion.token_ids)
                        else:
                            text, tokens = completion.text[sent_text:], len(completion.token_ids) - sent_tokens
                            sent_text, sent_tokens = len(completion.text), len(completion.token_ids)
                        completion_tokens += tokens
                        if text or tokens:
                            yield Delta(text, tokens)
                        if completion.finish_reason is not None:
                            finish_reason = completion.finish_reason
                finally:
                    # A no-op once the stream is exhausted; on an early exit vLLM's own generator aborts too.
                    await outputs.aclose()
                if finish_reason == "abort":
                    raise RuntimeError(f"vLLM aborted request {request_id}")
                tracked.finish()
                yield Finished("length" if finish_reason == "length" else "stop", len(prompt_ids), completion_tokens,
                               queue_s=queue_s)
            finally:
                if submitted and not tracked.finished:
                    # Free the sequence's KV cache now; a no-op if vLLM already dropped it.
                    await self.engine.abort(request_id)

    async def close(self) -> None:
        shutdown = getattr(self.engine, "shutdown", None)
        if shutdown is not None:
            result = shutdown()
            if inspect.isawaitable(result):
                await result
