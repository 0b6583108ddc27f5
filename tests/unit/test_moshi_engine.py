"""The batched Moshi engine on the tiny checkpoint: slots are independent, resets and pauses are per slot.

Sampling is greedy (temperature 0) so that a slot's output is a function of its own input only,
which is what these tests check.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("moshi.models.loaders", reason="moshi is not installed (see the Makefile)")

from services.moshi.config import MoshiEngineConfig  # noqa: E402
from services.moshi.engine import FRAME_SAMPLES  # noqa: E402
from services.moshi.engines import load_engine  # noqa: E402

SLOTS = 3


@pytest.fixture(scope="module")
def engine(tiny_moshi: Path):
    engine = load_engine(MoshiEngineConfig(model=str(tiny_moshi), device="cpu", slots=SLOTS,
                                           text_temperature=0.0, audio_temperature=0.0))
    yield engine
    engine.close()


@pytest.fixture(autouse=True)
def fresh(engine):
    for slot in range(SLOTS):
        engine.reset_slot(slot)


def noise(seed: int, frames: int) -> np.ndarray:
    return (0.2 * np.random.default_rng(seed).standard_normal((frames, FRAME_SAMPLES))).astype(np.float32)


def run(engine, inputs: dict[int, np.ndarray], active_from: dict[int, int] | None = None):
    """Step all slots through len(inputs) frames; slot -> list of (audio, text, spoke) per step it ran."""
    frames = max(len(audio) for audio in inputs.values())
    outputs: dict[int, list] = {slot: [] for slot in inputs}
    positions = dict.fromkeys(inputs, 0)
    for step in range(frames + max((active_from or {0: 0}).values())):
        batch = np.zeros((SLOTS, FRAME_SAMPLES), dtype=np.float32)
        active = np.zeros(SLOTS, dtype=bool)
        for slot, audio in inputs.items():
            if step >= (active_from or {}).get(slot, 0) and positions[slot] < len(audio):
                batch[slot] = audio[positions[slot]]
                active[slot] = True
                positions[slot] += 1
        if not active.any():
            break
        result = engine.step(batch, active)
        for slot in np.flatnonzero(active):
            outputs[slot].append((result.audio[slot].copy(), result.text[slot], bool(result.spoke[slot])))
        assert not result.spoke[~active].any() and not result.audio[~active].any()  # idle slots stay silent
    return outputs


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(np.array_equal(x[0], y[0]) and x[1:] == y[1:] for x, y in zip(a, b))


def test_frames_in_frames_and_text_out(engine):
    out = run(engine, {0: noise(1, 8), 1: noise(2, 8)})
    for slot in (0, 1):
        assert len(out[slot]) == 8
        assert not out[slot][0][2]  # the LM's first step only primes its delayed codebooks
        assert all(spoke for _, _, spoke in out[slot][1:])
        assert all(audio.shape == (FRAME_SAMPLES,) and np.isfinite(audio).all() for audio, _, _ in out[slot])
        assert max(float(np.abs(audio).max()) for audio, _, _ in out[slot]) > 0
    texts = [text for slot in (0, 1) for _, text, _ in out[slot] if text]
    assert texts and all(isinstance(text, str) for text in texts)


def test_a_slot_does_not_hear_its_neighbours(engine):
    with_x = run(engine, {0: noise(10, 8), 1: noise(11, 8)})
    for slot in range(SLOTS):
        engine.reset_slot(slot)
    with_y = run(engine, {0: noise(10, 8), 1: noise(12, 8)})
    assert same(with_x[0], with_y[0])
    assert not same(with_x[1], with_y[1])  # the neighbour's own output did follow its input


def test_reset_slot_restarts_the_stream(engine):
    first = run(engine, {2: noise(20, 6)})
    continued = run(engine, {2: noise(20, 6)})  # same input, but the slot remembers the first run
    engine.reset_slot(2)
    again = run(engine, {2: noise(20, 6)})
    assert same(first[2], again[2])
    assert not same(first[2], continued[2])


def test_an_idle_slot_keeps_its_state(engine):
    contiguous = run(engine, {1: noise(30, 6)})
    engine.reset_slot(1)
    # Slot 1 waits three steps (inactive) while slot 0 runs, then streams the same input.
    paused = run(engine, {0: noise(31, 6), 1: noise(30, 6)}, active_from={1: 3})
    assert same(contiguous[1], paused[1])


def test_wrong_batch_shape_is_refused(engine):
    with pytest.raises(ValueError, match="shape"):
        engine.step(np.zeros((SLOTS, 960), dtype=np.float32), np.ones(SLOTS, dtype=bool))
