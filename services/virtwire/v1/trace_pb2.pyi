from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Span(_message.Message):
    __slots__ = ("seq", "trace_id", "span_id", "parent_span_id", "name", "service", "start_unix_nano", "end_unix_nano", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    START_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    END_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    seq: int
    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes
    name: str
    service: str
    start_unix_nano: int
    end_unix_nano: int
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, seq: _Optional[int] = ..., trace_id: _Optional[bytes] = ..., span_id: _Optional[bytes] = ..., parent_span_id: _Optional[bytes] = ..., name: _Optional[str] = ..., service: _Optional[str] = ..., start_unix_nano: _Optional[int] = ..., end_unix_nano: _Optional[int] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ArmTraceRequest(_message.Message):
    __slots__ = ("netclient", "match", "count", "sample")
    NETCLIENT_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    netclient: str
    match: str
    count: int
    sample: str
    def __init__(self, netclient: _Optional[str] = ..., match: _Optional[str] = ..., count: _Optional[int] = ..., sample: _Optional[str] = ...) -> None: ...

class ArmTraceResponse(_message.Message):
    __slots__ = ("netclients",)
    NETCLIENTS_FIELD_NUMBER: _ClassVar[int]
    netclients: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, netclients: _Optional[_Iterable[str]] = ...) -> None: ...

class ReadSpansRequest(_message.Message):
    __slots__ = ("after_seq", "trace_ids", "max_spans")
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    TRACE_IDS_FIELD_NUMBER: _ClassVar[int]
    MAX_SPANS_FIELD_NUMBER: _ClassVar[int]
    after_seq: int
    trace_ids: _containers.RepeatedScalarFieldContainer[bytes]
    max_spans: int
    def __init__(self, after_seq: _Optional[int] = ..., trace_ids: _Optional[_Iterable[bytes]] = ..., max_spans: _Optional[int] = ...) -> None: ...

class ReadSpansResponse(_message.Message):
    __slots__ = ("spans", "last_seq", "dropped")
    SPANS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    spans: _containers.RepeatedCompositeFieldContainer[Span]
    last_seq: int
    dropped: int
    def __init__(self, spans: _Optional[_Iterable[_Union[Span, _Mapping]]] = ..., last_seq: _Optional[int] = ..., dropped: _Optional[int] = ...) -> None: ...
