"""The `llm` Serve application: the LanguageModel gRPC service (one RPC per turn).

With tracing on, each RPC's server span has one child, `llm.generate`: the engine's generation
from the request to its last token, with the gen_ai.* request and usage attributes, a
`first_token` event and `parley.engine.active` (generations already in the engine when it
joined). Its child `llm.queue` is the time the request waited in the engine's queue before its
first computation, as the engine reports it at the end (transformers: its single worker; vLLM:
its scheduler's request stats, when vLLM attaches them); the same wait feeds the queue-wait metric.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import aclosing

from opentelemetry import trace
from ray import serve
from ray.serve import Application

from services.common import attributes as attr
from services.common import metrics, telemetry
from services.common.rpc import check_size, grpc_stream, invalid_argument
from services.common.stage import StageDeployment
from services.llm.config import LLMConfig
from services.llm.engine import ChatRequest, ChatTurn, Delta, Sampling, ToolCall
from services.llm.engines import load_engine
from services.proto import llm_pb2

ROLES = frozenset({"system", "user", "assistant", "tool"})
FINISH_REASONS = {"stop": llm_pb2.FINISH_REASON_STOP, "length": llm_pb2.FINISH_REASON_LENGTH,
                  "tool_calls": llm_pb2.FINISH_REASON_TOOL_CALLS}
_tracer = telemetry.tracer("parley.llm")


def tool_call_delta(call: ToolCall) -> llm_pb2.GenerateResponse:
    """A typed tool call on the wire (never text)."""
    return llm_pb2.GenerateResponse(delta=llm_pb2.TextDelta(tool_call=llm_pb2.ToolCall(
        id=call.id, name=call.name, arguments_json=call.arguments, error=call.error)))


def to_chat_request(request: llm_pb2.GenerateRequest, config: LLMConfig) -> ChatRequest:
    """Validate a GenerateRequest and fill unset sampling fields from the deployment defaults."""
    if not request.messages:
        raise invalid_argument("messages must not be empty")
    check_size(len(request.messages), config.max_messages, "number of messages")
    check_size(sum(len(m.content) for m in request.messages) + len(request.tools_json),
               config.max_request_chars, "request size in characters")
    for message in request.messages:
        if message.role not in ROLES:
            raise invalid_argument(f"unknown role {message.role!r}; use one of {sorted(ROLES)}")
    sampling = request.sampling
    temperature = sampling.temperature if sampling.HasField("temperature") else config.temperature
    top_p = sampling.top_p if sampling.HasField("top_p") else config.top_p
    max_tokens = sampling.max_tokens if sampling.HasField("max_tokens") else config.max_tokens
    if not 0.0 <= temperature <= 2.0:
        raise invalid_argument(f"temperature must be within [0, 2], got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise invalid_argument(f"top_p must be within (0, 1], got {top_p}")
    if sampling.top_k < 0:
        raise invalid_argument("top_k must not be negative")
    if not 1 <= max_tokens <= config.max_tokens_limit:
        raise invalid_argument(f"max_tokens must be within [1, {config.max_tokens_limit}], got {max_tokens}")
    try:
        tools = tuple(json.loads(request.tools_json)) if request.tools_json else ()
    except (ValueError, TypeError, RecursionError) as error:  # RecursionError: nested too deep
        raise invalid_argument(f"tools_json is not a JSON array: {error}") from None
    if not all(isinstance(tool, dict) for tool in tools):
        raise invalid_argument("tools_json must be a JSON array of objects")
    return ChatRequest(
        messages=tuple(ChatTurn(m.role, m.content, m.tool_call_id, tuple(
            ToolCall(c.id, c.name, c.arguments_json or "{}", c.error) for c in m.tool_calls))
            for m in request.messages),
        sampling=Sampling(
            temperature=temperature, top_p=top_p, top_k=sampling.top_k, max_tokens=max_tokens,
            stop=tuple(s for s in sampling.stop if s),
            seed=sampling.seed if sampling.HasField("seed") else None,
        ),
        tools=tools,
        request_id=request.request_id,
    )


@serve.deployment(name="LanguageModel", ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32)
class LanguageModelDeployment(StageDeployment[LLMConfig]):
    config_type = LLMConfig
    stage = "llm"

    def __init__(self, config: LLMConfig):
        super().__init__(config, load_engine)

    @grpc_stream
    async def Generate(self, request: llm_pb2.GenerateRequest, grpc_context=None):
        with self.track(attr.SPAN_GENERATE, grpc_context) as span:
            if span.is_recording():
                span.set_attribute(attr.GEN_AI_REQUEST_MODEL, self.engine.model_name)
            chat = to_chat_request(request, self.config)
            async for response in self._generate(chat, span):
                yield response

    async def _generate(self, chat: ChatRequest, parent: trace.Span = trace.INVALID_SPAN):
        span = trace.INVALID_SPAN
        if parent.is_recording():
            span = _tracer.start_span(attr.SPAN_LLM_GENERATE, trace.set_span_in_context(parent),
                                      attributes=self._request_attributes(chat))
        content = [] if span.is_recording() and telemetry.content_enabled() else None
        started, requested_at = time.perf_counter(), time.monotonic()
        first_token_s = finished = None
        try:
            # aclosing: a cancelled RPC closes the engine's generator, which aborts the generation.
            async with aclosing(self.engine.generate(chat)) as stream:
                async for item in stream:
                    if isinstance(item, ToolCall):
                        yield tool_call_delta(item)
                    elif isinstance(item, Delta):
                        if first_token_s is None:
                            first_token_s = time.perf_counter() - started
                            span.add_event("first_token")
                        if content is not None:
                            content.append(item.text)
                        yield llm_pb2.GenerateResponse(delta=llm_pb2.TextDelta(text=item.text, tokens=item.tokens))
                    else:
                        finished, total = item, time.perf_counter() - started
                        if item.queue_s is not None:
                            metrics.observe_queue_wait(self.stage, item.queue_s)
                        if span.is_recording():
                            span.set_attributes(self._usage_attributes(item, first_token_s, total, content))
                            self._trace_queue(span, item.queue_s, requested_at)
                        yield llm_pb2.GenerateResponse(done=llm_pb2.GenerationDone(
                            finish_reason=FINISH_REASONS[item.reason], prompt_tokens=item.prompt_tokens,
                            completion_tokens=item.completion_tokens,
                            time_to_first_token_s=first_token_s if first_token_s is not None else total,
                            total_s=total, model=self.engine.model_name, replica_id=self.replica_id,
                        ))
        except (GeneratorExit, asyncio.CancelledError):
            if finished is None:
                span.set_attribute(attr.RPC_CANCELLED, True)  # a barge-in: the engine aborted the generation
            raise
        except BaseException as error:
            span.record_exception(error)
            raise
        finally:
            span.end()

    @staticmethod
    def _trace_queue(parent: trace.Span, queue_s: float | None, requested_at: float) -> None:
        if queue_s is None:
            return
        parent.set_attribute(attr.QUEUE_WAIT_MS, round(queue_s * 1000, 1))
        _tracer.start_span(attr.SPAN_LLM_QUEUE, trace.set_span_in_context(parent),
                           start_time=telemetry.epoch_ns(requested_at)).end(telemetry.epoch_ns(requested_at + queue_s))

    def _request_attributes(self, chat: ChatRequest) -> dict:
        sampling = chat.sampling
        attributes = {
            attr.GEN_AI_OPERATION_NAME: "chat", attr.GEN_AI_REQUEST_MODEL: self.engine.model_name,
            attr.GEN_AI_REQUEST_MAX_TOKENS: sampling.max_tokens, attr.GEN_AI_REQUEST_TEMPERATURE: sampling.temperature,
            attr.GEN_AI_REQUEST_TOP_P: sampling.top_p, attr.LLM_MESSAGES: len(chat.messages),
            attr.LLM_REQUEST_ID: chat.request_id, attr.ENGINE_ACTIVE: self.engine.stats.active,
        }
        if sampling.top_k:
            attributes[attr.GEN_AI_REQUEST_TOP_K] = sampling.top_k
        if sampling.seed is not None:
            attributes[attr.GEN_AI_REQUEST_SEED] = sampling.seed
        if telemetry.content_enabled():
            attributes[attr.GEN_AI_INPUT_MESSAGES] = json.dumps(
                [{"role": turn.role, "parts": [{"type": "text", "content": turn.content}]} for turn in chat.messages])
        return attributes

    def _usage_attributes(self, finished, first_token_s: float | None, total_s: float,
                          content: list[str] | None) -> dict:
        attributes = {
            attr.GEN_AI_RESPONSE_MODEL: self.engine.model_name,
            attr.GEN_AI_USAGE_INPUT_TOKENS: finished.prompt_tokens,
            attr.GEN_AI_USAGE_OUTPUT_TOKENS: finished.completion_tokens,
            attr.GEN_AI_RESPONSE_FINISH_REASONS: [finished.reason],
            attr.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK: first_token_s if first_token_s is not None else total_s,
        }
        if content is not None:
            attributes[attr.GEN_AI_OUTPUT_MESSAGES] = json.dumps([{
                "role": "assistant", "parts": [{"type": "text", "content": "".join(content)}],
                "finish_reason": finished.reason}])
        return attributes


def build_app(args: LLMConfig) -> Application:
    return LanguageModelDeployment.bind(args)
