"""The `edge` Serve application: FastAPI ingress holding one Conversation per call.

(No `from __future__ import annotations` here: Serve rebuilds the route signatures and must see
the real WebSocket type, not a string.)

Routes: `/` the web page, `/healthz`, `/v1/conversation` (browser/app WebSocket protocol,
docs/websocket-protocol.md), `/v1/twilio/media` (Twilio Media Streams) and `/v1/twilio/voice`
(Twilio's incoming-call webhook, services/edge/twilio_ingress.py), and with `livekit.enabled`
`/v1/livekit/dispatch` and `/v1/livekit/webhook` (docs/livekit.md).
"""


import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator
from importlib import resources

import grpc
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from ray.serve import Application

from services.common import autoscaling, metrics, telemetry
from services.common.aio import first_leaf
from services.edge import resilience
from services.edge.auth import AuthError, load_secret, verify_token
from services.edge.config import EdgeConfig
from services.edge.conversation import Conversation
from services.edge.duplex import DuplexConversation, DuplexFull, call_mode
from services.edge.metrics import TurnTimeline
from services.edge.resilience import FallbackLine, StageUnavailable
from services.edge.stages import StageClients
from services.edge.tracing import ConversationTracing
from services.edge.transport import CallerHungUp, ProtocolError
from services.edge.transports.websocket import WebSocketTransport
from services.edge.twilio_ingress import TwilioIngress

logger = logging.getLogger("ray.serve")
# No FastAPI spans: Serve's proxy and replica spans already cover each request (continuing a
# caller's `traceparent`) and parent the `conversation` span; FastAPI's own would start a second
# trace per WebSocket and record page URLs, whose query carries the caller's token.
app = FastAPI(title="Parley edge", docs_url=None, redoc_url=None, openapi_url=None, telemetry={"tracing": False})


async def _close(websocket: WebSocket, code: int, reason: str = "") -> None:
    try:
        await websocket.close(code=code, reason=reason[:120])
    except Exception:  # already closed by the peer
        pass


# Helpers the class uses are defined above it: Serve captures the class by value when it is
# decorated, and a module-level name defined later does not exist in the replica.
def _stage_failed(conversation_id: str, error: grpc.aio.AioRpcError) -> None:
    """A stage RPC failed with an error the edge does not retry: the call ends."""
    logger.warning("conversation %s: stage error %s %s", conversation_id, error.code(), error.details())
    metrics.record_stage_error("edge", error.code())


@serve.deployment(name="Edge", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=200)
@serve.ingress(app)
class EdgeDeployment:
    def __init__(self, config: EdgeConfig):
        self.config = EdgeConfig.model_validate(config)
        telemetry.setup("parley-edge")
        self.tracer = telemetry.tracer("parley.edge")
        self.secret = load_secret(self.config.auth.secret_env)
        self.twilio = TwilioIngress.from_env(self.config.twilio, self.secret)
        self.page = resources.files("services.edge.web").joinpath("index.html").read_text()
        self.conversations: dict[str, Conversation | DuplexConversation] = {}
        self.room_conversations: set[str] = set()  # those of self.conversations held in LiveKit rooms
        self.recent_turns: deque[TurnTimeline] = deque(maxlen=1024)  # for stats() and benchmarks
        self.turn_metrics = metrics.TurnMetricsObserver()  # Prometheus histograms and counters
        self.fallback = FallbackLine(self.config.resilience.fallback_text)  # shared by the replica's calls
        self._stages: StageClients | None = None
        self.livekit = None  # RoomAgents when LiveKit is enabled
        if self.config.livekit.enabled:
            from services.edge.livekit_dispatch import LiveKitCredentials, RoomAgents

            self.livekit = RoomAgents(self.config.livekit, LiveKitCredentials.from_env(self.config.livekit),
                                      self._converse_in_room, self.config.max_conversations)

    @property
    def stages(self) -> StageClients:
        if self._stages is None:  # the gRPC channel must be made on the replica's event loop
            self._stages = StageClients(self.config.stages)
        return self._stages

    @app.get("/", response_class=HTMLResponse)
    async def page(self) -> str:
        return self.page

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "conversations": len(self.conversations)}

    @app.websocket("/v1/conversation")
    async def websocket_conversation(self, websocket: WebSocket) -> None:
        await websocket.accept()
        await self._hold(websocket, WebSocketTransport, json_errors=True)

    @app.websocket("/v1/twilio/media")
    async def twilio_media(self, websocket: WebSocket) -> None:
        from services.edge.transports.twilio import TwilioTransport

        if not await self.twilio.admit_media(websocket):  # unsigned: refused before accept (HTTP 403)
            return
        await websocket.accept()
        await self._hold(websocket, TwilioTransport, json_errors=False)

    @app.post("/v1/twilio/voice")
    async def twilio_voice(self, request: Request) -> Response:
        """Twilio's incoming-call webhook: signed by Twilio, answered with TwiML (twilio_ingress.py)."""
        return await self.twilio.voice(request)

    @app.post("/v1/livekit/dispatch")
    async def livekit_dispatch(self, request: Request) -> JSONResponse:
        """Send the agent into a room: `{"room": "<name>"}` with `Authorization: Bearer <edge token>`."""
        from services.edge.livekit_dispatch import DispatchError

        if self.livekit is None:
            return JSONResponse({"error": "livekit is not enabled on this edge"}, 404)
        try:
            claims = verify_token(request.headers.get("authorization", "").removeprefix("Bearer ").strip(),
                                  self.secret)
        except AuthError as error:
            return JSONResponse({"error": str(error)}, 401)
        try:
            body = await request.json()
            room = body.get("room") if isinstance(body, dict) else None
        except ValueError:
            room = None
        if not isinstance(room, str):
            return JSONResponse({"error": "the body must be JSON with a string `room`"}, 400)
        try:
            await self.livekit.dispatch(room, claims)
        except DispatchError as error:
            return JSONResponse({"error": str(error)}, error.status)
        return JSONResponse({"room": room, "status": "joined"}, 202)

    @app.post("/v1/livekit/webhook")
    async def livekit_webhook(self, request: Request) -> JSONResponse:
        """LiveKit's webhooks: dispatch by `livekit.webhook_dispatch`; room_finished ends the room's call."""
        from services.edge.livekit_dispatch import DispatchError, WebhookError, room_to_join, verify_webhook

        if self.livekit is None:
            return JSONResponse({"error": "livekit is not enabled on this edge"}, 404)
        try:
            event = verify_webhook(self.livekit.credentials, await request.body(),
                                   request.headers.get("authorization", ""))
        except WebhookError as error:
            return JSONResponse({"error": str(error)}, 401)
        if event.event == "room_finished":
            return JSONResponse({"left": self.livekit.leave(event.room.name)})
        room = room_to_join(event, self.config.livekit)
        if room is None:
            return JSONResponse({"dispatched": None})
        try:
            await self.livekit.dispatch(room)
        except DispatchError as error:  # already there, full, or the room is gone: nothing to retry
            logger.info("livekit webhook %s for room %s: %s", event.event, room, error)
            return JSONResponse({"dispatched": None, "reason": str(error)})
        return JSONResponse({"dispatched": room})

    async def _converse_in_room(self, transport) -> None:
        """The conversation core over a LiveKit room (called by RoomAgents, one task per room)."""
        conversation_id = uuid.uuid4().hex[:12]
        tracing = ConversationTracing(conversation_id, self.tracer, transport="livekit")
        conversation = Conversation(transport, self.stages, self.config, conversation_id,
                                    observers=(self.recent_turns.append, self.turn_metrics), tracing=tracing,
                                    fallback=self.fallback)
        try:
            async with self._live(conversation_id, conversation, in_room=True):
                await conversation.run()
        except* TimeoutError:
            logger.info("conversation %s: the call reached its time limit; the agent leaves the room", conversation_id)
        except* grpc.aio.AioRpcError as group:
            _stage_failed(conversation_id, first_leaf(group))
        except* StageUnavailable as group:  # the fallback line was said; the agent leaves the room
            logger.warning("conversation %s: %s", conversation_id, first_leaf(group))

    @contextlib.asynccontextmanager
    async def _live(self, conversation_id: str, conversation: Conversation | DuplexConversation,
                    in_room: bool = False) -> AsyncIterator[None]:
        """Hold a call in this replica's live calls (admission, stats, autoscaling), at most
        `max_call_s` long (TimeoutError then)."""
        self.conversations[conversation_id] = conversation
        if in_room:
            self.room_conversations.add(conversation_id)
        metrics.set_active_conversations(len(self.conversations))
        try:
            async with asyncio.timeout(self.config.max_call_s):
                yield
        finally:
            del self.conversations[conversation_id]
            self.room_conversations.discard(conversation_id)
            metrics.set_active_conversations(len(self.conversations))

    async def _hold(self, websocket: WebSocket, transport_type, json_errors: bool) -> None:
        async def fail(code: int, kind: str, message: str) -> None:
            if json_errors:
                try:
                    await websocket.send_json({"type": "error", "code": kind, "message": message})
                except Exception:
                    pass
            await _close(websocket, code, message)

        if len(self.conversations) >= self.config.max_conversations:
            await fail(4503, "over_capacity", "this edge is at its conversation limit; try again")
            return
        try:
            transport = await transport_type.open(websocket, self.secret, start_timeout_s=self.config.start_timeout_s,
                                                  max_frame_ms=self.config.max_frame_ms)
        except ProtocolError as error:
            await fail(error.close_code, "unauthorized" if error.close_code == 4401 else "bad_request", str(error))
            return
        except CallerHungUp:
            return
        try:
            mode = call_mode(self.config.duplex, transport.claims)
        except ProtocolError as error:
            await fail(error.close_code, "bad_request", str(error))
            return
        conversation_id = uuid.uuid4().hex[:12]
        tracing = ConversationTracing(conversation_id, self.tracer,
                                      transport=transport_type.__name__.removesuffix("Transport").lower())

        observers = (self.recent_turns.append, self.turn_metrics)

        def cascade() -> Conversation:
            return Conversation(transport, self.stages, self.config, conversation_id, observers=observers,
                                tracing=tracing, fallback=self.fallback)

        conversation = (DuplexConversation(transport, self.stages, self.config, conversation_id, observers, tracing,
                                           fallback=self.fallback)
                        if mode == "duplex" else cascade())
        try:
            async with self._live(conversation_id, conversation):
                try:
                    await conversation.run()
                except DuplexFull:
                    if self.config.duplex.when_full != "cascade":  # refused, or queued too long
                        raise
                    logger.info("conversation %s: every duplex slot is taken; answering with the cascade",
                                conversation_id)
                    conversation = self.conversations[conversation_id] = cascade()
                    await conversation.run()
            await _close(websocket, 1000)
        except* TimeoutError:
            await fail(4408, "call_time_limit", f"the call reached its time limit ({self.config.max_call_s:g} s)")
        except* DuplexFull:
            await fail(4503, "over_capacity", "every duplex slot is taken; try again")
        except* ProtocolError as group:
            error = first_leaf(group)
            await fail(error.close_code, "bad_request", str(error))
        except* StageUnavailable as group:
            error = first_leaf(group)
            await fail(1013, "stage_unavailable", f"the {error.stage} stage is unavailable; call again shortly")
        except* grpc.aio.AioRpcError as group:
            error = first_leaf(group)
            _stage_failed(conversation_id, error)
            await fail(1011, "stage_error", f"a stage failed: {error.code().name}")
        except* Exception as group:
            logger.exception("conversation %s failed", conversation_id, exc_info=group)
            await fail(1011, "internal", "the conversation failed")

    async def stats(self, turns: bool = False) -> dict:
        """Live conversations and asyncio tasks on this replica (the autoscaling signal; leak checks),
        and with `turns` the raw timelines of recent turns (edge monotonic clock, seconds)."""
        stats = {"active_conversations": len(self.conversations), "tasks": len(asyncio.all_tasks()),
                 "active_rooms": len(self.livekit or ()), "fallback_clips": self.fallback.clips,
                 # Through the module: Serve pickles this class by value, a bare name would be a copy.
                 "stage_retries": dict(resilience.retries_by_stage)}
        if turns:
            stats["turns"] = [vars(timeline).copy() for timeline in self.recent_turns]
        return stats

    async def __del__(self) -> None:
        """Serve's shutdown hook (after HTTP requests drained): LiveKit rooms hold no request, so
        let their calls finish here, up to `livekit.drain_timeout_s`."""
        if getattr(self, "livekit", None) is not None:
            await self.livekit.drain(self.config.livekit.drain_timeout_s)

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's custom autoscaling metrics (services/common/autoscaling.py): live calls are the
        rooms the agent is in (joined or waiting for a caller) plus the WebSocket and Twilio ones."""
        rooms = len(self.livekit or ())
        calls = rooms + len(self.conversations) - len(self.room_conversations)
        return {autoscaling.SESSIONS: calls, "active_rooms": rooms, "active_conversations": len(self.conversations)}


def build_app(args: EdgeConfig) -> Application:
    return EdgeDeployment.bind(args)
