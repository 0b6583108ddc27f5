"""The conversation's chat history, kept within a token budget so hour-long calls stay bounded.

With tools it also holds an assistant message's tool calls and the tool messages answering them; a
tool result still coming (the caller barged in while the tool ran) is a placeholder that `resolve`
fills in when it arrives.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

CHARS_PER_TOKEN = 4  # a budget estimate; the LLM stage enforces the real context limit


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    interrupted: bool = False  # an agent reply cut short by the caller: content is what they heard
    tool_call_id: str = ""  # a tool message: the call it answers
    tool_calls: tuple[Any, ...] = ()  # an assistant message: its calls (llm_pb2.ToolCall)


def _size(message: Message) -> int:
    """A message's share of the budget: its text and its tool calls."""
    return len(message.content) + sum(len(call.arguments_json) + len(call.name) for call in message.tool_calls)


class ChatHistory:
    def __init__(self, system_prompt: str, max_context_tokens: int):
        self.system_prompt = system_prompt
        self.max_chars = max_context_tokens * CHARS_PER_TOKEN
        self._messages: deque[Message] = deque()
        self._chars = 0
        self.listener: Callable[[Message], None] | None = None  # sees every message added (the call record)

    def add(self, role: str, content: str, interrupted: bool = False, *, tool_call_id: str = "",
            tool_calls: tuple[Any, ...] = ()) -> Message:
        message = Message(role, content, interrupted, tool_call_id, tool_calls)
        self._messages.append(message)
        if self.listener is not None:
            self.listener(message)
        self._chars += _size(message)
        # Drop the oldest turns, never the newest message, so memory and prompt stay bounded.
        while self._chars + len(self.system_prompt) > self.max_chars and len(self._messages) > 1:
            self._chars -= _size(self._messages.popleft())
        return message

    def add_user(self, content: str) -> Message:
        """A caller turn. One that follows a reply the caller never heard (cut before its first
        audio: they went on after a pause) joins the turn that reply answered: they said one
        thing, and some chat templates refuse two user messages in a row."""
        if len(self._messages) >= 2:
            unheard, previous = self._messages[-1], self._messages[-2]
            if (unheard.role == "assistant" and unheard.interrupted and not unheard.content and not unheard.tool_calls
                    and previous.role == "user"):
                for _ in range(2):
                    self._chars -= _size(self._messages.pop())
                content = f"{previous.content} {content}"
        return self.add("user", content)

    def resolve(self, message: Message, content: str) -> None:
        """Fill in a placeholder's content (a late tool result); a no-op once it was dropped."""
        for index, kept in enumerate(self._messages):
            if kept is message:
                self._messages[index] = replace(message, content=content)
                self._chars += len(content) - len(message.content)
                return

    def messages(self) -> list[tuple[str, str]]:
        return [("system", self.system_prompt)] + [(m.role, m.content) for m in self._messages if m.content]

    def chat(self) -> list[Message]:
        """The chat for the LLM: the system prompt, then every message worth sending. Tool messages
        whose call was dropped with older turns are left out (a result must follow its call)."""
        chat = [Message("system", self.system_prompt)]
        calls: set[str] = set()
        for message in self._messages:
            calls.update(call.id for call in message.tool_calls)
            if message.role == "tool" and message.tool_call_id not in calls:
                continue
            if message.content or message.tool_calls or message.role == "tool":
                chat.append(message)
        return chat

    def __iter__(self):
        return iter(self._messages)

    def __len__(self) -> int:
        return len(self._messages)
