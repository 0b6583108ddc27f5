"""The speech framer: mid-utterance caller speech joined into fewer ASR messages, a pause sent at
once, and nothing held while the agent speaks; in process, through a real gRPC stream."""

from __future__ import annotations

import asyncio

import pytest

from services.edge.config import ResilienceConfig, StagesConfig
from services.edge.streams.asr import AsrStream
from services.edge.streams.speech_framer import SpeechFramer
from services.proto import asr_pb2
from tests.unit.edge.fakes import Recognizer, Stages
from tests.unit.edge.test_speech_gate import FRAME_S, RATE, frame

LOUD, QUIET = 0.1, 10 ** (-60 / 20)
FRAME_BYTES = len(frame(0.0))


def push_all(framer: SpeechFramer, levels: list[float], hold: bool = True) -> list[list[tuple[float, bytes]]]:
    return [framer.push([(index * FRAME_S, frame(level))], hold) for index, level in enumerate(levels)]


def test_mid_utterance_speech_goes_in_messages_of_up_to_the_limit():
    sent = push_all(SpeechFramer(120, -40.0, RATE), [LOUD] * 9)
    assert [len(chunks) for chunks in sent] == [0, 0, 1] * 3
    assert [(offset, len(pcm)) for chunks in sent for offset, pcm in chunks] == [
        (pytest.approx(0.0), 3 * FRAME_BYTES), (pytest.approx(0.12), 3 * FRAME_BYTES), (pytest.approx(0.24), 3 * FRAME_BYTES)]


def test_a_quiet_frame_goes_at_once_with_what_was_held():
    sent = push_all(SpeechFramer(200, -40.0, RATE), [LOUD, LOUD, QUIET, QUIET, LOUD])
    assert sent[:2] == [[], []]
    (offset, pcm), = sent[2]  # the pause is not kept waiting: it leaves with the held speech
    assert offset == pytest.approx(0.0) and len(pcm) == 3 * FRAME_BYTES
    assert sent[3] == [(pytest.approx(3 * FRAME_S), frame(QUIET))] and sent[4] == []


def test_nothing_is_held_outside_an_utterance_or_while_the_agent_speaks():
    framer = SpeechFramer(120, -40.0, RATE)
    assert all(len(chunks) == 1 for chunks in push_all(framer, [LOUD] * 4, hold=False))
    framer.push([(0.0, frame(LOUD))], hold=True)
    assert framer.push([], hold=False) == [(0.0, frame(LOUD))]  # held speech leaves when holding ends
    assert framer.push([], hold=True) == []


def test_the_limit_is_checked_against_the_frame_size():
    assert StagesConfig(asr_speech_frame_ms=0).asr_speech_frame_ms == 0
    with pytest.raises(ValueError, match="asr_speech_frame_ms"):
        StagesConfig(asr_frame_ms=100, asr_speech_frame_ms=60)


async def _messages_for_speech(urgent: bool, framer: SpeechFramer | None) -> tuple[int, float]:
    """Audio messages the recognizer got for 1.2 s of speech mid-utterance, then 200 ms of pause;
    and how long after the first quiet frame was sent its audio arrived."""
    asr = Recognizer()
    async with Stages(asr) as stages:
        stream = AsrStream(stages.clients, RATE, 300, ResilienceConfig(), framer=framer)
        events = asyncio.create_task(anext(stream.events()))
        asr.script.put_nowait(asr_pb2.RecognizeResponse(speech_started=asr_pb2.SpeechStarted(utterance_id=0)))
        await events  # the stream now knows the caller is mid-utterance
        for _ in range(30):
            stream.send(frame(LOUD), urgent=urgent)
        await asyncio.sleep(0.2)
        speech_messages = len(asr.audio)
        quiet_sent = asyncio.get_running_loop().time()
        stream.send(frame(QUIET), urgent=urgent)
        while len(asr.audio) == speech_messages:  # the pause must not wait for more audio
            assert asyncio.get_running_loop().time() - quiet_sent < 2.0, "the quiet frame was held"
            await asyncio.sleep(0.005)
        latency = asyncio.get_running_loop().time() - quiet_sent
        stream.cancel()
    return speech_messages, latency


async def test_a_stream_sends_a_third_of_the_messages_mid_utterance_and_every_frame_while_the_agent_speaks():
    framer = SpeechFramer(120, -40.0, RATE)
    joined, joined_latency = await _messages_for_speech(urgent=False, framer=framer)
    assert joined == 10 and joined_latency < 0.5
    every_frame, _ = await _messages_for_speech(urgent=True, framer=SpeechFramer(120, -40.0, RATE))
    without, _ = await _messages_for_speech(urgent=False, framer=None)
    assert every_frame == without == 30
