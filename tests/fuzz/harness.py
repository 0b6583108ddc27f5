"""What the edge targets share: fuzz bytes as a script of WebSocket messages, an in-memory socket
that hands them out, and one event loop that runs each input and checks nothing was left running.

Script format (one message per line, so a seed corpus stays readable and libFuzzer's mutations
stay meaningful):

    B:<bytes>   a binary frame holding the rest of the line
    Z:<n>       a binary frame of n zero bytes (reaches the size limits without n bytes of input)
    M:<n>       a Twilio `media` message carrying n bytes of mu-law silence
    W:          the caller goes quiet: receive() never returns (the start timeout's path)
    D:          the caller disconnects
    anything else is a text frame (UTF-8; invalid bytes replaced), with `$TOKEN` replaced by a
    valid caller token and `$EXPIRED` by an expired one.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Coroutine
from typing import Any

import jwt

SECRET = "fuzzing-secret-" + "k" * 32
# The close codes a caller-protocol error may end with (docs/websocket-protocol.md).
CLOSE_CODES = frozenset({4400, 4401, 4408, 4413})
MAX_ZERO_FRAME = 1 << 20
# The in-memory socket answers at once, so these only bound inputs that make the caller go quiet.
START_TIMEOUT_S = 0.001
IDLE_TIMEOUT_S = 0.001

_loop = asyncio.new_event_loop()


def _token(expires_at: int) -> str:
    return jwt.encode({"sub": "fuzz", "exp": expires_at}, SECRET, algorithm="HS256")


def check_close_code(error) -> None:
    """A ProtocolError must close with a documented code."""
    assert error.close_code in CLOSE_CODES, f"undocumented close code {error.close_code}"


VALID_TOKEN = _token(int(time.time()) + 30 * 24 * 3600)
EXPIRED_TOKEN = _token(int(time.time()) - 3600)

_STALL = object()


def script(data: bytes) -> list[Any]:
    """The ASGI messages (or _STALL) a fuzz input stands for."""
    messages: list[Any] = []
    for line in data.split(b"\n"):
        tag, rest = line[:2], line[2:]
        if tag == b"B:":
            messages.append({"type": "websocket.receive", "bytes": rest})
        elif tag == b"Z:" and rest.isdigit():
            messages.append({"type": "websocket.receive", "bytes": bytes(min(int(rest), MAX_ZERO_FRAME))})
        elif tag == b"M:" and rest.isdigit():
            payload = base64.b64encode(b"\xff" * min(int(rest), MAX_ZERO_FRAME)).decode()
            messages.append({"type": "websocket.receive",
                             "text": json.dumps({"event": "media", "media": {"payload": payload}})})
        elif tag == b"W:":
            messages.append(_STALL)
        elif tag == b"D:":
            messages.append({"type": "websocket.disconnect", "code": 1000})
        else:
            text = line.decode("utf-8", errors="replace")
            text = text.replace("$TOKEN", VALID_TOKEN).replace("$EXPIRED", EXPIRED_TOKEN)
            messages.append({"type": "websocket.receive", "text": text})
    return messages


class ScriptedSocket:
    """The fuzz input's source: exposes `receive()` as Starlette's WebSocket does (ASGI message
    dicts; a disconnect at the end; RuntimeError when read after the disconnect)."""

    def __init__(self, messages: list[Any]):
        self._messages = list(reversed(messages))
        self._disconnected = False

    async def receive(self) -> dict[str, Any]:
        if self._disconnected:
            raise RuntimeError('Cannot call "receive" once a disconnect message has been received.')
        message = self._messages.pop() if self._messages else {"type": "websocket.disconnect", "code": 1000}
        if message is _STALL:
            await asyncio.get_running_loop().create_future()  # never resolved
        if message["type"] == "websocket.disconnect":
            self._disconnected = True
        return message


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run one input's session to its end; a task it leaves running is a crash."""
    result = _loop.run_until_complete(coroutine)
    left = [task for task in asyncio.all_tasks(_loop) if not task.done()]
    if left:
        for task in left:
            task.cancel()
        _loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        raise AssertionError(f"tasks left running after the session ended: {left}")
    return result
