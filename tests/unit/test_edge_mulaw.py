"""G.711 mu-law codec (services/edge/transports/mulaw.py): codewords, error bounds, audioop parity."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from services.edge.transports import mulaw

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop  # deprecated in 3.11, removed in 3.13: only a reference here
    except ImportError:
        audioop = None

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int32)


def _segment_step(pcm: np.ndarray) -> np.ndarray:
    """Half the width of the quantisation interval each sample falls into (16-bit units)."""
    biased = np.minimum(np.abs(pcm), mulaw.CLIP) + mulaw.BIAS
    exponent = np.floor(np.log2(biased)).astype(np.int64) - 7
    return 2.0 ** (exponent + 2)


def test_known_codewords():
    assert mulaw.encode(np.array([0.0])) == b"\xff"
    assert mulaw.encode(np.array([1.0])) == b"\x80"
    assert mulaw.encode(np.array([-1.0])) == b"\x00"
    assert mulaw.encode(np.array([2.0, -2.0])) == b"\x80\x00"  # clipped
    assert mulaw.encode(np.array([-1 / 32768])) == b"\x7f"  # sign bit set, magnitude ~0
    assert list(mulaw.DECODE_TABLE[[0x00, 0x7F, 0x80, 0xFF]]) == [-32124, 0, 32124, 0]
    # The first few codes of each polarity, from the standard's decode table.
    assert list(mulaw.DECODE_TABLE[:4]) == [-32124, -31100, -30076, -29052]
    assert list(mulaw.DECODE_TABLE[0xF0:0xF4]) == [120, 112, 104, 96]
    decoded = mulaw.decode(b"\x00\x80\xff")
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, np.array([-32124, 32124, 0], np.float32) / 32768)


def test_decode_table_is_odd_and_monotonic():
    table = mulaw.DECODE_TABLE.astype(np.int32)
    np.testing.assert_array_equal(table[:128], -table[128:])
    assert np.all(np.diff(table[:128]) > 0)  # 0x00 (most negative) .. 0x7F (-0)
    assert np.all(np.diff(table[128:]) < 0)  # 0x80 (most positive) .. 0xFF (+0)


def test_every_codeword_survives_decode_encode():
    codes = np.arange(256, dtype=np.uint8)
    again = np.frombuffer(mulaw.encode(mulaw.decode(codes)), np.uint8)
    expected = codes.copy()
    expected[0x7F] = 0xFF  # -0 decodes to 0, which encodes as +0
    np.testing.assert_array_equal(again, expected)
    np.testing.assert_array_equal(mulaw.lin16_to_ulaw(mulaw.ulaw_to_lin16(codes)), expected)


def test_int16_error_is_within_half_a_step():
    codes = mulaw.lin16_to_ulaw(ALL_INT16)
    error = np.abs(mulaw.ulaw_to_lin16(codes).astype(np.int64) - ALL_INT16)
    inside = np.abs(ALL_INT16) <= mulaw.CLIP
    assert np.all(error[inside] <= _segment_step(ALL_INT16[inside]))
    assert error[~inside].max() <= 32768 - 32124


def test_encoder_is_sign_symmetric():
    positive = np.arange(0, 32768, dtype=np.int32)
    np.testing.assert_array_equal(mulaw.lin16_to_ulaw(-positive)[1:], mulaw.lin16_to_ulaw(positive)[1:] ^ 0x80)


@pytest.mark.parametrize("amplitude", [1e-4, 1e-3, 0.01, 0.1, 0.5, 0.99, 1.0])
def test_float_round_trip_across_amplitudes(amplitude):
    t = np.arange(8000) / 8000
    audio = (amplitude * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    decoded = mulaw.decode(mulaw.encode(audio))
    error = np.abs(decoded.astype(np.float64) - audio)
    # Half a quantisation step is at most (|x| + bias) / 32 in 16-bit units, plus rounding.
    bound = (np.abs(audio.astype(np.float64)) * 32768 + mulaw.BIAS) / 32 / 32768 + 1 / 32768
    assert np.all(error <= bound)
    if amplitude >= 0.01:  # mu-law keeps ~38 dB SNR over a wide range of levels
        snr = 10 * np.log10(np.sum(audio.astype(np.float64) ** 2) / np.sum(error ** 2))
        assert snr > 30, snr


def test_silence():
    assert mulaw.encode(np.zeros(160, np.float32)) == b"\xff" * 160
    np.testing.assert_array_equal(mulaw.decode(b"\xff" * 160), np.zeros(160, np.float32))
    # Noise below one LSB stays silent; NaN is treated as silence, infinities as full scale.
    assert mulaw.encode(np.full(4, 1e-6, np.float32)) == b"\xff" * 4
    assert mulaw.encode(np.array([np.nan, np.inf, -np.inf])) == b"\xff\x80\x00"


@pytest.mark.parametrize("n", [0, 1, 7, 160, 8000])
def test_lengths_and_types(n):
    rng = np.random.default_rng(n)
    audio = rng.uniform(-1, 1, n).astype(np.float32)
    data = mulaw.encode(audio)
    assert isinstance(data, bytes) and len(data) == n
    decoded = mulaw.decode(data)
    assert decoded.dtype == np.float32 and decoded.shape == (n,)
    # float64 input, numpy codes, bytearray and memoryview give the same results.
    assert mulaw.encode(audio.astype(np.float64)) == data
    np.testing.assert_array_equal(mulaw.decode(np.frombuffer(data, np.uint8)), decoded)
    np.testing.assert_array_equal(mulaw.decode(bytearray(data)), decoded)
    np.testing.assert_array_equal(mulaw.decode(memoryview(data)), decoded)
    # Vectorised over the whole buffer = sample by sample.
    if 0 < n <= 160:
        assert b"".join(mulaw.encode(audio[i:i + 1]) for i in range(n)) == data


def test_rejects_non_mono():
    with pytest.raises(ValueError):
        mulaw.encode(np.zeros((2, 80), np.float32))
    with pytest.raises(TypeError):
        mulaw.decode(np.zeros(4, np.int16))


@pytest.mark.skipif(audioop is None, reason="audioop is not importable (Python >= 3.13)")
def test_decode_matches_audioop_bit_exactly():
    codes = bytes(range(256))
    reference = np.frombuffer(audioop.ulaw2lin(codes, 2), "<i2")
    np.testing.assert_array_equal(mulaw.ulaw_to_lin16(codes), reference)


@pytest.mark.skipif(audioop is None, reason="audioop is not importable (Python >= 3.13)")
def test_encode_matches_audioop():
    """Bit-exact for every int16 but 381 negative samples at segment boundaries.

    audioop shifts the 16-bit sample right by two before quantising (a floor), where this codec
    quantises the magnitude (a truncation toward zero): for negative samples that are not a
    multiple of 4 the two can land one codeword apart, right on a decision boundary.
    """
    reference = np.frombuffer(audioop.lin2ulaw(ALL_INT16.astype("<i2").tobytes(), 2), np.uint8)
    ours = mulaw.lin16_to_ulaw(ALL_INT16)
    differ = ours != reference
    same_by_construction = (ALL_INT16 >= 0) | (ALL_INT16 % 4 == 0)
    assert not np.any(differ & same_by_construction)
    assert differ.sum() == 381
    # Where they differ: same sign, adjacent codewords, and ours decodes closer to the input.
    assert np.all((ours[differ] ^ reference[differ]) & 0x80 == 0)
    assert np.all(np.abs(ours[differ].astype(int) - reference[differ].astype(int)) == 1)
    x = ALL_INT16[differ]
    ours_error = np.abs(mulaw.DECODE_TABLE[ours[differ]].astype(int) - x)
    reference_error = np.abs(mulaw.DECODE_TABLE[reference[differ]].astype(int) - x)
    assert np.all(ours_error < reference_error)
