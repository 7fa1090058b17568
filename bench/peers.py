#!/usr/bin/env python3
"""Reference hubs ("peers") for the hub benchmark, and a runner for them.

A peer is an async context manager that starts a system under test (SUT) with
two ports and yields the two load-generator endpoints for them::

    async with QemuHubPeer() as (a, b):
        result = await run_load(a, b, LoadConfig(size=64, count=200_000))

Frames go in at ``a`` and are expected out at ``b``.  Leaving the context
stops every process the peer started and removes its temporary directory,
also on error or cancellation.  See :class:`Peer` for the protocol; a new
peer (e.g. virtwire's own hub) only needs ``name``, ``__aenter__`` returning
``(Endpoint, Endpoint)`` and ``__aexit__``.  For a SUT that connects *to* the
load generator, create the listening sockets first with
``Endpoint.bind("unix:/tmp/dir/a")`` inside ``__aenter__``, then start the SUT
(and ``close()`` those endpoints in ``__aexit__``).

Peers
-----
``loop``      No hub: the two ends of one ``socketpair`` (``loop-tcp``: a loopback
              TCP connection; ``loop-dgram``: a unix datagram socketpair, i.e.
              the ``vde`` peer's framing).  Measures the load generator itself.
``qemu``      QEMU's own hub with no guest: two ``-netdev stream`` servers joined
              by two ``hubport``s on hub 0, ``-machine none``.
``vde``       ``vde_switch --hub``, attached natively: the load generator speaks
              libvdeplug's protocol itself (``vde:DIR`` endpoints, see
              ``loadgen._open_vde``), one datagram per frame, exactly what QEMU's
              ``-netdev vde`` or a ``vde_plug`` would do against the switch.
``vde_plug``  ``vde_switch --hub`` behind two ``vde_plug`` processes, each turning
              the switch port into a byte stream on its stdin/stdout with
              libvdeplug's ``vdestream`` framing (2-byte big-endian length,
              verified here; ``len16`` endpoints over a socketpair).
``pyrelay``   bench/pyrelay.py, a bare asyncio relay between two unix sockets:
              the floor of one Python process hop, no virtwire code.
``virtwire``  `virtwire serve hub` and one `serve tap` with both stream backends
              (``virtwire-1p``: the hub opens both stream backends on its own
              ports, ``--port-backend``, as QEMU's hub holds its netdevs: one
              process; ``virtwire-3p``: a tap service each; ``virtwire-tls``: mutual TLS;
              ``virtwire-grpc``: every service with ``--link-transport grpc``,
              frames on the gRPC stream only, see :func:`has_link_transport`).

:func:`run_measured` also reads every process of the path from /proc (CPU
time over the load, resident sets), by the label each was spawned with.

Why ``vde`` is the reference for vde_switch: it measures the switch and only
the switch.  Debian's QEMU 7.2 is built without ``-netdev vde`` (``-netdev
help`` lists socket, stream, dgram, hubport, tap, user, l2tpv3), and the
``vde_plug`` attachment puts a ``vde_plug`` process (stream <-> datagram
conversion, one more hop and two more copies) on each side of the switch, so
it measures ``vde_plug`` as much as the switch; it is kept for comparison.

Reading the figures: vde_switch has no end-to-end backpressure.  A sender is
only throttled by the switch's input socket, and when a receiving port's
socket is full the switch drops the frame.  Under a blast it therefore loses
frames where QEMU's stream hub holds the sender back; compare it by the rate
it delivers (``frames/s``) and by its no-drop rate (``--nodrop``, a bisection
over paced rates, :func:`find_nodrop_rate`).

``python bench/peers.py`` runs the matrix (peers x sizes, throughput then
latency mode, a fresh peer per run) and prints one line per run; see
``--help``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import pathlib
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Literal, Protocol, runtime_checkable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from loadgen import Endpoint, LoadConfig, LoadgenError, LoadResult, run_load
from procstat import CpuMeter, RssSampler, unique_labels

__all__ = [
    "PEER_NAMES",
    "Endpoint",
    "LoadConfig",
    "LoadResult",
    "LoadgenError",
    "LoopPeer",
    "Measured",
    "Peer",
    "PeerError",
    "ProcPeer",
    "PyRelayPeer",
    "QemuHubPeer",
    "VdeHubPeer",
    "VirtwireHubPeer",
    "find_nodrop_rate",
    "has_link_transport",
    "make_peer",
    "run_load",
    "run_matrix",
    "run_measured",
    "run_one",
    "wait_for_idle",
    "wait_paths",
]


@runtime_checkable
class Peer(Protocol):
    """A SUT with two ports.  ``async with peer as (a, b)``: send to a, receive at b."""

    name: str

    async def __aenter__(self) -> tuple[Endpoint, Endpoint]: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class PeerError(RuntimeError):
    """A peer failed to start."""


async def wait_paths(
    paths: list[str], procs: list[asyncio.subprocess.Process], timeout: float
) -> None:
    """Wait until every path exists; fail early if a process dies."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not all(os.path.exists(p) for p in paths):
        for proc in procs:
            if proc.returncode is not None:
                raise PeerError(f"process exited with {proc.returncode} during start-up")
        if loop.time() > end:
            raise PeerError(f"timed out waiting for {paths}")
        await asyncio.sleep(0.01)


async def _stop(proc: asyncio.subprocess.Process, grace: float = 2.0) -> None:
    """Terminate then kill one process we started."""
    if proc.returncode is not None:
        return
    try:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), grace)
    except ProcessLookupError:
        pass
    except TimeoutError:
        try:
            proc.kill()
        except ProcessLookupError:
            pass
        await proc.wait()


class ProcPeer:
    """Base for peers that run processes: subclass and implement :meth:`start`.

    ``start`` typically calls :meth:`mktemp` for a socket directory, starts
    the SUT with :meth:`spawn` (own session, output to a log in that
    directory) and waits with :func:`wait_paths`.  Every spawned process is
    terminated (then killed), every endpoint in ``self.endpoints`` closed and
    the directory removed on exit, and also when ``start`` fails, in which
    case a :class:`PeerError` carries the tail of the logs.
    """

    name = "proc"

    def __init__(self) -> None:
        self.tmp: str | None = None
        self.procs: list[asyncio.subprocess.Process] = []
        #: What each of ``procs`` is on the path (``hub``, ``tap``, ``qemu``...).
        self.labels: list[str] = []
        self.endpoints: list[Endpoint] = []
        self._logs: list[int] = []

    def mktemp(self) -> str:
        # short path: unix socket paths are limited to 107 bytes
        self.tmp = tempfile.mkdtemp(prefix=f"vw-{self.name}-")
        return self.tmp

    def log_path(self, what: str) -> str:
        assert self.tmp is not None
        return os.path.join(self.tmp, f"{what}.log")

    async def spawn(
        self,
        *argv: str,
        stdin: int = asyncio.subprocess.DEVNULL,
        stdout: int | None = None,
        label: str = "",
    ) -> asyncio.subprocess.Process:
        """Start one process in its own session; stderr (and stdout unless given) to a log.

        ``label`` names it in CPU and memory reports (default: the program's name).
        """
        name = f"{os.path.basename(argv[0])}{len(self.procs)}"
        log = os.open(self.log_path(name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._logs.append(log)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=stdin,
                stdout=log if stdout is None else stdout,
                stderr=log,
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise PeerError(f"{argv[0]} not found (apt-get install qemu-system-x86 vde2)") from exc
        self.procs.append(proc)
        self.labels.append(label or os.path.basename(argv[0]))
        return proc

    def path_procs(self) -> list[tuple[str, int]]:
        """(label, pid) of every process of the path still running; labels made unique."""
        return [(label, proc.pid)
                for label, proc in zip(unique_labels(self.labels), self.procs, strict=True)
                if proc.returncode is None]

    def logs(self) -> str:
        """The tail of every log of this peer (for error messages)."""
        if self.tmp is None:
            return ""
        out = []
        for name in sorted(os.listdir(self.tmp)):
            if name.endswith(".log"):
                with open(os.path.join(self.tmp, name), errors="replace") as f:
                    text = f.read()[-1000:].strip()
                if text:
                    out.append(f"{name}: {text}")
        return "\n".join(out)

    async def _cleanup(self) -> None:
        try:
            for proc in reversed(self.procs):
                await _stop(proc)
        finally:
            # if cancelled while stopping: kill what is left, without awaiting
            for proc in self.procs:
                if proc.returncode is None:
                    try:
                        proc.kill()
                    except ProcessLookupError:
                        pass
            self.procs.clear()
            self.labels.clear()
            for ep in self.endpoints:
                ep.close()
            self.endpoints.clear()
            for fd in self._logs:
                os.close(fd)
            self._logs.clear()
            if self.tmp is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                self.tmp = None

    async def start(self) -> tuple[Endpoint, Endpoint]:
        """Start the SUT; return (endpoint A, endpoint B)."""
        raise NotImplementedError

    async def __aenter__(self) -> tuple[Endpoint, Endpoint]:
        try:
            return await self.start()
        except BaseException as exc:
            logs = self.logs()
            await self._cleanup()
            if isinstance(exc, PeerError) and logs:
                raise PeerError(f"{exc}\n{logs}") from exc
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._cleanup()


class LoopPeer(ProcPeer):
    """No SUT: A and B are the two ends of one connection (loadgen self-test)."""

    def __init__(self, transport: Literal["socketpair", "tcp", "dgram"] = "socketpair") -> None:
        super().__init__()
        self.transport = transport
        self.name = "loop" if transport == "socketpair" else f"loop-{transport}"

    async def start(self) -> tuple[Endpoint, Endpoint]:
        if self.transport == "dgram":
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.endpoints = [Endpoint.from_socket(a, "dgram"), Endpoint.from_socket(b, "dgram")]
            return self.endpoints[0], self.endpoints[1]
        if self.transport == "socketpair":
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            with socket.create_server(("127.0.0.1", 0)) as srv:
                a = socket.create_connection(srv.getsockname())
                b, _ = srv.accept()
        self.endpoints = [Endpoint.from_socket(a), Endpoint.from_socket(b)]
        return self.endpoints[0], self.endpoints[1]


def free_tcp_port() -> int:
    """A free loopback port *outside* the ephemeral range.

    A port the kernel hands out for ``bind(0)`` may just have been given up by
    another program whose clients still retry it; QEMU's stream server accepts
    exactly one client, so such a stray connection would take the port.
    """
    lo, hi = 32768, 60999
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        pass
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        if lo <= port <= hi:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        any_port: int = s.getsockname()[1]
        return any_port


class QemuHubPeer(ProcPeer):
    """QEMU's hub (``-netdev hubport``) between two ``-netdev stream`` servers."""

    name = "qemu"

    def __init__(
        self, qemu: str = "qemu-system-x86_64", transport: Literal["unix", "tcp"] = "unix"
    ) -> None:
        super().__init__()
        self.qemu = qemu
        self.transport = transport
        if transport != "unix":
            self.name = f"qemu-{transport}"

    async def start(self) -> tuple[Endpoint, Endpoint]:
        tmp = self.mktemp()
        argv = [
            self.qemu,
            "-machine",
            "none",
            "-nodefaults",
            "-display",
            "none",
            "-monitor",
            "none",
        ]
        eps: list[Endpoint] = []
        for nid in ("a", "b"):
            if self.transport == "unix":
                path = os.path.join(tmp, nid)
                argv += ["-netdev", f"stream,id={nid},server=on,addr.type=unix,addr.path={path}"]
                eps.append(Endpoint("unix", path))
            else:
                port = free_tcp_port()
                argv += [
                    "-netdev",
                    f"stream,id={nid},server=on,addr.type=inet,addr.host=127.0.0.1,addr.port={port}",
                ]
                eps.append(Endpoint("tcp", f"127.0.0.1:{port}"))
        argv += [
            "-netdev",
            "hubport,id=ha,hubid=0,netdev=a",
            "-netdev",
            "hubport,id=hb,hubid=0,netdev=b",
        ]
        proc = await self.spawn(*argv, label="qemu")
        if self.transport == "unix":
            await wait_paths([ep.address for ep in eps], [proc], 10.0)
        else:
            await _wait_tcp(eps, proc, 10.0)
        return eps[0], eps[1]


async def _wait_tcp(eps: list[Endpoint], proc: asyncio.subprocess.Process, timeout: float) -> None:
    """Wait until QEMU listens, without connecting (it accepts one client only)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    ports = {int(ep.address.rpartition(":")[2]) for ep in eps}
    while True:
        if proc.returncode is not None:
            raise PeerError(f"qemu exited with {proc.returncode}")
        listening = set()
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # TCP_LISTEN
                    listening.add(int(fields[1].rpartition(":")[2], 16))
        if ports <= listening:
            return
        if loop.time() > end:
            raise PeerError("timed out waiting for qemu to listen")
        await asyncio.sleep(0.01)


class VdeHubPeer(ProcPeer):
    """``vde_switch --hub``; ``attach='native'`` (default) or ``'vde_plug'``.

    ``native``: both endpoints are ``vde:DIR``; the load generator registers two
    ports on the switch with libvdeplug's request_v3 handshake and exchanges raw
    frames as datagrams with it.  This is what any libvdeplug client does, so
    the figures are vde_switch's own.

    ``vde_plug``: two ``vde_plug DIR`` processes, each with a socketpair end as
    stdin/stdout; the endpoints are the other ends with ``len16`` framing.
    """

    def __init__(
        self, attach: Literal["native", "vde_plug"] = "native", switch: str = "vde_switch",
        hub: bool = True,
    ) -> None:
        super().__init__()
        self.attach = attach
        self.switch = switch
        #: False: vde_switch as a learning switch (no --hub), for bench/switchbench.py.
        self.hub = hub
        self.name = "vde" if attach == "native" else "vde_plug"
        if not hub:
            self.name += "-switch"

    async def start(self) -> tuple[Endpoint, Endpoint]:
        tmp = self.mktemp()
        swdir = os.path.join(tmp, "sw")
        # vde_switch in the foreground exits on EOF of stdin: hold a pipe open.
        mode = ["--hub"] if self.hub else []
        sw = await self.spawn(self.switch, *mode, "--sock", swdir, stdin=asyncio.subprocess.PIPE)
        await wait_paths([os.path.join(swdir, "ctl")], [sw], 10.0)
        if self.attach == "native":
            return Endpoint("vde", swdir, framing="dgram"), Endpoint("vde", swdir, framing="dgram")
        eps: list[Endpoint] = []
        for _ in range(2):
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                # stdin and stdout of vde_plug are both the socketpair end
                await self.spawn("vde_plug", swdir, stdin=theirs.fileno(), stdout=theirs.fileno())
            finally:
                theirs.close()
            eps.append(Endpoint.from_socket(mine, "len16"))
        self.endpoints = eps
        return eps[0], eps[1]


class PyRelayPeer(ProcPeer):
    """bench/pyrelay.py: a bare asyncio relay between two unix sockets, the
    floor of one Python process hop (no virtwire code at all)."""

    name = "pyrelay"

    async def start(self) -> tuple[Endpoint, Endpoint]:
        tmp = self.mktemp()
        a, b = os.path.join(tmp, "a"), os.path.join(tmp, "b")
        relay = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pyrelay.py")
        proc = await self.spawn(sys.executable, relay, a, b, label="pyrelay")
        await wait_paths([a, b], [proc], 10.0)
        return Endpoint("unix", a), Endpoint("unix", b)


class VirtwireHubPeer(ProcPeer):
    """virtwire: `serve hub` plus `stream` backends (unix, listen) on new hub ports.

    ``taps=1``: one tap service hosts both backends (2 processes: hub, tap).
    ``taps=2``: one tap service per backend (3 processes), as when the two
    ends of the LAN live in different containers.
    ``link_transport``: passed as ``--link-transport`` to every service
    (``grpc``: frames on the gRPC stream only; None: the services' default).
    ``serve_args``: more arguments for `serve KIND` by kind (``hub``, ``tap``),
    e.g. ``--object filter-...`` and ``--dump-dir``; ``hub_ports``: the hub
    creates these two named ports (``--port``) and backend a dials the first,
    b the second, so an ``--object`` can name them (else new unnamed ports).
    ``hub_kind``: ``switch`` runs `serve switch` (the learning switch) in the
    hub's place, with the same ports (bench/switchbench.py).
    ``taps=0``: no tap service; the hub opens both stream backends itself
    (``--port-backend``), one process in all.
    """

    def __init__(self, taps: int = 1, secure: bool = False,
                 link_transport: str | None = None,
                 serve_args: Mapping[str, Sequence[str]] | None = None,
                 hub_ports: tuple[str, str] | None = None, name: str = "",
                 hub_kind: str = "hub") -> None:
        super().__init__()
        self.taps = taps
        self.hub_kind = hub_kind
        self.serve_args = {k: list(v) for k, v in (serve_args or {}).items()}
        self.hub_ports = hub_ports
        #: (kind, gRPC address) of every service started, in order.
        self.services: list[tuple[str, str]] = []
        #: Every service on mutual TLS (a throwaway CA, made in start()).
        self.secure = secure
        self.tls_args: list[str] = []
        self.transport_args = ["--link-transport", link_transport] if link_transport else []
        self.name = {0: "virtwire-1p", 1: "virtwire"}.get(taps, "virtwire-3p") \
            + ("-tls" if secure else "")
        if link_transport:
            self.name += f"-{link_transport}"
        if name:
            self.name = name

    async def _serve(self, kind: str, *args: str) -> str:
        assert self.tmp is not None
        ready = os.path.join(self.tmp, f"{kind}{len(self.procs)}.ready")
        proc = await self.spawn(sys.executable, "-m", "virtwire.cli", "serve", kind, *args,
                                *self.serve_args.get(kind, ()), *self.tls_args,
                                *self.transport_args, "--ready-file", ready,
                                label=kind)
        await wait_paths([ready], [proc], 20.0)
        loop = asyncio.get_running_loop()
        end = loop.time() + 5.0
        while True:
            with open(ready) as f:
                address = f.read().strip()
            if address or loop.time() > end:
                self.services.append((kind, address))
                return address
            await asyncio.sleep(0.01)

    async def start(self) -> tuple[Endpoint, Endpoint]:
        tmp = self.mktemp()
        if self.secure:
            import benchtls

            self.tls_args = benchtls.service_args(benchtls.make_pki(pathlib.Path(tmp, "pki")))
        ports = list(self.hub_ports or ("", ""))
        socks = [os.path.join(tmp, "a"), os.path.join(tmp, "b")]
        if self.taps == 0:
            await self._serve(self.hub_kind, *(
                a for i, (path, port) in enumerate(zip(socks, ports, strict=True))
                for a in ("--port-backend", f"{port or f'p{i}'}=stream,listen=unix:{path}")))
            await wait_paths(socks, self.procs, 10.0)
            return Endpoint("unix", socks[0]), Endpoint("unix", socks[1])
        hub = await self._serve(self.hub_kind, *(a for p in ports if p for a in ("--port", p)))
        backends = [["--backend", f"stream,listen=unix:{path}", "--peer", f"{hub}/{port}"]
                    for path, port in zip(socks, ports, strict=True)]
        if self.taps == 1:
            await self._serve("tap", *backends[0], *backends[1])
        else:
            for args in backends:
                await self._serve("tap", *args)
        await wait_paths(socks, self.procs, 10.0)
        return Endpoint("unix", socks[0]), Endpoint("unix", socks[1])


def make_peer(name: str) -> Peer:
    """A peer by name, one of PEER_NAMES."""
    if name == "loop":
        return LoopPeer()
    if name == "loop-tcp":
        return LoopPeer("tcp")
    if name == "loop-dgram":
        return LoopPeer("dgram")
    if name == "qemu":
        return QemuHubPeer()
    if name == "qemu-tcp":
        return QemuHubPeer(transport="tcp")
    if name == "vde":
        return VdeHubPeer("native")
    if name == "vde_plug":
        return VdeHubPeer("vde_plug")
    if name == "pyrelay":
        return PyRelayPeer()
    if name == "virtwire":
        return VirtwireHubPeer(taps=1)
    if name == "virtwire-1p":
        return VirtwireHubPeer(taps=0)
    if name == "virtwire-3p":
        return VirtwireHubPeer(taps=2)
    if name == "virtwire-tls":
        return VirtwireHubPeer(taps=1, secure=True)
    if name == "virtwire-grpc":
        return VirtwireHubPeer(taps=1, link_transport="grpc")
    raise ValueError(f"unknown peer {name!r}")


PEER_NAMES = ("loop", "loop-tcp", "loop-dgram", "qemu", "qemu-tcp", "vde", "vde_plug",
              "pyrelay", "virtwire", "virtwire-1p", "virtwire-3p", "virtwire-tls", "virtwire-grpc")


@functools.cache
def has_link_transport() -> bool:
    """True if this tree's `virtwire serve hub` and `serve tap` take ``--link-transport``
    (what the ``virtwire-grpc`` peer needs); asked of their --help, once per run."""
    for kind in ("hub", "tap"):
        try:
            done = subprocess.run([sys.executable, "-m", "virtwire.cli", "serve", kind, "--help"],
                                  capture_output=True, text=True, timeout=30,
                                  stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            return False
        if done.returncode != 0 or "--link-transport" not in done.stdout:
            return False
    return True


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return idle, sum(fields)


async def wait_for_idle(max_wait: float, busy_below: float = 0.1, sample: float = 0.5) -> float:
    """Wait (up to ``max_wait`` s) until the machine's CPU use over ``sample``
    seconds is below ``busy_below``; return the last busy fraction measured.

    Benchmarks on a 2-core machine are meaningless while something else runs.
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + max_wait
    while True:
        i0, t0 = _cpu_times()
        await asyncio.sleep(sample)
        i1, t1 = _cpu_times()
        busy = 1.0 - (i1 - i0) / max(1, t1 - t0)
        if busy < busy_below or loop.time() >= end:
            return busy
        await asyncio.sleep(0.5)


async def run_one(peer: Peer, cfg: LoadConfig) -> LoadResult:
    """Start ``peer``, run one load, stop the peer."""
    async with peer as (a, b):
        return await run_load(a, b, cfg)


@dataclass
class Measured:
    """One load and what the path's processes spent on it."""

    result: LoadResult
    #: CPU seconds of each process of the path over the load.
    cpu_s: dict[str, float]
    #: µs per delivered frame of each process, and their "sum" ({} with no process).
    cpu_us_per_frame: dict[str, float]
    #: {label: {before_kib, peak_kib, after_kib, hwm_kib}} when asked for (rss=True).
    memory: dict[str, dict[str, int]] = field(default_factory=dict)


async def run_measured(peer: Peer, cfg: LoadConfig, rss: bool = False,
                       after: Callable[[Peer], Awaitable[None]] | None = None) -> Measured:
    """:func:`run_one`, reading the CPU time (utime + stime, in ns:
    procstat.cpu_seconds) of every process of the path just before the frames
    start and as soon as the receiver is done (before the peer is stopped),
    and with ``rss`` their resident sets throughout (the load generator is not
    part of the path: not counted). ``after`` is awaited once the load is done,
    before the peer stops (e.g. to read its counters)."""
    async with peer as (a, b):
        procs = peer.path_procs() if isinstance(peer, ProcPeer) else []
        meter = CpuMeter(procs)
        sampler = RssSampler(procs)
        try:
            async with sampler.running() if rss else contextlib.nullcontext(sampler):
                res = await run_load(a, b, cfg, on_go=meter.start, on_done=meter.stop)
        except LoadgenError as exc:
            logs = peer.logs() if isinstance(peer, ProcPeer) else ""
            if logs:
                raise LoadgenError(f"{exc}\n{logs}") from exc
            raise
        if after is not None:
            await after(peer)
    return Measured(res, meter.used_s, meter.per_frame_us(res.received),
                    sampler.as_dict() if rss else {})


async def find_nodrop_rate(
    name: str,
    size: int,
    lo: float = 10_000.0,
    hi: float = 1_000_000.0,
    steps: int = 7,
    trial_s: float = 0.5,
    burst: int = 16,
    timeout: float = 10.0,
) -> tuple[float, LoadResult | None]:
    """Bisect the highest paced rate at which peer ``name`` loses no frame.

    Each trial is a fresh peer and ``trial_s`` seconds of paced load in bursts
    of ``burst``; a trial passes when nothing is lost and the sender really
    offered at least 95% of the rate.  Returns ``(rate, result)``; ``(0.0,
    None)`` if every trial lost frames (the answer is then below ``lo``).
    """
    best: tuple[float, LoadResult | None] = (0.0, None)
    for _ in range(steps):
        rate = (lo * hi) ** 0.5
        count = max(2000, int(rate * trial_s))
        cfg = LoadConfig(size=size, count=count, rate=rate, burst=burst, timeout=timeout, idle=1.0)
        res = await run_one(make_peer(name), cfg)
        ok = res.lost == 0 and res.offered_per_s >= 0.95 * rate
        if ok:
            best = (rate, res)
            lo = rate
        else:
            hi = rate
        if hi / lo < 1.05:
            break
    return best


async def run_matrix(
    peers: list[str],
    sizes: list[int],
    count: int,
    lat_rate: float,
    lat_count: int,
    timeout: float,
    repeat: int = 1,
    wait_idle: float = 0.0,
) -> list[tuple[str, LoadResult | str]]:
    """Every peer x size, throughput then latency; a fresh peer for every run."""
    out: list[tuple[str, LoadResult | str]] = []
    for name in peers:
        for size in sizes:
            cfgs = [LoadConfig(size=size, count=count, timeout=timeout)] * repeat
            if lat_count > 0:
                cfgs.append(LoadConfig(size=size, count=lat_count, rate=lat_rate, timeout=timeout))
            for cfg in cfgs:
                note = ""
                if wait_idle > 0:
                    busy = await wait_for_idle(wait_idle)
                    if busy >= 0.1:
                        note = f" [machine {busy:.0%} busy before the run]"
                try:
                    res: LoadResult | str = await run_one(make_peer(name), cfg)
                except (LoadgenError, PeerError) as exc:
                    mode = "throughput" if cfg.rate is None else "latency"
                    res = f"size={size} {mode} FAILED: {exc}"
                out.append((name, res))
                print(
                    f"{name:9s} {res.summary() if isinstance(res, LoadResult) else res}{note}",
                    flush=True,
                )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False,
                                 description="Run the hub benchmark against reference peers.")
    ap.add_argument(
        "--peers", default="loop,qemu,vde", help=f"comma list of {', '.join(PEER_NAMES)}"
    )
    ap.add_argument("--sizes", default="64,1514", help="comma list of frame sizes")
    ap.add_argument("--count", type=int, default=1_000_000, help="frames per throughput run")
    ap.add_argument("--lat-rate", type=float, default=1000.0, help="latency mode rate, frames/s")
    ap.add_argument("--lat-count", type=int, default=2000, help="frames per latency run (0: skip)")
    ap.add_argument("--timeout", type=float, default=30.0, help="hard deadline per run, s")
    ap.add_argument("--repeat", type=int, default=1, help="throughput runs per peer and size")
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="before each run wait up to S s for an idle CPU",
    )
    ap.add_argument(
        "--nodrop", action="store_true", help="also bisect the no-drop rate of each peer and size"
    )
    ap.add_argument("--json", metavar="FILE", help="also write all results as JSON to FILE")
    a = ap.parse_args(argv)
    peers = [p for p in a.peers.split(",") if p]
    for p in peers:
        if p not in PEER_NAMES:
            ap.error(f"unknown peer {p!r}")
    sizes = [int(x) for x in a.sizes.split(",")]
    t0 = time.monotonic()
    results = asyncio.run(
        run_matrix(peers, sizes, a.count, a.lat_rate, a.lat_count, a.timeout, a.repeat, a.wait_idle)
    )
    if a.nodrop:

        async def nodrop(name: str, size: int) -> tuple[float, LoadResult | None]:
            if a.wait_idle > 0:
                await wait_for_idle(a.wait_idle)
            return await find_nodrop_rate(name, size)

        for name in peers:
            for size in sizes:
                rate, res = asyncio.run(nodrop(name, size))
                text = res.summary() if res is not None else "loses frames even at the lowest rate"
                print(f"{name:9s} no-drop rate ~{rate:,.0f} frames/s: {text}", flush=True)
    print(f"total {time.monotonic() - t0:.1f}s", file=sys.stderr)
    if a.json:
        with open(a.json, "w") as f:
            rows = [
                {"peer": n, **(asdict(r) if isinstance(r, LoadResult) else {"error": r})}
                for n, r in results
            ]
            json.dump(rows, f, indent=1)
    return 0 if all(isinstance(r, LoadResult) for _, r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
