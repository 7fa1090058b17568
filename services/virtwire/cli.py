"""The `virtwire` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc

from virtwire import tls
from virtwire.address import parse_sockaddr
from virtwire.errors import ConfigError, VirtwireError
from virtwire.net.eth import FrameError, check_frame
from virtwire.net.pcap import PcapWriter, read_pcap
from virtwire.server.base import ServiceHost
from virtwire.v1 import netclient_pb2, netclient_pb2_grpc, orchestrator_pb2

logger = logging.getLogger(__name__)

EXIT_ERROR = 1
EXIT_USAGE = 2


class _ServiceLabel(logging.Filter):
    """Puts "hub@127.0.0.1:5000" into every log record of a serving process."""

    label = "virtwire"

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.label
        return True


_label = _ServiceLabel()


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_label)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(service)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


# -- serve ------------------------------------------------------------------------
async def run_host(host: ServiceHost, ready_file: str | None) -> None:
    """Serve until SIGTERM/SIGINT, then stop within the grace period."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await host.start()
    _label.label = f"{host.service_name}@{host.address}"
    if ready_file:
        Path(ready_file).write_text(host.address + "\n")
    try:
        await stop.wait()
        logger.info("signal received, shutting down")
    finally:
        await host.stop()


def _build_hub(args: argparse.Namespace) -> ServiceHost:
    from virtwire.server.hub import HubServer

    host = HubServer(args.listen, args.hub_id, max_ports=args.max_ports)
    for _ in range(args.ports):
        host.add_port()
    for spec in args.port:
        name, sep, peer = spec.partition("=")
        if not name:
            raise ConfigError(f"bad --port {spec!r}: expected NAME or NAME=ADDR/NETCLIENT")
        host.add_port(name, peer if sep else "")
    return host


def _build_tap(args: argparse.Namespace) -> ServiceHost:
    from dataclasses import replace

    from virtwire.allowlist import parse_allow_scripts
    from virtwire.net.netdev import parse_backend_spec
    from virtwire.server.tap import TapServer

    if not args.backend:
        raise ConfigError("serve tap needs at least one --backend SPEC")
    if len(args.peer) > len(args.backend):
        raise ConfigError(f"{len(args.peer)} --peer given for {len(args.backend)} --backend")
    configs = [parse_backend_spec(spec) for spec in args.backend]
    for i, peer in enumerate(args.peer):
        configs[i] = replace(configs[i], peer=peer)
    host = TapServer(args.listen, allowed_scripts=parse_allow_scripts(args.allow_script))
    host.pending_configs.extend(configs)
    return host


def _build_guestmem(args: argparse.Namespace) -> ServiceHost:
    from virtwire.mem.guestmem import parse_size
    from virtwire.server.guestmem import GuestMemServer

    if args.size:
        size: int | None = parse_size(args.size)
    else:
        size = None if args.shm_path else 64 << 20
    return GuestMemServer(args.listen, size, args.shm_path, prealloc=not args.no_prealloc,
                          max_size=parse_size(args.max_size) if args.max_size else None)


def _build_e1000(args: argparse.Namespace) -> ServiceHost:
    from virtwire.server.e1000 import E1000Server

    return E1000Server(args.listen, guestmem=args.guestmem, mac=args.mac, model=args.model,
                       name=args.name, peer=args.peer or "", force_rpc=args.dma == "rpc",
                       compat=args.compat)


def _build_orchestrator(args: argparse.Namespace) -> ServiceHost:
    from virtwire.allowlist import parse_allow_scripts
    from virtwire.server.orchestrator import OrchestratorServer
    from virtwire.topology import load_topology

    # Read here, on this host: Up with an empty topology runs it, trusted.
    topo = load_topology(args.topology) if args.topology else None
    return OrchestratorServer(args.listen, exit_on_down=True, local_topology=topo,
                              allowed_scripts=parse_allow_scripts(args.allow_script),
                              allow_netns=args.allow_netns)


def _build_guest(args: argparse.Namespace) -> ServiceHost:
    from virtwire.server.guest import build

    return build(args)


async def cmd_serve(args: argparse.Namespace) -> int:
    builders = {"hub": _build_hub, "tap": _build_tap, "guestmem": _build_guestmem,
                "e1000": _build_e1000, "guest": _build_guest,
                "orchestrator": _build_orchestrator}
    host = builders[args.kind](args)
    host.registry.max_captures = args.max_captures
    host.insecure = args.insecure
    await run_host(host, args.ready_file)
    return 0


# -- client commands ------------------------------------------------------------
def _channel(server: str) -> grpc.aio.Channel:
    addr = parse_sockaddr(server, allow_port_zero=False)
    return tls.aio_channel(addr.grpc_target)


def _parse_frame(args: argparse.Namespace) -> list[bytes]:
    if args.hex is not None:
        try:
            frames = [bytes.fromhex(args.hex.replace(":", "").replace(" ", ""))]
        except ValueError:
            raise ConfigError(f"--hex {args.hex!r} is not hexadecimal") from None
    else:
        try:
            frames = read_pcap(Path(args.pcap).read_bytes())
        except OSError as exc:
            raise ConfigError(f"cannot read {args.pcap}: {exc.strerror}") from exc
        except (ValueError, IndexError) as exc:
            raise ConfigError(f"{args.pcap}: {exc}") from exc
    for frame in frames:
        try:
            check_frame(frame)
        except FrameError as exc:
            raise ConfigError(str(exc)) from exc
    return frames


async def cmd_inject(args: argparse.Namespace) -> int:
    frames = _parse_frame(args)
    accepted = dropped = 0
    if not args.server:
        # NODE[:PORT] of a running LAN, through its orchestrator.
        from virtwire.orchestrator.cli import orchestrator_stub

        channel, orch = orchestrator_stub(args.lan)
        async with channel:
            for frame in frames:
                got = await orch.Inject(orchestrator_pb2.OrchestratorServiceInjectRequest(
                    target=args.netclient, frame=frame, repeat=args.repeat),
                    timeout=args.timeout)
                accepted += got.accepted
                dropped += got.dropped
    else:
        async with _channel(args.server) as channel:
            stub = netclient_pb2_grpc.NetClientServiceStub(channel)
            for frame in frames:
                resp = await stub.Inject(netclient_pb2.InjectRequest(
                    name=args.netclient, frame=frame, repeat=args.repeat),
                    timeout=args.timeout)
                accepted += resp.accepted
                dropped += resp.dropped
    print(f"injected into {args.netclient}: {accepted} accepted, {dropped} dropped")
    return 0 if dropped == 0 else EXIT_ERROR


_DIRECTIONS = {"rx": netclient_pb2.DIRECTION_RX, "tx": netclient_pb2.DIRECTION_TX,
               "both": netclient_pb2.DIRECTION_BOTH}


async def cmd_capture(args: argparse.Namespace) -> int:
    flt = netclient_pb2.CaptureFilter(
        direction=_DIRECTIONS[args.direction], ethertype=args.ethertype or 0,
        mac=args.mac or "")
    request = netclient_pb2.CaptureRequest(name=args.netclient, filter=flt, count=args.count,
                                           snaplen=args.snaplen)
    out = sys.stdout.buffer if args.write == "-" else open(args.write, "wb")
    try:
        writer = PcapWriter(out)
        lost = 0
        try:
            async for item in _capture_stream(args, request):
                frame = item.frame[:args.snaplen] if args.snaplen else item.frame
                writer.write(frame, item.timestamp_ns, item.orig_len)
                lost = item.dropped
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    print(f"captured {writer.count} frames from {args.netclient} to {args.write}"
          + (f" ({lost} lost: capture fell behind)" if lost else ""), file=sys.stderr)
    return 0


async def _capture_stream(args: argparse.Namespace, request: netclient_pb2.CaptureRequest
                          ) -> AsyncIterator[netclient_pb2.CaptureResponse]:
    """Captured frames from -s SERVER's NetClient, or from NODE[:PORT] of a LAN."""
    timeout = args.duration or None
    if args.server:
        async with _channel(args.server) as channel:
            stub = netclient_pb2_grpc.NetClientServiceStub(channel)
            async for item in stub.Capture(request, timeout=timeout):
                yield item
        return
    from virtwire.orchestrator.cli import orchestrator_stub

    channel, orch = orchestrator_stub(args.lan)
    async with channel:
        async for got in orch.Capture(orchestrator_pb2.OrchestratorServiceCaptureRequest(
                target=request.name, filter=request.filter, count=request.count),
                timeout=timeout):
            yield got.frame


def _format_table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


async def cmd_list(args: argparse.Namespace) -> int:
    async with _channel(args.server) as channel:
        stub = netclient_pb2_grpc.NetClientServiceStub(channel)
        resp = await stub.ListNetClients(netclient_pb2.ListNetClientsRequest(),
                                         timeout=args.timeout)
    if args.json:
        from google.protobuf import json_format

        print(json_format.MessageToJson(resp, always_print_fields_with_no_presence=True,
                                        preserving_proto_field_name=True))
        return 0
    rows = [("NAME", "KIND", "LINK", "PEER", "RX", "TX", "DROPPED", "QUEUED")]
    for nc in resp.netclients:
        c = nc.counters
        dropped = (c.dropped_queue_full + c.dropped_link_down + c.dropped_refused
                   + c.dropped_malformed + c.dropped_purged)
        link = netclient_pb2.LinkState.Name(nc.link_state).removeprefix("LINK_STATE_").lower()
        if nc.link_down:
            link += " (down)"
        rows.append((nc.name, nc.kind, link, nc.peer, str(c.rx_frames), str(c.tx_frames),
                     str(dropped), str(c.queue_len)))
    print(_format_table(rows))
    return 0


async def cmd_link(args: argparse.Namespace) -> int:
    if not args.server:
        from virtwire.orchestrator.cli import cmd_link_node

        return await cmd_link_node(args)
    async with _channel(args.server) as channel:
        stub = netclient_pb2_grpc.NetClientServiceStub(channel)
        resp = await stub.SetLink(netclient_pb2.SetLinkRequest(
            name=args.netclient, up=args.state == "up"), timeout=args.timeout)
    print(f"{resp.netclient.name}: link {'down' if resp.netclient.link_down else 'up'}")
    return 0


async def cmd_ping(args: argparse.Namespace) -> int:
    if not args.server:
        from virtwire.orchestrator.cli import cmd_ping_node

        if args.to is None:
            raise ConfigError("ping without -s takes FROM_VM TO")
        return await cmd_ping_node(args)
    if args.to is not None:
        raise ConfigError("ping -s GUEST takes one ADDRESS")
    from virtwire.server.guest import ping_command

    return await ping_command(args.server, args.address, count=args.count,
                              interval_ms=max(1, round(args.interval * 1000)),
                              timeout_ms=max(1, round(args.wait * 1000)), size=args.size)


async def cmd_validate(args: argparse.Namespace) -> int:
    from virtwire.topology import load_topology

    topo = load_topology(args.file)
    if args.json:
        print(json.dumps(topo.to_dict(), indent=1))
    else:
        print(f"{args.file}: LAN {topo.name!r}: {len(topo.nodes)} nodes, "
              f"{len(topo.links)} links, {len(topo.services)} services")
    for warning in topo.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


async def cmd_render(args: argparse.Namespace) -> int:
    from virtwire.orchestrator.render import holds_keys, render, write_output
    from virtwire.topology import load_topology

    topo = load_topology(args.file)
    output = None if args.output in (None, "-") else Path(args.output)
    text = render(topo, args.format, args.subnet, output=output,
                  certs_dir=Path(args.certs_dir) if args.certs_dir else None)
    for warning in topo.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if output is None:
        sys.stdout.write(text)
    else:
        write_output(output, text, holds_keys(topo, args.format))
    return 0


async def cmd_up(args: argparse.Namespace) -> int:
    from virtwire.orchestrator.cli import cmd_up as run

    return await run(args)


async def cmd_down(args: argparse.Namespace) -> int:
    from virtwire.orchestrator.cli import cmd_down as run

    return await run(args)


async def cmd_status(args: argparse.Namespace) -> int:
    from virtwire.orchestrator.cli import cmd_status as run

    return await run(args)


async def cmd_certs(args: argparse.Namespace) -> int:
    from virtwire import certs_cli

    return certs_cli.run(args)


async def cmd_demo(args: argparse.Namespace) -> int:
    from virtwire.demo import run_demo

    return await run_demo(once=args.once, file=args.file or "")


# -- argument parsing ---------------------------------------------------------------
def _int_auto(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _add_allow_script(sp: argparse.ArgumentParser, who: str) -> None:
    sp.add_argument("--allow-script", action="append", default=[], metavar="NAME=PATH",
                    help=f"{who} may name script NAME (script=NAME, downscript=NAME) to run "
                         "PATH; over RPCs scripts are only such names (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="virtwire", description=__doc__, allow_abbrev=False)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", allow_abbrev=False, help="run one service")
    serve_sub = serve.add_subparsers(dest="kind", required=True)
    for kind, help_text in (("hub", "a hub (QEMU's -netdev hubport)"),
                            ("tap", "host-side backends: tap, stream, dgram"),
                            ("guestmem", "one guest's RAM: shared memory + DMA RPCs"),
                            ("e1000", "an emulated Intel e1000 NIC (QEMU's hw/net/e1000.c)"),
                            ("guest", "a guest's e1000 driver: send/receive, ping, TAP bridge"),
                            ("orchestrator", "runs LANs from topology files (virtwire up)")):
        sp = serve_sub.add_parser(kind, allow_abbrev=False, help=help_text)
        sp.add_argument("--listen", default="127.0.0.1:0",
                        help="gRPC address, HOST:PORT or unix:PATH (default 127.0.0.1:0)")
        sp.add_argument("--ready-file", help="write the bound address here once serving")
        sp.add_argument("--max-captures", type=int, default=16, metavar="N",
                        help="Capture streams one NetClient takes (default 16)")
        tls.add_arguments(sp, default_name=kind, server=True)
        if kind == "hub":
            sp.add_argument("--hub-id", type=int, default=0, help="QEMU's hubid (default 0)")
            sp.add_argument("--ports", type=int, default=0,
                            help="create N ports that wait to be dialled")
            sp.add_argument("--port", action="append", default=[], metavar="NAME[=PEER]",
                            help="create a named port; with =ADDR/NETCLIENT it dials that peer")
            sp.add_argument("--max-ports", type=int, default=256, metavar="N",
                            help="refuse AddPort and anonymous links beyond N ports "
                                 "(default 256)")
        elif kind == "e1000":
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
            sp.add_argument("--dma", choices=["auto", "rpc"], default="auto",
                            help="auto: shared memory when on the same host; rpc: always RPCs")
        elif kind == "guest":
            from virtwire.server.guest import add_arguments

            add_arguments(sp)
        elif kind == "guestmem":
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
        elif kind == "tap":
            sp.add_argument("--backend", action="append", default=[], metavar="SPEC",
                            help="e.g. stream,listen=127.0.0.1:5000 | stream,connect=unix:/s "
                                 "| tap,ifname=vw0,vnet_hdr=on | dgram,local=H:P,remote=H:P "
                                 "| dgram,mcast=230.0.0.1:1234")
            sp.add_argument("--peer", action="append", default=[], metavar="ADDR/NETCLIENT",
                            help="peer of the n-th --backend (empty NETCLIENT: a new hub port)")
            _add_allow_script(sp, "AddBackend")
        elif kind == "orchestrator":
            sp.add_argument("--topology", metavar="FILE",
                            help="read this topology file now: Up with an empty topology "
                                 "runs it (virtwire up --detach starts this)")
            _add_allow_script(sp, "a topology sent by Up, or StartService,")
            sp.add_argument("--allow-netns", action="store_true",
                            help="let a topology sent by Up, or StartService, move a bridged "
                                 "guest's TAP into a network namespace (bridge netns:)")

    def client(name: str, help_text: str, server_required: bool = True
               ) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, allow_abbrev=False, help=help_text)
        tls.add_arguments(sp, default_name=tls.DEFAULT_CLIENT_NAME)
        sp.add_argument("--server", "-s", required=server_required,
                        help="the service, HOST:PORT")
        sp.add_argument("--timeout", type=float, default=10.0, help="RPC timeout, seconds")
        return sp

    inj = client("inject", "deliver a frame to a NetClient as if from its peer: "
                 "-s SERVER NETCLIENT, or NODE[:PORT] of a running LAN", server_required=False)
    inj.add_argument("netclient", help="a NetClient of -s SERVER, or NODE / HUB:PORT")
    inj.add_argument("--lan", help="the LAN, when several run (without -s)")
    src = inj.add_mutually_exclusive_group(required=True)
    src.add_argument("--hex", help="the frame in hex")
    src.add_argument("--pcap", help="inject every frame of this pcap file")
    inj.add_argument("--repeat", type=int, default=1, help="inject each frame N times")

    cap = client("capture", "write a NetClient's frames to a pcap file: "
                 "-s SERVER NETCLIENT, or NODE[:PORT] of a running LAN", server_required=False)
    cap.add_argument("netclient", help="a NetClient of -s SERVER, or NODE / HUB:PORT")
    cap.add_argument("--lan", help="the LAN, when several run (without -s)")
    cap.add_argument("-w", "--write", required=True, help="pcap file ('-' for stdout)")
    cap.add_argument("--count", "-c", type=int, default=0, help="stop after N frames")
    cap.add_argument("--duration", type=float, default=0, help="stop after S seconds")
    cap.add_argument("--direction", choices=sorted(_DIRECTIONS), default="both")
    cap.add_argument("--ethertype", type=_int_auto, help="e.g. 0x0806")
    cap.add_argument("--mac", help="only frames from or to this MAC")
    cap.add_argument("--snaplen", type=int, default=0, help="truncate frames to N bytes")

    ls = client("list", "list a service's NetClients with their counters")
    ls.add_argument("--json", action="store_true", help="machine-readable output")

    link = client("link", "set a NetClient's link up or down (QMP set_link): "
                  "-s SERVER NETCLIENT, or NODE[:PORT] of a running LAN", server_required=False)
    link.add_argument("netclient", help="a NetClient of -s SERVER, or NODE / HUB:PORT")
    link.add_argument("--lan", help="the LAN, when several run (without -s)")
    link.add_argument("state", choices=["up", "down"])

    png = client("ping", "ICMP echo from a guest service's address through its e1000: "
                 "-s GUEST ADDRESS, or FROM_VM TO (a vm node or an address) of a running LAN",
                 server_required=False)
    png.add_argument("address", help="an IPv4 address on the guest's subnet (with -s), "
                                     "else the vm node to ping from")
    png.add_argument("to", nargs="?", help="without -s: a vm node or an IPv4 address")
    png.add_argument("--lan", help="the LAN, when several run (without -s)")
    png.add_argument("--count", "-c", type=int, default=3, help="echo requests (default 3)")
    png.add_argument("--interval", "-i", type=float, default=0.2,
                     help="seconds between requests (default 0.2)")
    png.add_argument("--wait", "-W", type=float, default=1.0,
                     help="seconds to wait for each reply (default 1)")
    png.add_argument("--size", type=int, default=56, help="ICMP payload bytes (default 56)")

    val = sub.add_parser("validate", allow_abbrev=False,
                         help="check a topology file (YAML) and show its plan")
    val.add_argument("file")
    val.add_argument("--json", action="store_true", help="print the resolved topology")

    rnd = sub.add_parser("render", allow_abbrev=False,
                         help="render a topology as a compose file or "
                         "Kubernetes manifests")
    rnd.add_argument("format", choices=["compose", "k8s"])
    rnd.add_argument("file")
    rnd.add_argument("-o", "--output", help="write here instead of stdout")
    rnd.add_argument("--subnet", default="",
                     help="compose: the network's subnet, inside 198.18.0.0/15 "
                          "(default 198.18.20.0/24)")
    rnd.add_argument("--certs-dir", metavar="DIR",
                     help="with tls: in the topology, where the services' certificates "
                          "are issued (default: OUTPUT-STEM-certs next to -o)")

    up = sub.add_parser("up", allow_abbrev=False, help="run a LAN from a topology file")
    up.add_argument("file")
    up.add_argument("--detach", "-d", action="store_true",
                    help="leave the LAN running in the background")
    up.add_argument("--backend", choices=["process", "docker"], default="process",
                    help="how this machine runs its services: local processes on "
                         "loopback (default) or a container each (image virtwire:VERSION, "
                         "'make image'); nodes with a host: run on that host")
    up.add_argument("--subnet", default="",
                    help="docker: the LAN network's subnet, inside 198.18.0.0/15 "
                         "(default: the highest free 198.19.N.0/24)")
    down = sub.add_parser("down", allow_abbrev=False, help="stop a running LAN")
    tls.add_arguments(down, default_name=tls.DEFAULT_CLIENT_NAME)
    down.add_argument("name", nargs="?", help="the LAN (default: the only one running)")
    status = sub.add_parser("status", allow_abbrev=False,
                            help="nodes, health, links and counters of a LAN")
    tls.add_arguments(status, default_name=tls.DEFAULT_CLIENT_NAME)
    status.add_argument("name", nargs="?", help="the LAN (default: the only one running)")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    from virtwire import certs_cli

    certs_cli.add_parser(sub)

    demo = sub.add_parser("demo", allow_abbrev=False,
                          help="bring up the default LAN on loopback (make run)")
    demo.add_argument("file", nargs="?", help="topology file (default examples/default.yaml)")
    demo.add_argument("--once", action="store_true", help="show traffic once and exit")
    return p


_COMMANDS = {"serve": cmd_serve, "inject": cmd_inject, "capture": cmd_capture,
             "list": cmd_list, "link": cmd_link, "ping": cmd_ping, "validate": cmd_validate,
             "render": cmd_render, "certs": cmd_certs,
             "demo": cmd_demo, "up": cmd_up, "down": cmd_down, "status": cmd_status}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name, least in (("repeat", 1), ("count", 0), ("snaplen", 0), ("ports", 0),
                        ("max_ports", 1), ("max_captures", 1)):
        if getattr(args, name, least) < least:
            parser.error(f"--{name.replace('_', '-')} must be at least {least}")
    setup_logging(args.verbose)
    try:
        # up takes the LAN's identity from its topology's tls: (orchestrator/pki.py).
        tls.configure(tls.config_from_args(args))
        return asyncio.run(_COMMANDS[args.command](args))
    except (ConfigError, FrameError) as exc:
        print(f"virtwire: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except VirtwireError as exc:
        print(f"virtwire: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except grpc.aio.AioRpcError as exc:
        server = getattr(args, "server", "") or "the LAN's orchestrator"
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            print(f"virtwire: error: cannot reach {server}: {exc.details()}", file=sys.stderr)
        else:
            print(f"virtwire: error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        # A name or argument the server refused is the caller's mistake.
        if exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                          grpc.StatusCode.OUT_OF_RANGE):
            return EXIT_USAGE
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
