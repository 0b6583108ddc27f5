"""TwilioTransport over a real Starlette WebSocket.

A tiny Starlette app stands in for the edge's Twilio route: it accepts the socket, opens a
TwilioTransport, echoes caller audio back and follows each echo with a mark and a clear, and closes
with the code of any ProtocolError (close_with), as the real route does. The test client plays
Twilio's role, with the messages in the format Twilio documents for Media Streams
(connected / start / media / mark / dtmf / stop in, media / mark / clear out).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from services.common.audio import pcm16_to_float
from services.edge.auth import mint_token
from services.edge.transport import CallerHungUp, ProtocolError
from services.edge.transports import mulaw
from services.edge.transports.twilio import TwilioTransport, close_with

SECRET = "unit-test-secret-for-twilio-transport-0123456789"
STREAM_SID = "MZ00000000000000000000000000000001"
CALL_SID = "CA00000000000000000000000000000001"
ACCOUNT_SID = "AC00000000000000000000000000000001"
MULAW_8K = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}


# --- the server side: a minimal edge route --------------------------------------------------


def make_app(*, start_timeout_s: float = 5.0, max_frame_ms: int = 100) -> tuple[Starlette, dict[str, Any]]:
    state: dict[str, Any] = {"received": []}

    async def twilio_route(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            transport = await TwilioTransport.open(
                websocket, SECRET, start_timeout_s=start_timeout_s, max_frame_ms=max_frame_ms)
        except ProtocolError as error:
            state["error"] = error
            await close_with(websocket, error.close_code, str(error))
            return
        except CallerHungUp:
            state["hung_up_before_start"] = True
            return
        state["transport"] = transport
        waiters = []
        try:
            turn = 0
            while True:
                audio = await transport.receive_audio()
                state["received"].append(audio)
                turn += 1
                await transport.send_audio(audio)
                await transport.send_event({"type": "agent_text", "turn_id": turn, "text": "echo"})
                await transport.send_event({"type": "agent_audio_end", "turn_id": turn, "interrupted": False})
                waiters.append(asyncio.create_task(transport.wait_mark(f"turn-{turn}-end")))
                await transport.clear_audio()
        except CallerHungUp:
            state["mark_results"] = await asyncio.wait_for(
                asyncio.gather(*waiters, return_exceptions=True), 5)
            await transport.close(1000, "call ended")  # a no-op when the caller already closed
            state["hung_up"] = True
        except ProtocolError as error:
            state["error"] = error
            await transport.close(error.close_code, str(error))

    return Starlette(routes=[WebSocketRoute("/twilio", twilio_route)]), state


# --- the client side: Twilio -----------------------------------------------------------------


class Twilio:
    """Builds Twilio's messages, numbering them as Twilio does (sequenceNumber as a string)."""

    def __init__(self) -> None:
        self.sequence = 0

    def _message(self, event: str, **fields: Any) -> str:
        self.sequence += 1
        return json.dumps({"event": event, "sequenceNumber": str(self.sequence), **fields})

    def connected(self) -> str:
        return json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})

    def start(self, token: str | None = None, *, media_format: Any = MULAW_8K, **parameters: str) -> str:
        if token is not None:
            parameters["token"] = token
        start = {"accountSid": ACCOUNT_SID, "streamSid": STREAM_SID, "callSid": CALL_SID,
                 "tracks": ["inbound"], "customParameters": parameters}
        if media_format is not None:
            start["mediaFormat"] = media_format
        return self._message("start", start=start, streamSid=STREAM_SID)

    def media(self, payload: bytes | str, *, chunk: int = 1, track: str = "inbound") -> str:
        if isinstance(payload, bytes):
            payload = base64.b64encode(payload).decode()
        media = {"track": track, "chunk": str(chunk), "timestamp": str(20 * (chunk - 1)), "payload": payload}
        return self._message("media", media=media, streamSid=STREAM_SID)

    def mark(self, name: str) -> str:
        return self._message("mark", mark={"name": name}, streamSid=STREAM_SID)

    def dtmf(self, digit: str) -> str:
        return self._message("dtmf", dtmf={"track": "inbound_track", "digit": digit}, streamSid=STREAM_SID)

    def stop(self) -> str:
        return self._message("stop", stop={"accountSid": ACCOUNT_SID, "callSid": CALL_SID}, streamSid=STREAM_SID)


def expect_close(ws, *, skip: int = 0) -> WebSocketDisconnect:
    """The server's close; up to `skip` messages before it are read and dropped."""
    with pytest.raises(WebSocketDisconnect) as info:
        for _ in range(skip + 1):
            message = ws.receive_text()
        raise AssertionError(f"expected the server to close, got {message!r}")
    return info.value


def wait_until(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the server"
        time.sleep(0.01)


def tone(n: int = 160, amplitude: float = 0.3, hz: float = 440.0) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * hz * np.arange(n) / 8000)).astype(np.float32)


def run_until_close(messages: list[str], **app_options: Any) -> tuple[WebSocketDisconnect, dict[str, Any]]:
    """Send `messages` as Twilio, then read until the server closes (echoes of accepted audio are dropped)."""
    app, state = make_app(**app_options)
    with TestClient(app).websocket_connect("/twilio") as ws:
        for message in messages:
            ws.send_text(message)
        closed = expect_close(ws, skip=3 * len(messages))
    return closed, state


# --- tests -------------------------------------------------------------------------------------


def test_call_round_trip():
    app, state = make_app()
    twilio = Twilio()
    first, second = tone(160, 0.3), tone(160, 0.05, 1000.0)
    first_payload, second_payload = mulaw.encode(first), mulaw.encode(second)
    with TestClient(app).websocket_connect("/twilio") as ws:
        ws.send_text(twilio.connected())
        ws.send_text(twilio.start(mint_token(SECRET, ttl_s=60, subject="call-1"), caller="+15550100"))
        ws.send_text(twilio.media(first_payload, chunk=1))

        # The echo: media, then the end-of-turn mark, then clear (agent_text has no Twilio form).
        media = ws.receive_json()
        assert media["event"] == "media" and media["streamSid"] == STREAM_SID
        echoed = base64.b64decode(media["media"]["payload"])
        assert echoed == first_payload  # mu-law codewords survive decode -> encode exactly
        np.testing.assert_allclose(mulaw.decode(echoed), first, atol=0.3 / 32 + 1e-3)
        assert ws.receive_json() == {"event": "mark", "streamSid": STREAM_SID, "mark": {"name": "turn-1-end"}}
        assert ws.receive_json() == {"event": "clear", "streamSid": STREAM_SID}

        # Twilio echoes the mark once the audio before it has played.
        ws.send_text(twilio.mark("turn-1-end"))
        ws.send_text(twilio.dtmf("5"))
        ws.send_text(twilio.media(b"\xff" * 160, chunk=2, track="outbound"))  # not the caller: skipped
        ws.send_text(twilio.media(second_payload, chunk=3))
        assert base64.b64decode(ws.receive_json()["media"]["payload"]) == second_payload
        assert ws.receive_json()["mark"]["name"] == "turn-2-end"
        assert ws.receive_json()["event"] == "clear"

        ws.send_text(twilio.stop())  # the caller hangs up before turn 2's mark comes back
        closed = expect_close(ws)

    assert closed.code == 1000
    transport = state["transport"]
    assert (transport.stream_sid, transport.call_sid, transport.account_sid) == (STREAM_SID, CALL_SID, ACCOUNT_SID)
    assert transport.custom_parameters == {"caller": "+15550100"}  # the token is not kept
    assert transport.claims["sub"] == "call-1"
    assert transport.input_sample_rate == transport.output_sample_rate == 8000

    received = [pcm16_to_float(pcm) for pcm in state["received"]]  # the edge carries PCM s16le
    assert len(received) == 2 and all(isinstance(p, bytes) and len(p) == 320 for p in state["received"])
    for audio, original, amplitude in zip(received, (first, second), (0.3, 0.05)):
        # Within half a mu-law step: at most (|x| + bias) / 32 in 16-bit units.
        assert np.all(np.abs(audio - original) <= (amplitude * 32768 + mulaw.BIAS) / 32 / 32768 + 1e-6)

    assert list(transport.played_marks) == ["turn-1-end"]
    assert list(transport.dtmf_digits) == ["5"]
    assert transport.events_count == 4 and len(transport.events_sent) == 4
    assert [e["type"] for e in transport.events_sent] == ["agent_text", "agent_audio_end"] * 2
    first_wait, second_wait = state["mark_results"]
    assert first_wait is None  # turn 1's mark played
    assert isinstance(second_wait, CallerHungUp)  # the call ended before turn 2's did
    assert state["hung_up"] and transport.hung_up


def test_caller_closing_the_socket_is_a_hang_up():
    app, state = make_app()
    twilio = Twilio()
    with TestClient(app).websocket_connect("/twilio") as ws:
        ws.send_text(twilio.connected())
        ws.send_text(twilio.start(mint_token(SECRET, ttl_s=3600)))
        ws.send_text(twilio.media(b"\xff" * 160))
        assert ws.receive_json()["event"] == "media"
        ws.close(1001)
        wait_until(lambda: state.get("hung_up"))
    assert state["transport"].hung_up and "error" not in state


def test_start_must_not_need_connected_first():
    app, state = make_app()
    twilio = Twilio()
    with TestClient(app).websocket_connect("/twilio") as ws:
        ws.send_text(twilio.start(mint_token(SECRET, ttl_s=3600)))
        ws.send_text(twilio.stop())
        assert expect_close(ws).code == 1000
    assert state["transport"].stream_sid == STREAM_SID and state["received"] == []


@pytest.mark.parametrize("token", [
    None,  # no <Parameter name="token">
    "",
    mint_token(SECRET, ttl_s=-10),  # expired
    mint_token("another-secret-of-enough-length-0123456789", ttl_s=3600),  # wrongly signed
    "not-a-jwt",
], ids=["missing", "empty", "expired", "wrong-secret", "garbage"])
def test_bad_token_closes_4401(token):
    twilio = Twilio()
    closed, state = run_until_close([twilio.connected(), twilio.start(token)])
    assert closed.code == 4401
    assert "transport" not in state and state["error"].close_code == 4401


def test_expired_token_reason():
    twilio = Twilio()
    closed, _ = run_until_close([twilio.connected(), twilio.start(mint_token(SECRET, ttl_s=-10))])
    assert (closed.code, closed.reason) == (4401, "the token has expired")


@pytest.mark.parametrize("media_format", [
    {"encoding": "audio/x-l16", "sampleRate": 8000, "channels": 1},
    {"encoding": "audio/x-mulaw", "sampleRate": 16000, "channels": 1},
    {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 2},
    None,
    "audio/x-mulaw",
], ids=["l16", "16k", "stereo", "missing", "not-an-object"])
def test_wrong_media_format_closes_4400(media_format):
    twilio = Twilio()
    closed, state = run_until_close(
        [twilio.connected(), twilio.start(mint_token(SECRET, ttl_s=3600), media_format=media_format)])
    assert closed.code == 4400 and "mediaFormat" in closed.reason
    assert "transport" not in state


def _after_start(*messages: str) -> list[str]:
    twilio = Twilio()
    return [twilio.connected(), twilio.start(mint_token(SECRET, ttl_s=3600)), *messages]


@pytest.mark.parametrize("messages", [
    ["{not json"],
    [Twilio().connected(), "[1, 2]"],
    [json.dumps({"streamSid": STREAM_SID})],  # no event
    [Twilio().media(b"\xff" * 160)],  # media before start
    [json.dumps({"event": "start", "sequenceNumber": "1"})],  # start without its object
    _after_start("{not json"),
    _after_start(json.dumps({"event": "media", "streamSid": STREAM_SID})),  # no media object
    _after_start(json.dumps({"event": "media", "media": {"track": "inbound"}})),  # no payload
    _after_start(Twilio().media("@@not base64@@")),
    _after_start(json.dumps({"event": "mark", "mark": {}})),  # mark without a name
    _after_start(Twilio().start(mint_token(SECRET, ttl_s=3600))),  # a second start
], ids=["json-before-start", "not-an-object", "no-event", "media-before-start", "start-without-start",
        "json-after-start", "media-without-media", "media-without-payload", "bad-base64",
        "mark-without-name", "second-start"])
def test_malformed_messages_close_4400(messages):
    closed, state = run_until_close(messages)
    assert closed.code == 4400, closed.reason
    assert state["received"] == []


def test_binary_message_closes_4400():
    app, _ = make_app()
    with TestClient(app).websocket_connect("/twilio") as ws:
        ws.send_text(Twilio().connected())
        ws.send_bytes(b"\xff" * 160)
        assert expect_close(ws).code == 4400


def test_no_start_in_time_closes_4408():
    app, state = make_app(start_timeout_s=0.2)
    with TestClient(app).websocket_connect("/twilio") as ws:
        ws.send_text(Twilio().connected())  # ...and nothing else
        closed = expect_close(ws)
    assert closed.code == 4408 and "start" in closed.reason
    assert "transport" not in state


@pytest.mark.parametrize("samples", [801, 100_000], ids=["just-over", "huge-message"])
def test_oversized_media_closes_4413(samples):
    # max_frame_ms=100 at 8 kHz: 800 mu-law bytes a message at most.
    ok = Twilio().media(b"\xff" * 800)
    closed, state = run_until_close(_after_start(ok, Twilio().media(b"\xff" * samples)), max_frame_ms=100)
    assert closed.code == 4413, closed.reason
    assert len(state["received"]) == 1 and len(state["received"][0]) == 1600


def test_empty_and_unknown_messages_are_skipped():
    twilio = Twilio()
    closed, state = run_until_close(_after_start(
        twilio.media(b""),  # no audio: nothing to hand the conversation
        json.dumps({"event": "something-new", "streamSid": STREAM_SID}),
        twilio.connected(),
        twilio.mark("never-sent"),
        twilio.stop(),
    ))
    assert closed.code == 1000
    assert state["received"] == []
    assert list(state["transport"].played_marks) == ["never-sent"]
