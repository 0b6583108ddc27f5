"""A call answered by the cascade: ASR -> LLM -> TTS, turn by turn, with barge-in.

One ASR stream for the whole call; per agent turn (services/edge/turn.py) one LLM RPC and one TTS
stream, owned by the turn's task. Caller audio goes to the ASR as PCM, batched into
`stages.asr_frame_ms` frames, silence held back by the speech gate; the ASR stream counts it
(offsets, wall clock) for the timeline and for barge-in. What counts as the end of the caller's
turn and as an interruption are decisions of their own (services/edge/turn_taking/): caller
speech over the agent goes through `Overlap` (pause, resume after a false interruption,
interrupt, or a backchannel ignored). When the caller pauses, a preemptive reply starts before
their turn is confirmed, held until it is and thrown away if they go on
(turn_taking/preemptive.py). The reply itself, tool calls included, is the reply loop's
(services/edge/tools/loop.py).
"""

from __future__ import annotations

import asyncio
import time

from services.common.aio import first_leaf
from services.common.timeline import TurnTimeline
from services.edge.core import CallCore
from services.edge.events import AgentText, IdlePrompt, Transcript, UserSpeechStarted, UserSpeechStopped
from services.edge.history import ChatHistory
from services.edge.playout import Segment
from services.edge.streams.asr import AsrStream
from services.edge.streams.base import Metadata, StageUnavailable
from services.edge.streams.tts import TtsStream
from services.edge.tools.loop import ReplyLoop
from services.edge.tools.toolset import ToolSet
from services.edge.turn import Turn
from services.edge.turn_taking import EndOfTurnDetector, InterruptPolicy
from services.edge.turn_taking.endpointing import Endpointing, detector_for
from services.edge.turn_taking.idle import IDLE_RECHECK_S, IdleAction, IdleCaller, IdleHangUp
from services.edge.turn_taking.overlap import Overlap
from services.edge.turn_taking.preemptive import PreemptiveReply
from services.proto import asr_pb2


class CascadeCall(CallCore):
    """The cascade's conversation core over one transport."""

    def __init__(self, *args, detector: EndOfTurnDetector | None = None, policy: InterruptPolicy | None = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.endpointing = Endpointing(detector or detector_for(self.config.turn_taking), self.config.turn_taking,
                                       self.transport.input_sample_rate, self._on_user_turn, self._prepare_reply,
                                       self._tick_after)
        self.preemptive = PreemptiveReply()
        self.policy = policy or InterruptPolicy(self.config.turn_taking)
        self.overlap = Overlap(self.policy, self.playout, self.emit, self.interrupt, self.transport.clear_audio,
                               self.config.turn_taking.false_interruption_timeout_ms)
        self.idle = IdleCaller(self.config.turn_taking)
        self._goodbye: Turn | None = None  # the idle goodbye: the call ends once it has played
        self.history = ChatHistory(self.persona.system_prompt, self.config.history.max_context_tokens)
        self.replies = ReplyLoop(self, ToolSet(self.persona.tools, self.config.tools))
        self.asr: AsrStream | None = None
        self.turn: Turn | None = None  # the agent turn in progress, if any
        self._turn_ids = 0
        self._speech_end: float | None = None
        self._vad_stopped: float | None = None

    # -- hooks of the core ----------------------------------------------------------------------

    def _stage_span(self):
        return self.tracing.asr_call(self.transport.input_sample_rate)

    async def _open(self, metadata: Metadata) -> None:
        self.asr = AsrStream(self.stages, self.transport.input_sample_rate, self.endpointing.silence_ms,
                             self.config.resilience, metadata, gate=self.config.stages.speech_gate,
                             pause_ms=self.endpointing.pause_ms)

    def _start(self, tasks: asyncio.TaskGroup) -> None:
        self._tasks = tasks
        tasks.create_task(self._pump_caller_audio(), name=f"{self.id}:caller")
        tasks.create_task(self._read_asr(), name=f"{self.id}:asr")
        if self.idle.enabled:
            tasks.create_task(self._watch_idle(), name=f"{self.id}:idle")
        self.transport.on_user_text = self._on_user_text
        if self.persona.greeting and self.transport.wants_greeting:
            self._begin_turn(TurnTimeline(self._next_turn_id()), fixed_text=self.persona.greeting)

    def _close(self) -> None:
        self.asr.cancel()

    async def _on_first_audio(self, turn_id: int) -> None:
        if self.turn is not None and self.turn.id == turn_id:
            self.turn.first_audio()
        await super()._on_first_audio(turn_id)
        if self.turn is not None and self.turn.id == turn_id:
            await self.set_agent_state("speaking")

    def _on_underrun(self, turn_id: int) -> None:
        if self.turn is not None and self.turn.id == turn_id:
            self.turn.timeline.underruns += 1

    # -- caller side ----------------------------------------------------------------------------

    async def _pump_caller_audio(self) -> None:
        frame_bytes = self.transport.input_sample_rate * self.config.stages.asr_frame_ms // 1000 * 2
        pending = bytearray()
        while True:
            pending += await self.transport.receive_audio()
            if len(pending) < frame_bytes:
                continue
            self.asr.send(bytes(pending))
            self.endpointing.push(bytes(pending), self.transport.input_sample_rate)
            pending.clear()
            await self.endpointing.tick()
            await self._check_idle()
            await self.overlap.audio(self.turn, self.asr.sent_s)

    async def _read_asr(self) -> None:
        async for event in self.asr.events():
            kind = event.WhichOneof("event")
            if kind == "speech_started":
                await self._discard_preemptive()  # the caller goes on
                if self.turn is not None:
                    self.overlap.speech_started(event.speech_started.audio_offset_s)
                self.endpointing.speech_started(event.speech_started.utterance_id)
                self.idle.activity(caller_speaking=True)
                await self.emit(UserSpeechStarted(event.speech_started.utterance_id))
            elif kind == "speech_stopped":
                self.overlap.speech_stopped()
                self.endpointing.speech_stopped(event.speech_stopped.audio_offset_s)
                self.idle.activity(caller_speaking=False)
                self._speech_end = self.asr.wall_time_at(event.speech_stopped.audio_offset_s)
                self._vad_stopped = time.monotonic()
                await self.emit(UserSpeechStopped(event.speech_stopped.utterance_id))
            elif kind == "speech_resumed":
                await self._discard_preemptive()  # the caller goes on after a pause
            elif kind == "pause":
                await self._on_pause_transcript(event.pause)
            elif kind in ("partial", "final"):
                transcript = getattr(event, kind)
                if kind == "final":
                    self.idle.transcribed()
                await self.emit(Transcript(transcript.utterance_id, transcript.text, final=kind == "final"))
                if kind == "partial":
                    await self.overlap.partial(self.turn, transcript.text, transcript.language, self.asr.sent_s)
                elif (await self.overlap.final(self.turn, transcript.text, transcript.language, transcript.utterance_id)
                      or self.turn is None):  # no agent turn: even a final without words ends a pause
                    await self.endpointing.final(transcript.text, transcript.utterance_id)

    async def _on_pause_transcript(self, pause: asr_pb2.Pause) -> None:
        """The caller's words so far, decoded at a pause inside their utterance: an interim
        transcript; with the agent silent, the reply to them may start (held)."""
        transcript = pause.transcript
        await self.emit(Transcript(transcript.utterance_id, transcript.text, final=False))
        if self.turn is not None:
            await self.overlap.partial(self.turn, transcript.text, transcript.language, self.asr.sent_s)
            return
        self._speech_end = self.asr.wall_time_at(pause.speech_end_s)  # the held reply's TTFAT counts from here
        self._vad_stopped = time.monotonic() - transcript.decode_s  # when the pause was heard, less its decode
        await self.endpointing.paused(transcript.text, transcript.utterance_id)

    async def _on_user_turn(self, text: str, utterance_id: int | None) -> None:
        held = self.preemptive.confirm(text)
        if held is None:
            await self._discard_preemptive()  # it answered other words
        if self.turn is not None:
            await self.interrupt()
        self.history.add_user(text)
        if held is not None:  # play the reply prepared for exactly these words
            held.timeline.turn_confirmed = time.monotonic()
            self.turn = held
            await self.set_agent_state("thinking")  # until its audio plays, which may be at once
            await held.release()  # its held events (agent_text) go out before its audio starts
            self.playout.resume(held.id)
            return
        now = time.monotonic()
        timeline = TurnTimeline(self._next_turn_id(), speech_end=self._speech_end, vad_stopped=self._vad_stopped,
                                asr_final=now, turn_confirmed=now)
        self._begin_turn(timeline, utterance_id=utterance_id, user_text=text)

    async def _prepare_reply(self, text: str, utterance_id: int) -> None:
        """The caller paused after `text`: start its reply now, held until the turn is confirmed."""
        if self.preemptive.answers(text) or self.turn is not None:
            return  # already prepared, or the agent still holds a turn (it is interrupted on confirmation)
        await self._discard_preemptive()
        timeline = TurnTimeline(self._next_turn_id(), speech_end=self._speech_end, vad_stopped=self._vad_stopped,
                                asr_final=time.monotonic())
        self.preemptive.hold(self._begin_turn(timeline, utterance_id=utterance_id, user_text=text, held=True), text)

    async def _discard_preemptive(self) -> None:
        turn = self.preemptive.discard()
        if turn is not None:
            self.playout.interrupt(turn.id)  # its held audio goes nowhere
            self.tracing.turn_discarded(turn.timeline)

    def _tick_after(self, delay_s: float) -> None:
        """Confirm the held turn once it is due, even if no caller audio comes (a task of the call)."""
        async def confirm_when_due() -> None:
            await asyncio.sleep(delay_s)
            # An event loop may wake a timer a little early (uvloop counts whole milliseconds), and
            # a caller who stopped streaming brings no other check: sleep out the rest.
            while (remaining_s := self.endpointing.due_in()) is not None and remaining_s > 0:
                await asyncio.sleep(remaining_s)
            await self.endpointing.tick()

        self._tasks.create_task(confirm_when_due(), name=f"{self.id}:endpointing")

    def _agent_busy(self) -> bool:
        return self.turn is not None or self.preemptive.turn is not None

    async def _watch_idle(self) -> None:
        """Check the idle clock when it is due, also for a line that sends no audio; a clock that
        stands (someone speaking) is looked at again every IDLE_RECHECK_S."""
        while True:  # ended with the call's tasks (after the goodbye, unless the caller cuts it short)
            due_s = self.idle.due_in(self._agent_busy())
            await asyncio.sleep(IDLE_RECHECK_S if due_s is None else min(due_s, IDLE_RECHECK_S))
            await self._check_idle()

    async def _check_idle(self) -> None:
        action = self.idle.check(agent_busy=self._agent_busy())
        if action is IdleAction.NONE or self._goodbye is not None:
            return
        final = action is IdleAction.GOODBYE
        turn = self._begin_turn(TurnTimeline(self._next_turn_id()),
                                fixed_text=self.idle.goodbye_text if final else self.idle.reprompt_text)
        if final:
            self._goodbye = turn
        await self.emit(IdlePrompt(turn.id, final=final))

    async def on_dtmf(self, digit: str) -> None:
        """A key press is a `dtmf` event; with tools, also a user turn "[DTMF <digit>]", so the
        model can act on a menu choice (docs/twilio.md)."""
        await super().on_dtmf(digit)
        if self.persona.tools:
            await self._on_user_text(f"[DTMF {digit}]")

    async def _on_user_text(self, text: str) -> None:
        """Typed input (WebSocket `user_text`): a user turn with no utterance (and no speech timing)."""
        self._speech_end = self._vad_stopped = None
        await self._on_user_turn(text, None)

    # -- agent side -----------------------------------------------------------------------------

    def _next_turn_id(self) -> int:
        self._turn_ids += 1
        return self._turn_ids

    def _begin_turn(self, timeline: TurnTimeline, fixed_text: str | None = None, utterance_id: int | None = None,
                    user_text: str | None = None, held: bool = False) -> Turn:
        """Start an agent turn; a `held` one (preemptive) answers `user_text`, not yet in the history,
        and is not the call's turn until it is confirmed."""
        self.tracing.turn_started(timeline, utterance_id, user_text)
        turn = Turn(timeline, self.emit, pending_user=user_text if held else None)
        if held:
            self.playout.hold(turn.id)
        turn.task = self._tasks.create_task(self._run_turn(turn, fixed_text), name=f"{self.id}:turn{turn.id}")
        if not held:
            self.turn = turn
        return turn

    async def _run_turn(self, turn: Turn, fixed_text: str | None) -> None:
        voice, rate = self.persona.voice, self.transport.output_sample_rate
        if self.turn is turn:
            await self.set_agent_state("thinking")  # until the reply's first audio
        with self.tracing.tts_call(turn.id, voice=voice, sample_rate=rate) as metadata:
            tts = TtsStream(self.stages, voice, rate, self.config.resilience, metadata)
            try:
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(self._speak(turn, tts))
                    if fixed_text is not None:
                        await self._send_segment(turn, tts, fixed_text)
                    else:
                        await self._think(turn, tts)
                    tts.close()
            except* StageUnavailable as group:
                await self.say_fallback(first_leaf(group), turn.id)  # the call goes on
            finally:
                tts.cancel()  # a no-op when the stream already ended
        await turn.wait_released()  # a preemptive reply ends only once it is the caller's turn's
        self.playout.finish_turn(turn.id)
        await self.playout.wait_played(turn.id)
        await self._end_turn(turn)
        await self.replies.finish_turn(turn)  # a pending end_call or transfer ends the call here

    async def _think(self, turn: Turn, tts: TtsStream) -> None:
        await self.replies.reply(turn, lambda text: self._send_segment(turn, tts, text))

    async def _send_segment(self, turn: Turn, tts: TtsStream, text: str) -> None:
        timeline = turn.timeline
        if timeline.tts_request is None:
            timeline.first_sentence = timeline.tts_request = time.monotonic()
        tts.send(text)
        turn.spoken.append(text)
        await turn.emit(AgentText(turn.id, text))

    async def _speak(self, turn: Turn, tts: TtsStream) -> None:
        """TTS audio -> playout, one Segment per sentence or clause."""
        segments: dict[int, Segment] = {}
        async for chunk in tts.audio():
            if turn.timeline.tts_first_audio is None:
                turn.timeline.tts_first_audio = time.monotonic()
            turn.tts_audio_s += len(chunk.pcm) / 2 / (chunk.sample_rate_hz or self.transport.output_sample_rate)
            segment = segments.setdefault(chunk.segment_id, Segment(chunk.text))
            offset = segment.duration_s
            segment.words.extend((word.word, offset + word.start_s) for word in chunk.words)
            if not turn.over:
                self.playout.add_audio(turn.id, chunk.pcm, segment)

    async def interrupt(self) -> None:
        """Barge-in: stop playout now, cancel the turn's LLM and TTS RPCs, keep only what was heard."""
        turn = self.turn
        self.overlap.reset()
        if turn is not None:
            await self._end_turn(turn, heard=self.playout.interrupt(turn.id))

    async def _end_turn(self, turn: Turn, heard: str | None = None) -> None:
        """The one ending path of a turn, played out (`heard` None) or interrupted."""
        kept = turn.close(heard)
        if kept is None:
            return  # already ended the other way
        if self.turn is turn:
            self.turn = None
            self.overlap.reset()
        self.history.add("assistant", self.replies.unrecorded(turn, kept), interrupted=heard is not None)
        if heard is not None:
            await self.transport.clear_audio()
        await turn.announce_end()
        self.preemptive.charge(turn.timeline)
        await self.report(turn.timeline)
        if self.turn is None:
            await self.set_agent_state("listening")
        self.idle.activity()
        if turn is self._goodbye:
            self._goodbye = None
            if heard is None:
                raise IdleHangUp()  # said goodbye to a silent caller: the call ends normally
