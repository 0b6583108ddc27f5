"""Caller authentication at the edge: short-lived HS256 JWTs signed with the edge's secret.

A backend that knows the secret mints one token per call (`parley token`, or any JWT library)
and hands it to the browser or phone bridge; the edge checks signature and expiry.
"""

from __future__ import annotations

import os
import time
import uuid

import jwt

ALGORITHM = "HS256"
MIN_SECRET_BYTES = 32


class AuthError(Exception):
    pass


def load_secret(env_var: str) -> str:
    secret = os.environ.get(env_var, "")
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise RuntimeError(
            f"the edge needs a secret of at least {MIN_SECRET_BYTES} bytes in ${env_var} to check caller "
            "tokens (set it in the serve config's runtime_env or the cluster's environment)")
    return secret


def mint_token(secret: str, ttl_s: float = 3600, subject: str = "caller", claims: dict | None = None) -> str:
    """A caller token; `claims` adds e.g. `mode` or `persona` (docs/websocket-protocol.md)."""
    now = int(time.time())
    payload = {**(claims or {}), "sub": subject, "iat": now, "exp": now + int(ttl_s), "jti": uuid.uuid4().hex}
    return jwt.encode(payload, secret, algorithm=ALGORITHM)


def verify_token(token: object, secret: str) -> dict:
    if not isinstance(token, str) or not token:
        raise AuthError("a token is required")
    if not token.isascii():  # a JWT is base64url and dots; PyJWT would fail to encode a lone surrogate
        raise AuthError("invalid token: not ASCII")
    try:
        return jwt.decode(token, secret, algorithms=[ALGORITHM], options={"require": ["exp"]})
    except jwt.ExpiredSignatureError:
        raise AuthError("the token has expired") from None
    except jwt.InvalidTokenError as error:
        raise AuthError(f"invalid token: {error}") from None


class SingleUse:
    """Token ids (`jti`) already used in this process, each kept until its token expires, so a token
    opens one stream only. The record is per process: with several edge replicas a token could be
    used once on each replica it reaches within its lifetime (docs/twilio.md)."""

    def __init__(self, clock=time.time):
        self._clock = clock
        self._used: dict[str, float] = {}  # jti -> the token's expiry (epoch seconds)

    def __len__(self) -> int:
        return len(self._used)

    def spend(self, claims: dict) -> None:
        """Record the token as used; AuthError if it was used before or carries no id."""
        now = self._clock()
        for jti in [jti for jti, expires in self._used.items() if expires <= now]:
            del self._used[jti]
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise AuthError("the token has no id (jti), so it cannot be single-use")
        if jti in self._used:
            raise AuthError("the token was used already: it opens one stream")
        expires = claims.get("exp")
        self._used[jti] = float(expires) if isinstance(expires, int | float) else now
