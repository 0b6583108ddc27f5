"""The `edge` Serve application: a thin shell of routes over the call host (services/edge/host.py).

(No `from __future__ import annotations` here: Serve rebuilds the route signatures and must see
the real WebSocket type, not a string.)

Routes: `/` the web page, `/healthz`, `/v1/voices` (the TTS deployment's voices),
`/v1/conversation` (browser/app WebSocket protocol, docs/websocket-protocol.md),
`/v1/twilio/media` (Twilio Media Streams) and `/v1/twilio/voice` (Twilio's incoming-call
webhook, services/edge/twilio_ingress.py), and with `livekit.enabled` `/v1/livekit/dispatch` and
`/v1/livekit/webhook` (docs/livekit.md). With `direct_media.enabled`, `POST /v1/calls` admits a
call and answers the replica's own media endpoint (services/edge/direct_media.py), which serves
`/v1/conversation` on a port of the replica's without Serve's proxy.
"""


import asyncio
import contextlib
from importlib import resources

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from ray.serve import Application

from services.common import telemetry
from services.common.http_limits import header_timeout_s
from services.common.request_body import BodyError, read_json_body
from services.common.unserved import RefusesUnservedMethods
from services.edge.auth import load_secret
from services.edge.config import EdgeConfig
from services.edge.direct_media import DirectTokens, MediaServer, admission, max_message_bytes, media_url
from services.edge.host import CallHost, Failure
from services.edge.persona import VoiceCatalog
from services.edge.streams import base as stream_base
from services.edge.streams.base import StageClients
from services.edge.transports.websocket import WebSocketTransport
from services.edge.twilio_ingress import TwilioIngress

# No FastAPI spans: Serve's proxy and replica spans already cover each request (continuing a
# caller's `traceparent`) and parent the `conversation` span; FastAPI's own would start a second
# trace per WebSocket and record page URLs, whose query carries the caller's token.
app = FastAPI(title="Parley edge", docs_url=None, redoc_url=None, openapi_url=None, telemetry={"tracing": False})


# Helpers the class uses are defined above it: Serve captures the class by value when it is
# decorated, and a module-level name defined later does not exist in the replica.
async def _close(websocket: WebSocket, code: int, reason: str = "") -> None:
    try:
        await websocket.close(code=code, reason=reason[:120])
    except Exception:  # already closed by the peer
        pass


@contextlib.contextmanager
def _trace_continued(headers):
    """A direct call's `conversation` span continues a `traceparent` sent with the upgrade (through
    Serve's route, Serve's own spans do that)."""
    from opentelemetry import context, propagate

    token = context.attach(propagate.extract(dict(headers)))
    try:
        yield
    finally:
        context.detach(token)


def _tts_voices(application: str):
    async def fetch() -> list[str]:
        return await serve.get_app_handle(application).voices.remote()
    return fetch


@serve.deployment(name="Edge", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=200)
@serve.ingress(app)
class EdgeDeployment(RefusesUnservedMethods):  # a stage's gRPC method sent to `edge`: UNIMPLEMENTED
    async def __init__(self, config: EdgeConfig):  # async: the direct media port is bound before the replica is up
        self.config = EdgeConfig.model_validate(config)
        telemetry.setup("parley-edge")
        self.secret = load_secret(self.config.auth.secret_env)
        self.twilio = TwilioIngress.from_env(self.config.twilio, self.secret)
        self.page = resources.files("services.edge.web").joinpath("index.html").read_text()
        self._stages: StageClients | None = None
        self.host = CallHost(self.config, self.stages, VoiceCatalog(_tts_voices(self.config.stages.tts_application)),
                             telemetry.tracer("parley.edge"))
        self.livekit = None  # RoomAgents when LiveKit is enabled
        if self.config.livekit.enabled:
            from services.edge.livekit_dispatch import LiveKitCredentials, RoomAgents
            from services.edge.livekit_rooms import RoomRegistry

            host = self.host
            self.livekit = RoomAgents(self.config.livekit, LiveKitCredentials.from_env(self.config.livekit),
                                      host.hold_room, self.config.max_conversations, registry=RoomRegistry.actor(),
                                      other_calls=lambda: len(host.calls) - len(host.room_calls))
        self.direct: MediaServer | None = None  # the replica's own media endpoint, when enabled
        self.direct_tokens = DirectTokens()
        self.media_url: str | None = None
        if self.config.direct_media.enabled:
            import ray

            self.direct = MediaServer(self.config.direct_media, self._direct_call,
                                      max_message_bytes(self.config.max_control_bytes, self.config.max_frame_ms),
                                      header_timeout_s())
            await self.direct.start()
            self.media_url = media_url(self.config.direct_media, self.direct.port, ray.util.get_node_ip_address())

    def stages(self) -> StageClients:
        if self._stages is None:  # the gRPC channel must be made on the replica's event loop
            self._stages = StageClients(self.config.stages)
        return self._stages

    @app.get("/", response_class=HTMLResponse)
    async def page(self) -> str:
        return self.page

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "conversations": len(self.host.calls)}

    @app.get("/v1/voices")
    async def voices(self) -> JSONResponse:
        """The voices a caller may name (`voice` in `start`, or a persona's); "" is the default."""
        voices = await self.host.voices.voices()
        if voices is None:
            return JSONResponse({"error": "the tts stage cannot be asked right now"}, 503)
        return JSONResponse({"voices": voices})

    @app.websocket("/v1/conversation")
    async def websocket_conversation(self, websocket: WebSocket) -> None:
        await websocket.accept()
        await self._hold(websocket, WebSocketTransport, json_errors=True)

    @app.post("/v1/calls")
    async def admit_call(self, request: Request) -> JSONResponse:
        """Admission for a direct media call: `Authorization: Bearer <call token>`; answers
        `{"media_url": ...}`, this replica's own /v1/conversation (docs/websocket-protocol.md)."""
        answer = admission(request.headers.get("authorization", ""), self.secret, self.media_url, self.host.full)
        return JSONResponse(answer.body, answer.status, headers=answer.headers)

    async def _direct_call(self, websocket: WebSocket) -> None:
        """A call on the direct media endpoint: the Serve route's handler, its token spent once."""
        await websocket.accept()
        with _trace_continued(websocket.headers):
            await self._hold(websocket, WebSocketTransport, json_errors=True, admit=self.direct_tokens.spend,
                             name="direct")

    @app.websocket("/v1/twilio/media")
    async def twilio_media(self, websocket: WebSocket) -> None:
        from services.edge.transports.twilio import TwilioTransport

        if not await self.twilio.admit_media(websocket):  # unsigned: refused before accept (HTTP 403)
            return
        await websocket.accept()
        await self._hold(websocket, TwilioTransport, json_errors=False, admit=self.twilio.admit_stream)

    async def _hold(self, websocket: WebSocket, transport_type, json_errors: bool, admit=None, name: str = "") -> None:
        async def fail(failure: Failure) -> None:
            if json_errors and failure.error_event:
                try:
                    await websocket.send_json({"type": "error", "code": failure.code, "message": failure.message,
                                               **({"stage": failure.stage} if failure.stage else {})})
                except Exception:
                    pass
            await _close(websocket, failure.close_code, failure.message)

        async def open_transport():
            transport = await transport_type.open(websocket, self.secret, start_timeout_s=self.config.start_timeout_s,
                                                  max_frame_ms=self.config.max_frame_ms,
                                                  max_control_bytes=self.config.max_control_bytes)
            if admit is not None:  # e.g. spend a single-use token (ProtocolError ends the call)
                admit(transport)
            return transport

        name = name or transport_type.__name__.removesuffix("Transport").lower()
        if await self.host.hold(open_transport, fail, name) is None:
            await _close(websocket, 1000)

    @app.post("/v1/twilio/voice")
    async def twilio_voice(self, request: Request) -> Response:
        """Twilio's incoming-call webhook: signed by Twilio, answered with TwiML (twilio_ingress.py)."""
        return await self.twilio.voice(request, full=self.host.full)

    @app.post("/v1/twilio/status")
    async def twilio_status(self, request: Request) -> Response:
        """Twilio's call and stream status callbacks, signed by Twilio: counted by status."""
        return await self.twilio.status(request)

    @app.post("/v1/livekit/dispatch")
    async def livekit_dispatch(self, request: Request) -> JSONResponse:
        """Send the agent into a room: `{"room": "<name>"}` with `Authorization: Bearer <edge token>`."""
        from services.edge.livekit_dispatch import dispatch_request, response_headers

        try:
            raw = await read_json_body(request)  # size, time and nesting depth limits: 413/408/400
        except BodyError as error:
            return JSONResponse({"error": error.message}, error.status)
        body, status = await dispatch_request(self.livekit, raw, request.headers.get("authorization", ""), self.secret,
                                              self.host.persona)
        return JSONResponse(body, status, headers=response_headers(status))

    @app.post("/v1/livekit/webhook")
    async def livekit_webhook(self, request: Request) -> JSONResponse:
        """LiveKit's webhooks: dispatch by `livekit.webhook_dispatch`; room_finished ends the room's call."""
        from services.edge.livekit_dispatch import response_headers, webhook_request

        try:
            raw = await read_json_body(request)
        except BodyError as error:
            return JSONResponse({"error": error.message}, error.status)
        body, status = await webhook_request(self.livekit, raw, request.headers.get("authorization", ""))
        return JSONResponse(body, status, headers=response_headers(status))

    async def stats(self, turns: bool = False) -> dict:
        """Live conversations and asyncio tasks on this replica (the autoscaling signal; leak checks),
        and with `turns` the raw timelines of recent turns (edge monotonic clock, seconds)."""
        stats = {"active_conversations": len(self.host.calls), "tasks": len(asyncio.all_tasks()),
                 "active_rooms": len(self.livekit or ()), "direct_calls": self.direct.live if self.direct else 0,
                 "fallback_clips": self.host.fallback.clips,
                 # Through the module: Serve pickles this class by value, a bare name would be a copy.
                 "stage_retries": dict(stream_base.retries_by_stage),
                 "post_call_records": {"pending": self.host.records.pending, "sent": self.host.records.sent,
                                       "failed": self.host.records.failed, "dropped": self.host.records.dropped}}
        if turns:
            stats["turns"] = [vars(timeline).copy() for timeline in self.host.recent_turns]
        return stats

    async def __del__(self) -> None:
        """Serve's shutdown hook (after HTTP requests drained): LiveKit rooms and direct calls hold
        no Serve request, so let their calls finish here, up to `livekit.drain_timeout_s` and
        `direct_media.drain_timeout_s`, and free the direct port; then post-call records."""
        drains = []
        if getattr(self, "livekit", None) is not None:
            drains.append(self.livekit.drain(self.config.livekit.drain_timeout_s))
        if getattr(self, "direct", None) is not None:
            drains.append(self.direct.stop(self.config.direct_media.drain_timeout_s))
        await asyncio.gather(*drains)
        if getattr(self, "host", None) is not None:
            await self.host.records.aclose()  # the last calls' records: a short wait, then cancelled

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's custom autoscaling metrics (services/common/autoscaling.py)."""
        return self.host.live_calls(len(self.livekit or ()))


def build_app(args: EdgeConfig) -> Application:
    return EdgeDeployment.bind(args)
