"""Smart Turn v3.2 on real (synthesized) speech: a complete question vs a sentence cut mid-thought."""

from __future__ import annotations

import numpy as np
import pytest

from services.edge.config import EndOfTurnConfig
from services.edge.turn_taking.features import whisper_log_mel
from services.edge.turn_taking.smart_turn import MODEL_FILE, SmartTurn
from tests.speech import REAL_MODELS, _missing, espeak

MODEL = REAL_MODELS / "smart-turn-v3.2"
COMPLETE = ["What time does the restaurant open tomorrow?", "Could you book me a table for four people tonight?"]
CUT = ["I would like to book a table for, um,", "I need to change my reservation because,"]


@pytest.fixture(scope="module")
def detector() -> SmartTurn:
    if not (MODEL / MODEL_FILE).is_file():
        _missing(f"{MODEL} is missing: run `parley models cpu`")
    return SmartTurn(MODEL, threshold=0.5)


def _paused(text: str) -> np.ndarray:
    """The utterance and the 200 ms of silence after which the detector is asked."""
    return np.concatenate([espeak(text), np.zeros(3200, np.float32)])


def test_features_match_whisper_feature_extraction():
    transformers = pytest.importorskip("transformers")
    audio = np.zeros(128_000, np.float32)
    audio[40_000:] = 0.1 * np.sin(np.arange(88_000) / 7.0) + 0.02 * np.random.default_rng(0).standard_normal(88_000)
    reference = transformers.WhisperFeatureExtractor(chunk_length=8)(
        audio, sampling_rate=16_000, return_tensors="np", padding="max_length", max_length=128_000,
        truncation=True, do_normalize=True).input_features[0]
    ours = whisper_log_mel(audio)
    assert ours.shape == reference.shape == (80, 800)
    assert np.abs(ours - reference).max() < 1e-4


def test_a_complete_question_ends_the_turn_and_a_cut_sentence_does_not(detector):
    complete = [detector.probability(_paused(text)) for text in COMPLETE]
    cut = [detector.probability(_paused(text)) for text in CUT]
    assert min(complete) > 0.8 and max(cut) < 0.2, (complete, cut)
    assert detector.is_end_of_turn(COMPLETE[0], _paused(COMPLETE[0]))
    assert not detector.is_end_of_turn(CUT[0], _paused(CUT[0]))
    assert not detector.is_end_of_turn("", _paused(COMPLETE[0]))  # no words: not a turn
    # A threshold above the model's confidence keeps waiting even for the complete question.
    strict = SmartTurn(MODEL, threshold=0.999)
    assert not strict.is_end_of_turn(COMPLETE[0], _paused(COMPLETE[0]))


def test_words_that_trail_off_are_unfinished_whatever_the_audio(detector):
    """Whisper's ellipsis ("...to...") says the caller left the sentence hanging: the complete
    question's audio, which alone ends the turn, does not end it with such words."""
    audio = _paused(COMPLETE[0])
    calls = detector.calls
    assert detector.is_end_of_turn("I need a taxi from the airport to.", audio)
    assert not detector.is_end_of_turn("I need a taxi from the airport to...", audio)
    assert not detector.is_end_of_turn("What I really want to know is… ", audio)
    assert detector.calls == calls + 1  # the words alone decided: no model run for them


def test_cpu_per_call_is_counted(detector):
    # What a call costs is a benchmark (load/gpu_bench.py --sections smart_turn); here: it is counted.
    audio = _paused(COMPLETE[1])
    detector.probability(audio)
    calls, cpu = detector.calls, detector.cpu_s
    for _ in range(3):
        detector.probability(audio)
    assert detector.calls == calls + 3
    assert detector.cpu_s > cpu


def test_config_and_missing_model_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="needs end_of_turn.model"):
        EndOfTurnConfig(kind="smart_turn")
    with pytest.raises(ValueError, match="max_silence_ms"):
        EndOfTurnConfig(short_silence_ms=800, max_silence_ms=500)
    with pytest.raises(FileNotFoundError, match="parley models cpu"):
        SmartTurn(tmp_path)


async def test_in_a_call_a_cut_sentence_waits_for_the_rest_and_a_question_is_answered_at_once(detector):
    import asyncio

    from services.common.audio import float_to_pcm16
    from services.edge.cascade import CascadeCall
    from services.edge.config import EdgeConfig
    from services.proto import asr_pb2
    from tests.unit.edge.fakes import FakeTransport, Model, Recognizer, Stages, Synthesizer

    config = EdgeConfig(turn_taking={"end_of_turn": {"kind": "smart_turn", "model": str(MODEL),
                                                     "short_silence_ms": 200, "max_silence_ms": 1200}},
                        resilience={"fallback_text": "", "response_timeout_s": 3.0})
    asr = Recognizer()

    async def utterance(call, transport, text: str, utterance_id: int) -> None:
        """The caller's speech (sent at once), then the ASR's events at its end."""
        audio = _paused(text)
        transport.audio_in.put_nowait(float_to_pcm16(audio))
        await asyncio.sleep(0.2)
        end = call.asr.sent_s - 0.2
        for event in (asr_pb2.RecognizeResponse(speech_started=asr_pb2.SpeechStarted(utterance_id=utterance_id)),
                      asr_pb2.RecognizeResponse(speech_stopped=asr_pb2.SpeechStopped(utterance_id=utterance_id,
                                                                                    audio_offset_s=end)),
                      asr_pb2.RecognizeResponse(final=asr_pb2.Transcript(utterance_id=utterance_id, text=text))):
            asr.script.put_nowait(event)

    async with Stages(asr, Model("Sure."), Synthesizer()) as stages:
        transport = FakeTransport(greeting=False)
        call = CascadeCall(transport, stages.clients, config, "st1")
        task = asyncio.create_task(call.run())
        feeder = asyncio.create_task(transport.speak(6.0, level=0.0))  # silence between utterances
        try:
            # The VAD ends utterances after the preemptive silence (150 ms): a reply starts, held, while
            # the model is asked; it is played after the short silence if the caller sounds done.
            assert call.endpointing.silence_ms == 150
            await utterance(call, transport, CUT[0], 0)
            await asyncio.sleep(0.6)
            assert not transport.of_type("agent_text")  # held: the caller sounded unfinished
            await utterance(call, transport, "four people at eight.", 1)  # the rest of the sentence
            await asyncio.sleep(0.8)
            first = [role_text for role_text in call.history.messages() if role_text[0] == "user"]
            await utterance(call, transport, COMPLETE[0], 2)
            await asyncio.sleep(0.6)
        finally:
            feeder.cancel()
            transport.audio_in.put_nowait(None)
            await asyncio.wait_for(task, 5)
    users = [text for role, text in call.history.messages() if role == "user"]
    # One turn for the sentence and its rest (answered at once or at the longest silence).
    assert users[0] == f"{CUT[0]} four people at eight." and first
    assert users[1] == COMPLETE[0] and call.endpointing.waits >= 1
