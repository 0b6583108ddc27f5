"""One agent per LiveKit room across every edge replica: the cluster's room registry.

LiveKit's webhooks and the operator's dispatch requests reach whichever edge replica Serve picks,
and LiveKit retries a webhook it did not see answered. So a replica claims a room here before it
joins (a claim held by another replica is refused: the retried webhook finds the room taken), and
a `room_finished` webhook that lands on another replica is handed to the holder: every replica
long-polls `leaves` for the rooms it must leave. The long poll doubles as the replica's lease:
the claims of a replica that has not polled for `lease_s` (a crashed one) lapse.

In a Ray cluster the registry is one named, detached actor (`RoomRegistry.actor()`), shared by
all edge replicas and outliving their restarts; without Ray (one process) the class is used as is.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

ACTOR_NAME, NAMESPACE = "parley-livekit-rooms", "parley"
POLL_S = 10.0  # one long poll; a replica polls again at once
LEASE_S = 3 * POLL_S


class RoomRegistry:
    """Which replica (`holder`, an opaque id) holds which room. Every method is a coroutine, so the
    same code runs in-process and as an async Ray actor."""

    def __init__(self, lease_s: float = LEASE_S):
        self._lease_s = lease_s
        self._rooms: dict[str, str] = {}  # room -> holder
        self._seen: dict[str, float] = {}  # holder -> last claim or poll (monotonic)
        self._leaves: dict[str, set[str]] = {}  # holder -> rooms it must leave
        self._wake: dict[str, asyncio.Event] = {}

    def _alive(self, holder: str) -> bool:
        return time.monotonic() - self._seen.get(holder, float("-inf")) < self._lease_s

    async def claim(self, room: str, holder: str) -> str | None:
        """Take `room` for `holder`; None when taken, else the holder that has it."""
        self._seen[holder] = time.monotonic()
        current = self._rooms.get(room)
        if current is not None and current != holder and self._alive(current):
            return current
        self._rooms[room] = holder
        return None

    async def release(self, room: str, holder: str) -> None:
        if self._rooms.get(room) == holder:
            del self._rooms[room]
        self._leaves.get(holder, set()).discard(room)

    async def holder(self, room: str) -> str | None:
        current = self._rooms.get(room)
        return current if current is not None and self._alive(current) else None

    async def request_leave(self, room: str) -> bool:
        """Ask the replica holding `room` to leave it; False when no live replica holds it."""
        current = await self.holder(room)
        if current is None:
            return False
        self._leaves.setdefault(current, set()).add(room)
        self._wake.setdefault(current, asyncio.Event()).set()
        return True

    async def leaves(self, holder: str, timeout_s: float = POLL_S) -> list[str]:
        """Long poll: the rooms `holder` must leave, as soon as there are any (or [] after `timeout_s`)."""
        self._seen[holder] = time.monotonic()
        wake = self._wake.setdefault(holder, asyncio.Event())
        if not self._leaves.get(holder):
            wake.clear()
            try:
                await asyncio.wait_for(wake.wait(), timeout_s)
            except TimeoutError:
                pass
        self._seen[holder] = time.monotonic()
        rooms = sorted(self._leaves.pop(holder, set()))
        return rooms

    async def rooms(self) -> dict[str, str]:
        """Every live claim, room -> holder (for tests and operators)."""
        return {room: holder for room, holder in self._rooms.items() if self._alive(holder)}

    @classmethod
    def actor(cls, name: str = ACTOR_NAME) -> ActorRooms:
        """The cluster's registry actor (created by the first replica that asks)."""
        import ray

        handle = (ray.remote(cls).options(name=name, namespace=NAMESPACE, lifetime="detached",
                                          get_if_exists=True, num_cpus=0, max_restarts=-1)
                  .remote())
        return ActorRooms(handle)


class ActorRooms:
    """The registry actor behind the same coroutines as RoomRegistry."""

    def __init__(self, handle: Any):
        self.handle = handle

    async def claim(self, room: str, holder: str) -> str | None:
        return await self.handle.claim.remote(room, holder)

    async def release(self, room: str, holder: str) -> None:
        await self.handle.release.remote(room, holder)

    async def holder(self, room: str) -> str | None:
        return await self.handle.holder.remote(room)

    async def request_leave(self, room: str) -> bool:
        return await self.handle.request_leave.remote(room)

    async def leaves(self, holder: str, timeout_s: float = POLL_S) -> list[str]:
        return await self.handle.leaves.remote(holder, timeout_s)

    async def rooms(self) -> dict[str, str]:
        return await self.handle.rooms.remote()
