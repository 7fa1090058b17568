"""The `virtwire` command line: ``main`` and the parser it assembles.

One module per group of verbs, each adding its subcommands with
``add_commands``: ``serve`` (one service), ``frames`` (inject, capture, list,
link, ping), ``lan`` (up, down, status, validate, render), ``certs`` and
``demo``; ``format`` holds what they print (``plantable`` validate's plan),
``verbs`` the help (groups, examples). Verbs raise domain errors only: a
failed RPC becomes one through ``virtwire.rpc.status``, a file the user named
that cannot be opened through ``userfile``, and ``exitcode`` picks the exit
code from its type. A closed stdout ends a command quietly with 141, Ctrl-C
with 130 (``exitcode``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Sequence

from virtwire import __version__, tls
from virtwire.cli import certs, demo, expect, frames, lan, replay, serve
from virtwire.cli import console as console_verbs
from virtwire.cli import exec as exec_verbs
from virtwire.cli import fdb as fdb_verbs
from virtwire.cli import filter as filter_verbs
from virtwire.cli import graph as graph_verbs
from virtwire.cli import netem as netem_verbs
from virtwire.cli import top as top_verbs
from virtwire.cli import trace as trace_verbs
from virtwire.cli.exitcode import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, exit_code_for
from virtwire.cli.format import target_name
from virtwire.cli.log import setup_logging
from virtwire.cli.verbs import TOP_EXAMPLE, Verbs, example_epilog
from virtwire.errors import VirtwireError
from virtwire.rpc.status import translated

#: Options that must be at least this much, wherever a verb has them.
_AT_LEAST = (("repeat", 1), ("count", 0), ("snaplen", 0), ("ports", 0), ("max_ports", 1),
             ("max_captures", 1))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="virtwire", allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"virtwire {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="VERB", action=Verbs,
                           help="'virtwire VERB --help': its options and an example")
    for verbs in (lan, frames, demo, certs, serve):
        verbs.add_commands(sub)
    for verbs in (filter_verbs, netem_verbs, fdb_verbs):
        verbs.add_commands(sub)
    for verbs in (expect, trace_verbs, replay):
        verbs.add_commands(sub)
    for verbs in (graph_verbs, top_verbs):
        verbs.add_commands(sub)
    for verbs in (exec_verbs, console_verbs):
        verbs.add_commands(sub)
    assert isinstance(sub, Verbs)
    p.description = ("QEMU's network data path as gRPC services: run a LAN of emulated "
                     "e1000 VMs, hubs\nand backends from a topology file, watch it and "
                     f"drive it.\n\n{sub.verb_list()}")
    p.epilog = example_epilog(TOP_EXAMPLE)
    return p


async def _run_verb(args: argparse.Namespace) -> int:
    with translated(target_name(args)):
        return int(await args.verb(args))


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name, least in _AT_LEAST:
        if getattr(args, name, least) < least:
            parser.error(f"--{name.replace('_', '-')} must be at least {least}")
    setup_logging(args.verbose, getattr(args, "log_format", "text"))
    try:
        # up takes the LAN's identity from its topology's tls: (orchestrator/pki.py).
        tls.configure(tls.config_from_args(args))
        return asyncio.run(_run_verb(args))
    except VirtwireError as exc:
        print(f"virtwire: error: {exc}", file=sys.stderr)
        return exit_code_for(exc)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `virtwire` command; its exit code (``exitcode``)."""
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()  # a reader gone away shows here, not at exit
    except BrokenPipeError:
        # What is left for stdout goes nowhere, so that exiting does not fail too.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
