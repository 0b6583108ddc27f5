"""The audio the end-of-turn model hears: the same as when every frame was decoded, concatenated and
trimmed (the caller's last 10 s up to the short silence after their speech), now that frames go into
an int16 ring and are decoded only when the model is asked."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.audio import float_to_pcm16, pcm16_to_float
from services.edge.config import TurnTakingConfig
from services.edge.turn_taking.endpointing import Endpointing
from services.edge.turn_taking.features import SAMPLE_RATE


class _Listener:
    """A detector that needs audio and keeps what it was given."""

    needs_audio = True

    def __init__(self):
        self.heard: list[np.ndarray] = []

    def is_end_of_turn(self, final_text: str, audio: np.ndarray | None = None) -> bool:
        self.heard.append(audio)
        return True


def _old_window(frames: list[bytes], stop_offset_s: float | None, silence_ms: int) -> np.ndarray:
    """What Endpointing held before: every frame decoded and appended, the last 10 s kept, then the
    audio after the pause's short silence cut off."""
    audio, end_s = np.zeros(0, np.float32), 0.0
    for pcm in frames:
        audio = np.concatenate([audio, pcm16_to_float(pcm)])[-10 * SAMPLE_RATE:]
        end_s += len(pcm) / 2 / SAMPLE_RATE  # summed frame by frame, as the edge counts it
    if stop_offset_s is None:
        return audio
    drop = int(max(0.0, end_s - (stop_offset_s + silence_ms / 1000)) * SAMPLE_RATE)
    return audio[:audio.size - drop] if drop else audio


@pytest.mark.parametrize(("seconds", "stop_offset_s"), [(3.0, None), (3.0, 2.1), (14.0, 12.5), (14.0, None)])
async def test_the_model_hears_what_it_heard_before(seconds, stop_offset_s):
    rng = np.random.default_rng(7)
    frames = [float_to_pcm16(0.3 * rng.standard_normal(640).astype(np.float32))
              for _ in range(int(seconds / 0.04))]
    listener, turns = _Listener(), []

    async def on_turn(text: str, utterance_id: int) -> None:
        turns.append(text)

    settings = TurnTakingConfig(end_of_turn={"kind": "smart_turn", "model": "unused"}, preemptive={"enabled": False})
    endpointing = Endpointing(listener, settings, SAMPLE_RATE, on_turn)
    for pcm in frames:
        endpointing.push(pcm, SAMPLE_RATE)
    if stop_offset_s is not None:
        endpointing.speech_stopped(stop_offset_s)
    await endpointing.final("book a table", 0)
    [heard] = listener.heard
    np.testing.assert_array_equal(heard, _old_window(frames, stop_offset_s, endpointing.silence_ms))
    assert heard.dtype == np.float32 and turns == ["book a table"]


async def test_audio_is_kept_only_for_a_detector_that_reads_it():
    async def on_turn(text: str, utterance_id: int) -> None:
        pass

    from services.edge.turn_taking.end_of_turn import SilenceEndpointing

    endpointing = Endpointing(SilenceEndpointing(), TurnTakingConfig(), SAMPLE_RATE, on_turn)
    endpointing.push(b"\x00\x01" * 640, SAMPLE_RATE)
    assert endpointing._audio is None


async def test_a_detector_that_does_not_answer_is_not_waited_for(monkeypatch):
    """A stuck model run must not leave the turn unconfirmed for the rest of the call."""
    import threading

    from services.edge.turn_taking import endpointing as module

    release = threading.Event()

    class _Stuck:
        needs_audio = True

        def is_end_of_turn(self, final_text: str, audio: np.ndarray | None = None) -> bool:
            release.wait(10)
            return False

    turns = []

    async def on_turn(text: str, utterance_id: int) -> None:
        turns.append(text)

    monkeypatch.setattr(module, "DETECTOR_TIMEOUT_S", 0.2)
    settings = TurnTakingConfig(end_of_turn={"kind": "smart_turn", "model": "unused"}, preemptive={"enabled": False})
    endpointing = Endpointing(_Stuck(), settings, SAMPLE_RATE, on_turn)
    endpointing.push(b"\x00\x01" * 640, SAMPLE_RATE)
    try:
        await endpointing.final("book a table", 0)
    finally:
        release.set()
    assert turns == ["book a table"] and endpointing.detector_timeouts == 1
