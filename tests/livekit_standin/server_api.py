"""The stand-in's server API: the Twirp endpoints (protobuf over HTTP POST) that `livekit-api`
calls, for tests only. This is NOT LiveKit (see server.py).

Covered: `livekit.AgentDispatchService/{CreateDispatch,ListDispatch}` and
`livekit.SIP/TransferSIPParticipant`. Every request must carry a Bearer token signed with the
API key/secret and holding the grants LiveKit requires (roomAdmin for the room; TransferSIP also
the SIP `call` grant), else 401 with a Twirp error, as LiveKit answers. Transfers are recorded in
`transfers` (with the verified claims) and answered as successful, as a completed SIP
REFER; nothing is dialled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from livekit import api
from livekit.protocol import agent_dispatch, models, sip

if TYPE_CHECKING:
    from tests.livekit_standin.server import StandInServer


def _twirp_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "msg": message}, status=status)


class ServerApi:
    """`await ServerApi(server, host, port).start()`; `url` is the http:// base livekit-api takes."""

    def __init__(self, server: StandInServer, host: str, port: int = 0):
        self.server, self.host, self.port = server, host, port
        self.transfers: list[tuple[sip.TransferSIPParticipantRequest, api.access_token.Claims]] = []
        self.requests: list[str] = []  # method names, in order
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> ServerApi:
        app = web.Application()
        app.router.add_post("/twirp/livekit.{service}/{method}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        method = f"{request.match_info['service']}/{request.match_info['method']}"
        self.requests.append(method)
        handler = {"AgentDispatchService/CreateDispatch": self._create_dispatch,
                   "AgentDispatchService/ListDispatch": self._list_dispatch,
                   "SIP/TransferSIPParticipant": self._transfer}.get(method)
        if handler is None:
            return _twirp_error(404, "bad_route", f"the stand-in does not serve {method}")
        if request.content_type != "application/protobuf":
            return _twirp_error(415, "malformed", "protobuf bodies only")
        try:
            claims = api.TokenVerifier(self.server.api_key, self.server.api_secret).verify(
                request.headers.get("Authorization", "").removeprefix("Bearer ").strip())
        except Exception as error:  # noqa: BLE001 - any verification failure is a 401
            return _twirp_error(401, "unauthenticated", f"invalid token: {error}")
        return await handler(await request.read(), claims)

    @staticmethod
    def _room_admin(claims: api.access_token.Claims, room: str) -> bool:
        return bool(claims.video and claims.video.room_admin and claims.video.room == room)

    async def _create_dispatch(self, body: bytes, claims) -> web.Response:
        create = agent_dispatch.CreateAgentDispatchRequest.FromString(body)
        if not self._room_admin(claims, create.room):
            return _twirp_error(401, "permission_denied", "roomAdmin for the room is required")
        [made] = self.server.dispatches_for(create.room, [create])
        self.server.open_room(create.room)  # LiveKit creates the room (room_started) if needed
        return web.Response(body=made.SerializeToString(), content_type="application/protobuf")

    async def _list_dispatch(self, body: bytes, claims) -> web.Response:
        listing = agent_dispatch.ListAgentDispatchRequest.FromString(body)
        if not self._room_admin(claims, listing.room):
            return _twirp_error(401, "permission_denied", "roomAdmin for the room is required")
        answer = agent_dispatch.ListAgentDispatchResponse(agent_dispatches=self.server.dispatches.get(listing.room, []))
        return web.Response(body=answer.SerializeToString(), content_type="application/protobuf")

    async def _transfer(self, body: bytes, claims) -> web.Response:
        transfer = sip.TransferSIPParticipantRequest.FromString(body)
        if not self._room_admin(claims, transfer.room_name) or not (claims.sip and claims.sip.call):
            return _twirp_error(401, "permission_denied", "roomAdmin for the room and the SIP call grant are required")
        room = self.server.rooms.get(transfer.room_name)
        participant = room.participants.get(transfer.participant_identity) if room else None
        if participant is None or participant.kind != models.ParticipantInfo.Kind.SIP:
            return _twirp_error(404, "not_found", "no SIP participant with that identity in the room")
        self.transfers.append((transfer, claims))
        answer = sip.TransferSIPParticipantResponse(transfer_id="ST_standin",
                                                    status=sip.SIPTransferStatus.STS_TRANSFER_SUCCESSFUL)
        return web.Response(body=answer.SerializeToString(), content_type="application/protobuf")
