"""The persona of one call, checked once, at `start`: the config's, with the overrides a backend
signed into the caller's token (`persona` claim), and the voice the caller asked for.

A claim with an unknown key or an out-of-range value, or a voice the TTS deployment does not have,
refuses the call at once (close 4400 with the reason) instead of failing it at its first turn.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from pydantic import ValidationError

from services.edge.config import PersonaConfig
from services.edge.record.config import check_host
from services.edge.tools.toolset import check_hosts
from services.edge.transport import ProtocolError

logger = logging.getLogger("ray.serve")

VOICES_TTL_S = 60.0  # the TTS deployment's voices are asked again after this long


def persona_for(base: PersonaConfig, claims: dict, requested_voice: str = "",
                allowed_hosts: list[str] | None = None) -> PersonaConfig:
    """The call's persona; ProtocolError (4400) for a `persona` claim that does not validate. The
    caller's `voice` applies unless the signed persona names one. A claim's `tools` replace the
    config's; their webhooks must be on `allowed_hosts`, and they may not name Python callables.
    A claim's `post_call` record URL must be on `allowed_hosts` too."""
    overrides = claims.get("persona")
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, dict):
        raise ProtocolError("the token's `persona` claim must be an object")
    if requested_voice and "voice" not in overrides:
        overrides = {**overrides, "voice": requested_voice}
    try:
        persona = PersonaConfig.model_validate({**base.model_dump(), **overrides})
        if "tools" in overrides:
            check_hosts(persona.tools, allowed_hosts or [], from_token=True)
        if "post_call" in overrides:
            check_host(persona.post_call, allowed_hosts or [], from_token=True)
        return persona
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'persona'}: {e['msg']}" for e in error.errors())
        raise ProtocolError(f"bad persona in the token: {problems}"[:300]) from None
    except ValueError as error:
        raise ProtocolError(f"bad persona in the token: {error}"[:300]) from None


class VoiceCatalog:
    """The voices of the TTS deployment, fetched on demand and kept for `ttl_s`."""

    def __init__(self, fetch: Callable[[], Awaitable[list[str]]], ttl_s: float = VOICES_TTL_S):
        self._fetch, self._ttl_s = fetch, ttl_s
        self._voices: list[str] | None = None
        self._fetched_at = 0.0

    async def voices(self) -> list[str] | None:
        """The voice names, or None when the TTS deployment cannot be asked right now."""
        if self._voices is None or time.monotonic() - self._fetched_at > self._ttl_s:
            try:
                self._voices = sorted(await self._fetch())
                self._fetched_at = time.monotonic()
            except Exception as error:  # noqa: BLE001 - a TTS outage is the fallback line's business
                logger.warning("could not list the TTS voices: %r", error)
                return self._voices
        return self._voices

    async def check(self, voice: str) -> None:
        """ProtocolError (4400) for a voice the TTS does not have; "" (its default) always passes.
        When the voices cannot be listed the call goes ahead (its turns say the fallback line)."""
        if not voice:
            return
        voices = await self.voices()
        if voices is not None and voice not in voices:
            shown = ", ".join(voices[:20]) + (" ..." if len(voices) > 20 else "")
            raise ProtocolError(f"unknown voice {voice!r}; this deployment has: {shown}")
