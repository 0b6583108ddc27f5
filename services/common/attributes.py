"""Every span name and span attribute name Parley's tracing uses, in one place.

OpenTelemetry semantic-convention names (gen_ai.*, rpc.*) where one exists; `parley.*` otherwise.
Durations named `*_ms` are milliseconds as floats, exactly as the edge's `metrics` event reports
them. Names marked CONTENT carry user text and are set only with PARLEY_TRACE_CONTENT=1.

The trace of one conversation (Serve's own spans in parentheses):

    (proxy_websocket_request, route_to_replica, replica_handle_request: the caller's WebSocket)
    conversation                                   edge, the whole call
      parley.v1.SpeechRecognition/Recognize        edge client span: the call's ASR stream
        (proxy_grpc_request, route_to_replica, replica_handle_request)
          parley.v1.SpeechRecognition/Recognize    asr replica server span
            asr.queue, asr.decode                  per decode: waiting for the engine worker, decoding
      turn                                         edge, from the end of the caller's speech
        endpointing, asr, llm, tts                 the turn's latency components (edge timeline)
        parley.v1.LanguageModel/Generate           edge client span: the turn's LLM RPC
          (Serve proxy and replica spans)
            parley.v1.LanguageModel/Generate       llm replica server span
              llm.generate                         the engine's generation
                llm.queue                          waiting in the engine's queue
        parley.v1.SpeechSynthesis/Synthesize       edge client span: the turn's TTS stream
          (Serve proxy and replica spans)
            parley.v1.SpeechSynthesis/Synthesize   tts replica server span
              tts.queue, tts.synthesize            per segment: waiting for the engine worker, synthesis

The edge replica's fallback line is synthesized once, for all its calls, in traces of its own:

    fallback_line                                  edge client span, linked to the conversation that asked
      (Serve proxy and replica spans)
        parley.v1.SpeechSynthesis/Synthesize       tts replica server span (tts.queue, tts.synthesize)
"""

from __future__ import annotations

# -- span names -----------------------------------------------------------------------------------

SPAN_CONVERSATION = "conversation"
SPAN_TURN = "turn"
# A turn's latency components, drawn from its timeline (services/common/timeline.py).
SPAN_ENDPOINTING = "endpointing"  # end of the caller's speech -> the ASR's end-of-speech event
SPAN_ASR = "asr"                  # end-of-speech event -> final transcript
SPAN_LLM = "llm"                  # LLM request sent -> first token
SPAN_TTS = "tts"                  # first text sent to TTS -> first audio back
# Stage RPCs: the edge's client spans and the replicas' server spans (OpenTelemetry RPC naming).
SPAN_RECOGNIZE = "parley.v1.SpeechRecognition/Recognize"
SPAN_GENERATE = "parley.v1.LanguageModel/Generate"
SPAN_SYNTHESIZE = "parley.v1.SpeechSynthesis/Synthesize"
SPAN_CONVERSE = "parley.v1.DuplexSpeech/Converse"
# Inside a stage replica.
SPAN_ASR_QUEUE = "asr.queue"            # a decode waiting for the replica's engine worker
SPAN_ASR_DECODE = "asr.decode"          # one partial or final decode
SPAN_LLM_GENERATE = "llm.generate"      # the engine's generation, request to last token
SPAN_LLM_QUEUE = "llm.queue"            # the request waiting in the engine's queue
SPAN_TTS_QUEUE = "tts.queue"            # a segment waiting for the replica's engine worker
SPAN_TTS_SYNTHESIZE = "tts.synthesize"  # one sentence or clause synthesized
SPAN_TOOL = "execute_tool"              # edge: one tool call, from its start to its result
# Edge, a trace of its own: synthesizing the replica's fallback line (shared by its calls, linked
# to the conversation that asked for it); its TTS RPC's spans are under it.
SPAN_FALLBACK_LINE = "fallback_line"

# -- OpenTelemetry semantic conventions -------------------------------------------------------------

RPC_SYSTEM = "rpc.system"
RPC_SERVICE = "rpc.service"
RPC_METHOD = "rpc.method"
RPC_GRPC_STATUS_CODE = "rpc.grpc.status_code"

GEN_AI_CONVERSATION_ID = "gen_ai.conversation.id"
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P = "gen_ai.request.top_p"
GEN_AI_REQUEST_TOP_K = "gen_ai.request.top_k"
GEN_AI_REQUEST_SEED = "gen_ai.request.seed"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK = "gen_ai.response.time_to_first_chunk"  # seconds
GEN_AI_INPUT_MESSAGES = "gen_ai.input.messages"    # CONTENT (JSON)
GEN_AI_OUTPUT_MESSAGES = "gen_ai.output.messages"  # CONTENT (JSON)
GEN_AI_TOOL_NAME = "gen_ai.tool.name"
GEN_AI_TOOL_CALL_ID = "gen_ai.tool.call.id"
GEN_AI_TOOL_CALL_ARGUMENTS = "gen_ai.tool.call.arguments"  # CONTENT (JSON)
GEN_AI_TOOL_CALL_RESULT = "gen_ai.tool.call.result"        # CONTENT

# -- parley: the edge -----------------------------------------------------------------------------

TRANSPORT = "parley.transport"                 # websocket | twilio
TURN_ID = "parley.turn.id"
TURN_KIND = "parley.turn.kind"                 # greeting | reply
TURN_INTERRUPTED = "parley.turn.interrupted"   # cut by barge-in
TURN_UNDERRUNS = "parley.turn.underruns"
TURN_UNFINISHED = "parley.turn.unfinished"     # the call ended before the turn did
TURN_PREEMPTIVE = "parley.turn.preemptive"     # started before the caller's turn was confirmed
TURN_DISCARDED = "parley.turn.discarded"       # a preemptive reply thrown away (the caller went on)
TURN_USER_TEXT = "parley.turn.user_text"       # CONTENT: the caller's final transcript
TOOL_OUTCOME = "parley.tool.outcome"           # ok | error | cancelled
# The turn's latency components are `parley.latency.<component>_ms`, named by the turn timeline
# (services/common/timeline.py, Component.attribute): the `metrics` event's fields, same values.

# -- parley: the stages (both sides of an RPC) ------------------------------------------------------

STAGE = "parley.stage"                          # asr | llm | tts | moshi
RPC_CANCELLED = "parley.rpc.cancelled"          # the caller cancelled or hung up (e.g. a barge-in)
REPLICA_ID = "parley.replica.id"                # the Serve replica that served the stream
MODEL = "parley.model"                          # the ASR or TTS model (the LLM's: gen_ai.request.model)
QUEUE_WAIT_MS = "parley.queue.wait_ms"          # waiting for the replica's engine worker
ENGINE_ACTIVE = "parley.engine.active"          # requests already in the engine when this one came
AUDIO_SAMPLE_RATE = "parley.audio.sample_rate"  # Hz, of the stream's audio
AUDIO_SECONDS = "parley.audio.seconds"          # audio decoded, synthesized or streamed
UTTERANCE_ID = "parley.utterance.id"
ASR_FINAL = "parley.asr.final"                  # a final decode (else a partial or a pause's)
ASR_PAUSE = "parley.asr.pause"                  # a decode at a pause inside the utterance (its final may reuse it)
ASR_UTTERANCES = "parley.asr.utterances"
ASR_TRANSCRIPT = "parley.asr.transcript"        # CONTENT
LLM_REQUEST_ID = "parley.llm.request_id"
LLM_MESSAGES = "parley.llm.messages"            # number of chat messages in the request
TTS_VOICE = "parley.tts.voice"
TTS_SEGMENT_ID = "parley.tts.segment_id"
TTS_SEGMENTS = "parley.tts.segments"
TTS_CHARACTERS = "parley.tts.characters"        # length of the segment's text
TTS_TEXT = "parley.tts.text"                    # CONTENT
MOSHI_SLOT = "parley.moshi.slot"                # the replica slot the duplex stream held
MOSHI_FRAMES_OUT = "parley.moshi.frames_out"    # 80 ms frames answered
MOSHI_DROPPED_FRAMES = "parley.moshi.dropped_frames"  # frames dropped: the client ran too far ahead

# Every name that can carry user text (tests check that none appears unless content is enabled).
CONTENT = frozenset({GEN_AI_INPUT_MESSAGES, GEN_AI_OUTPUT_MESSAGES, TURN_USER_TEXT, ASR_TRANSCRIPT, TTS_TEXT})


def rpc(span_name: str) -> dict[str, str]:
    """rpc.* attributes of a stage RPC span named `service/method`."""
    service, method = span_name.rsplit("/", 1)
    return {RPC_SYSTEM: "grpc", RPC_SERVICE: service, RPC_METHOD: method}
