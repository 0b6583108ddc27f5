"""Typed configuration of the post-call record, edge-wide (`post_call`) or per persona."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, model_validator

from services.common.config import Config
from services.common.signing import check_http_url


class PostCallConfig(Config):
    """Where and how a call's record is sent when it ends; `url` empty: no record (the default)."""

    url: str = ""
    # Name of the environment variable holding the HMAC secret (never the value); without it set
    # no record is sent (a warning says why).
    secret_env: str = "PARLEY_RECORD_SECRET"
    # Content capture: the transcript (what the caller said, what they heard) and the tool calls'
    # arguments and results go into the record only with this on. Off, the record holds timings,
    # tool names and outcomes and the end reason, nothing the caller said.
    capture_content: bool = False
    # Delivery never delays the call's teardown: it runs after the call, at most `attempts` POSTs
    # (a 5xx, 429 or network error is retried after retry_backoff_s, doubling), each `timeout_s` long.
    timeout_s: float = Field(5.0, gt=0, le=60)
    attempts: int = Field(3, ge=1, le=10)
    retry_backoff_s: float = Field(1.0, ge=0, le=60)
    # An hour-long call's transcript is cut to its last this-many characters.
    max_transcript_chars: int = Field(200_000, ge=1000, le=5_000_000)

    @model_validator(mode="after")
    def _http_url(self) -> PostCallConfig:
        if self.url:
            check_http_url(self.url)
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.url)


def check_host(config: PostCallConfig | None, allowed: list[str], from_token: bool) -> None:
    """ValueError for a record URL whose host is not allowed: the same rule as tool webhooks (a
    token's URL must be on `tools.allowed_hosts`; the edge config's too, once the list is set)."""
    if config is None or not config.url:
        return
    hosts = {host for host in allowed if host}
    host = urlsplit(config.url).hostname or ""
    if (hosts or from_token) and host not in hosts:
        raise ValueError(f"post_call.url host {host!r} is not in tools.allowed_hosts")
