"""Capacity from load/gpu_bench.py's JSON: duplex calls per GPU, cascade TTFAT components, $ per minute.

    python load/capacity.py out/gpu_bench.json [more.json ...] --gpu-hourly 2.50 [--llm-ttft-ms 120]

- Duplex calls per GPU: the largest measured Moshi batch whose p95 step stays under the 80 ms
  tick, counting only batches below the first one that misses it (a noisy pass above a miss is
  not capacity). Memory says how many slots would fit besides: (device memory - weights) / the
  streaming state per slot.
- Cascade TTFAT components per GPU model: endpointing (the silence that ends a turn, plus Smart
  Turn's verdict where measured) + ASR final for a typical utterance + LLM time to first token +
  the first clause's tokens + TTS first audio of a 4-word clause + the edge's own overhead. The LLM
  figures are not measured here (vLLM cannot run on the bench machine): they are flags, with
  defaults from vLLM's published benchmark (VLLM_REFERENCE). Rows per load: N background ASR
  streams beside TTS at the nearest measured number of requests at once. TTFAT p50 / p95 are sums
  of the components' p50 / p95 (the p95 sum is an upper bound: tails rarely coincide).
- $ per conversation-minute of the duplex stage through load/cost.py, given --gpu-hourly.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from load.cost import CostInputs, cost_per_minute  # noqa: E402
from load.report import markdown_table  # noqa: E402

TICK_MS = 80.0
# vLLM's own performance benchmark (buildkite.com/vllm/performance-benchmark, build 9515),
# latency_llama8B_tp1 on one H200: 32 prompt tokens, 128 output tokens, batch 8, median 833.5 ms end
# to end, i.e. 6.5 ms per forward pass. A short prompt's prefill is one such pass; a voice agent's
# prompt (persona + history, ~1k tokens) takes longer: measure yours and pass --llm-ttft-ms.
VLLM_REFERENCE = {
    "source": "vLLM performance benchmark (buildkite vllm/performance-benchmark build 9515): "
              "latency_llama8B_tp1, H200, 32 in / 128 out, batch 8, median 833.5 ms end to end",
    "ms_per_token": round(833.53 / 128, 1),
}
DEFAULT_ENDPOINTING_MS = 300.0  # serve_config.yaml: asr min_silence_ms
DEFAULT_EDGE_MS = 10.0  # docs/benchmarks.md: the edge's overhead per turn, p50 at 1-50 callers (9.9-14.3 ms)
FIRST_CLAUSE_TOKENS = 6  # "Sure, let me check," and its opening tokens


def duplex_calls(rows: list[dict], tick_ms: float = TICK_MS) -> int:
    """The largest batch in real time (p95 step < tick) with every smaller measured batch in real time too."""
    calls = 0
    for row in sorted(rows, key=lambda r: r["batch"]):
        p95 = row.get("p95_ms")
        if p95 is None or p95 >= tick_ms:
            break
        calls = row["batch"]
    return calls


def memory_slots(moshi: dict, memory_gb: float | None) -> int | None:
    """Slots whose streaming state fits beside the weights in the device's memory (None: unknown)."""
    per_slot = max((row.get("state_mb_per_slot", 0) for row in moshi["rows"]), default=0) / 1024
    if not memory_gb or not per_slot:
        return None
    return max(0, int((memory_gb - moshi["weights_gb"]) / per_slot))


def duplex(result: dict) -> dict | None:
    moshi = result["sections"].get("moshi")
    if not moshi or "rows" not in moshi:
        return None
    calls = duplex_calls(moshi["rows"], moshi.get("tick_ms", TICK_MS))
    at = next((row for row in moshi["rows"] if row["batch"] == calls), {})
    return {"calls_per_gpu": calls, "p95_ms_at_calls": at.get("p95_ms"), "peak_gb_at_calls": at.get("peak_gb"),
            "memory_slots": memory_slots(moshi, result["environment"].get("device_memory_gb"))}


def _nearest(rows: list[dict], key: str, value: int) -> dict:
    return min(rows, key=lambda row: (abs(row[key] - value), row[key]))


def cascade(result: dict, args) -> list[dict]:
    """TTFAT components (p50, p95 in ms) per load level, from the ASR, TTS and Smart Turn sections."""
    sections = result["sections"]
    asr, tts = sections.get("asr", {}).get("rows"), sections.get("tts", {}).get("engines")
    if not asr or not tts:
        return []
    clause = [row for row in tts[0]["rows"] if row["text"] == "clause_4_words"]
    utterance = _nearest(asr, "utterance_s", args.utterance_s)["utterance_s"]
    turn = (sections.get("smart_turn", {}).get("rows") or [{}])[0]
    llm_clause = args.first_clause_tokens * args.llm_ms_per_token
    levels = []
    for row in (r for r in asr if r["utterance_s"] == utterance):
        load = row["background_streams"]
        speech = _nearest(clause, "concurrent", max(1, load))
        parts = {
            "endpointing": (args.endpointing_ms + turn.get("p50_ms", 0), args.endpointing_ms + turn.get("p95_ms", 0)),
            "asr_final": (row["p50_ms"], row["p95_ms"]),
            "llm_ttft": (args.llm_ttft_ms, args.llm_ttft_ms),
            "llm_first_clause": (llm_clause, llm_clause),
            "tts_first_audio": (speech["p50_ms"], speech["p95_ms"]),
            "edge": (args.edge_ms, args.edge_ms),
        }
        levels.append({"asr_background_streams": load, "tts_concurrent": speech["concurrent"],
                       "utterance_s": utterance, "components_ms": parts,
                       "ttfat_p50_ms": round(sum(p[0] for p in parts.values()), 1),
                       "ttfat_p95_ms": round(sum(p[1] for p in parts.values()), 1)})
    return levels


def capacity(result: dict, args) -> dict:
    """Everything capacity.py says about one bench result."""
    found = {"device_name": result["environment"]["device_name"], "tiny": result["environment"]["tiny"],
             "duplex": duplex(result), "cascade": cascade(result, args),
             "llm": {"ttft_ms": args.llm_ttft_ms, "ms_per_token": args.llm_ms_per_token,
                     "source": VLLM_REFERENCE["source"]}}
    if found["duplex"] and found["duplex"]["calls_per_gpu"] and args.gpu_hourly is not None:
        cost = cost_per_minute(CostInputs(found["duplex"]["calls_per_gpu"], args.gpu_hourly,
                                          utilization=args.utilization))
        found["duplex"]["usd_per_conversation_minute"] = round(cost.per_min, 5)
    return found


def markdown(found: dict) -> str:
    lines = [f"### {found['device_name']}" + (" (tiny models: proves the kit, not capacity)" if found["tiny"] else ""), ""]
    duplex_found = found["duplex"]
    if duplex_found:
        at = (f" (p95 {duplex_found['p95_ms_at_calls']} ms"
              + (f", peak {duplex_found['peak_gb_at_calls']} GB" if duplex_found["peak_gb_at_calls"] else "") + ")"
              if duplex_found["calls_per_gpu"] else " (no measured batch is in real time)")
        lines.append(f"Duplex calls per GPU (largest batch with p95 step < {TICK_MS:g} ms): "
                     f"**{duplex_found['calls_per_gpu']}**{at}; slots that fit in memory: {duplex_found['memory_slots'] or '-'}"
                     + (f"; ${duplex_found['usd_per_conversation_minute']:.4f} per conversation-minute"
                        if "usd_per_conversation_minute" in duplex_found else ""))
        lines.append("")
    if found["cascade"]:
        names = list(found["cascade"][0]["components_ms"])
        lines += [f"Cascade TTFAT components, p50 / p95 in ms (LLM: {found['llm']['ttft_ms']} ms TTFT, "
                  f"{found['llm']['ms_per_token']} ms per token; {found['llm']['source']})", "",
                  markdown_table(["ASR streams", "TTS at once", *names, "TTFAT"],
                                 [[level["asr_background_streams"], level["tts_concurrent"],
                                   *[f"{p50:.0f} / {p95:.0f}" for p50, p95 in level["components_ms"].values()],
                                   f"**{level['ttfat_p50_ms']:.0f} / {level['ttfat_p95_ms']:.0f}**"]
                                  for level in found["cascade"]]), ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs="+", help="JSON files written by load/gpu_bench.py")
    parser.add_argument("--llm-ttft-ms", type=float, default=VLLM_REFERENCE["ms_per_token"],
                        help=f"LLM time to first token (default: {VLLM_REFERENCE['source']})")
    parser.add_argument("--llm-ms-per-token", type=float, default=VLLM_REFERENCE["ms_per_token"])
    parser.add_argument("--first-clause-tokens", type=int, default=FIRST_CLAUSE_TOKENS)
    parser.add_argument("--endpointing-ms", type=float, default=DEFAULT_ENDPOINTING_MS)
    parser.add_argument("--edge-ms", type=float, default=DEFAULT_EDGE_MS)
    parser.add_argument("--utterance-s", type=float, default=3.0, help="the caller's typical utterance")
    parser.add_argument("--gpu-hourly", type=float, help="$ per GPU-hour, for $ per conversation-minute")
    parser.add_argument("--utilization", type=float, default=1.0)
    parser.add_argument("--out", type=Path, help="JSON of the figures")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    found = [capacity(json.loads(path.read_text()), args) for path in args.results]
    print("\n".join(markdown(item) for item in found))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(found, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
