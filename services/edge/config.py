"""Typed configuration of the edge (the `args` of the `edge` Serve application)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from services.common.config import Config
from services.common.rpc import DEFAULT_GRPC_ADDRESS


class StagesConfig(Config):
    # Serve's gRPC proxy; with proxy_location EveryNode the local node's proxy is on localhost.
    grpc_address: str = DEFAULT_GRPC_ADDRESS
    asr_application: str = "asr"
    llm_application: str = "llm"
    tts_application: str = "tts"
    moshi_application: str = "moshi"
    # Caller audio is batched into frames of this size for the ASR stream (cost is per message).
    asr_frame_ms: int = Field(40, ge=20, le=500)


class TurnTakingConfig(Config):
    # Silence that ends the caller's turn (the ASR's VAD waits this long).
    min_silence_ms: int = Field(300, ge=100, le=3000)
    # Caller speech shorter than this during agent speech is not a barge-in (coughs, "mhm").
    barge_in: bool = True
    barge_in_min_speech_ms: int = Field(300, ge=0, le=3000)


class PersonaConfig(Config):
    system_prompt: str = "You are a helpful, concise voice assistant. Answer in one or two short sentences."
    greeting: str = ""  # spoken when the call starts; empty = wait for the caller
    voice: str = ""  # empty = the TTS deployment's default
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(120, ge=1, le=2048)


class HistoryConfig(Config):
    # Oldest turns are dropped to keep the prompt under this budget (~4 characters a token).
    max_context_tokens: int = Field(3000, ge=200)


class AuthConfig(Config):
    # Name of the environment variable holding the HS256 secret for caller tokens.
    secret_env: str = "PARLEY_EDGE_SECRET"


class DuplexConfig(Config):
    # How calls are answered unless the caller's signed token says otherwise (claim `mode`):
    # "cascade" (ASR -> LLM -> TTS) or "duplex" (Moshi listens and speaks at once).
    default_mode: Literal["cascade", "duplex"] = "cascade"
    # When every duplex slot is taken: answer with the cascade instead; queue (retry for a slot for
    # up to queue_timeout_s, then close 4503); or refuse at once (close 4503).
    when_full: Literal["cascade", "queue", "refuse"] = "cascade"
    queue_timeout_s: float = Field(10.0, gt=0, le=120)


class EdgeConfig(Config):
    stages: StagesConfig = StagesConfig()
    turn_taking: TurnTakingConfig = TurnTakingConfig()
    persona: PersonaConfig = PersonaConfig()
    history: HistoryConfig = HistoryConfig()
    duplex: DuplexConfig = DuplexConfig()
    auth: AuthConfig = AuthConfig()
    # Admission: live conversations per edge replica; more are refused with close code 4503.
    max_conversations: int = Field(100, ge=1)
    max_frame_ms: int = Field(1000, ge=20, le=5000)
    start_timeout_s: float = Field(10.0, gt=0)
    # Playout: agent audio goes out in frames of this size, at most this far ahead of real time.
    playout_frame_ms: int = Field(20, ge=10, le=100)
    playout_lead_ms: int = Field(100, ge=0, le=1000)
