"""The edge as a LiveKit agent, end to end through the deployed edge and stages.

The LiveKit server here is a STAND-IN (tests/livekit_standin/server.py), not LiveKit: the real
server binary cannot be installed on our test machines. It speaks LiveKit's real signalling
protocol (protobuf over WebSocket, /rtc/v1 single peer connection) and real WebRTC (aiortc), so
both the "human" (tests/livekit_standin/human.py) and the edge's agent use the unmodified
`livekit` rtc SDK, at the version the stand-in pins. It covers joining with access tokens,
publishing and auto-subscribing audio (relayed with aiortc's MediaRelay), data packets (the
`lk.transcription` text streams and the agent's JSON data messages), leaving, deleting a room,
and signed webhooks to the edge. It does not cover LiveKit's SFU behaviour under loss, simulcast,
TURN, reconnection/resume or multi-node routing.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import uuid

import aiohttp
import jwt
import pytest
import yaml
from livekit import api

from services.common.audio import read_wav
from services.edge.auth import ALGORITHM, mint_token
from services.edge.config import LiveKitConfig
from tests.conftest import SPEECH_WAV
from tests.integration.conftest import LIVEKIT_PORT, ROOT, assert_quiet, stage_stats, wait_quiet
from tests.livekit_standin.human import Human, room_token
from tests.livekit_standin.server import StandInServer

pytestmark = pytest.mark.cluster

AGENT = LiveKitConfig().agent_identity


@pytest.fixture(scope="module")
def livekit_keys() -> tuple[str, str]:
    """The API key and secret the CPU serve config gives the edge (local demo values)."""
    config = yaml.safe_load((ROOT / "serve_config.cpu.yaml").read_text())
    [edge] = [app for app in config["applications"] if app["name"] == "edge"]
    env = edge["runtime_env"]["env_vars"]
    return env["LIVEKIT_API_KEY"], env["LIVEKIT_API_SECRET"]


@pytest.fixture(scope="module")
async def standin(serve_cluster, edge_http_url, livekit_keys):
    key, secret = livekit_keys
    async with StandInServer(key, secret, port=LIVEKIT_PORT,
                             webhook_url=f"{edge_http_url}/v1/livekit/webhook") as server:
        yield server


def edge_token(secret: str, **persona) -> str:
    claims = jwt.decode(mint_token(secret, ttl_s=600), secret, algorithms=[ALGORITHM])
    return jwt.encode({**claims, "persona": persona}, secret, algorithm=ALGORITHM)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers) as response:
        return response.status, await response.json(content_type=None)


async def dispatch(edge_http_url: str, token: str | None, room: object) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return await post(f"{edge_http_url}/v1/livekit/dispatch", json.dumps({"room": room}).encode(), headers)


async def join(standin: StandInServer, keys: tuple[str, str], room: str, identity: str = "caller") -> Human:
    return await Human(standin.url, room_token(*keys, room, identity)).join()


def agent_track_sid(human: Human) -> str:
    agent = next(p for p in human.room.remote_participants.values() if p.identity == AGENT)
    return next(iter(agent.track_publications))


async def test_http_dispatch_runs_a_turn_with_captions_metrics_and_agent_audio(
        standin, livekit_keys, edge_http_url, edge_secret, ray_client):
    room = unique("lk-http")
    human = await join(standin, livekit_keys, room)
    try:
        status, body = await dispatch(edge_http_url, edge_token(edge_secret, greeting=""), room)
        assert status == 202 and body["room"] == room
        # A second dispatch into the same room is refused: one agent per room.
        assert (await dispatch(edge_http_url, edge_token(edge_secret), room))[0] == 409
        [ready] = await human.wait_for("ready", 30)
        assert ready["input_sample_rate"] == 16_000 and ready["output_sample_rate"] == 24_000
        audio, rate = read_wav(SPEECH_WAV)
        human.say(audio, rate)
        [metrics] = await human.wait_for("metrics", 90)
        assert metrics["interrupted"] is False and metrics["ttfat_ms"] is not None and metrics["ttfat_ms"] > 0
        kinds = [event["type"] for event in human.events]
        assert kinds.index("user_speech_stopped") < kinds.index("agent_text") < kinds.index("agent_audio_start")
        await human.wait_for("agent_audio_end", 30)
        # Captions as LiveKit frontends read them: the caller's against the caller's mic track,
        # the agent's against the agent's track, with the same text as the events.
        finals = [e["text"] for e in human.of_type("transcript") if e["final"]]
        user_captions = [c for c in human.captions if c.segment_id.startswith("user-")]
        assert user_captions and all(c.track_sid == human.mic_track_sid for c in user_captions)
        assert [c.text for c in user_captions if c.final] == finals
        # The agent's sentences: interim when their audio starts, final once heard, in order (the
        # text streams travel apart from the events: the last final may follow agent_audio_end).
        spoken = [e["text"] for e in human.of_type("agent_text")]
        for _ in range(100):
            if len([c for c in human.captions if c.segment_id.startswith("agent-") and c.final]) >= len(spoken):
                break
            await asyncio.sleep(0.1)
        agent_captions = [c for c in human.captions if c.segment_id.startswith("agent-")]
        assert [c.text for c in agent_captions if c.final] == spoken
        assert [c.final for c in agent_captions] == [False, True] * (len(agent_captions) // 2)
        assert all(c.track_sid == agent_track_sid(human) for c in agent_captions)
        # The state a stock frontend shows, from the agent's participant attribute. The agent is
        # `listening` again after the reply's end events; the attribute travels apart from them.
        states = await human.wait_for("agent_state", 10, count=4)
        assert [e["state"] for e in states][:4] == ["listening", "thinking", "speaking", "listening"]
        agent = next(p for p in human.room.remote_participants.values() if p.identity == AGENT)
        for _ in range(100):
            if agent.attributes.get("lk.agent.state") == "listening":
                break
            await asyncio.sleep(0.1)
        assert agent.attributes["lk.agent.state"] == "listening"
        # The agent's voice reached the human through the room (tiny TTS: noise, but not silence).
        assert human.voiced_seconds_between(0.0, float("inf")) > 0.3
    finally:
        await human.leave()
    stats = await wait_quiet(ray_client, timeout_s=20)
    assert stats["edge"]["active_rooms"] == 0 and stats["edge"]["active_conversations"] == 0


async def test_signed_webhook_dispatches_and_deleting_the_room_ends_the_call(
        standin, livekit_keys, ray_client):
    room = unique("call-hook")  # the CPU config's rule: participant_joined in call-* rooms
    human = await join(standin, livekit_keys, room)
    try:
        await human.wait_for("ready", 30)
        greeting = await human.wait_for("agent_text", 60)
        assert greeting[0]["text"] == "Hello! How can I help you today?"
        await human.wait_for("agent_audio_start", 60)
        assert ("participant_joined", 200) in standin.webhooks_sent
        assert (await stage_stats(ray_client, "edge"))["active_rooms"] == 1
        await standin.delete_room(room)
        await asyncio.wait_for(human.disconnected.wait(), 10)
    finally:
        await human.leave()
    stats = await wait_quiet(ray_client, timeout_s=20)
    assert stats["edge"]["active_rooms"] == 0


def webhook_body(room: str, identity: str = "caller") -> bytes:
    from google.protobuf.json_format import MessageToJson
    from livekit.protocol import models, webhook

    event = webhook.WebhookEvent(event="participant_joined", id="EV_test", created_at=int(time.time()),
                                 room=models.Room(name=room, sid="RM_test"),
                                 participant=models.ParticipantInfo(identity=identity, sid="PA_test"))
    return MessageToJson(event, indent=None).encode()


def webhook_token(key: str, secret: str, body: bytes) -> str:
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    return api.AccessToken(key, secret).with_sha256(digest).to_jwt()


async def test_forged_webhooks_and_bad_dispatches_are_refused_and_start_nothing(
        standin, livekit_keys, edge_http_url, edge_secret, ray_client):
    key, secret = livekit_keys
    url = f"{edge_http_url}/v1/livekit/webhook"
    room = unique("call-forged")
    body = webhook_body(room)
    forged = {
        "wrong secret": webhook_token(key, "x" * 48, body),
        "wrong key": webhook_token("other-key", secret, body),
        "body changed": webhook_token(key, secret, webhook_body(unique("call-other"))),
        "no signature": "",
    }
    for case, token in forged.items():
        status, answer = await post(url, body, {"Authorization": token} if token else {})
        assert status == 401, case
        assert "webhook rejected" in answer["error"]
    # The same event, correctly signed, is accepted: the refusals above were about the signature.
    status, answer = await post(url, body, {"Authorization": webhook_token(key, secret, body)})
    assert status == 200 and answer["dispatched"] == room
    assert room in standin.rooms
    standin_room = standin.rooms[room]
    assert [p.identity for p in standin_room.participants.values()] == [AGENT]
    await standin.delete_room(room)  # nobody came; the agent leaves with the room

    for token, room_name, expected in [
        (None, unique("lk-bad"), 401),
        ("not-a-jwt", unique("lk-bad"), 401),
        (mint_token("y" * 40, ttl_s=600), unique("lk-bad"), 401),
        (mint_token(edge_secret, ttl_s=-5), unique("lk-bad"), 401),
        (mint_token(edge_secret, ttl_s=600), None, 400),
        (mint_token(edge_secret, ttl_s=600), "", 400),
    ]:
        status, answer = await dispatch(edge_http_url, token, room_name)
        assert status == expected, answer
    stats = await wait_quiet(ray_client, timeout_s=20)
    assert stats["edge"]["active_rooms"] == 0


async def test_room_closing_mid_turn_ends_the_conversation_and_every_stage_stream(
        standin, livekit_keys, edge_http_url, edge_secret, ray_client):
    room = unique("lk-close")
    human = await join(standin, livekit_keys, room)
    try:
        status, _ = await dispatch(edge_http_url, edge_token(edge_secret, greeting="", max_tokens=2000), room)
        assert status == 202
        await human.wait_for("ready", 30)
        audio, rate = read_wav(SPEECH_WAV)
        human.say(audio, rate)
        await human.wait_for("agent_text", 90)  # the reply is under way: LLM and TTS streams open
        await standin.delete_room(room)
    finally:
        await human.leave()
    stats = await wait_quiet(ray_client, timeout_s=20)
    assert stats["edge"]["active_rooms"] == 0 and stats["edge"]["active_conversations"] == 0
    assert all(stats[app]["active_streams"] == 0 for app in ("asr", "llm", "tts"))


async def test_barge_in_in_a_room_stops_the_agent_and_keeps_what_was_heard(
        standin, livekit_keys, edge_http_url, edge_secret, ray_client):
    room = unique("lk-barge")
    human = await join(standin, livekit_keys, room)
    try:
        token = edge_token(edge_secret, greeting="", max_tokens=60, temperature=0.0)
        assert (await dispatch(edge_http_url, token, room))[0] == 202
        await human.wait_for("ready", 30)
        audio, rate = read_wav(SPEECH_WAV)
        utterance = audio[int(0.4 * rate):int(3.4 * rate)]
        human.say(utterance, rate)
        [start] = await human.wait_for("agent_audio_start", 90)
        await asyncio.sleep(1.2)
        human.say(utterance, rate)
        [interruption] = (await human.wait_for("interruption", 30))[:1]
        turn = interruption["turn_id"]
        assert turn == start["turn_id"]
        spoken = " ".join(e["text"] for e in human.of_type("agent_text") if e["turn_id"] == turn)
        assert spoken.startswith(interruption["heard_text"]) and len(interruption["heard_text"]) < len(spoken)
        # The turn's metrics come last of its events (data messages keep their order).
        metrics = next(e for e in await human.wait_for("metrics", 30) if e["turn_id"] == turn)
        assert metrics["interrupted"] is True
        end = next(e for e in human.of_type("agent_audio_end") if e["turn_id"] == turn)
        assert end["interrupted"] is True
        # The conversation goes on: the second utterance is answered.
        await human.wait_for("agent_text", 90, count=len(human.of_type("agent_text")) + 1)
        # Playout stopped at once: the turn's voice was heard before the interruption, and next
        # to nothing of it after (allowing for the SDK's and the network's buffers).
        assert human.voiced_seconds_between(start["received"], interruption["received"]) > 0.3
        next_start = next((e["received"] for e in human.of_type("agent_audio_start") if e["turn_id"] > turn),
                          time.monotonic())
        assert human.voiced_seconds_between(interruption["received"] + 0.3, next_start) < 0.1
    finally:
        await human.leave()
    await assert_quiet(ray_client)
