"""The browser/app WebSocket protocol (docs/websocket-protocol.md) as a Transport."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from services.common.audio import AudioFormatError, check_sample_rate
from services.edge.auth import AuthError, verify_token
from services.edge.transport import MAX_CONTROL_BYTES, CallerHungUp, ProtocolError, Transport, json_message

MAX_USER_TEXT_CHARS = 4000


class WebSocketTransport(Transport):
    can_transfer = True  # the `transfer` event hands the caller to the client's side
    def __init__(self, websocket: WebSocket, input_rate: int, output_rate: int, max_frame_bytes: int,
                 start: dict[str, Any], max_control_bytes: int = MAX_CONTROL_BYTES):
        self.websocket = websocket
        self.max_control_bytes = max_control_bytes
        self.input_sample_rate, self.output_sample_rate = input_rate, output_rate
        self.max_frame_bytes = max_frame_bytes
        self.start = start

    @classmethod
    async def open(cls, websocket: WebSocket, secret: str, *, start_timeout_s: float,
                   max_frame_ms: int, max_control_bytes: int = MAX_CONTROL_BYTES) -> WebSocketTransport:
        """Read and check the `start` message of an accepted WebSocket."""
        try:
            message = await asyncio.wait_for(websocket.receive(), start_timeout_s)
        except TimeoutError:
            raise ProtocolError(f"no `start` message within {start_timeout_s:.0f}s", 4408) from None
        if message["type"] == "websocket.disconnect":
            raise CallerHungUp()
        if message.get("text") is None:
            raise ProtocolError("the first message must be the JSON `start` message, not audio")
        start = json_message(message["text"], "type", max_control_bytes)
        if start["type"] != "start":
            raise ProtocolError(f"the first message must be `start`, got `{start['type']}`")
        try:
            claims = verify_token(start.get("token"), secret)
        except AuthError as error:
            raise ProtocolError(str(error), 4401) from None
        try:
            input_rate = check_sample_rate(int(start.get("input_sample_rate", 0)))
            output_rate = check_sample_rate(int(start.get("output_sample_rate", 24_000)))
        except (AudioFormatError, TypeError, ValueError, OverflowError) as error:  # OverflowError: 1e999
            raise ProtocolError(f"bad sample rate: {error}") from None
        transport = cls(websocket, input_rate, output_rate, input_rate * max_frame_ms // 1000 * 2, start,
                        max_control_bytes)
        transport.claims = claims
        transport.wants_greeting = start.get("greeting", True) is not False
        voice = start.get("voice", "")
        if not isinstance(voice, str) or len(voice) > 128:
            raise ProtocolError("`voice` must be a voice name (a string of at most 128 characters)")
        transport.requested_voice = voice
        return transport

    async def receive_audio(self) -> bytes:
        while True:
            try:
                message = await self.websocket.receive()
            except (WebSocketDisconnect, RuntimeError):
                raise CallerHungUp() from None
            if message["type"] == "websocket.disconnect":
                raise CallerHungUp()
            data = message.get("bytes")
            if data is not None:
                if len(data) > self.max_frame_bytes:
                    raise ProtocolError(f"audio frame of {len(data)} bytes is over the limit of "
                                        f"{self.max_frame_bytes}", 4413)
                if len(data) % 2:
                    raise ProtocolError(f"PCM s16le needs an even number of bytes, got {len(data)}")
                return data
            control = json_message(message.get("text") or "", "type", self.max_control_bytes)
            if control["type"] == "stop":
                raise CallerHungUp()
            if control["type"] == "user_text":
                await self._user_text(control)
                continue
            raise ProtocolError(f"unexpected message type `{control['type']}`")

    async def _user_text(self, control: dict[str, Any]) -> None:
        """Typed input: a user turn, interrupting the agent like speech would."""
        text = control.get("text")
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_USER_TEXT_CHARS:
            raise ProtocolError(f"`user_text` needs a non-empty string `text` of at most {MAX_USER_TEXT_CHARS} "
                                "characters")
        if self.on_user_text is None:
            raise ProtocolError("`user_text` is not supported in this call (duplex calls take audio only)")
        await self.on_user_text(text.strip())

    async def send_audio(self, frame: bytes) -> None:
        await self._send({"type": "websocket.send", "bytes": frame})

    async def send_event(self, event: dict[str, Any]) -> None:
        await self._send({"type": "websocket.send", "text": json.dumps(event)})

    async def _send(self, message: dict[str, Any]) -> None:
        try:
            await self.websocket.send(message)
        except (WebSocketDisconnect, RuntimeError, OSError):
            raise CallerHungUp() from None  # the caller went away mid-send
