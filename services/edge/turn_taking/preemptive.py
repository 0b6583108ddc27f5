"""The preemptive reply: started when the caller pauses, before their turn is confirmed.

At most one per call, held (its events and audio wait) until the turn is confirmed. It is played
when the confirmed turn's words are the ones it answers, and thrown away, its LLM and TTS RPCs
cancelled so the engines stop, when the caller goes on (speech resumes) or the words differ.
What the thrown-away replies cost in engine work is counted, for Prometheus at once and for the
`metrics` event of the next turn the caller hears.
"""

from __future__ import annotations

from services.common import metrics
from services.common.timeline import TurnTimeline
from services.edge.turn import Turn
from services.edge.turn_taking.interrupt import words_of


def same_words(a: str, b: str) -> bool:
    """Whether two transcripts say the same words (case and punctuation aside)."""
    return words_of(a) == words_of(b)


class PreemptiveReply:
    """One call's held reply and its tallies."""

    def __init__(self):
        self.turn: Turn | None = None
        self.text = ""  # the caller's words it answers
        self.confirmed = self.discarded = 0
        self._waste = (0, 0, 0.0)  # discarded replies, LLM tokens, TTS seconds not yet reported

    def answers(self, text: str) -> bool:
        """A reply is held for exactly these words."""
        return self.turn is not None and same_words(self.text, text)

    def hold(self, turn: Turn, text: str) -> None:
        self.turn, self.text = turn, text

    def confirm(self, text: str) -> Turn | None:
        """The caller's turn is `text`: the held reply if it answers exactly that (it is no longer held here)."""
        if not self.answers(text):
            return None
        turn, self.turn = self.turn, None
        self.confirmed += 1
        turn.timeline.preemptive = True
        metrics.record_preemptive(True)
        return turn

    def discard(self) -> Turn | None:
        """Throw the held reply away (its task and RPCs are cancelled); returns it, if there was one."""
        turn, self.turn = self.turn, None
        if turn is None:
            return None
        turn.discard()
        self.discarded += 1
        count, tokens, seconds = self._waste
        self._waste = (count + 1, tokens + turn.llm_tokens, seconds + turn.tts_audio_s)
        metrics.record_preemptive(False, turn.llm_tokens, turn.tts_audio_s)
        return turn

    def charge(self, timeline: TurnTimeline) -> None:
        """Report the replies discarded since the last reported turn in this turn's timeline."""
        timeline.discarded_replies, timeline.discarded_llm_tokens, timeline.discarded_tts_s = self._waste
        self._waste = (0, 0, 0.0)
