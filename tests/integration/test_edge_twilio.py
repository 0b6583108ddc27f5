"""A phone call through the deployed edge over Twilio: the voice webhook, then Media Streams.

The client below plays Twilio's part with the requests and messages Twilio documents: the
incoming-call webhook (a form POST signed with X-Twilio-Signature), then the signed WebSocket
upgrade and connected, start with customParameters, base64 mu-law 8 kHz media in 20 ms frames,
mark, stop. Twilio itself cannot reach this machine; it signs with the stand-in account auth
token the CPU serve config gives the edge. Everything behind the socket is the real edge and
real stages.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from xml.etree import ElementTree

import httpx
import jwt
import numpy as np
import pytest
import websockets
import yaml

from services.common.audio import read_wav, resample
from services.edge.transports import mulaw
from tests.conftest import SPEECH_WAV
from tests.integration.conftest import ROOT, assert_quiet, wait_quiet
from tests.integration.test_edge_websocket import token

pytestmark = pytest.mark.cluster
SID = "MZ00000000000000000000000000000001"
CALL_SID = "CA00000000000000000000000000000001"


@pytest.fixture(scope="session")
def twilio_auth_token() -> str:
    """The stand-in Twilio account auth token the CPU serve config gives the edge."""
    for app in yaml.safe_load((ROOT / "serve_config.cpu.yaml").read_text())["applications"]:
        if app["name"] == "edge":
            return app["runtime_env"]["env_vars"]["TWILIO_AUTH_TOKEN"]
    raise AssertionError("the CPU serve config has no edge application")


def sign(auth_token: str, url: str, params: dict[str, str] | None = None) -> str:
    """X-Twilio-Signature as Twilio documents it: HMAC-SHA1 of the URL and the sorted form fields."""
    data = url + "".join(name + params[name] for name in sorted(params or {}))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def voice_form(call_sid: str = CALL_SID) -> dict[str, str]:
    return {"AccountSid": "AC0", "ApiVersion": "2010-04-01", "CallSid": call_sid, "CallStatus": "ringing",
            "Direction": "inbound", "From": "+15550100", "To": "+15550199", "CallerName": ""}


async def post_voice(url: str, form: dict[str, str], signature: str | None) -> httpx.Response:
    headers = {"X-Twilio-Signature": signature} if signature is not None else {}
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(url, data=form, headers=headers)


def connect_stream(twiml: str) -> tuple[str, dict[str, str]]:
    """<Response><Connect><Stream url>'s url and <Parameter>s."""
    stream = ElementTree.fromstring(twiml).find("./Connect/Stream")
    assert stream is not None, twiml
    return stream.get("url"), {p.get("name"): p.get("value") for p in stream.findall("Parameter")}


async def phone_call(url: str, token_: str, audio8k: np.ndarray, listen_s: float, *, signature: str | None = None,
                     call_sid: str = "CA0", speak_after_mark: str | None = None):
    """One call: optionally wait until the mark `speak_after_mark` played (the greeting), then say
    `audio8k` in real time and listen until the reply to it has played (a new `-end` mark)."""
    inbound, marks, clears = [], [], 0
    headers = {"X-Twilio-Signature": signature} if signature is not None else None
    async with websockets.connect(url, additional_headers=headers) as socket:
        await socket.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await socket.send(json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": SID, "start": {
            "streamSid": SID, "accountSid": "AC0", "callSid": call_sid, "tracks": ["inbound"],
            "customParameters": {"token": token_},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}))

        async def listen():
            nonlocal clears
            async for message in socket:
                event = json.loads(message)
                assert event["streamSid"] == SID
                if event["event"] == "media":
                    inbound.append(mulaw.decode(base64.b64decode(event["media"]["payload"])))
                elif event["event"] == "mark":
                    marks.append(event["mark"]["name"])
                    # Twilio echoes a mark once the audio before it has played.
                    await socket.send(json.dumps({"event": "mark", "streamSid": SID, "mark": event["mark"]}))
                elif event["event"] == "clear":
                    clears += 1

        listener = asyncio.create_task(listen())
        deadline = time.monotonic() + listen_s
        while speak_after_mark is not None and speak_after_mark not in marks:
            assert time.monotonic() < deadline, f"no mark {speak_after_mark!r} within {listen_s} s (got {marks})"
            await asyncio.sleep(0.05)
        heard_before = list(marks)
        started = time.monotonic()
        for index, begin in enumerate(range(0, audio8k.size, 160)):
            await asyncio.sleep(max(0.0, started + index * 0.02 - time.monotonic()))
            payload = base64.b64encode(mulaw.encode(audio8k[begin:begin + 160])).decode()
            await socket.send(json.dumps({"event": "media", "streamSid": SID, "media": {
                "track": "inbound", "chunk": str(index + 1), "timestamp": str(index * 20), "payload": payload}}))
        deadline = time.monotonic() + listen_s
        while time.monotonic() < deadline and not any(
                m.endswith("-end") for m in marks[len(heard_before):]):
            await asyncio.sleep(0.1)
        await socket.send(json.dumps({"event": "stop", "streamSid": SID, "stop": {"callSid": call_sid}}))
        await asyncio.wait_for(listener, 10)
    return inbound, marks[len(heard_before):], clears


def caller_audio() -> np.ndarray:
    audio, rate = read_wav(SPEECH_WAV)
    return resample(np.concatenate([audio, np.zeros(rate, np.float32)]), rate, 8000)


async def test_a_call_through_the_voice_webhook_gets_an_answer_in_mulaw(
        serve_cluster, edge_http_url, edge_secret, twilio_auth_token, ray_client):
    # Twilio posts the incoming call to the webhook; no public_url in the CPU config, so the edge
    # checks the signature over the URL it was called at and points the stream at its ws:// form.
    voice_url = edge_http_url + "/v1/twilio/voice"
    form = voice_form()
    response = await post_voice(voice_url, form, sign(twilio_auth_token, voice_url, form))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/xml")
    stream_url, parameters = connect_stream(response.text)
    assert stream_url == edge_http_url.replace("http://", "ws://") + "/v1/twilio/media"
    claims = jwt.decode(parameters["token"], edge_secret, algorithms=["HS256"])
    assert claims["sub"] == f"twilio:{CALL_SID}" and claims["exp"] - claims["iat"] <= 60

    # Twilio opens that stream, signed; the caller hears the greeting (turn 1), then speaks.
    inbound, marks, _ = await phone_call(stream_url, parameters["token"], caller_audio(), listen_s=60,
                                         signature=sign(twilio_auth_token, stream_url), call_sid=CALL_SID,
                                         speak_after_mark="turn-1-end")
    assert any(name.startswith("turn-") and name.endswith("-end") for name in marks), marks  # the reply played
    agent = np.concatenate(inbound)
    assert agent.size > 8000 * 0.5 and float(np.abs(agent).max()) > 0.01
    assert all(chunk.size == 160 for chunk in inbound)  # 20 ms frames of 8 kHz mu-law
    await assert_quiet(ray_client)


async def test_the_voice_webhook_refuses_forged_and_missing_signatures(edge_http_url, twilio_auth_token):
    voice_url = edge_http_url + "/v1/twilio/voice"
    form = voice_form()
    forged = [
        None,
        sign("not-the-account-auth-token", voice_url, form),
        sign(twilio_auth_token, voice_url, {**form, "From": "+15550666"}),  # signed other fields
        sign(twilio_auth_token, "https://voice.example.com/v1/twilio/voice", form),  # another URL
    ]
    for signature in forged:
        response = await post_voice(voice_url, form, signature)
        assert response.status_code == 403, (signature, response.text)
        assert "Stream" not in response.text


async def test_an_unsigned_media_stream_is_refused_before_it_opens(edge_http_url, edge_secret, twilio_auth_token,
                                                                   ray_client):
    url = edge_http_url.replace("http://", "ws://") + "/v1/twilio/media"
    for signature in (None, sign("not-the-account-auth-token", url), sign(twilio_auth_token, url + "x")):
        headers = {"X-Twilio-Signature": signature} if signature is not None else None
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url, additional_headers=headers):
                pass
        assert refused.value.response.status_code == 403
    stats = await wait_quiet(ray_client)
    assert stats["edge"]["active_conversations"] == 0


async def test_a_signed_stream_without_a_valid_token_is_refused(serve_cluster, edge_http_url, edge_secret,
                                                                twilio_auth_token):
    url = edge_http_url.replace("http://", "ws://") + "/v1/twilio/media"
    # The signature gets the upgrade through; the edge token is still checked: a forged one, and a
    # genuine one bound to another call (as the webhook mints them), are refused.
    claims = jwt.decode(token(edge_secret), edge_secret, algorithms=["HS256"])
    for_another_call = jwt.encode({**claims, "sub": "twilio:CA99"}, edge_secret, algorithm="HS256")
    for token_ in ("forged", for_another_call):
        async with websockets.connect(url, additional_headers={"X-Twilio-Signature": sign(twilio_auth_token, url)}) \
                as socket:
            await socket.send(json.dumps({"event": "start", "streamSid": SID, "start": {
                "streamSid": SID, "callSid": "CA0", "customParameters": {"token": token_},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}))
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(socket.recv(), 5)
        assert socket.close_code == 4401


async def test_the_stream_token_opens_one_stream_only(serve_cluster, edge_http_url, twilio_auth_token, ray_client):
    voice_url = edge_http_url + "/v1/twilio/voice"
    form = voice_form("CA00000000000000000000000000000002")
    stream_url, parameters = connect_stream((await post_voice(voice_url, form, sign(twilio_auth_token, voice_url,
                                                                                    form))).text)
    headers = {"X-Twilio-Signature": sign(twilio_auth_token, stream_url)}
    start = json.dumps({"event": "start", "streamSid": SID, "start": {
        "streamSid": SID, "callSid": form["CallSid"], "customParameters": {"token": parameters["token"]},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})
    async with websockets.connect(stream_url, additional_headers=headers) as first:
        await first.send(start)
        assert json.loads(await asyncio.wait_for(first.recv(), 30))["event"] in ("media", "mark")  # the call is up
        async with websockets.connect(stream_url, additional_headers=headers) as second:  # the same token again
            await second.send(start)
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    await asyncio.wait_for(second.recv(), 10)
        assert second.close_code == 4401 and "used already" in second.close_reason
        await first.send(json.dumps({"event": "stop", "streamSid": SID, "stop": {"callSid": form["CallSid"]}}))
    await assert_quiet(ray_client)
