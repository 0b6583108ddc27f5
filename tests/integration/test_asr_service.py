"""ASR end to end: a real gRPC channel to Serve's proxy, the real engine on the tiny model."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from services.common import clients
from services.common.audio import float_to_pcm16, read_wav, resample
from services.common.rpc import stage_metadata
from services.proto import asr_pb2, common_pb2
from tests.conftest import SPEECH_WAV
from tests.integration.conftest import stage_stats

pytestmark = pytest.mark.cluster


def kinds(events) -> list[str]:
    return [event.WhichOneof("event") for event in events]


async def test_speech_gives_started_partials_final_in_order(channel):
    audio, rate = read_wav(SPEECH_WAV)
    config = asr_pb2.RecognitionConfig(sample_rate_hz=rate, word_timestamps=True, partial_interval_ms=300)
    events = await clients.recognize(channel, clients.audio_requests(audio, rate, 20, config=config))
    order = kinds(events)
    assert order[0] == "speech_started"
    assert order.count("final") == 1 and order[-1] == "summary"
    assert "partial" in order and order.index("partial") < order.index("final")
    assert order.index("speech_stopped") < order.index("final")
    started, final = events[0].speech_started, events[order.index("final")].final
    # espeak speech in the file runs from ~0.5 s to ~3.3 s
    assert 0.3 < started.audio_offset_s < 0.7
    assert final.start_s < started.audio_offset_s < final.end_s <= audio.size / rate + 0.01
    assert final.language == "en" and final.decode_s > 0
    assert all(final.start_s <= w.start_s <= w.end_s <= final.end_s + 0.01 for w in final.words)
    summary = events[-1].summary
    assert summary.utterances == 1 and summary.audio_s == pytest.approx(audio.size / rate, abs=0.05)


async def test_other_sample_rates_are_resampled(channel):
    audio, rate = read_wav(SPEECH_WAV)
    audio48 = resample(audio, rate, 48_000)
    events = await clients.recognize(channel, clients.audio_requests(audio48, 48_000, 100))
    order = kinds(events)
    assert order[0] == "speech_started" and order.count("final") == 1
    assert 0.3 < events[0].speech_started.audio_offset_s < 0.7


async def test_silence_yields_only_a_quiet_summary(channel):
    silence = np.zeros(16_000 * 3, np.float32)
    events = await clients.recognize(channel, clients.audio_requests(silence, 16_000, 100))
    assert kinds(events) == ["summary"]
    assert events[0].summary.utterances == 0 and events[0].summary.audio_s == pytest.approx(3.0)


async def test_progress_reports_the_audio_heard_on_its_cadence(channel):
    silence = np.zeros(16_000 * 3, np.float32)  # nothing to say: progress is the only sign of life
    config = asr_pb2.RecognitionConfig(sample_rate_hz=16_000, progress_interval_ms=500)
    events = await clients.recognize(channel, clients.audio_requests(silence, 16_000, 100, config=config))
    heard = [event.progress.audio_s for event in events if event.WhichOneof("event") == "progress"]
    assert kinds(events)[-1] == "summary"
    assert heard == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.5, 3.0], abs=0.05)


async def test_flush_forces_a_final_mid_utterance(channel):
    audio, rate = read_wav(SPEECH_WAV)
    mid = int(rate * 1.8)  # inside the speech

    async def requests():
        async for request in clients.audio_requests(audio[:mid], rate, 100):
            yield request
        yield asr_pb2.RecognizeRequest(flush=common_pb2.Flush())

    events = await clients.recognize(channel, requests())
    order = kinds(events)
    assert order.count("final") == 1 and order.index("speech_stopped") < order.index("final")


def audio(pcm: bytes) -> asr_pb2.RecognizeRequest:
    return asr_pb2.RecognizeRequest(audio=common_pb2.AudioChunk(pcm=pcm))


def config(rate: int = 16_000) -> asr_pb2.RecognizeRequest:
    return asr_pb2.RecognizeRequest(config=asr_pb2.RecognitionConfig(sample_rate_hz=rate))


@pytest.mark.parametrize(("requests", "code", "words"), [
    ([audio(b"\0\0")], grpc.StatusCode.INVALID_ARGUMENT, "first message"),
    ([], grpc.StatusCode.INVALID_ARGUMENT, "ended before"),
    ([config(0)], grpc.StatusCode.INVALID_ARGUMENT, "sample_rate_hz"),
    ([config(96_000)], grpc.StatusCode.INVALID_ARGUMENT, "sample_rate_hz"),
    ([config(), audio(b"\0\0\0")], grpc.StatusCode.INVALID_ARGUMENT, "even number"),
    ([config(), audio(b"\0" * 16_000 * 2 * 2)], grpc.StatusCode.RESOURCE_EXHAUSTED, "over the limit"),
    ([config(), config()], grpc.StatusCode.INVALID_ARGUMENT, "unexpected `config`"),
    ([asr_pb2.RecognizeRequest(config=asr_pb2.RecognitionConfig(sample_rate_hz=16_000, progress_interval_ms=5))],
     grpc.StatusCode.INVALID_ARGUMENT, "progress_interval_ms"),
])
async def test_bad_input_gets_a_clear_status(channel, requests, code, words):
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await clients.recognize(channel, iter(requests))
    assert error.value.code() == code
    assert words in error.value.details()


async def test_disconnect_mid_stream_frees_the_session_and_replica_keeps_serving(channel, ray_client):
    speech, rate = read_wav(SPEECH_WAV)
    sent = asyncio.Event()

    async def requests():
        yield config(rate)
        for start in range(0, int(rate * 1.5), 1600):
            yield audio(float_to_pcm16(speech[start:start + 1600]))
        sent.set()
        await asyncio.sleep(60)  # the client hangs up long before this

    call = clients.asr_pb2_grpc.SpeechRecognitionStub(channel).Recognize(requests(), metadata=stage_metadata("asr"))
    first = await call.read()
    assert first.WhichOneof("event") == "speech_started"
    await asyncio.wait_for(sent.wait(), 10)
    assert (await stage_stats(ray_client, "asr"))["active_streams"] >= 1
    call.cancel()
    for _ in range(100):
        if (await stage_stats(ray_client, "asr"))["active_streams"] == 0:
            break
        await asyncio.sleep(0.1)
    assert (await stage_stats(ray_client, "asr"))["active_streams"] == 0
    events = await clients.recognize(channel, clients.audio_requests(speech, rate, 100))
    assert kinds(events)[-1] == "summary"
