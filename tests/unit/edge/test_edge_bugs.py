"""The edge bugs found by an outside integrator, each pinned by a test."""

from __future__ import annotations

import json

import jwt
import numpy as np
import pytest
import soundfile

from services.cli import main
from services.edge.caller import CallAudioError, read_call_audio
from services.edge.config import EdgeConfig, PersonaConfig
from services.edge.host import CallHost, failure_of
from services.edge.persona import VoiceCatalog, persona_for
from services.edge.transport import ProtocolError, json_message
from services.edge.transports.websocket import WebSocketTransport
from tests.unit.edge.fakes import FakeTransport

SECRET = "a-test-secret-that-is-long-enough-for-hs256"


@pytest.mark.parametrize("persona", [{"max_tokens": -1}, {"temperature": 9}, {"moood": "grumpy"}, "friendly"])
def test_a_bad_persona_claim_is_a_4400_with_a_reason(persona):
    with pytest.raises(ProtocolError) as raised:
        persona_for(PersonaConfig(), {"persona": persona})
    assert raised.value.close_code == 4400 and "persona" in str(raised.value)


async def _voices():
    return ["af_heart", "am_adam"]


async def test_a_bad_persona_or_voice_refuses_the_call_at_start_and_starts_nothing():
    host = CallHost(EdgeConfig(), lambda: None, VoiceCatalog(_voices))
    failures = []

    async def fail(failure):
        failures.append(failure)

    for claims, voice in (({"persona": {"max_tokens": -1}}, ""), ({"persona": {"voice": "nobody"}}, ""),
                          ({}, "nobody")):
        transport = FakeTransport(claims=claims)
        transport.requested_voice = voice

        async def opened(transport=transport):
            return transport
        assert (await host.hold(opened, fail, "websocket")).close_code == 4400
    assert [f.close_code for f in failures] == [4400] * 3 and "unknown voice 'nobody'" in failures[-1].message
    assert not host.calls


async def test_the_start_voice_is_honoured_unless_the_signed_persona_names_one():
    host = CallHost(EdgeConfig(), lambda: None, VoiceCatalog(_voices))
    assert (await host.persona({}, "am_adam")).voice == "am_adam"
    assert (await host.persona({"persona": {"voice": "af_heart"}}, "am_adam")).voice == "af_heart"
    assert await host.voices.voices() == ["af_heart", "am_adam"]


class _Socket:
    def __init__(self, text: str):
        self.text = text

    async def receive(self):
        return {"type": "websocket.receive", "text": self.text}


async def test_oversized_json_control_messages_close_with_4413():
    big = json.dumps({"type": "start", "token": "x", "input_sample_rate": 16000, "pad": "x" * 2_000_000})
    with pytest.raises(ProtocolError) as raised:
        await WebSocketTransport.open(_Socket(big), SECRET, start_timeout_s=1, max_frame_ms=100)
    assert raised.value.close_code == 4413
    assert json_message('{"type": "stop"}', "type") == {"type": "stop"}
    assert failure_of(raised.value, EdgeConfig()).close_code == 4413


def test_parley_call_reads_any_wav_or_flac_and_resamples(tmp_path):
    tone = 0.3 * np.sin(np.arange(44_100) / 10.0)
    for name, kwargs in (("sox.wav", {"format": "WAVEX", "subtype": "PCM_24"}), ("a.flac", {"format": "FLAC"})):
        soundfile.write(tmp_path / name, np.stack([tone, tone], axis=1), 44_100, **kwargs)
        audio = read_call_audio(tmp_path / name, 16_000)
        assert audio.dtype == np.float32 and abs(audio.size - 16_000) <= 2 and abs(audio.max() - 0.3) < 0.02
    (tmp_path / "junk.wav").write_bytes(b"RIFF....not audio")
    with pytest.raises(CallAudioError) as raised:
        read_call_audio(tmp_path / "junk.wav")
    assert "\n" not in str(raised.value) and "junk.wav" in str(raised.value)


def test_parley_token_mints_mode_and_persona_claims(monkeypatch, capsys):
    monkeypatch.setenv("PARLEY_EDGE_SECRET", SECRET)
    assert main(["token", "--mode", "duplex", "--persona", '{"voice": "am_adam", "max_tokens": 40}']) == 0
    claims = jwt.decode(capsys.readouterr().out.strip(), SECRET, algorithms=["HS256"])
    assert claims["mode"] == "duplex" and claims["persona"] == {"voice": "am_adam", "max_tokens": 40}
    assert main(["token", "--persona", '{"max_tokens": -1}']) == 2
    assert "--persona" in capsys.readouterr().err


def test_one_table_maps_errors_to_close_codes():
    import grpc

    from services.edge.streams.base import StageUnavailable
    from services.edge.streams.moshi import DuplexFull

    config = EdgeConfig()
    rpc = grpc.aio.AioRpcError(grpc.StatusCode.INVALID_ARGUMENT, grpc.aio.Metadata(), grpc.aio.Metadata(), "no")
    cases = {rpc: (1011, "stage_error"), StageUnavailable("asr", "down"): (1013, "stage_unavailable"),
             TimeoutError(): (4408, "call_time_limit"), DuplexFull("full"): (4503, "over_capacity"),
             ProtocolError("bad token", 4401): (4401, "unauthorized"), ValueError("bug"): (1011, "internal")}
    for error, expected in cases.items():
        failure = failure_of(ExceptionGroup("call", [error]), config)
        assert (failure.close_code, failure.code) == expected, error
