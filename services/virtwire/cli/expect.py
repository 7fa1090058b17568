"""`virtwire expect TARGET --match EXPR`: the LAN as a test oracle.

Exit 0 when the expectation is met, 1 when it is not (other codes, as for
every verb, for errors: 2 for a bad match, timeout or name). By default it
waits for one matching frame (NetClientService.WaitForFrame); ``--none``
expects none for the whole timeout (ExpectNoFrame); ``--count N`` expects at
least N (CountFrames, returning once N came), exactly N with ``--exact``
(counting for the whole timeout). The match language is docs/match.md.

TARGET is what the other verbs take (``Target``): NETCLIENT of ``-s SERVER``
or ADDRESS/NETCLIENT of one service, whose server runs the assertion; or
NODE / HUB:PORT of a running LAN, whose orchestrator serves the same three
RPCs (OrchestratorService.WaitForFrame...) and forwards them to the service
hosting the node, with this side's deadline. Either way the match runs
where the frames are, and this side only prints the answer.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from typing import Any

import grpc

from virtwire import tls
from virtwire.address import parse_peer, parse_sockaddr
from virtwire.cli import lan
from virtwire.cli.exitcode import EXIT_ERROR, EXIT_OK
from virtwire.cli.format import LAN_ORCHESTRATOR
from virtwire.errors import ConfigError, DeadlineError
from virtwire.net.assertion import check_wait
from virtwire.net.match import describe, parse_match
from virtwire.net.units import parse_duration
from virtwire.rpc.status import translated
from virtwire.v1 import (
    netclient_pb2,
    netclient_pb2_grpc,
    orchestrator_pb2,
    orchestrator_pb2_grpc,
)

#: Seconds an RPC may take beyond the wait it asks for before this side gives up.
RPC_MARGIN_S = 10.0

DIRECTIONS: dict[str, netclient_pb2.Direction] = {
    "rx": netclient_pb2.DIRECTION_RX, "tx": netclient_pb2.DIRECTION_TX,
    "both": netclient_pb2.DIRECTION_BOTH}


@dataclass
class Target:
    """Where a TARGET lives: a service's NetClientService (``netclient`` its
    name there) or, with ``lan`` set, a node of a LAN behind its orchestrator."""

    channel: grpc.aio.Channel
    #: The NetClient name to send: the service's, or the LAN node (NODE, HUB:PORT).
    netclient: str
    #: Who answers, as messages name it.
    where: str
    lan: bool = False

    @classmethod
    def resolve(cls, args: argparse.Namespace, target: str) -> Target:
        """``target`` of ``-s SERVER``, ADDRESS/NETCLIENT, or NODE[:PORT] of a LAN."""
        if args.server:
            addr = parse_sockaddr(args.server, allow_port_zero=False)
            return cls(tls.aio_channel(addr.grpc_target), target, args.server)
        if "/" in target:
            if getattr(args, "lan", None):
                raise ConfigError(f"{target} names a service: --lan is for NODE targets")
            spec = parse_peer(target)
            if not spec.netclient:
                raise ConfigError(f"{target}: name the NetClient, ADDRESS/NETCLIENT")
            return cls(tls.aio_channel(spec.addr.grpc_target), spec.netclient, str(spec.addr))
        ch, _ = lan.orchestrator_stub(getattr(args, "lan", None))
        return cls(ch, target, LAN_ORCHESTRATOR, lan=True)

    def netclient_stub(self) -> netclient_pb2_grpc.NetClientServiceStub:
        return netclient_pb2_grpc.NetClientServiceStub(self.channel)


def _seconds(text: str) -> float:
    """``2s``, ``500ms``, or a number of seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return parse_duration(text, "--timeout")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _direction_word(direction: int) -> str:
    return "rx" if direction == netclient_pb2.DIRECTION_RX else "tx"


def _frame_words(frame: netclient_pb2.MatchedFrame) -> str:
    return f"{_direction_word(frame.direction)}, {describe(frame.frame)}"


@dataclass
class Outcome:
    """What an expectation found: printed as a line, or with ``--json`` as the
    object docs/cli-json.md describes."""

    target: str
    #: The expression as parsed (its canonical text).
    match: str
    #: "frame" (WaitForFrame), "none" (ExpectNoFrame) or "count" (CountFrames).
    mode: str
    met: bool
    #: Seconds from the call to its answer, as this side measured them.
    elapsed_s: float
    #: The timeout or duration asked for, in seconds.
    timeout_s: float
    #: The frame matched (mode frame), or the one seen (mode none, not met).
    frame: netclient_pb2.MatchedFrame | None = None
    #: Mode count: frames counted, of them those not kept, and what was wanted.
    count: int | None = None
    lost: int | None = None
    at_least: int | None = None
    exact: bool = False

    def text(self) -> str:
        what = f"{self.target}: {'no ' if self.mode == 'none' else ''}frame matching {self.match}"
        verdict = "met" if self.met else "not met"
        if self.mode == "count":
            wanted = f"exactly {self.at_least}" if self.exact else f"at least {self.at_least}"
            lost_words = (f", {self.lost} of them not kept (the watch fell behind)"
                          if self.lost else "")
            return (f"{verdict}: {what}: {self.count} in {self.elapsed_s:.3f} s, "
                    f"wanted {wanted}{lost_words}")
        if self.frame is not None:
            seen = "one seen" if self.mode == "none" else "seen"
            return (f"{verdict}: {what}: {seen} after {self.elapsed_s:.3f} s "
                    f"({_frame_words(self.frame)})")
        if self.mode == "none":
            return f"{verdict}: {what} in {self.timeout_s:g} s"
        return f"{verdict}: {what}: none within {self.timeout_s:g} s"

    def to_dict(self) -> dict[str, Any]:
        frame = None
        if self.frame is not None:
            frame = {"direction": _direction_word(self.frame.direction),
                     "timestamp_ns": int(self.frame.timestamp_ns),
                     "length": len(self.frame.frame), "summary": describe(self.frame.frame),
                     "hex": self.frame.frame.hex()}
        return {"target": self.target, "match": self.match, "mode": self.mode,
                "met": self.met, "elapsed_s": round(self.elapsed_s, 6),
                "timeout_s": self.timeout_s, "frame": frame, "count": self.count,
                "lost": self.lost, "at_least": self.at_least, "exact": self.exact}


async def cmd_expect(args: argparse.Namespace) -> int:
    match = parse_match(args.match)  # a bad one is refused before any call
    wait = check_wait(args.timeout, "--timeout")
    if args.exact and args.at_least is None:
        raise ConfigError("--exact goes with --count N")
    target = Target.resolve(args, args.target)
    async with target.channel:
        with translated(target.where):
            outcome = await _expect(args, target, str(match), wait)
    print(json.dumps(outcome.to_dict(), indent=2) if args.json else outcome.text())
    return EXIT_OK if outcome.met else EXIT_ERROR


async def _call(target: Target, method: str, deadline: float, **fields: Any) -> Any:
    """``method`` (WaitForFrame, ExpectNoFrame, CountFrames) of the target's
    server: NetClientService's of a service, or OrchestratorService's for a LAN
    node (the orchestrator forwards it to the node's service)."""
    if target.lan:
        orch = orchestrator_pb2_grpc.OrchestratorServiceStub(target.channel)
        request: Any = getattr(orchestrator_pb2, f"OrchestratorService{method}Request")(
            target=target.netclient, **fields)
        return await getattr(orch, method)(request, timeout=deadline)
    request = getattr(netclient_pb2, f"{method}Request")(name=target.netclient, **fields)
    return await getattr(target.netclient_stub(), method)(request, timeout=deadline)


async def _expect(args: argparse.Namespace, target: Target, match: str,
                  wait: float) -> Outcome:
    direction = DIRECTIONS[args.direction]
    ms = max(1, round(wait * 1000))  # check_wait: 0 < wait <= 1 h
    deadline = wait + RPC_MARGIN_S
    start = time.monotonic()

    def outcome(mode: str, met: bool, **more: Any) -> Outcome:
        return Outcome(args.target, match, mode, met, time.monotonic() - start, wait, **more)

    if args.none:
        got = await _call(target, "ExpectNoFrame", deadline, match=args.match,
                          direction=direction, duration_ms=ms)
        return outcome("none", not got.seen, frame=got.frame if got.seen else None)
    if args.at_least is not None:
        counted = await _call(target, "CountFrames", deadline, match=args.match,
                              direction=direction, duration_ms=ms,
                              at_least=0 if args.exact else args.at_least)
        met = (counted.count == args.at_least if args.exact
               else counted.count >= args.at_least)
        result = outcome("count", met, count=int(counted.count), lost=int(counted.lost),
                         at_least=args.at_least, exact=args.exact)
        result.elapsed_s = counted.elapsed_ms / 1000  # the service's: how long it counted
        return result
    try:
        found = await _call(target, "WaitForFrame", deadline, match=args.match,
                            direction=direction, timeout_ms=ms)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
        if time.monotonic() - start >= deadline:
            raise DeadlineError(f"{target.where} did not answer within {deadline:g} s") from exc
        return outcome("frame", False)
    return outcome("frame", True, frame=found.frame)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value}: a count is 0 or more")
    return value


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sp = sub.add_parser(
        "expect", allow_abbrev=False,
        help="wait for a frame matching an expression (or expect none); exit 0 if met, 1 if not",
        description=(
            "Watch a NetClient for frames matching an expression: NODE or HUB:PORT of a "
            "running LAN (through its orchestrator), NETCLIENT of -s SERVER, or "
            "ADDRESS/NETCLIENT of one service. Exit 0 when the expectation is met, 1 "
            "when not, 2 for a bad match, timeout or name.\n\n"
            "EXPR is FIELD=VALUE terms joined by ',' (all must hold), FIELD!=VALUE, "
            "VALUE|VALUE alternatives, or pcap:FILTER (tcpdump's language). Fields: "
            "ethertype, eth.src, eth.dst, eth.addr, vlan, ip.src, ip.dst, ip.addr, "
            "ip.proto, ip6.*, tcp.sport/dport/port, udp.*, l4.*, len, bytes@OFFSET=HEX[/MASK]; "
            "see docs/match.md."))
    tls.add_arguments(sp, default_name=tls.DEFAULT_CLIENT_NAME)
    sp.set_defaults(verb=cmd_expect)
    sp.add_argument("target", metavar="TARGET",
                    help="NODE, HUB:PORT, ADDRESS/NETCLIENT, or a NetClient of -s SERVER")
    sp.add_argument("--server", "-s", help="the service, HOST:PORT")
    sp.add_argument("--lan", help="the LAN, when several run (NODE targets)")
    sp.add_argument("--match", "-m", required=True, metavar="EXPR",
                    help="e.g. 'ip.src=198.18.0.1,ip.proto=icmp' or 'pcap:arp'")
    sp.add_argument("--timeout", "-t", type=_seconds, default=5.0,
                    help="how long to wait (or watch, with --none/--count): 2s, 500ms, or "
                         "seconds; at most 1h (default 5s)")
    sp.add_argument("--direction", choices=sorted(DIRECTIONS), default="both",
                    help="frames the NetClient receives (rx), sends (tx), or both")
    how = sp.add_mutually_exclusive_group()
    how.add_argument("--none", action="store_true",
                     help="expect no matching frame for the whole timeout")
    how.add_argument("--count", "-c", type=_count, metavar="N", dest="at_least",
                     help="expect at least N matching frames within the timeout")
    sp.add_argument("--exact", action="store_true",
                    help="with --count: exactly N, counted over the whole timeout")
    sp.add_argument("--json", action="store_true",
                    help="print the result as JSON (docs/cli-json.md); same exit codes")
