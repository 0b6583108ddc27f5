"""Duplex speech end to end through Serve's gRPC proxy: the tiny Moshi checkpoint on one replica
with 4 slots (serve_config.cpu.yaml), greedy sampling so that outputs are reproducible."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from services.common import clients
from services.common.audio import float_to_pcm16
from services.common.rpc import stage_metadata
from services.moshi.ticker import SILENCE_INDEX
from services.proto import moshi_pb2
from tests.integration.conftest import stage_stats

pytestmark = pytest.mark.cluster

SLOTS = 4  # serve_config.cpu.yaml
FRAME_BYTES = 3840
# Clients send all their frames at once (fewer than the deployment's 25-frame buffer): they wait
# in the slot and are answered one per tick. On a loaded machine a frame can still reach the
# replica after its tick (it then hears silence), so comparisons retry such runs.
AHEAD_S = 0.0
ATTEMPTS = 3


def noise(seed: int, count: int) -> list[bytes]:
    audio = 0.3 * np.random.default_rng(seed).standard_normal((count, 1920))
    return [float_to_pcm16(frame) for frame in audio]


def answered(reply: clients.Duplex) -> list[int]:
    return [frame.index for frame in reply.frames]


async def talk(channel, seed: int, count: int = 12, pace_s: float = AHEAD_S, **config) -> clients.Duplex:
    requests = clients.duplex_requests(noise(seed, count), pace_s=pace_s,
                                       config=moshi_pb2.DuplexConfig(sample_rate_hz=24_000, **config))
    return await clients.converse(channel, requests)


async def test_frames_in_frames_out_at_the_same_cadence_with_text(channel, ray_client):
    reply = await talk(channel, seed=1, count=25, pace_s=0.08)  # real time
    assert reply.started.frame_samples == 1920 and reply.started.sample_rate_hz == 24_000
    assert 0 <= reply.started.slot < SLOTS
    assert len(reply.frames) >= 25 and all(len(frame.pcm) == FRAME_BYTES for frame in reply.frames)
    assert [i for i in answered(reply) if i != SILENCE_INDEX] == list(range(25))
    assert any(np.frombuffer(frame.pcm, "<i2").any() for frame in reply.frames)
    assert reply.texts and all(token.text for token in reply.texts)
    # One frame back per 80 ms: the median gap between output frames is the tick.
    gaps = np.diff(reply.frame_times_s)
    assert 0.04 < float(np.median(gaps)) < 0.16, gaps
    assert (await stage_stats(ray_client, "moshi"))["ticker"]["occupied_slots"] == 0


async def without_silence(run):
    """run() -> replies, retried until no reply had a tick fed silence (a frame late for its tick)."""
    for _ in range(ATTEMPTS):
        replies = await run()
        if all(SILENCE_INDEX not in answered(reply) for reply in replies):
            return replies
    pytest.fail(f"all {ATTEMPTS} attempts had a client frame reach the replica after its tick")


async def test_concurrent_conversations_are_independent(channel):
    a1, b = await without_silence(lambda: asyncio.gather(talk(channel, 10), talk(channel, 11)))
    a2, c = await without_silence(lambda: asyncio.gather(talk(channel, 10), talk(channel, 12)))
    assert a1.started.slot != b.started.slot
    assert [f.pcm for f in a1.frames] == [f.pcm for f in a2.frames]
    assert [t.text for t in a1.texts] == [t.text for t in a2.texts]
    assert [f.pcm for f in b.frames] != [f.pcm for f in c.frames]  # the neighbours did differ


async def test_reused_slot_starts_fresh(channel):
    async def twice():
        return [await talk(channel, seed=20), await talk(channel, seed=20)]

    first, second = await without_silence(twice)
    assert first.started.slot == second.started.slot
    assert [f.pcm for f in first.frames] == [f.pcm for f in second.frames]


async def test_one_conversation_too_many_is_refused_at_once(channel, ray_client):
    held = [clients.RequestStream(moshi_pb2.ConverseRequest(config=moshi_pb2.DuplexConfig(sample_rate_hz=24_000)))
            for _ in range(SLOTS)]
    stub = clients.moshi_pb2_grpc.DuplexSpeechStub(channel)
    calls = [stub.Converse(stream, metadata=stage_metadata("moshi")) for stream in held]
    try:
        slots = {(await call.read()).started.slot for call in calls}
        assert slots == set(range(SLOTS))
        started = asyncio.get_running_loop().time()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await talk(channel, seed=30, count=2)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert asyncio.get_running_loop().time() - started < 10  # refused, not queued
        assert (await stage_stats(ray_client, "moshi"))["slot_occupancy"] == 1.0
    finally:
        for stream in held:
            stream.close()
        for call in calls:
            while await call.read() != grpc.aio.EOF:
                pass
    assert len((await talk(channel, seed=31, count=3)).frames) == 3  # slots are free again


@pytest.mark.parametrize(("config", "frames", "words"), [
    (None, [b"\0" * FRAME_BYTES], "first message"),
    (moshi_pb2.DuplexConfig(sample_rate_hz=16_000), [], "24000"),
    (moshi_pb2.DuplexConfig(sample_rate_hz=24_000), [b"\0" * 1000], "3840 bytes"),
])
async def test_bad_streams_get_invalid_argument_and_leave_others_alone(channel, ray_client, config, frames, words):
    async def bad_requests():
        if config is not None:
            yield moshi_pb2.ConverseRequest(config=config)
        for pcm in frames:
            yield moshi_pb2.ConverseRequest(audio=moshi_pb2.AudioFrame(pcm=pcm))

    (reference,) = await without_silence(lambda: asyncio.gather(talk(channel, seed=40)))
    refusals = []

    async def beside_a_bad_stream():
        pending = asyncio.create_task(talk(channel, seed=40))
        await asyncio.sleep(0.3)  # the good conversation is streaming when the bad one arrives
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await clients.converse(channel, bad_requests())
        refusals.append(refused)
        return [await pending]

    (good,) = await without_silence(beside_a_bad_stream)
    refused = refusals[-1]
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in refused.value.details()
    assert [f.pcm for f in good.frames] == [f.pcm for f in reference.frames]
    assert (await stage_stats(ray_client, "moshi"))["ticker"]["occupied_slots"] == 0
