from virtwire.v1 import netclient_pb2 as _netclient_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SwitchPortVlans(_message.Message):
    __slots__ = ("trunk", "vlan", "allowed", "native")
    TRUNK_FIELD_NUMBER: _ClassVar[int]
    VLAN_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    NATIVE_FIELD_NUMBER: _ClassVar[int]
    trunk: bool
    vlan: int
    allowed: _containers.RepeatedScalarFieldContainer[int]
    native: int
    def __init__(self, trunk: _Optional[bool] = ..., vlan: _Optional[int] = ..., allowed: _Optional[_Iterable[int]] = ..., native: _Optional[int] = ...) -> None: ...

class SwitchPortCounters(_message.Message):
    __slots__ = ("filtered_vlan", "filtered_same_port", "filtered_malformed", "filtered_mirror", "flooded", "forwarded_unicast", "no_destination", "learned", "moved", "fdb_refused", "mirrored")
    FILTERED_VLAN_FIELD_NUMBER: _ClassVar[int]
    FILTERED_SAME_PORT_FIELD_NUMBER: _ClassVar[int]
    FILTERED_MALFORMED_FIELD_NUMBER: _ClassVar[int]
    FILTERED_MIRROR_FIELD_NUMBER: _ClassVar[int]
    FLOODED_FIELD_NUMBER: _ClassVar[int]
    FORWARDED_UNICAST_FIELD_NUMBER: _ClassVar[int]
    NO_DESTINATION_FIELD_NUMBER: _ClassVar[int]
    LEARNED_FIELD_NUMBER: _ClassVar[int]
    MOVED_FIELD_NUMBER: _ClassVar[int]
    FDB_REFUSED_FIELD_NUMBER: _ClassVar[int]
    MIRRORED_FIELD_NUMBER: _ClassVar[int]
    filtered_vlan: int
    filtered_same_port: int
    filtered_malformed: int
    filtered_mirror: int
    flooded: int
    forwarded_unicast: int
    no_destination: int
    learned: int
    moved: int
    fdb_refused: int
    mirrored: int
    def __init__(self, filtered_vlan: _Optional[int] = ..., filtered_same_port: _Optional[int] = ..., filtered_malformed: _Optional[int] = ..., filtered_mirror: _Optional[int] = ..., flooded: _Optional[int] = ..., forwarded_unicast: _Optional[int] = ..., no_destination: _Optional[int] = ..., learned: _Optional[int] = ..., moved: _Optional[int] = ..., fdb_refused: _Optional[int] = ..., mirrored: _Optional[int] = ...) -> None: ...

class SwitchPort(_message.Message):
    __slots__ = ("port", "vlans", "counters", "mirror")
    PORT_FIELD_NUMBER: _ClassVar[int]
    VLANS_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    MIRROR_FIELD_NUMBER: _ClassVar[int]
    port: _netclient_pb2.NetClientInfo
    vlans: SwitchPortVlans
    counters: SwitchPortCounters
    mirror: bool
    def __init__(self, port: _Optional[_Union[_netclient_pb2.NetClientInfo, _Mapping]] = ..., vlans: _Optional[_Union[SwitchPortVlans, _Mapping]] = ..., counters: _Optional[_Union[SwitchPortCounters, _Mapping]] = ..., mirror: _Optional[bool] = ...) -> None: ...

class MacTableEntry(_message.Message):
    __slots__ = ("mac", "vlan", "port", "age_seconds")
    MAC_FIELD_NUMBER: _ClassVar[int]
    VLAN_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    mac: str
    vlan: int
    port: str
    age_seconds: float
    def __init__(self, mac: _Optional[str] = ..., vlan: _Optional[int] = ..., port: _Optional[str] = ..., age_seconds: _Optional[float] = ...) -> None: ...

class ListMacTableRequest(_message.Message):
    __slots__ = ("node", "port", "vlan")
    NODE_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    VLAN_FIELD_NUMBER: _ClassVar[int]
    node: str
    port: str
    vlan: int
    def __init__(self, node: _Optional[str] = ..., port: _Optional[str] = ..., vlan: _Optional[int] = ...) -> None: ...

class ListMacTableResponse(_message.Message):
    __slots__ = ("entries", "max_entries", "entries_refused", "aging_seconds", "size")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    MAX_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_REFUSED_FIELD_NUMBER: _ClassVar[int]
    AGING_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[MacTableEntry]
    max_entries: int
    entries_refused: int
    aging_seconds: float
    size: int
    def __init__(self, entries: _Optional[_Iterable[_Union[MacTableEntry, _Mapping]]] = ..., max_entries: _Optional[int] = ..., entries_refused: _Optional[int] = ..., aging_seconds: _Optional[float] = ..., size: _Optional[int] = ...) -> None: ...

class FlushMacTableRequest(_message.Message):
    __slots__ = ("node", "port", "vlan")
    NODE_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    VLAN_FIELD_NUMBER: _ClassVar[int]
    node: str
    port: str
    vlan: int
    def __init__(self, node: _Optional[str] = ..., port: _Optional[str] = ..., vlan: _Optional[int] = ...) -> None: ...

class FlushMacTableResponse(_message.Message):
    __slots__ = ("flushed",)
    FLUSHED_FIELD_NUMBER: _ClassVar[int]
    flushed: int
    def __init__(self, flushed: _Optional[int] = ...) -> None: ...

class SetPortVlansRequest(_message.Message):
    __slots__ = ("node", "port", "vlans")
    NODE_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    VLANS_FIELD_NUMBER: _ClassVar[int]
    node: str
    port: str
    vlans: SwitchPortVlans
    def __init__(self, node: _Optional[str] = ..., port: _Optional[str] = ..., vlans: _Optional[_Union[SwitchPortVlans, _Mapping]] = ...) -> None: ...

class SetPortVlansResponse(_message.Message):
    __slots__ = ("port",)
    PORT_FIELD_NUMBER: _ClassVar[int]
    port: SwitchPort
    def __init__(self, port: _Optional[_Union[SwitchPort, _Mapping]] = ...) -> None: ...

class ListSwitchPortsRequest(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: str
    def __init__(self, node: _Optional[str] = ...) -> None: ...

class ListSwitchPortsResponse(_message.Message):
    __slots__ = ("ports", "mirror")
    PORTS_FIELD_NUMBER: _ClassVar[int]
    MIRROR_FIELD_NUMBER: _ClassVar[int]
    ports: _containers.RepeatedCompositeFieldContainer[SwitchPort]
    mirror: str
    def __init__(self, ports: _Optional[_Iterable[_Union[SwitchPort, _Mapping]]] = ..., mirror: _Optional[str] = ...) -> None: ...
