from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LinkBatch(_message.Message):
    __slots__ = ("frames", "completion_requests", "completions", "credits", "ready", "traces")
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    COMPLETIONS_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    TRACES_FIELD_NUMBER: _ClassVar[int]
    frames: _containers.RepeatedScalarFieldContainer[bytes]
    completion_requests: _containers.RepeatedCompositeFieldContainer[CompletionRequest]
    completions: _containers.RepeatedCompositeFieldContainer[Completion]
    credits: int
    ready: ReadyState
    traces: _containers.RepeatedCompositeFieldContainer[FrameTrace]
    def __init__(self, frames: _Optional[_Iterable[bytes]] = ..., completion_requests: _Optional[_Iterable[_Union[CompletionRequest, _Mapping]]] = ..., completions: _Optional[_Iterable[_Union[Completion, _Mapping]]] = ..., credits: _Optional[int] = ..., ready: _Optional[_Union[ReadyState, _Mapping]] = ..., traces: _Optional[_Iterable[_Union[FrameTrace, _Mapping]]] = ...) -> None: ...

class FrameTrace(_message.Message):
    __slots__ = ("index", "context")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    index: int
    context: bytes
    def __init__(self, index: _Optional[int] = ..., context: _Optional[bytes] = ...) -> None: ...

class CompletionRequest(_message.Message):
    __slots__ = ("index", "id")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    index: int
    id: int
    def __init__(self, index: _Optional[int] = ..., id: _Optional[int] = ...) -> None: ...

class Completion(_message.Message):
    __slots__ = ("id", "ret")
    ID_FIELD_NUMBER: _ClassVar[int]
    RET_FIELD_NUMBER: _ClassVar[int]
    id: int
    ret: int
    def __init__(self, id: _Optional[int] = ..., ret: _Optional[int] = ...) -> None: ...

class ReadyState(_message.Message):
    __slots__ = ("can_receive", "discards")
    CAN_RECEIVE_FIELD_NUMBER: _ClassVar[int]
    DISCARDS_FIELD_NUMBER: _ClassVar[int]
    can_receive: bool
    discards: bool
    def __init__(self, can_receive: _Optional[bool] = ..., discards: _Optional[bool] = ...) -> None: ...

class LinkHello(_message.Message):
    __slots__ = ("netclient", "peer", "credits", "can_receive", "fast_path")
    NETCLIENT_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    CAN_RECEIVE_FIELD_NUMBER: _ClassVar[int]
    FAST_PATH_FIELD_NUMBER: _ClassVar[int]
    netclient: str
    peer: str
    credits: int
    can_receive: bool
    fast_path: LinkFastPathOffer
    def __init__(self, netclient: _Optional[str] = ..., peer: _Optional[str] = ..., credits: _Optional[int] = ..., can_receive: _Optional[bool] = ..., fast_path: _Optional[_Union[LinkFastPathOffer, _Mapping]] = ...) -> None: ...

class LinkFastPathOffer(_message.Message):
    __slots__ = ("boot_id",)
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    boot_id: str
    def __init__(self, boot_id: _Optional[str] = ...) -> None: ...

class LinkFastPath(_message.Message):
    __slots__ = ("socket", "token")
    SOCKET_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    socket: str
    token: bytes
    def __init__(self, socket: _Optional[str] = ..., token: _Optional[bytes] = ...) -> None: ...

class LinkFastPathResult(_message.Message):
    __slots__ = ("connected", "reason")
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    connected: bool
    reason: str
    def __init__(self, connected: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class LinkWelcome(_message.Message):
    __slots__ = ("netclient", "credits", "can_receive", "fast_path")
    NETCLIENT_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    CAN_RECEIVE_FIELD_NUMBER: _ClassVar[int]
    FAST_PATH_FIELD_NUMBER: _ClassVar[int]
    netclient: str
    credits: int
    can_receive: bool
    fast_path: LinkFastPath
    def __init__(self, netclient: _Optional[str] = ..., credits: _Optional[int] = ..., can_receive: _Optional[bool] = ..., fast_path: _Optional[_Union[LinkFastPath, _Mapping]] = ...) -> None: ...

class ConnectRequest(_message.Message):
    __slots__ = ("hello", "batch", "fast_path_result")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    FAST_PATH_RESULT_FIELD_NUMBER: _ClassVar[int]
    hello: LinkHello
    batch: LinkBatch
    fast_path_result: LinkFastPathResult
    def __init__(self, hello: _Optional[_Union[LinkHello, _Mapping]] = ..., batch: _Optional[_Union[LinkBatch, _Mapping]] = ..., fast_path_result: _Optional[_Union[LinkFastPathResult, _Mapping]] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("welcome", "batch")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    welcome: LinkWelcome
    batch: LinkBatch
    def __init__(self, welcome: _Optional[_Union[LinkWelcome, _Mapping]] = ..., batch: _Optional[_Union[LinkBatch, _Mapping]] = ...) -> None: ...
