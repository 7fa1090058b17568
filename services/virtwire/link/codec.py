"""A link batch as bytes: the record the same-host transport carries.

The Connect stream carries ``virtwire.v1.LinkBatch`` messages; a transport
that is a plain byte stream (``virtwire.link.unix``) carries the same fields
as one record per batch, little-endian:

    header   u32 body length, u32 frames, u32 completion requests,
             u32 completions, u32 credits, u8 ready (0 unchanged, 1 false,
             2 true, 3 true and discards), 1 byte zero, u16 frame traces
    body     u32 length of each frame
             (u32 frame index, u64 id) of each completion request
             (u64 id, i64 ret) of each completion
             (u32 frame index, 25-byte context) of each frame trace
             the frames, back to back

A frame trace is LinkBatch's FrameTrace: the frame at that index is traced,
and the context (``tracing.to_wire``: trace id, span id, flags) is the
sender's ``link.send`` span. Records without traces (tracing off) are the
records of before: the trace count was padding, written zero.

A record is checked whole before it is used: a truncated record, a body
above ``MAX_BODY``, counts above the batch limits (more traces than frames),
counts or lengths that do not add up to the body, an index outside the batch
(or twice the same) for a completion request or a trace, a trace context
with a zero trace or span id, or a bad ready byte are a ``LimitError`` (the
peer broke the protocol; the link ends), never another exception. The one
padding byte is ignored.
"""

from __future__ import annotations

import struct

from virtwire.errors import ConfigError, LimitError
from virtwire.link.peer import MAX_BATCH_BYTES, MAX_BATCH_FRAMES, Batch
from virtwire.tracing import WIRE_SIZE, from_wire

#: A record's header, trace count included.
_HEADER = struct.Struct("<IIIIIBxH")
#: The same header without the trace count, which it leaves zero (three
#: padding bytes as before traces): for records written by hand. Its size is
#: the header's.
HEADER = struct.Struct("<IIIIIB3x")
assert HEADER.size == _HEADER.size
_REQUEST = struct.Struct("<IQ")
_COMPLETION = struct.Struct("<Qq")
_TRACE = struct.Struct(f"<I{WIRE_SIZE}s")
#: Most completions one record may carry (a side answers at most its window).
MAX_COMPLETIONS = 1 << 16
#: Longest body a record may have.
MAX_BODY = (MAX_BATCH_BYTES + MAX_BATCH_FRAMES * (4 + _REQUEST.size + _TRACE.size)
            + MAX_COMPLETIONS * _COMPLETION.size)

_READY_BYTE = {None: 0, False: 1, True: 2}
#: The ready byte's values: (Batch.ready, Batch.discards).
_READY_OF: tuple[tuple[bool | None, bool], ...] = (
    (None, False), (False, False), (True, False), (True, True))


def encode(batch: Batch) -> bytes:
    """The record that carries ``batch``."""
    frames = batch.frames
    n = len(frames)
    requests = batch.completion_requests
    completions = batch.completions
    parts: list[bytes] = []
    if n:
        parts.append(struct.pack(f"<{n}I", *map(len, frames)))
    if requests:
        parts.append(b"".join([_REQUEST.pack(i, cid) for i, cid in requests.items()]))
    if completions:
        parts.append(b"".join([_COMPLETION.pack(cid, ret) for cid, ret in completions]))
    traces = batch.traces
    if traces:
        parts.append(b"".join([_TRACE.pack(i, ctx) for i, ctx in traces]))
    parts.extend(frames)
    body = b"".join(parts)
    return _HEADER.pack(len(body), n, len(requests), len(completions), batch.credits,
                        3 if batch.discards and batch.ready else _READY_BYTE[batch.ready],
                        len(traces)) + body


def body_length(header: bytes | bytearray | memoryview, offset: int = 0) -> int:
    """The body length a record's header announces; LimitError above MAX_BODY
    (or if ``header`` holds less than a header from ``offset``)."""
    if offset < 0 or len(header) - offset < HEADER.size:
        raise LimitError("a truncated link record header")
    (length,) = struct.unpack_from("<I", header, offset)
    if length > MAX_BODY:
        raise LimitError(f"a link record of {length} bytes (at most {MAX_BODY})")
    return int(length)


def decode(record: bytes, offset: int = 0) -> tuple[Batch, int]:
    """The batch in the record at ``offset`` of ``record``, and where it ends.

    ``record`` must hold the whole record (HEADER.size + body_length bytes);
    anything malformed is a LimitError.
    """
    length = body_length(record, offset)
    _, n, n_req, n_comp, credits, ready, n_trace = _HEADER.unpack_from(record, offset)
    if n > MAX_BATCH_FRAMES or n_req > n or n_comp > MAX_COMPLETIONS or ready > 3 \
            or n_trace > n:
        raise LimitError(f"a bad link record header ({n} frames, {n_req} completion "
                         f"requests, {n_comp} completions, {n_trace} frame traces, "
                         f"ready byte {ready})")
    pos = offset + HEADER.size
    end = pos + length
    if end > len(record):
        raise LimitError("a truncated link record")
    fixed = 4 * n + _REQUEST.size * n_req + _COMPLETION.size * n_comp + _TRACE.size * n_trace
    if fixed > length:
        raise LimitError(f"a link record of {length} bytes cannot hold its {n} frame "
                         f"lengths, {n_req} completion requests, {n_comp} completions "
                         f"and {n_trace} frame traces")
    lengths: tuple[int, ...] = struct.unpack_from(f"<{n}I", record, pos) if n else ()
    if fixed + sum(lengths) != length:
        raise LimitError("the frame lengths of a link record do not add up to its body")
    pos += 4 * n
    requests: dict[int, int] = {}
    for _ in range(n_req):
        index, cid = _REQUEST.unpack_from(record, pos)
        if index >= n or index in requests:
            raise LimitError(f"a bad completion request for frame {index} of {n}")
        requests[index] = cid
        pos += _REQUEST.size
    completions: list[tuple[int, int]] = []
    for _ in range(n_comp):
        cid, ret = _COMPLETION.unpack_from(record, pos)
        completions.append((cid, ret))
        pos += _COMPLETION.size
    traces: list[tuple[int, bytes]] | tuple[()] = ()
    if n_trace:
        traces = []
        traced: set[int] = set()
        for _ in range(n_trace):
            index, ctx = _TRACE.unpack_from(record, pos)
            if index >= n or index in traced:
                raise LimitError(f"a bad frame trace for frame {index} of {n}")
            try:
                from_wire(ctx)
            except ConfigError as exc:
                raise LimitError(f"frame trace {index}: {exc}") from None
            traced.add(index)
            traces.append((index, ctx))
            pos += _TRACE.size
    frames: list[bytes] = []
    for size in lengths:
        nxt = pos + size
        frames.append(record[pos:nxt])
        pos = nxt
    is_ready, discards = _READY_OF[ready]
    return Batch(frames=frames, completion_requests=requests, completions=completions,
                 credits=credits, ready=is_ready, discards=discards, traces=traces), end
