"""The agent's reply with tools: LLM round -> tool calls -> results in the history -> next round.

Text the model writes before a call is spoken as it streams. Its calls run as tasks of the call
(not of the turn), so a barge-in cancels only those marked `cancel_on_interrupt`; the others finish
and their result replaces the placeholder in the history, for the next turn to see. While tools
run longer than `filler_after_ms` the filler line is said, once per turn. Rounds that may run
tools are bounded (`max_steps`); calls beyond the bound are answered "not run". `end_call` and
`transfer` take effect once the turn has played out (`finish_turn`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any

from services.common import attributes as attr
from services.common import metrics, telemetry
from services.common.text import TextChunker
from services.edge.events import ToolCalled, Transfer
from services.edge.history import Message
from services.edge.streams.llm import reply_deltas
from services.edge.tools.runners import ToolContext, ToolResult
from services.edge.tools.toolset import ToolSet
from services.edge.tools.transfer import CallEnded, check_transfer, transfer
from services.edge.turn import Turn

PENDING = '{"status": "still running: the result will follow"}'
NOT_RUN = ToolResult.failed("not run: too many tool calls in one turn; answer the caller now")
CANCELLED = ToolResult.failed("cancelled: the caller interrupted before it finished")

Say = Callable[[str], Awaitable[None]]


class ReplyLoop:
    """One call's replies through the LLM, tools included (`call` is the CascadeCall)."""

    def __init__(self, call: Any, tools: ToolSet):
        self.call, self.tools, self.config = call, tools, call.config.tools
        self.ending: CallEnded | None = None  # set by end_call / transfer; acted on after the turn
        self._recorded: dict[int, int] = {}  # turn id -> words already in the history with tool calls

    async def reply(self, turn: Turn, say: Say) -> None:
        """Speak the reply to the history's last message through `say` (one segment at a time)."""
        filler_said = False
        for step in range(self.config.max_steps + 1):
            spoken, calls = await self._round(turn, step, say)
            if not calls:
                return
            # A preemptive reply runs no tool and writes no history before the caller's turn is confirmed.
            await turn.wait_released()
            self.call.history.add("assistant", " ".join(spoken), tool_calls=tuple(calls))
            self._recorded[turn.id] = self._recorded.get(turn.id, 0) + len(" ".join(spoken).split())
            if step == self.config.max_steps or self.ending is not None:
                for call in calls:  # the model must answer now (or has said its last words)
                    self.call.history.add("tool", NOT_RUN.content if self.ending is None else
                                          ToolResult("the call is ending").content, tool_call_id=call.id)
                if self.ending is None or spoken:
                    return
                continue
            filler_said = await self._run_calls(turn, calls, say, filler_said)
            if self.ending is not None and spoken:
                return  # it said its goodbye before ending the call

    async def _round(self, turn: Turn, step: int, say: Say) -> tuple[list[str], list]:
        call, persona, timeline = self.call, self.call.persona, turn.timeline
        segments = call.config.segments
        # The reply's first segment is a short clause (first audio early); later ones are sentences.
        chunker = TextChunker(segments.min_clause_words) if turn.spoken else TextChunker(
            segments.min_clause_words, first_min_words=segments.first_min_words, first_max_words=segments.first_max_words)
        spoken, calls = [], []
        messages = call.history.chat()
        if turn.pending_user is not None:  # a preemptive reply: the caller's words are not in the history yet
            messages.append(Message("user", turn.pending_user))

        def count(tokens: int) -> None:
            turn.llm_tokens += tokens

        async def out(segment: str) -> None:
            spoken.append(segment)
            await say(segment)

        request_id = f"{call.id}-{turn.id}" + (f"-{step}" if step else "")
        with call.tracing.llm_call(turn.id, max_tokens=persona.max_tokens, temperature=persona.temperature) as metadata:
            deltas = reply_deltas(call.stages, messages, temperature=persona.temperature,
                                  max_tokens=persona.max_tokens, request_id=request_id, config=call.config.resilience,
                                  metadata=metadata, tools_json=self.tools.schemas_json, session_id=call.id,
                                  on_tokens=count)
            if timeline.llm_request is None:
                timeline.llm_request = time.monotonic()
            # aclosing: a barge-in cancels the RPC at once, and the LLM stage aborts the generation.
            async with aclosing(deltas):
                async for item in deltas:
                    if not isinstance(item, str):
                        calls.append(item)
                        continue
                    if timeline.llm_first_token is None:
                        timeline.llm_first_token = time.monotonic()
                    for segment in chunker.push(item):
                        await out(segment)
        for segment in chunker.flush():
            await out(segment)
        return spoken, calls

    async def _run_calls(self, turn: Turn, calls: list, say: Say, filler_said: bool) -> bool:
        history = self.call.history
        placeholders = [history.add("tool", PENDING, tool_call_id=call.id) for call in calls]
        # Tasks of the call, not of this turn: a barge-in cancelling the turn leaves them running.
        tasks = [self.call._tasks.create_task(self._run_one(turn.id, call, held), name=f"{self.call.id}:tool")
                 for call, held in zip(calls, placeholders, strict=True)]
        try:
            _, running = await asyncio.wait(tasks, timeout=self.config.filler_after_ms / 1000)
            if running:
                if not filler_said and self.config.filler_text:
                    filler_said = True
                    await say(self.config.filler_text)
                await asyncio.wait(running)
        except asyncio.CancelledError:
            for call, task, held in zip(calls, tasks, placeholders, strict=True):
                spec = self.tools.spec(call.name)
                if spec is not None and spec.cancel_on_interrupt and not task.done():
                    task.cancel()
                    history.resolve(held, CANCELLED.content)  # now: the next turn's request is being built
            raise
        return filler_said

    async def _run_one(self, turn_id: int, call: Any, placeholder: Message) -> None:
        context = ToolContext(self.call.id, call.id, end_call=self._end_call, transfer=self._transfer)
        started, outcome, result = time.monotonic(), "cancelled", CANCELLED
        with self.call.tracing.tool_call(turn_id, call.id, call.name) as span:
            try:
                result = await self.tools.run(call.name, call.arguments_json, call.error, context)
                outcome = "error" if result.error else "ok"
            finally:
                seconds = time.monotonic() - started
                self.call.history.resolve(placeholder, result.content)
                if span.is_recording():
                    span.set_attribute(attr.TOOL_OUTCOME, outcome)
                    if telemetry.content_enabled():
                        span.set_attributes({attr.GEN_AI_TOOL_CALL_ARGUMENTS: call.arguments_json,
                                             attr.GEN_AI_TOOL_CALL_RESULT: result.content})
                # The label is a declared tool's name: the model's inventions must not make new series.
                metrics.record_tool_call(call.name if self.tools.spec(call.name) else metrics.UNKNOWN_TOOL, outcome,
                                         seconds)
                self.call.log.tool_call(turn_id, call.id, call.name or "", outcome, round(seconds * 1000, 1),
                                        call.arguments_json, result.content)
                await self.call.emit(ToolCalled(turn_id, call.id, call.name or "", outcome, round(seconds * 1000, 1)))

    def _end_call(self) -> None:
        self.ending = CallEnded("agent_ended")

    async def _transfer(self, target: str) -> None:
        check_transfer(self.call.transport, self.call.config.twilio)
        self.ending = CallEnded("transferred", target)

    def unrecorded(self, turn: Turn, kept: str) -> str:
        """What the history still lacks of a finished turn: `kept` less the words its tool rounds
        already recorded."""
        skip = self._recorded.pop(turn.id, 0)
        return " ".join(kept.split()[skip:]) if skip else kept

    async def finish_turn(self, turn: Turn) -> None:
        """After a turn played out: carry out a pending end_call or transfer (raises CallEnded)."""
        ending = self.ending
        if ending is None:
            return
        if ending.target:
            await self.call.emit(Transfer(turn.id, ending.target))
            await transfer(self.call.transport, ending.target, self.call.config.twilio)
        raise ending
