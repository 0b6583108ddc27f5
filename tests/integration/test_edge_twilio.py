"""A phone call through the deployed edge over Twilio Media Streams.

The client below plays Twilio's part with the message format Twilio documents (connected, start
with customParameters, base64 mu-law 8 kHz media in 20 ms frames, mark, stop): Twilio itself
cannot reach this machine. Everything behind the socket is the real edge and real stages.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

import numpy as np
import pytest
import websockets

from services.common.audio import read_wav, resample
from services.edge.transports import mulaw
from tests.conftest import SPEECH_WAV
from tests.integration.test_edge_websocket import token, wait_quiet

pytestmark = pytest.mark.cluster
SID = "MZ00000000000000000000000000000001"


async def phone_call(url: str, token_: str, audio8k: np.ndarray, listen_s: float):
    inbound, marks, clears = [], [], 0
    async with websockets.connect(url) as socket:
        await socket.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await socket.send(json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": SID, "start": {
            "streamSid": SID, "accountSid": "AC0", "callSid": "CA0", "tracks": ["inbound"],
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
        started = time.monotonic()
        for index, begin in enumerate(range(0, audio8k.size, 160)):
            await asyncio.sleep(max(0.0, started + index * 0.02 - time.monotonic()))
            payload = base64.b64encode(mulaw.encode(audio8k[begin:begin + 160])).decode()
            await socket.send(json.dumps({"event": "media", "streamSid": SID, "media": {
                "track": "inbound", "chunk": str(index + 1), "timestamp": str(index * 20), "payload": payload}}))
        deadline = time.monotonic() + listen_s
        while time.monotonic() < deadline and not any(m.endswith("-end") for m in marks[1:] or marks):
            await asyncio.sleep(0.1)
        await socket.send(json.dumps({"event": "stop", "streamSid": SID, "stop": {"callSid": "CA0"}}))
        await asyncio.wait_for(listener, 10)
    return inbound, marks, clears


async def test_a_phone_call_gets_an_answer_in_mulaw(serve_cluster, edge_http_url, edge_secret, ray_client):
    audio, rate = read_wav(SPEECH_WAV)
    audio8k = resample(np.concatenate([audio, np.zeros(rate, np.float32)]), rate, 8000)
    url = edge_http_url.replace("http://", "ws://") + "/v1/twilio/media"
    inbound, marks, _ = await phone_call(url, token(edge_secret, greeting=""), audio8k, listen_s=40)
    agent = np.concatenate(inbound)
    assert agent.size > 8000 * 0.5 and float(np.abs(agent).max()) > 0.01
    assert all(chunk.size == 160 for chunk in inbound)  # 20 ms frames of 8 kHz mu-law
    assert any(name.startswith("turn-") and name.endswith("-end") for name in marks)
    await wait_quiet(ray_client)


async def test_a_phone_call_without_a_valid_token_is_refused(serve_cluster, edge_http_url):
    url = edge_http_url.replace("http://", "ws://") + "/v1/twilio/media"
    async with websockets.connect(url) as socket:
        await socket.send(json.dumps({"event": "start", "streamSid": SID, "start": {
            "streamSid": SID, "callSid": "CA0", "customParameters": {"token": "forged"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}))
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(socket.recv(), 5)
    assert socket.close_code == 4401
