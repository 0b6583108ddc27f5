"""A protocol-level stand-in for a LiveKit server, for tests only.

This is NOT LiveKit. The real `livekit-server` cannot be installed on our test machines, so this
module speaks just enough of LiveKit's signalling protocol (protobuf over WebSocket, the /rtc/v1
"single peer connection" flavour) and WebRTC (aiortc) for the unmodified `livekit` rtc SDK
(version pinned in constraints.txt, see SDK_VERSION) to join rooms, publish and subscribe audio
and exchange data packets. What it covers:

- join at `/rtc/v1?join_request=<base64url WrappedJoinRequest>` with the access token as a Bearer
  header (checked with the API key/secret, room-join grant and room name), `/rtc/v1/validate`;
- one peer connection per participant, the client always offering (its offer may ride in the
  join request); trickle ICE from the client; aiortc's answer carries its own candidates;
- add_track -> track_published, participant updates to the others, subscription on request
  (auto-subscribe), delivered by asking the client for receive sections (MediaSectionsRequirement)
  and answering its next offer with the relayed track (aiortc MediaRelay) and `mid_to_track_id`;
- data packets (user data, transcriptions, text/byte streams, RPC) relayed between participants;
- ping/pong, leave from the client, and deleting a room (every participant gets a leave);
- participant attributes: a participant's own updates (UpdateParticipantMetadata, e.g. the
  agent's `lk.agent.state`) answered with a RequestResponse and sent to everyone as a
  ParticipantUpdate; a token's `kind` (`agent`, `sip`) and `attributes`;
- signed webhooks (room_started, participant_joined, participant_left, room_finished) to a URL;
- agent dispatches recorded from a joining participant's token (`roomConfig.agents`), and a Twirp
  API (tests/livekit_standin/server_api.py) for AgentDispatchService and TransferSIPParticipant.

Not covered: simulcast/video layers, TURN, reconnection/resume, dual peer connection mode,
permissions beyond the join grant, speaker detection, room service API, egress/ingress, real SIP
(a "SIP participant" is an SDK client with a `sip` token kind), and the agent worker protocol
(`/agent`: the server handing dispatched jobs to registered workers).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import logging
import secrets
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qs, urlparse

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.sdp import candidate_from_sdp
from google.protobuf.json_format import MessageToJson
from livekit import api
from livekit.api import access_token
from livekit.protocol import agent_dispatch, models, webhook
from livekit.protocol import rtc as signal
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Response

SDK_VERSION = "1.2.1"  # the `livekit` rtc SDK whose wire protocol this speaks
PROTOCOL_VERSION = 16

logger = logging.getLogger("livekit-standin")


def _sid(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(6)}"


def _msid_track_ids(sdp: str) -> dict[str, str]:
    """mid -> track id of each m-section's `a=msid:<stream> <track>` in an SDP."""
    result, mid, track = {}, None, None
    for line in [*sdp.splitlines(), "m="]:
        if line.startswith("m="):
            if mid is not None and track:
                result[mid] = track
            mid = track = None
        elif line.startswith("a=mid:"):
            mid = line[6:].strip()
        elif line.startswith("a=msid:") and " " in line:
            track = line.split()[1]
    return result


@dataclass
class PublishedTrack:
    info: models.TrackInfo
    cid: str
    media: object | None = None  # aiortc remote track once the client's media arrived


@dataclass
class Participant:
    sid: str
    identity: str
    name: str
    kind: int
    room: Room
    socket: ServerConnection
    pc: RTCPeerConnection = field(default_factory=RTCPeerConnection)
    joined_at: int = field(default_factory=lambda: int(time.time()))
    tracks: dict[str, PublishedTrack] = field(default_factory=dict)  # by track sid
    pending_tracks: dict[str, models.TrackInfo] = field(default_factory=dict)  # by cid
    subscribed: set[str] = field(default_factory=set)  # track sids wanted
    delivered: set[str] = field(default_factory=set)  # track sids sent on the peer connection
    data_channels: dict[str, object] = field(default_factory=dict)  # by label
    attributes: dict[str, str] = field(default_factory=dict)
    offered_track_ids: dict[str, str] = field(default_factory=dict)  # mid -> the client's track id (cid)
    signal_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    closed: bool = False

    def info(self, state=models.ParticipantInfo.State.ACTIVE) -> models.ParticipantInfo:
        return models.ParticipantInfo(
            sid=self.sid, identity=self.identity, name=self.name, kind=self.kind, state=state, joined_at=self.joined_at,
            tracks=[track.info for track in self.tracks.values()], attributes=self.attributes,
            permission=models.ParticipantPermission(can_subscribe=True, can_publish=True, can_publish_data=True),
        )

    async def send(self, **message) -> None:
        if self.closed:
            return
        try:
            await self.socket.send(signal.SignalResponse(**message).SerializeToString())
        except Exception:  # the client went away; its handler cleans up
            pass


@dataclass
class Room:
    name: str
    sid: str = field(default_factory=lambda: _sid("RM"))
    created: int = field(default_factory=lambda: int(time.time()))
    participants: dict[str, Participant] = field(default_factory=dict)  # by identity

    def info(self) -> models.Room:
        return models.Room(sid=self.sid, name=self.name, creation_time=self.created,
                           num_participants=len(self.participants), empty_timeout=300)

    def others(self, participant: Participant) -> list[Participant]:
        return [p for p in self.participants.values() if p is not participant]


class StandInServer:
    """Run with `async with StandInServer(key, secret) as server:`; `server.url` is the ws:// URL."""

    def __init__(self, api_key: str, api_secret: str, *, host: str = "127.0.0.1", port: int = 0,
                 webhook_url: str | None = None, api_port: int = 0):
        self.api_key, self.api_secret = api_key, api_secret
        self.api = None  # the Twirp API (server_api.ServerApi), started with the server
        self._api_port = api_port
        self.host, self.port = host, port
        self.webhook_url = webhook_url
        self.rooms: dict[str, Room] = {}
        self.relay = MediaRelay()
        self.webhooks_sent: list[tuple[str, int]] = []  # (event, HTTP status)
        self.dispatches: dict[str, list[agent_dispatch.AgentDispatch]] = {}  # by room name
        self._server = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    async def __aenter__(self) -> StandInServer:
        self._server = await serve(self._handle, self.host, self.port, process_request=self._check_request,
                                   max_size=4 * 1024 * 1024)
        self.port = self._server.sockets[0].getsockname()[1]
        from tests.livekit_standin.server_api import ServerApi

        self.api = await ServerApi(self, self.host, self._api_port).start()
        return self

    @property
    def api_url(self) -> str:
        return self.api.url

    def open_room(self, name: str) -> Room:
        """The room, created (room_started) if it does not exist, as a join or CreateDispatch does."""
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = Room(name)
            self._webhook("room_started", room)
        return room

    async def __aexit__(self, *exc) -> None:
        for name in list(self.rooms):
            await self.delete_room(name)
        await self.api.stop()
        self._server.close()
        await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- admission ------------------------------------------------------------------------------

    def _claims(self, headers: Headers, query: dict) -> access_token.Claims:
        authorization = headers.get("Authorization", "")
        token = authorization.removeprefix("Bearer ").strip() or (query.get("access_token") or [""])[0]
        claims = api.TokenVerifier(self.api_key, self.api_secret).verify(token)
        if not claims.video or not claims.video.room_join or not claims.video.room:
            raise PermissionError("the token has no room-join grant")
        return claims

    def _check_request(self, connection: ServerConnection, request) -> Response | None:
        url = urlparse(request.path)
        query = parse_qs(url.query)
        try:
            self._claims(request.headers, query)
        except Exception as error:  # noqa: BLE001 - any verification failure is a 401
            return connection.respond(HTTPStatus.UNAUTHORIZED, f"invalid token: {error}\n")
        if url.path.rstrip("/").endswith("/validate"):
            return connection.respond(HTTPStatus.OK, "success\n")
        if url.path.rstrip("/") not in ("/rtc/v1", "/rtc"):
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        return None

    # -- one participant's signalling connection -------------------------------------------------

    async def _handle(self, socket: ServerConnection) -> None:
        url = urlparse(socket.request.path)
        query = parse_qs(url.query)
        claims = self._claims(socket.request.headers, query)
        join = signal.JoinRequest()
        if "join_request" in query:
            raw = query["join_request"][0]
            wrapped = signal.WrappedJoinRequest.FromString(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
            data = wrapped.join_request
            if wrapped.compression == signal.WrappedJoinRequest.Compression.GZIP:
                data = gzip.decompress(data)
            join.ParseFromString(data)
        room_name = claims.video.room
        if room_name not in self.rooms and claims.room_config is not None:  # the token's agents, dispatched
            self.dispatches_for(room_name, list(claims.room_config.agents))
        room = self.open_room(room_name)
        previous = room.participants.get(claims.identity)
        if previous is not None:  # same identity joins again: the old session is replaced
            await self._leave(previous, models.DisconnectReason.DUPLICATE_IDENTITY)
        kind = {"agent": models.ParticipantInfo.Kind.AGENT, "sip": models.ParticipantInfo.Kind.SIP}.get(
            claims.kind, models.ParticipantInfo.Kind.STANDARD)
        participant = Participant(_sid("PA"), claims.identity, claims.name or claims.identity, kind, room, socket,
                                  attributes=dict(claims.attributes or {}))
        self._wire_peer_connection(participant)
        await participant.send(join=signal.JoinResponse(
            room=room.info(), participant=participant.info(),
            other_participants=[p.info() for p in room.participants.values()],
            server_version="1.9.0-standin", subscriber_primary=False, ping_interval=5, ping_timeout=15,
            server_info=models.ServerInfo(edition=models.ServerInfo.Edition.Standard, version="1.9.0-standin",
                                          protocol=PROTOCOL_VERSION),
        ))
        room.participants[participant.identity] = participant
        await self._broadcast_update(participant)
        self._webhook("participant_joined", room, participant)
        # Auto-subscribe the newcomer to what is already published.
        for other in room.others(participant):
            participant.subscribed.update(other.tracks)
        try:
            if join.HasField("publisher_offer") and join.publisher_offer.sdp:
                await self._answer(participant, join.publisher_offer)
            async for message in socket:
                if isinstance(message, str):
                    continue
                request = signal.SignalRequest.FromString(message)
                if not await self._on_request(participant, request):
                    break
        except Exception:  # noqa: BLE001
            if not participant.closed:
                logger.exception("participant %s failed", participant.identity)
        finally:
            await self._leave(participant, models.DisconnectReason.CLIENT_INITIATED)

    async def _on_request(self, participant: Participant, request: signal.SignalRequest) -> bool:
        kind = request.WhichOneof("message")
        logger.debug("%s: %s", participant.identity, kind)
        if kind == "offer":
            await self._answer(participant, request.offer)
        elif kind == "trickle":
            await self._add_candidate(participant, request.trickle)
        elif kind == "add_track":
            add = request.add_track
            info = models.TrackInfo(sid=_sid("TR"), type=add.type, name=add.name, source=add.source,
                                    muted=add.muted, mime_type="audio/opus" if add.type == models.TrackType.AUDIO else "",
                                    stream=add.stream)
            participant.pending_tracks[add.cid] = info
            await participant.send(track_published=signal.TrackPublishedResponse(cid=add.cid, track=info))
        elif kind == "subscription":
            sub = request.subscription
            sids = set(sub.track_sids) | {sid for pt in sub.participant_tracks for sid in pt.track_sids}
            if sub.subscribe:
                participant.subscribed |= sids
                await self._deliver(participant)
            else:
                participant.subscribed -= sids
        elif kind == "ping":
            await participant.send(pong=int(time.time() * 1000))
        elif kind == "ping_req":
            await participant.send(pong_resp=signal.Pong(last_ping_timestamp=request.ping_req.timestamp,
                                                         timestamp=int(time.time() * 1000)))
        elif kind == "leave":
            return False
        elif kind == "update_metadata":
            update = request.update_metadata
            for key, value in update.attributes.items():  # an empty value deletes the attribute
                if value:
                    participant.attributes[key] = value
                else:
                    participant.attributes.pop(key, None)
            await participant.send(request_response=signal.RequestResponse(
                request_id=update.request_id, reason=signal.RequestResponse.Reason.OK))
            await self._broadcast_update(participant, to_self=True)
        elif kind == "mute":
            for track in participant.tracks.values():
                if track.info.sid == request.mute.sid:
                    track.info.muted = request.mute.muted
            await self._broadcast_update(participant)
        return True

    # -- WebRTC ---------------------------------------------------------------------------------

    def _wire_peer_connection(self, participant: Participant) -> None:
        pc = participant.pc

        @pc.on("track")
        def on_track(track) -> None:
            # aiortc drops the msid when the offer's msid-semantic lists no streams: use the mid.
            mid = next((t.mid for t in pc.getTransceivers() if t.receiver.track is track), None)
            info = participant.pending_tracks.pop(participant.offered_track_ids.get(mid, track.id), None)
            if info is None:
                logger.warning("%s: media for an unannounced track %s", participant.identity, track.id)
                return
            participant.tracks[info.sid] = PublishedTrack(info, track.id, track)
            self._spawn(self._announce_track(participant, info))

        @pc.on("datachannel")
        def on_datachannel(channel) -> None:
            participant.data_channels[channel.label] = channel

            @channel.on("message")
            def on_message(message) -> None:
                if isinstance(message, bytes):
                    self._relay_data(participant, channel.label, message)

    async def _announce_track(self, participant: Participant, info: models.TrackInfo) -> None:
        await self._broadcast_update(participant)
        for other in participant.room.others(participant):  # auto-subscribe, as the server default
            other.subscribed.add(info.sid)
            await self._deliver(other)

    async def _answer(self, participant: Participant, offer: signal.SessionDescription) -> None:
        async with participant.signal_lock:
            pc = participant.pc
            participant.offered_track_ids.update(_msid_track_ids(offer.sdp))
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
            # Receive sections of the client's offer that this answer fills with subscribed tracks.
            mapping = {}
            for transceiver in pc.getTransceivers():
                sender = transceiver.sender
                if sender.track is not None and transceiver.mid is not None:
                    mapping[transceiver.mid] = sender._track_id
            for track_sid, (publisher, published) in self._wanted(participant).items():
                free = next((t for t in pc.getTransceivers()
                             if t.kind == "audio" and t.sender.track is None and t._offerDirection == "sendonly"),
                            None)
                if free is None:
                    break
                free.sender.replaceTrack(self.relay.subscribe(published.media, buffered=False))
                free.sender._stream_id = f"{publisher.sid}|{track_sid}"
                free.sender._track_id = track_sid
                free.direction = "sendonly"
                participant.delivered.add(track_sid)
                mapping[free.mid] = track_sid
            logger.debug("%s: answer maps %s", participant.identity, mapping)
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
            await participant.send(answer=signal.SessionDescription(
                type="answer", sdp=pc.localDescription.sdp, id=offer.id, mid_to_track_id=mapping))
            if self._wanted(participant):  # more tracks than free receive sections
                await participant.send(media_sections_requirement=signal.MediaSectionsRequirement(num_audios=1))

    def _wanted(self, participant: Participant) -> dict[str, tuple[Participant, PublishedTrack]]:
        wanted = {}
        for other in participant.room.others(participant):
            for sid, track in other.tracks.items():
                if (sid in participant.subscribed and sid not in participant.delivered
                        and track.media is not None and track.info.type == models.TrackType.AUDIO):
                    wanted[sid] = (other, track)
        return wanted

    async def _deliver(self, participant: Participant) -> None:
        """Ask the client to offer again with a receive section for each newly subscribed track."""
        if self._wanted(participant):
            await participant.send(media_sections_requirement=signal.MediaSectionsRequirement(num_audios=1))

    async def _add_candidate(self, participant: Participant, trickle: signal.TrickleRequest) -> None:
        init = json.loads(trickle.candidateInit or "{}")
        line = init.get("candidate") or ""
        if not line:
            return
        candidate = candidate_from_sdp(line.split(":", 1)[1] if line.startswith("candidate:") else line)
        candidate.sdpMid = init.get("sdpMid")
        candidate.sdpMLineIndex = init.get("sdpMLineIndex")
        async with participant.signal_lock:
            try:
                await participant.pc.addIceCandidate(candidate)
            except Exception as error:  # noqa: BLE001 - a candidate for a section we do not have
                logger.debug("ignored candidate %s: %s", line, error)

    # -- data -----------------------------------------------------------------------------------

    def _relay_data(self, sender: Participant, label: str, message: bytes) -> None:
        try:
            packet = models.DataPacket.FromString(message)
        except Exception:  # noqa: BLE001
            return
        kind = packet.WhichOneof("value")
        if kind is None:
            return
        packet.participant_sid, packet.participant_identity = sender.sid, sender.identity
        if kind == "user":
            packet.user.participant_sid, packet.user.participant_identity = sender.sid, sender.identity
        destinations = set(packet.destination_identities)
        if kind == "user":
            destinations |= set(packet.user.destination_identities)
        data = packet.SerializeToString()
        for other in sender.room.others(sender):
            if destinations and other.identity not in destinations:
                continue
            channel = other.data_channels.get(label)
            if channel is not None and channel.readyState == "open":
                channel.send(data)

    # -- leaving --------------------------------------------------------------------------------

    async def _broadcast_update(self, participant: Participant, state=models.ParticipantInfo.State.ACTIVE,
                                to_self: bool = False) -> None:
        update = signal.ParticipantUpdate(participants=[participant.info(state)])
        for other in participant.room.others(participant) + ([participant] if to_self else []):
            await other.send(update=update)

    def dispatches_for(self, room_name: str, agents: list) -> list[agent_dispatch.AgentDispatch]:
        """Record agent dispatches (RoomAgentDispatch) in a room, as the server does for a token's
        room configuration or CreateDispatch. The stand-in hands them to no worker."""
        made = [agent_dispatch.AgentDispatch(id=_sid("AD"), agent_name=agent.agent_name, room=room_name,
                                             metadata=agent.metadata) for agent in agents]
        self.dispatches.setdefault(room_name, []).extend(made)
        return made

    async def _leave(self, participant: Participant, reason) -> None:
        if participant.closed:
            return
        room = participant.room
        if room.participants.get(participant.identity) is participant:
            del room.participants[participant.identity]
            await self._broadcast_update(participant, models.ParticipantInfo.State.DISCONNECTED)
            for other in room.participants.values():
                other.subscribed -= set(participant.tracks)
                other.delivered -= set(participant.tracks)
            self._webhook("participant_left", room, participant)
        participant.closed = True
        await participant.pc.close()
        await participant.socket.close()
        if not room.participants and self.rooms.get(room.name) is room:
            del self.rooms[room.name]
            self.dispatches.pop(room.name, None)
            self._webhook("room_finished", room)

    async def delete_room(self, name: str) -> None:
        """What the room service's DeleteRoom does: everyone gets a leave and is disconnected."""
        room = self.rooms.get(name)
        if room is None:
            return
        for participant in list(room.participants.values()):
            await participant.send(leave=signal.LeaveRequest(
                can_reconnect=False, reason=models.DisconnectReason.ROOM_DELETED,
                action=signal.LeaveRequest.Action.DISCONNECT))
            await self._leave(participant, models.DisconnectReason.ROOM_DELETED)
        if self.rooms.get(name) is room:  # a room nobody had joined (made by CreateDispatch)
            del self.rooms[name]
            self.dispatches.pop(name, None)
            self._webhook("room_finished", room)

    # -- webhooks -------------------------------------------------------------------------------

    def _webhook(self, event: str, room: Room, participant: Participant | None = None) -> None:
        if not self.webhook_url:
            return
        message = webhook.WebhookEvent(event=event, room=room.info(), id=_sid("EV"), created_at=int(time.time()))
        if participant is not None:
            message.participant.CopyFrom(participant.info())
        body = MessageToJson(message, indent=None)
        token = (api.AccessToken(self.api_key, self.api_secret)
                 .with_sha256(base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()).to_jwt())
        self._spawn(asyncio.to_thread(self._post, event, body, token))

    def _post(self, event: str, body: str, token: str) -> None:
        request = urllib.request.Request(self.webhook_url, data=body.encode(), method="POST", headers={
            "Authorization": token, "Content-Type": "application/webhook+json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status = response.status
        except urllib.error.HTTPError as error:
            status = error.code
        except OSError:
            status = 0
        self.webhooks_sent.append((event, status))

    def _spawn(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
