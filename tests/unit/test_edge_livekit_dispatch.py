"""Sending the agent into rooms: LiveKit's explicit agent dispatch, one agent per room across
replicas (the room registry as a real Ray actor), 503 when full, bad bodies refused.

The LiveKit server is the STAND-IN (tests/livekit_standin: not LiveKit). Explicit dispatch is
exercised as the edge meets it with a real server: the stand-in records the dispatch (from the
joining participant's token, or from CreateDispatch on its Twirp API), sends its signed
room_started / participant_joined webhooks, and answers the edge's ListDispatch. The real
server's hand-off of dispatched jobs to registered workers (`/agent`) is not emulated; the edge
does not use it.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid

import pytest
from aiohttp import web
from livekit import api
from livekit.protocol import agent_dispatch, models
from livekit.protocol import room as room_pb

from services.edge.auth import mint_token
from services.edge.config import LiveKitConfig, WebhookDispatchRule
from services.edge.livekit_dispatch import RoomAgents, dispatch_request, response_headers, webhook_request
from services.edge.livekit_rooms import RoomRegistry
from services.edge.livekit_server import LiveKitCredentials
from services.edge.transport import CallerHungUp
from tests.livekit_standin.human import Human, room_token
from tests.livekit_standin.server import StandInServer
from tests.unit.test_edge_livekit import KEY, SECRET, event_body, signature

EDGE_SECRET = "an-edge-secret-that-is-long-enough-for-hs256"
AGENT_NAME = "parley-support"


async def accept(claims) -> None:
    return None


def listening_agents(url: str, api_url: str = "", registry=None, calls: list | None = None, **config) -> RoomAgents:
    """RoomAgents whose 'conversation' records the call's claims and listens until the caller goes."""
    async def converse(transport) -> None:
        if calls is not None:
            calls.append((transport.room.name, transport.claims))
        try:
            while True:
                await transport.receive_audio()
        except CallerHungUp:
            pass

    livekit = LiveKitConfig(enabled=True, url=url, api_url=api_url, caller_wait_s=30, **config)
    return RoomAgents(livekit, LiveKitCredentials(url, KEY, SECRET, api_url), converse, max_calls=4, registry=registry)


async def until(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_deeply_nested_or_oversized_dispatch_bodies_are_a_400():
    agents = listening_agents("ws://127.0.0.1:9")
    token = "Bearer " + mint_token(EDGE_SECRET, ttl_s=60)
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"room": {"a": ' * 5000 + b"1" + b"}" * 5000,
                 json.dumps({"room": "r", "pad": "x" * 70_000}).encode()):
        answer, status = await dispatch_request(agents, body, token, EDGE_SECRET, accept)
        assert status == 400 and "JSON object" in answer["error"]
    assert not agents.rooms


async def test_a_full_replica_answers_503_with_retry_after_and_dispatches_nothing():
    config = {"webhook_dispatch": [WebhookDispatchRule()]}
    agents = listening_agents("ws://127.0.0.1:9", **config)
    agents._other_calls = lambda: 4  # every call slot is held by socket calls
    token = "Bearer " + mint_token(EDGE_SECRET, ttl_s=60)
    answer, status = await dispatch_request(agents, b'{"room": "r1"}', token, EDGE_SECRET, accept)
    assert status == 503 and "limit" in answer["error"]
    body = event_body(room="r1")
    answer, status = await webhook_request(agents, body, signature(body))
    assert status == 503 and not agents.rooms
    assert response_headers(503) == {"Retry-After": "2"} and response_headers(202) == {}
    agents.draining, agents._other_calls = True, lambda: 0
    assert (await webhook_request(agents, body, signature(body)))[1] == 503


class WebhookRoute:
    """The edge's webhook route in this process: the stand-in posts here, `agents` answers."""

    def __init__(self, agents_for):
        self.agents_for = agents_for  # () -> the RoomAgents that takes the next webhook
        self.answers: list[tuple[int, dict]] = []

    async def __aenter__(self) -> WebhookRoute:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook"
        return self

    async def __aexit__(self, *exc) -> None:
        await self.runner.cleanup()

    async def handle(self, request: web.Request) -> web.Response:
        answer, status = await webhook_request(self.agents_for(), await request.read(),
                                               request.headers.get("Authorization", ""))
        self.answers.append((status, answer))
        return web.json_response(answer, status=status)


async def test_explicit_agent_dispatch_from_a_token_or_the_dispatch_api_sends_the_agent_in():
    calls: list = []
    holder: dict = {}
    async with WebhookRoute(lambda: holder["agents"]) as route, StandInServer(KEY, SECRET, webhook_url=route.url) as server:
        agents = holder["agents"] = listening_agents(server.url, server.api_url, calls=calls,
                                                     dispatch_agent_name=AGENT_NAME)
        try:
            # 1. A RoomAgentDispatch in the caller's token (the room is created by the join).
            config = room_pb.RoomConfiguration(agents=[agent_dispatch.RoomAgentDispatch(
                agent_name=AGENT_NAME, metadata=json.dumps({"persona": {"greeting": "Hi!"}, "other": 1}))])
            token = (api.AccessToken(KEY, SECRET).with_identity("caller").with_room_config(config)
                     .with_grants(api.VideoGrants(room_join=True, room="r-token")).to_jwt())
            human = await Human(server.url, token).join()
            await until(lambda: calls)
            assert calls == [("r-token", {"persona": {"greeting": "Hi!"}})]  # only the keys an edge token has
            # 2. CreateDispatch through the server API, before anyone is in the room.
            async with api.LiveKitAPI(server.api_url, KEY, SECRET) as lkapi:
                await lkapi.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(
                    agent_name=AGENT_NAME, room="r-api", metadata="not json"))
            await until(lambda: "r-api" in agents.rooms)
            # 3. A dispatch for another agent, and a room with none: the agent stays out.
            config = room_pb.RoomConfiguration(agents=[agent_dispatch.RoomAgentDispatch(agent_name="someone-else")])
            other = (api.AccessToken(KEY, SECRET).with_identity("caller").with_room_config(config)
                     .with_grants(api.VideoGrants(room_join=True, room="r-other")).to_jwt())
            bystanders = [await Human(server.url, other).join(),
                          await Human(server.url, room_token(KEY, SECRET, "r-none", "caller")).join()]
            await until(lambda: len(route.answers) >= 7)  # r-token 2, r-api 1, r-other 2, r-none 2 (+ the agents')
            await asyncio.sleep(0.5)
            assert set(agents.rooms) == {"r-token", "r-api"}
            assert {p.identity for p in server.rooms["r-token"].participants.values()} == {"caller", "parley-agent"}
            for person in (human, *bystanders):
                await person.leave()
        finally:
            await agents.close()


@pytest.fixture(scope="module")
def ray_cluster():
    """A real local Ray cluster for the registry actor (no Serve)."""
    import ray

    if ray.is_initialized():  # this process is already connected (the integration tests' cluster): use it
        yield ray
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


async def test_one_agent_per_room_across_replicas_and_room_finished_reaches_the_holder(ray_cluster):
    # The named detached actor every edge replica shares; a name of its own, in case this process is
    # connected to a cluster whose edge has the real one.
    registry = RoomRegistry.actor(name=f"parley-test-rooms-{uuid.uuid4().hex[:8]}")
    try:
        async with StandInServer(KEY, SECRET) as server:
            rule = {"webhook_dispatch": [WebhookDispatchRule()]}
            first, second = (listening_agents(server.url, registry=registry, **rule) for _ in range(2))
            human = await Human(server.url, room_token(KEY, SECRET, "r-shared", "caller")).join()
            try:
                body = event_body(room="r-shared", identity="caller")
                answer, status = await webhook_request(first, body, signature(body))
                assert (status, answer) == (200, {"dispatched": "r-shared"})
                # LiveKit retries the webhook; the retry lands on the other replica.
                answer, status = await webhook_request(second, body, signature(body))
                assert status == 200 and answer["dispatched"] is None and "another edge replica" in answer["reason"]
                assert (await registry.rooms()) == {"r-shared": first.holder}
                agents_in_room = [p for p in server.rooms["r-shared"].participants.values()
                                  if p.kind == models.ParticipantInfo.Kind.AGENT]
                assert len(agents_in_room) == 1 and not second.rooms
                # room_finished reaches the replica that does not hold the room: it goes to the holder.
                finished = event_body("room_finished", room="r-shared")
                assert await webhook_request(second, finished, signature(finished)) == ({"left": True}, 200)
                await until(lambda: not first.rooms)
                assert (await registry.rooms()) == {}
                assert await webhook_request(second, finished, signature(finished)) == ({"left": False}, 200)
            finally:
                await human.leave()
                await first.close()
                await second.close()
    finally:
        ray_cluster.kill(registry.handle)


async def test_the_claims_of_a_replica_that_stopped_polling_lapse():
    registry = RoomRegistry(lease_s=0.2)
    assert await registry.claim("r", "dead") is None
    assert await registry.claim("r", "alive") == "dead"
    await asyncio.sleep(0.3)  # "dead" never polled again
    assert await registry.claim("r", "alive") is None and await registry.holder("r") == "alive"
    assert await registry.request_leave("r") and await registry.leaves("alive", timeout_s=0.1) == ["r"]
