"""A silent caller in process: one re-prompt, then a polite goodbye that ends the call (no Ray)."""

from __future__ import annotations

import asyncio

import pytest

from services.edge.cascade import CascadeCall
from services.edge.config import EdgeConfig, TurnTakingConfig
from services.proto import asr_pb2
from tests.unit.edge.fakes import FakeTransport, Model, Recognizer, Stages, Synthesizer


def _config(**turn_taking) -> EdgeConfig:
    return EdgeConfig(turn_taking={"idle_reprompt_s": 0.5, "max_idle_s": 1.2, **turn_taking},
                      resilience={"fallback_text": "", "response_timeout_s": 3.0})


async def test_a_silent_caller_is_reprompted_once_then_the_call_ends_politely():
    async with Stages(Recognizer(), Model(), Synthesizer()) as stages:
        transport = FakeTransport(greeting=False)
        call = CascadeCall(transport, stages.clients, _config(), "i1")
        feeder = asyncio.create_task(transport.speak(10.0, level=0.0))  # the line is open, nobody talks
        try:
            await asyncio.wait_for(call.run(), 6)  # returns by itself: the agent hung up
        finally:
            feeder.cancel()
    prompts = transport.of_type("idle_prompt")
    assert [prompt["final"] for prompt in prompts] == [False, True]
    texts = [event["text"] for event in transport.of_type("agent_text")]
    assert texts == ["Are you still there?", "I haven't heard from you, so I'll end the call now. Goodbye!"]
    _assert_prompted_on_time(transport)
    ends = transport.of_type("agent_audio_end")
    assert len(ends) == 2 and not ends[-1]["interrupted"]  # the goodbye was played to its end


def _assert_prompted_on_time(transport: FakeTransport) -> None:
    """Re-prompt after 0.5 s of silence; the goodbye 0.7 s (max_idle_s less idle_reprompt_s) after
    the re-prompt has played."""
    reprompt, goodbye = transport.of_type("idle_prompt")
    reprompt_played = transport.of_type("agent_audio_end")[0]["t"]
    assert 0.45 <= reprompt["t"] <= 0.75, reprompt
    assert 0.65 <= goodbye["t"] - reprompt_played <= 1.0, (goodbye, reprompt_played)


async def test_a_caller_whose_line_sends_no_audio_is_reprompted_and_hung_up_on_time():
    # A muted LiveKit track, or a WebSocket client that stops sending frames: no caller audio
    # arrives to check the idle clock on, so the call's own timer must.
    async with Stages(Recognizer(), Model(), Synthesizer()) as stages:
        transport = FakeTransport(greeting=False)
        call = CascadeCall(transport, stages.clients, _config(), "i0")
        await asyncio.wait_for(call.run(), 6)  # returns by itself: the agent hung up
    assert [prompt["final"] for prompt in transport.of_type("idle_prompt")] == [False, True]
    _assert_prompted_on_time(transport)


async def test_a_caller_who_answers_the_reprompt_is_not_hung_up_on():
    asr = Recognizer()
    async with Stages(asr, Model("Good."), Synthesizer()) as stages:
        transport = FakeTransport(greeting=False)
        call = CascadeCall(transport, stages.clients, _config(max_idle_s=2.0), "i2")
        task = asyncio.create_task(call.run())
        feeder = asyncio.create_task(transport.speak(10.0, level=0.0))
        try:
            await asyncio.sleep(1.5)  # re-prompted at 0.5 s, played by 1.3 s
            asr.user_says("yes I am here")
            await asyncio.sleep(1.6)  # under max_idle_s of silence since the reply
            assert not task.done()
        finally:
            feeder.cancel()
            transport.audio_in.put_nowait(None)
            await asyncio.wait_for(task, 5)
    # The answer restarted the silence: asked again after it, never told goodbye.
    assert [prompt["final"] for prompt in transport.of_type("idle_prompt")] == [False, False]
    assert ("user", "yes I am here") in call.history.messages()


async def test_a_caller_whose_words_are_still_being_transcribed_is_not_reprompted():
    asr = Recognizer()
    async with Stages(asr, Model("Good."), Synthesizer()) as stages:
        transport = FakeTransport(greeting=False)
        call = CascadeCall(transport, stages.clients, _config(), "i3")
        task = asyncio.create_task(call.run())
        feeder = asyncio.create_task(transport.speak(10.0, level=0.0))
        try:
            await asyncio.sleep(0.2)
            for event in (asr_pb2.RecognizeResponse(speech_started=asr_pb2.SpeechStarted(utterance_id=0)),
                          asr_pb2.RecognizeResponse(speech_stopped=asr_pb2.SpeechStopped(utterance_id=0))):
                asr.script.put_nowait(event)
            await asyncio.sleep(1.5)  # a slow ASR: past idle_reprompt_s and max_idle_s, the final not in yet
            assert not transport.of_type("idle_prompt") and not task.done()
            asr.script.put_nowait(asr_pb2.RecognizeResponse(final=asr_pb2.Transcript(utterance_id=0, text="Hello.")))
            await asyncio.sleep(0.5)
        finally:
            feeder.cancel()
            transport.audio_in.put_nowait(None)
            await asyncio.wait_for(task, 5)
    assert ("user", "Hello.") in call.history.messages() and transport.of_type("agent_text")[0]["text"] == "Good."


def test_idle_settings_are_checked():
    with pytest.raises(ValueError, match="max_idle_s"):
        TurnTakingConfig(idle_reprompt_s=5, max_idle_s=3)
    assert TurnTakingConfig().max_idle_s == 0  # off unless configured
