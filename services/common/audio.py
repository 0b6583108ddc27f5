"""PCM s16le <-> float32 conversion, validation, resampling and WAV I/O.

Every stage speaks PCM s16le mono on the wire and float32 in [-1, 1] to its engine.
"""

from __future__ import annotations

import math
import wave
from pathlib import Path

import numpy as np
import soxr

MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 48_000
BYTES_PER_SAMPLE = 2


class AudioFormatError(ValueError):
    """Audio that does not match what the stream declared."""


def check_sample_rate(rate: int) -> int:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioFormatError(
            f"sample_rate_hz must be between {MIN_SAMPLE_RATE} and {MAX_SAMPLE_RATE}, got {rate}"
        )
    return rate


def pcm16_to_float(pcm: bytes) -> np.ndarray:
    if len(pcm) % BYTES_PER_SAMPLE:
        raise AudioFormatError(f"PCM s16le needs an even number of bytes, got {len(pcm)}")
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def resample(audio: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """One-shot resampling of a whole buffer."""
    if src_rate == dst_rate or audio.size == 0:
        return audio.astype(np.float32, copy=False)
    return soxr.resample(audio, src_rate, dst_rate, quality="HQ").astype(np.float32, copy=False)


class StreamResampler:
    """Resamples a stream chunk by chunk, keeping filter state across chunk boundaries."""

    def __init__(self, src_rate: int, dst_rate: int):
        self.src_rate, self.dst_rate = src_rate, dst_rate
        self._stream = (
            None if src_rate == dst_rate
            else soxr.ResampleStream(src_rate, dst_rate, 1, dtype="float32", quality="HQ")
        )

    def push(self, audio: np.ndarray, last: bool = False) -> np.ndarray:
        if self._stream is None:
            return audio.astype(np.float32, copy=False)
        return self._stream.resample_chunk(audio.astype(np.float32, copy=False), last=last)


class PcmResampler:
    """A StreamResampler for PCM s16le bytes: decodes to float only when the rates differ."""

    def __init__(self, src_rate: int, dst_rate: int):
        self.src_rate, self.dst_rate = src_rate, dst_rate
        self._stream = None if src_rate == dst_rate else StreamResampler(src_rate, dst_rate)

    def push(self, pcm: bytes) -> bytes:
        if self._stream is None:
            return pcm
        return float_to_pcm16(self._stream.push(pcm16_to_float(pcm)))


def pcm_rms(pcm: bytes) -> float:
    """Root mean square of PCM s16le audio on the float scale ([-1, 1]); 0 for no audio."""
    if len(pcm) < BYTES_PER_SAMPLE:
        return 0.0
    # A dot product, not np.mean of the squares: called on every caller frame, a third of the time.
    samples = np.frombuffer(pcm, dtype="<i2", count=len(pcm) // BYTES_PER_SAMPLE).astype(np.float64)
    return math.sqrt(float(samples.dot(samples)) / samples.size) / 32768.0


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a PCM16 WAV as mono float32 (channels are averaged)."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != BYTES_PER_SAMPLE:
            raise AudioFormatError(f"{path}: only 16-bit PCM WAV is supported")
        rate, channels = wav.getframerate(), wav.getnchannels()
        audio = pcm16_to_float(wav.readframes(wav.getnframes()))
    if channels > 1:
        audio = audio.reshape(-1, channels).mean(axis=1)
    return audio, rate


def write_wav(path: str | Path, audio: np.ndarray, rate: int) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(BYTES_PER_SAMPLE)
        wav.setframerate(rate)
        wav.writeframes(float_to_pcm16(audio))
