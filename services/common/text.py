"""Split streaming text into sentences and clauses as soon as each one is complete.

Used by TTS to start speaking before the whole reply is in, and by the edge to hand LLM output
to TTS sentence by sentence. Feed it text deltas of any size, even mid-word.
"""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*(?=\s)|\n+")
# A sentence end at the very end of the text (it may be the end of a chunk).
_FINAL_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*$")
_CLAUSE_END = re.compile(r"[,;:—–]+(?=\s)")
# A clause mark right after a word at the very end of the text: "Sure," before the next token is in.
_CLAUSE_AT_END = re.compile(r"(?<=[^\W\d_])[,;:]+$")
_COMPLETE_WORD = re.compile(r"\S+(?=\s)")
# Tokens ending in a period that do not end a sentence.
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e a.m p.m no approx dept inc ltd".split()
)


def _ends_at_abbreviation_or_number(text: str, end: int) -> bool:
    head = text[:end].rstrip(".")
    word = head.split()[-1].lower() if head.split() else ""
    if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
        return True
    # "3.5" never reaches here (no whitespace after the dot); "No. 5" is covered above.
    return False


class TextChunker:
    """Accumulates text and releases complete segments.

    A sentence end always releases; a clause break releases once the segment has at least
    `min_clause_words` words; a segment longer than `max_chars` is cut at a space. The first
    segment may have bounds of its own (a reply's first audio comes sooner from a short first
    clause): a clause break after `first_min_words` words, and a cut after `first_max_words`
    complete words even without one. The first segment's clause break needs no whitespace after
    it when it follows a letter ("Sure," ends it as soon as the token is in; "1,000" does not).
    """

    def __init__(self, min_clause_words: int = 4, max_chars: int = 300, first_min_words: int | None = None,
                 first_max_words: int | None = None):
        self.min_clause_words = min_clause_words
        self.max_chars = max_chars
        self.first_min_words = min_clause_words if first_min_words is None else first_min_words
        self.first_max_words = first_max_words
        self._buffer = ""
        self._first = True  # no segment released yet

    @property
    def pending(self) -> str:
        return self._buffer

    def push(self, text: str, chunk_end: bool = False) -> list[str]:
        """Add text; return the segments it completes.

        With `chunk_end`, the text ends a unit the sender chose (a TTS text chunk): a sentence end
        at its very end is a boundary too, unless it could still grow (a period after a digit may
        be a decimal point, one after an abbreviation is not an end). Without it (token deltas),
        a sentence end needs the whitespace after it.
        """
        self._buffer += text
        segments = []
        while (cut := self._next_cut()) is not None:
            segment, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:].lstrip()
            if segment:
                segments.append(segment)
                self._first = False
        if chunk_end and self._ends_sentence():
            segments += self.flush()
        return segments

    def _ends_sentence(self) -> bool:
        text = self._buffer.rstrip()
        match = _FINAL_SENTENCE_END.search(text)
        if match is None or not text[: match.start()].strip():
            return False
        before = text[match.start() - 1]
        return not (before.isdigit() and text[match.start()] == ".") and not _ends_at_abbreviation_or_number(
            text, match.end())

    def flush(self) -> list[str]:
        segment, self._buffer = self._buffer.strip(), ""
        if segment:
            self._first = False
        return [segment] if segment else []

    def _next_cut(self) -> int | None:
        text = self._buffer
        sentence = next((match.end() for match in _SENTENCE_END.finditer(text)
                         if match.group().startswith("\n") or not _ends_at_abbreviation_or_number(text, match.end())),
                        None)
        first = self._first and self.first_max_words is not None  # the first segment has bounds of its own
        if sentence is not None and not first:
            return sentence
        min_words = self.first_min_words if self._first else self.min_clause_words
        clause = next((match.end() for match in _CLAUSE_END.finditer(text)
                       if len(text[: match.start()].split()) >= min_words), None)
        if clause is None and first and (end := _CLAUSE_AT_END.search(text)) and len(text[: end.start()].split()) >= min_words:
            clause = end.end()
        # The first segment ends at whichever comes first: a sentence end, a clause break, its word bound.
        cuts = [cut for cut in (sentence, clause, self._first_words_cut(text) if first else None) if cut]
        if cuts:
            return min(cuts)
        if len(text) > self.max_chars:
            space = text.rfind(" ", 0, self.max_chars)
            return space if space > 0 else self.max_chars
        return None

    def _first_words_cut(self, text: str) -> int | None:
        # Words followed by whitespace are complete; cut after the first `first_max_words` of them.
        ends = [match.end() for match in _COMPLETE_WORD.finditer(text)]
        return ends[self.first_max_words - 1] if len(ends) >= self.first_max_words else None
