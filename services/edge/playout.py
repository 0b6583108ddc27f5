"""The playout clock: agent audio goes to the caller in real time, never in bursts.

Audio (PCM s16le at the transport's output rate) arrives per TTS segment or duplex frame, is cut
into fixed frames and sent when each frame is due (start of the burst + frame index x frame
length), at most `lead` ahead, so a live caller's buffer never fills with seconds of speech that
a barge-in would have to chase. A burst may start `prebuffer` late, a jitter buffer for audio that
arrives in bursts itself (duplex frames). It counts an underrun whenever the caller would hear a
gap (the audio sent so far has played out and the next frame is late), and it knows what the
caller has heard, to the word, when a reply is cut short or paused: a frame counts as heard once
its due time has passed, so audio sent within the lead is taken back (and, after a pause, sent
again on resume).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from services.edge.transport import AudioOutput


@dataclass
class Segment:
    """One sentence or clause of a reply, as TTS spoke it."""

    text: str
    words: list[tuple[str, float]] = field(default_factory=list)  # (word, start_s) within the segment
    duration_s: float = 0.0
    played_s: float = 0.0

    def heard_text(self) -> str:
        if self.played_s >= self.duration_s:
            return self.text
        if self.words:
            return " ".join(word for word, start in self.words if start < self.played_s)
        # No word timings: assume words are spread evenly over the audio.
        words = self.text.split()
        return " ".join(words[: int(len(words) * self.played_s / max(self.duration_s, 1e-6))])


@dataclass
class _Frame:
    turn_id: int
    audio: bytes
    segment: Segment


class Playout:
    """The call's one playout clock; `run()` is a task of the call."""

    def __init__(self, transport: AudioOutput, frame_ms: int, lead_ms: int,
                 on_first_audio: Callable[[int], Awaitable[None]], on_underrun: Callable[[int], None],
                 prebuffer_ms: int = 0,
                 on_segment_start: Callable[[int, Segment], Awaitable[None]] | None = None):
        self._transport = transport
        self._rate = transport.output_sample_rate
        self._frame = self._rate * frame_ms // 1000
        self._frame_bytes = self._frame * 2
        self._frame_s = self._frame / self._rate
        self._lead_s = lead_ms / 1000
        self._prebuffer_s = prebuffer_ms / 1000
        self._on_first_audio, self._on_underrun = on_first_audio, on_underrun
        self._on_segment_start = on_segment_start
        self._last_segment: Segment | None = None  # of the latest frame sent
        self._frames: deque[_Frame] = deque()
        self._ready = asyncio.Event()
        self._segments: dict[int, list[Segment]] = {}
        self._complete: set[int] = set()  # turns whose audio has all been queued
        self._drained: dict[int, asyncio.Event] = {}
        self._burst_start: float | None = None
        self._burst_frames = 0
        self._sent: deque[tuple[float, _Frame]] = deque()  # (due, frame) sent, maybe not yet heard
        self._paused: set[int] = set()
        self._announced: set[int] = set()  # turns whose first audio was announced (once, despite pauses)
        self.current_turn: int | None = None

    def add_audio(self, turn_id: int, pcm: bytes, segment: Segment) -> None:
        """Queue PCM of `segment` (a long segment comes in several pieces, in order)."""
        segments = self._segments.setdefault(turn_id, [])
        if not segments or segments[-1] is not segment:
            segments.append(segment)
        segment.duration_s += len(pcm) / 2 / self._rate
        self._drained.setdefault(turn_id, asyncio.Event())
        size = self._frame_bytes
        for start in range(0, len(pcm), size):
            chunk = pcm[start:start + size]
            if len(chunk) < size:
                chunk += bytes(size - len(chunk))
            self._frames.append(_Frame(turn_id, chunk, segment))
        self._ready.set()

    def finish_turn(self, turn_id: int) -> None:
        """No more audio will come for this turn."""
        self._complete.add(turn_id)
        self._drained.setdefault(turn_id, asyncio.Event())
        if not any(frame.turn_id == turn_id for frame in self._frames) and self.current_turn != turn_id:
            self._drained[turn_id].set()
        self._ready.set()

    async def wait_played(self, turn_id: int) -> None:
        await self._drained.setdefault(turn_id, asyncio.Event()).wait()

    def _take_back(self, turn_id: int) -> list[_Frame]:
        """The turn's frames sent but not yet due (within the lead): no longer counted as played."""
        now = time.monotonic()
        unheard = [frame for due, frame in self._sent if frame.turn_id == turn_id and due > now]
        self._sent = deque(entry for entry in self._sent if entry[1].turn_id != turn_id)
        for frame in unheard:
            frame.segment.played_s = max(0.0, frame.segment.played_s - self._frame_s)
        if self.current_turn == turn_id:
            self._end_burst()
        return unheard

    def interrupt(self, turn_id: int) -> str:
        """Drop the turn's queued audio; return the text the caller heard of it."""
        self._take_back(turn_id)
        self._frames = deque(frame for frame in self._frames if frame.turn_id != turn_id)
        self._paused.discard(turn_id)
        self._announced.discard(turn_id)
        segments = self._segments.pop(turn_id, [])
        self._complete.discard(turn_id)
        self._drained.pop(turn_id, asyncio.Event()).set()
        return " ".join(text for text in (segment.heard_text() for segment in segments) if text)

    def pause(self, turn_id: int) -> None:
        """Stop the turn's audio where the caller is; what was sent ahead goes back in the queue."""
        if turn_id in self._paused:
            return
        self._paused.add(turn_id)
        self._frames.extendleft(reversed(self._take_back(turn_id)))

    def hold(self, turn_id: int) -> None:
        """Queue the turn's audio without playing it until `resume` (a preemptive reply)."""
        self._paused.add(turn_id)

    def resume(self, turn_id: int) -> None:
        """Play a paused or held turn on from where it stopped."""
        self._paused.discard(turn_id)
        self._ready.set()

    def paused(self, turn_id: int) -> bool:
        return turn_id in self._paused

    async def run(self) -> None:
        while True:
            if not self._frames:
                self._maybe_end_turn()
                self._ready.clear()
                await self._ready.wait()
                continue
            frame = self._frames[0]
            if frame.turn_id in self._paused:
                self._ready.clear()
                await self._ready.wait()
                continue
            if self.current_turn != frame.turn_id:
                self._end_burst()
                self.current_turn = frame.turn_id
                self._burst_start = time.monotonic() + self._prebuffer_s
                self._burst_frames = 0
                if frame.turn_id not in self._announced:
                    self._announced.add(frame.turn_id)
                    await self._on_first_audio(frame.turn_id)
            due = self._burst_start + self._burst_frames * self._frame_s
            now = time.monotonic()
            if now > due + self._frame_s:
                # Audio was due and none was there: the caller heard a gap. Restart the clock.
                self._on_underrun(frame.turn_id)
                self._burst_start, self._burst_frames = now + self._prebuffer_s, 0
                due = self._burst_start
            if due - self._lead_s > now:
                await asyncio.sleep(due - self._lead_s - now)
                continue  # the queue may have been cut by a barge-in meanwhile
            self._frames.popleft()
            if frame.segment is not self._last_segment:
                self._last_segment = frame.segment
                if self._on_segment_start is not None:
                    await self._on_segment_start(frame.turn_id, frame.segment)
            frame.segment.played_s += self._frame_s
            self._burst_frames += 1
            self._sent.append((due, frame))
            while self._sent and self._sent[0][0] < now - self._lead_s:
                self._sent.popleft()  # long heard
            await self._transport.send_audio(frame.audio)

    def _maybe_end_turn(self) -> None:
        turn = self.current_turn
        if turn is not None and turn in self._complete:
            self._segments.pop(turn, None)
            self._complete.discard(turn)
            self._announced.discard(turn)
            self._end_burst()
            self._drained.pop(turn, asyncio.Event()).set()

    def _end_burst(self) -> None:
        self.current_turn = None
        self._burst_start = None
        self._burst_frames = 0


async def play_alone(transport: AudioOutput, frame_ms: int, lead_ms: int, audio: bytes, segment: Segment,
                     on_first_audio: Callable[[int], Awaitable[None]]) -> None:
    """Play one clip on a playout clock of its own and return once it is played (a call that is
    ending, whose own clock has stopped)."""
    playout = Playout(transport, frame_ms, lead_ms, on_first_audio, lambda turn_id: None)
    async with asyncio.TaskGroup() as tasks:
        clock = tasks.create_task(playout.run())
        playout.add_audio(0, audio, segment)
        playout.finish_turn(0)
        await playout.wait_played(0)
        clock.cancel()
