"""A local cluster whose stages run the reference engines (load/reference_engines.py): what the
orchestration benchmark (turn_latency.py) and the turn-taking evaluation (turn_eval.py) deploy.

The config is serve_config.cpu.yaml with the cascade's applications only (asr, llm, tts, edge),
LiveKit off, each stage's engine replaced by its reference engine (or, for the evaluation, the
ASR kept real, Whisper base or another model directory: Whisper must hear which words a caller
said), and the edge's end of turn set to silence endpointing or Smart Turn.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ENGINES = "load.reference_engines"
STAGES = ("asr", "llm", "tts", "edge")
WHISPER_BASE = "models/cpu/whisper-base"
STREAMS_PER_REPLICA = 256  # one ASR and one TTS stream per call: room for every caller of a run


@dataclass(frozen=True)
class Timings:
    """The reference engines' latencies, and the VAD silence that ends a turn."""

    asr_ms: float = 50
    ttft_ms: float = 100
    tok_ms: float = 20
    ttfb_ms: float = 80
    silence_ms: int = 300

    def budget_ms(self, first_segment_words: int) -> float:
        """The engine budget of a strictly serial pipeline: silence, ASR, the first segment's
        tokens, its first audio."""
        return self.silence_ms + self.asr_ms + self.ttft_ms + (first_segment_words - 1) * self.tok_ms + self.ttfb_ms


@dataclass(frozen=True)
class Ports:
    gcs: int
    dashboard: int
    http: int
    grpc: int


def reference_config(target: Path, timings: Timings, ports: Ports, *, end_of_turn: str = "silence",
                     real_asr: bool = False, preemptive: bool = True, edge_args: dict | None = None,
                     partials: bool = True, asr_model: str = WHISPER_BASE) -> Path:
    """Write the serve config (see the module docstring) to `target`. With `real_asr` the ASR runs
    Whisper from `asr_model`. `edge_args` are merged into the edge's args last (a benchmark's
    lever: `{"segments": {"first_min_words": 1}}`)."""
    from services.cluster import render_config

    render_config(ROOT / "serve_config.cpu.yaml", target, http_port=ports.http, grpc_port=ports.grpc,
                  applications=list(STAGES))
    config = yaml.safe_load(target.read_text())
    apps = {app["name"]: app for app in config["applications"]}
    if not partials:  # a partial decode in flight at the end of speech delays the final
        apps["asr"]["args"]["partial_interval_ms"] = 600_000
    if real_asr:
        apps["asr"]["args"]["engine"]["model"] = asr_model
    else:
        apps["asr"]["args"]["engine"] = {"kind": f"{ENGINES}:ReferenceASR", "asr_ms": timings.asr_ms,
                                         "num_workers": 64}
        # No partial transcripts: the reference ASR answers every decode after asr_ms, and a
        # partial in flight when the utterance ends would delay its final.
        apps["asr"]["args"]["partial_interval_ms"] = 600_000
    apps["llm"]["args"]["engine"] = {"kind": f"{ENGINES}:ReferenceLLM", "ttft_ms": timings.ttft_ms,
                                     "tok_ms": timings.tok_ms}
    apps["tts"]["args"]["engine"] = {"kind": f"{ENGINES}:ReferenceTTS", "ttfb_ms": timings.ttfb_ms,
                                     "num_workers": 64}
    for name in ("asr", "llm", "tts"):
        for deployment in apps[name].get("deployments", []):
            deployment["max_ongoing_requests"] = STREAMS_PER_REPLICA
    edge = apps["edge"]["args"]
    edge["livekit"] = {"enabled": False}
    edge["persona"] = {"greeting": "", "max_tokens": 64}
    turn_taking = edge.setdefault("turn_taking", {})
    turn_taking["min_silence_ms"] = timings.silence_ms
    turn_taking["preemptive"] = {"enabled": preemptive}
    if end_of_turn == "silence":
        turn_taking["end_of_turn"] = {"kind": "silence"}
    else:
        turn_taking["end_of_turn"] = {"kind": "smart_turn", "model": "models/cpu/smart-turn-v3.2"}
    merge(edge, edge_args or {})
    target.write_text(yaml.safe_dump(config, sort_keys=False))
    return target


def merge(target: dict, overrides: dict) -> None:
    """Merge `overrides` into `target` in place, mappings key by key."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = value


@contextmanager
def reference_cluster(timings: Timings, ports: Ports, *, end_of_turn: str = "silence", real_asr: bool = False,
                      preemptive: bool = True, edge_args: dict | None = None, partials: bool = True,
                      asr_model: str = WHISPER_BASE, log=print) -> Iterator[tuple[str, object]]:
    """A private local cluster running the reference config; yields (the edge's WebSocket URL, the
    LocalCluster). The cluster is stopped after."""
    from services.cluster import LocalCluster

    cluster = LocalCluster(gcs_port=ports.gcs, dashboard_port=ports.dashboard, num_cpus=4, workdir=ROOT,
                           env={"RAY_AUTH_MODE": "disabled", "RAY_SERVE_LOG_TO_STDERR": "0"})
    with tempfile.TemporaryDirectory() as tmp:
        config = reference_config(Path(tmp) / "serve.yaml", timings, ports, end_of_turn=end_of_turn, real_asr=real_asr,
                                  preemptive=preemptive, edge_args=edge_args, partials=partials,
                                  asr_model=asr_model)
        cluster.stop()  # a cluster of ours left behind by an interrupted run
        cluster.start(log=log)
        try:
            cluster.deploy(config, log=log)
            cluster.wait_running(list(STAGES), timeout_s=600, log=log)
            yield f"ws://127.0.0.1:{ports.http}/v1/conversation", cluster
        finally:
            cluster.stop()


def edge_setting(text: str) -> tuple[str, object]:
    """A command line's `path.to.key=value` (the value read as YAML: numbers, booleans, strings)."""
    import argparse

    path, sep, value = text.partition("=")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"expected PATH=VALUE, got {text!r}")
    return path, yaml.safe_load(value)


def nested(settings: list[tuple[str, object]]) -> dict:
    """Dotted settings as nested mappings: [("a.b", 1)] -> {"a": {"b": 1}}."""
    result: dict = {}
    for path, value in settings:
        *parents, leaf = path.split(".")
        node = result
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return result


def caller_token() -> str:
    """A caller token for the local config's edge secret, persona without a greeting."""
    from load.edge_overhead import token
    from services.cli import edge_secret

    return token(edge_secret(ROOT / "serve_config.cpu.yaml"), greeting="")
