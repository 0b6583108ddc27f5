"""The last few seconds of a stream of samples, kept in a preallocated ring.

Caller audio arrives 20-40 ms at a time and a consumer (the end-of-turn model) reads the last
seconds only now and then: appending to a ring costs the chunk's size, where concatenating and
trimming an array on every chunk copied the whole window each time (~10 s at 16 kHz, 25-50 times
a second per call). Kept as int16 PCM, a chunk is copied in as it came: decoding to float and
resampling wait for the rare read.
"""

from __future__ import annotations

import numpy as np


class RecentAudio:
    """The last `capacity` samples pushed (of `dtype`: int16 keeps PCM as it came), oldest first when read."""

    def __init__(self, capacity: int, dtype: type = np.float32):
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self._ring = np.zeros(capacity, dtype)
        self._written = 0  # samples pushed since the start

    @property
    def size(self) -> int:
        """Samples held (at most `capacity`)."""
        return min(self._written, self._ring.size)

    def push(self, samples: np.ndarray) -> None:
        """Append samples, dropping the oldest beyond `capacity`."""
        capacity, count = self._ring.size, samples.size
        if count >= capacity:
            self._ring[:] = samples[count - capacity:]
            self._written += count
            self._ring = np.roll(self._ring, self._written % capacity)  # keep the write position's layout
            return
        start = self._written % capacity
        head = min(count, capacity - start)
        self._ring[start:start + head] = samples[:head]
        self._ring[:count - head] = samples[head:]
        self._written += count

    def held(self, drop_newest: int = 0) -> np.ndarray:
        """A copy of the samples held, oldest first, less the newest `drop_newest`."""
        count = self.size - max(0, drop_newest)
        if count <= 0:
            return np.zeros(0, self._ring.dtype)
        capacity = self._ring.size
        start = (self._written - self.size) % capacity  # where the oldest sample held is
        if start + count <= capacity:
            return self._ring[start:start + count].copy()
        return np.concatenate([self._ring[start:], self._ring[:start + count - capacity]])
