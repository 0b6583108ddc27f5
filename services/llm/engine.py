"""The narrow interface every LLM engine meets.

`generate` is an async generator of Delta (text to speak) and ToolCall items ending with one
Finished. A ToolCall is complete when yielded; the model's tool-call syntax never reaches a Delta. Closing it early
(`aclose()`, or cancelling the task iterating it) must abort the work in the engine at once and
count the abort in `stats`, so a barge-in frees the GPU.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class ToolCall:
    """One call of an offered tool. `arguments` is a JSON object's text. A call the model wrote but
    that could not be parsed has `error` set (and the raw text in `arguments`): it is answered with
    a tool error, never spoken."""

    id: str
    name: str
    arguments: str = "{}"
    error: str = ""


@dataclass(frozen=True)
class ChatTurn:
    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_call_id: str = ""
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant turn's calls, after its content


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 0  # 0 = off
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[ChatTurn, ...]
    sampling: Sampling = Sampling()
    tools: tuple[dict[str, Any], ...] = ()
    request_id: str = ""


@dataclass(frozen=True)
class Delta:
    text: str
    tokens: int = 1


@dataclass(frozen=True)
class Finished:
    reason: Literal["stop", "length", "tool_calls"]
    prompt_tokens: int
    completion_tokens: int
    # Seconds the request waited in the engine's queue before its first computation; None when
    # the engine cannot tell (a remote server).
    queue_s: float | None = None


@dataclass
class EngineStats:
    started: int = 0
    finished: int = 0
    aborted: int = 0
    active: int = 0
    recent_aborts: list[str] = field(default_factory=list)  # request ids, newest last, bounded

    def record_abort(self, request_id: str) -> None:
        self.aborted += 1
        self.recent_aborts = [*self.recent_aborts[-63:], request_id]

    def track(self, request_id: str) -> TrackedRequest:
        return TrackedRequest(self, request_id)


class TrackedRequest:
    """Counts one generation in EngineStats: `with stats.track(id) as tracked:` around the whole
    generator body, and `tracked.finish()` just before yielding Finished. Leaving the block early
    without finishing counts as an abort when the consumer closed or cancelled the stream
    (GeneratorExit, CancelledError), and as neither finished nor aborted on an error."""

    def __init__(self, stats: EngineStats, request_id: str):
        self.stats, self.request_id, self.finished = stats, request_id, False

    def finish(self) -> None:
        # Counted before Finished is yielded: a consumer may never resume the generator after it.
        self.finished = True
        self.stats.active -= 1
        self.stats.finished += 1

    def __enter__(self) -> TrackedRequest:
        self.stats.started += 1
        self.stats.active += 1
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if self.finished:
            return
        self.stats.active -= 1
        if error is not None and not isinstance(error, Exception):
            self.stats.record_abort(self.request_id)


class LLMEngine(ABC):
    model_name: str

    def __init__(self) -> None:
        self.stats = EngineStats()

    @abstractmethod
    def generate(self, request: ChatRequest) -> AsyncIterator[Delta | Finished]:
        """Stream the reply to `request`; see the module docstring for the abort contract."""

    async def close(self) -> None:
        """Release engine resources."""


# -- chat messages for templates --------------------------------------------------------------------

# Distinct words a template is unlikely to write itself: finding them in a rendering proves it kept them.
_PROBE_SYSTEM, _PROBE_USER, _PROBE_ASSISTANT = "parley-probe-system", "parley-probe-user", "parley-probe-assistant"


@dataclass(frozen=True)
class TemplateTraits:
    """What a chat template accepts, found by rendering it (templates do not declare it).

    system: it renders a system message (Gemma's and older Mistral templates raise on one or drop it).
    assistant_first: it accepts a chat that opens with the assistant (strict-alternation templates
    demand user first; a call's greeting opens the chat).
    """

    system: bool = True
    assistant_first: bool = True

    @classmethod
    def probe(cls, render: Callable[[list[dict[str, Any]]], str]) -> TemplateTraits:
        """Render two small chats with `render` (messages -> prompt text) and see what survives."""
        def keeps(messages: list[dict[str, Any]], marker: str) -> bool:
            try:
                return marker in render(messages)
            except Exception:  # noqa: BLE001 - templates reject what they do not support by raising
                return False

        user = {"role": "user", "content": _PROBE_USER}
        system = keeps([{"role": "system", "content": _PROBE_SYSTEM}, user], _PROBE_SYSTEM)
        assistant_first = keeps([{"role": "assistant", "content": _PROBE_ASSISTANT}, user], _PROBE_ASSISTANT)
        return cls(system=system, assistant_first=assistant_first)


def chat_messages(request: ChatRequest, traits: TemplateTraits = TemplateTraits(),
                  arguments_as_text: bool = False) -> list[dict[str, Any]]:
    """The request's turns as the message dicts chat templates (and OpenAI servers) expect.

    An assistant turn's tool calls go in OpenAI's `tool_calls` shape; their arguments as a dict
    (what chat templates expect) or, with `arguments_as_text`, as JSON text (the OpenAI API).

    Consecutive turns of one role are merged (a caller who spoke twice while the reply was cut
    off): strict-alternation templates reject them. For a template without a system role the
    system text opens the first user turn (a new one when the chat opens with the assistant, as a
    call does with its greeting); for a template that needs the user first, a chat opening with
    the assistant gets a user turn before it (holding the system text, if any).
    """
    system = "\n\n".join(t.content for t in request.messages if t.role == "system" and t.content)
    messages: list[dict[str, Any]] = []
    for turn in request.messages:
        if turn.role == "system" and not traits.system:
            continue
        if (messages and turn.role != "tool" and messages[-1]["role"] == turn.role
                and not messages[-1].get("tool_calls") and not turn.tool_calls):
            messages[-1]["content"] = _join(messages[-1]["content"], turn.content)
            continue
        message: dict[str, Any] = {"role": turn.role, "content": turn.content}
        if turn.role == "tool" and turn.tool_call_id:
            message["tool_call_id"] = turn.tool_call_id
        if turn.tool_calls:
            message["tool_calls"] = [_call_message(call, arguments_as_text) for call in turn.tool_calls]
        messages.append(message)
    if not traits.system and system:
        # The instructions stay ahead of everything: in the opening user turn, or in a new one
        # before a chat that opens with the assistant.
        if messages and messages[0]["role"] == "user":
            messages[0]["content"] = _join(system, messages[0]["content"], "\n\n")
        else:
            messages.insert(0, {"role": "user", "content": system})
    first = next((m for m in messages if m["role"] != "system"), None)
    if first is not None and first["role"] == "assistant" and not traits.assistant_first:
        messages.insert(messages.index(first), {"role": "user", "content": ""})
    return messages


def _join(first: str, second: str, separator: str = "\n") -> str:
    return separator.join(part for part in (first, second) if part)


def _call_message(call: ToolCall, as_text: bool) -> dict[str, Any]:
    arguments: Any = call.arguments
    if not as_text:
        try:
            arguments = json.loads(call.arguments)
        except ValueError:  # a malformed call is shown to the model as it wrote it
            pass
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": arguments}}
