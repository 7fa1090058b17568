"""What one service of a LAN is started with: a typed spec per kind.

The orchestration plan (``plan.py``) builds one from the topology, once per
service. Runtimes turn it into what they start: ``argv()`` gives the
arguments of ``virtwire serve KIND`` after ``--listen`` (ProcessRuntime,
DockerRuntime, ``virtwire render``), and ``runtime.remote`` turns it into the
typed StartService options another host's orchestrator validates and runs.

``link_transport`` is the service's ``--link-transport``; "auto" (the
default) adds no argument, so a LAN that never chooses has the argv it had.

``filters`` (hub, tap, e1000) are the topology's filters on the service's
NetClients, each an ``--object`` text (``net.filter_types.FilterSpec``), and
``dump_dir`` its ``--dump-dir`` (set by whoever runs it, in its own state
dir, when a filter is a dump); without filters neither adds an argument.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar

from virtwire.net.netdev import format_backend_spec
from virtwire.topology import LinkTransport

__all__ = ["E1000ServiceSpec", "GuestMemServiceSpec", "GuestServiceSpec", "HubPortSpec",
           "HubServiceSpec", "QemuServiceSpec", "ServiceSpec", "SwitchServiceSpec",
           "TapServiceSpec", "filter_argv",
           "has_dump", "link_transport_argv", "with_dump_dir", "with_hub_ports"]


def link_transport_argv(transport: LinkTransport) -> list[str]:
    """``--link-transport grpc``; nothing for "auto", the service's default."""
    return [] if transport == "auto" else ["--link-transport", transport]


def has_dump(filters: tuple[str, ...]) -> bool:
    """Whether one of these ``--object`` texts is a dump filter (it needs a --dump-dir)."""
    return any(text.startswith("filter-dump,") for text in filters)


def filter_argv(filters: tuple[str, ...], dump_dir: str) -> list[str]:
    """``--object TEXT`` per filter, then ``--dump-dir DIR`` if given."""
    args = [arg for text in filters for arg in ("--object", text)]
    return args + (["--dump-dir", dump_dir] if dump_dir else [])


@dataclass(frozen=True)
class HubPortSpec:
    """A port the hub creates at start; with ``peer`` it dials that peer."""

    name: str
    peer: str = ""


@dataclass(frozen=True, kw_only=True)
class HubServiceSpec:
    kind: ClassVar[str] = "hub"
    hub_id: int = 0
    #: Its unnamed ports are named after it (``net.hub.hub_port_name``); "": "hub<ID>".
    name: str = ""
    #: In creation order.
    ports: tuple[HubPortSpec, ...] = ()
    link_transport: LinkTransport = "auto"
    filters: tuple[str, ...] = ()
    dump_dir: str = ""

    def argv(self) -> list[str]:
        args = ["--hub-id", str(self.hub_id)] if self.hub_id else []
        args += ["--name", self.name] if self.name else []
        for port in self.ports:
            args += ["--port", f"{port.name}={port.peer}" if port.peer else port.name]
        return (args + link_transport_argv(self.link_transport)
                + filter_argv(self.filters, self.dump_dir))


@dataclass(frozen=True, kw_only=True)
class SwitchServiceSpec(HubServiceSpec):
    """A hub's spec run as ``serve switch``: VLANs per port, a mirror, aging, the
    MAC table's size (net.switch)."""

    kind: ClassVar[str] = "switch"
    #: (port, ``--vlans`` text: ``10`` or ``trunk=10,20,native=1``).
    vlans: tuple[tuple[str, str], ...] = ()
    mirror: str = ""
    aging: float = 300.0
    max_entries: int = 4096

    def argv(self) -> list[str]:
        args = super().argv()
        for port, text in self.vlans:
            args += ["--vlans", f"{port}={text}"]
        args += ["--mirror", self.mirror] if self.mirror else []
        args += ["--aging", f"{self.aging:g}s"] if self.aging != 300.0 else []
        args += ["--max-entries", str(self.max_entries)] if self.max_entries != 4096 else []
        return args


@dataclass(frozen=True, kw_only=True)
class TapServiceSpec:
    """One backend: ``backend`` (tap, stream, dgram) with QEMU-like ``options``.

    ``options`` are as ``serve tap --backend`` takes them, ``id=`` included;
    a script= is a path for this machine, a NAME for another host.
    """

    kind: ClassVar[str] = "tap"
    backend: str
    options: Mapping[str, str] = field(default_factory=dict)
    peer: str = ""
    link_transport: LinkTransport = "auto"
    filters: tuple[str, ...] = ()
    dump_dir: str = ""
    #: A container's interface: the namespace file its TAP opens in (``--netns``),
    #: its IPv4 address and MAC (``--tap-ip``, ``--tap-mac``). Never over StartService.
    netns: str = ""
    ip: str = ""
    mac: str = ""

    def argv(self) -> list[str]:
        args = ["--backend", format_backend_spec(self.backend, self.options)]
        args += ["--peer", self.peer] if self.peer else []
        args += ["--netns", self.netns] if self.netns else []
        args += ["--tap-ip", self.ip] if self.ip else []
        args += ["--tap-mac", self.mac] if self.mac else []
        return (args + link_transport_argv(self.link_transport)
                + filter_argv(self.filters, self.dump_dir))


@dataclass(frozen=True, kw_only=True)
class GuestMemServiceSpec:
    kind: ClassVar[str] = "guestmem"
    #: Guest RAM in bytes.
    size: int
    prealloc: bool = True

    def argv(self) -> list[str]:
        return ["--size", str(self.size), *([] if self.prealloc else ["--no-prealloc"])]


@dataclass(frozen=True, kw_only=True)
class E1000ServiceSpec:
    kind: ClassVar[str] = "e1000"
    guestmem: str
    mac: str
    model: str
    compat: str
    name: str
    peer: str = ""
    rpc_dma: bool = False
    #: Also whether it offers its guest the same-host MMIO socket.
    link_transport: LinkTransport = "auto"
    filters: tuple[str, ...] = ()
    dump_dir: str = ""

    def argv(self) -> list[str]:
        args = ["--guestmem", self.guestmem, "--mac", self.mac, "--model", self.model,
                "--compat", self.compat, "--name", self.name]
        if self.peer:
            args += ["--peer", self.peer]
        args += ["--dma", "rpc"] if self.rpc_dma else []
        return (args + link_transport_argv(self.link_transport)
                + filter_argv(self.filters, self.dump_dir))


@dataclass(frozen=True, kw_only=True)
class GuestServiceSpec:
    kind: ClassVar[str] = "guest"
    e1000: str
    guestmem: str
    ip: str = ""
    bridge_tap: str = ""
    netns: str = ""
    bridge_ip: str = ""
    #: Create ``netns`` (a container's own namespaces): never over StartService.
    netns_create: bool = False
    rpc_dma: bool = False
    #: Also whether it asks its e1000 for the same-host MMIO socket.
    link_transport: LinkTransport = "auto"

    def argv(self) -> list[str]:
        args = ["--e1000", self.e1000, "--guestmem", self.guestmem]
        if self.ip:
            args += ["--ip", self.ip]
        if self.bridge_tap:
            args += ["--bridge-tap", self.bridge_tap]
            if self.netns:
                args += ["--netns", self.netns]
            if self.bridge_ip:
                args += ["--bridge-ip", self.bridge_ip]
        if self.rpc_dma:
            args += ["--dma", "rpc"]
        args += ["--netns-create"] if self.netns_create else []
        return args + link_transport_argv(self.link_transport)


@dataclass(frozen=True, kw_only=True)
class QemuServiceSpec:
    """A QEMU VM run by ``serve qemu`` (server/qemu.py): it dials ``stream``
    (the unix socket of its stream port) and writes its serial console to
    ``console``. Only from a topology file read on this host: never over StartService."""

    kind: ClassVar[str] = "qemu"
    name: str
    stream: str
    console: str
    kernel: str = ""
    initrd: str = ""
    append: str = ""
    disk: str = ""
    memory: int = 256 << 20
    nic: str = "e1000"
    mac: str = ""
    args: tuple[str, ...] = ()

    def argv(self) -> list[str]:
        out = ["--name", self.name, "--stream", self.stream, "--console", self.console,
               "--memory", str(self.memory), "--nic", self.nic]
        for option in ("kernel", "initrd", "append", "disk", "mac"):
            value = getattr(self, option)
            out += [f"--{option}", value] if value else []
        # --arg=X: an argument starting with '-' is the value, not an option.
        return out + [f"--arg={arg}" for arg in self.args]


ServiceSpec = (HubServiceSpec | TapServiceSpec | GuestMemServiceSpec | E1000ServiceSpec
               | GuestServiceSpec | QemuServiceSpec)
#: The kinds whose NetClients are LAN nodes, which topology filters go on.
FilteredSpec = HubServiceSpec | TapServiceSpec | E1000ServiceSpec


def with_dump_dir(spec: ServiceSpec, directory: str) -> ServiceSpec:
    """``spec`` with ``--dump-dir directory`` if one of its filters is a dump."""
    if isinstance(spec, FilteredSpec) and has_dump(spec.filters):
        return replace(spec, dump_dir=directory)
    return spec


def with_hub_ports(spec: ServiceSpec, seen: list[str]) -> ServiceSpec:
    """A hub's spec for a restart: also the ports it had (``seen``), numbered ones too.

    Its dialers redial the port they were given, so the restarted hub must have it.
    """
    if not isinstance(spec, HubServiceSpec):
        return spec
    named = {port.name for port in spec.ports}
    extra = tuple(HubPortSpec(name) for name in reversed(seen) if name not in named)
    return replace(spec, ports=spec.ports + extra)
