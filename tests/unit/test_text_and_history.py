"""Sentence/clause chunking of streamed text, and the bounded chat history."""

from __future__ import annotations

import pytest

from services.common.text import TextChunker
from services.edge.history import CHARS_PER_TOKEN, ChatHistory


def chunk(text: str, piece: int, **options) -> list[str]:
    chunker = TextChunker(**options)
    out = []
    for start in range(0, len(text), piece):
        out += chunker.push(text[start:start + piece])
    return out + chunker.flush()


@pytest.mark.parametrize("piece", [1, 3, 7, 1000])
def test_sentences_come_out_whole_whatever_the_delta_size(piece):
    text = "Hello there. Dr. Smith can see you at 3.5 p.m. today! Is that fine? Great"
    assert chunk(text, piece) == ["Hello there.", "Dr. Smith can see you at 3.5 p.m. today!", "Is that fine?", "Great"]


def test_clauses_break_only_when_long_enough():
    assert chunk("Well, I think that if we go now, we make it.", 5, min_clause_words=4) == [
        "Well, I think that if we go now,", "we make it."]
    assert chunk("Yes, sure.", 5, min_clause_words=4) == ["Yes, sure."]


def test_a_sentence_is_not_released_before_its_end_is_certain():
    chunker = TextChunker()
    assert chunker.push("It costs 3.") == []  # could be 3.50
    assert chunker.push("50 dollars. And") == ["It costs 3.50 dollars."]
    assert chunker.pending == "And"


def test_runaway_text_without_punctuation_is_cut_at_a_space():
    segments = chunk("word " * 200, 11, max_chars=60)
    assert all(len(segment) <= 60 for segment in segments)
    assert " ".join(segments).split() == ["word"] * 200


def test_history_keeps_the_system_prompt_and_drops_oldest_turns_by_budget():
    history = ChatHistory("Be brief.", max_context_tokens=50)
    for index in range(100):
        history.add("user", f"question {index} " + "x" * 40)
        history.add("assistant", f"answer {index}")
    messages = history.messages()
    assert messages[0] == ("system", "Be brief.")
    assert messages[-1] == ("assistant", "answer 99")
    assert sum(len(content) for _, content in messages) <= 50 * CHARS_PER_TOKEN
    assert len(history) < 10  # memory is bounded too, not just the prompt


def test_interrupted_replies_keep_only_what_was_heard():
    history = ChatHistory("s", max_context_tokens=1000)
    history.add("assistant", "Sure, I can", interrupted=True)
    history.add("assistant", "")  # nothing heard at all: not sent to the LLM
    assert history.messages() == [("system", "s"), ("assistant", "Sure, I can")]
    assert [m.interrupted for m in history] == [True, False]
