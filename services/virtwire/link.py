"""Links: a NetClient's peer living in another process, container or host.

A ``LinkPeer`` is a local NetClient that stands in for the remote peer. The
local NetClient sends to it exactly as to any peer: when the link can take a
frame (link up, a credit left, the remote NetClient can receive) ``receive``
puts it in the outgoing batch; otherwise it returns 0, so the frame waits in
the LinkPeer's incoming_queue (bounded at nq_maxlen, drops counted) and an
async sender pauses until its sent_cb fires, as with QEMU's tap_read_poll.

On the far side, frames leave the stream into the peer NetClient's own
incoming_queue, with the remote LinkPeer as their sender, and a credit goes
back for each. So at most ``window`` frames are ever in flight, and the only
queues are QEMU's own.

Neither side trusts the other's accounting (a peer may be hostile):
- credits: what we hold, plus what waits for the writer, plus what went on the
  wire and has not been credited back, never exceeds our ``window``. A credit
  can only return a frame we put on the wire; credits beyond that are clamped
  away and counted (``credits_refused``), not an error, so a peer with a larger
  window still works. A peer that grants itself credits and never reads thus
  holds at most ``window`` frames here (the writer waits on gRPC's flow
  control), and the rest waits in the incoming_queue (nq_maxlen, drops counted).
- frames: a peer that sends more frames than the credits we granted it, or
  keeps more than ``window`` completion requests pending, breaks the protocol:
  the session ends with a LimitError (FAILED_PRECONDITION to a dialler), and
  ``protocol_errors`` counts it.

A ``LinkSession`` runs one gRPC stream (either side); a ``LinkDialer`` redials
with backoff. While no session is up both ends see link_down.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable
from typing import Protocol

import grpc

from virtwire import tls
from virtwire.address import PeerSpec, check_name, shorten
from virtwire.errors import ConfigError, ConflictError, LimitError
from virtwire.net.net import NetClient
from virtwire.net.queue import NET_PACKET_FLAG_NONE, NET_PACKET_FLAG_SENT_CB
from virtwire.rpc.options import GRPC_EOF, GRPC_OPTIONS
from virtwire.v1 import link_pb2, link_pb2_grpc

logger = logging.getLogger(__name__)

#: Frames a receiver lets be in flight towards it (its initial credit grant).
DEFAULT_WINDOW = 2048
#: Most frames and bytes in one LinkBatch.
MAX_BATCH_FRAMES = 512
MAX_BATCH_BYTES = 1 << 20
#: How often a LinkPeer that advertised "cannot receive" re-checks by itself.
READY_POLL_S = 0.02
HELLO_TIMEOUT_S = 10.0

class LinkRunState(enum.Enum):
    """State of the link behind a NetClient (virtwire.v1.LinkState)."""

    NO_PEER = "no_peer"
    CONNECTING = "connecting"
    UP = "up"


class LinkStream(Protocol):
    """One side of the Connect stream, reduced to batches."""

    async def read_batch(self) -> link_pb2.LinkBatch | None: ...
    async def write_batch(self, batch: link_pb2.LinkBatch) -> None: ...


class LinkPeer(NetClient):
    """The local stand-in for a NetClient on the far side of a link."""

    kind = "link"

    def __init__(self, local: NetClient, remote_name: str, window: int = DEFAULT_WINDOW) -> None:
        super().__init__(f"{local.name}>{remote_name}")
        self.local = local
        self.remote_name = remote_name
        self.window = window
        local.peer = self
        self.peer = local
        self.session: LinkSession | None = None
        # Credits the remote granted us, and whether its NetClient can receive.
        self.credits = 0
        self.remote_ready = False
        # Outgoing state, drained by the session's writer.
        self.out_frames: list[bytes] = []
        self.out_requests: list[tuple[int, int]] = []  # (index in out_frames, id)
        self.out_completions: list[tuple[int, int]] = []
        self.out_credits = 0
        self.out_ready: bool | None = None
        self.advertised_ready = False
        self._next_completion_id = 1
        self._wakeup = asyncio.Event()
        #: Frames handed to the writer whose credit has not come back.
        self.on_wire = 0
        #: Credits we granted the remote that it has not used (or whose grant
        #: is still waiting for the writer).
        self.remote_credits = 0
        #: The remote's frames with a completion request queued here, unanswered.
        self.pending_requests = 0
        # Counters specific to links.
        self.completions_requested = 0
        self.completions_refused = 0
        self.batches_sent = 0
        #: Credits the remote granted beyond our window (clamped away).
        self.credits_refused = 0
        #: Sessions ended because the remote broke the protocol.
        self.protocol_errors = 0
        # Not up until a session attaches.
        self.set_carrier(False)
        local.set_carrier(False)

    @property
    def state(self) -> LinkRunState:
        return LinkRunState.UP if self.session is not None else LinkRunState.CONNECTING

    # -- NetClientInfo: frames from the local NetClient towards the wire ------
    def _wire_open(self) -> bool:
        """A frame may go on the wire now: link up, a credit, the remote ready."""
        return self.session is not None and self.credits > 0 and self.remote_ready

    def can_receive(self) -> bool:
        if self.session is None:
            # A broken link drops (counted, link_down) rather than stalls.
            return True
        # While a backlog waits for the wire, new frames queue behind it: so a
        # hub port does not count as ready while its link is still catching up.
        return self._wire_open() and not self.incoming_queue.packets

    def receive_flags(self, data: bytes, flags: int) -> int:
        if not self._wire_open():
            return 0
        self.credits -= 1
        if flags & NET_PACKET_FLAG_SENT_CB:
            self.out_requests.append((len(self.out_frames), self._next_completion_id))
            self._next_completion_id += 1
            self.completions_requested += 1
        self.out_frames.append(data)
        self._wakeup.set()
        return len(data)

    def flush_queued_packets(self, purge: bool = False) -> None:
        """Our backlog goes on the wire first, then the usual flush.

        Flushing our own queue before the hub peers' means that, when they
        look at our readiness, the backlog that made us not ready is gone.
        """
        self.receive_disabled = False
        self.incoming_queue.flush()
        super().flush_queued_packets(purge)

    def peer_ready_changed(self) -> None:
        ready = self.local.can_receive_packet()
        if ready != self.advertised_ready:
            self.out_ready = ready
            self.advertised_ready = ready
            self._wakeup.set()

    # -- frames from the wire towards the local NetClient ----------------------
    def _completion_cb(self, cid: int) -> Callable[[NetClient, int], None]:
        session = self.session

        def sent_cb(_sender: NetClient, ret: int) -> None:
            if self.session is session and session is not None:
                self.pending_requests -= 1
                self.out_completions.append((cid, ret))
                self._wakeup.set()

        return sent_cb

    def _accept_credits(self, granted: int) -> None:
        """Take the remote's grant, clamped so held + waiting + on the wire <= window."""
        returned = min(granted, self.on_wire)
        self.on_wire -= returned
        room = self.window - self.credits - len(self.out_frames) - self.on_wire
        accepted = min(granted, max(room, 0))
        self.credits += accepted
        if accepted < granted:
            self.credits_refused += granted - accepted

    def _protocol_error(self, message: str) -> LimitError:
        self.protocol_errors += 1
        return LimitError(f"link {self.name}: {message}")

    def _on_batch(self, batch: link_pb2.LinkBatch) -> None:
        was_sendable = self.can_receive_packet()
        frames = batch.frames
        if len(frames) > self.remote_credits:
            raise self._protocol_error(
                f"the peer sent {len(frames)} frames with {self.remote_credits} credits left "
                f"(window {self.window})")
        if batch.credits:
            self._accept_credits(batch.credits)
        if batch.HasField("ready"):
            self.remote_ready = batch.ready.can_receive
        for completion in batch.completions:
            if completion.ret < 0:
                self.completions_refused += 1
        if frames:
            self.remote_credits -= len(frames)
            requests = {r.index: r.id for r in batch.completion_requests}
            local_queue = self.local.incoming_queue
            stats = self.stats
            for i, frame in enumerate(frames):
                if not frame:
                    stats.dropped_malformed += 1
                    continue
                cid = requests.get(i) if requests else None
                if cid is None:
                    self.send_packet_async(frame, None)
                elif self.link_down:
                    stats.dropped_link_down += 1
                    self.out_completions.append((cid, len(frame)))
                else:
                    if self.pending_requests >= self.window:
                        raise self._protocol_error(
                            f"the peer keeps more than {self.window} completion requests "
                            "pending")
                    stats.tx_frames += 1
                    stats.tx_bytes += len(frame)
                    if local_queue.send(self, NET_PACKET_FLAG_NONE, frame,
                                        self._completion_cb(cid)) == 0:
                        self.pending_requests += 1
            self.out_credits += len(frames)
            self._wakeup.set()
        # Newly sendable (credits, remote ready): flush what waits for us, and,
        # if our NetClient is a hub port, what the other ports hold back.
        if self._wire_open() and (
            not was_sendable or self.receive_disabled or self.incoming_queue.packets
        ):
            self.flush_queued_packets()
        self.peer_ready_changed()

    def _take_batch(self) -> link_pb2.LinkBatch | None:
        """Everything waiting to go out, up to the batch limits."""
        batch = link_pb2.LinkBatch()
        if self.out_frames:
            frames = self.out_frames
            n = 0
            size = 0
            limit = min(len(frames), MAX_BATCH_FRAMES)
            while n < limit and (n == 0 or size + len(frames[n]) <= MAX_BATCH_BYTES):
                size += len(frames[n])
                n += 1
            batch.frames.extend(frames[:n])
            del frames[:n]
            self.on_wire += n
            if self.out_requests:
                rest: list[tuple[int, int]] = []
                for index, cid in self.out_requests:
                    if index < n:
                        batch.completion_requests.add(index=index, id=cid)
                    else:
                        rest.append((index - n, cid))
                self.out_requests = rest
        if self.out_completions:
            for cid, ret in self.out_completions:
                batch.completions.add(id=cid, ret=ret)
            self.out_completions.clear()
        if self.out_credits:
            batch.credits = self.out_credits
            self.remote_credits += self.out_credits
            self.out_credits = 0
        if self.out_ready is not None:
            batch.ready.can_receive = self.out_ready
            self.out_ready = None
        if not (batch.frames or batch.completions or batch.credits or batch.HasField("ready")):
            return None
        return batch

    # -- sessions -------------------------------------------------------------
    def attach(self, session: LinkSession, credits: int, remote_ready: bool) -> None:
        """Start a session: the remote granted ``credits``, we granted ``window``."""
        self.session = session
        self.credits = 0
        self.on_wire = 0
        self.remote_credits = self.window
        self.pending_requests = 0
        self.remote_ready = remote_ready
        self.out_frames.clear()
        self.out_requests.clear()
        self.out_completions.clear()
        self.out_credits = 0
        self._accept_credits(credits)
        # The hello/welcome carried can_receive as it was then; restate it now
        # in the first batch, since it may have changed in between.
        self.advertised_ready = self.local.can_receive_packet()
        self.out_ready = self.advertised_ready
        self._wakeup.set()
        self.set_carrier(True)
        self.local.set_carrier(True)
        self.flush_queued_packets()
        logger.info("link %s: up", self.name)

    def detach(self, reason: str) -> None:
        if self.session is None:
            return
        self.session = None
        dropped = len(self.out_frames)
        self.stats.dropped_link_down += dropped
        self.out_frames.clear()
        self.out_requests.clear()
        self.out_completions.clear()
        self.set_carrier(False)
        self.local.set_carrier(False)
        # What waited for the wire is purged (senders get completion 0, so a
        # paused backend resumes and then sees link_down); what the remote had
        # queued at our NetClient goes too, its sender is gone.
        self.incoming_queue.purge(self.local)
        self.local.incoming_queue.purge(self)
        self._wakeup.set()
        logger.warning("link %s: down (%s); sent %d frames in %d batches", self.name, reason,
                       self.stats.rx_frames, self.batches_sent)

    def close(self) -> None:
        """Unplug from the local NetClient for good."""
        self.detach("closed")
        if self.local.peer is self:
            self.local.peer = None
            self.local.set_carrier(True)


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
            peer._on_batch(batch)

    async def _writer(self) -> None:
        peer = self.peer
        wakeup = peer._wakeup
        while peer.session is self:
            batch = peer._take_batch()
            if batch is None:
                wakeup.clear()
                if peer.advertised_ready:
                    await wakeup.wait()
                else:
                    # The local NetClient said it cannot receive: look again
                    # now and then in case no flush announces the change.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wakeup.wait(), READY_POLL_S)
                    peer.peer_ready_changed()
                continue
            await self.stream.write_batch(batch)
            peer.batches_sent += 1


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"


# -- the two ends of the gRPC stream ------------------------------------------------
class _ClientStream:
    def __init__(self, call: grpc.aio.StreamStreamCall[link_pb2.ConnectRequest,
                                                       link_pb2.ConnectResponse]) -> None:
        self.call = call

    async def read_batch(self) -> link_pb2.LinkBatch | None:
        msg = await self.call.read()
        if msg is GRPC_EOF:
            return None
        assert isinstance(msg, link_pb2.ConnectResponse)
        return msg.batch

    async def write_batch(self, batch: link_pb2.LinkBatch) -> None:
        await self.call.write(link_pb2.ConnectRequest(batch=batch))


class _ServerStream:
    def __init__(self, context: grpc.aio.ServicerContext[link_pb2.ConnectRequest,
                                                         link_pb2.ConnectResponse]) -> None:
        self.context = context

    async def read_batch(self) -> link_pb2.LinkBatch | None:
        msg = await self.context.read()
        if msg is GRPC_EOF:
            return None
        assert isinstance(msg, link_pb2.ConnectRequest)
        return msg.batch

    async def write_batch(self, batch: link_pb2.LinkBatch) -> None:
        await self.context.write(link_pb2.ConnectResponse(batch=batch))


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
                stub = link_pb2_grpc.LinkServiceStub(channel)
                call = stub.Connect(wait_for_ready=False)
                try:
                    await call.write(link_pb2.ConnectRequest(hello=link_pb2.LinkHello(
                        netclient=self.remote_netclient, peer=self.local.name,
                        credits=self.window, can_receive=self.local.can_receive_packet())))
                    first = await asyncio.wait_for(call.read(), HELLO_TIMEOUT_S)
                    if first is GRPC_EOF or not isinstance(first, link_pb2.ConnectResponse):
                        raise ConnectionError("server closed the link before welcoming it")
                    welcome = first.welcome
                    check_name(welcome.netclient, "welcomed NetClient")
                    self.peer.remote_name = welcome.netclient
                    self.peer.name = f"{self.local.name}>{welcome.netclient}"
                    self.last_error = ""
                    backoff = self.min_backoff
                    self.connected.set()
                    logger.info("link %s -> %s/%s: connected", self.local.name,
                                self.spec.addr, welcome.netclient)
                    reason = await LinkSession(self.peer, _ClientStream(call)).run(
                        welcome.credits, welcome.can_receive)
                    self.last_error = reason
                except (grpc.aio.AioRpcError, ConnectionError, TimeoutError,
                        ConfigError) as exc:
                    reason = _describe(exc)
                    if isinstance(exc, grpc.aio.AioRpcError) and exc.code() in (
                            grpc.StatusCode.UNAVAILABLE,):
                        reason = f"peer {self.spec} unreachable ({exc.details()})"
                    if reason != self.last_error:
                        logger.error("link %s -> %s: %s; retrying", self.local.name,
                                     self.spec, reason)
                    self.last_error = reason
                finally:
                    self.connected.clear()
                    call.cancel()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)


class LinkAcceptor:
    """Server side: attaches incoming Connect streams to local NetClients.

    ``serve`` raises domain errors (the servicer maps them to status codes):
    ConfigError for a bad hello, NotFoundError/ConflictError/LimitError from
    the lookup, LimitError when the peer broke the protocol. A NetClient made
    for a hello that named none is handed to ``release`` when the stream ends.
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

    async def serve(self, context: grpc.aio.ServicerContext[link_pb2.ConnectRequest,
                                                             link_pb2.ConnectResponse]) -> None:
        try:
            first = await asyncio.wait_for(context.read(), HELLO_TIMEOUT_S)
        except TimeoutError:
            self.links_refused += 1
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no LinkHello received")
            return
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

    async def _run(self, context: grpc.aio.ServicerContext[link_pb2.ConnectRequest,
                                                            link_pb2.ConnectResponse],
                   local: NetClient, hello: link_pb2.LinkHello) -> None:
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
        session = LinkSession(peer, _ServerStream(context))
        await session.run(hello.credits, hello.can_receive)
        if session.error is not None:
            raise session.error
