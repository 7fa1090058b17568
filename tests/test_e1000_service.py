"""The e1000 service over real gRPC: registers, the MMIO stream, IRQs, errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from virtwire.errors import ConfigError
from virtwire.guest.mmio import GrpcMmio
from virtwire.hw import e1000_regs as r
from virtwire.server.e1000 import E1000Server
from virtwire.server.guestmem import GuestMemServer
from virtwire.v1 import e1000_pb2, e1000_pb2_grpc

from support.doubles import until


@pytest.fixture
async def e1000() -> AsyncIterator[E1000Server]:
    mem = GuestMemServer("127.0.0.1:0", 4 << 20)
    await mem.start()
    nic = E1000Server("127.0.0.1:0", guestmem=mem.address, mac="52:54:00:00:00:01")
    await nic.start()
    yield nic
    await nic.stop(grace=0.1)
    await mem.stop(grace=0.1)


async def test_registers_stats_and_description(e1000: E1000Server) -> None:
    async with grpc.aio.insecure_channel(e1000.address) as channel:
        stub = e1000_pb2_grpc.E1000ServiceStub(channel)
        status = await stub.ReadRegister(e1000_pb2.ReadRegisterRequest(offset=r.E1000_STATUS))
        assert status.value == 0x80080783
        await stub.WriteRegister(e1000_pb2.WriteRegisterRequest(offset=r.E1000_IMS, value=0x80))
        resp = await stub.AccessRegisters(e1000_pb2.AccessRegistersRequest(accesses=[
            e1000_pb2.RegisterAccess(offset=r.E1000_IMS),
            e1000_pb2.RegisterAccess(offset=r.E1000_ICS, write=True, value=0x4),
            e1000_pb2.RegisterAccess(offset=r.E1000_ICR),
            e1000_pb2.RegisterAccess(offset=r.E1000_ICR),
        ]))
        assert list(resp.values) == [0x80, 0x4, 0]  # ICR is read-to-clear
        desc = await stub.DescribeDevice(e1000_pb2.DescribeDeviceRequest())
        assert (desc.model, desc.device_id, desc.mac, desc.dma_path) == (
            "82540EM", 0x100E, "52:54:00:00:00:01", "shm")
        stats = await stub.GetStats(e1000_pb2.GetStatsRequest())
        assert stats.link_up and "GPRC" in stats.registers


async def test_bad_register_accesses_are_rejected(e1000: E1000Server) -> None:
    async with grpc.aio.insecure_channel(e1000.address) as channel:
        stub = e1000_pb2_grpc.E1000ServiceStub(channel)
        for offset, code in ((0x20000, grpc.StatusCode.OUT_OF_RANGE),
                             (0xFFFFFFFC, grpc.StatusCode.OUT_OF_RANGE),
                             (0x2, grpc.StatusCode.INVALID_ARGUMENT)):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ReadRegister(e1000_pb2.ReadRegisterRequest(offset=offset))
            assert err.value.code() == code and err.value.details()
        # A bad access anywhere in a batch rejects the whole batch, before any runs.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.AccessRegisters(e1000_pb2.AccessRegistersRequest(accesses=[
                e1000_pb2.RegisterAccess(offset=r.E1000_IMS, write=True, value=0x4),
                e1000_pb2.RegisterAccess(offset=0x40000)]))
        assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert e1000.device().mmio_read(r.E1000_IMS) == 0
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.AccessRegisters(e1000_pb2.AccessRegistersRequest(
                accesses=[e1000_pb2.RegisterAccess(offset=0)] * 5000))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_mmio_stream_posts_writes_and_irq_stream_follows_the_line(
        e1000: E1000Server) -> None:
    mmio = await GrpcMmio(e1000.address).connect()
    try:
        await until(lambda: mmio.irq.changes >= 1, what="initial IRQ level")
        assert mmio.irq.level is False
        for _ in range(50):
            mmio.write(r.E1000_IMS, 0x4)  # posted: many writes share a request
        assert await mmio.read(r.E1000_IMS) == 0x4
        assert mmio.requests < 10
        mmio.write(r.E1000_ICS, 0x4)  # LSC, enabled in IMS: the line goes up
        await asyncio.wait_for(mmio.irq.wait_high(), 5)
        assert await mmio.read(r.E1000_ICR) == 0x4
        await until(lambda: not mmio.irq.level, what="line low after ICR read")
        await mmio.set_pci_command(bus_master=True, memory=False)
        assert await mmio.read(r.E1000_STATUS) == 0xFFFFFFFF  # no decode: master abort
        await mmio.set_pci_command(bus_master=True, memory=True)
        assert await mmio.read(r.E1000_STATUS) == 0x80080783
    finally:
        await mmio.close()


def test_bad_configuration_is_a_config_error() -> None:
    for kwargs, message in (({"mac": "zz"}, "bad MAC"),
                            ({"mac": "01:00:00:00:00:01"}, "multicast"),
                            ({"model": "82599"}, "unknown e1000 model"),
                            ({"guestmem": "nohost"}, "bad address")):
        args = {"guestmem": "127.0.0.1:1", "mac": "52:54:00:00:00:01", **kwargs}
        with pytest.raises(ConfigError, match=message):
            E1000Server("127.0.0.1:0", **args)  # type: ignore[arg-type]
