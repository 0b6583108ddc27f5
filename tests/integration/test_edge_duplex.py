"""Duplex calls through the deployed edge over the WebSocket protocol: the caller's speech streams
to the `moshi` stage (tiny checkpoint) and its frames come back through the playout clock."""

from __future__ import annotations

import grpc
import jwt
import pytest

from services.common.audio import read_wav
from services.edge.auth import ALGORITHM, mint_token
from services.edge.caller import call
from tests.conftest import SPEECH_WAV
from tests.integration.conftest import stage_stats, wait_quiet

pytestmark = pytest.mark.cluster


def token(secret: str, **claims) -> str:
    base = jwt.decode(mint_token(secret, ttl_s=600), secret, algorithms=[ALGORITHM])
    return jwt.encode({**base, **claims}, secret, algorithm=ALGORITHM)


async def test_a_duplex_call_streams_both_ways(edge_ws_url, edge_secret, ray_client):
    audio, rate = read_wav(SPEECH_WAV)  # 16 kHz speech: the edge resamples it to Moshi's 24 kHz
    result = await call(edge_ws_url, token(edge_secret, mode="duplex"), audio, rate, tail_s=1.0,
                        output_sample_rate=16_000)
    kinds = [event["type"] for event in result.events]
    assert kinds[0] == "ready" and result.events[0]["mode"] == "duplex"
    assert result.close_code == 1000
    assert "agent_audio_start" in kinds and result.of_type("agent_text")
    assert all(event["turn_id"] == 0 and event["text"] for event in result.of_type("agent_text"))
    assert not {"transcript", "user_speech_started"} & set(kinds)  # the cascade's ASR never ran
    # The model answered every 80 ms while the caller spoke, paced out in real time.
    call_s = audio.size / rate
    heard_s = result.audio.size / result.output_sample_rate
    assert 0.5 * call_s < heard_s < call_s + 2.0
    assert result.audio_arrivals[-1] - result.audio_arrivals[0] >= 0.6 * heard_s
    # The speech ends at ~3.3 s and 0.8 s of silence follow: one inferred turn, answered by the
    # (always audible) tiny model's next frame.
    [metrics] = result.of_type("metrics")
    assert metrics["ttfat_ms"] is not None and metrics["ttfat_ms"] >= 300  # at least the silence threshold
    assert metrics["asr_final_ms"] is None and metrics["llm_ttft_ms"] is None
    stats = await wait_quiet(ray_client, stages=("moshi",))
    edge, moshi = stats["edge"], stats["moshi"]
    assert edge["active_conversations"] == 0 and moshi["ticker"]["occupied_slots"] == 0


async def test_an_unknown_mode_is_a_protocol_error(edge_ws_url, edge_secret):
    audio, rate = read_wav(SPEECH_WAV)
    result = await call(edge_ws_url, token(edge_secret, mode="telepathy"), audio[: rate // 2], rate, tail_s=1.0)
    assert result.close_code == 4400
    assert result.of_type("error")[0]["code"] == "bad_request"


async def test_a_duplex_call_falls_back_to_the_cascade_when_every_slot_is_taken(edge_ws_url, edge_secret, channel,
                                                                                 ray_client):
    from services.common.clients import RequestStream
    from services.common.rpc import stage_metadata
    from services.proto import moshi_pb2, moshi_pb2_grpc

    slots = (await stage_stats(ray_client, "moshi"))["ticker"]["slots"]
    stub = moshi_pb2_grpc.DuplexSpeechStub(channel)
    held = [RequestStream(moshi_pb2.ConverseRequest(config=moshi_pb2.DuplexConfig(sample_rate_hz=24_000)))
            for _ in range(slots)]
    calls = [stub.Converse(stream, metadata=stage_metadata("moshi")) for stream in held]
    try:
        for pending in calls:
            await pending.read()  # SessionStarted: the slot is held
        audio, rate = read_wav(SPEECH_WAV)
        result = await call(edge_ws_url, token(edge_secret, mode="duplex"), audio, rate, tail_s=1.0)
    finally:
        for stream in held:
            stream.close()
        for pending in calls:
            while await pending.read() != grpc.aio.EOF:
                pass
    assert result.events[0]["type"] == "ready" and result.events[0].get("mode") != "duplex"
    assert "user_speech_started" in [event["type"] for event in result.events]  # the cascade's ASR heard it
    assert result.close_code == 1000
