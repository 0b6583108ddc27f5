"""pcm_rms, which the speech gate and the duplex barge-in test on every caller frame."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.audio import float_to_pcm16, pcm_rms


@pytest.mark.parametrize("level", [0.01, 0.05, 0.5])
def test_the_rms_of_a_sine_is_its_level(level):
    t = np.arange(640) / 16_000
    sine = (level * np.sqrt(2) * np.sin(2 * np.pi * 250 * t)).astype(np.float32)  # whole periods
    assert pcm_rms(float_to_pcm16(sine)) == pytest.approx(level, rel=2e-3)


def test_extremes():
    assert pcm_rms(b"") == 0.0 and pcm_rms(b"\x00") == 0.0 and pcm_rms(bytes(640)) == 0.0
    assert pcm_rms(np.full(320, -32768, "<i2").tobytes()) == 1.0
