"""The orchestrator's side of netns and qemu nodes (docs/topology.md).

A **netns** node is a named network namespace ``vw-LAN-NODE``. Each of its
interfaces ethN is a tap service NODE-ethN: the service opens a TAP on this
host under a short name of ours (``tap_name``), then the orchestrator moves
it into the namespace, renames it ethN, sets its MTU and addresses and brings
it up (``NetnsHosts.attach``), then adds the node's routes. The TAP is not
persistent: when its service dies the kernel removes it, and the restarted
service's new TAP is attached the same way (routes through it are re-added).
The node's startup commands run once, after all its interfaces are attached.

What was created is recorded in ``LAN/netns.json`` before it is created, so a
``down`` after the orchestrator crashed (``remove_lan_dir``) deletes those
namespaces too (only names of this LAN's form); deleting a namespace kills
what runs in it and removes its interfaces.

A **qemu** node's stream port listens on ``LAN/NODE.qsock`` and its serial
console goes to ``LAN/console/NODE.log`` (``qemu_paths``).

Everything here runs on this machine only: the topology refuses netns and
qemu nodes sent by RPC or placed on other hosts.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import signal
import subprocess
from pathlib import Path

from virtwire.errors import BackendError
from virtwire.topology import NetnsNode, QemuNode, Topology

__all__ = ["NETNS_RECORD", "NetnsHosts", "iface_mac", "netns_name", "qemu_paths",
           "remove_recorded_netns",
           "tap_name"]

logger = logging.getLogger(__name__)

NETNS_RECORD = "netns.json"
NETNS_DIR = Path("/run/netns")
#: sockaddr_un.sun_path holds 107 bytes and a NUL.
UNIX_PATH_MAX = 107
IP_TIMEOUT_S = 10.0
#: How long a tap service's TAP may take to appear after the service serves.
TAP_WAIT_S = 5.0
#: Output of a startup command kept in the log.
COMMAND_OUTPUT_MAX = 2000


def netns_name(lan: str, node: str) -> str:
    """The namespace of netns node ``node`` of LAN ``lan`` (at most 56 characters)."""
    return f"vw-{lan}-{node}"


def tap_name(lan: str, service: str) -> str:
    """The host-side name of a netns interface's TAP before it moves (14 characters,
    IFNAMSIZ-safe): the same for a restart, different per LAN and service."""
    return "vwn" + hashlib.sha256(f"{lan}/{service}".encode()).hexdigest()[:11]


def iface_mac(lan: str, service: str) -> str:
    """A netns interface's MAC: locally administered, unicast, the same after a restart
    of its service (whose new TAP would get a random one, stale in its peers' ARP caches)."""
    digest = hashlib.sha256(f"mac/{lan}/{service}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02 | (digest[0] & 0xFC), *digest[1:6]))


def qemu_paths(lan_dir: str, node: str) -> tuple[str, str]:
    """(stream port's unix socket, serial console log) of qemu node ``node``."""
    return f"{lan_dir}/{node}.qsock", f"{lan_dir}/console/{node}.log"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True,
                          timeout=IP_TIMEOUT_S, check=False)
    if check and proc.returncode != 0:
        raise BackendError(f"ip {' '.join(args)}: {proc.stderr.strip()[:300]}")
    return proc


def _delete_netns(name: str) -> None:
    """Kill what runs in namespace ``name``, then delete it (its TAPs go with it)."""
    for pid in _ip("netns", "pids", name, check=False).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    proc = _ip("netns", "delete", name, check=False)
    if proc.returncode != 0 and (NETNS_DIR / name).exists():
        logger.error("cannot delete network namespace %s: %s", name, proc.stderr.strip())
    else:
        logger.info("deleted network namespace %s", name)


def _read_record(lan_dir: Path) -> list[str]:
    try:
        data = json.loads((lan_dir / NETNS_RECORD).read_text())
    except (OSError, ValueError):
        return []
    return [n for n in data if isinstance(n, str)] if isinstance(data, list) else []


def _write_record(lan_dir: Path, names: list[str]) -> None:
    tmp = lan_dir / (NETNS_RECORD + ".tmp")
    tmp.write_text(json.dumps(sorted(set(names))))
    tmp.replace(lan_dir / NETNS_RECORD)


def remove_recorded_netns(lan_dir: Path, lan: str) -> list[str]:
    """Delete the namespaces ``lan_dir``'s record lists (of LAN ``lan``'s form only)."""
    removed = []
    for name in _read_record(lan_dir):
        if name.startswith(f"vw-{lan}-") and "/" not in name and (NETNS_DIR / name).exists():
            _delete_netns(name)
            removed.append(name)
    (lan_dir / NETNS_RECORD).unlink(missing_ok=True)
    return removed


class NetnsHosts:
    """The namespaces of one LAN's netns nodes: made, wired, deleted."""

    def __init__(self, topo: Topology, lan_dir: Path) -> None:
        self.topo = topo
        self.lan_dir = lan_dir
        self.created: list[str] = []
        #: Nodes whose startup commands ran.
        self.commands_ran: set[str] = set()

    def nodes(self) -> list[NetnsNode]:
        return [n for n in self.topo.nodes.values() if isinstance(n, NetnsNode)]

    def check(self) -> None:
        """BackendError unless netns nodes can be run here (root, ``ip``)."""
        if not self.nodes():
            return
        if os.geteuid() != 0:
            names = ", ".join(n.name for n in self.nodes())
            raise BackendError(f"netns nodes ({names}) need root: run 'virtwire up' as root")
        if not Path("/dev/net/tun").exists():
            raise BackendError("netns nodes need /dev/net/tun")

    async def create(self, node: NetnsNode) -> str:
        """Make node's namespace (lo up); an old one of the same name is removed first."""
        name = netns_name(self.topo.name, node.name)
        _write_record(self.lan_dir, [*_read_record(self.lan_dir), name])
        if (NETNS_DIR / name).exists():
            logger.warning("network namespace %s is left from an earlier run: removed", name)
            await asyncio.to_thread(_delete_netns, name)
        await asyncio.to_thread(_ip, "netns", "add", name)
        self.created.append(name)
        await asyncio.to_thread(_ip, "-n", name, "link", "set", "lo", "up")
        return name

    async def attach(self, node: NetnsNode, iface: str) -> None:
        """Move interface ``iface``'s TAP (just opened by its service) into node's
        namespace as ``iface``, configured and up; then the routes it can carry."""
        ns = netns_name(self.topo.name, node.name)
        tap = tap_name(self.topo.name, node.service(iface))
        spec = next(i for i in node.interfaces if i.name == iface)
        deadline = asyncio.get_running_loop().time() + TAP_WAIT_S
        while not Path(f"/sys/class/net/{tap}").exists():
            if asyncio.get_running_loop().time() > deadline:
                raise BackendError(f"{node.service(iface)}: its TAP {tap} did not appear")
            await asyncio.sleep(0.02)  # the service opens it as it starts
        mac = iface_mac(self.topo.name, node.service(iface))
        await asyncio.to_thread(self._attach, ns, tap, spec.name, mac, spec.addresses, spec.mtu)
        await self.add_routes(node)

    @staticmethod
    def _attach(ns: str, tap: str, iface: str, mac: str, addresses: tuple[str, ...],
                mtu: int | None) -> None:
        _ip("link", "set", "dev", tap, "netns", ns, "name", iface)
        _ip("-n", ns, "link", "set", "dev", iface, "address", mac)
        if mtu is not None:
            _ip("-n", ns, "link", "set", "dev", iface, "mtu", str(mtu))
        for address in addresses:
            # IPv6: no duplicate address detection delay before the address works.
            extra = ["nodad"] if ":" in address else []
            _ip("-n", ns, "addr", "add", address, "dev", iface, *extra)
        _ip("-n", ns, "link", "set", "dev", iface, "up")

    async def add_routes(self, node: NetnsNode) -> None:
        """Add node's routes whose interfaces are all there (``replace``: again is fine)."""
        ns = netns_name(self.topo.name, node.name)
        for route in node.routes:
            proc = await asyncio.to_thread(_ip, "-n", ns, "route", "replace",
                                           *route.ip_args(), check=False)
            if proc.returncode != 0:
                logger.info("%s: route %s not yet: %s", node.name, " ".join(route.ip_args()),
                            proc.stderr.strip()[:200])

    async def run_commands(self, node: NetnsNode) -> None:
        """Node's startup commands, in order, once; BackendError when one fails."""
        if node.name in self.commands_ran:
            return
        self.commands_ran.add(node.name)
        ns = netns_name(self.topo.name, node.name)
        for route in node.routes:  # now every interface is there: each route must go in
            await asyncio.to_thread(_ip, "-n", ns, "route", "replace", *route.ip_args())
        for command in node.commands:
            proc = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", ns, "sh", "-c", command,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True)
            out, _ = await proc.communicate()
            text = out.decode(errors="replace").strip()[-COMMAND_OUTPUT_MAX:]
            if proc.returncode != 0:
                raise BackendError(f"{node.name}: command {command[:80]!r} exited "
                                   f"{proc.returncode}: {text}")
            logger.info("%s: ran %r%s", node.name, command[:80], f": {text}" if text else "")

    async def delete_all(self) -> None:
        """Delete every namespace this LAN made, and forget them."""
        for name in reversed(self.created):
            await asyncio.to_thread(_delete_netns, name)
        self.created = []
        if (self.lan_dir / NETNS_RECORD).exists():
            await asyncio.to_thread(remove_recorded_netns, self.lan_dir, self.topo.name)


def qemu_nodes(topo: Topology) -> list[QemuNode]:
    return [n for n in topo.nodes.values() if isinstance(n, QemuNode)]


def check_qemu_paths(topo: Topology, lan_dir: Path) -> None:
    """BackendError when a qemu node's socket path is too long for a unix socket."""
    for node in qemu_nodes(topo):
        sock, console = qemu_paths(str(lan_dir), node.name)
        if len(sock.encode()) > UNIX_PATH_MAX:
            raise BackendError(f"{node.name}: its stream socket {sock} is longer than "
                               f"{UNIX_PATH_MAX} bytes: use a shorter VIRTWIRE_STATE_DIR")
        Path(console).parent.mkdir(mode=0o700, exist_ok=True)
