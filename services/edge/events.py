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
    """After a valid `start`: the call is up."""

    type: ClassVar[str] = "ready"
    conversation_id: str
    input_sample_rate: int
    output_sample_rate: int
    mode: str | None = None  # "duplex" for duplex calls only
    voice: str | None = None  # the voice the agent speaks with, when one was chosen


@dataclass(frozen=True)
class UtteranceEvent(Event):
    """An event about one caller utterance (ASR ids)."""

    utterance_id: int


@dataclass(frozen=True)
class TurnEvent(Event):
    """An event about one agent turn."""

    turn_id: int


@dataclass(frozen=True)
class UserSpeechStarted(UtteranceEvent):
    """The caller started speaking (VAD)."""

    type: ClassVar[str] = "user_speech_started"


@dataclass(frozen=True)
class UserSpeechStopped(UtteranceEvent):
    """The caller stopped speaking (VAD, after the silence threshold)."""

    type: ClassVar[str] = "user_speech_stopped"


@dataclass(frozen=True)
class Transcript(UtteranceEvent):
    """A partial or final transcript of the caller."""

    type: ClassVar[str] = "transcript"
    text: str
    final: bool


@dataclass(frozen=True)
class AgentText(TurnEvent):
    """A sentence or clause going to speech synthesis (duplex: a piece of the model's text)."""

    type: ClassVar[str] = "agent_text"
    text: str
    fallback: bool | None = None  # True on the fallback line only


@dataclass(frozen=True)
class AgentAudioStart(TurnEvent):
    """The first agent audio frame of a reply follows."""

    type: ClassVar[str] = "agent_audio_start"


@dataclass(frozen=True)
class AgentAudioEnd(TurnEvent):
    """The reply's audio is over (played out or cut by barge-in)."""

    type: ClassVar[str] = "agent_audio_end"
    interrupted: bool


@dataclass(frozen=True)
class Interruption(TurnEvent):
    """The caller barged in; `heard_text` is what they heard of the reply."""

    type: ClassVar[str] = "interruption"
    heard_text: str


@dataclass(frozen=True)
class AgentPaused(TurnEvent):
    """Caller speech over the reply paused its audio: drop agent audio queued on the client;
    the server sends it again if the reply resumes."""

    type: ClassVar[str] = "agent_paused"


@dataclass(frozen=True)
class AgentResumed(TurnEvent):
    """The speech that paused the reply was a backchannel or noise: its audio goes on."""

    type: ClassVar[str] = "agent_resumed"


@dataclass(frozen=True)
class Backchannel(UtteranceEvent):
    """The caller acknowledged ("mm-hmm") over the agent: not a turn, not an interruption."""

    type: ClassVar[str] = "backchannel"
    text: str


@dataclass(frozen=True)
class IdlePrompt(TurnEvent):
    """The caller has been silent: the agent asks whether they are there (`final`: says goodbye
    and ends the call)."""

    type: ClassVar[str] = "idle_prompt"
    final: bool


@dataclass(frozen=True)
class ToolCalled(TurnEvent):
    """A tool call of the agent finished (no arguments or results: they are the caller's data)."""

    type: ClassVar[str] = "tool_call"
    tool_call_id: str
    name: str
    outcome: str  # "ok", "error" or "cancelled"
    duration_ms: float


@dataclass(frozen=True)
class Transfer(TurnEvent):
    """The agent hands the caller to `target` (the `transfer` tool); the call then closes."""

    type: ClassVar[str] = "transfer"
    target: str


AGENT_STATES = ("initializing", "listening", "thinking", "speaking")


@dataclass(frozen=True)
class AgentState(Event):
    """What the agent is doing now, sent when it changes (the values of LiveKit's
    `lk.agent.state` attribute): `listening` after `ready` and after each reply, `thinking` from
    the end of the caller's turn to the reply's first audio, `speaking` while its audio plays."""

    type: ClassVar[str] = "agent_state"
    state: str


@dataclass(frozen=True)
class Dtmf(Event):
    """The caller pressed a key on the phone (Twilio calls): 0-9, * or #."""

    type: ClassVar[str] = "dtmf"
    digit: str


@dataclass(frozen=True)
class Metrics(Event):
    """A finished turn's latency components (services/common/timeline.py)."""

    type: ClassVar[str] = "metrics"
    timeline: TurnTimeline


@dataclass(frozen=True)
class Error(Event):
    """Before the server closes on an error, or mid-call when a stage stayed unavailable."""

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
