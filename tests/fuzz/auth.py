"""Target `auth`: caller tokens (services/edge/auth.py verify_token, PyJWT underneath).

The first byte picks how the rest is read:
    0  the token text as a caller sends it
    1  `<header JSON>\\n<claims JSON>`, signed with the edge's secret: past the signature check, so
       the claim checks (exp, nbf, iat, types) see fuzzed values
    2  a JSON value handed over as the token (a `start` message's `token` can be any JSON type)
Checks: the result is the claims, or AuthError; a token is accepted only with a valid HS256
signature over exactly its header and claims, and an unexpired `exp`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import atheris

# Before the harness, which uses PyJWT too: PyJWT is instrumented only if first imported here.
with atheris.instrument_imports(include=["services", "jwt"]):
    from services.edge.auth import ALGORITHM, AuthError, verify_token

from tests.fuzz import harness  # noqa: E402


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _signed(header: bytes, claims: bytes) -> str:
    signing_input = f"{_b64(header)}.{_b64(claims)}"
    signature = hmac.new(harness.SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _token(data: bytes) -> object:
    mode, rest = (data[0] % 3, data[1:]) if data else (0, b"")
    if mode == 1:
        header, _, claims = rest.partition(b"\n")
        return _signed(header, claims)
    text = rest.decode("utf-8", errors="replace").replace("$TOKEN", harness.VALID_TOKEN)
    if mode == 2:
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            return text
    return text


def _check_accepted(token: object, claims: dict) -> None:
    assert isinstance(token, str) and isinstance(claims, dict)
    header_b64, claims_b64, signature_b64 = token.split(".")
    header = json.loads(base64.urlsafe_b64decode(header_b64 + "=" * (-len(header_b64) % 4)))
    assert header.get("alg") == ALGORITHM, f"accepted a token signed with {header.get('alg')!r}"
    expected = hmac.new(harness.SECRET.encode(), f"{header_b64}.{claims_b64}".encode(), hashlib.sha256).digest()
    signature = base64.urlsafe_b64decode(signature_b64 + "=" * (-len(signature_b64) % 4))
    assert hmac.compare_digest(signature, expected), "accepted a token without a valid signature"
    assert int(claims["exp"]) > time.time() - 1, "accepted an expired token"


def fuzz_auth(data: bytes) -> None:
    token = _token(data)
    try:
        claims = verify_token(token, harness.SECRET)
    except AuthError as error:
        assert str(error)
        return
    _check_accepted(token, claims)
