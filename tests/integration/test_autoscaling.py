"""Autoscaling on sessions, on a real local Ray cluster with fake GPUs (its own, next to the session one).

The `asr` application alone, each replica at a quarter of a (fake) GPU, scaled by
SessionAutoscalingPolicy at two sessions a replica, with test-short delays and metric push
intervals. Four live Recognize streams through Serve's gRPC proxy must bring a second replica,
placed at GPU 0.25; when three of them end, the deployment goes back to one replica while the
fourth keeps streaming, and that stream is neither cut nor errored (the replica being removed
drains it: graceful_shutdown_timeout_s).
"""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np
import pytest
import yaml

from services.cluster import LocalCluster, application_names, render_config
from services.common import clients
from services.common.audio import float_to_pcm16
from services.common.rpc import stage_metadata
from services.models import ensure_tiny
from services.proto import asr_pb2, asr_pb2_grpc, common_pb2
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.cluster

_OFFSET = int(os.environ.get("PARLEY_TEST_PORT_OFFSET", "0"))
GCS_PORT, DASHBOARD_PORT, HTTP_PORT, GRPC_PORT = (port + _OFFSET for port in (6461, 8361, 18150, 19150))
REPLICA_CLASS = "ServeReplica:asr:SpeechRecognition"
GPU_SHARE = 0.25
FRAME = float_to_pcm16(np.zeros(1600, np.float32))  # 100 ms of silence at 16 kHz


def scaling_config(target) -> None:
    render_config(ROOT / "serve_config.cpu.yaml", target, http_port=HTTP_PORT, grpc_port=GRPC_PORT,
                  applications=["asr"], models="tiny")
    config = yaml.safe_load(target.read_text())
    config["applications"][0]["deployments"] = [{
        "name": "SpeechRecognition",
        "max_ongoing_requests": 4,
        "graceful_shutdown_timeout_s": 120,
        "graceful_shutdown_wait_loop_s": 1,
        "autoscaling_config": {
            "min_replicas": 1, "max_replicas": 2, "upscale_delay_s": 1, "downscale_delay_s": 4,
            "look_back_period_s": 2, "metrics_interval_s": 0.5,
            # Serve's default policy would never scale 4 streams at this target: the policy below does.
            "target_ongoing_requests": 100,
            "policy": {"policy_function": "services.common.autoscaling:SessionAutoscalingPolicy",
                       "policy_kwargs": {"target_sessions": 2, "max_queue_wait_s": 5.0}},
        },
        "ray_actor_options": {"num_cpus": 0.25, "num_gpus": GPU_SHARE},
    }]
    target.write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture(scope="module")
def scaling_cluster(tmp_path_factory):
    ensure_tiny(ROOT / "models" / "tiny", ["whisper"])
    cluster = LocalCluster(gcs_port=GCS_PORT, dashboard_port=DASHBOARD_PORT, num_cpus=4, num_gpus=1, workdir=ROOT,
                           env={"RAY_AUTH_MODE": "disabled", "RAY_SERVE_LOG_TO_STDERR": "0",
                                # Replicas report every 0.5 s (default 10 s) so the test scales in seconds.
                                "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
                                "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5"})
    config = tmp_path_factory.mktemp("scaling") / "serve.yaml"
    scaling_config(config)
    cluster.stop()
    cluster.start()
    try:
        cluster.deploy(config)
        cluster.wait_running(application_names(config), timeout_s=300)
        yield cluster
    finally:
        cluster.stop()


def replica_states(cluster: LocalCluster) -> list[str]:
    deployment = cluster.applications()["asr"]["deployments"]["SpeechRecognition"]
    return [replica["state"] for replica in deployment.get("replicas", [])]


def deployment_state(cluster: LocalCluster) -> str:
    """What Serve says of the deployment: for a timeout's message."""
    deployment = cluster.applications()["asr"]["deployments"]["SpeechRecognition"]
    replicas = [(replica.get("replica_id"), replica.get("state")) for replica in deployment.get("replicas", [])]
    return (f"status {deployment.get('status')} ({deployment.get('status_trigger')}), "
            f"target {deployment.get('target_num_replicas')}, message {deployment.get('message')!r}, "
            f"replicas {replicas}, autoscaling {str(deployment.get('autoscaling_detail'))[:500]}")


async def wait_until(condition, timeout_s: float, what: str, cluster: LocalCluster) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if await asyncio.to_thread(condition):
            return time.monotonic() - started
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}; {deployment_state(cluster)}")


class LiveStream:
    """One caller's Recognize stream sending 100 ms of silence every 100 ms until ended."""

    def __init__(self, channel):
        self.requests = clients.RequestStream(asr_pb2.RecognizeRequest(
            config=asr_pb2.RecognitionConfig(sample_rate_hz=16000)))
        self.call = asr_pb2_grpc.SpeechRecognitionStub(channel).Recognize(self.requests,
                                                                          metadata=stage_metadata("asr"))
        self.sending = asyncio.create_task(self._send())
        self.events = asyncio.create_task(self._read())

    async def _send(self):
        while True:
            self.requests.put(asr_pb2.RecognizeRequest(audio=common_pb2.AudioChunk(pcm=FRAME)))
            await asyncio.sleep(0.1)

    async def _read(self) -> list:
        return [event async for event in self.call]

    async def end(self) -> list:
        """Stop sending, half-close, and return every event; raises if the stream broke."""
        self.sending.cancel()
        self.requests.close()
        return await asyncio.wait_for(self.events, 30)


async def test_sessions_scale_the_stage_up_and_down_without_cutting_a_call(scaling_cluster):
    from ray.util.state import list_actors

    async with clients.open_channel(f"127.0.0.1:{GRPC_PORT}") as channel:
        streams = [LiveStream(channel) for _ in range(4)]
        scale_up_s = await wait_until(lambda: replica_states(scaling_cluster).count("RUNNING") == 2, 120,
                                      "a second replica for 4 sessions at 2 per replica", scaling_cluster)
        replicas = list_actors(address=scaling_cluster.dashboard, detail=True,
                               filters=[("class_name", "=", REPLICA_CLASS), ("state", "=", "ALIVE")])
        assert len(replicas) == 2
        assert all(actor.required_resources.get("GPU") == GPU_SHARE for actor in replicas)
        assert not any(stream.events.done() for stream in streams), "a call was dropped while scaling up"

        for stream in streams[1:]:
            events = await stream.end()
            assert events[-1].HasField("summary")  # ended by the caller, cleanly
        await wait_until(lambda: replica_states(scaling_cluster).count("RUNNING") == 1, 120,
                         "the deployment to go back to one replica", scaling_cluster)
        await asyncio.sleep(2)  # the live call keeps streaming across the scale-down
        events = await streams[0].end()
        assert events[-1].HasField("summary") and events[-1].summary.audio_s > 5
        await wait_until(lambda: len(replica_states(scaling_cluster)) == 1, 60, "the drained replica to go",
                         scaling_cluster)
    print(f"\nload step -> second replica RUNNING: {scale_up_s:.1f} s")
