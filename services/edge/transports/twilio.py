"""Twilio Media Streams: a phone call's audio over Twilio's bidirectional `<Connect><Stream>` WebSocket.

Twilio sends JSON text messages: `connected`, then one `start` (stream and call ids, the TwiML
`<Parameter>`s as `customParameters`, `mediaFormat`), then `media` (base64 mu-law, 8 kHz mono,
20 ms a message), `dtmf`, `mark` (an echo of a mark we sent, once the audio sent before it has
played or was cleared) and finally `stop`. We send `media` (base64 mu-law 8 kHz), `mark` and
`clear` (drop the audio Twilio has buffered, for barge-in).

The caller's token travels as a stream parameter:

    <Connect><Stream url="wss://edge.example.com/v1/twilio/media">
      <Parameter name="token" value="..."/>
    </Stream></Connect>

The edge's voice webhook (services/edge/twilio_ingress.py) writes that TwiML itself, with a token
whose subject is `twilio:<CallSid>`: such a token opens the stream of that call and no other.

Twilio has no channel for text events: of the conversation's events only `agent_audio_end`
goes out, as a mark named `turn-<turn_id>-end`; its echo tells when the caller has heard the
reply to its end.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import json
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from services.edge.auth import AuthError, verify_token
from services.edge.transport import CallerHungUp, ProtocolError, Transport, json_message
from services.edge.transports import mulaw

SAMPLE_RATE = 8000
ENCODING = "audio/x-mulaw"
TOKEN_PARAMETER = "token"
DTMF_DIGITS = frozenset("0123456789*#")  # what Twilio reports; anything else is dropped
CALL_SUBJECT_PREFIX = "twilio:"
INBOUND_TRACK = "inbound"
# Room for the JSON around a media payload, and for a `start` with its custom parameters.
MESSAGE_OVERHEAD_BYTES = 64 * 1024
PLAYED_MARKS_KEPT = 256
PENDING_MARKS_KEPT = 1024
EVENTS_KEPT = 256
MAX_CLOSE_REASON_BYTES = 123  # RFC 6455: a close frame's reason fits in 123 bytes of UTF-8

# Exceptions that mean the socket is gone when we send on it.
_SEND_FAILURES = (WebSocketDisconnect, RuntimeError, OSError)


def call_subject(call_sid: str) -> str:
    """The subject of an edge token minted for one Twilio call."""
    return CALL_SUBJECT_PREFIX + call_sid


def mark_name_for_turn(turn_id: Any) -> str:
    return f"turn-{turn_id}-end"


def _clip_reason(reason: str) -> str:
    data = reason.encode()
    if len(data) <= MAX_CLOSE_REASON_BYTES:
        return reason
    return data[:MAX_CLOSE_REASON_BYTES].decode(errors="ignore")


async def close_with(websocket: WebSocket, code: int, reason: str = "") -> None:
    """Close `websocket` with `code` unless either side already closed it; never raises for a gone socket."""
    if (websocket.application_state != WebSocketState.CONNECTED
            or websocket.client_state == WebSocketState.DISCONNECTED):
        return
    try:
        await websocket.close(code=code, reason=_clip_reason(reason))
    except _SEND_FAILURES:
        pass


async def _receive_message(websocket: WebSocket, max_bytes: int) -> dict[str, Any]:
    """The next JSON message from Twilio as a dict with a string `event`."""
    try:
        message = await websocket.receive()
    except (WebSocketDisconnect, RuntimeError) as error:  # receive after the disconnect
        raise CallerHungUp("the socket is closed") from error
    if message["type"] == "websocket.disconnect":
        raise CallerHungUp(f"the socket closed ({message.get('code', 1000)})")
    text = message.get("text")
    if text is None:
        raise ProtocolError("Twilio Media Streams messages are JSON text, got a binary message", 4400)
    if len(text) > max_bytes:
        raise ProtocolError(f"a message of {len(text)} characters is over the limit of {max_bytes}", 4413)
    return json_message(text, "event")


def _section(message: dict[str, Any], key: str) -> dict[str, Any]:
    section = message.get(key)
    if not isinstance(section, dict):
        raise ProtocolError(f"a `{message['event']}` message without its `{key}` object", 4400)
    return section


class TwilioTransport(Transport):
    input_sample_rate = SAMPLE_RATE
    output_sample_rate = SAMPLE_RATE

    def __init__(self, websocket: WebSocket, *, stream_sid: str, call_sid: str,
                 account_sid: str = "", custom_parameters: dict[str, Any] | None = None,
                 claims: dict[str, Any] | None = None, max_frame_ms: int = 1000):
        self.websocket = websocket
        self.stream_sid = stream_sid
        self.call_sid = call_sid
        self.account_sid = account_sid
        self.custom_parameters = dict(custom_parameters or {})  # the stream's parameters, token removed
        self.claims = dict(claims or {})
        self.max_frame_samples = SAMPLE_RATE * max_frame_ms // 1000
        self.max_message_bytes = 4 * -(-self.max_frame_samples // 3) + MESSAGE_OVERHEAD_BYTES
        self.played_marks: collections.deque[str] = collections.deque(maxlen=PLAYED_MARKS_KEPT)
        self.dtmf_digits: collections.deque[str] = collections.deque(maxlen=PLAYED_MARKS_KEPT)
        self.events_sent: collections.deque[dict[str, Any]] = collections.deque(maxlen=EVENTS_KEPT)
        self.events_count = 0
        self.hung_up = False
        self._pending_marks: dict[str, asyncio.Event] = {}
        self._send_lock = asyncio.Lock()

    # --- opening ------------------------------------------------------------------------------

    @classmethod
    async def open(cls, websocket: WebSocket, secret: str, *, start_timeout_s: float,
                   max_frame_ms: int, max_control_bytes: int = 0) -> TwilioTransport:
        """Read Twilio's `connected` and `start` from an accepted socket and check the caller's token.

        Raises ProtocolError (4408 no start in time, 4401 bad token or one minted for another call,
        4400 anything malformed or a media format other than mu-law 8 kHz mono, 4413 an oversized
        message) or CallerHungUp. Every Twilio message is JSON: the limit on one follows from
        `max_frame_ms` (a media payload and its envelope), so `max_control_bytes` is not used.
        The caller closes the socket with the error's code (`close_with`).
        """
        limit = 4 * -(-(SAMPLE_RATE * max_frame_ms // 1000) // 3) + MESSAGE_OVERHEAD_BYTES
        try:
            message = await asyncio.wait_for(cls._read_until_start(websocket, limit), start_timeout_s)
        except TimeoutError:
            raise ProtocolError(f"no start message within {start_timeout_s:g} s", 4408) from None
        start = _section(message, "start")
        stream_sid = start.get("streamSid", message.get("streamSid"))
        if not isinstance(stream_sid, str) or not stream_sid:
            raise ProtocolError("the start message has no streamSid", 4400)
        parameters = start.get("customParameters", {})
        if not isinstance(parameters, dict):
            raise ProtocolError("start.customParameters must be an object", 4400)
        try:
            claims = verify_token(parameters.get(TOKEN_PARAMETER), secret)
        except AuthError as error:
            raise ProtocolError(str(error), 4401) from None
        call_sid, account_sid = start.get("callSid", ""), start.get("accountSid", "")
        subject = claims.get("sub")
        if isinstance(subject, str) and subject.startswith(CALL_SUBJECT_PREFIX) and (
                not isinstance(call_sid, str) or subject != call_subject(call_sid)):
            raise ProtocolError("the token was issued for another call", 4401)
        media_format = start.get("mediaFormat")
        if not isinstance(media_format, dict) or (
                media_format.get("encoding"), media_format.get("sampleRate"), media_format.get("channels")
        ) != (ENCODING, SAMPLE_RATE, 1):
            raise ProtocolError(
                f"the stream's mediaFormat must be {ENCODING} at {SAMPLE_RATE} Hz, mono; got {media_format!r}", 4400)
        return cls(
            websocket,
            stream_sid=stream_sid,
            call_sid=call_sid if isinstance(call_sid, str) else "",
            account_sid=account_sid if isinstance(account_sid, str) else "",
            custom_parameters={k: v for k, v in parameters.items() if k != TOKEN_PARAMETER},
            claims=claims,
            max_frame_ms=max_frame_ms,
        )

    @staticmethod
    async def _read_until_start(websocket: WebSocket, max_bytes: int) -> dict[str, Any]:
        while True:
            message = await _receive_message(websocket, max_bytes)
            event = message["event"]
            if event == "start":
                return message
            if event != "connected":
                raise ProtocolError(f"expected start, got {event!r}", 4400)

    # --- caller -> agent ----------------------------------------------------------------------

    async def receive_audio(self) -> bytes:
        """Caller audio of the next inbound `media` message, PCM s16le at 8 kHz.

        Marks echoed back, DTMF digits and unknown events are recorded or skipped on the way.
        """
        if self.hung_up:
            raise CallerHungUp("the call has ended")
        while True:
            try:
                message = await _receive_message(self.websocket, self.max_message_bytes)
            except CallerHungUp:
                self._hang_up()
                raise
            event = message["event"]
            if event == "media":
                audio = self._media_audio(message)
                if audio is not None:
                    return audio
            elif event == "mark":
                self._mark_played(_section(message, "mark").get("name"))
            elif event == "dtmf":
                digit = _section(message, "dtmf").get("digit")
                if isinstance(digit, str) and digit in DTMF_DIGITS:
                    self.dtmf_digits.append(digit)
                    if self.on_dtmf is not None:
                        await self.on_dtmf(digit)
            elif event == "stop":
                self._hang_up()
                raise CallerHungUp("Twilio stopped the stream")
            elif event == "start":
                raise ProtocolError("a second start message", 4400)
            # `connected` again, or an event type Twilio added after this was written: skip.

    def _media_audio(self, message: dict[str, Any]) -> bytes | None:
        media = _section(message, "media")
        if media.get("track", INBOUND_TRACK) != INBOUND_TRACK:
            return None
        payload = media.get("payload")
        if not isinstance(payload, str):
            raise ProtocolError("a media message without a payload", 4400)
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("a media payload that is not base64", 4400) from None
        if len(data) > self.max_frame_samples:
            raise ProtocolError(
                f"a media message of {len(data) * 1000 // SAMPLE_RATE} ms is over the limit of "
                f"{self.max_frame_samples * 1000 // SAMPLE_RATE} ms", 4413)
        if not data:
            return None
        return mulaw.decode_pcm16(data)

    def _mark_played(self, name: Any) -> None:
        if not isinstance(name, str):
            raise ProtocolError("a mark message without a name", 4400)
        self.played_marks.append(name)
        event = self._pending_marks.pop(name, None)
        if event is not None:
            event.set()

    def _hang_up(self) -> None:
        self.hung_up = True
        for event in self._pending_marks.values():  # wake waiters; they see hung_up
            event.set()
        self._pending_marks.clear()

    async def wait_mark(self, name: str) -> None:
        """Wait until Twilio echoes mark `name` (its audio played or was cleared).

        Needs someone calling receive_audio meanwhile (the echo arrives on the same socket).
        Raises CallerHungUp if the call ends first.
        """
        if name in self.played_marks:
            return
        if self.hung_up:
            raise CallerHungUp("the call ended before the mark played")
        event = self._pending_marks.get(name)
        if event is None:
            event = self._pending_marks[name] = asyncio.Event()
            self._trim_pending()
        await event.wait()
        if name not in self.played_marks:
            raise CallerHungUp("the call ended before the mark played")

    def _trim_pending(self) -> None:
        while len(self._pending_marks) > PENDING_MARKS_KEPT:  # oldest first: dicts keep order
            self._pending_marks.pop(next(iter(self._pending_marks)))

    # --- agent -> caller ----------------------------------------------------------------------

    async def _send(self, message: dict[str, Any]) -> None:
        text = json.dumps(message, separators=(",", ":"))
        async with self._send_lock:
            try:
                await self.websocket.send_text(text)
            except _SEND_FAILURES as error:
                self.hung_up = True
                raise CallerHungUp(f"the socket is closed: {error!r}") from error

    async def send_audio(self, frame: bytes) -> None:
        """One `media` message: the frame (PCM s16le, 8 kHz) as base64 mu-law."""
        payload = base64.b64encode(mulaw.encode_pcm16(frame)).decode("ascii")
        await self._send({"event": "media", "streamSid": self.stream_sid, "media": {"payload": payload}})

    async def send_mark(self, name: str) -> None:
        """A `mark`; Twilio echoes it once the audio sent before it has played (see wait_mark)."""
        if name not in self._pending_marks:
            self._pending_marks[name] = asyncio.Event()
            self._trim_pending()
        await self._send({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    async def send_event(self, event: dict[str, Any]) -> None:
        """Only `agent_audio_end` has a Twilio form (a mark `turn-<turn_id>-end`); the rest are dropped."""
        self.events_sent.append(event)
        self.events_count += 1
        if event.get("type") == "agent_audio_end" and event.get("turn_id") is not None:
            await self.send_mark(mark_name_for_turn(event["turn_id"]))

    async def clear_audio(self) -> None:
        """`clear`: Twilio drops the audio it buffered and echoes the marks still pending."""
        await self._send({"event": "clear", "streamSid": self.stream_sid})

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await close_with(self.websocket, code, reason)
