"""The HTTP header deadline (services/common/http_limits.py) on a real uvicorn server in this process,
for both of uvicorn's HTTP protocols (subclasses here, so no other test's uvicorn is touched): a
client trickling its headers is dropped at the deadline, a prompt client is served, and neither a
request being served nor an upgraded WebSocket is cut. Serve's own proxy: tests/integration/test_ingress_limits.py."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import time

import pytest
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from services.common.http_limits import install_header_deadline

DEADLINE_S = 1.0


class H11WithDeadline(H11Protocol):
    pass


class HttpToolsWithDeadline(HttpToolsProtocol):
    pass


for _protocol in (H11WithDeadline, HttpToolsWithDeadline):
    install_header_deadline(_protocol, DEADLINE_S)


async def app(scope, receive, send):
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass
        return
    if scope["path"] == "/slow":  # a response that takes longer than the header deadline
        await asyncio.sleep(DEADLINE_S * 2)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(params=[H11WithDeadline, HttpToolsWithDeadline], ids=["h11", "httptools"])
async def port(request, unused_tcp_port):
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=unused_tcp_port, http=request.param,
                                           ws="auto", lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    yield unused_tcp_port
    server.should_exit = True
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)


async def _closed_after(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, trickle: bytes) -> float:
    """Send `trickle` a byte every 100 ms until the server closes; seconds until it did."""
    started = time.monotonic()
    for byte in trickle:
        try:
            writer.write(bytes([byte]))
            await writer.drain()
            if await asyncio.wait_for(reader.read(1), 0.1) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except ConnectionError:
            return time.monotonic() - started
    return float("inf")


async def test_headers_trickled_byte_by_byte_are_dropped_at_the_deadline(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    headers = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Padding: " + b"a" * 200
    held = await _closed_after(reader, writer, headers)
    writer.close()
    assert DEADLINE_S * 0.9 <= held <= DEADLINE_S + 1.0


async def test_a_slow_websocket_upgrade_is_dropped_too(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    upgrade = (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Version: 13\r\n" + b"X-Padding: " + b"a" * 200)
    held = await _closed_after(reader, writer, upgrade)
    writer.close()
    assert held <= DEADLINE_S + 1.0


async def test_prompt_requests_slow_responses_and_upgraded_websockets_are_kept(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")  # served for twice the deadline
    assert (await asyncio.wait_for(reader.read(1024), DEADLINE_S * 4)).endswith(b"ok")
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # the same kept-alive connection serves again
    assert (await asyncio.wait_for(reader.read(1024), 2)).endswith(b"ok")
    writer.close()

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16))
    writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n")
    assert b" 101 " in await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    with pytest.raises(TimeoutError):  # open past the deadline: nothing arrives, no EOF
        await asyncio.wait_for(reader.read(1), DEADLINE_S * 2)
    writer.close()
