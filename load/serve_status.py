"""Replica counts per deployment over time, from Serve's REST API on the Ray dashboard
(`GET /api/serve/applications/`, the same endpoint services/cluster.py reads)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable

STATES = ("RUNNING", "STARTING", "UPDATING", "RECOVERING", "STOPPING")


def replica_counts(status: dict) -> dict[str, dict[str, int]]:
    """{"app/Deployment": {"running", "target", "starting", "stopping"}} from the API's JSON."""
    counts = {}
    for app_name, app in sorted((status.get("applications") or {}).items()):
        for name, deployment in sorted((app.get("deployments") or {}).items()):
            states = [replica.get("state") for replica in deployment.get("replicas") or []]
            counts[f"{app_name}/{name}"] = {
                "running": states.count("RUNNING"),
                "target": int(deployment.get("target_num_replicas") or 0),
                "starting": sum(state in ("STARTING", "UPDATING", "RECOVERING") for state in states),
                "stopping": states.count("STOPPING"),
            }
    return counts


def fetch_status(dashboard: str, timeout_s: float = 5.0) -> dict:
    with urllib.request.urlopen(f"{dashboard.rstrip('/')}/api/serve/applications/", timeout=timeout_s) as response:
        return json.load(response)


async def poll_replicas(dashboard: str, on_sample: Callable[[float, dict[str, dict[str, int]]], None],
                        stop: asyncio.Event, *, started: float, period_s: float = 2.0,
                        on_error: Callable[[str], None] = print) -> None:
    """Call `on_sample(t_s, counts)` every `period_s` until `stop` is set; a failed poll is
    reported once per kind of error and polling goes on (the dashboard may be restarting)."""
    reported: set[str] = set()
    while not stop.is_set():
        try:
            status = await asyncio.to_thread(fetch_status, dashboard)
            on_sample(time.monotonic() - started, replica_counts(status))
        except (urllib.error.URLError, OSError, ValueError) as error:
            kind = type(error).__name__
            if kind not in reported:
                reported.add(kind)
                on_error(f"serve status poll failed ({dashboard}): {error}")
        try:
            await asyncio.wait_for(stop.wait(), period_s)
        except TimeoutError:
            pass
