"""`virtwire expect TARGET --match EXPR`: the LAN as a test oracle.

Exit 0 when the expectation is met, 1 when it is not (other codes, as for
every verb, for errors: 2 for a bad match, timeout or name). By default it
waits for one matching frame (NetClientService.WaitForFrame); ``--none``
expects none for the whole timeout (ExpectNoFrame); ``--count N`` expects at
least N (CountFrames, returning once N came), exactly N with ``--exact``
(counting for the whole timeout). The match language is docs/match.md.

TARGET is what the other verbs take (``Target``): NETCLIENT of ``-s SERVER``
or ADDRESS/NETCLIENT of one service, whose server runs the assertion; or
NODE / HUB:PORT of a running LAN, watched through its orchestrator's Capture
stream and matched here (the same matcher, virtwire.net.assertion).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from virtwire import tls
from virtwire.address import parse_peer, parse_sockaddr
from virtwire.cli import lan
from virtwire.cli.exitcode import EXIT_ERROR, EXIT_OK
from virtwire.cli.format import LAN_ORCHESTRATOR
from virtwire.errors import ConfigError, DeadlineError, UnavailableError
from virtwire.net.assertion import check_wait, count_frames, expect_no_frame, wait_for_frame
from virtwire.net.capture import CapturedFrame
from virtwire.net.match import FrameMatch, describe, parse_match
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


class _StreamSource:
    """Matching frames of a LAN node: its orchestrator's Capture stream, matched
    here. ``dropped`` stays 0 (the stream's losses are of unmatched frames too,
    so they are reported apart, as ``capture_lost``)."""

    dropped = 0

    def __init__(self, target: Target, match: FrameMatch,
                 direction: netclient_pb2.Direction) -> None:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(target.channel)
        self.call: Any = stub.Capture(orchestrator_pb2.OrchestratorServiceCaptureRequest(
            target=target.netclient, filter=netclient_pb2.CaptureFilter(direction=direction)))
        self.frames: AsyncIterator[orchestrator_pb2.OrchestratorServiceCaptureResponse] = (
            self.call.__aiter__())
        self.match = match
        self.capture_lost = 0

    async def get(self) -> CapturedFrame:
        while True:
            try:
                got = (await self.frames.__anext__()).frame
            except StopAsyncIteration:
                raise UnavailableError("the orchestrator ended the capture stream") from None
            self.capture_lost = got.dropped
            if self.match.matches(got.frame):
                word = "rx" if got.direction == netclient_pb2.DIRECTION_RX else "tx"
                return CapturedFrame(word, got.frame, got.timestamp_ns)

    def close(self) -> None:
        self.call.cancel()


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


def _frame_words(frame: CapturedFrame | netclient_pb2.MatchedFrame) -> str:
    if isinstance(frame, CapturedFrame):
        direction = frame.direction
    else:
        direction = "rx" if frame.direction == netclient_pb2.DIRECTION_RX else "tx"
    return f"{direction}, {describe(frame.frame)}"


async def cmd_expect(args: argparse.Namespace) -> int:
    match = parse_match(args.match)  # a bad one is refused before any call
    wait = check_wait(args.timeout, "--timeout")
    if args.exact and args.at_least is None:
        raise ConfigError("--exact goes with --count N")
    target = Target.resolve(args, args.target)
    what = f"{args.target}: {'no ' if args.none else ''}frame matching {match}"
    async with target.channel:
        with translated(target.where):
            if target.lan:
                return await _expect_lan(args, target, match, wait, what)
            return await _expect_service(args, target, wait, what)


async def _expect_service(args: argparse.Namespace, target: Target, wait: float,
                          what: str) -> int:
    stub = target.netclient_stub()
    direction = DIRECTIONS[args.direction]
    ms = max(1, round(wait * 1000))  # check_wait: 0 < wait <= 1 h
    deadline = wait + RPC_MARGIN_S
    start = time.monotonic()
    if args.none:
        got = await stub.ExpectNoFrame(netclient_pb2.ExpectNoFrameRequest(
            name=target.netclient, match=args.match, direction=direction, duration_ms=ms),
            timeout=deadline)
        if got.seen:
            print(f"not met: {what}: one seen after {time.monotonic() - start:.3f} s "
                  f"({_frame_words(got.frame)})")
            return EXIT_ERROR
        print(f"met: {what} in {wait:g} s")
        return EXIT_OK
    if args.at_least is not None:
        counted = await stub.CountFrames(netclient_pb2.CountFramesRequest(
            name=target.netclient, match=args.match, direction=direction, duration_ms=ms,
            at_least=0 if args.exact else args.at_least), timeout=deadline)
        return _count_verdict(args, what, counted.count, counted.lost,
                              counted.elapsed_ms / 1000)
    try:
        found = await stub.WaitForFrame(netclient_pb2.WaitForFrameRequest(
            name=target.netclient, match=args.match, direction=direction, timeout_ms=ms),
            timeout=deadline)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
        if time.monotonic() - start >= deadline:
            raise DeadlineError(f"{target.where} did not answer within {deadline:g} s") from exc
        print(f"not met: {what}: none within {wait:g} s")
        return EXIT_ERROR
    print(f"met: {what}: seen after {time.monotonic() - start:.3f} s "
          f"({_frame_words(found.frame)})")
    return EXIT_OK


async def _expect_lan(args: argparse.Namespace, target: Target, match: FrameMatch,
                      wait: float, what: str) -> int:
    source = _StreamSource(target, match, DIRECTIONS[args.direction])
    start = time.monotonic()
    try:
        if args.none:
            seen = await expect_no_frame(source, wait)
            if seen is not None:
                print(f"not met: {what}: one seen after {time.monotonic() - start:.3f} s "
                      f"({_frame_words(seen)})")
                return EXIT_ERROR
            print(f"met: {what} in {wait:g} s" + _lost_words(source))
            return EXIT_OK
        if args.at_least is not None:
            counted = await count_frames(source, wait, 0 if args.exact else args.at_least)
            return _count_verdict(args, what, counted.count, 0, counted.elapsed_s,
                                  _lost_words(source))
        found = await wait_for_frame(source, wait)
    finally:
        source.close()
    if found is None:
        print(f"not met: {what}: none within {wait:g} s" + _lost_words(source))
        return EXIT_ERROR
    print(f"met: {what}: seen after {time.monotonic() - start:.3f} s ({_frame_words(found)})")
    return EXIT_OK


def _lost_words(source: _StreamSource) -> str:
    if not source.capture_lost:
        return ""
    return (f" ({source.capture_lost} frames lost: the capture stream fell behind, "
            "so the answer may be wrong)")


def _count_verdict(args: argparse.Namespace, what: str, count: int, lost: int,
                   elapsed: float, note: str = "") -> int:
    wanted = f"exactly {args.at_least}" if args.exact else f"at least {args.at_least}"
    met = count == args.at_least if args.exact else count >= args.at_least
    lost_words = f", {lost} of them not kept (the watch fell behind)" if lost else ""
    print(f"{'met' if met else 'not met'}: {what}: {count} in {elapsed:.3f} s, "
          f"wanted {wanted}{lost_words}{note}")
    return EXIT_OK if met else EXIT_ERROR


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
