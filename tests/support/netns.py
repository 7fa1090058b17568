"""Network namespaces with TAP/veth devices for root-only integration tests.

Names embed the test process's pid (``vw<pid>x<n>``), so parallel runs never
collide and :func:`cleanup_stale` can tell leftovers of dead runs.  Every
namespace made here is deleted by :func:`delete_netns`, by the
:func:`netns` context manager, or at interpreter exit at the latest.

Example::

    require_root()
    with netns() as ns:
        tap = ns.add_tap(cidr="198.18.1.1/24")
        ns.exec("ip", "addr", "show", tap)
"""

from __future__ import annotations

import atexit
import functools
import itertools
import logging
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from support.need import need

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "vw"
_counter = itertools.count()
_live: set[str] = set()


def _run(*argv: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        log.warning("%s exited %d: %s", " ".join(argv), proc.returncode, proc.stderr.strip())
        raise subprocess.CalledProcessError(proc.returncode, argv, proc.stdout, proc.stderr)
    return proc


@functools.cache
def _netns_unavailable() -> str | None:
    """Why namespaces can't be used here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root"
    if not Path("/dev/net/tun").exists():
        return "needs /dev/net/tun"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    try:  # root in a container may still lack CAP_SYS_ADMIN / CAP_NET_ADMIN
        with netns("vwq"):
            pass
    except (subprocess.SubprocessError, OSError) as exc:
        return f"cannot create a network namespace: {exc}"
    return None


def require_root() -> None:
    """Go on only as root with /dev/net/tun, ``ip`` and netns support (else
    :func:`support.need.need`: skip without root, fail as root)."""
    reason = _netns_unavailable()
    need(reason is None, f"network namespace tests: {reason}")


def unique_name(prefix: str = DEFAULT_PREFIX) -> str:
    """``<prefix><pid>x<n>``: unique per process, <= 15 chars (IFNAMSIZ - 1)."""
    name = f"{prefix}{os.getpid()}x{next(_counter)}"
    if len(name) > 15:
        raise ValueError(f"name {name!r} too long for an interface; shorten {prefix!r}")
    return name


@dataclass(frozen=True)
class NetNs:
    """A named network namespace (``/run/netns/<name>``)."""

    name: str

    @property
    def exec_prefix(self) -> list[str]:
        """argv prefix running a command inside, e.g. for ``QemuVM(wrapper=...)``."""
        return ["ip", "netns", "exec", self.name]

    def exec(
        self, *argv: str, check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the namespace; raise CalledProcessError if ``check``."""
        return _run(*self.exec_prefix, *argv, check=check, timeout=timeout)

    def popen(
        self, *argv: str, stdout: int | IO[Any] | None = None, stderr: int | IO[Any] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a long-running process inside (killed by :func:`delete_netns`)."""
        return subprocess.Popen(
            [*self.exec_prefix, *argv], stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr
        )

    def ip(self, *args: str) -> str:
        """``ip <args>`` inside the namespace; returns stdout."""
        return self.exec("ip", *args).stdout

    def add_tap(self, ifname: str | None = None, cidr: str | None = None) -> str:
        """Create a persistent TAP device inside, set it up; return its name."""
        ifname = ifname or unique_name("vwt")
        self.ip("tuntap", "add", "dev", ifname, "mode", "tap")
        self._configure(ifname, cidr)
        return ifname

    def add_veth(
        self,
        ifname: str | None = None,
        cidr: str | None = None,
        *,
        peer_ifname: str | None = None,
        peer_cidr: str | None = None,
        peer_ns: NetNs | None = None,
    ) -> tuple[str, str]:
        """Create a veth pair: one end here, the peer in ``peer_ns`` (default:
        the caller's namespace); both set up.  Returns (ifname, peer_ifname).
        """
        ifname = ifname or unique_name("vwv")
        peer_ifname = peer_ifname or unique_name("vwp")
        _run(
            "ip",
            "link",
            "add",
            ifname,
            "netns",
            self.name,
            "type",
            "veth",
            "peer",
            "name",
            peer_ifname,
            *(["netns", peer_ns.name] if peer_ns else []),
        )
        self._configure(ifname, cidr)
        if peer_ns:
            peer_ns._configure(peer_ifname, peer_cidr)
        else:
            if peer_cidr:
                _run("ip", "addr", "add", peer_cidr, "dev", peer_ifname)
            _run("ip", "link", "set", peer_ifname, "up")
        return ifname, peer_ifname

    def _configure(self, ifname: str, cidr: str | None) -> None:
        if cidr:
            self.ip("addr", "add", cidr, "dev", ifname)
        self.ip("link", "set", ifname, "up")


def create_netns(prefix: str = DEFAULT_PREFIX) -> NetNs:
    """Create a fresh namespace with ``lo`` up (no routes, no other links)."""
    ns = NetNs(unique_name(prefix))
    _run("ip", "netns", "add", ns.name)
    _live.add(ns.name)
    log.debug("created netns %s", ns.name)
    try:
        ns.ip("link", "set", "lo", "up")
    except BaseException:
        delete_netns(ns)
        raise
    return ns


def delete_netns(ns: NetNs | str) -> None:
    """Kill every process inside, then delete the namespace; never raises if gone.

    Its TAP and veth devices go with it (a veth's peer too).
    """
    name = ns.name if isinstance(ns, NetNs) else ns
    pids = _run("ip", "netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    proc = _run("ip", "netns", "delete", name, check=False)
    if proc.returncode != 0 and name in list_netns():
        raise RuntimeError(f"cannot delete netns {name}: {proc.stderr.strip()}")
    _live.discard(name)
    log.debug("deleted netns %s", name)


@contextmanager
def netns(prefix: str = DEFAULT_PREFIX) -> Iterator[NetNs]:
    """Context manager: a new namespace, deleted on exit (also on errors)."""
    ns = create_netns(prefix)
    try:
        yield ns
    finally:
        delete_netns(ns)


def list_netns() -> list[str]:
    """Names of all named network namespaces on the host."""
    out = _run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def cleanup_stale(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Delete ``<prefix><pid>x<n>`` namespaces whose creating process is dead."""
    removed = []
    for name in list_netns():
        m = re.fullmatch(rf"{re.escape(prefix)}(\d+)x\d+", name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            delete_netns(name)
            removed.append(name)
    return removed


@atexit.register
def _delete_leftovers() -> None:
    for name in sorted(_live):
        try:
            delete_netns(name)
        except Exception:  # best effort at exit
            log.exception("could not delete netns %s", name)
