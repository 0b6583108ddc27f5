"""The conversation's chat history, kept within a token budget so hour-long calls stay bounded."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

CHARS_PER_TOKEN = 4  # a budget estimate; the LLM stage enforces the real context limit


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    interrupted: bool = False  # an agent reply cut short by the caller: content is what they heard


class ChatHistory:
    def __init__(self, system_prompt: str, max_context_tokens: int):
        self.system_prompt = system_prompt
        self.max_chars = max_context_tokens * CHARS_PER_TOKEN
        self._messages: deque[Message] = deque()
        self._chars = 0

    def add(self, role: str, content: str, interrupted: bool = False) -> None:
        self._messages.append(Message(role, content, interrupted))
        self._chars += len(content)
        # Drop the oldest turns, never the newest message, so memory and prompt stay bounded.
        while self._chars + len(self.system_prompt) > self.max_chars and len(self._messages) > 1:
            self._chars -= len(self._messages.popleft().content)

    def messages(self) -> list[tuple[str, str]]:
        return [("system", self.system_prompt)] + [(m.role, m.content) for m in self._messages if m.content]

    def __iter__(self):
        return iter(self._messages)

    def __len__(self) -> int:
        return len(self._messages)
