"""How ``virtwire exec NODE -- CMD`` enters a node: a small registry by node kind.

Each kind that can run a command inside its node registers an ``Enter``: given
the running LAN's state and directory and a node name, it returns the argv
prefix that runs a command inside that node (``ip netns exec NS`` for a
netns node), or None when the node is not one of its kind. ``exec_prefix``
asks them in registration order. The command comes from the user's own
command line on this host, never from an RPC.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from virtwire.errors import NotFoundError
from virtwire.orchestrator.hostnodes import NETNS_DIR, _read_record, netns_name

if TYPE_CHECKING:
    from virtwire.orchestrator.core import LanState

__all__ = ["ENTER", "Enter", "exec_prefix", "register"]

#: (the LAN's state, its state dir, node name) -> argv prefix, or None if not its node.
Enter = Callable[["LanState", Path, str], "list[str] | None"]
#: By node kind, in the order they are asked.
ENTER: dict[str, Enter] = {}


def register(kind: str, enter: Enter) -> None:
    """Let ``virtwire exec`` enter nodes of ``kind`` with ``enter``."""
    ENTER[kind] = enter


def exec_prefix(state: LanState, lan_dir: Path, node: str) -> list[str]:
    """The argv prefix running a command in ``node``; NotFoundError if no kind has it."""
    for enter in ENTER.values():
        prefix = enter(state, lan_dir, node)
        if prefix is not None:
            return prefix
    known = ", ".join(sorted({rec.node for rec in state.services})) or "none"
    raise NotFoundError(f"{node[:40]!r} is not a node of LAN {state.name!r} that exec can "
                        f"enter (a {' or '.join(ENTER)} node; the LAN's nodes: {known})")


def _enter_netns(state: LanState, lan_dir: Path, node: str) -> list[str] | None:
    name = netns_name(state.name, node)
    if name not in _read_record(lan_dir) or not (NETNS_DIR / name).exists():
        return None
    return ["ip", "netns", "exec", name]


register("netns", _enter_netns)
