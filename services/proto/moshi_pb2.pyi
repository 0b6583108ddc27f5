from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConverseRequest(_message.Message):
    __slots__ = ("config", "audio")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    config: DuplexConfig
    audio: AudioFrame
    def __init__(self, config: _Optional[_Union[DuplexConfig, _Mapping]] = ..., audio: _Optional[_Union[AudioFrame, _Mapping]] = ...) -> None: ...

class DuplexConfig(_message.Message):
    __slots__ = ("sample_rate_hz", "text_temperature", "audio_temperature", "text_top_k", "audio_top_k", "seed")
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    TEXT_TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    AUDIO_TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TEXT_TOP_K_FIELD_NUMBER: _ClassVar[int]
    AUDIO_TOP_K_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    sample_rate_hz: int
    text_temperature: float
    audio_temperature: float
    text_top_k: int
    audio_top_k: int
    seed: int
    def __init__(self, sample_rate_hz: _Optional[int] = ..., text_temperature: _Optional[float] = ..., audio_temperature: _Optional[float] = ..., text_top_k: _Optional[int] = ..., audio_top_k: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class AudioFrame(_message.Message):
    __slots__ = ("pcm", "index")
    PCM_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    pcm: bytes
    index: int
    def __init__(self, pcm: _Optional[bytes] = ..., index: _Optional[int] = ...) -> None: ...

class SessionStarted(_message.Message):
    __slots__ = ("frame_samples", "sample_rate_hz", "slot")
    FRAME_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    frame_samples: int
    sample_rate_hz: int
    slot: int
    def __init__(self, frame_samples: _Optional[int] = ..., sample_rate_hz: _Optional[int] = ..., slot: _Optional[int] = ...) -> None: ...

class TextToken(_message.Message):
    __slots__ = ("text", "frame_index")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    text: str
    frame_index: int
    def __init__(self, text: _Optional[str] = ..., frame_index: _Optional[int] = ...) -> None: ...

class ConverseResponse(_message.Message):
    __slots__ = ("started", "audio", "text")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    started: SessionStarted
    audio: AudioFrame
    text: TextToken
    def __init__(self, started: _Optional[_Union[SessionStarted, _Mapping]] = ..., audio: _Optional[_Union[AudioFrame, _Mapping]] = ..., text: _Optional[_Union[TextToken, _Mapping]] = ...) -> None: ...
