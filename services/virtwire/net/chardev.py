"""Chardevs for the mirror and redirector filters (QEMU's ``-chardev socket``).

A service gets its chardevs from its own command line only, never from an
RPC: ``--chardev socket,id=ID,host=H,port=P[,server=on|off][,wait=on|off]
[,reconnect=S]`` or ``--chardev socket,id=ID,path=/x.sock[,...]``, QEMU's
syntax (``ChardevSpec.parse``). Filters name them by id; ``open_chardevs``
opens a service's set and ``Chardev.close`` closes one.

- ``server=on``: listen on exactly the address given (there is no default
  host; port 0 picks a free port, see ``local_address``) or unix path. One
  client at a time, as QEMU: while one is connected the others wait in the
  backlog. ``wait=on`` (QEMU's default for a server) makes ``open`` wait for
  the first client; ``wait=off`` does not.
- ``server=off`` (default): connect. With ``reconnect=S`` (default 1 s;
  virtwire's default, QEMU has none) the connection is dialled in the
  background and again S seconds after every failure or disconnect; with
  ``reconnect=0`` it is dialled once, at open (a failure fails the open, as
  QEMU's startup does), and never again.

Framing is the filters' (QEMU's net_fill_rstate): each frame is a 4-byte
big-endian length then the bytes; with ``vnet_hdr`` (the filters'
``vnet_hdr_support``) a 4-byte vnet header length comes between them.
virtwire's frames carry no vnet header, so it writes 0 there and takes only
0: a frame that declares a vnet header is malformed. Frames read are handed
to the reader's callback whole; a length of 0, above NET_BUFSIZE, or a
nonzero vnet header length closes the connection and is counted in
``stats.bad_frames`` (a client then reconnects).

Writes are coalesced into one transport write per turn of the event loop
and bounded: a frame that would take the connection's buffered output past
``WRITE_BUFFER_MAX`` is dropped and counted (``dropped_slow_reader``), as is
one written while no connection is up (``dropped_not_connected``). Reading
hands at most ``READ_SLICE`` frames to the callback per turn of the loop.
While no callback is set, input waits in the socket (as a QEMU chardev
without a read handler), except on a chardev whose filter only writes to
it (a mirror's or redirector's outdev): there what arrives is read and
dropped (``bytes_discarded``), so that a hangup is seen and a client
redials at once. Like QEMU's, a chardev serves one filter.
See docs/filters.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from virtwire.address import SockAddr, parse_sockaddr
from virtwire.errors import BackendError, ConfigError
from virtwire.net.eth import NET_BUFSIZE
from virtwire.net.stream import FramedConnection, StreamEndpoint

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_CHARDEVS",
    "READ_SLICE",
    "WRITE_BUFFER_MAX",
    "Chardev",
    "ChardevSpec",
    "ChardevStats",
    "FrameHandler",
    "close_chardevs",
    "lookup_chardev",
    "open_chardevs",
    "parse_bool",
]

#: Chardevs one service takes.
MAX_CHARDEVS = 64
#: Longest ``--chardev`` text.
MAX_SPEC_CHARS = 1024
#: Output a connection may have buffered (ours and the transport's) before
#: frames are dropped as dropped_slow_reader.
WRITE_BUFFER_MAX = 1 << 20
#: Frames handed to the reader per turn of the event loop.
READ_SLICE = 256
DEFAULT_RECONNECT_S = 1.0
MAX_RECONNECT_S = 3600.0
CONNECT_TIMEOUT_S = 10.0
#: sun_path holds 108 bytes with the terminating NUL.
_UNIX_PATH_MAX = 107

_ID_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
_LEN = struct.Struct(">I")
_LEN2 = struct.Struct(">II")
_BOOLS = {"on": True, "yes": True, "true": True, "off": False, "no": False, "false": False}
_KEYS = ("id", "host", "port", "path", "server", "wait", "reconnect")

#: The reader's callback: one whole frame.
FrameHandler = Callable[[bytes], None]


def _bool(text: str, key: str, what: str) -> bool:
    try:
        return _BOOLS[text]
    except KeyError:
        raise ConfigError(f"{what}: {key}={text[:16]!r} is not on or off") from None


def parse_bool(what: str, key: str, text: str) -> bool:
    """A QEMU boolean property (on/off, yes/no, true/false); ConfigError if not."""
    return _bool(text, key, what)


@dataclass(frozen=True)
class ChardevSpec:
    """One ``--chardev``: a socket chardev's id, address and mode."""

    id: str
    addr: SockAddr
    server: bool = False
    #: server=on: ``open`` waits for the first client.
    wait: bool = True
    #: server=off: seconds between dials; 0 dials once, at open.
    reconnect: float = DEFAULT_RECONNECT_S

    @classmethod
    def parse(cls, text: str) -> ChardevSpec:
        """QEMU's ``-chardev socket,id=ID,...`` text; ConfigError if bad."""
        what = f"--chardev {text[:80]!r}"
        if len(text) > MAX_SPEC_CHARS:
            raise ConfigError(f"--chardev: {len(text)} characters, more than {MAX_SPEC_CHARS}")
        backend, _, rest = text.partition(",")
        if backend != "socket":
            raise ConfigError(f"{what}: the backend must be socket (e.g. socket,id=c0,"
                              "host=127.0.0.1,port=4444,server=on,wait=off or "
                              "socket,id=c0,path=/run/c0.sock)")
        items: dict[str, str] = {}
        for part in rest.split(",") if rest else []:
            key, eq, value = part.partition("=")
            if not eq:  # QEMU's short booleans: server, nowait
                key, value = {"server": ("server", "on"), "nowait": ("wait", "off"),
                              "wait": ("wait", "on")}.get(part, (part, ""))
                if not value:
                    raise ConfigError(f"{what}: {part[:32]!r} is not KEY=VALUE")
            if key not in _KEYS:
                raise ConfigError(f"{what}: unknown option {key[:32]!r}; a socket chardev "
                                  f"takes {', '.join(_KEYS)}")
            if key in items:
                raise ConfigError(f"{what}: {key} given twice")
            items[key] = value
        cid = items.get("id", "")
        if not _ID_RE.fullmatch(cid):
            raise ConfigError(f"{what}: id= is required: 1-64 letters, digits, '-', '_' or "
                              "'.', starting with a letter")
        server = _bool(items["server"], "server", what) if "server" in items else False
        if "path" in items:
            if "host" in items or "port" in items:
                raise ConfigError(f"{what}: give path= or host= and port=, not both")
            path = items["path"]
            if not path or "\0" in path or len(os.fsencode(path)) > _UNIX_PATH_MAX:
                raise ConfigError(f"{what}: path= must be a unix socket path of 1.."
                                  f"{_UNIX_PATH_MAX} bytes")
            addr = SockAddr(path=path)
        else:
            if not items.get("host") or not items.get("port"):
                raise ConfigError(f"{what}: give host= and port= (a server listens only "
                                  "on the host given) or path=")
            host = items["host"]
            text_addr = f"[{host}]:{items['port']}" if ":" in host else f"{host}:{items['port']}"
            addr = parse_sockaddr(text_addr, allow_unix=False, allow_port_zero=server)
        wait = True
        if "wait" in items:
            if not server:
                raise ConfigError(f"{what}: wait= is for server=on only")
            wait = _bool(items["wait"], "wait", what)
        reconnect = DEFAULT_RECONNECT_S
        if "reconnect" in items:
            if server:
                raise ConfigError(f"{what}: reconnect= is for server=off only")
            try:
                reconnect = float(items["reconnect"])
            except ValueError:
                raise ConfigError(f"{what}: reconnect={items['reconnect'][:16]!r} is not a "
                                  "number of seconds") from None
            if not (reconnect == 0 or 0.01 <= reconnect <= MAX_RECONNECT_S):
                raise ConfigError(f"{what}: reconnect={items['reconnect']} is out of range "
                                  f"(0, or 0.01..{MAX_RECONNECT_S:g} seconds)")
        return cls(id=cid, addr=addr, server=server, wait=wait, reconnect=reconnect)

    def format(self) -> str:
        """The text ``parse`` reads back."""
        a = self.addr
        parts = ["socket", f"id={self.id}"]
        parts += [f"path={a.path}"] if a.is_unix else [f"host={a.host}", f"port={a.port}"]
        if self.server:
            parts += ["server=on", f"wait={'on' if self.wait else 'off'}"]
        elif self.reconnect != DEFAULT_RECONNECT_S:
            parts.append(f"reconnect={self.reconnect:g}")
        return ",".join(parts)


@dataclass
class ChardevStats:
    """Counters of one chardev."""

    frames_out: int = 0
    bytes_out: int = 0
    frames_in: int = 0
    bytes_in: int = 0
    #: Frames written while no connection was up.
    dropped_not_connected: int = 0
    #: Frames written while the connection's output was full.
    dropped_slow_reader: int = 0
    #: Bytes read and dropped: they came to a chardev whose user only writes.
    bytes_discarded: int = 0
    #: Connections closed for a malformed length (0, > NET_BUFSIZE, a vnet header).
    bad_frames: int = 0
    connects: int = 0
    disconnects: int = 0
    connect_errors: int = 0


class _Connection(FramedConnection):
    """One connection of a Chardev: QEMU's framing both ways."""

    def __init__(self, chardev: Chardev, remote: str) -> None:
        super().__init__(chardev.loop, remote)
        self.chardev = chardev
        self.read_paused = False
        self._drain_scheduled = False

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.chardev._connected(self)

    def data_received(self, data: bytes) -> None:
        if self.dead:
            return
        self._rbuf += data
        self._drain()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost()
        self.chardev._disconnected(self, exc)

    # -- reading -----------------------------------------------------------------------
    def _pause(self, paused: bool) -> None:
        if paused != self.read_paused and self.transport is not None and not self.dead:
            self.read_paused = paused
            if paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def schedule_drain(self) -> None:
        if not self._drain_scheduled and not self.dead:
            self._drain_scheduled = True
            self.chardev.loop.call_soon(self._scheduled_drain)

    def _scheduled_drain(self) -> None:
        self._drain_scheduled = False
        self._drain()

    def _drain(self) -> None:
        """Hand up to READ_SLICE complete frames to the reader; keep the rest."""
        chardev = self.chardev
        handler = chardev.handler
        if self.dead:
            return
        if handler is None:
            if chardev.discard_input:
                chardev.stats.bytes_discarded += len(self._rbuf)
                self._rbuf.clear()
                self._pause(False)
            else:
                self._pause(True)
            return
        rbuf = self._rbuf
        vnet = chardev.vnet_hdr
        hlen = 8 if vnet else 4
        stats = chardev.stats
        off = 0
        n = 0
        bad = ""
        while n < READ_SLICE and len(rbuf) - off >= hlen:
            if vnet:
                length, vnet_len = _LEN2.unpack_from(rbuf, off)
                if vnet_len:
                    bad = f"vnet header length {vnet_len} (only 0 is supported)"
                    break
            else:
                (length,) = _LEN.unpack_from(rbuf, off)
            if length == 0 or length > NET_BUFSIZE:
                bad = f"frame length {length} (0 or above {NET_BUFSIZE})"
                break
            end = off + hlen + length
            if end > len(rbuf):
                break
            frame = bytes(rbuf[off + hlen:end])
            off = end
            n += 1
            stats.frames_in += 1
            stats.bytes_in += length
            handler(frame)
            if self.dead or chardev.handler is not handler:
                break
        if self.dead:
            return
        del rbuf[:off]
        if bad:
            chardev._bad_frame(self, bad)
            return
        if chardev.handler is None:
            self._drain()  # held or discarded, as the chardev's user wants
        elif n == READ_SLICE:
            # More may be complete: let the loop run, then go on.
            self._pause(True)
            self.schedule_drain()
        else:
            self._pause(False)

    # -- writing -------------------------------------------------------------------------
    def buffered(self) -> int:
        transport = self.transport
        return len(self._wbuf) + (transport.get_write_buffer_size() if transport else 0)

    def write(self, record: bytes) -> None:
        self._write(self.chardev.loop, record)

    def close(self, abort: bool = False) -> None:
        if self.transport is not None and not self.dead:
            if abort:
                self.dead = True
                self.transport.abort()
            else:
                self._write_out()
                self.transport.close()


class Chardev(StreamEndpoint[_Connection]):
    """A socket chardev (QEMU's char-socket) that carries frames; its socket
    half (listen, accept, dial, close) is the stream netdev's."""

    def __init__(self, spec: ChardevSpec) -> None:
        self.spec = spec
        self.id = spec.id
        self.loop = asyncio.get_running_loop()
        self.stats = ChardevStats()
        self.conn: _Connection | None = None
        self.connected = asyncio.Event()
        self._init_endpoint(spec.addr)
        #: The filter using it, and its name (one at a time, as a QEMU
        #: chardev's frontend).
        self.owner: object | None = None
        self.user = ""
        self.vnet_hdr = False
        #: Read and drop what arrives while no handler is set (a writer's chardev).
        self.discard_input = False
        #: The reader's callback, or None (reading stops).
        self.handler: FrameHandler | None = None

    def __repr__(self) -> str:
        return f"<Chardev {self.id} {self.describe()}>"

    # -- opening -------------------------------------------------------------------------
    async def open(self) -> None:
        """Listen or connect, as the spec says (BackendError if that fails)."""
        spec = self.spec
        if spec.server:
            self._listen(spec.addr)
            if spec.wait:
                logger.info("chardev %s: waiting for a connection on %s (wait=off does "
                            "not wait)", self.id, self.local_address)
                await self.connected.wait()
            else:
                logger.info("chardev %s: listening on %s", self.id, self.local_address)
        elif spec.reconnect == 0:
            if await self._dial(spec.addr) is None:
                raise BackendError(f"chardev {self.id}: cannot connect to {spec.addr}: "
                                   f"{self.last_error} (reconnect=S dials in the background)")
        else:
            self._spawn(self._connect_loop(), f"chardev-connect {self.id}")

    def label(self) -> str:
        return f"chardev {self.id}"

    def new_connection(self, remote: str) -> _Connection:
        return _Connection(self, remote)

    def count_connect_error(self) -> None:
        self.stats.connect_errors += 1

    async def _connect_loop(self) -> None:
        while not self.closed:
            conn = await self._dial(self.spec.addr)
            if conn is not None:
                await conn.closed
            await asyncio.sleep(self.spec.reconnect)

    # -- connection events ---------------------------------------------------------------------
    def _connected(self, conn: _Connection) -> None:
        if self.closed or self.conn is not None:
            conn.close(abort=True)
            return
        self.conn = conn
        self.stats.connects += 1
        self.last_error = ""
        self.connected.set()
        logger.info("chardev %s: %s %s", self.id,
                    "connection from" if self.spec.server else "connected to", conn.remote)
        if self.handler is None and not self.discard_input:
            conn._pause(True)

    def _disconnected(self, conn: _Connection, exc: Exception | None) -> None:
        if self.conn is not conn:
            return
        self.conn = None
        self.stats.disconnects += 1
        self.connected.clear()
        if exc is not None:
            self.last_error = str(exc)
        if not self.closed:
            logger.info("chardev %s: %s disconnected%s", self.id, conn.remote,
                        f": {exc}" if exc is not None else "")
        self._accept_poll(True)

    def _bad_frame(self, conn: _Connection, reason: str) -> None:
        self.stats.bad_frames += 1
        self.last_error = f"bad {reason}"
        logger.warning("chardev %s: %s from %s; closing the connection", self.id, reason,
                       conn.remote)
        conn.close(abort=True)

    async def wait_connected(self) -> None:
        await self.connected.wait()

    # -- the filter's side ----------------------------------------------------------------------
    def check_free(self, owner: object, name: str) -> None:
        """ConfigError unless filter ``owner`` (called ``name``) may use this chardev."""
        if self.closed:
            raise ConfigError(f"filter {name}: chardev {self.id} is closed")
        if self.owner is not None and self.owner is not owner:
            raise ConfigError(f"filter {name}: chardev {self.id} is in use by filter "
                              f"{self.user}; a chardev serves one filter")

    def claim(self, owner: object, name: str, *, vnet_hdr: bool = False,
              reads: bool = True) -> None:
        """Let filter ``owner`` use this chardev (ConfigError if another does).
        A user that only writes (``reads`` False) has what arrives read and
        discarded, so a hangup is seen at once; otherwise input waits in the
        socket until a frame handler is set."""
        self.check_free(owner, name)
        self.owner = owner
        self.user = name
        self.vnet_hdr = vnet_hdr
        self.discard_input = not reads
        conn = self.conn
        if conn is not None and self.handler is None:
            conn.schedule_drain()

    def unclaim(self, owner: object) -> None:
        if self.owner is owner:
            self.owner = None
            self.user = ""
            self.discard_input = False
            self.set_frame_handler(None)

    def set_frame_handler(self, handler: FrameHandler | None) -> None:
        """Start (a callback) or stop (None) handing frames read to a reader."""
        self.handler = handler
        conn = self.conn
        if conn is not None:
            if handler is None and not self.discard_input:
                conn._pause(True)
            else:
                conn.schedule_drain()

    def write_frame(self, data: bytes) -> str | None:
        """Queue one frame for the socket: None, or why it was dropped
        ("not_connected", "slow_reader"; both counted)."""
        conn = self.conn
        stats = self.stats
        if conn is None or conn.dead:
            stats.dropped_not_connected += 1
            return "not_connected"
        header = (_LEN2.pack(len(data), 0) if self.vnet_hdr else _LEN.pack(len(data)))
        if conn.buffered() + len(header) + len(data) > WRITE_BUFFER_MAX:
            stats.dropped_slow_reader += 1
            return "slow_reader"
        conn.write(header + data)
        stats.frames_out += 1
        stats.bytes_out += len(data)
        return None

    # -- closing ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop listening and dialling; close the connection (what is queued is sent)."""
        if self.closed:
            return
        self._close_endpoint(self.spec.addr)
        self.handler = None
        if self.conn is not None:
            self.conn.close()
        logger.info("chardev %s: closed", self.id)

    async def wait_closed(self) -> None:
        """After ``close``: its tasks and connection are gone."""
        tasks = list(self._tasks)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        conn = self.conn
        if conn is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    await conn.closed

    def describe(self) -> str:
        spec = self.spec
        parts = [f"listen={self.local_address}" if spec.server else f"connect={spec.addr}"]
        conn = self.conn
        parts.append(f"connected={conn.remote}" if conn is not None else "disconnected")
        if self.user:
            parts.append(f"user={self.user}")
        if self.last_error and conn is None:
            parts.append(f"last_error={self.last_error!r}")
        return " ".join(parts)

    def counters(self) -> dict[str, int]:
        s = self.stats
        return {"frames_out": s.frames_out, "bytes_out": s.bytes_out, "frames_in": s.frames_in,
                "bytes_in": s.bytes_in, "dropped_not_connected": s.dropped_not_connected,
                "dropped_slow_reader": s.dropped_slow_reader, "bad_frames": s.bad_frames,
                "bytes_discarded": s.bytes_discarded,
                "connects": s.connects, "disconnects": s.disconnects,
                "connect_errors": s.connect_errors}


def lookup_chardev(chardevs: Mapping[str, Any], cid: str, what: str) -> Chardev:
    """The chardev ``cid`` of a FilterContext, or ConfigError naming what there is."""
    chardev = chardevs.get(cid)
    if not isinstance(chardev, Chardev):
        have = ", ".join(sorted(chardevs)) or "none"
        raise ConfigError(f"{what}: no chardev {cid[:64]!r} (this service has {have}; "
                          "chardevs come from its --chardev options)")
    return chardev


async def open_chardevs(specs: Iterable[ChardevSpec]) -> dict[str, Chardev]:
    """Open a service's chardevs, in order; on any error close those opened and
    raise (ConfigError for a bad set, BackendError for a socket)."""
    specs = list(specs)
    if len(specs) > MAX_CHARDEVS:
        raise ConfigError(f"--chardev: {len(specs)} chardevs, more than {MAX_CHARDEVS}")
    seen: set[str] = set()
    for spec in specs:
        if spec.id in seen:
            raise ConfigError(f"--chardev: id {spec.id!r} given twice")
        seen.add(spec.id)
    opened: dict[str, Chardev] = {}
    try:
        for spec in specs:
            chardev = Chardev(spec)
            opened[spec.id] = chardev
            await chardev.open()
    except BaseException:
        await close_chardevs(opened)
        raise
    return opened


async def close_chardevs(chardevs: Mapping[str, Chardev]) -> None:
    """Close every chardev and wait until each is closed."""
    for chardev in chardevs.values():
        chardev.close()
    for chardev in chardevs.values():
        await chardev.wait_closed()
