"""Reference engines with fixed, configurable latencies: the orchestration benchmark's engines.

They implement each stage's engine interface (services/*/engine.py) and run inside the real
Serve deployments, named in config by import path:

    asr:  engine: {kind: "load.reference_engines:ReferenceASR", asr_ms: 50, num_workers: 64}
    llm:  engine: {kind: "load.reference_engines:ReferenceLLM", ttft_ms: 100, tok_ms: 20}
    tts:  engine: {kind: "load.reference_engines:ReferenceTTS", ttfb_ms: 80, num_workers: 64}

Every engine computes absolute deadlines from the moment it is called and waits until them, so
a late wake-up (a busy event loop, a starved thread) shows up as orchestration overhead, never
as engine time, and token deadlines do not drift. The ASR stage's own VAD and segmenter still
decide where an utterance ends (the reference ASR is called at the utterance's end, like any
ASR engine); only the decode is replaced by a known transcript after `asr_ms`.
"""

from __future__ import annotations

import asyncio
import math
import time

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from services.asr.engine import ASREngine, DecodeOptions, Transcription
from services.llm.engine import ChatRequest, Delta, Finished, LLMEngine
from services.tts.engine import Speech, TTSEngine, UnknownVoiceError

# 28 words, 3 sentences; the first sentence has 11 words, which makes the serial engine budget
# 300 + 50 + 100 + 10 * 20 + 80 = 730 ms with the default timings.
REPLY = ("Sure, I can help you with that question about the weather. "
         "It looks mild and dry, with some sun this afternoon. "
         "Take a jacket in case it cools.")
TRANSCRIPT = "What is the weather like today?"


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def sleep_until(deadline: float) -> None:
    """Block this thread until the monotonic clock reaches `deadline`."""
    remaining = deadline - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)


async def asleep_until(deadline: float) -> None:
    """Wait on the event loop until the monotonic clock reaches `deadline`."""
    remaining = deadline - time.monotonic()
    if remaining > 0:
        await asyncio.sleep(remaining)


class ReferenceASR(ASREngine):
    """Answers every decode with a known transcript `asr_ms` after it is asked."""

    class Config(_Args):
        asr_ms: float = Field(50.0, ge=0)
        transcript: str = TRANSCRIPT
        language: str = "en"

    def __init__(self, config):
        self.args: ReferenceASR.Config = config.args

    def transcribe(self, audio: np.ndarray, options: DecodeOptions) -> Transcription:
        sleep_until(time.monotonic() + self.args.asr_ms / 1000)
        return Transcription(self.args.transcript, options.language or self.args.language)


class ReferenceLLM(LLMEngine):
    """Streams a known reply one word (token) at a time: the first after `ttft_ms`, then one every `tok_ms`."""

    class Config(_Args):
        ttft_ms: float = Field(100.0, ge=0)
        tok_ms: float = Field(20.0, ge=0)
        reply: str = REPLY

    def __init__(self, config):
        super().__init__()
        self.args: ReferenceLLM.Config = config.args
        self.model_name = config.model
        self._words = self.args.reply.split()

    async def generate(self, request: ChatRequest):
        started = time.monotonic()
        limit = min(len(self._words), request.sampling.max_tokens)
        with self.stats.track(request.request_id) as tracked:
            for index, word in enumerate(self._words[:limit]):
                await asleep_until(started + (self.args.ttft_ms + index * self.args.tok_ms) / 1000)
                yield Delta(word if index == 0 else " " + word, 1)
            tracked.finish()
            yield Finished("stop" if limit == len(self._words) else "length", 0, limit)


class ReferenceTTS(TTSEngine):
    """Returns each text segment's audio `ttfb_ms` after it is asked: a quiet tone lasting as long
    as the words would take to say (`word_ms` each).

    The interface returns a segment whole; an engine at 10x real time streaming the same segment
    would send its first byte at `ttfb_ms` and stay ahead of playout, so first-audio times are the
    same (`rtf` is kept for reports: the engine's speed the benchmark stands for)."""

    class Config(_Args):
        ttfb_ms: float = Field(80.0, ge=0)
        rtf: float = Field(0.1, gt=0, le=1)
        word_ms: float = Field(330.0, gt=0)
        sample_rate: int = Field(24_000, ge=8000, le=48_000)
        voice: str = "reference"

    def __init__(self, config):
        self.args: ReferenceTTS.Config = config.args
        self.sample_rate = self.args.sample_rate
        self.default_voice = self.args.voice

    def voices(self) -> list[str]:
        return [self.args.voice]

    def synthesize(self, text: str, voice: str, speed: float) -> Speech:
        started = time.monotonic()
        if voice != self.args.voice:
            raise UnknownVoiceError(f"unknown voice {voice!r}; this engine has {self.args.voice!r}")
        words = len(text.split())
        seconds = words * self.args.word_ms / 1000 / max(speed, 0.1)
        samples = int(seconds * self.sample_rate)
        tone = 0.1 * np.sin(2 * math.pi * 220 * np.arange(samples) / self.sample_rate)
        sleep_until(started + self.args.ttfb_ms / 1000)
        return Speech(tone.astype(np.float32))
