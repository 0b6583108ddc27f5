"""GPU truth in one command: Parley's engines at full size, measured directly (no Ray, no registry).

    python load/gpu_bench.py --device cuda --out out/gpu_bench.json        # a bare GPU machine
    python load/gpu_bench.py --device cpu --tiny --out out/gpu_bench.json  # the same code path, tiny models

Sections (`--sections`, all by default):
  moshi       Moshi 7B + Mimi through the batched duplex engine (services/moshi): step time p50/p95
              per batch, memory per slot, whether p95 fits the 80 ms tick (moshi's CUDA graphs on).
  asr         faster-whisper large-v3-turbo (float16 on CUDA) through the ASR engine: final-transcript
              latency for 1-10 s utterances, alone and beside N streams' partial re-decodes.
  tts         Kokoro-82M through the TTS engines (PyTorch; ONNX with --kokoro-onnx DIR): time to first
              audio of a 4-word clause and a 20-word sentence, and RTF, at 1/8/32 requests at once.
  smart_turn  Smart Turn v3.2 per end-of-turn verdict, on onnxruntime's CPU provider (as the edge runs it).

Full-size models are built here with random weights (load/gpu_bench_models.py); `--tiny` uses the
tiny ones. Writes JSON (--out) and a markdown table (--markdown, and stdout); load/capacity.py turns
the JSON into calls per GPU, TTFAT components and $ per conversation-minute. A section that fails
records its error and the others still run; the exit status is then 1. Nothing here imports Ray.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from load import gpu_bench_models as built  # noqa: E402
from load import gpu_bench_stages as stages  # noqa: E402
from load.report import markdown_table  # noqa: E402

SECTIONS = ("moshi", "asr", "tts", "smart_turn")
PACKAGES = ("torch", "moshi", "ctranslate2", "faster-whisper", "kokoro", "onnxruntime", "numpy")
SMART_TURN = Path("cpu") / "smart-turn-v3.2"


def environment(device: str, tiny: bool) -> dict:
    """What ran: the device, the packages and the command."""
    import torch

    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        name, memory = props.name, round(props.total_memory / 2**30, 1)
    else:
        name, memory = f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores", None
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"device": device, "device_name": name, "device_memory_gb": memory, "tiny": tiny,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "packages": versions,
            "command": " ".join(["python", "load/gpu_bench.py", *sys.argv[1:]]),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def run_section(name: str, args) -> dict:
    tiny = args.tiny
    if name == "moshi":
        return stages.bench_moshi(built.moshi_checkpoint(args.models), not tiny, args.device, args.batches,
                                  args.steps, args.warmup)
    if name == "asr":
        return stages.bench_asr(built.whisper_model(args.models, tiny), args.device, args.asr_durations,
                                args.asr_backgrounds, args.repeats, args.asr_workers)
    if name == "tts":
        return {"engines": [stages.bench_tts(engine, label, args.tts_concurrency, args.tts_rounds)
                            for label, engine in _tts_engines(args)]}
    return stages.bench_smart_turn(args.smart_turn or args.models / SMART_TURN, args.repeats)


def _tts_engines(args):
    """(label, engine) for each TTS engine measured, loaded one at a time."""
    from services.tts.config import KokoroConfig, KokoroOnnxConfig
    from services.tts.engines.kokoro import KokoroEngine

    engine = KokoroEngine(KokoroConfig(model=str(built.kokoro_model(args.models, args.tiny)), device=args.device,
                                       g2p="espeak", torch_threads=args.threads or 1))
    try:
        yield f"kokoro (PyTorch, {args.device})", engine
    finally:
        engine.close()
    if args.kokoro_onnx:
        from services.tts.engines.kokoro_onnx import KokoroOnnxEngine

        engine = KokoroOnnxEngine(KokoroOnnxConfig(model=str(args.kokoro_onnx), g2p="espeak", threads=args.threads))
        try:
            yield "kokoro_onnx (onnxruntime, CPU)", engine
        finally:
            engine.close()


def markdown(result: dict) -> str:
    """Every measured section as a markdown table, headed by the device."""
    env = result["environment"]
    lines = [f"Device: {env['device_name']}" + (f" ({env['device_memory_gb']} GB)" if env["device_memory_gb"] else "")
             + f"; {'tiny models' if env['tiny'] else 'full-size models, random weights'}; `{env['command']}`", ""]
    sections = result["sections"]
    if "rows" in sections.get("moshi", {}):
        moshi = sections["moshi"]
        lines += [f"Moshi ({moshi['model']}, LM {moshi['lm_dtype']}, weights {moshi['weights_gb']} GB, "
                  f"CUDA graphs {'on' if moshi['cuda_graphs'] else 'off'}; {moshi['steps']} ticks per batch)", "",
                  markdown_table(["batch", "p50 step (ms)", "p95 step (ms)", "max (ms)", "state per slot (MB)",
                                  "peak GPU memory (GB)", "p95 < 80 ms"],
                                 [[r["batch"], r.get("p50_ms", "-"), r.get("p95_ms", r.get("error")), r.get("max_ms", "-"),
                                   r.get("state_mb_per_slot", "-"), r.get("peak_gb", "-"),
                                   "yes" if r.get("realtime") else "no"] for r in moshi["rows"]]), ""]
    if "rows" in sections.get("asr", {}):
        asr = sections["asr"]
        lines += [f"ASR final transcript ({asr['model']}, {asr['compute_type']}, {asr['workers']} workers; "
                  f"background streams re-decode {asr['partial_audio_s']} s every {asr['partial_interval_s']} s)", "",
                  markdown_table(["utterance (s)", "background streams", "p50 (ms)", "p95 (ms)", "max (ms)",
                                  "background decodes"],
                                 [[r["utterance_s"], r["background_streams"], r["p50_ms"], r["p95_ms"], r["max_ms"],
                                   r["background_decodes"]] for r in asr["rows"]]), ""]
    for engine in sections.get("tts", {}).get("engines", []):
        lines += [f"TTS time to first audio, {engine['engine']}", "",
                  markdown_table(["text", "requests at once", "p50 (ms)", "p95 (ms)", "max (ms)", "audio (s)", "RTF"],
                                 [[r["text"], r["concurrent"], r["p50_ms"], r["p95_ms"], r["max_ms"], r["audio_s"],
                                   r["rtf"]] for r in engine["rows"]]), ""]
    if "rows" in sections.get("smart_turn", {}):
        turn = sections["smart_turn"]
        lines += [f"Smart Turn ({turn['model']}, {turn['threads']} thread; GPU: {turn['gpu']})", "",
                  markdown_table(["where", "p50 (ms)", "p95 (ms)", "max (ms)"],
                                 [[r["where"], r["p50_ms"], r["p95_ms"], r["max_ms"]] for r in turn["rows"]]), ""]
    lines += [f"{name}: FAILED: {section['error']}" for name, section in sections.items() if "error" in section]
    return "\n".join(lines).rstrip() + "\n"


def parse_args(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="the tiny models (CI); default: full size, random weights")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--models", type=Path, default=ROOT / "models",
                        help="where models are built (tiny/ and bench/ under it) and Smart Turn is found (cpu/)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16, 32, 48, 64])
    parser.add_argument("--steps", type=int, default=50, help="timed Moshi ticks per batch")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--asr-durations", type=float, nargs="+", default=[1, 3, 6, 10])
    parser.add_argument("--asr-backgrounds", type=int, nargs="+", default=[0, 8, 32])
    parser.add_argument("--asr-workers", type=int, default=4, help="CTranslate2 workers (serve_config.yaml: 4)")
    parser.add_argument("--repeats", type=int, default=10, help="ASR finals per row; Smart Turn calls")
    parser.add_argument("--tts-concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--tts-rounds", type=int, default=3)
    parser.add_argument("--kokoro-onnx", type=Path, help="a Kokoro ONNX model directory: also measure that engine")
    parser.add_argument("--smart-turn", type=Path, help="the Smart Turn model (default: <models>/cpu/smart-turn-v3.2)")
    parser.add_argument("--threads", type=int, default=0, help="torch / onnxruntime CPU threads (0: their default)")
    parser.add_argument("--out", type=Path, help="JSON results")
    parser.add_argument("--markdown", type=Path, help="markdown tables")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: torch sees no CUDA device", file=sys.stderr)
        return 2
    result = {"environment": environment(args.device, args.tiny), "sections": {}}
    for name in args.sections:
        started = time.perf_counter()
        print(f"== {name}", file=sys.stderr, flush=True)
        try:
            result["sections"][name] = run_section(name, args)
        except Exception as error:  # noqa: BLE001 - one section's failure must not lose the others' figures
            traceback.print_exc()
            result["sections"][name] = {"error": f"{type(error).__name__}: {error}"}
        result["sections"][name]["seconds"] = round(time.perf_counter() - started, 1)
    result["ray_imported"] = "ray" in sys.modules  # the bench machine has no Ray: this must stay False
    table = markdown(result)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table)
    return 1 if any("error" in section for section in result["sections"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
