from services.proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RecognizeRequest(_message.Message):
    __slots__ = ("config", "audio", "flush")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    FLUSH_FIELD_NUMBER: _ClassVar[int]
    config: RecognitionConfig
    audio: _common_pb2.AudioChunk
    flush: _common_pb2.Flush
    def __init__(self, config: _Optional[_Union[RecognitionConfig, _Mapping]] = ..., audio: _Optional[_Union[_common_pb2.AudioChunk, _Mapping]] = ..., flush: _Optional[_Union[_common_pb2.Flush, _Mapping]] = ...) -> None: ...

class RecognitionConfig(_message.Message):
    __slots__ = ("sample_rate_hz", "language", "beam_size", "min_silence_ms", "partial_interval_ms", "word_timestamps", "progress_interval_ms", "pause_ms")
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    BEAM_SIZE_FIELD_NUMBER: _ClassVar[int]
    MIN_SILENCE_MS_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    WORD_TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    PAUSE_MS_FIELD_NUMBER: _ClassVar[int]
    sample_rate_hz: int
    language: str
    beam_size: int
    min_silence_ms: int
    partial_interval_ms: int
    word_timestamps: bool
    progress_interval_ms: int
    pause_ms: int
    def __init__(self, sample_rate_hz: _Optional[int] = ..., language: _Optional[str] = ..., beam_size: _Optional[int] = ..., min_silence_ms: _Optional[int] = ..., partial_interval_ms: _Optional[int] = ..., word_timestamps: _Optional[bool] = ..., progress_interval_ms: _Optional[int] = ..., pause_ms: _Optional[int] = ...) -> None: ...

class RecognizeResponse(_message.Message):
    __slots__ = ("speech_started", "speech_stopped", "partial", "final", "summary", "progress", "pause", "speech_resumed")
    SPEECH_STARTED_FIELD_NUMBER: _ClassVar[int]
    SPEECH_STOPPED_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    PAUSE_FIELD_NUMBER: _ClassVar[int]
    SPEECH_RESUMED_FIELD_NUMBER: _ClassVar[int]
    speech_started: SpeechStarted
    speech_stopped: SpeechStopped
    partial: Transcript
    final: Transcript
    summary: StreamSummary
    progress: Progress
    pause: Pause
    speech_resumed: SpeechResumed
    def __init__(self, speech_started: _Optional[_Union[SpeechStarted, _Mapping]] = ..., speech_stopped: _Optional[_Union[SpeechStopped, _Mapping]] = ..., partial: _Optional[_Union[Transcript, _Mapping]] = ..., final: _Optional[_Union[Transcript, _Mapping]] = ..., summary: _Optional[_Union[StreamSummary, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., pause: _Optional[_Union[Pause, _Mapping]] = ..., speech_resumed: _Optional[_Union[SpeechResumed, _Mapping]] = ...) -> None: ...

class SpeechStarted(_message.Message):
    __slots__ = ("audio_offset_s", "utterance_id")
    AUDIO_OFFSET_S_FIELD_NUMBER: _ClassVar[int]
    UTTERANCE_ID_FIELD_NUMBER: _ClassVar[int]
    audio_offset_s: float
    utterance_id: int
    def __init__(self, audio_offset_s: _Optional[float] = ..., utterance_id: _Optional[int] = ...) -> None: ...

class SpeechStopped(_message.Message):
    __slots__ = ("audio_offset_s", "utterance_id")
    AUDIO_OFFSET_S_FIELD_NUMBER: _ClassVar[int]
    UTTERANCE_ID_FIELD_NUMBER: _ClassVar[int]
    audio_offset_s: float
    utterance_id: int
    def __init__(self, audio_offset_s: _Optional[float] = ..., utterance_id: _Optional[int] = ...) -> None: ...

class Pause(_message.Message):
    __slots__ = ("transcript", "speech_end_s")
    TRANSCRIPT_FIELD_NUMBER: _ClassVar[int]
    SPEECH_END_S_FIELD_NUMBER: _ClassVar[int]
    transcript: Transcript
    speech_end_s: float
    def __init__(self, transcript: _Optional[_Union[Transcript, _Mapping]] = ..., speech_end_s: _Optional[float] = ...) -> None: ...

class SpeechResumed(_message.Message):
    __slots__ = ("audio_offset_s", "utterance_id")
    AUDIO_OFFSET_S_FIELD_NUMBER: _ClassVar[int]
    UTTERANCE_ID_FIELD_NUMBER: _ClassVar[int]
    audio_offset_s: float
    utterance_id: int
    def __init__(self, audio_offset_s: _Optional[float] = ..., utterance_id: _Optional[int] = ...) -> None: ...

class Transcript(_message.Message):
    __slots__ = ("utterance_id", "text", "start_s", "end_s", "language", "words", "decode_s")
    UTTERANCE_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    START_S_FIELD_NUMBER: _ClassVar[int]
    END_S_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    WORDS_FIELD_NUMBER: _ClassVar[int]
    DECODE_S_FIELD_NUMBER: _ClassVar[int]
    utterance_id: int
    text: str
    start_s: float
    end_s: float
    language: str
    words: _containers.RepeatedCompositeFieldContainer[_common_pb2.WordTiming]
    decode_s: float
    def __init__(self, utterance_id: _Optional[int] = ..., text: _Optional[str] = ..., start_s: _Optional[float] = ..., end_s: _Optional[float] = ..., language: _Optional[str] = ..., words: _Optional[_Iterable[_Union[_common_pb2.WordTiming, _Mapping]]] = ..., decode_s: _Optional[float] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("audio_s",)
    AUDIO_S_FIELD_NUMBER: _ClassVar[int]
    audio_s: float
    def __init__(self, audio_s: _Optional[float] = ...) -> None: ...

class StreamSummary(_message.Message):
    __slots__ = ("audio_s", "utterances")
    AUDIO_S_FIELD_NUMBER: _ClassVar[int]
    UTTERANCES_FIELD_NUMBER: _ClassVar[int]
    audio_s: float
    utterances: int
    def __init__(self, audio_s: _Optional[float] = ..., utterances: _Optional[int] = ...) -> None: ...
