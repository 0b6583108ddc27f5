"""A header deadline for Serve's HTTP proxy: a slowloris client is dropped.

Serve 2.60 runs its HTTP proxy on uvicorn, which has no header timeout (its keep-alive timer is armed
only after a response), and exposes no uvicorn option beyond keep-alive: a client that sends a
request's headers (a WebSocket upgrade's included) a byte at a time holds a connection for ever.

The only Parley code Serve runs inside its proxies is the `grpc_servicer_functions` list, so
`add_header_deadline_to_server` is listed there (serve_config*.yaml): it registers nothing on the
gRPC server and gives uvicorn's HTTP protocols a deadline instead. A connection must deliver the
complete headers of a request within $PARLEY_HTTP_HEADER_TIMEOUT_S (default 10 s) of opening, or of
the first byte of its next request, else it is closed. A request being served and an upgraded
WebSocket are never touched. A front proxy (cluster/README.md) is the other place for this limit.
"""

from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger("ray.serve")

HEADER_TIMEOUT_ENV = "PARLEY_HTTP_HEADER_TIMEOUT_S"
DEFAULT_HEADER_TIMEOUT_S = 10.0
_DEADLINE = "_parley_header_deadline"


def header_timeout_s() -> float:
    """The header deadline from the environment (a positive number of seconds)."""
    value = float(os.environ.get(HEADER_TIMEOUT_ENV, "") or DEFAULT_HEADER_TIMEOUT_S)
    if value <= 0:
        raise ValueError(f"{HEADER_TIMEOUT_ENV} must be a positive number of seconds, got {value}")
    return value


def _serving(protocol: Any) -> bool:
    cycle = protocol.cycle
    return cycle is not None and not cycle.response_complete


def _upgraded(protocol: Any) -> bool:
    return protocol.transport.get_protocol() is not protocol  # handed to the WebSocket protocol


def _cancel(protocol: Any) -> None:
    deadline = getattr(protocol, _DEADLINE, None)
    if deadline is not None:
        deadline.cancel()
        setattr(protocol, _DEADLINE, None)


def _arm(protocol: Any, timeout_s: float) -> None:
    """Close the connection unless a request's headers are complete within `timeout_s`."""
    if getattr(protocol, _DEADLINE, None) is not None:
        return
    waiting_for = protocol.cycle  # the last request; a new one replaces it when its headers are in

    def expire() -> None:
        setattr(protocol, _DEADLINE, None)
        transport = protocol.transport
        if transport.is_closing() or _upgraded(protocol) or protocol.cycle is not waiting_for or _serving(protocol):
            return
        logger.info("closing an HTTP connection whose request headers took over %.0f s", timeout_s)
        transport.close()

    setattr(protocol, _DEADLINE, protocol.loop.call_later(timeout_s, expire))


def install_header_deadline(protocol_class: type, timeout_s: float) -> None:
    """Give a uvicorn HTTP protocol class the header deadline (once per class)."""
    if getattr(protocol_class, "_parley_header_timeout_s", None) is not None:
        return
    connection_made, data_received, connection_lost = (
        protocol_class.connection_made, protocol_class.data_received, protocol_class.connection_lost)

    def made(self: Any, transport: Any) -> None:
        connection_made(self, transport)
        _arm(self, timeout_s)

    def received(self: Any, data: bytes) -> None:
        before = self.cycle
        data_received(self, data)
        if self.transport.is_closing() or _upgraded(self):
            _cancel(self)
        elif self.cycle is not before:  # a request's headers are complete
            _cancel(self)
        elif not _serving(self):  # the first bytes of a request: its headers are now due
            _arm(self, timeout_s)

    def lost(self: Any, exc: Exception | None) -> None:
        _cancel(self)
        connection_lost(self, exc)

    protocol_class.connection_made, protocol_class.data_received, protocol_class.connection_lost = made, received, lost
    protocol_class._parley_header_timeout_s = timeout_s


def add_header_deadline_to_server(servicer: Any, server: Any) -> None:
    """Listed in grpc_options.grpc_servicer_functions, so it runs in every Serve proxy: registers no
    gRPC service; installs the header deadline on the proxy's HTTP server (uvicorn)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    classes: list[type] = [H11Protocol]
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        classes.append(HttpToolsProtocol)
    except ImportError:  # httptools not installed: uvicorn uses h11
        pass
    timeout_s = header_timeout_s()
    for protocol_class in classes:
        install_header_deadline(protocol_class, timeout_s)
    logger.info("HTTP ingress: request headers are due within %.0f s", timeout_s)
