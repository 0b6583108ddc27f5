"""TTS end to end through Serve's gRPC proxy, the Kokoro engine on the tiny model."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from services.common import clients
from services.common.rpc import stage_metadata
from services.proto import tts_pb2, tts_pb2_grpc

pytestmark = pytest.mark.cluster

SHORT = "Hello there."
LONG = "Hello there. Your table for two is booked at eight tonight, and we will send a reminder an hour before."


async def test_pcm_at_requested_rate_grows_with_text(channel):
    short = await clients.synthesize(channel, clients.text_requests([SHORT], sample_rate=16_000))
    long = await clients.synthesize(channel, clients.text_requests([LONG], sample_rate=16_000))
    assert {chunk.sample_rate_hz for chunk in short.chunks + long.chunks} == {16_000}
    assert short.audio.size > 0 and float(abs(short.audio).max()) > 0
    assert long.audio.size > 2 * short.audio.size
    assert long.done.segments >= 2 and long.done.audio_s == pytest.approx(long.audio.size / 16_000, abs=0.01)
    assert [c.text for c in long.chunks if c.segment_end][0] == "Hello there."


async def test_first_audio_arrives_before_the_whole_text_is_sent(channel):
    first_audio = asyncio.Event()

    async def requests():
        yield tts_pb2.SynthesizeRequest(config=tts_pb2.SynthesisConfig(sample_rate_hz=24_000))
        yield tts_pb2.SynthesizeRequest(text=tts_pb2.TextChunk(text="Sure, I can help "))
        yield tts_pb2.SynthesizeRequest(text=tts_pb2.TextChunk(text="with that. And then"))
        # The rest of the reply is only sent once audio for the first sentence came back.
        await asyncio.wait_for(first_audio.wait(), 60)
        yield tts_pb2.SynthesizeRequest(text=tts_pb2.TextChunk(text=" some more words"))
        yield tts_pb2.SynthesizeRequest(end=tts_pb2.EndOfInput())

    texts = []
    call = tts_pb2_grpc.SpeechSynthesisStub(channel).Synthesize(requests(), metadata=stage_metadata("tts"))
    async for response in call:
        if response.WhichOneof("event") == "audio":
            texts.append(response.audio.text)
            first_audio.set()
    assert texts[0] == "Sure, I can help with that."
    assert texts[-1] == "And then some more words"


def config(**fields) -> tts_pb2.SynthesizeRequest:
    return tts_pb2.SynthesizeRequest(config=tts_pb2.SynthesisConfig(**fields))


def text(value: str) -> tts_pb2.SynthesizeRequest:
    return tts_pb2.SynthesizeRequest(text=tts_pb2.TextChunk(text=value))


@pytest.mark.parametrize(("requests", "code", "words"), [
    ([text("hi")], grpc.StatusCode.INVALID_ARGUMENT, "first message"),
    ([config(voice="nobody")], grpc.StatusCode.INVALID_ARGUMENT, "unknown voice"),
    ([config(sample_rate_hz=1000)], grpc.StatusCode.INVALID_ARGUMENT, "sample_rate_hz"),
    ([config(speed=5.0)], grpc.StatusCode.INVALID_ARGUMENT, "speed"),
    ([config(), text("")], grpc.StatusCode.INVALID_ARGUMENT, "empty"),
    ([config(), text("x" * 5000)], grpc.StatusCode.RESOURCE_EXHAUSTED, "over the limit"),
])
async def test_bad_input_gets_a_clear_status(channel, requests, code, words):
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await clients.synthesize(channel, iter(requests))
    assert error.value.code() == code
    assert words in error.value.details()


async def test_voice_by_name_and_no_text_is_a_clean_empty_result(channel):
    speech = await clients.synthesize(channel, clients.text_requests([], voice="am_adam"))
    assert speech.audio.size == 0 and speech.done.segments == 0
