"""A turn's LLM stream: one Generate RPC, re-sent on failure with what was already received skipped.

It yields text deltas (str) and typed tool calls (llm_pb2.ToolCall), never a tool call as text.

Deadline: every next delta is due `response_timeout_s` after it is asked for. Closing the
generator (a barge-in) cancels the RPC, and the LLM stage aborts the generation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc

from services.common.requests import Generate
from services.common.rpc import SESSION_METADATA, stage_metadata
from services.edge.config import ResilienceConfig
from services.edge.streams.base import Metadata, RetryBudget, StageClients, StageTimeout, within
from services.proto import llm_pb2


async def reply_deltas(stages: StageClients, messages: list, *, temperature: float, max_tokens: int,
                       request_id: str, config: ResilienceConfig, metadata: Metadata = (),
                       tools_json: str = "", session_id: str = "", on_tokens: Callable[[int], None] | None = None,
                       ) -> AsyncIterator[str | llm_pb2.ToolCall]:
    """The reply's text deltas and tool calls, continuous across re-sent requests. `session_id` (the
    conversation's id) lets Serve route every turn of a conversation to the same LLM replica, whose
    prefix cache still holds the conversation so far (docs/gpu-packing.md, "LLM turns stay on one replica").
    `on_tokens` is told the tokens of every text delta received (re-sent ones too: engine work)."""
    request = Generate.request(messages, request_id=request_id, temperature=temperature, max_tokens=max_tokens,
                               tools_json=tools_json)
    budget, received, calls = RetryBudget("llm", config), 0, 0
    routing = ((SESSION_METADATA, session_id),) if session_id else ()
    while True:
        call = stages.llm.Generate(request, metadata=stage_metadata(stages.config.llm_application, *metadata,
                                                                    *routing))
        skip, skip_calls = received, calls
        try:
            async for response in within(config.response_timeout_s).read(call):
                if response.WhichOneof("event") != "delta":
                    continue
                if response.delta.HasField("tool_call"):
                    if skip_calls:
                        skip_calls -= 1
                        continue
                    calls += 1
                    yield response.delta.tool_call
                    continue
                text = response.delta.text
                if on_tokens is not None:
                    on_tokens(response.delta.tokens or 1)  # an engine that does not count sends one per delta
                if skip:
                    text, skip = text[skip:], max(0, skip - len(text))
                if text:
                    received += len(text)
                    yield text
            return
        except (grpc.aio.AioRpcError, StageTimeout) as error:
            await budget.spend(error)
        finally:
            call.cancel()  # a barge-in lands here too: the LLM stage aborts the generation
