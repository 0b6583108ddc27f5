"""Twilio request signatures: proof that an HTTP request or WebSocket upgrade came from Twilio.

Twilio signs every webhook and every Media Streams upgrade with the account's auth token
(https://www.twilio.com/docs/usage/webhooks/webhooks-security): `X-Twilio-Signature` is the
base64 HMAC-SHA1 of the full URL it requested (scheme, host, path and query), followed, for form
POSTs, by every form parameter's name and value, sorted by name, with no separators.

The URL is the one Twilio requested, i.e. the public one; behind a load balancer the edge sees a
different one, so the public base URL comes from config (`twilio.public_url`), and only when that
is unset is the URL rebuilt from the request (X-Forwarded-Proto/Host aware).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

SIGNATURE_HEADER = "x-twilio-signature"
_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}
_WEBSOCKET_SCHEMES = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}


def compute_signature(auth_token: str, url: str, params: Iterable[tuple[str, str]] = ()) -> str:
    """The X-Twilio-Signature Twilio sends for a request to `url` with form `params`."""
    # Sorted by name; a name given twice keeps its values in sorted order (as Twilio's own helpers do).
    data = url + "".join(name + value for name, value in sorted(params))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def _port_variants(url: str) -> list[str]:
    """`url` as given, and with its scheme's default port added or removed: Twilio does not sign
    consistently with or without it (its own helper libraries check both)."""
    parts = urlsplit(url)
    default = _DEFAULT_PORTS.get(parts.scheme)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:  # a malformed port: only the URL as given can match
        return [url]
    if default is None or (port is not None and port != default):
        return [url]
    other = host if port is not None else f"{host}:{default}"
    return [url, urlunsplit(parts._replace(netloc=other))]


def signature_is_valid(auth_token: str, url: str, params: Iterable[tuple[str, str]],
                       signature: str | None) -> bool:
    """Whether `signature` is Twilio's for `url` and `params` (constant-time comparison)."""
    if not auth_token or not signature:
        return False
    params = list(params)
    expected = signature.strip().encode()
    matches = [hmac.compare_digest(compute_signature(auth_token, variant, params).encode(), expected)
               for variant in _port_variants(url)]  # every variant is computed: no early exit
    return any(matches)


def public_base_url(public_url: str, headers: Mapping[str, str], request_url: str) -> str:
    """The base URL Twilio calls: `public_url` (config) when set; else the request's own scheme and
    host, or those a proxy in front reports in X-Forwarded-Proto/Host."""
    if public_url:
        return public_url.rstrip("/")
    own = urlsplit(request_url)
    scheme = _first(headers.get("x-forwarded-proto")).lower() or own.scheme
    netloc = _first(headers.get("x-forwarded-host")) or own.netloc
    return urlunsplit((scheme, netloc, "", "", ""))


def url_under(base_url: str, path: str, query: str = "", *, websocket: bool = False) -> str:
    """`path` and `query` under `base_url`; for `websocket` with the ws(s):// scheme (https -> wss),
    as a Media Streams upgrade is signed over its wss:// URL and TwiML's <Stream url> must be one."""
    base = urlsplit(base_url)
    scheme = _WEBSOCKET_SCHEMES.get(base.scheme, base.scheme) if websocket else base.scheme
    return urlunsplit((scheme, base.netloc, base.path.rstrip("/") + path, query, ""))


def _first(value: str | None) -> str:
    """The first entry of a header that a chain of proxies may have appended to (`https, http`)."""
    return (value or "").split(",")[0].strip()
