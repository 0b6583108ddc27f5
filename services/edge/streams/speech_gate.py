"""The edge's speech gate: caller silence is not streamed to the ASR stage.

Every message on the ASR stream costs a hop through Serve's gRPC proxy and a turn of the ASR
replica's VAD, even when the caller says nothing; an idle call is mostly silence. The gate holds
quiet audio back and opens on the first frame loud enough to be speech, sending the held pre-roll
(`preroll_ms`) ahead of it so the ASR hears the onset, and its own VAD its lead-in, as if nothing
had been held (600 ms and -55 dBFS by default: 300 ms and -50 dBFS changed one transcript of the
real-speech test set). It closes again only once the ASR has finished the utterance (its VAD saw the
trailing silence it needs to end it) and the caller has stayed quiet for `hangover_ms` since.

The test is frame energy, not a model: it must be cheap (it runs on every caller frame of every
call) and it must never miss speech the ASR would hear, so it errs on the loud side; noise above
the threshold keeps the gate open, which costs what the call cost without a gate.
"""

from __future__ import annotations

from collections import deque

from services.common.audio import pcm_rms
from services.edge.config import SpeechGateConfig


class SpeechGate:
    """One call's gate over its caller audio (PCM s16le), frame by frame in arrival order."""

    def __init__(self, config: SpeechGateConfig, sample_rate: int):
        self._rate = sample_rate
        self._open_rms = 10 ** (config.open_dbfs / 20)  # on the float scale, as pcm_rms
        self._preroll_s = config.preroll_ms / 1000
        self._hangover_s = config.hangover_ms / 1000
        self._held: deque[tuple[float, bytes]] = deque()  # (call offset, audio) while closed
        self._held_s = 0.0
        self._quiet_s = 0.0  # since the last loud frame, once the ASR is not in an utterance
        self.is_open = False
        self.openings = 0

    def loud(self, pcm: bytes) -> bool:
        """Whether a frame's RMS reaches the opening level."""
        return pcm_rms(pcm) >= self._open_rms

    def push(self, offset_s: float, pcm: bytes, asr_busy: bool) -> list[tuple[float, bytes]]:
        """The caller audio to send now for a frame at call offset `offset_s` (possibly none, or the
        pre-roll then the frame). `asr_busy`: the ASR has an utterance open (no final yet)."""
        duration = len(pcm) / 2 / self._rate
        loud = self.loud(pcm)
        if self.is_open:
            self._quiet_s = 0.0 if loud or asr_busy else self._quiet_s + duration
            if self._quiet_s < self._hangover_s:
                return [(offset_s, pcm)]
            self.is_open = False
        elif loud:
            self.is_open, self._quiet_s = True, 0.0
            self.openings += 1
            ahead, self._held, self._held_s = joined(list(self._held), self._rate), deque(), 0.0
            return [*ahead, (offset_s, pcm)]  # the pre-roll in one message, then the frame
        self._held.append((offset_s, pcm))
        self._held_s += duration
        while self._held and self._held_s - len(self._held[0][1]) / 2 / self._rate >= self._preroll_s:
            self._held_s -= len(self._held.popleft()[1]) / 2 / self._rate
        return []


def joined(chunks: list[tuple[float, bytes]], rate: int) -> list[tuple[float, bytes]]:
    """Contiguous chunks merged into one (fewer, larger messages); a gap starts a new one."""
    merged: list[tuple[float, bytearray]] = []
    end = None
    for offset, pcm in chunks:
        if merged and end is not None and abs(offset - end) < 0.5 / rate:
            merged[-1][1].extend(pcm)
        else:
            merged.append((offset, bytearray(pcm)))
        end = offset + len(pcm) / 2 / rate
    return [(offset, bytes(pcm)) for offset, pcm in merged]
