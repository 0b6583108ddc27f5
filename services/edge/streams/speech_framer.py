"""Caller speech to the ASR in fewer, larger messages while no decision waits on its timing.

Every message on the ASR stream costs a hop through Serve's gRPC proxy and an actor call in the ASR
replica, whatever its size (docs/benchmarks.md, "Where the CPU goes at 50 callers"). In the middle
of an utterance, with the agent silent, nothing is decided on the next 40 ms of the caller's audio:
only the end of their speech matters. So loud frames are joined into messages of up to
`asr_speech_frame_ms`, and a quiet frame (under `asr_quiet_dbfs`: perhaps the pause that ends the
utterance) goes at once with what was held, so the ASR's VAD hears a pause as soon as it would
without the framer. While the agent speaks every frame goes at once: a barge-in's onset is timed by
the ASR. A line noisier than `asr_quiet_dbfs` hears its pauses up to one message late.
"""

from __future__ import annotations

from services.common.audio import pcm_rms
from services.edge.streams.speech_gate import joined


class SpeechFramer:
    """One call's joiner of caller speech (PCM s16le chunks with their call offsets)."""

    def __init__(self, max_ms: int, quiet_dbfs: float, sample_rate: int):
        self._max_s = max_ms / 1000
        self._quiet_rms = 10 ** (quiet_dbfs / 20)  # on the float scale, as pcm_rms
        self._rate = sample_rate
        self._held: list[tuple[float, bytes]] = []
        self._held_s = 0.0

    def push(self, chunks: list[tuple[float, bytes]], hold: bool) -> list[tuple[float, bytes]]:
        """The chunks to send now. `hold`: the caller is mid-utterance and nothing waits on the
        timing of their audio (no agent speech to barge in on)."""
        self._held += chunks
        self._held_s += sum(len(pcm) for _, pcm in chunks) / 2 / self._rate
        if not self._held:
            return []
        if hold and chunks and self._held_s < self._max_s and pcm_rms(chunks[-1][1]) >= self._quiet_rms:
            return []
        out = joined(self._held, self._rate)
        self._held, self._held_s = [], 0.0
        return out
