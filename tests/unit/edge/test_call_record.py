"""The post-call record, through the call host as every transport uses it: a real local HTTP
receiver checks the signature and what the record holds (no transcript or tool arguments without
content capture; both with it), and delivery neither delays the call's end nor leaks tasks."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from aiohttp import web

from services.common.rpc import SESSION_METADATA
from services.common.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from services.edge.config import EdgeConfig, PersonaConfig
from services.edge.host import CallHost
from services.edge.persona import VoiceCatalog
from services.edge.record.config import PostCallConfig
from services.edge.transport import ProtocolError
from tests.unit.edge.fakes import EngineModel, FakeTransport, Recognizer, Stages, Synthesizer
from tests.unit.edge.test_tools import engine, tool

SECRET = "record-secret-for-tests"
ORDER = {"type": "object", "properties": {"order": {"type": "string"}}, "required": ["order"]}
# What the caller says and the tool is called with: neither may leave the edge without capture.
SAID, ARGUMENT = "where is my order for Ada Lovelace", "A-4411-LOVELACE"


def order_status(arguments: dict, context) -> dict:
    return {"order": arguments["order"], "status": "shipped"}


class Receiver:
    """A record receiver: answers each POST with the next of `statuses` (the last repeats), after `delay_s`."""

    def __init__(self, statuses=(200,), delay_s: float = 0.0):
        self.statuses, self.delay_s = list(statuses), delay_s
        self.bodies: list[bytes] = []
        self.verified: list[bool] = []
        self.answered = 0  # responses that got as far as being returned

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/records", self.record)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/records"
        return self

    async def __aexit__(self, *exc) -> None:
        await self.runner.cleanup()

    async def record(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.bodies.append(body)
        self.verified.append(verify(SECRET.encode(), request.headers[TIMESTAMP_HEADER], body,
                                    request.headers[SIGNATURE_HEADER]))
        await asyncio.sleep(self.delay_s)
        self.answered += 1
        return web.Response(status=self.statuses[min(len(self.bodies), len(self.statuses)) - 1])

    @property
    def records(self) -> list[dict]:
        return [json.loads(body) for body in self.bodies]


def config(record: dict | None = None, **persona) -> EdgeConfig:
    tools = [tool("order_status", {"kind": "python", "path": "tests.unit.edge.test_call_record:order_status"},
                  parameters=ORDER), {"name": "end_call"}]
    return EdgeConfig(persona=PersonaConfig(tools=tools, **persona), post_call=record or {},
                      resilience={"fallback_text": ""})


def agent():
    """Looks the order up, answers, and ends the call at the caller's second turn."""
    return engine([{"call": "order_status", "arguments": {"order": ARGUMENT}}], ["It has shipped. "],
                  ["Goodbye! ", {"call": "end_call"}])


async def hold_call(edge: EdgeConfig, claims: dict | None = None, say=(SAID, "thanks, bye"), model=None):
    """One call through the host: the caller says each line once the agent has answered the last;
    the agent ends it. Returns (host, failure, transport)."""
    asr = Recognizer()
    async with Stages(asr, model or EngineModel(agent()), Synthesizer()) as stages:
        host = CallHost(edge, lambda: stages.clients, VoiceCatalog(lambda: asyncio.sleep(0, ["v"])))
        transport = FakeTransport(claims=claims, greeting=False)

        async def opened():
            return transport

        async def fail(failure):
            pass

        held = asyncio.create_task(host.hold(opened, fail, "websocket"))
        for index, text in enumerate(say):
            while len(transport.of_type("metrics")) < index and not held.done():
                await asyncio.sleep(0.05)
            asr.user_says(text, index)
        failure = await asyncio.wait_for(held, 20)
        return host, failure, transport


async def settled(host: CallHost, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while host.records.pending and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert host.records.pending == 0


async def test_without_capture_the_record_is_signed_and_holds_no_words(monkeypatch):
    monkeypatch.setenv("PARLEY_RECORD_SECRET", SECRET)
    async with Receiver() as receiver:
        host, failure, _ = await hold_call(config(dict(url=receiver.url)))
        await settled(host)
    assert failure.code == "agent_ended" and receiver.verified == [True] and host.records.sent == 1
    (record,) = receiver.records
    assert record["type"] == "call_record" and record["end_reason"] == "agent_ended"
    assert record["transport"] == "websocket" and record["mode"] == "cascade" and record["duration_s"] > 0
    assert record["content_captured"] is False and "transcript" not in record
    assert [turn["turn_id"] for turn in record["turns"]] == [1, 2]
    assert record["turns"][0]["llm_ttft_ms"] is not None and "ttfat_ms" in record["turns"][0]
    [lookup, end] = record["tool_calls"]
    assert (lookup["name"], lookup["outcome"], lookup["turn_id"]) == ("order_status", "ok", 1)
    assert (end["name"], end["outcome"]) == ("end_call", "ok") and lookup["duration_ms"] >= 0
    assert "arguments" not in lookup and "result" not in lookup
    body = receiver.bodies[0].decode()
    assert SAID not in body and ARGUMENT not in body and "shipped" not in body


async def test_with_capture_the_transcript_and_arguments_are_in_it(monkeypatch):
    monkeypatch.setenv("PARLEY_RECORD_SECRET", SECRET)
    async with Receiver() as receiver:
        host, _, _ = await hold_call(config(dict(url=receiver.url, capture_content=True)))
        await settled(host)
    (record,) = receiver.records
    assert receiver.verified == [True] and record["content_captured"] is True
    assert record["transcript"] == [{"role": "caller", "text": SAID}, {"role": "agent", "text": "It has shipped."},
                                    {"role": "caller", "text": "thanks, bye"}, {"role": "agent", "text": "Goodbye!"}]
    lookup = record["tool_calls"][0]
    assert json.loads(lookup["arguments"]) == {"order": ARGUMENT}
    assert json.loads(lookup["result"]) == {"order": ARGUMENT, "status": "shipped"}


async def test_no_record_by_default_nor_without_the_secret(monkeypatch):
    monkeypatch.delenv("PARLEY_RECORD_SECRET", raising=False)
    async with Receiver() as receiver:
        host, _, _ = await hold_call(config())  # no post_call: off
        assert (host.records.sent, host.records.dropped) == (0, 0)
        host, _, _ = await hold_call(config(dict(url=receiver.url)))  # on, but no secret set
        await settled(host)
    assert receiver.bodies == [] and host.records.dropped == 1


async def test_a_persona_record_replaces_the_edges_and_a_tokens_must_be_on_the_allow_list(monkeypatch):
    monkeypatch.setenv("PARLEY_RECORD_SECRET", SECRET)
    async with Receiver() as edge_wide, Receiver() as own:
        edge = config(dict(url=edge_wide.url), post_call=PostCallConfig(url=own.url, capture_content=True))
        host, _, _ = await hold_call(edge)
        await settled(host)
        assert edge_wide.bodies == [] and own.records[0]["content_captured"] is True
        with pytest.raises(ProtocolError, match="post_call.url host"):
            await host.persona({"persona": {"post_call": {"url": "https://elsewhere.example.com/r"}}})
        allowed = EdgeConfig(tools={"allowed_hosts": ["127.0.0.1"]})
        host = CallHost(allowed, lambda: None, VoiceCatalog(lambda: asyncio.sleep(0, [])))
        assert (await host.persona({"persona": {"post_call": {"url": own.url}}})).post_call.url == own.url


async def test_a_slow_or_failing_receiver_neither_delays_the_call_nor_leaks(monkeypatch):
    monkeypatch.setenv("PARLEY_RECORD_SECRET", SECRET)
    async with Receiver(statuses=(503,), delay_s=0.4) as receiver:
        retried = dict(url=receiver.url, timeout_s=1.0, attempts=3, retry_backoff_s=0.05)
        host, _, _ = await hold_call(config(retried))
        assert host.records.pending == 1 and receiver.answered == 0  # the call ended before its record did
        await settled(host)
        assert len(receiver.bodies) == 3 and host.records.failed == 1  # 503: retried, bounded
    async with Receiver(statuses=(400,)) as receiver:
        host, _, _ = await hold_call(config(dict(url=receiver.url, attempts=3)))
        await settled(host)
        assert len(receiver.bodies) == 1 and host.records.failed == 1  # refused: not sent again
    async with Receiver(delay_s=3) as receiver:  # a receiver that does not answer in time
        host, _, _ = await hold_call(config(dict(url=receiver.url, timeout_s=0.2, attempts=2,
                                                 retry_backoff_s=0)))
        await settled(host)
        # Both attempts gave up at their timeout, before the receiver ever answered.
        assert host.records.failed == 1 and len(receiver.bodies) == 2 and receiver.answered == 0


async def test_shutdown_cancels_what_is_still_pending(monkeypatch):
    monkeypatch.setenv("PARLEY_RECORD_SECRET", SECRET)
    async with Receiver(delay_s=3) as receiver:
        host, _, _ = await hold_call(config(dict(url=receiver.url, timeout_s=30)))
        [delivery] = [t for t in asyncio.all_tasks() if t.get_name().endswith(":record")]
        assert host.records.pending == 1
        await host.records.aclose(timeout_s=0.2)
        assert host.records.pending == 0 and delivery.cancelled()
        assert not [t for t in asyncio.all_tasks() if t.get_name().endswith(":record")]


async def test_every_llm_request_of_a_call_carries_the_call_id_as_its_routing_key():
    # Serve's consistent-hash router sends requests with one session_id to one replica; the edge
    # must send the call's id with every LLM request, tool rounds included (not a per-turn id).
    model = EngineModel(agent())
    _, _, transport = await hold_call(config(), model=model)
    ready = transport.of_type("ready")[0]["conversation_id"]
    assert len(model.metadata) == 3  # the lookup round, its follow-up, the goodbye
    assert {m.get(SESSION_METADATA) for m in model.metadata} == {ready}
