"""`virtwire fdb NODE`: a switch's MAC table (forwarding database), as `bridge fdb show`.

Without ``-s`` NODE is a switch node of a running LAN and the call goes through
its orchestrator (which forwards SwitchService to the switch); with ``-s
ADDR`` it goes to that switch service directly (NODE: its name, or left out).
``--flush`` forgets entries (all, or ``--port``'s / ``--vlan``'s); ``--ports``
lists the ports with their VLANs and counters; ``--set PORT=VLANS`` changes a
port's VLANs (``10``, or ``trunk=10,20[,native=1]``).
"""

from __future__ import annotations

import argparse

import grpc

from virtwire import tls
from virtwire.address import parse_sockaddr
from virtwire.cli import lan
from virtwire.cli.exitcode import EXIT_OK
from virtwire.cli.format import LAN_ORCHESTRATOR, format_json, format_table
from virtwire.errors import ConfigError
from virtwire.net.switch import PortVlans
from virtwire.rpc.status import translated
from virtwire.server.switch import vlans_message
from virtwire.v1 import switch_pb2, switch_pb2_grpc

RPC_TIMEOUT_S = 10.0


def _channel(args: argparse.Namespace) -> tuple[grpc.aio.Channel, str]:
    if args.server:
        addr = parse_sockaddr(args.server, allow_port_zero=False)
        return tls.aio_channel(addr.grpc_target), args.server
    if not args.node:
        raise ConfigError("name the switch node (or give -s ADDR of a switch service)")
    ch, _ = lan.orchestrator_stub(args.lan)
    return ch, LAN_ORCHESTRATOR


def format_vlans(v: switch_pb2.SwitchPortVlans) -> str:
    if not v.trunk:
        return str(v.vlan)
    text = "trunk " + ",".join(str(x) for x in v.allowed)
    return text + (f" native {v.native}" if v.native else "")


def format_fdb(resp: switch_pb2.ListMacTableResponse) -> str:
    rows = [("MAC", "VLAN", "PORT", "AGE")]
    rows += [(e.mac, str(e.vlan), e.port, f"{e.age_seconds:.0f}s") for e in resp.entries]
    table = format_table(rows) if resp.entries else "(no entries)"
    return (f"{table}\n{len(resp.entries)} shown, {resp.size} in the table (at most "
            f"{resp.max_entries}; {resp.entries_refused} new MACs refused when full); "
            f"aging {resp.aging_seconds:g}s")


def format_ports(resp: switch_pb2.ListSwitchPortsResponse) -> str:
    rows = [("PORT", "VLANS", "PEER", "RX", "TX", "FLOODED", "UNICAST", "FILTERED (vlan, "
             "same port, malformed, mirror)", "LEARNED", "FDB REFUSED")]
    for p in resp.ports:
        c = p.counters
        filtered = (c.filtered_vlan + c.filtered_same_port + c.filtered_malformed
                    + c.filtered_mirror)
        rows.append((
            p.port.name, "mirror" if p.mirror else format_vlans(p.vlans), p.port.peer or "-",
            str(p.port.counters.rx_frames), str(p.port.counters.tx_frames), str(c.flooded),
            str(c.forwarded_unicast),
            f"{filtered} ({c.filtered_vlan}, {c.filtered_same_port}, {c.filtered_malformed}, "
            f"{c.filtered_mirror})", str(c.learned), str(c.fdb_refused)))
    return format_table(rows)


async def cmd_fdb(args: argparse.Namespace) -> int:
    node = args.node or ""
    ch, where = _channel(args)
    async with ch:
        stub = switch_pb2_grpc.SwitchServiceStub(ch)
        with translated(where):
            if args.set:
                port, sep, text = args.set.partition("=")
                if not port or not sep:
                    raise ConfigError(f"bad --set {args.set!r}: expected PORT=VLAN or "
                                      "PORT=trunk=VLAN,...[,native=VLAN]")
                got = await stub.SetPortVlans(switch_pb2.SetPortVlansRequest(
                    node=node, port=port, vlans=vlans_message(PortVlans.parse(text))),
                    timeout=args.timeout)
                print(format_json(got) if args.json else
                      f"{port}: vlans {format_vlans(got.port.vlans)} (its MACs flushed)")
                return EXIT_OK
            if args.flush:
                flushed = await stub.FlushMacTable(switch_pb2.FlushMacTableRequest(
                    node=node, port=args.port or "", vlan=args.vlan or 0),
                    timeout=args.timeout)
                print(format_json(flushed) if args.json
                      else f"flushed {flushed.flushed} entries")
                return EXIT_OK
            if args.ports:
                ports = await stub.ListSwitchPorts(
                    switch_pb2.ListSwitchPortsRequest(node=node), timeout=args.timeout)
                print(format_json(ports) if args.json else format_ports(ports))
                return EXIT_OK
            table = await stub.ListMacTable(switch_pb2.ListMacTableRequest(
                node=node, port=args.port or "", vlan=args.vlan or 0), timeout=args.timeout)
            print(format_json(table) if args.json else format_fdb(table))
    return EXIT_OK


def _vlan(text: str) -> int:
    try:
        vid = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a VLAN id: {text!r}") from None
    if not 1 <= vid <= 4094:
        raise argparse.ArgumentTypeError(f"VLAN {vid}: a VLAN id is 1 to 4094")
    return vid


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sp = sub.add_parser(
        "fdb", allow_abbrev=False, help="a switch's MAC table: list, flush, port VLANs",
        description="The MAC table (forwarding database) of switch NODE: MAC, VLAN, port "
        "and age of each learned address, as 'bridge fdb show'. --flush forgets entries, "
        "--ports lists the ports with their VLANs and counters, --set changes a port's "
        "VLANs.")
    tls.add_arguments(sp, default_name=tls.DEFAULT_CLIENT_NAME)
    sp.add_argument("node", nargs="?", metavar="NODE",
                    help="a switch node of a running LAN (with -s: the switch's name, or "
                         "nothing)")
    sp.add_argument("--server", "-s", help="a switch service, HOST:PORT")
    sp.add_argument("--lan", help="the LAN, when several run")
    sp.add_argument("--timeout", type=float, default=RPC_TIMEOUT_S,
                    help="RPC timeout, seconds")
    mode = sp.add_mutually_exclusive_group()
    mode.add_argument("--flush", action="store_true",
                      help="forget the entries (all, or those of --port and/or --vlan)")
    mode.add_argument("--ports", action="store_true",
                      help="the ports: VLANs, peers and switch counters")
    mode.add_argument("--set", metavar="PORT=VLANS",
                      help="change a port's VLANs: PORT=10 or PORT=trunk=10,20[,native=1]")
    sp.add_argument("--port", help="only this port's entries")
    sp.add_argument("--vlan", type=_vlan, help="only this VLAN's entries")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(verb=cmd_fdb)
