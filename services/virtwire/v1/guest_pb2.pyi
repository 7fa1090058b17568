from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SendRequest(_message.Message):
    __slots__ = ("frames",)
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    frames: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, frames: _Optional[_Iterable[bytes]] = ...) -> None: ...

class SendResponse(_message.Message):
    __slots__ = ("queued", "dropped")
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    queued: int
    dropped: int
    def __init__(self, queued: _Optional[int] = ..., dropped: _Optional[int] = ...) -> None: ...

class ReceiveRequest(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class ReceiveResponse(_message.Message):
    __slots__ = ("frame", "timestamp_ns")
    FRAME_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    frame: bytes
    timestamp_ns: int
    def __init__(self, frame: _Optional[bytes] = ..., timestamp_ns: _Optional[int] = ...) -> None: ...

class PingRequest(_message.Message):
    __slots__ = ("address", "count", "interval_ms", "timeout_ms", "size")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    address: str
    count: int
    interval_ms: int
    timeout_ms: int
    size: int
    def __init__(self, address: _Optional[str] = ..., count: _Optional[int] = ..., interval_ms: _Optional[int] = ..., timeout_ms: _Optional[int] = ..., size: _Optional[int] = ...) -> None: ...

class PingReply(_message.Message):
    __slots__ = ("seq", "rtt_us")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    RTT_US_FIELD_NUMBER: _ClassVar[int]
    seq: int
    rtt_us: float
    def __init__(self, seq: _Optional[int] = ..., rtt_us: _Optional[float] = ...) -> None: ...

class PingResponse(_message.Message):
    __slots__ = ("replies", "transmitted", "received")
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    TRANSMITTED_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    replies: _containers.RepeatedCompositeFieldContainer[PingReply]
    transmitted: int
    received: int
    def __init__(self, replies: _Optional[_Iterable[_Union[PingReply, _Mapping]]] = ..., transmitted: _Optional[int] = ..., received: _Optional[int] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("mac", "ip", "link_up", "tx_frames", "rx_frames", "dropped", "interrupts", "responder_replies", "bridge_tap", "e1000")
    MAC_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    LINK_UP_FIELD_NUMBER: _ClassVar[int]
    TX_FRAMES_FIELD_NUMBER: _ClassVar[int]
    RX_FRAMES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    INTERRUPTS_FIELD_NUMBER: _ClassVar[int]
    RESPONDER_REPLIES_FIELD_NUMBER: _ClassVar[int]
    BRIDGE_TAP_FIELD_NUMBER: _ClassVar[int]
    E1000_FIELD_NUMBER: _ClassVar[int]
    mac: str
    ip: str
    link_up: bool
    tx_frames: int
    rx_frames: int
    dropped: int
    interrupts: int
    responder_replies: int
    bridge_tap: str
    e1000: str
    def __init__(self, mac: _Optional[str] = ..., ip: _Optional[str] = ..., link_up: _Optional[bool] = ..., tx_frames: _Optional[int] = ..., rx_frames: _Optional[int] = ..., dropped: _Optional[int] = ..., interrupts: _Optional[int] = ..., responder_replies: _Optional[int] = ..., bridge_tap: _Optional[str] = ..., e1000: _Optional[str] = ...) -> None: ...
