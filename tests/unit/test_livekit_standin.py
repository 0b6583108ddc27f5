"""The LiveKit stand-in server (tests/livekit_standin) against the unmodified rtc SDK, with no edge.

The stand-in is not LiveKit (see its module docstring); these tests pin what the edge tests rely
on: it refuses bad tokens as LiveKit does, relays audio between two SDK participants, relays data
packets, and ends everyone's session when a room is deleted.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from livekit import rtc

from tests.livekit_standin.human import Human, room_token
from tests.livekit_standin.server import SDK_VERSION, StandInServer

KEY, SECRET = "standin-key", "standin-secret-that-is-long-enough-for-hs256"


def test_the_installed_sdk_is_the_one_the_standin_speaks():
    assert rtc.__version__ == SDK_VERSION


async def test_a_bad_token_is_refused():
    async with StandInServer(KEY, SECRET) as server:
        for token in (room_token(KEY, "x" * 48, "r", "eve"), room_token("other", SECRET, "r", "eve"), "junk"):
            room = rtc.Room()
            with pytest.raises(rtc.ConnectError):
                await asyncio.wait_for(room.connect(server.url, token), 20)
        assert not server.rooms


async def test_audio_and_data_flow_between_two_participants_and_room_deletion_ends_both():
    async with StandInServer(KEY, SECRET) as server:
        alice = await Human(server.url, room_token(KEY, SECRET, "r1", "alice")).join()
        bob = await Human(server.url, room_token(KEY, SECRET, "r1", "bob")).join()
        try:
            tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(48_000) / 48_000).astype(np.float32)
            alice.say(tone, 48_000)
            await asyncio.sleep(2.5)
            heard = bob.audio_heard()
            assert np.count_nonzero(np.abs(heard) > 0.1) > 0.5 * 48_000  # most of the second of tone
            assert np.abs(alice.audio_heard()).max(initial=0) < 0.05  # bob said nothing
            await alice.room.local_participant.publish_data(b'{"type": "hello"}', topic="parley.events")
            await bob.wait_for("hello", 10)
            await server.delete_room("r1")
            await asyncio.wait_for(asyncio.gather(alice.disconnected.wait(), bob.disconnected.wait()), 10)
            assert not server.rooms
        finally:
            await alice.leave()
            await bob.leave()
