"""Sending the edge's agent into LiveKit rooms: credentials, agent tokens, webhooks, the room registry.

Two ways in (routes in services/edge/deployment.py):
- `POST /v1/livekit/dispatch` from the operator's backend, authenticated with an edge token (the
  same HS256 tokens callers use; its `persona` claim applies to the call);
- `POST /v1/livekit/webhook` from the LiveKit server, signed with the API secret (a JWT in the
  Authorization header whose `sha256` claim is the body's hash); `livekit.webhook_dispatch` rules
  say which events send the agent in.

Each room the agent is in is one task owned by `RoomAgents`; its count is the replica's
`active_rooms`, the signal the edge autoscales on.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from livekit import api
from livekit.protocol import models, webhook

from services.edge.auth import AuthError, verify_token
from services.edge.config import LiveKitConfig
from services.edge.transport import ProtocolError
from services.edge.transports.livekit import LiveKitTransport, RoomJoinError

logger = logging.getLogger("ray.serve")

AGENT_TOKEN_TTL = datetime.timedelta(hours=6)  # outlives any call; the SDK refreshes nothing itself


class WebhookError(Exception):
    """A webhook whose signature or body does not verify."""


class DispatchError(Exception):
    """The agent cannot go into this room; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class LiveKitCredentials:
    url: str
    api_key: str
    api_secret: str

    @classmethod
    def from_env(cls, config: LiveKitConfig) -> LiveKitCredentials:
        key, secret = os.environ.get(config.api_key_env, ""), os.environ.get(config.api_secret_env, "")
        if not key or len(secret.encode()) < 32:
            raise RuntimeError(f"LiveKit is enabled but ${config.api_key_env} is empty or ${config.api_secret_env} "
                               "is shorter than 32 bytes (set them in the runtime_env or from a secret store)")
        return cls(os.environ.get(config.url_env) or config.url, key, secret)


def agent_token(credentials: LiveKitCredentials, config: LiveKitConfig, room: str) -> str:
    """An access token for the agent participant in one room, minted by the edge itself."""
    grants = api.VideoGrants(room_join=True, room=room, agent=True, can_publish=True, can_subscribe=True,
                             can_publish_data=True)
    return (api.AccessToken(credentials.api_key, credentials.api_secret)
            .with_identity(config.agent_identity).with_name(config.agent_name).with_kind("agent")
            .with_grants(grants).with_ttl(AGENT_TOKEN_TTL).to_jwt())


def verify_webhook(credentials: LiveKitCredentials, body: bytes, authorization: str) -> webhook.WebhookEvent:
    """The webhook's event, if its token is signed with our API key/secret and hashes this body."""
    receiver = api.WebhookReceiver(api.TokenVerifier(credentials.api_key, credentials.api_secret))
    try:
        return receiver.receive(body.decode(), authorization.removeprefix("Bearer ").strip())
    except Exception as error:  # noqa: BLE001 - jwt, hash and JSON failures all mean "not from LiveKit"
        raise WebhookError(f"webhook rejected: {error}") from None


def room_to_join(event: webhook.WebhookEvent, config: LiveKitConfig) -> str | None:
    """The room a webhook event sends the agent into, by the first matching dispatch rule."""
    for rule in config.webhook_dispatch:
        if event.event != rule.event or not event.room.name.startswith(rule.room_prefix):
            continue
        if rule.event == "participant_joined":
            joined = event.participant
            if (joined.kind == models.ParticipantInfo.Kind.AGENT or joined.identity == config.agent_identity
                    or not joined.identity.startswith(rule.identity_prefix)):
                continue
        return event.room.name or None
    return None


Converse = Callable[[LiveKitTransport], Awaitable[None]]


class RoomAgents:
    """The rooms this replica's agent is in, one owned task each."""

    def __init__(self, config: LiveKitConfig, credentials: LiveKitCredentials, converse: Converse, max_rooms: int):
        self.config, self.credentials = config, credentials
        self._converse = converse  # runs the conversation core over a joined room's transport
        self._max_rooms = max_rooms
        self.rooms: dict[str, asyncio.Task | None] = {}  # None while joining
        self.draining = False

    def __len__(self) -> int:
        return len(self.rooms)

    async def dispatch(self, room: str, claims: dict[str, Any] | None = None) -> None:
        """Join `room` now (errors raise DispatchError), then serve it in the background."""
        if not room or len(room) > 256:
            raise DispatchError("a room name (1-256 characters) is required", 400)
        if self.draining:
            raise DispatchError("this edge replica is shutting down; try another", 503)
        if room in self.rooms:
            raise DispatchError(f"the agent is already in room {room!r}", 409)
        if len(self.rooms) >= self._max_rooms:
            raise DispatchError("this edge is at its room limit; try another replica", 503)
        self.rooms[room] = None  # hold the slot while joining
        try:
            transport = await LiveKitTransport.connect(self.credentials.url, agent_token(self.credentials, self.config,
                                                                                          room), self.config, claims)
        except RoomJoinError as error:
            del self.rooms[room]
            raise DispatchError(str(error), 502) from None
        except BaseException:
            del self.rooms[room]
            raise
        self.rooms[room] = asyncio.create_task(self._serve(room, transport), name=f"livekit:{room}")

    async def _serve(self, room: str, transport: LiveKitTransport) -> None:
        try:
            await transport.wait_for_caller()
            async with asyncio.TaskGroup() as tasks:
                pump = tasks.create_task(transport.pump_caller_audio(), name=f"livekit:{room}:caller")
                await self._converse(transport)
                pump.cancel()
        except RoomJoinError as error:
            logger.info("livekit room %s: %s", room, error)
        except Exception:  # noqa: BLE001 - one room's failure must not touch the others
            logger.exception("livekit room %s failed", room)
        finally:
            try:
                await transport.close()
            finally:
                del self.rooms[room]

    def leave(self, room: str) -> bool:
        """End the agent's conversation in `room` (room_finished webhook); False if not there."""
        task = self.rooms.get(room)
        if task is None:
            return False
        task.cancel()
        return True

    async def drain(self, timeout_s: float) -> None:
        """Replica shutdown: take no new rooms, let the calls in progress end (up to `timeout_s`),
        then leave the rest."""
        self.draining = True
        tasks = [task for task in self.rooms.values() if task is not None]
        if tasks:
            logger.info("draining %d livekit rooms (up to %.0fs)", len(tasks), timeout_s)
            await asyncio.wait(tasks, timeout=timeout_s)
        await self.close()

    async def close(self) -> None:
        tasks = [task for task in self.rooms.values() if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# -- the two routes' bodies (the Serve shell only forwards to these) -------------------------------

async def dispatch_request(agents: RoomAgents | None, body: bytes, authorization: str, secret: str,
                           check_persona: Callable[[dict], Awaitable[Any]]) -> tuple[dict, int]:
    """`POST /v1/livekit/dispatch`: `{"room": "<name>"}` with `Authorization: Bearer <edge token>`.
    Returns the JSON answer and its status."""
    if agents is None:
        return {"error": "livekit is not enabled on this edge"}, 404
    try:
        claims = verify_token(authorization.removeprefix("Bearer ").strip(), secret)
    except AuthError as error:
        return {"error": str(error)}, 401
    try:
        parsed = json.loads(body)
        room = parsed.get("room") if isinstance(parsed, dict) else None
    except ValueError:
        room = None
    if not isinstance(room, str):
        return {"error": "the body must be JSON with a string `room`"}, 400
    try:
        await check_persona(claims)  # a bad persona is refused before the agent joins
        await agents.dispatch(room, claims)
    except ProtocolError as error:
        return {"error": str(error)}, 400
    except DispatchError as error:
        return {"error": str(error)}, error.status
    return {"room": room, "status": "joined"}, 202


async def webhook_request(agents: RoomAgents | None, body: bytes, authorization: str) -> tuple[dict, int]:
    """`POST /v1/livekit/webhook`: dispatch by `livekit.webhook_dispatch`; room_finished ends the room's call."""
    if agents is None:
        return {"error": "livekit is not enabled on this edge"}, 404
    try:
        event = verify_webhook(agents.credentials, body, authorization)
    except WebhookError as error:
        return {"error": str(error)}, 401
    if event.event == "room_finished":
        return {"left": agents.leave(event.room.name)}, 200
    room = room_to_join(event, agents.config)
    if room is None:
        return {"dispatched": None}, 200
    try:
        await agents.dispatch(room)
    except DispatchError as error:  # already there, full, or the room is gone: nothing to retry
        logger.info("livekit webhook %s for room %s: %s", event.event, room, error)
        return {"dispatched": None, "reason": str(error)}, 200
    return {"dispatched": room}, 200
