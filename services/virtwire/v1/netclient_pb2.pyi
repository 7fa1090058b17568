from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Direction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIRECTION_UNSPECIFIED: _ClassVar[Direction]
    DIRECTION_RX: _ClassVar[Direction]
    DIRECTION_TX: _ClassVar[Direction]
    DIRECTION_BOTH: _ClassVar[Direction]

class LinkState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LINK_STATE_UNSPECIFIED: _ClassVar[LinkState]
    LINK_STATE_NO_PEER: _ClassVar[LinkState]
    LINK_STATE_CONNECTING: _ClassVar[LinkState]
    LINK_STATE_UP: _ClassVar[LinkState]

class BackendState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BACKEND_STATE_UNSPECIFIED: _ClassVar[BackendState]
    BACKEND_STATE_CONNECTED: _ClassVar[BackendState]
    BACKEND_STATE_LISTENING: _ClassVar[BackendState]
    BACKEND_STATE_CONNECTING: _ClassVar[BackendState]
DIRECTION_UNSPECIFIED: Direction
DIRECTION_RX: Direction
DIRECTION_TX: Direction
DIRECTION_BOTH: Direction
LINK_STATE_UNSPECIFIED: LinkState
LINK_STATE_NO_PEER: LinkState
LINK_STATE_CONNECTING: LinkState
LINK_STATE_UP: LinkState
BACKEND_STATE_UNSPECIFIED: BackendState
BACKEND_STATE_CONNECTED: BackendState
BACKEND_STATE_LISTENING: BackendState
BACKEND_STATE_CONNECTING: BackendState

class NetClientCounters(_message.Message):
    __slots__ = ("rx_frames", "rx_bytes", "tx_frames", "tx_bytes", "dropped_queue_full", "dropped_link_down", "dropped_refused", "dropped_malformed", "dropped_purged", "queue_len", "capture_dropped", "peer_queue_len", "link_credits_refused", "link_protocol_errors", "capture_refused", "capture_subscribers", "flush_sliced", "dropped_total", "dropped_filter", "dropped_switch")
    RX_FRAMES_FIELD_NUMBER: _ClassVar[int]
    RX_BYTES_FIELD_NUMBER: _ClassVar[int]
    TX_FRAMES_FIELD_NUMBER: _ClassVar[int]
    TX_BYTES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_QUEUE_FULL_FIELD_NUMBER: _ClassVar[int]
    DROPPED_LINK_DOWN_FIELD_NUMBER: _ClassVar[int]
    DROPPED_REFUSED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_MALFORMED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_PURGED_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LEN_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_DROPPED_FIELD_NUMBER: _ClassVar[int]
    PEER_QUEUE_LEN_FIELD_NUMBER: _ClassVar[int]
    LINK_CREDITS_REFUSED_FIELD_NUMBER: _ClassVar[int]
    LINK_PROTOCOL_ERRORS_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_REFUSED_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_SUBSCRIBERS_FIELD_NUMBER: _ClassVar[int]
    FLUSH_SLICED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FILTER_FIELD_NUMBER: _ClassVar[int]
    DROPPED_SWITCH_FIELD_NUMBER: _ClassVar[int]
    rx_frames: int
    rx_bytes: int
    tx_frames: int
    tx_bytes: int
    dropped_queue_full: int
    dropped_link_down: int
    dropped_refused: int
    dropped_malformed: int
    dropped_purged: int
    queue_len: int
    capture_dropped: int
    peer_queue_len: int
    link_credits_refused: int
    link_protocol_errors: int
    capture_refused: int
    capture_subscribers: int
    flush_sliced: int
    dropped_total: int
    dropped_filter: int
    dropped_switch: int
    def __init__(self, rx_frames: _Optional[int] = ..., rx_bytes: _Optional[int] = ..., tx_frames: _Optional[int] = ..., tx_bytes: _Optional[int] = ..., dropped_queue_full: _Optional[int] = ..., dropped_link_down: _Optional[int] = ..., dropped_refused: _Optional[int] = ..., dropped_malformed: _Optional[int] = ..., dropped_purged: _Optional[int] = ..., queue_len: _Optional[int] = ..., capture_dropped: _Optional[int] = ..., peer_queue_len: _Optional[int] = ..., link_credits_refused: _Optional[int] = ..., link_protocol_errors: _Optional[int] = ..., capture_refused: _Optional[int] = ..., capture_subscribers: _Optional[int] = ..., flush_sliced: _Optional[int] = ..., dropped_total: _Optional[int] = ..., dropped_filter: _Optional[int] = ..., dropped_switch: _Optional[int] = ...) -> None: ...

class ServerCounters(_message.Message):
    __slots__ = ("names_refused", "links_refused", "link_credits_refused", "link_protocol_errors", "max_capture_subscribers", "fast_path_accepted", "fast_path_declined", "fast_path_tokens_refused", "fast_path_handshakes_refused", "fast_path_offers_refused")
    NAMES_REFUSED_FIELD_NUMBER: _ClassVar[int]
    LINKS_REFUSED_FIELD_NUMBER: _ClassVar[int]
    LINK_CREDITS_REFUSED_FIELD_NUMBER: _ClassVar[int]
    LINK_PROTOCOL_ERRORS_FIELD_NUMBER: _ClassVar[int]
    MAX_CAPTURE_SUBSCRIBERS_FIELD_NUMBER: _ClassVar[int]
    FAST_PATH_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    FAST_PATH_DECLINED_FIELD_NUMBER: _ClassVar[int]
    FAST_PATH_TOKENS_REFUSED_FIELD_NUMBER: _ClassVar[int]
    FAST_PATH_HANDSHAKES_REFUSED_FIELD_NUMBER: _ClassVar[int]
    FAST_PATH_OFFERS_REFUSED_FIELD_NUMBER: _ClassVar[int]
    names_refused: int
    links_refused: int
    link_credits_refused: int
    link_protocol_errors: int
    max_capture_subscribers: int
    fast_path_accepted: int
    fast_path_declined: int
    fast_path_tokens_refused: int
    fast_path_handshakes_refused: int
    fast_path_offers_refused: int
    def __init__(self, names_refused: _Optional[int] = ..., links_refused: _Optional[int] = ..., link_credits_refused: _Optional[int] = ..., link_protocol_errors: _Optional[int] = ..., max_capture_subscribers: _Optional[int] = ..., fast_path_accepted: _Optional[int] = ..., fast_path_declined: _Optional[int] = ..., fast_path_tokens_refused: _Optional[int] = ..., fast_path_handshakes_refused: _Optional[int] = ..., fast_path_offers_refused: _Optional[int] = ...) -> None: ...

class NetClientInfo(_message.Message):
    __slots__ = ("name", "kind", "admin_down", "link_down", "link_state", "peer", "counters", "info", "dials", "link_error", "backend_state", "backend_address", "link_transport")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ADMIN_DOWN_FIELD_NUMBER: _ClassVar[int]
    LINK_DOWN_FIELD_NUMBER: _ClassVar[int]
    LINK_STATE_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    DIALS_FIELD_NUMBER: _ClassVar[int]
    LINK_ERROR_FIELD_NUMBER: _ClassVar[int]
    BACKEND_STATE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LINK_TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    admin_down: bool
    link_down: bool
    link_state: LinkState
    peer: str
    counters: NetClientCounters
    info: str
    dials: bool
    link_error: str
    backend_state: BackendState
    backend_address: str
    link_transport: str
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., admin_down: _Optional[bool] = ..., link_down: _Optional[bool] = ..., link_state: _Optional[_Union[LinkState, str]] = ..., peer: _Optional[str] = ..., counters: _Optional[_Union[NetClientCounters, _Mapping]] = ..., info: _Optional[str] = ..., dials: _Optional[bool] = ..., link_error: _Optional[str] = ..., backend_state: _Optional[_Union[BackendState, str]] = ..., backend_address: _Optional[str] = ..., link_transport: _Optional[str] = ...) -> None: ...

class ListNetClientsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListNetClientsResponse(_message.Message):
    __slots__ = ("netclients", "server")
    NETCLIENTS_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    netclients: _containers.RepeatedCompositeFieldContainer[NetClientInfo]
    server: ServerCounters
    def __init__(self, netclients: _Optional[_Iterable[_Union[NetClientInfo, _Mapping]]] = ..., server: _Optional[_Union[ServerCounters, _Mapping]] = ...) -> None: ...

class GetNetClientRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetNetClientResponse(_message.Message):
    __slots__ = ("netclient",)
    NETCLIENT_FIELD_NUMBER: _ClassVar[int]
    netclient: NetClientInfo
    def __init__(self, netclient: _Optional[_Union[NetClientInfo, _Mapping]] = ...) -> None: ...

class InjectRequest(_message.Message):
    __slots__ = ("name", "frame", "repeat")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    REPEAT_FIELD_NUMBER: _ClassVar[int]
    name: str
    frame: bytes
    repeat: int
    def __init__(self, name: _Optional[str] = ..., frame: _Optional[bytes] = ..., repeat: _Optional[int] = ...) -> None: ...

class InjectResponse(_message.Message):
    __slots__ = ("accepted", "dropped")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    dropped: int
    def __init__(self, accepted: _Optional[int] = ..., dropped: _Optional[int] = ...) -> None: ...

class CaptureFilter(_message.Message):
    __slots__ = ("direction", "ethertype", "mac", "src_mac", "dst_mac")
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    ETHERTYPE_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    SRC_MAC_FIELD_NUMBER: _ClassVar[int]
    DST_MAC_FIELD_NUMBER: _ClassVar[int]
    direction: Direction
    ethertype: int
    mac: str
    src_mac: str
    dst_mac: str
    def __init__(self, direction: _Optional[_Union[Direction, str]] = ..., ethertype: _Optional[int] = ..., mac: _Optional[str] = ..., src_mac: _Optional[str] = ..., dst_mac: _Optional[str] = ...) -> None: ...

class CaptureRequest(_message.Message):
    __slots__ = ("name", "filter", "count", "snaplen")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SNAPLEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    filter: CaptureFilter
    count: int
    snaplen: int
    def __init__(self, name: _Optional[str] = ..., filter: _Optional[_Union[CaptureFilter, _Mapping]] = ..., count: _Optional[int] = ..., snaplen: _Optional[int] = ...) -> None: ...

class CaptureResponse(_message.Message):
    __slots__ = ("frame", "orig_len", "direction", "timestamp_ns", "dropped")
    FRAME_FIELD_NUMBER: _ClassVar[int]
    ORIG_LEN_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    frame: bytes
    orig_len: int
    direction: Direction
    timestamp_ns: int
    dropped: int
    def __init__(self, frame: _Optional[bytes] = ..., orig_len: _Optional[int] = ..., direction: _Optional[_Union[Direction, str]] = ..., timestamp_ns: _Optional[int] = ..., dropped: _Optional[int] = ...) -> None: ...

class SetLinkRequest(_message.Message):
    __slots__ = ("name", "up")
    NAME_FIELD_NUMBER: _ClassVar[int]
    UP_FIELD_NUMBER: _ClassVar[int]
    name: str
    up: bool
    def __init__(self, name: _Optional[str] = ..., up: _Optional[bool] = ...) -> None: ...

class SetLinkResponse(_message.Message):
    __slots__ = ("netclient",)
    NETCLIENT_FIELD_NUMBER: _ClassVar[int]
    netclient: NetClientInfo
    def __init__(self, netclient: _Optional[_Union[NetClientInfo, _Mapping]] = ...) -> None: ...

class MatchedFrame(_message.Message):
    __slots__ = ("frame", "direction", "timestamp_ns")
    FRAME_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    frame: bytes
    direction: Direction
    timestamp_ns: int
    def __init__(self, frame: _Optional[bytes] = ..., direction: _Optional[_Union[Direction, str]] = ..., timestamp_ns: _Optional[int] = ...) -> None: ...

class WaitForFrameRequest(_message.Message):
    __slots__ = ("name", "match", "direction", "timeout_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    match: str
    direction: Direction
    timeout_ms: int
    def __init__(self, name: _Optional[str] = ..., match: _Optional[str] = ..., direction: _Optional[_Union[Direction, str]] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class WaitForFrameResponse(_message.Message):
    __slots__ = ("frame",)
    FRAME_FIELD_NUMBER: _ClassVar[int]
    frame: MatchedFrame
    def __init__(self, frame: _Optional[_Union[MatchedFrame, _Mapping]] = ...) -> None: ...

class ExpectNoFrameRequest(_message.Message):
    __slots__ = ("name", "match", "direction", "duration_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    match: str
    direction: Direction
    duration_ms: int
    def __init__(self, name: _Optional[str] = ..., match: _Optional[str] = ..., direction: _Optional[_Union[Direction, str]] = ..., duration_ms: _Optional[int] = ...) -> None: ...

class ExpectNoFrameResponse(_message.Message):
    __slots__ = ("seen", "frame")
    SEEN_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    seen: bool
    frame: MatchedFrame
    def __init__(self, seen: _Optional[bool] = ..., frame: _Optional[_Union[MatchedFrame, _Mapping]] = ...) -> None: ...

class CountFramesRequest(_message.Message):
    __slots__ = ("name", "match", "direction", "duration_ms", "at_least")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    AT_LEAST_FIELD_NUMBER: _ClassVar[int]
    name: str
    match: str
    direction: Direction
    duration_ms: int
    at_least: int
    def __init__(self, name: _Optional[str] = ..., match: _Optional[str] = ..., direction: _Optional[_Union[Direction, str]] = ..., duration_ms: _Optional[int] = ..., at_least: _Optional[int] = ...) -> None: ...

class CountFramesResponse(_message.Message):
    __slots__ = ("count", "lost", "elapsed_ms")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_MS_FIELD_NUMBER: _ClassVar[int]
    count: int
    lost: int
    elapsed_ms: int
    def __init__(self, count: _Optional[int] = ..., lost: _Optional[int] = ..., elapsed_ms: _Optional[int] = ...) -> None: ...
