"""In-process stand-ins for a call's surroundings: a transport that records what the caller gets,
and stage services on a real gRPC server in this process, scripted by the test (no Ray)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import numpy as np

from services.common.audio import float_to_pcm16
from services.edge.config import EdgeConfig, PersonaConfig
from services.edge.streams.base import StageClients
from services.edge.transport import CallerHungUp, Transport
from services.proto import (
    asr_pb2,
    asr_pb2_grpc,
    common_pb2,
    llm_pb2,
    llm_pb2_grpc,
    moshi_pb2,
    moshi_pb2_grpc,
    tts_pb2,
    tts_pb2_grpc,
)

RATE = 16_000
WORD_S = 0.2  # each word the fake TTS speaks lasts this long


class FakeTransport(Transport):
    """Caller audio from a queue; agent audio and events recorded with their send times."""

    def __init__(self, rate: int = RATE, claims: dict | None = None, greeting: bool = True):
        self.input_sample_rate = self.output_sample_rate = rate
        self.claims = claims or {}
        self.wants_greeting = greeting
        self.audio_in: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.frames: list[tuple[float, bytes]] = []
        self.events: list[dict[str, Any]] = []
        self.clears = 0

    async def receive_audio(self) -> bytes:
        pcm = await self.audio_in.get()
        if pcm is None:
            raise CallerHungUp()
        return pcm

    async def send_audio(self, frame: bytes) -> None:
        self.frames.append((time.monotonic(), frame))

    async def send_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    async def clear_audio(self) -> None:
        self.clears += 1

    def of_type(self, kind: str) -> list[dict]:
        return [event for event in self.events if event["type"] == kind]

    async def speak(self, seconds: float, level: float = 0.1, frame_ms: int = 20) -> None:
        """Stream caller audio in real time."""
        step = self.input_sample_rate * frame_ms // 1000
        for _ in range(int(seconds * 1000 / frame_ms)):
            self.audio_in.put_nowait(float_to_pcm16(np.full(step, level, np.float32)))
            await asyncio.sleep(frame_ms / 1000)


async def _drain(requests) -> None:
    """Read a request stream to its end (stand-ins that answer whatever they are sent)."""
    async for _ in requests:
        pass


class Recognizer(asr_pb2_grpc.SpeechRecognitionServicer):
    """Says what the test puts in `script` (RecognizeResponse messages), whatever the audio."""

    def __init__(self):
        self.script: asyncio.Queue = asyncio.Queue()
        self.configs: list[asr_pb2.RecognitionConfig] = []  # each stream's first message

    async def Recognize(self, requests, context):
        reader = asyncio.create_task(self._read(requests))
        try:
            while True:
                yield await self.script.get()
        finally:
            reader.cancel()

    async def _read(self, requests) -> None:
        async for request in requests:
            if request.WhichOneof("request") == "config":
                self.configs.append(request.config)

    def user_says(self, text: str, utterance_id: int = 0) -> None:
        for event in (asr_pb2.RecognizeResponse(speech_started=asr_pb2.SpeechStarted(utterance_id=utterance_id)),
                      asr_pb2.RecognizeResponse(speech_stopped=asr_pb2.SpeechStopped(utterance_id=utterance_id)),
                      asr_pb2.RecognizeResponse(final=asr_pb2.Transcript(utterance_id=utterance_id, text=text))):
            self.script.put_nowait(event)


class Model(llm_pb2_grpc.LanguageModelServicer):
    """Answers with `reply`, one word every `delay_s`."""

    def __init__(self, reply: str = "Sure thing.", delay_s: float = 0.0):
        self.reply, self.delay_s, self.requests = reply, delay_s, []
        self.cancelled = 0  # generations stopped by the client cancelling the RPC (an engine abort)

    async def Generate(self, request, context):
        self.requests.append(request)
        try:
            for word in self.reply.split():
                await asyncio.sleep(self.delay_s)
                yield llm_pb2.GenerateResponse(delta=llm_pb2.TextDelta(text=word + " "))
            yield llm_pb2.GenerateResponse(done=llm_pb2.GenerationDone())
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


class EngineModel(llm_pb2_grpc.LanguageModelServicer):
    """A real LLM engine behind the LLM stage's own request checks and wire conversion."""

    def __init__(self, engine):
        self.engine = engine
        self.metadata: list[dict[str, str]] = []  # each request's gRPC metadata

    async def Generate(self, request, context):
        self.metadata.append(dict(context.invocation_metadata()))
        from services.llm.config import LLMConfig
        from services.llm.deployment import FINISH_REASONS, to_chat_request, tool_call_delta
        from services.llm.engine import Delta, ToolCall

        async for item in self.engine.generate(to_chat_request(request, LLMConfig())):
            if isinstance(item, ToolCall):
                yield tool_call_delta(item)
            elif isinstance(item, Delta):
                yield llm_pb2.GenerateResponse(delta=llm_pb2.TextDelta(text=item.text, tokens=item.tokens))
            else:
                yield llm_pb2.GenerateResponse(done=llm_pb2.GenerationDone(finish_reason=FINISH_REASONS[item.reason]))


class Synthesizer(tts_pb2_grpc.SpeechSynthesisServicer):
    """Each segment: WORD_S of tone per word, in one chunk with word timings, after `delay_s`."""

    def __init__(self, delay_s: float = 0.0):
        self.delay_s, self.voices = delay_s, []
        self.texts: list[str] = []  # every segment asked for
        self.ended = 0  # streams torn down (the client closed or cancelled them)

    async def Synthesize(self, requests, context):
        try:
            async for response in self._synthesize(requests):
                yield response
        finally:
            self.ended += 1

    async def _synthesize(self, requests):
        segment_id, rate = 0, RATE
        async for request in requests:
            kind = request.WhichOneof("request")
            if kind == "config":
                self.voices.append(request.config.voice)
                rate = request.config.sample_rate_hz or RATE
            if kind != "text":
                continue
            self.texts.append(request.text.text)
            await asyncio.sleep(self.delay_s)
            words = request.text.text.split()
            audio = 0.3 * np.sin(np.arange(int(len(words) * WORD_S * rate)) / 5.0)
            timings = [common_pb2.WordTiming(word=w, start_s=i * WORD_S) for i, w in enumerate(words)]
            yield tts_pb2.SynthesizeResponse(audio=tts_pb2.SpeechAudio(
                pcm=float_to_pcm16(audio), sample_rate_hz=rate, text=request.text.text, segment_id=segment_id,
                segment_end=True, words=timings))
            segment_id += 1


class Duplex(moshi_pb2_grpc.DuplexSpeechServicer):
    """One 80 ms frame of tone per tick and a text piece every tick; a pause of `stall_s` after tick 10."""

    def __init__(self, stall_s: float = 0.0):
        self.stall_s = stall_s

    async def Converse(self, requests, context):
        reader = asyncio.create_task(_drain(requests))
        try:
            yield moshi_pb2.ConverseResponse(started=moshi_pb2.SessionStarted(frame_samples=1920, sample_rate_hz=24000))
            frame = float_to_pcm16(0.3 * np.sin(np.arange(1920) / 5.0))
            started = time.monotonic()
            for index in range(10_000):
                await asyncio.sleep(max(0.0, started + index * 0.08 - time.monotonic()))
                if index == 10 and self.stall_s:
                    await asyncio.sleep(self.stall_s)
                    started += self.stall_s
                yield moshi_pb2.ConverseResponse(audio=moshi_pb2.AudioFrame(pcm=frame, index=index))
                yield moshi_pb2.ConverseResponse(text=moshi_pb2.TextToken(text=" hi", frame_index=index))
        finally:
            reader.cancel()


ADDERS = {Recognizer: asr_pb2_grpc.add_SpeechRecognitionServicer_to_server,
          Model: llm_pb2_grpc.add_LanguageModelServicer_to_server,
          EngineModel: llm_pb2_grpc.add_LanguageModelServicer_to_server,
          Synthesizer: tts_pb2_grpc.add_SpeechSynthesisServicer_to_server,
          Duplex: moshi_pb2_grpc.add_DuplexSpeechServicer_to_server}


class Stages:
    """A gRPC server in this process with the given stand-ins; `clients` reach it."""

    def __init__(self, *servicers):
        self.servicers = {type(servicer): servicer for servicer in servicers}

    async def __aenter__(self) -> Stages:
        from services.edge.config import StagesConfig

        self.server = grpc.aio.server()
        for servicer in self.servicers.values():
            ADDERS[type(servicer)](servicer, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.clients = StageClients(StagesConfig(grpc_address=f"127.0.0.1:{port}"))
        return self

    async def __aexit__(self, *exc) -> None:
        await self.clients.close()
        await self.server.stop(None)


def edge_config(tools_config: dict | None = None, **persona) -> EdgeConfig:
    """Fast settings for in-process calls: no fallback line, short timeouts."""
    return EdgeConfig(persona=PersonaConfig(**persona), resilience={"fallback_text": "", "response_timeout_s": 3.0},
                      tools=tools_config or {})



async def run_call(call, transport: FakeTransport, script, seconds: float) -> None:
    """Run the call, play `script` against it, wait `seconds`, then hang up."""
    task = asyncio.create_task(call.run())
    try:
        await script()
        await asyncio.sleep(seconds)
    finally:
        transport.audio_in.put_nowait(None)
        await asyncio.wait_for(task, 5)


def script_asr(asr: Recognizer, call, kind: str, text: str = "", utterance_id: int = 0,
               stopped_after_s: float = 0.0) -> None:
    """Script one ASR event at the call's current stream offset (`speech_stopped` dated
    `stopped_after_s` back: the silence the VAD heard before deciding; so is a `pause`)."""
    offset = call.asr.sent_s
    if kind in ("speech_started", "speech_resumed"):
        event = asr_pb2.RecognizeResponse(**{kind: {"utterance_id": utterance_id, "audio_offset_s": offset}})
    elif kind == "speech_stopped":
        event = asr_pb2.RecognizeResponse(speech_stopped=asr_pb2.SpeechStopped(
            utterance_id=utterance_id, audio_offset_s=offset - stopped_after_s))
    elif kind == "pause":  # the utterance so far, decoded at a pause inside it
        event = asr_pb2.RecognizeResponse(pause=asr_pb2.Pause(
            transcript=asr_pb2.Transcript(utterance_id=utterance_id, text=text, language="en"),
            speech_end_s=offset - stopped_after_s))
    else:
        event = asr_pb2.RecognizeResponse(**{kind: asr_pb2.Transcript(utterance_id=utterance_id, text=text,
                                                                       language="en")})
    asr.script.put_nowait(event)
