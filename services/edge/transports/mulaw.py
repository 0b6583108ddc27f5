"""G.711 mu-law codec in numpy: float32 [-1, 1], int16 PCM or PCM s16le bytes <-> one mu-law byte per sample.

The classic 16-bit formulation of the standard: the magnitude of a 16-bit sample is clipped to
CLIP, biased by BIAS and split into a 3-bit exponent (segment) and a 4-bit mantissa; the output
byte carries the sign in bit 7 and is bit-inverted. Decoding returns the middle of each
quantisation interval, so 0x00 and 0x80 (full scale) decode to -/+32124 and 0x7F/0xFF to 0.

Negative samples are quantised by magnitude (sign-magnitude truncation), so encode(-x) differs
from encode(x) only in the sign bit. CPython's deprecated `audioop.lin2ulaw` first shifts the
16-bit sample right by two (a floor, not a truncation), which puts 381 negative inputs right at
segment boundaries one codeword away from this encoder; every positive input and every decoded
value is identical.
"""

from __future__ import annotations

import numpy as np

BIAS = 0x84
CLIP = 32635
FULL_SCALE = 32768.0  # float 1.0 <-> int16 32768, as services.common.audio.pcm16_to_float

# Segment (exponent) of a biased magnitude, indexed by magnitude >> 7 (1..255): the position of
# its highest set bit.
_EXPONENT = np.array([max(i.bit_length() - 1, 0) for i in range(256)], dtype=np.int32)


def _decode_table() -> np.ndarray:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = (((mantissa << 3) + BIAS) << exponent) - BIAS
    table = np.where(codes & 0x80, -magnitude, magnitude).astype(np.int16)
    table.flags.writeable = False
    return table


# int16 value of every mu-law byte.
DECODE_TABLE = _decode_table()
_DECODE_FLOAT = (DECODE_TABLE.astype(np.float32) / np.float32(FULL_SCALE))
_DECODE_FLOAT.flags.writeable = False


def _one_dimensional(array: np.ndarray, what: str) -> np.ndarray:
    if array.ndim > 1:
        raise ValueError(f"{what} must be one-dimensional (mono), got shape {array.shape}")
    return array.reshape(-1)


def _as_codes(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise TypeError(f"mu-law codes must be uint8, got {data.dtype}")
        return _one_dimensional(data, "mu-law codes")
    return np.frombuffer(data, dtype=np.uint8)


def lin16_to_ulaw(pcm: np.ndarray) -> np.ndarray:
    """Encode int16 PCM samples (any integer array) to mu-law codes (uint8)."""
    samples = _one_dimensional(np.asarray(pcm), "PCM").astype(np.int32)
    negative = (samples < 0).astype(np.int32)
    magnitude = np.minimum(np.abs(samples), CLIP) + BIAS  # 132 .. 32767
    exponent = _EXPONENT[magnitude >> 7]
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    code = (negative << 7) | (exponent << 4) | mantissa
    return (~code & 0xFF).astype(np.uint8)


def ulaw_to_lin16(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """Decode mu-law codes to int16 PCM."""
    return DECODE_TABLE[_as_codes(data)]


def float_to_lin16(audio: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> int16 PCM by rounding (x * 32768), clipped; NaN becomes 0, +-inf full scale."""
    samples = np.nan_to_num(np.asarray(audio, dtype=np.float64), nan=0.0, posinf=1.0, neginf=-1.0)
    return np.clip(np.rint(samples * FULL_SCALE), -32768, 32767).astype(np.int16)


def encode(audio: np.ndarray) -> bytes:
    """Encode float audio in [-1, 1] (mono) to mu-law bytes, one per sample."""
    return lin16_to_ulaw(float_to_lin16(_one_dimensional(np.asarray(audio), "audio"))).tobytes()


def decode(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """Decode mu-law bytes to float32 audio in [-1, 1] (a new array)."""
    return _DECODE_FLOAT[_as_codes(data)]


def decode_pcm16(data: bytes | bytearray | memoryview) -> bytes:
    """Decode mu-law bytes to PCM s16le bytes (what the edge carries end to end)."""
    return ulaw_to_lin16(data).astype("<i2").tobytes()


def encode_pcm16(pcm: bytes) -> bytes:
    """Encode PCM s16le bytes to mu-law bytes, one per sample."""
    return lin16_to_ulaw(np.frombuffer(pcm, dtype="<i2")).tobytes()
