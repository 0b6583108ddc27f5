"""Sending the edge's agent into LiveKit rooms: webhooks, HTTP dispatch, explicit agent dispatch,
and the rooms this replica holds.

Three ways in (routes in services/edge/deployment.py):
- `POST /v1/livekit/dispatch` from the operator's backend, authenticated with an edge token (the
  same HS256 tokens callers use; its `persona` claim applies to the call);
- `POST /v1/livekit/webhook` from the LiveKit server, signed with the API secret (a JWT in the
  Authorization header whose `sha256` claim is the body's hash); `livekit.webhook_dispatch` rules
  say which events send the agent in;
- LiveKit's explicit agent dispatch (`livekit.dispatch_agent_name`): on a verified room_started or
  participant_joined webhook the edge asks the server for the room's agent dispatches (a
  RoomAgentDispatch in a participant's token, or AgentDispatchService.CreateDispatch) and joins
  when one names its agent, with the dispatch's metadata as the call's claims.

Each room the agent is in is one task owned by `RoomAgents`; its count is the replica's
`active_rooms`, the signal the edge autoscales on. Rooms are claimed in the cluster's room
registry (services/edge/livekit_rooms.py) first: one agent per room across replicas.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from livekit.protocol import models, webhook

from services.edge.auth import AuthError, verify_token
from services.edge.config import LiveKitConfig
from services.edge.livekit_rooms import RoomRegistry
from services.edge.livekit_server import (
    LiveKitCredentials,
    WebhookError,
    agent_dispatch,
    agent_token,
    sip_transfer,
    verify_webhook,
)
from services.edge.transport import ProtocolError
from services.edge.transports.livekit import LiveKitTransport, RoomJoinError

logger = logging.getLogger("ray.serve")

MAX_BODY_BYTES = 64 * 1024  # a dispatch body is `{"room": ...}`
RETRY_AFTER_S = 2  # what a full or draining replica tells the caller to wait before trying again


class DispatchError(Exception):
    """The agent cannot go into this room; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


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


def dispatch_candidate(event: webhook.WebhookEvent, config: LiveKitConfig) -> bool:
    """Whether a webhook event may carry an explicit agent dispatch worth looking up (a room
    starting, or someone other than an agent joining) when explicit dispatch is on."""
    if not config.dispatch_agent_name or not event.room.name:
        return False
    if event.event == "room_started":
        return True
    joined = event.participant
    return (event.event == "participant_joined" and joined.kind != models.ParticipantInfo.Kind.AGENT
            and joined.identity != config.agent_identity)


Converse = Callable[[LiveKitTransport], Awaitable[None]]


class RoomAgents:
    """The rooms this replica's agent is in, one owned task each, claimed in the cluster's
    registry (`registry`; in-process when the replica is alone). `other_calls` counts the
    replica's calls that are not in rooms (WebSocket, Twilio): they share `max_calls`."""

    def __init__(self, config: LiveKitConfig, credentials: LiveKitCredentials, converse: Converse, max_calls: int,
                 registry: Any = None, other_calls: Callable[[], int] = lambda: 0):
        self.config, self.credentials = config, credentials
        self._converse = converse  # runs the conversation core over a joined room's transport
        self._max_calls, self._other_calls = max_calls, other_calls
        self.registry = registry if registry is not None else RoomRegistry()
        self.holder = uuid.uuid4().hex  # this replica, in the registry
        self.rooms: dict[str, asyncio.Task | None] = {}  # None while joining
        self.draining = False
        self._poll: asyncio.Task | None = None

    def __len__(self) -> int:
        return len(self.rooms)

    def full(self) -> bool:
        return self.draining or len(self.rooms) + self._other_calls() >= self._max_calls

    async def dispatch(self, room: str, claims: dict[str, Any] | None = None) -> None:
        """Join `room` now (errors raise DispatchError), then serve it in the background."""
        if not room or len(room) > 256:
            raise DispatchError("a room name (1-256 characters) is required", 400)
        if self.draining:
            raise DispatchError("this edge replica is shutting down; try another", 503)
        if room in self.rooms:
            raise DispatchError(f"the agent is already in room {room!r}", 409)
        if self.full():
            raise DispatchError("this edge is at its call limit; try another replica", 503)
        self.rooms[room] = None  # hold the slot while claiming and joining
        try:
            if await self.registry.claim(room, self.holder) is not None:
                raise DispatchError(f"the agent is already in room {room!r} (another edge replica)", 409)
            self._start_polling()
            try:
                token = agent_token(self.credentials, self.config, room)
                transport = await LiveKitTransport.connect(self.credentials.url, token, self.config, claims,
                                                           transfer=self._transfer_in(room))
            except BaseException:
                await self.registry.release(room, self.holder)
                raise
        except RoomJoinError as error:
            del self.rooms[room]
            raise DispatchError(str(error), 502) from None
        except BaseException:
            del self.rooms[room]
            raise
        self.rooms[room] = asyncio.create_task(self._serve(room, transport), name=f"livekit:{room}")

    def _transfer_in(self, room: str) -> Callable[[str, str], Awaitable[None]]:
        async def transfer(identity: str, target: str) -> None:
            await sip_transfer(self.credentials, room, identity, target)
        return transfer

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
                try:  # the cluster forgets the room before this replica does: no window holds neither
                    await asyncio.shield(self.registry.release(room, self.holder))
                finally:
                    del self.rooms[room]
                    if not self.rooms and self._poll is not None:
                        self._poll.cancel()  # no room left to be told to leave, no claim to keep alive

    def _start_polling(self) -> None:
        if self._poll is None or self._poll.done():
            self._poll = asyncio.create_task(self._poll_leaves(), name="livekit:leaves")

    async def _poll_leaves(self) -> None:
        """Rooms another replica was told to end (room_finished) are left here; the poll keeps
        this replica's claims alive."""
        while True:
            try:
                for room in await self.registry.leaves(self.holder):
                    self.leave(room)
            except Exception as error:  # noqa: BLE001 - the registry restarting; try again
                logger.warning("livekit room registry: %s", error)
                await asyncio.sleep(1.0)

    def leave(self, room: str) -> bool:
        """End the agent's conversation in `room` (room_finished webhook); False if not here."""
        task = self.rooms.get(room)
        if task is None:
            return False
        task.cancel()
        return True

    async def leave_anywhere(self, room: str) -> bool:
        """End the agent's conversation in `room` on whichever replica holds it."""
        return self.leave(room) or await self.registry.request_leave(room)

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
        if self._poll is not None:
            self._poll.cancel()
            await asyncio.gather(self._poll, return_exceptions=True)


# -- the two routes' bodies (the Serve shell only forwards to these) -------------------------------

def response_headers(status: int) -> dict[str, str]:
    """503s say when to try again (a load balancer or LiveKit's webhook retries go elsewhere)."""
    return {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else {}


def _room_of(body: bytes) -> str | None:
    if len(body) > MAX_BODY_BYTES:
        return None
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: arrays or objects nested too deep
        return None
    room = parsed.get("room") if isinstance(parsed, dict) else None
    return room if isinstance(room, str) else None


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
    room = _room_of(body)
    if room is None:
        return {"error": f"the body must be a JSON object (at most {MAX_BODY_BYTES} bytes) with a string `room`"}, 400
    try:
        await check_persona(claims)  # a bad persona is refused before the agent joins
        await agents.dispatch(room, claims)
    except ProtocolError as error:
        return {"error": str(error)}, 400
    except DispatchError as error:
        return {"error": str(error)}, error.status
    return {"room": room, "status": "joined"}, 202


async def webhook_request(agents: RoomAgents | None, body: bytes, authorization: str) -> tuple[dict, int]:
    """`POST /v1/livekit/webhook`: dispatch by `livekit.webhook_dispatch` or an explicit agent
    dispatch; room_finished ends the room's call on whichever replica holds it. A replica that
    cannot take the room answers 503 (LiveKit retries; the retry may reach another replica)."""
    if agents is None:
        return {"error": "livekit is not enabled on this edge"}, 404
    try:
        event = verify_webhook(agents.credentials, body, authorization)
    except WebhookError as error:
        return {"error": str(error)}, 401
    if event.event == "room_finished":
        return {"left": await agents.leave_anywhere(event.room.name)}, 200
    room, claims = room_to_join(event, agents.config), None
    if room is None and dispatch_candidate(event, agents.config) and event.room.name not in agents.rooms:
        try:
            claims = await agent_dispatch(agents.credentials, event.room.name, agents.config.dispatch_agent_name)
        except Exception as error:  # noqa: BLE001 - the server API failing: LiveKit may retry the webhook
            logger.warning("livekit room %s: could not list its agent dispatches: %s", event.room.name, error)
            return {"error": "could not ask the LiveKit server for the room's agent dispatches"}, 502
        room = event.room.name if claims is not None else None
    if room is None:
        return {"dispatched": None}, 200
    try:
        await agents.dispatch(room, claims)
    except DispatchError as error:
        logger.info("livekit webhook %s for room %s: %s", event.event, room, error)
        if error.status == 409:  # already served (here or by another replica): nothing to retry
            return {"dispatched": None, "reason": str(error)}, 200
        return {"error": str(error)}, error.status
    return {"dispatched": room}, 200
