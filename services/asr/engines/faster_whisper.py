"""faster-whisper (CTranslate2) behind the ASREngine interface.

Each buffer is one utterance (the stage segments the stream itself), so there is no built-in VAD
and no conditioning on previous text. Temperature fallback and the quality thresholds are
faster-whisper's defaults, from config (the tiny random-weight model's overlay turns them off).
Models load with local_files_only: nothing is fetched at serve time (pull checkpoints ahead).

`transcribe` is reentrant (faster-whisper keeps no per-call state on the model object and
CTranslate2 serialises or parallelises generate calls across its `num_workers` workers), so it
can run from several worker threads; a semaphore sized to num_workers keeps surplus calls waiting
here instead of holding features in CTranslate2's queue.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from services.asr.config import FasterWhisperConfig
from services.asr.engine import SAMPLE_RATE, ASREngine, DecodeOptions, Transcription, Word
from services.common.config import is_local_path, require_path

log = logging.getLogger(__name__)


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


def resolve_compute_type(compute_type: str, device: str) -> str:
    if compute_type != "auto":
        return compute_type
    return "float16" if device == "cuda" else "int8"


class FasterWhisperEngine(ASREngine):
    def __init__(self, config: FasterWhisperConfig):
        from faster_whisper import WhisperModel

        self.config = config
        model = config.model
        if is_local_path(model):
            path = require_path(model, "Whisper model (CTranslate2 directory)")
            # Without it faster-whisper fetches a tokenizer from the hub.
            require_path(path / "tokenizer.json", "Whisper tokenizer.json")
            model = str(path)
        self.device = resolve_device(config.device)
        self.compute_type = resolve_compute_type(config.compute_type, self.device)
        self.model = WhisperModel(
            model,
            device=self.device,
            compute_type=self.compute_type,
            cpu_threads=config.cpu_threads,
            num_workers=config.num_workers,
            local_files_only=True,  # a model id resolves from the local cache only: never fetched at serve time
        )
        self._slots = threading.BoundedSemaphore(config.num_workers)
        # The first decode sets up CTranslate2's buffers (seconds for a real model on a small CPU):
        # done here, so the first caller's turn does not wait for it.
        self.transcribe(np.zeros(SAMPLE_RATE, np.float32), DecodeOptions())
        log.info("faster-whisper %s loaded on %s (%s)", model, self.device, self.compute_type)

    def transcribe(self, audio: np.ndarray, options: DecodeOptions) -> Transcription:
        audio = np.ascontiguousarray(np.asarray(audio, dtype=np.float32).reshape(-1))
        duration = audio.size / SAMPLE_RATE
        if audio.size == 0:
            return Transcription(text="", language=options.language or "en")
        with self._slots:
            segments, info = self.model.transcribe(
                audio,
                language=options.language,
                beam_size=options.beam_size,
                word_timestamps=options.word_timestamps,
                without_timestamps=not options.word_timestamps,
                vad_filter=False,
                condition_on_previous_text=False,
                temperature=self.config.temperature,
                compression_ratio_threshold=self.config.compression_ratio_threshold,
                log_prob_threshold=self.config.log_prob_threshold,
                no_speech_threshold=self.config.no_speech_threshold,
                max_new_tokens=self.config.max_new_tokens,
            )
            texts: list[str] = []
            words: list[Word] = []
            for segment in segments:  # a generator: decoding happens while iterating
                # Segments that start after the buffer ends are timestamp hallucinations.
                if segment.start >= duration:
                    continue
                texts.append(segment.text)
                for word in segment.words or ():
                    start = min(max(float(word.start), 0.0), duration)
                    end = min(max(float(word.end), start), duration)
                    words.append(Word(word.word.strip(), start, end, float(word.probability)))
        return Transcription(
            text="".join(texts).strip(),
            language=info.language or options.language or "en",
            words=tuple(words),
        )

    def close(self) -> None:
        model = getattr(self, "model", None)
        if model is not None:
            # Dropping the CTranslate2 model frees its memory (device memory included).
            del model.model
            self.model = None
