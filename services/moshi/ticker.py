"""The replica's clock: every 80 ms, one batched engine step over all conversations.

A replica has a fixed number of slots. A conversation holds one slot for its whole life
(`acquire` / `release`); its frames queue in the slot's inbox and its outputs come back through
the slot's outbox, one per tick. The tick loop is a single asyncio task per replica:

- each tick takes the oldest buffered frame of every running slot (in order, never reordered);
  a slot whose client is late gets a frame of silence instead, so one slow client never stalls
  the batch; a client that runs more than `max_buffered_frames` ahead loses its oldest frames,
  so its delay stays bounded;
- a slot joins the batch at its first frame (before it, the engine's exec mask leaves its state
  untouched) and leaves once its client has stopped sending and its inbox is drained;
- a released slot is reset on the engine worker before the next step, so the next conversation
  on it starts from a fresh stream;
- ticks are paced on a fixed schedule (no cumulative drift); a step that overruns the tick is
  counted and the schedule restarts from now instead of bursting to catch up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field

import grpc
import numpy as np

from services.common.rpc import StageError, resource_exhausted
from services.common.workers import EngineWorker
from services.moshi.engine import DuplexEngine, StepResult

logger = logging.getLogger("ray.serve")

SILENCE_INDEX = -1  # output index of a tick that fed silence because the client's frame was late


@dataclass(frozen=True)
class SlotOutput:
    index: int  # the input frame this output answers, or SILENCE_INDEX
    audio: np.ndarray  # float32, one frame
    text: str | None


@dataclass
class TickerStats:
    slots: int
    occupied_slots: int = 0
    ticks: int = 0
    overrun_ticks: int = 0  # steps that took longer than a tick
    last_step_ms: float = 0.0
    max_step_ms: float = 0.0
    frames_in: int = 0
    silence_frames: int = 0  # late client frames replaced by silence
    dropped_frames: int = 0  # frames dropped because the client ran too far ahead
    conversations: int = 0


@dataclass(eq=False)
class Slot:
    index: int
    max_buffered: int
    wake: asyncio.Event  # the ticker's: set when a frame arrives, so an idle ticker starts ticking
    inbox: deque = field(default_factory=deque)  # (client index, float32 frame)
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)  # SlotOutput | Exception | None (end)
    started: bool = False
    input_ended: bool = False
    finished: bool = False
    dropped: int = 0

    def push(self, index: int, frame: np.ndarray) -> None:
        self.inbox.append((index, frame))
        self.started = True
        self.wake.set()
        while len(self.inbox) > self.max_buffered:
            self.inbox.popleft()
            self.dropped += 1

    def end_input(self) -> None:
        self.input_ended = True
        if not self.started:  # nothing was sent: there is nothing to answer
            self.finish()

    def finish(self, error: Exception | None = None) -> None:
        """End the slot's output stream: cleanly (None), or with the error its reader raises."""
        if not self.finished:
            self.finished = True
            self.outbox.put_nowait(error)

    @property
    def running(self) -> bool:
        return self.started and not self.finished


class DuplexTicker:
    def __init__(self, engine: DuplexEngine, worker: EngineWorker, tick_s: float, max_buffered_frames: int):
        self._engine, self._worker, self._tick_s = engine, worker, tick_s
        self._max_buffered = max_buffered_frames
        self._slots: list[Slot | None] = [None] * engine.slots
        self._needs_reset: set[int] = set(range(engine.slots))  # whatever ran on the engine before
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.stats = TickerStats(slots=engine.slots)

    def acquire(self) -> Slot:
        free = [i for i, slot in enumerate(self._slots) if slot is None]
        if not free:
            raise resource_exhausted(f"all {len(self._slots)} duplex slots of this replica are taken; try another replica")
        slot = Slot(free[0], self._max_buffered, self._wake)
        self._slots[slot.index] = slot
        self.stats.occupied_slots += 1
        self.stats.conversations += 1
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="moshi-ticker")
        return slot

    def release(self, slot: Slot) -> None:
        if self._slots[slot.index] is not slot:
            return
        self._slots[slot.index] = None
        self._needs_reset.add(slot.index)
        self.stats.occupied_slots -= 1
        self.stats.dropped_frames += slot.dropped

    async def _run(self) -> None:
        next_tick = time.monotonic()
        while True:
            if not any(slot is not None and slot.running for slot in self._slots):
                self._wake.clear()
                await self._wake.wait()  # idle: nobody is sending
                next_tick = time.monotonic()
                continue
            await self._tick()
            next_tick += self._tick_s
            delay = next_tick - time.monotonic()
            if delay < 0:
                self.stats.overrun_ticks += 1
                next_tick = time.monotonic()
            await asyncio.sleep(max(delay, 0.0))

    async def _tick(self) -> None:
        engine = self._engine
        frames = np.zeros((engine.slots, engine.frame_samples), dtype=np.float32)
        active = np.zeros(engine.slots, dtype=bool)
        answered: dict[int, tuple[Slot, int]] = {}  # slot index -> (its conversation, input index answered)
        for slot in self._slots:
            if slot is None or not slot.running:
                continue
            if slot.inbox:
                input_index, frames[slot.index] = slot.inbox.popleft()
                answered[slot.index] = (slot, input_index)
                self.stats.frames_in += 1
            elif slot.input_ended:
                slot.finish()  # every frame it sent has been answered
                continue
            else:
                answered[slot.index] = (slot, SILENCE_INDEX)
                self.stats.silence_frames += 1
            active[slot.index] = True
        if not active.any():
            return
        resets, self._needs_reset = sorted(self._needs_reset), set()
        started = time.perf_counter()
        try:
            result = await self._worker.run(self._step, resets, frames, active)
        except Exception as error:  # the engine failed: every conversation in the batch ends with it
            logger.exception("duplex step failed")
            failure = StageError(grpc.StatusCode.INTERNAL, f"duplex step failed: {type(error).__name__}")
            for slot, _ in answered.values():
                self._fail(slot, failure)
            return
        step_ms = (time.perf_counter() - started) * 1000
        self.stats.ticks += 1
        self.stats.last_step_ms = round(step_ms, 2)
        self.stats.max_step_ms = round(max(self.stats.max_step_ms, step_ms), 2)
        for index, (slot, input_index) in answered.items():
            if self._slots[index] is not slot:
                continue  # its conversation ended while the step ran (the slot may already be someone else's)
            slot.outbox.put_nowait(SlotOutput(input_index, result.audio[index], result.text[index]))

    def _step(self, resets: list[int], frames: np.ndarray, active: np.ndarray) -> StepResult:
        for index in resets:  # on the engine worker, so resets never race a step
            self._engine.reset_slot(index)
        return self._engine.step(frames, active)

    def _fail(self, slot: Slot, error: Exception) -> None:
        if self._slots[slot.index] is slot:
            slot.finish(error)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
