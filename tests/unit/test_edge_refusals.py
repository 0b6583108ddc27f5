"""What the edge does with a stage's refusal, against a real gRPC server in this process: a prompt
over the model's context is not retried (a full stage still is), the call ends with a short
`stage_error` naming the stage, the error counter is labelled with that stage (not "edge"), and no
traceback a stage might still send reaches the caller."""

from __future__ import annotations

import grpc
import pytest

from services.common import metrics
from services.common.rpc import context_exceeded
from services.edge.config import ResilienceConfig, StagesConfig
from services.edge.host import failure_of
from services.edge.streams.base import MAX_DETAILS_CHARS, StageClients, StageRefused, describe
from services.edge.streams.llm import reply_deltas
from services.proto import llm_pb2, llm_pb2_grpc
from tests.unit.edge.fakes import edge_config

FAST = ResilienceConfig(retry_attempts=2, retry_backoff_ms=10, response_timeout_s=1.0, stall_timeout_s=1.0)
TRACEBACK = "Traceback (most recent call last):\n" + "  File \"/srv/ray/replica.py\", line 1, in f\n" * 60


class Refusing(llm_pb2_grpc.LanguageModelServicer):
    """The first call fails with `code` and `details`; later calls answer "ok"."""

    def __init__(self, code: grpc.StatusCode, details: str):
        self.code, self.details, self.calls = code, details, 0

    async def Generate(self, request, context):
        self.calls += 1
        if self.calls == 1:
            await context.abort(self.code, self.details)
        yield llm_pb2.GenerateResponse(delta=llm_pb2.TextDelta(text="ok"))
        yield llm_pb2.GenerateResponse(done=llm_pb2.GenerationDone())


async def _reply(servicer: Refusing) -> list[str]:
    server = grpc.aio.server()
    llm_pb2_grpc.add_LanguageModelServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    clients = StageClients(StagesConfig(grpc_address=f"127.0.0.1:{port}"))
    try:
        return [d async for d in reply_deltas(clients, [("user", "hi")], temperature=0.0, max_tokens=4,
                                              request_id="r", config=FAST)]
    finally:
        await clients.close()
        await server.stop(None)


async def test_a_prompt_over_the_context_is_not_retried_and_names_the_stage():
    too_long = context_exceeded(5000, 2048)
    servicer = Refusing(too_long.code, too_long.message)
    with pytest.raises(StageRefused) as refused:
        await _reply(servicer)
    assert servicer.calls == 1  # not retried as if transient
    assert refused.value.stage == "llm" and refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "context_length_exceeded" in str(refused.value)


async def test_a_full_stage_is_still_retried():
    servicer = Refusing(grpc.StatusCode.RESOURCE_EXHAUSTED, "the queue is full")
    assert await _reply(servicer) == ["ok"]
    assert servicer.calls == 2


async def test_the_refusal_ends_the_call_with_a_short_error_counted_for_its_stage(monkeypatch):
    counted = []
    monkeypatch.setattr(metrics, "record_stage_error", lambda stage, code: counted.append((stage, code)))
    servicer = Refusing(grpc.StatusCode.INVALID_ARGUMENT, TRACEBACK)  # a stage that still leaks one
    with pytest.raises(StageRefused) as refused:
        await _reply(servicer)
    failure = failure_of(ExceptionGroup("call", [refused.value]), edge_config())
    assert (failure.code, failure.stage, failure.close_code) == ("stage_error", "llm", 1011)
    assert counted == [("llm", grpc.StatusCode.INVALID_ARGUMENT)]
    assert "\n" not in failure.message and "File" not in failure.message
    assert len(failure.message) < MAX_DETAILS_CHARS + 60


def test_describe_keeps_one_short_line():
    class Error(grpc.aio.AioRpcError):
        def __init__(self):
            super().__init__(grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), grpc.aio.Metadata(), details=TRACEBACK)

    text = describe(Error())
    assert text.startswith("INTERNAL: Traceback") and "\n" not in text and len(text) <= MAX_DETAILS_CHARS
