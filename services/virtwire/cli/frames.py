"""`virtwire inject / capture / list / link / ping`: frames and links of one service.

Each verb talks to the NetClientService (or, for ping, the GuestService) of
``-s SERVER``; without ``-s``, inject, capture, link and ping name a node of a
running LAN and go through its orchestrator (``cli.lan``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO

import grpc

from virtwire import tls
from virtwire.address import parse_sockaddr
from virtwire.cli import lan
from virtwire.cli.exitcode import EXIT_ERROR, EXIT_OK
from virtwire.cli.format import (
    format_json,
    format_netclients,
    format_ping,
    link_up_down,
    target_name,
)
from virtwire.cli.userfile import user_file
from virtwire.errors import ConfigError, DeadlineError
from virtwire.net.eth import check_frame
from virtwire.net.pcap import PcapWriter, read_pcap
from virtwire.rpc.status import translated
from virtwire.v1 import (
    guest_pb2,
    guest_pb2_grpc,
    netclient_pb2,
    netclient_pb2_grpc,
    orchestrator_pb2,
)

_DIRECTIONS = {"rx": netclient_pb2.DIRECTION_RX, "tx": netclient_pb2.DIRECTION_TX,
               "both": netclient_pb2.DIRECTION_BOTH}


def channel(server: str) -> grpc.aio.Channel:
    """A channel to ``-s SERVER`` (HOST:PORT or unix:PATH), with this command's TLS."""
    addr = parse_sockaddr(server, allow_port_zero=False)
    return tls.aio_channel(addr.grpc_target)


def _parse_frame(args: argparse.Namespace) -> list[bytes]:
    if args.hex is not None:
        try:
            frames = [bytes.fromhex(args.hex.replace(":", "").replace(" ", ""))]
        except ValueError:
            raise ConfigError(f"--hex {args.hex!r} is not hexadecimal") from None
    else:
        with user_file(args.pcap, "read"):
            data = Path(args.pcap).read_bytes()
        try:
            frames = read_pcap(data)
        except (ValueError, IndexError) as exc:
            raise ConfigError(f"{args.pcap}: {exc}") from exc
    for frame in frames:
        check_frame(frame)  # FrameError, a ConfigError
    return frames


async def cmd_inject(args: argparse.Namespace) -> int:
    frames = _parse_frame(args)
    requests: list[Any]
    if args.server:
        ch = channel(args.server)
        rpc = netclient_pb2_grpc.NetClientServiceStub(ch).Inject
        requests = [netclient_pb2.InjectRequest(name=args.netclient, frame=frame,
                                                repeat=args.repeat) for frame in frames]
    else:
        # NODE[:PORT] of a running LAN, through its orchestrator.
        ch, orch = lan.orchestrator_stub(args.lan)
        rpc = orch.Inject
        requests = [orchestrator_pb2.OrchestratorServiceInjectRequest(
            target=args.netclient, frame=frame, repeat=args.repeat) for frame in frames]
    accepted = dropped = 0
    async with ch:
        for request in requests:
            got = await rpc(request, timeout=args.timeout)
            accepted += got.accepted
            dropped += got.dropped
    print(f"injected into {args.netclient}: {accepted} accepted, {dropped} dropped")
    return EXIT_OK if dropped == 0 else EXIT_ERROR


async def cmd_capture(args: argparse.Namespace) -> int:
    flt = netclient_pb2.CaptureFilter(
        direction=_DIRECTIONS[args.direction], ethertype=args.ethertype or 0,
        mac=args.mac or "")
    request = netclient_pb2.CaptureRequest(name=args.netclient, filter=flt, count=args.count,
                                           snaplen=args.snaplen)
    if args.write == "-":
        out: BinaryIO = sys.stdout.buffer
    else:
        with user_file(args.write, "write"):  # before anything is captured
            out = open(args.write, "wb")
    try:
        writer = PcapWriter(out)
        lost = 0
        try:
            with translated(target_name(args)):
                async for item in _capture_stream(args, request):
                    frame = item.frame[:args.snaplen] if args.snaplen else item.frame
                    writer.write(frame, item.timestamp_ns, item.orig_len)
                    lost = item.dropped
        except DeadlineError:
            pass  # --duration is over
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
        async with channel(args.server) as ch:
            stub = netclient_pb2_grpc.NetClientServiceStub(ch)
            async for item in stub.Capture(request, timeout=timeout):
                yield item
        return
    ch, orch = lan.orchestrator_stub(args.lan)
    async with ch:
        async for got in orch.Capture(orchestrator_pb2.OrchestratorServiceCaptureRequest(
                target=request.name, filter=request.filter, count=request.count),
                timeout=timeout):
            yield got.frame


async def cmd_list(args: argparse.Namespace) -> int:
    async with channel(args.server) as ch:
        stub = netclient_pb2_grpc.NetClientServiceStub(ch)
        resp = await stub.ListNetClients(netclient_pb2.ListNetClientsRequest(),
                                         timeout=args.timeout)
    if args.json:
        print(format_json(resp))
        return 0
    print(format_netclients(resp))
    return 0


async def cmd_link(args: argparse.Namespace) -> int:
    if not args.server:
        return await lan.cmd_link_node(args)
    async with channel(args.server) as ch:
        stub = netclient_pb2_grpc.NetClientServiceStub(ch)
        resp = await stub.SetLink(netclient_pb2.SetLinkRequest(
            name=args.netclient, up=args.state == "up"), timeout=args.timeout)
    print(f"{resp.netclient.name}: {link_up_down(resp.netclient)}")
    return 0


async def cmd_ping(args: argparse.Namespace) -> int:
    """`virtwire ping -s GUEST ADDRESS` (or FROM_VM TO of a LAN): 0 if any reply came."""
    if not args.server:
        if args.to is None:
            raise ConfigError("ping without -s takes FROM_VM TO")
        return await lan.cmd_ping_node(args)
    if args.to is not None:
        raise ConfigError("ping -s GUEST takes one ADDRESS")
    interval_ms = max(1, round(args.interval * 1000))
    timeout_ms = max(1, round(args.wait * 1000))
    request = guest_pb2.PingRequest(address=args.address, count=args.count,
                                    interval_ms=interval_ms, timeout_ms=timeout_ms,
                                    size=args.size)
    deadline = 10 + (args.count * (interval_ms + timeout_ms)) / 1000
    async with channel(args.server) as ch:
        resp = await guest_pb2_grpc.GuestServiceStub(ch).Ping(request, timeout=deadline)
    print(format_ping(args.address, f"guest {args.server}", resp))
    return EXIT_OK if resp.received else EXIT_ERROR


# -- arguments ------------------------------------------------------------------------
def _int_auto(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _ping_count(text: str) -> int:
    """ping's -c: 1 or more (0 is an error, as for ping(8), not "the default")."""
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"{count}: ping sends at least 1 echo request")
    return count


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def client(name: str, help_text: str, server_required: bool = True,
               description: str | None = None) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, allow_abbrev=False, help=help_text, description=description)
        tls.add_arguments(sp, default_name=tls.DEFAULT_CLIENT_NAME)
        sp.add_argument("--server", "-s", required=server_required,
                        help="the service, HOST:PORT")
        sp.add_argument("--timeout", type=float, default=10.0, help="RPC timeout, seconds")
        return sp

    def node_client(name: str, help_text: str) -> argparse.ArgumentParser:
        """A verb on -s SERVER's NETCLIENT, or on NODE[:PORT] of a running LAN."""
        sp = client(name, help_text, server_required=False, description=(
            f"{help_text[:1].upper()}{help_text[1:]}: NODE or HUB:PORT of a running LAN "
            "(through its orchestrator), or -s SERVER NETCLIENT (one service's)."))
        sp.add_argument("netclient", help="a NetClient of -s SERVER, or NODE / HUB:PORT")
        sp.add_argument("--lan", help="the LAN, when several run (without -s)")
        return sp

    inj = node_client("inject", "deliver frames to a NetClient as if from its peer")
    inj.set_defaults(verb=cmd_inject)
    src = inj.add_mutually_exclusive_group(required=True)
    src.add_argument("--hex", help="the frame in hex")
    src.add_argument("--pcap", help="inject every frame of this pcap file")
    inj.add_argument("--repeat", type=int, default=1, help="inject each frame N times")

    cap = node_client("capture", "write a NetClient's frames to a pcap file")
    cap.set_defaults(verb=cmd_capture)
    cap.add_argument("-w", "--write", required=True, help="pcap file ('-' for stdout)")
    cap.add_argument("--count", "-c", type=int, default=0, help="stop after N frames")
    cap.add_argument("--duration", type=float, default=0, help="stop after S seconds")
    cap.add_argument("--direction", choices=sorted(_DIRECTIONS), default="both")
    cap.add_argument("--ethertype", type=_int_auto, help="e.g. 0x0806")
    cap.add_argument("--mac", help="only frames from or to this MAC")
    cap.add_argument("--snaplen", type=int, default=0, help="truncate frames to N bytes")

    ls = client("list", "list a service's NetClients with their counters")
    ls.set_defaults(verb=cmd_list)
    ls.add_argument("--json", action="store_true", help="machine-readable output")

    link = node_client("link", "set a NetClient's link up or down (QMP set_link)")
    link.set_defaults(verb=cmd_link)
    link.add_argument("state", choices=["up", "down"])

    png = client("ping", "ICMP echo from a vm's guest through its e1000, with round trips",
                 server_required=False, description=(
                     "ICMP echo from a vm's guest through its e1000: FROM_VM TO of a running "
                     "LAN (TO a vm node or an IPv4 address), or -s GUEST ADDRESS (one guest "
                     "service's). Exit 0 if any reply came."))
    png.set_defaults(verb=cmd_ping)
    png.add_argument("address", help="an IPv4 address on the guest's subnet (with -s), "
                                     "else the vm node to ping from")
    png.add_argument("to", nargs="?", help="without -s: a vm node or an IPv4 address")
    png.add_argument("--lan", help="the LAN, when several run (without -s)")
    png.add_argument("--count", "-c", type=_ping_count, default=3,
                     help="echo requests, at least 1 (default 3)")
    png.add_argument("--interval", "-i", type=float, default=0.2,
                     help="seconds between requests (default 0.2)")
    png.add_argument("--wait", "-W", type=float, default=1.0,
                     help="seconds to wait for each reply (default 1)")
    png.add_argument("--size", type=int, default=56, help="ICMP payload bytes (default 56)")
