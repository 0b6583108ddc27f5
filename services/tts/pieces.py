"""Phoneme symbols -> audio for the Kokoro engines: the model's vocabulary, pieces that fit one
forward pass, and word timings from the durations the model predicts (or an estimate of them).

The model reads at most 510 ids at once (its 512 positions hold two boundary tokens), so a longer
text is cut into pieces, preferably after a sentence end, then after a clause mark, then at a word
break. Each piece is synthesized on its own (the engine picks the voice's style vector for its
length, `pack[len(ids) - 1]`, as kokoro's own pipeline does) and the audio is concatenated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from services.tts.engine import Speech, Word
from services.tts.g2p import CLAUSE_ENDS, NON_SPEECH, SENTENCE_ENDS, SPACE, Phonemes

MAX_IDS = 510  # per forward pass: the 512 positions less the two boundary tokens

# Typical durations in frames, for a model that reports none: the means of kokoro-v1.0's own
# predictions over English sentences. Every symbol, stress marks included, takes ~2.6 frames; the
# sound before a sentence end is drawn out (~21) and before a clause mark less so (~7); the marks
# themselves are pauses; the leading boundary token is the silence before speech.
_LEAD, _TAIL, _SYMBOL = 12.0, 1.0, 2.6
_WEIGHTS = {SPACE: 2.0, "ː": 1.8, **dict.fromkeys(CLAUSE_ENDS, 2.3), **dict.fromkeys(SENTENCE_ENDS, 7.0)}
_BEFORE = {**dict.fromkeys(CLAUSE_ENDS, 7.0), **dict.fromkeys(SENTENCE_ENDS, 21.0)}

# An engine's forward pass: ids of one piece (no boundary tokens) -> (audio, per-token durations
# including the two boundary tokens, or None when the model does not report them).
RunPiece = Callable[[list[int]], tuple[np.ndarray, np.ndarray | None]]


def known_symbols(phonemes: Phonemes, vocab: Mapping[str, int]) -> tuple[list[str], list[int | None]]:
    """The symbols the model knows (others dropped), runs of spaces squeezed, with their words."""
    symbols: list[str] = []
    owners: list[int | None] = []
    for symbol, owner in zip(phonemes.symbols, phonemes.owners):
        if symbol not in vocab or (symbol == SPACE and (not symbols or symbols[-1] == SPACE)):
            continue
        symbols.append(symbol)
        owners.append(owner)
    return symbols, owners


def split_ids(symbols: list[str], limit: int = MAX_IDS) -> list[tuple[int, int]]:
    """Cut a symbol sequence into [start, end) pieces of at most `limit` symbols.

    A cut goes at a space: after a sentence end if there is one in the second half of the window,
    else after a clause mark there, else at the last space; with no space, it cuts mid-word.
    Spaces at the edges of pieces are dropped.
    """
    pieces = []
    start, n = 0, len(symbols)
    while start < n:
        while start < n and symbols[start] == SPACE:
            start += 1
        if start >= n:
            break
        if n - start <= limit:
            end = next_start = n
        else:
            window_end = start + limit  # a space at window_end still closes a full piece
            spaces = [k for k in range(start + 1, window_end + 1) if symbols[k] == SPACE]
            late = [k for k in spaces if k >= start + limit // 2]
            cut = (
                next((k for k in reversed(late) if symbols[k - 1] in SENTENCE_ENDS), None)
                or next((k for k in reversed(late) if symbols[k - 1] in CLAUSE_ENDS), None)
                or (spaces[-1] if spaces else None)
            )
            end, next_start = (cut, cut + 1) if cut is not None else (window_end, window_end)
        trimmed = end
        while trimmed > start and symbols[trimmed - 1] == SPACE:
            trimmed -= 1
        if trimmed > start:
            pieces.append((start, trimmed))
        start = next_start
    return pieces



def estimated_durations(symbols: list[str]) -> np.ndarray:
    """Typical durations of a piece's tokens (boundary tokens included) when the model gives none."""
    weights = [_WEIGHTS.get(s, _SYMBOL) for s in symbols]
    for k in range(len(symbols) - 1):
        if symbols[k] not in _WEIGHTS and symbols[k + 1] in _BEFORE:
            weights[k] = _BEFORE[symbols[k + 1]]
    return np.array([_LEAD, *weights, _TAIL])


def speak(phonemes: Phonemes, vocab: Mapping[str, int], max_ids: int, run: RunPiece) -> Speech:
    """Synthesize `phonemes` piece by piece with `run`; word spans from the tokens' durations."""
    symbols, owners = known_symbols(phonemes, vocab)
    if all(symbol in NON_SPEECH for symbol in symbols):
        return Speech(audio=np.zeros(0, dtype=np.float32))
    chunks: list[np.ndarray] = []
    offset = 0  # samples before the current piece
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for start, end in split_ids(symbols, max_ids):
        audio, durations = run([vocab[s] for s in symbols[start:end]])
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if durations is None:
            durations = estimated_durations(symbols[start:end])
        # Sample boundaries of every token (boundary tokens included), scaled to the audio.
        edges = np.concatenate([[0.0], np.cumsum(np.asarray(durations, dtype=np.float64).reshape(-1))])
        per_unit = audio.size / max(float(edges[-1]), 1e-9)
        for k in range(end - start):
            word = owners[start + k]
            if word is None:
                continue
            token = k + 1  # after the leading boundary token
            begin = offset + int(round(edges[token] * per_unit))
            finish = offset + int(round(edges[token + 1] * per_unit))
            first[word] = min(first.get(word, begin), begin)
            last[word] = max(last.get(word, finish), finish)
        chunks.append(audio)
        offset += audio.size
    audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    return Speech(audio=audio, words=word_spans(phonemes.words, first, last))


def word_spans(words: list[str], first: dict[int, int], last: dict[int, int],
               sample_rate: int = 24_000) -> tuple[Word, ...]:
    """Every word with its span in seconds; a word the model got no symbols for gets an empty span
    where it would have been spoken. No spans at all gives no words."""
    if not first:
        return ()
    result, cursor = [], 0
    for index, word in enumerate(words):
        begin = first.get(index, cursor)
        finish = last.get(index, begin)
        result.append(Word(word=word, start_s=begin / sample_rate, end_s=finish / sample_rate))
        cursor = finish
    return tuple(result)
