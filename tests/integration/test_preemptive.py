"""Preemptive replies on the real cluster: a reply prepared when the caller pauses is played once
the turn is confirmed, and thrown away (its RPCs cancelled, nothing sent) when the caller goes on.

The session's edge confirms a turn after 300 ms, often before the ASR's final is in, so a held reply
would rarely be seen. This module deploys one more edge, `edge_preempt`, that confirms a turn only
after 1.5 s of silence (the VAD still ends utterances after the preemptive 150 ms), and removes it
afterwards, as the slow-stage tests deploy theirs.
"""

from __future__ import annotations

import asyncio
import copy

import numpy as np
import pytest
import yaml

from services.edge.caller import call, settled
from tests.integration.conftest import HTTP_PORT, assert_quiet, speech
from tests.integration.test_edge_websocket import token

pytestmark = pytest.mark.cluster

EDGE = "edge_preempt"


@pytest.fixture(scope="module")
async def preempt_url(serve_cluster, tmp_path_factory, ray_client) -> str:
    config = yaml.safe_load(serve_cluster.config.read_text())
    [edge] = [app for app in config["applications"] if app["name"] == "edge"]
    app = copy.deepcopy(edge)
    app.update(name=EDGE, route_prefix="/preempt")
    app["args"]["turn_taking"] = {**app["args"].get("turn_taking", {}), "min_silence_ms": 1500,
                                  "preemptive": {"enabled": True, "silence_ms": 150}}
    app["args"]["livekit"] = {"enabled": False}
    config["applications"].append(app)
    extended = tmp_path_factory.mktemp("preempt") / "serve.yaml"
    extended.write_text(yaml.safe_dump(config, sort_keys=False))
    cluster = serve_cluster.cluster
    await asyncio.to_thread(cluster.deploy, extended)  # the session's applications are left as they are
    try:
        await asyncio.to_thread(cluster.wait_running, [EDGE], 300)
        yield f"ws://127.0.0.1:{HTTP_PORT}/preempt/v1/conversation"
    finally:
        await asyncio.to_thread(cluster.deploy, serve_cluster.config)
        await asyncio.to_thread(cluster.wait_removed, [EDGE])


def _utterance() -> tuple[np.ndarray, int]:
    audio, rate = speech()
    return audio[int(0.4 * rate):int(3.4 * rate)], rate


async def test_a_held_reply_plays_once_the_silence_confirms_the_turn(preempt_url, edge_secret, ray_client):
    utterance, rate = _utterance()
    audio = np.concatenate([utterance, np.zeros(int(3.0 * rate), np.float32)])
    result = await call(preempt_url, token(edge_secret, greeting=""), audio, rate, tail_s=40, until=settled)
    [metrics] = result.of_type("metrics")
    # (A reply prepared at the sentence's own comma pause, if the ASR's decode of it came before
    # the caller went on, was thrown away: `discarded_replies` may be 1; the other test counts them.)
    assert metrics["preemptive"] is True, metrics
    # Prepared at the pause, held until 1.5 s of silence: its first audio comes after that.
    assert metrics["turn_confirm_ms"] >= 800 and metrics["ttfat_ms"] >= 1400, metrics
    kinds = [event["type"] for event in result.events]
    assert kinds.index("agent_text") < kinds.index("agent_audio_start") < kinds.index("metrics")
    await assert_quiet(ray_client, edge=EDGE)


async def test_a_caller_who_goes_on_gets_one_reply_and_the_prepared_one_is_thrown_away(
        preempt_url, edge_secret, ray_client):
    utterance, rate = _utterance()
    gap = np.zeros(int(1.0 * rate), np.float32)  # past the preemptive silence, short of the turn's
    audio = np.concatenate([utterance, gap, utterance, np.zeros(int(3.0 * rate), np.float32)])
    result = await call(preempt_url, token(edge_secret, greeting=""), audio, rate, tail_s=40, until=settled)
    finals = [event for event in result.of_type("transcript") if event["final"] and event["text"].strip()]
    assert len(finals) == 2, finals
    # One caller turn with both utterances; the reply prepared after the first was discarded unsent
    # (and so was any prepared at a comma pause inside either utterance).
    [metrics] = result.of_type("metrics")
    assert metrics["discarded_replies"] >= 1 and metrics["preemptive"] is True, metrics
    turn_events = [event for event in result.events if "turn_id" in event]
    assert {event["turn_id"] for event in turn_events} == {metrics["turn_id"]}
    # Its LLM and TTS RPCs were cancelled: nothing stays running on the stages or the edge.
    await assert_quiet(ray_client, edge=EDGE)
