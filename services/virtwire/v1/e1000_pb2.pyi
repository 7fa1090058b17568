from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterAccess(_message.Message):
    __slots__ = ("offset", "write", "value")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    WRITE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    offset: int
    write: bool
    value: int
    def __init__(self, offset: _Optional[int] = ..., write: _Optional[bool] = ..., value: _Optional[int] = ...) -> None: ...

class ReadRegisterRequest(_message.Message):
    __slots__ = ("offset",)
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    offset: int
    def __init__(self, offset: _Optional[int] = ...) -> None: ...

class ReadRegisterResponse(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: int
    def __init__(self, value: _Optional[int] = ...) -> None: ...

class WriteRegisterRequest(_message.Message):
    __slots__ = ("offset", "value")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    offset: int
    value: int
    def __init__(self, offset: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...

class WriteRegisterResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AccessRegistersRequest(_message.Message):
    __slots__ = ("accesses",)
    ACCESSES_FIELD_NUMBER: _ClassVar[int]
    accesses: _containers.RepeatedCompositeFieldContainer[RegisterAccess]
    def __init__(self, accesses: _Optional[_Iterable[_Union[RegisterAccess, _Mapping]]] = ...) -> None: ...

class AccessRegistersResponse(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class MmioRequest(_message.Message):
    __slots__ = ("accesses", "sync", "tag")
    ACCESSES_FIELD_NUMBER: _ClassVar[int]
    SYNC_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    accesses: _containers.RepeatedCompositeFieldContainer[RegisterAccess]
    sync: bool
    tag: int
    def __init__(self, accesses: _Optional[_Iterable[_Union[RegisterAccess, _Mapping]]] = ..., sync: _Optional[bool] = ..., tag: _Optional[int] = ...) -> None: ...

class MmioResponse(_message.Message):
    __slots__ = ("tag", "values")
    TAG_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    tag: int
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, tag: _Optional[int] = ..., values: _Optional[_Iterable[int]] = ...) -> None: ...

class SetPciCommandRequest(_message.Message):
    __slots__ = ("bus_master", "memory")
    BUS_MASTER_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    bus_master: bool
    memory: bool
    def __init__(self, bus_master: _Optional[bool] = ..., memory: _Optional[bool] = ...) -> None: ...

class SetPciCommandResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchIrqRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RxTrace(_message.Message):
    __slots__ = ("rx_desc", "context")
    RX_DESC_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    rx_desc: int
    context: bytes
    def __init__(self, rx_desc: _Optional[int] = ..., context: _Optional[bytes] = ...) -> None: ...

class WatchIrqResponse(_message.Message):
    __slots__ = ("level", "seq", "traces")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TRACES_FIELD_NUMBER: _ClassVar[int]
    level: bool
    seq: int
    traces: _containers.RepeatedCompositeFieldContainer[RxTrace]
    def __init__(self, level: _Optional[bool] = ..., seq: _Optional[int] = ..., traces: _Optional[_Iterable[_Union[RxTrace, _Mapping]]] = ...) -> None: ...

class OfferMmioSocketRequest(_message.Message):
    __slots__ = ("boot_id",)
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    boot_id: str
    def __init__(self, boot_id: _Optional[str] = ...) -> None: ...

class OfferMmioSocketResponse(_message.Message):
    __slots__ = ("socket", "token", "reason")
    SOCKET_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    socket: str
    token: bytes
    reason: str
    def __init__(self, socket: _Optional[str] = ..., token: _Optional[bytes] = ..., reason: _Optional[str] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("registers", "drops", "link_up", "irq_level", "deferred", "mmio_socket")
    class RegistersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class DropsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class DeferredEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class MmioSocketEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    REGISTERS_FIELD_NUMBER: _ClassVar[int]
    DROPS_FIELD_NUMBER: _ClassVar[int]
    LINK_UP_FIELD_NUMBER: _ClassVar[int]
    IRQ_LEVEL_FIELD_NUMBER: _ClassVar[int]
    DEFERRED_FIELD_NUMBER: _ClassVar[int]
    MMIO_SOCKET_FIELD_NUMBER: _ClassVar[int]
    registers: _containers.ScalarMap[str, int]
    drops: _containers.ScalarMap[str, int]
    link_up: bool
    irq_level: bool
    deferred: _containers.ScalarMap[str, int]
    mmio_socket: _containers.ScalarMap[str, int]
    def __init__(self, registers: _Optional[_Mapping[str, int]] = ..., drops: _Optional[_Mapping[str, int]] = ..., link_up: _Optional[bool] = ..., irq_level: _Optional[bool] = ..., deferred: _Optional[_Mapping[str, int]] = ..., mmio_socket: _Optional[_Mapping[str, int]] = ...) -> None: ...

class DescribeDeviceRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeDeviceResponse(_message.Message):
    __slots__ = ("model", "device_id", "mac", "guestmem", "dma_path", "netclient")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    GUESTMEM_FIELD_NUMBER: _ClassVar[int]
    DMA_PATH_FIELD_NUMBER: _ClassVar[int]
    NETCLIENT_FIELD_NUMBER: _ClassVar[int]
    model: str
    device_id: int
    mac: str
    guestmem: str
    dma_path: str
    netclient: str
    def __init__(self, model: _Optional[str] = ..., device_id: _Optional[int] = ..., mac: _Optional[str] = ..., guestmem: _Optional[str] = ..., dma_path: _Optional[str] = ..., netclient: _Optional[str] = ...) -> None: ...

class ResetDeviceRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResetDeviceResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
