"""Preemptive replies and the short first clause, in process (no Ray): a reply started when the
caller pauses is held until their turn is confirmed, played then, and thrown away (its LLM and TTS
RPCs cancelled) if they go on; the history only ever holds what the caller heard."""

from __future__ import annotations

import asyncio

import pytest

from services.common.text import TextChunker
from services.common.timeline import TurnTimeline
from services.edge.cascade import CascadeCall
from services.edge.config import EdgeConfig, SegmentsConfig
from services.edge.turn import Turn
from services.edge.turn_taking.preemptive import PreemptiveReply, same_words
from tests.unit.edge.fakes import FakeTransport, Model, Recognizer, Stages, Synthesizer, script_asr

REPLY = "Of course, I can book it."  # 1.2 s of fake speech
LONG_REPLY = "Of course, I can book a table for four people tonight. The restaurant opens at nine in the evening."


def _config(**turn_taking) -> EdgeConfig:
    # A long confirming silence, so the held reply is held long enough to be seen held.
    return EdgeConfig(turn_taking={"min_silence_ms": 1000, **turn_taking},
                      resilience={"fallback_text": "", "response_timeout_s": 3.0})




def _say(asr: Recognizer, call: CascadeCall, kind: str, text: str = "", utterance_id: int = 0) -> None:
    """One ASR event; the VAD's speech_stopped comes after its 150 ms of silence."""
    script_asr(asr, call, kind, text, utterance_id, stopped_after_s=0.1)


def _utterance(asr: Recognizer, call: CascadeCall, text: str, utterance_id: int) -> None:
    for kind in ("speech_started", "speech_stopped", "final"):
        _say(asr, call, kind, text, utterance_id)


async def _call(config: EdgeConfig, script, model: Model, tts: Synthesizer, seconds: float = 6.0,
                asr: Recognizer | None = None):
    """A call whose caller streams silence in real time throughout; `script` plays the ASR's part."""
    asr = asr or Recognizer()
    async with Stages(asr, model, tts) as stages:
        transport = FakeTransport(greeting=False)
        call = CascadeCall(transport, stages.clients, config, "p1")
        task = asyncio.create_task(call.run())
        feeder = asyncio.create_task(transport.speak(seconds, level=0.0))
        try:
            await asyncio.sleep(0.3)
            await script(asr, call, transport)
        finally:
            feeder.cancel()
            transport.audio_in.put_nowait(None)
            await asyncio.wait_for(task, 5)
    return call, transport


def _users(call: CascadeCall) -> list[str]:
    return [text for role, text in call.history.messages() if role == "user"]


async def test_a_reply_starts_at_the_pause_is_held_and_plays_the_moment_the_turn_is_confirmed():
    model, tts = Model(REPLY), Synthesizer()
    seen: dict = {}

    async def script(asr, call, transport):
        _utterance(asr, call, "Can I book a table for four tonight?", 0)
        await asyncio.sleep(0.45)  # the turn needs 1 s of silence: 0.1 s heard, 0.9 s to go
        seen.update(requests=len(model.requests), tts=list(tts.texts), frames=len(transport.frames),
                    events=[e["type"] for e in transport.events], users=_users(call),
                    held=call.preemptive.turn is not None)
        await asyncio.sleep(2.5)

    call, transport = await _call(_config(), script, model, tts)
    # Held: the LLM was asked (with the caller's words) and TTS spoke, but nothing reached the caller.
    assert seen["requests"] == 1 and seen["tts"] and seen["held"]
    assert model.requests[0].messages[-1].content == "Can I book a table for four tonight?"
    assert seen["frames"] == 0 and "agent_text" not in seen["events"] and seen["users"] == []
    # Confirmed: the same reply, not a new one, played, and it is exactly what the history keeps.
    assert len(model.requests) == 1 and model.cancelled == 0
    texts = [e["text"] for e in transport.of_type("agent_text")]
    assert texts == tts.texts and " ".join(texts) == REPLY
    assert call.history.messages()[1:] == [("user", "Can I book a table for four tonight?"), ("assistant", REPLY)]
    metrics = transport.of_type("metrics")[0]
    assert metrics["preemptive"] is True and metrics["discarded_replies"] == 0
    assert 700 <= metrics["turn_confirm_ms"] <= 1100, metrics
    assert call.preemptive.confirmed == 1 and call.preemptive.discarded == 0


async def test_a_caller_who_stopped_streaming_is_answered_when_the_loop_wakes_the_timer_early(monkeypatch):
    """uvloop (the loop of Ray's actors) counts timers in whole milliseconds, so the confirming
    timer may wake a little before the turn is due; a caller whose audio has stopped brings no other
    check, and the turn must still be confirmed (it once stayed unanswered for the rest of the call)."""
    real_sleep = asyncio.sleep

    async def early_sleep(delay, result=None):
        return await real_sleep(max(0.0, delay - 0.003), result)

    model, tts = Model(REPLY), Synthesizer()

    async def script(asr, call, transport):
        await asyncio.sleep(0.4)  # the caller's audio has stopped (0.5 s of it)
        monkeypatch.setattr(asyncio, "sleep", early_sleep)
        _utterance(asr, call, "Can I book a table for four tonight?", 0)
        await real_sleep(2.5)

    call, transport = await _call(_config(), script, model, tts, seconds=0.5)
    assert [e["text"] for e in transport.of_type("agent_text")] == tts.texts and tts.texts
    assert transport.of_type("metrics") and call.preemptive.confirmed == 1


async def test_the_caller_going_on_discards_the_reply_its_engines_abort_and_the_history_never_sees_it():
    model, tts = Model(REPLY, delay_s=0.2), Synthesizer()  # still generating when the caller goes on
    seen: dict = {}

    async def script(asr, call, transport):
        _utterance(asr, call, "I would like to book a table", 0)
        await asyncio.sleep(0.5)
        seen["first_turn"] = call.preemptive.turn.id
        _say(asr, call, "speech_started", utterance_id=1)  # the caller goes on
        await asyncio.sleep(0.5)
        seen.update(cancelled=model.cancelled, tts_ended=tts.ended, frames=len(transport.frames))
        _say(asr, call, "speech_stopped", utterance_id=1)
        _say(asr, call, "final", "for four people.", 1)
        await asyncio.sleep(4.0)

    call, transport = await _call(_config(), script, model, tts)
    # The first reply's RPCs were cancelled at once: the fake engines saw the abort.
    assert seen["cancelled"] == 1 and seen["tts_ended"] == 1 and seen["frames"] == 0
    # One caller turn with both utterances' words; the reply to it is the second LLM request.
    assert _users(call) == ["I would like to book a table for four people."]
    assert [r.messages[-1].content for r in model.requests] == ["I would like to book a table",
                                                                "I would like to book a table for four people."]
    assert call.history.messages()[1:] == [("user", "I would like to book a table for four people."),
                                           ("assistant", REPLY)]
    # Nothing of the thrown-away turn reached the client; its cost is in the next turn's report.
    assert all(event.get("turn_id") != seen["first_turn"] for event in transport.events)
    metrics = transport.of_type("metrics")[0]
    assert metrics["turn_id"] != seen["first_turn"] and metrics["preemptive"] is True
    assert metrics["discarded_replies"] == 1 and metrics["discarded_llm_tokens"] >= 2
    assert call.preemptive.discarded == 1


async def test_off_the_vad_waits_the_whole_silence_and_the_reply_starts_after_it():
    model, tts = Model(REPLY), Synthesizer()

    async def script(asr, call, transport):
        assert call.endpointing.silence_ms == 1000
        _utterance(asr, call, "Hello there.", 0)
        await asyncio.sleep(2.0)

    call, transport = await _call(_config(preemptive={"enabled": False}), script, model, tts)
    assert transport.of_type("metrics")[0]["preemptive"] is False and call.preemptive.confirmed == 0
    assert _users(call) == ["Hello there."]


async def test_the_first_clause_is_short_and_later_segments_are_sentences():
    model, tts = Model(LONG_REPLY + " Would you like me to book it for you now?"), Synthesizer()

    async def script(asr, call, transport):
        _utterance(asr, call, "Can I book a table?", 0)
        await asyncio.sleep(2.5)

    await _call(_config(), script, model, tts)
    assert tts.texts == ["Of course,", "I can book a table for four people tonight.",
                         "The restaurant opens at nine in the evening.", "Would you like me to book it for you now?"]


def test_first_clause_bounds():
    settings = SegmentsConfig()
    chunker = TextChunker(settings.min_clause_words, first_min_words=settings.first_min_words,
                          first_max_words=settings.first_max_words)
    segments = [segment for word in "I can certainly help you book a table, for four people, tonight. Sure.".split()
                for segment in chunker.push(word + " ")] + chunker.flush()
    # No early break: cut after six words; then whole sentences (clause breaks only in long ones).
    assert segments == ["I can certainly help you book", "a table, for four people, tonight.", "Sure."]
    with pytest.raises(ValueError, match="first_max_words"):
        SegmentsConfig(first_min_words=5, first_max_words=3)


def test_the_first_clause_ends_at_its_comma_before_the_next_token():
    def first_segment_after(tokens: list[str], first_min_words: int = 1) -> list[tuple[int, str]]:
        chunker = TextChunker(12, first_min_words=first_min_words, first_max_words=6)
        return [(index, segment) for index, token in enumerate(tokens) for segment in chunker.push(token)]

    # A comma after a word ends the first clause as soon as its token is in, not one token later.
    assert first_segment_after(["Sure", ",", " I", " can"])[0] == (1, "Sure,")
    assert first_segment_after(["Of", " course,", " I"], first_min_words=2)[0] == (1, "Of course,")
    # Too few words for the bound, or a comma after a digit ("1,000" may go on): no early cut.
    assert first_segment_after(["Sure,", " I"], first_min_words=2) == []
    assert first_segment_after(["It", " costs", " 1", ",", "000", " dollars", " now", " ok", " then"])[0] == (
        8, "It costs 1,000 dollars now ok")
    # Later segments still wait for the whitespace: a comma there is not known to end a clause.
    chunker = TextChunker(2, first_min_words=1, first_max_words=6)
    assert chunker.push("Sure,") == ["Sure,"] and chunker.push(" I can help you,") == []


async def test_a_held_reply_is_confirmed_only_for_the_same_words():
    async def emit(event):
        raise AssertionError("a held turn sends nothing")

    tracker = PreemptiveReply()
    turn = Turn(TurnTimeline(1), emit, pending_user="What time is it?")
    await turn.emit(object())  # held: kept, not sent
    tracker.hold(turn, "What time is it?")
    assert same_words("what time is it", "What time is it?") and tracker.answers("What  time is it")
    assert tracker.confirm("What time is it in London?") is None and tracker.turn is turn
    turn.llm_tokens, turn.tts_audio_s = 5, 1.2
    assert tracker.discard() is turn and turn.over and tracker.discard() is None
    timeline = TurnTimeline(2)
    tracker.charge(timeline)
    assert (timeline.discarded_replies, timeline.discarded_llm_tokens, timeline.discarded_tts_s) == (1, 5, 1.2)


async def test_a_final_that_arrives_after_the_caller_went_on_waits_for_the_rest():
    model, tts = Model(REPLY), Synthesizer()

    async def script(asr, call, transport):
        _say(asr, call, "speech_started", utterance_id=0)
        _say(asr, call, "speech_stopped", utterance_id=0)
        _say(asr, call, "speech_started", utterance_id=1)  # before the first final: still speaking
        _say(asr, call, "final", "I need a table", 0)
        await asyncio.sleep(1.5)
        assert _users(call) == [] and not model.requests  # neither answered nor prepared mid-speech
        _say(asr, call, "speech_stopped", utterance_id=1)
        _say(asr, call, "final", "for two.", 1)
        await asyncio.sleep(2.0)

    call, _ = await _call(_config(), script, model, tts)
    assert _users(call) == ["I need a table for two."]


async def test_a_lagging_asr_final_waits_for_the_utterance_the_caller_went_on_with():
    model, tts = Model(REPLY), Synthesizer()

    async def script(asr, call, transport):
        # Both utterances have ended before the first one's final comes (a loaded ASR).
        for kind, utterance_id in (("speech_started", 0), ("speech_stopped", 0), ("speech_started", 1),
                                   ("speech_stopped", 1)):
            _say(asr, call, kind, utterance_id=utterance_id)
        _say(asr, call, "final", "I was wondering if you could", 0)
        await asyncio.sleep(1.5)  # longer than the turn's silence: the first words alone must not be a turn
        assert not model.requests and not _users(call)
        _say(asr, call, "final", "help me with my order.", 1)
        await asyncio.sleep(2.5)

    call, transport = await _call(_config(), script, model, tts)
    assert _users(call) == ["I was wondering if you could help me with my order."]
    assert len(model.requests) == 1 and len(transport.of_type("agent_audio_start")) == 1


async def test_a_reply_starts_on_the_asrs_pause_decode_and_the_final_with_the_same_words_keeps_it():
    model, tts = Model(REPLY), Synthesizer()
    seen: dict = {}

    async def script(asr, call, transport):
        _say(asr, call, "speech_started", utterance_id=0)
        await asyncio.sleep(0.2)
        script_asr(asr, call, "pause", "Can I book a table for four tonight?", 0, stopped_after_s=0.064)
        await asyncio.sleep(0.3)  # the utterance is not over yet: the ASR's VAD waits 150 ms
        seen.update(requests=len(model.requests), held=call.preemptive.turn is not None, frames=len(transport.frames))
        _say(asr, call, "speech_stopped", utterance_id=0)
        _say(asr, call, "final", "Can I book a table for four tonight?", 0)
        await asyncio.sleep(2.5)

    asr = Recognizer()
    call, transport = await _call(_config(), script, model, tts, asr=asr)
    # The edge asked the ASR for pause decodes shorter than the silence that ends an utterance.
    [config] = asr.configs
    assert config.pause_ms == 64 and config.min_silence_ms == 150
    # The reply started on the pause, held; the final said the same words: the same reply played.
    assert seen == {"requests": 1, "held": True, "frames": 0}
    assert len(model.requests) == 1 and model.cancelled == 0 and transport.frames
    assert _users(call) == ["Can I book a table for four tonight?"]
    assert transport.of_type("metrics")[0]["preemptive"] is True and call.preemptive.confirmed == 1
    # The pause's words reached the client as an interim transcript.
    interim = [e["text"] for e in transport.of_type("transcript") if not e["final"]]
    assert interim == ["Can I book a table for four tonight?"]


async def test_speech_resumed_after_a_pause_discards_the_reply_started_on_it():
    model, tts = Model(REPLY, delay_s=0.2), Synthesizer()
    seen: dict = {}

    async def script(asr, call, transport):
        _say(asr, call, "speech_started", utterance_id=0)
        script_asr(asr, call, "pause", "I would like to book a table", 0, stopped_after_s=0.064)
        await asyncio.sleep(0.4)
        seen["held"] = call.preemptive.turn is not None
        _say(asr, call, "speech_resumed", utterance_id=0)  # the caller goes on: same utterance
        await asyncio.sleep(0.4)
        seen.update(cancelled=model.cancelled, held_after=call.preemptive.turn is not None)
        _say(asr, call, "speech_stopped", utterance_id=0)
        _say(asr, call, "final", "I would like to book a table for four people.", 0)
        await asyncio.sleep(4.0)

    call, transport = await _call(_config(), script, model, tts)
    assert seen == {"held": True, "cancelled": 1, "held_after": False}
    assert [r.messages[-1].content for r in model.requests] == ["I would like to book a table",
                                                                "I would like to book a table for four people."]
    assert _users(call) == ["I would like to book a table for four people."]
    assert transport.of_type("metrics")[0]["discarded_replies"] == 1


@pytest.mark.parametrize(("preemptive", "asked"), [({}, 64), ({"pause_ms": 0}, 0), ({"pause_ms": 150}, 0),
                                                    ({"enabled": False}, 0)])
async def test_pause_decodes_are_asked_for_only_below_the_utterance_silence_with_preemptive_replies(
        preemptive, asked):
    async def script(asr, call, transport):
        await asyncio.sleep(0.1)

    asr = Recognizer()
    await _call(_config(preemptive=preemptive), script, Model(REPLY), Synthesizer(), seconds=0.5, asr=asr)
    assert [config.pause_ms for config in asr.configs] == [asked]


async def test_a_caller_going_on_before_the_reply_is_heard_holds_it_at_once_and_says_one_turn():
    """The turn was confirmed (a short pause taken for its end) and the reply is still thinking
    when the caller goes on: it is held at their first speech, not after barge_in_min_speech_ms,
    their words interrupt it before any of it played, and both utterances are one caller turn."""
    model, tts = Model(REPLY, delay_s=0.25), Synthesizer()  # the first clause takes ~0.5 s
    seen: dict = {}

    async def script(asr, call, transport):
        _utterance(asr, call, "Could you move my appointment to", 0)
        await asyncio.sleep(0.35)  # the turn is confirmed (100 ms of silence), its reply thinking
        seen["first_turn"] = call.turn.id
        _say(asr, call, "speech_started", utterance_id=1)
        await asyncio.sleep(0.5)
        seen.update(frames=len(transport.frames), paused=[e["turn_id"] for e in transport.of_type("agent_paused")])
        _say(asr, call, "speech_stopped", utterance_id=1)
        _say(asr, call, "final", "next Tuesday morning?", 1)
        await asyncio.sleep(3.0)

    call, transport = await _call(_config(min_silence_ms=100, preemptive={"enabled": False}), script, model, tts)
    assert seen["paused"] == [seen["first_turn"]] and seen["frames"] == 0
    assert not [e for e in transport.of_type("agent_audio_start") if e["turn_id"] == seen["first_turn"]]
    assert transport.of_type("interruption")[0]["heard_text"] == ""
    joined = "Could you move my appointment to next Tuesday morning?"
    assert [r.messages[-1].content for r in model.requests] == ["Could you move my appointment to", joined]
    assert call.history.messages()[1:] == [("user", joined), ("assistant", REPLY)]


async def test_a_cough_before_the_reply_is_heard_holds_it_and_then_it_plays_whole():
    model, tts = Model(REPLY, delay_s=0.25), Synthesizer()

    async def script(asr, call, transport):
        _utterance(asr, call, "What time is it?", 0)
        await asyncio.sleep(0.35)
        _say(asr, call, "speech_started", utterance_id=1)
        await asyncio.sleep(0.2)
        _say(asr, call, "speech_stopped", utterance_id=1)
        _say(asr, call, "final", "", 1)  # no words: noise
        await asyncio.sleep(3.0)

    call, transport = await _call(_config(min_silence_ms=100, preemptive={"enabled": False}), script, model, tts)
    types = [event["type"] for event in transport.events]
    assert types.count("agent_paused") == types.count("agent_resumed") == 1 and "interruption" not in types
    assert call.history.messages()[1:] == [("user", "What time is it?"), ("assistant", REPLY)]
    assert len(model.requests) == 1
