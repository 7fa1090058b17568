from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FilterDirection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FILTER_DIRECTION_UNSPECIFIED: _ClassVar[FilterDirection]
    FILTER_DIRECTION_ALL: _ClassVar[FilterDirection]
    FILTER_DIRECTION_RX: _ClassVar[FilterDirection]
    FILTER_DIRECTION_TX: _ClassVar[FilterDirection]

class FilterStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FILTER_STATUS_UNSPECIFIED: _ClassVar[FilterStatus]
    FILTER_STATUS_ON: _ClassVar[FilterStatus]
    FILTER_STATUS_OFF: _ClassVar[FilterStatus]
FILTER_DIRECTION_UNSPECIFIED: FilterDirection
FILTER_DIRECTION_ALL: FilterDirection
FILTER_DIRECTION_RX: FilterDirection
FILTER_DIRECTION_TX: FilterDirection
FILTER_STATUS_UNSPECIFIED: FilterStatus
FILTER_STATUS_ON: FilterStatus
FILTER_STATUS_OFF: FilterStatus

class FilterCounters(_message.Message):
    __slots__ = ("seen", "passed", "taken", "released", "added", "dropped", "dropped_total", "extra")
    class DroppedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    SEEN_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    TAKEN_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    ADDED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    seen: int
    passed: int
    taken: int
    released: int
    added: int
    dropped: _containers.ScalarMap[str, int]
    dropped_total: int
    extra: _containers.ScalarMap[str, int]
    def __init__(self, seen: _Optional[int] = ..., passed: _Optional[int] = ..., taken: _Optional[int] = ..., released: _Optional[int] = ..., added: _Optional[int] = ..., dropped: _Optional[_Mapping[str, int]] = ..., dropped_total: _Optional[int] = ..., extra: _Optional[_Mapping[str, int]] = ...) -> None: ...

class FilterInfo(_message.Message):
    __slots__ = ("netclient", "id", "kind", "direction", "status", "position", "props", "counters")
    class PropsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NETCLIENT_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    PROPS_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    netclient: str
    id: str
    kind: str
    direction: FilterDirection
    status: FilterStatus
    position: int
    props: _containers.ScalarMap[str, str]
    counters: FilterCounters
    def __init__(self, netclient: _Optional[str] = ..., id: _Optional[str] = ..., kind: _Optional[str] = ..., direction: _Optional[_Union[FilterDirection, str]] = ..., status: _Optional[_Union[FilterStatus, str]] = ..., position: _Optional[int] = ..., props: _Optional[_Mapping[str, str]] = ..., counters: _Optional[_Union[FilterCounters, _Mapping]] = ...) -> None: ...

class AddFilterRequest(_message.Message):
    __slots__ = ("netclient", "kind", "id", "direction", "status", "position", "insert", "props")
    class PropsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NETCLIENT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    INSERT_FIELD_NUMBER: _ClassVar[int]
    PROPS_FIELD_NUMBER: _ClassVar[int]
    netclient: str
    kind: str
    id: str
    direction: FilterDirection
    status: FilterStatus
    position: str
    insert: str
    props: _containers.ScalarMap[str, str]
    def __init__(self, netclient: _Optional[str] = ..., kind: _Optional[str] = ..., id: _Optional[str] = ..., direction: _Optional[_Union[FilterDirection, str]] = ..., status: _Optional[_Union[FilterStatus, str]] = ..., position: _Optional[str] = ..., insert: _Optional[str] = ..., props: _Optional[_Mapping[str, str]] = ...) -> None: ...

class AddFilterResponse(_message.Message):
    __slots__ = ("filter",)
    FILTER_FIELD_NUMBER: _ClassVar[int]
    filter: FilterInfo
    def __init__(self, filter: _Optional[_Union[FilterInfo, _Mapping]] = ...) -> None: ...

class UpdateFilterRequest(_message.Message):
    __slots__ = ("netclient", "id", "props", "status")
    class PropsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NETCLIENT_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    PROPS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    netclient: str
    id: str
    props: _containers.ScalarMap[str, str]
    status: FilterStatus
    def __init__(self, netclient: _Optional[str] = ..., id: _Optional[str] = ..., props: _Optional[_Mapping[str, str]] = ..., status: _Optional[_Union[FilterStatus, str]] = ...) -> None: ...

class UpdateFilterResponse(_message.Message):
    __slots__ = ("filter",)
    FILTER_FIELD_NUMBER: _ClassVar[int]
    filter: FilterInfo
    def __init__(self, filter: _Optional[_Union[FilterInfo, _Mapping]] = ...) -> None: ...

class RemoveFilterRequest(_message.Message):
    __slots__ = ("netclient", "id")
    NETCLIENT_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    netclient: str
    id: str
    def __init__(self, netclient: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class RemoveFilterResponse(_message.Message):
    __slots__ = ("filter",)
    FILTER_FIELD_NUMBER: _ClassVar[int]
    filter: FilterInfo
    def __init__(self, filter: _Optional[_Union[FilterInfo, _Mapping]] = ...) -> None: ...

class ListFiltersRequest(_message.Message):
    __slots__ = ("netclient",)
    NETCLIENT_FIELD_NUMBER: _ClassVar[int]
    netclient: str
    def __init__(self, netclient: _Optional[str] = ...) -> None: ...

class ListFiltersResponse(_message.Message):
    __slots__ = ("filters",)
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    filters: _containers.RepeatedCompositeFieldContainer[FilterInfo]
    def __init__(self, filters: _Optional[_Iterable[_Union[FilterInfo, _Mapping]]] = ...) -> None: ...
