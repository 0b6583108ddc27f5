"""Fault injection on the real cluster: a stage replica is killed (its Ray actor, as a crash
would) in the middle of a live conversation over the WebSocket. The edge re-opens the stream,
Serve routes it to the replacement replica, and the call goes on: the turn completes, and so does
the next one. The gap the caller hears is printed (run with -s) for the record."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from services.edge import caller
from tests.integration.conftest import assert_quiet, replica_of, speech, stage_stats, two_utterances
from tests.integration.test_edge_websocket import token

pytestmark = pytest.mark.cluster


async def replica_actor(serve_cluster, application: str, deployment: str):
    """The handle of the stage's only replica actor, looked up ahead so the kill itself is instant."""
    import ray

    replica = await replica_of(serve_cluster, application, deployment)
    return ray.get_actor(replica.name, namespace="serve")


def longest_gap_s(result: caller.CallResult, frame_s: float = 0.02) -> float:
    """The longest silence inside the agent's audio, as a caller playing frames on arrival hears it."""
    arrivals = result.audio_arrivals
    return max((b - a - frame_s for a, b in zip(arrivals, arrivals[1:]) if b - a < 5.0), default=0.0)


async def run_with_kill(edge_ws_url, edge_secret, ray_client, serve_cluster, application, deployment, trigger) -> tuple:
    # Long enough between them for the first reply to end, a replacement replica's start-up
    # included (one replica per stage here: the re-opened stream waits for it): a new turn, not a barge-in.
    audio, rate = two_utterances(gap_s=35)
    before = (await stage_stats(ray_client, "edge"))["stage_retries"].get(application, 0)
    replica = await replica_actor(serve_cluster, application, deployment)
    result = caller.CallResult()
    call = asyncio.create_task(caller.call(
        edge_ws_url, token(edge_secret, greeting="", max_tokens=30, temperature=0.0), audio, rate, tail_s=90,
        until=lambda r: len(r.of_type("metrics")) >= 2, result=result))
    while not trigger(result):
        assert not call.done(), result.events
        await asyncio.sleep(0.02)
    import ray

    ray.kill(replica, no_restart=True)  # as a crash would: Serve starts a replacement
    await call
    retries = (await stage_stats(ray_client, "edge"))["stage_retries"].get(application, 0) - before
    return result, retries


async def test_tts_replica_killed_mid_reply(edge_ws_url, edge_secret, ray_client, serve_cluster):
    result, retries = await run_with_kill(edge_ws_url, edge_secret, ray_client, serve_cluster, "tts", "SpeechSynthesis",
                                             lambda r: bool(r.of_type("agent_text")))
    assert not result.of_type("error"), result.of_type("error")
    metrics = result.of_type("metrics")
    assert len(metrics) == 2 and not any(m["interrupted"] for m in metrics)  # this turn and the next
    assert retries >= 1  # the edge re-opened the TTS stream
    assert result.close_code == 1000
    ttfat = [m["ttfat_ms"] for m in metrics]
    print(f"\nTTS replica killed mid-reply: TTFAT of that turn {ttfat[0]:.0f} ms (the next: {ttfat[1]:.0f} ms), "
          f"longest gap inside the reply {longest_gap_s(result):.2f} s, {retries} re-open(s)")
    await assert_quiet(ray_client)


async def test_asr_replica_killed_mid_utterance(edge_ws_url, edge_secret, ray_client, serve_cluster):
    result, retries = await run_with_kill(edge_ws_url, edge_secret, ray_client, serve_cluster, "asr", "SpeechRecognition",
                                             lambda r: bool(r.of_type("user_speech_started")))
    assert not result.of_type("error"), result.of_type("error")
    finals = [e for e in result.events if e["type"] == "transcript" and e["final"]]
    metrics = result.of_type("metrics")
    # The utterance cut by the kill still reached a final transcript (replayed), and both turns ran.
    # Counted in turns: the ASR's VAD may end an utterance at a pause inside the sentence, which
    # gives two finals for one turn (the edge joins them).
    assert finals and finals[0]["utterance_id"] == 0 and finals[0]["t"] < 30, finals
    assert len(metrics) == 2, [(e["utterance_id"], e["t"], e["text"][:24]) for e in finals]
    assert retries >= 1
    assert result.close_code == 1000
    await assert_quiet(ray_client)


async def test_edge_replica_killed_mid_call_ends_the_call_and_new_calls_go_on(edge_ws_url, edge_secret, ray_client,
                                                                              serve_cluster):
    # A crashed edge replica cannot say goodbye: Serve's HTTP proxy then drops the caller's socket
    # (close code 1006, no close frame). What must hold is that the caller learns at once, not
    # after a timeout, and that the next call is served by the replacement replica.
    audio, rate = speech()
    replica = await replica_actor(serve_cluster, "edge", "Edge")
    result = caller.CallResult()
    call = asyncio.create_task(caller.call(edge_ws_url, token(edge_secret, greeting=""), np.concatenate(
        [audio, np.zeros(rate * 20, np.float32)]), rate, tail_s=5, result=result))
    while not result.of_type("user_speech_started"):
        assert not call.done(), result.events
        await asyncio.sleep(0.02)
    import ray

    ray.kill(replica, no_restart=True)
    killed_at = asyncio.get_running_loop().time()
    await asyncio.wait_for(call, 30)  # the caller is told, not left hanging on a dead socket
    assert result.close_code is not None
    assert asyncio.get_running_loop().time() - killed_at < 10
    print(f"\nedge replica killed mid-call: the caller saw close code {result.close_code} {result.close_reason!r}")
    # New calls go to the replacement replica.
    for _ in range(120):
        try:
            again = await caller.call(edge_ws_url, token(edge_secret, greeting=""), audio[: rate // 2], rate, tail_s=0)
            if again.of_type("ready"):
                break
        except OSError:
            pass
        await asyncio.sleep(0.5)
    assert again.of_type("ready")
    await assert_quiet(ray_client)


async def test_moshi_replica_killed_mid_call_and_the_duplex_call_goes_on(edge_ws_url, edge_secret, ray_client,
                                                                         serve_cluster):
    from tests.integration.test_edge_duplex import token as claims_token

    audio, rate = speech()
    before = (await stage_stats(ray_client, "edge"))["stage_retries"].get("moshi", 0)
    replica = await replica_actor(serve_cluster, "moshi", "DuplexSpeech")
    result = caller.CallResult()
    resumed = lambda r: len(r.agent_audio) > heard_before + 50  # noqa: E731 - a second of new frames
    heard_before = 10**9
    call = asyncio.create_task(caller.call(
        edge_ws_url, claims_token(edge_secret, mode="duplex"), np.concatenate([audio, np.zeros(rate * 60, np.float32)]),
        rate, tail_s=5, until=resumed, result=result))
    while not result.of_type("agent_audio_start"):
        assert not call.done(), result.events
        await asyncio.sleep(0.02)
    import ray

    ray.kill(replica, no_restart=True)
    heard_before = len(result.agent_audio)
    await asyncio.wait_for(call, 120)
    retries = (await stage_stats(ray_client, "edge"))["stage_retries"].get("moshi", 0) - before
    # The duplex stream was opened again on the replacement replica and the agent spoke again.
    assert not result.of_type("error"), result.of_type("error")
    assert resumed(result) and retries >= 1
    assert result.close_code == 1000
    gap = max(b - a for a, b in zip(result.audio_arrivals, result.audio_arrivals[1:]))
    print(f"\nmoshi replica killed mid-call: the caller heard nothing for {gap:.1f} s, {retries} re-open(s)")
    await assert_quiet(ray_client, stages=("moshi",))
