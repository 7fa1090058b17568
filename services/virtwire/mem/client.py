"""GuestMemClient: a device's DmaMemory over the guestmem service.

``await GuestMemClient.connect(address)`` asks the service to Describe the
RAM, then picks a path by itself:

- ``"shm"`` when the server runs on the same kernel (equal boot ids) and the
  file it names is visible here as the very same file (device and inode):
  the client maps it and every access is a direct copy (vfio-user's DMA_MAP
  with an fd). Writes are visible at once; ``dma_flush`` does nothing.
- ``"rpc"`` otherwise, or when asked (``prefer_shm=False``). Reads are
  synchronous RPCs on a blocking channel (DmaMemory is synchronous: the e1000
  calls it from its receive and MMIO handlers). Writes are buffered (adjacent
  ones merged) and sent in one ``Batch`` at ``dma_flush``. A read carries the
  buffered writes ahead of it in its own Batch, so it always sees them and
  costs one round trip either way.

Accesses are checked against the RAM size locally first: an out-of-range
``dma_write`` raises at once (not at flush), on either path. Every failure is
a ``DmaError``: ``GuestMemRangeError`` for out-of-range, ``GuestMemError``
when the service refuses or cannot be reached (buffered writes of a failed
flush are dropped, like a failed bus transaction), ``GuestMemClosedError``
once the client is closed.

The async ``read``/``write``/``batch`` are for asyncio callers (a guest
driver); they take the same path. A ``Batch`` is all-or-nothing within the
service's limits; a larger request is split into several, each atomic.

Not thread-safe: one client per device (or per thread).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import grpc

from virtwire import tls
from virtwire.address import parse_sockaddr
from virtwire.errors import OutOfRangeError, VirtwireError
from virtwire.mem.guestmem import (
    COUNTER_NAMES,
    MAX_BATCH_BYTES,
    MAX_BATCH_OPS,
    MAX_OP_BYTES,
    BytesLike,
    GuestMemClosedError,
    GuestMemError,
    GuestMemory,
    GuestMemRangeError,
    HostIdentity,
    MemCounters,
    format_size,
)
from virtwire.rpc.options import GRPC_OPTIONS
from virtwire.rpc.status import call_status, error_from_rpc
from virtwire.v1 import guestmem_pb2, guestmem_pb2_grpc

logger = logging.getLogger(__name__)

DmaPath = Literal["shm", "rpc"]
DEFAULT_RPC_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class ReadOp:
    """Read ``size`` bytes at ``addr`` (in ``GuestMemClient.batch``)."""

    addr: int
    size: int


@dataclass(frozen=True, slots=True)
class WriteOp:
    """Write ``data`` at ``addr`` (in ``GuestMemClient.batch``)."""

    addr: int
    data: bytes


Op = ReadOp | WriteOp
#: One op on the wire: (addr, size, data); data None means a read.
_Wire = tuple[int, int, bytes | None]


def choose_path(info: guestmem_pb2.GuestMemServiceDescribeResponse, prefer_shm: bool,
                local: HostIdentity) -> tuple[GuestMemory | None, str]:
    """Map the server's file if this process can share it; (memory, why)."""
    if not prefer_shm:
        return None, "rpc forced (prefer_shm=False)"
    server = HostIdentity(info.host.boot_id, info.host.hostname)
    if not local.same_kernel(server):
        return None, (f"different host (server {server.hostname or '?'} boot id "
                      f"{server.boot_id or '?'}, here {local.hostname} {local.boot_id or '?'})")
    if not info.shm_path:
        return None, "the server has no shared-memory file"
    try:
        mem = GuestMemory.open(info.shm_path, info.size, device=info.shm_device,
                               inode=info.shm_inode)
    except VirtwireError as exc:
        return None, f"same host, but the shared-memory file is not usable here: {exc}"
    return mem, f"same host ({local.hostname}): mapped {info.shm_path}"


def _rpc_error(address: str, exc: grpc.RpcError) -> GuestMemError:
    """A failed call as the DmaError a device handles: GuestMemRangeError where
    ``error_from_rpc`` says OutOfRangeError, GuestMemError otherwise."""
    code, details = call_status(exc)
    if isinstance(error_from_rpc(exc), OutOfRangeError):
        return GuestMemRangeError(f"guestmem {address}: {details}")
    return GuestMemError(f"guestmem {address}: {code.name}: {details}")


@contextlib.contextmanager
def _dma_errors(address: str) -> Iterator[None]:
    """Raise ``_rpc_error`` for a call that fails inside the block."""
    try:
        yield
    except grpc.RpcError as exc:
        raise _rpc_error(address, exc) from exc


class GuestMemClient:
    """Guest memory through the guestmem service: shared memory or RPC (a DmaMemory)."""

    def __init__(self, address: str, info: guestmem_pb2.GuestMemServiceDescribeResponse,
                 channel: grpc.aio.Channel, memory: GuestMemory | None, reason: str,
                 rpc_timeout: float = DEFAULT_RPC_TIMEOUT_S) -> None:
        """Use ``connect``."""
        self.address = address
        self._target = parse_sockaddr(address, allow_port_zero=False).grpc_target
        self.size: int = info.size
        self.shm_path: str = info.shm_path
        self.server_host = HostIdentity(info.host.boot_id, info.host.hostname)
        self.max_op_bytes = min(info.max_op_bytes or MAX_OP_BYTES, MAX_OP_BYTES)
        self.max_batch_bytes = min(info.max_batch_bytes or MAX_BATCH_BYTES, MAX_BATCH_BYTES)
        self.max_batch_ops = min(info.max_batch_ops or MAX_BATCH_OPS, MAX_BATCH_OPS)
        self.rpc_timeout = rpc_timeout
        #: Why ``path`` was chosen (for logs).
        self.reason = reason
        self._memory = memory
        self._channel = channel
        self._stub: Any = guestmem_pb2_grpc.GuestMemServiceStub(channel)
        self._sync_channel: grpc.Channel | None = None
        self._sync_stub: Any = None
        #: Buffered writes: [addr, data], adjacent writes merged.
        self._pending: list[tuple[int, bytearray]] = []
        self._pending_bytes = 0
        #: What this client did, by path (shared with the mapping on the shm path).
        self.counters = memory.counters if memory is not None else MemCounters()
        self.closed = False

    @classmethod
    async def connect(cls, address: str, prefer_shm: bool = True, *,
                      local_host: HostIdentity | None = None,
                      timeout: float = CONNECT_TIMEOUT_S,
                      rpc_timeout: float = DEFAULT_RPC_TIMEOUT_S) -> GuestMemClient:
        """Describe the service's RAM and pick the path (``local_host``: for tests)."""
        target = parse_sockaddr(address, allow_port_zero=False).grpc_target
        channel = tls.aio_channel(target, options=GRPC_OPTIONS)
        try:
            stub: Any = guestmem_pb2_grpc.GuestMemServiceStub(channel)
            info = await stub.Describe(guestmem_pb2.GuestMemServiceDescribeRequest(),
                                       timeout=timeout, wait_for_ready=True)
        except grpc.RpcError as exc:
            await channel.close(None)
            code, details = call_status(exc)
            raise GuestMemError(f"cannot reach guestmem at {address}: "
                                f"{code.name}: {details}") from exc
        except BaseException:
            await channel.close(None)
            raise
        memory, reason = choose_path(info, prefer_shm, local_host or HostIdentity.local())
        client = cls(address, info, channel, memory, reason, rpc_timeout)
        logger.info("guestmem %s: %s of guest memory over %s (%s)", address,
                    format_size(info.size), client.path, reason)
        return client

    @property
    def path(self) -> DmaPath:
        """``"shm"`` (mapped, direct copies) or ``"rpc"``."""
        return "shm" if self._memory is not None else "rpc"

    @property
    def pending_writes(self) -> int:
        """Buffered writes not yet sent (rpc path)."""
        return len(self._pending)

    # -- DmaMemory (synchronous) ----------------------------------------------------
    def dma_read(self, addr: int, size: int) -> bytes:
        mem = self._memory
        if mem is not None:
            return mem.read(addr, size)
        self._check(addr, size)
        if not self._pending and size <= self.max_op_bytes:
            stub = self._sync()
            with _dma_errors(self.address):
                resp = stub.Read(guestmem_pb2.GuestMemServiceReadRequest(addr=addr, size=size),
                                 timeout=self.rpc_timeout)
            self.counters.count_read(size, "rpc")
            data: bytes = resp.data
            return data
        wire = self._take_pending()
        n = len(wire)
        wire.extend(self._split(addr, size, None))
        return b"".join(self._run_sync(wire)[n:])

    def dma_write(self, addr: int, data: bytes) -> None:
        mem = self._memory
        if mem is not None:
            mem.write(addr, data)
            return
        self._buffer(addr, data)
        if self._pending_bytes >= self.max_batch_bytes or \
                len(self._pending) >= self.max_batch_ops:
            self.dma_flush()

    def dma_flush(self) -> None:
        if self._pending:
            self._run_sync(self._take_pending())

    # -- asyncio ----------------------------------------------------------------------
    async def read(self, addr: int, size: int) -> bytes:
        """``size`` bytes at ``addr`` (sees every write made before)."""
        mem = self._memory
        if mem is not None:
            return mem.read(addr, size)
        self._check(addr, size)
        wire = self._take_pending()
        n = len(wire)
        wire.extend(self._split(addr, size, None))
        return b"".join((await self._run_async(wire))[n:])

    async def write(self, addr: int, data: BytesLike) -> None:
        """Write ``data`` at ``addr`` now (with any buffered writes before it)."""
        mem = self._memory
        if mem is not None:
            mem.write(addr, data)
            return
        payload = bytes(data)
        self._check(addr, len(payload))
        wire = self._take_pending()
        wire.extend(self._split(addr, len(payload), payload))
        await self._run_async(wire)

    async def flush(self) -> None:
        """Send buffered writes (from ``dma_write``) over the async channel."""
        if self._pending:
            await self._run_async(self._take_pending())

    async def batch(self, ops: Sequence[Op]) -> list[bytes | None]:
        """Do ``ops`` in order; the bytes read for each ReadOp, None for a WriteOp.

        Every op is checked first: if one is out of range, none is done.
        """
        for op in ops:
            self._check(op.addr, op.size if isinstance(op, ReadOp) else len(op.data))
        mem = self._memory
        if mem is not None:
            done: list[bytes | None] = []
            for op in ops:
                if isinstance(op, ReadOp):
                    done.append(mem.read(op.addr, op.size))
                else:
                    mem.write(op.addr, op.data)
                    done.append(None)
            return done
        wire = self._take_pending()
        first = len(wire)
        spans: list[int] = []
        for op in ops:
            if isinstance(op, ReadOp):
                parts = self._split(op.addr, op.size, None)
            else:
                parts = self._split(op.addr, len(op.data), bytes(op.data))
            spans.append(len(parts))
            wire.extend(parts)
        results = await self._run_async(wire)
        out: list[bytes | None] = []
        i = first
        for op, span in zip(ops, spans, strict=True):
            out.append(b"".join(results[i:i + span]) if isinstance(op, ReadOp) else None)
            i += span
        return out

    async def server_stats(self) -> MemCounters:
        """The service's own counters (RPC traffic it served)."""
        with _dma_errors(self.address):
            resp = await self._stub.Stats(guestmem_pb2.GuestMemServiceStatsRequest(),
                                          timeout=self.rpc_timeout)
        c = resp.counters
        return MemCounters(**{name: getattr(c, name) for name in COUNTER_NAMES})

    async def close(self) -> None:
        """Send buffered writes, unmap, close the channels. Idempotent."""
        if self.closed:
            return
        try:
            if self._pending:
                await self.flush()
        except GuestMemError as exc:
            logger.warning("guestmem %s: %d buffered writes lost at close: %s",
                           self.address, len(self._pending), exc)
        finally:
            self.closed = True
            if self._memory is not None:
                self._memory.close()
            if self._sync_channel is not None:
                self._sync_channel.close()
            await self._channel.close(None)

    async def __aenter__(self) -> GuestMemClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- internals ----------------------------------------------------------------------
    def _check(self, addr: int, size: int) -> None:
        if addr < 0 or size < 0 or size > self.size - addr:
            self.counters.out_of_range += 1
            raise GuestMemRangeError(
                f"access [{addr:#x}, +{size:#x}) outside guest memory of "
                f"{self.size:#x} bytes ({format_size(self.size)})")

    def _sync(self) -> Any:
        if self.closed:
            raise GuestMemClosedError(f"guestmem client for {self.address} is closed")
        if self._sync_stub is None:
            self._sync_channel = tls.sync_channel(self._target, options=GRPC_OPTIONS)
            self._sync_stub = guestmem_pb2_grpc.GuestMemServiceStub(self._sync_channel)
        return self._sync_stub

    def _buffer(self, addr: int, data: bytes) -> None:
        if self.closed:
            raise GuestMemClosedError(f"guestmem client for {self.address} is closed")
        size = len(data)
        self._check(addr, size)
        if not size:
            return
        pending = self._pending
        if pending:
            last_addr, last = pending[-1]
            if last_addr + len(last) == addr and len(last) + size <= self.max_op_bytes:
                last += data
                self._pending_bytes += size
                return
        for off in range(0, size, self.max_op_bytes):
            chunk = bytearray(data[off:off + self.max_op_bytes])
            pending.append((addr + off, chunk))
        self._pending_bytes += size

    def _take_pending(self) -> list[_Wire]:
        wire: list[_Wire] = [(a, len(d), bytes(d)) for a, d in self._pending]
        self._pending.clear()
        self._pending_bytes = 0
        return wire

    def _split(self, addr: int, size: int, data: bytes | None) -> list[_Wire]:
        m = self.max_op_bytes
        if size <= m:
            return [(addr, size, data)]
        return [(addr + off, min(m, size - off), None if data is None else data[off:off + m])
                for off in range(0, size, m)]

    def _batches(self, wire: list[_Wire]) -> Iterator[list[_Wire]]:
        """``wire`` cut into Batch calls within the service's limits."""
        chunk: list[_Wire] = []
        total = 0
        for op in wire:
            if chunk and (total + op[1] > self.max_batch_bytes
                          or len(chunk) >= self.max_batch_ops):
                yield chunk
                chunk, total = [], 0
            chunk.append(op)
            total += op[1]
        if chunk:
            yield chunk

    def _request(self, chunk: list[_Wire]) -> guestmem_pb2.GuestMemServiceBatchRequest:
        req = guestmem_pb2.GuestMemServiceBatchRequest()
        add = req.ops.add
        for addr, size, data in chunk:
            if data is None:
                add(addr=addr, read_size=size)
            else:
                add(addr=addr, write_data=data)
        return req

    def _count(self, chunk: list[_Wire]) -> None:
        c = self.counters
        c.rpc_batches += 1
        for _addr, size, data in chunk:
            if data is None:
                c.count_read(size, "rpc")
            else:
                c.count_write(size, "rpc")

    def _run_sync(self, wire: list[_Wire]) -> list[bytes]:
        stub = self._sync()
        out: list[bytes] = []
        for chunk in self._batches(wire):
            with _dma_errors(self.address):
                resp = stub.Batch(self._request(chunk), timeout=self.rpc_timeout)
            self._count(chunk)
            out.extend(r.data for r in resp.results)
        return out

    async def _run_async(self, wire: list[_Wire]) -> list[bytes]:
        if self.closed:
            raise GuestMemClosedError(f"guestmem client for {self.address} is closed")
        out: list[bytes] = []
        for chunk in self._batches(wire):
            with _dma_errors(self.address):
                resp = await self._stub.Batch(self._request(chunk), timeout=self.rpc_timeout)
            self._count(chunk)
            out.extend(r.data for r in resp.results)
        return out


__all__ = ["GuestMemClient", "Op", "ReadOp", "WriteOp", "choose_path"]
