"""The `edge` Serve application: FastAPI ingress holding one Conversation per call.

(No `from __future__ import annotations` here: Serve rebuilds the route signatures and must see
the real WebSocket type, not a string.)

Routes: `/` the web page, `/healthz`, `/v1/conversation` (browser/app WebSocket protocol,
docs/websocket-protocol.md) and `/v1/twilio/media` (Twilio Media Streams).
"""


import asyncio
import logging
import uuid
from collections import deque
from importlib import resources

import grpc
from fastapi import FastAPI, WebSocket
from fastapi.responses import HTMLResponse
from ray import serve
from ray.serve import Application

from services.common import metrics, telemetry
from services.common.aio import first_leaf
from services.edge.auth import load_secret
from services.edge.config import EdgeConfig
from services.edge.conversation import Conversation
from services.edge.duplex import DuplexConversation, DuplexFull, call_mode
from services.edge.metrics import TurnTimeline
from services.edge.stages import StageClients
from services.edge.tracing import ConversationTracing
from services.edge.transport import CallerHungUp, ProtocolError
from services.edge.transports.websocket import WebSocketTransport

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


@serve.deployment(name="Edge", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=200)
@serve.ingress(app)
class EdgeDeployment:
    def __init__(self, config: EdgeConfig):
        self.config = EdgeConfig.model_validate(config)
        telemetry.setup("parley-edge")
        self.tracer = telemetry.tracer("parley.edge")
        self.secret = load_secret(self.config.auth.secret_env)
        self.page = resources.files("services.edge.web").joinpath("index.html").read_text()
        self.conversations: dict[str, Conversation | DuplexConversation] = {}
        self.recent_turns: deque[TurnTimeline] = deque(maxlen=1024)  # for stats() and benchmarks
        self.turn_metrics = metrics.TurnMetricsObserver()  # Prometheus histograms and counters
        self._stages: StageClients | None = None

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

        await websocket.accept()
        await self._hold(websocket, TwilioTransport, json_errors=False)

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
                                tracing=tracing)

        conversation = (DuplexConversation(transport, self.stages, self.config, conversation_id, observers, tracing)
                        if mode == "duplex" else cascade())
        self.conversations[conversation_id] = conversation
        metrics.set_active_conversations(len(self.conversations))
        try:
            try:
                await conversation.run()
            except DuplexFull:
                if self.config.duplex.when_full != "cascade":  # refused, or queued too long
                    raise
                logger.info("conversation %s: every duplex slot is taken; answering with the cascade", conversation_id)
                conversation = self.conversations[conversation_id] = cascade()
                await conversation.run()
            await _close(websocket, 1000)
        except* DuplexFull:
            await fail(4503, "over_capacity", "every duplex slot is taken; try again")
        except* ProtocolError as group:
            error = first_leaf(group)
            await fail(error.close_code, "bad_request", str(error))
        except* grpc.aio.AioRpcError as group:
            error = first_leaf(group)
            logger.warning("conversation %s: stage error %s %s", conversation_id, error.code(), error.details())
            metrics.record_stage_error("edge", error.code())
            await fail(1011, "stage_error", f"a stage failed: {error.code().name}")
        except* Exception as group:
            logger.exception("conversation %s failed", conversation_id, exc_info=group)
            await fail(1011, "internal", "the conversation failed")
        finally:
            del self.conversations[conversation_id]
            metrics.set_active_conversations(len(self.conversations))

    async def stats(self, turns: bool = False) -> dict:
        """Live conversations and asyncio tasks on this replica (the autoscaling signal; leak checks),
        and with `turns` the raw timelines of recent turns (edge monotonic clock, seconds)."""
        stats = {"active_conversations": len(self.conversations), "tasks": len(asyncio.all_tasks())}
        if turns:
            stats["turns"] = [vars(timeline).copy() for timeline in self.recent_turns]
        return stats


def build_app(args: EdgeConfig) -> Application:
    return EdgeDeployment.bind(args)
