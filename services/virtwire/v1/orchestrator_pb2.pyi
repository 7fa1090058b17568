from virtwire.v1 import guest_pb2 as _guest_pb2
from virtwire.v1 import netclient_pb2 as _netclient_pb2
from virtwire.v1 import tap_pb2 as _tap_pb2
from virtwire.v1 import trace_pb2 as _trace_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UpEventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UP_EVENT_KIND_UNSPECIFIED: _ClassVar[UpEventKind]
    UP_EVENT_KIND_SERVICE_STARTING: _ClassVar[UpEventKind]
    UP_EVENT_KIND_SERVICE_STARTED: _ClassVar[UpEventKind]
    UP_EVENT_KIND_LINK_WIRED: _ClassVar[UpEventKind]
    UP_EVENT_KIND_HEALTHY: _ClassVar[UpEventKind]
    UP_EVENT_KIND_DONE: _ClassVar[UpEventKind]
    UP_EVENT_KIND_ERROR: _ClassVar[UpEventKind]
UP_EVENT_KIND_UNSPECIFIED: UpEventKind
UP_EVENT_KIND_SERVICE_STARTING: UpEventKind
UP_EVENT_KIND_SERVICE_STARTED: UpEventKind
UP_EVENT_KIND_LINK_WIRED: UpEventKind
UP_EVENT_KIND_HEALTHY: UpEventKind
UP_EVENT_KIND_DONE: UpEventKind
UP_EVENT_KIND_ERROR: UpEventKind

class OrchestratorServiceUpRequest(_message.Message):
    __slots__ = ("topology", "source", "backend", "subnet", "metrics_port", "trace_sample", "trace_otlp", "trace_file")
    TOPOLOGY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    SUBNET_FIELD_NUMBER: _ClassVar[int]
    METRICS_PORT_FIELD_NUMBER: _ClassVar[int]
    TRACE_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    TRACE_OTLP_FIELD_NUMBER: _ClassVar[int]
    TRACE_FILE_FIELD_NUMBER: _ClassVar[int]
    topology: str
    source: str
    backend: str
    subnet: str
    metrics_port: int
    trace_sample: str
    trace_otlp: str
    trace_file: bool
    def __init__(self, topology: _Optional[str] = ..., source: _Optional[str] = ..., backend: _Optional[str] = ..., subnet: _Optional[str] = ..., metrics_port: _Optional[int] = ..., trace_sample: _Optional[str] = ..., trace_otlp: _Optional[str] = ..., trace_file: _Optional[bool] = ...) -> None: ...

class OrchestratorServiceUpResponse(_message.Message):
    __slots__ = ("kind", "service", "address", "message")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    kind: UpEventKind
    service: str
    address: str
    message: str
    def __init__(self, kind: _Optional[_Union[UpEventKind, str]] = ..., service: _Optional[str] = ..., address: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class OrchestratorServiceDownRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class OrchestratorServiceDownResponse(_message.Message):
    __slots__ = ("stopped",)
    STOPPED_FIELD_NUMBER: _ClassVar[int]
    stopped: int
    def __init__(self, stopped: _Optional[int] = ...) -> None: ...

class OrchestratorServiceGetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServiceStatus(_message.Message):
    __slots__ = ("name", "kind", "node", "address", "pid", "healthy", "restarts", "host", "backend", "metrics")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    node: str
    address: str
    pid: int
    healthy: bool
    restarts: int
    host: str
    backend: str
    metrics: str
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., node: _Optional[str] = ..., address: _Optional[str] = ..., pid: _Optional[int] = ..., healthy: _Optional[bool] = ..., restarts: _Optional[int] = ..., host: _Optional[str] = ..., backend: _Optional[str] = ..., metrics: _Optional[str] = ...) -> None: ...

class NodeNetClient(_message.Message):
    __slots__ = ("name", "service", "info")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    name: str
    service: str
    info: _netclient_pb2.NetClientInfo
    def __init__(self, name: _Optional[str] = ..., service: _Optional[str] = ..., info: _Optional[_Union[_netclient_pb2.NetClientInfo, _Mapping]] = ...) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("name", "kind", "services", "netclients", "reachable_at", "relays")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    NETCLIENTS_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_AT_FIELD_NUMBER: _ClassVar[int]
    RELAYS_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    services: _containers.RepeatedCompositeFieldContainer[ServiceStatus]
    netclients: _containers.RepeatedCompositeFieldContainer[NodeNetClient]
    reachable_at: str
    relays: _containers.RepeatedCompositeFieldContainer[PublishRelay]
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., services: _Optional[_Iterable[_Union[ServiceStatus, _Mapping]]] = ..., netclients: _Optional[_Iterable[_Union[NodeNetClient, _Mapping]]] = ..., reachable_at: _Optional[str] = ..., relays: _Optional[_Iterable[_Union[PublishRelay, _Mapping]]] = ...) -> None: ...

class PublishRelay(_message.Message):
    __slots__ = ("listen", "target", "accepted", "refused", "target_failed", "active")
    LISTEN_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    TARGET_FAILED_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    listen: str
    target: str
    accepted: int
    refused: int
    target_failed: int
    active: int
    def __init__(self, listen: _Optional[str] = ..., target: _Optional[str] = ..., accepted: _Optional[int] = ..., refused: _Optional[int] = ..., target_failed: _Optional[int] = ..., active: _Optional[int] = ...) -> None: ...

class OrchestratorServiceGetStatusResponse(_message.Message):
    __slots__ = ("name", "state", "nodes", "schedule")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: str
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStatus]
    schedule: _containers.RepeatedCompositeFieldContainer[ScheduleStepStatus]
    def __init__(self, name: _Optional[str] = ..., state: _Optional[str] = ..., nodes: _Optional[_Iterable[_Union[NodeStatus, _Mapping]]] = ..., schedule: _Optional[_Iterable[_Union[ScheduleStepStatus, _Mapping]]] = ...) -> None: ...

class ScheduleStepStatus(_message.Message):
    __slots__ = ("index", "at", "what", "ran", "ran_at", "error")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    WHAT_FIELD_NUMBER: _ClassVar[int]
    RAN_FIELD_NUMBER: _ClassVar[int]
    RAN_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    index: int
    at: float
    what: str
    ran: bool
    ran_at: float
    error: str
    def __init__(self, index: _Optional[int] = ..., at: _Optional[float] = ..., what: _Optional[str] = ..., ran: _Optional[bool] = ..., ran_at: _Optional[float] = ..., error: _Optional[str] = ...) -> None: ...

class OrchestratorServiceSetLinkRequest(_message.Message):
    __slots__ = ("target", "up")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    UP_FIELD_NUMBER: _ClassVar[int]
    target: str
    up: bool
    def __init__(self, target: _Optional[str] = ..., up: _Optional[bool] = ...) -> None: ...

class OrchestratorServiceSetLinkResponse(_message.Message):
    __slots__ = ("netclient",)
    NETCLIENT_FIELD_NUMBER: _ClassVar[int]
    netclient: _netclient_pb2.NetClientInfo
    def __init__(self, netclient: _Optional[_Union[_netclient_pb2.NetClientInfo, _Mapping]] = ...) -> None: ...

class OrchestratorServiceInjectRequest(_message.Message):
    __slots__ = ("target", "frame", "repeat")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    REPEAT_FIELD_NUMBER: _ClassVar[int]
    target: str
    frame: bytes
    repeat: int
    def __init__(self, target: _Optional[str] = ..., frame: _Optional[bytes] = ..., repeat: _Optional[int] = ...) -> None: ...

class OrchestratorServiceInjectResponse(_message.Message):
    __slots__ = ("accepted", "dropped")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    dropped: int
    def __init__(self, accepted: _Optional[int] = ..., dropped: _Optional[int] = ...) -> None: ...

class OrchestratorServiceCaptureRequest(_message.Message):
    __slots__ = ("target", "filter", "count")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    target: str
    filter: _netclient_pb2.CaptureFilter
    count: int
    def __init__(self, target: _Optional[str] = ..., filter: _Optional[_Union[_netclient_pb2.CaptureFilter, _Mapping]] = ..., count: _Optional[int] = ...) -> None: ...

class OrchestratorServiceCaptureResponse(_message.Message):
    __slots__ = ("frame",)
    FRAME_FIELD_NUMBER: _ClassVar[int]
    frame: _netclient_pb2.CaptureResponse
    def __init__(self, frame: _Optional[_Union[_netclient_pb2.CaptureResponse, _Mapping]] = ...) -> None: ...

class OrchestratorServiceWaitForFrameRequest(_message.Message):
    __slots__ = ("target", "match", "direction", "timeout_ms")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    target: str
    match: str
    direction: _netclient_pb2.Direction
    timeout_ms: int
    def __init__(self, target: _Optional[str] = ..., match: _Optional[str] = ..., direction: _Optional[_Union[_netclient_pb2.Direction, str]] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class OrchestratorServiceWaitForFrameResponse(_message.Message):
    __slots__ = ("frame",)
    FRAME_FIELD_NUMBER: _ClassVar[int]
    frame: _netclient_pb2.MatchedFrame
    def __init__(self, frame: _Optional[_Union[_netclient_pb2.MatchedFrame, _Mapping]] = ...) -> None: ...

class OrchestratorServiceExpectNoFrameRequest(_message.Message):
    __slots__ = ("target", "match", "direction", "duration_ms")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    target: str
    match: str
    direction: _netclient_pb2.Direction
    duration_ms: int
    def __init__(self, target: _Optional[str] = ..., match: _Optional[str] = ..., direction: _Optional[_Union[_netclient_pb2.Direction, str]] = ..., duration_ms: _Optional[int] = ...) -> None: ...

class OrchestratorServiceExpectNoFrameResponse(_message.Message):
    __slots__ = ("seen", "frame")
    SEEN_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    seen: bool
    frame: _netclient_pb2.MatchedFrame
    def __init__(self, seen: _Optional[bool] = ..., frame: _Optional[_Union[_netclient_pb2.MatchedFrame, _Mapping]] = ...) -> None: ...

class OrchestratorServiceCountFramesRequest(_message.Message):
    __slots__ = ("target", "match", "direction", "duration_ms", "at_least")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    AT_LEAST_FIELD_NUMBER: _ClassVar[int]
    target: str
    match: str
    direction: _netclient_pb2.Direction
    duration_ms: int
    at_least: int
    def __init__(self, target: _Optional[str] = ..., match: _Optional[str] = ..., direction: _Optional[_Union[_netclient_pb2.Direction, str]] = ..., duration_ms: _Optional[int] = ..., at_least: _Optional[int] = ...) -> None: ...

class OrchestratorServiceCountFramesResponse(_message.Message):
    __slots__ = ("count", "lost", "elapsed_ms")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_MS_FIELD_NUMBER: _ClassVar[int]
    count: int
    lost: int
    elapsed_ms: int
    def __init__(self, count: _Optional[int] = ..., lost: _Optional[int] = ..., elapsed_ms: _Optional[int] = ...) -> None: ...

class OrchestratorServiceTraceRequest(_message.Message):
    __slots__ = ("target", "match", "count", "timeout_ms")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    target: str
    match: str
    count: int
    timeout_ms: int
    def __init__(self, target: _Optional[str] = ..., match: _Optional[str] = ..., count: _Optional[int] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class TracedFrame(_message.Message):
    __slots__ = ("trace_id", "spans", "summary", "spans_dropped", "delivered")
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SPANS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    SPANS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    trace_id: bytes
    spans: _containers.RepeatedCompositeFieldContainer[_trace_pb2.Span]
    summary: str
    spans_dropped: int
    delivered: bool
    def __init__(self, trace_id: _Optional[bytes] = ..., spans: _Optional[_Iterable[_Union[_trace_pb2.Span, _Mapping]]] = ..., summary: _Optional[str] = ..., spans_dropped: _Optional[int] = ..., delivered: _Optional[bool] = ...) -> None: ...

class OrchestratorServiceTraceResponse(_message.Message):
    __slots__ = ("frame",)
    FRAME_FIELD_NUMBER: _ClassVar[int]
    frame: TracedFrame
    def __init__(self, frame: _Optional[_Union[TracedFrame, _Mapping]] = ...) -> None: ...

class OrchestratorServicePingRequest(_message.Message):
    __slots__ = ("from_node", "to", "count", "timeout_ms")
    FROM_NODE_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    from_node: str
    to: str
    count: int
    timeout_ms: int
    def __init__(self, from_node: _Optional[str] = ..., to: _Optional[str] = ..., count: _Optional[int] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class OrchestratorServicePingResponse(_message.Message):
    __slots__ = ("address", "transmitted", "received", "replies")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TRANSMITTED_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    address: str
    transmitted: int
    received: int
    replies: _containers.RepeatedCompositeFieldContainer[_guest_pb2.PingReply]
    def __init__(self, address: _Optional[str] = ..., transmitted: _Optional[int] = ..., received: _Optional[int] = ..., replies: _Optional[_Iterable[_Union[_guest_pb2.PingReply, _Mapping]]] = ...) -> None: ...

class StartHubPort(_message.Message):
    __slots__ = ("name", "peer")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    name: str
    peer: str
    def __init__(self, name: _Optional[str] = ..., peer: _Optional[str] = ...) -> None: ...

class StartHubOptions(_message.Message):
    __slots__ = ("hub_id", "ports", "name")
    HUB_ID_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    hub_id: int
    ports: _containers.RepeatedCompositeFieldContainer[StartHubPort]
    name: str
    def __init__(self, hub_id: _Optional[int] = ..., ports: _Optional[_Iterable[_Union[StartHubPort, _Mapping]]] = ..., name: _Optional[str] = ...) -> None: ...

class StartTapOptions(_message.Message):
    __slots__ = ("backend",)
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    backend: _tap_pb2.BackendConfig
    def __init__(self, backend: _Optional[_Union[_tap_pb2.BackendConfig, _Mapping]] = ...) -> None: ...

class StartGuestMemOptions(_message.Message):
    __slots__ = ("size", "no_prealloc")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    NO_PREALLOC_FIELD_NUMBER: _ClassVar[int]
    size: int
    no_prealloc: bool
    def __init__(self, size: _Optional[int] = ..., no_prealloc: _Optional[bool] = ...) -> None: ...

class StartE1000Options(_message.Message):
    __slots__ = ("guestmem", "mac", "model", "compat", "name", "peer", "rpc_dma")
    GUESTMEM_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    COMPAT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    RPC_DMA_FIELD_NUMBER: _ClassVar[int]
    guestmem: str
    mac: str
    model: str
    compat: str
    name: str
    peer: str
    rpc_dma: bool
    def __init__(self, guestmem: _Optional[str] = ..., mac: _Optional[str] = ..., model: _Optional[str] = ..., compat: _Optional[str] = ..., name: _Optional[str] = ..., peer: _Optional[str] = ..., rpc_dma: _Optional[bool] = ...) -> None: ...

class StartGuestOptions(_message.Message):
    __slots__ = ("e1000", "guestmem", "ip", "bridge_tap", "bridge_ip", "netns", "rpc_dma")
    E1000_FIELD_NUMBER: _ClassVar[int]
    GUESTMEM_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    BRIDGE_TAP_FIELD_NUMBER: _ClassVar[int]
    BRIDGE_IP_FIELD_NUMBER: _ClassVar[int]
    NETNS_FIELD_NUMBER: _ClassVar[int]
    RPC_DMA_FIELD_NUMBER: _ClassVar[int]
    e1000: str
    guestmem: str
    ip: str
    bridge_tap: str
    bridge_ip: str
    netns: str
    rpc_dma: bool
    def __init__(self, e1000: _Optional[str] = ..., guestmem: _Optional[str] = ..., ip: _Optional[str] = ..., bridge_tap: _Optional[str] = ..., bridge_ip: _Optional[str] = ..., netns: _Optional[str] = ..., rpc_dma: _Optional[bool] = ...) -> None: ...

class OrchestratorServiceStartServiceRequest(_message.Message):
    __slots__ = ("lan", "name", "listen", "link_transport", "filters", "metrics_listen", "trace_sample", "trace_otlp", "trace_file", "log_format", "hub", "tap", "guestmem", "e1000", "guest")
    LAN_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LISTEN_FIELD_NUMBER: _ClassVar[int]
    LINK_TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    METRICS_LISTEN_FIELD_NUMBER: _ClassVar[int]
    TRACE_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    TRACE_OTLP_FIELD_NUMBER: _ClassVar[int]
    TRACE_FILE_FIELD_NUMBER: _ClassVar[int]
    LOG_FORMAT_FIELD_NUMBER: _ClassVar[int]
    HUB_FIELD_NUMBER: _ClassVar[int]
    TAP_FIELD_NUMBER: _ClassVar[int]
    GUESTMEM_FIELD_NUMBER: _ClassVar[int]
    E1000_FIELD_NUMBER: _ClassVar[int]
    GUEST_FIELD_NUMBER: _ClassVar[int]
    lan: str
    name: str
    listen: str
    link_transport: str
    filters: _containers.RepeatedScalarFieldContainer[str]
    metrics_listen: str
    trace_sample: str
    trace_otlp: str
    trace_file: bool
    log_format: str
    hub: StartHubOptions
    tap: StartTapOptions
    guestmem: StartGuestMemOptions
    e1000: StartE1000Options
    guest: StartGuestOptions
    def __init__(self, lan: _Optional[str] = ..., name: _Optional[str] = ..., listen: _Optional[str] = ..., link_transport: _Optional[str] = ..., filters: _Optional[_Iterable[str]] = ..., metrics_listen: _Optional[str] = ..., trace_sample: _Optional[str] = ..., trace_otlp: _Optional[str] = ..., trace_file: _Optional[bool] = ..., log_format: _Optional[str] = ..., hub: _Optional[_Union[StartHubOptions, _Mapping]] = ..., tap: _Optional[_Union[StartTapOptions, _Mapping]] = ..., guestmem: _Optional[_Union[StartGuestMemOptions, _Mapping]] = ..., e1000: _Optional[_Union[StartE1000Options, _Mapping]] = ..., guest: _Optional[_Union[StartGuestOptions, _Mapping]] = ...) -> None: ...

class OrchestratorServiceStartServiceResponse(_message.Message):
    __slots__ = ("address", "pid")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    address: str
    pid: int
    def __init__(self, address: _Optional[str] = ..., pid: _Optional[int] = ...) -> None: ...

class OrchestratorServiceStopServicesRequest(_message.Message):
    __slots__ = ("lan", "names", "timeout_ms")
    LAN_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    lan: str
    names: _containers.RepeatedScalarFieldContainer[str]
    timeout_ms: int
    def __init__(self, lan: _Optional[str] = ..., names: _Optional[_Iterable[str]] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class OrchestratorServiceStopServicesResponse(_message.Message):
    __slots__ = ("stopped",)
    STOPPED_FIELD_NUMBER: _ClassVar[int]
    stopped: int
    def __init__(self, stopped: _Optional[int] = ...) -> None: ...

class OrchestratorServiceListServicesRequest(_message.Message):
    __slots__ = ("lan",)
    LAN_FIELD_NUMBER: _ClassVar[int]
    lan: str
    def __init__(self, lan: _Optional[str] = ...) -> None: ...

class AgentService(_message.Message):
    __slots__ = ("lan", "name", "kind", "address", "pid", "exited")
    LAN_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    EXITED_FIELD_NUMBER: _ClassVar[int]
    lan: str
    name: str
    kind: str
    address: str
    pid: int
    exited: str
    def __init__(self, lan: _Optional[str] = ..., name: _Optional[str] = ..., kind: _Optional[str] = ..., address: _Optional[str] = ..., pid: _Optional[int] = ..., exited: _Optional[str] = ...) -> None: ...

class OrchestratorServiceListServicesResponse(_message.Message):
    __slots__ = ("services",)
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[AgentService]
    def __init__(self, services: _Optional[_Iterable[_Union[AgentService, _Mapping]]] = ...) -> None: ...
