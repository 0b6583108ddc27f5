"""Every event the edge sends a client, one typed definition each, serialized in one place.

docs/websocket-protocol.md documents them field by field; cascade and duplex calls send the same
types. A field whose value is None is left out of the JSON unless the event type lists it in
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from services.common.timeline import TurnTimeline


@dataclass(frozen=True)
class Event:
    """Base of all client events; `type` is the wire name."""

    type: ClassVar[str] = ""


@dataclass(frozen=True)
class Ready(Event):
    type: ClassVar[str] = "ready"
    conversation_id: str
    input_sample_rate: int
    output_sample_rate: int
    mode: str | None = None  # "duplex" for duplex calls only
    voice: str | None = None  # the voice the agent speaks with, when one was chosen


@dataclass(frozen=True)
class UserSpeechStarted(Event):
    type: ClassVar[str] = "user_speech_started"
    utterance_id: int


@dataclass(frozen=True)
class UserSpeechStopped(Event):
    type: ClassVar[str] = "user_speech_stopped"
    utterance_id: int


@dataclass(frozen=True)
class Transcript(Event):
    type: ClassVar[str] = "transcript"
    utterance_id: int
    text: str
    final: bool


@dataclass(frozen=True)
class AgentText(Event):
    type: ClassVar[str] = "agent_text"
    turn_id: int
    text: str
    fallback: bool | None = None  # True on the fallback line only


@dataclass(frozen=True)
class AgentAudioStart(Event):
    type: ClassVar[str] = "agent_audio_start"
    turn_id: int


@dataclass(frozen=True)
class AgentAudioEnd(Event):
    type: ClassVar[str] = "agent_audio_end"
    turn_id: int
    interrupted: bool


@dataclass(frozen=True)
class Interruption(Event):
    type: ClassVar[str] = "interruption"
    turn_id: int
    heard_text: str


@dataclass(frozen=True)
class Metrics(Event):
    """A finished turn's latency components (services/common/timeline.py)."""

    type: ClassVar[str] = "metrics"
    timeline: TurnTimeline


@dataclass(frozen=True)
class Error(Event):
    type: ClassVar[str] = "error"
    code: str
    message: str
    stage: str | None = None  # for `stage_unavailable`


def serialize(event: Event, t: float | None = None) -> dict[str, Any]:
    """The event as the JSON object a client receives (`t`: seconds since the call started)."""
    if isinstance(event, Metrics):
        fields = event.timeline.to_event()
        fields.pop("type")
    else:
        fields = {field.name: getattr(event, field.name) for field in dataclasses.fields(event)}
        fields = {name: value for name, value in fields.items() if value is not None}
    head = {"type": event.type} if t is None else {"type": event.type, "t": round(t, 3)}
    return {**head, **fields}
