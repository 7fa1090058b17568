#!/usr/bin/env python3
"""Frame load generator for hub benchmarks (QEMU ``-netdev stream`` framing).

The system under test (SUT) is a hub with at least two ports.  The load
generator sends ``count`` Ethernet frames of ``size`` bytes into port A and
receives them at port B, then reports throughput, loss and one-way latency.

Wire framings (``Endpoint.framing``)
------------------------------------
``len32``  QEMU ``-netdev stream`` / ``-netdev socket``: every frame is
           prefixed by its length as a 4-byte big-endian integer, over a unix
           or TCP stream socket.  This is the default.
``len16``  libvdeplug's ``vdestream`` (``vde_plug`` stdin/stdout): the same
           idea with a 2-byte big-endian length (verified against vdeplug4
           4.0.1: 64-byte frames arrive as ``00 40 ...``).
``dgram``  one frame per datagram, no prefix: the native data channel of
           ``vde_switch`` (``vde:DIR`` endpoints, see ``_open_vde``).

Endpoint specs (CLI and ``Endpoint.parse``)
-------------------------------------------
``[len16:|len32:|dgram:][listen:]ADDRESS`` where ADDRESS is one of
``unix:/path`` (or a bare ``/path``), ``tcp:host:port`` (or ``host:port``),
``vde:/switch/dir`` (libvdeplug v3 protocol, connect only) or ``fd:N`` (an
inherited, already connected or listening socket; ``dgram:fd:N`` for a
connected datagram socket).  ``listen:`` means "I listen
and the SUT connects to me"; without it the load generator connects.

Frames
------
``dst 02:00:00:00:00:0b | src 02:00:00:00:00:0a | ethertype 0x88B5 (local
experimental) | magic u32 | run id u32 | seq u64 | send time u64 ns | zero
padding`` (all big-endian).  ``size`` counts the Ethernet frame as carried on
the wire framing, without FCS and without the length prefix; it must be at
least 38.  Probe frames (magic ``VWPR``) are sent before the measured run
until one comes out of B, so that connection set-up inside the SUT never
counts as loss; frames of other runs or other protocols are counted as
``foreign`` and otherwise ignored.

Measurement
-----------
The sender and the receiver each run in their own process (this file
re-executed with ``--worker``), so neither steals the other's GIL and both use
plain blocking sockets.  Times are ``time.perf_counter_ns()``, which on Linux
is ``CLOCK_MONOTONIC`` and so comparable across processes.

* throughput mode (``rate=None``): frames are packed ``batch_bytes`` at a time
  with one ``struct.pack_into`` call and written with one ``send``; every
  frame of a batch carries the time at which the batch was handed to the
  kernel, so latency figures in this mode include queueing (the batch and the
  SUT's buffers).
* latency mode (``rate=R``): one frame per ``send`` (``burst`` frames with
  ``burst > 1``), paced at R frames/s on an absolute schedule, each send
  stamped just before it is made.  With a high R and a burst this also serves
  to find the highest rate a lossy SUT forwards without loss.

The receiver parses whole buffers with ``struct.iter_unpack`` (C speed) and
only falls back to a per-frame loop when a buffer holds a foreign frame or an
out-of-order sequence.  Latency is measured when ``recv`` returns the buffer
holding the frame.

``frames/s = received / (last receive - first send)``; ``Mbit/s`` counts the
Ethernet frame bytes (``size``) only, not the length prefix; ``offered`` is
``sent / sending time`` (below the target rate, or far above ``frames/s``,
means the SUT pushed back or dropped).  ``send_cpu_s``/``recv_cpu_s`` are the
workers' CPU time during the run: a receiver near 100% of ``elapsed`` means
the figure is bounded by the load generator (or, on a 2-core machine, by the
machine), not by the SUT.  Everything is bounded: a hard deadline
(``timeout``, default 30 s) for the whole run, and the receiver stops waiting
after ``idle`` seconds (default 1.5 s) without a frame once frames have
started flowing.

Python API::

    result = await run_load(Endpoint.parse("unix:/tmp/a"), Endpoint.parse("unix:/tmp/b"),
                            LoadConfig(size=64, count=1_000_000))
    print(result.summary())

CLI::

    python bench/loadgen.py --send unix:/path/a --recv unix:/path/b --size 64 --count 200000
    python bench/loadgen.py --send vde:/tmp/sw --recv vde:/tmp/sw --size 64 --count 2000 --rate 1000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import select
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal

Framing = Literal["len32", "len16", "dgram"]
Kind = Literal["unix", "tcp", "vde", "fd"]

ETHERTYPE: Final = 0x88B5
DST_MAC: Final = bytes.fromhex("02000000000b")
SRC_MAC: Final = bytes.fromhex("02000000000a")
MAGIC_DATA: Final = 0x56574C47  # "VWLG"
MAGIC_PROBE: Final = 0x56575052  # "VWPR"
MIN_FRAME: Final = 38  # 14 Ethernet header + magic, run, seq, timestamp
MAX_FRAME: Final = 65535
_PREFIX_LEN: Final[dict[str, int]] = {"len32": 4, "len16": 2, "dgram": 0}
_PREFIX_FMT: Final[dict[str, str]] = {"len32": "I", "len16": "H", "dgram": ""}

# libvdeplug / vde_switch control protocol (request_v3)
_VDE_SWITCH_MAGIC: Final = 0xFEEDFACE
_VDE_REQ_NEW_CONTROL: Final = 0
_SOCKADDR_UN_LEN: Final = 110  # sizeof(struct sockaddr_un) on Linux


class LoadgenError(RuntimeError):
    """The load generator could not run (endpoint, worker or SUT failure)."""


# --------------------------------------------------------------------------
# Endpoints
# --------------------------------------------------------------------------


@dataclass
class Endpoint:
    """One port of the SUT, as seen by the load generator.

    ``sock`` optionally holds an already opened socket (connected, or bound and
    listening); it is handed to the worker process by file descriptor.  Use
    :meth:`bind` for "the SUT connects to me" endpoints, so that the listening
    socket exists before the SUT is started.
    """

    kind: Kind
    address: str = ""
    listen: bool = False
    framing: Framing = "len32"
    sock: socket.socket | None = field(default=None, compare=False, repr=False)

    @classmethod
    def parse(cls, spec: str) -> Endpoint:
        """Parse ``[len16:|len32:|dgram:][listen:]ADDRESS`` (see module docstring)."""
        framing: Framing = "len32"
        listen = False
        rest = spec
        while True:
            head, sep, tail = rest.partition(":")
            if not sep:
                break
            if head == "len16":
                framing = "len16"
            elif head == "len32":
                framing = "len32"
            elif head == "dgram":
                framing = "dgram"
            elif head == "listen":
                listen = True
            else:
                break
            rest = tail
        head, sep, tail = rest.partition(":")
        if sep and head == "unix":
            return cls("unix", tail, listen, framing)
        if sep and head == "tcp":
            return cls("tcp", tail, listen, framing)
        if sep and head == "vde":
            if listen:
                raise ValueError(f"vde endpoints cannot listen: {spec!r}")
            return cls("vde", tail, False, "dgram")
        if sep and head == "fd":
            return cls("fd", tail, listen, framing)
        if rest.startswith("/") or rest.startswith("."):
            return cls("unix", rest, listen, framing)
        if rest.startswith("[") or (sep and tail.isdigit()):
            return cls("tcp", rest, listen, framing)
        raise ValueError(f"cannot parse endpoint {spec!r}")

    @classmethod
    def from_socket(cls, sock: socket.socket, framing: Framing = "len32") -> Endpoint:
        """An endpoint for an already connected (or listening) stream socket."""
        return cls("fd", str(sock.fileno()), False, framing, sock)

    @classmethod
    def bind(cls, spec: str, backlog: int = 1) -> Endpoint:
        """Parse ``spec`` and create its listening socket now."""
        ep = cls.parse(spec)
        ep.listen = True
        ep.sock = _listen_socket(ep, backlog)
        return ep

    def spec(self) -> str:
        """The textual spec of this endpoint (round-trips through parse)."""
        prefix = ""
        if self.framing != "len32" and self.kind != "vde":
            prefix = self.framing + ":"
        if self.listen:
            prefix += "listen:"
        return f"{prefix}{self.kind}:{self.address}"

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            if self.kind == "unix" and self.listen:
                try:
                    os.unlink(self.address)
                except OSError:
                    pass

    def __str__(self) -> str:
        return self.spec()


def _split_hostport(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def _listen_socket(ep: Endpoint, backlog: int = 1) -> socket.socket:
    if ep.kind == "unix":
        try:
            os.unlink(ep.address)
        except FileNotFoundError:
            pass
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(ep.address)
    elif ep.kind == "tcp":
        host, port = _split_hostport(ep.address)
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
    else:
        raise LoadgenError(f"cannot listen on a {ep.kind} endpoint")
    s.listen(backlog)
    return s


# --------------------------------------------------------------------------
# Configuration and results
# --------------------------------------------------------------------------


@dataclass
class LoadConfig:
    """What to send.  ``rate=None`` is throughput mode, a number is latency mode."""

    size: int = 64
    count: int = 200_000
    rate: float | None = None
    timeout: float = 30.0
    idle: float = 1.5
    connect_timeout: float = 10.0
    batch_bytes: int = 64 * 1024
    burst: int = 1  # latency mode: frames per send (one timestamp per burst)

    def validate(self) -> None:
        if not MIN_FRAME <= self.size <= MAX_FRAME:
            raise ValueError(f"size must be in [{MIN_FRAME}, {MAX_FRAME}]")
        if self.count < 1:
            raise ValueError("count must be >= 1")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be > 0")
        if self.burst < 1:
            raise ValueError("burst must be >= 1")
        if self.timeout <= 0 or self.idle <= 0:
            raise ValueError("timeout and idle must be > 0")


@dataclass
class LoadResult:
    """Figures of one run.  Times in seconds, latencies in microseconds."""

    mode: str
    size: int
    count: int
    sent: int
    received: int
    lost: int
    duplicates: int
    reordered: int
    foreign: int
    elapsed_s: float
    send_s: float
    offered_per_s: float
    frames_per_s: float
    mbit_per_s: float
    send_cpu_s: float
    recv_cpu_s: float
    lat_p50_us: float | None
    lat_p90_us: float | None
    lat_p99_us: float | None
    lat_max_us: float | None
    lat_min_us: float | None
    rate: float | None = None
    send_error: str | None = None
    recv_error: str | None = None

    def summary(self) -> str:
        def us(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f}"

        text = (
            f"{self.mode} size={self.size} sent={self.sent} received={self.received} "
            f"lost={self.lost} elapsed={self.elapsed_s:.3f}s offered={self.offered_per_s:,.0f}/s "
            f"{self.frames_per_s:,.0f} frames/s {self.mbit_per_s:,.1f} Mbit/s "
            f"latency p50={us(self.lat_p50_us)}us p99={us(self.lat_p99_us)}us "
            f"max={us(self.lat_max_us)}us"
        )
        if self.elapsed_s > 0:
            text += (
                f" loadgen-cpu send={self.send_cpu_s / self.elapsed_s:.0%}"
                f" recv={self.recv_cpu_s / self.elapsed_s:.0%}"
            )
        if self.duplicates or self.reordered or self.foreign:
            text += f" dup={self.duplicates} reordered={self.reordered} foreign={self.foreign}"
        for err in (self.send_error, self.recv_error):
            if err:
                text += f" [{err}]"
        return text


# --------------------------------------------------------------------------
# Worker side: opening sockets
# --------------------------------------------------------------------------


class _Conn:
    """A worker's open endpoint: the data socket and anything to keep alive."""

    def __init__(self, data: socket.socket, keep: list[socket.socket]) -> None:
        self.data = data
        self.keep = keep

    def close(self) -> None:
        for s in [self.data, *self.keep]:
            try:
                s.close()
            except OSError:
                pass


def _accept(lsock: socket.socket, deadline_ns: int) -> socket.socket:
    remaining = max(0.0, (deadline_ns - time.perf_counter_ns()) / 1e9)
    ready, _, _ = select.select([lsock], [], [], remaining)
    if not ready:
        raise LoadgenError("timed out waiting for the SUT to connect")
    conn, _ = lsock.accept()
    conn.setblocking(True)
    return conn


def _connect_retry(ep: Endpoint, deadline_ns: int) -> socket.socket:
    last: Exception | None = None
    while time.perf_counter_ns() < deadline_ns:
        try:
            if ep.kind == "unix":
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.connect(ep.address)
                except OSError:
                    s.close()
                    raise
                return s
            host, port = _split_hostport(ep.address)
            return socket.create_connection((host, port), timeout=2.0)
        except (FileNotFoundError, ConnectionRefusedError, TimeoutError) as exc:
            last = exc
            time.sleep(0.02)
    raise LoadgenError(f"could not connect to {ep.spec()}: {last}")


def _open_vde(switch_dir: str, descr: str) -> _Conn:
    """Attach to a vde_switch as libvdeplug's ``vde`` module does.

    Connect a stream socket to ``DIR/ctl``, bind a datagram socket, send a
    ``request_v3`` (magic 0xfeedface, version 3, REQ_NEW_CONTROL, our datagram
    address, description), read back the switch's datagram address for the new
    port and connect to it.  Frames are then plain datagrams.  The control
    connection must stay open: closing it frees the port.
    """
    real_dir = os.path.realpath(switch_dir)
    ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    data = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        ctl.connect(os.path.join(real_dir, "ctl"))
        for i in range(1000):
            mine = os.path.join(real_dir, f".lg{os.getpid():05d}-{i:05d}")
            try:
                data.bind(mine)
                break
            except OSError:
                continue
        else:
            raise LoadgenError("cannot bind a vde data socket")
        path = mine.encode()
        if len(path) >= _SOCKADDR_UN_LEN - 2:
            raise LoadgenError(f"vde socket path too long: {mine}")
        sockaddr = struct.pack("=H108s", socket.AF_UNIX, path)
        req = struct.pack("=III", _VDE_SWITCH_MAGIC, 3, _VDE_REQ_NEW_CONTROL)
        ctl.sendall(req + sockaddr + descr.encode() + b"\0")
        reply = ctl.recv(_SOCKADDR_UN_LEN)
        if len(reply) < 3:
            raise LoadgenError("vde_switch refused the connection")
        port_path = reply[2:].split(b"\0", 1)[0].decode()
        data.connect(port_path)
        os.unlink(mine)
    except BaseException:
        ctl.close()
        data.close()
        raise
    return _Conn(data, [ctl])


def _open(ep: Endpoint, fd: int | None, deadline_ns: int, descr: str) -> _Conn:
    if fd is not None:
        s = socket.socket(fileno=fd)
        if s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            conn = _accept(s, deadline_ns)
            s.close()
            s = conn
        s.setblocking(True)
        data = s
        keep: list[socket.socket] = []
    elif ep.kind == "vde":
        c = _open_vde(ep.address, descr)
        data, keep = c.data, c.keep
    elif ep.listen:
        lsock = _listen_socket(ep)
        try:
            data = _accept(lsock, deadline_ns)
        finally:
            lsock.close()
        keep = []
    else:
        data = _connect_retry(ep, deadline_ns)
        keep = []
    data.setblocking(True)
    if data.family in (socket.AF_INET, socket.AF_INET6):
        data.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return _Conn(data, keep)


def _set_timeouts(sock: socket.socket, seconds: float) -> None:
    """Kernel-side SO_RCVTIMEO/SO_SNDTIMEO: one syscall per recv/send, no poll."""
    sec = int(seconds)
    tv = struct.pack("ll", sec, int((seconds - sec) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)


def _emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _stdin_line(timeout: float) -> str | None:
    """One control line from the parent, '' on EOF, None if none in time."""
    ready, _, _ = select.select([0], [], [], max(0.0, timeout))
    if not ready:
        return None
    data = os.read(0, 256)
    return data.decode(errors="replace").strip() if data else ""


# --------------------------------------------------------------------------
# Worker side: frames
# --------------------------------------------------------------------------


def _record_struct(framing: str, size: int, nrec: int) -> struct.Struct:
    """Struct packing ``nrec`` complete records (prefix + frame)."""
    pad = size - MIN_FRAME
    one = _PREFIX_FMT[framing] + "6s6sHIIQQ" + (f"{pad}x" if pad else "")
    return struct.Struct(">" + one * nrec)


def _record_args(framing: str, size: int, magic: int, run_id: int, nrec: int) -> list[Any]:
    one: list[Any] = [DST_MAC, SRC_MAC, ETHERTYPE, magic, run_id, 0, 0]
    if framing != "dgram":
        one.insert(0, size)
    return one * nrec


def _drain(sock: socket.socket, junk: bytearray) -> None:
    """Discard whatever the SUT sends back on the sending port."""
    try:
        while sock.recv_into(junk, 0, socket.MSG_DONTWAIT) > 0:
            pass
    except (BlockingIOError, InterruptedError):
        pass
    except OSError:
        pass


def _send_all(sock: socket.socket, mv: memoryview, deadline_ns: int) -> int:
    """Send ``mv`` on a stream socket; return the bytes sent (short on deadline)."""
    off = 0
    end = len(mv)
    while off < end:
        try:
            off += sock.send(mv[off:end])
        except (BlockingIOError, InterruptedError):
            if time.perf_counter_ns() >= deadline_ns:
                break
    return off


def _send_dgrams(sock: socket.socket, mv: memoryview, size: int, deadline_ns: int) -> int:
    """Send ``mv`` as consecutive datagrams of ``size``; return frames sent."""
    n = 0
    for off in range(0, len(mv), size):
        while True:
            try:
                sock.send(mv[off : off + size])
                break
            except (BlockingIOError, InterruptedError):
                if time.perf_counter_ns() >= deadline_ns:
                    return n
            except ConnectionRefusedError:
                break  # receiver side of the switch went away: frame lost
        n += 1
    return n


def _worker_send(cfg: dict[str, Any]) -> None:
    ep = Endpoint.parse(cfg["endpoint"])
    framing: str = ep.framing
    size: int = cfg["size"]
    count: int = cfg["count"]
    rate: float | None = cfg["rate"]
    run_id: int = cfg["run_id"]
    deadline_ns: int = cfg["deadline_ns"]
    connect_deadline_ns: int = cfg["connect_deadline_ns"]
    send_deadline_ns: int = cfg["send_deadline_ns"]
    conn = _open(ep, cfg["fd"], connect_deadline_ns, "loadgen-send")
    sock = conn.data
    _set_timeouts(sock, 0.2)
    junk = bytearray(65536)
    prefix = _PREFIX_LEN[framing]
    rec_len = prefix + size
    dgram = framing == "dgram"
    _emit("OPEN")

    # Probe until the parent says GO (the receiver saw a probe).
    probe_st = _record_struct(framing, size, 1)
    probe_args = _record_args(framing, size, MAGIC_PROBE, run_id, 1)
    probe = bytearray(probe_st.size)
    seqi = 5 if dgram else 6  # index of seq in one record's args
    tsi = seqi + 1
    nprobe = 0
    while True:
        probe_args[seqi] = nprobe
        probe_args[tsi] = time.perf_counter_ns()
        probe_st.pack_into(probe, 0, *probe_args)
        try:
            if dgram:
                sock.send(probe)
            else:
                _send_all(sock, memoryview(probe), connect_deadline_ns)
        except (BlockingIOError, ConnectionRefusedError):
            pass
        nprobe += 1
        _drain(sock, junk)
        line = _stdin_line(0.01)
        if line == "GO":
            break
        if line == "" or time.perf_counter_ns() >= connect_deadline_ns:
            _emit("RESULT " + json.dumps({"sent": 0, "error": "no probe came through the SUT"}))
            conn.close()
            return

    sent = 0
    error: str | None = None
    t_first = 0
    if rate is None:
        nrec = max(1, min(count, cfg["batch_bytes"] // rec_len))
    else:
        nrec = max(1, min(count, int(cfg["burst"])))
    st = _record_struct(framing, size, nrec)
    args = _record_args(framing, size, MAGIC_DATA, run_id, nrec)
    stride = len(args) // nrec
    buf = bytearray(st.size)
    mv = memoryview(buf)
    perf = time.perf_counter_ns
    ns_per_frame = 0.0 if rate is None else 1e9 / rate
    cpu0 = time.process_time()
    t_first = perf()
    seq = 0
    try:
        while seq < count:
            n = min(nrec, count - seq)
            if n != nrec:
                nrec = n
                st = _record_struct(framing, size, n)
                args = args[: stride * n]
                buf = bytearray(st.size)
                mv = memoryview(buf)
            if ns_per_frame:
                due = t_first + int(seq * ns_per_frame)
                now = perf()
                if due > now:
                    time.sleep((due - now) / 1e9)
            args[seqi::stride] = range(seq, seq + n)
            now = perf()
            if now >= send_deadline_ns:
                error = "send deadline reached"
                break
            args[tsi::stride] = [now] * n
            st.pack_into(buf, 0, *args)
            if dgram:
                done = _send_dgrams(sock, mv, size, send_deadline_ns)
            else:
                done = _send_all(sock, mv, send_deadline_ns) // rec_len
            sent += done
            seq += n
            if done < n:
                error = "send deadline reached (SUT not draining)"
                break
            _drain(sock, junk)
    except OSError as exc:
        error = f"send failed: {exc}"
    t_last = perf()
    cpu = time.process_time() - cpu0
    _emit(
        "RESULT "
        + json.dumps(
            {"sent": sent, "t_first": t_first, "t_last": t_last, "cpu": cpu, "error": error}
        )
    )
    # Keep the port open until the receiver is done: closing could make the
    # SUT drop frames still queued for it (or reset a TCP connection).
    while time.perf_counter_ns() < deadline_ns:
        _drain(sock, junk)
        line = _stdin_line(0.05)
        if line is not None:
            break
    conn.close()


class _Receiver:
    """Receiver state: sequence bitmap, latency samples, counters."""

    def __init__(self, size: int, count: int, run_id: int) -> None:
        self.size = size
        self.count = count
        self.run_id = run_id
        self.seen = bytearray(count)
        self.unique = 0
        self.dups = 0
        self.reordered = 0
        self.foreign = 0
        self.probes = 0
        self.max_seq = -1
        self.cpu0 = 0.0  # process time when the first probe arrived
        self.t_first = 0
        self.t_last = 0
        # (receive time, send timestamps of the frames in that receive)
        self.samples: list[tuple[int, tuple[int, ...] | list[int]]] = []
        self.frame = struct.Struct(">12xHIIQQ")

    def mark(self, seq: int) -> None:
        if 0 <= seq < self.count:
            if self.seen[seq]:
                self.dups += 1
            else:
                self.seen[seq] = 1
                self.unique += 1
            if seq < self.max_seq:
                self.reordered += 1
            else:
                self.max_seq = seq

    def mark_run(self, first: int, n: int) -> None:
        """Mark ``first .. first+n-1`` (known to be in range and ascending)."""
        d = self.seen.count(1, first, first + n)
        self.seen[first : first + n] = b"\x01" * n
        self.dups += d
        self.unique += n - d
        if first < self.max_seq:
            self.reordered += 1
        self.max_seq = max(self.max_seq, first + n - 1)

    def frame_in(self, frame: memoryview, now: int) -> None:
        """Slow path: one frame (without prefix)."""
        if len(frame) < MIN_FRAME:
            self.foreign += 1
            return
        et, magic, run, seq, ts = self.frame.unpack_from(frame)
        if et != ETHERTYPE or run != self.run_id:
            self.foreign += 1
        elif magic == MAGIC_DATA:
            if not self.t_first:
                self.t_first = now
            self.t_last = now
            self.mark(seq)
            self.samples.append((now, [ts]))
        elif magic == MAGIC_PROBE:
            self.probes += 1
        else:
            self.foreign += 1

    def latencies(self) -> dict[str, float | None]:
        lat: list[int] = []
        for now, tss in self.samples:
            lat.extend([now - t for t in tss])
        if not lat:
            return {"p50": None, "p90": None, "p99": None, "max": None, "min": None}
        lat.sort()
        n = len(lat)

        def pct(p: float) -> float:
            # nearest rank
            k = max(0, min(n - 1, int(-(-p * n // 100)) - 1))
            return lat[k] / 1000.0

        return {
            "p50": pct(50),
            "p90": pct(90),
            "p99": pct(99),
            "max": lat[-1] / 1000.0,
            "min": lat[0] / 1000.0,
        }


def _worker_recv(cfg: dict[str, Any]) -> None:
    ep = Endpoint.parse(cfg["endpoint"])
    framing: str = ep.framing
    size: int = cfg["size"]
    count: int = cfg["count"]
    run_id: int = cfg["run_id"]
    idle_ns = int(cfg["idle"] * 1e9)
    deadline_ns: int = cfg["deadline_ns"]
    connect_deadline_ns: int = cfg["connect_deadline_ns"]
    conn = _open(ep, cfg["fd"], connect_deadline_ns, "loadgen-recv")
    sock = conn.data
    _set_timeouts(sock, 0.1)

    _emit("OPEN")
    st = _Receiver(size, count, run_id)
    error: str | None = None
    try:
        if framing == "dgram":
            _recv_dgram(sock, st, idle_ns, connect_deadline_ns, deadline_ns)
        else:
            _recv_stream(sock, st, framing, idle_ns, connect_deadline_ns, deadline_ns)
    except _Stop as stop:
        error = stop.reason
    except OSError as exc:
        error = f"recv failed: {exc}"
    cpu = time.process_time() - st.cpu0 if st.cpu0 else 0.0
    result = {
        "cpu": cpu,
        "received": st.unique,
        "duplicates": st.dups,
        "reordered": st.reordered,
        "foreign": st.foreign,
        "probes": st.probes,
        "t_first": st.t_first,
        "t_last": st.t_last,
        "latency_us": st.latencies(),
        "error": error,
    }
    _emit("RESULT " + json.dumps(result))
    conn.close()


class _Stop(Exception):
    def __init__(self, reason: str | None) -> None:
        super().__init__(reason)
        self.reason = reason


def _check_stop(
    st: _Receiver, now: int, idle_ns: int, connect_deadline_ns: int, deadline_ns: int
) -> None:
    if st.unique >= st.count:
        raise _Stop(None)
    if now >= deadline_ns:
        raise _Stop("deadline reached")
    if st.t_last:
        if now - st.t_last >= idle_ns:
            raise _Stop(None)  # stragglers: give up silently, loss is reported
    elif st.probes and now >= connect_deadline_ns + idle_ns:
        raise _Stop("no data frame arrived")
    elif not st.probes and now >= connect_deadline_ns:
        raise _Stop("no probe frame arrived")


def _recv_dgram(
    sock: socket.socket, st: _Receiver, idle_ns: int, cdl: int, deadline_ns: int
) -> None:
    buf = bytearray(MAX_FRAME + 1)
    mv = memoryview(buf)
    perf = time.perf_counter_ns
    unpack = st.frame.unpack_from
    recv_into = sock.recv_into
    seen = st.seen
    count = st.count
    run_id = st.run_id
    samples = st.samples
    announced = False
    while True:
        try:
            n = recv_into(buf)
        except (BlockingIOError, InterruptedError):
            _check_stop(st, perf(), idle_ns, cdl, deadline_ns)
            continue
        now = perf()
        if n >= MIN_FRAME:
            et, magic, run, seq, ts = unpack(buf)
            if (
                magic == MAGIC_DATA
                and run == run_id
                and et == ETHERTYPE
                and 0 <= seq < count
                and seq > st.max_seq
            ):
                # fast path: in order, in range
                if not st.t_first:
                    st.t_first = now
                st.t_last = now
                st.max_seq = seq
                if seen[seq]:
                    st.dups += 1
                else:
                    seen[seq] = 1
                    st.unique += 1
                samples.append((now, (ts,)))
                if st.unique >= count:
                    return
                continue
        st.frame_in(mv[:n], now)
        if st.probes and not announced:
            announced = True
            st.cpu0 = time.process_time()
            _emit("PROBE")
        _check_stop(st, now, idle_ns, cdl, deadline_ns)


def _recv_stream(
    sock: socket.socket, st: _Receiver, framing: str, idle_ns: int, cdl: int, deadline_ns: int
) -> None:
    size = st.size
    plen = _PREFIX_LEN[framing]
    rec_len = plen + size
    pad = size - MIN_FRAME
    rec = struct.Struct(">" + _PREFIX_FMT[framing] + "12xHIIQQ" + (f"{pad}x" if pad else ""))
    iter_unpack = rec.iter_unpack
    prefix_unpack = struct.Struct(">" + _PREFIX_FMT[framing]).unpack_from
    bufsize = max(4 << 20, 64 * rec_len, 2 * (MAX_FRAME + plen))
    buf = bytearray(bufsize)
    mv = memoryview(buf)
    head = tail = 0
    perf = time.perf_counter_ns
    recv_into = sock.recv_into
    count = st.count
    run_id = st.run_id
    samples = st.samples
    announced = False
    min_space = max(256 * 1024, 2 * (MAX_FRAME + plen))
    while True:
        if bufsize - tail < min_space:
            left = tail - head
            buf[:left] = buf[head:tail]
            head, tail = 0, left
        try:
            n = recv_into(mv[tail:])
        except (BlockingIOError, InterruptedError):
            _check_stop(st, perf(), idle_ns, cdl, deadline_ns)
            continue
        now = perf()
        if n == 0:
            raise _Stop("SUT closed the connection")
        tail += n
        k = (tail - head) // rec_len
        if k:
            cols = list(zip(*iter_unpack(mv[head : head + k * rec_len]), strict=True))
            seqs = cols[4]
            first = seqs[0]
            if (
                cols[2].count(MAGIC_DATA) == k
                and cols[0].count(size) == k
                and cols[1].count(ETHERTYPE) == k
                and cols[3].count(run_id) == k
                and first > st.max_seq
                and first + k <= count
                and seqs[-1] == first + k - 1
                and seqs == tuple(range(first, first + k))
            ):
                st.mark_run(first, k)
                samples.append((now, cols[5]))
                if not st.t_first:
                    st.t_first = now
                st.t_last = now
                head += k * rec_len
            else:
                # slow path: frame by frame over every complete record
                while tail - head >= plen:
                    (flen,) = prefix_unpack(buf, head)
                    if tail - head < plen + flen:
                        break
                    st.frame_in(mv[head + plen : head + plen + flen], now)
                    head += plen + flen
                if st.probes and not announced:
                    announced = True
                    st.cpu0 = time.process_time()
                    _emit("PROBE")
        if st.unique >= count:
            return
        _check_stop(st, now, idle_ns, cdl, deadline_ns)


# --------------------------------------------------------------------------
# Parent side
# --------------------------------------------------------------------------


class _Worker:
    def __init__(self, role: str, proc: asyncio.subprocess.Process) -> None:
        self.role = role
        self.proc = proc

    async def line(self, prefix: str, timeout: float) -> str:
        """Wait for a stdout line starting with ``prefix``; return the rest."""
        _, rest = await self.line_any((prefix,), timeout)
        return rest

    async def line_any(self, prefixes: tuple[str, ...], timeout: float) -> tuple[str, str]:
        """Wait for a stdout line starting with one of ``prefixes``."""
        prefix = "|".join(prefixes)
        assert self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        end = loop.time() + max(0.0, timeout)
        while True:
            remaining = end - loop.time()
            if remaining <= 0:
                raise LoadgenError(f"{self.role} worker: timed out waiting for {prefix}")
            try:
                raw = await asyncio.wait_for(self.proc.stdout.readline(), remaining)
            except TimeoutError:
                raise LoadgenError(f"{self.role} worker: timed out waiting for {prefix}") from None
            if not raw:
                err = await self._stderr()
                raise LoadgenError(f"{self.role} worker exited before {prefix}: {err}")
            text = raw.decode(errors="replace").rstrip("\n")
            for p in prefixes:
                if text.startswith(p):
                    return p, text[len(p) :].strip()

    async def _stderr(self) -> str:
        assert self.proc.stderr is not None
        try:
            await asyncio.wait_for(self.proc.wait(), 1.0)
            data = await asyncio.wait_for(self.proc.stderr.read(), 1.0)
        except TimeoutError:
            return "(no stderr)"
        return data.decode(errors="replace").strip()[-2000:]

    def tell(self, text: str) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            try:
                self.proc.stdin.write((text + "\n").encode())
            except (BrokenPipeError, ConnectionResetError):
                pass

    async def finish(self, timeout: float) -> None:
        if self.proc.returncode is None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def _spawn(role: str, ep: Endpoint, base: dict[str, Any]) -> _Worker:
    cfg = dict(base)
    cfg["role"] = role
    cfg["endpoint"] = ep.spec()
    fds: tuple[int, ...] = ()
    cfg["fd"] = None
    if ep.sock is not None:
        cfg["fd"] = ep.sock.fileno()
        fds = (ep.sock.fileno(),)
    elif ep.kind == "fd":
        cfg["fd"] = int(ep.address)
        fds = (int(ep.address),)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        json.dumps(cfg),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        pass_fds=fds,
    )
    return _Worker(role, proc)


async def run_load(
    send: Endpoint,
    recv: Endpoint,
    cfg: LoadConfig,
    on_go: Callable[[], None] | None = None,
    on_done: Callable[[], None] | None = None,
) -> LoadResult:
    """Send ``cfg.count`` frames into ``send`` and receive them at ``recv``.

    Bounded by ``cfg.timeout`` seconds in all.  Raises :class:`LoadgenError` if
    the endpoints cannot be opened or no probe frame crosses the SUT.
    ``on_go`` is called just before the measured frames start (after the
    probes), ``on_done`` as soon as the receiver has reported (e.g. to read
    the SUT's CPU time over exactly the load).
    """
    cfg.validate()
    t0 = time.perf_counter_ns()
    deadline_ns = t0 + int(cfg.timeout * 1e9)
    connect_deadline_ns = t0 + int(min(cfg.connect_timeout, cfg.timeout / 2) * 1e9)
    # leave the receiver its idle window (and a little slack) before the deadline
    send_deadline_ns = deadline_ns - int((cfg.idle + 0.5) * 1e9)
    idle = cfg.idle
    if cfg.rate is not None:
        idle = max(idle, 3.0 / cfg.rate)
    base = {
        "size": cfg.size,
        "count": cfg.count,
        "rate": cfg.rate,
        "idle": idle,
        "run_id": random.getrandbits(32),
        "batch_bytes": cfg.batch_bytes,
        "burst": cfg.burst,
        "deadline_ns": deadline_ns,
        "connect_deadline_ns": connect_deadline_ns,
        "send_deadline_ns": send_deadline_ns,
    }
    total = cfg.timeout
    workers: list[_Worker] = []
    try:
        receiver = await _spawn("recv", recv, base)
        workers.append(receiver)
        sender = await _spawn("send", send, base)
        workers.append(sender)
        setup = cfg.connect_timeout + 1.0
        await receiver.line("OPEN", setup)
        await sender.line("OPEN", setup)
        what, rest = await receiver.line_any(("PROBE", "RESULT"), setup)
        if what == "RESULT":
            err = json.loads(rest).get("error")
            raise LoadgenError(
                f"no frame crossed the SUT ({err}; is another client attached to its port?)"
            )
        if on_go is not None:
            on_go()
        sender.tell("GO")
        left = total - (time.perf_counter_ns() - t0) / 1e9 + 2.0
        srep = json.loads(await sender.line("RESULT", left))
        left = total - (time.perf_counter_ns() - t0) / 1e9 + 2.0
        rrep = json.loads(await receiver.line("RESULT", left))
        if on_done is not None:
            on_done()
        sender.tell("STOP")
    finally:
        for w in workers:
            await w.finish(2.0)

    sent = int(srep["sent"])
    received = int(rrep["received"])
    t_first = int(srep.get("t_first") or 0)
    t_last_rx = int(rrep["t_last"] or 0)
    elapsed = (t_last_rx - t_first) / 1e9 if received and t_first else 0.0
    fps = received / elapsed if elapsed > 0 else 0.0
    lat = rrep["latency_us"]
    send_s = (int(srep.get("t_last") or 0) - t_first) / 1e9 if t_first else 0.0
    return LoadResult(
        mode="throughput" if cfg.rate is None else "latency",
        size=cfg.size,
        count=cfg.count,
        sent=sent,
        received=received,
        lost=max(0, sent - received),
        duplicates=int(rrep["duplicates"]),
        reordered=int(rrep["reordered"]),
        foreign=int(rrep["foreign"]),
        elapsed_s=elapsed,
        send_s=send_s,
        send_cpu_s=float(srep.get("cpu") or 0.0),
        recv_cpu_s=float(rrep.get("cpu") or 0.0),
        offered_per_s=sent / send_s if send_s > 0 else 0.0,
        frames_per_s=fps,
        mbit_per_s=fps * cfg.size * 8 / 1e6,
        lat_p50_us=lat["p50"],
        lat_p90_us=lat["p90"],
        lat_p99_us=lat["p99"],
        lat_max_us=lat["max"],
        lat_min_us=lat["min"],
        rate=cfg.rate,
        send_error=srep.get("error"),
        recv_error=rrep.get("error"),
    )


def run_load_sync(send: Endpoint, recv: Endpoint, cfg: LoadConfig) -> LoadResult:
    """Blocking wrapper around :func:`run_load`."""
    return asyncio.run(run_load(send, recv, cfg))


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def _worker_main(cfg_json: str) -> int:
    cfg: dict[str, Any] = json.loads(cfg_json)
    # short-lived, no reference cycles: a full collection over a million
    # latency samples would stall the receiver for milliseconds
    gc.disable()
    try:
        if cfg["role"] == "send":
            _worker_send(cfg)
        else:
            _worker_recv(cfg)
    except (LoadgenError, OSError) as exc:
        sys.stderr.write(f"loadgen {cfg['role']} worker: {exc}\n")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if len(args_list) == 2 and args_list[0] == "--worker":
        return _worker_main(args_list[1])
    ap = argparse.ArgumentParser(allow_abbrev=False,
                                 description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--send", required=True, help="endpoint A (frames go in here)")
    ap.add_argument("--recv", required=True, help="endpoint B (frames come out here)")
    ap.add_argument("--size", type=int, default=64, help="Ethernet frame size, bytes (default 64)")
    ap.add_argument("--count", type=int, default=200_000, help="frames to send (default 200000)")
    ap.add_argument("--rate", type=float, default=None, help="latency mode: pace at RATE frames/s")
    ap.add_argument("--burst", type=int, default=1, help="latency mode: frames per send")
    ap.add_argument("--timeout", type=float, default=30.0, help="hard deadline, s (default 30)")
    ap.add_argument("--idle", type=float, default=1.5, help="stop after this much silence, s")
    ap.add_argument(
        "--batch-bytes", type=int, default=64 * 1024, help="bytes per send in throughput mode"
    )
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    a = ap.parse_args(args_list)
    cfg = LoadConfig(
        size=a.size,
        count=a.count,
        rate=a.rate,
        timeout=a.timeout,
        idle=a.idle,
        batch_bytes=a.batch_bytes,
        burst=a.burst,
    )
    send = Endpoint.parse(a.send)
    recv = Endpoint.parse(a.recv)
    for ep in (send, recv):
        if ep.listen and ep.sock is None and ep.kind != "fd":
            ep.sock = _listen_socket(ep)
            sys.stderr.write(f"listening on {ep.spec()}\n")
    try:
        result = run_load_sync(send, recv, cfg)
    except LoadgenError as exc:
        sys.stderr.write(f"loadgen: {exc}\n")
        return 2
    finally:
        send.close()
        recv.close()
    print(json.dumps(asdict(result)) if a.json else result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
