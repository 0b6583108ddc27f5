"""The TTS stage's session on the tiny Kokoro: a text chunk that ends at a sentence end is spoken
at once, without waiting for more text, a flush or the end of the stream."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("kokoro")

from services.common.text import TextChunker  # noqa: E402
from services.common.workers import EngineWorker  # noqa: E402
from services.proto import tts_pb2  # noqa: E402
from services.tts.config import KokoroConfig, TTSConfig  # noqa: E402
from services.tts.engines import load_engine  # noqa: E402
from services.tts.session import SynthesisSession  # noqa: E402


@pytest.fixture(scope="module")
def engine(tiny_kokoro):
    tts = load_engine(KokoroConfig(model=str(tiny_kokoro), device="cpu", g2p="espeak"))
    yield tts
    tts.close()


async def first_audio_while_the_stream_stays_open(engine, chunks: list[str]) -> tts_pb2.SpeechAudio | None:
    """Send a config and `chunks`, keep the request stream open, and return the first audio that
    comes (None if none comes within 20 s: the text is held)."""
    hold = asyncio.Event()

    async def requests():
        yield tts_pb2.SynthesizeRequest(config=tts_pb2.SynthesisConfig(sample_rate_hz=16000))
        for chunk in chunks:
            yield tts_pb2.SynthesizeRequest(text=tts_pb2.TextChunk(text=chunk))
        await hold.wait()  # neither flush nor end: the caller is still "thinking"

    worker = EngineWorker(1, "test-tts")
    session = SynthesisSession(engine, worker, TTSConfig(engine=engine.config)).run(requests())
    try:
        event = await asyncio.wait_for(anext(session), 20)
        return event.audio
    except TimeoutError:
        return None
    finally:
        hold.set()  # the request stream ends: the session speaks the rest and finishes
        async for _ in session:
            pass
        worker.close()


async def test_a_chunk_ending_at_a_sentence_end_is_spoken_at_once(engine):
    audio = await first_audio_while_the_stream_stays_open(engine, ["The capital of France is Paris."])
    assert audio is not None, "the sentence was held until more text came"
    assert audio.text == "The capital of France is Paris." and audio.segment_id == 0 and audio.pcm


async def test_a_period_after_a_number_waits_for_the_next_chunk(engine):
    audio = await first_audio_while_the_stream_stays_open(engine, ["It costs 3.", "50 dollars. And"])
    assert audio is not None and audio.text == "It costs 3.50 dollars."


@pytest.mark.parametrize(("chunks", "segments", "pending"), [
    (["Paris."], ["Paris."], ""),
    (["He said \"go!\""], ["He said \"go!\""], ""),
    (["Really?", " Yes"], ["Really?"], "Yes"),
    (["Ask Dr."], [], "Ask Dr."),  # an abbreviation: the sentence goes on
    (["It is 3."], [], "It is 3."),  # maybe 3.5
    (["Well, I"], [], "Well, I"),
    (["..."], [], "..."),  # punctuation alone is no sentence
])
def test_chunk_end_rules(chunks, segments, pending):
    chunker = TextChunker()
    out = []
    for chunk in chunks:
        out += chunker.push(chunk, chunk_end=True)
    assert out == segments and chunker.pending.strip() == pending
