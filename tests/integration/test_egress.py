"""Privacy by construction: a whole conversation on the embedded default completes inside a
network namespace that has nothing but loopback, so no component of the stack (Ray, Serve, the
engines, the edge, the exporters) needs, or could reach, any endpoint beyond the ones it is
configured with on this host.

It runs the README's own path (`parley up`, `parley call`, `parley down`) under `unshare --net`
(a new network namespace with only `lo`, brought up). Skipped, with the reason, where namespaces
cannot be created (no unshare, or no user/network namespace permission).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from services.models import ensure_tiny
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.cluster

BIN = Path(sys.executable).parent
# Ports of their own: the namespace has its own port space, but process lookups by port (parley
# down) see the host's processes too.
GCS_PORT, DASHBOARD_PORT = 6497, 8397


def namespace_prefix() -> list[str]:
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no `unshare` on this machine: cannot create a network namespace")
    prefix = [unshare, "--net"] + ([] if _is_root() else ["--map-root-user"])
    probe = subprocess.run([*prefix, "sh", "-c", "ip link set lo up && ip -o link"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {probe.stderr.strip()[:200]}")
    interfaces = [line.split(":")[1].strip() for line in probe.stdout.splitlines()]
    assert interfaces == ["lo"], f"the namespace should have loopback only, has {interfaces}"
    return prefix


def _is_root() -> bool:
    import os

    return os.geteuid() == 0


def test_a_conversation_completes_with_loopback_only(tmp_path):
    prefix = namespace_prefix()
    ensure_tiny(ROOT / "models" / "tiny")  # every model `parley up` deploys
    ports = f"--gcs-port {GCS_PORT} --dashboard-port {DASHBOARD_PORT}"
    script = (f"ip link set lo up && {BIN}/parley up {ports} && {BIN}/parley call --tail 30 --out {tmp_path}/reply.wav; "
              f"status=$?; {BIN}/parley down {ports}; exit $status")
    env = {"PATH": f"{BIN}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path), "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([*prefix, "sh", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert (tmp_path / "reply.wav").stat().st_size > 44  # the agent's reply was heard and written
