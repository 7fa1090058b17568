"""A ServiceSpec as StartService's typed options, and back (validated) on the agent.

The controlling orchestrator sends ``to_start_options(spec)``; the agent
(``agent.Agent``) rebuilds the spec with ``from_start_request`` and starts
``virtwire serve KIND`` from its own ``argv()``. The request carries no
argv, so it cannot add flags (``--shm-path``, ``--ready-file``, an
abbreviation of ``--listen``...); every field is checked here, and what the
agent's own command line does not allow (script paths, unix sockets,
namespaces) is a PermissionDeniedError (``allowlist.RpcPolicy``).

Filters (``filters``, field 12) are ``--object`` texts, each parsed by
``FilterSpec.parse`` and sent on in its canonical form; a dump's file must
be a plain name (the agent gives the service a --dump-dir of its own, in its
state dir), and chardevs, which only a command line gives, are refused.
"""

from __future__ import annotations

import dataclasses
from typing import Any, cast, get_args

from virtwire.address import check_name, parse_peer, parse_sockaddr, shorten
from virtwire.allowlist import RpcPolicy
from virtwire.errors import ConfigError
from virtwire.guest.bridge import check_netns
from virtwire.guest.responder import parse_interface
from virtwire.hw.e1000 import COMPAT_VERSIONS, MODELS
from virtwire.mem.guestmem import check_size
from virtwire.net.eth import FrameError, format_mac, parse_mac
from virtwire.net.filter_types import FilterSpec
from virtwire.net.hub import check_hub_name
from virtwire.net.netdev import netdev_from_options, netdev_options
from virtwire.net.tap import check_ifname
from virtwire.orchestrator.spec import (
    E1000ServiceSpec,
    FilteredSpec,
    GuestMemServiceSpec,
    GuestServiceSpec,
    HubPortSpec,
    HubServiceSpec,
    QemuServiceSpec,
    ServiceSpec,
    TapServiceSpec,
)
from virtwire.rpc.netdev import netdev_to_proto, rpc_netdev
from virtwire.topology import LinkTransport
from virtwire.v1 import orchestrator_pb2

#: What StartService.link_transport may say.
LINK_TRANSPORTS: tuple[str, ...] = get_args(LinkTransport)

__all__ = ["MAX_HUB_PORTS", "MAX_START_FILTERS", "from_start_request", "to_start_options"]

#: Ports one StartService may create on a hub, and filters it may add.
MAX_HUB_PORTS = 1024
MAX_START_FILTERS = 256
#: Filter properties naming a chardev: a service an agent starts has none.
_CHARDEV_PROPS = ("outdev", "indev")
_HUB_ID_MAX = (1 << 31) - 1
_OPTION_KINDS = ("hub", "tap", "guestmem", "e1000", "guest")


def to_start_options(spec: ServiceSpec) -> dict[str, Any]:
    """``{KIND: Start<Kind>Options}``: keyword arguments of the StartService request."""
    options = _kind_options(spec)
    if not isinstance(spec, GuestMemServiceSpec | QemuServiceSpec) \
            and spec.link_transport != "auto":
        options["link_transport"] = spec.link_transport
    if isinstance(spec, FilteredSpec) and spec.filters:
        options["filters"] = list(spec.filters)
    return options


def check_filters(texts: list[str]) -> tuple[str, ...]:
    """StartService.filters, each parsed and in its canonical form; ConfigError if not."""
    from virtwire.net.filter_dump import check_dump_name

    if len(texts) > MAX_START_FILTERS:
        raise ConfigError(f"filters: {len(texts)} filters, at most {MAX_START_FILTERS}")
    out: list[str] = []
    for text in texts:
        spec = FilterSpec.parse(text)
        where = f"filters: {shorten(text, 80)}"
        check_name(spec.netdev, "filter netdev")
        if spec.kind == "dump":
            check_dump_name(spec.props.get("file", ""))
        for prop in _CHARDEV_PROPS:
            if spec.props.get(prop):
                raise ConfigError(f"{where}: {prop}= names a chardev, and a service an agent "
                                  "starts has none")
        out.append(spec.format())
    return tuple(out)


def _kind_options(spec: ServiceSpec) -> dict[str, Any]:
    if isinstance(spec, QemuServiceSpec):  # a program to run: never over an RPC
        raise ConfigError("a qemu node runs on this machine only: not through StartService")
    if isinstance(spec, HubServiceSpec):
        return {"hub": orchestrator_pb2.StartHubOptions(
            hub_id=spec.hub_id, name=spec.name,
            ports=[orchestrator_pb2.StartHubPort(name=p.name, peer=p.peer) for p in spec.ports])}
    if isinstance(spec, TapServiceSpec):
        # Scripts are names the other host resolves: not checked here.
        config = netdev_from_options(spec.backend, {**spec.options, "peer": spec.peer},
                                     check_scripts=False)
        return {"tap": orchestrator_pb2.StartTapOptions(backend=netdev_to_proto(config))}
    if isinstance(spec, GuestMemServiceSpec):
        return {"guestmem": orchestrator_pb2.StartGuestMemOptions(
            size=spec.size, no_prealloc=not spec.prealloc)}
    if isinstance(spec, E1000ServiceSpec):
        return {"e1000": orchestrator_pb2.StartE1000Options(
            guestmem=spec.guestmem, mac=spec.mac, model=spec.model, compat=spec.compat,
            name=spec.name, peer=spec.peer, rpc_dma=spec.rpc_dma)}
    if spec.netns_create:
        raise ConfigError("a guest on another host cannot create its network namespace")
    return {"guest": orchestrator_pb2.StartGuestOptions(
        e1000=spec.e1000, guestmem=spec.guestmem, ip=spec.ip, bridge_tap=spec.bridge_tap,
        bridge_ip=spec.bridge_ip, netns=spec.netns, rpc_dma=spec.rpc_dma)}


def _address(option: str, text: str, policy: RpcPolicy) -> str:
    """A service address to dial: HOST:PORT."""
    if not text:
        raise ConfigError(f"{option}: the address is missing (HOST:PORT)")
    policy.no_unix(option, text)
    return str(parse_sockaddr(text, allow_port_zero=False))


def _peer(option: str, text: str, policy: RpcPolicy) -> str:
    """A link peer to dial, HOST:PORT/NETCLIENT, or ""."""
    if not text:
        return ""
    policy.no_unix(option, text)
    return str(parse_peer(text))


def _interface(option: str, text: str) -> str:
    if not text:
        return ""
    try:
        return str(parse_interface(text, option))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _hub(msg: orchestrator_pb2.StartHubOptions, policy: RpcPolicy) -> HubServiceSpec:
    if msg.hub_id > _HUB_ID_MAX:
        raise ConfigError(f"hub.hub_id {msg.hub_id} is above {_HUB_ID_MAX}")
    if len(msg.ports) > MAX_HUB_PORTS:
        raise ConfigError(f"hub.ports: {len(msg.ports)} ports, at most {MAX_HUB_PORTS}")
    names: set[str] = set()
    ports = []
    for port in msg.ports:
        name = check_name(port.name, "hub port")
        if name in names:
            raise ConfigError(f"hub.ports: port {name!r} is given twice")
        names.add(name)
        ports.append(HubPortSpec(name, _peer(f"hub.ports[{name}].peer", port.peer, policy)))
    name = check_hub_name(msg.name) if msg.name else ""
    return HubServiceSpec(hub_id=msg.hub_id, name=name, ports=tuple(ports))


def _tap(msg: orchestrator_pb2.StartTapOptions, policy: RpcPolicy) -> TapServiceSpec:
    if not msg.HasField("backend"):
        raise ConfigError("tap.backend is missing: give one backend (tap, stream or dgram)")
    kind, opts = netdev_options(rpc_netdev(msg.backend, policy))
    peer = opts.pop("peer", "")
    return TapServiceSpec(backend=kind, options=opts, peer=peer)


def _e1000(msg: orchestrator_pb2.StartE1000Options, policy: RpcPolicy) -> E1000ServiceSpec:
    try:
        mac = format_mac(parse_mac(msg.mac))
    except FrameError as exc:
        raise ConfigError(f"e1000.mac: {exc}") from None
    if msg.model not in MODELS:
        raise ConfigError(f"e1000.model {shorten(msg.model)}: one of {', '.join(MODELS)}")
    if msg.compat not in COMPAT_VERSIONS:
        raise ConfigError(f"e1000.compat {shorten(msg.compat)}: one of "
                          f"{', '.join(COMPAT_VERSIONS)}")
    return E1000ServiceSpec(
        guestmem=_address("e1000.guestmem", msg.guestmem, policy), mac=mac, model=msg.model,
        compat=msg.compat, name=check_name(msg.name, "e1000 NetClient"),
        peer=_peer("e1000.peer", msg.peer, policy), rpc_dma=msg.rpc_dma)


def _guest(msg: orchestrator_pb2.StartGuestOptions, policy: RpcPolicy) -> GuestServiceSpec:
    if not msg.bridge_tap and (msg.netns or msg.bridge_ip):
        raise ConfigError("guest.netns and guest.bridge_ip need guest.bridge_tap")
    if msg.bridge_tap:
        check_ifname(msg.bridge_tap)
    if msg.netns:
        policy.netns("guest.netns", msg.netns)
        check_netns(msg.netns, must_exist=False)
    return GuestServiceSpec(
        e1000=_address("guest.e1000", msg.e1000, policy),
        guestmem=_address("guest.guestmem", msg.guestmem, policy),
        ip=_interface("guest.ip", msg.ip), bridge_tap=msg.bridge_tap, netns=msg.netns,
        bridge_ip=_interface("guest.bridge_ip", msg.bridge_ip), rpc_dma=msg.rpc_dma)


def from_start_request(request: orchestrator_pb2.OrchestratorServiceStartServiceRequest,
                       policy: RpcPolicy) -> ServiceSpec:
    """The spec a StartService asks for, checked; ConfigError or PermissionDeniedError."""
    spec = _spec_of(request, policy)
    if request.filters:
        if not isinstance(spec, FilteredSpec):
            raise ConfigError(f"filters: a {spec.kind} service has no NetClients to filter")
        spec = dataclasses.replace(spec, filters=check_filters(list(request.filters)))
    transport = request.link_transport or "auto"
    if transport not in LINK_TRANSPORTS:
        raise ConfigError(f"StartService.link_transport {shorten(transport)}: use one of "
                          f"{', '.join(LINK_TRANSPORTS)}")
    if transport != "auto" and not isinstance(spec, GuestMemServiceSpec | QemuServiceSpec):
        spec = dataclasses.replace(spec, link_transport=cast(LinkTransport, transport))
    return spec


def _spec_of(request: orchestrator_pb2.OrchestratorServiceStartServiceRequest,
             policy: RpcPolicy) -> ServiceSpec:
    kind = request.WhichOneof("options")
    if kind is None:
        raise ConfigError("StartService needs the service's options: set one of "
                          f"{', '.join(_OPTION_KINDS)} (raw args are no longer accepted)")
    if kind == "hub":
        return _hub(request.hub, policy)
    if kind == "tap":
        return _tap(request.tap, policy)
    if kind == "guestmem":
        return GuestMemServiceSpec(size=check_size(request.guestmem.size),
                                   prealloc=not request.guestmem.no_prealloc)
    if kind == "e1000":
        return _e1000(request.e1000, policy)
    return _guest(request.guest, policy)
