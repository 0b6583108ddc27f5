"""A real local Ray cluster with the CPU serve config deployed through `serve deploy`.

One cluster per test session (starting Ray and loading three engines takes ~40 s on 2 cores).
It runs on its own ports so it does not collide with a developer's `parley up` cluster, and
with one fake GPU so the scheduling test can place fractional-GPU replicas on it.

Tracing is on in it, as in production: every Ray worker exports spans by OTLP/gRPC to a receiver
in this process (tests/otlp_receiver.py, standing in for Jaeger), started before the cluster.
Serve's tracing covers the replicas through the rendered config's `tracing_config` and the
proxies through RAY_SERVE_TRACING_* (Serve does not hand `tracing_config` to its proxies).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from services.cluster import LocalCluster, application_names, render_config, tracing_env
from services.common.audio import read_wav
from services.common.clients import open_channel
from services.common.rpc import GRPC_TOKEN_ENV
from services.models import ensure_tiny
from tests.conftest import SPEECH_WAV
from tests.otlp_receiver import OTLPReceiver

ROOT = Path(__file__).resolve().parents[2]
# PARLEY_TEST_PORT_OFFSET moves every port, so two test runs can share a machine.
_OFFSET = int(os.environ.get("PARLEY_TEST_PORT_OFFSET", "0"))
GCS_PORT, DASHBOARD_PORT, HTTP_PORT, GRPC_PORT = (port + _OFFSET for port in (6411, 8311, 18100, 19100))
# The LiveKit server the edge is configured with: the stand-in in tests/livekit_standin listens here.
LIVEKIT_PORT = 17880 + _OFFSET


@dataclass
class ServeCluster:
    cluster: LocalCluster
    grpc_address: str
    gcs_address: str
    config: Path  # the serve config deployed on it


def fast_tracing_env(endpoint: str) -> dict[str, str]:
    """Everything traced to the test receiver, exported every 200 ms (default 5 s) so tests wait less."""
    return {**tracing_env(endpoint), "OTEL_BSP_SCHEDULE_DELAY": "200"}


@pytest.fixture(scope="session")
def otlp_receiver():
    receiver = OTLPReceiver().start()
    yield receiver
    receiver.stop()


# The HTTP proxy's header deadline in the test cluster (production default 10 s), short so the
# slowloris test waits less (services/common/http_limits.py).
HEADER_TIMEOUT_S = 3.0

# Stage RPCs are authenticated in the test cluster as in production: the replicas get the token
# from the cluster's environment, the test process's clients (stage_metadata) from its own.
GRPC_TOKEN = "parley-test-grpc-token"


@pytest.fixture(scope="session")
def serve_cluster(tmp_path_factory, otlp_receiver) -> ServeCluster:
    ensure_tiny(ROOT / "models" / "tiny")  # the plumbing tests need only the tiny random-weight set
    os.environ[GRPC_TOKEN_ENV] = GRPC_TOKEN
    cluster = LocalCluster(gcs_port=GCS_PORT, dashboard_port=DASHBOARD_PORT, num_cpus=4, num_gpus=1, workdir=ROOT,
                           env={"RAY_AUTH_MODE": "disabled", "RAY_SERVE_LOG_TO_STDERR": "0",
                                "PARLEY_HTTP_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
                                **fast_tracing_env(otlp_receiver.endpoint)})
    config = render_config(ROOT / "serve_config.cpu.yaml", tmp_path_factory.mktemp("serve") / "serve.yaml",
                           http_port=HTTP_PORT, grpc_port=GRPC_PORT, tracing=True,
                           livekit_url=f"ws://127.0.0.1:{LIVEKIT_PORT}", models="tiny")
    cluster.stop()  # a cluster left behind by an interrupted run
    cluster.start()
    try:
        cluster.deploy(config)
        cluster.wait_running(application_names(config), timeout_s=600)
        yield ServeCluster(cluster, f"127.0.0.1:{GRPC_PORT}", f"127.0.0.1:{GCS_PORT}", config)
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def ray_client(serve_cluster):
    """The test process connected to the cluster as a Ray driver (for Serve handles)."""
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(address=serve_cluster.gcs_address, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
async def channel(serve_cluster):
    async with open_channel(serve_cluster.grpc_address) as channel:
        yield channel


async def stage_stats(ray_client, application: str) -> dict:
    """A deployment's live counters (active streams, conversations, engine stats) via a Serve handle."""
    from ray import serve

    return await serve.get_app_handle(application).stats.remote()


def speech() -> tuple[np.ndarray, int]:
    audio, rate = read_wav(SPEECH_WAV)  # speech from ~0.5 s to ~3.3 s
    return audio, rate


def two_utterances(gap_s: float) -> tuple[np.ndarray, int]:
    """The speech twice, `gap_s` of silence between: two turns when the gap outlasts the first reply."""
    audio, rate = speech()
    return np.concatenate([audio, np.zeros(int(rate * gap_s), np.float32), audio]), rate


CASCADE = ("asr", "llm", "tts")


def _quiet(stats: dict, edge: str, stages: tuple[str, ...]) -> bool:
    return (stats[edge]["active_conversations"] == 0 and stats[edge]["active_rooms"] == 0
            and all(stats[app]["active_streams"] == 0 for app in stages))


async def wait_quiet(ray_client, timeout_s: float = 15.0, edge: str = "edge", stages: tuple[str, ...] = CASCADE) -> dict:
    """Wait until no call, room or stage stream is left (or `timeout_s`); the last stats, by application."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = {app: await stage_stats(ray_client, app) for app in (edge, *stages)}
        if _quiet(stats, edge, stages) or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.2)


async def assert_quiet(ray_client, timeout_s: float = 60.0, edge: str = "edge",
                       stages: tuple[str, ...] = CASCADE) -> None:
    """Nothing leaked: every call, room and stage stream ends within `timeout_s`."""
    stats = await wait_quiet(ray_client, timeout_s, edge, stages)
    assert _quiet(stats, edge, stages), stats


@contextlib.asynccontextmanager
async def deployed_beside(serve_cluster: ServeCluster, config: dict, names: list[str], path: Path):
    """`config` (the session's applications plus `names`) deployed while the block runs, then the
    session's config again. The session's applications are unchanged in it, so Serve leaves them running."""
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    cluster = serve_cluster.cluster
    await asyncio.to_thread(cluster.deploy, path)
    try:
        await asyncio.to_thread(cluster.wait_running, names, 300)
        yield
    finally:
        await asyncio.to_thread(cluster.deploy, serve_cluster.config)
        await asyncio.to_thread(cluster.wait_removed, names)


async def replica_of(serve_cluster: ServeCluster, application: str, deployment: str):
    """The Ray actor state (name, pid) of a deployment's only live replica."""
    from ray.util.state import list_actors

    def find():
        [actor] = list_actors(address=serve_cluster.cluster.dashboard,
                              filters=[("class_name", "=", f"ServeReplica:{application}:{deployment}"),
                                       ("state", "=", "ALIVE")])
        return actor

    return await asyncio.to_thread(find)


@pytest.fixture(scope="session")
def edge_http_url(serve_cluster) -> str:
    return f"http://127.0.0.1:{HTTP_PORT}"


@pytest.fixture(scope="session")
def edge_ws_url(serve_cluster) -> str:
    return f"ws://127.0.0.1:{HTTP_PORT}/v1/conversation"


@pytest.fixture(scope="session")
def edge_secret() -> str:
    from services.cli import edge_secret

    return edge_secret(ROOT / "serve_config.cpu.yaml")


@pytest.fixture
def edge_token(edge_secret) -> str:
    from services.edge.auth import mint_token

    return mint_token(edge_secret, ttl_s=600)
