"""`parley models pull` against a local stand-in for the Hugging Face hub.

The hub cannot be reached from these machines, so the stand-in is a protocol-level one: it
speaks the hub's download protocol as the downloader uses it (`/{repo}/resolve/{revision}/{path}`;
HEAD with X-Repo-Commit, X-Linked-Etag / X-Linked-Size and a redirect to a CDN host for LFS files,
ETag = git blob id for small files; Range requests answered with 206). It can cut a connection
part-way and serve bytes other than the ones its hash advertises.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from services.asr.config import ASRConfig
from services.models.hub import HubClient
from services.models.manifest import ModelError, ModelSpec, read_marker, verify_model
from services.models.pull import pull_model, pull_set

ROOT = Path(__file__).resolve().parents[2]
REPO, MODEL = "Systran/faster-whisper-base.en", "faster-whisper-base.en"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
LFS_MIN = 100_000  # files this large are LFS files on the stand-in


class StandInHub:
    """A threaded HTTP server holding one repo; records every request it gets."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.tampered: dict[str, bytes] = {}  # path -> bytes served instead of the advertised ones
        self.cuts: dict[str, int] = {}  # path -> bytes sent before the next GET's connection is cut
        self.requests: list[tuple[str, str, dict]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                hub.requests.append((self.command, self.path, dict(self.headers)))
                cdn = re.fullmatch(r"/cdn/([0-9a-f]{64})/(.+)", self.path)
                if cdn:
                    return self._content(cdn.group(2), body)
                match = re.fullmatch(rf"/{REPO}/resolve/([^/]+)/(.+)", self.path)
                if not match or match.group(1) not in ("main", COMMIT) or match.group(2) not in hub.files:
                    self.send_error(404)
                    return
                path, data = match.group(2), hub.files[match.group(2)]
                if len(data) >= LFS_MIN:
                    digest = hashlib.sha256(data).hexdigest()
                    self.send_response(302)
                    self.send_header("Location", f"http://localhost:{hub.port}/cdn/{digest}/{path}")
                    self.send_header("X-Linked-Etag", f'"{digest}"')
                    self.send_header("X-Linked-Size", str(len(data)))
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self._content(path, body, etag=hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest())

            def _content(self, path: str, body: bool, etag: str | None = None) -> None:
                data = hub.tampered.get(path, hub.files[path])
                start = int(re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "bytes=0-")).group(1))
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("X-Repo-Commit", COMMIT)
                if etag:
                    self.send_header("ETag", f'"{etag}"')
                self.end_headers()
                if not body:
                    return
                cut = hub.cuts.pop(path, None)
                if cut is None:
                    self.wfile.write(data[start:])
                    return
                self.wfile.write(data[start:start + cut])  # then the connection drops
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True

        return Handler


@pytest.fixture
def hub():
    files = {"config.json": b'{"alignment_heads": [[1, 0]]}', "model.bin": os.urandom(3_000_000),
             "tokenizer.json": os.urandom(200_000), "vocabulary.txt": b"hello\nworld\n"}
    stand_in = StandInHub(files)
    yield stand_in
    stand_in.close()


def pull(hub: StandInHub, root: Path, **client) -> Path:
    return pull_set("hub-cpu", HubClient(hub.endpoint, token="hf_test_token", backoff_s=0.01, **client), root,
                    names=[MODEL], base_config=ROOT / "serve_config.cpu.yaml", log=lambda *_: None)


def test_a_full_pull_verifies_every_file_and_writes_a_config(hub, tmp_path):
    config = pull(hub, tmp_path)
    out = tmp_path / MODEL
    for path, data in hub.files.items():
        assert (out / path).read_bytes() == data
    marker = read_marker(out)
    assert marker["commit"] == COMMIT and marker["files"]["model.bin"] == hashlib.sha256(hub.files["model.bin"]).hexdigest()
    assert verify_model(out, ModelSpec.model_validate(marker_spec()), "fix") == sorted(hub.files)

    # After the first file every request names the commit, not the moving branch.
    resolves = [path for _, path, _ in hub.requests if "/resolve/" in path]
    assert "/resolve/main/" in resolves[0] and all(f"/resolve/{COMMIT}/" in path for path in resolves[1:])
    # The token goes to the endpoint only, never to the CDN host the LFS files redirect to.
    for _, path, headers in hub.requests:
        assert ("Authorization" in headers) == (not path.startswith("/cdn/")), path

    apps = {app["name"]: app["args"] for app in yaml.safe_load(config.read_text())["applications"]}
    asr = ASRConfig.model_validate(apps["asr"])
    assert Path(asr.engine.model) == out.resolve() and asr.engine.device == "cpu"

    hub.requests.clear()
    pull(hub, tmp_path)  # finished: nothing is requested again
    assert hub.requests == []


def marker_spec() -> dict:
    from services.models.manifest import load_manifest

    return load_manifest().get("hub-cpu").models[MODEL].model_dump()


def test_a_cut_download_resumes_with_a_range_request(hub, tmp_path):
    hub.cuts["model.bin"] = 1_000_000
    with pytest.raises(ModelError, match="model.bin.part is kept: rerun the same command to resume"):
        pull(hub, tmp_path, attempts=1)
    partial = tmp_path / MODEL / "model.bin.part"
    kept = partial.stat().st_size
    assert 0 < kept < len(hub.files["model.bin"]) and not (tmp_path / MODEL / "model.bin").exists()

    hub.requests.clear()
    pull(hub, tmp_path, attempts=1)
    ranges = [headers.get("Range") for method, path, headers in hub.requests if path.startswith("/cdn/")
              and "model.bin" in path and method == "GET"]
    assert ranges == [f"bytes={kept}-"]
    assert (tmp_path / MODEL / "model.bin").read_bytes() == hub.files["model.bin"] and not partial.exists()


def test_a_cut_connection_is_retried_within_one_pull(hub, tmp_path):
    hub.cuts["model.bin"] = 500_000
    pull(hub, tmp_path, attempts=3)
    assert (tmp_path / MODEL / "model.bin").read_bytes() == hub.files["model.bin"]


@pytest.mark.parametrize("path, kind", [("model.bin", "sha256"), ("config.json", "git blob id")])
def test_a_tampered_file_is_refused(hub, tmp_path, path, kind):
    hub.tampered[path] = bytes(len(hub.files[path]))  # same size, other bytes
    with pytest.raises(ModelError) as refused:
        pull(hub, tmp_path)
    message = str(refused.value)
    assert f"{kind} mismatch for {tmp_path / MODEL / path}" in message and "rerun `parley models pull cpu`" in message
    expected = (hashlib.sha256(hub.files[path]).hexdigest() if kind == "sha256"
                else hashlib.sha1(b"blob %d\0" % len(hub.files[path]) + hub.files[path]).hexdigest())
    assert expected in message
    assert not (tmp_path / MODEL / path).exists() and not (tmp_path / MODEL / f"{path}.part").exists()
    assert read_marker(tmp_path / MODEL) is None


def test_a_file_that_differs_from_the_pinned_hash_is_refused(hub, tmp_path):
    spec = ModelSpec.model_validate({**marker_spec(), "files": {"model.bin": {"sha256": "a" * 64}}})
    with pytest.raises(ModelError, match="sha256 mismatch for .*model.bin"):
        pull_model(HubClient(hub.endpoint), "hub-cpu", MODEL, spec, tmp_path / MODEL, "rerun", log=lambda *_: None)
    assert not (tmp_path / MODEL / "model.bin").exists()


def test_an_unknown_file_names_the_repo_and_revision(hub, tmp_path):
    del hub.files["vocabulary.txt"]
    with pytest.raises(ModelError, match=r"resolve/0123456789abcdef0123456789abcdef01234567/vocabulary.txt: HTTP 404"):
        pull(hub, tmp_path)


def test_the_command_pulls_from_hf_endpoint_with_hf_token(hub, tmp_path, monkeypatch, capsys):
    from services.cli import main

    monkeypatch.chdir(ROOT)  # the written config derives from the repo's serve_config.cpu.yaml
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    assert main(["models", "pull", "cpu", "--root", str(tmp_path), "--only", MODEL]) == 0
    assert (tmp_path / "serve_config.yaml").exists() and f"wrote {tmp_path / 'serve_config.yaml'}" in capsys.readouterr().out
    assert {headers.get("Authorization") for _, path, headers in hub.requests if "/resolve/" in path} == {
        "Bearer hf_from_env"}

    hub.tampered["model.bin"] = b"x" * len(hub.files["model.bin"])
    assert main(["models", "pull", "cpu", "--root", str(tmp_path), "--only", MODEL, "--force"]) == 1
    assert "sha256 mismatch" in capsys.readouterr().err
