"""The per-stage measurements of load/gpu_bench.py, each driving a Parley engine directly (no Ray).

Every function returns plain rows (JSON-ready dicts). Latencies are wall-clock from the moment a
request is handed to the engine to the moment its result is back on the host.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from load.moshi_step import TICK_MS, build_models, time_steps
from load.stats import LogHistogram

# What a caller's first reply clause and a full sentence look like (4 and 20 words).
TTS_TEXTS = {
    "clause_4_words": "Sure, let me check,",
    "sentence_20_words": "Your table for four is booked for seven tonight, and I have sent the confirmation to "
                         "the number you gave me.",
}
# Random-weight Whisper never stops by itself: tokens allowed per second of speech (a fast talker
# says ~3 words, ~4 tokens, a second) plus the few that open a transcript.
ASR_TOKENS_PER_S, ASR_TOKENS_EXTRA = 4, 4


def summary(values_ms: list[float]) -> dict:
    """p50 / p95 / max (ms) of a sample, through the load reports' histogram."""
    histogram = LogHistogram()
    for value in values_ms:
        histogram.add(value)
    return {"n": histogram.count, "p50_ms": round(histogram.percentile(50), 2),
            "p95_ms": round(histogram.percentile(95), 2), "max_ms": round(histogram.max, 2)}


def bench_moshi(model_dir: Path, full_size: bool, device: str, batches: list[int], steps: int, warmup: int) -> dict:
    """Step time of the batched duplex engine per batch size, and the memory each slot holds."""
    import torch

    models = build_models(model_dir, full_size, device)
    weights = sum(p.numel() * p.element_size() for model in models[:2] for p in model.parameters())
    rows = []
    for batch in batches:
        try:
            timing = time_steps(models, batch, steps, warmup, device)
        except torch.cuda.OutOfMemoryError:
            rows.append({"batch": batch, "error": "out of GPU memory"})
            torch.cuda.empty_cache()
            break  # larger batches need more
        row = {"batch": batch, **summary(timing.times_ms),
               "state_mb_per_slot": round(timing.state_bytes / batch / 2**20, 3)}
        if timing.peak_bytes is not None:
            row["peak_gb"] = round(timing.peak_bytes / 2**30, 3)
        row["realtime"] = row["p95_ms"] < TICK_MS
        rows.append(row)
    from moshi.utils.compile import _is_cuda_graph_enabled

    return {"model": "Moshi 7B + Mimi (random weights)" if full_size else f"checkpoint {model_dir.name}",
            "lm_dtype": str(models[1].dtype), "weights_gb": round(weights / 2**30, 3), "tick_ms": TICK_MS,
            "cuda_graphs": device == "cuda" and _is_cuda_graph_enabled(), "steps": steps, "warmup": warmup,
            "rows": rows}


class _PartialStreams:
    """`count` streams re-decoding their utterance so far every `interval_s` (what a live ASR
    stream asks for while its caller talks), on worker threads, until stopped."""

    def __init__(self, engine, count: int, audio: np.ndarray, interval_s: float):
        from services.asr.engine import DecodeOptions

        self.decodes, self._stop = 0, threading.Event()
        self._lock = threading.Lock()
        options = DecodeOptions(beam_size=1)

        def stream() -> None:
            while not self._stop.is_set():
                started = time.perf_counter()
                engine.transcribe(audio, options)
                with self._lock:
                    self.decodes += 1
                self._stop.wait(max(0.0, interval_s - (time.perf_counter() - started)))

        self._threads = [threading.Thread(target=stream, daemon=True) for _ in range(count)]

    def __enter__(self) -> _PartialStreams:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def bench_asr(model_dir: Path, device: str, durations: list[float], backgrounds: list[int], repeats: int,
              workers: int, partial_s: float = 3.0, interval_s: float = 0.4) -> dict:
    """Final-transcript latency per utterance length, alone and beside streams' partial re-decodes."""
    from services.asr import tiny as whisper_tiny
    from services.asr.config import FasterWhisperConfig
    from services.asr.engine import SAMPLE_RATE, DecodeOptions
    from services.asr.engines.faster_whisper import FasterWhisperEngine

    rng = np.random.default_rng(0)
    rows, compute_type = [], None
    for duration in durations:
        max_tokens = int(ASR_TOKENS_PER_S * duration) + ASR_TOKENS_EXTRA
        config = FasterWhisperConfig(model=str(model_dir), device=device, num_workers=workers,
                                     **{**whisper_tiny.DECODING, "max_new_tokens": max_tokens})
        engine = FasterWhisperEngine(config)
        compute_type = engine.compute_type
        utterance = (0.1 * rng.standard_normal(int(duration * SAMPLE_RATE))).astype(np.float32)
        partial = (0.1 * rng.standard_normal(int(partial_s * SAMPLE_RATE))).astype(np.float32)
        try:
            for count in backgrounds:
                with _PartialStreams(engine, count, partial, interval_s) as streams:
                    times = []
                    for _ in range(repeats):
                        started = time.perf_counter()
                        engine.transcribe(utterance, DecodeOptions(beam_size=1))
                        times.append((time.perf_counter() - started) * 1000)
                rows.append({"utterance_s": duration, "background_streams": count, **summary(times),
                             "background_decodes": streams.decodes, "max_new_tokens": max_tokens})
        finally:
            engine.close()
    return {"model": model_dir.name, "compute_type": compute_type, "workers": workers,
            "partial_audio_s": partial_s, "partial_interval_s": interval_s, "rows": rows}


def _concurrent(engine, text: str, voice: str, count: int) -> tuple[list[float], list[float], float]:
    """`count` requests released at once: (latency ms, audio s) per request and the wall time."""
    barrier = threading.Barrier(count + 1)
    latencies, audio_s = [0.0] * count, [0.0] * count

    def request(i: int) -> None:
        barrier.wait()
        started = time.perf_counter()
        speech = engine.synthesize(text, voice, 1.0)
        latencies[i] = (time.perf_counter() - started) * 1000
        audio_s[i] = speech.audio.size / engine.sample_rate

    threads = [threading.Thread(target=request, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    barrier.wait()
    for thread in threads:
        thread.join()
    return latencies, audio_s, time.perf_counter() - started


def bench_tts(engine, name: str, concurrencies: list[int], rounds: int) -> dict:
    """Time to first audio (one segment's synthesis, queueing included) and real-time factor per
    text and number of requests at once."""
    rows = []
    for label, text in TTS_TEXTS.items():
        for count in concurrencies:
            latencies, audio, wall = [], [], 0.0
            for _ in range(rounds):
                got, seconds, took = _concurrent(engine, text, engine.default_voice, count)
                latencies += got
                audio += seconds
                wall += took
            rows.append({"text": label, "words": len(text.split()), "concurrent": count, **summary(latencies),
                         "audio_s": round(float(np.mean(audio)), 3),
                         "rtf": round(wall / sum(audio), 4) if sum(audio) else None})
    return {"engine": name, "rows": rows}


def bench_smart_turn(model: Path, calls: int, threads: int = 1) -> dict:
    """Latency of one end-of-turn verdict (8 s of audio) on onnxruntime's CPU provider, as the edge runs it."""
    import onnxruntime

    from services.edge.turn_taking.features import SAMPLE_RATE
    from services.edge.turn_taking.smart_turn import WINDOW_S, SmartTurn

    detector = SmartTurn(model, threads=threads)
    audio = (0.1 * np.random.default_rng(0).standard_normal(WINDOW_S * SAMPLE_RATE)).astype(np.float32)
    detector.probability(audio)  # the first run plans and allocates
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        probability = detector.probability(audio)
        times.append((time.perf_counter() - started) * 1000)
    providers = onnxruntime.get_available_providers()
    gpu = ("not measured: the edge runs Smart Turn on onnxruntime's CPU provider"
           + ("" if "CUDAExecutionProvider" in providers else "; this onnxruntime has no CUDA provider"))
    return {"model": Path(model).name, "threads": threads, "providers": providers, "gpu": gpu,
            "rows": [{"where": "cpu", **summary(times), "probability": round(probability, 4)}]}
