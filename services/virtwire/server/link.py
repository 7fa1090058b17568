"""The link's gRPC side: the Connect stream that joins two LinkPeers.

A ``LinkSession`` runs one established Connect stream (either side) for a
``virtwire.link.LinkPeer``, converting between ``virtwire.v1.LinkBatch`` and
the core's ``Batch``. A ``LinkDialer`` dials a remote NetClient and redials
with backoff; a ``LinkAcceptor`` attaches incoming streams to local
NetClients. The acceptor raises domain errors, which the server's
ErrorInterceptor answers with their status; the dialer sees the remote's
refusals as domain errors through ``virtwire.rpc.status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

import grpc

from virtwire import tls
from virtwire.address import PeerSpec, check_name, shorten
from virtwire.errors import (
    ConfigError,
    ConflictError,
    DeadlineError,
    LimitError,
    RemoteError,
    UnavailableError,
    VirtwireError,
)
from virtwire.link import DEFAULT_WINDOW, HELLO_TIMEOUT_S, Batch, LinkPeer
from virtwire.link import unix as fastpath
from virtwire.logfmt import netclient_extra
from virtwire.mem.guestmem import HostIdentity
from virtwire.net.net import NetClient
from virtwire.rpc.options import GRPC_EOF, GRPC_OPTIONS
from virtwire.rpc.status import error_from_rpc, translated
from virtwire.v1 import link_pb2, link_pb2_grpc

logger = logging.getLogger(__name__)

#: ``--link-transport``: "auto" moves a link's batches over a same-host socket
#: when both ends can (``virtwire.link.unix``), "grpc" keeps them on the stream.
LINK_TRANSPORTS = ("auto", "grpc")

ClientCall = grpc.aio.StreamStreamCall[link_pb2.ConnectRequest, link_pb2.ConnectResponse]
ServerContext = grpc.aio.ServicerContext[link_pb2.ConnectRequest, link_pb2.ConnectResponse]


# -- LinkBatch <-> Batch ----------------------------------------------------------------
def batch_from_wire(msg: link_pb2.LinkBatch) -> Batch:
    """The core's view of a LinkBatch that arrived (its traces are checked by
    ``LinkPeer.on_batch``, which counts a bad one as a protocol error)."""
    batch = Batch(
        frames=msg.frames,
        completion_requests={r.index: r.id for r in msg.completion_requests},
        completions=[(c.id, c.ret) for c in msg.completions],
        credits=msg.credits,
        ready=msg.ready.can_receive if msg.HasField("ready") else None,
        discards=msg.HasField("ready") and msg.ready.can_receive and msg.ready.discards)
    if msg.traces:
        batch.traces = [(t.index, t.context) for t in msg.traces]
    return batch


def batch_to_wire(batch: Batch) -> link_pb2.LinkBatch:
    """The LinkBatch that carries ``batch``."""
    msg = link_pb2.LinkBatch(frames=batch.frames, credits=batch.credits)
    for index, cid in batch.completion_requests.items():
        msg.completion_requests.add(index=index, id=cid)
    for cid, ret in batch.completions:
        msg.completions.add(id=cid, ret=ret)
    if batch.ready is not None:
        msg.ready.can_receive = batch.ready
        if batch.ready and batch.discards:
            msg.ready.discards = True
    if batch.traces:
        for index, context in batch.traces:
            msg.traces.add(index=index, context=context)
    return msg


# -- the two ends of the gRPC stream ------------------------------------------------
class LinkStream(Protocol):
    """One side of the Connect stream, reduced to batches."""

    async def read_batch(self) -> Batch | None: ...
    async def write_batch(self, batch: Batch) -> None: ...


class _Duplex(Protocol):
    """What a client call and a servicer context have in common."""

    async def read(self) -> object: ...
    async def write(self, message: Any, /) -> None: ...


class _Stream:
    """One end of the Connect stream (a client call or a servicer context),
    reduced to batches; ``outgoing`` is the message type this end writes."""

    def __init__(self, end: _Duplex,
                 outgoing: type[link_pb2.ConnectRequest] | type[link_pb2.ConnectResponse]) -> None:
        self.end = end
        self.outgoing = outgoing

    async def read_batch(self) -> Batch | None:
        msg = await self.end.read()
        if msg is GRPC_EOF:
            return None
        assert isinstance(msg, (link_pb2.ConnectRequest, link_pb2.ConnectResponse))
        return batch_from_wire(msg.batch)

    async def write_batch(self, batch: Batch) -> None:
        await self.end.write(self.outgoing(batch=batch_to_wire(batch)))


class LinkSession:
    """Runs one established Connect stream for a LinkPeer until it breaks."""

    def __init__(self, peer: LinkPeer, stream: LinkStream,
                 control: _Duplex | None = None, transport: str = "grpc") -> None:
        self.peer = peer
        self.stream = stream
        #: With the same-host transport: the Connect stream, which must stay
        #: open and silent while the session lasts.
        self.control = control
        #: "grpc" or "unix": what carries the batches (NetClientInfo.link_transport).
        self.transport = transport
        #: Set when the remote broke the link protocol (the session then ended).
        self.error: LimitError | None = None
        #: Called once, when the remote's first batch (which every side sends
        #: as it attaches) has arrived: both ends are up.
        self.on_up: Callable[[], None] | None = None

    async def run(self, credits: int, remote_ready: bool) -> str:
        """Attach, pump both directions, detach; returns why it ended."""
        peer = self.peer
        peer.transport = self.transport
        peer.attach(self, credits, remote_ready)
        stream = self.stream
        if isinstance(stream, fastpath.UnixLinkStream):
            stream.on_first_batch = self.on_up
            stream.bind(peer)
            tasks = {asyncio.create_task(stream.wait_closed(), name=f"link {peer.name}")}
        else:
            tasks = {asyncio.create_task(self._reader(), name=f"link-rx {peer.name}"),
                     asyncio.create_task(self._writer(), name=f"link-tx {peer.name}")}
        if self.control is not None:
            tasks.add(asyncio.create_task(self._watch(self.control),
                                          name=f"link-ctl {peer.name}"))
        reason = "closed"
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                reason = _describe(exc) if exc is not None else "peer closed the stream"
                if isinstance(exc, LimitError):
                    self.error = exc
        finally:
            for task in tasks:
                task.cancel()
            try:
                # gather, not a suppressed await per task: a cancel of this
                # task that lands here must still end it (a dialer being
                # stopped would otherwise take the session's end for a
                # broken link and redial for ever).
                await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                if isinstance(stream, fastpath.UnixLinkStream):
                    stream.unbind()
                    stream.close()
                if peer.session is self:
                    peer.detach(reason)
        return reason

    async def _watch(self, control: _Duplex) -> None:
        """The Connect stream of a same-host link: its end is the link's end."""
        msg = await control.read()
        if msg is not GRPC_EOF:
            raise self.peer.protocol_error(
                "a message on the Connect stream after the link moved to its socket")

    async def _reader(self) -> None:
        peer = self.peer
        first = await self.stream.read_batch()
        if first is None:
            return
        peer.on_batch(first)
        if self.on_up is not None:
            self.on_up()
        while True:
            batch = await self.stream.read_batch()
            if batch is None:
                return
            peer.on_batch(batch)

    async def _writer(self) -> None:
        peer = self.peer
        while peer.session is self:
            batch = peer.take_batch()
            if batch is None:
                await peer.wait_for_output()
                continue
            await self.stream.write_batch(batch)
            peer.batches_sent += 1


_boot_id: str | None = None


def boot_id() -> str:
    """This kernel's boot id, read once ("" if unknown: no same-host transport)."""
    global _boot_id
    if _boot_id is None:
        _boot_id = HostIdentity.local().boot_id
    return _boot_id


def _describe(exc: BaseException) -> str:
    """Why a session or a dial ended, for logs and ``LinkDialer.last_error``."""
    if isinstance(exc, grpc.RpcError):
        exc = error_from_rpc(exc)
    return f"{type(exc).__name__}: {exc}"


class LinkDialer:
    """Dials a remote NetClient for ``local`` and redials with backoff.

    A dial that names no NetClient (``ADDR/``) asks again for a new one on each
    redial: the server removes a NetClient it made for a link when that link's
    stream ends.
    """

    def __init__(self, local: NetClient, spec: PeerSpec, window: int = DEFAULT_WINDOW,
                 min_backoff: float = 0.05, max_backoff: float = 2.0,
                 transport: str = "auto") -> None:
        self.local = local
        self.spec = spec
        self.window = window
        #: "auto" offers the same-host transport in every hello, "grpc" never.
        self.transport = transport
        #: Why the last offer of the same-host transport was not used ("" if it was).
        self.fast_path_reason = ""
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.peer = LinkPeer(local, spec.netclient or "?", window)
        self.last_error = ""
        self.remote_netclient = spec.netclient
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"dial {self.local.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.peer.close()

    async def _run(self) -> None:
        backoff = self.min_backoff
        target = self.spec.addr.grpc_target
        while True:
            async with tls.aio_channel(target, options=GRPC_OPTIONS) as channel:
                call = link_pb2_grpc.LinkServiceStub(channel).Connect(wait_for_ready=False)
                try:
                    welcome = await self._hello(call)
                    self.peer.remote_name = welcome.netclient
                    self.peer.name = f"{self.local.name}>{welcome.netclient}"
                    self.last_error = ""
                    backoff = self.min_backoff
                    session = await self._session(call, welcome)
                    session.on_up = self.connected.set
                    logger.info("link %s -> %s/%s: connected (%s)", self.local.name,
                                self.spec.addr, welcome.netclient, session.transport,
                                extra=netclient_extra(self.local.name))
                    self.last_error = await session.run(welcome.credits, welcome.can_receive)
                except VirtwireError as exc:
                    self._dial_failed(exc)
                finally:
                    self.connected.clear()
                    call.cancel()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    async def _hello(self, call: ClientCall) -> link_pb2.LinkWelcome:
        """Send our LinkHello, return the server's (checked) LinkWelcome."""
        hello = link_pb2.LinkHello(
            netclient=self.remote_netclient, peer=self.local.name,
            credits=self.window, can_receive=self.local.can_receive_packet())
        if self.transport == "auto":
            hello.fast_path.boot_id = boot_id()
        with translated():
            await call.write(link_pb2.ConnectRequest(hello=hello))
            try:
                first = await asyncio.wait_for(call.read(), HELLO_TIMEOUT_S)
            except TimeoutError:
                raise DeadlineError("no LinkWelcome received") from None
        if first is GRPC_EOF or not isinstance(first, link_pb2.ConnectResponse):
            raise RemoteError("server closed the link before welcoming it")
        check_name(first.welcome.netclient, "welcomed NetClient")
        return first.welcome

    async def _session(self, call: ClientCall, welcome: link_pb2.LinkWelcome) -> LinkSession:
        """The session for a welcomed link: on the offered socket if it takes our
        token, else on the Connect stream (the server learns which)."""
        grpc_stream = _Stream(call, link_pb2.ConnectRequest)
        if not welcome.HasField("fast_path"):
            return LinkSession(self.peer, grpc_stream)
        offer = welcome.fast_path
        try:
            stream = await fastpath.dial(offer.socket, offer.token)
        except VirtwireError as exc:
            self.fast_path_reason = str(exc)
            logger.info("link %s: staying on the Connect stream (%s)", self.local.name, exc,
                        extra=netclient_extra(self.local.name))
            with translated():
                await call.write(link_pb2.ConnectRequest(
                    fast_path_result=link_pb2.LinkFastPathResult(
                        connected=False, reason=str(exc)[:200])))
            return LinkSession(self.peer, grpc_stream)
        self.fast_path_reason = ""
        try:
            with translated():
                await call.write(link_pb2.ConnectRequest(
                    fast_path_result=link_pb2.LinkFastPathResult(connected=True)))
        except BaseException:
            stream.close()
            raise
        return LinkSession(self.peer, stream, control=call, transport="unix")

    def _dial_failed(self, exc: VirtwireError) -> None:
        if isinstance(exc, UnavailableError):
            reason = f"peer {self.spec} unreachable ({exc})"
        else:
            reason = _describe(exc)
        if reason != self.last_error:
            logger.error("link %s -> %s: %s; retrying", self.local.name, self.spec, reason,
                         extra=netclient_extra(self.local.name))
        self.last_error = reason


class LinkAcceptor:
    """Server side: attaches incoming Connect streams to local NetClients.

    ``serve`` raises domain errors, which the server's ErrorInterceptor answers
    with their status: DeadlineError when no hello comes, ConfigError for a bad
    hello, NotFoundError/ConflictError/LimitError from the lookup,
    ConflictError for a NetClient already linked, LimitError when the peer
    broke the protocol. A NetClient made for a hello that named none is handed
    to ``release`` when the stream ends.
    """

    def __init__(self, lookup: Callable[[str, str], NetClient],
                 window: int = DEFAULT_WINDOW,
                 release: Callable[[NetClient], None] | None = None,
                 transport: str = "auto") -> None:
        #: ``lookup(name, dialler)`` returns the NetClient to join; it raises
        #: NotFoundError/ConflictError (an empty name may create one).
        self.lookup = lookup
        self.window = window
        self.release = release
        #: Connect streams refused before their link came up.
        self.links_refused = 0
        #: Names in a LinkHello refused (too long, bad characters).
        self.names_refused = 0
        #: "auto" offers the same-host transport to diallers on this kernel.
        self.transport = transport
        #: The same-host socket, made on the first offer.
        self.listener: fastpath.FastPathListener | None = None
        #: Offers the dialler could not use (it stayed on the stream).
        self.fast_path_declined = 0

    def peer_of(self, local: NetClient) -> LinkPeer | None:
        peer = local.peer
        return peer if isinstance(peer, LinkPeer) else None

    async def serve(self, context: ServerContext) -> None:
        try:
            first = await asyncio.wait_for(context.read(), HELLO_TIMEOUT_S)
        except TimeoutError:
            self.links_refused += 1
            raise DeadlineError("no LinkHello received") from None
        try:
            hello = self._check_hello(first)
            local = self.lookup(hello.netclient, hello.peer)
        except Exception:
            self.links_refused += 1
            raise
        try:
            await self._run(context, local, hello)
        finally:
            if not hello.netclient and self.release is not None:
                self.release(local)

    async def _offer(self, hello: link_pb2.LinkHello) -> fastpath.FastPathOffer | None:
        """A same-host socket offer for this hello, or None (grpc only, another
        kernel, too many outstanding, or no socket can be made here)."""
        if self.transport != "auto" or not hello.HasField("fast_path"):
            return None
        if not hello.fast_path.boot_id or hello.fast_path.boot_id != boot_id():
            return None
        if self.listener is None:
            self.listener = fastpath.FastPathListener()
        try:
            return await self.listener.offer()
        except (LimitError, OSError) as exc:
            logger.warning("no same-host link transport offered: %s", exc)
            return None

    async def _session(self, context: ServerContext, peer: LinkPeer,
                       offer: fastpath.FastPathOffer | None) -> LinkSession:
        """The session on the offered socket when the dialler took it, else on
        the Connect stream."""
        grpc_stream = _Stream(context, link_pb2.ConnectResponse)
        if offer is None:
            return LinkSession(peer, grpc_stream)
        assert self.listener is not None
        try:
            answer = await asyncio.wait_for(context.read(), HELLO_TIMEOUT_S)
        except TimeoutError:
            self.listener.withdraw(offer)
            raise DeadlineError("no LinkFastPathResult received") from None
        if answer is GRPC_EOF or not isinstance(answer, link_pb2.ConnectRequest) \
                or not answer.HasField("fast_path_result"):
            self.listener.withdraw(offer)
            raise ConfigError("the second ConnectRequest must carry a LinkFastPathResult")
        if not answer.fast_path_result.connected:
            self.listener.withdraw(offer)
            self.fast_path_declined += 1
            logger.info("link %s: the dialler stays on the Connect stream (%s)", peer.name,
                        shorten(answer.fast_path_result.reason, 200),
                        extra=netclient_extra(peer.name))
            return LinkSession(peer, grpc_stream)
        try:
            stream = await asyncio.wait_for(asyncio.shield(offer.stream), HELLO_TIMEOUT_S)
        except TimeoutError:
            self.listener.withdraw(offer)
            raise DeadlineError("the dialler said it connected to the same-host socket, "
                                "but no connection presented its token") from None
        return LinkSession(peer, stream, control=context, transport="unix")

    def _check_hello(self, first: object) -> link_pb2.LinkHello:
        if first is GRPC_EOF or not isinstance(first, link_pb2.ConnectRequest) \
                or not first.HasField("hello"):
            raise ConfigError("the first ConnectRequest must carry a LinkHello")
        hello = first.hello
        if hello.credits == 0:
            raise ConfigError("LinkHello.credits must be > 0")
        try:
            if hello.netclient:
                check_name(hello.netclient)
            if hello.peer:
                check_name(hello.peer, "LinkHello.peer")
        except ConfigError:
            self.names_refused += 1
            raise
        return hello

    async def _run(self, context: ServerContext, local: NetClient,
                   hello: link_pb2.LinkHello) -> None:
        peer = self.peer_of(local)
        if peer is None:
            if local.peer is not None:
                self.links_refused += 1
                raise ConflictError(f"{local.name} is already peered with {local.peer.name}")
            peer = LinkPeer(local, hello.peer or "?", self.window)
        elif peer.session is not None:
            self.links_refused += 1
            raise ConflictError(f"{local.name} already has a live link "
                                f"(from {shorten(peer.remote_name)})")
        peer.remote_name = hello.peer or "?"
        peer.name = f"{local.name}>{peer.remote_name}"
        welcome = link_pb2.LinkWelcome(netclient=local.name, credits=peer.window,
                                       can_receive=local.can_receive_packet())
        offer = await self._offer(hello)
        if offer is not None:
            welcome.fast_path.socket = offer.socket_name
            welcome.fast_path.token = offer.token
        try:
            await context.write(link_pb2.ConnectResponse(welcome=welcome))
            session = await self._session(context, peer, offer)
        finally:
            if offer is not None and self.listener is not None:
                self.listener.pending.pop(offer.token, None)
        await session.run(hello.credits, hello.can_receive)
        if session.error is not None:
            raise session.error
