from services.proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SynthesizeRequest(_message.Message):
    __slots__ = ("config", "text", "flush", "end")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FLUSH_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    config: SynthesisConfig
    text: TextChunk
    flush: _common_pb2.Flush
    end: EndOfInput
    def __init__(self, config: _Optional[_Union[SynthesisConfig, _Mapping]] = ..., text: _Optional[_Union[TextChunk, _Mapping]] = ..., flush: _Optional[_Union[_common_pb2.Flush, _Mapping]] = ..., end: _Optional[_Union[EndOfInput, _Mapping]] = ...) -> None: ...

class SynthesisConfig(_message.Message):
    __slots__ = ("voice", "speed", "sample_rate_hz")
    VOICE_FIELD_NUMBER: _ClassVar[int]
    SPEED_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    voice: str
    speed: float
    sample_rate_hz: int
    def __init__(self, voice: _Optional[str] = ..., speed: _Optional[float] = ..., sample_rate_hz: _Optional[int] = ...) -> None: ...

class TextChunk(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class EndOfInput(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SynthesizeResponse(_message.Message):
    __slots__ = ("audio", "done")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    audio: SpeechAudio
    done: SynthesisDone
    def __init__(self, audio: _Optional[_Union[SpeechAudio, _Mapping]] = ..., done: _Optional[_Union[SynthesisDone, _Mapping]] = ...) -> None: ...

class SpeechAudio(_message.Message):
    __slots__ = ("pcm", "sample_rate_hz", "text", "segment_id", "words", "segment_end")
    PCM_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    WORDS_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_END_FIELD_NUMBER: _ClassVar[int]
    pcm: bytes
    sample_rate_hz: int
    text: str
    segment_id: int
    words: _containers.RepeatedCompositeFieldContainer[_common_pb2.WordTiming]
    segment_end: bool
    def __init__(self, pcm: _Optional[bytes] = ..., sample_rate_hz: _Optional[int] = ..., text: _Optional[str] = ..., segment_id: _Optional[int] = ..., words: _Optional[_Iterable[_Union[_common_pb2.WordTiming, _Mapping]]] = ..., segment_end: _Optional[bool] = ...) -> None: ...

class SynthesisDone(_message.Message):
    __slots__ = ("segments", "audio_s")
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    AUDIO_S_FIELD_NUMBER: _ClassVar[int]
    segments: int
    audio_s: float
    def __init__(self, segments: _Optional[int] = ..., audio_s: _Optional[float] = ...) -> None: ...
