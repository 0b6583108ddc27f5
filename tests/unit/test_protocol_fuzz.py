"""Fuzzing the edge's wire protocols (hypothesis): the browser/app WebSocket protocol and Twilio
Media Streams, through a real Starlette WebSocket (in-process ASGI, Starlette's test client).

Each example is a random sequence of messages (garbage text, JSON of the wrong shape, valid and
forged `start` messages, audio frames of odd and oversized lengths, Twilio events with broken
fields). The transport under test must, every time: end with a ProtocolError whose close code is
one of the documented ones, or a clean hang-up, or keep reading; nothing else may escape, nothing
may hang, and no task may be left behind.
"""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient

from services.edge.auth import mint_token
from services.edge.transport import CallerHungUp, ProtocolError
from services.edge.transports.twilio import TwilioTransport
from services.edge.transports.websocket import WebSocketTransport
from tests.fuzz.harness import CLOSE_CODES

SECRET = "fuzz-secret-" + "x" * 32
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def app_for(transport_type, outcomes: list) -> Starlette:
    """`outcomes` gets what each server-side session ended with: a close code, "hung_up",
    "reading" or an error."""
    async def hold(websocket):
        await websocket.accept()
        before = asyncio.all_tasks()
        try:
            transport = await transport_type.open(websocket, SECRET, start_timeout_s=0.3, max_frame_ms=200)
            for _ in range(64):
                await asyncio.wait_for(transport.receive_audio(), 0.3)
            outcomes.append("reading")
        except ProtocolError as error:
            outcomes.append(error.close_code)
            await websocket.close(code=error.close_code)
        except (CallerHungUp, TimeoutError):
            outcomes.append("hung_up")
        except Exception as error:  # noqa: BLE001 - the failure this test looks for
            outcomes.append(f"{type(error).__name__}: {error}")
        await asyncio.sleep(0)
        leaked = [task for task in asyncio.all_tasks() - before if not task.done() and _ours(task)]
        if leaked:
            outcomes.append(f"leaked {leaked}")

    return Starlette(routes=[WebSocketRoute("/ws", hold)])


def _ours(task: asyncio.Task) -> bool:
    """A task running Parley code (the test client's own tasks are not the transport's doing)."""
    code = getattr(task.get_coro(), "cr_code", None)
    return code is not None and "/services/" in code.co_filename


def play(transport_type, messages: list[str | bytes]) -> object:
    outcomes: list = []
    with TestClient(app_for(transport_type, outcomes)) as client:
        with client.websocket_connect("/ws") as socket:
            for message in messages:
                if isinstance(message, bytes):
                    socket.send_bytes(message)
                else:
                    socket.send_text(message)
            socket.close()
    assert len(outcomes) >= 1
    return outcomes[0], outcomes[1:]


def check(outcome, extra) -> None:
    assert not extra, extra
    assert outcome in CLOSE_CODES | {"hung_up", "reading"}, outcome


# -- the browser/app WebSocket protocol ------------------------------------------------------------

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=4), max_leaves=10)
tokens = st.sampled_from([mint_token(SECRET, ttl_s=600), mint_token(SECRET, ttl_s=-5), mint_token("y" * 40, ttl_s=600),
                          "", "not.a.jwt", None])
rates = st.sampled_from([16000, 8000, 24000, 48000, 0, -1, 7, 10**9, "16000", "fast", None, 16000.5])
start_messages = st.builds(
    lambda token, rate, out, extra: json.dumps({"type": "start", "token": token, "input_sample_rate": rate,
                                                "output_sample_rate": out, **extra}),
    tokens, rates, rates, st.dictionaries(st.sampled_from(["greeting", "type2", "x"]), json_values, max_size=2))
control_messages = st.builds(lambda kind, extra: json.dumps({"type": kind, **extra}),
                             st.sampled_from(["stop", "start", "hello", "", "STOP"]),
                             st.dictionaries(st.text(max_size=5), json_values, max_size=2))
garbage_text = st.text(max_size=200) | json_values.map(json.dumps)
frames = st.binary(max_size=64) | st.integers(0, 20_000).map(lambda n: b"\x01" * n)
websocket_messages = st.lists(st.one_of(start_messages, control_messages, garbage_text, frames), max_size=8)


@FUZZ
@given(websocket_messages)
def test_websocket_protocol_never_breaks(messages):
    check(*play(WebSocketTransport, messages))


@FUZZ
@given(st.lists(st.one_of(control_messages, garbage_text, frames), max_size=6))
def test_websocket_audio_after_a_valid_start_never_breaks(messages):
    start = json.dumps({"type": "start", "token": mint_token(SECRET, ttl_s=600), "input_sample_rate": 16000})
    outcome, extra = play(WebSocketTransport, [start, *messages])
    check(outcome, extra)
    assert outcome != 4401  # the token was good: anything wrong afterwards is the message's fault


# -- Twilio Media Streams ----------------------------------------------------------------------------

def twilio_start(token, media_format, stream_sid, parameters) -> str:
    return json.dumps({"event": "start", "streamSid": stream_sid, "start": {
        "streamSid": stream_sid, "callSid": "CA1", "mediaFormat": media_format,
        "customParameters": {"token": token, **parameters} if isinstance(parameters, dict) else parameters}})


media_formats = st.sampled_from([{"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                                 {"encoding": "audio/x-mulaw", "sampleRate": 16000, "channels": 1},
                                 {"encoding": "audio/l16", "sampleRate": 8000, "channels": 1}, None, "mulaw"])
twilio_starts = st.builds(twilio_start, tokens, media_formats, st.sampled_from(["MZ1", "", None, 5]),
                          st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2) | json_values)
payloads = st.one_of(st.binary(max_size=400).map(lambda b: base64.b64encode(b).decode()),
                     st.text(max_size=40), st.none(), st.integers())
twilio_events = st.one_of(
    st.builds(lambda p, track: json.dumps({"event": "media", "media": {"payload": p, "track": track}}),
              payloads, st.sampled_from(["inbound", "outbound", None, 3])),
    st.builds(lambda name: json.dumps({"event": "mark", "mark": {"name": name}}), json_values),
    st.builds(lambda digit: json.dumps({"event": "dtmf", "dtmf": {"digit": digit}}), json_values),
    st.builds(lambda kind, body: json.dumps({"event": kind, kind: body}),
              st.sampled_from(["media", "mark", "stop", "connected", "start", "later"]), json_values),
    garbage_text, st.binary(max_size=20))


@FUZZ
@given(st.lists(st.one_of(twilio_starts, twilio_events), max_size=8))
def test_twilio_media_streams_never_break(messages):
    check(*play(TwilioTransport, messages))


@FUZZ
@given(st.lists(twilio_events, max_size=8))
def test_twilio_events_after_a_valid_start_never_break(messages):
    start = twilio_start(mint_token(SECRET, ttl_s=600), {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                         "MZ1", {})
    outcome, extra = play(TwilioTransport, [json.dumps({"event": "connected"}), start, *messages])
    check(outcome, extra)
    assert outcome != 4401


@pytest.mark.parametrize("transport", [WebSocketTransport, TwilioTransport])
def test_the_fuzz_harness_sees_a_bad_outcome(transport):
    """The harness itself can fail: a transport whose open raises something else is reported."""

    class Broken(transport):
        @classmethod
        async def open(cls, *args, **kwargs):
            raise KeyError("boom")

    outcome, _ = play(Broken, ["{}"])
    with pytest.raises(AssertionError):
        check(outcome, [])
