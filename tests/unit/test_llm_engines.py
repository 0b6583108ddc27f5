"""LLM engines: the transformers engine on the tiny random-weight model, and the OpenAI-compatible
HTTP engine against a local stand-in server."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import pytest_asyncio

from services.common.rpc import StageError, is_permanent
from services.llm.config import OpenAIConfig, TransformersConfig
from services.llm.engine import ChatRequest, ChatTurn, Delta, Finished, Sampling

SYSTEM = ChatTurn("system", "You are a brief voice assistant.")
USER = ChatTurn("user", "What is the weather in Paris tomorrow?")
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather forecast for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def chat(*, max_tokens: int = 16, temperature: float = 0.0, seed: int | None = None, stop: tuple[str, ...] = (),
         request_id: str = "", tools: tuple = ()) -> ChatRequest:
    return ChatRequest(
        messages=(SYSTEM, USER),
        sampling=Sampling(temperature=temperature, top_p=0.9, max_tokens=max_tokens, stop=stop, seed=seed),
        tools=tools,
        request_id=request_id,
    )


async def collect(stream) -> tuple[list[Delta], list[Finished]]:
    deltas, finished = [], []
    async for item in stream:
        assert not finished, "nothing may follow Finished"
        (finished if isinstance(item, Finished) else deltas).append(item)
    return deltas, finished


def text_of(deltas: list[Delta]) -> str:
    return "".join(d.text for d in deltas)


# --------------------------------------------------------------------------------------------------
# TransformersEngine on the tiny model
# --------------------------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def engine(tiny_llm):
    from services.llm.engines.transformers import TransformersEngine

    eng = TransformersEngine(TransformersConfig(model=str(tiny_llm), device="cpu", torch_threads=1))
    yield eng
    await eng.close()


async def wait_worker_idle(eng, timeout: float = 5.0) -> float:
    """Seconds until the engine's single worker thread is free again."""
    started = time.perf_counter()
    await asyncio.wait_for(asyncio.wrap_future(eng._executor.submit(lambda: None)), timeout)
    return time.perf_counter() - started


async def test_stream_deltas_then_one_finished(engine):
    before = engine.stats.finished
    request = chat(max_tokens=24)
    deltas, finished = await collect(engine.generate(request))
    assert len(deltas) >= 1 and len(finished) == 1
    done = finished[0]
    assert done.reason == "length"
    assert done.completion_tokens == 24 == sum(d.tokens for d in deltas)
    assert done.prompt_tokens == len(engine.encode_prompt(request))
    assert engine.stats.finished == before + 1 and engine.stats.active == 0


async def test_greedy_and_seeded_sampling_are_deterministic(engine):
    greedy = [text_of((await collect(engine.generate(chat(max_tokens=32, seed=5))))[0]) for _ in range(2)]
    assert greedy[0] == greedy[1] and greedy[0]
    sampled = [text_of((await collect(engine.generate(chat(max_tokens=32, temperature=1.0, seed=s))))[0])
               for s in (11, 11, 12)]
    assert sampled[0] == sampled[1]
    assert sampled[0] != sampled[2]  # another seed, another reply


async def test_aclose_after_first_delta_aborts(engine):
    stats = engine.stats
    aborted, tokens_before = stats.aborted, engine.tokens_generated
    stream = engine.generate(chat(max_tokens=2000, request_id="barge-in-1"))
    first = await anext(stream)
    assert isinstance(first, Delta)
    await stream.aclose()
    assert stats.aborted == aborted + 1 and stats.recent_aborts[-1] == "barge-in-1"
    assert stats.active == 0
    assert await wait_worker_idle(engine) < 1.0
    # 2000 tokens would take seconds; the abort stopped the worker within a token or two.
    assert engine.tokens_generated - tokens_before < 50


async def test_cancelling_the_consumer_aborts(engine):
    stats = engine.stats
    aborted, tokens_before = stats.aborted, engine.tokens_generated
    first_delta = asyncio.Event()

    async def consume():
        async for _item in engine.generate(chat(max_tokens=2000, request_id="cancel-1")):
            first_delta.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_delta.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stats.aborted == aborted + 1 and stats.recent_aborts[-1] == "cancel-1"
    assert stats.active == 0
    assert await wait_worker_idle(engine) < 1.0
    assert engine.tokens_generated - tokens_before < 50


async def test_finished_reports_the_wait_behind_the_running_request(engine):
    # The engine runs one generation at a time: the second waits out the first in the queue.
    (_, (first,)), (_, (second,)) = await asyncio.gather(
        collect(engine.generate(chat(max_tokens=200))), collect(engine.generate(chat(max_tokens=8))))
    started = time.perf_counter()
    await collect(engine.generate(chat(max_tokens=200)))
    alone_s = time.perf_counter() - started
    assert 0 <= first.queue_s < 0.1
    assert second.queue_s > 0.5 * alone_s  # at least most of the first one's 200 tokens


async def test_aborting_a_queued_request_does_not_wait_for_the_running_one(engine):
    stats = engine.stats
    aborted = stats.aborted
    running = engine.generate(chat(max_tokens=2000, request_id="running"))
    assert isinstance(await anext(running), Delta)
    queued = engine.generate(chat(max_tokens=8, request_id="queued"))
    waiting = asyncio.create_task(anext(queued))
    await asyncio.sleep(0.05)
    assert not waiting.done() and stats.active == 2
    started = time.perf_counter()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert time.perf_counter() - started < 0.5
    assert stats.aborted == aborted + 1 and stats.recent_aborts[-1] == "queued"
    # The running request was not disturbed: it keeps streaming.
    assert isinstance(await anext(running), Delta)
    await running.aclose()
    assert stats.aborted == aborted + 2 and stats.active == 0
    await wait_worker_idle(engine)


async def test_stop_string_cuts_the_text(engine):
    full = text_of((await collect(engine.generate(chat(max_tokens=64))))[0])
    # A short run of letters from the second half of the (gibberish) reply serves as the stop string.
    start = next(i for i in range(len(full) // 2, len(full) - 3) if full[i:i + 3].isascii() and full[i:i + 3].isalpha())
    stop = full[start:start + 3]
    deltas, (done,) = await collect(engine.generate(chat(max_tokens=64, stop=("never-there", stop))))
    assert text_of(deltas) == full[:full.index(stop)]
    assert done.reason == "stop"
    assert done.completion_tokens < 64
    assert done.completion_tokens == sum(d.tokens for d in deltas)


async def test_chat_template_renders_all_roles_and_tools(engine, tiny_llm):
    request = ChatRequest(
        messages=(SYSTEM, USER, ChatTurn("assistant", "Let me check."),
                  ChatTurn("tool", '{"temp_c": 21}', tool_call_id="call_7")),
        tools=(WEATHER_TOOL,),
    )
    prompt = engine.render_prompt(request)
    assert prompt.startswith("<|im_start|>system\nYou are a brief voice assistant.")
    assert "# Tools" in prompt and json.dumps(WEATHER_TOOL) in prompt
    assert "<|im_start|>user\nWhat is the weather in Paris tomorrow?<|im_end|>" in prompt
    assert "<|im_start|>assistant\nLet me check.<|im_end|>" in prompt
    assert '<|im_start|>tool\n[call_7]\n<tool_response>\n{"temp_c": 21}\n</tool_response><|im_end|>' in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    # Without tools there is no tools block; the saved template is what AutoTokenizer loads.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llm)
    plain = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                          tokenize=False)
    assert plain == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    ids = engine.encode_prompt(request)
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>") and tokenizer.decode(ids) == prompt


async def test_tools_passed_through_generation(engine):
    deltas, (done,) = await collect(engine.generate(chat(max_tokens=4, tools=(WEATHER_TOOL,))))
    assert done.prompt_tokens > len(engine.encode_prompt(chat())) and done.completion_tokens == 4


async def test_worker_errors_surface_and_are_not_aborts(engine, monkeypatch):
    def broken_generate(**kwargs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(engine.model, "generate", broken_generate)
    aborted = engine.stats.aborted
    with pytest.raises(RuntimeError, match="kernel exploded"):
        await collect(engine.generate(chat()))
    assert engine.stats.active == 0 and engine.stats.aborted == aborted


async def test_prompt_longer_than_the_context_is_refused(engine):
    long = ChatRequest(messages=(ChatTurn("user", "hello there " * 1500),))
    with pytest.raises(StageError, match="does not fit the model's context of 2048 tokens") as refused:
        await collect(engine.generate(long))
    assert engine.stats.active == 0
    # RESOURCE_EXHAUSTED, marked as one no retry can cure (the edge does not retry it)
    assert is_permanent(refused.value.code, refused.value.message)


def test_missing_model_path_names_the_fix():
    from services.llm.engines.transformers import TransformersEngine

    with pytest.raises(FileNotFoundError, match="parley models tiny"):
        TransformersEngine(TransformersConfig(model="models/does-not/exist"))


def test_incremental_detokenizer_keeps_multibyte_characters_whole(engine):
    from services.llm.text_stream import IncrementalDetokenizer

    text = "Café 😀 naïve – 東京 done"
    ids = engine.tokenizer.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(engine.tokenizer)
    pieces = [detok.add(i) for i in ids] + [detok.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_stop_string_matcher_holds_back_partial_matches():
    from services.llm.text_stream import StopStringMatcher

    matcher = StopStringMatcher(("STOP", "\n\n"))
    assert matcher.feed("Hello ST") == "Hello "  # "ST" could start "STOP"
    assert matcher.feed("ART and S") == "START and "
    assert matcher.feed("TO") == ""
    assert matcher.feed("P later") == "" and matcher.stopped
    assert matcher.text[:matcher.emitted] == "Hello START and "
    free = StopStringMatcher(())
    assert free.feed("abc") == "abc" and free.finish() == ""


# --------------------------------------------------------------------------------------------------
# OpenAIEngine against a local server speaking the OpenAI streaming (SSE) wire format.
# It is a protocol-level stand-in for an OpenAI-compatible endpoint such as `vllm serve`.
# --------------------------------------------------------------------------------------------------

API_KEY_ENV = "PARLEY_TEST_OPENAI_KEY"


class StandInServer:
    """POST /v1/chat/completions; the `model` field picks the behaviour."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict, dict]] = []  # (headers, body)
        self.disconnected = asyncio.Event()
        self.runner = None
        self.base_url = ""

    async def start(self) -> None:
        from aiohttp import web

        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}/v1"

    async def stop(self) -> None:
        await self.runner.cleanup()

    @staticmethod
    def chunk(model: str, delta: dict | None = None, finish: str | None = None, usage: dict | None = None) -> bytes:
        body = {"id": "chatcmpl-standin", "object": "chat.completion.chunk", "created": 1700000000, "model": model,
                "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]}
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n".encode()

    async def chat_completions(self, request):
        from aiohttp import web

        body = await request.json()
        self.requests.append((dict(request.headers), body))
        model = body["model"]
        if model == "broken":
            return web.Response(status=500, text='{"error": {"message": "model crashed"}}',
                                content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        await response.write(self.chunk(model, {"role": "assistant", "content": ""}))
        if model == "endless":
            try:
                for i in range(100_000):
                    await response.write(self.chunk(model, {"content": f" word{i}"}))
                    await asyncio.sleep(0.01)
            except BaseException:  # the client went away: writing to the closed connection fails
                self.disconnected.set()
                raise
            return response
        if model == "tool-calls":
            for chunk in TOOL_CALL_CHUNKS:  # the shape vLLM's and OpenAI's servers stream
                await response.write(self.chunk(model, *chunk))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        words = ["Hello", " there", ",", " friend", "!"]
        await response.write(b": keep-alive comment\n\n")
        for word in words:
            await response.write(self.chunk(model, {"content": word}))
        finish = "length" if body.get("max_tokens") == len(words) else "stop"
        await response.write(self.chunk(model, {}, finish))
        if model != "no-usage" and body.get("stream_options", {}).get("include_usage"):
            await response.write(self.chunk(model, usage={"prompt_tokens": 17, "completion_tokens": 5,
                                                          "total_tokens": 22}))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _fragment(index: int, arguments: str, call_id: str = "", name: str = "") -> dict:
    fragment = {"index": index, "function": {"arguments": arguments}}
    if call_id:
        fragment.update(id=call_id, type="function")
        fragment["function"]["name"] = name
    return fragment


# (delta, finish_reason): spoken text, then two calls in fragments, the second malformed.
TOOL_CALL_CHUNKS = [
    ({"content": "Let me check."}, None),
    ({"tool_calls": [_fragment(0, "", "call_w1", "get_weather")]}, None),
    ({"tool_calls": [_fragment(0, '{"ci')]}, None),
    ({"tool_calls": [_fragment(0, 'ty": "Paris"}')]}, None),
    ({"tool_calls": [_fragment(1, '{"city": ', "call_w2", "get_weather")]}, None),
    ({}, "tool_calls"),
]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def server():
    srv = StandInServer()
    await srv.start()
    yield srv
    await srv.stop()


def openai_engine(server, model: str, monkeypatch):
    from services.llm.engines.openai import OpenAIEngine

    monkeypatch.setenv(API_KEY_ENV, "sk-parley-test")
    return OpenAIEngine(OpenAIConfig(base_url=server.base_url + "/", model=model, api_key_env=API_KEY_ENV,
                                     timeout_s=5))


async def test_openai_streams_and_sends_the_request(server, monkeypatch):
    eng = openai_engine(server, "tiny-chat", monkeypatch)
    request = ChatRequest(
        messages=(SYSTEM, USER, ChatTurn("tool", "21C", tool_call_id="call_1")),
        sampling=Sampling(temperature=0.3, top_p=0.8, max_tokens=5, stop=("END",), seed=3),
        tools=(WEATHER_TOOL,),
    )
    deltas, (done,) = await collect(eng.generate(request))
    await eng.close()
    assert text_of(deltas) == "Hello there, friend!" and len(deltas) == 5
    assert done == Finished("length", 17, 5)  # usage from the server
    headers, body = server.requests[-1]
    assert headers["Authorization"] == "Bearer sk-parley-test"
    assert body["model"] == "tiny-chat" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 5 and body["temperature"] == 0.3 and body["top_p"] == 0.8
    assert body["stop"] == ["END"] and body["seed"] == 3 and "top_k" not in body
    assert body["tools"] == [WEATHER_TOOL]
    assert body["messages"] == [
        {"role": "system", "content": SYSTEM.content},
        {"role": "user", "content": USER.content},
        {"role": "tool", "content": "21C", "tool_call_id": "call_1"},
    ]
    assert eng.stats.started == eng.stats.finished == 1 and eng.stats.active == 0


async def test_openai_without_usage_counts_deltas(server, monkeypatch):
    eng = openai_engine(server, "no-usage", monkeypatch)
    deltas, (done,) = await collect(eng.generate(chat(max_tokens=50)))
    await eng.close()
    assert done == Finished("stop", 0, len(deltas)) and len(deltas) == 5


async def test_openai_http_error_is_clear(server, monkeypatch):
    from services.llm.engines.openai import OpenAIEngineError

    eng = openai_engine(server, "broken", monkeypatch)
    with pytest.raises(OpenAIEngineError, match=r"HTTP 500.*model crashed"):
        await collect(eng.generate(chat()))
    await eng.close()
    assert eng.stats.active == 0 and eng.stats.aborted == 0


async def test_openai_close_disconnects_the_server(server, monkeypatch):
    eng = openai_engine(server, "endless", monkeypatch)
    server.disconnected.clear()
    stream = eng.generate(chat(max_tokens=100_000, request_id="remote-barge-in"))
    assert isinstance(await anext(stream), Delta)
    await stream.aclose()
    assert eng.stats.aborted == 1 and eng.stats.recent_aborts == ["remote-barge-in"] and eng.stats.active == 0
    await asyncio.wait_for(server.disconnected.wait(), 5)  # the server saw the client go away
    await eng.close()


def test_openai_missing_api_key_env_is_named(monkeypatch):
    from services.llm.engines.openai import OpenAIEngine

    monkeypatch.delenv("PARLEY_UNSET_KEY", raising=False)
    with pytest.raises(ValueError, match="PARLEY_UNSET_KEY"):
        OpenAIEngine(OpenAIConfig(base_url="http://127.0.0.1:9/v1", model="m", api_key_env="PARLEY_UNSET_KEY"))


async def test_load_engine_selects_the_openai_engine(server, monkeypatch):
    from services.llm.engines import load_engine
    from services.llm.engines.openai import OpenAIEngine

    monkeypatch.setenv(API_KEY_ENV, "k")
    eng = load_engine(OpenAIConfig(base_url=server.base_url, model="m", api_key_env=API_KEY_ENV))
    assert isinstance(eng, OpenAIEngine)
    await eng.close()


async def test_openai_streamed_tool_call_fragments_become_typed_calls(server, monkeypatch):
    from services.llm.engine import ToolCall

    eng = openai_engine(server, "tool-calls", monkeypatch)
    history = (SYSTEM, USER, ChatTurn("assistant", "One moment.", tool_calls=(
        ToolCall("call_0", "get_weather", '{"city": "Rome"}'),)), ChatTurn("tool", "21C", tool_call_id="call_0"))
    items = [item async for item in eng.generate(ChatRequest(messages=history, tools=(WEATHER_TOOL,)))]
    await eng.close()
    text = "".join(item.text for item in items if isinstance(item, Delta))
    calls = [item for item in items if isinstance(item, ToolCall)]
    assert text == "Let me check." and items[-1].reason == "tool_calls"
    assert calls[0] == ToolCall("call_w1", "get_weather", '{"city": "Paris"}')
    assert calls[1].id == "call_w2" and "not valid JSON" in calls[1].error  # malformed: an error, not text
    _, body = server.requests[-1]
    assert body["messages"][2]["tool_calls"] == [
        {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]
