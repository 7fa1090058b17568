"""`virtwire replay TARGET -r FILE.pcap`: send a capture's frames again.

Each record is delivered to the NetClient as if from its peer (the Inject
RPC of its service, or of the LAN's orchestrator for NODE / HUB:PORT;
TARGET resolves as for ``expect``), at the file's own spacing divided by
``--speed``, or back to back with ``--speed max`` (then runs of one frame go
as one Inject with ``repeat``). The file is read record by record
(virtwire.net.pcap.iter_pcap): pcap in either byte order, micro- or
nanosecond timestamps, Ethernet. Records that no NetClient can carry (empty,
over NET_BUFSIZE) are skipped and counted; frames the NetClient dropped are
counted as refused, and make the exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import BinaryIO

from virtwire import tls
from virtwire.cli.exitcode import EXIT_ERROR, EXIT_OK
from virtwire.cli.expect import Target
from virtwire.cli.userfile import user_file
from virtwire.errors import ConfigError
from virtwire.net.eth import NET_BUFSIZE, FrameError, check_frame
from virtwire.net.pcap import iter_pcap
from virtwire.rpc.status import translated
from virtwire.v1 import netclient_pb2, orchestrator_pb2, orchestrator_pb2_grpc

RPC_TIMEOUT_S = 10.0
#: The fastest and slowest --speed taken.
MAX_SPEED = 1000.0
MIN_SPEED = 0.001
#: Identical frames sent as one Inject (the service's repeat cap is 100000).
MAX_REPEAT = 10_000

#: (frame, repeat) -> (accepted, dropped).
Injector = Callable[[bytes, int], Awaitable[tuple[int, int]]]


def _injector(target: Target) -> Injector:
    if target.lan:
        orch = orchestrator_pb2_grpc.OrchestratorServiceStub(target.channel)

        async def lan_inject(frame: bytes, repeat: int) -> tuple[int, int]:
            got = await orch.Inject(orchestrator_pb2.OrchestratorServiceInjectRequest(
                target=target.netclient, frame=frame, repeat=repeat), timeout=RPC_TIMEOUT_S)
            return got.accepted, got.dropped
        return lan_inject
    stub = target.netclient_stub()

    async def service_inject(frame: bytes, repeat: int) -> tuple[int, int]:
        got = await stub.Inject(netclient_pb2.InjectRequest(
            name=target.netclient, frame=frame, repeat=repeat), timeout=RPC_TIMEOUT_S)
        return got.accepted, got.dropped
    return service_inject


class Replay:
    """One replay's progress and counters."""

    def __init__(self, inject: Injector, speed: float | None, count: int) -> None:
        self.inject = inject
        #: None: as fast as possible.
        self.speed = speed
        self.count = count
        self.sent = self.accepted = self.refused = self.skipped = self.truncated = 0
        #: The most a frame went out after its time (seconds), at a finite speed.
        self.late = 0.0
        self.elapsed = 0.0
        self._pending: tuple[bytes, int] | None = None

    async def _flush(self) -> None:
        if self._pending is None:
            return
        frame, repeat = self._pending
        self._pending = None
        accepted, dropped = await self.inject(frame, repeat)
        self.sent += repeat
        self.accepted += accepted
        self.refused += dropped

    async def run(self, stream: BinaryIO) -> None:
        start = time.monotonic()
        first_ts: int | None = None
        taken = 0
        try:
            for record in iter_pcap(stream):
                if self.count and taken >= self.count:
                    break
                taken += 1
                try:
                    check_frame(record.frame)
                except FrameError:
                    self.skipped += 1
                    continue
                if len(record.frame) < record.orig_len:
                    self.truncated += 1
                if self.speed is None:
                    await self._batch(record.frame)
                    continue
                if first_ts is None:
                    first_ts = record.timestamp_ns
                due = start + max(0, record.timestamp_ns - first_ts) / 1e9 / self.speed
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    self.late = max(self.late, -delay)
                self._pending = (record.frame, 1)
                await self._flush()
            await self._flush()
        finally:
            self.elapsed = time.monotonic() - start

    async def _batch(self, frame: bytes) -> None:
        """As fast as possible: a run of one frame goes as one Inject with repeat."""
        if self._pending is not None:
            if self._pending[0] == frame and self._pending[1] < MAX_REPEAT:
                self._pending = (frame, self._pending[1] + 1)
                return
            await self._flush()
        self._pending = (frame, 1)

    def summary(self, path: str, target: str) -> str:
        pace = ("as fast as possible" if self.speed is None
                else f"at speed {self.speed:g}, at most {self.late * 1000:.1f} ms late")
        extra = ""
        if self.skipped:
            extra += f", {self.skipped} skipped (empty or over {NET_BUFSIZE} bytes)"
        if self.truncated:
            extra += f", {self.truncated} cut short in the file (sent as captured)"
        return (f"replayed {path} into {target}: {self.sent} frames sent, {self.accepted} "
                f"accepted, {self.refused} refused{extra}, in {self.elapsed:.3f} s ({pace})")


async def cmd_replay(args: argparse.Namespace) -> int:
    with user_file(args.read, "read"):
        stream = open(args.read, "rb")  # closed below
    with stream:
        target = Target.resolve(args, args.target)
        replay = Replay(_injector(target), args.speed, args.count)
        try:
            async with target.channel:
                with translated(target.where):
                    await replay.run(stream)
        except ValueError as exc:
            print(replay.summary(args.read, args.target))
            raise ConfigError(f"{args.read}: {exc}") from exc
    print(replay.summary(args.read, args.target))
    return EXIT_OK if replay.refused == 0 else EXIT_ERROR


def _speed(text: str) -> float | None:
    if text.lower() == "max":
        return None
    try:
        speed = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or 'max'") from None
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise argparse.ArgumentTypeError(
            f"{text}: a speed is {MIN_SPEED:g} to {MAX_SPEED:g} (or 'max')")
    return speed


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sp = sub.add_parser(
        "replay", allow_abbrev=False,
        help="send a pcap file's frames to a NetClient at their original spacing",
        description=(
            "Send a pcap file's frames to a NetClient as if from its peer: NODE or "
            "HUB:PORT of a running LAN (through its orchestrator), NETCLIENT of -s SERVER, "
            "or ADDRESS/NETCLIENT of one service. Frames keep the file's spacing divided "
            "by --speed, or go back to back with --speed max. Exit 1 if the NetClient "
            "refused any."))
    tls.add_arguments(sp, default_name=tls.DEFAULT_CLIENT_NAME)
    sp.set_defaults(verb=cmd_replay)
    sp.add_argument("target", metavar="TARGET",
                    help="NODE, HUB:PORT, ADDRESS/NETCLIENT, or a NetClient of -s SERVER")
    sp.add_argument("-r", "--read", required=True, metavar="FILE.pcap",
                    help="the pcap file (pcapng: convert with editcap -F pcap)")
    sp.add_argument("--speed", type=_speed, default=1.0,
                    help=f"a factor on the file's pace ({MIN_SPEED:g} to {MAX_SPEED:g}), "
                         "or 'max' (default 1)")
    sp.add_argument("--count", "-c", type=int, default=0,
                    help="replay the first N records (default all)")
    sp.add_argument("--server", "-s", help="the service, HOST:PORT")
    sp.add_argument("--lan", help="the LAN, when several run (NODE targets)")
