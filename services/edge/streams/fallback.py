"""The fallback line: what the agent says when a stage stays unavailable.

Synthesized once per voice and rate while TTS is up, kept in memory (PCM s16le), played from
there when it is not. Shared by every call of an edge replica.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc

from services.common import metrics
from services.common.requests import Synthesize
from services.edge.events import AgentText, Error, Event
from services.edge.streams.base import RETRYABLE, StageClients, StageUnavailable, describe
from services.edge.streams.tts import open_synthesis

logger = logging.getLogger("ray.serve")


class FallbackLine:
    """The replica's fallback line, ready per (voice, rate) once synthesized."""

    def __init__(self, text: str):
        self.text = text
        self._clips: dict[tuple[str, int], bytes] = {}
        self._warming: dict[tuple[str, int], asyncio.Task] = {}

    def clip(self, voice: str, rate: int) -> bytes | None:
        return self._clips.get((voice, rate))

    @property
    def clips(self) -> int:
        """How many voice and rate pairs the line is ready in (an edge replica's stats)."""
        return len(self._clips)

    async def announce(self, error: StageUnavailable, emit: Callable[[Event], Awaitable[None]], voice: str, rate: int,
                       turn_id: int) -> bytes | None:
        """Tell the client a stage stayed unavailable (an `error` event, then the line's `agent_text`
        when there is a clip to say it with). Returns the clip for the caller to play, or None."""
        metrics.record_stage_error(error.stage, "UNAVAILABLE")
        await emit(Error("stage_unavailable", str(error), stage=error.stage))
        clip = self.clip(voice, rate)
        if clip is not None:
            await emit(AgentText(turn_id, self.text, fallback=True))
        return clip

    def warm(self, stages: StageClients, voice: str, rate: int) -> None:
        """Start synthesizing the line in the background, if not done or under way."""
        key = (voice, rate)
        if not self.text or key in self._clips or key in self._warming:
            return
        task = asyncio.get_running_loop().create_task(self._synthesize(stages, voice, rate))
        self._warming[key] = task
        task.add_done_callback(lambda _: self._warming.pop(key, None))

    async def _synthesize(self, stages: StageClients, voice: str, rate: int) -> None:
        for attempt in range(10):
            call = open_synthesis(stages, voice, rate)
            try:
                call.send(Synthesize.text(self.text))
                call.close()
                chunks = [r.audio.pcm async for r in call if r.WhichOneof("event") == "audio"]
                if chunks:
                    self._clips[(voice, rate)] = b"".join(chunks)
                    return
            except grpc.aio.AioRpcError as error:
                if error.code() not in RETRYABLE:  # e.g. an unknown voice: asking again will not help
                    logger.warning("fallback line not synthesized: %s", describe(error))
                    return
                logger.info("fallback line not synthesized yet (%s); retrying", describe(error))
            finally:
                call.cancel()
            await asyncio.sleep(min(30.0, 2.0 ** attempt))
