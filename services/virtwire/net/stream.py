"""Stream backend (QEMU's net/stream.c, ``-netdev stream`` / ``-netdev socket``).

Frames travel over a TCP or unix stream socket, each prefixed by its length
as a 4-byte big-endian integer, so a real QEMU joins with
``-netdev stream,server=on|off,addr.type=inet|unix,...``.

- ``listen=True`` (server=on): one connection at a time. While one is up the
  listening socket is not accepted from, so further clients wait in the
  backlog, as in QEMU, and are taken when the current one ends.
- ``listen=False`` (server=off): connect, and after a failure or EOF connect
  again every ``reconnect_seconds`` (QEMU's reconnect=).

Reading (``net_stream_send``): every complete frame of a read goes to the peer
with ``net_stream_send_completed`` as sent_cb; a 0 from the send pauses the
transport (QEMU: read poll off) and keeps the rest of the read until the
callback fires. A length of 0 or above NET_BUFSIZE closes the connection.

Writing (``receive``): frames are coalesced into one transport write per loop
iteration. When the transport's buffer passes its high-water mark, receive
returns 0 (the frame stays queued) until ``resume_writing`` flushes the queue.

While no connection is up the backend's carrier is down (``set_carrier(False,
"backend")``; QEMU sets nc->link_down on EOF): frames from the peer are dropped
and counted in ``stats.dropped_link_down``. Frames are never padded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import struct
from collections.abc import Coroutine, Sequence
from itertools import chain
from typing import Any, Generic, TypeVar, cast

from virtwire.address import SockAddr
from virtwire.errors import BackendError, ConfigError
from virtwire.logfmt import netclient_extra
from virtwire.net.eth import NET_BUFSIZE
from virtwire.net.net import ROOM_ANY, NetClient

logger = logging.getLogger(__name__)

_LEN = struct.Struct(">I")
#: QEMU's reconnect default in virtwire (reconnect_seconds = 0 means this).
DEFAULT_RECONNECT_S = 1.0
#: Transport write buffer limits: above HIGH, receive returns 0 (queued).
WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024
#: Coalesced frames are handed to the transport at least every this many bytes.
WRITE_CHUNK = 64 * 1024
CONNECT_TIMEOUT_S = 10.0
LISTEN_BACKLOG = 1


def resolve_stream_addr(addr: SockAddr, *, passive: bool) -> tuple[int, tuple[str, int]]:
    """(family, sockaddr) of a TCP address; ConfigError if it does not resolve."""
    try:
        infos = socket.getaddrinfo(addr.host, addr.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE if passive else 0)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve {addr}: {exc.strerror}") from exc
    family, _type, _proto, _name, sockaddr = infos[0]
    return family, (str(sockaddr[0]), int(sockaddr[1]))


def claim_unix_path(path: str, sock_type: int = socket.SOCK_STREAM) -> None:
    """Remove a stale socket at ``path``; BackendError if it is live or not a socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise BackendError(f"cannot bind unix:{path}: the path exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, sock_type)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody is bound there: a leftover of an earlier run
    else:
        raise BackendError(f"cannot bind unix:{path}: another process is using it")
    finally:
        probe.close()


def stream_listen_socket(addr: SockAddr) -> socket.socket:
    """A bound, listening, non-blocking socket for ``addr``."""
    if addr.is_unix:
        claim_unix_path(addr.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: str | tuple[str, int] = addr.path
    else:
        family, target = resolve_stream_addr(addr, passive=True)
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(target)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except (OSError, ValueError) as exc:
        sock.close()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise BackendError(f"cannot listen on {addr}: {reason}") from exc
    return sock


ConnT = TypeVar("ConnT", bound=asyncio.Protocol)


class StreamEndpoint(Generic[ConnT]):
    """The socket half the stream netdev and the socket chardev
    (virtwire.net.chardev) share: listen and take one client at a time (the
    next waits in the backlog, as in QEMU), or dial with a timeout; the tasks
    it starts are kept until done, and closing undoes it all.

    Subclasses set the attributes below and say how they log (``label``),
    make a connection (``new_connection``) and count a failed dial."""

    loop: asyncio.AbstractEventLoop
    closed: bool
    last_error: str
    #: The address actually bound (a listen on port 0 gets a real port).
    local_address: SockAddr
    _tasks: set[asyncio.Task[None]]
    _listen_sock: socket.socket | None
    _accepting: bool
    _unix_inode: tuple[int, int] | None

    def label(self) -> str:
        """How logs name it, e.g. "stream NAME"."""
        raise NotImplementedError

    def new_connection(self, remote: str) -> ConnT:
        """The protocol of one connection, to or from ``remote``."""
        raise NotImplementedError

    def count_connect_error(self) -> None:
        """A dial failed."""

    def _init_endpoint(self, addr: SockAddr) -> None:
        self.closed = False
        self.last_error = ""
        self.local_address = addr
        self._tasks = set()
        self._listen_sock = None
        self._accepting = False
        self._unix_inode = None

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = self.loop.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- server=on ----------------------------------------------------------------
    def _listen(self, addr: SockAddr) -> None:
        """Bind and listen on ``addr`` (BackendError, ConfigError), and accept."""
        sock = stream_listen_socket(addr)
        self._listen_sock = sock
        if addr.is_unix:
            st = os.stat(addr.path)
            self._unix_inode = (st.st_dev, st.st_ino)
        else:
            self.local_address = SockAddr(addr.host, int(sock.getsockname()[1]))
        self._accept_poll(True)

    def _accept_poll(self, enable: bool) -> None:
        sock = self._listen_sock
        if sock is None or self.closed or enable == self._accepting:
            return
        self._accepting = enable
        if enable:
            self.loop.add_reader(sock.fileno(), self._accept)
        else:
            self.loop.remove_reader(sock.fileno())

    def _accept(self) -> None:
        assert self._listen_sock is not None
        try:
            csock, raddr = self._listen_sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            logger.warning("%s: accept on %s failed: %s", self.label(), self.local_address,
                           exc.strerror)
            return
        self._accept_poll(False)  # one client at a time: the next waits in the backlog
        csock.setblocking(False)
        remote = f"{raddr[0]}:{raddr[1]}" if isinstance(raddr, tuple) else "unix"
        self._spawn(self._attach_accepted(csock, remote), f"{self.label()} accept")

    async def _attach_accepted(self, csock: socket.socket, remote: str) -> None:
        try:
            await self.loop.connect_accepted_socket(lambda: self.new_connection(remote),
                                                    sock=csock)
        except OSError as exc:
            csock.close()
            logger.warning("%s: connection from %s failed: %s", self.label(), remote, exc)
            self._accept_poll(True)

    # -- server=off ---------------------------------------------------------------
    async def _dial(self, addr: SockAddr, retry_note: str = "") -> ConnT | None:
        """One connection attempt to ``addr``; None (counted, logged once per
        distinct error, ``retry_note`` appended) if it failed."""
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                if addr.is_unix:
                    _, conn = await self.loop.create_unix_connection(
                        lambda: self.new_connection(str(addr)), addr.path)
                else:
                    _, conn = await self.loop.create_connection(
                        lambda: self.new_connection(str(addr)), addr.host, addr.port)
        except (OSError, TimeoutError) as exc:
            error = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            self.count_connect_error()
            if error != self.last_error:
                logger.warning("%s: connect to %s failed: %s%s", self.label(), addr, error,
                               retry_note)
            self.last_error = error
            return None
        return conn

    # -- closing ------------------------------------------------------------------
    def _close_endpoint(self, addr: SockAddr) -> None:
        """Stop accepting and dialling, and remove the unix socket we bound
        (if it is still ours). The caller closes its connection."""
        self._accept_poll(False)
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        if self._listen_sock is not None:
            self._listen_sock.close()
            self._listen_sock = None
        if self._unix_inode is not None:
            with contextlib.suppress(OSError):
                st = os.stat(addr.path)
                if (st.st_dev, st.st_ino) == self._unix_inode:
                    os.unlink(addr.path)


class FramedConnection(asyncio.Protocol):
    """What the stream netdev's and the socket chardev's connections share:
    their state, the end of a connection, and writes gathered into one
    transport write per turn of the loop (or every WRITE_CHUNK bytes)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, remote: str) -> None:
        self.remote = remote
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = loop.create_future()
        self.dead = False
        self._rbuf = bytearray()
        self._wbuf = bytearray()
        self._flush_scheduled = False

    def eof_received(self) -> bool:
        return False  # close our side too

    def _lost(self) -> None:
        """connection_lost's common part: nothing more is read or written."""
        self.dead = True
        self._rbuf.clear()
        self._wbuf.clear()
        if not self.closed.done():
            self.closed.set_result(None)

    def _write(self, loop: asyncio.AbstractEventLoop, data: bytes) -> None:
        if not self._flush_scheduled:
            # The turn's first write leaves at once (a lone frame waits for no
            # other turn of the loop); what follows it in this turn is gathered.
            self._flush_scheduled = True
            loop.call_soon(self._flush_writes)
            if not self._wbuf and not self.dead and self.transport is not None:
                self.transport.write(data)
                return
        self._wbuf += data
        if len(self._wbuf) >= WRITE_CHUNK:
            self._write_out()

    def _flush_writes(self) -> None:
        self._flush_scheduled = False
        self._write_out()

    def _write_out(self) -> None:
        if not self._wbuf or self.dead or self.transport is None:
            return
        data, self._wbuf = self._wbuf, bytearray()
        self.transport.write(data)


class NetStreamConnection(FramedConnection):
    """One connection of a StreamBackend: parses and writes QEMU's framing."""

    def __init__(self, backend: StreamBackend, remote: str) -> None:
        super().__init__(backend.loop, remote)
        self.backend = backend
        #: Waiting for net_stream_send_completed (reading is paused).
        self.waiting = False
        self.write_paused = False

    # -- asyncio.Protocol -------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not subclasses of asyncio.Transport).
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        self.backend.net_stream_connected(self)

    def data_received(self, data: bytes) -> None:
        if self.dead:
            return
        rbuf = self._rbuf
        if rbuf:
            rbuf += data
            if len(rbuf) < 4:
                return
            need = 4 + _LEN.unpack_from(rbuf)[0]
            if len(rbuf) < need <= 4 + NET_BUFSIZE:
                return  # a large frame still arriving: no need to parse yet
            data = bytes(rbuf)
            rbuf.clear()
        self.net_stream_send(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost()
        self.backend.net_stream_disconnected(self, exc)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if not self.dead:
            self.backend.flush_queued_packets()

    # -- socket -> peer ---------------------------------------------------------
    def net_stream_send(self, data: bytes) -> None:
        """Send every complete frame in ``data``, as one batch; keep the rest.

        The peer takes the batch up to the first frame it has to queue; that
        one waits with ``net_stream_send_completed`` as its sent_cb, reading
        pauses, and what follows it stays here until the callback fires.
        """
        unpack = _LEN.unpack_from
        off = 0
        size = len(data)
        frames: list[bytes] = []
        append = frames.append
        bad = -1
        while size - off >= 4:
            (length,) = unpack(data, off)
            if length == 0 or length > NET_BUFSIZE:
                bad = length
                break
            end = off + 4 + length
            if end > size:
                break
            append(data[off + 4:end])
            off = end
        if frames:
            taken = self.backend.send_packets(frames, self.net_stream_send_completed)
            if taken < len(frames):
                self.waiting = True
                if self.transport is not None:
                    self.transport.pause_reading()
                # Keep what follows the frame that was queued.
                off = sum(4 + len(f) for f in frames[:taken + 1])
                bad = -1  # found again when reading resumes
        if bad >= 0:
            self.backend.net_stream_bad_length(self, bad)
            return
        if off < size:
            self._rbuf += data[off:] if off else data

    def net_stream_send_completed(self, _sender: NetClient, _ret: int) -> None:
        """The frame that paused reading left the peer's queue: read again, soon."""
        if self.waiting and not self.dead:
            self.backend.loop.call_soon(self._resume_reading)

    def _resume_reading(self) -> None:
        if not self.waiting or self.dead:
            return
        self.waiting = False
        if self._rbuf:
            data = bytes(self._rbuf)
            self._rbuf.clear()
            self.net_stream_send(data)
        if not self.waiting and not self.dead and self.transport is not None:
            self.transport.resume_reading()

    # -- peer -> socket ---------------------------------------------------------
    def write_frame(self, data: bytes) -> None:
        self.write_frames((data,))

    def write_frames(self, frames: Sequence[bytes]) -> None:
        """``write_frame`` for a batch."""
        # One copy of each frame: the prefixes and frames joined in one go.
        self._write(self.backend.loop, b"".join(chain.from_iterable(
            zip(map(_LEN.pack, map(len, frames)), frames, strict=True))))

    def close(self) -> None:
        if self.transport is not None and not self.dead:
            self._write_out()
            self.transport.close()


class StreamBackend(NetClient, StreamEndpoint[NetStreamConnection]):
    """QEMU's NetStreamState: frames over a length-prefixed stream socket."""

    kind = "stream"
    #: Frames read from outside the LAN start their trace here (docs/tracing.md).
    ingress_span = "tap.read"

    def __init__(self, name: str, addr: SockAddr, *, listen: bool,
                 reconnect_seconds: float = DEFAULT_RECONNECT_S) -> None:
        super().__init__(name)
        self.loop = asyncio.get_running_loop()
        self.addr = addr
        self.listen = listen
        self.reconnect_seconds = reconnect_seconds or DEFAULT_RECONNECT_S
        self.conn: NetStreamConnection | None = None
        self.connected = asyncio.Event()
        self._init_endpoint(addr)
        #: Backend counters beyond NetClientStats.
        self.connects = 0
        self.disconnects = 0
        self.connect_errors = 0
        self.bad_lengths = 0
        self.set_carrier(False, "backend")
        if listen:
            self._listen(addr)
            logger.info("stream %s: listening on %s", name, self.local_address)
        else:
            self._spawn(self._connect_loop(), f"stream-connect {name}")

    def label(self) -> str:
        return f"stream {self.name}"

    def new_connection(self, remote: str) -> NetStreamConnection:
        return NetStreamConnection(self, remote)

    def count_connect_error(self) -> None:
        self.connect_errors += 1

    async def _connect_loop(self) -> None:
        """server=off: connect, and again every reconnect_seconds after a failure or EOF."""
        while not self.closed:
            conn = await self._dial(self.addr, f"; retrying every {self.reconnect_seconds:g}s")
            if conn is not None:
                await conn.closed
            await asyncio.sleep(self.reconnect_seconds)

    # -- connection events -------------------------------------------------------
    def net_stream_connected(self, conn: NetStreamConnection) -> None:
        if self.closed or self.conn is not None:
            conn.dead = True
            if conn.transport is not None:
                conn.transport.abort()
            return
        self.conn = conn
        self.connects += 1
        self.last_error = ""
        self.connected.set()
        self.set_carrier(True, "backend")
        logger.info("stream %s: %s %s", self.name,
                    "connection from" if self.listen else "connected to", conn.remote)
        self.flush_queued_packets()

    def net_stream_disconnected(self, conn: NetStreamConnection, exc: Exception | None) -> None:
        if self.conn is not conn:
            return
        self.conn = None
        self.disconnects += 1
        self.connected.clear()
        reason = f": {exc}" if exc is not None else ""
        if exc is not None:
            self.last_error = str(exc)
        if not self.closed:
            logger.warning("stream %s: %s disconnected%s", self.name, conn.remote, reason,
                           extra=netclient_extra(self.name))
        self.set_carrier(False, "backend")
        # What waited for the socket is dropped now (the link is down).
        self.flush_queued_packets()
        self._accept_poll(True)

    def net_stream_bad_length(self, conn: NetStreamConnection, length: int) -> None:
        """A frame length of 0 or above NET_BUFSIZE: drop the connection, as QEMU does."""
        self.bad_lengths += 1
        self.stats.dropped_malformed += 1
        self.last_error = f"bad frame length {length}"
        logger.warning("stream %s: frame length %d from %s is invalid (0 or > %d); "
                       "closing the connection", self.name, length, conn.remote, NET_BUFSIZE)
        conn.dead = True
        if conn.transport is not None:
            conn.transport.abort()

    async def wait_connected(self) -> None:
        await self.connected.wait()

    # -- NetClientInfo --------------------------------------------------------------
    def receive(self, data: bytes) -> int:
        conn = self.conn
        if conn is None:  # link_down normally drops it before receive
            self.stats.dropped_link_down += 1
            return len(data)
        if conn.write_paused:
            return 0
        conn.write_frame(data)
        return len(data)

    def deliver_packets(self, sender: NetClient, frames: Sequence[bytes],
                        recheck: bool = False) -> int:
        """``receive`` for a batch: one write into the connection's buffer (the
        transport's write buffer is checked only as it is handed over, as when
        frames come one by one within a turn)."""
        conn = self.conn
        if conn is None or conn.write_paused or not self.batch_fast(frames):
            return super().deliver_packets(sender, frames, recheck)
        conn.write_frames(frames)
        stats = self.stats
        stats.rx_frames += len(frames)
        stats.rx_bytes += sum(map(len, frames))
        return len(frames)

    def can_receive(self) -> bool:
        conn = self.conn
        return conn is None or not conn.write_paused

    def receive_room(self) -> int:
        """Any batch while we can receive: ``deliver_packets`` puts it in the
        connection's buffer whole, and the transport's high-water mark is
        checked as it is handed over (passed by one batch at most). So a hub
        forwards a read's frames to a stream port in one run, not one by one."""
        return ROOM_ANY if self.can_receive_packet() else 0

    def cleanup(self) -> None:
        if self.closed:
            return
        self._close_endpoint(self.addr)
        conn = self.conn
        if conn is not None:
            conn.close()
        logger.info("stream %s: closed", self.name)

    def describe(self) -> str:
        if self.listen:
            parts = [f"listen={self.local_address}"]
        else:
            parts = [f"connect={self.addr}", f"reconnect={self.reconnect_seconds:g}"]
        conn = self.conn
        parts.append(f"connected={conn.remote}" if conn is not None else "disconnected")
        if conn is not None and conn.waiting:
            parts.append("paused")
        if self.bad_lengths:
            parts.append(f"bad_lengths={self.bad_lengths}")
        if self.last_error and conn is None:
            parts.append(f"last_error={self.last_error!r}")
        return " ".join(parts)


__all__ = ["DEFAULT_RECONNECT_S", "FramedConnection", "NetStreamConnection", "StreamBackend",
           "StreamEndpoint", "claim_unix_path", "stream_listen_socket"]
