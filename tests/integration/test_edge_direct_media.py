"""Calls on the edge replica's direct media endpoint (docs/websocket-protocol.md, "Direct media"):
admitted by the Serve route, then held on the replica's own port without Serve's HTTP proxy."""

from __future__ import annotations

import json
import secrets
from urllib.parse import urlsplit

import pytest
import websockets

from services.edge.auth import mint_token
from services.edge.caller import AdmissionRefused, admit, call, settled
from services.edge.direct_media import MEDIA_PATH
from tests.integration.conftest import HTTP_PORT, assert_quiet, speech, stage_stats

pytestmark = pytest.mark.cluster


async def test_admission_hands_out_the_replicas_own_endpoint(edge_http_url, edge_secret):
    url = urlsplit(await admit(edge_http_url, mint_token(edge_secret, ttl_s=600)))
    assert (url.scheme, url.hostname, url.path) == ("ws", "127.0.0.1", MEDIA_PATH)
    assert url.port and url.port != HTTP_PORT


async def test_a_turn_runs_over_the_direct_endpoint(edge_http_url, edge_secret, ray_client):
    token = mint_token(edge_secret, ttl_s=600)
    media_url = await admit(edge_http_url, token)

    audio, rate = speech()
    result = await call(media_url, token, audio, rate, tail_s=40, until=settled, extra_start={"greeting": False})
    kinds = [event["type"] for event in result.events]
    assert kinds[0] == "ready" and result.close_code == 1000, (kinds, result.close_reason)
    assert [event for event in result.of_type("transcript") if event["final"]]
    assert "agent_audio_start" in kinds and result.audio.size / result.output_sample_rate > 0.5
    [metrics] = result.of_type("metrics")
    assert metrics["interrupted"] is False and metrics["ttfat_ms"] is not None and metrics["ttfat_ms"] > 0
    stats = await stage_stats(ray_client, "edge")
    assert stats["direct_calls"] == 0 and stats["active_conversations"] == 0
    await assert_quiet(ray_client)


async def test_a_bad_token_is_refused_on_admission_and_on_the_direct_endpoint(edge_http_url, edge_secret,
                                                                               ray_client):
    with pytest.raises(AdmissionRefused) as refused:
        await admit(edge_http_url, "not-a-token")
    assert refused.value.status == 401
    with pytest.raises(AdmissionRefused) as refused:
        await admit(edge_http_url, mint_token("some-other-secret-of-at-least-32-bytes!", ttl_s=600))
    assert refused.value.status == 401

    media_url = await admit(edge_http_url, mint_token(edge_secret, ttl_s=600))
    for bad in ("not-a-token", mint_token(edge_secret, ttl_s=-5)):
        async with websockets.connect(media_url) as socket:
            await socket.send(json.dumps({"type": "start", "token": bad, "input_sample_rate": 16_000}))
            event = json.loads(await socket.recv())
            assert event["type"] == "error" and event["code"] == "unauthorized"
            with pytest.raises(websockets.ConnectionClosed):
                await socket.recv()
            assert socket.close_code == 4401
    await assert_quiet(ray_client)


async def test_a_token_opens_one_direct_call(edge_http_url, edge_secret, ray_client):
    token = mint_token(edge_secret, ttl_s=600)
    media_url = await admit(edge_http_url, token)
    audio, rate = speech()
    first = await call(media_url, token, audio[:rate // 2] * 0, rate, tail_s=0.5, extra_start={"greeting": False})
    assert first.of_type("ready") and first.close_code == 1000
    again = await call(media_url, token, audio[:rate // 2] * 0, rate, tail_s=5, extra_start={"greeting": False})
    assert not again.of_type("ready") and again.close_code == 4401
    assert "used already" in again.of_type("error")[0]["message"]
    await assert_quiet(ray_client)


async def test_a_direct_call_continues_the_callers_traceparent(edge_http_url, edge_secret, ray_client, otlp_receiver):
    from services.common import attributes as attr

    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    token = mint_token(edge_secret, ttl_s=600)
    media_url = await admit(edge_http_url, token)
    async with websockets.connect(media_url, additional_headers={"traceparent": f"00-{trace_id}-{parent_id}-01"}) \
            as socket:
        await socket.send(json.dumps({"type": "start", "token": token, "input_sample_rate": 16_000, "greeting": False}))
        assert json.loads(await socket.recv())["type"] == "ready"
        await socket.send(bytes(640))
        await socket.send(json.dumps({"type": "stop"}))
        with pytest.raises(websockets.ConnectionClosedOK):
            while True:
                await socket.recv()

    def conversation_arrived(spans) -> bool:
        return any(s.name == attr.SPAN_CONVERSATION and s.trace_id == trace_id for s in spans)

    spans = await otlp_receiver.wait_for(conversation_arrived)
    [conversation] = [s for s in spans if s.name == attr.SPAN_CONVERSATION and s.trace_id == trace_id]
    assert conversation.parent_id == parent_id and conversation.attributes[attr.TRANSPORT] == "direct"
    await assert_quiet(ray_client)
