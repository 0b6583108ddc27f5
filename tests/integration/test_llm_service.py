"""LLM end to end through Serve's gRPC proxy, the transformers engine on the tiny model."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from services.common import clients
from services.common.rpc import stage_metadata
from services.proto import llm_pb2, llm_pb2_grpc
from tests.integration.conftest import stage_stats

pytestmark = pytest.mark.cluster

CHAT = [("system", "You are a concise voice agent."), ("user", "Book a table for two tonight.")]


async def test_streams_deltas_then_done(channel):
    reply = await clients.generate(channel, CHAT, max_tokens=24, temperature=0.0)
    assert reply.deltas >= 2 and reply.done is not None
    assert reply.done.finish_reason == llm_pb2.FINISH_REASON_LENGTH
    assert reply.done.completion_tokens == 24 and reply.done.prompt_tokens > 10
    assert 0 < reply.done.time_to_first_token_s <= reply.done.total_s
    again = await clients.generate(channel, CHAT, max_tokens=24, temperature=0.0)
    assert again.text == reply.text  # greedy is deterministic


async def test_cancel_aborts_generation_in_the_engine(channel, ray_client):
    # The tiny model writes its ~2000 tokens in about 3 s on an idle core; on a loaded 2-core
    # machine the cancel can take longer than that to travel client -> proxy -> replica, and then
    # the generation has already finished with nothing left to abort. A lost race is retried; a
    # cancel that never reaches the engine fails every attempt.
    for attempt in range(3):
        request_id = f"cancel-me-{attempt}"
        before = (await stage_stats(ray_client, "llm"))["engine"]
        request = llm_pb2.GenerateRequest(
            messages=[llm_pb2.ChatMessage(role=r, content=c) for r, c in CHAT],
            sampling=llm_pb2.SamplingParams(max_tokens=2000, temperature=0.0), request_id=request_id)
        call = llm_pb2_grpc.LanguageModelStub(channel).Generate(request, metadata=stage_metadata("llm"))
        first = await call.read()
        assert first.WhichOneof("event") == "delta"
        call.cancel()
        for _ in range(300):
            stats = (await stage_stats(ray_client, "llm"))["engine"]
            ended = stats["aborted"] + stats["finished"] > before["aborted"] + before["finished"]
            if ended and stats["active"] == 0:
                break
            await asyncio.sleep(0.1)
        if stats["finished"] > before["finished"] and stats["aborted"] == before["aborted"]:
            continue  # the generation outran the cancel
        assert stats["aborted"] == before["aborted"] + 1 and stats["active"] == 0
        assert request_id in stats["recent_aborts"]
        assert stats["finished"] == before["finished"]  # it did not run to its 2000 tokens
        return
    pytest.fail("three cancelled generations all ran to completion: the cancel never reached the engine")


def request(messages=CHAT, tools_json="", **sampling) -> llm_pb2.GenerateRequest:
    return llm_pb2.GenerateRequest(messages=[llm_pb2.ChatMessage(role=r, content=c) for r, c in messages],
                                   sampling=llm_pb2.SamplingParams(**sampling), tools_json=tools_json)


@pytest.mark.parametrize(("bad", "words"), [
    (request(messages=[]), "messages must not be empty"),
    (request(messages=[("wizard", "hi")]), "unknown role"),
    (request(temperature=5.0), "temperature"),
    (request(top_p=0.0), "top_p"),
    (request(max_tokens=100_000), "max_tokens"),
    (request(tools_json="{not json"), "tools_json"),
    (request(tools_json='["a"]'), "tools_json"),
])
async def test_bad_requests_are_invalid_argument(channel, bad, words):
    call = llm_pb2_grpc.LanguageModelStub(channel).Generate(bad, metadata=stage_metadata("llm"))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        [response async for response in call]
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in error.value.details()


async def test_oversized_request_is_resource_exhausted(channel):
    call = llm_pb2_grpc.LanguageModelStub(channel).Generate(
        request(messages=[("user", "x" * 250_000)]), metadata=stage_metadata("llm"))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        [response async for response in call]
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
