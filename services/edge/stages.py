"""The edge's view of the stage services: one ASR stream per call, one LLM RPC and one TTS
stream per agent turn, all through Serve's gRPC proxy on a channel shared by the replica.

`metadata` is extra gRPC metadata for one call: the W3C `traceparent` the stage continues."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc

from services.common.audio import float_to_pcm16
from services.common.clients import RequestStream, open_channel
from services.common.rpc import stage_metadata
from services.edge.config import StagesConfig
from services.proto import (asr_pb2, asr_pb2_grpc, common_pb2, llm_pb2, llm_pb2_grpc, moshi_pb2, moshi_pb2_grpc,
                            tts_pb2, tts_pb2_grpc)

# The ASR stream reports its progress this often (in audio): how the edge tells a quiet caller
# from a stalled stream.
ASR_PROGRESS_MS = 500


class BidiCall:
    """A bidi RPC whose requests are pushed one by one; iterate it for the responses."""

    def __init__(self, method, first_request, application: str, metadata: Sequence[tuple[str, str]] = ()):
        self.requests = RequestStream(first_request)
        self.call = method(self.requests, metadata=stage_metadata(application, *metadata))

    def __aiter__(self) -> AsyncIterator:
        return self.call.__aiter__()

    def close(self) -> None:
        self.requests.close()

    def cancel(self) -> None:
        self.call.cancel()


class StageClients:
    def __init__(self, config: StagesConfig, channel: grpc.aio.Channel | None = None):
        self.config = config
        self.channel = channel or open_channel(config.grpc_address)
        self._asr = asr_pb2_grpc.SpeechRecognitionStub(self.channel)
        self._llm = llm_pb2_grpc.LanguageModelStub(self.channel)
        self._tts = tts_pb2_grpc.SpeechSynthesisStub(self.channel)
        self._moshi = moshi_pb2_grpc.DuplexSpeechStub(self.channel)

    def recognize(self, sample_rate: int, min_silence_ms: int, metadata: Sequence[tuple[str, str]] = ()) -> BidiCall:
        config = asr_pb2.RecognitionConfig(sample_rate_hz=sample_rate, min_silence_ms=min_silence_ms,
                                           progress_interval_ms=ASR_PROGRESS_MS)
        return BidiCall(self._asr.Recognize, asr_pb2.RecognizeRequest(config=config), self.config.asr_application,
                        metadata)

    @staticmethod
    def audio(call: BidiCall, audio) -> None:
        call.requests.put(asr_pb2.RecognizeRequest(audio=common_pb2.AudioChunk(pcm=float_to_pcm16(audio))))

    def generate(self, messages: list[tuple[str, str]], *, temperature: float, max_tokens: int, request_id: str,
                 metadata: Sequence[tuple[str, str]] = ()):
        request = llm_pb2.GenerateRequest(
            messages=[llm_pb2.ChatMessage(role=role, content=content) for role, content in messages],
            sampling=llm_pb2.SamplingParams(temperature=temperature, max_tokens=max_tokens),
            request_id=request_id,
        )
        return self._llm.Generate(request, metadata=stage_metadata(self.config.llm_application, *metadata))

    def synthesize(self, voice: str, sample_rate: int, metadata: Sequence[tuple[str, str]] = ()) -> BidiCall:
        config = tts_pb2.SynthesisConfig(voice=voice, sample_rate_hz=sample_rate)
        return BidiCall(self._tts.Synthesize, tts_pb2.SynthesizeRequest(config=config), self.config.tts_application,
                        metadata)

    @staticmethod
    def text(call: BidiCall, text: str) -> None:
        call.requests.put(tts_pb2.SynthesizeRequest(text=tts_pb2.TextChunk(text=text)))

    @staticmethod
    def flush(call: BidiCall) -> None:
        call.requests.put(tts_pb2.SynthesizeRequest(flush=common_pb2.Flush()))

    def converse(self, metadata: Sequence[tuple[str, str]] = ()) -> BidiCall:
        """The duplex stream of one call (24 kHz, 80 ms frames both ways)."""
        config = moshi_pb2.DuplexConfig(sample_rate_hz=24_000)
        return BidiCall(self._moshi.Converse, moshi_pb2.ConverseRequest(config=config),
                        self.config.moshi_application, metadata)

    @staticmethod
    def duplex_frame(call: BidiCall, frame, index: int) -> None:
        call.requests.put(moshi_pb2.ConverseRequest(audio=moshi_pb2.AudioFrame(pcm=float_to_pcm16(frame), index=index)))

    async def close(self) -> None:
        await self.channel.close()
