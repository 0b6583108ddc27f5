"""English text -> phonemes for the Kokoro engines (PyTorch and ONNX), fully offline.

- "misaki" is misaki's English G2P (spaCy tagging, lexicons, espeak-ng for unknown words); it
  needs spaCy's `en_core_web_sm` installed, and is refused here rather than letting misaki
  download it. "espeak" is misaki's espeak-ng G2P (the libespeak-ng bundled by espeakng-loader),
  en-us or en-gb. "auto" takes misaki when en_core_web_sm is installed, else espeak.
- Each phoneme symbol carries the index of the word it spells, for word timings: misaki's tokens
  give that directly; espeak phonemizes the whole text at once (so it keeps sentence context: weak
  forms, joined function words), so its symbols are tied to words by aligning them with a per-word
  phonemization of the same words (difflib on the phoneme letters); approximate at word edges.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

SPACY_MODEL = "en_core_web_sm"

SPACE = " "
SENTENCE_ENDS = frozenset(".!?…")
CLAUSE_ENDS = frozenset(",;:—")
# Vocabulary symbols that are not speech: text made only of these gives no audio.
NON_SPEECH = frozenset(';:,.!?—…"()“” ')
# Marks that modify a neighbouring phoneme rather than being one (not used to align words).
MODIFIERS = frozenset("ˈˌːʰʲ\u0303\u0329")
# Punctuation stripped from the edges of a whitespace-delimited text word.
EDGE_PUNCTUATION = "\"'“”‘’«»()[]{}<>,.;:!?…—–-"


def choose_g2p(g2p: str) -> str:
    """Resolve the configured G2P: 'auto' is misaki when spaCy's English model is installed."""
    if g2p != "auto":
        return g2p
    import spacy.util

    return "misaki" if spacy.util.is_package(SPACY_MODEL) else "espeak"


def is_word(text: str) -> bool:
    """Text that spells a word (has a letter or digit), not punctuation alone."""
    return any(c.isalnum() for c in text)


@dataclass
class Phonemes:
    """Phoneme symbols of one text, each with the index of the word it belongs to (or None)."""

    symbols: list[str]
    owners: list[int | None]
    words: list[str]


class MisakiG2P:
    """misaki's English G2P (lexicons + spaCy tags), espeak-ng for words outside its lexicons."""

    name = "misaki"

    def __init__(self, british: bool):
        import spacy.util

        if not spacy.util.is_package(SPACY_MODEL):
            # misaki.en.G2P would call spacy.cli.download here; this service never downloads.
            raise RuntimeError(
                f"g2p='misaki' needs spaCy's {SPACY_MODEL} package installed (it is not). "
                "Install it into the environment, or set g2p='espeak' (or 'auto')."
            )
        from misaki import en, espeak

        try:
            fallback = espeak.EspeakFallback(british=british)
        except Exception as exc:  # noqa: BLE001 - words outside the lexicon are then skipped
            log.warning("misaki's espeak-ng fallback is unavailable (%s): "
                        "words outside its lexicons are skipped", exc)
            fallback = None
        self._g2p = en.G2P(trf=False, british=british, fallback=fallback, unk="")

    def __call__(self, text: str) -> Phonemes:
        _, tokens = self._g2p(text)
        out = Phonemes([], [], [])
        for token in tokens:
            phonemes = token.phonemes or ""
            owner = None
            if phonemes and is_word(token.text):
                owner = len(out.words)
                out.words.append(token.text.strip(EDGE_PUNCTUATION) or token.text)
            out.symbols.extend(phonemes)
            out.owners.extend(None if symbol in NON_SPEECH else owner for symbol in phonemes)
            if token.whitespace:
                out.symbols.append(SPACE)
                out.owners.append(None)
        return out


class EspeakG2P:
    """espeak-ng's English phonemization (through misaki), with words aligned after the fact."""

    name = "espeak"

    def __init__(self, british: bool):
        from misaki.espeak import EspeakG2P

        self._g2p = EspeakG2P(language="en-gb" if british else "en-us")

    def __call__(self, text: str) -> Phonemes:
        phonemes, _ = self._g2p(text)
        words = [w for w in (t.strip(EDGE_PUNCTUATION) for t in text.split()) if is_word(w)]
        references = [self._g2p(word)[0] for word in words]
        return Phonemes(list(phonemes), align_words(phonemes, references), words)


def align_words(phonemes: str, references: list[str]) -> list[int | None]:
    """Tie each symbol of a whole-text phonemization to a word, given each word phonemized alone.

    The phoneme letters of both are aligned (difflib); matched letters take the reference's word,
    other symbols in the same space-delimited phoneme word take a neighbour's, and a phoneme word
    with no match at all goes to a word between its neighbours that has nothing yet, else joins
    the word before it. Punctuation and spaces belong to no word. The result never goes backwards.
    """
    n = len(phonemes)
    owners: list[int | None] = [None] * n
    ref_letters, ref_owners = [], []
    for index, reference in enumerate(references):
        for symbol in reference:
            if symbol not in NON_SPEECH and symbol not in MODIFIERS:
                ref_letters.append(symbol)
                ref_owners.append(index)
    positions = [i for i, s in enumerate(phonemes) if s not in NON_SPEECH and s not in MODIFIERS]
    matcher = difflib.SequenceMatcher(None, [phonemes[i] for i in positions], ref_letters,
                                      autojunk=False)
    for a, b, size in matcher.get_matching_blocks():
        for k in range(size):
            owners[positions[a + k]] = ref_owners[b + k]

    # Runs of non-space symbols: fill the speech symbols of each from its own matches.
    runs, start = [], None
    for i, symbol in enumerate(phonemes + SPACE):
        if symbol != SPACE and start is None:
            start = i
        elif symbol == SPACE and start is not None:
            runs.append((start, i))
            start = None
    unmatched = []
    for start, end in runs:
        speech = [i for i in range(start, end) if phonemes[i] not in NON_SPEECH]
        owned = [owners[i] for i in speech if owners[i] is not None]
        if not owned:
            unmatched.append(speech)
            continue
        following = None
        for i in reversed(speech):  # a modifier or stray symbol takes the next owned one's word
            if owners[i] is None:
                owners[i] = following if following is not None else owned[-1]
            following = owners[i]
    # An unmatched phoneme word (a weak form, an expansion) goes to the first word between its
    # neighbours that has no symbols yet, else to the word before it (after it, at the start).
    owned = {owner for owner in owners if owner is not None}
    for speech in unmatched:
        if not speech:
            continue
        before = next((owners[i] for i in range(speech[0] - 1, -1, -1) if owners[i] is not None),
                      None)
        after = next((owners[i] for i in range(speech[-1] + 1, n) if owners[i] is not None), None)
        low = -1 if before is None else before
        high = len(references) if after is None else after
        missing = next((w for w in range(low + 1, high) if w not in owned), None)
        owner = missing if missing is not None else (before if before is not None else after)
        for i in speech:
            owners[i] = owner
        if owner is not None:
            owned.add(owner)
    # Keep the owners monotonic: a symbol never belongs to a word before the previous one's.
    highest = -1
    for i, owner in enumerate(owners):
        if owner is not None:
            if owner < highest:
                owners[i] = highest
            highest = max(highest, owners[i])
    return owners



def make_g2p(g2p: str, british: bool) -> MisakiG2P | EspeakG2P:
    """The G2P the config names ('auto' resolved by choose_g2p)."""
    return MisakiG2P(british) if choose_g2p(g2p) == "misaki" else EspeakG2P(british)
