"""A call answered by the duplex model (Moshi) instead of the ASR -> LLM -> TTS cascade.

Moshi listens and speaks at once, so there are no turns to take: caller audio is resampled to
24 kHz and streamed to the `moshi` stage frame by frame (80 ms, 1920 samples), and every frame
the stage answers goes to the caller through the same playout clock as cascade replies (one
continuous reply, turn 0). The model's text stream (its "inner monologue") becomes `agent_text`
events. All tasks of the call live in one TaskGroup, as in the cascade Conversation.

Turns are not taken but can be inferred from audio levels (`InferredTurns`): when the caller has
been quiet for the configured silence after speaking, the next audible agent frame sent to the
caller closes a turn, reported like a cascade turn (a `metrics` event whose `ttfat_ms` is set,
the other components null; Prometheus histograms through the same observers).

A call is duplex when the edge config says so (`duplex.default_mode`) or the caller's signed
token carries the claim `mode: "duplex"` (or `"cascade"` to opt out).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import numpy as np

from services.common.aio import first_leaf
from services.common.audio import StreamResampler, pcm16_to_float
from services.edge.config import DuplexConfig, EdgeConfig
from services.edge.metrics import TurnTimeline
from services.edge.playout import Playout, Segment, play_alone
from services.edge.resilience import FallbackLine, RetryBudget, StageTimeout, StageUnavailable, within
from services.edge.stages import BidiCall, StageClients
from services.edge.tracing import ConversationTracing
from services.edge.transport import CallerHungUp, ProtocolError, Transport

MOSHI_RATE = 24_000
MOSHI_FRAME = 1920  # 80 ms
MOSHI_FRAME_S = MOSHI_FRAME / MOSHI_RATE
AHEAD_FRAMES = 3  # caller frames may run this far ahead of real time (network jitter)
TURN_ID = 0  # the whole call is one continuous agent stream
QUEUE_RETRY_S = 0.5  # how often a queued call asks the duplex stage for a slot again


# Audio whose RMS is below this (about -40 dBFS) counts as silence, for both sides.
SPEECH_RMS = 0.01


class InferredTurns:
    """Turns of a duplex call inferred from audio levels: the caller's turn ends after `min_silence_s`
    of quiet that follows speech; the agent's reply starts with its first audible frame after that."""

    def __init__(self, min_silence_s: float):
        self._min_silence_s = min_silence_s
        self._last_speech: float | None = None  # when the caller's latest audible audio arrived
        self._pending: TurnTimeline | None = None  # the caller stopped; the agent has not answered yet
        self._turn_ids = 0

    def caller_audio(self, audio: np.ndarray, now: float) -> None:
        if audio.size and float(np.sqrt(np.mean(audio ** 2))) >= SPEECH_RMS:
            self._last_speech, self._pending = now, None  # still (or again) speaking: no answer is due
        elif self._last_speech is not None and now - self._last_speech >= self._min_silence_s:
            self._turn_ids += 1
            self._pending = TurnTimeline(self._turn_ids, speech_end=self._last_speech)
            self._last_speech = None

    def agent_audio(self, audio: np.ndarray, now: float) -> TurnTimeline | None:
        """The finished turn when this frame (sent to the caller now) is the reply's first audible one."""
        if self._pending is None or not audio.size or float(np.sqrt(np.mean(audio ** 2))) < SPEECH_RMS:
            return None
        turn, self._pending = self._pending, None
        turn.first_audio_sent = now
        return turn


class _MeteredOutput:
    """What the playout clock sends through: the transport, plus a look at each frame as it goes out."""

    def __init__(self, transport: Transport, on_frame: Callable[[np.ndarray], Awaitable[None]]):
        self.output_sample_rate = transport.output_sample_rate
        self._transport, self._on_frame = transport, on_frame

    async def send_audio(self, frame: np.ndarray) -> None:
        await self._transport.send_audio(frame)
        await self._on_frame(frame)


class DuplexFull(Exception):
    """Every duplex slot is taken (the stage answered RESOURCE_EXHAUSTED before the call started)."""


def call_mode(config: DuplexConfig, claims: dict) -> str:
    mode = claims.get("mode", config.default_mode)
    if mode not in ("cascade", "duplex"):
        raise ProtocolError(f"unknown conversation mode {mode!r} in the token; use `cascade` or `duplex`")
    return mode


class DuplexConversation:
    def __init__(self, transport: Transport, stages: StageClients, config: EdgeConfig, conversation_id: str,
                 observers: tuple[Callable[[TurnTimeline], None], ...] = (),
                 tracing: ConversationTracing | None = None, fallback: FallbackLine | None = None):
        self.id = conversation_id
        self.transport, self.stages, self.config = transport, stages, config
        self.tracing = tracing or ConversationTracing(conversation_id)
        self.observers = observers  # see each inferred turn's timeline; they must not block
        self.fallback = fallback or FallbackLine(config.resilience.fallback_text)
        self._started = time.monotonic()
        self._turns = InferredTurns(config.turn_taking.min_silence_ms / 1000)
        self._playout = Playout(_MeteredOutput(transport, self._on_agent_frame), config.playout_frame_ms,
                                config.playout_lead_ms, self._on_first_audio, lambda turn_id: None)
        self._segment = Segment("")  # what the agent has said so far (its text stream)
        self._budget = RetryBudget("moshi", config.resilience)
        # The current duplex stream, and where its frames are counted from (reset when it is re-opened).
        self._call: BidiCall | None = None
        self._frames_sent, self._stream_started = 0, 0.0

    async def run(self) -> None:
        """Hold the call until the caller hangs up. Raises DuplexFull when no slot is free (nothing has
        been sent to the caller then, so the edge can still answer with the cascade)."""
        with self.tracing.conversation(), self.tracing.duplex_call() as metadata:
            settings = self.config.duplex
            try:
                responses = await self._open(metadata, settings.queue_timeout_s if settings.when_full == "queue" else 0.0)
            except StageTimeout as error:
                raise StageUnavailable("moshi", str(error)) from None
            try:
                await self._emit("ready", conversation_id=self.id, mode="duplex",
                                 input_sample_rate=self.transport.input_sample_rate,
                                 output_sample_rate=self.transport.output_sample_rate)
                self.fallback.warm(self.stages, self.config.persona.voice, self.transport.output_sample_rate)
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(self._pump_caller_audio(), name=f"{self.id}:caller")
                    tasks.create_task(self._read_agent(responses, metadata), name=f"{self.id}:moshi")
                    tasks.create_task(self._playout.run(), name=f"{self.id}:playout")
            except* CallerHungUp:
                pass
            except* StageUnavailable as group:
                await self._say_fallback(first_leaf(group))  # then the call ends (close 1013)
                raise
            finally:
                self._call.cancel()

    async def _open(self, metadata, queue_timeout_s: float) -> AsyncIterator:
        """Start a duplex stream and wait until it holds a slot (SessionStarted). A full stage is asked
        again until `queue_timeout_s` (`when_full: queue`); caller audio sent meanwhile waits in the
        transport and is mostly dropped once the call starts (see _pump_caller_audio)."""
        deadline = time.monotonic() + queue_timeout_s
        while True:
            call = self.stages.converse(metadata)
            responses = aiter(call)
            try:
                await asyncio.wait_for(anext(responses), self.config.resilience.response_timeout_s)
                self._call, self._frames_sent, self._stream_started = call, 0, time.monotonic()
                return responses
            except TimeoutError:
                call.cancel()
                raise StageTimeout("no duplex session started in time") from None
            except grpc.aio.AioRpcError as error:
                call.cancel()
                if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                if time.monotonic() >= deadline:
                    raise DuplexFull(error.details()) from None
            await asyncio.sleep(QUEUE_RETRY_S)

    async def _pump_caller_audio(self) -> None:
        """Caller audio to the stage in 80 ms frames, never more than AHEAD_FRAMES ahead of real time:
        a backlog (audio that queued up in the transport while the call waited for a slot, or a
        client's burst) is dropped, oldest first, instead of delaying the whole call."""
        resampler = StreamResampler(self.transport.input_sample_rate, MOSHI_RATE)
        pending = np.zeros(0, dtype=np.float32)
        while True:
            audio = await self.transport.receive_audio()
            self._turns.caller_audio(audio, time.monotonic())
            pending = np.concatenate([pending, resampler.push(audio)])
            while pending.size >= MOSHI_FRAME:
                frame, pending = pending[:MOSHI_FRAME], pending[MOSHI_FRAME:]
                if self._frames_sent < (time.monotonic() - self._stream_started) / MOSHI_FRAME_S + AHEAD_FRAMES:
                    StageClients.duplex_frame(self._call, frame, self._frames_sent)
                    self._frames_sent += 1

    async def _read_agent(self, responses: AsyncIterator, metadata) -> None:
        """The agent's frames to the playout. The stage answers every 80 ms: a stream that breaks or
        falls silent for `stall_timeout_s` is re-opened (a new session: the model's context of the
        call so far is lost, the call goes on)."""
        resampler = StreamResampler(MOSHI_RATE, self.transport.output_sample_rate)
        stall = within(self.config.resilience.stall_timeout_s)
        while True:
            try:
                async for response in stall.read(responses):
                    kind = response.WhichOneof("event")
                    if kind == "audio":
                        audio = resampler.push(pcm16_to_float(response.audio.pcm))
                        if audio.size:
                            self._playout.add_audio(TURN_ID, audio, self._segment)
                    elif kind == "text":
                        self._segment.text += response.text.text
                        await self._emit("agent_text", turn_id=TURN_ID, text=response.text.text)
                return
            except (grpc.aio.AioRpcError, StageTimeout) as error:
                responses = await self._reopen(error, metadata)

    async def _reopen(self, error: BaseException, metadata) -> AsyncIterator:
        """A new duplex stream for the call, within the retry budget (full or failing stages spend it)."""
        self._call.cancel()
        while True:
            await self._budget.spend(error)
            try:
                return await self._open(metadata, queue_timeout_s=0.0)
            except (grpc.aio.AioRpcError, DuplexFull, StageTimeout) as failed:
                error = failed

    async def _say_fallback(self, error: StageUnavailable) -> None:
        clip = await self.fallback.announce(error, self._emit, self.config.persona.voice,
                                            self.transport.output_sample_rate, TURN_ID)
        if clip is not None:
            await play_alone(self.transport, self.config.playout_frame_ms, self.config.playout_lead_ms, clip,
                             Segment(self.fallback.text), self._on_first_audio)

    async def _on_agent_frame(self, frame: np.ndarray) -> None:
        turn = self._turns.agent_audio(frame, time.monotonic())
        if turn is not None:
            for observe in self.observers:
                observe(turn)
            await self._emit(**turn.to_event())

    async def _on_first_audio(self, turn_id: int) -> None:
        await self._emit("agent_audio_start", turn_id=turn_id)

    async def _emit(self, type: str, **fields) -> None:
        await self.transport.send_event({"type": type, "t": round(time.monotonic() - self._started, 3), **fields})
