"""Duplex sessions on the replica's ticker, with the tiny Moshi engine (no Serve): admission,
cadence, late and early clients, bad input. Greedy sampling keeps outputs reproducible."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest

pytest.importorskip("moshi.models.loaders", reason="moshi is not installed (see the Makefile)")

from services.common.audio import float_to_pcm16, pcm16_to_float  # noqa: E402
from services.common.rpc import StageError  # noqa: E402
from services.common.workers import EngineWorker  # noqa: E402
from services.moshi.config import MoshiConfig  # noqa: E402
from services.moshi.engine import FRAME_SAMPLES  # noqa: E402
from services.moshi.engines import load_engine  # noqa: E402
from services.moshi.session import DuplexSession  # noqa: E402
from services.moshi.ticker import SILENCE_INDEX, DuplexTicker  # noqa: E402
from services.proto import moshi_pb2  # noqa: E402

SLOTS = 2
TICK_S = 0.08


@pytest.fixture(scope="module")
def config(tiny_moshi: Path) -> MoshiConfig:
    return MoshiConfig(engine={"model": str(tiny_moshi), "device": "cpu", "slots": SLOTS, "text_temperature": 0.0,
                               "audio_temperature": 0.0}, max_buffered_frames=8, tick_ms=TICK_S * 1000)


@pytest.fixture(scope="module")
def engine(config):
    engine = load_engine(config.engine)
    yield engine
    engine.close()


@pytest.fixture
async def ticker(engine, config):
    worker = EngineWorker(1, "moshi-test")
    ticker = DuplexTicker(engine, worker, TICK_S, config.max_buffered_frames)
    yield ticker
    ticker.close()
    worker.close()


def frames(seed: int, count: int) -> list[bytes]:
    audio = 0.3 * np.random.default_rng(seed).standard_normal((count, FRAME_SAMPLES))
    return [float_to_pcm16(frame) for frame in audio]


def config_request(**fields) -> moshi_pb2.ConverseRequest:
    return moshi_pb2.ConverseRequest(config=moshi_pb2.DuplexConfig(**{"sample_rate_hz": 24_000, **fields}))


async def requests(pcm: list[bytes], *, gaps: dict[int, float] | None = None, first=None, pace_s: float = TICK_S / 2):
    """Frames sent ahead of the tick (every pace_s), so the buffer never runs dry nor overflows."""
    yield first or config_request()
    for index, frame in enumerate(pcm):
        await asyncio.sleep((gaps or {}).get(index, pace_s))
        yield moshi_pb2.ConverseRequest(audio=moshi_pb2.AudioFrame(pcm=frame, index=index))


async def converse(ticker, config, stream) -> list[moshi_pb2.ConverseResponse]:
    return [response async for response in DuplexSession(ticker, config).run(stream)]


def audio_frames(responses) -> list[moshi_pb2.AudioFrame]:
    return [r.audio for r in responses if r.WhichOneof("event") == "audio"]


async def test_one_frame_out_per_frame_in_with_text(ticker, config):
    responses = await converse(ticker, config, requests(frames(1, 12)))
    assert responses[0].started.frame_samples == FRAME_SAMPLES and responses[0].started.sample_rate_hz == 24_000
    out = audio_frames(responses)
    assert [frame.index for frame in out] == list(range(12))  # in order, one per input frame
    assert all(len(frame.pcm) == 2 * FRAME_SAMPLES for frame in out)
    assert max(float(np.abs(pcm16_to_float(frame.pcm)).max()) for frame in out) > 0
    texts = [r.text for r in responses if r.WhichOneof("event") == "text"]
    assert texts and all(0 <= t.frame_index < 12 for t in texts)
    assert ticker.stats.occupied_slots == 0 and ticker.stats.ticks >= 12


async def test_late_client_gets_silence_and_stays_in_order(ticker, config):
    responses = await converse(ticker, config, requests(frames(2, 6), gaps={3: 10 * TICK_S}))
    indices = [frame.index for frame in audio_frames(responses)]
    assert indices.count(SILENCE_INDEX) >= 2  # the ticks it missed were filled in
    assert [i for i in indices if i != SILENCE_INDEX] == list(range(6))
    assert indices[:3] == [0, 1, 2]


async def test_client_running_far_ahead_loses_its_oldest_frames(ticker, config):
    """Frames beyond max_buffered_frames (8) are dropped, oldest first: the delay stays bounded."""

    async def burst():  # everything at once, then wait for the answers before ending the stream
        async for request in requests(frames(3, 20), pace_s=0):
            yield request
        await asyncio.sleep(12 * TICK_S)

    indices = [frame.index for frame in audio_frames(await converse(ticker, config, burst()))]
    kept = [index for index in indices if index != SILENCE_INDEX]  # silence: the wait after the burst
    assert len(kept) < 20 and kept == sorted(set(kept))
    assert kept[-8:] == list(range(12, 20))  # the newest frames were all answered, in order


async def test_slots_are_admitted_up_to_the_count(ticker, config):
    held = [ticker.acquire() for _ in range(SLOTS)]
    with pytest.raises(StageError) as refused:
        await converse(ticker, config, requests(frames(4, 2)))
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    ticker.release(held[0])
    assert len(audio_frames(await converse(ticker, config, requests(frames(4, 2))))) == 2
    ticker.release(held[1])
    assert ticker.stats.occupied_slots == 0


async def test_reused_slot_starts_fresh(ticker, config):
    first = audio_frames(await converse(ticker, config, requests(frames(5, 8))))
    second = audio_frames(await converse(ticker, config, requests(frames(5, 8))))
    assert [f.pcm for f in first] == [f.pcm for f in second]


@pytest.mark.parametrize(("first", "pcm", "message"), [
    (moshi_pb2.ConverseRequest(audio=moshi_pb2.AudioFrame(pcm=b"\0" * 3840)), [], "first message"),
    (config_request(sample_rate_hz=16_000), [], "24000"),
    (None, [b"\0" * 3838], "3840 bytes"),
    (None, [b"\0" * 3840, b"\0" * 1920], "3840 bytes"),
    (config_request(text_temperature=1.5), [], "sampling"),
    (config_request(seed=7), [], "seed"),
])
async def test_bad_streams_are_refused_and_free_their_slot(ticker, config, first, pcm, message):
    with pytest.raises(BaseException) as raised:
        await converse(ticker, config, requests(pcm, first=first))
    error = raised.value
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    assert isinstance(error, StageError) and error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.message
    assert ticker.stats.occupied_slots == 0
