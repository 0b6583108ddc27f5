"""A call answered by the duplex model (Moshi) instead of the ASR -> LLM -> TTS cascade.

Moshi listens and speaks at once, so there are no turns to take: caller audio is resampled to
24 kHz and streamed to the `moshi` stage frame by frame (services/edge/streams/moshi.py), and
every frame the stage answers goes to the caller through the call's playout clock, as one
continuous reply (turn 0). The stage's frames come in bursts, so the clock starts a little late
(`duplex.jitter_buffer_ms`) and sends at most `duplex.playout_lead_ms` ahead: the caller gets
20 ms frames in real time, and every gap they would hear is counted as an underrun. The model's
text stream (its "inner monologue") becomes `agent_text` events.

Turns are not taken but can be inferred from audio levels (`InferredTurns`): when the caller has
been quiet for the configured silence after speaking, the next audible agent frame sent to the
caller closes a turn, reported like a cascade turn (a `metrics` event whose `ttfat_ms` is set,
the other components null, with the underruns since the last report).

A call is duplex when the edge config says so (`duplex.default_mode`) or the caller's signed
token carries the claim `mode: "duplex"` (or `"cascade"` to opt out).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from services.common.audio import PcmResampler, pcm_rms
from services.common.requests import MOSHI_FRAME, MOSHI_RATE
from services.common.timeline import TurnTimeline
from services.edge.config import DuplexConfig
from services.edge.core import CallCore
from services.edge.events import AgentText
from services.edge.playout import Segment
from services.edge.streams.base import Metadata, StageTimeout, StageUnavailable
from services.edge.streams.moshi import MoshiStream
from services.edge.transport import AudioOutput, ProtocolError, Transport

TURN_ID = 0  # the whole call is one continuous agent stream
# Audio whose RMS is below this (about -40 dBFS) counts as silence, for both sides.
SPEECH_RMS = 0.01
# The agent counts as `listening` (agent_state) once its audio has been this long below SPEECH_RMS.
AGENT_QUIET_S = 0.5


class InferredTurns:
    """Turns of a duplex call inferred from audio levels: the caller's turn ends after `min_silence_s`
    of quiet that follows speech; the agent's reply starts with its first audible frame after that."""

    def __init__(self, min_silence_s: float):
        self._min_silence_s = min_silence_s
        self._last_speech: float | None = None  # when the caller's latest audible audio arrived
        self._pending: TurnTimeline | None = None  # the caller stopped; the agent has not answered yet
        self._turn_ids = 0

    def caller_audio(self, pcm: bytes, now: float) -> None:
        if pcm and pcm_rms(pcm) >= SPEECH_RMS:
            self._last_speech, self._pending = now, None  # still (or again) speaking: no answer is due
        elif self._last_speech is not None and now - self._last_speech >= self._min_silence_s:
            self._turn_ids += 1
            self._pending = TurnTimeline(self._turn_ids, speech_end=self._last_speech)
            self._last_speech = None

    def agent_audio(self, pcm: bytes, now: float) -> TurnTimeline | None:
        """The finished turn when this frame (sent to the caller now) is the reply's first audible one."""
        if self._pending is None or not pcm or pcm_rms(pcm) < SPEECH_RMS:
            return None
        turn, self._pending = self._pending, None
        turn.first_audio_sent = now
        return turn


class _MeteredOutput:
    """What the playout clock sends through: the transport, plus a look at each frame as it goes out."""

    def __init__(self, transport: Transport, on_frame: Callable[[bytes], Awaitable[None]]):
        self.output_sample_rate = transport.output_sample_rate
        self._transport, self._on_frame = transport, on_frame

    async def send_audio(self, frame: bytes) -> None:
        await self._transport.send_audio(frame)
        await self._on_frame(frame)


def call_mode(config: DuplexConfig, claims: dict) -> str:
    """The call's mode: the token's `mode` claim, else the configured default."""
    mode = claims.get("mode", config.default_mode)
    if mode not in ("cascade", "duplex"):
        raise ProtocolError(f"unknown conversation mode {mode!r} in the token; use `cascade` or `duplex`")
    return mode


class DuplexCall(CallCore):
    """The duplex conversation core over one transport. `run` raises DuplexFull when no slot is
    free (nothing has been sent to the caller then, so the host can still answer with the cascade)."""

    mode = "duplex"

    def __init__(self, *args, **kwargs):
        self._turns: InferredTurns | None = None
        super().__init__(*args, **kwargs)
        self._turns = InferredTurns(self.config.turn_taking.min_silence_ms / 1000)
        self._segment = Segment("")  # what the agent has said so far (its text stream)
        self.moshi: MoshiStream | None = None
        self.underruns = 0  # gaps the caller heard, over the whole call
        self._underruns_reported = 0
        self._agent_audible = 0.0  # when the agent's latest audible frame went out

    # -- hooks of the core ----------------------------------------------------------------------

    def _stage_span(self):
        return self.tracing.duplex_call()

    def _playout_timing(self) -> tuple[int, int]:
        return self.config.duplex.playout_lead_ms, self.config.duplex.jitter_buffer_ms

    def _output(self) -> AudioOutput:
        return _MeteredOutput(self.transport, self._on_agent_frame)

    async def _open(self, metadata: Metadata) -> None:
        settings = self.config.duplex
        self.moshi = MoshiStream(self.stages, self.config.resilience, metadata)
        try:
            await self.moshi.open(settings.queue_timeout_s if settings.when_full == "queue" else 0.0)
        except StageTimeout as error:
            raise StageUnavailable("moshi", str(error)) from None

    def _start(self, tasks: asyncio.TaskGroup) -> None:
        tasks.create_task(self._pump_caller_audio(), name=f"{self.id}:caller")
        tasks.create_task(self._read_agent(), name=f"{self.id}:moshi")

    def _close(self) -> None:
        if self.moshi is not None:
            self.moshi.cancel()

    def _on_underrun(self, turn_id: int) -> None:
        self.underruns += 1

    # -- audio ------------------------------------------------------------------------------------

    async def _pump_caller_audio(self) -> None:
        """Caller audio to the stage in 80 ms frames (the stream drops what runs too far ahead)."""
        resampler = PcmResampler(self.transport.input_sample_rate, MOSHI_RATE)
        frame_bytes = MOSHI_FRAME * 2
        pending = bytearray()
        while True:
            pcm = await self.transport.receive_audio()
            self._turns.caller_audio(pcm, time.monotonic())
            pending += resampler.push(pcm)
            while len(pending) >= frame_bytes:
                self.moshi.send(bytes(pending[:frame_bytes]))
                del pending[:frame_bytes]

    async def _read_agent(self) -> None:
        resampler = PcmResampler(MOSHI_RATE, self.transport.output_sample_rate)
        async for response in self.moshi.events():
            kind = response.WhichOneof("event")
            if kind == "audio":
                pcm = resampler.push(response.audio.pcm)
                if pcm:
                    self.playout.add_audio(TURN_ID, pcm, self._segment)
            elif kind == "text":
                self._segment.text += response.text.text
                await self.emit(AgentText(TURN_ID, response.text.text))

    async def _on_agent_frame(self, frame: bytes) -> None:
        now = time.monotonic()
        if frame and pcm_rms(frame) >= SPEECH_RMS:
            self._agent_audible = now
            await self.set_agent_state("speaking")
        elif now - self._agent_audible >= AGENT_QUIET_S:
            await self.set_agent_state("listening")
        turn = self._turns.agent_audio(frame, now) if self._turns is not None else None
        if turn is not None:
            turn.underruns, self._underruns_reported = self.underruns - self._underruns_reported, self.underruns
            await self.report(turn)
