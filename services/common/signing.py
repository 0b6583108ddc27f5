"""Signed webhooks: the edge signs what it POSTs (tool calls, post-call records) so a receiver
can tell the edge from anyone else, and refuse a replayed request.

The signature is `sha256=<hex>` in `X-Parley-Signature`, the HMAC-SHA256 of `<timestamp>.<body>`
under a shared secret, with the unix time in `X-Parley-Timestamp` (docs/tools.md).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlsplit

SIGNATURE_HEADER, TIMESTAMP_HEADER = "X-Parley-Signature", "X-Parley-Timestamp"


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header's value for a webhook body."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(secret: bytes, timestamp: str, body: bytes, signature: str, max_age_s: float = 300.0) -> bool:
    """A receiver's check: the signature matches and the timestamp is recent (no replays)."""
    try:
        fresh = abs(time.time() - int(timestamp)) <= max_age_s
    except ValueError:
        return False
    return fresh and hmac.compare_digest(sign(secret, timestamp, body), signature)


def signed_headers(secret: str, body: bytes) -> dict[str, str]:
    """The headers of a signed JSON POST of `body`, timestamped now."""
    timestamp = str(int(time.time()))
    return {"Content-Type": "application/json", TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(secret.encode(), timestamp, body)}


def check_http_url(url: str) -> str:
    """`url` when it is http(s)://host/...; ValueError otherwise (a config validator's check)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"a webhook url must be http(s)://host/..., got {url!r}")
    return url
