"""The Twilio ingress (voice webhook and signed Media Streams upgrade) over real Starlette routes.

The app below mounts TwilioIngress exactly as the edge deployment does (admit_media before
accept, then TwilioTransport.open; `voice` as the POST route). The test client plays Twilio:
it signs each request with hmac/hashlib directly, the way Twilio documents.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any
from urllib.parse import urlencode, urlsplit
from xml.etree import ElementTree

import jwt
import pytest
from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from services.edge.auth import mint_token
from services.edge.config import TwilioConfig
from services.edge.transport import CallerHungUp, ProtocolError
from services.edge.transports.twilio import TwilioTransport, close_with
from services.edge.twilio_ingress import TwilioIngress, connect_stream_twiml

EDGE_SECRET = "unit-test-secret-for-the-twilio-ingress-0123456789"
AUTH_TOKEN = "twilio-account-auth-token-for-tests"
CALL_SID = "CA11111111111111111111111111111111"
STREAM_SID = "MZ11111111111111111111111111111111"
MULAW_8K = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
FORM = {"AccountSid": "AC11111111111111111111111111111111", "CallSid": CALL_SID, "From": "+15550100",
        "To": "+15550199", "CallStatus": "ringing", "Direction": "inbound", "CallerName": ""}


def sign(url: str, params: dict[str, str] | None = None, token: str = AUTH_TOKEN) -> str:
    data = url + "".join(name + params[name] for name in sorted(params or {}))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def make_app(config: TwilioConfig = TwilioConfig(), auth_token: str = AUTH_TOKEN) -> tuple[Starlette, dict[str, Any]]:
    ingress = TwilioIngress(config, EDGE_SECRET, auth_token)
    state: dict[str, Any] = {"accepted": 0}

    async def media(websocket: WebSocket) -> None:
        if not await ingress.admit_media(websocket):
            return
        await websocket.accept()
        state["accepted"] += 1
        try:
            transport = await TwilioTransport.open(websocket, EDGE_SECRET, start_timeout_s=5, max_frame_ms=100)
        except ProtocolError as error:
            await close_with(websocket, error.close_code, str(error))
            return
        except CallerHungUp:
            return
        state["transport"] = transport
        await transport.close(1000)

    routes = [Route("/v1/twilio/voice", ingress.voice, methods=["POST"]), WebSocketRoute("/v1/twilio/media", media)]
    return Starlette(routes=routes), state


def post_voice(client: TestClient, form: dict[str, str], signature: str | None, **headers: str):
    if signature is not None:
        headers["X-Twilio-Signature"] = signature
    return client.post("/v1/twilio/voice", content=urlencode(form),
                       headers={"Content-Type": "application/x-www-form-urlencoded", **headers})


def stream_of(twiml: str) -> tuple[str, dict[str, str]]:
    """The <Stream url> and its <Parameter>s, read back with an XML parser."""
    root = ElementTree.fromstring(twiml)
    assert root.tag == "Response"
    (connect,) = list(root)
    (stream,) = list(connect)
    assert connect.tag == "Connect" and stream.tag == "Stream"
    return stream.get("url"), {p.get("name"): p.get("value") for p in stream if p.tag == "Parameter"}


def twilio_start(token: str, call_sid: str = CALL_SID) -> list[str]:
    start = {"streamSid": STREAM_SID, "accountSid": FORM["AccountSid"], "callSid": call_sid, "tracks": ["inbound"],
             "customParameters": {"token": token}, "mediaFormat": MULAW_8K}
    return [json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}),
            json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": STREAM_SID, "start": start})]


def open_stream(client: TestClient, path: str, signature: str | None, messages: list[str]) -> int:
    """Open the media stream as Twilio would and return the code the edge closed it with."""
    headers = {"X-Twilio-Signature": signature} if signature is not None else {}
    with client.websocket_connect(path, headers=headers) as ws:
        for message in messages:
            ws.send_text(message)
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    return closed.value.code


# --- the whole flow -----------------------------------------------------------------------------


def test_the_webhook_connects_the_call_to_a_signed_stream_that_accepts_its_token():
    app, state = make_app(TwilioConfig(public_url="https://voice.example.com", stream_token_ttl_s=45))
    client = TestClient(app)
    # Twilio signed the public URL it was given; the edge sees http://testserver behind the LB.
    response = post_voice(client, FORM, sign("https://voice.example.com/v1/twilio/voice", FORM))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/xml")
    stream_url, parameters = stream_of(response.text)
    assert stream_url == "wss://voice.example.com/v1/twilio/media"
    token = parameters["token"]
    claims = jwt.decode(token, EDGE_SECRET, algorithms=["HS256"])
    assert claims["sub"] == f"twilio:{CALL_SID}" and claims["exp"] - claims["iat"] == 45
    assert len(token) < 400  # Twilio limits the length of custom parameters (its error 31103)

    # Twilio opens the stream with the upgrade signed over that wss:// URL.
    code = open_stream(client, urlsplit(stream_url).path, sign(stream_url), twilio_start(token))
    assert code == 1000
    assert state["transport"].call_sid == CALL_SID and state["transport"].claims["sub"] == f"twilio:{CALL_SID}"


def test_a_call_token_opens_no_other_call():
    app, state = make_app()
    client = TestClient(app)
    response = post_voice(client, FORM, sign("http://testserver/v1/twilio/voice", FORM))
    _, parameters = stream_of(response.text)
    code = open_stream(client, "/v1/twilio/media", sign("ws://testserver/v1/twilio/media"),
                       twilio_start(parameters["token"], call_sid="CA99999999999999999999999999999999"))
    assert code == 4401 and "transport" not in state


def test_without_a_public_url_the_forwarded_scheme_and_host_are_signed():
    app, _ = make_app()
    client = TestClient(app)
    public = "https://calls.example.org/v1/twilio/voice"
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "calls.example.org"}
    response = post_voice(client, FORM, sign(public, FORM), **forwarded)
    assert response.status_code == 200
    assert stream_of(response.text)[0] == "wss://calls.example.org/v1/twilio/media"
    assert post_voice(client, FORM, sign(public, FORM)).status_code == 403  # the same request, seen directly


# --- the voice webhook refuses ------------------------------------------------------------------


@pytest.mark.parametrize("form, signature", [
    (FORM, None),  # no signature
    (FORM, sign("http://testserver/v1/twilio/voice", FORM, token="another-account-token")),  # wrong key
    ({**FORM, "From": "+15550666"}, sign("http://testserver/v1/twilio/voice", FORM)),  # tampered field
    (FORM, sign("http://testserver/v1/twilio/other", FORM)),  # signed for another URL
    (FORM, sign("http://testserver/v1/twilio/voice")),  # signed without the form
])
def test_the_webhook_refuses_what_twilio_did_not_sign(form, signature):
    app, _ = make_app()
    response = post_voice(TestClient(app), form, signature)
    assert response.status_code == 403
    assert "token" not in response.text and "Stream" not in response.text


def test_the_webhook_is_off_without_an_auth_token():
    app, _ = make_app(auth_token="")
    response = post_voice(TestClient(app), FORM, sign("http://testserver/v1/twilio/voice", FORM, token=""))
    assert response.status_code == 404


def test_the_webhook_answers_malformed_requests_with_their_status():
    app, _ = make_app()
    client = TestClient(app)
    url = "http://testserver/v1/twilio/voice"
    no_call = {k: v for k, v in FORM.items() if k != "CallSid"}
    assert post_voice(client, no_call, sign(url, no_call)).status_code == 400
    as_json = client.post("/v1/twilio/voice", json=FORM, headers={"X-Twilio-Signature": sign(url, FORM)})
    assert as_json.status_code == 415
    big = {**FORM, "Junk": "x" * 70_000}
    assert post_voice(client, big, sign(url, big)).status_code == 413
    bad_utf8 = client.post("/v1/twilio/voice", content=b"CallSid=\xff\xfe",
                           headers={"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": "x"})
    assert bad_utf8.status_code == 400


# --- the media upgrade refuses ------------------------------------------------------------------


@pytest.mark.parametrize("signature", [
    None,
    sign("ws://testserver/v1/twilio/media", token="another-account-token"),
    sign("ws://testserver/v1/twilio/other"),
    sign("http://testserver/v1/twilio/media"),  # the scheme Twilio signs a stream with is ws(s)
])
def test_an_unsigned_media_upgrade_is_refused_before_accept(signature):
    app, state = make_app()
    client = TestClient(app)
    headers = {"X-Twilio-Signature": signature} if signature is not None else {}
    with pytest.raises(WebSocketDisconnect) as refused:
        with client.websocket_connect("/v1/twilio/media", headers=headers):
            pass
    assert refused.value.code == 1008  # a close before accept: the ASGI server answers HTTP 403
    assert state["accepted"] == 0


def test_signatures_on_media_follow_the_auth_token_unless_configured():
    token = mint_token(EDGE_SECRET, ttl_s=60)
    # No Twilio auth token: other bridges hold only an edge token, as before.
    app, state = make_app(auth_token="")
    assert open_stream(TestClient(app), "/v1/twilio/media", None, twilio_start(token)) == 1000
    # Explicitly off, with the token set: the edge token alone still opens it.
    app, state = make_app(TwilioConfig(require_signature=False))
    assert open_stream(TestClient(app), "/v1/twilio/media", None, twilio_start(token)) == 1000
    # Signed, but with a forged edge token: the edge-token check stays.
    app, state = make_app()
    client = TestClient(app)
    assert open_stream(client, "/v1/twilio/media", sign("ws://testserver/v1/twilio/media"),
                       twilio_start("forged")) == 4401
    assert "transport" not in state


def test_requiring_signatures_without_an_auth_token_is_a_startup_error():
    with pytest.raises(RuntimeError, match="TWILIO_AUTH_TOKEN"):
        TwilioIngress(TwilioConfig(require_signature=True), EDGE_SECRET, "")


def test_twiml_attributes_are_escaped():
    url = 'wss://h/m?a=1&b="2"<x>'
    value = "a&b<c>\"d'e\nf"
    twiml = connect_stream_twiml(url, {"token": value, "n&<": "v"})
    assert twiml.startswith('<?xml version="1.0" encoding="UTF-8"?><Response>')
    assert "&b=" not in twiml and "<x>" not in twiml
    assert stream_of(twiml) == (url, {"token": value, "n&<": "v"})
