"""Targets `asr`, `llm`, `tts`, `moshi`: every stage's gRPC request type, as bytes.

An input is what a caller could put on the wire: for the streaming RPCs a sequence of messages,
each prefixed with its length (2 bytes, little-endian; the rest of the input when fewer remain),
for LLM Generate one message. Each is parsed with the generated class, as Serve's gRPC proxy
does, and goes through the stage's own checks, the code a replica runs before any engine work:
the stream's first message (`first_message`), the config (ASR StreamSettings, TTS VoiceSettings,
Moshi check_config, LLM to_chat_request) and every later message (`frame_audio`,
`check_message`). No engine is loaded; TTS checks voices against a catalog of names (below).

The property: the request is accepted with values in range, or it fails with the error the
caller sees as INVALID_ARGUMENT or RESOURCE_EXHAUSTED (StageError, or AudioFormatError, which
`grpc_stream` answers with INVALID_ARGUMENT); bytes that are not the message fail to parse
(DecodeError: the proxy refuses them before the stage runs). Anything else is a crash.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import aclosing
from typing import Any

import atheris
import grpc
import numpy as np
from google.protobuf.message import DecodeError

with atheris.instrument_imports(include=["services"]):
    from services.asr.config import ASRConfig
    from services.asr.session import StreamSettings
    from services.asr.session import frame_audio as asr_frame_audio
    from services.common.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, AudioFormatError
    from services.common.rpc import StageError, first_message
    from services.llm.config import LLMConfig
    from services.llm.deployment import to_chat_request
    from services.moshi.config import MoshiConfig
    from services.moshi.engine import FRAME_SAMPLES
    from services.moshi.session import check_config
    from services.moshi.session import frame_audio as moshi_frame_audio
    from services.proto import asr_pb2, llm_pb2, moshi_pb2, tts_pb2
    from services.tts.config import TTSConfig
    from services.tts.engine import Speech, TTSEngine
    from services.tts.session import VoiceSettings, check_message

from tests.fuzz import harness  # noqa: E402

CALLER_ERRORS = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED})
# Size limits set low, so that inputs within libFuzzer's default 4 KB reach them (RESOURCE_EXHAUSTED);
# the LLM's still lets a few thousand characters of tools_json through to the JSON decoder.
ASR_CONFIG = ASRConfig(max_frame_ms=20)
LLM_CONFIG = LLMConfig(max_messages=8, max_request_chars=3500)
TTS_CONFIG = TTSConfig(max_chunk_chars=64, max_stream_chars=256)
MOSHI_CONFIG = MoshiConfig()


class VoiceCatalog(TTSEngine):
    """The voice names and native rate a TTS replica answers VoiceSettings with; it never speaks."""

    sample_rate = 24_000

    def voices(self) -> list[str]:
        return [TTS_CONFIG.engine.default_voice, "am_adam"]

    def synthesize(self, text: str, voice: str, speed: float) -> Speech:
        raise AssertionError("the fuzz targets never synthesize")


VOICES = VoiceCatalog()


def split_messages(data: bytes) -> list[bytes]:
    frames = []
    while data:
        size = int.from_bytes(data[:2], "little")
        frames.append(data[2:2 + size])
        data = data[2 + size:]
    return frames


async def _stream(messages: list[Any]) -> AsyncIterator[Any]:
    for message in messages:
        yield message


def _check_stream(data: bytes, message_type: type, validate: Callable[[AsyncIterator[Any]], Coroutine]) -> None:
    try:
        messages = [message_type.FromString(frame) for frame in split_messages(data)]
    except DecodeError:
        return

    async def session() -> None:
        async with aclosing(_stream(messages)) as requests:
            await validate(requests)

    _expect_caller_errors(lambda: harness.run(session()))


def _expect_caller_errors(call: Callable[[], Any]) -> None:
    try:
        call()
    except StageError as error:
        assert error.code in CALLER_ERRORS, f"a bad request answered {error.code}"
        assert error.message
    except AudioFormatError as error:
        assert str(error)


def _check_pcm(audio: np.ndarray, max_samples: int) -> None:
    assert audio.dtype == np.float32 and audio.ndim == 1 and audio.size <= max_samples
    assert audio.size == 0 or float(np.abs(audio).max()) <= 1.0


# --- ASR Recognize ------------------------------------------------------------------------------

async def _asr(requests: AsyncIterator[asr_pb2.RecognizeRequest]) -> None:
    settings = StreamSettings.from_request(await first_message(requests, "config"), ASR_CONFIG)
    assert MIN_SAMPLE_RATE <= settings.sample_rate <= MAX_SAMPLE_RATE
    assert 1 <= settings.options.beam_size <= 10 and settings.min_silence_ms > 0
    assert settings.partial_interval_s is None or settings.partial_interval_s > 0
    async for request in requests:
        audio = asr_frame_audio(request, settings)
        if audio is not None:
            _check_pcm(audio, settings.max_frame_bytes // 2)


def fuzz_asr(data: bytes) -> None:
    _check_stream(data, asr_pb2.RecognizeRequest, _asr)


# --- LLM Generate -------------------------------------------------------------------------------

def _llm(request: llm_pb2.GenerateRequest) -> None:
    chat = to_chat_request(request, LLM_CONFIG)
    sampling = chat.sampling
    assert 1 <= len(chat.messages) <= LLM_CONFIG.max_messages
    assert 0.0 <= sampling.temperature <= 2.0 and 0.0 < sampling.top_p <= 1.0
    assert not math.isnan(sampling.temperature) and sampling.top_k >= 0
    assert 1 <= sampling.max_tokens <= LLM_CONFIG.max_tokens_limit
    assert all(isinstance(tool, dict) for tool in chat.tools) and all(sampling.stop)


def fuzz_llm(data: bytes) -> None:
    try:
        request = llm_pb2.GenerateRequest.FromString(data)
    except DecodeError:
        return
    _expect_caller_errors(lambda: _llm(request))


# --- TTS Synthesize -----------------------------------------------------------------------------

async def _tts(requests: AsyncIterator[tts_pb2.SynthesizeRequest]) -> None:
    config = await first_message(requests, "config")
    voice = VoiceSettings.from_request(config, VOICES, TTS_CONFIG.engine.default_voice)
    assert voice.voice in VOICES.voices() and 0.5 <= voice.speed <= 2.0
    assert MIN_SAMPLE_RATE <= voice.sample_rate <= MAX_SAMPLE_RATE
    async for request in requests:
        kind = check_message(request, TTS_CONFIG)
        assert kind in ("text", "flush", "end")
        assert kind != "text" or 0 < len(request.text.text) <= TTS_CONFIG.max_chunk_chars


def fuzz_tts(data: bytes) -> None:
    _check_stream(data, tts_pb2.SynthesizeRequest, _tts)


# --- Moshi Converse -----------------------------------------------------------------------------

async def _moshi(requests: AsyncIterator[moshi_pb2.ConverseRequest]) -> None:
    check_config(await first_message(requests, "config"), MOSHI_CONFIG)
    async for request in requests:
        audio = moshi_frame_audio(request)
        _check_pcm(audio, FRAME_SAMPLES)
        assert audio.size == FRAME_SAMPLES


def fuzz_moshi(data: bytes) -> None:
    _check_stream(data, moshi_pb2.ConverseRequest, _moshi)
