"""The turn-taking behaviours on the real cluster, one test each, on dialogues of the evaluation
set: a complete question is answered (not before it ends) and a real barge-in interrupts the
agent; a backchannel over the agent neither interrupts it nor becomes a turn, and the reply goes
on (or resumes after a false interruption); a caller who pauses mid-thought is not answered
before they finish; a silent caller is asked once whether they are there, then told goodbye and
the call ends. The same code path as load/turn_eval.py (render, timed WebSocket call, scoring).

Deployed once for the module, beside the session cluster's applications, as the real-set tests
deploy theirs: the real ASR (Whisper base from models/cpu: a barge-in or a backchannel is decided
on its words; no partial transcripts, see eval_config), the reference LLM and TTS by import path
(load/reference_engines.py: the agent's timing is known) and an edge calling them with the CPU
config's Smart Turn end of turn, except: `max_silence_ms` 4500 (a 3.5 s mid-thought pause, longer
than a loaded ASR takes for its final, is then Smart Turn's to judge, not the silence cap's) and a
short idle re-prompt (4 s) and end (7 s), longer than any silence the dialogues leave while the
agent is not speaking (a caller listening on after the dialogue may be re-prompted: that is no
reply, `_agent_turns`). Without models/cpu it skips (fails in CI).
"""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path

import pytest
import yaml

from load.eval_set import RATE, Dialogue, Step, load_spec, render
from load.turn_eval import dialogue_call, run_dialogue
from load.turn_scoring import REACTION_S, score
from tests.integration.conftest import HTTP_PORT, deployed_beside
from tests.integration.test_edge_websocket import token
from tests.speech import require_real_models

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
STAGES = {"asr": "asr_eval", "llm": "llm_eval", "tts": "tts_eval"}
EDGE = "edge_eval"
DIALOGUES = ("complete-1", "barge_in-1")
IDLE = {"idle_reprompt_s": 4.0, "max_idle_s": 7.0}
MAX_SILENCE_MS = 4500
PARTIALS_OFF_MS = 600_000


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
    # No partial transcripts: on 2 shared cores Whisper base's partial decodes queue ahead of the
    # final (3-4 s after the speech), longer than the pause under test; verdicts come from finals.
    next(app for app in config["applications"] if app["name"] == STAGES["asr"])["args"]["partial_interval_ms"] = (
        PARTIALS_OFF_MS)
    edge = copy.deepcopy(session["edge"])
    edge.update(name=EDGE, route_prefix=f"/{EDGE}")
    edge["args"]["stages"].update({f"{stage}_application": name for stage, name in STAGES.items()})
    edge["args"]["livekit"] = {"enabled": False}
    edge["args"]["persona"] = {"greeting": "", "max_tokens": 64}
    end_of_turn = dict(cpu["edge"]["args"]["turn_taking"]["end_of_turn"])
    end_of_turn.update(model=str(models / Path(end_of_turn["model"]).name), max_silence_ms=MAX_SILENCE_MS)
    edge["args"]["turn_taking"] = {**edge["args"].get("turn_taking", {}), "end_of_turn": end_of_turn, **IDLE}
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


def _dialogue(name: str) -> Dialogue:
    return next(dialogue for dialogue in load_spec() if dialogue.name == name)


def _agent_turns(call) -> set[int]:
    """The agent's turns with audio, less idle re-prompts: a caller listening on after their last
    words sends no audio and is idle after `idle_reprompt_s`, like any caller who goes quiet."""
    prompts = {event["turn_id"] for _, event in call.of_type("idle_prompt")}
    return {event["turn_id"] for _, event in call.of_type("agent_audio_start")} - prompts


async def test_turn_eval_scores_an_answer_and_a_barge_in(eval_edge, edge_secret):
    dialogues = {d.name: d for d in load_spec() if d.name in DIALOGUES}
    caller = token(edge_secret, greeting="")
    rows = await asyncio.gather(*(run_dialogue(eval_edge, caller, dialogues[name]) for name in DIALOGUES))
    complete, barge_in = rows
    assert not any(row["error"] for row in rows), rows
    assert complete["answered"] and not complete["premature"], json.dumps(complete)
    assert complete["ttfat_ms"] > 0, complete  # no latency bound here: speed is for load/ benchmarks
    assert barge_in["interrupted"] and barge_in["stop_ms"] is not None, barge_in


async def test_a_backchannel_over_the_agent_neither_interrupts_nor_becomes_a_turn(eval_edge, edge_secret):
    # "yeah": Whisper base hears espeak's "mm-hmm" (backchannel-1) as "MM5", which is no backchannel word.
    # The caller listens on until the reply has played (a slow ASR's final for "yeah" comes in).
    call, timeline = await dialogue_call(eval_edge, token(edge_secret, greeting=""), _dialogue("backchannel-2"),
                                         tail_s=8.0)
    outcome = score("backchannel", timeline)
    assert call.error is None and outcome["agent_speaking"], (call.error, outcome)  # said while the agent spoke
    backchannel = timeline.sounds[-1]
    assert call.of_type("user_speech_started")[-1][0] > backchannel.start, call.events  # the edge heard it
    assert not outcome["interrupted"], outcome
    heard = [(at, event["text"]) for at, event in call.of_type("transcript") if event["final"] and at > backchannel.start]
    assert heard, call.events  # put to the test: the ASR's words for it came in while the caller listened
    if any(text.strip() for _, text in heard):
        assert call.of_type("backchannel"), heard  # its words were judged a backchannel
    # One agent turn: the backchannel got no reply of its own (it is no user turn) ...
    assert len(_agent_turns(call)) == 1, call.of_type("agent_audio_start")
    # ... and the reply goes on: never paused, or paused and resumed where it stopped.
    assert outcome["resumed"] or not outcome["paused"], outcome
    assert timeline.speaking_at(backchannel.end + REACTION_S), (backchannel, call.audio[-1])


async def test_a_mid_thought_pause_is_not_answered_before_the_caller_finishes(eval_edge, edge_secret):
    # "I was wondering if you could ..." sounds unfinished (Smart Turn: p ~0.02); the 3.5 s pause is
    # longer than the ASR's final takes, so silence-only endpointing (300 ms) would answer inside it.
    dialogue = Dialogue("pause-long", "pause", (Step(say="I was wondering if you could"), Step(pause=3.5),
                                               Step(say="help me with my order.", label="continuation")))
    call, timeline = await dialogue_call(eval_edge, token(edge_secret, greeting=""), dialogue)
    outcome = score("pause", timeline)
    assert call.error is None and outcome["answered"], (call.error, outcome)
    assert not outcome["premature"], outcome
    assert len(_agent_turns(call)) == 1, call.of_type("agent_audio_start")  # one reply, to the whole turn
    first, continuation = timeline.sounds
    finals = [at for at, event in call.of_type("transcript") if event["final"] and event["text"].strip()]
    assert finals, call.events
    if not any(first.end < at < continuation.start for at in finals):
        # Then no end of turn could have been decided in the pause: the run says nothing about Smart Turn.
        pytest.skip(f"no final came in the pause (the first {finals[0] - first.end:.1f} s after the first part: a "
                    "loaded machine): the mid-thought pause was not put to the test")


async def test_a_silent_caller_is_reprompted_once_then_the_agent_ends_the_call(eval_edge, edge_secret):
    silent = _dialogue("silent-1")
    call, _ = await dialogue_call(eval_edge, token(edge_secret, greeting=""), silent)
    assert call.error is None, call.error
    prompts = [(at - call.started, event["final"]) for at, event in call.of_type("idle_prompt")]
    assert [final for _, final in prompts] == [False, True], prompts
    assert prompts[0][0] >= IDLE["idle_reprompt_s"] - 0.5, prompts  # not before the caller was idle that long
    # Nothing else was said (no reply to a caller who said nothing), and the agent hung up
    # normally after its goodbye, before the caller's silence (17.5 s of audio) was over.
    texts = [event["text"] for _, event in call.of_type("agent_text")]
    assert texts == ["Are you still there?", "I haven't heard from you, so I'll end the call now. Goodbye!"], texts
    assert not [event for _, event in call.of_type("transcript") if event["text"].strip()]
    assert call.hung_up is not None and call.close_code == 1000, (call.hung_up, call.close_code)
    assert call.hung_up - call.started < render(silent)[0].size / RATE - 1.0, call.hung_up - call.started
