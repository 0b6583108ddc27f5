"""Kokoro-82M (StyleTTS 2 with an iSTFTNet vocoder) behind the TTSEngine interface, offline.

The model directory has hexgrad/Kokoro-82M's layout: config.json, one weights file (*.pth) and
voices/<name>.pt. Everything is loaded from it through kokoro's own `KModel`; nothing is fetched
from the hub (KModel only downloads when it is given no config or no weights, and voices here are
always files).

Text -> phonemes -> audio:
- G2P: "misaki" is misaki's English G2P (spaCy tagging, lexicons, espeak-ng for unknown words);
  it needs spaCy's `en_core_web_sm` installed, and is refused here rather than letting misaki
  download it. "espeak" is misaki's espeak-ng G2P (the libespeak-ng bundled by espeakng-loader),
  en-us or en-gb. "auto" takes misaki when en_core_web_sm is installed, else espeak.
- Phonemes map to ids with the model's vocabulary; symbols it lacks are dropped. The model reads
  at most 510 ids at once (its 512 positions hold two boundary tokens), so a longer text is cut
  into pieces, preferably after a sentence end, then after a clause mark, then at a word break.
  Each piece is synthesised with the voice pack's style vector for its length,
  `pack[len(ids) - 1]`, as kokoro's own pipeline does, and the pieces' audio is concatenated.
- Word timings come from the durations the model predicts per id (`forward_with_tokens` returns
  them; one duration frame is 600 samples at 24 kHz). Each phoneme symbol carries the index of the
  word it spells: misaki's tokens give that directly; espeak phonemizes the whole text at once (so
  it keeps sentence context: weak forms, joined function words), so its symbols are tied to words
  by aligning them with a per-word phonemization of the same words (difflib on the phoneme
  letters). Timings therefore come with both G2Ps; espeak's are approximate at word edges.

`synthesize` holds a lock: calls from several threads run one at a time.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from services.common.config import require_path, resolve_device
from services.tts.config import KokoroConfig
from services.tts.engine import Speech, TTSEngine, UnknownVoiceError, Word

log = logging.getLogger(__name__)

SAMPLE_RATE = 24_000
REPO_ID = "hexgrad/Kokoro-82M"  # names the layout; never contacted (config and weights are given)
DEFAULT_WEIGHTS = "kokoro-v1_0.pth"
SPACY_MODEL = "en_core_web_sm"
MAX_IDS = 510  # per forward pass: the 512 positions less the two boundary tokens

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


def _is_word(text: str) -> bool:
    return any(c.isalnum() for c in text)


@dataclass
class _Phonemes:
    """Phoneme symbols of one text, each with the index of the word it belongs to (or None)."""

    symbols: list[str]
    owners: list[int | None]
    words: list[str]


class _MisakiG2P:
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

    def __call__(self, text: str) -> _Phonemes:
        _, tokens = self._g2p(text)
        out = _Phonemes([], [], [])
        for token in tokens:
            phonemes = token.phonemes or ""
            owner = None
            if phonemes and _is_word(token.text):
                owner = len(out.words)
                out.words.append(token.text.strip(EDGE_PUNCTUATION) or token.text)
            out.symbols.extend(phonemes)
            out.owners.extend(None if symbol in NON_SPEECH else owner for symbol in phonemes)
            if token.whitespace:
                out.symbols.append(SPACE)
                out.owners.append(None)
        return out


class _EspeakG2P:
    name = "espeak"

    def __init__(self, british: bool):
        from misaki.espeak import EspeakG2P

        self._g2p = EspeakG2P(language="en-gb" if british else "en-us")

    def __call__(self, text: str) -> _Phonemes:
        phonemes, _ = self._g2p(text)
        words = [w for w in (t.strip(EDGE_PUNCTUATION) for t in text.split()) if _is_word(w)]
        references = [self._g2p(word)[0] for word in words]
        return _Phonemes(list(phonemes), align_words(phonemes, references), words)


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


class KokoroEngine(TTSEngine):
    sample_rate = SAMPLE_RATE

    def __init__(self, config: KokoroConfig):
        from kokoro import KModel

        self.config = config
        self.model_dir = require_path(config.model, "Kokoro model directory")
        config_path = require_path(self.model_dir / "config.json", "Kokoro config.json")
        model_config = json.loads(config_path.read_text(encoding="utf-8"))
        self.weights_path = self._find_weights(self.model_dir)
        self.device = resolve_device(config.device)
        torch.set_num_threads(config.torch_threads)
        # repo_id only names the layout: with a config and a weights path KModel reads files only.
        with warnings.catch_warnings():  # construction noise from kokoro's modules, every load
            warnings.filterwarnings("ignore", message="dropout option adds dropout")
            warnings.filterwarnings("ignore", message=".*weight_norm` is deprecated")
            self.model = KModel(repo_id=REPO_ID, config=model_config, model=str(self.weights_path))
        self.model = self.model.to(self.device).eval()
        self.vocab: dict[str, int] = dict(self.model.vocab)
        self.max_ids = min(MAX_IDS, self.model.context_length - 2)
        self.style_width = 2 * int(model_config["style_dim"])

        voices_dir = self.model_dir / "voices"
        self._voice_files = (
            {p.stem: p for p in sorted(voices_dir.glob("*.pt"))} if voices_dir.is_dir() else {}
        )
        self._packs: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()

        self.g2p_name = choose_g2p(config.g2p)
        british = config.lang_code == "b"
        self._g2p = _MisakiG2P(british) if self.g2p_name == "misaki" else _EspeakG2P(british)
        self._pack(config.default_voice)  # fail fast on a missing default voice, and cache it
        log.info("Kokoro %s loaded on %s: %d voices, g2p %s (%s)", self.weights_path, self.device,
                 len(self._voice_files), self.g2p_name, "en-gb" if british else "en-us")

    @staticmethod
    def _find_weights(model_dir: Path) -> Path:
        found = sorted(model_dir.glob("*.pth"))
        if not found:
            raise FileNotFoundError(f"no Kokoro weights (*.pth) in {model_dir}")
        if len(found) == 1:
            return found[0]
        preferred = model_dir / DEFAULT_WEIGHTS
        if preferred in found:
            return preferred
        raise ValueError(f"several weight files in {model_dir}: {[p.name for p in found]}; "
                         f"keep one, or name it {DEFAULT_WEIGHTS}")

    def voices(self) -> list[str]:
        return list(self._voice_files)

    def _pack(self, voice: str) -> torch.Tensor:
        pack = self._packs.get(voice)
        if pack is not None:
            return pack
        path = self._voice_files.get(voice)
        if path is None and voice.endswith(".pt") and Path(voice).is_absolute():
            path = Path(voice) if Path(voice).is_file() else None
        if path is None:
            raise UnknownVoiceError(
                f"unknown voice {voice!r}; known voices: {', '.join(self.voices()) or '(none)'}"
            )
        pack = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(pack, torch.Tensor):
            raise ValueError(f"voice file {path} holds {type(pack).__name__}, not a tensor")
        if pack.dim() == 2:
            pack = pack.unsqueeze(1)
        if pack.dim() != 3 or pack.shape[1:] != (1, self.style_width) or not len(pack):
            raise ValueError(f"voice file {path} has shape {tuple(pack.shape)}; "
                             f"expected [N, 1, {self.style_width}]")
        pack = pack.to(device=self.device, dtype=torch.float32)
        self._packs[voice] = pack
        return pack

    def synthesize(self, text: str, voice: str, speed: float) -> Speech:
        speed = float(speed)
        if not (math.isfinite(speed) and speed > 0):
            raise ValueError(f"speed must be a positive number, got {speed!r}")
        with self._lock:
            if self.model is None:
                raise RuntimeError("the Kokoro engine is closed")
            pack = self._pack(voice)
            if not text.strip():
                return Speech(audio=np.zeros(0, dtype=np.float32))
            phonemes = self._g2p(text)
            # Keep the symbols the model knows, squeezing runs of spaces.
            symbols, owners = [], []
            for symbol, owner in zip(phonemes.symbols, phonemes.owners):
                if symbol not in self.vocab:
                    continue
                if symbol == SPACE and (not symbols or symbols[-1] == SPACE):
                    continue
                symbols.append(symbol)
                owners.append(owner)
            if all(symbol in NON_SPEECH for symbol in symbols):
                return Speech(audio=np.zeros(0, dtype=np.float32))

            chunks: list[np.ndarray] = []
            offset = 0  # samples before the current piece
            first: dict[int, int] = {}
            last: dict[int, int] = {}
            with torch.inference_mode():
                for start, end in split_ids(symbols, self.max_ids):
                    ids = [self.vocab[s] for s in symbols[start:end]]
                    input_ids = torch.tensor([[0, *ids, 0]], dtype=torch.long, device=self.device)
                    ref_s = pack[min(len(ids), len(pack)) - 1]
                    audio, durations = self.model.forward_with_tokens(input_ids, ref_s, speed)
                    audio = audio.reshape(-1).float().cpu().numpy()
                    durations = durations.reshape(-1).cpu().numpy().astype(np.int64)
                    # Sample boundaries of every token (boundary tokens included).
                    edges = np.concatenate([[0], np.cumsum(durations)])
                    per_frame = audio.size / max(int(edges[-1]), 1)
                    for k in range(end - start):
                        word = owners[start + k]
                        if word is None:
                            continue
                        token = k + 1  # after the leading boundary token
                        begin = offset + int(round(edges[token] * per_frame))
                        finish = offset + int(round(edges[token + 1] * per_frame))
                        first[word] = min(first.get(word, begin), begin)
                        last[word] = max(last.get(word, finish), finish)
                    chunks.append(audio)
                    offset += audio.size
            audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
            return Speech(audio=audio, words=self._words(phonemes.words, first, last))

    @staticmethod
    def _words(words: list[str], first: dict[int, int], last: dict[int, int]) -> tuple[Word, ...]:
        """Every word with its span; a word the model got no symbols for gets an empty span where
        it would have been spoken. No spans at all gives no words."""
        if not first:
            return ()
        result, cursor = [], 0
        for index, word in enumerate(words):
            begin = first.get(index, cursor)
            finish = last.get(index, begin)
            result.append(Word(word=word, start_s=begin / SAMPLE_RATE, end_s=finish / SAMPLE_RATE))
            cursor = finish
        return tuple(result)

    def close(self) -> None:
        with self._lock:
            self._packs.clear()
            self.model = None
        if self.device == "cuda":
            torch.cuda.empty_cache()
