"""A real OTLP/gRPC trace receiver in the test process.

It stands in for Jaeger / the OpenTelemetry Collector, which cannot run here: the same
`opentelemetry.proto.collector.trace.v1.TraceService/Export` RPC they serve on port 4317, so the
SDK's OTLP exporter (ours and Ray Serve's) sends to it exactly as it would to them. It keeps every
span it receives, flattened with its resource's attributes, for assertions.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent import futures
from dataclasses import dataclass

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


def _value(any_value):
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in any_value.kvlist_value.values}
    return None if kind is None else getattr(any_value, kind)


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root
    kind: int  # opentelemetry.proto Span.SpanKind: 1 internal, 2 server, 3 client
    start_ns: int
    end_ns: int
    attributes: dict
    resource: dict
    status_code: int  # 0 unset, 1 ok, 2 error
    links: tuple[str, ...] = ()  # the span ids it links to

    @property
    def service(self) -> str:
        return self.resource.get("service.name", "")

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


class OTLPReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, host: str = "127.0.0.1"):
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self.endpoint = f"http://{host}:{self._server.add_insecure_port(f'{host}:0')}"

    def Export(self, request, context):
        received = [
            ReceivedSpan(span.name, span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex(), span.kind,
                         span.start_time_unix_nano, span.end_time_unix_nano,
                         {kv.key: _value(kv.value) for kv in span.attributes},
                         {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}, span.status.code,
                         tuple(link.span_id.hex() for link in span.links))
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]
        with self._lock:
            self._spans.extend(received)
        return trace_service_pb2.ExportTraceServiceResponse()

    def start(self) -> OTLPReceiver:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None)

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    async def wait_for(self, condition, timeout_s: float = 20.0) -> list[ReceivedSpan]:
        """Every span received so far, once `condition(spans)` holds (exporters batch: give them time)."""
        deadline = time.monotonic() + timeout_s
        while not condition(spans := self.spans()):
            if time.monotonic() > deadline:
                raise AssertionError(f"spans never met the condition; got {sorted({s.name for s in spans})}")
            await asyncio.sleep(0.1)
        return spans
