"""A slow stage, not a dead one, on the real cluster: the stage's replica process is paused
(SIGSTOP) in the middle of a call, so its gRPC streams stay open and silent, as a replica stuck in
a hung engine would. The edge's deadline must fire, the caller must hear the cached fallback
line instead of dead air, and the call must go on (or, without ASR, end cleanly); once the
replica is resumed (SIGCONT) the next turn is answered as usual and nothing is left running.

The session cluster's edge waits 15 s for a silent stage, as in production. These tests deploy
two more edge applications beside it with short limits (2 s deadlines; calls of
at most a few seconds), and remove them afterwards.
"""

from __future__ import annotations

import asyncio
import copy
import os
import signal

import numpy as np
import pytest
import yaml

from services.common import clients
from services.edge import caller
from tests.integration.conftest import HTTP_PORT, assert_quiet, replica_of, speech, stage_stats, two_utterances
from tests.integration.test_edge_websocket import token

pytestmark = pytest.mark.cluster

# Short deadlines; the retry policy is the default one (one re-open after a missed deadline).
DEADLINES = {"response_timeout_s": 2.0, "stall_timeout_s": 2.0, "retry_backoff_ms": 100}
SHORT_CALL_S = 3.0
EXTRA_APPS = {
    # name: (route prefix, edge args on top of the session edge's)
    "edge_deadlines": ("/deadlines", {"resilience": DEADLINES}),
    "edge_short_calls": ("/short", {"max_call_s": SHORT_CALL_S}),
}


@pytest.fixture(scope="module")
async def strict_edges(serve_cluster, tmp_path_factory, ray_client, edge_secret) -> dict[str, str]:
    """The extra edge applications' WebSocket URLs, each with its fallback line ready."""
    config = yaml.safe_load(serve_cluster.config.read_text())
    [edge] = [app for app in config["applications"] if app["name"] == "edge"]
    for name, (prefix, args) in EXTRA_APPS.items():
        app = copy.deepcopy(edge)
        app.update(name=name, route_prefix=prefix)
        app["args"].update(copy.deepcopy(args))
        app["args"]["livekit"] = {"enabled": False}
        # No reply started at a pause inside the caller's speech: the tests pause a stage when that
        # speech ends, before the turn's first request reaches it.
        app["args"].setdefault("turn_taking", {}).setdefault("preemptive", {})["pause_ms"] = 0
        config["applications"].append(app)
    extended = tmp_path_factory.mktemp("strict") / "serve.yaml"
    extended.write_text(yaml.safe_dump(config, sort_keys=False))
    cluster = serve_cluster.cluster
    # The session's applications are unchanged in it, so Serve leaves them running as they are.
    await asyncio.to_thread(cluster.deploy, extended)
    try:
        await asyncio.to_thread(cluster.wait_running, list(EXTRA_APPS), 300)
        urls = {name: f"ws://127.0.0.1:{HTTP_PORT}{prefix}/v1/conversation" for name, (prefix, _) in EXTRA_APPS.items()}
        for name, url in urls.items():
            await _warm_fallback_line(name, url, edge_secret, ray_client)
        yield urls
    finally:
        await asyncio.to_thread(cluster.deploy, serve_cluster.config)
        await asyncio.to_thread(cluster.wait_removed, list(EXTRA_APPS))


async def _warm_fallback_line(application: str, url: str, secret: str, ray_client) -> None:
    """A call makes the edge replica synthesize its fallback line (default voice, 24 kHz)."""
    await caller.call(url, token(secret, greeting=""), np.zeros(8000, np.float32), 16_000, tail_s=0)
    for _ in range(300):
        if (await stage_stats(ray_client, application))["fallback_clips"]:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{application} never synthesized its fallback line")


def cascade_token(secret: str) -> str:
    return token(secret, greeting="", max_tokens=30, temperature=0.0)


async def call_with_stage_paused(url: str, call_token: str, pid: int, pause_on: str, audio: np.ndarray, rate: int,
                                 until) -> tuple[caller.CallResult, float]:
    """Call; pause the replica `pid` when the caller sees the event `pause_on`, and resume it when the
    caller is told the stage is unavailable. Returns the call and how long the replica was paused."""
    result = caller.CallResult()
    call = asyncio.create_task(caller.call(url, call_token, audio, rate, tail_s=60, until=until, result=result))
    loop = asyncio.get_running_loop()
    paused_at = resumed_at = None
    try:
        while not call.done():
            if paused_at is None and result.of_type(pause_on):
                os.kill(pid, signal.SIGSTOP)
                paused_at = loop.time()
            if paused_at is not None and resumed_at is None and result.of_type("error"):
                os.kill(pid, signal.SIGCONT)
                resumed_at = loop.time()
            await asyncio.sleep(0.01)
        await call
    finally:
        os.kill(pid, signal.SIGCONT)
    assert paused_at is not None, f"the call ended before {pause_on}: {result.events}"
    return result, (resumed_at or loop.time()) - paused_at


def index_of(result: caller.CallResult, kind: str, **fields) -> int:
    return next(i for i, e in enumerate(result.events) if e["type"] == kind and fields.items() <= e.items())


def audio_between(result: caller.CallResult, start_s: float, end_s: float = float("inf")) -> float:
    """Seconds of agent audio that reached the caller between two caller-clock times."""
    frames = [frame for frame, at in zip(result.agent_audio, result.audio_arrivals) if start_s <= at < end_s]
    return sum(frame.size for frame in frames) / result.output_sample_rate


async def fallback_line_s(channel) -> float:
    """How long the fallback line is, synthesized afresh (same text, default voice, 24 kHz)."""
    from services.edge.config import ResilienceConfig

    speech = await clients.synthesize(channel, clients.text_requests([ResilienceConfig().fallback_text],
                                                                     sample_rate=24_000))
    return speech.audio.size / 24_000


@pytest.mark.parametrize(("application", "deployment"), [("llm", "LanguageModel"), ("tts", "SpeechSynthesis")])
async def test_a_slow_stage_gets_the_fallback_line_and_the_call_goes_on(
        strict_edges, edge_secret, serve_cluster, ray_client, channel, application, deployment):
    pid = (await replica_of(serve_cluster, application, deployment)).pid
    # Paused when the caller's speech ends: before the turn's request reaches the stage.
    result, paused_s = await call_with_stage_paused(
        strict_edges["edge_deadlines"], cascade_token(edge_secret), pid, "user_speech_stopped",
        *two_utterances(gap_s=15),
        until=lambda r: len(r.of_type("metrics")) >= 2)

    [error] = result.of_type("error")
    assert error["code"] == "stage_unavailable" and error["stage"] == application
    final = index_of(result, "transcript", final=True)
    failed = result.events.index(error)
    # The deadline fired twice (the first try and one retry), and not much later than that.
    waited = result.events[failed]["t"] - result.events[final]["t"]
    assert 2 * DEADLINES["response_timeout_s"] <= waited < 2 * DEADLINES["response_timeout_s"] + 4
    # The caller heard the fallback line, all of it, after being told; the stage was still paused.
    assert result.events[failed + 1] == {**result.events[failed + 1], "type": "agent_text", "fallback": True}
    second_turn = index_of(result, "agent_audio_start", turn_id=2)
    fallback_s = audio_between(result, result.event_arrivals[failed], result.event_arrivals[second_turn])
    assert fallback_s == pytest.approx(await fallback_line_s(channel), abs=0.1)
    # The call went on: once the stage was back, the next turn was answered as usual.
    metrics = result.of_type("metrics")
    assert len(metrics) == 2 and metrics[1]["ttfat_ms"] is not None and not metrics[1]["interrupted"]
    assert [e for e in result.of_type("agent_text") if e["turn_id"] == 2 and not e.get("fallback")]
    assert result.close_code == 1000
    print(f"\n{application} paused {paused_s:.1f} s: the caller was told after {waited:.1f} s and heard a "
          f"{fallback_s:.1f} s fallback line; next turn's TTFAT {metrics[1]['ttfat_ms']:.0f} ms")
    await assert_quiet(ray_client, edge="edge_deadlines")


async def test_a_stalled_asr_ends_the_call_with_the_fallback_line(strict_edges, edge_secret, serve_cluster,
                                                                   ray_client, channel):
    pid = (await replica_of(serve_cluster, "asr", "SpeechRecognition")).pid
    audio, rate = speech()
    # Paused mid-utterance: the stream stops acknowledging the caller's audio.
    result, _ = await call_with_stage_paused(
        strict_edges["edge_deadlines"], cascade_token(edge_secret), pid, "user_speech_started",
        np.concatenate([audio, np.zeros(rate * 20, np.float32)]), rate, until=lambda r: False)
    [error] = result.of_type("error")[:1]
    assert error["code"] == "stage_unavailable" and error["stage"] == "asr"
    # Without ASR the agent cannot hear the caller: it says so and ends the call, asking to call again.
    failed = result.events.index(error)
    assert result.events[failed + 1]["type"] == "agent_text" and result.events[failed + 1]["fallback"]
    assert audio_between(result, result.event_arrivals[failed]) == pytest.approx(await fallback_line_s(channel),
                                                                                 abs=0.1)
    assert result.close_code == 1013
    assert not result.of_type("metrics")  # no turn was taken on a transcript that never came
    await assert_quiet(ray_client, edge="edge_deadlines")


async def test_a_stalled_duplex_stage_ends_the_call_with_the_fallback_line(strict_edges, edge_secret, serve_cluster,
                                                                         ray_client, channel):
    from tests.integration.test_edge_duplex import token as claims_token

    pid = (await replica_of(serve_cluster, "moshi", "DuplexSpeech")).pid
    audio, rate = speech()
    # Paused once the duplex session is up: its 80 ms frames stop coming.
    result, _ = await call_with_stage_paused(
        strict_edges["edge_deadlines"], claims_token(edge_secret, mode="duplex"), pid, "agent_audio_start",
        np.concatenate([audio, np.zeros(rate * 20, np.float32)]), rate, until=lambda r: False)
    [error] = result.of_type("error")[:1]
    assert error["code"] == "stage_unavailable" and error["stage"] == "moshi"
    started = index_of(result, "agent_audio_start")
    # A stall, then a re-open that got no session either (one retry), then the line and the end.
    waited = error["t"] - result.events[started]["t"]
    expected = DEADLINES["stall_timeout_s"] + DEADLINES["response_timeout_s"]
    assert expected <= waited < expected + 4
    failed = result.events.index(error)
    assert result.events[failed + 1]["type"] == "agent_text" and result.events[failed + 1]["fallback"]
    assert audio_between(result, result.event_arrivals[failed]) == pytest.approx(await fallback_line_s(channel),
                                                                                 abs=0.1)
    assert result.close_code == 1013
    await assert_quiet(ray_client, edge="edge_deadlines", stages=("moshi",))


async def test_a_call_ends_at_its_time_limit(strict_edges, edge_secret, ray_client):
    audio, rate = speech()
    started = asyncio.get_running_loop().time()
    result = await caller.call(strict_edges["edge_short_calls"], token(edge_secret, greeting=""),
                               np.concatenate([audio, np.zeros(rate * 20, np.float32)]), rate, tail_s=10)
    lasted = asyncio.get_running_loop().time() - started
    assert result.close_code == 4408 and "time limit" in result.close_reason
    assert result.of_type("error")[-1]["code"] == "call_time_limit"
    assert SHORT_CALL_S <= lasted < SHORT_CALL_S + 5  # ended by the limit, not by the caller hanging up
    await assert_quiet(ray_client, edge="edge_short_calls")
