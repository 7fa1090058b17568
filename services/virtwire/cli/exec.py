"""`virtwire exec NODE -- CMD`: run a command inside a node of a running LAN.

The node's kind says how to enter it (``orchestrator.nodeexec``: a netns
node's namespace with ``ip netns exec``). The command runs here, with this
terminal, and its exit status is exec's.
"""

from __future__ import annotations

import argparse
import asyncio

from virtwire.cli.lan import lan_name
from virtwire.errors import ConfigError
from virtwire.orchestrator.core import lan_dir, read_state
from virtwire.orchestrator.nodeexec import exec_prefix

__all__ = ["add_commands", "cmd_exec"]


async def cmd_exec(args: argparse.Namespace) -> int:
    command = list(args.cmd)
    if "--" in command:  # options between NODE and --: exec's own (--lan LAN)
        cut = command.index("--")
        own, command = command[:cut], command[cut + 1:]
        if own:
            late = argparse.ArgumentParser(prog="virtwire exec", allow_abbrev=False,
                                           add_help=False)
            late.add_argument("--lan")
            got, rest = late.parse_known_args(own)
            if rest:
                raise ConfigError(f"virtwire exec: unknown option {rest[0][:40]!r} before --")
            args.lan = got.lan or args.lan
    if not command:
        raise ConfigError("give the command after --: virtwire exec NODE -- CMD [ARG...]")
    state = read_state(lan_name(args))
    prefix = exec_prefix(state, lan_dir(state.name), args.node)
    proc = await asyncio.create_subprocess_exec(*prefix, *command)
    try:
        return await proc.wait()
    except asyncio.CancelledError:  # Ctrl-C: the command got SIGINT from the terminal too
        proc.kill()
        await proc.wait()
        raise


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sp = sub.add_parser("exec", allow_abbrev=False,
                        help="run a command inside a netns or container node: exec NODE -- CMD")
    sp.add_argument("node", metavar="NODE", help="a netns or container node of a running LAN")
    sp.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD",
                    help="the command and its arguments")
    sp.add_argument("--lan", help="the LAN, when several run")
    sp.set_defaults(verb=cmd_exec, name=None)
