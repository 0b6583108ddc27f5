"""Benchmark: time to first agent audio (TTFAT) with the real CPU model set, and each engine's speed.

    parley up                      # the real CPU set (serve_config.cpu.yaml, `parley models cpu`)
    python load/real_ttfat.py [--turns 20] [--url ws://127.0.0.1:8000/v1/conversation]
                              [--config serve_config.cpu.yaml] [--models cpu-fast] [--out out/real_ttfat.json]
                              [--edge segments.first_max_words=3 ...]
    python load/real_ttfat.py --own-cluster   # starts and stops its own cluster (GCS 6445,
                                              # dashboard 8345, HTTP 18450, gRPC 19450) instead

One caller on the running local cluster: for each turn it calls the edge over the WebSocket
(services.edge.caller.call, real time) with one question spoken by espeak-ng (en-us, 150 wpm;
Debian package espeak-ng), waits for the reply to finish and hangs up, then takes the next
question; calls are one after another, never overlapping. The token's persona sets no greeting
and greedy decoding. Per turn the edge's `metrics` event gives TTFAT and its components
(endpointing, ASR final, LLM first token, first sentence, TTS first audio); the script prints
their p50/p95.

Then, with the calls over, it loads each engine of the config in this process with the config's
own settings (threads included) and measures: Whisper's real-time factor on the same questions
(decode time / audio time), SmolLM2's first-token time and decode rate on a short chat, and
Kokoro's real-time factor on sentences of a typical reply. The machine's load average is printed
before and after: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from load.reference_cluster import edge_setting, merge, nested  # noqa: E402
from services.edge import caller  # noqa: E402
from tests.speech import espeak  # noqa: E402

COMPONENTS = ("endpointing_ms", "asr_final_ms", "llm_ttft_ms", "first_sentence_ms", "tts_ttfb_ms", "ttfat_ms")
QUESTIONS = (
    "What is the weather like today?", "How do I make a cup of tea?", "What time is it in London?",
    "Where can I buy fresh bread?", "Can you tell me a joke?", "What should I cook for dinner tonight?",
    "How far is the moon from the earth?", "What is a good name for a dog?", "How do I reset my password?",
    "Which city is the capital of Italy?", "What is your favorite color?", "How many days are in a year?",
    "Can you help me plan a trip to Spain?", "What is the best way to learn a language?",
    "Why is the sky blue?", "How do I get to the train station?", "What is the price of a coffee?",
    "Can you book a table for two people?", "What sports do you like?", "How do plants grow?",
)
REPLY = ("The capital of France is Paris. It is known for the Eiffel Tower, good food, "
         "and its many museums along the river.")


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank) of the values, None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))]


async def run_turns(url: str, token: str, turns: int) -> list[dict]:
    """One question per call, calls one after another; the `metrics` event of each turn."""
    rate, results = 16_000, []
    silence = np.zeros(rate // 2, np.float32)
    for index in range(turns):
        question = QUESTIONS[index % len(QUESTIONS)]
        audio = np.concatenate([silence, espeak(question, rate), silence])
        result = await caller.call(url, token, audio, rate, tail_s=60, until=caller.settled)
        metrics = result.of_type("metrics")
        heard = " ".join(e["text"] for e in result.of_type("transcript") if e["final"])
        said = " ".join(e["text"] for e in result.of_type("agent_text"))
        row = {"turn": index + 1, "question": question, "heard": heard, "reply": said,
               **({k: metrics[-1].get(k) for k in (*COMPONENTS, "interrupted", "underruns")} if metrics else {})}
        results.append(row)
        ttfat = row.get("ttfat_ms")
        print(f"turn {index + 1:2d}: TTFAT {'-' if ttfat is None else f'{ttfat:.0f} ms':>8s}  "
              f"{question!r} -> {said[:70]!r}", flush=True)
    return results


def engine_configs(config_path: Path) -> dict[str, dict]:
    """Each stage's engine settings from the serve config, model paths made absolute."""
    apps = {app["name"]: app for app in yaml.safe_load(config_path.read_text())["applications"]}
    engines = {}
    for stage in ("asr", "llm", "tts"):
        engine = dict(apps[stage]["args"]["engine"])
        path = Path(engine["model"])
        engine["model"] = str(path if path.is_absolute() else ROOT / path)
        engines[stage] = engine
    return engines


def measure_engines(engines: dict[str, dict]) -> dict[str, float]:
    """Whisper RTF, SmolLM2 first token and decode rate, Kokoro RTF, in this process."""
    from services.asr.config import ASRConfig
    from services.asr.engine import SAMPLE_RATE, DecodeOptions
    from services.asr.engines import load_engine as load_asr
    from services.llm.config import LLMConfig
    from services.llm.engine import ChatRequest, ChatTurn, Delta, Sampling
    from services.llm.engines import load_engine as load_llm
    from services.tts.config import TTSConfig
    from services.tts.engines import load_engine as load_tts

    out: dict[str, float] = {}
    asr = load_asr(ASRConfig(engine=engines["asr"]).engine)
    clips = [espeak(q, SAMPLE_RATE) for q in QUESTIONS[:8]]
    asr.transcribe(clips[0], DecodeOptions())  # warm-up
    started = time.perf_counter()
    for clip in clips:
        asr.transcribe(clip, DecodeOptions())
    out["asr_rtf"] = (time.perf_counter() - started) / (sum(c.size for c in clips) / SAMPLE_RATE)
    asr.close()

    llm = load_llm(LLMConfig(engine=engines["llm"]).engine)

    async def chat() -> tuple[float, float, int]:
        request = ChatRequest(messages=(ChatTurn("system", "You are a helpful, concise voice assistant."),
                                        ChatTurn("user", "What is the capital of France?")),
                              sampling=Sampling(temperature=0.0, max_tokens=48))
        started, first, tokens = time.perf_counter(), None, 0
        async for item in llm.generate(request):
            if isinstance(item, Delta):
                first = first or time.perf_counter() - started
                tokens += item.tokens
        return first or 0.0, time.perf_counter() - started, tokens

    asyncio.run(chat())  # warm-up
    firsts, rates = [], []
    for _ in range(3):
        first, total, tokens = asyncio.run(chat())
        firsts.append(first)
        rates.append((tokens - 1) / max(total - first, 1e-6))
    out["llm_ttft_ms"] = statistics.median(firsts) * 1000
    out["llm_tokens_per_s"] = statistics.median(rates)
    asyncio.run(llm.close())

    tts = load_tts(TTSConfig(engine=engines["tts"]).engine)
    sentences = [s.strip() + "." for s in REPLY.split(".") if s.strip()]
    tts.synthesize(sentences[0], tts.default_voice, 1.0)  # warm-up
    started, audio_s = time.perf_counter(), 0.0
    for sentence in sentences * 2:
        audio_s += tts.synthesize(sentence, tts.default_voice, 1.0).audio.size / tts.sample_rate
    out["tts_rtf"] = (time.perf_counter() - started) / audio_s
    speech = tts.synthesize(sentences[0], tts.default_voice, 1.0)
    out["tts_first_sentence_audio_s"] = speech.audio.size / tts.sample_rate
    tts.close()
    return out


def table(rows: list[dict]) -> str:
    lines = ["| component | p50 | p95 |", "|---|---:|---:|"]
    for name in COMPONENTS:
        values = [row[name] for row in rows if row.get(name) is not None]
        p50, p95 = percentile(values, 50), percentile(values, 95)
        cells = " | ".join("-" if v is None else f"{v:.0f} ms" for v in (p50, p95))
        lines.append(f"| {name.removesuffix('_ms')} ({len(values)} turns) | {cells} |")
    return "\n".join(lines)


OWN_PORTS = {"gcs": 6445, "dashboard": 8345, "http": 18450, "grpc": 19450}


@contextlib.contextmanager
def own_cluster(config_path: Path, edge_args: dict | None = None):
    """A private local cluster running the config's cascade (no moshi, no LiveKit, `edge_args`
    merged into the edge's args); yields the edge's WebSocket URL."""
    from services.cluster import LocalCluster, render_config

    cluster = LocalCluster(gcs_port=OWN_PORTS["gcs"], dashboard_port=OWN_PORTS["dashboard"], num_cpus=4, workdir=ROOT,
                           env={"RAY_AUTH_MODE": "disabled"})
    with tempfile.TemporaryDirectory() as tmp:
        config = render_config(config_path, Path(tmp) / "serve.yaml", http_port=OWN_PORTS["http"],
                               grpc_port=OWN_PORTS["grpc"], applications=["asr", "llm", "tts", "edge"])
        data = yaml.safe_load(config.read_text())
        for app in data["applications"]:
            if app["name"] == "edge":
                app["args"]["livekit"] = {"enabled": False}
                merge(app["args"], edge_args or {})
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        cluster.stop()
        cluster.start()
        try:
            cluster.deploy(config)
            cluster.wait_running(["asr", "llm", "tts", "edge"], timeout_s=600)
            yield f"ws://127.0.0.1:{OWN_PORTS['http']}/v1/conversation"
        finally:
            cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--url", default="ws://127.0.0.1:8000/v1/conversation")
    parser.add_argument("--config", type=Path, default=ROOT / "serve_config.cpu.yaml")
    parser.add_argument("--models", default=None,
                        help="point the config at this model set first (e.g. cpu-fast: Whisper tiny.en)")
    parser.add_argument("--edge", nargs="*", default=[], metavar="PATH=VALUE", type=edge_setting,
                        help="with --own-cluster: edge args to set, e.g. segments.first_max_words=3")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "real_ttfat.json")
    parser.add_argument("--skip-engines", action="store_true", help="only the calls, no in-process engine timings")
    parser.add_argument("--own-cluster", action="store_true", help="start a private cluster (see the ports above)")
    parser.add_argument("--engines-only", action="store_true", help="no calls: only the in-process engine timings")
    parser.add_argument("--engine-threads", type=int, help="override every engine's thread count in-process")
    args = parser.parse_args(argv)
    import jwt

    from services.cli import config_for_models, edge_secret

    args.config = config_for_models(args.config, args.models)  # as `parley up --models` deploys it
    from services.edge.auth import ALGORITHM, mint_token

    secret = edge_secret(args.config)
    claims = jwt.decode(mint_token(secret, ttl_s=3600), secret, algorithms=[ALGORITHM])
    token = jwt.encode({**claims, "persona": {"greeting": "", "temperature": 0.0}}, secret, algorithm=ALGORITHM)

    load_before = os.getloadavg()
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f} "
          f"({os.cpu_count()} CPUs)")
    rows: list[dict] = []
    if not args.engines_only:
        with own_cluster(args.config, nested(args.edge)) if args.own_cluster else contextlib.nullcontext(args.url) as url:
            rows = asyncio.run(run_turns(url, token, args.turns))
    load_after = os.getloadavg()
    print(f"\n{table(rows)}\n\nload average after the calls: {load_after[0]:.2f} {load_after[1]:.2f}")
    configs = engine_configs(args.config)
    if args.engine_threads:
        threads = {"asr": "cpu_threads", "llm": "torch_threads", "tts": "threads"}
        for stage, key in threads.items():
            configs[stage][key] = args.engine_threads
    engines = {} if args.skip_engines else measure_engines(configs)
    for name, value in engines.items():
        print(f"{name}: {value:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"turns": rows, "engines": engines, "load_before": load_before,
                                    "load_after": load_after}, indent=1))
    print(f"-> {args.out}")
    answered = [row for row in rows if row.get("ttfat_ms") is not None]
    return 0 if len(answered) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
