"""Turn-taking evaluation: the labelled dialogues of load/eval/dialogues.yaml through the deployed system.

    python load/turn_eval.py [--modes smart_turn silence] [--only complete-1 barge_in-2 ...]
                             [--dialogues my_dialogues.yaml]
                             [--concurrency 3] [--no-partials] [--edge turn_taking.preemptive.silence_ms=100 ...]
                             [--asr-model models/cpu/whisper-tiny.en]
                             [--out out/turn_eval.json]

For each end-of-turn mode it starts its own local Ray cluster (GCS 6455, dashboard 8355, HTTP 18550,
gRPC 19550): the real ASR (Whisper base from models/cpu, or `--asr-model`, e.g. the tiny.en of
`parley models cpu-fast`: the words a caller says decide backchannel vs barge-in) with the reference
LLM and TTS (load/reference_engines.py: the agent's timing is known), the edge's end of turn set to
Smart Turn or to silence-only endpointing (`min_silence_ms` 300). Each dialogue is one WebSocket
call in real time (a few at once); the caller's sounds, the agent's audio and events are timed at
the caller and scored (load/turn_scoring.py): premature replies, missed barge-ins (no interruption,
or the agent's audio not stopped within 400 ms of the barge-in's onset), backchannels and noise that
interrupted, false-interruption recoveries (`agent_resumed`), TTFAT of complete questions, and
replies to a silent caller. Prints one column per mode. `--dialogues` scores a script of your own
instead, in the same format (the callers' words and pauses of your own calls, say).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from load.eval_set import RATE, SPEC, Dialogue, load_spec, render  # noqa: E402
from load.reference_cluster import (  # noqa: E402
    WHISPER_BASE,
    Ports,
    Timings,
    caller_token,
    edge_setting,
    nested,
    reference_cluster,
)
from load.timed_call import TimedCall, timed_call  # noqa: E402
from load.turn_scoring import Sound, Timeline, score, summarize  # noqa: E402

PORTS = Ports(gcs=6455, dashboard=8355, http=18550, grpc=19550)
ROWS = (("premature replies (of turns)", "premature_replies", "turns"),
        ("  of them in mid-thought pauses", "premature_in_pauses", "pauses"),
        ("missed barge-ins (not stopped in 400 ms)", "missed_barge_ins", "barge_ins"),
        ("backchannels that interrupted", "backchannels_interrupted", "backchannels"),
        ("noise bursts that interrupted", "noise_interrupted", "noises"),
        ("false-interruption recoveries", "false_interruption_recoveries", None),
        ("replies to a silent caller", "spurious_replies", "silent"),
        ("overlaps while the agent was not speaking", "not_speaking_at_overlap", None),
        ("unanswered turns", "unanswered", None))


def agent_speaking_for(seconds: float):
    """A hold that is ready once agent audio has been arriving for `seconds` since the hold began."""
    def ready(call: TimedCall, since: float) -> bool:
        first = next((at for at in call.audio if at >= since), None)
        return first is not None and call.audio[-1] - first >= seconds
    return ready


async def dialogue_call(url: str, token: str, dialogue: Dialogue, tail_s: float = 0.5) -> tuple[TimedCall, Timeline]:
    """One dialogue as a timed WebSocket call (listening `tail_s` past its audio): what the caller
    saw, and its timeline for scoring."""
    audio, spans, waits = render(dialogue)
    marks = [round(t * RATE) for span in spans for t in (span.start_s, span.end_s)]
    holds = [(wait.offset, agent_speaking_for(wait.speaking_s)) for wait in waits]
    call: TimedCall = await timed_call(url, token, audio, RATE, marks, tail_s=tail_s, holds=holds)
    sounds = [Sound(span.kind, call.sent.get(round(span.start_s * RATE), float("nan")),
                    call.sent.get(round(span.end_s * RATE), float("nan"))) for span in spans]
    return call, Timeline(sounds, call.audio, call.events, ended=call.ended or float("inf"))


async def run_dialogue(url: str, token: str, dialogue: Dialogue) -> dict:
    call, timeline = await dialogue_call(url, token, dialogue)
    row = {"dialogue": dialogue.name, "category": dialogue.category, "error": call.error,
           **score(dialogue.category, timeline)}
    heard = [event.get("text") for _, event in call.of_type("transcript") if event.get("final")]
    return {**row, "heard": heard, "backchannel_events": len(call.of_type("backchannel"))}


async def run_all(url: str, dialogues: list[Dialogue], concurrency: int) -> list[dict]:
    token, gate = caller_token(), asyncio.Semaphore(concurrency)

    async def one(dialogue: Dialogue) -> dict:
        async with gate:
            row = await run_dialogue(url, token, dialogue)
            print(json.dumps(row), flush=True)
            return row

    return list(await asyncio.gather(*(one(dialogue) for dialogue in dialogues)))


def table(summaries: dict[str, dict]) -> str:
    modes = list(summaries)
    lines = ["| | " + " | ".join(modes) + " |", "|---|" + "---:|" * len(modes)]
    for title, key, of in ROWS:
        cells = [f"{s[key]}" + (f"/{s[of]}" if of else "") for s in summaries.values()]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    for title, key in (("barge-in stop p50 / max", "barge_in_stop"), ("TTFAT p50 / p95 (complete questions)", "ttfat")):
        cells = []
        for s in summaries.values():
            low, high = (s.get(f"{key}_p50_ms"), s.get(f"{key}_max_ms" if key == "barge_in_stop" else f"{key}_p95_ms"))
            cells.append("-" if low is None else f"{low:.0f} / {high:.0f} ms")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", nargs="+", choices=("smart_turn", "silence"), default=["smart_turn", "silence"])
    parser.add_argument("--dialogues", type=Path, default=SPEC,
                        help="the labelled dialogues to run (default: the repo's evaluation set)")
    parser.add_argument("--only", nargs="*", help="dialogue names (category-index) to run")
    parser.add_argument("--concurrency", type=int, default=3)
    parser.add_argument("--no-partials", action="store_true",
                        help="ASR without partial transcripts (its finals come sooner on a small CPU box)")
    parser.add_argument("--edge", nargs="*", default=[], metavar="PATH=VALUE", type=edge_setting,
                        help="edge args to set, e.g. turn_taking.preemptive.silence_ms=100")
    parser.add_argument("--asr-model", default=WHISPER_BASE, help="the Whisper model directory the ASR runs")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "turn_eval.json")
    args = parser.parse_args(argv)
    dialogues = [d for d in load_spec(args.dialogues) if not args.only or d.name in args.only]
    results = {}
    for mode in args.modes:
        print(f"== end of turn: {mode}", flush=True)
        with reference_cluster(Timings(), PORTS, end_of_turn=mode, real_asr=True, edge_args=nested(args.edge),
                               partials=not args.no_partials, asr_model=args.asr_model) as (url, _):
            rows = asyncio.run(run_all(url, dialogues, args.concurrency))
        results[mode] = {"rows": rows, "summary": summarize(rows)}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))  # a later mode's failure keeps this one
    summaries = {mode: result["summary"] for mode, result in results.items()}
    print(f"\n{len(dialogues)} dialogues, ASR {args.asr_model}, edge args {nested(args.edge)}\n\n{table(summaries)}")
    print(f"-> {args.out}")
    return 0 if not any(row["error"] for result in results.values() for row in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
