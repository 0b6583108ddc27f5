"""Whisper's log-mel features in numpy (what Smart Turn was trained on), without an ML framework.

16 kHz audio, normalized to zero mean and unit variance; a 400-point periodic Hann STFT every
160 samples (centered, reflect-padded), power spectrum through 80 Slaney-normalized mel filters
(0-8 kHz), log10 floored at 1e-10, clamped to 8 below its maximum and scaled as (x + 4) / 4; the
last frame is dropped, so 8 s give 800 frames.
"""

from __future__ import annotations

from functools import cache

import numpy as np

SAMPLE_RATE = 16_000
N_FFT, HOP, N_MELS = 400, 160, 80


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    # Slaney's scale: linear below 1 kHz, logarithmic above.
    hz = np.asarray(hz, np.float64)
    mel = hz * 3 / 200
    log_part = hz >= 1000
    mel[log_part] = 15 + np.log(hz[log_part] / 1000) / (np.log(6.4) / 27)
    return mel


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, np.float64)
    hz = mel * 200 / 3
    log_part = mel >= 15
    hz[log_part] = 1000 * np.exp((np.log(6.4) / 27) * (mel[log_part] - 15))
    return hz


@cache
def mel_filters() -> np.ndarray:
    """(80, 201) triangular filters, each normalized to unit area (Slaney)."""
    bins = np.linspace(0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(np.array([0.0]))[0], _hz_to_mel(np.array([SAMPLE_RATE / 2]))[0],
                                   N_MELS + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - bins[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(rising, falling))
    return (weights * (2 / (edges[2:] - edges[:-2]))[:, None]).astype(np.float32)


def whisper_log_mel(audio: np.ndarray) -> np.ndarray:
    """(80, frames) float32 features of 16 kHz float audio (frames = len // 160)."""
    audio = np.asarray(audio, np.float64)
    audio = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)
    padded = np.pad(audio, N_FFT // 2, mode="reflect")
    count = 1 + (padded.size - N_FFT) // HOP
    frames = np.lib.stride_tricks.as_strided(padded, (count, N_FFT), (padded.strides[0] * HOP, padded.strides[0]))
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    mel = mel_filters() @ power.T.astype(np.float32)
    log_mel = np.log10(np.maximum(mel, 1e-10))[:, :-1]
    log_mel = np.maximum(log_mel, log_mel.max() - 8.0)
    return ((log_mel + 4.0) / 4.0).astype(np.float32)
