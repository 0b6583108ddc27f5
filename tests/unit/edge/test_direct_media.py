"""The direct media endpoint: its config, admission at the Serve route, the token spent once on the
direct endpoint, and the replica's own server starting, draining and stopping without a leak."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets
from pydantic import ValidationError

from services.edge.auth import mint_token
from services.edge.config import DirectMediaConfig, EdgeConfig
from services.edge.direct_media import DirectTokens, MediaServer, admission, max_message_bytes, media_url
from services.edge.transport import ProtocolError, Transport

SECRET = "a-test-secret-of-at-least-thirty-two-bytes"
URL = "ws://10.0.0.7:41000/v1/conversation"


class _Claimed(Transport):
    def __init__(self, claims: dict):
        self.claims = claims

    async def receive_audio(self) -> bytes:
        raise NotImplementedError

    async def send_audio(self, frame: bytes) -> None:
        raise NotImplementedError

    async def send_event(self, event: dict) -> None:
        raise NotImplementedError


# -- config and the advertised address -----------------------------------------------------------------

def test_off_by_default_and_loopback_when_on():
    config = EdgeConfig().direct_media
    assert config.enabled is False and config.bind_host == "127.0.0.1" and config.port == 0


@pytest.mark.parametrize("fields", [{"bind_host": ""}, {"bind_host": "host/path"}, {"advertised_host": "a@b"},
                                    {"port": 70000}, {"advertised_scheme": "http"}, {"unknown": 1}])
def test_bad_config_is_refused(fields):
    with pytest.raises(ValidationError):
        DirectMediaConfig(**fields)


def test_media_url_prefers_the_advertised_host_then_the_bind_host_then_the_node_ip():
    assert media_url(DirectMediaConfig(bind_host="127.0.0.1"), 41000, "10.0.0.7") == \
        "ws://127.0.0.1:41000/v1/conversation"
    assert media_url(DirectMediaConfig(bind_host="0.0.0.0"), 41000, "10.0.0.7") == URL
    assert media_url(DirectMediaConfig(bind_host="::"), 41000, "fd00::7") == "ws://[fd00::7]:41000/v1/conversation"
    behind_tls = DirectMediaConfig(bind_host="0.0.0.0", port=8800, advertised_scheme="wss",
                                   advertised_host="edge-0.edge-media.voice.svc", advertised_port=443)
    assert media_url(behind_tls, 8800, "10.0.0.7") == "wss://edge-0.edge-media.voice.svc:443/v1/conversation"


def test_the_message_limit_covers_the_largest_frame_and_control_message():
    limit = max_message_bytes(64 * 1024, 1000)
    assert limit >= 4 * 64 * 1024 and limit >= 96_000
    assert max_message_bytes(1024, 5000) >= 480_000


# -- admission ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("authorization", ["", "Bearer", "Bearer not-a-jwt", "Basic abc",
                                           "Bearer " + mint_token("another-secret-of-at-least-32-bytes!!")])
def test_admission_refuses_a_missing_or_bad_token(authorization):
    answer = admission(authorization, SECRET, URL, full=False)
    assert answer.status == 401 and answer.headers["WWW-Authenticate"] == "Bearer"
    assert "media_url" not in answer.body and answer.body["error"]


def test_admission_refuses_an_expired_token():
    answer = admission("Bearer " + mint_token(SECRET, ttl_s=-10), SECRET, URL, full=False)
    assert answer.status == 401 and "expired" in answer.body["error"]


def test_admission_answers_the_media_url_and_says_when_full_or_off():
    bearer = "Bearer " + mint_token(SECRET)
    assert admission(bearer, SECRET, URL, full=False).body == {"media_url": URL}
    assert admission("bearer " + mint_token(SECRET), SECRET, URL, full=False).status == 200  # scheme: any case
    full = admission(bearer, SECRET, URL, full=True)
    assert full.status == 503 and int(full.headers["Retry-After"]) > 0 and "media_url" not in full.body
    assert admission(bearer, SECRET, None, full=False).status == 404


def test_the_token_is_spent_on_the_direct_endpoint_not_at_admission():
    token = mint_token(SECRET)
    for _ in range(3):  # admission may be asked again (a 503 retried): it spends nothing
        assert admission("Bearer " + token, SECRET, URL, full=False).status == 200
    import jwt

    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    tokens = DirectTokens()
    tokens.spend(_Claimed(claims))
    with pytest.raises(ProtocolError) as refused:
        tokens.spend(_Claimed(claims))
    assert refused.value.close_code == 4401
    tokens.spend(_Claimed(jwt.decode(mint_token(SECRET), SECRET, algorithms=["HS256"])))  # another token: fine
    with pytest.raises(ProtocolError):
        tokens.spend(_Claimed({"sub": "caller", "exp": claims["exp"]}))  # no jti: cannot be spent once


# -- the server's life ----------------------------------------------------------------------------------

class _Conversation:
    """A stand-in for the edge's conversation handler: answers each text with its length until `bye`."""

    def __init__(self):
        self.opened = asyncio.Event()

    async def __call__(self, websocket) -> None:
        await websocket.accept()
        self.opened.set()
        while (text := await websocket.receive_text()) != "bye":
            await websocket.send_text(json.dumps({"length": len(text)}))
        await websocket.close(1000)


async def _started(handler, **fields) -> MediaServer:
    server = MediaServer(DirectMediaConfig(enabled=True, **fields), handler, 1 << 16, header_timeout_s=5.0)
    await server.start()
    return server


async def _refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    return False


async def test_the_server_serves_the_path_and_frees_its_port_and_tasks_when_stopped():
    # Tasks of earlier tests on the shared loop may end meanwhile: compare sets, not counts.
    tasks_before = asyncio.all_tasks()
    handler = _Conversation()
    server = await _started(handler)
    assert server.port > 0
    url = f"ws://127.0.0.1:{server.port}/v1/conversation"
    async with websockets.connect(url) as socket:
        await socket.send("hello")
        assert json.loads(await socket.recv()) == {"length": 5}
        assert server.live == 1
        await server.stop(drain_timeout_s=0)  # a call still open: closed as a restart (1012)
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(socket.recv(), 10)
        assert socket.close_code == 1012
    assert server.live == 0 and await _refused(server.port)
    await asyncio.sleep(0)
    leaked = asyncio.all_tasks() - tasks_before
    assert not leaked, leaked
    await server.stop()  # twice: nothing to do


async def test_only_the_conversation_path_is_served():
    server = await _started(_Conversation())
    try:
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(f"ws://127.0.0.1:{server.port}/v1/other"):
                pass
    finally:
        await server.stop()


async def test_stopping_lets_a_call_in_progress_finish_within_the_drain():
    handler = _Conversation()
    server = await _started(handler)
    async with websockets.connect(f"ws://127.0.0.1:{server.port}/v1/conversation") as socket:
        await handler.opened.wait()
        stopping = asyncio.create_task(server.stop(drain_timeout_s=30))
        await asyncio.sleep(0.5)
        assert not stopping.done() and await _refused(server.port)  # no new calls while draining
        await socket.send("still talking")
        assert json.loads(await socket.recv()) == {"length": 13}
        await socket.send("bye")
        await asyncio.wait_for(stopping, 10)  # ended with the call, not after the 30 s drain
        assert socket.close_code == 1000


async def test_a_taken_port_fails_the_start():
    server = await _started(_Conversation())
    try:
        with pytest.raises(OSError):
            await _started(_Conversation(), port=server.port)
    finally:
        await server.stop()
