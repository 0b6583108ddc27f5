"""Typed configuration of the edge (the `args` of the `edge` Serve application)."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, model_validator

from services.common.config import Config
from services.common.rpc import DEFAULT_GRPC_ADDRESS
from services.edge.record.config import PostCallConfig
from services.edge.tools.config import ToolsConfig, ToolSpec, check_unique


class SpeechGateConfig(Config):
    """Caller silence held back from the ASR stream (services/edge/streams/speech_gate.py)."""

    enabled: bool = True
    # A frame whose RMS reaches this level (dB below full scale) opens the gate.
    open_dbfs: float = Field(-55.0, ge=-90, le=-10)
    # Audio sent ahead of the opening frame, so the ASR hears every speech onset whole.
    preroll_ms: int = Field(600, ge=0, le=2000)
    # Quiet time after the ASR's utterance ended (and the last loud frame) before it closes again.
    hangover_ms: int = Field(1000, ge=100, le=10_000)


class StagesConfig(Config):
    # Serve's gRPC proxy; with proxy_location EveryNode the local node's proxy is on localhost.
    grpc_address: str = DEFAULT_GRPC_ADDRESS
    asr_application: str = "asr"
    llm_application: str = "llm"
    tts_application: str = "tts"
    moshi_application: str = "moshi"
    # Caller audio is batched into frames of this size for the ASR stream (cost is per message).
    asr_frame_ms: int = Field(40, ge=20, le=500)
    speech_gate: SpeechGateConfig = SpeechGateConfig()


# Words that acknowledge without taking the turn, per language (ASR language codes). Whisper's
# usual hearings of them ("Amen" for "mm-hmm") are listed too.
DEFAULT_BACKCHANNELS = {
    # "amen" and "and": how Whisper often writes a "mm-hmm" ("Amen.", "And M-M-M-M").
    "en": ["mm-hmm", "mhm", "mm", "hmm", "uh-huh", "uh huh", "yeah", "yep", "yes", "right", "okay", "ok", "sure",
           "i see", "got it", "alright", "cool", "nice", "great", "amen", "and", "aha", "ah", "oh", "uh", "um"],
    "fr": ["oui", "ouais", "d'accord", "ok", "mm", "hmm", "ah", "oh", "voilà", "bien sûr", "exactement"],
    "de": ["ja", "jaja", "genau", "okay", "ok", "mhm", "mm", "hmm", "aha", "ach so", "stimmt", "richtig"],
    "es": ["sí", "vale", "claro", "ya", "ajá", "mm", "hmm", "ok", "bueno", "exacto"],
}


class EndOfTurnConfig(Config):
    """When the caller's turn is over: after a fixed silence, or when a turn model says so."""

    # "silence": the VAD's min_silence_ms ends the turn. "smart_turn": after short_silence_ms the
    # Smart Turn model (audio) is asked; below `threshold` the agent waits, up to max_silence_ms.
    kind: Literal["silence", "smart_turn"] = "silence"
    model: str = ""  # smart_turn: the model directory (or .onnx file), e.g. models/cpu/smart-turn-v3.2
    short_silence_ms: int = Field(200, ge=100, le=3000)
    max_silence_ms: int = Field(1500, ge=100, le=10_000)
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    threads: int = Field(1, ge=1, le=16)  # onnxruntime intra-op threads per edge replica

    @model_validator(mode="after")
    def _consistent(self) -> EndOfTurnConfig:
        if self.kind == "smart_turn" and not self.model:
            raise ValueError("end_of_turn.kind smart_turn needs end_of_turn.model (`parley models cpu` fetches it)")
        if self.max_silence_ms < self.short_silence_ms:
            raise ValueError("end_of_turn.max_silence_ms must not be below short_silence_ms")
        return self


class PreemptiveConfig(Config):
    """A reply started before the caller's turn is confirmed, its audio held until it is."""

    enabled: bool = True
    # The ASR's VAD ends an utterance after this much silence; its final starts the reply (LLM and
    # TTS), held until the turn is confirmed (min_silence_ms, or the end-of-turn model). Values
    # above the turn's own silence have no effect. 100 ms takes ~40 ms off TTFAT, but the VAD then
    # also ends utterances at a caller's comma pauses (docs/benchmarks.md, TTFAT levers): 150.
    silence_ms: int = Field(150, ge=50, le=3000)
    # Sooner still: the ASR decodes the utterance so far at a pause this long inside it (0: off),
    # without ending the utterance, and the reply starts on that. If the caller goes on, the reply
    # is thrown away; if not, the utterance's final reuses the decode. Below silence_ms to count.
    pause_ms: int = Field(64, ge=0, le=3000)


class SegmentsConfig(Config):
    """How the reply's text is cut into segments for TTS: a short first clause (first audio
    early), then whole sentences (prosody)."""

    # The first segment ends at a clause break (comma, semicolon, colon, dash) once it has
    # first_min_words words ("Sure," is one), or after first_max_words words, whichever comes first.
    first_min_words: int = Field(1, ge=1, le=50)
    first_max_words: int = Field(6, ge=1, le=100)
    # Later segments are sentences; a clause break cuts one only after this many words.
    min_clause_words: int = Field(12, ge=1, le=200)

    @model_validator(mode="after")
    def _bounds(self) -> SegmentsConfig:
        if self.first_max_words < self.first_min_words:
            raise ValueError("segments.first_max_words must not be below first_min_words")
        return self


class TurnTakingConfig(Config):
    # Silence that ends the caller's turn (the ASR's VAD waits this long) with silence endpointing.
    min_silence_ms: int = Field(300, ge=100, le=3000)
    end_of_turn: EndOfTurnConfig = EndOfTurnConfig()
    preemptive: PreemptiveConfig = PreemptiveConfig()
    # Caller speech over the agent this long pauses it while its words are awaited; shorter
    # speech (coughs, "mhm") is not a barge-in. Off: only a final transcript with words interrupts.
    barge_in: bool = True
    barge_in_min_speech_ms: int = Field(300, ge=0, le=3000)
    # Speech over the agent this long interrupts whatever its words.
    barge_in_long_speech_ms: int = Field(1500, ge=100, le=10_000)
    # A paused agent resumes where it stopped when the speech ends without words (noise) or with
    # a backchannel, or when no transcript came this long after the speech stopped.
    false_interruption_timeout_ms: int = Field(2000, ge=100, le=10_000)
    language: str = "en"  # backchannel list used when the ASR does not say the language
    backchannels: dict[str, list[str]] = DEFAULT_BACKCHANNELS
    backchannel_max_words: int = Field(4, ge=1, le=20)
    # A caller silent this long (no turn, the agent not speaking) is asked once whether they are
    # still there; after max_idle_s the agent says goodbye and ends the call. 0 = never.
    idle_reprompt_s: float = Field(0.0, ge=0)
    max_idle_s: float = Field(0.0, ge=0)
    idle_reprompt_text: str = "Are you still there?"
    idle_goodbye_text: str = "I haven't heard from you, so I'll end the call now. Goodbye!"

    @model_validator(mode="after")
    def _consistent(self) -> TurnTakingConfig:
        if self.barge_in_long_speech_ms < self.barge_in_min_speech_ms:
            raise ValueError("barge_in_long_speech_ms must not be below barge_in_min_speech_ms")
        if self.language not in self.backchannels:
            raise ValueError(f"turn_taking.language {self.language!r} has no backchannels list")
        if self.idle_reprompt_s and self.max_idle_s and self.max_idle_s <= self.idle_reprompt_s:
            raise ValueError("max_idle_s must be longer than idle_reprompt_s")
        return self


class PersonaConfig(Config):
    system_prompt: str = "You are a helpful, concise voice assistant. Answer in one or two short sentences."
    greeting: str = ""  # spoken when the call starts; empty = wait for the caller
    voice: str = ""  # empty = the TTS deployment's default
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(120, ge=1, le=2048)
    # Tools the agent may call (docs/tools.md); names unique.
    tools: Annotated[list[ToolSpec], AfterValidator(check_unique)] = Field([], max_length=64)
    # This persona's post-call record, instead of the edge's `post_call` (docs/tools.md).
    post_call: PostCallConfig | None = None


class HistoryConfig(Config):
    # Oldest turns are dropped to keep the prompt under this budget (~4 characters a token).
    max_context_tokens: int = Field(3000, ge=200)


class AuthConfig(Config):
    # Name of the environment variable holding the HS256 secret for caller tokens.
    secret_env: str = "PARLEY_EDGE_SECRET"


class ResilienceConfig(Config):
    """How the edge rides out a stage replica dying or stalling under a live call."""

    # Re-opens of one stage RPC allowed within the window, with backoff doubling from retry_backoff_ms.
    retry_attempts: int = Field(4, ge=0, le=20)
    # Of those, re-opens after a missed deadline (a hung replica; the new RPC may reach a live
    # one). Each follows a whole deadline of silence, so a silent stage is given up after
    # (timeout_retries + 1) deadlines.
    timeout_retries: int = Field(1, ge=0, le=20)
    retry_window_s: float = Field(30.0, gt=0)
    retry_backoff_ms: int = Field(200, ge=0, le=10_000)
    # A slow stage is handled like a dead one. An LLM RPC whose next delta, a TTS stream whose
    # audio for the text sent, or an ASR stream whose final after the end of speech is this late
    # has failed.
    response_timeout_s: float = Field(15.0, gt=0)
    # Streams that answer continuously (ASR progress, Moshi frames) have failed after this long
    # without a word while audio is waiting on them.
    stall_timeout_s: float = Field(5.0, gt=0)
    # Caller audio kept to replay into a re-opened ASR stream: the utterance in progress, at most this.
    asr_replay_max_s: float = Field(30.0, ge=1)
    asr_preroll_s: float = Field(0.5, ge=0, le=5)
    # Said when a stage stays unavailable (synthesized ahead, while TTS is up); empty = silence.
    fallback_text: str = "Sorry, I'm having a technical problem. Please bear with me."


class WebhookDispatchRule(Config):
    """Send the agent into a room when LiveKit reports `event` for a room (and caller) that matches."""

    event: Literal["room_started", "participant_joined"] = "participant_joined"
    room_prefix: str = ""  # rooms whose name starts with this ("" = every room)
    identity_prefix: str = ""  # participant_joined: callers whose identity starts with this


class LiveKitConfig(Config):
    """The edge as a LiveKit agent participant (docs/livekit.md). Off unless `enabled`."""

    enabled: bool = False
    # The LiveKit server's URL; $url_env overrides it when set (per-cluster deployments).
    url: str = "ws://127.0.0.1:7880"
    url_env: str = "LIVEKIT_URL"
    # Names of the environment variables that hold the API key and secret (never the values).
    api_key_env: str = "LIVEKIT_API_KEY"
    api_secret_env: str = "LIVEKIT_API_SECRET"
    agent_identity: str = "parley-agent"
    agent_name: str = "Parley"
    # Whose microphone to listen to: this identity, or "" for the first audio track of anyone else.
    caller_identity: str = ""
    # Caller audio arrives at 48 kHz and is resampled to this rate for the ASR.
    asr_sample_rate: int = Field(16_000, ge=8_000, le=48_000)
    # The agent track is published at the TTS rate (the SDK's source resamples to 48 kHz Opus).
    output_sample_rate: int = Field(24_000, ge=8_000, le=48_000)
    join_timeout_s: float = Field(10.0, gt=0)
    # How long the agent waits in a room for a caller's audio track before it leaves.
    caller_wait_s: float = Field(30.0, gt=0)
    # Agent audio the SDK may hold ahead of the network; barge-in drops it (clear_queue).
    source_queue_ms: int = Field(200, ge=20, le=2000)
    # When the caller's mic track ends (republished, or the caller reconnecting), how long to wait
    # for a new one before the call ends. The caller leaving the room ends it at once.
    caller_track_grace_s: float = Field(5.0, ge=0, le=60)
    # Replica shutdown (downscaling): calls in progress get this long to end before the agent
    # leaves them; keep it under the deployment's graceful_shutdown_timeout_s.
    drain_timeout_s: float = Field(600.0, ge=0)
    webhook_dispatch: list[WebhookDispatchRule] = []
    # Explicit dispatch, the LiveKit way: join rooms with an agent dispatch for this agent name (a
    # RoomAgentDispatch in a participant's token, or the AgentDispatchService API), found when a
    # room_started or participant_joined webhook comes. "" = off.
    dispatch_agent_name: str = Field("", max_length=128)
    # The server's HTTP API (dispatches, SIP transfer); "" = `url` with http(s):// for ws(s)://.
    api_url: str = ""

    @model_validator(mode="after")
    def _url_scheme(self) -> LiveKitConfig:
        if not self.url.startswith(("ws://", "wss://", "http://", "https://")):
            raise ValueError(f"livekit.url must be a ws(s):// or http(s):// URL, got {self.url!r}")
        return self


class TwilioConfig(Config):
    """Phone calls through Twilio (docs/resilience-and-security.md, "Twilio").

    With the account's auth token in $auth_token_env the edge answers Twilio's incoming-call
    webhook (`POST /v1/twilio/voice`) and, by default, refuses any Media Streams upgrade that
    Twilio did not sign. Without it the webhook is off (404) and `/v1/twilio/media` takes any
    caller holding an edge token, as a bridge other than Twilio would need.
    """

    # Name of the environment variable holding the account's auth token (never the value).
    auth_token_env: str = "TWILIO_AUTH_TOKEN"
    # The base URL Twilio calls, as set on the phone number (https://voice.example.com). Twilio
    # signs that URL, which the edge behind a load balancer cannot see; the TwiML's stream URL is
    # its wss:// form. Empty: rebuilt from each request (X-Forwarded-Proto/Host aware).
    public_url: str = ""
    # Media Streams upgrades must carry a valid X-Twilio-Signature. None (default): whenever the
    # auth token is set; True: the edge refuses to start without the token; False: not checked
    # (the edge token still is). The voice webhook always checks: it hands out edge tokens.
    require_signature: bool | None = None
    # Lifetime of the edge token the webhook mints for one call: Twilio opens the stream at once.
    stream_token_ttl_s: float = Field(60.0, ge=5, le=3600)
    # Twilio's REST API (the `transfer` tool updates the live call there); a stand-in in tests.
    api_base_url: str = "https://api.twilio.com"
    # When the edge is at max_conversations, the voice webhook turns the call away at once: empty
    # (default) answers <Reject reason="busy"/> (the caller hears a busy tone, nothing is billed);
    # a text answers <Say> with it, then <Hangup/>.
    busy_message: str = Field("", max_length=500)
    # Where Twilio posts the media stream's status (stream-started/-stopped/-error), given as the
    # <Stream statusCallback>. Empty: none. `/v1/twilio/status` on this edge counts the outcomes
    # (and may also be set as the number's call status callback URL).
    status_callback_url: str = ""

    @model_validator(mode="after")
    def _public_url_is_a_base(self) -> TwilioConfig:
        if self.public_url:
            parts = urlsplit(self.public_url)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
                raise ValueError("twilio.public_url must be an http(s):// base URL without query or fragment, "
                                 f"got {self.public_url!r}")
        if self.status_callback_url and urlsplit(self.status_callback_url).scheme not in ("http", "https"):
            raise ValueError(f"twilio.status_callback_url must be an http(s):// URL, got {self.status_callback_url!r}")
        return self


class DirectMediaConfig(Config):
    """A media endpoint of the edge replica's own (docs/websocket-protocol.md, "Direct media"): the same
    conversation protocol, caller -> replica without Serve's HTTP proxy relaying every frame. The Serve
    route `POST /v1/calls` admits a call and answers this replica's address; the endpoint checks the
    call token again and spends it (one token, one direct call). Off unless `enabled`."""

    enabled: bool = False
    # The interface the endpoint listens on: 127.0.0.1 (this machine only) or 0.0.0.0 (a pod's network).
    bind_host: str = "127.0.0.1"
    # 0: a free port per replica (several replicas share a node); a fixed port for a pod's hostPort
    # or a Service's targetPort (then one edge replica per node or pod).
    port: int = Field(0, ge=0, le=65535)
    # What `POST /v1/calls` hands out: <scheme>://<host>:<port>/v1/conversation. Empty host: the node
    # IP Ray reports when bound to every interface (0.0.0.0, ::), else bind_host; port 0: the bound
    # port. Behind a TLS terminator (a sidecar, a per-pod ingress) set wss and its host and port.
    advertised_scheme: Literal["ws", "wss"] = "ws"
    advertised_host: str = Field("", max_length=253)
    advertised_port: int = Field(0, ge=0, le=65535)
    # Replica shutdown (downscaling): direct calls get this long to end before the endpoint closes
    # them; keep it under the deployment's graceful_shutdown_timeout_s.
    drain_timeout_s: float = Field(600.0, ge=0)

    @model_validator(mode="after")
    def _addresses(self) -> DirectMediaConfig:
        for name in ("bind_host", "advertised_host"):
            value = getattr(self, name)
            if any(char in value for char in "/?#@ ") or (name == "bind_host" and not value):
                raise ValueError(f"direct_media.{name} must be a host name or IP address, got {value!r}")
        return self


class DuplexConfig(Config):
    # How calls are answered unless the caller's signed token says otherwise (claim `mode`):
    # "cascade" (ASR -> LLM -> TTS) or "duplex" (Moshi listens and speaks at once).
    default_mode: Literal["cascade", "duplex"] = "cascade"
    # When every duplex slot is taken: answer with the cascade instead; queue (retry for a slot for
    # up to queue_timeout_s, then close 4503); or refuse at once (close 4503).
    when_full: Literal["cascade", "queue", "refuse"] = "cascade"
    queue_timeout_s: float = Field(10.0, gt=0, le=120)
    # Moshi answers in 80 ms frames that arrive in bursts: its audio starts this late (a jitter
    # buffer) and goes out at most playout_lead_ms ahead, so the caller gets steady 20 ms frames.
    jitter_buffer_ms: int = Field(80, ge=0, le=1000)
    playout_lead_ms: int = Field(40, ge=0, le=1000)


class EdgeConfig(Config):
    stages: StagesConfig = StagesConfig()
    turn_taking: TurnTakingConfig = TurnTakingConfig()
    segments: SegmentsConfig = SegmentsConfig()
    persona: PersonaConfig = PersonaConfig()
    history: HistoryConfig = HistoryConfig()
    duplex: DuplexConfig = DuplexConfig()
    auth: AuthConfig = AuthConfig()
    resilience: ResilienceConfig = ResilienceConfig()
    livekit: LiveKitConfig = LiveKitConfig()
    twilio: TwilioConfig = TwilioConfig()
    direct_media: DirectMediaConfig = DirectMediaConfig()
    tools: ToolsConfig = ToolsConfig()
    # The post-call record (off unless a url is set; a persona's own `post_call` wins).
    post_call: PostCallConfig = PostCallConfig()
    # Admission: live conversations per edge replica; more are refused with close code 4503.
    max_conversations: int = Field(100, ge=1)
    # A call is ended (close code 4408) after this long: a forgotten client or a stuck line would
    # otherwise hold a conversation slot and its stage streams for ever.
    max_call_s: float = Field(4 * 3600.0, gt=0)
    max_frame_ms: int = Field(1000, ge=20, le=5000)
    # JSON control messages (WebSocket `start`, `stop`) over this many bytes close with 4413.
    max_control_bytes: int = Field(64 * 1024, ge=1024, le=1024 * 1024)
    start_timeout_s: float = Field(10.0, gt=0)
    # Playout: agent audio goes out in frames of this size, at most this far ahead of real time.
    playout_frame_ms: int = Field(20, ge=10, le=100)
    playout_lead_ms: int = Field(100, ge=0, le=1000)

    @model_validator(mode="after")
    def _tool_hosts(self) -> EdgeConfig:
        from services.edge.record.config import check_host
        from services.edge.tools.toolset import check_hosts

        check_hosts(self.persona.tools, self.tools.allowed_hosts, from_token=False)
        for record in (self.post_call, self.persona.post_call):
            check_host(record, self.tools.allowed_hosts, from_token=False)
        return self
