"""Caller speech over the agent: a real barge-in, a backchannel, or noise.

The decision has three inputs, each arriving at its own time: how long the caller has spoken
over the agent (VAD, frame by frame), the words of a partial or final transcript, and the end of
that speech. `InterruptPolicy` turns each into a verdict; the cascade acts on it (pause, resume,
interrupt, ignore). A backchannel ("mm-hmm", "yeah", "right") neither interrupts the agent nor
becomes a caller turn; neither does noise, which leaves no words at all.
"""

from __future__ import annotations

import enum
import re

from services.edge.config import TurnTakingConfig

# Letters (any script), digits and apostrophes make words; hyphens split "mm-hmm" into two.
_WORD = re.compile(r"[\w']+")
# A hum: "m", "mm", "hmm", "mhm"... in any language. Whisper writes a long one as many
# ("M-M-M-M-M"), so a run of hums counts as one word.
_HUM = re.compile(r"h*m+(?:h+m*)*")


class Verdict(enum.Enum):
    """What caller speech over the agent amounts to, so far."""

    WAIT = "wait"  # not enough to tell yet: the agent goes on
    PAUSE = "pause"  # enough speech that the agent stops talking while the words are awaited
    INTERRUPT = "interrupt"  # a real barge-in: the agent's turn ends
    IGNORE = "ignore"  # a backchannel or noise: the agent goes on (or resumes)


def words_of(text: str) -> list[str]:
    """Lower-case words, punctuation dropped ("Mm-hmm." -> ["mm", "hmm"])."""
    return _WORD.findall(text.lower())


class BackchannelWords:
    """The configured backchannel phrases of one language, as a set of words."""

    def __init__(self, phrases: list[str], max_words: int):
        self.words = {word for phrase in phrases for word in words_of(phrase)}
        self.max_words = max_words

    def matches(self, text: str) -> bool:
        """True for a short utterance made only of backchannel words and hums (and for no words at all)."""
        words = words_of(text)
        hums = [bool(_HUM.fullmatch(word)) for word in words]
        words = [word for i, word in enumerate(words) if not (hums[i] and i and hums[i - 1])]
        return len(words) <= self.max_words and all(word in self.words or _HUM.fullmatch(word) for word in words)


class InterruptPolicy:
    """Whether caller speech over an agent turn (thinking or speaking) interrupts it."""

    def __init__(self, settings: TurnTakingConfig):
        self._enabled = settings.barge_in
        self._pause_s = settings.barge_in_min_speech_ms / 1000
        self._long_s = settings.barge_in_long_speech_ms / 1000
        self._default_language = settings.language
        self._languages = {lang: BackchannelWords(phrases, settings.backchannel_max_words)
                           for lang, phrases in settings.backchannels.items()}

    def backchannel(self, text: str, language: str = "") -> bool:
        """Is `text` a backchannel in `language` (the config's language when unknown)?"""
        words = self._languages.get(language or self._default_language) or self._languages.get(self._default_language)
        if words is None:
            return not words_of(text)  # no list for the language: only silence is a backchannel
        return words.matches(text)

    def on_speech(self, speech_s: float, agent_heard: bool = True) -> Verdict:
        """The caller has been speaking over the agent turn for `speech_s` (VAD). A reply the
        caller has not heard yet (`agent_heard` False: still thinking) is held at once: the
        caller is going on after a pause, and holding it costs them nothing; their words then
        decide, as for a barge-in."""
        if not self._enabled:
            return Verdict.WAIT
        if speech_s >= self._long_s:
            return Verdict.INTERRUPT  # long enough to be a turn, whatever its words turn out to be
        return Verdict.PAUSE if speech_s >= self._pause_s or not agent_heard else Verdict.WAIT

    def on_partial(self, text: str, language: str = "", speech_s: float = 0.0) -> Verdict:
        """A partial transcript of speech over the agent: interrupt as soon as real words come,
        once the speech is long enough to have paused the agent (partials of short sounds are
        unreliable: Whisper hears a "mm-hmm" as "Amen")."""
        if not self._enabled or speech_s < self._pause_s or self.backchannel(text, language):
            return Verdict.WAIT
        return Verdict.INTERRUPT

    def on_final(self, text: str, language: str = "") -> Verdict:
        """A final transcript arrived while the agent has a turn: answer it, or let the agent go on?"""
        return Verdict.IGNORE if self.backchannel(text, language) else Verdict.INTERRUPT
