"""Generated tokens to text as they come: incremental detokenizing and stop strings.

Used by engines that sample token by token in this process (transformers); engines behind a
server (vLLM, OpenAI-compatible) get text from it.
"""

from __future__ import annotations

from typing import Any

_REPLACEMENT = "\ufffd"  # what an incomplete UTF-8 sequence decodes to


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text pieces without splitting UTF-8 characters.

    Decodes a short window of recent ids and emits only the text that a new token added; text
    that ends in an incomplete byte sequence is held back until a later token completes it.
    """

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self.ids: list[int] = []
        self._prefix_offset = 0  # window start
        self._read_offset = 0  # ids before this are already turned into text

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip)

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix_text = self._decode(self.ids[self._prefix_offset:self._read_offset])
        new_text = self._decode(self.ids[self._prefix_offset:])
        if len(new_text) > len(prefix_text) and not new_text.endswith(_REPLACEMENT):
            self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)
            return new_text[len(prefix_text):]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (possibly with replacement characters): call once at the end."""
        prefix_text = self._decode(self.ids[self._prefix_offset:self._read_offset])
        new_text = self._decode(self.ids[self._prefix_offset:])
        self._prefix_offset = self._read_offset = len(self.ids)
        return new_text[len(prefix_text):] if len(new_text) > len(prefix_text) else ""


class StopStringMatcher:
    """Streams text while cutting it at the first stop string.

    Text that could be the start of a stop string is held back until it is known not to be one,
    so no part of a stop string is ever emitted.
    """

    def __init__(self, stops: tuple[str, ...] | list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Add text; return what can safely be emitted now. Sets `stopped` when a stop string appears."""
        if self.stopped:
            return ""
        self.text += piece
        if not self.stops:
            out, self.emitted = self.text[self.emitted:], len(self.text)
            return out
        hits = [i for i in (self.text.find(s, self.emitted) for s in self.stops) if i >= 0]
        if hits:
            cut = min(hits)
            out = self.text[self.emitted:cut]
            self.emitted = cut
            self.stopped = True
            return out
        hold = 0
        tail = self.text[self.emitted:]
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(tail)), hold, -1):
                if tail.endswith(stop[:k]):
                    hold = k
                    break
        safe = len(self.text) - hold
        out = self.text[self.emitted:safe]
        self.emitted = safe
        return out

    def finish(self) -> str:
        """The held-back tail once generation has ended without a stop string."""
        if self.stopped:
            return ""
        out, self.emitted = self.text[self.emitted:], len(self.text)
        return out
