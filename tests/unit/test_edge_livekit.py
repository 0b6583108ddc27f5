"""LiveKit dispatch pieces of the edge: webhook signatures, dispatch rules, agent tokens, settings."""

from __future__ import annotations

import base64
import datetime
import hashlib
import time

import jwt
import pytest
from google.protobuf.json_format import MessageToJson
from livekit import api
from livekit.protocol import models, webhook

from services.edge.config import LiveKitConfig, WebhookDispatchRule
from services.edge.livekit_dispatch import LiveKitCredentials, WebhookError, agent_token, room_to_join, verify_webhook

KEY, SECRET = "test-key", "a-test-secret-that-is-long-enough-for-hs256"
CREDENTIALS = LiveKitCredentials("ws://livekit.invalid:7880", KEY, SECRET)


def event_body(kind: str = "participant_joined", room: str = "call-1", identity: str = "alice",
               participant_kind=models.ParticipantInfo.Kind.STANDARD) -> bytes:
    event = webhook.WebhookEvent(event=kind, id="EV_1", created_at=int(time.time()), room=models.Room(name=room))
    if kind.startswith("participant"):
        event.participant.CopyFrom(models.ParticipantInfo(identity=identity, kind=participant_kind))
    return MessageToJson(event, indent=None).encode()


def signature(body: bytes, key: str = KEY, secret: str = SECRET, ttl_s: int = 600) -> str:
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    return api.AccessToken(key, secret).with_sha256(digest).with_ttl(datetime.timedelta(seconds=ttl_s)).to_jwt()


def test_a_webhook_signed_with_the_api_secret_verifies():
    body = event_body(room="call-42", identity="bob")
    event = verify_webhook(CREDENTIALS, body, signature(body))
    assert (event.event, event.room.name, event.participant.identity) == ("participant_joined", "call-42", "bob")
    assert verify_webhook(CREDENTIALS, body, "Bearer " + signature(body)).room.name == "call-42"


@pytest.mark.parametrize("case", ["other secret", "other key", "other body", "expired", "empty", "garbage"])
def test_a_webhook_that_does_not_verify_is_rejected(case):
    body = event_body()
    token = {
        "other secret": signature(body, secret="x" * 48),
        "other key": signature(body, key="someone-else"),
        "other body": signature(event_body(room="call-2")),
        "expired": signature(body, ttl_s=-120),
        "empty": "",
        "garbage": "not.a.jwt",
    }[case]
    with pytest.raises(WebhookError, match="webhook rejected"):
        verify_webhook(CREDENTIALS, body, token)


def parse(body: bytes) -> webhook.WebhookEvent:
    return verify_webhook(CREDENTIALS, body, signature(body))


def test_dispatch_rules_pick_the_room_for_matching_callers_only():
    config = LiveKitConfig(webhook_dispatch=[
        WebhookDispatchRule(event="participant_joined", room_prefix="call-", identity_prefix="sip_"),
        WebhookDispatchRule(event="room_started", room_prefix="support-"),
    ])
    assert room_to_join(parse(event_body(room="call-1", identity="sip_+4412")), config) == "call-1"
    assert room_to_join(parse(event_body(room="call-1", identity="web-user")), config) is None
    assert room_to_join(parse(event_body(room="meeting-1", identity="sip_+4412")), config) is None
    assert room_to_join(parse(event_body("room_started", room="support-7")), config) == "support-7"
    assert room_to_join(parse(event_body("room_started", room="call-9")), config) is None
    assert room_to_join(parse(event_body("participant_left", room="call-1", identity="sip_1")), config) is None


def test_the_agent_joining_never_dispatches_another_agent():
    config = LiveKitConfig(webhook_dispatch=[WebhookDispatchRule()])  # every room, every caller
    assert room_to_join(parse(event_body(identity="alice")), config) == "call-1"
    assert room_to_join(parse(event_body(identity=config.agent_identity)), config) is None
    assert room_to_join(parse(event_body(identity="other-bot",
                                         participant_kind=models.ParticipantInfo.Kind.AGENT)), config) is None
    assert room_to_join(parse(event_body(identity="alice")), LiveKitConfig()) is None  # no rules, no dispatch


def test_the_agent_token_grants_one_room_as_an_agent():
    config = LiveKitConfig(agent_identity="bot-7", agent_name="Seven")
    claims = api.TokenVerifier(KEY, SECRET).verify(agent_token(CREDENTIALS, config, "call-5"))
    assert (claims.identity, claims.name, claims.kind) == ("bot-7", "Seven", "agent")
    assert claims.video.room == "call-5" and claims.video.room_join and claims.video.agent
    assert claims.video.can_publish and claims.video.can_subscribe and claims.video.can_publish_data
    with pytest.raises(jwt.InvalidSignatureError):
        api.TokenVerifier(KEY, "x" * 48).verify(agent_token(CREDENTIALS, config, "call-5"))


def test_credentials_come_from_the_environment(monkeypatch):
    config = LiveKitConfig(url="ws://fallback:7880")
    monkeypatch.delenv(config.url_env, raising=False)
    monkeypatch.setenv(config.api_key_env, KEY)
    monkeypatch.setenv(config.api_secret_env, SECRET)
    assert LiveKitCredentials.from_env(config) == LiveKitCredentials("ws://fallback:7880", KEY, SECRET)
    monkeypatch.setenv(config.url_env, "wss://livekit.example.com")
    assert LiveKitCredentials.from_env(config).url == "wss://livekit.example.com"
    monkeypatch.setenv(config.api_secret_env, "short")
    with pytest.raises(RuntimeError, match="LIVEKIT_API_SECRET"):
        LiveKitCredentials.from_env(config)
    monkeypatch.delenv(config.api_key_env)
    with pytest.raises(RuntimeError, match="LIVEKIT_API_KEY"):
        LiveKitCredentials.from_env(config)


def test_config_rejects_a_url_that_is_not_websocket_or_http():
    with pytest.raises(ValueError, match="ws"):
        LiveKitConfig(url="livekit.example.com:7880")
    with pytest.raises(ValueError):
        WebhookDispatchRule(event="track_published")


def test_the_production_config_loads_the_policy_the_way_serve_does():
    from pathlib import Path

    import yaml
    from ray.serve._private.autoscaling_state import _resolve_policy_callable
    from ray.serve.config import AutoscalingPolicy

    from services.common.autoscaling import SessionAutoscalingPolicy

    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "serve_config.yaml").read_text())
    [edge] = [app for app in config["applications"] if app["name"] == "edge"]
    policy = AutoscalingPolicy(**edge["deployments"][0]["autoscaling_config"]["policy"])
    policy.serialize_policy()
    resolved = _resolve_policy_callable(policy)
    # The edge scales on live calls (rooms included: they hold no request open), 60 a replica.
    assert isinstance(resolved, SessionAutoscalingPolicy) and resolved.target_sessions == 60


async def _rooms_with_a_listening_agent(server, calls: list):
    """RoomAgents whose 'conversation' just listens to the caller until they hang up."""
    from services.edge.livekit_dispatch import RoomAgents
    from services.edge.transport import CallerHungUp

    async def converse(transport) -> None:
        call = {"room": transport.room.name, "samples": 0, "ended": False}
        calls.append(call)
        try:
            while True:
                call["samples"] += len(await transport.receive_audio()) // 2  # PCM s16le
        except CallerHungUp:
            call["ended"] = True

    config = LiveKitConfig(enabled=True, url=server.url, caller_track_grace_s=1.0)
    return RoomAgents(config, LiveKitCredentials(server.url, KEY, SECRET), converse, max_calls=4)


async def test_the_caller_leaving_ends_the_call_and_the_agent_leaves_the_room():
    import asyncio

    from tests.livekit_standin.human import Human, room_token
    from tests.livekit_standin.server import StandInServer

    async with StandInServer(KEY, SECRET) as server:
        calls: list[dict] = []
        agents = await _rooms_with_a_listening_agent(server, calls)
        human = await Human(server.url, room_token(KEY, SECRET, "r1", "caller")).join()
        await agents.dispatch("r1")
        await asyncio.sleep(2.0)
        assert len(agents) == 1 and calls and calls[0]["samples"] > 16_000  # > 1 s of the caller's mic
        await human.leave()
        for _ in range(100):
            if not agents.rooms:
                break
            await asyncio.sleep(0.1)
        assert not agents.rooms and calls[0]["ended"]
        assert "r1" not in server.rooms  # the agent left too, so the room closed


async def test_draining_refuses_new_rooms_and_lets_calls_in_progress_finish():
    import asyncio

    from services.edge.livekit_dispatch import DispatchError
    from tests.livekit_standin.human import Human, room_token
    from tests.livekit_standin.server import StandInServer

    async with StandInServer(KEY, SECRET) as server:
        calls: list[dict] = []
        agents = await _rooms_with_a_listening_agent(server, calls)
        human = await Human(server.url, room_token(KEY, SECRET, "r1", "caller")).join()
        await agents.dispatch("r1")
        drain = asyncio.ensure_future(agents.drain(timeout_s=30))
        await asyncio.sleep(1.0)
        with pytest.raises(DispatchError) as refused:
            await agents.dispatch("r2")
        assert refused.value.status == 503
        assert not drain.done() and len(agents) == 1  # the call in progress is not cut
        await human.leave()
        await asyncio.wait_for(drain, 15)  # ... and the drain ends with it, well before its timeout
        assert not agents.rooms and calls[0]["ended"]
