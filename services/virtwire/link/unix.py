"""The same-host link transport: batches over a unix socket the hello announces.

When both ends of a link run on one kernel (equal boot ids, the check the
guestmem fast path makes) the server's LinkWelcome may offer the name of an
abstract unix socket it listens on and a one-time token. The dialler
connects, presents the token, and gets one byte back when it was accepted.
From then on both sides carry their batches (frames, completion requests,
completions, credits and readiness: the same ``Batch`` as on the Connect
stream) as ``codec`` records on that socket, while the Connect stream stays
open as the session: when either ends, the link is down.

Why a socket and not a shared-memory ring: a ring needs a doorbell anyway, a
socket is a ring with the kernel's doorbell, its EOF is link-down, and a
hostile peer cannot change what we already read.

Nothing here opens a path: an abstract socket lives in the network
namespace, not the filesystem, and its name must match ``SOCKET_NAME_RE``.
Where the two ends are in different namespaces (containers), the connect
fails and the link stays on the Connect stream. Anyone in the namespace can
connect, but only the holder of a token, which travels on the authenticated
Connect stream, gets a link; at most ``MAX_PENDING_OFFERS`` tokens and
``MAX_HANDSHAKES`` unauthenticated connections exist at once, and a connection
that does not present a valid token within ``HANDSHAKE_TIMEOUT_S`` is closed
(all counted).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from virtwire.errors import LimitError, UnavailableError
from virtwire.link import codec
from virtwire.link.peer import READY_POLL_S, Batch, LinkPeer

logger = logging.getLogger(__name__)

TOKEN_BYTES = 32
#: The one byte the listener answers a valid token with.
ACK = b"\x01"
SOCKET_NAME_RE = re.compile(r"virtwire-link-[0-9a-f]{32}")
MAX_PENDING_OFFERS = 256
MAX_HANDSHAKES = 64
HANDSHAKE_TIMEOUT_S = 5.0
#: Parsed batches a stream holds for its reader before it stops reading.
MAX_PARSED = 64
#: Time one read callback may spend on its records: a read full of tiny
#: records stops there, reading pauses, and the rest goes on next turn.
RECEIVE_SLICE_S = 0.005
SOCKET_BUFFER = 1 << 20
#: Frame bytes per record: a record then mostly arrives in one read (asyncio
#: reads up to 256 KiB), so it is parsed where it lands, not reassembled.
RECORD_BYTES = 128 * 1024

#: Streams kicked while a stream's data_received runs: their writes happen as
#: it returns, in the same wake-up, instead of a turn of the loop later.
_dispatch: list[UnixLinkStream] | None = None


class Dispatching:
    """``with Dispatching():`` streams kicked inside write as it ends, in the
    same wake-up, as they do inside a stream's data_received (for other
    callbacks that hand frames to links, e.g. a NIC's MMIO write). Nests."""

    def __init__(self) -> None:
        self.owner = False

    def __enter__(self) -> None:
        global _dispatch
        if _dispatch is None:
            self.owner = True
            _dispatch = []

    def __exit__(self, *exc: object) -> None:
        global _dispatch
        if self.owner:
            kicked, _dispatch = _dispatch or [], None
            _pump_all(kicked)


def _pump_all(kicked: list[UnixLinkStream]) -> None:
    """Write for every stream kicked during a dispatch; one that fails is
    closed (its link goes down) and does not keep the others from writing."""
    for stream in kicked:
        try:
            stream._pump()
        except Exception:
            logger.exception("same-host link: writing failed; closing its socket")
            stream._pump_scheduled = False
            if stream.transport is not None:
                stream.transport.abort()


def check_socket_name(name: str) -> str:
    """``name`` if it is a name ``FastPathListener`` gives its sockets, else LimitError."""
    if SOCKET_NAME_RE.fullmatch(name) is None:
        raise LimitError(f"refusing a fast-path socket name {name[:80]!r}")
    return name


def _tune(sock: socket.socket) -> None:
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        except OSError:  # pragma: no cover - a kernel limit; defaults work too
            pass


class UnixLinkStream(asyncio.Protocol):
    """One end of a same-host link.

    It can be pulled as the Connect stream's end is (``read_batch`` /
    ``write_batch``), but a session binds it to its LinkPeer instead
    (``bind``): records arriving are handed to ``on_batch`` inside
    ``data_received``, and what the peer has to send is written from one
    callback per turn of the event loop, with no reader or writer task. Each
    frame thus crosses a process in one wake-up.
    """

    def __init__(self, expect_ack: bool = False) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        #: Bytes the record at the head of ``_buf`` needs in all (0: unknown).
        self._need = 0
        self._batches: collections.deque[Batch] = collections.deque()
        self._reading_paused = False
        #: A read cut at RECEIVE_SLICE_S: reading paused until the rest is done.
        self._sliced = False
        self._wakeup: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._closed = False
        self.error: LimitError | None = None
        #: ``error`` is a bad record not yet counted in a peer's protocol_errors.
        self._uncounted = False
        #: The LinkPeer bound to (push mode), or None.
        self.peer: LinkPeer | None = None
        #: Called once, after the first batch from the remote (push mode).
        self.on_first_batch: Callable[[], None] | None = None
        self._pump_scheduled = False
        self._ready_poll: asyncio.TimerHandle | None = None
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        #: The dialler's side waits for the listener's one-byte answer first.
        self.acked: asyncio.Future[bool] | None = (
            asyncio.get_running_loop().create_future() if expect_ack else None)

    # -- asyncio.Protocol ---------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not subclasses of asyncio.Transport).
        transport = cast(asyncio.Transport, transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.acked is not None and not self.acked.done():
            self.acked.set_result(data[:1] == ACK)
            data = data[1:]
            if not data:
                return
        with Dispatching():
            self._receive(data)

    def _receive(self, data: bytes) -> None:
        buf = self._buf
        if buf:
            buf += data
            if len(buf) < self._need:
                return
            data = bytes(buf)
            buf.clear()
        self._need = 0
        pos = 0
        size = len(data)
        header = codec.HEADER.size
        deadline = time.perf_counter() + RECEIVE_SLICE_S
        count = 0
        while size - pos >= header:
            count += 1
            if count & 15 == 0 and time.perf_counter() >= deadline:
                self._slice()
                break
            try:
                end = pos + header + codec.body_length(data, pos)
                if end > size:
                    self._need = end - pos
                    break
                batch, pos = codec.decode(data, pos)
            except LimitError as exc:
                self._bad_record(exc)
                return
            if self.peer is not None:
                try:
                    self._deliver(self.peer, batch)
                except LimitError as exc:  # on_batch counted it
                    self._fail(exc)
                    return
            else:
                self._batches.append(batch)
        if pos < size:
            buf += memoryview(data)[pos:]
        if len(self._batches) >= MAX_PARSED and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def _slice(self) -> None:
        """Stop reading until the next turn, when what is buffered goes on."""
        if not self._sliced and self.transport is not None:
            self._sliced = True
            self.transport.pause_reading()
            asyncio.get_running_loop().call_soon(self._resume_slice)

    def _resume_slice(self) -> None:
        self._sliced = False
        if self._closed:
            return
        self.data_received(b"")
        if not (self._sliced or self._reading_paused or self._closed) \
                and self.transport is not None:
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if not self.ended.done():
            self.ended.set_result(None)
        if self.acked is not None and not self.acked.done():
            self.acked.set_result(False)
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        if self._drain is None or self._drain.done():
            self._drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        if self.peer is not None:
            self._kick()

    # -- push mode ----------------------------------------------------------------------
    def bind(self, peer: LinkPeer) -> None:
        """Deliver to and send for ``peer`` from the socket's callbacks."""
        self.peer = peer
        peer.kick = self._kick
        if self._uncounted:
            self._uncounted = False
            peer.protocol_errors += 1
        try:
            while self._batches:
                self._deliver(peer, self._batches.popleft())
        except LimitError as exc:
            self._fail(exc)
        # Reading paused while the batches waited for a reader; in push mode
        # nobody else would resume it.
        if self._reading_paused and self.transport is not None and not self._closed:
            self._reading_paused = False
            if not self._sliced:
                self.transport.resume_reading()
        self._kick()

    def _deliver(self, peer: LinkPeer, batch: Batch) -> None:
        peer.on_batch(batch)
        if self.on_first_batch is not None:
            first, self.on_first_batch = self.on_first_batch, None
            first()

    def unbind(self) -> None:
        if self.peer is not None:
            self.peer.reset_kick()
            self.peer = None
        if self._ready_poll is not None:
            self._ready_poll.cancel()
            self._ready_poll = None

    async def wait_closed(self) -> None:
        """Until the socket closes; the LimitError that closed it, if one did."""
        await asyncio.shield(self.ended)
        if self.error is not None:
            raise self.error

    def _kick(self) -> None:
        if not self._pump_scheduled and not self._closed:
            self._pump_scheduled = True
            if _dispatch is not None:
                _dispatch.append(self)
            else:
                asyncio.get_running_loop().call_soon(self._pump)

    def _pump(self) -> None:
        """Write what the peer has for the wire, until the socket pushes back."""
        self._pump_scheduled = False
        peer = self.peer
        transport = self.transport
        if peer is None or transport is None or self._closed:
            return
        while self._drain is None or self._drain.done():
            batch = peer.take_batch(RECORD_BYTES)
            if batch is None:
                break
            transport.write(codec.encode(batch))
            peer.batches_sent += 1
        if not peer.advertised_ready and self._ready_poll is None:
            # As a pulling writer does: restate readiness now and then, in
            # case no flush announces the change.
            self._ready_poll = asyncio.get_running_loop().call_later(
                READY_POLL_S, self._restate_ready)

    def _restate_ready(self) -> None:
        self._ready_poll = None
        if self.peer is not None:
            self.peer.peer_ready_changed()
            self._kick()

    # -- the LinkStream side ----------------------------------------------------------
    async def read_batch(self) -> Batch | None:
        """The next batch; None once the socket closed. LimitError for a bad record."""
        while not self._batches:
            if self.error is not None:
                raise self.error
            if self._closed:
                return None
            self._wakeup = asyncio.get_running_loop().create_future()
            await self._wakeup
        batch = self._batches.popleft()
        if self._reading_paused and len(self._batches) < MAX_PARSED // 4 \
                and self.transport is not None:
            self._reading_paused = False
            if not self._sliced:
                self.transport.resume_reading()
        return batch

    async def write_batch(self, batch: Batch) -> None:
        if self._closed or self.transport is None:
            raise UnavailableError("the fast-path socket is closed")
        self.transport.write(codec.encode(batch))
        if self._drain is not None and not self._drain.done():
            await self._drain

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _bad_record(self, exc: LimitError) -> None:
        """A record the codec refused: the remote broke the protocol."""
        if self.peer is not None:
            exc = self.peer.protocol_error(str(exc))
        else:
            self._uncounted = True
        self._fail(exc)

    def _fail(self, exc: LimitError) -> None:
        self.error = exc
        if self.transport is not None:
            self.transport.abort()
        if not self.ended.done():
            self.ended.set_result(None)
        self._wake()


@dataclass
class FastPathOffer:
    """What the listener hands the acceptor for one link: announced, then awaited."""

    socket_name: str
    token: bytes
    stream: asyncio.Future[UnixLinkStream]
    #: For a protocol other than a link's: the accepted connection goes to
    #: ``protocol_factory()`` (after the ACK) and ``stream`` is cancelled.
    protocol_factory: Callable[[], asyncio.Protocol] | None = None


class _Handshake(asyncio.Protocol):
    """A connection to the listener until it presents a token."""

    def __init__(self, listener: FastPathListener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.got = bytearray()
        self.timer: asyncio.TimerHandle | None = None
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not subclasses of asyncio.Transport).
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        listener = self.listener
        if listener.handshakes >= MAX_HANDSHAKES:
            listener.handshakes_refused += 1
            self.done = True
            transport.abort()
            return
        listener.handshakes += 1
        listener.waiting.add(self)
        self.timer = asyncio.get_running_loop().call_later(HANDSHAKE_TIMEOUT_S, self._timeout)

    def _finish(self) -> None:
        if not self.done:
            self.done = True
            self.listener.handshakes -= 1
            self.listener.waiting.discard(self)
            if self.timer is not None:
                self.timer.cancel()

    def _timeout(self) -> None:
        if not self.done and self.transport is not None:
            self.listener.tokens_refused += 1
            self._finish()
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.done or self.transport is None:
            return
        self.got += data
        if len(self.got) < TOKEN_BYTES:
            return
        token, rest = bytes(self.got[:TOKEN_BYTES]), bytes(self.got[TOKEN_BYTES:])
        self._finish()
        offer = self.listener.pending.pop(token, None)
        if offer is None or offer.stream.done() or rest:
            self.listener.tokens_refused += 1
            self.transport.abort()
            return
        if offer.protocol_factory is not None:
            self._hand_over(offer.protocol_factory())
            offer.stream.cancel()
            return
        stream = UnixLinkStream()
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            _tune(sock)
        self.transport.set_protocol(stream)
        stream.connection_made(self.transport)
        self.transport.write(ACK)
        self.listener.accepted += 1
        offer.stream.set_result(stream)

    def _hand_over(self, protocol: asyncio.Protocol) -> None:
        """The accepted connection to ``protocol``: the ACK first, then its bytes."""
        transport = self.transport
        assert transport is not None
        if (accepted := transport.get_extra_info("socket")) is not None:
            _tune(accepted)
        transport.set_protocol(protocol)
        transport.write(ACK)
        protocol.connection_made(transport)
        self.listener.accepted += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()


class FastPathListener:
    """The server's abstract unix socket for same-host links, and its tokens."""

    def __init__(self) -> None:
        self.socket_name = f"virtwire-link-{secrets.token_hex(16)}"
        self.pending: dict[bytes, FastPathOffer] = {}
        self._server: asyncio.AbstractServer | None = None
        self._starting = asyncio.Lock()
        #: Links that came up on the socket.
        self.accepted = 0
        #: Offers not made because MAX_PENDING_OFFERS were outstanding.
        self.offers_refused = 0
        #: Connections closed for a wrong or missing token.
        self.tokens_refused = 0
        #: Connections closed because MAX_HANDSHAKES were already waiting.
        self.handshakes_refused = 0
        self.handshakes = 0
        #: The connections still waiting for their token.
        self.waiting: set[_Handshake] = set()

    async def _start(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind("\0" + self.socket_name)
            sock.listen(MAX_HANDSHAKES)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._server = await asyncio.get_running_loop().create_unix_server(
            lambda: _Handshake(self), sock=sock)

    async def offer(self, protocol_factory: Callable[[], asyncio.Protocol] | None = None
                    ) -> FastPathOffer:
        """A new token on the listening socket (started on first use).

        LimitError (counted) while MAX_PENDING_OFFERS are outstanding; OSError
        if the socket cannot be made. With ``protocol_factory`` the connection
        that presents the token is handed to a new protocol of its making
        (see ``dial_socket``) instead of becoming a UnixLinkStream.
        """
        if self._server is None:
            # Links dialled at once share the one socket: only the first binds.
            async with self._starting:
                if self._server is None:
                    await self._start()
        if len(self.pending) >= MAX_PENDING_OFFERS:
            self.offers_refused += 1
            raise LimitError(f"{MAX_PENDING_OFFERS} fast-path offers are outstanding")
        offer = FastPathOffer(self.socket_name, secrets.token_bytes(TOKEN_BYTES),
                              asyncio.get_running_loop().create_future(), protocol_factory)
        self.pending[offer.token] = offer
        return offer

    def withdraw(self, offer: FastPathOffer) -> None:
        """Give up an offer the link will not use; a stream it made is closed."""
        self.pending.pop(offer.token, None)
        if not offer.stream.done():
            offer.stream.cancel()
        elif not offer.stream.cancelled():
            offer.stream.result().close()

    async def close(self) -> None:
        for offer in list(self.pending.values()):
            self.withdraw(offer)
        for handshake in list(self.waiting):
            handshake._finish()
            if handshake.transport is not None:
                handshake.transport.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


def _client_socket(socket_name: str, token: bytes) -> socket.socket:
    """A socket to dial ``socket_name`` with; LimitError for a bad name or token."""
    check_socket_name(socket_name)
    if len(token) != TOKEN_BYTES:
        raise LimitError(f"a fast-path token of {len(token)} bytes (not {TOKEN_BYTES})")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    _tune(sock)
    return sock


async def dial_socket(socket_name: str, token: bytes, timeout: float = HANDSHAKE_TIMEOUT_S
                      ) -> socket.socket:
    """As ``dial``, for an offer made with a ``protocol_factory``: the connected
    socket once its token was accepted (nothing after the ACK is read yet),
    for ``loop.create_unix_connection(..., sock=)``."""
    loop = asyncio.get_running_loop()
    sock = _client_socket(socket_name, token)
    try:
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, "\0" + socket_name)
            await loop.sock_sendall(sock, token)
            answer = await loop.sock_recv(sock, len(ACK))
        if answer != ACK:
            raise UnavailableError("the fast-path socket refused the token")
    except BaseException as exc:
        sock.close()
        if isinstance(exc, (OSError, TimeoutError)):
            raise UnavailableError(f"cannot reach fast-path socket @{socket_name}: {exc}"
                                   ) from exc
        raise
    return sock


async def dial(socket_name: str, token: bytes, timeout: float = HANDSHAKE_TIMEOUT_S
               ) -> UnixLinkStream:
    """Connect to a listener's socket and present ``token``.

    UnavailableError when the socket cannot be reached (another network
    namespace) or the token is refused; LimitError for a name or token no
    listener gives out.
    """
    loop = asyncio.get_running_loop()
    sock = _client_socket(socket_name, token)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, "\0" + socket_name), timeout)
        _, stream = await loop.create_unix_connection(lambda: UnixLinkStream(expect_ack=True),
                                                      sock=sock)
    except (OSError, TimeoutError) as exc:
        sock.close()
        raise UnavailableError(f"cannot reach fast-path socket @{socket_name}: {exc}") from exc
    except BaseException:
        sock.close()
        raise
    assert stream.transport is not None and stream.acked is not None
    try:
        stream.transport.write(token)
        try:
            ok = await asyncio.wait_for(stream.acked, timeout)
        except TimeoutError:
            ok = False
    except BaseException:
        stream.close()
        raise
    if not ok:
        stream.close()
        raise UnavailableError("the fast-path socket refused the token")
    return stream
