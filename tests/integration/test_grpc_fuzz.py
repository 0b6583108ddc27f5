"""Fuzzing every gRPC request type through Serve's real proxy (hypothesis): random configs, random
sampling values, out-of-order and malformed stream messages, audio of odd lengths.

Every call must end OK, INVALID_ARGUMENT or RESOURCE_EXHAUSTED (a caller's mistake, told
clearly) — never UNKNOWN/INTERNAL, never a hang — and afterwards the stage holds no stream and
still serves a valid request.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common import clients
from services.common.rpc import stage_metadata
from services.proto import (
    asr_pb2,
    asr_pb2_grpc,
    common_pb2,
    llm_pb2,
    llm_pb2_grpc,
    moshi_pb2,
    moshi_pb2_grpc,
    tts_pb2,
    tts_pb2_grpc,
)
from tests.integration.conftest import stage_stats

pytestmark = pytest.mark.cluster

CLEAR = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
int32 = st.integers(-2**31, 2**31 - 1)
floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
texts = st.text(max_size=60)


async def status_of(call, timeout_s: float = 30.0) -> grpc.StatusCode:
    async def drain():
        async for _ in call:
            pass

    try:
        await asyncio.wait_for(drain(), timeout_s)
        return grpc.StatusCode.OK
    except grpc.aio.AioRpcError as error:
        return error.code()


def assert_clear(address: str, stage: str, stub, method: str, request) -> None:
    """Call `stub.method(request)` on `stage` and require a status that tells the caller clearly."""
    async def main():
        async with clients.open_channel(address) as channel:
            call = getattr(stub(channel), method)(request, metadata=stage_metadata(stage))
            return await status_of(call)

    status = asyncio.run(main())
    assert status in CLEAR, (status, request)


# -- requests ---------------------------------------------------------------------------------------

asr_config = st.builds(asr_pb2.RecognitionConfig, sample_rate_hz=int32, language=texts, beam_size=int32,
                       min_silence_ms=int32, partial_interval_ms=int32, word_timestamps=st.booleans())
asr_message = st.one_of(
    asr_config.map(lambda c: asr_pb2.RecognizeRequest(config=c)),
    st.binary(max_size=9000).map(lambda b: asr_pb2.RecognizeRequest(audio=common_pb2.AudioChunk(pcm=b))),
    st.just(asr_pb2.RecognizeRequest(flush=common_pb2.Flush())),
    st.just(asr_pb2.RecognizeRequest()))

sampling = st.builds(llm_pb2.SamplingParams, temperature=floats, top_p=floats, top_k=int32,
                     max_tokens=st.integers(-5, 200_000), stop=st.lists(texts, max_size=3),
                     seed=st.integers(-2**63, 2**63 - 1))
chat_message = st.builds(llm_pb2.ChatMessage, role=st.sampled_from(["system", "user", "assistant", "tool", "", "x"]),
                         content=texts, tool_call_id=texts)
generate_request = st.builds(llm_pb2.GenerateRequest, messages=st.lists(chat_message, max_size=4), sampling=sampling,
                             tools_json=st.one_of(st.just(""), texts, st.just('[{"type": "function"}]')),
                             request_id=texts)

tts_config = st.builds(tts_pb2.SynthesisConfig, voice=st.sampled_from(["", "af_heart", "nobody", "../etc"]),
                       speed=floats, sample_rate_hz=int32)
tts_message = st.one_of(
    tts_config.map(lambda c: tts_pb2.SynthesizeRequest(config=c)),
    texts.map(lambda t: tts_pb2.SynthesizeRequest(text=tts_pb2.TextChunk(text=t))),
    st.just(tts_pb2.SynthesizeRequest(flush=common_pb2.Flush())),
    st.just(tts_pb2.SynthesizeRequest(end=tts_pb2.EndOfInput())),
    st.just(tts_pb2.SynthesizeRequest()))


duplex_config = st.builds(moshi_pb2.DuplexConfig, sample_rate_hz=st.sampled_from([24_000, 16_000, 0, -1]),
                          text_temperature=floats, audio_temperature=floats, text_top_k=int32, audio_top_k=int32,
                          seed=st.integers(-2**63, 2**63 - 1))
duplex_message = st.one_of(
    duplex_config.map(lambda c: moshi_pb2.ConverseRequest(config=c)),
    st.one_of(st.binary(max_size=5000), st.just(b"\0" * 3840)).map(
        lambda b: moshi_pb2.ConverseRequest(audio=moshi_pb2.AudioFrame(pcm=b))),
    st.just(moshi_pb2.ConverseRequest()))


@FUZZ
@given(st.lists(asr_message, max_size=6))
def test_recognize_requests(serve_cluster, messages):
    assert_clear(serve_cluster.grpc_address, "asr", asr_pb2_grpc.SpeechRecognitionStub, "Recognize", iter(messages))


@FUZZ
@given(generate_request)
def test_generate_requests(serve_cluster, request):
    assert_clear(serve_cluster.grpc_address, "llm", llm_pb2_grpc.LanguageModelStub, "Generate", request)


@FUZZ
@given(st.lists(tts_message, max_size=5))
def test_synthesize_requests(serve_cluster, messages):
    assert_clear(serve_cluster.grpc_address, "tts", tts_pb2_grpc.SpeechSynthesisStub, "Synthesize", iter(messages))


@FUZZ
@given(st.lists(duplex_message, max_size=5))
def test_converse_requests(serve_cluster, messages):
    assert_clear(serve_cluster.grpc_address, "moshi", moshi_pb2_grpc.DuplexSpeechStub, "Converse", iter(messages))


async def test_after_the_fuzz_no_stream_is_left_and_each_stage_serves(ray_client, channel):
    for stage in ("asr", "llm", "tts", "moshi"):
        for _ in range(100):
            if (await stage_stats(ray_client, stage))["active_streams"] == 0:
                break
            await asyncio.sleep(0.1)
        assert (await stage_stats(ray_client, stage))["active_streams"] == 0, stage
    reply = await clients.generate(channel, [("user", "still there?")], max_tokens=4, temperature=0.0)
    assert reply.done is not None
