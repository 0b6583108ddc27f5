"""Stage streams that survive a broken RPC, against a real gRPC server in this process whose
servicers break the first stream on purpose (a replica dying is the same thing on the wire:
the stream ends with UNAVAILABLE/INTERNAL). The fault injection on a real cluster is in
tests/integration/test_edge_faults.py."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from services.common.audio import float_to_pcm16, pcm16_to_float
from services.edge.config import ResilienceConfig, SpeechGateConfig, StagesConfig
from services.edge.streams.asr import AsrStream
from services.edge.streams.base import StageClients, StageUnavailable
from services.edge.streams.llm import reply_deltas
from services.edge.streams.tts import TtsStream
from services.proto import asr_pb2, asr_pb2_grpc, llm_pb2, llm_pb2_grpc, tts_pb2, tts_pb2_grpc

FAST = ResilienceConfig(retry_attempts=2, retry_backoff_ms=10, response_timeout_s=1.0, stall_timeout_s=1.0)
RATE = 16000


class Recognizer(asr_pb2_grpc.SpeechRecognitionServicer):
    """A stand-in VAD: speech is non-zero audio. Says where speech started (in its own stream's
    time), reports progress as asked, and ends the utterance after 0.8 s of speech.

    The first stream fails after 0.4 s of speech: it dies (`fault="die"`), stops answering
    (`"stall"`), or, with `"no_final"`, says speech stopped and never gives the final. With `lag_s`
    the first stream runs behind the caller (it takes that long over each message before reading
    it), as a loaded replica does: it says speech started well after the caller's audio has moved on."""

    def __init__(self, fault: str = "die", lag_s: float = 0.0):
        self.fault, self.lag_s = fault, lag_s
        self.streams: list[float] = []  # audio seconds each stream received
        self.speech: list[float] = []  # speech seconds each stream received

    async def Recognize(self, requests, context):
        self.streams.append(0.0)
        self.speech.append(0.0)
        first, progress_s, reported = len(self.streams) == 1, 0.0, 0.0
        async for request in requests:
            kind = request.WhichOneof("request")
            if kind == "config":
                progress_s = request.config.progress_interval_ms / 1000
            if kind != "audio":
                continue
            if first and self.lag_s:
                await asyncio.sleep(self.lag_s)
            audio = pcm16_to_float(request.audio.pcm)
            if np.abs(audio).max() > 0:
                if self.speech[-1] == 0:
                    yield asr_pb2.RecognizeResponse(speech_started=asr_pb2.SpeechStarted(
                        utterance_id=0, audio_offset_s=self.streams[-1]))
                self.speech[-1] += audio.size / RATE
            self.streams[-1] += audio.size / RATE
            if first and self.speech[-1] >= 0.4:
                if self.fault == "die":
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "replica died")
                if self.fault == "no_final":
                    yield asr_pb2.RecognizeResponse(speech_stopped=asr_pb2.SpeechStopped(utterance_id=0))
                await asyncio.sleep(30)  # says nothing more
            if progress_s and self.streams[-1] - reported >= progress_s:
                reported = self.streams[-1]
                yield asr_pb2.RecognizeResponse(progress=asr_pb2.Progress(audio_s=reported))
            if self.speech[-1] >= 0.8:
                yield asr_pb2.RecognizeResponse(final=asr_pb2.Transcript(utterance_id=0, text="hello"))
                return


class Model(llm_pb2_grpc.LanguageModelServicer):
    """Greedy and deterministic: the reply is always the same words. The first call dies after two
    (`fault="die"`) or goes quiet after two (`"stall"`); with `"silent"` no call ever answers."""

    WORDS = ["One ", "two ", "three ", "four."]

    def __init__(self, fault: str = "die"):
        self.calls, self.fault = 0, fault

    async def Generate(self, request, context):
        self.calls += 1
        if self.fault == "silent":
            await asyncio.sleep(30)
        for index, word in enumerate(self.WORDS):
            if self.calls == 1 and index == 2:
                if self.fault == "die":
                    await context.abort(grpc.StatusCode.INTERNAL, "engine crashed")
                await asyncio.sleep(30)
            yield llm_pb2.GenerateResponse(delta=llm_pb2.TextDelta(text=word))
        yield llm_pb2.GenerateResponse(done=llm_pb2.GenerationDone())


class Synthesizer(tts_pb2_grpc.SpeechSynthesisServicer):
    """Each segment is 0.3 s of a ramp, in three chunks. The first stream dies after 4 chunks
    (`fault="die"`) or goes quiet after them (`"stall"`); `None`: no fault."""

    def __init__(self, fault: str | None = "die"):
        self.streams, self.fault = 0, fault

    async def Synthesize(self, requests, context):
        self.streams += 1
        sent, segment_id = 0, 0
        async for request in requests:
            if request.WhichOneof("request") != "text":
                continue
            audio = np.linspace(-0.5, 0.5, int(0.3 * RATE), dtype=np.float32) * (segment_id + 1) / 4
            for index, part in enumerate(np.array_split(audio, 3)):
                if self.fault and self.streams == 1 and sent == 4:
                    if self.fault == "die":
                        await context.abort(grpc.StatusCode.UNAVAILABLE, "replica died")
                    await asyncio.sleep(30)
                sent += 1
                yield tts_pb2.SynthesizeResponse(audio=tts_pb2.SpeechAudio(
                    pcm=float_to_pcm16(part), sample_rate_hz=RATE, text=request.text.text, segment_id=segment_id,
                    segment_end=index == 2))
            segment_id += 1


@pytest.fixture
async def stage(request):
    servicers = request.param
    server = grpc.aio.server()
    for servicer in servicers:
        adder = {Recognizer: asr_pb2_grpc.add_SpeechRecognitionServicer_to_server,
                 Model: llm_pb2_grpc.add_LanguageModelServicer_to_server,
                 Synthesizer: tts_pb2_grpc.add_SpeechSynthesisServicer_to_server}[type(servicer)]
        adder(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    clients = StageClients(StagesConfig(grpc_address=f"127.0.0.1:{port}"))
    yield clients, servicers[0]
    await clients.close()
    await server.stop(None)


async def speak_until_final(asr: AsrStream, frames: int) -> list:
    """100 ms caller frames in real time (1 s of silence, then speech) until the stream's final
    or `frames` of them; the stream's events up to the final."""
    events = []

    async def read():
        async for event in asr.events():
            events.append(event)
            if event.WhichOneof("event") == "final":
                return

    reader = asyncio.create_task(read())
    for index in range(frames):
        if reader.done():
            break
        asr.send(float_to_pcm16(np.full(RATE // 10, 0.0 if index < 10 else 0.1, np.float32)))
        await asyncio.sleep(0.1)
    await asyncio.wait_for(reader, 5)
    asr.cancel()
    return events


@pytest.mark.parametrize(("stage", "gate"), [([Recognizer(fault)], gate) for gate in (None, SpeechGateConfig())
                                             for fault in ("die", "stall", "no_final")],
                         indirect=["stage"], ids=[f"{gate}-{fault}" for gate in ("ungated", "gated")
                                                  for fault in ("died", "stalled", "final-overdue")])
async def test_asr_replays_the_unfinished_utterance_on_a_new_stream(stage, gate):
    clients, servicer = stage
    asr = AsrStream(clients, RATE, 300, FAST, gate=gate)
    events = await speak_until_final(asr, frames=30)
    assert len(servicer.streams) == 2 and asr.retries == 1
    # The second stream heard the utterance from its start, not only what came after the failure.
    assert servicer.speech[1] >= 0.8 and servicer.streams[1] - servicer.speech[1] <= FAST.asr_preroll_s + 0.11
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-1] == "final" and events[-1].final.text == "hello"
    starts = [e.speech_started.audio_offset_s for e in events if e.WhichOneof("event") == "speech_started"]
    # Each stream saw speech start at a different time of its own; shifted, both are the caller's 1.0 s.
    assert starts == [pytest.approx(1.0), pytest.approx(1.0)]


@pytest.mark.parametrize("stage", [[Recognizer("die", lag_s=0.4)]], indirect=True)
async def test_asr_running_behind_still_gets_the_utterance_from_its_onset_on_a_new_stream(stage):
    # The gate sends nothing until speech, then the first stream takes 400 ms over each message: it
    # says speech started (at the caller's 1.0 s) when the caller is about 1.8 s in, more than the
    # replay pre-roll later.
    clients, servicer = stage
    asr = AsrStream(clients, RATE, 300, ResilienceConfig(retry_attempts=2, retry_backoff_ms=10, response_timeout_s=3.0,
                                                         stall_timeout_s=3.0), gate=SpeechGateConfig())
    events = await speak_until_final(asr, frames=40)
    assert len(servicer.streams) == 2 and asr.retries == 1
    starts = [e.speech_started.audio_offset_s for e in events if e.WhichOneof("event") == "speech_started"]
    # Had the replay been cut to the last pre-roll when the late onset arrived, the new stream's
    # speech would start after the caller's 1.0 s.
    assert starts == [pytest.approx(1.0), pytest.approx(1.0)]


@pytest.mark.parametrize("stage", [[Model("die")], [Model("stall")]], indirect=True, ids=["died", "stalled"])
async def test_llm_request_goes_again_and_the_caller_hears_each_word_once(stage):
    clients, servicer = stage
    text = [d async for d in reply_deltas(
        clients, [("user", "count")], temperature=0.0, max_tokens=8, request_id="r", config=FAST)]
    assert "".join(text) == "".join(Model.WORDS)
    assert servicer.calls == 2


@pytest.mark.parametrize("stage", [[Model("silent")]], indirect=True)
async def test_a_silent_llm_is_given_up_after_one_retry(stage):
    clients, servicer = stage
    started = asyncio.get_running_loop().time()
    with pytest.raises(StageUnavailable) as error:
        [d async for d in reply_deltas(
        clients, [("user", "hi")], temperature=0.0, max_tokens=8, request_id="r", config=FAST)]
    waited = asyncio.get_running_loop().time() - started
    assert error.value.stage == "llm" and "no answer" in error.value.cause
    # Retries are left (retry_attempts), but a deadline already cost a whole timeout of silence.
    assert FAST.retry_attempts > FAST.timeout_retries
    assert servicer.calls == FAST.timeout_retries + 1
    deadlines = FAST.timeout_retries + 1
    assert deadlines * FAST.response_timeout_s <= waited < (deadlines + 0.5) * FAST.response_timeout_s


@pytest.mark.parametrize("stage", [[Synthesizer("die")], [Synthesizer("stall")]], indirect=True,
                         ids=["died", "stalled"])
async def test_tts_resends_the_turn_and_skips_audio_already_received(stage):
    clients, servicer = stage
    tts = TtsStream(clients, "", RATE, FAST)
    tts.send("First.")
    tts.send("Second.")
    tts.close()
    audio: dict[int, list[np.ndarray]] = {}
    async for chunk in tts.audio():
        audio.setdefault(chunk.segment_id, []).append(pcm16_to_float(chunk.pcm))
    assert servicer.streams == 2
    for segment_id, parts in audio.items():
        expected = np.linspace(-0.5, 0.5, int(0.3 * RATE), dtype=np.float32) * (segment_id + 1) / 4
        # Exactly the segment, once: no sample lost, none repeated across the re-open.
        np.testing.assert_allclose(np.concatenate(parts), expected, atol=1 / 32768 * 2)
    assert sorted(audio) == [0, 1]


@pytest.mark.parametrize("stage", [[Synthesizer(None)]], indirect=True)
async def test_tts_that_said_all_it_was_given_may_be_quiet_while_the_reply_is_written(stage):
    clients, servicer = stage
    tts = TtsStream(clients, "", RATE, FAST)
    chunks = []

    async def read():
        async for chunk in tts.audio():
            chunks.append(chunk)

    reader = asyncio.create_task(read())
    tts.send("First.")
    await asyncio.sleep(FAST.response_timeout_s * 2.5)  # a slow LLM: the next sentence comes late
    tts.send("Second.")
    tts.close()
    await asyncio.wait_for(reader, 5)
    assert servicer.streams == 1  # no deadline was missed: nothing was owed
    assert sorted({chunk.segment_id for chunk in chunks}) == [0, 1]


@pytest.mark.parametrize("stage", [[Recognizer()]], indirect=True)
async def test_asr_is_not_reopened_while_the_caller_is_quiet(stage):
    clients, servicer = stage
    asr = AsrStream(clients, RATE, 300, FAST)
    reader = asyncio.create_task(anext(asr.events()))
    for _ in range(30):  # 3 s of silence in real time: only progress comes back
        asr.send(bytes(RATE // 10 * 2))
        await asyncio.sleep(0.1)
    await asyncio.sleep(FAST.stall_timeout_s * 1.5)  # and then no audio at all (a muted client)
    assert not reader.done() and asr.retries == 0 and len(servicer.streams) == 1
    reader.cancel()
    asr.cancel()
