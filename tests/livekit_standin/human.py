"""A human caller in a LiveKit room, through the unmodified rtc SDK (tests and the room benchmark).

It publishes a microphone track fed in real time (speech from a WAV, silence otherwise, as a live
mic does), records the agent's audio with arrival times, and collects what a captioning frontend
sees: `lk.transcription` text streams, `lk.chat` messages from others, and the agent's JSON
data messages.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import numpy as np
from livekit import api, rtc

from services.common.audio import resample

ROOM_RATE = 48_000
FRAME = ROOM_RATE // 100  # 10 ms, what the SDK's own capture uses


def room_token(api_key: str, api_secret: str, room: str, identity: str) -> str:
    return (api.AccessToken(api_key, api_secret).with_identity(identity).with_name(identity)
            .with_grants(api.VideoGrants(room_join=True, room=room)).to_jwt())


@dataclass
class Caption:
    sender: str
    track_sid: str
    segment_id: str
    final: bool
    text: str


async def read_whole(reader: rtc.TextStreamReader) -> str | None:
    """A text stream's text, or None when the room closed before all of it arrived."""
    try:
        return await reader.read_all()
    except rtc.StreamError:
        return None


@dataclass
class Human:
    url: str
    token: str
    room: rtc.Room = field(default_factory=rtc.Room)
    events: list[dict] = field(default_factory=list)  # data messages from the agent, in order
    captions: list[Caption] = field(default_factory=list)
    chat: list[tuple[str, str]] = field(default_factory=list)  # lk.chat (sender, text) from others, in order
    agent_audio: list[np.ndarray] = field(default_factory=list)  # 48 kHz float32 chunks
    audio_arrivals: list[float] = field(default_factory=list)
    mic_track_sid: str = ""
    keep_audio: bool = True  # False: only count what arrives (long load runs)
    heard_samples: int = 0
    voiced_samples: int = 0  # samples above -40 dBFS
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self):
        self._source = rtc.AudioSource(ROOM_RATE, 1, queue_size_ms=100)
        self._speech: asyncio.Queue[np.ndarray] = asyncio.Queue()
        self._tasks: set[asyncio.Task] = set()
        self._event_added = asyncio.Event()
        self.room.on("data_received", self._on_data)
        self.room.on("track_subscribed", self._on_track)
        self.room.on("disconnected", lambda *_: self.disconnected.set())
        self.room.register_text_stream_handler("lk.transcription", self._on_caption)
        self.room.register_text_stream_handler("lk.chat", self._on_chat)

    async def join(self) -> Human:
        await asyncio.wait_for(self.room.connect(self.url, self.token), 20)
        track = rtc.LocalAudioTrack.create_audio_track("microphone", self._source)
        publication = await self.room.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
        self.mic_track_sid = publication.sid
        self._spawn(self._microphone())
        return self

    def say(self, audio: np.ndarray, rate: int) -> None:
        """Queue speech; the microphone plays it in real time after anything queued before."""
        self._speech.put_nowait(resample(audio, rate, ROOM_RATE))

    async def _microphone(self) -> None:
        silence = np.zeros(FRAME, dtype=np.int16)
        pending = np.zeros(0, dtype=np.int16)
        while True:
            if pending.size < FRAME and not self._speech.empty():
                speech = (np.clip(self._speech.get_nowait(), -1, 1) * 32767).astype(np.int16)
                pending = np.concatenate([pending, speech])
            if pending.size >= FRAME:
                chunk, pending = pending[:FRAME], pending[FRAME:]
            elif pending.size:
                chunk, pending = np.pad(pending, (0, FRAME - pending.size)), pending[:0]
            else:
                chunk = silence
            await self._source.capture_frame(rtc.AudioFrame(chunk.tobytes(), ROOM_RATE, 1, FRAME))

    def _on_track(self, track: rtc.Track, publication, participant: rtc.RemoteParticipant) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO:
            self._spawn(self._record(track))

    async def _record(self, track: rtc.Track) -> None:
        async for event in rtc.AudioStream(track, sample_rate=ROOM_RATE, num_channels=1):
            samples = np.frombuffer(event.frame.data, dtype=np.int16)
            self.heard_samples += samples.size
            self.voiced_samples += int(np.count_nonzero(np.abs(samples) > 327))
            if self.keep_audio:
                self.agent_audio.append(samples.astype(np.float32) / 32768)
                self.audio_arrivals.append(time.monotonic())

    def _on_data(self, packet: rtc.DataPacket) -> None:
        if packet.topic in ("parley.events", "parley.metrics"):
            event = json.loads(packet.data)
            event["received"] = time.monotonic()
            self.events.append(event)
            self._event_added.set()

    def _on_caption(self, reader: rtc.TextStreamReader, sender: str) -> None:
        async def read() -> None:
            attributes = reader.info.attributes
            text = await read_whole(reader)
            if text is not None:
                self.captions.append(Caption(sender, attributes.get("lk.transcribed_track_id", ""),
                                             attributes.get("lk.segment_id", ""),
                                             attributes.get("lk.transcription_final") == "true", text))
        self._spawn(read())

    def _on_chat(self, reader: rtc.TextStreamReader, sender: str) -> None:
        async def read() -> None:
            text = await read_whole(reader)
            if text is not None:
                self.chat.append((sender, text))
        self._spawn(read())

    def of_type(self, kind: str) -> list[dict]:
        return [event for event in self.events if event["type"] == kind]

    async def wait_for(self, kind: str, timeout_s: float, count: int = 1) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while len(self.of_type(kind)) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {kind!r} event within {timeout_s}s; got {[e['type'] for e in self.events]}")
            self._event_added.clear()
            try:
                await asyncio.wait_for(self._event_added.wait(), remaining)
            except TimeoutError:
                pass
        return self.of_type(kind)

    def voiced_seconds_between(self, start: float, end: float) -> float:
        """Agent audio above -40 dBFS that arrived in [start, end) (monotonic clock)."""
        voiced = sum(int(np.count_nonzero(np.abs(chunk) > 0.01))
                     for chunk, at in zip(self.agent_audio, self.audio_arrivals) if start <= at < end)
        return voiced / ROOM_RATE

    def audio_heard(self) -> np.ndarray:
        return np.concatenate(self.agent_audio) if self.agent_audio else np.zeros(0, dtype=np.float32)

    def _spawn(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def leave(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.room.disconnect()
        await self._source.aclose()
