"""The boundary between a conversation and the wire it runs over (WebSocket, Twilio, LiveKit).

A transport turns its protocol into caller audio (float32 at `input_sample_rate`) and takes
agent audio frames (float32 at `output_sample_rate`, already paced in real time by the playout
clock) and JSON-able events. The conversation never sees protocol details.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any

import numpy as np


class CallerHungUp(Exception):
    """The caller ended the call (stop message, socket closed)."""


class ProtocolError(Exception):
    """The caller broke the protocol; `close_code` says how the transport closes."""

    def __init__(self, message: str, close_code: int = 4400):
        super().__init__(message)
        self.close_code = close_code


def json_message(text: str, kind: str) -> dict[str, Any]:
    """A control message: a JSON object whose string field `kind` says what it is, else ProtocolError 4400."""
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: arrays or objects nested too deep
        raise ProtocolError(f"messages must be JSON objects with a string `{kind}`") from None
    if not isinstance(message, dict) or not isinstance(message.get(kind), str):
        raise ProtocolError(f"messages must be JSON objects with a string `{kind}`")
    return message


class Transport(ABC):
    input_sample_rate: int
    output_sample_rate: int
    # The caller's verified token claims: a backend may set per-call `persona` overrides there.
    claims: dict[str, Any] = {}
    wants_greeting: bool = True

    @abstractmethod
    async def receive_audio(self) -> np.ndarray:
        """The next chunk of caller audio. Raises CallerHungUp at the end, ProtocolError on bad input."""

    @abstractmethod
    async def send_audio(self, frame: np.ndarray) -> None:
        """Send one agent audio frame to the caller now."""

    @abstractmethod
    async def send_event(self, event: dict[str, Any]) -> None:
        """Send a conversation event (see docs/websocket-protocol.md for the types)."""

    async def clear_audio(self) -> None:
        """Drop agent audio the caller's side has queued but not played (barge-in)."""
