"""What one call did, kept for its post-call record: each turn's latency components, the tool
calls, how the call ended, and, with content capture only, the transcript.

The call feeds it from the one place events go out (`CallCore.emit`: turn metrics, the idle
goodbye), the reply loop (tool calls, with their arguments and results only under capture) and,
under capture, the chat history (what the caller said and what they heard of each reply).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from services.edge.events import AgentAudioEnd, Event, IdlePrompt, Metrics
from services.edge.history import Message

RECORD_VERSION = 1
MAX_TURNS = 10_000  # a bound for calls that never end; a 4-hour call has a few thousand turns
MAX_TOOL_CALLS = 10_000


@dataclass(frozen=True)
class ToolCallRecord:
    """One tool call in the record; `arguments` and `result` only under content capture."""

    turn_id: int
    tool_call_id: str
    name: str
    outcome: str  # ok | error | cancelled
    duration_ms: float
    arguments: str | None = None
    result: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


class CallLog:
    """One call's record in the making."""

    def __init__(self, capture_content: bool = False, max_transcript_chars: int = 200_000):
        self.capture_content = capture_content
        self.started_at, self._started = time.time(), time.monotonic()
        self.turns: deque[dict[str, Any]] = deque(maxlen=MAX_TURNS)
        self.tool_calls: deque[ToolCallRecord] = deque(maxlen=MAX_TOOL_CALLS)
        self.transcript: deque[dict[str, Any]] = deque()
        self._transcript_chars, self._max_transcript_chars = 0, max_transcript_chars
        self._goodbye_turn: int | None = None
        self.idle_ended = False  # the agent's idle goodbye played out: the caller had gone silent

    def event(self, event: Event) -> None:
        """An event the call sent its client."""
        if isinstance(event, Metrics):
            fields = event.timeline.to_event()
            fields.pop("type")
            self.turns.append(fields)
        elif isinstance(event, IdlePrompt) and event.final:
            self._goodbye_turn = event.turn_id
        elif isinstance(event, AgentAudioEnd) and event.turn_id == self._goodbye_turn:
            self.idle_ended = not event.interrupted

    def tool_call(self, turn_id: int, tool_call_id: str, name: str, outcome: str, duration_ms: float,
                  arguments: str, result: str) -> None:
        """A finished tool call (the reply loop); its arguments and result are dropped without capture."""
        content = self.capture_content
        self.tool_calls.append(ToolCallRecord(turn_id, tool_call_id, name, outcome, duration_ms,
                                              arguments if content else None, result if content else None))

    def message(self, message: Message) -> None:
        """A chat history message (attached under capture only): the caller's and the agent's words."""
        if not self.capture_content or message.role not in ("user", "assistant") or not message.content:
            return
        entry = {"role": "caller" if message.role == "user" else "agent", "text": message.content}
        if message.interrupted:
            entry["interrupted"] = True  # the text is what the caller heard before barging in
        self.transcript.append(entry)
        self._transcript_chars += len(message.content)
        while self._transcript_chars > self._max_transcript_chars and len(self.transcript) > 1:
            self._transcript_chars -= len(self.transcript.popleft()["text"])

    def record(self, call_id: str, transport: str, mode: str, end_reason: str) -> dict[str, Any]:
        """The record's JSON object (docs/tools.md, "Post-call record")."""
        record: dict[str, Any] = {
            "type": "call_record", "version": RECORD_VERSION, "call_id": call_id, "transport": transport,
            "mode": mode, "started_at": round(self.started_at, 3),
            "duration_s": round(time.monotonic() - self._started, 3), "end_reason": end_reason,
            "content_captured": self.capture_content, "turns": list(self.turns),
            "tool_calls": [call.to_json() for call in self.tool_calls],
        }
        if self.capture_content:
            record["transcript"] = list(self.transcript)
        return record
