"""The boundary between a conversation and the wire it runs over (WebSocket, Twilio, LiveKit).

A transport turns its protocol into caller audio (PCM s16le bytes at `input_sample_rate`) and
takes agent audio frames (PCM s16le at `output_sample_rate`, already paced in real time by the
playout clock) and events (services/edge/events.py, serialized). The call never sees protocol
details.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

# JSON control messages are small; anything bigger is refused with 4413 before it is parsed.
MAX_CONTROL_BYTES = 64 * 1024


class CallerHungUp(Exception):
    """The caller ended the call (stop message, socket closed)."""


class ProtocolError(Exception):
    """The caller broke the protocol; `close_code` says how the transport closes."""

    def __init__(self, message: str, close_code: int = 4400):
        super().__init__(message)
        self.close_code = close_code


def json_message(text: str, kind: str, max_bytes: int = MAX_CONTROL_BYTES) -> dict[str, Any]:
    """A control message: a JSON object whose string field `kind` says what it is, else ProtocolError
    4400 (4413 when it is over `max_bytes`)."""
    if len(text) > max_bytes:  # characters: a cheap lower bound of the bytes, checked before parsing
        raise ProtocolError(f"a control message of {len(text)} characters is over the limit of {max_bytes}", 4413)
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: arrays or objects nested too deep
        raise ProtocolError(f"messages must be JSON objects with a string `{kind}`") from None
    if not isinstance(message, dict) or not isinstance(message.get(kind), str):
        raise ProtocolError(f"messages must be JSON objects with a string `{kind}`")
    return message


class AudioOutput(Protocol):
    """Where the playout clock sends agent audio."""

    output_sample_rate: int

    async def send_audio(self, frame: bytes) -> None: ...


class Transport(ABC):
    """One call's wire: caller audio in, agent audio and events out."""

    input_sample_rate: int
    output_sample_rate: int
    # The caller's verified token claims: a backend may set per-call `persona` overrides there.
    claims: dict[str, Any] = {}
    wants_greeting: bool = True
    # A voice the caller asked for (WebSocket `start`); checked against the TTS's voices.
    requested_voice: str = ""
    # Set by a call that takes typed input (`user_text`): called with the text, as a user turn.
    on_user_text: Callable[[str], Awaitable[None]] | None = None
    # Set by every call: called with each key the caller presses (Twilio's `dtmf`).
    on_dtmf: Callable[[str], Awaitable[None]] | None = None

    @abstractmethod
    async def receive_audio(self) -> bytes:
        """The next chunk of caller audio (PCM s16le). Raises CallerHungUp at the end, ProtocolError
        on bad input."""

    @abstractmethod
    async def send_audio(self, frame: bytes) -> None:
        """Send one agent audio frame to the caller now."""

    @abstractmethod
    async def send_event(self, event: dict[str, Any]) -> None:
        """Send a conversation event (see docs/websocket-protocol.md for the types)."""

    async def clear_audio(self) -> None:
        """Drop agent audio the caller's side has queued but not played (barge-in)."""

    async def agent_speech(self, turn_id: int, text: str) -> None:
        """The caller starts hearing this sentence of turn `turn_id` now (captions kept in step with
        the audio; `agent_text` events come earlier, when the text goes to speech synthesis)."""
