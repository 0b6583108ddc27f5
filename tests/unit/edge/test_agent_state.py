"""The `agent_state` events of a call (LiveKit's `lk.agent.state` values), in process."""

from __future__ import annotations

import asyncio

from services.edge.cascade import CascadeCall
from services.edge.duplex import DuplexCall
from tests.unit.edge.fakes import Duplex, FakeTransport, Model, Recognizer, Stages, Synthesizer, edge_config, run_call


def states_around(transport: FakeTransport) -> list[tuple[str, str | int]]:
    """The state changes and the turn events they must sit between, in order."""
    marks = ("agent_audio_start", "agent_audio_end", "interruption")
    return [(e["type"], e["state"]) if e["type"] == "agent_state" else (e["type"], e["turn_id"])
            for e in transport.events if e["type"] == "agent_state" or e["type"] in marks]


async def test_a_turn_goes_listening_thinking_speaking_listening_and_barge_in_back_to_thinking():
    asr = Recognizer()
    async with Stages(asr, Model("one two three four five six seven eight nine."), Synthesizer(delay_s=0.3)) as stages:
        transport = FakeTransport()
        call = CascadeCall(transport, stages.clients, edge_config(), "s1")

        async def script():
            await asyncio.sleep(0.2)
            asr.user_says("hello", 0)
            await asyncio.sleep(1.2)  # speaking by now
            asr.user_says("stop", 1)  # barge-in: a new turn
        await run_call(call, transport, script, 3.0)
    assert transport.events[0]["type"] == "ready"  # the protocol's first event stays `ready`
    assert states_around(transport) == [
        ("agent_state", "listening"), ("agent_state", "thinking"), ("agent_audio_start", 1),
        ("agent_state", "speaking"), ("interruption", 1), ("agent_audio_end", 1), ("agent_state", "listening"),
        ("agent_state", "thinking"), ("agent_audio_start", 2), ("agent_state", "speaking"), ("agent_audio_end", 2),
        ("agent_state", "listening")]


async def test_a_duplex_call_speaks_while_its_audio_is_audible():
    async with Stages(Duplex()) as stages:
        transport = FakeTransport(rate=24_000)
        call = DuplexCall(transport, stages.clients, edge_config(), "s2")
        await run_call(call, transport, lambda: asyncio.sleep(0), 0.6)
    states = [e["state"] for e in transport.of_type("agent_state")]
    assert states[:2] == ["listening", "speaking"]  # the fake model's tone is audible at once
