from virtwire.v1 import netclient_pb2 as _netclient_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AddPortRequest(_message.Message):
    __slots__ = ("name", "peer")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    name: str
    peer: str
    def __init__(self, name: _Optional[str] = ..., peer: _Optional[str] = ...) -> None: ...

class AddPortResponse(_message.Message):
    __slots__ = ("port",)
    PORT_FIELD_NUMBER: _ClassVar[int]
    port: _netclient_pb2.NetClientInfo
    def __init__(self, port: _Optional[_Union[_netclient_pb2.NetClientInfo, _Mapping]] = ...) -> None: ...

class RemovePortRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RemovePortResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPortsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPortsResponse(_message.Message):
    __slots__ = ("hub_id", "ports", "max_ports", "ports_refused")
    HUB_ID_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    MAX_PORTS_FIELD_NUMBER: _ClassVar[int]
    PORTS_REFUSED_FIELD_NUMBER: _ClassVar[int]
    hub_id: int
    ports: _containers.RepeatedCompositeFieldContainer[_netclient_pb2.NetClientInfo]
    max_ports: int
    ports_refused: int
    def __init__(self, hub_id: _Optional[int] = ..., ports: _Optional[_Iterable[_Union[_netclient_pb2.NetClientInfo, _Mapping]]] = ..., max_ports: _Optional[int] = ..., ports_refused: _Optional[int] = ...) -> None: ...
