from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GuestMemServiceReadRequest(_message.Message):
    __slots__ = ("addr", "size")
    ADDR_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    addr: int
    size: int
    def __init__(self, addr: _Optional[int] = ..., size: _Optional[int] = ...) -> None: ...

class GuestMemServiceReadResponse(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class GuestMemServiceWriteRequest(_message.Message):
    __slots__ = ("addr", "data")
    ADDR_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    addr: int
    data: bytes
    def __init__(self, addr: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class GuestMemServiceWriteResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GuestMemOp(_message.Message):
    __slots__ = ("addr", "read_size", "write_data")
    ADDR_FIELD_NUMBER: _ClassVar[int]
    READ_SIZE_FIELD_NUMBER: _ClassVar[int]
    WRITE_DATA_FIELD_NUMBER: _ClassVar[int]
    addr: int
    read_size: int
    write_data: bytes
    def __init__(self, addr: _Optional[int] = ..., read_size: _Optional[int] = ..., write_data: _Optional[bytes] = ...) -> None: ...

class GuestMemOpResult(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class GuestMemServiceBatchRequest(_message.Message):
    __slots__ = ("ops",)
    OPS_FIELD_NUMBER: _ClassVar[int]
    ops: _containers.RepeatedCompositeFieldContainer[GuestMemOp]
    def __init__(self, ops: _Optional[_Iterable[_Union[GuestMemOp, _Mapping]]] = ...) -> None: ...

class GuestMemServiceBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[GuestMemOpResult]
    def __init__(self, results: _Optional[_Iterable[_Union[GuestMemOpResult, _Mapping]]] = ...) -> None: ...

class GuestMemServiceDescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GuestMemHostIdentity(_message.Message):
    __slots__ = ("boot_id", "hostname")
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    boot_id: str
    hostname: str
    def __init__(self, boot_id: _Optional[str] = ..., hostname: _Optional[str] = ...) -> None: ...

class GuestMemServiceDescribeResponse(_message.Message):
    __slots__ = ("size", "shm_path", "shm_device", "shm_inode", "host", "max_op_bytes", "max_batch_bytes", "max_batch_ops", "max_size", "preallocated")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHM_PATH_FIELD_NUMBER: _ClassVar[int]
    SHM_DEVICE_FIELD_NUMBER: _ClassVar[int]
    SHM_INODE_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    MAX_OP_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_OPS_FIELD_NUMBER: _ClassVar[int]
    MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    PREALLOCATED_FIELD_NUMBER: _ClassVar[int]
    size: int
    shm_path: str
    shm_device: int
    shm_inode: int
    host: GuestMemHostIdentity
    max_op_bytes: int
    max_batch_bytes: int
    max_batch_ops: int
    max_size: int
    preallocated: bool
    def __init__(self, size: _Optional[int] = ..., shm_path: _Optional[str] = ..., shm_device: _Optional[int] = ..., shm_inode: _Optional[int] = ..., host: _Optional[_Union[GuestMemHostIdentity, _Mapping]] = ..., max_op_bytes: _Optional[int] = ..., max_batch_bytes: _Optional[int] = ..., max_batch_ops: _Optional[int] = ..., max_size: _Optional[int] = ..., preallocated: _Optional[bool] = ...) -> None: ...

class GuestMemServiceStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GuestMemCounters(_message.Message):
    __slots__ = ("shm_bytes_read", "shm_bytes_written", "shm_reads", "shm_writes", "rpc_bytes_read", "rpc_bytes_written", "rpc_reads", "rpc_writes", "rpc_batches", "out_of_range", "invalid_requests")
    SHM_BYTES_READ_FIELD_NUMBER: _ClassVar[int]
    SHM_BYTES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    SHM_READS_FIELD_NUMBER: _ClassVar[int]
    SHM_WRITES_FIELD_NUMBER: _ClassVar[int]
    RPC_BYTES_READ_FIELD_NUMBER: _ClassVar[int]
    RPC_BYTES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    RPC_READS_FIELD_NUMBER: _ClassVar[int]
    RPC_WRITES_FIELD_NUMBER: _ClassVar[int]
    RPC_BATCHES_FIELD_NUMBER: _ClassVar[int]
    OUT_OF_RANGE_FIELD_NUMBER: _ClassVar[int]
    INVALID_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    shm_bytes_read: int
    shm_bytes_written: int
    shm_reads: int
    shm_writes: int
    rpc_bytes_read: int
    rpc_bytes_written: int
    rpc_reads: int
    rpc_writes: int
    rpc_batches: int
    out_of_range: int
    invalid_requests: int
    def __init__(self, shm_bytes_read: _Optional[int] = ..., shm_bytes_written: _Optional[int] = ..., shm_reads: _Optional[int] = ..., shm_writes: _Optional[int] = ..., rpc_bytes_read: _Optional[int] = ..., rpc_bytes_written: _Optional[int] = ..., rpc_reads: _Optional[int] = ..., rpc_writes: _Optional[int] = ..., rpc_batches: _Optional[int] = ..., out_of_range: _Optional[int] = ..., invalid_requests: _Optional[int] = ...) -> None: ...

class GuestMemServiceStatsResponse(_message.Message):
    __slots__ = ("counters",)
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    counters: GuestMemCounters
    def __init__(self, counters: _Optional[_Union[GuestMemCounters, _Mapping]] = ...) -> None: ...
