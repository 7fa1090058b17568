"""virtwire.v1.TraceService on every server (docs/tracing.md).

ArmTrace sets the ``sampler`` of this service's NetClients where frames enter
the LAN (their ``ingress_span`` is set); ReadSpans pages through the span ring
of ``virtwire.tracing``, at most MAX_READ_SPANS records a call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc

from virtwire import tracing
from virtwire.address import shorten
from virtwire.errors import ConfigError, ConflictError, OutOfRangeError
from virtwire.net.match import parse_match
from virtwire.net.net import NetClient
from virtwire.server.registry import NetClientRegistry
from virtwire.tracing import FinishedSpan, Sampler
from virtwire.v1 import trace_pb2, trace_pb2_grpc

#: ReadSpans' default and largest ``max_spans``.
DEFAULT_READ_SPANS = 1024
MAX_READ_SPANS = 4096
#: The most trace ids one ReadSpans may filter on.
MAX_TRACE_IDS = 256
TRACE_ID_SIZE = 16
#: Span messages built between two yields to the event loop.
READ_SLICE = 256


def ingress(registry: NetClientRegistry) -> list[NetClient]:
    """The NetClients of ``registry`` where frames enter the LAN."""
    return [nc for nc in registry.all() if nc.ingress_span]


def arm(nc: NetClient, *, every: int | None,
        match: Callable[[bytes], bool] | None, count: int) -> None:
    """Give ``nc`` a new sampler: ``every`` (None keeps its rate) and ``match``
    (None: no match); no sampler at all when neither is left."""
    if every is None:
        every = nc.sampler.every if nc.sampler is not None else 0
    if not every and match is None:
        nc.sampler = None
        return
    nc.sampler = Sampler(every=every, match=match, count=count if match is not None else 0)


def _targets(registry: NetClientRegistry, name: str) -> list[NetClient]:
    if not name:
        return ingress(registry)
    nc = registry.get(name)  # NotFoundError
    if not nc.ingress_span:
        raise ConflictError(f"{shorten(name)} is a {nc.kind}, where no frame enters the "
                            "LAN: arm a tap, stream or dgram backend or an e1000")
    return [nc]


def span_message(span: FinishedSpan) -> trace_pb2.Span:
    """A ring record as a Span message (ids big-endian, as ``tracing.to_wire``)."""
    return trace_pb2.Span(
        seq=span.seq, trace_id=span.trace_id.to_bytes(16, "big"),
        span_id=span.span_id.to_bytes(8, "big"),
        parent_span_id=(span.parent_span_id.to_bytes(8, "big") if span.parent_span_id
                        else b""),
        name=span.name, service=span.service, start_unix_nano=span.start_ns,
        end_unix_nano=span.end_ns, attributes=span.attributes)


def _trace_ids(ids: list[bytes]) -> frozenset[int]:
    if len(ids) > MAX_TRACE_IDS:
        raise ConfigError(f"{len(ids)} trace ids: at most {MAX_TRACE_IDS} a call")
    out = set()
    for tid in ids:
        if len(tid) != TRACE_ID_SIZE:
            raise ConfigError(f"a trace id of {len(tid)} bytes (expected {TRACE_ID_SIZE})")
        out.add(int.from_bytes(tid, "big"))
    return frozenset(out)


class TraceServicer(trace_pb2_grpc.TraceServiceServicer):
    """virtwire.v1.TraceService over a server's NetClientRegistry."""

    def __init__(self, registry: NetClientRegistry) -> None:
        self.registry = registry

    async def ArmTrace(self, request: trace_pb2.ArmTraceRequest,
                       context: grpc.aio.ServicerContext[Any, Any]
                       ) -> trace_pb2.ArmTraceResponse:
        # Everything is checked before any NetClient changes.
        match = parse_match(request.match).matches if request.match else None
        if match is not None and not 1 <= request.count <= tracing.MAX_MATCH_COUNT:
            raise OutOfRangeError(f"count {request.count}: trace 1 to "
                                  f"{tracing.MAX_MATCH_COUNT} matching frames")
        every = tracing.parse_sample(request.sample) if request.sample else None
        targets = _targets(self.registry, request.netclient)
        for nc in targets:
            arm(nc, every=every, match=match, count=request.count)
        return trace_pb2.ArmTraceResponse(netclients=[nc.name for nc in targets])

    async def ReadSpans(self, request: trace_pb2.ReadSpansRequest,
                        context: grpc.aio.ServicerContext[Any, Any]
                        ) -> trace_pb2.ReadSpansResponse:
        limit = request.max_spans or DEFAULT_READ_SPANS
        if limit > MAX_READ_SPANS:
            raise OutOfRangeError(f"max_spans {limit}: at most {MAX_READ_SPANS} a call")
        ids = _trace_ids(list(request.trace_ids))
        ring = tracing.recent()
        spans = ring.after(request.after_seq, limit, ids)
        last_seq, dropped = ring.seq, ring.dropped
        out: list[trace_pb2.Span] = []
        # In slices: 4096 messages take tens of milliseconds to build.
        for i in range(0, len(spans), READ_SLICE):
            if i:
                await asyncio.sleep(0)
            out.extend(span_message(s) for s in spans[i:i + READ_SLICE])
        return trace_pb2.ReadSpansResponse(spans=out, last_seq=last_seq, dropped=dropped)


__all__ = ["MAX_READ_SPANS", "TraceServicer", "arm", "ingress", "span_message"]
