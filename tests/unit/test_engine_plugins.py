"""Engines named by import path, for every stage: typed args validated once, clear errors for bad
paths and args, the built-in kinds unchanged; and the reference engines' behaviour."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from pydantic import BaseModel, ValidationError

from load import reference_engines as ref
from services.asr.config import ASRConfig, ASRPluginConfig, FasterWhisperConfig
from services.asr.engine import DecodeOptions
from services.asr.engines import load_engine as load_asr
from services.llm.config import LLMConfig, PluginConfig, TransformersConfig
from services.llm.engine import ChatRequest, ChatTurn, Delta, Finished, Sampling
from services.llm.engines import load_engine as load_llm
from services.moshi.config import MoshiConfig, MoshiEngineConfig
from services.moshi.engine import DuplexEngine, StepResult
from services.moshi.engines import load_engine as load_duplex
from services.tts.config import TTSConfig, TTSPluginConfig
from services.tts.engines import load_engine as load_tts

ASR = "load.reference_engines:ReferenceASR"
LLM = "load.reference_engines:ReferenceLLM"
TTS = "load.reference_engines:ReferenceTTS"
DUPLEX = "tests.unit.test_engine_plugins:SilentDuplex"


class SilentDuplex(DuplexEngine):
    """A duplex engine of a test's own: silence on every slot."""

    class Config(BaseModel):
        gain: float = 0.0

    def __init__(self, config):
        self.slots, self.gain = config.slots, config.args.gain

    def step(self, frames, active):
        return StepResult(np.zeros_like(frames), np.zeros(self.slots, bool), [None] * self.slots)

    def reset_slot(self, slot):
        pass


def test_every_stage_takes_an_engine_class_by_import_path_with_typed_args():
    asr = ASRConfig(engine={"kind": ASR, "asr_ms": "75", "num_workers": 8}).engine
    assert isinstance(asr, ASRPluginConfig) and asr.num_workers == 8
    assert asr.args.asr_ms == 75.0 and asr.model == ASR  # the engine's Config typed the string
    llm = LLMConfig(engine={"kind": LLM, "ttft_ms": 120, "model": "ref"}).engine
    assert llm.args.ttft_ms == 120 and llm.args.tok_ms == 20 and llm.model == "ref"
    tts = TTSConfig(engine={"kind": TTS, "ttfb_ms": 40, "num_workers": 4}).engine
    assert isinstance(tts, TTSPluginConfig) and tts.args.ttfb_ms == 40 and tts.num_workers == 4
    duplex = MoshiConfig(engine={"kind": DUPLEX, "slots": 3, "gain": 0.5}).engine
    assert duplex.slots == 3 and duplex.args.gain == 0.5

    assert isinstance(load_asr(asr), ref.ReferenceASR)
    assert isinstance(load_llm(llm), ref.ReferenceLLM)
    assert isinstance(load_tts(tts), ref.ReferenceTTS)
    engine = load_duplex(duplex)
    assert isinstance(engine, SilentDuplex) and engine.slots == 3


def test_the_built_in_kinds_are_unchanged():
    assert isinstance(ASRConfig(engine={"model": "m"}).engine, FasterWhisperConfig)  # kind may be left out
    assert isinstance(LLMConfig(engine={"kind": "transformers"}).engine, TransformersConfig)
    assert TTSConfig(engine={"kind": "kokoro_onnx"}).engine.kind == "kokoro_onnx"
    assert isinstance(MoshiConfig(engine={"slots": 2}).engine, MoshiEngineConfig)
    with pytest.raises(ValidationError, match="unknown_key"):
        TTSConfig(engine={"kind": "kokoro", "unknown_key": 1})  # built-in kinds still forbid extra keys


@pytest.mark.parametrize(("engine", "message"), [
    ({"kind": "whisperx"}, "unknown engine kind: use one of 'faster_whisper' or an engine class by import path"),
    ({"kind": "no_such_package.engines:X"}, "cannot load engine 'no_such_package.engines:X': No module named"),
    ({"kind": "load.reference_engines:Nope"}, "has no attribute 'Nope'"),
    ({"kind": "load.reference_engines:REPLY"}, "is not a class or factory"),
    ({"kind": LLM}, "does not implement services.asr.engine:ASREngine"),
    ({"kind": "bad module:X"}, "String should match pattern"),
    ({"kind": ASR, "asr_ms": -1}, "asr_ms"),
    ({"kind": ASR, "asr_msec": 10}, "asr_msec"),  # the engine's Config forbids unknown args
    ({"kind": ASR, "num_workers": 0}, "num_workers"),
])
def test_bad_engines_and_args_fail_validation_with_a_clear_message(engine, message):
    with pytest.raises(ValidationError, match=message):
        ASRConfig(engine=engine)


def test_the_older_llm_plugin_spelling_is_still_read():
    path = "tests.unit.edge.scripted_llm:ScriptedEngine"
    config = LLMConfig(engine={"kind": "plugin", "path": path, "options": {"script": [["Hi."]]}}).engine
    assert config.kind == path and config.path == path and config.options == {"script": [["Hi."]]}
    assert config.args is None  # the class declares no Config: its args stay plain attributes
    assert PluginConfig(path=path).options == {}
    assert load_llm(config).script == [["Hi."]]


def test_the_reference_reply_has_28_words_in_3_sentences():
    assert len(ref.REPLY.split()) == 28
    assert ref.REPLY.count(".") == 3 and ref.REPLY.endswith(".")


class FakeClock:
    """time.monotonic / time.sleep / asyncio.sleep for the module under test: waits are recorded
    and advance the clock at once. The patch is on the `time` module, so only this thread's waits
    count: other threads of the test process (left by earlier tests) sleep for real."""

    def __init__(self, now: float = 1000.0):
        self.now, self.waits, self.thread = now, [], threading.get_ident()
        self._real_sleep = time.sleep

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        if threading.get_ident() != self.thread:
            return self._real_sleep(seconds)
        self.waits.append(round(seconds, 6))
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)
        self.now += 0.003  # a late wake-up: the next deadline must absorb it, not add to it


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(ref.time, "monotonic", fake.monotonic)
    monkeypatch.setattr(ref.time, "sleep", fake.sleep)
    monkeypatch.setattr(ref.asyncio, "sleep", fake.asleep)
    return fake


def test_the_reference_llm_streams_each_token_at_its_absolute_deadline(clock):
    engine = load_llm(LLMConfig(engine={"kind": LLM, "ttft_ms": 100, "tok_ms": 20}).engine)
    request = ChatRequest(messages=(ChatTurn("user", "hi"),), sampling=Sampling(max_tokens=256), request_id="r")

    async def collect():
        return [item async for item in engine.generate(request)]

    items = asyncio.run(collect())
    deltas = [item for item in items if isinstance(item, Delta)]
    assert "".join(d.text for d in deltas) == ref.REPLY and len(deltas) == 28
    assert isinstance(items[-1], Finished) and items[-1].completion_tokens == 28
    # First wait 100 ms; each later one 20 ms less the 3 ms the previous wake-up was late.
    assert clock.waits[0] == 0.1 and set(clock.waits[1:]) == {0.017}
    assert engine.stats.finished == 1


def test_the_reference_asr_and_tts_answer_after_their_latency(clock):
    asr = load_asr(ASRConfig(engine={"kind": ASR, "asr_ms": 50, "transcript": "Book a table."}).engine)
    result = asr.transcribe(np.zeros(16000, np.float32), DecodeOptions(language="en"))
    assert result.text == "Book a table." and clock.waits == [0.05]

    tts = load_tts(TTSConfig(engine={"kind": TTS, "ttfb_ms": 80}).engine)
    speech = tts.synthesize("one two three", tts.default_voice, 1.0)
    assert clock.waits[-1] == 0.08
    assert speech.audio.size == int(3 * 0.33 * tts.sample_rate) and np.abs(speech.audio).max() > 0.05
    with pytest.raises(ValueError, match="unknown voice"):
        tts.synthesize("hi", "af_heart", 1.0)
