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
from virtwire.net.net import NetClient
from virtwire.rpc.options import GRPC_EOF, GRPC_OPTIONS
from virtwire.rpc.status import error_from_rpc, translated
from virtwire.v1 import link_pb2, link_pb2_grpc

logger = logging.getLogger(__name__)

ClientCall = grpc.aio.StreamStreamCall[link_pb2.ConnectRequest, link_pb2.ConnectResponse]
ServerContext = grpc.aio.ServicerContext[link_pb2.ConnectRequest, link_pb2.ConnectResponse]


# -- LinkBatch <-> Batch ----------------------------------------------------------------
def batch_from_wire(msg: link_pb2.LinkBatch) -> Batch:
    """The core's view of a LinkBatch that arrived."""
    return Batch(
        frames=msg.frames,
        completion_requests={r.index: r.id for r in msg.completion_requests},
        completions=[(c.id, c.ret) for c in msg.completions],
        credits=msg.credits,
        ready=msg.ready.can_receive if msg.HasField("ready") else None)


def batch_to_wire(batch: Batch) -> link_pb2.LinkBatch:
    """The LinkBatch that carries ``batch``."""
    msg = link_pb2.LinkBatch(frames=batch.frames, credits=batch.credits)
    for index, cid in batch.completion_requests.items():
        msg.completion_requests.add(index=index, id=cid)
    for cid, ret in batch.completions:
        msg.completions.add(id=cid, ret=ret)
    if batch.ready is not None:
        msg.ready.can_receive = batch.ready
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

    def __init__(self, peer: LinkPeer, stream: LinkStream) -> None:
        self.peer = peer
        self.stream = stream
        #: Set when the remote broke the link protocol (the session then ended).
        self.error: LimitError | None = None

    async def run(self, credits: int, remote_ready: bool) -> str:
        """Attach, pump both directions, detach; returns why it ended."""
        peer = self.peer
        peer.attach(self, credits, remote_ready)
        reader = asyncio.create_task(self._reader(), name=f"link-rx {peer.name}")
        writer = asyncio.create_task(self._writer(), name=f"link-tx {peer.name}")
        reason = "closed"
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                reason = _describe(exc) if exc is not None else "peer closed the stream"
                if isinstance(exc, LimitError):
                    self.error = exc
        finally:
            for task in (reader, writer):
                task.cancel()
            for task in (reader, writer):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if peer.session is self:
                peer.detach(reason)
        return reason

    async def _reader(self) -> None:
        peer = self.peer
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
                 min_backoff: float = 0.05, max_backoff: float = 2.0) -> None:
        self.local = local
        self.spec = spec
        self.window = window
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
                    self.connected.set()
                    logger.info("link %s -> %s/%s: connected", self.local.name,
                                self.spec.addr, welcome.netclient)
                    session = LinkSession(self.peer, _Stream(call, link_pb2.ConnectRequest))
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
        with translated():
            await call.write(link_pb2.ConnectRequest(hello=link_pb2.LinkHello(
                netclient=self.remote_netclient, peer=self.local.name,
                credits=self.window, can_receive=self.local.can_receive_packet())))
            try:
                first = await asyncio.wait_for(call.read(), HELLO_TIMEOUT_S)
            except TimeoutError:
                raise DeadlineError("no LinkWelcome received") from None
        if first is GRPC_EOF or not isinstance(first, link_pb2.ConnectResponse):
            raise RemoteError("server closed the link before welcoming it")
        check_name(first.welcome.netclient, "welcomed NetClient")
        return first.welcome

    def _dial_failed(self, exc: VirtwireError) -> None:
        if isinstance(exc, UnavailableError):
            reason = f"peer {self.spec} unreachable ({exc})"
        else:
            reason = _describe(exc)
        if reason != self.last_error:
            logger.error("link %s -> %s: %s; retrying", self.local.name, self.spec, reason)
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
                 release: Callable[[NetClient], None] | None = None) -> None:
        #: ``lookup(name, dialler)`` returns the NetClient to join; it raises
        #: NotFoundError/ConflictError (an empty name may create one).
        self.lookup = lookup
        self.window = window
        self.release = release
        #: Connect streams refused before their link came up.
        self.links_refused = 0
        #: Names in a LinkHello refused (too long, bad characters).
        self.names_refused = 0

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
        await context.write(link_pb2.ConnectResponse(welcome=link_pb2.LinkWelcome(
            netclient=local.name, credits=peer.window,
            can_receive=local.can_receive_packet())))
        session = LinkSession(peer, _Stream(context, link_pb2.ConnectResponse))
        await session.run(hello.credits, hello.can_receive)
        if session.error is not None:
            raise session.error
