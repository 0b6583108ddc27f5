"""Tool calls out of a model's text: the model writes them inline, the stage returns them typed.

The hermes format (Hermes, Qwen 2/2.5/3 and the tiny test model) wraps each call in
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`. `HermesSplitter` streams: text before
a call goes out at once, a possible marker start is held back until it is known, a call's body is
held until its end tag. A body that is not a JSON object with a name becomes a ToolCall with
`error` set: the caller answers it as a failed tool and nothing of it is ever spoken.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Protocol

from services.llm.engine import Delta, Finished, ToolCall

MAX_RAW_CHARS = 2000  # a malformed call keeps at most this much of what the model wrote


def new_call_id() -> str:
    """A fresh id for a tool call (models in the hermes format write none)."""
    return f"call_{uuid.uuid4().hex[:12]}"


def parse_call(body: str, call_id: str = "") -> ToolCall:
    """One call's JSON body -> ToolCall; a malformed one -> ToolCall with `error` set."""
    call_id = call_id or new_call_id()
    raw = body.strip()[:MAX_RAW_CHARS]
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as error:
        return ToolCall(call_id, "", raw, f"the tool call is not valid JSON: {error}")
    if not isinstance(value, dict):
        return ToolCall(call_id, "", raw, "the tool call must be a JSON object with `name` and `arguments`")
    name = value.get("name")
    if not isinstance(name, str) or not name:
        return ToolCall(call_id, "", raw, "the tool call has no `name`")
    arguments = value.get("arguments", value.get("parameters", {}))  # llama3-style calls say parameters
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError):
            return ToolCall(call_id, name, raw, "the tool call's `arguments` is not a JSON object")
    if not isinstance(arguments, dict):
        return ToolCall(call_id, name, raw, "the tool call's `arguments` is not a JSON object")
    return ToolCall(call_id, name, json.dumps(arguments))


def _partial_marker(text: str, marker: str) -> int:
    """Length of the longest end of `text` that could be the start of `marker`."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


class Splitter(Protocol):
    """Separates spoken text from tool calls in a model's streamed output."""

    def feed(self, text: str) -> tuple[str, list[ToolCall]]: ...

    def finish(self) -> tuple[str, list[ToolCall]]: ...


class HermesSplitter:
    """Streams text while lifting `<tool_call>...</tool_call>` blocks out as ToolCalls."""

    START, END = "<tool_call>", "</tool_call>"

    def __init__(self) -> None:
        self._buffer = ""
        self._in_call = False

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        """Add model text; return (text safe to speak now, calls completed by it)."""
        self._buffer += text
        spoken: list[str] = []
        calls: list[ToolCall] = []
        while True:
            if not self._in_call:
                start = self._buffer.find(self.START)
                if start < 0:
                    keep = _partial_marker(self._buffer, self.START)
                    spoken.append(self._buffer[:len(self._buffer) - keep])
                    self._buffer = self._buffer[len(self._buffer) - keep:]
                    break
                spoken.append(self._buffer[:start])
                self._buffer, self._in_call = self._buffer[start + len(self.START):], True
            else:
                end = self._buffer.find(self.END)
                if end < 0:
                    break
                calls.append(parse_call(self._buffer[:end]))
                self._buffer, self._in_call = self._buffer[end + len(self.END):], False
        return "".join(spoken), calls

    def finish(self) -> tuple[str, list[ToolCall]]:
        """The end of the output: held text, or a call the model left open (many stop at their
        end-of-turn token before `</tool_call>`): parsed as it is, an error if incomplete."""
        rest, self._buffer = self._buffer, ""
        if not self._in_call:
            return rest, []
        self._in_call = False
        return "", [parse_call(rest)]


SPLITTERS = {"hermes": HermesSplitter}


async def split_stream(stream: AsyncIterator[Delta | Finished], splitter: Splitter
                       ) -> AsyncIterator[Delta | ToolCall | Finished]:
    """An engine's stream with tool calls lifted out of its text. Tokens of held text are reported
    with the next text that goes out; closing this closes (aborts) the engine's stream."""
    tokens, called = 0, False
    async with aclosing(stream) as items:
        async for item in items:
            if isinstance(item, Delta):
                tokens += item.tokens
                text, calls = splitter.feed(item.text)
            else:
                text, calls = splitter.finish()
            if text:
                yield Delta(text, tokens)
                tokens = 0
            for call in calls:
                called = True
                yield call
            if isinstance(item, Finished):
                if tokens:
                    yield Delta("", tokens)
                yield Finished("tool_calls" if called else item.reason, item.prompt_tokens, item.completion_tokens,
                               item.queue_s)
