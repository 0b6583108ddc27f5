"""Caller speech over the agent in process: backchannels, noise and real barge-ins (no Ray)."""

from __future__ import annotations

import asyncio

import pytest

from services.edge.cascade import CascadeCall
from services.edge.config import EdgeConfig, PersonaConfig, TurnTakingConfig
from services.edge.turn_taking import InterruptPolicy, Verdict
from tests.unit.edge.fakes import WORD_S, FakeTransport, Model, Recognizer, Stages, Synthesizer, script_asr

GREETING = "one two three four five six seven eight nine ten."  # 2 s of fake speech
FRAME_S = 0.02


def _config(**turn_taking) -> EdgeConfig:
    return EdgeConfig(persona=PersonaConfig(greeting=GREETING), turn_taking=turn_taking,
                      resilience={"fallback_text": "", "response_timeout_s": 3.0})




async def _call(config: EdgeConfig, script, seconds: float, reply: str = "Fine."):
    """Run a call whose caller streams silence throughout, play `script`, hang up after `seconds`."""
    asr = Recognizer()
    async with Stages(asr, Model(reply), Synthesizer()) as stages:
        transport = FakeTransport()
        call = CascadeCall(transport, stages.clients, config, "b1")
        task = asyncio.create_task(call.run())
        feeder = asyncio.create_task(transport.speak(seconds + 1.0, level=0.0))
        try:
            await asyncio.sleep(0.1)
            await script(asr, call, transport)
            await asyncio.sleep(seconds)
        finally:
            feeder.cancel()
            transport.audio_in.put_nowait(None)
            await asyncio.wait_for(task, 5)
    return call, transport


def _greeting_audio_s(transport: FakeTransport) -> float:
    return sum(len(frame) for _, frame in transport.frames) / 2 / 16000


def test_backchannel_words_per_language():
    policy = InterruptPolicy(TurnTakingConfig())
    # As Whisper writes hums: tiny.en heard a "mm-hmm" as "And M-M-M-M-M-M-M-M" (a run of hums is one word).
    for text in ("Mm-hmm.", "yeah", "Uh-huh, right.", "okay okay", "Amen.", "", "And M-M-M-M-M-M-M-M", "Mmm, hmm.",
                 "Hm."):
        assert policy.on_final(text, "en") is Verdict.IGNORE, text
    for text in ("wait", "yeah but what about Tuesday", "no", "stop please", "and then what", "hmm no", "M-M-M-my card"):
        assert policy.on_final(text, "en") is Verdict.INTERRUPT, text
    assert policy.on_final("genau", "de") is Verdict.IGNORE and policy.on_final("genau", "en") is Verdict.INTERRUPT
    assert policy.on_final("oui", "xx") is Verdict.INTERRUPT  # unknown language: the configured one (en)
    custom = InterruptPolicy(TurnTakingConfig(backchannels={"en": ["roger"]}))
    assert custom.on_final("roger", "en") is Verdict.IGNORE and custom.on_final("yeah", "en") is Verdict.INTERRUPT
    assert policy.on_final("yeah " * 5, "en") is Verdict.INTERRUPT  # more than backchannel_max_words


def test_speech_length_bounds():
    policy = InterruptPolicy(TurnTakingConfig(barge_in_min_speech_ms=300, barge_in_long_speech_ms=1000))
    assert policy.on_speech(0.29) is Verdict.WAIT and policy.on_speech(0.3) is Verdict.PAUSE
    assert policy.on_speech(1.0) is Verdict.INTERRUPT
    # A reply not heard yet is held at the first speech; speech long enough still interrupts it.
    assert policy.on_speech(0.0, agent_heard=False) is Verdict.PAUSE
    assert policy.on_speech(1.0, agent_heard=False) is Verdict.INTERRUPT
    assert policy.on_partial("what about", "en", speech_s=0.1) is Verdict.WAIT  # too short to trust
    assert policy.on_partial("what about", "en", speech_s=0.4) is Verdict.INTERRUPT
    assert policy.on_partial("mm-hmm", "en", speech_s=0.9) is Verdict.WAIT
    assert InterruptPolicy(TurnTakingConfig(barge_in=False)).on_speech(5.0) is Verdict.WAIT
    assert InterruptPolicy(TurnTakingConfig(barge_in=False)).on_speech(0.0, agent_heard=False) is Verdict.WAIT
    with pytest.raises(ValueError):
        TurnTakingConfig(barge_in_min_speech_ms=800, barge_in_long_speech_ms=500)
    with pytest.raises(ValueError):
        TurnTakingConfig(language="fr", backchannels={"en": ["yeah"]})


async def test_a_short_backchannel_neither_stops_the_agent_nor_becomes_a_turn():
    async def script(asr, call, transport):
        await asyncio.sleep(0.5)
        script_asr(asr, call, "speech_started")
        await asyncio.sleep(0.2)  # under barge_in_min_speech_ms: the agent does not even pause
        script_asr(asr, call, "speech_stopped")
        script_asr(asr, call, "final", "Mm-hmm.")
    call, transport = await _call(_config(), script, 2.2)
    types = [event["type"] for event in transport.events]
    assert "backchannel" in types and "interruption" not in types and "agent_paused" not in types
    assert [event["text"] for event in transport.of_type("backchannel")] == ["Mm-hmm."]
    assert abs(_greeting_audio_s(transport) - 10 * WORD_S) < 0.03  # the whole greeting, once
    assert [role for role, _ in call.history.messages()] == ["system", "assistant"]  # no user turn
    assert call.overlap.backchannels == 1


async def test_a_long_backchannel_pauses_then_resumes_where_it_stopped():
    async def script(asr, call, transport):
        await asyncio.sleep(0.5)
        script_asr(asr, call, "speech_started")
        await asyncio.sleep(0.5)  # over 300 ms: paused
        paused_frames = len(transport.frames)
        await asyncio.sleep(0.3)
        assert len(transport.frames) == paused_frames  # nothing plays while the caller speaks
        script_asr(asr, call, "speech_stopped")
        script_asr(asr, call, "final", "uh-huh, yeah")
    call, transport = await _call(_config(), script, 2.5)
    types = [event["type"] for event in transport.events]
    assert types.count("agent_paused") == 1 and types.count("agent_resumed") == 1
    assert "interruption" not in types and types.count("agent_audio_start") == 1
    # Audio sent ahead of the pause (the 100 ms lead) is sent again on resume: nothing is skipped.
    assert 10 * WORD_S <= _greeting_audio_s(transport) <= 10 * WORD_S + 0.12
    assert transport.clears == 1  # the caller's buffered lead was dropped at the pause
    assert ("assistant", GREETING) in call.history.messages()
    assert transport.of_type("metrics")[0]["interrupted"] is False
    assert call.overlap.false_interruptions == 1


async def test_noise_without_words_resumes_after_the_timeout():
    async def script(asr, call, transport):
        await asyncio.sleep(0.4)
        script_asr(asr, call, "speech_started")
        await asyncio.sleep(0.45)
        script_asr(asr, call, "speech_stopped")  # a cough: no transcript ever comes
    call, transport = await _call(_config(false_interruption_timeout_ms=300), script, 2.5)
    resumed = transport.of_type("agent_resumed")
    paused = transport.of_type("agent_paused")
    assert len(paused) == len(resumed) == 1 and 0.25 <= resumed[0]["t"] - paused[0]["t"] - 0.15 <= 0.6
    assert not transport.of_type("interruption") and ("assistant", GREETING) in call.history.messages()


async def test_real_words_after_the_pause_interrupt_and_are_answered():
    async def script(asr, call, transport):
        await asyncio.sleep(0.5)
        script_asr(asr, call, "speech_started")
        await asyncio.sleep(0.4)
        script_asr(asr, call, "partial", "wait, what")
        await asyncio.sleep(0.1)
        script_asr(asr, call, "speech_stopped")
        script_asr(asr, call, "final", "Wait, what about Tuesday?")
    call, transport = await _call(_config(), script, 1.0)
    types = [event["type"] for event in transport.events]
    assert types.index("agent_paused") < types.index("interruption")
    interruption = transport.of_type("interruption")[0]
    heard = interruption["heard_text"].split()
    # Paused ~300 ms after onset (at ~0.8 s of audio): about four words heard, the lead not counted.
    assert 2 <= len(heard) <= 5 and GREETING.startswith(" ".join(heard)), heard
    assert ("user", "Wait, what about Tuesday?") in call.history.messages()


async def test_long_speech_interrupts_without_any_transcript():
    async def script(asr, call, transport):
        await asyncio.sleep(0.3)
        script_asr(asr, call, "speech_started")
    call, transport = await _call(_config(barge_in_long_speech_ms=600), script, 1.0)
    paused, interruption = transport.of_type("agent_paused")[0], transport.of_type("interruption")[0]
    assert 0.2 <= interruption["t"] - paused["t"] <= 0.45  # 300 ms pause, 600 ms interruption
    assert [role for role, _ in call.history.messages()] == ["system", "assistant"]
