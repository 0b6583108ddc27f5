"""Benchmark: duration of one duplex tick (Mimi encode + LM step + Mimi decode, batched) against
the number of conversations in the batch.

    python load/moshi_step.py                                   # tiny checkpoint, CPU
    python load/moshi_step.py --full-size --device cuda         # Moshi 7B + real Mimi, random weights

It drives the serving engine itself (services.moshi.engines.moshi.MoshiEngine.step, the call the
replica's ticker makes every 80 ms), with every slot active and fed noise. `--full-size` builds
moshi's own full-size configurations (the Moshi 7B LM in bfloat16 and the real Mimi) with random
weights: compute per step does not depend on the weights' values. A tick must finish within
80 ms for its conversations to run in real time; the largest batch whose p90 step fits is the
number of conversations one device carries. Prints a markdown table and, with --out, JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.moshi.config import MoshiEngineConfig  # noqa: E402
from services.moshi.engine import FRAME_SAMPLES  # noqa: E402

TICK_MS = 80.0


def build_models(model_dir: Path, full_size: bool, device: str):
    """(mimi, lm, tokenizer): the checkpoint in model_dir, or full-size random-weight models (then
    only the checkpoint's text tokenizer is read)."""
    import torch
    from moshi.models import loaders

    from services.moshi.loading import load_moshi

    if not full_size:
        mimi, lm, tokenizer, _ = load_moshi(Path(model_dir), device)
        return mimi, lm, tokenizer
    _, _, tokenizer, _ = load_moshi(Path(model_dir), "cpu")  # only the text pieces are read from it
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    mimi = loaders.get_mimi(None, device=device)
    lm = loaders.get_moshi_lm(None, device=device, dtype=dtype)
    mimi.eval(), lm.eval()
    return mimi, lm, tokenizer


def streaming_state_bytes(*modules) -> int:
    """Bytes held by the streaming state of moshi modules (KV caches, conv buffers, token caches):
    what each slot adds, on any device. Tensors are counted once, by storage."""
    import torch

    seen, total = set(), 0

    def add(value, depth: int) -> None:
        nonlocal total
        if isinstance(value, torch.Tensor):
            key = (value.device, value.untyped_storage().data_ptr())
            if key not in seen:
                seen.add(key)
                total += value.untyped_storage().nbytes()
        elif isinstance(value, list | tuple):
            for item in value:
                add(item, depth)
        elif depth < 2 and hasattr(value, "__dict__") and not isinstance(value, torch.nn.Module):
            for item in vars(value).values():  # a state's helpers, e.g. the ring KV cache
                add(item, depth + 1)

    for root in modules:
        for module in root.modules():
            state = getattr(module, "_streaming_state", None)
            if state is not None:
                add(state, 0)
    return total


@dataclass
class StepTiming:
    """One batch size's ticks: durations in ms, the slots' streaming state and, on CUDA, the
    allocator's peak while the engine ran."""

    batch: int
    times_ms: list[float]
    state_bytes: int
    peak_bytes: int | None


def time_steps(models, batch: int, steps: int, warmup: int, device: str) -> StepTiming:
    """Time `steps` calls of the serving engine's step with `batch` active slots fed noise."""
    import torch

    from services.moshi.engines.moshi import MoshiEngine

    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    config = MoshiEngineConfig(model="unused", device=device, slots=batch)
    engine = MoshiEngine(config, *models)
    rng = np.random.default_rng(batch)
    active = np.ones(batch, dtype=bool)
    times = []
    try:
        for step in range(warmup + steps):
            frames = (0.1 * rng.standard_normal((batch, FRAME_SAMPLES))).astype(np.float32)
            started = time.perf_counter()
            engine.step(frames, active)  # returns host arrays: includes the device sync
            if step >= warmup:
                times.append((time.perf_counter() - started) * 1000)
        state = streaming_state_bytes(engine.mimi, engine.lm_gen)
        peak = torch.cuda.max_memory_allocated() if cuda else None
    finally:
        engine.close()
        if cuda:
            torch.cuda.empty_cache()
    return StepTiming(batch, times, state, peak)


def measure(models, batch: int, steps: int, warmup: int, device: str) -> dict:
    times = sorted(time_steps(models, batch, steps, warmup, device).times_ms)
    p50, p90 = statistics.median(times), times[int(0.9 * (len(times) - 1))]
    return {"batch": batch, "p50_ms": round(p50, 1), "p90_ms": round(p90, 1), "max_ms": round(times[-1], 1),
            "realtime": p90 < TICK_MS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "models" / "tiny" / "moshi"),
                        help="checkpoint directory (with --full-size: only its tokenizer is used)")
    parser.add_argument("--full-size", action="store_true", help="Moshi 7B + real Mimi with random weights")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--gpu-hour-usd", type=float, default=None,
                        help="device price per hour, for the cost per conversation-minute")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    models = build_models(Path(args.model), args.full_size, args.device)
    rows = [measure(models, batch, args.steps, args.warmup, args.device) for batch in args.batches]
    fitting = [row["batch"] for row in rows if row["realtime"]]
    conversations = max(fitting, default=0)
    name = "Moshi 7B + Mimi (random weights)" if args.full_size else f"checkpoint {Path(args.model).name}"
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{name} on {device}; {args.steps} ticks per batch after {args.warmup} warm-up ticks\n")
    print("| batch | p50 step (ms) | p90 step (ms) | max (ms) | real time (p90 < 80 ms) |")
    print("|---:|---:|---:|---:|:---:|")
    for row in rows:
        print(f"| {row['batch']} | {row['p50_ms']} | {row['p90_ms']} | {row['max_ms']} | "
              f"{'yes' if row['realtime'] else 'no'} |")
    summary = {"model": name, "device": device, "rows": rows, "realtime_conversations": conversations}
    print(f"\nreal-time conversations per device (largest batch measured with p90 < 80 ms): {conversations}")
    if args.gpu_hour_usd and conversations:
        per_minute = args.gpu_hour_usd / 60 / conversations
        summary["usd_per_conversation_minute"] = round(per_minute, 5)
        print(f"at ${args.gpu_hour_usd}/h: ${per_minute:.4f} per conversation-minute")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
