"""The stages' gRPC ingress is authenticated: through Serve's real proxy, a call without the
bearer token, or with a wrong one, ends UNAUTHENTICATED before the stage does any work, for every
stage service; the same call with the token is served (the other tests all run with it)."""

from __future__ import annotations

import grpc
import pytest

from services.proto import asr_pb2, asr_pb2_grpc, llm_pb2, llm_pb2_grpc, tts_pb2, tts_pb2_grpc
from tests.integration.conftest import GRPC_TOKEN, stage_stats

pytestmark = pytest.mark.cluster


def calls(channel):
    return {
        "asr": lambda metadata: asr_pb2_grpc.SpeechRecognitionStub(channel).Recognize(
            iter([asr_pb2.RecognizeRequest(config=asr_pb2.RecognitionConfig(sample_rate_hz=16000))]),
            metadata=metadata),
        "llm": lambda metadata: llm_pb2_grpc.LanguageModelStub(channel).Generate(
            llm_pb2.GenerateRequest(messages=[llm_pb2.ChatMessage(role="user", content="hi")],
                                    sampling=llm_pb2.SamplingParams(max_tokens=2)), metadata=metadata),
        "tts": lambda metadata: tts_pb2_grpc.SpeechSynthesisStub(channel).Synthesize(
            iter([tts_pb2.SynthesizeRequest(config=tts_pb2.SynthesisConfig()),
                  tts_pb2.SynthesizeRequest(text=tts_pb2.TextChunk(text="Hi."))]), metadata=metadata),
    }


@pytest.mark.parametrize("stage", ["asr", "llm", "tts"])
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", f"Basic {GRPC_TOKEN}", GRPC_TOKEN])
async def test_calls_without_the_right_token_are_unauthenticated(channel, ray_client, stage, authorization):
    metadata = [("application", stage)] + ([("authorization", authorization)] if authorization else [])
    before = await stage_stats(ray_client, stage)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        [response async for response in calls(channel)[stage](metadata)]
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "bearer token" in error.value.details()
    after = await stage_stats(ray_client, stage)
    if "engine" in after:  # the LLM's generation count: nothing reached the engine
        assert after["engine"]["started"] == before["engine"]["started"]


@pytest.mark.parametrize("stage", ["asr", "llm", "tts"])
async def test_the_same_call_with_the_token_is_served(channel, stage):
    metadata = [("application", stage), ("authorization", f"Bearer {GRPC_TOKEN}")]
    responses = [response async for response in calls(channel)[stage](metadata)]
    assert responses
