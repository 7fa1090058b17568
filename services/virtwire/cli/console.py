"""`virtwire console NODE`: a qemu node's serial console, as ``tail -f`` shows a log.

QEMU appends the console to ``LAN/console/NODE.log`` (a restarted VM goes on
at its end). ``console`` prints what is there, then follows it until Ctrl-C;
``--no-follow`` prints it and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from virtwire.cli.lan import lan_name
from virtwire.errors import NotFoundError
from virtwire.orchestrator.core import lan_dir, read_state
from virtwire.orchestrator.hostnodes import qemu_paths

__all__ = ["add_commands", "cmd_console", "follow"]

POLL_S = 0.2
CHUNK = 64 << 10


async def follow(path: Path, out: int, *, keep_following: bool = True) -> None:
    """Copy ``path`` to fd ``out``, then (``keep_following``) what is appended to it."""
    with open(path, "rb") as file:
        while True:
            data = file.read(CHUNK)
            if data:
                os.write(out, data)
                continue
            if not keep_following:
                return
            if os.stat(path).st_size < file.tell():  # truncated: from its start again
                file.seek(0)
            await asyncio.sleep(POLL_S)  # no event for "a file grew" without inotify


async def cmd_console(args: argparse.Namespace) -> int:
    state = read_state(lan_name(args))
    if not any(rec.kind == "qemu" and rec.node == args.node for rec in state.services):
        known = ", ".join(sorted({r.node for r in state.services if r.kind == "qemu"}))
        raise NotFoundError(f"no qemu node {args.node[:40]!r} in LAN {state.name!r} "
                            f"(its qemu nodes: {known or 'none'})")
    _, log = qemu_paths(str(lan_dir(state.name)), args.node)
    if not Path(log).exists():
        raise NotFoundError(f"{args.node}: no console log yet ({log})")
    sys.stdout.flush()
    await follow(Path(log), sys.stdout.fileno(), keep_following=not args.no_follow)
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sp = sub.add_parser("console", allow_abbrev=False,
                        help="a qemu node's serial console: follow it (Ctrl-C ends)")
    sp.add_argument("node", metavar="NODE", help="a qemu node of a running LAN")
    sp.add_argument("--lan", help="the LAN, when several run")
    sp.add_argument("--no-follow", action="store_true",
                    help="print the console so far and exit")
    sp.set_defaults(verb=cmd_console, name=None)
