"""Tracing plumbing without a cluster: setup on and off, traceparent through gRPC metadata, the
edge's conversation spans and a stage's server span, checked against an in-memory exporter.

`setup()` changes process-global OpenTelemetry state, so those cases run in a child process.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel

from services.common import attributes as attr
from services.common import telemetry
from services.common.rpc import invalid_argument
from services.common.stage import StageDeployment
from services.common.timeline import COMPONENTS, TurnTimeline
from services.edge.tracing import ConversationTracing
from tests.otlp_receiver import OTLPReceiver

ROOT = Path(__file__).resolve().parents[2]
_OTEL_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SERVICE_NAME",
              "OTEL_RESOURCE_ATTRIBUTES", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_SDK_DISABLED",
              "PARLEY_TRACE_CONTENT", "RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH")


def run_child(code: str, **env: str) -> dict:
    """Run `code` in a fresh interpreter (its own global tracer provider); it prints one JSON line."""
    clean = {k: v for k, v in os.environ.items() if k not in _OTEL_VARS}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**clean, **env}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


SETUP_PROBE = r"""
import json
from opentelemetry import trace
from services.common import telemetry

on = telemetry.setup("parley-test")
span = telemetry.tracer("probe").start_span("probe")
metadata = telemetry.grpc_metadata_with_context((("application", "llm"),), trace.set_span_in_context(span))
recording = span.is_recording()
span.end()
provider = trace.get_tracer_provider()
resource = getattr(provider, "resource", None)
print(json.dumps({"on": on, "again": telemetry.setup("other"), "provider": type(provider).__name__,
                  "recording": recording, "metadata": [list(m) for m in metadata],
                  "service": resource.attributes.get("service.name") if resource else None}))
"""


def test_setup_without_an_endpoint_installs_nothing_and_spans_are_no_ops():
    result = run_child(SETUP_PROBE)
    assert result == {"on": False, "again": False, "provider": "ProxyTracerProvider", "recording": False,
                      "metadata": [["application", "llm"]], "service": None}


def test_setup_with_an_endpoint_exports_to_an_otlp_receiver():
    receiver = OTLPReceiver().start()
    try:
        result = run_child(SETUP_PROBE, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=receiver.endpoint)
        assert result["on"] and result["again"] and result["recording"]
        assert result["provider"] == "TracerProvider" and result["service"] == "parley-test"
        assert [key for key, _ in result["metadata"]] == ["application", "traceparent"]
        # The provider flushes its batch at exit: the span is already at the receiver.
        [span] = [s for s in receiver.spans() if s.name == "probe"]
        assert span.service == "parley-test"
        assert span.trace_id in result["metadata"][1][1]
    finally:
        receiver.stop()


def test_setup_takes_the_service_name_and_sampler_from_the_environment():
    result = run_child(SETUP_PROBE, OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9", OTEL_SERVICE_NAME="named",
                       OTEL_TRACES_SAMPLER="always_off")
    assert result["on"] and result["service"] == "named"
    assert not result["recording"]
    # Sampled out, the decision still travels: the stages must not start traces of their own.
    key, traceparent = result["metadata"][1]
    assert key == "traceparent" and int(traceparent.rsplit("-", 1)[1], 16) & 1 == 0  # the sampled flag is clear


def test_setup_reuses_a_provider_serve_installed_and_adds_nothing():
    result = run_child(r"""
import json
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio
from services.common import telemetry

# What Serve's setup_tracing does in each proxy and replica.
trace.set_tracer_provider(TracerProvider(sampler=ParentBasedTraceIdRatio(1.0)))
serve_provider = trace.get_tracer_provider()
for processor in telemetry.span_processors():
    serve_provider.add_span_processor(processor)
on = telemetry.setup("parley-test")
span = telemetry.tracer("probe").start_span("probe")
print(json.dumps({"on": on, "same": trace.get_tracer_provider() is serve_provider, "recording": span.is_recording(),
                  "processors": len(serve_provider._active_span_processor._span_processors)}))
""", OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9")
    assert result == {"on": True, "same": True, "recording": True, "processors": 1}


# -- traceparent through gRPC metadata ---------------------------------------------------------------

class FakeGrpcContext:
    def __init__(self, metadata):
        self._metadata = list(metadata)

    def invocation_metadata(self):
        return self._metadata


@pytest.fixture
def spans():
    """A tracer on its own provider (not the global one) and the spans it finished."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("test"), exporter
    provider.shutdown()


def test_traceparent_round_trip_through_grpc_metadata(spans):
    tracer, _ = spans
    caller = tracer.start_span("caller")
    metadata = telemetry.grpc_metadata_with_context((("application", "tts"),), trace.set_span_in_context(caller))
    assert metadata[0] == ("application", "tts") and metadata[1][0] == "traceparent"
    context = telemetry.context_from_grpc(FakeGrpcContext(metadata))
    continued = trace.get_current_span(context).get_span_context()
    assert (continued.trace_id, continued.span_id) == (caller.get_span_context().trace_id,
                                                      caller.get_span_context().span_id)
    server = tracer.start_span("server", context)
    assert server.parent.span_id == caller.get_span_context().span_id
    # No traceparent: the current context (a new trace here).
    assert telemetry.context_from_grpc(FakeGrpcContext([("application", "tts")])) is None
    assert telemetry.context_from_grpc(None) is None
    # Serve already continued the caller's trace in this replica: nest under its span instead.
    with trace.use_span(tracer.start_span("serve replica", trace.set_span_in_context(caller)), end_on_exit=True):
        assert telemetry.context_from_grpc(FakeGrpcContext(metadata)) is None


def test_tracing_off_adds_no_metadata():
    assert telemetry.grpc_metadata_with_context((("application", "asr"),)) == (("application", "asr"),)


def test_epoch_ns_keeps_monotonic_differences():
    now = time.monotonic()
    start, end = telemetry.epoch_ns(now - 0.25), telemetry.epoch_ns(now)
    assert abs((end - start) - 250_000_000) < 50_000
    assert abs(end - time.time_ns()) < 50_000_000


def test_attribute_and_span_names_are_unique_and_namespaced():
    names = {key: value for key, value in vars(attr).items() if key.isupper() and isinstance(value, str)}
    assert len(set(names.values())) == len(names), "two constants share one name"
    for key, value in names.items():
        if not key.startswith("SPAN_"):
            assert value.startswith(("parley.", "gen_ai.", "rpc.")), key
    assert attr.CONTENT <= set(names.values())
    # The turn timeline names every latency component once; event fields and attributes follow it.
    assert {c.event_field for c in COMPONENTS} == {k for k in TurnTimeline(1).to_event() if k.endswith("_ms")}
    assert all(c.attribute.startswith("parley.latency.") for c in COMPONENTS)


# -- the edge's conversation spans ---------------------------------------------------------------------

def answered_turn() -> TurnTimeline:
    now = time.monotonic()
    return TurnTimeline(2, speech_end=now - 1.5, vad_stopped=now - 1.17, asr_final=now - 1.11, turn_confirmed=now - 1.105,
                        llm_request=now - 1.1,
                        llm_first_token=now - 1.03, first_sentence=now - 0.92, tts_request=now - 0.91,
                        tts_first_audio=now - 0.5, first_audio_sent=now - 0.18, underruns=1)


def run_conversation(tracer, timeline: TurnTimeline, user_text: str = "book a table") -> list:
    tracing = ConversationTracing("c0ffee", tracer, transport="websocket")
    with tracing.conversation():
        with tracing.asr_call(16_000) as asr_metadata:
            tracing.turn_started(timeline, utterance_id=0, user_text=user_text)
            with tracing.llm_call(timeline.turn_id, max_tokens=64, temperature=0.7) as llm_metadata:
                pass
            with pytest.raises(asyncio.CancelledError):
                with tracing.tts_call(timeline.turn_id, voice="af", sample_rate=24_000):
                    raise asyncio.CancelledError  # a barge-in
            tracing.turn_finished(timeline)
    return [asr_metadata, llm_metadata]


def test_conversation_spans_nest_and_carry_the_turn_latency(spans, monkeypatch):
    monkeypatch.delenv("PARLEY_TRACE_CONTENT", raising=False)
    tracer, exporter = spans
    timeline = answered_turn()
    asr_metadata, llm_metadata = run_conversation(tracer, timeline)
    by_name = {span.name: span for span in exporter.get_finished_spans()}
    conversation, turn = by_name[attr.SPAN_CONVERSATION], by_name[attr.SPAN_TURN]
    assert conversation.parent is None and conversation.attributes[attr.GEN_AI_CONVERSATION_ID] == "c0ffee"
    assert turn.parent.span_id == conversation.context.span_id
    assert by_name[attr.SPAN_RECOGNIZE].parent.span_id == conversation.context.span_id
    for name in (attr.SPAN_ENDPOINTING, attr.SPAN_ASR, attr.SPAN_LLM, attr.SPAN_TTS, attr.SPAN_GENERATE,
                 attr.SPAN_SYNTHESIZE):
        assert by_name[name].parent.span_id == turn.context.span_id, name
    assert by_name[attr.SPAN_GENERATE].kind == trace.SpanKind.CLIENT
    assert by_name[attr.SPAN_SYNTHESIZE].attributes[attr.RPC_CANCELLED] is True
    # The client spans' traceparent goes with the RPCs.
    for metadata, name in ((llm_metadata, attr.SPAN_GENERATE), (asr_metadata, attr.SPAN_RECOGNIZE)):
        assert dict(metadata)["traceparent"].split("-")[2] == format(by_name[name].context.span_id, "016x")
    # Latency: the metrics event's values, and span durations that agree with them.
    event = timeline.to_event()
    for component in COMPONENTS:
        assert turn.attributes[component.attribute] == event[component.event_field]
    for name, field in ((attr.SPAN_ENDPOINTING, "endpointing_ms"), (attr.SPAN_ASR, "asr_final_ms"),
                        (attr.SPAN_LLM, "llm_ttft_ms"), (attr.SPAN_TTS, "tts_ttfb_ms")):
        span = by_name[name]
        assert abs((span.end_time - span.start_time) / 1e6 - event[field]) < 0.1, name
    assert abs(turn.start_time - telemetry.epoch_ns(timeline.speech_end)) < 1_000_000
    assert turn.attributes[attr.TURN_UNDERRUNS] == 1 and turn.attributes[attr.TURN_INTERRUPTED] is False
    # No user text unless an operator enables it.
    assert not any(set(span.attributes) & attr.CONTENT for span in exporter.get_finished_spans())
    assert not any("book a table" in str(value) for span in exporter.get_finished_spans()
                   for value in span.attributes.values())


def test_conversation_spans_carry_text_only_when_enabled(spans, monkeypatch):
    monkeypatch.setenv("PARLEY_TRACE_CONTENT", "1")
    tracer, exporter = spans
    run_conversation(tracer, answered_turn())
    [turn] = [span for span in exporter.get_finished_spans() if span.name == attr.SPAN_TURN]
    assert turn.attributes[attr.TURN_USER_TEXT] == "book a table"


def test_a_hang_up_mid_turn_still_ends_the_turn_span(spans):
    tracer, exporter = spans
    tracing = ConversationTracing("c0ffee", tracer)
    with tracing.conversation():
        tracing.turn_started(TurnTimeline(1))  # a greeting: no caller speech before it
    [turn] = [span for span in exporter.get_finished_spans() if span.name == attr.SPAN_TURN]
    assert turn.attributes[attr.TURN_UNFINISHED] is True and turn.attributes[attr.TURN_KIND] == "greeting"


def test_conversation_tracing_off_is_inert():
    tracing = ConversationTracing("c0ffee", trace.NoOpTracer())
    with tracing.conversation(), tracing.asr_call(16_000) as metadata:
        tracing.turn_started(answered_turn(), utterance_id=0, user_text="x")
        with tracing.llm_call(2, max_tokens=1, temperature=0.0) as llm_metadata:
            pass
        tracing.turn_finished(answered_turn())
    assert metadata == () and llm_metadata == ()
    with ConversationTracing("c0ffee").conversation():  # no tracer at all
        pass


# -- a stage's server span -----------------------------------------------------------------------------

class _EngineConfig(BaseModel):
    kind: str = "fake"


class _Config(BaseModel):
    engine: _EngineConfig = _EngineConfig()


class FakeStage(StageDeployment[_Config]):
    config_type = _Config
    stage = "llm"

    def __init__(self, tracer):
        super().__init__({}, lambda config: object())
        self.tracer = tracer


def test_stage_track_continues_the_caller_trace_and_counts_the_stream(spans):
    tracer, exporter = spans
    stage = FakeStage(tracer)
    caller = tracer.start_span("edge client")
    grpc_context = FakeGrpcContext(telemetry.grpc_metadata_with_context(
        (("application", "llm"),), trace.set_span_in_context(caller)))
    with stage.track(attr.SPAN_GENERATE, grpc_context) as span:
        assert stage.active_streams == 1 and span.is_recording()
    with pytest.raises(asyncio.CancelledError), stage.track(attr.SPAN_GENERATE, grpc_context):
        raise asyncio.CancelledError
    with pytest.raises(ExceptionGroup), stage.track(attr.SPAN_GENERATE, grpc_context):
        raise ExceptionGroup("session", [invalid_argument("bad temperature")])
    ok, cancelled, invalid = [s for s in exporter.get_finished_spans() if s.name == attr.SPAN_GENERATE]
    assert stage.active_streams == 0 and stage.cancelled_streams == 1
    for span in (ok, cancelled, invalid):
        assert span.kind == trace.SpanKind.SERVER and span.parent.span_id == caller.get_span_context().span_id
        assert span.attributes[attr.STAGE] == "llm" and span.attributes[attr.RPC_SERVICE] == "parley.v1.LanguageModel"
    assert ok.attributes[attr.RPC_GRPC_STATUS_CODE] == 0 and ok.status.is_ok
    assert cancelled.attributes[attr.RPC_CANCELLED] is True
    assert invalid.attributes[attr.RPC_GRPC_STATUS_CODE] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert invalid.status.is_unset  # the caller's mistake, not this stage's error
