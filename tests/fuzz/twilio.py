"""Target `twilio`: Twilio Media Streams messages (services/edge/transports/twilio.py).

The input is a script of frames (tests/fuzz/harness.py): `connected`, `start` (with the caller's
token among its customParameters), then `media` (base64 mu-law), `mark`, `dtmf`, `stop` and
anything else. The real transport reads them from an in-memory socket: `open()` up to the start
message, then `receive_audio()` until the script ends.
"""

from __future__ import annotations

import asyncio

import atheris

from tests.fuzz import harness

with atheris.instrument_imports(include=["services"]):
    from services.edge.transport import CallerHungUp, ProtocolError
    from services.edge.transports.twilio import SAMPLE_RATE, TOKEN_PARAMETER, TwilioTransport

MAX_FRAME_MS = 200
MAX_MESSAGES = 64


async def _session(socket: harness.ScriptedSocket) -> None:
    try:
        transport = await TwilioTransport.open(socket, harness.SECRET, start_timeout_s=harness.START_TIMEOUT_S,
                                               max_frame_ms=MAX_FRAME_MS)
    except ProtocolError as error:
        return harness.check_close_code(error)
    except CallerHungUp:
        return
    assert isinstance(transport.stream_sid, str) and transport.stream_sid
    assert TOKEN_PARAMETER not in transport.custom_parameters, "the token leaked into the call's parameters"
    assert transport.claims.get("sub") == "fuzz", "a caller got in without the valid token"
    for _ in range(MAX_MESSAGES):
        try:
            audio = await asyncio.wait_for(transport.receive_audio(), harness.IDLE_TIMEOUT_S)
        except ProtocolError as error:
            return harness.check_close_code(error)
        except (CallerHungUp, TimeoutError):  # TimeoutError: the script went quiet
            return
        assert isinstance(audio, bytes)  # PCM s16le, two bytes per mu-law byte
        assert 0 < len(audio) // 2 <= SAMPLE_RATE * MAX_FRAME_MS // 1000
        assert all(isinstance(name, str) for name in transport.played_marks)


def fuzz_twilio(data: bytes) -> None:
    harness.run(_session(harness.ScriptedSocket(harness.script(data))))
