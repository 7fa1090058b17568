"""The guestmem service: virtwire.v1.GuestMemService over a GuestMemory.

The RAM is created when the server starts (a unique file in /dev/shm, or
``shm_path``: opened if it exists, created otherwise) and released when it
stops; a file the server created is removed then. Its size is at most
``max_size``, this host's configuration (``serve guestmem --max-size``,
default ``default_max_size()``); a larger one is refused with LimitError.
An access outside the RAM is a GuestMemRangeError (OUT_OF_RANGE), one after it
is closed, while the server stops, a GuestMemClosedError (UNAVAILABLE).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import grpc

from virtwire.errors import ConfigError, LimitError
from virtwire.mem.guestmem import (
    MAX_BATCH_BYTES,
    MAX_BATCH_OPS,
    MAX_OP_BYTES,
    GuestMemory,
    GuestMemRangeError,
    HostIdentity,
    check_size,
    default_max_size,
    format_size,
)
from virtwire.server.base import ServiceHost
from virtwire.server.metrics import MetricSet, Snapshot, mem_metrics
from virtwire.v1 import guestmem_pb2, guestmem_pb2_grpc

logger = logging.getLogger(__name__)


class GuestMemServer(ServiceHost):
    """One guest's RAM, served over gRPC and shared through /dev/shm."""

    service_name = "guestmem"

    def __init__(self, listen: str = "127.0.0.1:0", size: int | None = 64 << 20,
                 shm_path: str | None = None, *, prealloc: bool = True,
                 max_size: int | None = None) -> None:
        super().__init__(listen)
        self.max_size = default_max_size() if max_size is None else check_size(max_size)
        if size is not None:
            check_size(size)
            self._check_limit(size)
        elif shm_path is None:
            raise ConfigError("guestmem needs a size (or --shm-path of an existing file)")
        self.size = size
        self.shm_path = shm_path
        self.prealloc = prealloc
        self.host_identity = HostIdentity.local()
        self._memory: GuestMemory | None = None

    def _check_limit(self, size: int) -> None:
        if size > self.max_size:
            raise LimitError(f"guest memory size {format_size(size)} exceeds this host's "
                             f"limit of {format_size(self.max_size)} "
                             "(serve guestmem --max-size)")

    @property
    def memory(self) -> GuestMemory:
        if self._memory is None:
            raise ConfigError("guestmem server is not started")
        return self._memory

    def add_servicers(self, server: grpc.aio.Server) -> Sequence[str]:
        guestmem_pb2_grpc.add_GuestMemServiceServicer_to_server(GuestMemServicer(self), server)
        return [guestmem_pb2.DESCRIPTOR.services_by_name["GuestMemService"].full_name]

    async def start(self) -> None:
        if self.shm_path is None:
            assert self.size is not None
            mem = GuestMemory.create(self.size, prealloc=self.prealloc)
        else:
            mem = GuestMemory.open_or_create(self.shm_path, self.size, prealloc=self.prealloc)
            try:
                self._check_limit(mem.size)
            except LimitError:
                mem.close()
                raise
        self._memory = mem
        logger.info("guest memory: %s at %s (%s)", format_size(mem.size), mem.path,
                    "created" if mem.owned else "existing file")
        try:
            await super().start()
        except BaseException:
            mem.close()
            raise

    async def close_backends(self) -> None:
        if self._memory is not None:
            self._memory.close()

    # -- requests -----------------------------------------------------------------
    def _invalid(self, message: str) -> ConfigError:
        self.memory.counters.invalid_requests += 1
        return ConfigError(message)

    def _check_size(self, size: int, what: str) -> None:
        if size < 0:
            raise self._invalid(f"{what}: size {size} is negative")
        if size > MAX_OP_BYTES:
            raise self._invalid(f"{what}: size {size} exceeds the limit of {MAX_OP_BYTES} "
                                f"bytes per access ({format_size(MAX_OP_BYTES)})")

    def read(self, addr: int, size: int) -> bytes:
        self._check_size(size, "read")
        return self.memory.read(addr, size, "rpc")

    def write(self, addr: int, data: bytes) -> None:
        self._check_size(len(data), "write")
        self.memory.write(addr, data, "rpc")

    def batch(self, ops: Sequence[guestmem_pb2.GuestMemOp]) -> list[bytes]:
        """Check every op, then do them in order; results (b"" for writes) in order."""
        mem = self.memory
        if len(ops) > MAX_BATCH_OPS:
            raise self._invalid(f"batch of {len(ops)} ops exceeds the limit of {MAX_BATCH_OPS}")
        total = 0
        for i, op in enumerate(ops):
            kind = op.WhichOneof("kind")
            if kind == "read_size":
                size = op.read_size
            elif kind == "write_data":
                size = len(op.write_data)
            else:
                raise self._invalid(f"op {i}: neither read_size nor write_data is set")
            self._check_size(size, f"op {i}")
            total += size
            if total > MAX_BATCH_BYTES:
                raise self._invalid(f"batch moves more than {MAX_BATCH_BYTES} bytes "
                                    f"({format_size(MAX_BATCH_BYTES)}), the limit")
            try:
                mem.check(op.addr, size)
            except GuestMemRangeError as exc:
                raise GuestMemRangeError(f"op {i}: {exc}") from exc
        mem.counters.rpc_batches += 1
        results: list[bytes] = []
        for op in ops:
            if op.WhichOneof("kind") == "read_size":
                results.append(mem.read(op.addr, op.read_size, "rpc"))
            else:
                mem.write(op.addr, op.write_data, "rpc")
                results.append(b"")
        return results

    def describe(self) -> guestmem_pb2.GuestMemServiceDescribeResponse:
        mem = self.memory
        ident = self.host_identity
        return guestmem_pb2.GuestMemServiceDescribeResponse(
            size=mem.size, shm_path=mem.path, shm_device=mem.device, shm_inode=mem.inode,
            host=guestmem_pb2.GuestMemHostIdentity(boot_id=ident.boot_id,
                                                   hostname=ident.hostname),
            max_op_bytes=MAX_OP_BYTES, max_batch_bytes=MAX_BATCH_BYTES,
            max_batch_ops=MAX_BATCH_OPS, max_size=self.max_size,
            preallocated=mem.owned and self.prealloc)

    def collect_metrics(self, ms: MetricSet) -> Snapshot:
        yield from super().collect_metrics(ms)
        memory = self._memory
        if memory is not None:
            # What this service served (shared-memory accesses of its peers bypass it).
            mem_metrics(memory.counters, ms, netclient="")
            ms.gauge("virtwire_guestmem_size_bytes", "Guest RAM this service holds",
                     memory.size)

    def stats(self) -> guestmem_pb2.GuestMemCounters:
        return guestmem_pb2.GuestMemCounters(**self.memory.counters.as_dict())


class GuestMemServicer(guestmem_pb2_grpc.GuestMemServiceServicer):
    """Thin adapter: RPCs to GuestMemServer methods."""

    def __init__(self, host: GuestMemServer) -> None:
        self.host = host

    async def Read(self, request: guestmem_pb2.GuestMemServiceReadRequest,
                   context: grpc.aio.ServicerContext[Any, Any]
                   ) -> guestmem_pb2.GuestMemServiceReadResponse:
        data = self.host.read(request.addr, request.size)
        return guestmem_pb2.GuestMemServiceReadResponse(data=data)

    async def Write(self, request: guestmem_pb2.GuestMemServiceWriteRequest,
                    context: grpc.aio.ServicerContext[Any, Any]
                    ) -> guestmem_pb2.GuestMemServiceWriteResponse:
        self.host.write(request.addr, request.data)
        return guestmem_pb2.GuestMemServiceWriteResponse()

    async def Batch(self, request: guestmem_pb2.GuestMemServiceBatchRequest,
                    context: grpc.aio.ServicerContext[Any, Any]
                    ) -> guestmem_pb2.GuestMemServiceBatchResponse:
        results = self.host.batch(request.ops)
        return guestmem_pb2.GuestMemServiceBatchResponse(
            results=[guestmem_pb2.GuestMemOpResult(data=d) for d in results])

    async def Describe(self, request: guestmem_pb2.GuestMemServiceDescribeRequest,
                       context: grpc.aio.ServicerContext[Any, Any]
                       ) -> guestmem_pb2.GuestMemServiceDescribeResponse:
        return self.host.describe()

    async def Stats(self, request: guestmem_pb2.GuestMemServiceStatsRequest,
                    context: grpc.aio.ServicerContext[Any, Any]
                    ) -> guestmem_pb2.GuestMemServiceStatsResponse:
        return guestmem_pb2.GuestMemServiceStatsResponse(counters=self.host.stats())


__all__ = ["GuestMemServer", "GuestMemServicer"]
