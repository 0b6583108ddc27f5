"""What a LiveKit frontend reads besides audio: captions in step with playout, the agent's state
attribute, and the agent's replies on `lk.chat`.

It follows LiveKit Agents' conventions, so stock frontends (components-react's agent hooks and
transcription views) work unchanged:
- `lk.agent.state` participant attribute: `initializing` from the join, then the call's
  `agent_state` events (listening / thinking / speaking);
- `lk.transcription` text streams (attributes `lk.transcribed_track_id`, `lk.segment_id`,
  `lk.transcription_final`), the caller's transcripts as the ASR gives them and the agent's
  sentences as the caller hears them: a sentence goes out as an interim segment when its audio
  starts playing, and final when the next one starts or the reply ends; a reply cut by the caller
  ends with its current sentence truncated to what was heard (the playout clock's word timings);
- `lk.chat`: each reply's text, as heard, once it is over.

Everything is written by one task in order, off the playout clock's path: a slow data channel
delays captions, never agent audio.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from livekit import rtc

logger = logging.getLogger("ray.serve")

TRANSCRIPTION_TOPIC = "lk.transcription"
CHAT_TOPIC = "lk.chat"
STATE_ATTRIBUTE = "lk.agent.state"


@dataclass
class _Reply:
    """One agent turn as the caller hears it: its sentences in the order they started playing."""

    turn_id: int
    sentences: list[str] = field(default_factory=list)


class RoomText:
    """The text side of one agent in one room (see the module docstring)."""

    def __init__(self, room: rtc.Room, caller: Callable[[], tuple[str, str]], agent_track: Callable[[], str]):
        self.room = room
        self._caller, self._agent_track = caller, agent_track  # (identity, mic track sid); track sid
        self._outbox: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue()
        self._writer: asyncio.Task | None = None
        self._state: str | None = None  # the latest state asked for; written once per change
        self._written_state: str | None = None
        self._reply: _Reply | None = None
        self._duplex = False
        self._duplex_pieces = 0

    def start(self) -> None:
        if self._writer is None:
            self._writer = asyncio.ensure_future(self._write())

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)

    def _send(self, write: Callable[[], Awaitable[None]]) -> None:
        self._outbox.put_nowait(write)

    async def _write(self) -> None:
        while True:
            write = await self._outbox.get()
            try:
                await write()
            except Exception as error:  # noqa: BLE001 - text is best-effort; the call goes on
                if not self.room.isconnected():
                    return
                logger.warning("livekit room %s: could not send text: %s", self.room.name, error)

    # -- the agent's state ------------------------------------------------------------------------

    def state(self, state: str) -> None:
        self._state = state
        self._send(self._write_state)

    async def _write_state(self) -> None:
        state = self._state  # the latest: states asked for meanwhile are skipped
        if state != self._written_state:
            self._written_state = state
            await self.room.local_participant.set_attributes({STATE_ATTRIBUTE: state})

    # -- conversation events ----------------------------------------------------------------------

    def event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "ready":
            self._duplex = event.get("mode") == "duplex"
        elif kind == "agent_state":
            self.state(event["state"])
        elif kind == "transcript":
            identity, track_sid = self._caller()
            self._caption(identity, track_sid, f"user-{event['utterance_id']}", event["text"], event["final"])
        elif kind == "agent_text" and self._duplex:
            # The duplex model's text comes as it is spoken (sub-word pieces): each is final.
            self._duplex_pieces += 1
            self._agent_caption(f"agent-0-{self._duplex_pieces}", event["text"], True)
        elif kind == "interruption":
            self._end_reply(event["turn_id"], heard=event["heard_text"])
        elif kind == "agent_audio_end" and not event["interrupted"]:
            self._end_reply(event["turn_id"])

    def speech(self, turn_id: int, text: str) -> None:
        """A sentence of turn `turn_id` starts playing: the one before it was heard whole."""
        if self._duplex or not text:
            return
        reply = self._reply
        if reply is None or reply.turn_id != turn_id:
            reply = self._reply = _Reply(turn_id)
        elif reply.sentences:
            self._agent_caption(self._segment_id(reply), reply.sentences[-1], True)
        reply.sentences.append(text)
        self._agent_caption(self._segment_id(reply), text, False)

    def _end_reply(self, turn_id: int, heard: str | None = None) -> None:
        reply = self._reply
        if reply is None or reply.turn_id != turn_id or not reply.sentences:
            return
        self._reply = None
        last = reply.sentences[-1]
        if heard is not None:  # the caller heard the earlier sentences whole, and this much of the last
            before = " ".join(reply.sentences[:-1])
            last = heard[len(before):].strip() if heard.startswith(before) else heard
            reply.sentences[-1] = last
        self._agent_caption(self._segment_id(reply), last, True)
        said = " ".join(sentence for sentence in reply.sentences if sentence)
        if said:
            self._send(lambda: self._stream(CHAT_TOPIC, said, {}))

    @staticmethod
    def _segment_id(reply: _Reply) -> str:
        return f"agent-{reply.turn_id}-{len(reply.sentences)}"

    # -- writing ------------------------------------------------------------------------------------

    def _agent_caption(self, segment_id: str, text: str, final: bool) -> None:
        self._caption(self.room.local_participant.identity, self._agent_track(), segment_id, text, final)

    def _caption(self, identity: str, track_sid: str, segment_id: str, text: str, final: bool) -> None:
        attributes = {"lk.transcribed_track_id": track_sid, "lk.segment_id": segment_id,
                      "lk.transcription_final": "true" if final else "false"}

        async def write() -> None:
            await self._stream(TRANSCRIPTION_TOPIC, text, attributes, sender=identity)
            # Frontends older than text streams read transcription packets.
            await self.room.local_participant.publish_transcription(rtc.Transcription(
                participant_identity=identity, track_sid=track_sid,
                segments=[rtc.TranscriptionSegment(id=segment_id, text=text, start_time=0, end_time=0,
                                                   language="", final=final)]))
        self._send(write)

    async def _stream(self, topic: str, text: str, attributes: dict[str, str], sender: str | None = None) -> None:
        writer = await self.room.local_participant.stream_text(topic=topic, sender_identity=sender,
                                                               attributes=attributes)
        await writer.write(text)
        await writer.aclose()
