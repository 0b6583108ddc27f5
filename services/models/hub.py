"""A small Hugging Face hub downloader: resumable, verified, with progress, and nothing else.

Files are fetched from `{endpoint}/{repo}/resolve/{revision}/{path}` (the hub, or a mirror
through $HF_ENDPOINT; $HF_TOKEN is sent as a bearer token to the endpoint only, never to the CDN
it may redirect to). A HEAD request first gives the file's size, the commit the revision names
(`X-Repo-Commit`, so every file of a model comes from one commit) and the hub's own hash of the
file: for an LFS file `X-Linked-Etag` is its sha256, for a small file `ETag` is its git blob id
(sha1 of "blob <size>\\0" + content). Bytes go to `<file>.part`; an interrupted download
continues from there with a `Range` request; the finished file is verified before it is renamed
into place, against the sha256 the manifest pins where it pins one, else against the hub's hash.
"""

from __future__ import annotations

import hashlib
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

from services.models.manifest import ModelError, mismatch
from services.models.progress import Progress

_CHUNK = 1 << 20
_HEX64, _HEX40 = re.compile(r"^[0-9a-f]{64}$"), re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class RemoteFile:
    """What the hub says about one file at one revision."""

    url: str  # where to GET it (the CDN location of an LFS file, else the resolve URL)
    size: int | None
    commit: str | None
    sha256: str | None  # LFS files
    git_sha1: str | None  # small (non-LFS) files


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # the HEAD's redirect carries the metadata; it is followed by hand


def git_blob_sha1(path: Path) -> str:
    """The git blob id of a file: what the hub reports as the ETag of a non-LFS file."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _etag(value: str | None) -> str | None:
    return value.removeprefix("W/").strip('"').lower() if value else None


class HubClient:
    """Resolves and downloads files from one hub endpoint."""

    def __init__(self, endpoint: str, token: str | None = None, *, timeout_s: float = 60.0, attempts: int = 5,
                 backoff_s: float = 1.0) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.token = token
        self.timeout_s, self.attempts, self.backoff_s = timeout_s, attempts, backoff_s
        self._host = urllib.parse.urlsplit(self.endpoint).netloc
        self._head_opener = urllib.request.build_opener(_NoRedirect)

    def resolve_url(self, repo: str, revision: str, path: str) -> str:
        """The hub's URL of one file of a repo at a revision."""
        quote = urllib.parse.quote
        return f"{self.endpoint}/{quote(repo, safe='/')}/resolve/{quote(revision, safe='')}/{quote(path, safe='/')}"

    def _headers(self, url: str) -> dict[str, str]:
        headers = {"User-Agent": "parley-models/1", "Accept-Encoding": "identity"}
        if self.token and urllib.parse.urlsplit(url).netloc == self._host:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def head(self, repo: str, revision: str, path: str) -> RemoteFile:
        """Size, commit and hash of a file, from a HEAD request (redirects read, not followed)."""
        url = self.resolve_url(repo, revision, path)
        for _ in range(5):  # same-host redirects (a renamed repo) are followed here
            request = urllib.request.Request(url, method="HEAD", headers=self._headers(url))
            try:
                response = self._head_opener.open(request, timeout=self.timeout_s)
                status, headers = response.status, response.headers
            except urllib.error.HTTPError as error:
                status, headers = error.code, error.headers
            except OSError as error:  # refused, unreachable, timed out
                raise ModelError(f"cannot reach {self.endpoint} ({getattr(error, 'reason', error)}): check the "
                                 "network, or set $HF_ENDPOINT to a hub mirror that is reachable") from error
            if status in (401, 403, 404):
                raise ModelError(f"{url}: HTTP {status} ({'not found' if status == 404 else 'not allowed'}); "
                                 "check the repo and revision, or set $HF_TOKEN for a gated repo")
            location = headers.get("Location")
            linked = _etag(headers.get("X-Linked-Etag"))
            if status in (301, 302, 307, 308) and location and not linked:
                url = urllib.parse.urljoin(url, location)
                continue
            if status >= 400:
                raise ModelError(f"{url}: HTTP {status}")
            etag = linked or _etag(headers.get("ETag"))
            size = headers.get("X-Linked-Size") or headers.get("Content-Length")
            return RemoteFile(
                url=urllib.parse.urljoin(url, location) if location else url,
                size=int(size) if size else None,
                commit=headers.get("X-Repo-Commit"),
                sha256=etag if etag and _HEX64.match(etag) else None,
                git_sha1=etag if etag and _HEX40.match(etag) else None,
            )
        raise ModelError(f"{url}: too many redirects")

    def download(self, remote: RemoteFile, target: Path, label: str) -> None:
        """Fetch a file into `target.part`, resuming what is there; retries on a cut connection."""
        partial = target.with_name(target.name + ".part")
        partial.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, self.attempts + 1):
            try:
                self._fetch(remote, partial, label)
                return
            except (OSError, HTTPException) as error:  # a reset, a timeout, a short read
                if isinstance(error, urllib.error.HTTPError) and error.code < 500 and error.code != 429:
                    raise ModelError(f"{remote.url}: HTTP {error.code} while downloading {label}") from error
                if attempt == self.attempts:
                    raise ModelError(f"downloading {label} failed after {attempt} attempts ({error}); "
                                     f"{partial} is kept: rerun the same command to resume") from error
                time.sleep(self.backoff_s * attempt)

    def _fetch(self, remote: RemoteFile, partial: Path, label: str) -> None:
        have = partial.stat().st_size if partial.exists() else 0
        if remote.size is not None and have == remote.size:
            return
        if remote.size is not None and have > remote.size:
            partial.unlink()
            have = 0
        headers = self._headers(remote.url)
        if have:
            headers["Range"] = f"bytes={have}-"
        request = urllib.request.Request(remote.url, headers=headers)
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            if have and response.status != 206:
                have = 0  # the server ignored the range: start over
            progress = Progress(label, remote.size, done=have)
            with open(partial, "ab" if have else "wb") as out:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    progress.update(len(chunk))
            progress.close()
        if remote.size is not None and partial.stat().st_size != remote.size:
            raise HTTPException(f"{label}: got {partial.stat().st_size} of {remote.size} bytes")


def verify_download(partial: Path, target: Path, remote: RemoteFile, pinned: str | None, fix: str) -> str:
    """Check a finished `.part` against the pinned sha256 or the hub's hash, then move it into
    place; a bad file is deleted (it can never verify) and named. Returns its sha256."""
    from services.models.manifest import sha256_file

    actual = sha256_file(partial)
    expected = pinned or remote.sha256
    if expected and actual != expected:
        partial.unlink()
        raise mismatch(target, expected, actual, f"{partial} was deleted; {fix}")
    if pinned and remote.sha256 and remote.sha256 != pinned:
        partial.unlink()
        raise ModelError(f"{target}: the hub's sha256 at this revision is {remote.sha256}, the manifest pins "
                         f"{pinned}; the file changed upstream: pin the revision or update the manifest")
    if expected is None:
        if remote.git_sha1 is None:
            partial.unlink()
            raise ModelError(f"{target}: the manifest pins no sha256 and the endpoint gave no hash to check "
                             "it against; refusing an unverified file")
        blob = git_blob_sha1(partial)
        if blob != remote.git_sha1:
            partial.unlink()
            raise ModelError(f"git blob id mismatch for {target}:\n  expected {remote.git_sha1}\n  actual   {blob}\n"
                             f"  {partial} was deleted; {fix}")
    partial.replace(target)
    return actual
