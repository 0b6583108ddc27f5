"""The speech gate: caller silence held back from the ASR, speech sent whole with its pre-roll,
and the ASR stream's offsets mapped back to the call's across the gaps."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.audio import float_to_pcm16
from services.edge.config import SpeechGateConfig
from services.edge.streams.asr import _OffsetMap
from services.edge.streams.speech_gate import SpeechGate, joined

RATE = 16_000
FRAME_S = 0.04


def frame(level: float) -> bytes:
    """40 ms of a 200 Hz tone at `level` of full scale (0 = digital silence)."""
    t = np.arange(int(RATE * FRAME_S)) / RATE
    return float_to_pcm16((level * np.sqrt(2) * np.sin(2 * np.pi * 200 * t)).astype(np.float32))


def feed(gate: SpeechGate, levels: list[float], busy=lambda index: False) -> list[list[tuple[float, bytes]]]:
    return [gate.push(index * FRAME_S, frame(level), busy(index)) for index, level in enumerate(levels)]


def test_silence_is_held_and_speech_opens_with_the_preroll_ahead():
    gate = SpeechGate(SpeechGateConfig(preroll_ms=300), RATE)
    sent = feed(gate, [0.0] * 50 + [0.1])
    assert all(chunks == [] for chunks in sent[:50]) and not sent[49]
    # 300 ms of held silence (8 frames of 40 ms: at least the pre-roll) in one message, then the loud frame.
    (preroll_at, preroll), (frame_at, loud) = sent[50]
    assert preroll_at == pytest.approx(2.0 - 8 * FRAME_S) and len(preroll) == 8 * len(frame(0.0))
    assert frame_at == pytest.approx(2.0) and loud == frame(0.1)
    assert gate.is_open and gate.openings == 1


@pytest.mark.parametrize(("dbfs", "opens"), [(-40.0, True), (-60.0, False)])
def test_the_level_that_opens_it(dbfs, opens):
    gate = SpeechGate(SpeechGateConfig(open_dbfs=-50), RATE)
    assert bool(feed(gate, [10 ** (dbfs / 20)])[0]) is opens


def test_it_stays_open_while_the_asr_is_in_an_utterance_and_closes_after_the_hangover():
    gate = SpeechGate(SpeechGateConfig(hangover_ms=400), RATE)
    # Speech, then quiet; the ASR says its utterance runs until frame 30 (its final comes then).
    sent = feed(gate, [0.1] * 5 + [0.0] * 60, busy=lambda index: index < 30)
    open_until = max(index for index, chunks in enumerate(sent) if chunks)
    assert all(sent[index] for index in range(open_until + 1))
    assert open_until == 30 + 400 / 1000 / FRAME_S - 1  # 400 ms of quiet counted from the final
    assert not gate.is_open
    # Speech again: it reopens at once, with the pre-roll.
    again = gate.push(10.0, frame(0.1), False)
    assert len(again) > 1 and again[-1][0] == 10.0


def test_contiguous_chunks_are_joined_and_gaps_kept():
    pcm = frame(0.1)
    merged = joined([(1.0, pcm), (1.04, pcm), (5.0, pcm)], RATE)
    assert [(offset, len(chunk)) for offset, chunk in merged] == [(1.0, 2 * len(pcm)), (5.0, len(pcm))]


def test_rpc_offsets_map_back_to_call_offsets_across_gaps():
    offsets = _OffsetMap()
    offsets.sent(0.0, 0.5)  # call 0.0-0.5
    offsets.sent(10.0, 1.0)  # gap: call 10.0-11.0 is RPC 0.5-1.5
    offsets.sent(11.0, 0.2)  # contiguous
    offsets.sent(30.0, 0.3)  # gap: RPC 1.7-2.0
    assert offsets.sent_s == pytest.approx(2.0)
    assert [offsets.to_call(s) for s in (0.2, 0.5, 1.2, 1.6, 1.8)] == pytest.approx([0.2, 10.0, 10.7, 11.1, 30.1])
