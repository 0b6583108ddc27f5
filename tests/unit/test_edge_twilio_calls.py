"""Twilio calls as Twilio users expect them: a full edge turns the call away in the webhook, the
stream token opens one stream, status callbacks are verified and counted, and key presses reach
the call as `dtmf` events (and as user input when the persona has tools).

The webhook and media routes are the real TwilioIngress on Starlette, signed the way Twilio signs
(tests/unit/test_edge_twilio_ingress.py); the call is a real CascadeCall over in-process stages."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlencode
from xml.etree import ElementTree

import pytest
from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from services.common import metrics
from services.edge.auth import AuthError, SingleUse
from services.edge.cascade import CascadeCall
from services.edge.config import TwilioConfig
from services.edge.transport import ProtocolError
from services.edge.transports.twilio import TwilioTransport, close_with
from services.edge.twilio_ingress import TwilioIngress
from tests.unit.edge.fakes import EngineModel, FakeTransport, Recognizer, Stages, Synthesizer, edge_config
from tests.unit.edge.test_tools import engine, tool
from tests.unit.test_edge_twilio_ingress import CALL_SID, EDGE_SECRET, FORM, MULAW_8K, STREAM_SID, post_voice, sign, stream_of

VOICE_URL = "http://testserver/v1/twilio/voice"
STATUS_URL = "http://testserver/v1/twilio/status"


def make_app(config: TwilioConfig = TwilioConfig(), full: bool = False):
    ingress = TwilioIngress(config, EDGE_SECRET, "twilio-account-auth-token-for-tests")
    opened: list[str] = []

    async def voice(request):
        return await ingress.voice(request, full=full)

    async def media(websocket: WebSocket) -> None:  # as the edge: open, then spend the token
        await websocket.accept()
        try:
            transport = await TwilioTransport.open(websocket, EDGE_SECRET, start_timeout_s=5, max_frame_ms=100)
            ingress.admit_stream(transport)
        except ProtocolError as error:
            await close_with(websocket, error.close_code, str(error))
            return
        opened.append(transport.stream_sid)
        await transport.close(1000)

    routes = [Route("/v1/twilio/voice", voice, methods=["POST"]), Route("/v1/twilio/status", ingress.status,
                                                                         methods=["POST"]),
              WebSocketRoute("/v1/twilio/media", media)]
    return TestClient(Starlette(routes=routes)), opened


def start_with(token: str) -> str:
    return json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": STREAM_SID,
                       "start": {"streamSid": STREAM_SID, "callSid": CALL_SID, "accountSid": FORM["AccountSid"],
                                 "tracks": ["inbound"], "mediaFormat": MULAW_8K, "customParameters": {"token": token}}})


@pytest.mark.parametrize("message, expected", [("", "Reject"), ("All our agents are busy.", "Say")])
def test_a_full_edge_turns_the_call_away_in_the_webhook(monkeypatch, message, expected):
    counted = []
    monkeypatch.setattr(metrics, "record_twilio_call", counted.append)
    client, _ = make_app(TwilioConfig(busy_message=message), full=True)
    response = post_voice(client, FORM, sign(VOICE_URL, FORM))
    assert response.status_code == 200
    root = ElementTree.fromstring(response.text)
    assert [child.tag for child in root] == (["Reject"] if not message else ["Say", "Hangup"])
    assert root[0].tag == expected and "Stream" not in response.text and "token" not in response.text
    assert (root[0].get("reason") == "busy") if not message else (root[0].text == message)
    assert counted == ["rejected_busy"]


def test_the_stream_token_opens_one_stream_only():
    client, opened = make_app()
    url, parameters = stream_of(post_voice(client, FORM, sign(VOICE_URL, FORM)).text)
    with client.websocket_connect("/v1/twilio/media") as ws:
        ws.send_text(start_with(parameters["token"]))
        with pytest.raises(WebSocketDisconnect) as first:
            ws.receive_text()
    assert first.value.code == 1000 and opened == [STREAM_SID]
    with client.websocket_connect("/v1/twilio/media") as ws:  # the same token again, within its 60 s
        ws.send_text(start_with(parameters["token"]))
        with pytest.raises(WebSocketDisconnect) as second:
            ws.receive_text()
    assert second.value.code == 4401 and "used already" in second.value.reason
    assert opened == [STREAM_SID]


def test_used_token_ids_are_forgotten_when_their_tokens_expire():
    now = [1000.0]
    used = SingleUse(clock=lambda: now[0])
    used.spend({"jti": "a", "exp": 1060})
    with pytest.raises(AuthError, match="used already"):
        used.spend({"jti": "a", "exp": 1060})
    with pytest.raises(AuthError, match="no id"):
        used.spend({"exp": 1060})
    now[0] = 1061.0  # expired: verify_token would refuse it anyway, so the record can go
    used.spend({"jti": "b", "exp": 1120})
    assert len(used) == 1


def test_status_callbacks_go_in_the_twiml_and_are_verified_and_counted(monkeypatch):
    counted = []
    monkeypatch.setattr(metrics, "record_twilio_call", counted.append)
    client, _ = make_app(TwilioConfig(status_callback_url="https://ops.example.com/twilio/status"))
    stream = ElementTree.fromstring(post_voice(client, FORM, sign(VOICE_URL, FORM)).text)[0][0]
    assert stream.get("statusCallback") == "https://ops.example.com/twilio/status"
    assert stream.get("statusCallbackMethod") == "POST"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    done = {**FORM, "CallStatus": "completed", "CallDuration": "42"}
    forged = client.post("/v1/twilio/status", content=urlencode(done),
                         headers={**headers, "X-Twilio-Signature": sign(STATUS_URL, FORM)})
    assert forged.status_code == 403 and counted == []
    signed = client.post("/v1/twilio/status", content=urlencode(done),
                         headers={**headers, "X-Twilio-Signature": sign(STATUS_URL, done)})
    assert signed.status_code == 204 and counted == ["completed"]
    odd = {**FORM, "CallStatus": "x" * 40}
    assert client.post("/v1/twilio/status", content=urlencode(odd),
                       headers={**headers, "X-Twilio-Signature": sign(STATUS_URL, odd)}).status_code == 400


@pytest.mark.parametrize("with_tools", [False, True], ids=["no-tools", "tools"])
async def test_key_presses_are_dtmf_events_and_with_tools_user_input(with_tools):
    llm = engine("Press one for sales.", "You chose sales.")
    tools = [tool("lookup", {"kind": "python", "path": "tests.unit.edge.test_tools:broken_tool"})] if with_tools else []
    async with Stages(Recognizer(), EngineModel(llm), Synthesizer()) as stages:
        transport = FakeTransport(greeting=False)
        call = CascadeCall(transport, stages.clients, edge_config({}, tools=tools), "d1")
        task = asyncio.create_task(call.run())
        while transport.on_dtmf is None:
            await asyncio.sleep(0.01)
        await transport.on_dtmf("1")  # what TwilioTransport does with a `dtmf` message
        for _ in range(200):  # a bound for loaded machines: the turn's LLM request, or 2 s without one
            if llm.requests or (not with_tools and _ >= 40):
                break
            await asyncio.sleep(0.05)
        transport.audio_in.put_nowait(None)
        await asyncio.wait_for(task, 5)
    assert [event["digit"] for event in transport.of_type("dtmf")] == ["1"]
    turns = [request.messages[-1].content for request in llm.requests]
    assert set(turns) == ({"[DTMF 1]"} if with_tools else set())  # (a retried request repeats it)
