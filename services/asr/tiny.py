"""A tiny random-weight Whisper in CTranslate2 format, built offline.

The model has Whisper's real vocabulary layout (multilingual, 80 mel bins: the layout of
tiny/base/small/medium/large-v2): 51865 ids, `<|endoftext|>` at 50257, `<|startoftranscript|>` at
50258, 99 language tokens from 50259 (`<|en|>` first), the task and control tokens up to
`<|notimestamps|>` at 50363, then 1501 timestamp tokens `<|0.00|>` ... `<|30.00|>`. Ids below 50257
belong to a small byte-level BPE trained on a built-in text, padded with unreachable letter-string
filler tokens, with the empty-string token at 50256 (CTranslate2 >= 4.7 reads it as the mark of a
multilingual model). faster-whisper loads the result through its normal `WhisperModel(path)` path.

Random weights decode gibberish; they exist to exercise loading and the decoding loop.
"""

from __future__ import annotations

import itertools
import json
import string
import tempfile
from pathlib import Path

SEED = 0
# The engine settings a random-weight model needs (its serve-config overlay): no temperature
# fallback and no quality thresholds (it fails them all, so each decode would run six times), and
# a token cap (it never stops on its own).
DECODING = {
    "temperature": 0.0,
    "compression_ratio_threshold": None,
    "log_prob_threshold": None,
    "no_speech_threshold": None,
    "max_new_tokens": 96,
}
SAMPLE_RATE = 16_000
N_MELS = 80

EOT_ID = 50257  # <|endoftext|>: the real Whisper id
TIMESTAMP_COUNT = 1501  # <|0.00|> ... <|30.00|>
BPE_TRAINED_SIZE = 600  # tokens learned from the built-in text (byte alphabet included)

# Whisper's language tokens in their real order (the 80-mel, 99-language layout).
LANGUAGES = """
en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th ur
hr bg lt la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr pa si
km sn yo so af oc ka be tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl mg as tt haw ln
ha ba jw su
""".split()
CONTROL_TOKENS = (
    "<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>",
    "<|notimestamps|>",
)

SOT_ID = EOT_ID + 1
FIRST_LANGUAGE_ID = SOT_ID + 1
NO_TIMESTAMPS_ID = FIRST_LANGUAGE_ID + len(LANGUAGES) + len(CONTROL_TOKENS) - 1
VOCAB_SIZE = NO_TIMESTAMPS_ID + 1 + TIMESTAMP_COUNT

MODEL_DIMS = dict(
    d_model=64,
    encoder_layers=2,
    encoder_attention_heads=2,
    encoder_ffn_dim=128,
    decoder_layers=2,
    decoder_attention_heads=2,
    decoder_ffn_dim=128,
    max_source_positions=1500,  # 30 s of audio: 3000 mel frames, halved by the conv stem
    max_target_positions=448,
)

# Training text for the BPE: enough English for common merges, nothing more.
_CORPUS = """\
Hello, I would like to book a table for two tonight.
Can you tell me what the weather will be like tomorrow morning?
Please set a timer for ten minutes and remind me to call my mother.
The quick brown fox jumps over the lazy dog while the cat sleeps on the warm windowsill.
We are going to the station to catch the last train home before midnight.
Thank you very much, that sounds great. Could you also order a taxi for seven o'clock?
Yes, no, maybe. I think so. What time is it now? It is a quarter past three in the afternoon.
Numbers: one, two, three, four, five, six, seven, eight, nine, ten, 2024, 100, 42.
She said that the meeting had been moved to Thursday because the manager was travelling.
This is a test of the speech recognition system, and it should work in real time.
"""

# Symbols Whisper suppresses by default (speaker tags, music notes, brackets).
_SUPPRESSED_SYMBOLS = list('"#()*+/:;<=>@[\\]^_`{|}~') + ["<<", ">>", "--", "((", "))", "[[", "]]"]


def _special_tokens() -> list[str]:
    return (
        ["<|endoftext|>", "<|startoftranscript|>"]
        + [f"<|{code}|>" for code in LANGUAGES]
        + list(CONTROL_TOKENS)
        + [f"<|{i * 0.02:.2f}|>" for i in range(TIMESTAMP_COUNT)]
    )


def _fillers(taken: set[str]):
    """Distinct letter strings (half of them word-initial, with the byte-level space mark)."""
    letters = string.ascii_lowercase
    for length in itertools.count(2):
        for chars in itertools.product(letters, repeat=length):
            word = "".join(chars)
            for token in ("\u0120" + word, word):
                if token not in taken:
                    yield token


def build_tokenizer():
    """A byte-level BPE tokenizer with Whisper's special tokens at their real ids."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    trainer_tokenizer = Tokenizer(models.BPE())
    trainer_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_TRAINED_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    trainer_tokenizer.train_from_iterator(_CORPUS.splitlines(), trainer)
    trained = json.loads(trainer_tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]

    ordered = [token for token, _ in sorted(trained["vocab"].items(), key=lambda item: item[1])]
    taken = set(ordered)
    fillers = _fillers(taken)
    while len(ordered) < EOT_ID - 1:
        ordered.append(next(fillers))
    ordered.append("")  # id 50256, as in Whisper's multilingual vocabulary
    vocab = {token: i for i, token in enumerate(ordered)}
    assert len(vocab) == EOT_ID

    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in _special_tokens()]
    )
    assert tokenizer.get_vocab_size() == VOCAB_SIZE
    assert tokenizer.token_to_id("<|endoftext|>") == EOT_ID
    assert tokenizer.token_to_id("<|en|>") == FIRST_LANGUAGE_ID
    assert tokenizer.token_to_id("<|notimestamps|>") == NO_TIMESTAMPS_ID
    assert tokenizer.token_to_id("<|0.00|>") == NO_TIMESTAMPS_ID + 1
    return tokenizer


def _suppressed_ids(tokenizer) -> list[int]:
    ids = set()
    for symbol in _SUPPRESSED_SYMBOLS:
        for text in (symbol, " " + symbol):
            encoded = tokenizer.encode(text, add_special_tokens=False).ids
            if len(encoded) == 1:
                ids.add(encoded[0])
    return sorted(ids)


def _preprocessor_config(n_mels: int = N_MELS) -> dict:
    return {
        "chunk_length": 30,
        "feature_extractor_type": "WhisperFeatureExtractor",
        "feature_size": n_mels,
        "hop_length": 160,
        "n_fft": 400,
        "n_samples": 30 * SAMPLE_RATE,
        "nb_max_frames": 3000,
        "padding_side": "right",
        "padding_value": 0.0,
        "processor_class": "WhisperProcessor",
        "return_attention_mask": False,
        "sampling_rate": SAMPLE_RATE,
    }


def _save_hf(hf_dir: Path, dims: dict, n_mels: int) -> None:
    import torch
    from transformers import (
        GenerationConfig,
        PreTrainedTokenizerFast,
        WhisperConfig,
        WhisperForConditionalGeneration,
    )

    tokenizer = build_tokenizer()
    space_id = tokenizer.encode(" ", add_special_tokens=False).ids[0]
    suppress = _suppressed_ids(tokenizer)
    begin_suppress = [space_id, EOT_ID]
    alignment_heads = [
        [layer, head]
        for layer in range(dims["decoder_layers"] // 2, dims["decoder_layers"])
        for head in range(dims["decoder_attention_heads"])
    ]

    config = WhisperConfig(
        vocab_size=VOCAB_SIZE,
        num_mel_bins=n_mels,
        pad_token_id=EOT_ID,
        bos_token_id=EOT_ID,
        eos_token_id=EOT_ID,
        decoder_start_token_id=SOT_ID,
        suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress,
        **dims,
    )
    torch.manual_seed(SEED)
    model = WhisperForConditionalGeneration(config).eval()

    generation = GenerationConfig(
        decoder_start_token_id=SOT_ID,
        bos_token_id=EOT_ID,
        eos_token_id=EOT_ID,
        pad_token_id=EOT_ID,
        max_length=dims["max_target_positions"],
        suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress,
        alignment_heads=alignment_heads,
        lang_to_id={f"<|{code}|>": FIRST_LANGUAGE_ID + i for i, code in enumerate(LANGUAGES)},
        task_to_id={"translate": NO_TIMESTAMPS_ID - 5, "transcribe": NO_TIMESTAMPS_ID - 4},
        no_timestamps_token_id=NO_TIMESTAMPS_ID,
        is_multilingual=True,
    )
    model.generation_config = generation
    model.save_pretrained(hf_dir)

    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    ).save_pretrained(hf_dir)
    # The tokenizer file faster-whisper reads is the one built here, byte for byte.
    tokenizer.save(str(hf_dir / "tokenizer.json"))
    (hf_dir / "preprocessor_config.json").write_text(json.dumps(_preprocessor_config(n_mels), indent=2))


def build(out_dir: Path, dims: dict | None = None, n_mels: int = N_MELS, quantization: str | None = None) -> None:
    """Write the tiny Whisper (CTranslate2 model.bin, config, vocabulary, tokenizer) to out_dir.

    `dims` and `n_mels` give another architecture in the same format with the same vocabulary
    (the GPU benchmark builds large-v3-turbo's this way); `quantization` is CTranslate2's weight type."""
    import ctranslate2

    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="parley-tiny-whisper-") as tmp:
        hf_dir = Path(tmp) / "hf"
        _save_hf(hf_dir, dims or MODEL_DIMS, n_mels)
        converter = ctranslate2.converters.TransformersConverter(
            str(hf_dir), copy_files=["tokenizer.json", "preprocessor_config.json"]
        )
        converter.convert(str(out_dir), quantization=quantization, force=True)
