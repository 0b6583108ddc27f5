"""Target `websocket`: the browser/app WebSocket protocol (services/edge/transports/websocket.py).

The input is a script of frames (tests/fuzz/harness.py): the `start` message, then JSON control
messages and binary audio frames of any size. The real transport reads them from an in-memory
socket: `open()` checks the start message and the caller's token, then `receive_audio()` runs
until the script ends; typed `user_text` reaches the call only as a non-empty string in bounds.
"""

from __future__ import annotations

import asyncio

import atheris

from tests.fuzz import harness

with atheris.instrument_imports(include=["services"]):
    from services.edge.transport import CallerHungUp, ProtocolError
    from services.edge.transports.websocket import MAX_USER_TEXT_CHARS, WebSocketTransport

MAX_FRAME_MS = 200
MAX_FRAMES = 64


async def _session(socket: harness.ScriptedSocket) -> None:
    try:
        transport = await WebSocketTransport.open(socket, harness.SECRET, start_timeout_s=harness.START_TIMEOUT_S,
                                                  max_frame_ms=MAX_FRAME_MS)
    except ProtocolError as error:
        harness.check_close_code(error)
        return
    except CallerHungUp:
        return
    assert 8000 <= transport.input_sample_rate <= 48000 and 8000 <= transport.output_sample_rate <= 48000
    assert transport.claims.get("sub") == "fuzz", "a caller got in without the valid token"

    async def user_text(text: str) -> None:
        assert isinstance(text, str) and text and text == text.strip() and len(text) <= MAX_USER_TEXT_CHARS
    transport.on_user_text = user_text
    for _ in range(MAX_FRAMES):
        try:
            audio = await asyncio.wait_for(transport.receive_audio(), harness.IDLE_TIMEOUT_S)
        except ProtocolError as error:
            harness.check_close_code(error)
            return
        except (CallerHungUp, TimeoutError):  # TimeoutError: the script went quiet
            return
        assert isinstance(audio, bytes) and len(audio) % 2 == 0  # PCM s16le
        assert len(audio) <= transport.max_frame_bytes


def fuzz_websocket(data: bytes) -> None:
    harness.run(_session(harness.ScriptedSocket(harness.script(data))))
