"""`virtwire serve KIND`: one service, until SIGTERM or SIGINT.

The kinds are ``SERVE_KINDS``, a table keyed by kind as QEMU's netdev
constructors are: per kind its help, a function adding its options and one
building its ServiceHost from them. ``serving`` is the one serve loop, also
used by a foreground ``virtwire up``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from virtwire import tls
from virtwire.cli.log import label_records, name_service
from virtwire.cli.userfile import user_file
from virtwire.errors import ConfigError
from virtwire.guest.driver import DEFAULT_RING
from virtwire.logfmt import LOG_FORMATS
from virtwire.server.base import SHUTDOWN_GRACE_S, ServiceHost
from virtwire.server.guest import SERVICE_RING, GuestServer
from virtwire.server.link import LINK_TRANSPORTS
from virtwire.server.tracesetup import TraceSetup

if TYPE_CHECKING:
    from virtwire.net.netdev import Netdev

logger = logging.getLogger(__name__)

T = TypeVar("T")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


# -- the serve loop -------------------------------------------------------------------
@contextlib.asynccontextmanager
async def serving(host: ServiceHost, grace: float = SHUTDOWN_GRACE_S
                  ) -> AsyncIterator[asyncio.Event]:
    """Start ``host`` for the block, which gets an event SIGTERM/SIGINT set;
    at the end, stop it within ``grace`` seconds."""
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stopped.set)
    try:
        await host.start()
        try:
            yield stopped
        finally:
            await host.stop(grace)
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)


async def until_stopped(stopped: asyncio.Event, work: Awaitable[T]) -> T | None:
    """``work``'s result; None (and ``work`` cancelled) if ``stopped`` comes first."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stopped.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        finished = task.done()
        if not finished:
            task.cancel()
    return task.result() if finished else None


async def cmd_serve(args: argparse.Namespace) -> int:
    if args.ready_file:
        # Whoever waits for the address would wait forever: refuse before
        # listening. Empty until serving, as the waiters expect.
        with user_file(args.ready_file, "write"):
            Path(args.ready_file).write_text("")
    service = args.log_name or args.metrics_service or args.kind
    name_service(args.kind, service)
    # Checked before the service is built, so a bad flag opens nothing.
    trace = TraceSetup.from_flags(service, args.metrics_lan, args.trace_file,
                                  args.trace_otlp, args.trace_sample)
    host = SERVE_KINDS[args.kind].build(args)
    host.trace = trace
    configure_filters(host, args)
    host.registry.max_captures = args.max_captures
    host.registry.set_link_transport(args.link_transport)
    host.insecure = args.insecure
    host.metrics_listen = args.metrics_listen
    host.metrics_lan = args.metrics_lan
    host.metrics_service = args.metrics_service
    async with serving(host) as stopped:
        label_records(f"{host.service_name}@{host.address}", host.address)
        if args.ready_file:
            Path(args.ready_file).write_text(host.address + "\n")
        await stopped.wait()
        logger.info("signal received, shutting down")
    return 0


# -- filters: --object, --chardev, --dump-dir ---------------------------------------------
def configure_filters(host: ServiceHost, args: argparse.Namespace) -> None:
    """Give ``host`` the filters of its command line; they go on its NetClients
    at every start (a bad one fails the start)."""
    from virtwire.net.filter_types import FilterSpec

    host.filters.specs = [FilterSpec.parse(text) for text in args.object]
    if args.dump_dir:
        dump_dir = Path(args.dump_dir)
        if not dump_dir.is_dir():
            raise ConfigError(f"--dump-dir {args.dump_dir}: not a directory")
        host.filters.dump_dir = dump_dir.resolve()
    host.filters.chardev_specs = [_parse_chardev(text) for text in args.chardev]


def _parse_chardev(text: str) -> object:
    try:
        from virtwire.net.chardev import ChardevSpec  # type: ignore[import-not-found,unused-ignore]
    except ModuleNotFoundError as exc:
        if exc.name != "virtwire.net.chardev":
            raise
        raise ConfigError(f"--chardev {text!r}: this virtwire has no chardevs yet") from None
    spec: object = ChardevSpec.parse(text)
    return spec


def _add_filter_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--object", action="append", default=[],
                    metavar="filter-KIND,id=ID,netdev=NETCLIENT[,...]",
                    help="a net filter on one of this service's NetClients, as QEMU's "
                         "-object (queue=rx|tx|all, status=on|off, position=head|tail|"
                         "id=OTHER, insert=behind|before, then the kind's properties); "
                         "added at start (repeatable)")
    sp.add_argument("--chardev", action="append", default=[], metavar="socket,id=ID,...",
                    help="a chardev mirror and redirector filters may name by ID, from "
                         "--object or FilterService (repeatable)")
    sp.add_argument("--dump-dir", metavar="DIR",
                    help="where dump filters write: their file= names a file in DIR")


def _add_log_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                    help="text (one line per event, the default) or json (one object per "
                         "line: ts, level, logger, service, kind, msg, netclient...; "
                         "docs/logs.md); an orchestrator passes its own to its services")
    sp.add_argument("--log-name", default="", metavar="NAME",
                    help="the service field of JSON log lines and the service.name of its "
                         "spans (default: --metrics-service, else the kind); an "
                         "orchestrator gives each service its name")


def _add_metrics_arguments(sp: argparse.ArgumentParser) -> None:
    group = sp.add_argument_group("Prometheus metrics (docs/metrics.md)")
    group.add_argument("--metrics-listen", default="", metavar="ADDR:PORT",
                       help="serve /metrics here (prometheus-client's HTTP server; a bare "
                            "PORT is 127.0.0.1:PORT); off "
                            "loopback only over TLS (the TLS flags: HTTPS with this "
                            "service's certificate, client certificates required) or with "
                            "--insecure")
    group.add_argument("--metrics-lan", default="", metavar="LAN",
                       help="the lan label of every metric (default empty)")
    group.add_argument("--metrics-service", default="", metavar="NAME",
                       help="the service label of every metric (default: the kind)")


def _add_trace_arguments(sp: argparse.ArgumentParser) -> None:
    group = sp.add_argument_group("per-frame tracing (docs/tracing.md)")
    group.add_argument("--trace-file", default="", metavar="PATH",
                       help="append every span this service records to PATH, one "
                            "OpenTelemetry JSON object per line")
    group.add_argument("--trace-otlp", default="", metavar="ENDPOINT",
                       help="export spans to an OpenTelemetry collector over OTLP/gRPC: "
                            "HOST:PORT (plaintext on loopback, TLS elsewhere), "
                            "http://HOST:PORT (loopback only) or https://HOST:PORT; "
                            "TLS uses this service's TLS flags")
    group.add_argument("--trace-sample", default="", metavar="1/N|off",
                       help="trace one frame in N, at random, where frames enter the LAN "
                            "here (tap, stream and dgram backends, an e1000); default off. "
                            "TraceService's ArmTrace changes it at run time")


# -- the kinds -----------------------------------------------------------------------
def _hub_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--hub-id", type=int, default=0, help="QEMU's hubid (default 0)")
    sp.add_argument("--name", default="",
                    help="the hub's name: unnamed ports are NAMEport0, NAMEport1... "
                         "(default hub<ID>, QEMU's names)")
    sp.add_argument("--ports", type=int, default=0,
                    help="create N ports that wait to be dialled")
    sp.add_argument("--port", action="append", default=[], metavar="NAME[=PEER]",
                    help="create a named port; with =ADDR/NETCLIENT it dials that peer")
    sp.add_argument("--port-backend", action="append", default=[], metavar="NAME=SPEC",
                    help="create port NAME whose peer is a backend opened in this process, "
                         "SPEC as serve tap's --backend (e.g. "
                         "qemu0=stream,listen=127.0.0.1:10555): QEMU's -netdev "
                         "hubport,netdev=; no link between them (repeatable)")
    sp.add_argument("--max-ports", type=int, default=256, metavar="N",
                    help="refuse AddPort and anonymous links beyond N ports "
                         "(default 256)")


def _switch_arguments(sp: argparse.ArgumentParser) -> None:
    _hub_arguments(sp)
    sp.add_argument("--vlans", action="append", default=[], metavar="PORT=VLANS",
                    help="a port's VLANs: PORT=10 (access) or PORT=trunk=10,20[,native=1] "
                         "(ports not named are access ports of VLAN 1; repeatable)")
    sp.add_argument("--mirror", default="", metavar="PORT",
                    help="this port gets a copy of every forwarded frame")
    sp.add_argument("--aging", default="300s", metavar="DURATION",
                    help="forget a MAC not seen for this long (default 300s)")
    sp.add_argument("--max-entries", type=int, default=4096, metavar="N",
                    help="MAC table entries; new MACs beyond N are flooded and counted "
                         "(default 4096)")


def _build_switch(args: argparse.Namespace) -> ServiceHost:
    from virtwire.net.switch import PortVlans
    from virtwire.net.units import parse_duration
    from virtwire.server.switch import SwitchServer

    host = SwitchServer(args.listen, args.hub_id, max_ports=args.max_ports, name=args.name,
                        aging=parse_duration(args.aging, "--aging"),
                        max_entries=args.max_entries)
    vlans: dict[str, PortVlans] = {}
    for text in args.vlans:
        name, sep, spec = text.partition("=")
        if not name or not sep:
            raise ConfigError(f"bad --vlans {text!r}: expected PORT=VLAN or "
                              "PORT=trunk=VLAN,...[,native=VLAN]")
        vlans[name] = PortVlans.parse(spec)
    _add_hub_ports(host, args)
    for name, v in vlans.items():
        host.switch.set_port_vlans(name, v)  # HubError for a port not made
    if args.mirror:
        host.switch.set_mirror(args.mirror)
    return host


def _add_hub_ports(host: ServiceHost, args: argparse.Namespace) -> None:
    from virtwire.server.hub import HubServer

    assert isinstance(host, HubServer)
    for _ in range(args.ports):
        host.add_port()
    for spec in args.port:
        name, sep, peer = spec.partition("=")
        if not name:
            raise ConfigError(f"bad --port {spec!r}: expected NAME or NAME=ADDR/NETCLIENT")
        host.add_port(name, peer if sep else "")
    if args.port_backend:
        from virtwire.net.netdev import parse_backend_spec

        for text in args.port_backend:
            name, sep, spec = text.partition("=")
            if not name or not sep or not spec:
                raise ConfigError(f"bad --port-backend {text!r}: expected NAME=SPEC, e.g. "
                                  "qemu0=stream,listen=127.0.0.1:10555")
            host.add_port_backend(name, parse_backend_spec(spec))


def _build_hub(args: argparse.Namespace) -> ServiceHost:
    from virtwire.server.hub import HubServer

    host = HubServer(args.listen, args.hub_id, max_ports=args.max_ports, name=args.name)
    _add_hub_ports(host, args)
    return host


def _add_allow_script(sp: argparse.ArgumentParser, who: str) -> None:
    sp.add_argument("--allow-script", action="append", default=[], metavar="NAME=PATH",
                    help=f"{who} may name script NAME (script=NAME, downscript=NAME) to run "
                         "PATH; over RPCs scripts are only such names (repeatable)")


def _tap_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--backend", action="append", default=[], metavar="SPEC",
                    help="e.g. stream,listen=127.0.0.1:5000 | stream,connect=unix:/s "
                         "| tap,ifname=vw0,vnet_hdr=on | dgram,local=H:P,remote=H:P "
                         "| dgram,mcast=230.0.0.1:1234")
    sp.add_argument("--peer", action="append", default=[], metavar="ADDR/NETCLIENT",
                    help="peer of the n-th --backend (empty NETCLIENT: a new hub port)")
    sp.add_argument("--netns", default="", metavar="PATH",
                    help="open the tap backends inside the network namespace of this file "
                         "(a container's /proc/PID/ns/net, /run/netns/NAME) and bring them "
                         "up there (needs CAP_SYS_ADMIN; docs/topology.md, containers)")
    sp.add_argument("--tap-ip", default="", metavar="CIDR",
                    help="give the (one) tap backend's interface this IPv4 address and "
                         "bring it up, e.g. 198.18.0.20/24")
    sp.add_argument("--tap-mac", default="", metavar="MAC",
                    help="give the (one) tap backend's interface this MAC")
    _add_allow_script(sp, "AddBackend")


def _build_tap(args: argparse.Namespace) -> ServiceHost:
    from virtwire.allowlist import parse_allow_scripts
    from virtwire.net.netdev import parse_backend_spec
    from virtwire.server.tap import TapServer

    if not args.backend:
        raise ConfigError("serve tap needs at least one --backend SPEC")
    if len(args.peer) > len(args.backend):
        raise ConfigError(f"{len(args.peer)} --peer given for {len(args.backend)} --backend")
    configs = [parse_backend_spec(spec) for spec in args.backend]
    for i, peer in enumerate(args.peer):
        configs[i] = dataclasses.replace(configs[i], peer=peer)
    configs = _tap_setup(args, configs)
    host = TapServer(args.listen, allowed_scripts=parse_allow_scripts(args.allow_script))
    host.pending_configs.extend(configs)
    return host


def _tap_setup(args: argparse.Namespace, configs: list[Netdev]) -> list[Netdev]:
    """--netns, --tap-ip and --tap-mac onto the command line's tap backends (only
    there: a spec, and so an RPC, cannot name a namespace)."""
    from virtwire.net.netdev import NetdevTap
    from virtwire.net.nsjoin import TapSetup

    if not (args.netns or args.tap_ip or args.tap_mac):
        return configs
    taps = [i for i, config in enumerate(configs) if isinstance(config, NetdevTap)]
    if not taps:
        raise ConfigError("--netns, --tap-ip and --tap-mac are for tap backends: "
                          "give a --backend tap,...")
    if (args.tap_ip or args.tap_mac) and len(taps) > 1:
        raise ConfigError("--tap-ip and --tap-mac set one interface: give one tap backend")
    if args.netns and not os.path.isabs(args.netns):
        raise ConfigError(f"--netns {args.netns!r}: give the namespace file's absolute path")
    TapSetup(ip=args.tap_ip, mac=args.tap_mac)  # checked before anything opens
    out = list(configs)
    for i in taps:
        out[i] = dataclasses.replace(out[i], netns=args.netns, ip=args.tap_ip,
                                     mac=args.tap_mac)
    return out


def _guestmem_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--size", metavar="SIZE",
                    help="guest RAM, e.g. 64M or 1G (binary units; default 64M, "
                         "or the size of an existing --shm-path file)")
    sp.add_argument("--shm-path", metavar="PATH",
                    help="back the RAM by this file: opened if it exists (and left "
                         "there), else created (and removed at exit); default: a "
                         "unique file in /dev/shm")
    sp.add_argument("--no-prealloc", action="store_true",
                    help="do not reserve the RAM up front (a full /dev/shm then "
                         "means SIGBUS, not an error)")
    sp.add_argument("--max-size", metavar="SIZE",
                    help="the largest guest RAM this host serves (default: 4G, or "
                         "half of MemTotal if less)")


def _build_guestmem(args: argparse.Namespace) -> ServiceHost:
    from virtwire.mem.guestmem import parse_size
    from virtwire.server.guestmem import GuestMemServer

    if args.size:
        size: int | None = parse_size(args.size)
    else:
        size = None if args.shm_path else 64 << 20
    return GuestMemServer(args.listen, size, args.shm_path, prealloc=not args.no_prealloc,
                          max_size=parse_size(args.max_size) if args.max_size else None)


def _add_dma(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--dma", choices=["auto", "rpc"], default="auto",
                    help="auto: shared memory when on the same host; rpc: always RPCs")


def _e1000_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--guestmem", required=True, metavar="ADDR",
                    help="the guestmem service the NIC DMAs to")
    sp.add_argument("--mac", default="52:54:00:12:34:56", help="MAC address")
    sp.add_argument("--model", default="82540EM",
                    choices=["82540EM", "82544GC", "82545EM"],
                    help="82540EM (0x100E, default), 82544GC (0x100C), 82545EM (0x100F)")
    sp.add_argument("--name", default="e1000", help="the NIC's NetClient name")
    sp.add_argument("--peer", metavar="ADDR/NETCLIENT",
                    help="dial this peer, e.g. a hub (HUB_ADDR/ for a new port)")
    sp.add_argument("--compat", choices=["9.0", "7.2"], default="9.0",
                    help="the QEMU whose e1000 to reproduce (7.2: Debian 12's)")
    _add_dma(sp)


def _build_e1000(args: argparse.Namespace) -> ServiceHost:
    from virtwire.server.e1000 import E1000Server

    return E1000Server(args.listen, guestmem=args.guestmem, mac=args.mac, model=args.model,
                       name=args.name, peer=args.peer or "", force_rpc=args.dma == "rpc",
                       compat=args.compat)


def _guest_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--e1000", required=True, metavar="ADDR",
                    help="the e1000 service this guest drives")
    sp.add_argument("--guestmem", required=True, metavar="ADDR",
                    help="the guestmem service holding this guest's RAM (the e1000's)")
    sp.add_argument("--ip", default="", metavar="CIDR",
                    help="answer ARP and ping for this address, e.g. 198.18.0.1/24; "
                         "Ping RPCs use it as their source")
    sp.add_argument("--bridge-tap", default="", metavar="IFNAME",
                    help="also make the NIC a Linux TAP interface of this name (root)")
    sp.add_argument("--netns", default="", metavar="NS",
                    help="move the bridge TAP into this existing network namespace")
    sp.add_argument("--netns-create", action="store_true",
                    help="create the --netns namespace if it does not exist, and delete it "
                         "on exit (in a container, whose namespaces are its own)")
    sp.add_argument("--bridge-ip", default="", metavar="CIDR",
                    help="address the bridge TAP with this (inside --netns if given)")
    for ring in ("rx", "tx"):
        sp.add_argument(f"--{ring}-ring", type=int, default=SERVICE_RING, metavar="N",
                        help=f"{ring.upper()} descriptors, 8 to 4096 (default {SERVICE_RING}; "
                             f"Linux: {DEFAULT_RING})")
    _add_dma(sp)
    sp.add_argument("--connect-timeout", type=float, default=10.0, metavar="S",
                    help="give up if the e1000 or guestmem service is not reachable in S s")


def _build_guest(args: argparse.Namespace) -> GuestServer:
    return GuestServer(args.listen, e1000=args.e1000, guestmem=args.guestmem, ip=args.ip,
                       bridge_tap=args.bridge_tap, netns=args.netns, bridge_ip=args.bridge_ip,
                       rx_ring=args.rx_ring, tx_ring=args.tx_ring,
                       force_rpc=args.dma == "rpc", connect_timeout=args.connect_timeout,
                       netns_create=args.netns_create)


def _orchestrator_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--topology", metavar="FILE",
                    help="read this topology file now: Up with an empty topology "
                         "runs it (virtwire up --detach starts this)")
    _add_allow_script(sp, "a topology sent by Up, or StartService,")
    sp.add_argument("--allow-netns", action="store_true",
                    help="let a topology sent by Up, or StartService, move a bridged "
                         "guest's TAP into a network namespace (bridge netns:)")


def _build_orchestrator(args: argparse.Namespace) -> ServiceHost:
    from virtwire.allowlist import parse_allow_scripts
    from virtwire.server.orchestrator import OrchestratorServer
    from virtwire.topology import load_topology

    # Read here, on this host: Up with an empty topology runs it, trusted.
    topo = load_topology(args.topology) if args.topology else None
    return OrchestratorServer(args.listen, exit_on_down=True, local_topology=topo,
                              allowed_scripts=parse_allow_scripts(args.allow_script),
                              allow_netns=args.allow_netns)


def _qemu_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--name", required=True, help="the qemu node")
    sp.add_argument("--stream", required=True, metavar="PATH",
                    help="the unix socket of its stream port (-netdev stream dials it)")
    sp.add_argument("--console", required=True, metavar="PATH",
                    help="the serial console log (appended to)")
    sp.add_argument("--kernel", default="", metavar="PATH")
    sp.add_argument("--initrd", default="", metavar="PATH")
    sp.add_argument("--append", default="", metavar="TEXT", help="kernel command line")
    sp.add_argument("--disk", default="", metavar="PATH", help="a disk image to boot")
    sp.add_argument("--memory", type=int, default=256 << 20, metavar="BYTES")
    sp.add_argument("--nic", choices=("e1000", "virtio-net-pci"), default="e1000")
    sp.add_argument("--mac", default="52:54:00:12:34:56")
    sp.add_argument("--arg", action="append", default=[], metavar="ARG",
                    help="one more QEMU argument (repeatable; --arg=-smp for a leading '-')")


def _build_qemu(args: argparse.Namespace) -> ServiceHost:
    from virtwire.orchestrator.spec import QemuServiceSpec
    from virtwire.server.qemu import QemuServer

    if bool(args.kernel) == bool(args.disk):
        raise ConfigError("give --kernel or --disk (one of them)")
    spec = QemuServiceSpec(name=args.name, stream=args.stream, console=args.console,
                           kernel=args.kernel, initrd=args.initrd, append=args.append,
                           disk=args.disk, memory=args.memory, nic=args.nic, mac=args.mac,
                           args=tuple(args.arg))
    return QemuServer(args.listen, spec)


@dataclass(frozen=True)
class ServeKind:
    """One kind of `virtwire serve`: its help, its options, its ServiceHost."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    build: Callable[[argparse.Namespace], ServiceHost]


#: `virtwire serve KIND`, in the order the help lists them.
SERVE_KINDS: dict[str, ServeKind] = {
    "hub": ServeKind("a hub (QEMU's -netdev hubport)", _hub_arguments, _build_hub),
    "switch": ServeKind("a learning switch: MAC table, 802.1Q VLANs, a mirror port",
                        _switch_arguments, _build_switch),
    "tap": ServeKind("host-side backends: tap, stream, dgram", _tap_arguments, _build_tap),
    "guestmem": ServeKind("one guest's RAM: shared memory + DMA RPCs", _guestmem_arguments,
                          _build_guestmem),
    "e1000": ServeKind("an emulated Intel e1000 NIC (QEMU's hw/net/e1000.c)",
                       _e1000_arguments, _build_e1000),
    "guest": ServeKind("a guest's e1000 driver: send/receive, ping, TAP bridge",
                       _guest_arguments, _build_guest),
    "qemu": ServeKind("a real QEMU VM of a qemu node, on its stream port", _qemu_arguments,
                      _build_qemu),
    "orchestrator": ServeKind("runs LANs from topology files (virtwire up)",
                              _orchestrator_arguments, _build_orchestrator),
}


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser("serve", allow_abbrev=False, help="run one service")
    serve.set_defaults(verb=cmd_serve)
    kinds = serve.add_subparsers(dest="kind", required=True)
    for name, kind in SERVE_KINDS.items():
        sp = kinds.add_parser(name, allow_abbrev=False, help=kind.help)
        sp.add_argument("--listen", default="127.0.0.1:0",
                        help="gRPC address, HOST:PORT or unix:PATH (default 127.0.0.1:0)")
        sp.add_argument("--ready-file", help="write the bound address here once serving")
        sp.add_argument("--max-captures", type=int, default=16, metavar="N",
                        help="Capture streams one NetClient takes (default 16)")
        sp.add_argument("--link-transport", choices=LINK_TRANSPORTS, default="auto",
                        help="how this service's links carry frames: auto (a unix socket "
                             "when both ends share a kernel and a network namespace, else "
                             "the gRPC stream; the default) or grpc (always the stream)")
        _add_log_arguments(sp)
        _add_metrics_arguments(sp)
        _add_trace_arguments(sp)
        _add_filter_arguments(sp)
        tls.add_arguments(sp, default_name=name, server=True)
        kind.add_arguments(sp)
