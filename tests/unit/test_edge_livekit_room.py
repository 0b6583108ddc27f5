"""The agent in a LiveKit room as a stock LiveKit frontend sees it, in process: the edge's real call
host and cascade core (stages: the in-process gRPC fakes of tests/unit/edge/fakes.py) joined
through the unmodified rtc SDK to the LiveKit STAND-IN (tests/livekit_standin: not LiveKit; its
docstrings say what it covers). A "human" participant (also the rtc SDK) reads what a frontend
reads: the `lk.agent.state` attribute, `lk.transcription` captions, `lk.chat`.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import asynccontextmanager

from livekit import api, rtc

from services.edge.config import EdgeConfig, LiveKitConfig
from services.edge.host import CallHost
from services.edge.livekit_dispatch import RoomAgents
from services.edge.livekit_server import LiveKitCredentials
from services.edge.persona import VoiceCatalog
from services.llm.config import PluginConfig
from services.llm.engines import load_engine
from tests.livekit_standin.human import Human, room_token
from tests.livekit_standin.server import StandInServer
from tests.unit.edge.fakes import EngineModel, Model, Recognizer, Stages, Synthesizer

KEY, SECRET = "standin-key", "standin-secret-that-is-long-enough-for-hs256"
GREETING = "one two three four five six seven eight nine ten eleven twelve."


async def no_voices() -> list[str]:
    return []


@asynccontextmanager
async def room_agent(*stage_servicers, tools: list | None = None, greeting: str = "", **livekit):
    """A stand-in server and this process's edge agent (RoomAgents over a CallHost) for it."""
    async with StandInServer(KEY, SECRET) as server, Stages(*stage_servicers) as stages:
        config = EdgeConfig(persona={"greeting": greeting, "tools": tools or []},
                            resilience={"fallback_text": "", "response_timeout_s": 120.0, "stall_timeout_s": 120.0},
                            livekit={"enabled": True, "url": server.url, "api_url": server.api_url,
                                     "caller_track_grace_s": 1.0, **livekit})
        host = CallHost(config, lambda: stages.clients, VoiceCatalog(no_voices))
        agents = RoomAgents(config.livekit, LiveKitCredentials(server.url, KEY, SECRET, server.api_url),
                            host.hold_room, config.max_conversations)
        try:
            yield server, agents
        finally:
            await agents.close()


def agent_of(human: Human) -> rtc.RemoteParticipant:
    return next(p for p in human.room.remote_participants.values() if p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT)


def watch_state(human: Human) -> list[str]:
    """Every value of the agent's `lk.agent.state` the human's SDK reports, in order."""
    states: list[str] = []

    def changed(attributes: dict, participant) -> None:
        if "lk.agent.state" in attributes:
            states.append(attributes["lk.agent.state"])
    human.room.on("participant_attributes_changed", changed)
    return states


async def until(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_the_agent_state_attribute_reaches_the_frontend_through_a_turn():
    async with room_agent(Recognizer(), Model("Sure thing, here it is."), Synthesizer(), greeting="") as (server, agents):
        human = await Human(server.url, room_token(KEY, SECRET, "r-state", "caller")).join()
        try:
            states = watch_state(human)
            await agents.dispatch("r-state")
            await human.wait_for("ready", 20)
            await until(lambda: states and states[-1] == "listening")
            await human.room.local_participant.send_text("hello there", topic="lk.chat")  # a user turn
            await human.wait_for("metrics", 20)
            await until(lambda: states[-1] == "listening")
            # What the stock frontend's agent hooks read, straight from the participant:
            assert agent_of(human).attributes["lk.agent.state"] == "listening"
            assert states[states.index("thinking"):] == ["thinking", "speaking", "listening"], states
            # The same states came as `agent_state` events, each a change.
            sent = [e["state"] for e in human.of_type("agent_state")]
            assert sent == ["listening", "thinking", "speaking", "listening"]
        finally:
            await human.leave()


async def test_captions_are_final_only_when_heard_and_a_cut_reply_keeps_what_was_heard():
    asr = Recognizer()
    reply = "First sentence here. Second one follows now."
    async with room_agent(asr, Model(reply), Synthesizer(), greeting=GREETING) as (server, agents):
        human = await Human(server.url, room_token(KEY, SECRET, "r-captions", "caller")).join()
        try:
            await agents.dispatch("r-captions")
            [start] = await human.wait_for("agent_audio_start", 20)
            first = [c for c in human.captions if c.segment_id.startswith("agent-1-")]
            await until(lambda: any(c.segment_id.startswith("agent-1-") for c in human.captions))
            first = [c for c in human.captions if c.segment_id.startswith("agent-1-")]
            assert first[0].text == GREETING and not first[0].final  # playing, not yet heard whole
            await asyncio.sleep(0.8)  # about four words of the greeting (0.2 s a word)
            asr.user_says("wait", 0)
            [cut] = await human.wait_for("interruption", 20)
            await human.wait_for("metrics", 20, count=2)  # the answer to "wait" played too
            await until(lambda: len(human.of_type("agent_audio_end")) >= 2)
            await asyncio.sleep(0.5)
        finally:
            await human.leave()
    greeting = [c for c in human.captions if c.segment_id == "agent-1-1"]
    assert [c.final for c in greeting] == [False, True]
    heard = greeting[-1].text
    assert heard == cut["heard_text"] and 1 <= len(heard.split()) < len(GREETING.split())
    assert GREETING.startswith(heard)
    # The answer: each sentence interim when it starts, final when the next starts or the reply ends.
    answer = [(c.segment_id, c.text, c.final) for c in human.captions if c.segment_id.startswith("agent-2-")]
    assert answer == [("agent-2-1", "First sentence here.", False), ("agent-2-1", "First sentence here.", True),
                      ("agent-2-2", "Second one follows now.", False), ("agent-2-2", "Second one follows now.", True)]
    # Each reply as heard went out on lk.chat.
    assert agent_chat(human) == [heard, reply]
    agent_track = next(iter(agent_of_captions(human)))
    assert agent_track  # captions name the agent's track


def agent_chat(human: Human) -> list[str]:
    return [text for sender, text in human.chat if sender == LiveKitConfig().agent_identity]


def agent_of_captions(human: Human) -> set[str]:
    return {c.track_sid for c in human.captions if c.segment_id.startswith("agent-")}


async def test_typed_chat_from_the_caller_is_a_turn_and_others_are_ignored():
    model = Model("Noted.")  # the fake ASR never answers: the caller only types
    async with room_agent(Recognizer(), model, Synthesizer()) as (server, agents):
        human = await Human(server.url, room_token(KEY, SECRET, "r-chat", "caller")).join()
        agents_dispatched = agents.dispatch("r-chat")
        await agents_dispatched
        await human.wait_for("ready", 20)
        other = rtc.Room()
        await other.connect(server.url, room_token(KEY, SECRET, "r-chat", "bystander"))  # no audio: not the caller
        try:
            await other.local_participant.send_text("ignore me", topic="lk.chat")
            await human.room.local_participant.send_text("x" * 4001, topic="lk.chat")  # over the limit
            await asyncio.sleep(1.0)
            assert not model.requests
            await human.room.local_participant.send_text("  what time is it  ", topic="lk.chat")
            await human.wait_for("metrics", 20)
            assert len(model.requests) == 1 and model.requests[0].messages[-1].content == "what time is it"
            await until(lambda: agent_chat(human))
            assert agent_chat(human) == ["Noted."]
        finally:
            await other.disconnect()
            await human.leave()


def engine(*script):
    return load_engine(PluginConfig(path="tests.unit.edge.scripted_llm:ScriptedEngine", options={"script": script}))


async def test_the_transfer_tool_moves_the_phone_caller_with_a_signed_transfer_request():
    llm = engine([{"call": "transfer"}], ["Transferring you now."])
    tools = [{"name": "transfer", "options": {"target": "+15550100"}}]
    async with room_agent(Recognizer(), EngineModel(llm), Synthesizer(), tools=tools) as (server, agents):
        token = (api.AccessToken(KEY, SECRET).with_identity("sip_+4412").with_kind("sip")
                 .with_grants(api.VideoGrants(room_join=True, room="r-sip")).to_jwt())
        phone = await Human(server.url, token).join()
        try:
            await agents.dispatch("r-sip")
            await phone.wait_for("ready", 20)
            await phone.room.local_participant.send_text("a human please", topic="lk.chat")
            [transfer] = await phone.wait_for("transfer", 20)
            assert transfer["target"] == "+15550100"
            await until(lambda: not agents.rooms)  # the call ended after the transfer: the agent left
        finally:
            await phone.leave()
        [(request, claims)] = server.api.transfers
    assert (request.room_name, request.participant_identity, request.transfer_to) == ("r-sip", "sip_+4412",
                                                                                      "tel:+15550100")
    # Verified by the stand-in with the API secret: room admin of that room and the SIP call grant.
    assert claims.video.room_admin and claims.video.room == "r-sip" and claims.sip.call


async def test_without_a_phone_caller_transfer_is_a_clear_tool_error():
    llm = engine([{"call": "transfer"}], ["I cannot transfer you here."])
    tools = [{"name": "transfer", "options": {"target": "+15550100"}}]
    async with room_agent(Recognizer(), EngineModel(llm), Synthesizer(), tools=tools) as (server, agents):
        human = await Human(server.url, room_token(KEY, SECRET, "r-nosip", "caller")).join()
        try:
            await agents.dispatch("r-nosip")
            await human.wait_for("ready", 20)
            await human.room.local_participant.send_text("a human please", topic="lk.chat")
            [called] = await human.wait_for("tool_call", 20)
            await human.wait_for("metrics", 20)
            assert called["outcome"] == "error" and not human.of_type("transfer") and agents.rooms
        finally:
            await human.leave()
        assert not server.api.transfers
    result = json.loads(llm.requests[1].messages[-1].content)
    assert "nobody in this room joined by phone" in result["error"]
