from virtwire.v1 import netclient_pb2 as _netclient_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TapBackendConfig(_message.Message):
    __slots__ = ("ifname", "vnet_hdr", "no_padding", "script", "downscript")
    IFNAME_FIELD_NUMBER: _ClassVar[int]
    VNET_HDR_FIELD_NUMBER: _ClassVar[int]
    NO_PADDING_FIELD_NUMBER: _ClassVar[int]
    SCRIPT_FIELD_NUMBER: _ClassVar[int]
    DOWNSCRIPT_FIELD_NUMBER: _ClassVar[int]
    ifname: str
    vnet_hdr: bool
    no_padding: bool
    script: str
    downscript: str
    def __init__(self, ifname: _Optional[str] = ..., vnet_hdr: _Optional[bool] = ..., no_padding: _Optional[bool] = ..., script: _Optional[str] = ..., downscript: _Optional[str] = ...) -> None: ...

class StreamBackendConfig(_message.Message):
    __slots__ = ("address", "listen", "reconnect_seconds")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LISTEN_FIELD_NUMBER: _ClassVar[int]
    RECONNECT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    address: str
    listen: bool
    reconnect_seconds: int
    def __init__(self, address: _Optional[str] = ..., listen: _Optional[bool] = ..., reconnect_seconds: _Optional[int] = ...) -> None: ...

class DgramBackendConfig(_message.Message):
    __slots__ = ("local", "remote", "multicast", "multicast_interface")
    LOCAL_FIELD_NUMBER: _ClassVar[int]
    REMOTE_FIELD_NUMBER: _ClassVar[int]
    MULTICAST_FIELD_NUMBER: _ClassVar[int]
    MULTICAST_INTERFACE_FIELD_NUMBER: _ClassVar[int]
    local: str
    remote: str
    multicast: bool
    multicast_interface: str
    def __init__(self, local: _Optional[str] = ..., remote: _Optional[str] = ..., multicast: _Optional[bool] = ..., multicast_interface: _Optional[str] = ...) -> None: ...

class BackendConfig(_message.Message):
    __slots__ = ("name", "peer", "tap", "stream", "dgram")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    TAP_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    DGRAM_FIELD_NUMBER: _ClassVar[int]
    name: str
    peer: str
    tap: TapBackendConfig
    stream: StreamBackendConfig
    dgram: DgramBackendConfig
    def __init__(self, name: _Optional[str] = ..., peer: _Optional[str] = ..., tap: _Optional[_Union[TapBackendConfig, _Mapping]] = ..., stream: _Optional[_Union[StreamBackendConfig, _Mapping]] = ..., dgram: _Optional[_Union[DgramBackendConfig, _Mapping]] = ...) -> None: ...

class AddBackendRequest(_message.Message):
    __slots__ = ("config",)
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    config: BackendConfig
    def __init__(self, config: _Optional[_Union[BackendConfig, _Mapping]] = ...) -> None: ...

class AddBackendResponse(_message.Message):
    __slots__ = ("backend",)
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    backend: _netclient_pb2.NetClientInfo
    def __init__(self, backend: _Optional[_Union[_netclient_pb2.NetClientInfo, _Mapping]] = ...) -> None: ...

class RemoveBackendRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RemoveBackendResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListBackendsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListBackendsResponse(_message.Message):
    __slots__ = ("backends",)
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    backends: _containers.RepeatedCompositeFieldContainer[_netclient_pb2.NetClientInfo]
    def __init__(self, backends: _Optional[_Iterable[_Union[_netclient_pb2.NetClientInfo, _Mapping]]] = ...) -> None: ...
