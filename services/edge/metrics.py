"""Per-turn latency, measured at the edge on one monotonic clock.

A turn's timeline runs from the end of the caller's speech to the first agent sample sent to the
caller (TTFAT). Observers (the client event, tracing, Prometheus) read it; nothing here sends.
"""

from __future__ import annotations

from dataclasses import dataclass


def _ms(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else round((end - start) * 1000, 1)


@dataclass
class TurnTimeline:
    turn_id: int
    speech_end: float | None = None        # the caller's last speech sample reached the edge
    vad_stopped: float | None = None       # the ASR's end-of-speech event arrived
    asr_final: float | None = None         # the final transcript arrived
    llm_request: float | None = None       # the LLM request was sent
    llm_first_token: float | None = None
    first_sentence: float | None = None    # the first sentence or clause was complete
    tts_request: float | None = None       # ... and sent to TTS
    tts_first_audio: float | None = None
    first_audio_sent: float | None = None  # the first agent sample went to the caller
    interrupted: bool = False
    underruns: int = 0

    def to_event(self) -> dict:
        return {
            "type": "metrics", "turn_id": self.turn_id,
            "endpointing_ms": _ms(self.speech_end, self.vad_stopped),
            "asr_final_ms": _ms(self.vad_stopped, self.asr_final),
            "llm_ttft_ms": _ms(self.llm_request, self.llm_first_token),
            "first_sentence_ms": _ms(self.llm_request, self.first_sentence),
            "tts_ttfb_ms": _ms(self.tts_request, self.tts_first_audio),
            "ttfat_ms": _ms(self.speech_end, self.first_audio_sent),
            "interrupted": self.interrupted, "underruns": self.underruns,
        }
