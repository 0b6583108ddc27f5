"""The conversation core in process: a fake transport, stage stand-ins on a real gRPC server, no Ray."""

from __future__ import annotations

import asyncio

import numpy as np

from services.common.timeline import TurnTimeline
from services.edge.cascade import CascadeCall
from services.edge.config import TurnTakingConfig
from services.edge.duplex import DuplexCall
from services.edge.events import AgentText
from services.edge.turn import Turn, TurnState
from services.edge.turn_taking import InterruptPolicy, Verdict
from tests.unit.edge.fakes import WORD_S, Duplex, FakeTransport, Model, Recognizer, Stages, Synthesizer, edge_config, run_call

GREETING = "one two three four five six seven eight nine ten."


async def _nothing() -> None:
    pass




async def test_barge_in_stops_playout_and_keeps_only_the_heard_words():
    asr = Recognizer()
    async with Stages(asr, Model("Fine."), Synthesizer()) as stages:
        transport = FakeTransport()
        call = CascadeCall(transport, stages.clients, edge_config(greeting=GREETING), "c1")

        async def script():
            await asyncio.sleep(0.75)  # about three words in (100 ms of lead sent but not yet heard)
            asr.user_says("wait")
        await run_call(call, transport, script, 1.0)
    interruption = transport.of_type("interruption")[0]
    heard = interruption["heard_text"].split()
    assert 2 <= len(heard) <= 5 and GREETING.startswith(" ".join(heard)), heard
    assert transport.clears == 1
    # The greeting's ending, in order, then nothing more of it: only the reply to "wait" (turn 2).
    cut_at = transport.events.index(interruption)
    assert [e["type"] for e in transport.events[cut_at:cut_at + 3]] == ["interruption", "agent_audio_end", "metrics"]
    assert all(e.get("turn_id") != 1 for e in transport.events[cut_at + 3:])
    greeting_s = sum(len(f) for _, f in transport.frames) / 2 / 16000 - 1 * WORD_S  # minus the reply
    assert greeting_s < 1.2
    messages = call.history.messages()
    assert ("assistant", " ".join(heard)) in messages and ("user", "wait") in messages
    assert not any(GREETING in content for _, content in messages)


async def test_a_greeting_interrupted_before_any_audio_leaves_no_assistant_text():
    asr = Recognizer()
    async with Stages(asr, Model("Fine."), Synthesizer(delay_s=1.0)) as stages:
        transport = FakeTransport()
        call = CascadeCall(transport, stages.clients, edge_config(greeting=GREETING), "c2")

        async def script():
            await asyncio.sleep(0.3)
            asr.user_says("hello")
        await run_call(call, transport, script, 0.4)  # confirmed at 300 ms of silence: 150 ms after the final
    assert transport.of_type("interruption")[0] == {**transport.of_type("interruption")[0], "turn_id": 1,
                                                    "heard_text": ""}
    assert not [e for e in transport.events if e["type"].startswith("agent_audio") and e["turn_id"] == 1]
    assert [role for role, _ in call.history.messages()] == ["system", "user"]


async def test_playout_is_paced_in_real_time_with_a_small_lead():
    async with Stages(Recognizer(), Model(), Synthesizer()) as stages:
        transport = FakeTransport()
        call = CascadeCall(transport, stages.clients, edge_config(greeting="one two three four five."), "c3")
        await run_call(call, transport, _nothing, 1.3)  # 1 s of greeting audio
    times = np.array([t for t, _ in transport.frames])
    assert len(times) == 50  # 1 s in 20 ms frames
    gaps = np.diff(times)
    assert (gaps[:4] < 0.01).all()  # the 100 ms lead goes at once
    assert 0.015 < np.median(gaps[5:]) < 0.025 and gaps[5:].max() < 0.045
    assert 0.8 < times[-1] - times[0] < 1.0
    assert transport.of_type("metrics")[0]["underruns"] == 0


async def test_an_interrupted_turn_cannot_emit_after_its_interruption():
    sent = []

    async def emit(event):
        sent.append(event)
    turn = Turn(TurnTimeline(3), emit)
    await turn.emit(AgentText(3, "before"))
    assert turn.close(heard="bef") == "bef" and turn.state is TurnState.INTERRUPTED
    await turn.emit(AgentText(3, "after"))
    assert turn.close() is None  # one ending only
    await turn.announce_end()
    assert [type(e).__name__ for e in sent] == ["AgentText", "Interruption"]
    # In a call: a slow reply cut while it is still being written sends no more of its text.
    asr = Recognizer()
    async with Stages(asr, Model("a b c d e f g h i j k l.", delay_s=0.1), Synthesizer()) as stages:
        transport = FakeTransport()
        call = CascadeCall(transport, stages.clients, edge_config(), "c4")

        async def script():
            asr.user_says("tell me", 0)
            await asyncio.sleep(0.4)
            asr.user_says("stop", 1)
        await run_call(call, transport, script, 1.0)
    cut_at = transport.events.index(transport.of_type("interruption")[0])
    assert not [e for e in transport.events[cut_at + 1:] if e.get("turn_id") == 1 and e["type"] != "metrics"]


def test_the_interrupt_policy_is_one_named_decision():
    policy = InterruptPolicy(TurnTakingConfig(barge_in_min_speech_ms=300))
    assert policy.on_speech(0.29) is Verdict.WAIT and policy.on_speech(0.3) is Verdict.PAUSE
    assert policy.on_final("mm-hmm") is Verdict.IGNORE and policy.on_final("  ") is Verdict.IGNORE
    assert policy.on_final("wait") is Verdict.INTERRUPT
    assert InterruptPolicy(TurnTakingConfig(barge_in=False)).on_speech(5.0) is Verdict.WAIT


async def test_cascade_and_duplex_emit_the_same_event_shapes():
    async with Stages(Recognizer(), Model(), Synthesizer(), Duplex()) as stages:
        cascade_wire = FakeTransport(rate=24_000)
        cascade = CascadeCall(cascade_wire, stages.clients, edge_config(greeting="hi there."), "c5")
        await run_call(cascade, cascade_wire, _nothing, 0.6)
        duplex_wire = FakeTransport(rate=24_000)
        duplex = DuplexCall(duplex_wire, stages.clients, edge_config(), "d5")

        async def script():
            await duplex_wire.speak(0.3)
            await duplex_wire.speak(0.6, level=0.0)  # the caller's silence ends an inferred turn
        await run_call(duplex, duplex_wire, script, 0.3)
    shapes = {}
    for wire in (cascade_wire, duplex_wire):
        for event in wire.events:
            shapes.setdefault(event["type"], []).append(set(event))
    for kind in ("agent_text", "agent_audio_start", "metrics"):
        assert len(shapes[kind]) >= 2 and all(keys == shapes[kind][0] for keys in shapes[kind]), kind
    cascade_ready, duplex_ready = shapes["ready"]
    assert duplex_ready - cascade_ready == {"mode"}  # documented: duplex calls say so


async def test_duplex_audio_is_paced_in_20_ms_frames_and_a_stall_counts_as_underruns():
    async with Stages(Duplex(stall_s=0.4)) as stages:
        transport = FakeTransport(rate=24_000)
        call = DuplexCall(transport, stages.clients, edge_config(), "d6")
        await run_call(call, transport, _nothing, 2.0)
    times = np.array([t for t, _ in transport.frames])
    gaps = np.diff(times)
    steady = gaps[5:30]  # before the stall: one 20 ms frame at a time, not bursts of four
    assert 0.015 < np.median(steady) < 0.025 and (steady < 0.05).all(), steady
    assert call.underruns >= 1  # the 400 ms pause is a gap the caller hears
