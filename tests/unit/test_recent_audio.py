"""The ring of recent caller audio against what it replaced: concatenate every chunk, keep the tail."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.recent_audio import RecentAudio

CAPACITY = 1000


def _chunks(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = rng.choice([0, 1, 7, 320, 640, 999, 1000, 1001, 2500], size=60)
    return [rng.standard_normal(size).astype(np.float32) for size in sizes]


@pytest.mark.parametrize("seed", range(5))
def test_it_holds_exactly_what_concatenate_and_trim_held(seed):
    ring, reference = RecentAudio(CAPACITY), np.zeros(0, np.float32)
    for chunk in _chunks(seed):
        ring.push(chunk)
        reference = np.concatenate([reference, chunk])[-CAPACITY:]
        assert ring.size == reference.size
        np.testing.assert_array_equal(ring.held(), reference)
        for drop in (1, 319, reference.size // 2, reference.size):  # the end-of-turn cut: drop the newest
            np.testing.assert_array_equal(ring.held(drop_newest=drop), reference[:reference.size - drop])


def test_reads_are_copies_and_bounds_are_clamped():
    ring = RecentAudio(4)
    assert ring.size == 0 and ring.held().size == 0 and ring.held(drop_newest=3).size == 0
    ring.push(np.arange(3, dtype=np.float32))
    read = ring.held()
    read[:] = -1
    np.testing.assert_array_equal(ring.held(), [0, 1, 2])
    np.testing.assert_array_equal(ring.held(drop_newest=-2), [0, 1, 2])
    assert ring.held(drop_newest=10).size == 0  # more than held: nothing (a negative slice once kept the oldest)
    with pytest.raises(ValueError):
        RecentAudio(0)
