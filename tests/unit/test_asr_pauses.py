"""Pause decodes in a recognition stream (asr.proto `pause_ms`): the utterance so far is decoded
at a short pause inside it, dropped if the caller went on before the decode ended, and reused
by the utterance's final when nothing was said after it. In process: the real session, segmenter
and Silero VAD on real (synthesized) speech, and an engine that says how much audio it heard."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from services.asr.config import ASRConfig
from services.asr.engine import ASREngine, DecodeOptions, Transcription
from services.asr.session import RecognitionSession, StreamSettings
from services.common.audio import float_to_pcm16, read_wav
from services.common.requests import Recognize
from services.common.rpc import StageError
from services.common.workers import EngineWorker
from services.proto import asr_pb2
from tests.unit.test_asr_vad_segmenter import DATA

SR = 16_000
CHUNK = SR * 40 // 1000


class MeasuringEngine(ASREngine):
    """Answers the number of samples it was given; the first decode may be held up."""

    def __init__(self, first_decode_s: float = 0.0):
        self.calls: list[tuple[int, DecodeOptions]] = []
        self._first_decode_s = first_decode_s
        self._lock = threading.Lock()

    def transcribe(self, audio: np.ndarray, options: DecodeOptions) -> Transcription:
        with self._lock:
            self.calls.append((audio.size, options))
            first = len(self.calls) == 1
        if first and self._first_decode_s:
            time.sleep(self._first_decode_s)
        return Transcription(text=f"samples {audio.size}", language="en")


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    audio, rate = read_wav(DATA / "hello.wav")
    assert rate == SR
    loud = np.flatnonzero(np.abs(audio) > 0.01)
    return audio[loud[0]:loud[-1] + 1]


async def recognize(engine: ASREngine, audio: np.ndarray, pause_ms: int) -> list[asr_pb2.RecognizeResponse]:
    config = Recognize.config(SR, min_silence_ms=300, pause_ms=pause_ms)
    config.config.partial_interval_ms = -1  # no partials: every decode here is a pause's or a final's

    async def requests():
        yield config
        pcm = float_to_pcm16(audio)
        for start in range(0, len(pcm), CHUNK * 2):
            yield Recognize.audio(pcm[start:start + CHUNK * 2])
            await asyncio.sleep(0.01)  # a decode due now ends before much more audio comes

    worker = EngineWorker()
    try:
        return [event async for event in RecognitionSession(engine, worker, ASRConfig()).run(requests())]
    finally:
        worker.close()


def of_kind(events, kind: str) -> list:
    return [getattr(event, kind) for event in events if event.WhichOneof("event") == kind]


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), np.float32)


async def test_a_final_with_nothing_said_after_the_pause_reuses_the_pause_decode(speech):
    engine = MeasuringEngine()
    events = await recognize(engine, np.concatenate([silence(0.5), speech, silence(1.0)]), pause_ms=64)
    kinds = [event.WhichOneof("event") for event in events]
    # The phrase's comma is a pause too (the caller went on); its last pause is the end of it.
    assert kinds[0] == "speech_started" and kinds[-4:] == ["pause", "speech_stopped", "final", "summary"]
    pauses, [final], [stopped] = of_kind(events, "pause"), of_kind(events, "final"), of_kind(events, "speech_stopped")
    assert final.text == pauses[-1].transcript.text and final.decode_s == 0.0
    assert final.start_s == pauses[-1].transcript.start_s and final.end_s > pauses[-1].transcript.end_s
    assert pauses[-1].speech_end_s == pytest.approx(stopped.audio_offset_s)
    # A decode per pause, with the final's options (not a partial's), and none for the final.
    assert len(engine.calls) == len(pauses)
    assert {options for _, options in engine.calls} == {DecodeOptions(language="en", beam_size=1)}
    # The same stream without pauses decodes once, at the end, a little more audio.
    plain = MeasuringEngine()
    events = await recognize(plain, np.concatenate([silence(0.5), speech, silence(1.0)]), pause_ms=0)
    assert [e.WhichOneof("event") for e in events] == ["speech_started", "speech_stopped", "final", "summary"]
    assert len(plain.calls) == 1 and plain.calls[0][0] > engine.calls[-1][0]


async def test_speech_after_a_pause_is_told_and_its_words_are_not_the_utterances(speech):
    engine = MeasuringEngine()
    audio = np.concatenate([silence(0.5), speech, silence(0.2), speech, silence(1.0)])
    events = await recognize(engine, audio, pause_ms=64)
    kinds = [event.WhichOneof("event") for event in events]
    assert kinds.count("speech_started") == 1 and kinds.count("final") == 1  # one utterance
    resumed = of_kind(events, "speech_resumed")
    assert resumed and all(r.utterance_id == 0 for r in resumed)
    # Each resume follows a pause whose words it makes stale; the final's are the last pause's.
    pauses, [final] = of_kind(events, "pause"), of_kind(events, "final")
    assert kinds.index("speech_resumed") > kinds.index("pause")
    assert final.text == pauses[-1].transcript.text
    heard = [int(p.transcript.text.split()[1]) for p in pauses]
    assert all(earlier < heard[-1] for earlier in heard[:-1])


async def test_a_pause_decode_that_ends_after_the_caller_went_on_is_not_sent(speech):
    engine = MeasuringEngine(first_decode_s=0.6)  # still decoding the comma's pause when speech resumes
    audio = np.concatenate([silence(0.5), speech, silence(1.0)])
    events = await recognize(engine, audio, pause_ms=64)
    [final], pauses = of_kind(events, "final"), of_kind(events, "pause")
    assert of_kind(events, "speech_resumed")
    first_decode = f"samples {engine.calls[0][0]}"
    assert first_decode not in [p.transcript.text for p in pauses] and final.text != first_decode
    assert final.text == pauses[-1].transcript.text


@pytest.mark.parametrize("pause_ms", [-5, 300, 500])
def test_pause_ms_must_be_below_the_streams_min_silence(pause_ms):
    config = Recognize.config(SR, min_silence_ms=300, pause_ms=pause_ms).config
    with pytest.raises(StageError, match="pause_ms"):
        StreamSettings.from_request(config, ASRConfig())
