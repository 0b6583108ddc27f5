"""The embedded default on a local cluster of a benchmark's own: what every script in load/ that
measures a whole system starts from."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from services.cluster import LocalCluster, application_names, render_config

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def cpu_cluster(gcs_port: int, dashboard_port: int, http_port: int, grpc_port: int, *,
                env: dict[str, str] | None = None, tracing: bool = False, quiet: bool = False,
                workdir: Path = ROOT) -> Iterator[LocalCluster]:
    """serve_config.cpu.yaml on the tiny model set, deployed on its own ports and running; the
    cluster is stopped after. `workdir` is the checkout the cluster runs in (its relative model
    paths resolve there)."""
    from services.models import ensure_tiny

    log = (lambda *_: None) if quiet else print
    ensure_tiny(ROOT / "models" / "tiny", log=log)  # every model the CPU config loads
    cluster = LocalCluster(gcs_port=gcs_port, dashboard_port=dashboard_port, num_cpus=4, workdir=workdir,
                           env={"RAY_AUTH_MODE": "disabled", "RAY_SERVE_LOG_TO_STDERR": "0", **(env or {})})
    with tempfile.TemporaryDirectory() as tmp:
        config = render_config(ROOT / "serve_config.cpu.yaml", Path(tmp) / "serve.yaml", http_port=http_port,
                               grpc_port=grpc_port, tracing=tracing, models="tiny")
        cluster.stop()  # a cluster of ours left behind by an interrupted run
        cluster.start(log=log)
        try:
            cluster.deploy(config, log=log)
            cluster.wait_running(application_names(config), log=log)
            yield cluster
        finally:
            cluster.stop()


@asynccontextmanager
async def ray_driver(gcs_port: int) -> AsyncIterator[None]:
    """This process connected to the cluster as a Ray driver (for Serve handles), then detached."""
    import ray
    from ray.serve import context

    ray.init(address=f"127.0.0.1:{gcs_port}", logging_level="ERROR", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
        context._set_global_client(None)  # a later cluster has its own Serve controller
