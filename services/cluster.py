"""Start a local Ray cluster, `serve deploy` a config onto it and wait until it is healthy.

Used by `parley up` and by the integration tests, so both exercise the path an operator takes.
Every failure names its fix: a port in use, Ray not running, a model path missing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from services.common.rpc import MAX_MESSAGE_BYTES

# Every node's environment (the RayService, the launcher, `parley up`): Serve's gRPC proxy refuses a
# message over the documented 4 MiB with RESOURCE_EXHAUSTED as its header arrives (Serve's own
# default is 2 GiB, read whole before anything else, authentication included, looks at it).
INGRESS_ENV = {"RAY_SERVE_GRPC_MAX_MESSAGE_SIZE": str(MAX_MESSAGE_BYTES)}


class ClusterError(RuntimeError):
    pass


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0


def _bin(name: str) -> str:
    # Prefer the tools installed next to this interpreter (the project's venv).
    local = Path(sys.executable).with_name(name)
    return str(local) if local.exists() else (shutil.which(name) or name)


@dataclass
class LocalCluster:
    gcs_port: int = 6379
    dashboard_port: int = 8265
    num_cpus: int | None = None
    num_gpus: int | None = None
    # Replicas resolve relative model paths (models/tiny/...) against the directory Ray starts in.
    workdir: Path = field(default_factory=Path.cwd)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _env(self) -> dict[str, str]:
        return {**INGRESS_ENV, **os.environ, **self.env}

    def is_running(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.dashboard}/api/version", timeout=2):
                return True
        except (urllib.error.URLError, OSError):
            return False

    def start(self, log=print) -> None:
        if self.is_running():
            log(f"Ray is already running (dashboard {self.dashboard})")
            return
        for port, what in ((self.gcs_port, "Ray GCS"), (self.dashboard_port, "Ray dashboard")):
            if port_in_use(port):
                raise ClusterError(f"port {port} ({what}) is taken by another process: stop it, "
                                   "or pick other ports (--gcs-port / --dashboard-port)")
        cmd = [_bin("ray"), "start", "--head", f"--port={self.gcs_port}", f"--dashboard-port={self.dashboard_port}",
               "--dashboard-host=127.0.0.1", "--disable-usage-stats"]
        if self.num_cpus is not None:
            cmd.append(f"--num-cpus={self.num_cpus}")
        if self.num_gpus is not None:
            cmd.append(f"--num-gpus={self.num_gpus}")
        log(f"starting Ray: {' '.join(cmd[1:])}")
        done = subprocess.run(cmd, cwd=self.workdir, env=self._env(), capture_output=True, text=True)
        if done.returncode != 0:
            raise ClusterError(f"`ray start` failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        self._wait(self.is_running, 60, "Ray dashboard to answer", log)

    def stop(self, timeout_s: float = 15) -> None:
        """Stop this cluster only (`ray stop` would stop every Ray cluster on the machine)."""
        import psutil

        processes = self._processes()
        for process in processes:
            try:
                process.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(processes, timeout=timeout_s)
        for process in alive:
            try:
                process.kill()
            except psutil.Error:
                pass

    def _processes(self) -> list:
        """This cluster's processes: those naming its session directory, and their descendants."""
        import psutil

        session = None
        for process in psutil.process_iter(["cmdline"]):
            cmdline = process.info["cmdline"] or []
            if cmdline and cmdline[0].endswith("gcs_server") and f"--gcs_server_port={self.gcs_port}" in cmdline:
                session = next((arg.split("=", 1)[1] for arg in cmdline if arg.startswith("--session-dir=")), None)
        if session is None:
            return []
        found: dict[int, psutil.Process] = {}
        gcs_address = f":{self.gcs_port}"  # the Ray client server names the GCS, not the session
        for process in psutil.process_iter(["cmdline"]):
            cmdline = process.info["cmdline"] or []
            if any(session in arg for arg in cmdline) or (
                    "ray.util.client.server" in cmdline
                    and any(arg.startswith("--address=") and arg.endswith(gcs_address) for arg in cmdline)):
                found[process.pid] = process
                try:
                    found.update((child.pid, child) for child in process.children(recursive=True))
                except psutil.Error:
                    pass
        return list(found.values())

    def deploy(self, config: Path, log=print) -> None:
        if not self.is_running():
            raise ClusterError(f"no Ray cluster answers at {self.dashboard}: run `parley up` or `ray start --head`")
        log(f"serve deploy {config}")
        done = subprocess.run([_bin("serve"), "deploy", str(config), "--address", self.dashboard],
                              cwd=self.workdir, env=self._env(), capture_output=True, text=True)
        if done.returncode != 0:
            raise ClusterError(f"`serve deploy` failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")

    def applications(self) -> dict:
        with urllib.request.urlopen(f"{self.dashboard}/api/serve/applications/", timeout=10) as response:
            return json.load(response).get("applications", {})

    def wait_running(self, names: list[str], timeout_s: float = 600, log=print) -> None:
        """Wait until every named application is RUNNING, printing progress; fail fast on DEPLOY_FAILED."""
        deadline, last = time.monotonic() + timeout_s, None
        while time.monotonic() < deadline:
            apps = self.applications()
            states = {name: apps.get(name, {}).get("status", "NOT_STARTED") for name in names}
            for name, state in states.items():
                if state in ("DEPLOY_FAILED", "UNHEALTHY"):
                    raise ClusterError(f"application {name!r} is {state}:\n{apps[name].get('message', '')[-3000:]}")
            if all(state == "RUNNING" for state in states.values()):
                log("  all applications RUNNING: " + ", ".join(names))
                return
            summary = ", ".join(f"{name}={state}" for name, state in states.items())
            if summary != last:
                log(f"  waiting for applications: {summary}")
                last = summary
            time.sleep(1)
        raise ClusterError(f"applications not RUNNING after {timeout_s:.0f}s; see `serve status --address {self.dashboard}`")

    def wait_removed(self, names: list[str], timeout_s: float = 120, log=print) -> None:
        """Wait until none of the named applications is left (after a deploy without them)."""
        self._wait(lambda: not set(names) & set(self.applications()), timeout_s,
                   f"applications {', '.join(names)} to be removed", log)

    @staticmethod
    def _wait(check, timeout_s: float, what: str, log) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.5)
        raise ClusterError(f"timed out after {timeout_s:.0f}s waiting for {what}")


# Serve's tracing exporting through Parley's OTLP exporter (services/common/telemetry.py).
TRACING_CONFIG = {"enabled": True, "exporter_import_path": "services.common.telemetry:span_processors",
                  "sampling_ratio": 1.0}


def render_config(source: Path, target: Path, *, http_port: int | None = None, grpc_port: int | None = None,
                  applications: list[str] | None = None, tracing: bool = False,
                  livekit_url: str | None = None, models: str | None = None) -> Path:
    """Write a copy of a serve config with other ports, a subset of its applications, Serve's
    tracing switched on (every trace sampled; spans go to $OTEL_EXPORTER_OTLP_ENDPOINT), the
    edge pointed at another LiveKit server, or the stages pointed at another model set of the
    manifest (`models="tiny"`: the random-weight set; see services/models/overlay.py)."""
    config = yaml.safe_load(Path(source).read_text())
    if models is not None:
        from services.models.overlay import apply_set

        config = apply_set(config, models)
    if tracing:
        config["tracing_config"] = dict(TRACING_CONFIG)
    if http_port is not None:
        config.setdefault("http_options", {})["port"] = http_port
    if grpc_port is not None:
        config.setdefault("grpc_options", {})["port"] = grpc_port
        for app in config["applications"]:  # the edge reaches the stages through that port
            stages = (app.get("args") or {}).get("stages")
            if stages is not None:
                stages["grpc_address"] = f"127.0.0.1:{grpc_port}"
    if livekit_url is not None:
        for app in config["applications"]:
            livekit = (app.get("args") or {}).get("livekit")
            if livekit is not None:
                livekit["url"] = livekit_url
    if applications is not None:
        config["applications"] = [app for app in config["applications"] if app["name"] in applications]
    target.write_text(yaml.safe_dump(config, sort_keys=False))
    return target


def tracing_env(endpoint: str) -> dict[str, str]:
    """The environment `ray start` needs for every process of a local cluster (proxies included:
    they ignore the config's tracing_config) to trace every conversation to the OTLP `endpoint`."""
    return {
        # The traces-only variable: Ray's own (C++) OpenTelemetry metrics export must not follow it.
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint,
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        "OTEL_SERVICE_NAME": "parley-ray",  # proxies and controller; each app names its own
        "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "process",  # process.pid on every span's resource
        "RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH": "services.common.telemetry:span_processors",
        "RAY_SERVE_TRACING_SAMPLING_RATIO": "1",
    }


def application_names(config: Path) -> list[str]:
    return [app["name"] for app in yaml.safe_load(Path(config).read_text())["applications"]]


def serve_ports(config: Path) -> tuple[int, int]:
    """The (HTTP, gRPC) ports a serve config asks Serve's proxies to listen on."""
    data = yaml.safe_load(Path(config).read_text())
    return int(data.get("http_options", {}).get("port", 8000)), int(data.get("grpc_options", {}).get("port", 9000))
