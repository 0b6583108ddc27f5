"""Direct media: the conversation protocol served on the edge replica's own port.

Through Serve's HTTP proxy every 20 ms WebSocket frame of a call is one actor call from the proxy
into the replica: that relay is most of what an idle call costs (docs/benchmarks.md, "Cost per live
call"). With `direct_media.enabled` each edge replica also listens on a port of its own
(`MediaServer`, a uvicorn server in the replica's event loop) and serves `/v1/conversation` there
with the same handler as the Serve route, so frames go caller -> replica.

The Serve route `POST /v1/calls` does admission (`admission`): it checks the call token exactly as
the WebSocket checks it, answers 503 + Retry-After when the replica is full, and hands out the
replica's `media_url`. The direct endpoint checks the token again and spends it (one token, one
direct call on a replica: `DirectTokens`), and its calls count in the replica's capacity and
autoscaling like any other. Nothing is reachable there without a valid token.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from services.edge.auth import AuthError, SingleUse, verify_token
from services.edge.config import DirectMediaConfig
from services.edge.transport import ProtocolError, Transport

logger = logging.getLogger("ray.serve")

MEDIA_PATH = "/v1/conversation"
RETRY_AFTER_S = 2  # a full replica: another try is likely routed to another one
SHUTDOWN_GRACE_S = 5.0  # after the drain: connections still open get this long to close
WILDCARD_HOSTS = ("0.0.0.0", "::", "")  # bound to every interface: the advertised host is the node IP


@dataclass(frozen=True)
class Admission:
    """The answer of `POST /v1/calls`: an HTTP status, a JSON body and headers."""

    status: int
    body: dict
    headers: dict[str, str] = field(default_factory=dict)


def admission(authorization: str, secret: str, media_url: str | None, full: bool) -> Admission:
    """Admit a call: the bearer token checked as the WebSocket checks it (401), the endpoint on
    (404), room on this replica (503 + Retry-After); then where to connect. The token is not
    spent here: the direct endpoint spends it when the call opens."""
    scheme, _, token = authorization.partition(" ")
    try:
        if scheme.lower() != "bearer":
            raise AuthError("an `Authorization: Bearer <call token>` header is required")
        verify_token(token.strip(), secret)
    except AuthError as error:
        return Admission(401, {"error": str(error)}, {"WWW-Authenticate": "Bearer"})
    if media_url is None:
        return Admission(404, {"error": "direct media is off on this edge: connect to /v1/conversation"})
    if full:
        return Admission(503, {"error": "this edge is at its conversation limit; try again"},
                         {"Retry-After": str(RETRY_AFTER_S)})
    return Admission(200, {"media_url": media_url})


class DirectTokens:
    """Call tokens spent on this replica's direct endpoint: a token opens one direct call."""

    def __init__(self, clock=time.time):
        self._used = SingleUse(clock)

    def spend(self, transport: Transport) -> None:
        """ProtocolError 4401 when the call's token was spent already (or carries no `jti`)."""
        try:
            self._used.spend(transport.claims)
        except AuthError as error:
            raise ProtocolError(str(error), 4401) from None


def media_url(config: DirectMediaConfig, bound_port: int, node_ip: str) -> str:
    """The address `POST /v1/calls` hands out for this replica: the advertised host, else the bind
    host, else (bound to every interface) the node IP Ray reports."""
    host = config.advertised_host or (node_ip if config.bind_host in WILDCARD_HOSTS else config.bind_host)
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return f"{config.advertised_scheme}://{host}:{config.advertised_port or bound_port}{MEDIA_PATH}"


def max_message_bytes(max_control_bytes: int, max_frame_ms: int) -> int:
    """The largest WebSocket message the protocol allows: a control message (UTF-8, up to 4 bytes
    a character) or an audio frame at 48 kHz; anything larger is cut off by the server itself."""
    return max(4 * max_control_bytes, 48_000 * max_frame_ms // 1000 * 2) + 1024


class MediaServer:
    """A uvicorn server on the replica's event loop serving `handle` at /v1/conversation. It holds no
    task of its own: asyncio's server accepts, uvicorn runs one task per connection."""

    def __init__(self, config: DirectMediaConfig, handle: Callable[[WebSocket], Awaitable[None]],
                 max_message_bytes: int, header_timeout_s: float):
        self.config = config
        self._handle = handle
        self._max_message_bytes, self._header_timeout_s = max_message_bytes, header_timeout_s
        self._server = None  # uvicorn.Server once started
        self._socket: socket.socket | None = None
        self._port = 0
        self.live = 0  # direct calls being held

    @property
    def port(self) -> int:
        """The bound port (an ephemeral one when `port` is 0)."""
        if not self._port:
            raise RuntimeError("the media server is not started")
        return self._port

    async def _endpoint(self, websocket: WebSocket) -> None:
        self.live += 1
        try:
            await self._handle(websocket)
        finally:
            self.live -= 1

    async def start(self) -> None:
        """Bind the port (OSError if it is taken) and serve on the running loop."""
        import uvicorn
        from uvicorn.protocols.http.h11_impl import H11Protocol

        from services.common.http_limits import install_header_deadline

        app = Starlette(routes=[WebSocketRoute(MEDIA_PATH, self._endpoint)])
        # h11 with the proxy's header deadline (slowloris); no compression: PCM does not compress and
        # deflate costs CPU per frame; no access log: upgrade requests are the caller's metadata.
        config = uvicorn.Config(app, http="h11", ws="auto", lifespan="off", log_level="warning", access_log=False,
                                proxy_headers=False, server_header=False, date_header=False,
                                ws_max_size=self._max_message_bytes, ws_per_message_deflate=False,
                                timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
        install_header_deadline(H11Protocol, self._header_timeout_s)
        family = socket.AF_INET6 if ":" in self.config.bind_host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.config.bind_host, self.config.port))
            listener.listen(1024)
            listener.setblocking(False)
            server = uvicorn.Server(config)
            config.load()
            server.lifespan = config.lifespan_class(config)
            await server.startup(sockets=[listener])
        except BaseException:
            listener.close()
            raise
        self._server, self._socket, self._port = server, listener, listener.getsockname()[1]
        logger.info("direct media endpoint listening on %s:%d", self.config.bind_host, self.port)

    async def stop(self, drain_timeout_s: float = 0.0) -> None:
        """Stop accepting, let direct calls end for up to `drain_timeout_s`, then close what is left
        (close code 1012) and free the port. Safe to call twice."""
        server, listener = self._server, self._socket
        if server is None or listener is None:
            return
        self._server = None
        for asyncio_server in server.servers:
            asyncio_server.close()  # no new connections; the calls in progress go on
        deadline = time.monotonic() + drain_timeout_s
        while self.live and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await server.shutdown(sockets=[listener])  # closes what is left with 1012, cancels it after the grace
        await asyncio.gather(*list(server.server_state.tasks), return_exceptions=True)
        self._socket = None
