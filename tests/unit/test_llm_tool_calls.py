"""Tool calls out of model text: the hermes splitter on outputs in the format Hermes/Qwen models
write (streamed in uneven pieces), malformed ones included, and the tiny model's chat template
rendering a chat with tool calls."""

from __future__ import annotations

import json

import pytest

from services.llm.engine import ChatRequest, ChatTurn, Delta, Finished, ToolCall
from services.llm.tool_calls import HermesSplitter, parse_call, split_stream

# Outputs in the hermes format (Qwen2.5-Instruct's, as vLLM's hermes parser reads them).
ONE_CALL = ('I will look that up.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", '
            '"unit": "celsius"}}\n</tool_call>')
TWO_CALLS = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
             '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>')
OPEN_AT_EOS = '<tool_call>\n{"name": "lookup_order", "arguments": {"order_id": "A-17"}}\n'  # stopped before the end tag
TRUNCATED = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par'  # max_tokens hit mid-call
NOT_AN_OBJECT = '<tool_call>\n["get_weather", "Paris"]\n</tool_call>'
NO_NAME = '<tool_call>\n{"arguments": {"city": "Paris"}}\n</tool_call>'
STRING_ARGS = '<tool_call>\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}\n</tool_call>'


def split(text: str, piece: int) -> tuple[str, list[ToolCall]]:
    splitter, spoken, calls = HermesSplitter(), [], []
    for start in range(0, len(text), piece):
        out, done = splitter.feed(text[start:start + piece])
        spoken.append(out)
        calls += done
    out, done = splitter.finish()
    return "".join(spoken) + out, calls + done


@pytest.mark.parametrize("piece", [1, 3, 7, 1000])
def test_text_before_a_call_is_spoken_and_the_call_is_typed(piece):
    spoken, calls = split(ONE_CALL, piece)
    assert spoken == "I will look that up.\n" and "<" not in spoken
    assert [(c.name, json.loads(c.arguments), c.error) for c in calls] == [
        ("get_weather", {"city": "Paris", "unit": "celsius"}, "")]
    spoken, calls = split(TWO_CALLS, piece)
    assert spoken.strip() == "" and [json.loads(c.arguments)["city"] for c in calls] == ["Paris", "Rome"]
    assert len({c.id for c in calls}) == 2  # each call gets its own id


def test_a_call_left_open_at_the_end_is_still_a_call_and_a_truncated_one_an_error():
    _, (call,) = split(OPEN_AT_EOS, 5)
    assert call.name == "lookup_order" and not call.error
    spoken, (call,) = split(TRUNCATED, 5)
    assert spoken == "" and "not valid JSON" in call.error and call.arguments.startswith('{"name"')


@pytest.mark.parametrize("text, error", [(NOT_AN_OBJECT, "JSON object"), (NO_NAME, "no `name`")])
def test_malformed_calls_are_errors_never_text(text, error):
    spoken, (call,) = split(text, 4)
    assert spoken == "" and error in call.error


def test_arguments_written_as_a_json_string_are_accepted():
    assert json.loads(parse_call(STRING_ARGS[12:-13]).arguments) == {"city": "Oslo"}
    assert "not a JSON object" in parse_call('{"name": "f", "arguments": 3}').error


def test_text_that_only_looks_like_a_marker_is_spoken_in_the_end():
    assert split("if a <tool then b <", 2) == ("if a <tool then b <", [])


async def test_split_stream_keeps_token_counts_and_says_tool_calls():
    async def engine():
        for piece in ("Sure. <tool", "_call>{\"name\": \"end_call\", ", "\"arguments\": {}}</tool_call>"):
            yield Delta(piece, 3)
        yield Finished("stop", 10, 9)

    items = [item async for item in split_stream(engine(), HermesSplitter())]
    assert [type(i).__name__ for i in items] == ["Delta", "ToolCall", "Delta", "Finished"]
    assert items[0].text == "Sure. " and sum(i.tokens for i in items if isinstance(i, Delta)) == 9
    assert items[-1] == Finished("tool_calls", 10, 9)


def test_the_tiny_models_template_renders_calls_and_results(tiny_llm):
    from services.llm.config import TransformersConfig
    from services.llm.engines.transformers import TransformersEngine

    engine = TransformersEngine(TransformersConfig(model=str(tiny_llm), device="cpu"))
    call = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
    prompt = engine.render_prompt(ChatRequest(messages=(
        ChatTurn("user", "Weather?"), ChatTurn("assistant", "Checking.", tool_calls=(call,)),
        ChatTurn("tool", "21C", tool_call_id="call_1"), ChatTurn("assistant", "It is 21C."))))
    # Arguments go to the template as a dict: rendered once as JSON, not as an escaped string.
    assert ('Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
            in prompt)
    assert "[call_1]\n<tool_response>\n21C" in prompt and "It is 21C." in prompt  # not merged into the call
