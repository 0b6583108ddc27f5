"""One request builder per stage: the only place a stage's request messages are made.

Used by the client helpers (services/common/clients.py) and the edge's stage streams
(services/edge/streams/), so both speak each stage's protocol the same way. Audio is PCM s16le
bytes, as on the wire.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from services.proto import asr_pb2, common_pb2, llm_pb2, moshi_pb2, tts_pb2

MOSHI_RATE = 24_000  # the duplex stage's only rate
MOSHI_FRAME = 1920  # samples per 80 ms duplex frame


class Recognize:
    """SpeechRecognition.Recognize requests."""

    @staticmethod
    def config(sample_rate: int, *, min_silence_ms: int = 0, progress_interval_ms: int = 0,
               pause_ms: int = 0) -> asr_pb2.RecognizeRequest:
        return asr_pb2.RecognizeRequest(config=asr_pb2.RecognitionConfig(
            sample_rate_hz=sample_rate, min_silence_ms=min_silence_ms, progress_interval_ms=progress_interval_ms,
            pause_ms=pause_ms))

    @staticmethod
    def audio(pcm: bytes) -> asr_pb2.RecognizeRequest:
        return asr_pb2.RecognizeRequest(audio=common_pb2.AudioChunk(pcm=pcm))


class Generate:
    """LanguageModel.Generate requests."""

    @staticmethod
    def request(messages: Iterable[tuple[str, str] | Any], *, request_id: str = "", tools_json: str = "",
                **sampling) -> llm_pb2.GenerateRequest:
        """`messages`: (role, content) pairs, or objects with role, content, tool_call_id and
        tool_calls (llm_pb2.ToolCall) such as the edge's history messages."""
        return llm_pb2.GenerateRequest(messages=[Generate.message(m) for m in messages],
                                       sampling=llm_pb2.SamplingParams(**sampling), request_id=request_id,
                                       tools_json=tools_json)

    @staticmethod
    def message(message: tuple[str, str] | Any) -> llm_pb2.ChatMessage:
        if isinstance(message, tuple):
            role, content = message
            return llm_pb2.ChatMessage(role=role, content=content)
        return llm_pb2.ChatMessage(role=message.role, content=message.content, tool_call_id=message.tool_call_id,
                                   tool_calls=list(message.tool_calls))


class Synthesize:
    """SpeechSynthesis.Synthesize requests."""

    @staticmethod
    def config(*, voice: str = "", sample_rate: int = 0, speed: float = 0.0) -> tts_pb2.SynthesizeRequest:
        return tts_pb2.SynthesizeRequest(config=tts_pb2.SynthesisConfig(voice=voice, sample_rate_hz=sample_rate,
                                                                         speed=speed))

    @staticmethod
    def text(text: str) -> tts_pb2.SynthesizeRequest:
        return tts_pb2.SynthesizeRequest(text=tts_pb2.TextChunk(text=text))

    @staticmethod
    def flush() -> tts_pb2.SynthesizeRequest:
        return tts_pb2.SynthesizeRequest(flush=common_pb2.Flush())

    @staticmethod
    def end() -> tts_pb2.SynthesizeRequest:
        return tts_pb2.SynthesizeRequest(end=tts_pb2.EndOfInput())


class Converse:
    """DuplexSpeech.Converse requests."""

    @staticmethod
    def config(sample_rate: int = MOSHI_RATE) -> moshi_pb2.ConverseRequest:
        return moshi_pb2.ConverseRequest(config=moshi_pb2.DuplexConfig(sample_rate_hz=sample_rate))

    @staticmethod
    def frame(pcm: bytes, index: int) -> moshi_pb2.ConverseRequest:
        return moshi_pb2.ConverseRequest(audio=moshi_pb2.AudioFrame(pcm=pcm, index=index))
