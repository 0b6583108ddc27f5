"""The turn-taking evaluation on the real cluster, on three of its dialogues: a complete question
is answered (not before it ends), a real barge-in interrupts the agent, and a silent caller gets
no reply. The same code path as load/turn_eval.py (render, timed WebSocket call, scoring).

Deployed beside the session cluster's applications, as the real-set tests deploy theirs: the real
ASR (Whisper base from models/cpu: a barge-in is decided on its words), the reference LLM and TTS
by import path (load/reference_engines.py: the agent's timing is known) and an edge calling them
with the CPU config's Smart Turn end of turn. Without models/cpu it skips (fails in CI).
"""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path

import pytest
import yaml

from load.eval_set import load_spec
from load.turn_eval import run_dialogue
from tests.integration.conftest import HTTP_PORT, deployed_beside
from tests.integration.test_edge_websocket import token
from tests.speech import require_real_models

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
STAGES = {"asr": "asr_eval", "llm": "llm_eval", "tts": "tts_eval"}
EDGE = "edge_eval"
DIALOGUES = ("complete-1", "barge_in-1", "silent-2")


def eval_config(session_config: Path, models: Path) -> dict:
    """The session's config plus the evaluation's applications under their own names."""
    config = yaml.safe_load(session_config.read_text())
    cpu = {app["name"]: app for app in yaml.safe_load((ROOT / "serve_config.cpu.yaml").read_text())["applications"]}
    session = {app["name"]: app for app in config["applications"]}
    engines = {"asr": {**cpu["asr"]["args"]["engine"], "model": str(models / "whisper-base")},
               "llm": {"kind": "load.reference_engines:ReferenceLLM"},
               "tts": {"kind": "load.reference_engines:ReferenceTTS", "num_workers": 4}}
    for stage, name in STAGES.items():
        app = copy.deepcopy(session[stage])
        app.update(name=name, route_prefix=f"/{name}")
        app["args"]["engine"] = engines[stage]
        config["applications"].append(app)
    edge = copy.deepcopy(session["edge"])
    edge.update(name=EDGE, route_prefix=f"/{EDGE}")
    edge["args"]["stages"].update({f"{stage}_application": name for stage, name in STAGES.items()})
    edge["args"]["livekit"] = {"enabled": False}
    edge["args"]["persona"] = {"greeting": "", "max_tokens": 64}
    end_of_turn = dict(cpu["edge"]["args"]["turn_taking"]["end_of_turn"])
    end_of_turn["model"] = str(models / Path(end_of_turn["model"]).name)
    edge["args"].setdefault("turn_taking", {})["end_of_turn"] = end_of_turn
    config["applications"].append(edge)
    return config


@pytest.fixture(scope="module")
async def eval_edge(serve_cluster, tmp_path_factory) -> str:
    """The evaluation's applications deployed beside the session's; yields their edge's URL."""
    models = require_real_models()
    config = eval_config(serve_cluster.config, models)
    path = tmp_path_factory.mktemp("turn_eval") / "serve.yaml"
    async with deployed_beside(serve_cluster, config, [*STAGES.values(), EDGE], path):
        yield f"ws://127.0.0.1:{HTTP_PORT}/{EDGE}/v1/conversation"


async def test_turn_eval_scores_an_answer_a_barge_in_and_a_silent_caller(eval_edge, edge_secret):
    dialogues = {d.name: d for d in load_spec() if d.name in DIALOGUES}
    caller = token(edge_secret, greeting="")
    rows = await asyncio.gather(*(run_dialogue(eval_edge, caller, dialogues[name]) for name in DIALOGUES))
    complete, barge_in, silent = rows
    assert not any(row["error"] for row in rows), rows
    assert complete["answered"] and not complete["premature"], complete
    assert complete["ttfat_ms"] > 0, complete  # no latency bound here: speed is for load/ benchmarks
    assert barge_in["interrupted"] and barge_in["stop_ms"] is not None, barge_in
    assert not silent["spurious_reply"], silent
