"""Topology files: a virtwire LAN described in YAML, validated before anything starts.

A topology names the LAN, its nodes and the links between them::

    version: 1                      # optional; the only version so far
    name: lab1                      # LAN name: state dir, container names
    hosts:                          # optional: machines to place nodes on, each
      h1: {address: 198.18.1.1}     # running `virtwire serve orchestrator` on
                                    # ADDRESS:PORT (port: default 50050)
    tls: {dir: pki}                 # optional: mutual TLS from `virtwire certs init pki`
    metrics: {port: 9400}           # optional: /metrics per service, ports 9400 up
    link_transport: auto            # optional: auto (default) | grpc, for every node
    nodes:
      hub0: {kind: hub}
      sw0:                          # a learning switch (docs/switch.md)
        kind: switch
        aging: 300s                 # forget a MAC unseen this long (default 300s)
        mirror: tap                 # optional: a port that gets a copy of every frame
        ports:
          p1: {vlan: 10}            # access port (untagged, one VLAN; default 1)
          up: {trunk: [10, 20], native: 1}   # trunk: tagged VLANs, native untagged
      vm1:                          # a virtwire VM: guestmem + e1000 + guest services
        kind: vm
        mac: 52:54:00:12:34:01      # default: QEMU's 52:54:00:12:34:56, +1 per VM
        model: 82540EM              # 82540EM (default) | 82544GC | 82545EM
        compat: "9.0"               # the QEMU whose e1000 to reproduce: 9.0 | 7.2
        memory: 64M                 # guest RAM (binary units)
        ip: 198.18.0.1/24           # the built-in ARP/ICMP responder
        bridge: {ifname: vw1, netns: ns1, ip: 198.18.0.11/24}   # TAP bridge (root)
        host: h1                    # placement (default: this machine)
      qemu0:                        # a tap service with one backend
        kind: tap
        backend: stream             # tap | stream | dgram
        listen: 127.0.0.1:10555     # the backend's options, as in `serve tap --backend`
        publish: 127.0.0.1:10555    # containers: the listening port's host address
        link_transport: grpc        # any node: overrides the LAN's for its services
    links:
      - [vm1, hub0]                 # NODE or HUB:PORT; a hub without a port gets a new one
      - [qemu0, hub0:uplink]

Net filters and a schedule (docs/topology.md)::

    nodes:
      vm2: {kind: vm, netem: {delay: 20ms, loss: 1%}}   # or filters: [{type: KIND, ...}]
      hub0: {kind: hub, ports: {wan: {filters: [{type: dump, file: wan.pcap}]}}}
    links:
      - ends: [vm1, hub0]                               # the long form: filters per end
        filters: {hub0: [{type: netem, id: n0, queue: rx, rate: 10mbit}]}
    schedule:                                           # after the LAN is healthy
      - {at: 10s, link: {node: vm2, state: down}}
      - {at: 20s, netem: {target: vm2, loss: 30%}}      # also netem_reset, filter

``load_topology`` / ``parse_topology`` return a ``Topology`` or raise one
``TopologyError`` listing every problem, one per line, each as
``FILE:LINE: WHERE: WHAT`` (WHERE is ``node 'vm1'``, ``host 'h1'`` or
``links[2] (vm1 -- hub0)``, links counted from 0). A node that fails the
schema does not hide the other checks: the links and clashes are checked
with a stand-in of its kind in its place.

``link_transport`` is ``virtwire serve KIND --link-transport``: ``auto`` lets
a link move to the same-host unix socket where both ends can use it, ``grpc``
keeps it on the Connect stream. The top-level value is the LAN's default; a
node's own value overrides it for that node's services (a hub, a tap, a vm's
e1000 and guest: the e1000's also covers the guest's MMIO socket). A link is
a pair of ends with no options, so a node is the finest choice; either end
with ``grpc`` keeps a link on the stream. A node on another host gets it
through StartService (its ``link_transport``).

Scalars follow YAML 1.2's core schema, not PyYAML's YAML 1.1 default: an
unquoted MAC such as ``52:54:00:12:34:01`` stays a string (YAML 1.1 reads it
as a base-60 number), ``on``/``yes``/``no`` are strings (only ``true`` and
``false`` are booleans) and ``010`` is ten. Duplicate keys are errors.

Start order and dialling: hubs start first, then each VM's guestmem, e1000 and
guest services, then the tap services, in file order within each kind. In
every link the endpoint that starts later dials the one that started earlier,
so a dialler is always given the address of a service that is already up: a VM
or tap dials its hub, the later of two peered VMs or taps dials the earlier, a
tap dials the VM it is peered with, and of two hubs the later-declared one
dials the other.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import shlex
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, ScalarNode, SequenceNode
from yaml.nodes import Node as YamlNode
from yaml.reader import ReaderError

from virtwire.address import parse_sockaddr, shorten
from virtwire.allowlist import RpcPolicy
from virtwire.errors import ConfigError, PermissionDeniedError
from virtwire.guest.responder import parse_interface
from virtwire.mem.guestmem import check_size, parse_size
from virtwire.net.eth import FrameError, format_mac, parse_mac
from virtwire.net.filter import (
    MAX_FILTERS,
    FilterContext,
    FilterDirection,
    NetFilter,
    TimerHandle,
    check_filter_id,
    parse_status,
)
from virtwire.net.filter_types import FilterSpec, filter_type
from virtwire.net.hub import is_numbered_port
from virtwire.net.netdev import Netdev, format_backend_spec, netdev_from_options
from virtwire.net.switch import (
    AGING_MAX_S,
    DEFAULT_AGING_S,
    DEFAULT_MAX_ENTRIES,
    MAX_ENTRIES_LIMIT,
    VLAN_MAX,
    VLAN_MIN,
    PortVlans,
)
from virtwire.net.tap import check_ifname
from virtwire.net.units import parse_duration

__all__ = [
    "Bridge",
    "ContainerInterface",
    "ContainerNode",
    "Endpoint",
    "Host",
    "HubNode",
    "Link",
    "NetnsInterface",
    "NetnsNode",
    "NetnsRoute",
    "Node",
    "NodeFilter",
    "QemuNode",
    "ScheduleStep",
    "Service",
    "SwitchNode",
    "TapNode",
    "Topology",
    "TopologyError",
    "TopologySpec",
    "VmNode",
    "json_schema",
    "load_topology",
    "parse_topology",
]

NodeKind = Literal["hub", "switch", "vm", "tap", "netns", "qemu", "container"]
ServiceKind = Literal["hub", "guestmem", "e1000", "guest", "tap", "qemu"]
#: ``serve KIND --link-transport`` (server.link.LINK_TRANSPORTS).
LinkTransport = Literal["auto", "grpc"]
E1000ModelName = Literal["82540EM", "82544GC", "82545EM"]
QemuCompat = Literal["9.0", "7.2"]

NODE_KINDS: tuple[NodeKind, ...] = ("hub", "switch", "vm", "tap", "netns", "qemu",
                                    "container")
#: Kinds whose service is a hub server (ports, HUB:PORT link ends); a switch's
#: service is a hub's with learning and VLANs (``serve switch``).
HUB_KINDS: tuple[NodeKind, ...] = ("hub", "switch")
#: Kinds whose link ends are NODE:IFACE, each interface the tap service NODE-IFACE
#: (a TAP inside the node's network namespace) with a NetClient of that name.
IFACE_KINDS: tuple[NodeKind, ...] = ("netns", "container")
#: The services a vm node runs, in start order; each is named NODE-KIND.
VM_SERVICES: tuple[ServiceKind, ...] = ("guestmem", "e1000", "guest")
#: QEMU's default MAC (qemu_macaddr_default_if_unset): 52:54:00:12:34:56, then
#: the last byte counts up for each NIC that has none.
DEFAULT_MAC_PREFIX = "52:54:00:12:34"
DEFAULT_MAC_FIRST = 0x56

#: Longest LAN and node names: "LAN-NODE-guestmem" stays a 63-character DNS
#: label (container, Swarm service and Kubernetes names).
LAN_NAME_MAX = 24
NODE_NAME_MAX = 28
#: Default port of a host's ``virtwire serve orchestrator`` (hosts: PORT).
AGENT_PORT = 50050
_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")
_PORT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_NETNS_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_DNS_LABEL_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_LINK_FORM = "a link is a pair [NODE, NODE] where a hub end may be HUB:PORT"


class TopologyError(ConfigError):
    """An unreadable or invalid topology; ``problems`` has one line per problem.

    ``denied``: every problem is something this host does not let a topology
    sent by an RPC use (a script path, a unix socket, a netns...), not a mistake.
    """

    def __init__(self, source: str, problems: Sequence[str], *, denied: bool = False) -> None:
        self.source = source
        self.problems = tuple(problems)
        self.denied = denied
        super().__init__("\n".join(self.problems))


# -- YAML: core-schema scalars, line numbers, duplicate keys ----------------------
class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core-schema scalars and only the plain types."""

    yaml_implicit_resolvers: dict[Any, Any] = {}


def _construct_bool(loader: _Loader, node: ScalarNode) -> bool:
    text = str(loader.construct_scalar(node))
    if text.lower() not in ("true", "false"):
        raise ConstructorError(None, None, f"{text!r} is not a boolean (true or false)",
                               node.start_mark)
    return text.lower() == "true"


def _construct_int(loader: _Loader, node: ScalarNode) -> int:
    text = str(loader.construct_scalar(node)).replace("_", "")
    try:
        # Decimal with leading zeros is still decimal (YAML 1.2: 010 is ten).
        return int(text, 10) if re.fullmatch(r"[-+]?[0-9]+", text) else int(text, 0)
    except ValueError:
        raise ConstructorError(None, None, f"{text!r} is not an integer",
                               node.start_mark) from None


def _construct_float(loader: _Loader, node: ScalarNode) -> float:
    text = str(loader.construct_scalar(node)).replace("_", "").lower()
    special = {".inf": math.inf, "+.inf": math.inf, "-.inf": -math.inf, ".nan": math.nan}
    if text in special:
        return special[text]
    try:
        return float(text)
    except ValueError:
        raise ConstructorError(None, None, f"{text!r} is not a number",
                               node.start_mark) from None


for _tag, _pattern, _first in (
        ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
        ("int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
        ("float", r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                  r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$", "-+0123456789."),
        ("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
        ("merge", r"^(?:<<)$", "<")):
    _Loader.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(_pattern),
                                  list(_first))
_SAFE = yaml.SafeLoader.yaml_constructors
_Loader.yaml_constructors = {
    **{tag: _SAFE[tag] for tag in (f"tag:yaml.org,2002:{name}"
                                   for name in ("null", "str", "seq", "map"))},
    "tag:yaml.org,2002:bool": _construct_bool,
    "tag:yaml.org,2002:int": _construct_int,
    "tag:yaml.org,2002:float": _construct_float,
    None: _SAFE[None],  # any other tag (!!binary, !!python/..., !foo): an error
}

_Path = tuple[Hashable, ...]
#: Deepest path whose line is recorded (nodes.NAME.ports.PORT.filters.N.PROP is 7 deep).
_MAX_POSITION_DEPTH = 8


@dataclass
class _Document:
    data: Any
    #: The line (1-based) of each mapping key and sequence item, by path.
    lines: dict[_Path, int]
    #: (path of the mapping, key, first line, repeated line) for each duplicate key.
    duplicates: list[tuple[_Path, Hashable, int, int]]


def _read_yaml(text: str, source: str) -> _Document:
    try:
        loader = _Loader(text)
        try:
            root = loader.get_single_node()
            if root is None:
                raise TopologyError(source, [f"{source}: the file is empty: a topology needs "
                                             "at least 'name' and 'nodes'"])
            lines: dict[_Path, int] = {(): root.start_mark.line + 1}
            duplicates: list[tuple[_Path, Hashable, int, int]] = []
            _scan(loader, root, (), lines, duplicates, set())
            data = loader.construct_document(root)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        what = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem:
            where = (f" at line {exc.context_mark.line + 1}"
                     if exc.context_mark is not None and exc.context_mark is not mark else "")
            what = f"{exc.context}{where}, {exc.problem}"
        raise TopologyError(source, [f"{source}{line}: YAML: {what}"]) from None
    except ReaderError as exc:
        at = text[:exc.position].count("\n") + 1
        char = chr(exc.character) if isinstance(exc.character, int) else exc.character
        raise TopologyError(source, [f"{source}:{at}: YAML: character {char!r} is "
                                     "not allowed in YAML"]) from None
    except yaml.YAMLError as exc:
        raise TopologyError(source, [f"{source}: YAML: {exc}"]) from None
    except RecursionError:
        raise TopologyError(source, [f"{source}: YAML: nested too deeply"]) from None
    if isinstance(data, dict):
        # Top-level x-* keys are extension fields for anchors (as in Compose files).
        data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
    return _Document(data, lines, duplicates)


def _scan(loader: _Loader, node: YamlNode, path: _Path, lines: dict[_Path, int],
          duplicates: list[tuple[_Path, Hashable, int, int]], seen: set[int]) -> None:
    """Record the line of every key and item, and find duplicate keys.

    Each YAML node is visited once (aliases share nodes), so the walk is
    linear even for a "billion laughs" document.
    """
    if id(node) in seen or len(path) >= _MAX_POSITION_DEPTH:
        return
    seen.add(id(node))
    if isinstance(node, MappingNode):
        first: dict[Hashable, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = loader.construct_object(key_node)
            line = key_node.start_mark.line + 1
            try:
                if key in first:
                    duplicates.append((path, key, first[key], line))
                    continue
            except TypeError:  # unhashable: the constructor reports it
                continue
            first[key] = line
            lines[(*path, key)] = line
            _scan(loader, value_node, (*path, key), lines, duplicates, seen)
    elif isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*path, index)] = item.start_mark.line + 1
            _scan(loader, item, (*path, index), lines, duplicates, seen)


# -- field checks (each raises ConfigError saying what is wrong) -------------------
def _check_name(what: str, max_len: int) -> Any:
    def check(name: str) -> str:
        if len(name) > max_len or not _NAME_RE.match(name):
            raise ConfigError(f"bad {what} name {name!r}: use 1 to {max_len} of a-z, 0-9 "
                              "and '-', starting and ending with a letter or digit")
        return name
    return check


#: The LAN and node name rules, for names read back from elsewhere (a state file).
check_lan_name = _check_name("LAN", LAN_NAME_MAX)
check_node_name = _check_name("node", NODE_NAME_MAX)


def _check_mac(text: str) -> str:
    try:
        mac = parse_mac(text)
    except FrameError as exc:
        raise ConfigError(str(exc)) from None
    if mac[0] & 1:
        raise ConfigError(f"{text} is a multicast MAC address (the first octet is odd): "
                          "a NIC needs a unicast one, e.g. 52:54:00:12:34:01")
    if not any(mac):
        raise ConfigError(f"{text} is the all-zero MAC address: a NIC needs a real one")
    return format_mac(mac)


def _check_cidr(text: str) -> str:
    """An IPv4 interface address with its prefix length, as the guest service takes it."""
    if ":" in text:
        raise ConfigError(f"address {text!r} is IPv6: the responder and the bridge "
                          "address are IPv4")
    try:
        return str(parse_interface(text, "address"))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _check_host_address(text: str) -> str:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        labels = text.rstrip(".").split(".")
        if len(text) > 253 or not all(_DNS_LABEL_RE.match(label) for label in labels):
            raise ConfigError(f"bad host address {text!r}: expected an IP address "
                              "or a DNS name") from None
        return text
    if ip.is_unspecified or ip.is_multicast:
        raise ConfigError(f"host address {text!r} is not one other hosts can dial")
    return str(ip)


def _check_bridge_ifname(ifname: str) -> str:
    if not ifname:
        raise ConfigError("the bridge needs an interface name")
    check_ifname(ifname)
    return ifname


def _check_netns(name: str) -> str:
    if not _NETNS_RE.match(name) or name in (".", ".."):
        raise ConfigError(f"bad netns name {name!r}: use 1 to 64 of A-Z, a-z, 0-9, "
                          "'_', '.' and '-'")
    return name


def _check_port_name(name: str, hub: str) -> str:
    if not _PORT_RE.match(name):
        raise ConfigError(f"bad hub port name {name!r}: use 1 to 64 of A-Z, a-z, 0-9, "
                          "'_', '.' and '-', starting with a letter or digit")
    if is_numbered_port(hub, name):  # hub0port0 on hub0, swport0 on sw...
        raise ConfigError(f"hub port name {name!r} is how the hub numbers its unnamed "
                          "ports: pick another name")
    return name


#: Where ``publish:`` may bind on the host: loopback, or the benchmarking
#: range (RFC 2544) virtwire's own networks use; never every interface.
_PUBLISH_NETS = (ipaddress.IPv4Network("127.0.0.0/8"), ipaddress.IPv4Network("198.18.0.0/15"))


def _check_publish(text: str) -> str:
    """``publish:``: IPV4:PORT on loopback or in 198.18.0.0/15, port 1-65535."""
    addr = parse_sockaddr(text, allow_unix=False, allow_port_zero=False)
    try:
        ip = ipaddress.ip_address(addr.host)
    except ValueError:
        ip = None
    if not isinstance(ip, ipaddress.IPv4Address) or not any(ip in n for n in _PUBLISH_NETS):
        raise ConfigError(f"{shorten(text)} is not on a loopback (127.0.0.0/8) or "
                          "198.18.0.0/15 IPv4 address: publish there, e.g. 127.0.0.1:10555")
    return str(addr)


def _memory_bytes(value: object) -> int:
    """``64M``, ``64MiB`` or a number of bytes -> a checked guest RAM size."""
    if isinstance(value, str):
        return check_size(parse_size(value))
    if isinstance(value, int) and not isinstance(value, bool):
        return check_size(value)
    raise ConfigError(f"expected a size such as 64M, or a number of bytes, "
                      f"not {_describe(value)}")


def _option_text(value: object) -> str | None:
    """A backend option as the CLI spec has it: true/false are on/off, numbers text."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int | float):
        return str(value)
    raise ConfigError(f"expected a string, a number or true/false, not {_describe(value)}")


# -- the schema (pydantic): what a file may say ------------------------------------
#: A tap node's fields that are not options of its backend.
_NODE_FIELDS = ("kind", "backend", "host", "publish", "link_transport", "filters", "netem")
#: The backend options that name where a backend waits for its peer.
_LISTEN_OPTIONS = {"stream": ("listen",), "dgram": ("local", "mcast")}


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


HostName = Annotated[str, AfterValidator(_check_name("host", NODE_NAME_MAX))]
NodeName = Annotated[str, AfterValidator(_check_name("node", NODE_NAME_MAX))]
#: A backend option: text, or a YAML number or boolean (true is "on").
_Option = Annotated[str | None, BeforeValidator(_option_text),
                    WithJsonSchema({"type": ["string", "number", "boolean", "null"]})]
#: Guest RAM: "64M", "1G", or bytes; stored as bytes.
_Memory = Annotated[int, BeforeValidator(_memory_bytes),
                    WithJsonSchema({"type": ["string", "integer"], "default": "64M"})]


#: ``filters:`` and ``netem:`` as written: each entry is checked by the resolver
#: (``_Filters``), which knows the filter types and which NetClient it is on.
_RawFilters = Annotated[list[Any], WithJsonSchema(
    {"type": "array", "items": {"type": "object", "required": ["type"]},
     "description": "net filters: {type: KIND, id: ID, queue: all|rx|tx, PROP: VALUE...}"})]
_RawNetem = Annotated[Any, WithJsonSchema(
    {"type": "object", "description": "netem properties (delay: 20ms, loss: 1%...): the "
     "filter 'virtwire netem set' makes (id netem, queue tx)"})]


def _link_ends(value: object) -> object:
    """A link's two ends: the pair itself, or a long form's ``ends``."""
    if isinstance(value, dict):
        if "ends" not in value:
            raise ConfigError("a link written as a mapping needs ends: [NODE, NODE] "
                              "(and may have filters: and netem: per end)")
        return value["ends"]
    return value


class HostSpec(_Spec):
    """A machine nodes can be placed on; ``address`` is how other hosts reach it.

    ``port``: where that host's ``virtwire serve orchestrator`` listens (on ``address``).
    """

    address: Annotated[str, AfterValidator(_check_host_address)]
    port: Annotated[int, Field(ge=1, le=65535)] = AGENT_PORT


#: The first metrics port (``metrics: {}``): one up per service of a machine.
DEFAULT_METRICS_PORT = 9400
#: The service kinds that are `virtwire serve KIND` processes, each with its /metrics.
METRICS_KINDS = frozenset({"hub", "switch", "tap", "guestmem", "e1000", "guest"})


class MetricsSpec(_Spec):
    """``metrics: {port: N}``: every service serves Prometheus /metrics, a process
    of this machine on 127.0.0.1:N, N+1... in start order (docs/metrics.md)."""

    port: Annotated[int, Field(ge=1, le=65535)] = DEFAULT_METRICS_PORT


class TlsSpec(_Spec):
    """``tls: {dir: PKI}``: mutual TLS for the whole LAN from the CA directory PKI
    (relative to the topology file): ``virtwire certs init PKI`` made it. With its
    ``ca-key.pem`` the orchestrator issues every service its certificate; without
    it, ``controller.pem`` and ``service.pem`` there are handed out."""

    dir: Annotated[str, Field(min_length=1, max_length=4096)]


class PortSpec(_Spec):
    """A hub port's filters (``ports: {NAME: {filters: [...], netem: {...}}}``)."""

    filters: _RawFilters = []
    netem: _RawNetem | None = None


class HubSpec(_Spec):
    """A hub (QEMU's -netdev hubport): frames go to every port but the source."""

    kind: Literal["hub"]
    host: HostName | None = None
    link_transport: LinkTransport | None = None
    #: Filters of named ports (each named in a link, HUB:PORT).
    ports: dict[str, PortSpec] = {}


def _check_vid(vid: int) -> int:
    if not VLAN_MIN <= vid <= VLAN_MAX:
        raise ConfigError(f"bad VLAN {vid}: a VLAN id is {VLAN_MIN} to {VLAN_MAX}")
    return vid


_Vid = Annotated[int, AfterValidator(_check_vid)]


class SwitchPortSpec(PortSpec):
    """A switch port: ``vlan: 10`` (access) or ``trunk: [10, 20]`` with an
    optional ``native: 1``; and filters, as a hub port's."""

    vlan: _Vid | None = None
    trunk: Annotated[list[_Vid], Field(min_length=1, max_length=VLAN_MAX)] | None = None
    native: _Vid | None = None

    @model_validator(mode="after")
    def _one_mode(self) -> Self:
        if self.vlan is not None and self.trunk is not None:
            raise ConfigError("a port is an access port (vlan: V) or a trunk (trunk: [V, ...]),"
                              " not both")
        if self.native is not None and self.trunk is None:
            raise ConfigError("native: only a trunk port has a native VLAN (give trunk: [...])")
        return self

    def vlans(self) -> PortVlans | None:
        """The port's VLANs, None if it gives none (access VLAN 1)."""
        if self.trunk is not None:
            return PortVlans.trunked(self.trunk, self.native)
        return PortVlans.access(self.vlan) if self.vlan is not None else None


def _aging_seconds(value: object) -> object:
    if isinstance(value, str):
        value = parse_duration(value, "aging")
    if isinstance(value, (int, float)) and not isinstance(value, bool) \
            and not 0 < value <= AGING_MAX_S:
        raise ConfigError(f"aging {value}: more than 0 s, at most a week")
    return value


class SwitchSpec(HubSpec):
    """A learning switch: MAC learning with aging, 802.1Q VLANs, a mirror port."""

    kind: Literal["switch"]  # type: ignore[assignment]
    #: Per named port: VLANs and filters.
    ports: dict[str, SwitchPortSpec] = {}  # type: ignore[assignment]
    #: Seconds (or a duration, 300s) a MAC lives unseen.
    aging: Annotated[float, BeforeValidator(_aging_seconds)] = DEFAULT_AGING_S
    #: MAC table entries; new MACs beyond are flooded and counted.
    max_entries: Annotated[int, Field(ge=1, le=MAX_ENTRIES_LIMIT)] = DEFAULT_MAX_ENTRIES
    #: A port named in the switch's links that gets a copy of every forwarded frame.
    mirror: str | None = None


class BridgeSpec(_Spec):
    """Bridge the guest's NIC to a Linux TAP (a real kernel stack on the LAN; root)."""

    ifname: Annotated[str, AfterValidator(_check_bridge_ifname)]
    netns: Annotated[str, AfterValidator(_check_netns)] | None = None
    ip: Annotated[str, AfterValidator(_check_cidr)] | None = None


class VmSpec(_Spec):
    """A virtwire VM: its guest RAM, e1000 NIC and driver, three services."""

    kind: Literal["vm"]
    mac: Annotated[str, AfterValidator(_check_mac)] | None = None
    model: E1000ModelName = "82540EM"
    compat: QemuCompat = "9.0"
    memory: _Memory = 64 << 20
    ip: Annotated[str, AfterValidator(_check_cidr)] | None = None
    bridge: BridgeSpec | None = None
    host: HostName | None = None
    link_transport: LinkTransport | None = None
    #: On the e1000's NetClient.
    filters: _RawFilters = []
    netem: _RawNetem | None = None

    @field_validator("compat", mode="before")
    @classmethod
    def _compat_as_text(cls, value: object) -> object:
        # An unquoted 9.0 or 7.2 is a YAML float.
        return f"{value:.1f}" if isinstance(value, float) else value


class _TapSpec(_Spec):
    """A tap service with one backend; the fields past kind/backend/host are its options."""

    kind: Literal["tap"]
    backend: str
    host: HostName | None = None
    link_transport: LinkTransport | None = None
    #: On the backend's NetClient.
    filters: _RawFilters = []
    netem: _RawNetem | None = None

    def options(self, base_dir: Path | None = None) -> dict[str, str]:
        """The backend options as `serve tap --backend` takes them.

        Relative script= / downscript= paths are taken from ``base_dir`` (the
        topology file's directory) and made absolute; on another host a script
        is a NAME that host's orchestrator allows, kept as written.
        """
        opts: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name in _NODE_FIELDS or value is None:
                continue
            text = str(value)
            if name in ("script", "downscript") and text not in ("", "no") \
                    and base_dir is not None and self.host is None \
                    and not Path(text).is_absolute():
                text = str(base_dir / text)
            opts[name] = text
        return opts

    @model_validator(mode="after")
    def _backend_options(self, info: ValidationInfo) -> Self:
        context = info.context if isinstance(info.context, dict) else {}
        base_dir = context.get("base_dir")
        opts = self.options(base_dir if isinstance(base_dir, Path) else None)
        if self.host is not None or context.get("remote"):
            # Names, looked up by the host running the backend (_Resolver._tap_options).
            opts = {k: v for k, v in opts.items() if k not in ("script", "downscript")}
        netdev_from_options(self.backend, opts)
        return self


class TapTapSpec(_TapSpec):
    """backend: tap, a Linux TAP device (root)."""

    backend: Literal["tap"]
    ifname: _Option = None
    vnet_hdr: _Option = None
    no_padding: _Option = None
    script: _Option = None
    downscript: _Option = None


class TapStreamSpec(_TapSpec):
    """backend: stream, QEMU's -netdev stream (TCP or unix socket).

    ``publish: 127.0.0.1:10555``: where the docker backend and ``render
    compose`` publish the listening port on the host (the process backend
    listens on the host already, at ``listen``).
    """

    backend: Literal["stream"]
    listen: _Option = None
    connect: _Option = None
    reconnect: _Option = None
    publish: Annotated[str, AfterValidator(_check_publish)] | None = None

    @model_validator(mode="after")
    def _publish_needs_a_tcp_listen(self) -> Self:
        if self.publish is None:
            return self
        listen = parse_sockaddr(self.listen) if self.listen is not None else None
        if listen is None or listen.is_unix or listen.port == 0:
            raise ConfigError(f"publish {self.publish}: only a stream port that listens on "
                              "TCP at a fixed port is published (listen: 127.0.0.1:PORT)")
        return self


class TapDgramSpec(_TapSpec):
    """backend: dgram, QEMU's -netdev dgram (UDP unicast or multicast)."""

    backend: Literal["dgram"]
    local: _Option = None
    remote: _Option = None
    mcast: _Option = None
    localaddr: _Option = None


# -- host nodes: a network namespace, a real QEMU VM (this machine only) -----------------
#: A netns node's interfaces: eth0..eth15, each a TAP inside the namespace.
NETNS_IFACE_RE = re.compile(r"^eth(?:[0-9]|1[0-5])$")
#: Caps of what a netns node lists (its TAPs, routes, startup commands).
NETNS_MAX_IFACES = 16
NETNS_MAX_ADDRESSES = 16
NETNS_MAX_ROUTES = 64
NETNS_MAX_COMMANDS = 32
COMMAND_MAX_LEN = 4096
#: A qemu node's extra arguments.
QEMU_MAX_ARGS = 64
QEMU_NICS = ("e1000", "virtio-net-pci")


def _check_iface_address(text: str) -> str:
    """An interface address with its prefix: 198.18.0.1/24 or fd00::1/64."""
    if "/" not in text:
        raise ConfigError(f"{text[:60]!r}: give the prefix length too (198.18.0.1/24)")
    try:
        return str(ipaddress.ip_interface(text))
    except ValueError:
        raise ConfigError(f"{text[:60]!r} is not an IPv4 or IPv6 address with a "
                          "prefix (198.18.0.1/24, fd00::1/64)") from None


def _check_route_to(text: str) -> str:
    if text == "default":
        return text
    try:
        return str(ipaddress.ip_network(text))
    except ValueError:
        raise ConfigError(f"{text[:60]!r} is not 'default' or a network "
                          "(198.18.1.0/24, with its host bits 0)") from None


def _check_via(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ConfigError(f"{text[:60]!r} is not an IP address") from None


_Command = Annotated[str, Field(min_length=1, max_length=COMMAND_MAX_LEN)]


class NetnsIfaceSpec(_Spec):
    """One interface of a netns node: a TAP in the namespace, up, with addresses."""

    addresses: Annotated[list[Annotated[str, AfterValidator(_check_iface_address)]],
                         Field(max_length=NETNS_MAX_ADDRESSES)] = []
    mtu: Annotated[int, Field(ge=68, le=65535)] | None = None


class NetnsRouteSpec(_Spec):
    """``{to: default|NET, via: IP, dev: ethN}`` (at least one of via, dev)."""

    to: Annotated[str, AfterValidator(_check_route_to)]
    via: Annotated[str, AfterValidator(_check_via)] | None = None
    dev: str | None = None


class NetnsSpec(_Spec):
    """A Linux network namespace as a host (root, process backend)."""

    kind: Literal["netns"]
    interfaces: Annotated[dict[str, NetnsIfaceSpec],
                          Field(min_length=1, max_length=NETNS_MAX_IFACES)]
    routes: Annotated[list[NetnsRouteSpec], Field(max_length=NETNS_MAX_ROUTES)] = []
    #: Shell commands run inside once its interfaces are up (from a file on this host only).
    commands: Annotated[list[_Command], Field(max_length=NETNS_MAX_COMMANDS)] = []
    host: HostName | None = None


class QemuSpec(_Spec):
    """A real QEMU VM the orchestrator runs, on a stream port virtwire makes for it."""

    kind: Literal["qemu"]
    kernel: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    initrd: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    append: Annotated[str, Field(max_length=COMMAND_MAX_LEN)] | None = None
    disk: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    memory: _Memory = 256 << 20
    nic: Literal["e1000", "virtio-net-pci"] = "e1000"
    mac: Annotated[str, AfterValidator(_check_mac)] | None = None
    #: More QEMU arguments, as a list (from a file on this host only).
    args: Annotated[list[Annotated[str, Field(max_length=COMMAND_MAX_LEN)]],
                    Field(max_length=QEMU_MAX_ARGS)] = []
    host: HostName | None = None
    link_transport: LinkTransport | None = None
    #: On its stream port's NetClient.
    filters: _RawFilters = []
    netem: _RawNetem | None = None

    @model_validator(mode="after")
    def _one_boot_source(self) -> Self:
        if (self.kernel is None) == (self.disk is None):
            raise ConfigError("give either kernel: (with initrd:, append:) or disk:")
        if self.kernel is None and (self.initrd is not None or self.append is not None):
            raise ConfigError("initrd: and append: go with kernel:")
        return self


# -- container nodes: a container of the local engine (this machine only) ------------------
#: A container's interfaces: eth1, eth2, ... (eth0 is a management network's).
CONTAINER_IFACE_RE = re.compile(r"^eth[1-9][0-9]{0,2}$")
CONTAINER_MAX_IFACES = 64
CONTAINER_MAX_ENV = 256
CONTAINER_MAX_ARGS = 256
#: A Docker image reference (NAME[:TAG][@DIGEST], a registry host, an image id).
_IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
#: A Docker network's name (the management network, which must exist).
_NETWORK_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _check_image(text: str) -> str:
    if not _IMAGE_RE.match(text):
        raise ConfigError(f"bad image {text[:60]!r}: a Docker image reference "
                          "(NAME[:TAG][@DIGEST], e.g. alpine:3.20 or vw-busybox:latest)")
    return text


def _check_network(text: str) -> str:
    if text in ("host", "none", "bridge") or not _NETWORK_RE.match(text):
        raise ConfigError(f"management: {text[:60]!r}: name a user-defined Docker network "
                          "(docker network create NAME), not host, none or bridge; leave "
                          "it out for no network but the LAN's")
    return text


_EnvValue = Annotated[str, BeforeValidator(_option_text),
                      Field(max_length=COMMAND_MAX_LEN),
                      WithJsonSchema({"type": ["string", "number", "boolean"]})]


class ContainerIfaceSpec(_Spec):
    """One interface of a container: a TAP in its network namespace, up."""

    ip: Annotated[str, AfterValidator(_check_cidr)] | None = None
    mac: Annotated[str, AfterValidator(_check_mac)] | None = None


class ContainerSpec(_Spec):
    """A container of an image in the local engine, with no network of its own;
    its interfaces eth1..ethN are TAPs in its namespace (docs/topology.md)."""

    kind: Literal["container"]
    image: Annotated[str, AfterValidator(_check_image)]
    #: The image's command unless given: a list, or a string split as a shell would.
    command: Annotated[str, Field(min_length=1, max_length=COMMAND_MAX_LEN)] | Annotated[
        list[Annotated[str, Field(max_length=COMMAND_MAX_LEN)]],
        Field(min_length=1, max_length=CONTAINER_MAX_ARGS)] | None = None
    env: Annotated[dict[str, _EnvValue], Field(max_length=CONTAINER_MAX_ENV)] = {}
    #: ``eth1: {ip: 198.18.0.20/24, mac: ...}``; ``eth1: {}`` (or nothing) for neither.
    interfaces: Annotated[dict[str, ContainerIfaceSpec | None],
                          Field(min_length=1, max_length=CONTAINER_MAX_IFACES)]
    #: A Docker network the container also joins (its eth0); none by default.
    management: Annotated[str, AfterValidator(_check_network)] | None = None
    host: HostName | None = None
    link_transport: LinkTransport | None = None


TAP_SPECS: dict[str, type[_TapSpec]] = {
    "tap": TapTapSpec, "stream": TapStreamSpec, "dgram": TapDgramSpec}
TapSpec = Annotated[TapTapSpec | TapStreamSpec | TapDgramSpec, Field(discriminator="backend")]
NodeSpec = Annotated[HubSpec | SwitchSpec | VmSpec | TapSpec | NetnsSpec | QemuSpec
                     | ContainerSpec,
                    Field(discriminator="kind")]
LinkSpec = Annotated[list[str], BeforeValidator(_link_ends), Field(min_length=2, max_length=2),
                    WithJsonSchema({"oneOf": [
                        {"type": "array", "items": {"type": "string"}, "minItems": 2,
                         "maxItems": 2},
                        {"type": "object", "required": ["ends"], "properties": {
                            "ends": {"type": "array", "items": {"type": "string"},
                                     "minItems": 2, "maxItems": 2},
                            "filters": {"type": "object"}, "netem": {"type": "object"}},
                         "additionalProperties": False}]})]
#: A schedule step as written (checked by the resolver, ``_Filters.schedule``).
StepSpec = Annotated[dict[str, Any], WithJsonSchema(
    {"type": "object", "required": ["at"],
     "description": "{at: 10s, link: {node: N, state: down|up}} | {at: .., netem: {target: T, "
                    "PROP: V..}} | {at: .., netem_reset: {target: T}} | {at: .., filter: "
                    "{target: T, op: add|update|remove, ...}}"})]


class TopologySpec(_Spec):
    """A topology file as written (before cross-checks); see the module docstring."""

    version: Literal[1] = 1
    name: Annotated[str, AfterValidator(_check_name("LAN", LAN_NAME_MAX))]
    hosts: dict[HostName, HostSpec] = {}
    tls: TlsSpec | None = None
    metrics: MetricsSpec | None = None
    #: The LAN's default; a node's own link_transport overrides it.
    link_transport: LinkTransport = "auto"
    nodes: Annotated[dict[NodeName, NodeSpec], Field(min_length=1)]
    links: list[LinkSpec] = []
    #: Changes at times after the LAN is healthy (netem, link state, filters).
    schedule: list[StepSpec] = []


_NODE_ADAPTER: TypeAdapter[NodeSpec] = TypeAdapter(NodeSpec)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a topology file (for editors, e.g. yaml-language-server)."""
    return TopologySpec.model_json_schema()


# -- the validated topology: what the orchestrator uses ----------------------------
@dataclass(frozen=True, kw_only=True)
class Host:
    name: str
    address: str
    #: The port of the host's ``virtwire serve orchestrator``.
    port: int = AGENT_PORT
    line: int = 0

    @property
    def agent(self) -> str:
        """The address of the host's orchestrator (``virtwire serve orchestrator``)."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


@dataclass(frozen=True, kw_only=True)
class Node:
    """A node of the LAN; ``host`` is None for this machine."""

    kind: ClassVar[NodeKind]
    name: str
    host: str | None = None
    #: Where the node is defined in the file (0 if unknown).
    line: int = 0
    #: Its services' ``--link-transport``: its own, else the LAN's.
    link_transport: LinkTransport = "auto"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "host": self.host, "line": self.line,
                "link_transport": self.link_transport}


@dataclass(frozen=True, kw_only=True)
class HubNode(Node):
    kind: ClassVar[NodeKind] = "hub"
    #: Named ports that other nodes dial, in link order: create them at start
    #: (`serve hub --port NAME`). A port this hub dials from is in its link.
    ports: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "ports": list(self.ports)}


@dataclass(frozen=True, kw_only=True)
class SwitchNode(HubNode):
    """A learning switch (``serve switch``): a hub node with VLANs and a MAC table."""

    kind: ClassVar[NodeKind] = "switch"
    #: (port, its VLANs as ``serve switch --vlans PORT=...`` takes them), named ports only.
    vlans: tuple[tuple[str, str], ...] = ()
    mirror: str = ""
    aging: float = DEFAULT_AGING_S
    max_entries: int = DEFAULT_MAX_ENTRIES

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "vlans": dict(self.vlans), "mirror": self.mirror or None,
                "aging": self.aging, "max_entries": self.max_entries}


@dataclass(frozen=True, kw_only=True)
class Bridge:
    ifname: str
    netns: str | None = None
    ip: ipaddress.IPv4Interface | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ifname": self.ifname, "netns": self.netns,
                "ip": str(self.ip) if self.ip else None}


@dataclass(frozen=True, kw_only=True)
class VmNode(Node):
    """A VM; its e1000's NetClient is named after the node."""

    kind: ClassVar[NodeKind] = "vm"
    mac: str
    #: True when the MAC was assigned (QEMU's default scheme), not written.
    mac_assigned: bool = False
    model: E1000ModelName = "82540EM"
    compat: QemuCompat = "9.0"
    #: Guest RAM in bytes.
    memory: int = 64 << 20
    ip: ipaddress.IPv4Interface | None = None
    bridge: Bridge | None = None

    def service(self, kind: ServiceKind) -> str:
        """The name of one of this VM's services (guestmem, e1000, guest)."""
        if kind not in VM_SERVICES:
            raise ValueError(f"a vm has no {kind} service")
        return f"{self.name}-{kind}"

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "mac": self.mac, "mac_assigned": self.mac_assigned,
                "model": self.model, "compat": self.compat, "memory": self.memory,
                "ip": str(self.ip) if self.ip else None,
                "bridge": self.bridge.to_dict() if self.bridge else None}


@dataclass(frozen=True, kw_only=True)
class TapNode(Node):
    """A tap service with one backend, named after the node."""

    kind: ClassVar[NodeKind] = "tap"
    backend: str
    #: The backend's options as `serve tap --backend` takes them (scripts absolute).
    options: Mapping[str, str] = field(default_factory=dict)
    #: A stream port's host address in containers (``publish:``), "" if none.
    publish: str = ""

    def listen_address(self) -> str:
        """Where the backend waits for its peer (stream ``listen``, dgram ``local`` or
        ``mcast``) as the topology gives it; "" when it dials out or is a TAP."""
        for option in _LISTEN_OPTIONS.get(self.backend, ()):
            if self.options.get(option):
                return self.options[option]
        return ""

    def backend_spec(self) -> str:
        """The `serve tap --backend` spec, e.g. ``stream,listen=127.0.0.1:10555,id=qemu0``."""
        return format_backend_spec(self.backend, {**self.options, "id": self.name})

    def backend_config(self, peer: str = "") -> Netdev:
        """The backend's netdev config, dialling ``peer`` (ADDR/NETCLIENT) if given.

        Validates on this machine (script= must exist here, unless the node is
        on another host: there it is a NAME).
        """
        opts = {**self.options, "id": self.name}
        if peer:
            opts["peer"] = peer
        return netdev_from_options(self.backend, opts, check_scripts=self.host is None)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "backend": self.backend, "options": dict(self.options),
                "spec": self.backend_spec(), "publish": self.publish or None}


@dataclass(frozen=True, kw_only=True)
class NetnsInterface:
    name: str
    #: ``ip addr add`` texts (198.18.0.1/24, fd00::1/64).
    addresses: tuple[str, ...] = ()
    mtu: int | None = None


@dataclass(frozen=True, kw_only=True)
class NetnsRoute:
    to: str
    via: str = ""
    dev: str = ""

    def ip_args(self) -> list[str]:
        """``ip route add`` arguments."""
        return [self.to, *(["via", self.via] if self.via else []),
                *(["dev", self.dev] if self.dev else [])]


@dataclass(frozen=True, kw_only=True)
class NetnsNode(Node):
    """A network namespace; interface ethN is the tap service NODE-ethN (a TAP inside)."""

    kind: ClassVar[NodeKind] = "netns"
    interfaces: tuple[NetnsInterface, ...] = ()
    routes: tuple[NetnsRoute, ...] = ()
    commands: tuple[str, ...] = ()

    def service(self, iface: str) -> str:
        """The tap service (and its NetClient) of interface ``iface``."""
        return f"{self.name}-{iface}"

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(),
                "interfaces": {i.name: {"addresses": list(i.addresses), "mtu": i.mtu}
                               for i in self.interfaces},
                "routes": [{"to": r.to, "via": r.via or None, "dev": r.dev or None}
                           for r in self.routes],
                "commands": list(self.commands)}


@dataclass(frozen=True, kw_only=True)
class QemuNode(Node):
    """A QEMU VM (service NODE-qemu) on the stream port NODE (a tap service it dials)."""

    kind: ClassVar[NodeKind] = "qemu"
    kernel: str = ""
    initrd: str = ""
    append: str = ""
    disk: str = ""
    memory: int = 256 << 20
    nic: str = "e1000"
    mac: str = ""
    mac_assigned: bool = False
    args: tuple[str, ...] = ()

    @property
    def qemu_service(self) -> str:
        return f"{self.name}-qemu"

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "kernel": self.kernel or None,
                "initrd": self.initrd or None, "append": self.append or None,
                "disk": self.disk or None, "memory": self.memory, "nic": self.nic,
                "mac": self.mac, "mac_assigned": self.mac_assigned, "args": list(self.args)}


@dataclass(frozen=True, kw_only=True)
class ContainerInterface:
    name: str
    ip: ipaddress.IPv4Interface | None = None
    mac: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"ip": str(self.ip) if self.ip else None, "mac": self.mac or None}


@dataclass(frozen=True, kw_only=True)
class ContainerNode(Node):
    """A container (``virtwire-LAN-NODE``); interface ethN is the tap service
    NODE-ethN, whose TAP is inside the container's network namespace."""

    kind: ClassVar[NodeKind] = "container"
    image: str
    #: Empty: the image's own command.
    command: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    interfaces: tuple[ContainerInterface, ...] = ()
    #: A Docker network it also joins ("": none, ``--network none``).
    management: str = ""

    def service(self, iface: str) -> str:
        """The tap service (and its NetClient) of interface ``iface``."""
        return f"{self.name}-{iface}"

    def interface(self, service: str) -> ContainerInterface:
        """The interface tap service ``service`` is."""
        return next(i for i in self.interfaces if self.service(i.name) == service)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "image": self.image, "command": list(self.command),
                "env": dict(self.env), "management": self.management or None,
                "interfaces": {i.name: i.to_dict() for i in self.interfaces}}


@dataclass(frozen=True, kw_only=True)
class Service:
    """One process or container to start; ``needs`` are the services it needs
    the addresses of at start (all earlier in ``Topology.services``)."""

    name: str
    kind: ServiceKind
    node: str
    host: str | None = None
    needs: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "node": self.node, "host": self.host,
                "needs": list(self.needs)}


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    """One end of a link: the NetClient ``netclient`` of ``service`` on ``node``.

    For a hub, ``netclient`` is the port name, or "" for a new port.
    """

    node: str
    service: str
    netclient: str

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "service": self.service, "netclient": self.netclient}


@dataclass(frozen=True, kw_only=True)
class Link:
    """A peer pair: ``dialer`` dials ``listener`` (started before it).

    The dialer's peer address is ``LISTENER_SERVICE_ADDR/listener.netclient``.
    """

    index: int
    dialer: Endpoint
    listener: Endpoint
    #: The two ends as written, e.g. ("qemu0", "hub0:uplink").
    ends: tuple[str, str]
    line: int = 0

    @property
    def nodes(self) -> tuple[str, str]:
        return (self.dialer.node, self.listener.node)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "ends": list(self.ends), "line": self.line,
                "dialer": self.dialer.to_dict(), "listener": self.listener.to_dict()}


@dataclass(frozen=True, kw_only=True)
class NodeFilter:
    """A filter the topology puts on a NetClient at start: an ``--object`` of ``service``.

    ``netclient`` is the NetClient's name, or "" for a hub's link end without a
    port name (the port the hub makes for link ``link``: the plan names it, and
    ``spec.netdev`` is a placeholder until then).
    """

    node: str
    service: str
    netclient: str
    spec: FilterSpec
    #: The link whose end it is on (None for a node's or a port's own filters).
    link: int | None = None
    line: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "service": self.service, "netclient": self.netclient,
                "link": self.link, "line": self.line, "kind": self.spec.kind,
                "id": self.spec.id, "object": self.spec.format()}


ScheduleAction = Literal["link", "netem", "netem_reset", "filter"]
SCHEDULE_ACTIONS: tuple[ScheduleAction, ...] = ("link", "netem", "netem_reset", "filter")
#: What a step does to a filter: netem's ``set`` adds the filter, or updates it if there.
StepOp = Literal["add", "update", "remove", "set"]


@dataclass(frozen=True, kw_only=True)
class ScheduleStep:
    """A change at ``at`` seconds after the LAN is healthy, on ``target`` (NODE or HUB:PORT).

    ``link``: SetLink(``up``). ``netem``: the netem filter ``fid`` set (added
    seeing ``direction``, or updated) with ``props``. ``netem_reset``: it
    removed. ``filter``: filter ``fid`` added (``kind``, ``direction``,
    ``status``, ``position``, ``insert``, ``props``), updated (``props``,
    ``status``) or removed, as ``op`` says.
    """

    index: int
    at: float
    action: ScheduleAction
    target: str
    up: bool = True
    op: StepOp = "set"
    kind: str = ""
    fid: str = ""
    direction: FilterDirection = FilterDirection.ALL
    status: bool | None = None
    position: str = "tail"
    insert: str = "behind"
    props: Mapping[str, str] = field(default_factory=dict)
    line: int = 0

    def describe(self) -> str:
        """``link vm2 down``, ``netem vm2 loss=30%``, ``filter add dump d0 on hub0:p1 ...``."""
        props = "".join(f" {k}={v}" for k, v in self.props.items())
        if self.action == "link":
            return f"link {self.target} {'up' if self.up else 'down'}"
        if self.action == "netem":
            return f"netem {self.target}{props}"
        if self.action == "netem_reset":
            return f"netem_reset {self.target}"
        kind = f" {self.kind}" if self.op == "add" else ""
        status = ("" if self.status is None or (self.op == "add" and self.status)
                  else f" status={'on' if self.status else 'off'}")
        return f"filter {self.op}{kind} {self.fid} on {self.target}{status}{props}"

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "at": self.at, "line": self.line, "action": self.action,
                "target": self.target, "what": self.describe()}


@dataclass(frozen=True, kw_only=True)
class Topology:
    """A validated LAN. ``nodes`` and ``services`` are in start order."""

    name: str
    source: str
    hosts: Mapping[str, Host]
    nodes: Mapping[str, Node]
    services: tuple[Service, ...]
    links: tuple[Link, ...]
    warnings: tuple[str, ...] = ()
    #: ``tls.dir``, absolute (None: plaintext on loopback).
    tls_dir: Path | None = None
    #: The LAN's default ``link_transport`` (each node has its own resolved).
    link_transport: LinkTransport = "auto"
    #: The filters put on NetClients at start, each NetClient's in file order.
    filters: tuple[NodeFilter, ...] = ()
    #: The steps of ``schedule:``, by time (file order at the same time).
    schedule: tuple[ScheduleStep, ...] = ()
    #: ``metrics.port``: the first service's /metrics port (0: no metrics).
    metrics_port: int = 0

    def node(self, name: str) -> Node:
        return self.nodes[name]

    def vms(self) -> list[VmNode]:
        return [n for n in self.nodes.values() if isinstance(n, VmNode)]

    def hubs(self) -> list[HubNode]:
        return [n for n in self.nodes.values() if isinstance(n, HubNode)]

    def taps(self) -> list[TapNode]:
        return [n for n in self.nodes.values() if isinstance(n, TapNode)]

    def containers(self) -> list[ContainerNode]:
        return [n for n in self.nodes.values() if isinstance(n, ContainerNode)]

    def links_of(self, node: str) -> list[Link]:
        return [link for link in self.links if node in link.nodes]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON (``json.dumps(topology.to_dict())``)."""
        return {
            "name": self.name,
            "source": self.source,
            "hosts": {h.name: {"address": h.address, "port": h.port}
                      for h in self.hosts.values()},
            "nodes": {n.name: n.to_dict() for n in self.nodes.values()},
            "services": [s.to_dict() for s in self.services],
            "links": [link.to_dict() for link in self.links],
            "warnings": list(self.warnings),
            "tls": {"dir": str(self.tls_dir)} if self.tls_dir else None,
            "link_transport": self.link_transport,
            # Only when there are some: what a LAN without them printed is unchanged.
            **({"filters": [f.to_dict() for f in self.filters]} if self.filters else {}),
            **({"schedule": [s.to_dict() for s in self.schedule]} if self.schedule else {}),
            **({"metrics": {"port": self.metrics_port}} if self.metrics_port else {}),
        }


# -- entry points --------------------------------------------------------------------
#: Largest topology accepted, in bytes of UTF-8: a bigger one is refused
#: before any YAML is parsed (a topology for hundreds of nodes is ~100 KiB).
TOPOLOGY_MAX_BYTES = 1 << 20


def _check_size(source: str, size: int, exact: bool = True) -> None:
    if size > TOPOLOGY_MAX_BYTES:
        what = f"{size} bytes" if exact else f"more than {TOPOLOGY_MAX_BYTES} bytes"
        raise TopologyError(source, [f"{source[:200]}: the topology is too large ({what}; "
                                     f"at most 1 MiB, {TOPOLOGY_MAX_BYTES} bytes)"])


def _check_text_size(source: str, text: str) -> None:
    """Refuse text over TOPOLOGY_MAX_BYTES without encoding text that is surely over."""
    if text.isascii():  # O(1) in CPython: a byte per character
        _check_size(source, len(text))
    elif len(text) > TOPOLOGY_MAX_BYTES:  # each character is at least one byte
        _check_size(source, len(text), exact=False)
    elif len(text) * 4 > TOPOLOGY_MAX_BYTES:
        _check_size(source, len(text.encode("utf-8", "surrogatepass")))


def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology file; TopologyError names every problem.

    A file over TOPOLOGY_MAX_BYTES is refused by its size, not read.
    """
    path = Path(path)
    source = str(path)
    try:
        with open(path, encoding="utf-8") as file:
            if os.fstat(file.fileno()).st_size > TOPOLOGY_MAX_BYTES:
                _check_size(source, os.fstat(file.fileno()).st_size)
            # Not a regular file (a pipe, /dev/zero): read no more than the cap.
            text = file.read(TOPOLOGY_MAX_BYTES + 1)
    except UnicodeDecodeError as exc:
        raise TopologyError(source, [f"{source}: not UTF-8 text ({exc.reason} at byte "
                                     f"{exc.start})"]) from None
    except OSError as exc:
        raise TopologyError(source, [f"{source}: cannot read: {exc.strerror or exc}"]) from None
    return parse_topology(text, source, base_dir=path.parent.resolve())


def parse_topology(text: str, source: str = "<string>", *,
                   base_dir: Path | None = None, remote: RpcPolicy | None = None) -> Topology:
    """Validate topology YAML; ``source`` names it in messages, ``base_dir``
    anchors relative script paths (default: the current directory). Text over
    TOPOLOGY_MAX_BYTES is refused before it is parsed.

    ``remote``: the text came over an RPC, not from a file on this host. Then
    a script is a NAME ``remote`` allows (for this machine's nodes; a node on
    another host keeps it for that host), and unix socket paths, network
    namespaces (unless allowed) and ``tls:`` are refused; ``TopologyError.denied``
    says when those are the only problems.
    """
    _check_text_size(source, text)
    base = base_dir if base_dir is not None else Path.cwd()
    doc = _read_yaml(text, source)
    report = _Report(source, doc)
    for path, key, first, again in doc.duplicates:
        if path in (("nodes",), ("hosts",)):
            what = "node" if path == ("nodes",) else "host"
            report.error(path, f"{what} {key!r} is defined twice (lines {first} and {again})",
                         line=again, label=False)
        else:
            lines = f"lines {first} and {again}" if first != again else f"twice on line {first}"
            report.error(path, f"{key!r} is given twice ({lines})", line=again)
    report.raise_if_any()
    context = {"base_dir": base, "remote": remote is not None}
    try:
        spec = TopologySpec.model_validate(doc.data, context=context)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        for err in errors:
            report.pydantic_error(err)
        partial = _partial_spec(doc.data, errors, context)
        if partial is not None:
            # The cross-checks too (a self-link, a clash...), around the broken parts.
            report.muted = partial.broken
            _Resolver(partial.spec, report, base, remote, partial).resolve()
        report.raise_if_any()
        raise  # unreachable: every error was reported
    topology = _Resolver(spec, report, base, remote).resolve()
    report.raise_if_any()
    return topology


@dataclass(frozen=True)
class _Partial:
    """What of a file that failed the schema the cross-checks can still use."""

    spec: TopologySpec
    #: Paths the schema already reported (a node, a host, a link, a field).
    broken: frozenset[_Path]
    #: Nodes standing in for ones that failed the schema.
    stand_ins: frozenset[str]
    #: Links that failed the schema (a placeholder holds their index).
    skip_links: frozenset[int]


def _stand_in(raw: object) -> NodeSpec:
    """A node of ``raw``'s kind with no settings (a hub if the kind is not known)."""
    kind = raw.get("kind") if isinstance(raw, dict) else None
    if kind == "vm":
        return VmSpec.model_construct(kind="vm")
    if kind == "switch":
        return SwitchSpec.model_construct(kind="switch")
    if kind == "netns":
        return NetnsSpec.model_construct(kind="netns", interfaces={})
    if kind == "qemu":
        return QemuSpec.model_construct(kind="qemu")
    if kind == "container":
        return ContainerSpec.model_construct(kind="container", image="", interfaces={})
    if kind == "tap":
        backend = raw.get("backend") if isinstance(raw, dict) else None
        if backend == "tap":
            return TapTapSpec.model_construct(kind="tap", backend="tap")
        if backend == "dgram":
            return TapDgramSpec.model_construct(kind="tap", backend="dgram")
        return TapStreamSpec.model_construct(kind="tap", backend="stream")
    return HubSpec.model_construct(kind="hub")


def _partial_spec(data: Any, errors: Sequence[Mapping[str, Any]],
                  context: Mapping[str, object]) -> _Partial | None:
    """The valid parts of ``data``, with a stand-in for each node or host that
    failed the schema; None when there are no nodes to check links against."""
    nodes = data.get("nodes") if isinstance(data, dict) else None
    if not isinstance(nodes, dict) or not nodes:
        return None
    groups = (("nodes",), ("hosts",), ("links",))
    broken = frozenset(tuple(loc[:2]) if tuple(loc[:1]) in groups and len(loc) > 1
                       else tuple(loc[:1]) for loc in (tuple(e["loc"]) for e in errors))
    node_specs: dict[str, NodeSpec] = {}
    for key, raw in nodes.items():
        node_specs[str(key)] = (_stand_in(raw) if ("nodes", key) in broken else
                                _NODE_ADAPTER.validate_python(raw, context=context))
    if ("hosts",) in broken:  # not a mapping: a stand-in for each host a node names
        raw_hosts = {n.host: None for n in node_specs.values() if n.host is not None}
    else:
        raw_hosts = data.get("hosts") or {}
    hosts: dict[str, HostSpec] = {}
    for key, raw in raw_hosts.items():
        hosts[str(key)] = (HostSpec.model_validate(raw) if raw is not None
                           and ("hosts", key) not in broken
                           else HostSpec.model_construct(address=f"<host {key}>"))
    raw_links = data.get("links") if ("links",) not in broken else None
    links = [["", ""] if ("links", i) in broken else _link_ends(raw)
             for i, raw in enumerate(raw_links or [])]
    schedule = data.get("schedule") if ("schedule",) not in broken else None
    tls = data.get("tls") if ("tls",) not in broken else None
    transport = data.get("link_transport") if ("link_transport",) not in broken else None
    spec = TopologySpec.model_construct(
        name=data["name"] if ("name",) not in broken else "lan", hosts=hosts, nodes=node_specs,
        links=links, tls=TlsSpec.model_validate(tls) if tls is not None else None,
        link_transport=transport or "auto", schedule=schedule or [])
    return _Partial(spec, broken, frozenset(str(k) for k in nodes if ("nodes", k) in broken),
                    frozenset(i for i in range(len(links)) if ("links", i) in broken))


# -- reporting ---------------------------------------------------------------------
def _describe(value: object) -> str:
    """A short description of an input value (never the repr of a container)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        text = repr(value[:40] if isinstance(value, str) else value)
        return text if len(text) <= 40 else text[:37] + "..."
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


class _Report:
    """Collects problems and warnings as ``FILE:LINE: WHERE: WHAT``."""

    def __init__(self, source: str, doc: _Document) -> None:
        self.source = source
        self.doc = doc
        self.errors: list[tuple[int, str]] = []
        self.warnings: list[tuple[int, str]] = []
        #: Errors that are not refusals of what an RPC may not name (see TopologyError).
        self.mistakes = 0
        #: Paths whose further errors are not reported (already reported as broken).
        self.muted: frozenset[_Path] = frozenset()

    def line(self, path: _Path) -> int:
        for end in range(len(path), -1, -1):
            line = self.doc.lines.get(path[:end])
            if line is not None:
                return line
        return 0

    def where(self, path: _Path) -> str:
        """``node 'vm1': bridge.ip`` for ("nodes", "vm1", "bridge", "ip")."""
        head: str
        if len(path) >= 2 and path[0] in ("nodes", "hosts"):
            head, rest = f"{'node' if path[0] == 'nodes' else 'host'} {path[1]!r}", path[2:]
        elif len(path) >= 2 and path[0] == "links" and isinstance(path[1], int):
            head, rest = f"links[{path[1]}]", path[2:]
            raw = self._raw_link(path[1])
            if raw is not None:
                head += f" ({raw[0]} -- {raw[1]})"
        else:
            head, rest = "", path
        tail = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in rest)
        tail = tail.replace(".[", "[")
        return ": ".join(p for p in (head, tail) if p)

    def _raw_link(self, index: int) -> tuple[str, str] | None:
        data = self.doc.data
        links = data.get("links") if isinstance(data, dict) else None
        if isinstance(links, list) and index < len(links):
            item = links[index]
            if isinstance(item, dict):  # the long form
                item = item.get("ends")
            if isinstance(item, list) and len(item) == 2 \
                    and all(isinstance(e, str) and len(e) <= 64 for e in item):
                return (item[0], item[1])
        return None

    def _format(self, path: _Path, what: str, line: int | None, label: bool,
                warning: bool) -> tuple[int, str]:
        line = self.line(path) if line is None else line
        where = self.where(path) if label else ""
        parts = [f"{self.source}:{line}" if line else self.source]
        if warning:
            parts.append("warning")
        parts.extend(p for p in (where, what) if p)
        return line, ": ".join(parts)

    def error(self, path: _Path, what: str, *, line: int | None = None,
              label: bool = True, denied: bool = False) -> None:
        if any(path[:len(m)] == m for m in self.muted):
            return
        self.errors.append(self._format(path, what, line, label, warning=False))
        self.mistakes += not denied

    def warn(self, path: _Path, what: str) -> None:
        self.warnings.append(self._format(path, what, None, True, warning=True))

    def raise_if_any(self) -> None:
        if self.errors:
            self.errors.sort(key=lambda e: e[0])
            raise TopologyError(self.source, [text for _, text in self.errors],
                                denied=self.mistakes == 0)

    def warning_lines(self) -> tuple[str, ...]:
        return tuple(text for _, text in sorted(self.warnings, key=lambda w: w[0]))

    # pydantic's errors, in the file's terms
    def pydantic_error(self, err: Mapping[str, Any]) -> None:
        loc = tuple(err["loc"])
        kind: str = err["type"]
        ctx: Mapping[str, Any] = err.get("ctx") or {}
        value = err.get("input")
        is_key = bool(loc) and loc[-1] == "[key]"
        path, model = _strip_tags(loc[:-1] if is_key else loc)
        if is_key:
            group = {"nodes": "node", "hosts": "host"}.get(str(path[0]), "key")
            what = (str(ctx["error"]) if kind == "value_error"
                    else f"{group} name {_describe(value)} is not a string: quote it")
            self.error(path, what, label=False)
            return
        if kind == "missing":
            self.error(path[:-1], f"missing field {path[-1]!r}"
                       + _allowed_hint(model, "required"))
        elif kind == "extra_forbidden":
            self.error(path[:-1], f"unknown field {path[-1]!r}" + _unknown_hint(model, path[-1]),
                       line=self.line(path))
        elif kind in ("union_tag_invalid", "union_tag_not_found"):
            disc = "backend" if "backend" in str(ctx.get("discriminator", "")) else "kind"
            choices = ", ".join(TAP_SPECS if disc == "backend" else NODE_KINDS)
            if kind == "union_tag_invalid":
                tag = value.get(disc) if isinstance(value, dict) else ctx.get("tag")
                self.error((*path, disc), f"unknown {disc} {_describe(tag)}: "
                           f"expected one of {choices}")
            else:
                self.error(path, f"missing field {disc!r} (one of {choices})")
        elif kind in ("model_attributes_type", "model_type", "dict_type"):
            if not path:
                what = f"a topology is a mapping with name, nodes and links, not {_describe(value)}"
            elif len(path) == 2 and path[0] == "nodes" and value is None:
                what = "the node is empty: give at least its kind (hub, switch, vm or tap)"
            else:
                what = f"expected a mapping, not {_describe(value)}"
            self.error(path, what)
        elif kind == "value_error" and path[:1] == ("links",) and len(path) == 2:
            self.error(path, str(ctx.get("error", err["msg"])))
        elif path[:1] == ("links",) and len(path) == 2:
            size = f" of {len(value)}" if isinstance(value, list) else ""
            self.error(path, f"{_LINK_FORM}, not {_describe(value)}{size}")
        elif path[:1] == ("links",) and len(path) == 3:
            self.error(path[:2], f"{_LINK_FORM}; end {path[2]} is {_describe(value)}")
        elif kind == "value_error":
            self.error(path, str(ctx.get("error", err["msg"])))
        elif kind == "too_short" and path == ("nodes",):
            self.error(path, "no nodes: a topology needs at least one")
        else:
            msg = str(err["msg"])
            msg = msg[:1].lower() + msg[1:]
            self.error(path, f"{msg}, not {_describe(value)}")


def _strip_tags(loc: _Path) -> tuple[_Path, type[BaseModel] | None]:
    """Drop pydantic's union tags from a loc; also return the model the loc is in."""
    path = list(loc)
    if len(path) >= 2 and path[0] == "hosts":
        return tuple(path), HostSpec
    if len(path) < 2 or path[0] != "nodes":
        return tuple(path), TopologySpec
    if len(path) < 3:
        return tuple(path), None
    tag = str(path.pop(2))
    if tag == "tap":
        if len(path) < 3:
            return tuple(path), None
        backend = str(path.pop(2))
        return tuple(path), TAP_SPECS.get(backend)
    if tag == "vm" and len(path) >= 4 and path[2] == "bridge":
        return tuple(path), BridgeSpec
    if tag in HUB_KINDS and len(path) >= 5 and path[2] == "ports":
        return tuple(path), SwitchPortSpec if tag == "switch" else PortSpec
    if tag == "netns" and len(path) >= 5 and path[2] == "interfaces":
        return tuple(path), NetnsIfaceSpec
    if tag == "container" and len(path) >= 5 and path[2] == "interfaces":
        return tuple(path), ContainerIfaceSpec
    if tag == "netns" and len(path) >= 5 and path[2] == "routes":
        return tuple(path), NetnsRouteSpec
    models: dict[str, type[BaseModel]] = {"hub": HubSpec, "switch": SwitchSpec, "vm": VmSpec,
                                          "netns": NetnsSpec, "qemu": QemuSpec,
                                          "container": ContainerSpec}
    return tuple(path), models.get(tag)


def _field_names(model: type[BaseModel], required_only: bool = False) -> str:
    return ", ".join(n for n, f in model.model_fields.items()
                     if f.is_required() or not required_only)


def _allowed_hint(model: type[BaseModel] | None, which: str) -> str:
    """`` (required: kind, backend)`` or `` (allowed: ...)``; "" if not known."""
    if model is None:
        return ""
    names = _field_names(model, required_only=which == "required")
    return f" ({which}: {names})" if names else ""


def _unknown_hint(model: type[BaseModel] | None, name: Hashable) -> str:
    if model in (HubSpec, SwitchSpec) and name in ("filters", "netem"):
        return (": a hub has no NetClient of its own; put filters on its ports "
                "(ports: {PORT: {filters: [...]}}) or on link ends")
    if model is not None and issubclass(model, _TapSpec):
        if name in ("id", "name"):
            return ": a tap node's backend is named after the node"
        if name == "peer":
            return ": a tap node's peer comes from its link"
        for backend, other in TAP_SPECS.items():
            if other is not model and name in other.model_fields:
                return (f": {name!r} is an option of the {backend} backend"
                        + _allowed_hint(model, "allowed here"))
    return _allowed_hint(model, "allowed")


# -- cross-checks and resolution ------------------------------------------------------
@dataclass
class _End:
    node: str
    port: str | None  # a hub's named port


class _Resolver:
    def __init__(self, spec: TopologySpec, report: _Report, base_dir: Path,
                 remote: RpcPolicy | None = None, partial: _Partial | None = None) -> None:
        self.spec = spec
        self.report = report
        self.base_dir = base_dir
        #: Set when the text came over an RPC (parse_topology's ``remote``).
        self.remote = remote
        #: Set when checking around the parts that failed the schema.
        self.stand_ins = partial.stand_ins if partial else frozenset()
        self.skip_links = partial.skip_links if partial else frozenset()
        self._opts: dict[str, dict[str, str]] = {}
        rank = {"hub": 0, "switch": 0, "vm": 1, "tap": 2, "netns": 2, "qemu": 2, "container": 2}
        #: Node names in start order: hubs, vms, taps; file order within a kind.
        self.order = sorted(spec.nodes, key=lambda n: rank[spec.nodes[n].kind])
        self.position = {name: i for i, name in enumerate(self.order)}

    def resolve(self) -> Topology:
        spec, report = self.spec, self.report
        self._check_hosts()
        self._check_trust()
        self._check_host_kinds()
        self._check_containers()
        macs = self._assign_macs()
        self._check_unique_ips()
        self._check_host_resources()
        services = self._services_by_node()
        links, hub_ports = self._links()
        checker = _Filters(self, links)
        filters = checker.node_filters()
        schedule = checker.schedule()
        for name in self.order:
            node = spec.nodes[name]
            if node.kind not in HUB_KINDS and not any(name in link.nodes for link in links):
                report.warn(("nodes", name), "not in any link: it has no peer")
            elif node.kind in HUB_KINDS and not any(name in link.nodes for link in links):
                report.warn(("nodes", name), f"no links: nothing is plugged into this {node.kind}")
        used_hosts = {n.host for n in spec.nodes.values()}
        for host in spec.hosts:
            if host not in used_hosts:
                report.warn(("hosts", host), "no node is placed on this host")
        nodes = {name: self._node(name, macs.get(name), hub_ports.get(name, ()))
                 for name in self.order}
        start: list[Service] = []
        for name in self.order:
            needs = {link.dialer.service: link.listener.service for link in links
                     if link.dialer.node == name}
            for svc in services[name]:
                start.append(Service(
                    name=svc.name, kind=svc.kind, node=name, host=svc.host,
                    needs=(*svc.needs, *([needs[svc.name]] if svc.name in needs else []))))
        return Topology(
            name=spec.name, source=report.source,
            hosts={n: Host(name=n, address=h.address, port=h.port,
                           line=report.line(("hosts", n)))
                   for n, h in spec.hosts.items()},
            nodes=nodes, services=tuple(start), links=tuple(links),
            warnings=report.warning_lines(), link_transport=spec.link_transport,
            tls_dir=(self.base_dir / spec.tls.dir).resolve() if spec.tls else None,
            filters=filters, schedule=schedule,
            metrics_port=spec.metrics.port if spec.metrics else 0)

    def _link_transport(self, name: str) -> LinkTransport:
        """Node ``name``'s own link_transport, else the LAN's."""
        own: LinkTransport | None = getattr(self.spec.nodes[name], "link_transport", None)
        return own if own is not None else self.spec.link_transport

    def _node(self, name: str, mac: tuple[str, bool] | None, ports: Sequence[str]) -> Node:
        node = self.spec.nodes[name]
        line = self.report.line(("nodes", name))
        transport = self._link_transport(name)
        if isinstance(node, SwitchSpec):
            vlans = tuple((port, v.format()) for port, spec in node.ports.items()
                          if (v := spec.vlans()) is not None)
            return SwitchNode(name=name, host=node.host, line=line, ports=tuple(ports),
                              link_transport=transport, vlans=vlans, mirror=node.mirror or "",
                              aging=node.aging, max_entries=node.max_entries)
        if isinstance(node, HubSpec):
            return HubNode(name=name, host=node.host, line=line, ports=tuple(ports),
                           link_transport=transport)
        if isinstance(node, VmSpec):
            bridge = None
            if node.bridge is not None:
                b = node.bridge
                bridge = Bridge(ifname=b.ifname, netns=b.netns,
                                ip=ipaddress.IPv4Interface(b.ip) if b.ip else None)
            mac_text, assigned = mac if mac is not None else ("", False)
            return VmNode(name=name, host=node.host, line=line, link_transport=transport,
                          mac=mac_text, mac_assigned=assigned, model=node.model,
                          compat=node.compat, memory=node.memory,
                          ip=ipaddress.IPv4Interface(node.ip) if node.ip else None,
                          bridge=bridge)
        if isinstance(node, NetnsSpec):
            return NetnsNode(
                name=name, host=node.host, line=line, link_transport=transport,
                interfaces=tuple(NetnsInterface(name=i, addresses=tuple(spec.addresses),
                                                mtu=spec.mtu)
                                 for i, spec in node.interfaces.items()),
                routes=tuple(NetnsRoute(to=r.to, via=r.via or "", dev=r.dev or "")
                             for r in node.routes),
                commands=tuple(node.commands))
        if isinstance(node, QemuSpec):
            mac_text, assigned = mac if mac is not None else ("", False)
            return QemuNode(name=name, host=node.host, line=line, link_transport=transport,
                            kernel=self._host_file(node.kernel),
                            initrd=self._host_file(node.initrd),
                            append=node.append or "", disk=self._host_file(node.disk),
                            memory=node.memory, nic=node.nic, mac=mac_text,
                            mac_assigned=assigned, args=tuple(node.args))
        if isinstance(node, ContainerSpec):
            return ContainerNode(
                name=name, line=line, link_transport=transport, image=node.image,
                command=tuple(self._container_command(node)),
                env=tuple(node.env.items()), management=node.management or "",
                interfaces=tuple(ContainerInterface(
                    name=i, ip=ipaddress.IPv4Interface(f.ip) if f and f.ip else None,
                    mac=(f.mac or "") if f else "") for i, f in node.interfaces.items()))
        return TapNode(name=name, host=node.host, line=line, link_transport=transport,
                       backend=node.backend, options=self._tap_options(name),
                       publish=getattr(node, "publish", None) or "")

    def _tap_options(self, name: str) -> dict[str, str]:
        """Tap node ``name``'s options, each script as the host running it takes it.

        On this machine a path (from a file read here, or the path a NAME sent
        by RPC is allowed as); on another host a NAME. Refusals are reported.
        """
        if name in self._opts:
            return self._opts[name]
        node = self.spec.nodes[name]
        assert isinstance(node, _TapSpec)
        opts = node.options(None if self.remote is not None else self.base_dir)
        policy = self.remote or RpcPolicy(command="virtwire serve orchestrator")
        for option in ("script", "downscript"):
            value = opts.get(option, "")
            if value in ("", "no") or (node.host is None and self.remote is None):
                continue
            try:
                opts[option] = policy.script("", value, resolve=node.host is None)
            except ConfigError as exc:
                self.report.error(("nodes", name, option), str(exc))
            except PermissionDeniedError as exc:
                if self.remote is not None:
                    self.report.error(("nodes", name, option), str(exc), denied=True)
                else:  # a file's mistake: that host takes names only
                    self.report.error(("nodes", name, option), (
                        f"{shorten(value)} is a path: a node on host {node.host!r} names its "
                        "script by a NAME that host's orchestrator allows ('virtwire serve "
                        "orchestrator --allow-script NAME=PATH' there)"))
        self._opts[name] = opts
        return opts

    def _check_trust(self) -> None:
        """What a topology sent by RPC may not name on this host (see parse_topology)."""
        policy = self.remote
        if policy is None:
            return
        for name, node in self.spec.nodes.items():
            try:
                if isinstance(node, _TapSpec):
                    self._tap_options(name)
                    for option in ("listen", "connect", "local", "remote", "mcast"):
                        value = getattr(node, option, None)
                        if isinstance(value, str):
                            path: _Path = ("nodes", name, option)
                            policy.no_unix("", value)
                elif isinstance(node, VmSpec) and node.bridge is not None \
                        and node.bridge.netns and node.host is None:
                    path = ("nodes", name, "bridge", "netns")
                    policy.netns("", node.bridge.netns)
            except PermissionDeniedError as exc:
                self.report.error(path, str(exc), denied=True)
        if getattr(self.spec, "tls", None) is not None:
            self.report.error(("tls",), "a topology sent by RPC may not name a directory on "
                              "this host: run 'virtwire up FILE' here for a LAN with tls:",
                              denied=True)

    def _host_file(self, text: str | None) -> str:
        """A qemu node's file, relative to the topology file's directory; "" for none."""
        if not text:
            return ""
        return str(Path(text) if Path(text).is_absolute() else self.base_dir / text)

    def _check_host_kinds(self) -> None:
        """netns and qemu nodes: this machine only, from a file read here; their
        interfaces, routes and files (docs/topology.md)."""
        for name, node in self.spec.nodes.items():
            if not isinstance(node, NetnsSpec | QemuSpec) or name in self.stand_ins:
                continue
            what = "network namespace" if isinstance(node, NetnsSpec) else "QEMU VM"
            if self.remote is not None:
                self.report.error(("nodes", name, "kind"), (
                    f"a {node.kind} node runs a {what} and commands on this host: a topology "
                    "sent by RPC may not have one (run 'virtwire up FILE' here)"), denied=True)
                continue
            if node.host is not None:
                self.report.error(("nodes", name, "host"), f"a {node.kind} node runs on "
                                  "this machine (leave out host:)")
            if isinstance(node, NetnsSpec):
                self._check_netns_node(name, node)
            else:
                for option in ("kernel", "initrd", "disk"):
                    written = getattr(node, option)
                    path = self._host_file(written)
                    if path and not Path(path).is_file():
                        where = "" if written == path else f" (in {shorten(str(self.base_dir))})"
                        self.report.error(("nodes", name, option),
                                          f"{shorten(written)}: no such file{where}")

    def _check_netns_node(self, name: str, node: NetnsSpec) -> None:
        families: dict[str, set[int]] = {}
        for iface, spec in node.interfaces.items():
            if not NETNS_IFACE_RE.match(iface):
                self.report.error(("nodes", name, "interfaces", iface),
                                  f"interface {iface[:40]!r}: name it eth0 .. eth15")
            families[iface] = {ipaddress.ip_interface(a).version for a in spec.addresses}
        for i, route in enumerate(node.routes):
            path: _Path = ("nodes", name, "routes", i)
            if route.via is None and route.dev is None:
                self.report.error(path, "a route needs via: IP or dev: ethN (or both)")
            if route.dev is not None and route.dev not in node.interfaces:
                self.report.error((*path, "dev"), f"unknown interface {route.dev[:40]!r} "
                                  f"(this node has: {', '.join(node.interfaces)})")
            version = (ipaddress.ip_address(route.via).version if route.via else None)
            if route.to != "default" and version is not None \
                    and ipaddress.ip_network(route.to).version != version:
                self.report.error(path, f"to {route.to} and via {route.via} are not of one "
                                  "IP version")

    @staticmethod
    def _container_command(node: ContainerSpec) -> list[str]:
        if isinstance(node.command, str):
            try:
                return shlex.split(node.command)
            except ValueError:
                return []  # reported by _check_containers
        return list(node.command or [])

    def _check_containers(self) -> None:
        """Container nodes: this machine only, from a file read here (an image and a
        command are a program to run); interface names, env names, the command."""
        for name, node in self.spec.nodes.items():
            if not isinstance(node, ContainerSpec) or name in self.stand_ins:
                continue
            if self.remote is not None:
                self.report.error(("nodes", name, "kind"), (
                    "a container node runs an image and a command on this host: a topology "
                    "sent by RPC may not have one (run 'virtwire up FILE' here)"), denied=True)
                continue
            if node.host is not None:
                self.report.error(("nodes", name, "host"), "a container node runs in this "
                                  "machine's engine for now (leave out host:)")
            for iface in node.interfaces:
                if not CONTAINER_IFACE_RE.match(iface):
                    self.report.error(("nodes", name, "interfaces", iface), (
                        f"interface {iface[:40]!r}: a container's interfaces are eth1, eth2, "
                        "... (eth0 is left to a management network)"))
            for key in node.env:
                if not _ENV_NAME_RE.match(key):
                    self.report.error(("nodes", name, "env", key), (
                        f"bad variable name {key[:40]!r}: letters, digits and _, "
                        "not starting with a digit"))
            if isinstance(node.command, str):
                try:
                    if not shlex.split(node.command):
                        self.report.error(("nodes", name, "command"), "an empty command")
                except ValueError as exc:
                    self.report.error(("nodes", name, "command"),
                                      f"cannot split the command as a shell would: {exc}")

    def _check_hosts(self) -> None:
        known = (f"known: {', '.join(self.spec.hosts)}" if self.spec.hosts
                 else "the file defines no hosts")
        for name, node in self.spec.nodes.items():
            if node.host is not None and node.host not in self.spec.hosts:
                self.report.error(("nodes", name, "host"),
                                  f"unknown host {node.host!r} ({known})")
        seen: dict[str, str] = {}
        for name, host in self.spec.hosts.items():
            if host.address in seen:
                first = seen[host.address]
                self.report.error(("hosts", name, "address"),
                                  f"{host.address} is already the address of host {first!r} "
                                  f"(line {self.report.line(('hosts', first, 'address'))})")
            seen.setdefault(host.address, name)

    def _assign_macs(self) -> dict[str, tuple[str, bool]]:
        """Each vm's MAC: its own, or QEMU's next free default."""
        macs: dict[str, tuple[str, bool]] = {}
        owner: dict[str, str] = {}
        vms: list[tuple[str, VmSpec | QemuSpec]] = [
            (n, s) for n, s in self.spec.nodes.items() if isinstance(s, VmSpec | QemuSpec)]
        for name, vm in vms:
            if vm.mac is None:
                continue
            if vm.mac in owner:
                self.report.error(("nodes", name, "mac"),
                                  f"MAC {vm.mac} is already used by node {owner[vm.mac]!r} "
                                  f"(line {self.report.line(('nodes', owner[vm.mac], 'mac'))})")
            owner.setdefault(vm.mac, name)
            macs[name] = (vm.mac, False)
        candidates = (f"{DEFAULT_MAC_PREFIX}:{(DEFAULT_MAC_FIRST + i) % 256:02x}"
                      for i in range(256))
        for name, vm in vms:
            if vm.mac is not None:
                continue
            mac = next((m for m in candidates if m not in owner), None)
            if mac is None:
                self.report.error(("nodes", name), f"no free default MAC in "
                                  f"{DEFAULT_MAC_PREFIX}:xx left: give this vm a mac")
                continue
            owner[mac] = name
            macs[name] = (mac, True)
        return macs

    def _check_unique_ips(self) -> None:
        owner: dict[ipaddress.IPv4Address, _Path] = {}
        for name, node in self.spec.nodes.items():
            if isinstance(node, ContainerSpec) and name not in self.stand_ins:
                fields: list[tuple[_Path, str | None]] = [
                    (("nodes", name, "interfaces", i, "ip"), f.ip if f else None)
                    for i, f in node.interfaces.items()]
            elif not isinstance(node, VmSpec):
                continue
            else:
                fields = [(("nodes", name, "ip"), node.ip)]
                if node.bridge is not None:
                    fields.append((("nodes", name, "bridge", "ip"), node.bridge.ip))
            for path, text in fields:
                if text is None:
                    continue
                ip = ipaddress.IPv4Interface(text).ip
                if ip in owner:
                    first = owner[ip]
                    self.report.error(path, f"IP address {ip} is already used by "
                                      f"{self.report.where(first)} "
                                      f"(line {self.report.line(first)})")
                owner.setdefault(ip, path)

    def _check_host_resources(self) -> None:
        """Interface names and bound sockets must not clash on one host."""
        ifnames: dict[tuple[str | None, str], _Path] = {}
        sockets: dict[tuple[str | None, str], _Path] = {}
        published: dict[tuple[str | None, str], _Path] = {}

        def claim(table: dict[tuple[str | None, str], _Path], host: str | None, key: str,
                  path: _Path, what: str) -> None:
            first = table.get((host, key))
            if first is not None:
                on = f" on host {host!r}" if host else ""
                self.report.error(path, f"{what} {key}{on} is already used by "
                                  f"{self.report.where(first)} (line {self.report.line(first)})")
            else:
                table[(host, key)] = path

        for name, node in self.spec.nodes.items():
            if isinstance(node, VmSpec) and node.bridge is not None:
                claim(ifnames, node.host, node.bridge.ifname,
                      ("nodes", name, "bridge", "ifname"), "interface")
            elif isinstance(node, _TapSpec):
                opts = self._tap_options(name)
                if opts.get("ifname"):
                    claim(ifnames, node.host, opts["ifname"], ("nodes", name, "ifname"),
                          "interface")
                for option in ("listen", "local"):
                    if option in opts:
                        addr = str(parse_sockaddr(opts[option]))
                        if addr.endswith(":0"):
                            continue  # port 0: the kernel picks a free one
                        claim(sockets, node.host, addr, ("nodes", name, option), "address")
                publish = getattr(node, "publish", None)
                if publish is not None:  # in containers: host ports of their own
                    claim(published, node.host, publish, ("nodes", name, "publish"),
                          "host address")

    def _services_by_node(self) -> dict[str, list[Service]]:
        """Each node's services (without link needs); reports clashing names."""
        out: dict[str, list[Service]] = {}
        vm_services: dict[str, str] = {}
        for name in self.order:
            node = self.spec.nodes[name]
            if node.kind == "vm":
                mem, nic, drv = (f"{name}-{k}" for k in VM_SERVICES)
                out[name] = [
                    Service(name=mem, kind="guestmem", node=name, host=node.host),
                    Service(name=nic, kind="e1000", node=name, host=node.host, needs=(mem,)),
                    Service(name=drv, kind="guest", node=name, host=node.host,
                            needs=(nic, mem))]
                vm_services.update((svc.name, name) for svc in out[name])
            elif isinstance(node, NetnsSpec | ContainerSpec):
                out[name] = [Service(name=f"{name}-{iface}", kind="tap", node=name)
                             for iface in node.interfaces]
                vm_services.update((svc.name, name) for svc in out[name])
            elif isinstance(node, QemuSpec):
                out[name] = [Service(name=name, kind="tap", node=name),
                             Service(name=f"{name}-qemu", kind="qemu", node=name,
                                     needs=(name,))]
                vm_services.update((svc.name, name) for svc in out[name])
            else:
                kind: ServiceKind = "hub" if node.kind in HUB_KINDS else "tap"
                out[name] = [Service(name=name, kind=kind, node=name, host=node.host)]
        for name in self.spec.nodes:
            if name in vm_services and vm_services[name] != name:
                vm = vm_services[name]
                owner_kind = self.spec.nodes[vm].kind
                named = {"vm": "NODE-guestmem, NODE-e1000 and NODE-guest",
                         "netns": "NODE-INTERFACE", "qemu": "NODE and NODE-qemu",
                         "container": "NODE-INTERFACE"}[owner_kind]
                self.report.error(("nodes", name), f"the name is taken by the "
                                  f"{name[len(vm) + 1:]} service of {owner_kind} {vm!r} (a "
                                  f"{owner_kind}'s services are named {named})")
        return out

    def _service_of(self, name: str) -> str:
        return f"{name}-e1000" if self.spec.nodes[name].kind == "vm" else name

    def _parse_end(self, index: int, text: str) -> _End | None:
        path: _Path = ("links", index)
        node, sep, port = text.partition(":")
        if node not in self.spec.nodes:
            known = ", ".join(self.spec.nodes)
            self.report.error(path, f"unknown node {node!r} (known: {known})")
            return None
        spec = self.spec.nodes[node]
        if isinstance(spec, NetnsSpec):
            return self._netns_end(index, text, node, port if sep else None, spec)
        if isinstance(spec, ContainerSpec):
            return self._container_end(index, text, node, port if sep else None, spec)
        if not sep:
            return _End(node, None)
        kind = spec.kind
        if kind not in HUB_KINDS:
            self.report.error(path, f"{text!r}: a {kind} node has a single port: "
                              f"write just {node!r}")
            return None
        try:
            return _End(node, _check_port_name(port, node))
        except ConfigError as exc:
            self.report.error(path, str(exc))
            return None

    def _netns_end(self, index: int, text: str, node: str, port: str | None,
                   spec: NetnsSpec) -> _End | None:
        """NODE:ethN of a netns node (NODE alone when it has one interface)."""
        path: _Path = ("links", index)
        if node in self.stand_ins:
            return _End(node, port or "eth0")
        if port is None:
            if len(spec.interfaces) == 1:
                return _End(node, next(iter(spec.interfaces)))
            self.report.error(path, f"{text!r}: netns {node} has several interfaces: name "
                              f"one, {node}:IFACE ({', '.join(spec.interfaces)})")
            return None
        if port not in spec.interfaces:
            self.report.error(path, f"{text!r}: unknown interface {port[:40]!r} of netns "
                              f"{node} (it has: {', '.join(spec.interfaces)})")
            return None
        return _End(node, port)

    def _container_end(self, index: int, text: str, node: str, port: str | None,
                       spec: ContainerSpec) -> _End | None:
        """NODE:ethN of a container node (NODE alone when it has one interface)."""
        path: _Path = ("links", index)
        if node in self.stand_ins:
            return _End(node, port or "eth1")
        if port is None:
            if len(spec.interfaces) == 1:
                return _End(node, next(iter(spec.interfaces)))
            self.report.error(path, f"{text!r}: container {node} has several interfaces: "
                              f"name one, {node}:IFACE ({', '.join(spec.interfaces)})")
            return None
        if port not in spec.interfaces:
            self.report.error(path, f"{text!r}: unknown interface {port[:40]!r} of container "
                              f"{node} (it has: {', '.join(spec.interfaces)})")
            return None
        return _End(node, port)

    def _links(self) -> tuple[list[Link], dict[str, list[str]]]:
        spec, report = self.spec, self.report
        links: list[Link] = []
        hub_ports: dict[str, list[str]] = {}
        taken: dict[tuple[str, str | None], int] = {}
        parent = {name: name for name in spec.nodes}
        adjacent: dict[str, list[str]] = {name: [] for name in spec.nodes}

        def root(name: str) -> str:
            while parent[name] != name:
                parent[name] = parent[parent[name]]
                name = parent[name]
            return name

        for index, raw in enumerate(spec.links):
            if index in self.skip_links:
                continue
            path: _Path = ("links", index)
            ends = [self._parse_end(index, text) for text in raw]
            a, b = ends
            if a is None or b is None:
                continue
            if a.node == b.node:
                report.error(path, f"node {a.node!r} is linked to itself")
                continue
            clash = False
            for end in (a, b):
                kind = spec.nodes[end.node].kind
                key = (end.node, end.port)
                if kind in HUB_KINDS and end.port is None:
                    continue  # a new port each time
                if key in taken:
                    first = f"links[{taken[key]}] (line {report.line(('links', taken[key]))})"
                    if kind in HUB_KINDS:
                        report.error(path, f"{kind} port {end.node}:{end.port} is already "
                                     f"linked by {first}")
                    elif kind in IFACE_KINDS:
                        report.error(path, f"interface {end.node}:{end.port} is already "
                                     f"linked by {first}: link it to a switch or hub to "
                                     "join more nodes")
                    else:
                        report.error(path, f"node {end.node!r} is already linked by {first}: "
                                     f"a {kind} has a single port; link both to a hub to "
                                     "join more nodes")
                    clash = True
                else:
                    taken[key] = index
            if clash:
                continue
            # A container is a host, not a bridge: each of its interfaces is a
            # vertex of its own, so one on two hubs (or twice on one) is no loop.
            va, vb = (f"{e.node}:{e.port}" if spec.nodes[e.node].kind == "container"
                      else e.node for e in (a, b))
            for vertex in (va, vb):
                parent.setdefault(vertex, vertex)
                adjacent.setdefault(vertex, [])
            if root(va) == root(vb):
                loop = self._path(adjacent, vb, va)
                report.error(path, "closes a loop " + " -- ".join([*loop, va])
                             + ": hubs flood every frame to all other ports, so a broadcast "
                             "would circle forever; remove one link of the loop")
                continue
            parent[root(va)] = root(vb)
            adjacent[va].append(vb)
            adjacent[vb].append(va)
            dialer, listener = (a, b) if self.position[a.node] > self.position[b.node] else (b, a)
            if listener.port is not None and spec.nodes[listener.node].kind in HUB_KINDS:
                hub_ports.setdefault(listener.node, []).append(listener.port)
            self._check_reachable(index, dialer.node, listener.node)
            links.append(Link(index=index, dialer=self._endpoint(dialer),
                              listener=self._endpoint(listener), ends=(raw[0], raw[1]),
                              line=report.line(path)))
        return links, hub_ports

    def _endpoint(self, end: _End) -> Endpoint:
        if self.spec.nodes[end.node].kind in IFACE_KINDS:
            service = f"{end.node}-{end.port}"
            return Endpoint(node=end.node, service=service, netclient=service)
        is_hub = self.spec.nodes[end.node].kind in HUB_KINDS
        return Endpoint(node=end.node, service=self._service_of(end.node),
                        netclient=(end.port or "") if is_hub else end.node)

    @staticmethod
    def _path(adjacent: Mapping[str, list[str]], start: str, goal: str) -> list[str]:
        """The node names from start to goal in the (acyclic) link graph."""
        previous: dict[str, str] = {start: start}
        queue = deque([start])
        while queue:
            here = queue.popleft()
            if here == goal:
                break
            for there in adjacent[here]:
                if there not in previous:
                    previous[there] = here
                    queue.append(there)
        out = [goal]
        while out[-1] != start:
            out.append(previous[out[-1]])
        return out

    def _check_reachable(self, index: int, dialer: str, listener: str) -> None:
        """A dialler on another host cannot reach a service on this machine's loopback."""
        if {dialer, listener} & self.stand_ins:
            return  # a stand-in has no host
        d_host, l_host = self.spec.nodes[dialer].host, self.spec.nodes[listener].host
        if d_host is not None and l_host is None:
            self.report.error(("links", index),
                              f"{dialer!r} on host {d_host!r} dials {listener!r}, which runs "
                              "on this machine (loopback only): place it on a host too")



# -- filters and the schedule ------------------------------------------------------------
#: Most steps in ``schedule:``, and the latest ``at:`` (a week).
MAX_SCHEDULE_STEPS = 1000
MAX_AT_S = 7 * 24 * 3600.0
#: The id of the filter ``netem:`` makes, as ``virtwire netem set`` does.
NETEM_ID = "netem"
#: Keys of a filter entry that are not properties of its type.
_FILTER_KEYS = ("type", "id", "queue", "status", "position", "insert")
#: A filter's properties that name a host resource a topology cannot give:
#: chardevs come from a service's own ``--chardev``.
_CHARDEV_PROPS = {"mirror": ("outdev",), "redirector": ("indev", "outdev")}
_ENTRY_HINT = "a filter is a mapping {type: KIND, id: ID, queue: all|rx|tx, PROP: VALUE...}"

#: A NetClient the topology filters: (service, NetClient name), or (service,
#: "#LINK") for a hub's link end without a port name.
_NcKey = tuple[str, str]


class _NoTimer:
    def cancel(self) -> None:
        pass


class _NoClock:
    """The scheduler filters get while their properties are checked: they never run."""

    def time(self) -> float:
        return 0.0

    def call_later(self, delay: float, callback: Any) -> TimerHandle:
        return _NoTimer()


def _prop_text(value: object) -> str:
    """A filter property as ``--object`` text: true/false are on/off, numbers text."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int | float):
        return str(value)
    raise ConfigError(f"expected a string, a number or true/false, not {_describe(value)}")


def _at_seconds(value: object) -> float:
    """``at:``: a duration (10s, 1.5s, 500ms) or a number of seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"expected a time after the LAN is healthy (e.g. 10s, 500ms), "
                          f"not {_describe(value)}")
    if isinstance(value, str):
        seconds = parse_duration(value, "at")
    else:
        seconds = float(value)
        if not math.isfinite(seconds) or seconds < 0:
            raise ConfigError(f"at {value} is not a time of 0 or more seconds")
    if seconds > MAX_AT_S:
        raise ConfigError(f"at {value}: at most a week ({MAX_AT_S:g}s) after the start")
    return seconds


@dataclass
class _Chain:
    """What the file has put on one NetClient so far: id -> (kind, direction)."""

    node: str
    service: str
    netclient: str
    #: Other NetClients of the same service a mirror may name (a hub's named ports).
    siblings: frozenset[str]
    ids: dict[str, tuple[str, FilterDirection]] = field(default_factory=dict)


@dataclass
class _Source:
    """A ``filters:`` list or a ``netem:`` mapping, and the NetClient it is for."""

    path: _Path
    chain: _Chain
    netem: bool
    link: int | None = None


class _Filters:
    """Checks ``filters:``/``netem:`` (of nodes, hub ports, link ends) and ``schedule:``."""

    def __init__(self, resolver: _Resolver, links: Sequence[Link]) -> None:
        self.r = resolver
        self.spec = resolver.spec
        self.report = resolver.report
        self.links = {link.index: link for link in links}
        #: Each hub's named ports (in links, either side).
        self.named: dict[str, set[str]] = {}
        for link in links:
            for end in (link.dialer, link.listener):
                if self.spec.nodes[end.node].kind in HUB_KINDS and end.netclient:
                    self.named.setdefault(end.node, set()).add(end.netclient)
        self.chains: dict[_NcKey, _Chain] = {}
        #: (service, dump file) -> where it is first written.
        self.dumps: dict[tuple[str, str], _Path] = {}

    # -- where filters go ----------------------------------------------------------
    def _chain(self, node: str, port: str | None, link: int | None = None) -> _Chain:
        service = self.r._service_of(node)
        if self.spec.nodes[node].kind in HUB_KINDS:
            netclient = port or ""
            key: _NcKey = (service, netclient or f"#{link}")
            siblings = frozenset(self.named.get(node, set()) - {netclient})
        elif self.spec.nodes[node].kind in IFACE_KINDS:
            service = netclient = f"{node}-{port}"
            key, siblings = (service, netclient), frozenset()
        else:
            netclient, key, siblings = node, (service, node), frozenset()
        if key not in self.chains:
            self.chains[key] = _Chain(node, service, netclient, siblings)
        return self.chains[key]

    def _sources(self) -> list[_Source]:
        out: list[_Source] = []

        def add(path: _Path, owner: Any, chain: _Chain, link: int | None = None) -> None:
            if owner.filters:
                out.append(_Source((*path, "filters"), chain, False, link))
            if owner.netem is not None:
                out.append(_Source((*path, "netem"), chain, True, link))

        for name, node in self.spec.nodes.items():
            if name in self.r.stand_ins:
                continue
            if isinstance(node, SwitchSpec):
                if node.mirror is not None and node.mirror not in self.named.get(name, set()):
                    self.report.error(("nodes", name, "mirror"),
                                      f"mirror port {node.mirror!r} is in no link: name it in "
                                      f"one (e.g. [NODE, {name}:{node.mirror}])")
                if node.host is not None:
                    self.report.error(("nodes", name, "host"),
                                      "a switch runs on this machine for now: StartService "
                                      "does not carry its VLANs (leave out host:)")
            if isinstance(node, HubSpec):
                for port, port_spec in node.ports.items():
                    path: _Path = ("nodes", name, "ports", port)
                    try:
                        _check_port_name(port, name)
                    except ConfigError as exc:
                        self.report.error(path, str(exc))
                        continue
                    if port not in self.named.get(name, set()):
                        self.report.error(path, f"port {port!r} is in no link: name it in one "
                                          f"(e.g. [NODE, {name}:{port}])")
                        continue
                    add(path, port_spec, self._chain(name, port))
            elif not isinstance(node, NetnsSpec | ContainerSpec):
                add(("nodes", name), node, self._chain(name, None))
        data = self.report.doc.data
        raw_links = data.get("links") if isinstance(data, dict) else None
        for index, raw in enumerate(raw_links if isinstance(raw_links, list) else []):
            if isinstance(raw, dict):
                out.extend(self._link_sources(index, raw))
        return out

    def _link_sources(self, index: int, raw: Mapping[Any, Any]) -> list[_Source]:
        """The per-end ``filters:`` and ``netem:`` of long-form link ``index``."""
        out: list[_Source] = []
        for key in raw:
            if key not in ("ends", "filters", "netem"):
                self.report.error(("links", index), f"unknown field {key!r} (allowed: "
                                  "ends, filters, netem)", line=self.report.line(
                                      ("links", index, key)))
        link = self.links.get(index)
        for what in ("filters", "netem"):
            per_end = raw.get(what)
            if per_end is None:
                continue
            path: _Path = ("links", index, what)
            if not isinstance(per_end, dict):
                self.report.error(path, f"expected a mapping of link end to {what}, e.g. "
                                  f"{what}: {{NODE: ...}}, not {_describe(per_end)}")
                continue
            if link is None:
                continue  # the link itself is wrong: reported
            ends = {link.dialer.node: link.dialer, link.listener.node: link.listener}
            written = dict(zip((e.partition(":")[0] for e in link.ends), link.ends, strict=True))
            for end_key, value in per_end.items():
                node = str(end_key).partition(":")[0]
                end = ends.get(node)
                if end is None or (str(end_key) != node and str(end_key) != written[node]):
                    self.report.error((*path, end_key), f"{_describe(end_key)} is not an end "
                                      f"of this link (its ends: {', '.join(link.ends)})")
                    continue
                chain = self._chain(node, end.netclient or None, index)
                if what == "filters" and not isinstance(value, list):
                    self.report.error((*path, end_key), f"expected a list of filters, not "
                                      f"{_describe(value)}")
                    continue
                if value:
                    out.append(_Source((*path, end_key), chain, what == "netem", index))
        return out

    def _raw(self, path: _Path) -> Any:
        value: Any = self.report.doc.data
        for part in path:
            value = value[part]
        return value

    # -- static filters ------------------------------------------------------------
    def node_filters(self) -> tuple[NodeFilter, ...]:
        entries: list[tuple[int, _Path, _Source, Any]] = []
        for source in self._sources():
            raw = self._raw(source.path)
            if source.netem:
                entries.append((self.report.line(source.path), source.path, source, raw))
            else:
                entries.extend((self.report.line((*source.path, i)), (*source.path, i), source,
                                item) for i, item in enumerate(raw))
        entries.sort(key=lambda e: e[0])
        out: list[NodeFilter] = []
        for line, path, source, raw in entries:
            if source.netem:
                if not isinstance(raw, dict):
                    self.report.error(path, f"netem is a mapping of its properties (delay: "
                                      f"20ms, loss: 1%...), not {_describe(raw)}")
                    continue
                spec = self.entry(path, {"type": "netem", "id": NETEM_ID, "queue": "tx",
                                         **raw}, source.chain, netem=True)
            else:
                spec = self.entry(path, raw, source.chain)
            if spec is not None:
                chain = source.chain
                out.append(NodeFilter(node=chain.node, service=chain.service,
                                      netclient=chain.netclient, spec=spec, link=source.link,
                                      line=line))
        return tuple(out)

    def entry(self, path: _Path, raw: Any, chain: _Chain, *, netem: bool = False,
              what: str = "") -> FilterSpec | None:
        """One filter entry, checked and added to ``chain``; None (reported) if bad."""
        if not isinstance(raw, dict):
            self.report.error(path, f"{_ENTRY_HINT}, not {_describe(raw)}")
            return None
        report = self.report
        ok = True
        props: dict[str, str] = {}
        for key, value in raw.items():
            if not isinstance(key, str):
                report.error(path, f"property name {_describe(key)} is not a string")
                ok = False
                continue
            if key in _FILTER_KEYS or (what and key in ("target", "op")):
                continue
            try:
                props[key] = _prop_text(value)
            except ConfigError as exc:
                report.error((*path, key), str(exc))
                ok = False
        if netem and "type" in raw and raw["type"] != "netem":
            report.error((*path, "type"), "netem: makes a netem filter: write a "
                         "filters: entry for another type")
            return None
        kind = raw.get("type")
        if not isinstance(kind, str) or not kind:
            report.error(path, f"missing field 'type' ({_ENTRY_HINT})" if kind is None
                         else f"type: expected a filter type, not {_describe(kind)}")
            return None
        try:
            cls = filter_type(kind)
        except ConfigError as exc:
            report.error((*path, "type"), str(exc))
            return None
        fields: dict[str, Any] = {}
        checks: tuple[tuple[str, Callable[[Any], Any]], ...] = (
            ("id", check_filter_id), ("queue", FilterDirection.parse), ("status", parse_status))
        for key, check in checks:
            value = raw.get(key, {"id": kind, "queue": "all", "status": "on"}[key])
            try:
                if not isinstance(value, str) and not (key == "status"
                                                       and isinstance(value, bool)):
                    raise ConfigError(f"expected text, not {_describe(value)}")
                fields[key] = check(value)
            except ConfigError as exc:
                report.error((*path, key), str(exc))
                ok = False
        position, insert = raw.get("position", "tail"), raw.get("insert", "behind")
        if not isinstance(position, str) or not (position in ("head", "tail")
                                                 or position.startswith("id=")):
            report.error((*path, "position"), f"position {_describe(position)}: head, tail "
                         "or id=FILTER (a filter before it on this NetClient)")
            ok = False
        elif position.startswith("id=") and position[3:] not in chain.ids:
            have = ", ".join(chain.ids) or "none"
            report.error((*path, "position"), f"{position}: no filter {position[3:]!r} is on "
                         f"{self._where(chain)} before this one (there: {have})")
            ok = False
        if insert not in ("behind", "before"):
            report.error((*path, "insert"), f"insert {_describe(insert)}: behind or before")
            ok = False
        if not ok:
            return None
        fid: str = fields["id"]
        if fid in chain.ids:
            report.error((*path, "id") if "id" in raw else path,
                         f"a filter {fid!r} is already on {self._where(chain)}"
                         + ("" if "id" in raw else ": give this one an id"))
            return None
        if len(chain.ids) >= MAX_FILTERS:
            report.error(path, f"{self._where(chain)} takes at most {MAX_FILTERS} filters")
            return None
        if not self.check_values(path, cls, fid, fields["queue"], props, chain, initial=True):
            return None
        spec = FilterSpec(kind=kind, id=fid, netdev=chain.netclient or "port",
                          direction=fields["queue"], status=fields["status"],
                          position=position, insert=str(insert), props=props)
        try:
            FilterSpec.parse(spec.format())  # the caps of --object text
        except ConfigError as exc:
            report.error(path, str(exc))
            return None
        chain.ids[fid] = (kind, fields["queue"])
        return spec

    @staticmethod
    def _where(chain: _Chain) -> str:
        if chain.netclient == chain.node:
            return f"{chain.node}'s NetClient"
        return f"port {chain.node}:{chain.netclient}" if chain.netclient else \
            f"{chain.node}'s port of this link"

    def check_values(self, path: _Path, cls: type[NetFilter], fid: str,
                     direction: FilterDirection, props: Mapping[str, str], chain: _Chain, *,
                     initial: bool) -> bool:
        """The type's own check of ``props`` (units, ranges, required ones), run on a
        filter that is never added: it opens no file and no socket."""
        report, kind = self.report, cls.kind
        unknown = sorted(set(props) - set(cls.PROPERTIES) - {"status"})
        if unknown:
            takes = ", ".join(cls.PROPERTIES) or "none"
            report.error((*path, unknown[0]), f"{kind} has no propert"
                         f"{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)} "
                         f"(it takes {takes})")
            return False
        if kind == "redirector" and initial:
            report.error(path, "redirector reads and writes chardevs (indev=, outdev=), which "
                         "only a service's own --chardev gives: a topology has none")
            return False
        for prop in _CHARDEV_PROPS.get(kind, ()):
            if props.get(prop):
                report.error((*path, prop), (
                    f"{kind} {prop}= names a chardev, which only a service's own --chardev "
                    "gives: a topology has none (a mirror may copy to another port of its "
                    "hub with netdev_out=PORT)"))
                return False
        checked = {k: v for k, v in props.items() if k != "status"}
        clock = _NoClock()
        nf = cls(fid, direction=direction, scheduler=clock)

        def lookup(name: str) -> Any:
            if chain.netclient == chain.node:
                raise ConfigError(f"netdev_out={name}: {chain.node}'s service has no other "
                                  "NetClient (a mirror there copies to a chardev)")
            if name not in chain.siblings:
                others = ", ".join(sorted(chain.siblings)) or "none"
                raise ConfigError(f"netdev_out={name}: not another named port of hub "
                                  f"{chain.node} (named ports: {others})")
            return object()

        nf.context = FilterContext(scheduler=clock, netclient=lookup)
        try:
            if kind == "dump":
                return self._check_dump(path, nf, checked, chain, initial)
            nf.parse_properties(checked, initial)
        except (ConfigError, LookupError) as exc:
            report.error(path, str(exc).strip("'\""))
            return False
        return True

    def _check_dump(self, path: _Path, nf: NetFilter, props: dict[str, str], chain: _Chain,
                    initial: bool) -> bool:
        """A dump's values; its ``file`` a plain name, once per service (the service's
        dump dir is its own directory in the LAN's state dir)."""
        from virtwire.net.filter_dump import MAX_MAXLEN, FilterDump, check_dump_name

        name = props.pop("file", None)
        if name is None and initial:
            self.report.error(path, "dump needs file: NAME (a pcap file the orchestrator "
                              "writes in the LAN's state dir, dump/SERVICE/NAME)")
            return False
        if name is not None:
            if "/" in name:
                self.report.error((*path, "file"), f"dump file {shorten(name)} is a path: give "
                                  "a plain file name; it is written in the LAN's state dir "
                                  "(dump/SERVICE/NAME)")
                return False
            check_dump_name(name)
            first = self.dumps.setdefault((chain.service, name), path)
            if first != path:
                self.report.error((*path, "file"), f"dump file {name!r} is already written "
                                  f"by {self.report.where(first)} (line "
                                  f"{self.report.line(first)}) in service {chain.service}")
                return False
        assert isinstance(nf, FilterDump)
        # As if a file were open at the largest snaplen: only the values are checked.
        nf.file_snaplen = MAX_MAXLEN
        nf.parse_properties(props, initial=False)
        return True

    # -- the schedule ------------------------------------------------------------------
    def schedule(self) -> tuple[ScheduleStep, ...]:
        report = self.report
        raw_steps = self.spec.schedule
        if len(raw_steps) > MAX_SCHEDULE_STEPS:
            report.error(("schedule",), f"{len(raw_steps)} steps: at most "
                         f"{MAX_SCHEDULE_STEPS}")
            return ()
        parsed: list[tuple[float, int, ScheduleAction, Any]] = []
        for index, raw in enumerate(raw_steps):
            path: _Path = ("schedule", index)
            ok = True
            for key in raw:
                if key != "at" and key not in SCHEDULE_ACTIONS:
                    report.error(path, f"unknown field {_describe(key)}: a step is "
                                 "{at: TIME, ACTION: {...}} with one ACTION of "
                                 f"{', '.join(SCHEDULE_ACTIONS)}", line=report.line((*path, key)))
                    ok = False
            actions = [a for a in SCHEDULE_ACTIONS if a in raw]
            if not ok and not actions:
                continue  # an unknown field, said already
            if "at" not in raw:
                report.error(path, "missing field 'at' (when, after the LAN is healthy: "
                             "e.g. at: 10s)")
                ok = False
            if len(actions) != 1:
                report.error(path, f"a step does one thing: give one of "
                             f"{', '.join(SCHEDULE_ACTIONS)}" + (f", not {' and '.join(actions)}"
                                                                 if actions else ""))
                ok = False
            try:
                at = _at_seconds(raw.get("at", 0))
            except ConfigError as exc:
                report.error((*path, "at"), str(exc))
                ok = False
            if ok:
                parsed.append((at, index, actions[0], raw[actions[0]]))
        parsed.sort(key=lambda p: (p[0], p[1]))
        steps = [self._step(at, index, action, body) for at, index, action, body in parsed]
        return tuple(s for s in steps if s is not None)

    def _target(self, path: _Path, body: Mapping[str, Any], key: str = "target"
                ) -> tuple[str, _Chain] | None:
        """A step's NODE or HUB:PORT (a named port) and its NetClient's chain."""
        report = self.report
        text = body.get(key)
        if not isinstance(text, str):
            report.error(path, f"missing field {key!r} (NODE, or HUB:PORT)" if text is None
                         else f"{key}: expected NODE or HUB:PORT, not {_describe(text)}")
            return None
        node_name, sep, port = text.partition(":")
        node = self.spec.nodes.get(node_name)
        if node is None:
            report.error((*path, key), f"unknown node {node_name!r} (known: "
                         f"{', '.join(self.spec.nodes)})")
            return None
        if node_name in self.r.stand_ins:
            return None
        if node.kind in HUB_KINDS:
            named = self.named.get(node_name, set())
            if not sep:
                report.error((*path, key), f"{node_name} is a {node.kind}: name a port, "
                             f"{node_name}:PORT")
                return None
            if port not in named:
                have = ", ".join(sorted(named)) or "none"
                report.error((*path, key), f"{node.kind} {node_name} has no port named "
                             f"{port!r} in "
                             f"its links (named: {have}); name the port in its link, "
                             f"[NODE, {node_name}:PORT]")
                return None
            return text, self._chain(node_name, port)
        if sep:
            report.error((*path, key), f"{text!r}: a {node.kind} node has a single port: "
                         f"write just {node_name!r}")
            return None
        return text, self._chain(node_name, None)

    def _step(self, at: float, index: int, action: ScheduleAction, body: Any
              ) -> ScheduleStep | None:
        report = self.report
        path: _Path = ("schedule", index, action)
        line = report.line(("schedule", index))
        if not isinstance(body, dict):
            report.error(path, f"expected a mapping ({action}: {{target: NODE, ...}}), not "
                         f"{_describe(body)}")
            return None
        base: dict[str, Any] = {"index": index, "at": at, "action": action, "line": line}
        if action == "link":
            return self._link_step(path, body, base)
        if action == "netem_reset":
            return self._reset_step(path, body, base)
        if action == "netem":
            return self._netem_step(path, body, base)
        return self._filter_step(path, body, base)

    def _only(self, path: _Path, body: Mapping[str, Any], allowed: Sequence[str]) -> bool:
        extra = [k for k in body if k not in allowed]
        for key in extra:
            self.report.error(path, f"unknown field {_describe(key)} (allowed: "
                              f"{', '.join(allowed)})", line=self.report.line((*path, key)))
        return not extra

    def _link_step(self, path: _Path, body: Mapping[str, Any], base: dict[str, Any]
                   ) -> ScheduleStep | None:
        key = "node" if "node" in body else "target"
        if not self._only(path, body, (key, "state")):
            return None
        target = self._target(path, body, key)
        state = body.get("state")
        if state not in ("up", "down"):
            self.report.error((*path, "state") if "state" in body else path,
                              f"state: up or down, not {_describe(state)}" if "state" in body
                              else "missing field 'state' (up or down)")
            return None
        if target is None:
            return None
        return ScheduleStep(**base, target=target[0], up=state == "up")

    def _reset_step(self, path: _Path, body: Mapping[str, Any], base: dict[str, Any]
                    ) -> ScheduleStep | None:
        if not self._only(path, body, ("target", "id")):
            return None
        target = self._target(path, body)
        fid = body.get("id", NETEM_ID)
        if target is None or not self._check_id(path, fid):
            return None
        chain = target[1]
        if fid not in chain.ids:
            self.report.warn(path, f"no netem {fid!r} is on {target[0]} at this point of the "
                             "schedule: the step does nothing unless one was added by hand")
        chain.ids.pop(fid, None)
        return ScheduleStep(**base, target=target[0], op="remove", kind="netem", fid=fid)

    def _check_id(self, path: _Path, fid: Any) -> bool:
        try:
            if not isinstance(fid, str):
                raise ConfigError(f"expected a filter id, not {_describe(fid)}")
            check_filter_id(fid)
        except ConfigError as exc:
            self.report.error((*path, "id"), str(exc))
            return False
        return True

    def _netem_step(self, path: _Path, body: Mapping[str, Any], base: dict[str, Any]
                    ) -> ScheduleStep | None:
        target = self._target(path, body)
        if target is None:
            return None
        text, chain = target
        fid = body.get("id", NETEM_ID)
        if not self._check_id(path, fid):
            return None
        have = chain.ids.get(fid)
        props = {k: v for k, v in body.items() if k not in ("target", "id", "queue")}
        if not props:
            self.report.error(path, "give the netem properties to set (delay: 20ms, "
                              "loss: 30%...); netem_reset removes it")
            return None
        if have is None:
            spec = self.entry(path, {"type": "netem", "id": fid, "queue": "tx", **body},
                              chain, netem=True, what="step")
            if spec is None:
                return None
            return ScheduleStep(**base, target=text, op="set", kind="netem", fid=fid,
                                direction=spec.direction, props=spec.props)
        kind, direction = have
        if kind != "netem":
            self.report.error(path, f"{text} has a {kind} filter {fid!r} at this point: "
                              "netem sets a netem")
            return None
        queue = body.get("queue")
        if queue is not None and queue != direction.value:
            self.report.error((*path, "queue"), f"the netem on {text} sees {direction.value} "
                              "already: netem_reset it first to change its queue")
            return None
        texts = self._props(path, props)
        if texts is None or not self.check_values(path, filter_type("netem"), fid, direction,
                                                  texts, chain, initial=False):
            return None
        return ScheduleStep(**base, target=text, op="set", kind="netem", fid=fid,
                            direction=direction, props=texts)

    def _props(self, path: _Path, raw: Mapping[str, Any]) -> dict[str, str] | None:
        out: dict[str, str] = {}
        for key, value in raw.items():
            try:
                out[str(key)] = _prop_text(value)
            except ConfigError as exc:
                self.report.error((*path, key), str(exc))
                return None
        return out

    def _filter_step(self, path: _Path, body: Mapping[str, Any], base: dict[str, Any]
                     ) -> ScheduleStep | None:
        report = self.report
        op = body.get("op")
        if op not in ("add", "update", "remove"):
            report.error((*path, "op") if "op" in body else path,
                         f"op: add, update or remove, not {_describe(op)}" if "op" in body
                         else "missing field 'op' (add, update or remove)")
            return None
        target = self._target(path, body)
        if target is None:
            return None
        text, chain = target
        if op == "add":
            spec = self.entry(path, body, chain, what="step")
            if spec is None:
                return None
            return ScheduleStep(**base, target=text, op="add", kind=spec.kind, fid=spec.id,
                                direction=spec.direction, status=spec.status,
                                position=spec.position, insert=spec.insert, props=spec.props)
        fid = body.get("id")
        if fid is None:
            report.error(path, f"missing field 'id' (the filter to {op})")
            return None
        if not self._check_id(path, fid):
            return None
        have = chain.ids.get(fid)
        if have is None:
            report.error((*path, "id"), f"no filter {fid!r} is on {text} at this point of "
                         f"the schedule (there: {', '.join(chain.ids) or 'none'})")
            return None
        if op == "remove":
            if not self._only(path, body, ("target", "op", "id")):
                return None
            del chain.ids[fid]
            return ScheduleStep(**base, target=text, op="remove", kind=have[0], fid=fid)
        status: bool | None = None
        if "status" in body:
            try:
                status = parse_status(body["status"])
            except ConfigError as exc:
                report.error((*path, "status"), str(exc))
                return None
        props = self._props(path, {k: v for k, v in body.items()
                                   if k not in ("target", "op", "id", "status")})
        if props is None:
            return None
        if not props and status is None:
            report.error(path, "give the properties to change, or status: on|off")
            return None
        try:
            cls = filter_type(have[0])
        except ConfigError as exc:
            report.error(path, str(exc))
            return None
        if not self.check_values(path, cls, fid, have[1], props, chain, initial=False):
            return None
        return ScheduleStep(**base, target=text, op="update", kind=have[0], fid=fid,
                            status=status, props=props)
