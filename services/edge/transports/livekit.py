"""A LiveKit room as a Transport: the edge joins as an agent participant (livekit rtc SDK).

In: the caller's microphone track (the configured identity, or the first audio track of anyone
else), 48 kHz from the SDK, resampled to the ASR rate. Out: one published agent audio track fed
through an AudioSource, whose queue barge-in clears.

What a LiveKit frontend reads besides audio (captions in step with playout, the
`lk.agent.state` attribute, replies on `lk.chat`) is services/edge/transports/livekit_text.py.
Typed text from the caller on `lk.chat` is a user turn, as the WebSocket's `user_text`. Every
conversation event (docs/websocket-protocol.md types) also goes out as a JSON data message on
topic `parley.events`; per-turn `metrics` on `parley.metrics`.

The call ends (CallerHungUp) when the caller leaves, the agent is disconnected or the room closes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from livekit import rtc

from services.common.audio import StreamResampler, float_to_pcm16, pcm16_to_float
from services.edge.config import LiveKitConfig
from services.edge.transport import CallerHungUp, Transport
from services.edge.transports.livekit_text import CHAT_TOPIC, RoomText

logger = logging.getLogger("ray.serve")

ROOM_SAMPLE_RATE = 48_000  # what the SDK decodes Opus to
FRAME_MS = 20
MAX_CHAT_CHARS = 4000  # as the WebSocket's `user_text`
EVENTS_TOPIC = "parley.events"
METRICS_TOPIC = "parley.metrics"
AGENT_TRACK_NAME = "agent-voice"


SipTransfer = Callable[[str, str], Awaitable[None]]  # (participant identity, target)


class RoomJoinError(Exception):
    """The agent could not join the room, or no caller showed up in time."""


class LiveKitTransport(Transport):
    def __init__(self, room: rtc.Room, config: LiveKitConfig, claims: dict[str, Any] | None = None,
                 transfer: SipTransfer | None = None):
        self.room, self.config = room, config
        self._sip_transfer = transfer  # the server's TransferSIPParticipant, for this room
        self.input_sample_rate, self.output_sample_rate = config.asr_sample_rate, config.output_sample_rate
        self.claims = claims or {}
        self.source = rtc.AudioSource(config.output_sample_rate, 1, queue_size_ms=config.source_queue_ms)
        self.caller: rtc.RemoteParticipant | None = None
        self.caller_track: rtc.RemoteAudioTrack | None = None
        self.agent_track_sid = ""
        self._caller_found = asyncio.Event()
        self._new_caller_track = asyncio.Event()
        # Caller audio, typed caller text (str) and the end of the call (None), in arrival order.
        self._audio: asyncio.Queue[bytes | str | None] = asyncio.Queue()
        self._resampler = StreamResampler(ROOM_SAMPLE_RATE, config.asr_sample_rate)
        self._stream: rtc.AudioStream | None = None
        self._hung_up = False
        self._closing: set[asyncio.Future] = set()  # streams of replaced caller tracks, closing
        self._chat_readers: set[asyncio.Future] = set()
        self.text = RoomText(room, lambda: (self.caller.identity, self.caller_track.sid), lambda: self.agent_track_sid)
        room.register_text_stream_handler(CHAT_TOPIC, self._on_chat)
        room.on("track_subscribed", self._on_track_subscribed)
        room.on("participant_disconnected", self._on_participant_disconnected)
        room.on("disconnected", self._on_disconnected)
        room.on("reconnecting", lambda: logger.info("livekit room %s: reconnecting", room.name))
        room.on("reconnected", lambda: logger.info("livekit room %s: reconnected", room.name))

    @classmethod
    async def connect(cls, url: str, token: str, config: LiveKitConfig, claims: dict[str, Any] | None = None,
                      transfer: SipTransfer | None = None) -> LiveKitTransport:
        """Join the room and publish the agent track (the caller may come later: wait_for_caller)."""
        room = rtc.Room()
        transport = cls(room, config, claims, transfer)
        try:
            await asyncio.wait_for(room.connect(url, token, rtc.RoomOptions(auto_subscribe=True)),
                                   config.join_timeout_s)
            track = rtc.LocalAudioTrack.create_audio_track(AGENT_TRACK_NAME, transport.source)
            publication = await asyncio.wait_for(room.local_participant.publish_track(
                track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)), config.join_timeout_s)
            transport.agent_track_sid = publication.sid
            transport.text.start()
            transport.text.state("initializing")
        except BaseException as error:
            await transport.close()
            if isinstance(error, TimeoutError):
                raise RoomJoinError("timed out joining the room") from None
            if isinstance(error, rtc.ConnectError):
                raise RoomJoinError(f"could not join the room: {error}") from None
            raise
        for participant in room.remote_participants.values():  # subscribed before we listened
            for publication in participant.track_publications.values():
                if publication.track is not None:
                    transport._on_track_subscribed(publication.track, publication, participant)
        return transport

    async def wait_for_caller(self) -> None:
        try:
            await asyncio.wait_for(self._caller_found.wait(), self.config.caller_wait_s)
        except TimeoutError:
            raise RoomJoinError(f"no caller audio within {self.config.caller_wait_s:.0f}s") from None
        if self._hung_up:
            raise RoomJoinError("the room closed before a caller spoke")

    # -- room events (called on the event loop by the SDK) ---------------------------------------

    def _wanted(self, participant: rtc.RemoteParticipant) -> bool:
        if self.config.caller_identity:
            return participant.identity == self.config.caller_identity
        return participant.kind != rtc.ParticipantKind.PARTICIPANT_KIND_AGENT

    def _on_track_subscribed(self, track: rtc.Track, publication: rtc.RemoteTrackPublication,
                             participant: rtc.RemoteParticipant) -> None:
        if track.kind != rtc.TrackKind.KIND_AUDIO or self._hung_up:
            return
        if self.caller is None and self._wanted(participant):
            self.caller = participant
        elif self.caller is None or participant.identity != self.caller.identity:
            return
        # First subscription, or the caller's mic again after a reconnect or a republish: listen
        # to the new track; the pump moves over when the old stream ends.
        previous, self.caller_track = self._stream, track
        self._stream = rtc.AudioStream(track, sample_rate=ROOM_SAMPLE_RATE, num_channels=1, frame_size_ms=FRAME_MS)
        self._new_caller_track.set()
        if previous is not None:
            closing = asyncio.ensure_future(previous.aclose())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        self._caller_found.set()

    def _on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        if self.caller is not None and participant.identity == self.caller.identity:
            self._hang_up()

    def _on_disconnected(self, reason: Any = None) -> None:
        self._hang_up()
        self._caller_found.set()  # stop waiting for a caller in a closed room

    def _hang_up(self) -> None:
        if not self._hung_up:
            self._hung_up = True
            self._audio.put_nowait(None)
            self._new_caller_track.set()  # a pump waiting for the caller's next track stops

    def _on_chat(self, reader: rtc.TextStreamReader, sender: str) -> None:
        if self.caller is None or sender != self.caller.identity or self._hung_up:
            return  # typed text counts from the caller only

        async def read() -> None:
            text = ""
            async for chunk in reader:
                text += chunk
                if len(text) > MAX_CHAT_CHARS:
                    logger.info("livekit room %s: a chat message over %d characters ignored", self.room.name,
                                MAX_CHAT_CHARS)
                    return
            if text.strip():
                self._audio.put_nowait(text.strip())
        reading = asyncio.ensure_future(read())
        self._chat_readers.add(reading)
        reading.add_done_callback(self._chat_readers.discard)

    # -- audio ----------------------------------------------------------------------------------

    async def pump_caller_audio(self) -> None:
        """Caller frames -> ASR-rate PCM chunks; run as a task for the life of the call (decoded to
        float only to resample)."""
        try:
            while not self._hung_up:
                stream = self._stream
                self._new_caller_track.clear()
                async for event in stream:
                    audio = self._resampler.push(pcm16_to_float(event.frame.data.cast("B")))  # int16 view -> bytes
                    if audio.size:
                        self._audio.put_nowait(float_to_pcm16(audio))
                if self._stream is stream:  # the track ended: wait a little for the caller's next one
                    try:
                        await asyncio.wait_for(self._new_caller_track.wait(), self.config.caller_track_grace_s)
                    except TimeoutError:
                        return
        finally:
            self._hang_up()

    async def receive_audio(self) -> bytes:
        while True:
            audio = await self._audio.get()
            if audio is None:
                self._audio.put_nowait(None)  # every later call hangs up too
                raise CallerHungUp()
            if not isinstance(audio, str):
                return audio
            if self.on_user_text is None:  # duplex calls take audio only
                logger.info("livekit room %s: chat text ignored (this call takes audio only)", self.room.name)
                continue
            await self.on_user_text(audio)  # in the call's own caller task, as the WebSocket does

    async def send_audio(self, frame: bytes) -> None:
        if self._hung_up:
            raise CallerHungUp()
        await self.source.capture_frame(rtc.AudioFrame(frame, self.output_sample_rate, 1, len(frame) // 2))

    async def clear_audio(self) -> None:
        self.source.clear_queue()

    # -- events ---------------------------------------------------------------------------------

    async def send_event(self, event: dict[str, Any]) -> None:
        if self._hung_up:
            return  # nobody left to tell; the audio side ends the call
        self.text.event(event)
        try:
            await self.room.local_participant.publish_data(
                json.dumps(event).encode(), reliable=True, topic=METRICS_TOPIC if event["type"] == "metrics" else EVENTS_TOPIC)
        except Exception as error:  # noqa: BLE001 - events are best-effort; the call goes on
            if not self.room.isconnected():
                self._hang_up()  # the room went away under us
                return
            logger.warning("livekit room %s: could not send a %s event: %s", self.room.name, event.get("type"), error)

    async def agent_speech(self, turn_id: int, text: str) -> None:
        if not self._hung_up:
            self.text.speech(turn_id, text)

    # -- transfer (the `transfer` tool) -----------------------------------------------------------

    def _phone_caller(self) -> rtc.RemoteParticipant | None:
        """The participant who joined by phone (SIP): the caller if they did, else the first one."""
        sip = [p for p in self.room.remote_participants.values() if p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_SIP]
        return next((p for p in sip if self.caller is not None and p.identity == self.caller.identity),
                    sip[0] if sip else None)

    def transfer_problem(self) -> str:
        """Why the caller cannot be transferred ("" when they can): only a phone caller can."""
        if self._sip_transfer is None:
            return "transfer is not available: this room has no LiveKit server API access"
        if self._phone_caller() is None:
            return "transfer is not available: nobody in this room joined by phone (SIP)"
        return ""

    async def transfer_caller(self, target: str) -> None:
        """Hand the phone caller to `target` through LiveKit's SIP service (TransferSIPParticipant)."""
        caller = self._phone_caller()
        if caller is None or self._sip_transfer is None:
            raise RuntimeError(self.transfer_problem())
        await self._sip_transfer(caller.identity, target)

    # -- teardown -------------------------------------------------------------------------------

    async def close(self) -> None:
        """Leave the room and close every stream; safe to call twice."""
        self._hang_up()
        for reading in list(self._chat_readers):
            reading.cancel()
        await asyncio.gather(*self._closing, *self._chat_readers, return_exceptions=True)
        await self.text.close()
        if self._stream is not None:
            stream, self._stream = self._stream, None
            try:
                await stream.aclose()
            except Exception:  # noqa: BLE001 - already closed by the room
                pass
        await self.source.aclose()
        await self.room.disconnect()
