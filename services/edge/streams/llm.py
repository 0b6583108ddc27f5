"""A turn's LLM stream: one Generate RPC, re-sent on failure with the text already received skipped.

Deadline: every next delta is due `response_timeout_s` after it is asked for. Closing the
generator (a barge-in) cancels the RPC, and the LLM stage aborts the generation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from services.common.requests import Generate
from services.common.rpc import stage_metadata
from services.edge.config import ResilienceConfig
from services.edge.streams.base import Metadata, RetryBudget, StageClients, StageTimeout, within


async def reply_deltas(stages: StageClients, messages: list[tuple[str, str]], *, temperature: float, max_tokens: int,
                       request_id: str, config: ResilienceConfig, metadata: Metadata = ()) -> AsyncIterator[str]:
    """The reply's text deltas, continuous across re-sent requests."""
    request = Generate.request(messages, request_id=request_id, temperature=temperature, max_tokens=max_tokens)
    budget, received = RetryBudget("llm", config), 0
    while True:
        call = stages.llm.Generate(request, metadata=stage_metadata(stages.config.llm_application, *metadata))
        skip = received
        try:
            async for response in within(config.response_timeout_s).read(call):
                if response.WhichOneof("event") != "delta":
                    continue
                text = response.delta.text
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
