"""The turn timeline: per-turn latency, measured at the edge on one monotonic clock, and the one
table of its components that every reader uses.

A turn's timeline runs from the end of the caller's speech to the first agent sample sent to the
caller (TTFAT). The client `metrics` event, the `turn` span's attributes and child spans, the
Prometheus histograms and `parley call`'s table are all built from `COMPONENTS`; nothing else
names a latency component.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common import attributes as attr


@dataclass(frozen=True)
class Component:
    """One latency component of a turn: the interval between two timeline marks."""

    name: str  # `metrics` event field `<name>_ms`, histogram `parley_<name>_seconds`
    start: str  # TurnTimeline field where it starts
    end: str  # ... and ends
    description: str
    span: str | None = None  # child span of `turn` drawn for it, if any

    @property
    def event_field(self) -> str:
        return f"{self.name}_ms"

    @property
    def attribute(self) -> str:
        """The `turn` span attribute carrying the same value as the event field."""
        return f"parley.latency.{self.event_field}"


# In the order a client's table shows them.
COMPONENTS: tuple[Component, ...] = (
    Component("endpointing", "speech_end", "vad_stopped",
              "end of the caller's speech to the ASR's end-of-speech event", attr.SPAN_ENDPOINTING),
    Component("asr_final", "vad_stopped", "asr_final", "ASR end-of-speech event to the final transcript",
              attr.SPAN_ASR),
    Component("turn_confirm", "asr_final", "turn_confirmed",
              "final transcript to the end of the caller's turn confirmed (a preemptive reply is held meanwhile)"),
    Component("llm_ttft", "llm_request", "llm_first_token", "LLM request sent to its first token", attr.SPAN_LLM),
    Component("first_sentence", "llm_request", "first_sentence",
              "LLM request sent to the first complete sentence or clause"),
    Component("tts_ttfb", "tts_request", "tts_first_audio", "TTS request sent to its first audio", attr.SPAN_TTS),
    Component("ttfat", "speech_end", "first_audio_sent",
              "time to first agent audio: end of the caller's speech to the first agent sample sent"),
)


@dataclass
class TurnTimeline:
    """When each step of one agent turn happened (time.monotonic() seconds; None: not reached)."""

    turn_id: int
    speech_end: float | None = None        # the caller's last speech sample reached the edge
    vad_stopped: float | None = None       # the ASR's end-of-speech event arrived
    asr_final: float | None = None         # the final transcript arrived
    turn_confirmed: float | None = None    # the caller's turn was confirmed over
    llm_request: float | None = None       # the LLM request was sent
    llm_first_token: float | None = None
    first_sentence: float | None = None    # the first sentence or clause was complete
    tts_request: float | None = None       # ... and sent to TTS
    tts_first_audio: float | None = None
    first_audio_sent: float | None = None  # the first agent sample went to the caller
    interrupted: bool = False
    underruns: int = 0
    preemptive: bool = False  # the reply was started before the caller's turn was confirmed
    # Preemptive replies thrown away (the caller went on) since the previous reported turn, and
    # their engine work: LLM tokens generated and TTS audio synthesized for nobody.
    discarded_replies: int = 0
    discarded_llm_tokens: int = 0
    discarded_tts_s: float = 0.0

    def seconds(self, component: Component) -> float | None:
        """The component's duration; None when the turn did not reach both ends (or they are reversed)."""
        start, end = getattr(self, component.start), getattr(self, component.end)
        if start is None or end is None or end < start:
            return None
        return end - start

    def latencies_ms(self) -> dict[str, float | None]:
        """Every component in milliseconds, keyed by its event field."""
        result = {}
        for component in COMPONENTS:
            start, end = getattr(self, component.start), getattr(self, component.end)
            result[component.event_field] = None if start is None or end is None else round((end - start) * 1000, 1)
        return result

    def to_event(self) -> dict:
        """The client `metrics` event's fields (services/edge/events.py sends it)."""
        return {"type": "metrics", "turn_id": self.turn_id, **self.latencies_ms(),
                "interrupted": self.interrupted, "underruns": self.underruns, "preemptive": self.preemptive,
                "discarded_replies": self.discarded_replies, "discarded_llm_tokens": self.discarded_llm_tokens,
                "discarded_tts_s": round(self.discarded_tts_s, 3)}
