"""TraceCollector: the spans of frames traced at one node, from every service.

``virtwire trace NODE --match EXPR`` (docs/tracing.md) ends here. The
collector is only a gRPC client of the LAN's services' TraceService:

1. it reads each service's ``last_seq`` (ReadSpans), so only newer spans count;
2. it arms the node's service (ArmTrace with the match and count);
3. every ``poll_s`` it reads each service's new spans, groups them by trace id,
   and yields a trace whose root (the span without a parent) was recorded by
   the armed service on an armed NetClient, once the trace has had no new span
   for ``settle_s`` (or for one poll after a ``guest.rx`` span);
4. it stops after ``count`` traces or at the timeout (yielding the traces
   started by then as they are), and disarms the match.

Caps: ``max_spans`` spans per trace (more are counted in ``dropped``), at most
``MAX_ORPHAN_SPANS`` spans of traces whose root is not seen yet (older ones
are forgotten after ``settle_s``, overflow counted), ``MAX_PAGES`` reads of a
service per poll. Every read is an awaited RPC: the event loop is never held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import grpc

from virtwire import tls
from virtwire.errors import OutOfRangeError
from virtwire.tracing import MAX_MATCH_COUNT
from virtwire.v1 import trace_pb2, trace_pb2_grpc

logger = logging.getLogger(__name__)

#: Spans kept per trace.
MAX_SPANS_PER_TRACE = 64
#: Spans of not-yet-rooted traces kept across all of them.
MAX_ORPHAN_SPANS = 4096
#: Spans asked for per ReadSpans call, and calls per service per poll.
READ_BATCH = 1024
MAX_PAGES = 4
#: The longest trace wait (ms), and the default.
MAX_TIMEOUT_MS = 3_600_000
DEFAULT_TIMEOUT_MS = 5000
#: The span that ends a frame's path: yield soon after it.
DELIVERED_SPAN = "guest.rx"
_RPC_TIMEOUT_S = 5.0


@dataclass
class CollectedTrace:
    """One traced frame's spans, oldest first (``spans[0]`` is not always the root)."""

    trace_id: bytes
    spans: list[trace_pb2.Span] = field(default_factory=list)
    #: Spans beyond ``max_spans``.
    dropped: int = 0
    delivered: bool = False
    #: Monotonic time of the latest new span.
    last_seen: float = 0.0
    #: Armed here: its root came from the armed service and NetClient.
    rooted: bool = False

    @property
    def root(self) -> trace_pb2.Span | None:
        return next((s for s in self.spans if not s.parent_span_id), None)


def summary(trace: CollectedTrace) -> str:
    """One line about the frame: where it entered, how long, how far it went."""
    root = trace.root
    if root is None:
        return f"{len(trace.spans)} spans"
    attrs = root.attributes
    where = attrs.get("netclient", "") or root.service
    parts = [f"{root.name} on {where}"]
    if "frame.summary" in attrs:
        parts.append(attrs["frame.summary"])
    if "frame.len" in attrs:
        parts.append(f"{attrs['frame.len']} bytes")
    services = len({s.service for s in trace.spans})
    end = max(s.end_unix_nano for s in trace.spans)
    parts.append(f"{len(trace.spans)} spans in {services} services over "
                 f"{(end - root.start_unix_nano) / 1000:.0f} µs")
    parts.append("delivered" if trace.delivered else "not delivered to a guest")
    if trace.dropped:
        parts.append(f"{trace.dropped} spans not kept")
    return ", ".join(parts)


def check_trace_request(count: int, timeout_ms: int) -> float:
    """OutOfRangeError for a bad count or timeout; the timeout in seconds."""
    if not 1 <= count <= MAX_MATCH_COUNT:
        raise OutOfRangeError(f"count {count}: expected 1 to {MAX_MATCH_COUNT}")
    if timeout_ms > MAX_TIMEOUT_MS:
        raise OutOfRangeError(f"timeout_ms {timeout_ms} is over {MAX_TIMEOUT_MS} (1 h)")
    return (timeout_ms or DEFAULT_TIMEOUT_MS) / 1000


class _Source:
    """One service's TraceService and how far it was read."""

    def __init__(self, name: str, address: str) -> None:
        self.name = name
        self.address = address
        self.channel: grpc.aio.Channel | None = None
        self.stub: trace_pb2_grpc.TraceServiceStub | None = None
        self.cursor = 0
        #: False once it answered UNIMPLEMENTED (no TraceService) or failed.
        self.live = True

    def open(self) -> trace_pb2_grpc.TraceServiceStub:
        if self.stub is None:
            self.channel = tls.aio_channel(self.address)
            self.stub = trace_pb2_grpc.TraceServiceStub(self.channel)
        return self.stub

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close(None)


class TraceCollector:
    """Gathers the traces of frames armed at one service (see the module doc).

    ``services``: every service of the LAN, name -> address (TraceService is
    read on each). Counters: ``orphans_dropped`` (spans of unrooted traces not
    kept), ``unreadable`` (services that could not be read).
    """

    def __init__(self, services: Mapping[str, str], *, count: int, timeout_s: float,
                 settle_s: float = 0.2, poll_s: float = 0.05,
                 max_spans: int = MAX_SPANS_PER_TRACE) -> None:
        if not 1 <= count <= MAX_MATCH_COUNT:
            raise OutOfRangeError(f"count {count}: expected 1 to {MAX_MATCH_COUNT}")
        self.sources = [_Source(name, addr) for name, addr in services.items()]
        self.count = count
        self.timeout_s = timeout_s
        self.settle_s = settle_s
        self.poll_s = poll_s
        self.max_spans = max_spans
        self.traces: dict[bytes, CollectedTrace] = {}
        self.orphan_spans = 0
        self.orphans_dropped = 0
        self.unreadable: list[str] = []
        self.yielded = 0
        self._armed_address = ""
        self._armed_netclients: frozenset[str] = frozenset()

    async def run(self, address: str, netclient: str, match: str) -> AsyncIterator[CollectedTrace]:
        """Arm ``netclient`` of the service at ``address`` with ``match`` and
        yield up to ``count`` traces; the service's errors (a bad match, an
        unknown NetClient) raise grpc.RpcError from the arming call."""
        deadline = time.monotonic() + self.timeout_s
        armed: trace_pb2_grpc.TraceServiceStub | None = None
        try:
            await asyncio.gather(*(self._start_cursor(src) for src in self.sources))
            arm_src = next((s for s in self.sources if s.address == address), None)
            if arm_src is None:
                arm_src = _Source("", address)
                self.sources.append(arm_src)
            armed = arm_src.open()
            got = await armed.ArmTrace(trace_pb2.ArmTraceRequest(
                netclient=netclient, match=match, count=self.count), timeout=_RPC_TIMEOUT_S)
            self._armed_address = address
            self._armed_netclients = frozenset(got.netclients) or frozenset({netclient})
            while self.yielded < self.count:
                now = time.monotonic()
                last = now >= deadline
                await self._poll_all()
                for trace in self._ready(time.monotonic(), flush=last):
                    self.yielded += 1
                    yield trace
                    if self.yielded >= self.count:
                        break
                if last:
                    break
                await asyncio.sleep(min(self.poll_s, max(0.0, deadline - time.monotonic())))
        finally:
            if armed is not None and self.yielded < self.count:
                await self._disarm(armed, netclient)
            for src in self.sources:
                await src.close()

    async def _disarm(self, stub: trace_pb2_grpc.TraceServiceStub, netclient: str) -> None:
        """Best effort: the match need not outlive the trace that asked for it."""
        with contextlib.suppress(grpc.RpcError, asyncio.CancelledError):
            await stub.ArmTrace(trace_pb2.ArmTraceRequest(netclient=netclient, match=""),
                                timeout=_RPC_TIMEOUT_S)

    async def _start_cursor(self, src: _Source) -> None:
        try:
            got = await src.open().ReadSpans(
                trace_pb2.ReadSpansRequest(after_seq=(1 << 63), max_spans=1),
                timeout=_RPC_TIMEOUT_S)
            src.cursor = got.last_seq
        except grpc.RpcError as exc:
            self._lost(src, exc)

    def _lost(self, src: _Source, exc: grpc.RpcError) -> None:
        src.live = False
        self.unreadable.append(src.name or src.address)
        code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else None
        if code != grpc.StatusCode.UNIMPLEMENTED:
            logger.warning("trace: cannot read the spans of %s: %s", src.name or src.address,
                           exc.details() if isinstance(exc, grpc.aio.AioRpcError) else exc)

    async def _poll_all(self) -> None:
        # The armed service first: a root is read no later than its children's
        # next poll.
        live = [s for s in self.sources if s.live]
        armed = [s for s in live if s.address == self._armed_address]
        for src in armed:
            await self._poll(src)
        await asyncio.gather(*(self._poll(s) for s in live if s not in armed))

    async def _poll(self, src: _Source) -> None:
        stub = src.open()
        for _ in range(MAX_PAGES):
            try:
                got = await stub.ReadSpans(trace_pb2.ReadSpansRequest(
                    after_seq=src.cursor, max_spans=READ_BATCH), timeout=_RPC_TIMEOUT_S)
            except grpc.RpcError as exc:
                self._lost(src, exc)
                return
            if got.last_seq < src.cursor:  # the service restarted: a new ring
                src.cursor = 0
                continue
            for span in got.spans:
                src.cursor = max(src.cursor, span.seq)
                self._add(src, span)
            if len(got.spans) < READ_BATCH:
                return

    def _add(self, src: _Source, span: trace_pb2.Span) -> None:
        if src.name:
            span.service = src.name  # as the LAN names it (status, topology)
        trace = self.traces.get(span.trace_id)
        now = time.monotonic()
        if trace is None:
            trace = self.traces[span.trace_id] = CollectedTrace(span.trace_id, last_seen=now)
        if not span.parent_span_id:
            if (src.address == self._armed_address
                    and span.attributes.get("netclient", "") in self._armed_netclients
                    | {""}):
                if not trace.rooted:
                    trace.rooted = True
                    self.orphan_spans -= len(trace.spans)
            elif not trace.rooted:
                # Entered elsewhere (another sampler): not ours.
                self.orphan_spans -= len(trace.spans)
                del self.traces[span.trace_id]
                return
        if not trace.rooted and self.orphan_spans >= MAX_ORPHAN_SPANS:
            self.orphans_dropped += 1
            return
        if len(trace.spans) >= self.max_spans:
            trace.dropped += 1
        else:
            trace.spans.append(span)
            if not trace.rooted:
                self.orphan_spans += 1
        trace.last_seen = now
        if span.name == DELIVERED_SPAN:
            trace.delivered = True

    def _ready(self, now: float, flush: bool = False) -> list[CollectedTrace]:
        """Traces done (quiet long enough), oldest root first; unrooted ones
        quiet for ``settle_s`` are forgotten."""
        done: list[CollectedTrace] = []
        for tid, trace in list(self.traces.items()):
            quiet = now - trace.last_seen
            if not trace.rooted:
                if quiet >= self.settle_s or flush:
                    self.orphan_spans -= len(trace.spans)
                    del self.traces[tid]
                continue
            if (flush or quiet >= self.settle_s
                    or (trace.delivered and quiet >= self.poll_s)):
                trace.spans.sort(key=lambda s: s.start_unix_nano)
                done.append(trace)
                del self.traces[tid]
        done.sort(key=lambda t: t.root.start_unix_nano if t.root is not None else 0)
        return done
