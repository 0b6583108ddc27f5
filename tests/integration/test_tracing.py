"""One trace per conversation, across the edge and every stage replica, as Jaeger would get it.

The test cluster exports every span by OTLP/gRPC to a receiver in this process (conftest.py;
tests/otlp_receiver.py stands in for Jaeger). A real call through the edge must come back as one
trace: spans from the edge's and each stage's processes, parented through `traceparent` and
Serve's own proxy and replica hops, with the latency the caller's `metrics` event reported, and
without a word of what was said.
"""

from __future__ import annotations

import secrets
import time

import pytest

from services.common import attributes as attr
from services.common.rpc import stage_metadata
from services.common.timeline import COMPONENTS
from services.edge.caller import call, settled
from services.proto import llm_pb2, llm_pb2_grpc, tts_pb2, tts_pb2_grpc
from tests.integration.conftest import speech, wait_quiet
from tests.integration.test_edge_websocket import token
from tests.otlp_receiver import ReceivedSpan

pytestmark = pytest.mark.cluster

SERVER, CLIENT = 2, 3  # OTLP SpanKind values
STAGE_SERVICES = {"asr": "parley-asr", "llm": "parley-llm", "tts": "parley-tts"}
RPC_SPANS = {"asr": attr.SPAN_RECOGNIZE, "llm": attr.SPAN_GENERATE, "tts": attr.SPAN_SYNTHESIZE}


def in_trace(spans: list[ReceivedSpan], trace_id: str) -> list[ReceivedSpan]:
    return [span for span in spans if span.trace_id == trace_id]


def named(spans: list[ReceivedSpan], name: str, service: str | None = None, kind: int | None = None):
    return [s for s in spans if s.name == name and (service is None or s.service == service)
            and (kind is None or s.kind == kind)]


def ancestors(span: ReceivedSpan, by_id: dict[str, ReceivedSpan]) -> list[ReceivedSpan]:
    chain = []
    while span.parent_id in by_id:
        span = by_id[span.parent_id]
        chain.append(span)
    return chain


def conversation_trace(conversation_id: str):
    """A condition on the received spans: the whole trace of this conversation has arrived (each
    process exports on its own schedule), down to the Serve hops that link the stages to the edge."""
    def complete(spans: list[ReceivedSpan]) -> bool:
        roots = [s for s in named(spans, attr.SPAN_CONVERSATION)
                 if s.attributes.get(attr.GEN_AI_CONVERSATION_ID) == conversation_id]
        if not roots:
            return False
        trace = in_trace(spans, roots[0].trace_id)
        by_id = {span.span_id: span for span in trace}
        servers = [span for stage, service in STAGE_SERVICES.items()
                   for span in named(trace, RPC_SPANS[stage], service, SERVER)]
        return ({s.service for s in servers} == set(STAGE_SERVICES.values())
                and all(any(a.service == "parley-edge" for a in ancestors(s, by_id)) for s in servers)
                and any(a.name.startswith("proxy_websocket_request") for a in ancestors(roots[0], by_id))
                and all(named(trace, name) for name in (attr.SPAN_TURN, attr.SPAN_LLM_GENERATE, attr.SPAN_ASR_DECODE,
                                                        attr.SPAN_TTS_SYNTHESIZE)))
    return complete


async def test_a_conversation_is_one_trace_across_the_edge_and_every_stage(edge_ws_url, edge_secret, ray_client,
                                                                          otlp_receiver):
    audio, rate = speech()
    started_ns = time.time_ns()
    result = await call(edge_ws_url, token(edge_secret, greeting="", temperature=0.0), audio, rate, tail_s=40,
                        until=settled)
    ended_ns = time.time_ns()
    assert result.close_code == 1000
    conversation_id = result.of_type("ready")[0]["conversation_id"]
    metrics = {event["turn_id"]: event for event in result.of_type("metrics")}
    assert metrics
    await wait_quiet(ray_client)  # every stream has ended, so every span has ended
    spans = await otlp_receiver.wait_for(conversation_trace(conversation_id))

    [conversation] = [s for s in named(spans, attr.SPAN_CONVERSATION)
                      if s.attributes.get(attr.GEN_AI_CONVERSATION_ID) == conversation_id]
    trace = in_trace(spans, conversation.trace_id)
    by_id = {span.span_id: span for span in trace}

    # ONE trace: every stage span of this call is in it, but for the edge replica's fallback line,
    # synthesized at its first call in a trace of its own that links to the conversation that asked.
    fallback_lines = named(spans, attr.SPAN_FALLBACK_LINE, "parley-edge", CLIENT)
    conversations = {s.span_id for s in named(spans, attr.SPAN_CONVERSATION)}
    assert all(line.parent_id == "" and len(line.links) == 1 and line.links[0] in conversations
               for line in fallback_lines)
    fallback_traces = {line.trace_id for line in fallback_lines}
    during = [s for s in spans if started_ns <= s.start_ns <= ended_ns and s.service in STAGE_SERVICES.values()]
    assert during and {s.trace_id for s in during} - fallback_traces == {conversation.trace_id}

    # From the edge's process and each stage replica's own process.
    edge_pid = conversation.resource["process.pid"]
    assert conversation.service == "parley-edge"
    for stage, service in STAGE_SERVICES.items():
        [server, *_] = named(trace, RPC_SPANS[stage], service, SERVER)
        assert server.resource["process.pid"] != edge_pid
        assert server.attributes[attr.REPLICA_ID] and server.attributes[attr.STAGE] == stage
    assert len({s.resource["process.pid"] for s in trace if s.service in STAGE_SERVICES.values()}) == 3
    # Serve's own hops are in the same trace: the caller's WebSocket through its HTTP proxy to the
    # edge replica, above the conversation (waited for), and each stage RPC through its gRPC proxy.
    assert [s for s in trace if s.name.startswith("proxy_grpc_request")]
    assert [s for s in trace if s.name.startswith("replica_handle_request")]

    # Parenting on the edge: conversation -> turn -> components and RPC client spans.
    turns = {s.attributes[attr.TURN_ID]: s for s in named(trace, attr.SPAN_TURN)}
    # A reply prepared at a pause inside the caller's sentence and thrown away when they went on
    # has a turn span too, marked discarded; every other turn is one the caller heard.
    assert {turn_id for turn_id, s in turns.items() if not s.attributes.get(attr.TURN_DISCARDED)} == set(metrics)
    for turn in turns.values():
        assert turn.parent_id == conversation.span_id
    [asr_client] = named(trace, attr.SPAN_RECOGNIZE, "parley-edge", CLIENT)
    assert asr_client.parent_id == conversation.span_id
    clients = {}
    for stage in ("llm", "tts"):
        clients[stage] = named(trace, RPC_SPANS[stage], "parley-edge", CLIENT)
        assert clients[stage] and all(c.parent_id in {t.span_id for t in turns.values()} for c in clients[stage])
    # ... continued in the stages: each server span under the edge's client span, through Serve's hops only.
    for stage, service in STAGE_SERVICES.items():
        edge_side = [asr_client] if stage == "asr" else clients[stage]
        for server in named(trace, RPC_SPANS[stage], service, SERVER):
            chain = ancestors(server, by_id)
            client_index = next(i for i, span in enumerate(chain) if span in edge_side)
            assert all(hop.service not in ("parley-edge", *STAGE_SERVICES.values()) or
                       hop.name.startswith(("proxy_", "replica_")) for hop in chain[:client_index]), \
                [(hop.name, hop.service) for hop in chain[:client_index]]
    # ... and inside the replicas: queue wait and engine work under the stream's server span.
    for name, stage in ((attr.SPAN_ASR_QUEUE, "asr"), (attr.SPAN_ASR_DECODE, "asr"), (attr.SPAN_LLM_GENERATE, "llm"),
                        (attr.SPAN_TTS_QUEUE, "tts"), (attr.SPAN_TTS_SYNTHESIZE, "tts")):
        found = named(trace, name, STAGE_SERVICES[stage])
        assert found, name
        for span in found:
            assert by_id[span.parent_id].name == RPC_SPANS[stage] and by_id[span.parent_id].kind == SERVER
    # The decodes a final came from: its own, or the pause's that it reused.
    finals = [s for s in named(trace, attr.SPAN_ASR_DECODE)
              if s.attributes[attr.ASR_FINAL] or s.attributes[attr.ASR_PAUSE]]
    assert finals and all(s.attributes[attr.AUDIO_SECONDS] > 0 and s.attributes[attr.QUEUE_WAIT_MS] >= 0
                          for s in finals)
    generations = named(trace, attr.SPAN_LLM_GENERATE)
    for generation in generations:
        assert generation.attributes[attr.GEN_AI_REQUEST_MODEL]
        assert generation.attributes[attr.GEN_AI_REQUEST_TEMPERATURE] == 0.0
        if generation.attributes.get(attr.RPC_CANCELLED):
            # A reply thrown away before it finished (the caller went on after a pause) has no usage.
            assert attr.GEN_AI_USAGE_OUTPUT_TOKENS not in generation.attributes
            continue
        assert generation.attributes[attr.GEN_AI_USAGE_INPUT_TOKENS] > 0
        assert generation.attributes[attr.GEN_AI_USAGE_OUTPUT_TOKENS] > 0
        # A finished generation reports how long it waited for the engine, as a child span.
        [queue] = [s for s in trace if s.parent_id == generation.span_id and s.name == attr.SPAN_LLM_QUEUE]
        assert abs(queue.duration_ms - generation.attributes[attr.QUEUE_WAIT_MS]) <= 0.1
        assert generation.start_ns <= queue.start_ns and queue.end_ns <= generation.end_ns
    assert any(not g.attributes.get(attr.RPC_CANCELLED) for g in generations)
    assert sum(s.attributes[attr.AUDIO_SECONDS] for s in named(trace, attr.SPAN_TTS_SYNTHESIZE)) > 0.5

    # The turn's latency: what the caller's metrics event said, on the span and in its children's durations.
    for turn_id, event in metrics.items():
        turn = turns[turn_id]
        assert turn.attributes[attr.TURN_INTERRUPTED] == event["interrupted"]
        children = {s.name: s for s in trace if s.parent_id == turn.span_id}
        for component in COMPONENTS:
            field, name = component.event_field, component.attribute
            if event[field] is None:
                assert name not in turn.attributes
                continue
            assert abs(turn.attributes[name] - event[field]) <= 2.0, field
        for name, field in ((attr.SPAN_ENDPOINTING, "endpointing_ms"), (attr.SPAN_ASR, "asr_final_ms"),
                            (attr.SPAN_LLM, "llm_ttft_ms"), (attr.SPAN_TTS, "tts_ttfb_ms")):
            if event[field] is not None:
                assert abs(children[name].duration_ms - event[field]) <= 2.0, field
        if event["ttfat_ms"] is not None:  # the turn starts at the end of the caller's speech
            assert turn.start_ns <= children[attr.SPAN_ENDPOINTING].start_ns + 1_000_000

    # No user text anywhere in telemetry: no transcript, no reply.
    said = {e["text"] for e in result.events if e["type"] in ("transcript", "agent_text") and len(e["text"]) >= 8}
    assert said
    for span in spans:
        assert not set(span.attributes) & attr.CONTENT
        for value in span.attributes.values():
            assert not any(text in str(value) for text in said), (span.name, value)


async def test_an_outside_clients_traceparent_is_continued_by_the_stages(channel, otlp_receiver):
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    traceparent = ("traceparent", f"00-{trace_id}-{parent_id}-01")
    request = llm_pb2.GenerateRequest(messages=[llm_pb2.ChatMessage(role="user", content="Hello")],
                                      sampling=llm_pb2.SamplingParams(max_tokens=8, temperature=0.0))
    replies = [r async for r in llm_pb2_grpc.LanguageModelStub(channel).Generate(
        request, metadata=stage_metadata("llm", traceparent))]
    assert replies[-1].WhichOneof("event") == "done"

    async def texts():
        yield tts_pb2.SynthesizeRequest(config=tts_pb2.SynthesisConfig(sample_rate_hz=16_000))
        yield tts_pb2.SynthesizeRequest(text=tts_pb2.TextChunk(text="Hello there."))
        yield tts_pb2.SynthesizeRequest(end=tts_pb2.EndOfInput())

    audio = [r async for r in tts_pb2_grpc.SpeechSynthesisStub(channel).Synthesize(
        texts(), metadata=stage_metadata("tts", traceparent))]
    assert any(r.WhichOneof("event") == "audio" for r in audio)

    def first_hop(trace: list[ReceivedSpan], stage: str) -> ReceivedSpan | None:
        """The top of the stage server span's chain of parents, once it has all arrived."""
        servers = named(trace, RPC_SPANS[stage], STAGE_SERVICES[stage], SERVER)
        return ([*servers, *ancestors(servers[0], {s.span_id: s for s in trace})][-1] if servers else None)

    def arrived(spans):
        trace = in_trace(spans, trace_id)
        return named(trace, attr.SPAN_LLM_GENERATE) and named(trace, attr.SPAN_TTS_SYNTHESIZE) and all(
            (hop := first_hop(trace, stage)) is not None and hop.parent_id == parent_id for stage in ("llm", "tts"))

    trace = in_trace(await otlp_receiver.wait_for(arrived), trace_id)
    for stage in ("llm", "tts"):
        # The outside client's span is the parent of Serve's first hop (its gRPC proxy).
        assert first_hop(trace, stage).name.startswith("proxy_grpc_request")
        [generation_or_synthesis] = named(trace, attr.SPAN_LLM_GENERATE if stage == "llm" else attr.SPAN_TTS_SYNTHESIZE)
        assert generation_or_synthesis.service == STAGE_SERVICES[stage]
