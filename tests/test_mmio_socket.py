"""The same-host MMIO socket between a guest and its e1000 service.

Both transports give the same register values and interrupt levels; the
socket takes only its one-time token, refuses bad records and more sessions
than its cap (all counted), stays bounded when the driver does not read; the
guest service uses it with ``--link-transport auto`` and stays on gRPC with
``grpc`` or when the socket cannot be reached.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest

from virtwire.errors import LimitError, UnavailableError
from virtwire.guest import mmio_unix
from virtwire.guest.driver import E1000Driver
from virtwire.guest.mmio import GrpcMmio, MmioPort
from virtwire.guest.mmio_unix import RECORD, UnixMmio
from virtwire.hw import e1000_regs as r
from virtwire.hw.dma import RamDma
from virtwire.link import unix as fastpath
from virtwire.mem.client import GuestMemClient
from virtwire.server import e1000 as e1000_server
from virtwire.server.e1000 import E1000Server
from virtwire.server.guest import GuestServer, open_mmio_socket
from virtwire.server.guestmem import GuestMemServer
from virtwire.server.link import boot_id
from virtwire.v1 import e1000_pb2, e1000_pb2_grpc

from support.doubles import until

NicFactory = Callable[[], Awaitable[E1000Server]]


@pytest.fixture
async def make_nic() -> AsyncIterator[NicFactory]:
    started: list[E1000Server | GuestMemServer] = []

    async def make() -> E1000Server:
        mem = GuestMemServer("127.0.0.1:0", 8 << 20)
        await mem.start()
        started.append(mem)
        nic = E1000Server("127.0.0.1:0", guestmem=mem.address, mac="52:54:00:00:00:01")
        await nic.start()
        started.append(nic)
        return nic

    yield make
    for server in reversed(started):
        await server.stop(grace=0.1)


async def unix_port(nic: E1000Server) -> UnixMmio:
    port, why = await open_mmio_socket(nic.address, nic.address, 5.0)
    assert port is not None, why
    return port


async def offer(nic: E1000Server, boot: str | None = None) -> e1000_pb2.OfferMmioSocketResponse:
    async with grpc.aio.insecure_channel(nic.address) as channel:
        return await e1000_pb2_grpc.E1000ServiceStub(channel).OfferMmioSocket(
            e1000_pb2.OfferMmioSocketRequest(boot_id=boot_id() if boot is None else boot))


async def program(mmio: MmioPort) -> list[object]:
    """Register accesses and interrupt levels, as a driver makes and sees them."""
    seen: list[object] = []
    await until(lambda: mmio.irq.changes >= 1, what="initial IRQ level")
    seen.append(mmio.irq.level)
    for i in range(50):
        mmio.write(r.E1000_IMS, 1 << (i % 8))  # IMS sets bits: 0xFF, read back in order
    seen.append(await mmio.read(r.E1000_IMS))
    mmio.write(r.E1000_IMC, 0xFFFFFFFF)
    mmio.write(r.E1000_IMS, r.E1000_ICR_LSC)
    mmio.write(r.E1000_ICS, r.E1000_ICR_LSC)
    await asyncio.wait_for(mmio.irq.wait_high(), 5)
    seen.append(mmio.irq.level)
    seen.append(await mmio.read(r.E1000_ICR))
    await until(lambda: not mmio.irq.level, what="line low after the ICR read")
    seen.append(await mmio.read(r.E1000_ICR))
    await mmio.set_pci_command(bus_master=True, memory=False)
    seen.append(await mmio.read(r.E1000_STATUS))  # no decode: a master abort
    await mmio.set_pci_command(bus_master=True, memory=True)
    seen.append(await mmio.read(r.E1000_STATUS))
    mmio.write(r.E1000_RDBAL, 0x1000)
    await mmio.sync()
    seen.append([await mmio.read(off) for off in (r.E1000_RDBAL, r.E1000_RCTL, r.E1000_CTRL)])
    return seen


async def test_both_transports_give_the_same_results(make_nic: NicFactory) -> None:
    grpc_nic, unix_nic = await make_nic(), await make_nic()
    grpc_port = await GrpcMmio(grpc_nic.address).connect()
    socket_port = await unix_port(unix_nic)
    try:
        via_grpc = await program(grpc_port)
        via_socket = await program(socket_port)
    finally:
        await grpc_port.close()
        await socket_port.close()
    assert via_socket == via_grpc
    assert via_grpc[:7] == [False, 0xFF, True, r.E1000_ICR_LSC, 0, 0xFFFFFFFF, 0x80080783]
    assert socket_port.requests < 20  # the 50 posted writes shared socket writes
    await until(lambda: not unix_nic.mmio_sessions, what="session gone after close")


async def test_a_doorbell_write_leaves_at_once(make_nic: NicFactory) -> None:
    nic = await make_nic()
    port = await unix_port(nic)
    try:
        port.doorbells = frozenset({r.E1000_TDT})
        await port.sync()
        sent = port.requests
        port.write(r.E1000_TDBAL, 0x2000)  # posted until the end of the turn...
        assert port.requests == sent
        port.write(r.E1000_TDT, 0)  # ...unless a doorbell follows
        assert port.requests == sent + 1
        await until(lambda: nic.device().mmio_read(r.E1000_TDBAL) == 0x2000,
                    what="posted write done")
    finally:
        await port.close()


async def test_a_bad_token_or_name_is_refused(make_nic: NicFactory) -> None:
    nic = await make_nic()
    good = await offer(nic)
    assert good.socket and len(good.token) == fastpath.TOKEN_BYTES and not good.reason
    with pytest.raises(UnavailableError):
        await fastpath.dial_socket(good.socket, secrets.token_bytes(fastpath.TOKEN_BYTES))
    assert nic.mmio_listener is not None and nic.mmio_listener.tokens_refused == 1
    with pytest.raises(LimitError):
        await fastpath.dial_socket("../etc/passwd", good.token)
    with pytest.raises(LimitError):
        await fastpath.dial_socket(good.socket, b"short")
    # The real token still works, once.
    sock = await fastpath.dial_socket(good.socket, good.token)
    sock.close()
    with pytest.raises(UnavailableError):
        await fastpath.dial_socket(good.socket, good.token)
    assert nic.mmio_listener.tokens_refused == 2


async def test_no_offer_for_grpc_transport_or_another_kernel(make_nic: NicFactory) -> None:
    nic = await make_nic()
    other = await offer(nic, boot="not-this-kernel")
    assert not other.socket and not other.token and "another kernel" in other.reason
    nic.registry.set_link_transport("grpc")
    grpc_only = await offer(nic)
    assert not grpc_only.socket and "--link-transport grpc" in grpc_only.reason
    assert nic.mmio_offers_declined == 2
    port, why = await open_mmio_socket(nic.address, nic.address, 5.0)
    assert port is None and "grpc" in why


async def guest_on(nic: E1000Server, transport: str) -> GuestServer:
    guest = GuestServer("127.0.0.1:0", e1000=nic.address, guestmem=nic.guestmem_address,
                        ip="198.18.0.1/24")
    guest.registry.set_link_transport(transport)
    await guest.start()
    return guest


@pytest.mark.parametrize("transport", ["auto", "grpc"])
async def test_guest_service_picks_its_mmio_path(make_nic: NicFactory, transport: str) -> None:
    nic = await make_nic()
    guest = await guest_on(nic, transport)
    try:
        driver = guest.ready_driver()
        assert guest.mmio_path == ("unix" if transport == "auto" else "grpc")
        assert isinstance(guest.mmio, UnixMmio if transport == "auto" else GrpcMmio)
        assert len(nic.mmio_sessions) == (1 if transport == "auto" else 0)
        # The NIC works the same either way: a frame out, an interrupt seen (TXDW
        # is masked: an LSC set through ICS).
        frame = b"\xff" * 6 + driver.mac + b"\x08\x06" + bytes(46)
        assert await driver.send([frame]) == (1, 0)
        await until(lambda: nic.device().hw_stats()["GPTC"] >= 1, what="frame transmitted")
        driver.mmio.write(r.E1000_ICS, r.E1000_ICR_LSC)
        await until(lambda: driver.counters.lsc_events >= 1, what="interrupt handled")
        assert driver.counters.interrupts >= 1
    finally:
        await guest.stop(grace=0.1)
    await until(lambda: not nic.mmio_sessions, what="session gone after the guest stopped")


async def test_guest_falls_back_to_grpc_when_the_socket_is_unreachable(
        make_nic: NicFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    nic = await make_nic()

    async def elsewhere(driver_boot_id: str) -> tuple[str, bytes, str]:
        # A name no listener holds, as in another network namespace.
        return f"virtwire-link-{secrets.token_hex(16)}", secrets.token_bytes(32), ""

    monkeypatch.setattr(nic, "offer_mmio_socket", elsewhere)
    guest = await guest_on(nic, "auto")
    try:
        assert guest.mmio_path == "grpc" and "cannot reach" in guest.mmio_reason
        assert isinstance(guest.mmio, GrpcMmio)
        assert guest.ready_driver().state == "up"
    finally:
        await guest.stop(grace=0.1)


async def raw_session(nic: E1000Server) -> socket.socket:
    made = await offer(nic)
    sock = await fastpath.dial_socket(made.socket, made.token)
    sock.setblocking(True)
    sock.settimeout(5)
    return sock


async def test_bad_records_close_the_socket_and_are_counted(make_nic: NicFactory) -> None:
    nic = await make_nic()
    for record in (RECORD.pack(9, 0, 0),  # an unknown kind
                   RECORD.pack(mmio_unix.READ, 0x20000, 0),  # outside BAR0
                   RECORD.pack(mmio_unix.WRITE, 0x2, 0)):  # unaligned
        sock = await raw_session(nic)
        await until(lambda: len(nic.mmio_sessions) == 1, what="session open")
        sock.sendall(record)
        await until(lambda: not nic.mmio_sessions, what="session closed")
        sock.close()
    assert nic.mmio_records_refused == 3
    async with grpc.aio.insecure_channel(nic.address) as channel:
        stats = await e1000_pb2_grpc.E1000ServiceStub(channel).GetStats(
            e1000_pb2.GetStatsRequest())
    assert stats.mmio_socket["records_refused"] == 3 and stats.mmio_socket["sessions"] == 0


async def test_sessions_are_capped(make_nic: NicFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    nic = await make_nic()
    monkeypatch.setattr(e1000_server, "MAX_MMIO_SESSIONS", 2)
    socks = [await raw_session(nic), await raw_session(nic)]
    await until(lambda: len(nic.mmio_sessions) == 2, what="two sessions")
    refused = await offer(nic)
    assert not refused.socket and "MMIO sessions are open" in refused.reason
    assert nic.mmio_sessions_refused == 1
    for sock in socks:
        sock.close()


async def test_unused_offers_are_withdrawn(make_nic: NicFactory,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    nic = await make_nic()
    monkeypatch.setattr(e1000_server, "MMIO_OFFER_TTL_S", 0.05)
    made = await offer(nic)
    assert nic.mmio_listener is not None
    await until(lambda: not nic.mmio_listener.pending, what="offer withdrawn")
    with pytest.raises(UnavailableError):
        await fastpath.dial_socket(made.socket, made.token)


async def test_a_driver_that_reads_no_answers_is_held_back(make_nic: NicFactory) -> None:
    nic = await make_nic()
    sock = await raw_session(nic)
    await until(lambda: len(nic.mmio_sessions) == 1, what="session open")
    (session,) = nic.mmio_sessions
    flood = RECORD.pack(mmio_unix.READ, r.E1000_STATUS, 0) * 4096
    sock.setblocking(False)
    sent = 0
    for _ in range(200):  # until the socket buffers and the NIC's queue are full
        try:
            sent += sock.send(flood)
        except BlockingIOError:
            await asyncio.sleep(0.02)
    assert sent < 200 * len(flood)  # the NIC stopped taking them
    waiting = len(session._pending)
    assert waiting <= mmio_unix.MAX_PENDING_RECORDS + (256 << 10) // RECORD.size
    # The service still answers gRPC while it waits.
    async with grpc.aio.insecure_channel(nic.address) as channel:
        stats = await e1000_pb2_grpc.E1000ServiceStub(channel).GetStats(
            e1000_pb2.GetStatsRequest(), timeout=5)
    assert stats.link_up
    sock.close()
    await until(lambda: not nic.mmio_sessions, what="session closed")


async def test_a_flood_of_irq_records_in_one_read_applies_the_last_level_once() -> None:
    """One read of ~21k level changes: the line ends at the last level, every
    change is counted, and an answer among them still reaches its reader."""
    port = UnixMmio("test")
    waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    port._waiting.append(waiter)
    n = (256 * 1024) // RECORD.size
    records = b"".join(RECORD.pack(mmio_unix.IRQ, i % 2, i) for i in range(n - 1))
    records += RECORD.pack(mmio_unix.ANSWER, 0xC0, 0)
    before = port.irq.changes
    port.data_received(records)
    assert waiter.result() == 0xC0
    assert port.irq.level == bool((n - 2) % 2)
    assert port.irq.changes - before == n - 1
    assert port.error is None


async def test_an_interrupt_is_handled_inline_in_one_write(make_nic: NicFactory) -> None:
    """On the socket the driver handles an interrupt in the read that raised the
    line: the rings' RDT and TDT writes (a reply sent from the RX handler) and
    the ICR read leave in one socket write, and the read clears every cause
    (the reply's TXDW too), so one interrupt is one round trip."""
    nic = await make_nic()
    port = await unix_port(nic)
    port.doorbells = frozenset({r.E1000_TDT})
    mem = await GuestMemClient.connect(nic.guestmem_address)
    driver = E1000Driver(port, mem, watchdog_interval=60.0)
    try:
        await driver.up()
        reply = b"\xff" * 6 + driver.mac + b"\x08\x06" + bytes(46)
        got: list[bytes] = []

        def answer(frames: list[bytes]) -> None:
            got.extend(frames)
            driver.try_send([reply])

        driver.rx_handlers.append(answer)
        frame = driver.mac + b"\x52\x54\x00\x00\x00\xff\x08\x06" + bytes(50)
        await port.sync()
        sent, interrupts = port.requests, driver.counters.interrupts
        # Frames wait 1 s after the RCTL write (docs/e1000.md#receive).
        await until(lambda: nic.device().receive(frame) > 0, what="frame taken by the NIC")
        await until(lambda: driver.counters.interrupts > interrupts, what="interrupt handled")
        assert got == [frame]
        assert nic.device().hw_stats()["GPTC"] == 1
        await asyncio.sleep(0.05)
        assert driver.counters.interrupts == interrupts + 1
        assert driver.counters.spurious_interrupts == 0
        assert port.requests == sent + 1
        assert not port.irq.level
    finally:
        await driver.down()
        await port.close()
        await mem.close()


async def test_an_unanswered_inline_icr_read_is_given_up_and_counted() -> None:
    """A NIC that stops answering cannot stall interrupts: the watchdog gives the
    ICR read up after the MMIO timeout (counted), the next interrupt is handled,
    and the late answer goes to nobody."""
    port = UnixMmio("test")
    written: list[bytes] = []

    class Transport:
        def write(self, data: bytes) -> None:
            written.append(data)

    port.transport = Transport()  # type: ignore[assignment]
    driver = E1000Driver(port, RamDma(4 << 20), mmio_timeout=0.01)
    driver.state = "up"
    driver._inline = port
    port.on_read = driver._on_read
    port.data_received(RECORD.pack(mmio_unix.IRQ, 1, 1))
    first = driver._icr_read
    assert first is not None and len(written) == 1
    assert RECORD.unpack(written[0][-RECORD.size:])[:2] == (mmio_unix.READ, r.E1000_ICR)
    port.data_received(RECORD.pack(mmio_unix.IRQ, 1, 2))  # still waiting: no second read
    assert len(written) == 1
    await asyncio.sleep(0.02)
    driver._check_icr_read()
    assert driver.counters.mmio_timeouts == 1 and first.cancelled()
    port.data_received(RECORD.pack(mmio_unix.IRQ, 1, 3))  # the next interrupt goes on
    second = driver._icr_read
    assert second is not None and second is not first and len(written) == 2
    port.data_received(RECORD.pack(mmio_unix.ANSWER, r.E1000_ICR_RXT0, 0))  # the late one
    assert not second.done() and driver.counters.interrupts == 0
    port.data_received(RECORD.pack(mmio_unix.IRQ, 0, 4) + RECORD.pack(mmio_unix.ANSWER, 0x80, 0))
    assert second.result() == 0x80 and driver._icr_read is None
    assert driver.counters.interrupts == 1
