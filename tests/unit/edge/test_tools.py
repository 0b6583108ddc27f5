"""Tools in a call, in process: the scripted reference engine (by import path) behind the LLM
stage's wire conversion, a real webhook receiver that checks the signature, Python tools."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from services.common.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from services.edge.cascade import CascadeCall
from services.edge.host import failure_of
from services.edge.tools.loop import PENDING
from services.edge.tools.transfer import CallEnded
from services.llm.config import PluginConfig
from services.llm.engines import load_engine
from tests.unit.edge.fakes import EngineModel, FakeTransport, Recognizer, Stages, Synthesizer, edge_config

SECRET = "tool-secret-for-tests"
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


async def slow_lookup(arguments: dict, context) -> dict:
    """A Python tool that takes a while (a slow back end)."""
    await asyncio.sleep(arguments.get("seconds", 1.0))
    return {"status": "booked", "for": arguments.get("name", "")}


def broken_tool(arguments: dict, context) -> str:
    raise RuntimeError("database down")


class Receiver:
    """A webhook receiver: verifies the edge's signature, answers with the weather."""

    def __init__(self, status: int = 200):
        self.status, self.calls, self.verified = status, [], []

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/weather", self.weather)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/weather"
        return self

    async def __aexit__(self, *exc) -> None:
        await self.runner.cleanup()

    async def weather(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.verified.append(verify(SECRET.encode(), request.headers[TIMESTAMP_HEADER], body,
                                    request.headers[SIGNATURE_HEADER]))
        self.calls.append(json.loads(body))
        if self.status != 200:
            return web.Response(status=self.status, text="nope")
        return web.json_response({"result": {"city": json.loads(body)["arguments"]["city"], "temp_c": 21}})


def engine(*script):
    return load_engine(PluginConfig(path="tests.unit.edge.scripted_llm:ScriptedEngine", options={"script": script}))


def tool(name: str, runner: dict, **extra) -> dict:
    return {"name": name, "description": name, "parameters": extra.pop("parameters", {"type": "object"}),
            "runner": runner, **extra}


def played(turns: int):
    """Until `turns` agent turns have ended (played out or cut)."""
    return lambda transport: len(transport.of_type("metrics")) >= turns


async def call_with(llm, tools: list, say: list[tuple[float, str]], seconds: float, until=None, tracing=None,
                    **config):
    """A cascade call with `tools`; the caller says each (delay, text), then the call goes on until
    `until(transport)` holds (at most `seconds`, a bound for loaded machines) or for `seconds`.
    Returns (transport, call, how the call ended)."""
    asr = Recognizer()
    async with Stages(asr, EngineModel(llm), Synthesizer()) as stages:
        transport = FakeTransport(greeting=False)
        call = CascadeCall(transport, stages.clients, edge_config(config, tools=tools), "t1", tracing=tracing)
        task = asyncio.create_task(call.run())
        for index, (delay, text) in enumerate(say):
            await asyncio.sleep(delay)
            asr.user_says(text, index)
        deadline = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < deadline and not task.done():
            if until is not None and until(transport):
                break
            await asyncio.sleep(0.05)
        transport.audio_in.put_nowait(None)
        error = None
        try:
            await asyncio.wait_for(task, 5)
        except BaseException as group:  # noqa: BLE001 - the test looks at how the call ended
            error = group
    return transport, call, error


def spoken(transport: FakeTransport) -> list[str]:
    return [event["text"] for event in transport.of_type("agent_text")]


def tool_messages(llm, request: int) -> list:
    return [m for m in llm.requests[request].messages if m.role == "tool"]


async def test_a_webhook_is_called_signed_and_its_result_answers_the_caller(monkeypatch):
    monkeypatch.setenv("PARLEY_TOOLS_SECRET", SECRET)
    llm = engine(["Let me check. ", {"call": "get_weather", "arguments": {"city": "Paris"}}],
                 ["It is 21 degrees in Paris."])
    async with Receiver() as receiver:
        tools = [tool("get_weather", {"kind": "webhook", "url": receiver.url}, parameters=CITY)]
        transport, call, error = await call_with(llm, tools, [(0.1, "weather in Paris?")], 10.0, played(1))
    assert error is None
    assert receiver.verified == [True] and receiver.calls[0]["arguments"] == {"city": "Paris"}
    assert receiver.calls[0]["name"] == "get_weather" and receiver.calls[0]["call_id"] == "t1"
    assert spoken(transport) == ["Let me check.", "It is 21 degrees in Paris."]
    first, second = llm.requests
    assert [t["function"]["name"] for t in first.tools] == ["get_weather"] and first.tools == second.tools
    (result,) = tool_messages(llm, 1)
    assistant = second.messages[-2]
    assert assistant.role == "assistant" and assistant.content == "Let me check."
    assert assistant.tool_calls[0].id == result.tool_call_id and assistant.tool_calls[0].name == "get_weather"
    assert json.loads(result.content) == {"city": "Paris", "temp_c": 21}
    # The history ends with the follow-up, not the words already recorded with the call.
    assert [m.role for m in call.history.chat()][-4:] == ["user", "assistant", "tool", "assistant"]
    assert call.history.chat()[-1].content == "It is 21 degrees in Paris."
    (event,) = transport.of_type("tool_call")
    assert event["name"] == "get_weather" and event["outcome"] == "ok" and "arguments" not in event


async def test_a_slow_tool_gets_the_filler_once_and_a_fast_one_none():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from services.edge.tracing import ConversationTracing

    exporter, provider = InMemorySpanExporter(), TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    slow = tool("book", {"kind": "python", "path": "tests.unit.edge.test_tools:slow_lookup"})
    llm = engine([{"call": "book", "arguments": {"seconds": 1.0}}, {"call": "book", "arguments": {"seconds": 0.9}}],
                 [{"call": "book", "arguments": {"seconds": 0.8}}], ["Booked."])
    transport, _, _ = await call_with(llm, [slow], [(0.1, "book it")], 10.0, played(1),
                                      tracing=ConversationTracing("t1", provider.get_tracer("test")))
    assert spoken(transport) == ["One moment.", "Booked."]  # three slow calls, one filler
    spans = [s for s in exporter.get_finished_spans() if s.name == "execute_tool"]
    assert [(s.attributes["gen_ai.tool.name"], s.attributes["parley.tool.outcome"]) for s in spans] == [("book", "ok")] * 3
    assert all(s.parent is not None and "gen_ai.tool.call.arguments" not in s.attributes for s in spans)
    assert sum(s.end_time - s.start_time for s in spans) / 1e9 > 2.6
    fast = engine([{"call": "book", "arguments": {"seconds": 0.05}}], ["Booked."])
    transport, _, _ = await call_with(fast, [slow], [(0.1, "book it")], 10.0, played(1))
    assert spoken(transport) == ["Booked."]


async def test_a_failing_tool_is_spoken_about_and_the_call_goes_on(monkeypatch):
    monkeypatch.setenv("PARLEY_TOOLS_SECRET", SECRET)
    llm = engine([{"call": "get_weather", "arguments": {"city": "Paris"}}, {"call": "crash"},
                  {"call": "get_weather", "arguments": {"town": "Paris"}}],
                 ["Sorry, the weather service is down."])
    async with Receiver(status=500) as receiver:
        tools = [tool("get_weather", {"kind": "webhook", "url": receiver.url}, parameters=CITY),
                 tool("crash", {"kind": "python", "path": "tests.unit.edge.test_tools:broken_tool"})]
        transport, _, error = await call_with(llm, tools, [(0.1, "weather?")], 10.0, played(1))
    assert error is None and len(receiver.calls) == 1  # the call with bad arguments never left the edge
    errors = [json.loads(m.content)["error"] for m in tool_messages(llm, 1)]
    assert errors == ["the tool's service answered HTTP 500", "crash failed",
                      "bad arguments for get_weather: 'city' is a required property"]
    assert spoken(transport) == ["Sorry,", "the weather service is down."]  # a short first clause, then the rest


async def test_a_malformed_call_is_a_tool_error_never_spoken():
    llm = engine([{"raw": 'Checking. <tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>'}],
                  ["Which city?"])
    transport, _, _ = await call_with(llm, [tool("get_weather", {"kind": "end_call"})], [(0.1, "weather")], 10.0, played(1))
    assert spoken(transport) == ["Checking.", "Which city?"]
    (result,) = tool_messages(llm, 1)
    assert "malformed" in json.loads(result.content)["error"]


async def test_rounds_per_turn_are_bounded():
    looping = engine([{"call": "book", "arguments": {"seconds": 0}}])  # calls a tool every time
    book = tool("book", {"kind": "python", "path": "tests.unit.edge.test_tools:slow_lookup"})
    transport, call, _ = await call_with(looping, [book], [(0.1, "book")], 10.0, played(1), max_steps=3)
    assert len(looping.requests) == 4 and len(transport.of_type("tool_call")) == 3
    assert "too many tool calls" in call.history.chat()[-1].content


@pytest.mark.parametrize("cancel", [False, True])
async def test_barge_in_during_a_tool(cancel):
    book = tool("book", {"kind": "python", "path": "tests.unit.edge.test_tools:slow_lookup"},
                cancel_on_interrupt=cancel)
    llm = engine([{"call": "book", "arguments": {"seconds": 1.2, "name": "Ada"}}], ["Okay."])
    transport, call, _ = await call_with(llm, [book], [(0.1, "book a table"), (0.9, "actually wait")], 10.0,
                                       lambda t: played(2)(t) and t.of_type("tool_call"))
    assert transport.of_type("interruption")[0]["turn_id"] == 1
    (event,) = transport.of_type("tool_call")
    (seen,) = tool_messages(llm, 1)  # the next turn's request
    if cancel:
        assert event["outcome"] == "cancelled" and "cancelled" in seen.content
    else:  # it ran to its end: the next turn sees the placeholder, the history then the result
        assert event["outcome"] == "ok" and event["duration_ms"] >= 1150 and seen.content == PENDING
        (kept,) = [m for m in call.history.chat() if m.role == "tool"]
        assert json.loads(kept.content) == {"status": "booked", "for": "Ada"}
    assert len(llm.requests) == 2


async def test_end_call_says_goodbye_then_ends_the_call():
    llm = engine(["Goodbye, have a nice day! ", {"call": "end_call"}])
    transport, _, error = await call_with(llm, [{"name": "end_call"}], [(0.1, "bye")], 10.0)
    ended = error.exceptions[0] if isinstance(error, BaseExceptionGroup) else error
    assert isinstance(ended, CallEnded) and ended.reason == "agent_ended"
    assert spoken(transport) == ["Goodbye,", "have a nice day!"]
    assert transport.of_type("agent_audio_end")  # it played out before the end
    failure = failure_of(error, edge_config())
    assert (failure.close_code, failure.code, failure.error_event) == (1000, "agent_ended", False)
