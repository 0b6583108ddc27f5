"""Writes the gRPC targets' seed corpora (binary, so they are generated): `python -m tests.fuzz.seeds`.

Valid streams and requests for each stage, plus the near misses a caller makes (a wrong rate, an
odd-sized frame, a second config), in the targets' framing (tests/fuzz/stages.py).
"""

from __future__ import annotations

from pathlib import Path

from services.proto import asr_pb2, common_pb2, llm_pb2, moshi_pb2, tts_pb2

CORPUS_ROOT = Path(__file__).resolve().parent / "corpus"
MOSHI_FRAME_BYTES = 1920 * 2


def framed(*messages) -> bytes:
    return b"".join(len(data := m.SerializeToString()).to_bytes(2, "little") + data for m in messages)


def asr_seeds() -> dict[str, bytes]:
    R = asr_pb2.RecognizeRequest
    config = R(config=asr_pb2.RecognitionConfig(sample_rate_hz=16000, language="en", beam_size=2,
                                                min_silence_ms=300, partial_interval_ms=-1, word_timestamps=True))
    audio = R(audio=common_pb2.AudioChunk(pcm=bytes(640)))
    return {
        "config-audio-flush": framed(config, audio, audio, R(flush=common_pb2.Flush())),
        "odd-frame": framed(config, R(audio=common_pb2.AudioChunk(pcm=b"\x01\x02\x03"))),
        "audio-first": framed(audio, config),
        "second-config": framed(config, config),
        "no-config": b"",
        "rate-too-high": framed(R(config=asr_pb2.RecognitionConfig(sample_rate_hz=96000))),
    }


def llm_seeds() -> dict[str, bytes]:
    messages = [llm_pb2.ChatMessage(role="system", content="You are brief."),
                llm_pb2.ChatMessage(role="user", content="Book a table for two.")]
    sampling = llm_pb2.SamplingParams(temperature=0.7, top_p=0.9, top_k=40, max_tokens=64, stop=["\n\n"], seed=7)
    tools = '[{"type": "function", "function": {"name": "book", "parameters": {}}}]'
    return {
        "chat": llm_pb2.GenerateRequest(messages=messages, sampling=sampling, request_id="r1").SerializeToString(),
        "tools": llm_pb2.GenerateRequest(messages=messages, tools_json=tools).SerializeToString(),
        "tool-answer": llm_pb2.GenerateRequest(messages=[*messages, llm_pb2.ChatMessage(
            role="tool", content="{}", tool_call_id="c1")]).SerializeToString(),
        "regression-deep-tools": llm_pb2.GenerateRequest(messages=messages, tools_json="[" * 3000).SerializeToString(),
        "tools-not-objects": llm_pb2.GenerateRequest(messages=messages, tools_json="[1, []]").SerializeToString(),
        "bad-role": llm_pb2.GenerateRequest(messages=[llm_pb2.ChatMessage(role="root")]).SerializeToString(),
        "greedy-zero-tokens": llm_pb2.GenerateRequest(messages=messages, sampling=llm_pb2.SamplingParams(
            temperature=0.0, max_tokens=0)).SerializeToString(),
    }


def tts_seeds() -> dict[str, bytes]:
    R = tts_pb2.SynthesizeRequest
    config = R(config=tts_pb2.SynthesisConfig(voice="af_heart", speed=1.2, sample_rate_hz=16000))
    text = R(text=tts_pb2.TextChunk(text="Your table is booked. "))
    return {
        "config-text-flush-end": framed(config, text, R(flush=common_pb2.Flush()), text, R(end=tts_pb2.EndOfInput())),
        "unknown-voice": framed(R(config=tts_pb2.SynthesisConfig(voice="/etc/passwd"))),
        "empty-text": framed(R(config=tts_pb2.SynthesisConfig()), R(text=tts_pb2.TextChunk())),
        "too-fast": framed(R(config=tts_pb2.SynthesisConfig(speed=3.0))),
    }


def moshi_seeds() -> dict[str, bytes]:
    R = moshi_pb2.ConverseRequest
    config = R(config=moshi_pb2.DuplexConfig(sample_rate_hz=24000))
    frame = R(audio=moshi_pb2.AudioFrame(pcm=bytes(MOSHI_FRAME_BYTES), index=0))
    return {
        "config-frames": framed(config, frame, R(audio=moshi_pb2.AudioFrame(pcm=bytes(MOSHI_FRAME_BYTES), index=1))),
        "short-frame": framed(config, R(audio=moshi_pb2.AudioFrame(pcm=bytes(100)))),
        "own-sampling": framed(R(config=moshi_pb2.DuplexConfig(sample_rate_hz=24000, text_temperature=0.7,
                                                               audio_top_k=250, seed=1))),
        "wrong-rate": framed(R(config=moshi_pb2.DuplexConfig(sample_rate_hz=16000))),
    }


def main() -> None:
    for target, seeds in {"asr": asr_seeds(), "llm": llm_seeds(), "tts": tts_seeds(), "moshi": moshi_seeds()}.items():
        folder = CORPUS_ROOT / target
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in seeds.items():
            (folder / name).write_bytes(data)


if __name__ == "__main__":
    main()
