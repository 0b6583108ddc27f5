"""One conversation: the caller's audio in, the agent's voice out, turn by turn.

The Conversation owns every task of the call in one TaskGroup: the caller-audio pump, the ASR
reader, the playout clock, and at most one agent turn at a time (LLM -> sentences -> TTS ->
playout). When the caller hangs up, or anything fails, the group cancels them all together and
every stage RPC is cancelled with its task.

Tracing (services/edge/tracing.py) follows the same structure: a `conversation` span for the
call, a `turn` span per agent turn, and a client span around each stage RPC whose `traceparent`
goes with the RPC's metadata.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, field

import numpy as np

from services.common.aio import first_leaf
from services.common.audio import pcm16_to_float
from services.common.text import TextChunker
from services.edge.config import EdgeConfig, PersonaConfig
from services.edge.endpointing import EndOfTurnDetector, SilenceEndpointing
from services.edge.history import ChatHistory
from services.edge.metrics import TurnTimeline
from services.edge.playout import Playout, Segment, play_alone
from services.edge.resilience import (FallbackLine, ResilientRecognizer, ResilientSpeech, StageUnavailable,
                                      resilient_deltas)
from services.edge.stages import StageClients
from services.edge.tracing import ConversationTracing
from services.edge.transport import CallerHungUp, Transport

logger = logging.getLogger("ray.serve")

# Caller audio positions kept to map ASR stream offsets back to wall-clock time.
_AUDIO_CLOCK_ENTRIES = 600


def persona_for(base: PersonaConfig, claims: dict) -> PersonaConfig:
    """The persona for one call: the config's, with overrides from the caller's signed token."""
    overrides = claims.get("persona") or {}
    if not isinstance(overrides, dict):
        return base
    return PersonaConfig.model_validate({**base.model_dump(), **overrides})


@dataclass
class AgentTurn:
    timeline: TurnTimeline
    task: asyncio.Task | None = None
    spoken: list[str] = field(default_factory=list)  # segments sent to TTS
    audio_started: bool = False


class Conversation:
    def __init__(self, transport: Transport, stages: StageClients, config: EdgeConfig, conversation_id: str,
                 detector: EndOfTurnDetector | None = None,
                 observers: tuple[Callable[[TurnTimeline], None], ...] = (),
                 tracing: ConversationTracing | None = None, fallback: FallbackLine | None = None):
        self.id = conversation_id
        self.transport, self.stages, self.config = transport, stages, config
        self.persona = persona_for(config.persona, transport.claims)
        self.detector = detector or SilenceEndpointing()
        self.tracing = tracing or ConversationTracing(conversation_id)  # without a tracer: off
        self.fallback = fallback or FallbackLine(config.resilience.fallback_text)
        # See each finished turn's timeline; they must not block.
        self.observers = (*observers, self.tracing.turn_finished)
        self.history = ChatHistory(self.persona.system_prompt, config.history.max_context_tokens)
        self._started = time.monotonic()
        self._playout = Playout(transport, config.playout_frame_ms, config.playout_lead_ms,
                                self._on_first_audio, self._on_underrun)
        self._tasks: asyncio.TaskGroup | None = None
        self._turn: AgentTurn | None = None
        self._turn_ids = 0
        # Caller audio sent to ASR (seconds) and when each piece reached the edge.
        self._caller_audio_s = 0.0
        self._audio_clock: deque[tuple[float, float]] = deque(maxlen=_AUDIO_CLOCK_ENTRIES)
        self._barge_in_from: float | None = None  # stream offset where caller speech began over the agent
        self._speech_end: float | None = None
        self._vad_stopped: float | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Hold the conversation until the caller hangs up. Other errors propagate."""
        with self.tracing.conversation():
            await self._emit("ready", conversation_id=self.id, input_sample_rate=self.transport.input_sample_rate,
                             output_sample_rate=self.transport.output_sample_rate)
            rate = self.transport.input_sample_rate
            self.fallback.warm(self.stages, self.persona.voice, self.transport.output_sample_rate)
            with self.tracing.asr_call(rate) as metadata:
                asr = ResilientRecognizer(
                    lambda: self.stages.recognize(rate, self.config.turn_taking.min_silence_ms, metadata),
                    rate, self.config.resilience)
                try:
                    async with asyncio.TaskGroup() as tasks:
                        self._tasks = tasks
                        tasks.create_task(self._pump_caller_audio(asr), name=f"{self.id}:caller")
                        tasks.create_task(self._read_asr(asr), name=f"{self.id}:asr")
                        tasks.create_task(self._playout.run(), name=f"{self.id}:playout")
                        if self.persona.greeting and self.transport.wants_greeting:
                            timeline = TurnTimeline(self._new_turn_id())
                            self.tracing.turn_started(timeline)
                            self._start_turn(timeline, fixed_text=self.persona.greeting)
                except* CallerHungUp:
                    pass
                except* StageUnavailable as group:
                    # No ASR means no way to hear the caller: say so, then end the call.
                    await self._say_fallback(first_leaf(group))
                    raise
                finally:
                    asr.cancel()

    # -- caller side ----------------------------------------------------------------------------

    async def _pump_caller_audio(self, asr: ResilientRecognizer) -> None:
        rate = self.transport.input_sample_rate
        frame = rate * self.config.stages.asr_frame_ms // 1000
        pending: list[np.ndarray] = []
        pending_samples = 0
        while True:
            audio = await self.transport.receive_audio()
            pending.append(audio)
            pending_samples += audio.size
            if pending_samples < frame:
                continue
            chunk = np.concatenate(pending) if len(pending) > 1 else pending[0]
            pending, pending_samples = [], 0
            asr.send(chunk)
            self._caller_audio_s += chunk.size / rate
            self._audio_clock.append((self._caller_audio_s, time.monotonic()))
            await self._check_barge_in()

    def _wall_time_at(self, offset_s: float) -> float:
        """When the caller's audio at this stream offset reached the edge."""
        for end_s, at in self._audio_clock:
            if end_s >= offset_s:
                return at - (end_s - offset_s)
        return time.monotonic()

    async def _read_asr(self, asr: ResilientRecognizer) -> None:
        async for event in asr.events():
            kind = event.WhichOneof("event")
            if kind == "speech_started":
                if self._turn is not None:
                    self._barge_in_from = event.speech_started.audio_offset_s
                await self._emit("user_speech_started", utterance_id=event.speech_started.utterance_id)
            elif kind == "speech_stopped":
                self._barge_in_from = None
                self._speech_end = self._wall_time_at(event.speech_stopped.audio_offset_s)
                self._vad_stopped = time.monotonic()
                await self._emit("user_speech_stopped", utterance_id=event.speech_stopped.utterance_id)
            elif kind in ("partial", "final"):
                transcript = getattr(event, kind)
                await self._emit("transcript", utterance_id=transcript.utterance_id, text=transcript.text,
                                 final=kind == "final")
                if kind == "final" and self.detector.is_end_of_turn(transcript.text):
                    await self._on_user_turn(transcript.text, transcript.utterance_id)

    async def _check_barge_in(self) -> None:
        settings = self.config.turn_taking
        if (settings.barge_in and self._turn is not None and self._barge_in_from is not None
                and self._caller_audio_s - self._barge_in_from >= settings.barge_in_min_speech_ms / 1000):
            await self._interrupt()

    async def _on_user_turn(self, text: str, utterance_id: int) -> None:
        if self._turn is not None:
            await self._interrupt()
        self.history.add("user", text)
        timeline = TurnTimeline(self._new_turn_id(), speech_end=self._speech_end, vad_stopped=self._vad_stopped,
                                asr_final=time.monotonic())
        self.tracing.turn_started(timeline, utterance_id, text)
        self._start_turn(timeline)

    # -- agent side -----------------------------------------------------------------------------

    def _new_turn_id(self) -> int:
        self._turn_ids += 1
        return self._turn_ids

    def _start_turn(self, timeline: TurnTimeline, fixed_text: str | None = None) -> None:
        turn = AgentTurn(timeline)
        turn.task = self._tasks.create_task(self._run_turn(turn, fixed_text), name=f"{self.id}:turn{timeline.turn_id}")
        self._turn = turn

    async def _run_turn(self, turn: AgentTurn, fixed_text: str | None) -> None:
        voice, rate, turn_id = self.persona.voice, self.transport.output_sample_rate, turn.timeline.turn_id
        with self.tracing.tts_call(turn_id, voice=voice, sample_rate=rate) as metadata:
            tts = ResilientSpeech(lambda: self.stages.synthesize(voice, rate, metadata), self.config.resilience)
            try:
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(self._speak(turn, tts))
                    if fixed_text is not None:
                        await self._send_segment(turn, tts, fixed_text)
                    else:
                        await self._think(turn, tts)
                    tts.close()
            except* StageUnavailable as group:
                await self._say_fallback(first_leaf(group), turn)  # the call goes on
            finally:
                tts.cancel()  # a no-op when the stream already ended
        self._playout.finish_turn(turn_id)
        await self._playout.wait_played(turn_id)
        if self._turn is turn:
            self._turn = None
        self.history.add("assistant", " ".join(turn.spoken))
        if turn.audio_started:
            await self._emit("agent_audio_end", turn_id=turn.timeline.turn_id, interrupted=False)
        await self._report(turn.timeline)

    async def _think(self, turn: AgentTurn, tts: ResilientSpeech) -> None:
        persona, timeline = self.persona, turn.timeline
        chunker = TextChunker()
        messages = self.history.messages()
        with self.tracing.llm_call(timeline.turn_id, max_tokens=persona.max_tokens,
                                   temperature=persona.temperature) as metadata:
            deltas = resilient_deltas(
                lambda: self.stages.generate(messages, temperature=persona.temperature, max_tokens=persona.max_tokens,
                                             request_id=f"{self.id}-{timeline.turn_id}", metadata=metadata),
                self.config.resilience)
            timeline.llm_request = time.monotonic()
            # aclosing: a barge-in cancels the RPC at once, and the LLM stage aborts the generation.
            async with aclosing(deltas):
                async for text in deltas:
                    if timeline.llm_first_token is None:
                        timeline.llm_first_token = time.monotonic()
                    for segment in chunker.push(text):
                        await self._send_segment(turn, tts, segment)
        for segment in chunker.flush():
            await self._send_segment(turn, tts, segment)

    async def _send_segment(self, turn: AgentTurn, tts: ResilientSpeech, text: str) -> None:
        timeline = turn.timeline
        if timeline.tts_request is None:
            timeline.first_sentence = timeline.tts_request = time.monotonic()
        tts.send(text)
        turn.spoken.append(text)
        await self._emit("agent_text", turn_id=timeline.turn_id, text=text)

    async def _speak(self, turn: AgentTurn, tts: ResilientSpeech) -> None:
        """TTS audio -> playout, one Segment per sentence or clause."""
        segments: dict[int, Segment] = {}
        async for chunk in tts.audio():
            if turn.timeline.tts_first_audio is None:
                turn.timeline.tts_first_audio = time.monotonic()
            segment = segments.setdefault(chunk.segment_id, Segment(chunk.text))
            offset = segment.duration_s
            segment.words.extend((word.word, offset + word.start_s) for word in chunk.words)
            self._playout.add_audio(turn.timeline.turn_id, pcm16_to_float(chunk.pcm), segment)

    async def _say_fallback(self, error: StageUnavailable, turn: AgentTurn | None = None) -> None:
        """A stage stayed unavailable: tell the client, and say the cached fallback line (if any) in
        `turn`'s place, or, with no turn (the call is ending), on a playout clock of its own."""
        logger.warning("conversation %s: %s", self.id, error)
        turn_id = turn.timeline.turn_id if turn else 0
        clip = await self.fallback.announce(error, self._emit, self.persona.voice, self.transport.output_sample_rate,
                                            turn_id)
        if clip is None:
            return
        segment = Segment(self.fallback.text)
        if turn is not None:
            self._playout.add_audio(turn_id, clip, segment)
            return
        await play_alone(self.transport, self.config.playout_frame_ms, self.config.playout_lead_ms, clip, segment,
                         self._on_first_audio)

    async def _on_first_audio(self, turn_id: int) -> None:
        turn = self._turn
        if turn is not None and turn.timeline.turn_id == turn_id:
            turn.audio_started = True
            turn.timeline.first_audio_sent = time.monotonic()
        await self._emit("agent_audio_start", turn_id=turn_id)

    def _on_underrun(self, turn_id: int) -> None:
        if self._turn is not None and self._turn.timeline.turn_id == turn_id:
            self._turn.timeline.underruns += 1

    async def _interrupt(self) -> None:
        """Barge-in: stop playout now, cancel the turn's LLM and TTS RPCs, keep only what was heard."""
        turn, self._turn, self._barge_in_from = self._turn, None, None
        if turn is None:
            return
        turn_id = turn.timeline.turn_id
        heard = self._playout.interrupt(turn_id)
        turn.task.cancel()
        await self.transport.clear_audio()
        turn.timeline.interrupted = True
        self.history.add("assistant", heard, interrupted=True)
        await self._emit("interruption", turn_id=turn_id, heard_text=heard)
        if turn.audio_started:
            await self._emit("agent_audio_end", turn_id=turn_id, interrupted=True)
        await self._report(turn.timeline)

    # -- events -----------------------------------------------------------------------------------

    async def _report(self, timeline: TurnTimeline) -> None:
        for observe in self.observers:
            observe(timeline)
        await self._emit(**timeline.to_event())

    async def _emit(self, type: str, **fields) -> None:
        await self.transport.send_event({"type": type, "t": round(time.monotonic() - self._started, 3), **fields})
