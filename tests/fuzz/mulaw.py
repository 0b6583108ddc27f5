"""Target `mulaw`: the G.711 mu-law codec (services/edge/transports/mulaw.py).

The input is read three ways: as mu-law bytes from the caller (decode), as int16 PCM and as
float32 samples (NaN, infinities and out-of-range values included) to encode. Checks: lengths
are kept, decoded audio stays in [-1, 1], a decoded value re-encodes to itself, and float audio
comes back within one quantisation step.

The codec module is not instrumented: it has no branch that depends on the samples (numpy
does the work), and atheris 3.0.0 leaks the result of every instrumented comparison that
returns an array (`samples < 0`: a few KB per call, 870 MB after 120 s). Only this function is,
so libFuzzer has coverage to start from; in effect this target is random property testing.
"""

from __future__ import annotations

import atheris
import numpy as np

from services.edge.transports import mulaw

# Largest gap between a sample in [-1, 1] and its decoded code: half the top segment's step
# (1024/2 of 32768), or full scale against the largest code (32124).
MAX_ERROR = (32768 - 32124) / 32768 + 1e-6


@atheris.instrument_func
def fuzz_mulaw(data: bytes) -> None:
    decoded = mulaw.decode(data)
    assert decoded.dtype == np.float32 and decoded.shape == (len(data),)
    assert decoded.size == 0 or float(np.abs(decoded).max()) <= 1.0

    codes = np.frombuffer(data, dtype=np.uint8)
    pcm = mulaw.ulaw_to_lin16(codes)
    assert np.array_equal(mulaw.ulaw_to_lin16(mulaw.lin16_to_ulaw(pcm)), pcm), "decode -> encode -> decode moved"

    samples = np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2")
    assert mulaw.lin16_to_ulaw(samples).shape == samples.shape

    audio = np.frombuffer(data[: len(data) // 4 * 4], dtype="<f4")
    encoded = mulaw.encode(audio)
    assert isinstance(encoded, bytes) and len(encoded) == audio.size
    finite = np.isfinite(audio)
    error = np.abs(mulaw.decode(encoded)[finite] - np.clip(audio[finite], -1.0, 1.0))
    assert error.size == 0 or float(error.max()) <= MAX_ERROR, f"quantisation error {error.max()}"
