"""`virtwire top [LAN]`: a live table of each NetClient's rates, refreshed.

Every ``--interval`` seconds it asks the LAN's orchestrator for GetStatus
(what `status --json` prints), and shows per NetClient the frames/s, Mbit/s
(rx and tx) and drops/s since the previous answer (``cli.rates``) and its link
state, the busiest first. On a terminal the table is redrawn in place
(``rich.live``) until ``q`` or Ctrl-C (exit 0; the terminal's mode is put
back); the keys are read without blocking the refresh, and only from a tty.
``--count N`` prints N tables one after another and ends (``--once``: one),
for scripts and tests; stdout that is not a terminal gets that too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import termios
import time
import tty
from collections.abc import Iterator

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from virtwire import tls
from virtwire.cli.exitcode import EXIT_OK
from virtwire.cli.format import LINK_UP
from virtwire.cli.lan import RPC_TIMEOUT_S, lan_name, orchestrator_stub
from virtwire.cli.rates import Rate, Sample, rates, sample_of
from virtwire.errors import ConfigError
from virtwire.v1 import orchestrator_pb2, orchestrator_pb2_grpc

#: Shortest refresh interval accepted (each refresh is one GetStatus).
MIN_INTERVAL_S = 0.1
QUIT_KEYS = frozenset("qQ")
#: The table's width when stdout is not a terminal.
TEXT_WIDTH = 160


async def take_sample(stub: orchestrator_pb2_grpc.OrchestratorServiceStub) -> Sample:
    """One GetStatus of the LAN, as a Sample (its counters by node and NetClient)."""
    resp = await stub.GetStatus(orchestrator_pb2.OrchestratorServiceGetStatusRequest(),
                                timeout=RPC_TIMEOUT_S)
    return sample_of(resp, time.monotonic())


def sorted_rows(before: Sample, after: Sample) -> list[tuple[tuple[str, str], Rate]]:
    """Each NetClient of ``after`` with its rate, the busiest (frames/s) first."""
    moved = rates(before, after)
    return sorted(moved.items(), key=lambda kv: (-kv[1].fps, -kv[1].drops_ps, kv[0]))


def _clock() -> str:
    return time.strftime("%H:%M:%S")


def _num(value: float, digits: int) -> str:
    return f"{value:.{digits}f}" if value else "0"


def build_table(name: str, before: Sample, after: Sample, *, live: bool = False,
                clock: str = "") -> Table:
    """The table for the interval between two samples, taken at wall-clock time
    ``clock`` (HH:MM:SS, "" for none); ``live``: it says how to quit."""
    seconds = after.at - before.at
    at = f" at {clock}" if clock else ""
    table = Table(title=f"LAN {name}{at}: rates over {seconds:.1f} s"
                  + (" (q or Ctrl-C quits)" if live else ""), title_justify="left")
    for col in ("NODE", "NETCLIENT", "LINK"):
        table.add_column(col, no_wrap=True)
    for col in ("RX FR/S", "RX MBIT/S", "TX FR/S", "TX MBIT/S", "DROPS/S"):
        table.add_column(col, justify="right", no_wrap=True)
    for key, r in sorted_rows(before, after):
        row = after.rows.get(key)
        link = row.link if row is not None else "?"
        table.add_row(key[0], key[1],
                      Text(link, style="green" if link == LINK_UP else "bold red"),
                      _num(r.rx_fps, 1), _num(r.rx_mbps, 3), _num(r.tx_fps, 1),
                      _num(r.tx_mbps, 3),
                      Text(_num(r.drops_ps, 1), style="bold red" if r.drops_ps else ""))
    if not after.rows:
        table.caption = "no NetClients answered (see 'virtwire status')"
    return table


@contextlib.contextmanager
def _keys(loop: asyncio.AbstractEventLoop, quit_event: asyncio.Event) -> Iterator[bool]:
    """While inside: stdin (a tty) in cbreak mode, ``q`` sets ``quit_event``; yields
    whether keys are read. The terminal's mode is restored on the way out."""
    if not sys.stdin.isatty():
        yield False
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)

    def on_key() -> None:
        try:
            data = os.read(fd, 64)
        except OSError:
            data = b""
        if not data or any(chr(b) in QUIT_KEYS for b in data):
            quit_event.set()

    try:
        tty.setcbreak(fd)
        loop.add_reader(fd, on_key)
        yield True
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _wait(quit_event: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` or until quit; True if quit."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(quit_event.wait(), seconds)
    return quit_event.is_set()


async def cmd_top(args: argparse.Namespace) -> int:
    if args.interval < MIN_INTERVAL_S:
        raise ConfigError(f"--interval must be at least {MIN_INTERVAL_S} s")
    count = 1 if args.once else args.count or None
    console = Console()
    if not console.is_terminal:
        # A pipe or a file: rows on one line each, not cut at 80 columns.
        console = Console(width=TEXT_WIDTH)
    ch, stub = orchestrator_stub(lan_name(args))
    async with ch:
        name = (await stub.GetStatus(orchestrator_pb2.OrchestratorServiceGetStatusRequest(),
                                     timeout=RPC_TIMEOUT_S)).name
        before = await take_sample(stub)
        if count is not None or not console.is_terminal:
            shown = 0
            while count is None or shown < count:
                await asyncio.sleep(args.interval)
                after = await take_sample(stub)
                console.print(build_table(name, before, after, clock=_clock()))
                before, shown = after, shown + 1
            return EXIT_OK
        return await _live(console, stub, name, before, args.interval)


async def _live(console: Console, stub: orchestrator_pb2_grpc.OrchestratorServiceStub,
                name: str, before: Sample, interval: float) -> int:
    """Redraw in place until q (a tty's stdin) or Ctrl-C / SIGTERM: exit 0."""
    loop = asyncio.get_running_loop()
    quit_event = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, quit_event.set)
    waiting = Table(title=f"LAN {name}: first rates in {interval:.1f} s (q or Ctrl-C quits)",
                    title_justify="left")
    try:
        with _keys(loop, quit_event), Live(waiting, console=console, auto_refresh=False,
                                          screen=False, transient=False) as live:
            while not await _wait(quit_event, interval):
                after = await take_sample(stub)
                live.update(build_table(name, before, after, live=True, clock=_clock()),
                            refresh=True)
                before = after
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    top = sub.add_parser(
        "top", allow_abbrev=False,
        help="a live table of each NetClient's frames/s, Mbit/s and drops/s",
        description="A live table of a LAN's NetClients: frames/s and Mbit/s received "
        "and sent, drops/s and link state, from the orchestrator's counters (as "
        "'status --json' gives them) --interval apart, the busiest first. On a terminal "
        "it refreshes in place until q or Ctrl-C (exit 0); --count N prints N tables "
        "and ends.")
    top.set_defaults(verb=cmd_top)
    top.add_argument("name", nargs="?", metavar="LAN",
                     help="the LAN (default: the only one running); or --lan LAN")
    top.add_argument("--lan", help="the LAN, when several run")
    top.add_argument("-n", "--interval", type=float, default=1.0, metavar="S",
                     help="seconds between refreshes (default 1)")
    ends = top.add_mutually_exclusive_group()
    ends.add_argument("--count", type=int, default=0, metavar="N",
                      help="print N tables, one per interval, and end (0: until q)")
    ends.add_argument("--once", action="store_true", help="print one table and end "
                      "(--count 1)")
    tls.add_arguments(top, default_name=tls.DEFAULT_CLIENT_NAME)
