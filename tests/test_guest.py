"""The guest service: its e1000 driver, ARP/ICMP responder, TAP-bridge parsing,
and the service itself over real processes.

In-process tests drive a real E1000 model through LocalMmio with guest memory
in a RamDma or a GuestMemory; the service tests run guestmem, e1000 and guest
processes for two guests on a `serve hub`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import struct
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virtwire.errors import BackendError, ConfigError
from virtwire.guest.bridge import (
    VIRTIO_NET_HDR,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    coalesce,
    parse_vnet_packet,
)
from virtwire.guest.driver import (
    DRIVER_IMS,
    GSO_TCPV4,
    GSO_TCPV6,
    DriverError,
    E1000Driver,
    TxPacket,
    inet_checksum,
    ones_sum,
    pseudo_header_sum,
    software_segment,
)
from virtwire.guest.mmio import GrpcMmio, IrqLine, LocalMmio
from virtwire.guest.responder import (
    ARP_REPLY,
    ARP_REQUEST,
    ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST,
    Responder,
    build_arp,
    build_echo_frame,
    parse_arp,
    parse_icmp_echo,
    parse_interface,
)
from virtwire.hw import e1000_regs as r
from virtwire.hw.dma import RamDma
from virtwire.hw.e1000 import E1000
from virtwire.hw.timer import AsyncioScheduler
from virtwire.mem.guestmem import GuestMemory
from virtwire.net.hub import Hub
from virtwire.orchestrator.launch import ServiceProcess, start_service
from virtwire.server.e1000 import E1000Server
from virtwire.server.guestmem import GuestMemServer
from virtwire.v1 import guest_pb2, guest_pb2_grpc, netclient_pb2, netclient_pb2_grpc

from support.doubles import Sink, until
from support.procs import GuestLan, guest_lan

MAC_A = bytes.fromhex("525400000a01")
MAC_B = bytes.fromhex("525400000a02")
PEER_MAC = bytes.fromhex("5254000000ff")
BCAST = b"\xff" * 6
IP_A = ipaddress.IPv4Address("198.18.0.1")
IP_B = ipaddress.IPv4Address("198.18.0.2")
NET = "198.18.0.0/24"


def frame_to(dst: bytes, n: int, size: int = 64, src: bytes = PEER_MAC) -> bytes:
    body = dst + src + b"\x88\xb5" + n.to_bytes(4, "big")
    return body + bytes((n + i) & 0xFF for i in range(max(0, size - len(body))))


# -- in-process rig ---------------------------------------------------------------------
class RecordingMmio(LocalMmio):
    """LocalMmio that records every access: ("pci", bus_master, memory),
    ("w", offset, value), ("r", offset, value)."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, int, int]] = []

    def write(self, offset: int, value: int) -> None:
        self.log.append(("w", offset, value))
        super().write(offset, value)

    async def read(self, offset: int) -> int:
        value = await super().read(offset)
        self.log.append(("r", offset, value))
        return value

    async def set_pci_command(self, *, bus_master: bool, memory: bool = True) -> None:
        self.log.append(("pci", int(bus_master), int(memory)))
        await super().set_pci_command(bus_master=bus_master, memory=memory)


class HangingMmio(RecordingMmio):
    """A NIC that stops answering reads (and syncs) once ``hang`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.hang = False

    async def read(self, offset: int) -> int:
        if self.hang:
            await asyncio.Event().wait()
        return await super().read(offset)

    async def sync(self) -> None:
        if self.hang:
            await asyncio.Event().wait()


@dataclass
class Rig:
    port: RecordingMmio
    mem: RamDma | GuestMemory
    nic: E1000
    driver: E1000Driver
    received: list[bytes]


def make_rig(*, mac: bytes = MAC_A, rx_ring: int = 64, tx_ring: int = 64,
             buf_size: int = 2048, port: RecordingMmio | None = None,
             shm: bool = False, **kw: float) -> Rig:
    port = port or RecordingMmio()
    mem: RamDma | GuestMemory = GuestMemory.create(4 << 20) if shm else RamDma(4 << 20)
    nic = E1000("nic", mac, mem, set_irq=port.irq.set, scheduler=AsyncioScheduler(),
                rx_flush_timer=False)
    port.attach(nic)
    driver = E1000Driver(port, mem, rx_ring=rx_ring, tx_ring=tx_ring, buf_size=buf_size,
                         mmio_timeout=kw.pop("mmio_timeout", 2.0), **kw)
    received: list[bytes] = []
    driver.rx_handlers.append(received.extend)
    return Rig(port, mem, nic, driver, received)


def plug(nic: E1000, other: Sink) -> None:
    nic.peer = other
    other.peer = nic


@contextlib.asynccontextmanager
async def rig_up(**kw: object) -> AsyncIterator[tuple[Rig, Sink]]:
    rig = make_rig(**kw)  # type: ignore[arg-type]
    peer = Sink("peer")
    plug(rig.nic, peer)
    await rig.driver.up()
    try:
        yield rig, peer
    finally:
        await rig.driver.down()
        if isinstance(rig.mem, GuestMemory):
            rig.mem.close()


# -- bring-up -----------------------------------------------------------------------------
async def test_bring_up_follows_linux_sequence() -> None:
    rig = make_rig(rx_ring=128, tx_ring=64)
    await rig.driver.up()
    try:
        log = rig.port.log
        lay = rig.driver.layout
        # Step 1 comes first; then IMC, then the ICR read.
        assert log[0] == ("pci", 1, 1)
        assert log[1] == ("w", r.E1000_IMC, 0xFFFFFFFF)
        assert log[2][:2] == ("r", r.E1000_ICR)
        # The MAC from the EEPROM through EERD: 64 words, each START then a DONE read.
        eerd = [e for e in log if e[1] == r.E1000_EERD]
        assert len(eerd) == 128
        assert all(eerd[2 * i] == ("w", r.E1000_EERD, (i << 8) | 1) for i in range(64))
        assert all(e[0] == "r" and e[2] & r.E1000_EEPROM_RW_REG_DONE for e in eerd[1::2])
        assert rig.driver.mac == MAC_A
        assert sum(rig.driver.eeprom) & 0xFFFF == r.EEPROM_SUM

        writes = [(off, val) for kind, off, val in log if kind == "w"]
        expected = [
            (r.E1000_RA, int.from_bytes(MAC_A[:4], "little")),
            (r.E1000_RA + 4, int.from_bytes(MAC_A[4:], "little") | r.E1000_RAH_AV),
            (r.E1000_MTA, 0),
            (r.E1000_MTA + 4 * 127, 0),
            (r.E1000_RDBAL, lay.rx_desc),
            (r.E1000_RDBAH, 0),
            (r.E1000_RDLEN, 128 * 16),
            (r.E1000_RDH, 0),
            (r.E1000_RDT, 0),
            (r.E1000_RCTL, r.E1000_RCTL_EN | r.E1000_RCTL_BAM | r.E1000_RCTL_SZ_2048),
            (r.E1000_RDT, 127),
            (r.E1000_TDBAL, lay.tx_desc),
            (r.E1000_TDBAH, 0),
            (r.E1000_TDLEN, 64 * 16),
            (r.E1000_TDH, 0),
            (r.E1000_TDT, 0),
            (r.E1000_TCTL, r.E1000_TCTL_EN | r.E1000_TCTL_PSP | (15 << 4) | (63 << 12)),
            (r.E1000_IMS, 0x9C),  # Linux's 0x9D without TXDW (docs/guest.md#interrupts)
        ]
        positions = [writes.index(w) for w in expected]
        assert positions == sorted(positions), "bring-up out of order (docs/guest.md)"
        assert writes.index(expected[0]) > max(i for i, w in enumerate(writes)
                                               if w[0] == r.E1000_EERD)
        assert not rig.nic.mac_reg[r.RCTL] & r.E1000_RCTL_SECRC  # the driver strips the FCS
        assert writes[-1] == (r.E1000_IMS, DRIVER_IMS)
        # Every MTA entry cleared, RA1..15 cleared.
        assert sum(1 for off, _ in writes if r.E1000_MTA <= off < r.E1000_MTA + 512) == 128
        # Rings in guest memory: RX descriptors point at their buffers.
        for i in (0, 1, 127):
            addr = struct.unpack_from("<Q", rig.mem.dma_read(lay.rx_desc + 16 * i, 8))[0]
            assert addr == lay.rx_bufs + i * 2048
        assert rig.driver.link_up and rig.driver.state == "up"
        assert rig.nic.bus_master
    finally:
        await rig.driver.down()
    assert rig.nic.mac_reg[r.RCTL] == 0 and rig.nic.mac_reg[r.IMS] == 0


async def test_bad_configuration_is_rejected() -> None:
    port = LocalMmio()
    mem = RamDma(1 << 20)
    for kw in ({"rx_ring": 12}, {"tx_ring": 8192}, {"buf_size": 3000}, {"mem_base": 0x123}):
        with pytest.raises(ConfigError):
            E1000Driver(port, mem, **kw)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="needs guest memory"):
        E1000Driver(port, mem, mem_base=0x100000)


# -- data path ------------------------------------------------------------------------------
async def test_send_and_receive() -> None:
    async with rig_up() as (rig, peer):
        frames = [frame_to(PEER_MAC, i, 60 + i * 20, src=MAC_A) for i in range(20)]
        assert await rig.driver.send(frames) == (20, 0)
        assert peer.frames == frames
        assert rig.driver.counters.interrupts == 0  # TXDW is masked
        rig.driver.reclaim_tx()  # (status does this too)
        assert rig.driver.counters.tx_frames == 20
        for f in (frame_to(MAC_A, 1), frame_to(BCAST, 2, 1514), frame_to(MAC_B, 3)):
            peer.send_packet(f)
        await until(lambda: len(rig.received) == 2, what="two frames received")
        # FCS dropped, exact bytes; the frame for another MAC was filtered by the NIC.
        assert rig.received == [frame_to(MAC_A, 1), frame_to(BCAST, 2, 1514)]
        assert rig.driver.counters.rx_frames == 2
        assert rig.driver.counters.interrupts >= 1


async def test_ring_wraps_many_times_with_batched_tail_writes() -> None:
    async with rig_up(rx_ring=32, tx_ring=32, shm=True) as (rig, peer):
        frames = [frame_to(PEER_MAC, i, 64 + i % 1400, src=MAC_A) for i in range(3000)]
        for i in range(0, len(frames), 25):
            assert await rig.driver.send(frames[i:i + 25]) == (25, 0)
        assert peer.frames == frames
        tdt = sum(1 for e in rig.port.log if e[:2] == ("w", r.E1000_TDT))
        # Bring-up, one per batch, and at most one more each time a batch found
        # the ring full and sent its rest after waiting (none if nothing of it
        # fitted; how often depends on the NIC's pace); never one per frame.
        batches = 3000 // 25
        assert 1 + batches <= tdt <= 1 + batches + rig.driver.counters.tx_ring_full

        incoming = [frame_to(MAC_A, i, 64 + (i * 7) % 1450) for i in range(3000)]
        for i, f in enumerate(incoming):
            peer.send_packet(f)
            if i % 20 == 19:  # let the driver take them off the ring as a guest would
                await until(lambda n=i + 1: len(rig.received) >= n, what=f"{i + 1} frames")
        await until(lambda: len(rig.received) == 3000, what="all frames")
        assert rig.received == incoming
        rdt = sum(1 for e in rig.port.log if e[:2] == ("w", r.E1000_RDT)) - 2
        c = rig.driver.counters
        assert rdt == c.rdt_writes and rdt < 3000 and c.rx_frames == 3000
        assert rig.nic.drops.rx_no_buffers == 0


async def test_frames_spanning_descriptors_are_reassembled() -> None:
    async with rig_up(buf_size=256) as (rig, peer):
        sizes = [60, 252, 253, 256, 257, 1000, 1514]
        for i, size in enumerate(sizes):
            peer.send_packet(frame_to(MAC_A, i, size))
        await until(lambda: len(rig.received) == len(sizes), what="frames")
        assert [len(f) for f in rig.received] == sizes
        assert rig.received == [frame_to(MAC_A, i, s) for i, s in enumerate(sizes)]
        # And a long frame out: chained descriptors, one packet on the wire.
        big = frame_to(PEER_MAC, 9, 1514, src=MAC_A)
        assert await rig.driver.send([big]) == (1, 0)
        assert peer.frames[-1] == big


async def test_full_tx_ring_drops_and_counts_without_hanging() -> None:
    async with rig_up(tx_ring=16) as (rig, peer):
        rig.nic.mmio_write(r.E1000_TCTL, 0)  # transmit stalls: nothing completes
        frames = [frame_to(PEER_MAC, i, src=MAC_A) for i in range(40)]
        t0 = time.monotonic()
        queued, dropped = await rig.driver.send(frames, timeout=0.2)
        assert time.monotonic() - t0 < 2.0
        assert (queued, dropped) == (15, 25)  # one descriptor always stays free
        assert rig.driver.counters.tx_dropped == 25 and rig.driver.counters.tx_ring_full >= 1
        assert rig.driver.try_send(frames[:3]) == (0, 3)
        assert peer.frames == []
        # Transmit resumes: the ring drains and sending works again.
        rig.nic.mmio_write(r.E1000_TCTL, r.E1000_TCTL_EN)
        assert len(peer.frames) == 15
        assert await rig.driver.send(frames[:5], timeout=1.0) == (5, 0)


async def test_txdw_is_unmasked_only_while_a_send_waits_for_ring_space() -> None:
    async with rig_up(tx_ring=16) as (rig, peer):
        assert not rig.nic.mac_reg[r.IMS] & r.E1000_ICR_TXDW
        rig.nic.mmio_write(r.E1000_TCTL, 0)  # transmit stalls: the ring fills
        frames = [frame_to(PEER_MAC, i, src=MAC_A) for i in range(40)]
        send = asyncio.create_task(rig.driver.send(frames, timeout=5.0))
        await until(lambda: rig.nic.mac_reg[r.IMS] & r.E1000_ICR_TXDW, what="TXDW unmasked")
        interrupts = rig.driver.counters.interrupts
        rig.nic.mmio_write(r.E1000_TCTL, r.E1000_TCTL_EN)  # completions raise TXDW
        assert await send == (40, 0)
        assert len(peer.frames) == 40
        # Woken by the interrupts, not the 50 ms poll of each of the ~3 waits.
        assert rig.driver.counters.interrupts > interrupts
        assert not rig.nic.mac_reg[r.IMS] & r.E1000_ICR_TXDW  # masked again


async def test_invalid_packets_are_dropped_not_raised() -> None:
    async with rig_up() as (rig, peer):
        bad = [b"short", b"x" * 20000, TxPacket(b"\0" * 100, gso_type=GSO_TCPV4, gso_size=100),
               TxPacket(frame_to(PEER_MAC, 1), csum_start=60, csum_offset=10)]
        queued, dropped = await rig.driver.send([*bad, frame_to(PEER_MAC, 2, src=MAC_A)])
        assert (queued, dropped) == (1, 4)
        assert rig.driver.counters.tx_invalid == 4
        assert len(peer.frames) == 1


async def test_unresponsive_nic_never_hangs_the_driver() -> None:
    port = HangingMmio()
    port.hang = True
    rig = make_rig(port=port, mmio_timeout=0.2)
    t0 = time.monotonic()
    with pytest.raises(DriverError, match="did not answer"):
        await rig.driver.up()
    assert time.monotonic() - t0 < 3

    port2 = HangingMmio()
    rig2 = make_rig(port=port2, mmio_timeout=0.2, tx_ring=8, watchdog_interval=0.1)
    plug(rig2.nic, Sink("peer"))
    await rig2.driver.up()
    try:
        port2.hang = True
        rig2.nic.mmio_write(r.E1000_TCTL, 0)
        await until(lambda: rig2.driver.counters.mmio_timeouts >= 2, timeout=5,
                    what="watchdog reads to time out")
        queued, dropped = await rig2.driver.send(
            [frame_to(PEER_MAC, i, src=MAC_A) for i in range(10)], timeout=0.3)
        assert (queued, dropped) == (7, 3)
        assert rig2.driver.state == "up"
    finally:
        port2.hang = False
        await rig2.driver.down()


async def test_link_changes_are_followed() -> None:
    async with rig_up() as (rig, _peer):
        changes: list[bool] = []
        rig.driver.link_handlers.append(changes.append)
        rig.nic.set_link(False)
        await until(lambda: not rig.driver.link_up, what="link down")
        rig.nic.set_link(True)  # autonegotiation: up again 500 ms later
        await until(lambda: rig.driver.link_up, timeout=5, what="link up")
        assert changes == [False, True]
        assert rig.driver.counters.lsc_events >= 2


async def test_nic_failure_is_reported() -> None:
    async with rig_up() as (rig, _peer):
        class Broken(RecordingMmio):
            def write(self, offset: int, value: int) -> None:
                raise BackendError("MMIO stream failed")

        rig.driver.mmio = Broken()
        with pytest.raises(DriverError):
            await rig.driver.send([frame_to(PEER_MAC, 1, src=MAC_A)])
        assert rig.driver.state == "failed"
        with pytest.raises(DriverError, match="not up"):
            rig.driver.try_send([frame_to(PEER_MAC, 1, src=MAC_A)])


# -- offloads -----------------------------------------------------------------------------------
def tcp_frame(payload: bytes, *, v6: bool = False, seq: int = 1000, flags: int = 0x18,
              partial: bool = True) -> tuple[bytes, int]:
    """An Ethernet/IP/TCP frame as a kernel hands it with CHECKSUM_PARTIAL: the TCP
    checksum field holds the pseudo-header sum (with the length). (frame, l4)."""
    tcp = bytearray(struct.pack("!HHIIBBHHH", 40000, 5201, seq, 77, 5 << 4, flags, 64240, 0, 0))
    tcp += payload
    if v6:
        src, dst = bytes(15) + b"\x01", bytes(15) + b"\x02"
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64, src, dst)
        eth = PEER_MAC + MAC_A + b"\x86\xdd"
    else:
        src, dst = IP_A.packed, IP_B.packed
        ip_hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 4242, 0x4000,
                                       64, 6, 0, src, dst))
        ip_hdr[10:12] = inet_checksum(ip_hdr).to_bytes(2, "big")
        ip = bytes(ip_hdr)
        eth = PEER_MAC + MAC_A + b"\x08\x00"
    if partial:
        tcp[16:18] = pseudo_header_sum(src, dst, 6, len(tcp)).to_bytes(2, "big")
    else:
        tcp[16:18] = inet_checksum(tcp, pseudo_header_sum(src, dst, 6, len(tcp))
                                   ).to_bytes(2, "big")
    return eth + ip + bytes(tcp), len(eth) + len(ip)


def check_tcp_segment(frame: bytes, l4: int, v6: bool) -> tuple[int, bytes, int]:
    """Assert valid IP and TCP checksums; (seq, payload, flags)."""
    l3 = 14
    if v6:
        src, dst = frame[l3 + 8:l3 + 24], frame[l3 + 24:l3 + 40]
        assert struct.unpack_from("!H", frame, l3 + 4)[0] == len(frame) - l4
    else:
        assert inet_checksum(frame[l3:l4]) == 0, "bad IPv4 header checksum"
        assert struct.unpack_from("!H", frame, l3 + 2)[0] == len(frame) - l3
        src, dst = frame[l3 + 12:l3 + 16], frame[l3 + 16:l3 + 20]
    tcp = frame[l4:]
    assert inet_checksum(tcp, pseudo_header_sum(src, dst, 6, len(tcp))) == 0, "bad TCP sum"
    return struct.unpack_from("!I", tcp, 4)[0], tcp[20:], tcp[13]


@pytest.mark.parametrize("v6", [False, True], ids=["tcpv4-nic-tso", "tcpv6-driver-gso"])
async def test_tso_super_frame_becomes_valid_segments(v6: bool) -> None:
    payload = bytes(range(256)) * 250  # 64000 bytes
    frame, l4 = tcp_frame(payload, v6=v6, flags=0x19)  # PSH|FIN|ACK
    pkt = TxPacket(frame, l4, 16, GSO_TCPV6 if v6 else GSO_TCPV4, 1448)
    async with rig_up() as (rig, peer):
        assert await rig.driver.send([pkt]) == (1, 0)
        segs = peer.frames
        assert len(segs) == -(-len(payload) // 1448)
        got = b""
        for k, seg in enumerate(segs):
            seq, data, flags = check_tcp_segment(seg, l4, v6)
            assert seq == 1000 + len(got)
            last = k == len(segs) - 1
            assert bool(flags & 0x09) == last  # PSH, FIN only on the last
            assert len(data) == (1448 if not last else len(payload) - 1448 * k)
            got += data
        assert got == payload
        c = rig.driver.counters
        assert (c.tx_tso, c.tx_soft_segmented) == ((0, 1) if v6 else (1, 0))
        if not v6:
            ids = [struct.unpack_from("!H", s, 18)[0] for s in segs]
            assert ids == [(4242 + k) & 0xFFFF for k in range(len(segs))]
            assert rig.nic.mac_reg[r.TSCTC] == 1


async def test_checksum_offload() -> None:
    frame, l4 = tcp_frame(b"hello, checksum offload" * 10)
    async with rig_up() as (rig, peer):
        pkts = [TxPacket(frame, l4, 16), TxPacket(frame, l4, 16)]
        assert await rig.driver.send(pkts) == (2, 0)
        for seg in peer.frames:
            check_tcp_segment(seg, l4, False)
        assert rig.driver.counters.tx_csum_offload == 2
        # The second packet reused the cached context descriptor.
        assert rig.nic.mac_reg[r.TDT] == 2 + 1


def test_software_segmentation_and_checksums() -> None:
    assert ones_sum(b"\x00\x01\xf2\x03\xf4\xf5\xf6\xf7") == 0xDDF2  # RFC 1071's example
    assert inet_checksum(b"") == 0xFFFF
    payload = os.urandom(5000)
    frame, l4 = tcp_frame(payload, seq=0xFFFFFF00)
    segs = software_segment(TxPacket(frame, l4, 16, GSO_TCPV4, 1000))
    assert len(segs) == 5
    data = b""
    for seg in segs:
        seq, chunk, _ = check_tcp_segment(seg, l4, False)
        assert seq == (0xFFFFFF00 + len(data)) & 0xFFFFFFFF
        data += chunk
    assert data == payload


# -- the TAP bridge's packet parsing ---------------------------------------------------------
def test_vnet_header_parsing() -> None:
    frame, l4 = tcp_frame(b"x" * 3000)
    hdr = VIRTIO_NET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, GSO_TCPV4, l4 + 20, 1448, l4, 16)
    pkt = parse_vnet_packet(hdr + frame)
    assert (pkt.frame, pkt.csum_start, pkt.csum_offset, pkt.gso_type, pkt.gso_size) == (
        frame, l4, 16, GSO_TCPV4, 1448)
    plain = parse_vnet_packet(bytes(10) + frame)
    assert (plain.csum_start, plain.gso_type) == (-1, 0)
    for bad in (b"", bytes(20),
                VIRTIO_NET_HDR.pack(0, 3, 0, 0, 0, 0) + frame,  # UFO was not offered
                VIRTIO_NET_HDR.pack(1, 0, 0, 0, len(frame), 16) + frame,  # csum outside
                VIRTIO_NET_HDR.pack(0, GSO_TCPV4, 0, 1448, 0, 0) + frame,  # GSO w/o csum
                VIRTIO_NET_HDR.pack(1, 0x81, 0, 1448, l4, 16) + frame):  # ECN
        with pytest.raises(ValueError):
            parse_vnet_packet(bad)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=200),
       st.one_of(st.sampled_from([0, GSO_TCPV4, GSO_TCPV6]), st.integers(0, 255)),
       st.integers(0, 0xFFFF))
def test_vnet_parsing_never_crashes(data: bytes, gso: int, num: int) -> None:
    """Any header is parsed or refused with ValueError; a valid one is accepted:
    a whole Ethernet header, no GSO (0) or TCP GSO, checksum offsets inside the
    frame, and GSO only with checksum offload and an MSS."""
    needs_csum = bool(num & 1)
    csum_start, csum_offset = num % 300, num % 40
    buf = VIRTIO_NET_HDR.pack(num & 1, gso, num, num, csum_start, csum_offset) + data
    valid = (len(data) >= 14 and gso in (0, GSO_TCPV4, GSO_TCPV6)
             and (not needs_csum or csum_start + csum_offset + 2 <= len(data))
             and (gso == 0 or (needs_csum and num != 0)))
    try:
        pkt = parse_vnet_packet(buf)
    except ValueError as exc:
        assert not valid, f"a valid packet was refused ({exc})"
        return
    assert valid, "an invalid packet was accepted"
    assert pkt.frame == data
    assert (pkt.csum_start, pkt.gso_type) == (csum_start if needs_csum else -1, gso)
    if gso:
        assert (pkt.csum_offset, pkt.gso_size) == (csum_offset, num)


def test_received_segments_are_coalesced_into_gso_packets() -> None:
    payload = os.urandom(10 * 1448 + 100)
    frame, l4 = tcp_frame(payload, flags=0x18)  # PSH|ACK on the super-frame
    segs = software_segment(TxPacket(frame, l4, 16, GSO_TCPV4, 1448))
    other, _ = tcp_frame(b"other flow", seq=5)
    other = other[:36] + b"\x9c\x41" + other[38:]  # another source port
    other = other[:50] + b"\0\0" + other[52:]
    other = other[:50] + inet_checksum(other[34:], pseudo_header_sum(
        IP_A.packed, IP_B.packed, 6, len(other) - 34)).to_bytes(2, "big") + other[52:]
    arp = build_arp(ARP_REQUEST, MAC_B, IP_B, bytes(6), IP_A, eth_dst=BCAST)
    corrupt = bytearray(segs[3])
    corrupt[-1] ^= 1
    out = coalesce([arp, *segs[:3], other, *segs[3:6], bytes(corrupt), *segs[4:]])
    # ARP, 3 merged, the other flow, 3 merged, the corrupt one as it is, 7 merged
    kinds = [len(f) for _, f in out]
    assert len(out) == 6 and out[0] == (bytes(10), arp) and out[2] == (bytes(10), other)
    assert out[4] == (bytes(10), bytes(corrupt))
    merged = [out[1], out[3], out[5]]
    expect = [segs[:3], segs[3:6], segs[4:]]
    for (vnet, big), parts in zip(merged, expect, strict=True):
        flags, gso, hdr_len, gso_size, start, off = VIRTIO_NET_HDR.unpack(vnet)
        assert (flags, gso, hdr_len, gso_size, start, off) == (
            VIRTIO_NET_HDR_F_NEEDS_CSUM, GSO_TCPV4, l4 + 20, 1448, l4, 16)
        assert big[l4 + 20:] == b"".join(p[l4 + 20:] for p in parts)
        assert inet_checksum(big[14:l4]) == 0 and int.from_bytes(big[16:18], "big") == \
            len(big) - 14
        # The TCP checksum field holds the pseudo-header sum (CHECKSUM_PARTIAL).
        assert int.from_bytes(big[l4 + 16:l4 + 18], "big") == pseudo_header_sum(
            IP_A.packed, IP_B.packed, 6, len(big) - l4)
        assert struct.unpack_from("!I", big, l4 + 4)[0] == struct.unpack_from(
            "!I", parts[0], l4 + 4)[0]
    assert merged[2][1][l4 + 13] & 0x08  # PSH of the last segment kept
    assert kinds[1] > 3 * 1448


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=120), max_size=6), st.integers(0, 5))
def test_coalescing_never_crashes(junk: list[bytes], cut: int) -> None:
    frame, l4 = tcp_frame(b"y" * 3000)
    segs = software_segment(TxPacket(frame, l4, 16, GSO_TCPV4, 1000))
    frames = [*segs[:cut], *junk, *segs[cut:], *(s[:60] for s in segs)]
    out = coalesce(frames)
    assert sum(len(f) for _, f in out) <= sum(len(f) for f in frames)


# -- responder --------------------------------------------------------------------------------
class Wire:
    """A transmit callable that records what the responder sends."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def __call__(self, frames: list[bytes]) -> None:
        self.frames.extend(frames)


def responder(ip: str = "198.18.0.1/24") -> tuple[Responder, Wire]:
    wire = Wire()
    return Responder(MAC_A, ipaddress.IPv4Interface(ip), wire), wire


def test_parse_interface() -> None:
    assert str(parse_interface("198.18.0.1/24")) == "198.18.0.1/24"
    for bad in ("198.18.0.1", "198.18.0.0/24", "198.18.0.255/24", "300.1.1.1/24",
                "198.18.0.1/33", "224.0.0.1/4", "0.0.0.0/8", "127.0.0.1/8", "fe80::1/64", ""):
        with pytest.raises(ValueError):
            parse_interface(bad)


def test_arp_requests_are_answered_and_learned() -> None:
    resp, wire = responder()
    req = build_arp(ARP_REQUEST, MAC_B, IP_B, bytes(6), IP_A, eth_dst=BCAST) + bytes(18)
    resp.handle([req])
    assert len(wire.frames) == 1
    reply = wire.frames[0]
    assert reply[:6] == MAC_B and reply[6:12] == MAC_A
    arp = parse_arp(reply)
    assert (arp.op, arp.sha, arp.spa, arp.tha, arp.tpa) == (ARP_REPLY, MAC_A, IP_A, MAC_B, IP_B)
    assert resp.arp.lookup(IP_B) == MAC_B
    # A request for another address is not answered; off-subnet senders not learned.
    other = ipaddress.IPv4Address("198.18.0.9")
    far = ipaddress.IPv4Address("10.0.0.1")
    resp.handle([build_arp(ARP_REQUEST, MAC_B, IP_B, bytes(6), other, eth_dst=BCAST),
                 build_arp(ARP_REQUEST, MAC_B, far, bytes(6), IP_A, eth_dst=BCAST)])
    assert len(wire.frames) == 2 and resp.arp.lookup(far) is None
    assert resp.counters.arp_replies == 2 and resp.replies == 2


def test_echo_requests_are_answered() -> None:
    resp, wire = responder()
    data = b"0123456789abcdef" * 4
    req = build_echo_frame(ICMP_ECHO_REQUEST, MAC_B, MAC_A, IP_B, IP_A, 0x1234, 7, data)
    resp.handle([req + bytes(10)])  # Ethernet padding is ignored
    (reply,) = wire.frames
    echo = parse_icmp_echo(reply)
    assert echo is not None
    assert (echo.kind, echo.ident, echo.seq, echo.data) == (ICMP_ECHO_REPLY, 0x1234, 7, data)
    assert (echo.src, echo.dst, reply[:6]) == (IP_A, IP_B, MAC_B)
    # Not for us, broadcast, bad checksums: ignored or counted as malformed.
    resp.handle([build_echo_frame(ICMP_ECHO_REQUEST, MAC_B, MAC_A, IP_B, IP_B, 1, 1, b""),
                 build_echo_frame(ICMP_ECHO_REQUEST, MAC_B, BCAST, IP_B, IP_A, 1, 1, b"")])
    broken = bytearray(req)
    broken[-1] ^= 0xFF
    resp.handle([bytes(broken)])
    assert len(wire.frames) == 1
    assert resp.counters.malformed == 1 and resp.counters.echo_replies == 1


def _valid_frames() -> list[bytes]:
    return [build_arp(ARP_REQUEST, MAC_B, IP_B, bytes(6), IP_A, eth_dst=BCAST),
            build_echo_frame(ICMP_ECHO_REQUEST, MAC_B, MAC_A, IP_B, IP_A, 1, 2, b"abc" * 9),
            build_echo_frame(ICMP_ECHO_REPLY, MAC_B, MAC_A, IP_B, IP_A, 1, 2, b"")]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_valid_frames()),
       st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=8),
       st.integers(0, 200), st.binary(max_size=64))
def test_responder_survives_malformed_frames(base: bytes, flips: list[tuple[int, int]],
                                             cut: int, junk: bytes) -> None:
    resp, wire = responder()
    mutated = bytearray(base)
    for pos, val in flips:
        if pos < len(mutated):
            mutated[pos] = val
    frames = [bytes(mutated), bytes(mutated[:cut]), junk, MAC_A + junk, BCAST + MAC_B + junk]
    resp.handle(frames)  # never raises
    assert len(wire.frames) <= len(frames)
    for out in wire.frames:  # whatever it sends is well formed
        assert out[6:12] == MAC_A and len(out) >= 42


async def test_ping_between_two_guests_through_a_hub() -> None:
    hub = Hub()
    rigs = [make_rig(mac=MAC_A), make_rig(mac=MAC_B)]
    responders = []
    for rig, ip in zip(rigs, ("198.18.0.1/24", "198.18.0.2/24"), strict=True):
        port = hub.add_port()
        rig.nic.peer = port
        port.peer = rig.nic
        await rig.driver.up()
        resp = Responder(rig.driver.mac, ipaddress.IPv4Interface(ip), rig.driver.try_send)
        rig.driver.rx_handlers.append(resp.handle)
        responders.append(resp)
    try:
        result = await responders[0].ping("198.18.0.2", count=4, interval=0.01, timeout=2)
        assert result.transmitted == 4 and result.received == 4
        assert [seq for seq, _ in result.replies] == [1, 2, 3, 4]
        assert all(rtt is not None and 0 < rtt < 2e6 for _, rtt in result.replies)
        assert result.mac == MAC_B
        assert responders[1].counters.echo_replies == 4
        assert responders[1].arp.lookup(IP_A) == MAC_A  # learned from the ARP request
        # Nobody there: ARP fails, no replies; and bad targets are refused.
        lost = await responders[0].ping("198.18.0.77", count=2, interval=0.01, timeout=0.3)
        assert (lost.transmitted, lost.received) == (2, 0)
        for bad in ("198.18.0.1", "10.1.1.1", "198.18.0.255", "nope", "224.0.0.1"):
            with pytest.raises(ValueError):
                await responders[0].ping(bad, count=1)
        with pytest.raises(ValueError):
            await responders[0].ping("198.18.0.2", count=1001)
    finally:
        for rig in rigs:
            await rig.driver.down()


async def test_irq_line_waits() -> None:
    line = IrqLine()
    waiter = asyncio.ensure_future(line.wait_high())
    await asyncio.sleep(0)
    assert not waiter.done()
    line.set(True)
    await asyncio.wait_for(waiter, 1)


# -- the service over real processes ----------------------------------------------------------
def start_guest(args: Sequence[str], workdir: Path, timeout: float = 30.0) -> ServiceProcess:
    """`virtwire serve guest ARGS`; BackendError with the log if it does not come up."""
    return start_service("guest", args, workdir, timeout)


@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuestLan]:
    with guest_lan(tmp_path_factory.mktemp("guests"),
                   [["--ip", "198.18.0.1/24"], ["--ip", "198.18.0.2/24"], []]) as lan:
        yield lan


def stub(proc: ServiceProcess) -> guest_pb2_grpc.GuestServiceStub:
    return guest_pb2_grpc.GuestServiceStub(grpc.aio.insecure_channel(proc.address))


async def test_service_ping_between_guests(lan: GuestLan) -> None:
    a = stub(lan.guests[0])
    resp = await a.Ping(guest_pb2.PingRequest(address="198.18.0.2", count=3, interval_ms=20,
                                              timeout_ms=3000), timeout=30)
    assert (resp.transmitted, resp.received) == (3, 3)
    assert [p.seq for p in resp.replies] == [1, 2, 3]
    assert all(p.HasField("rtt_us") and 0 < p.rtt_us < 3e6 for p in resp.replies)
    status = await stub(lan.guests[1]).GetStatus(guest_pb2.GetStatusRequest())
    assert status.ip == "198.18.0.2/24" and status.mac == "52:54:00:00:0a:02"
    assert status.link_up and status.responder_replies >= 3 and status.interrupts > 0
    assert status.e1000 == lan.nics[1].address


async def test_service_send_and_receive_streams(lan: GuestLan) -> None:
    a, c = stub(lan.guests[0]), stub(lan.guests[2])
    mac_c = bytes.fromhex("52540000" "0a03")
    call = c.Receive(guest_pb2.ReceiveRequest())
    frames = [frame_to(mac_c, i, 60 + i * 4, src=MAC_A) for i in range(300)]
    got: list[bytes] = []

    async def collect() -> None:
        async for item in call:
            assert item.timestamp_ns > 0
            if item.frame[12:14] == b"\x88\xb5":  # not ARP from other tests
                got.append(item.frame)
                if len(got) == len(frames):
                    return

    collector = asyncio.ensure_future(collect())
    try:
        await asyncio.sleep(0.3)  # the subscription is in place
        before = (await c.GetStatus(guest_pb2.GetStatusRequest())).rx_frames
        for i in range(0, 300, 100):
            resp = await a.Send(guest_pb2.SendRequest(frames=frames[i:i + 100]), timeout=10)
            assert (resp.queued, resp.dropped) == (100, 0)
        await asyncio.wait_for(collector, 20)
    finally:
        collector.cancel()
        call.cancel()
    assert got == frames
    after = await c.GetStatus(guest_pb2.GetStatusRequest())
    assert after.rx_frames - before >= 300 and after.ip == ""


@pytest.mark.parametrize("request_, message", [
    (guest_pb2.PingRequest(address="not-an-ip"), "bad IPv4 address"),
    (guest_pb2.PingRequest(address="10.0.0.1"), "subnet"),
    (guest_pb2.PingRequest(address="198.18.0.1"), "own address"),
    (guest_pb2.PingRequest(address="198.18.0.255"), "broadcast"),
    (guest_pb2.PingRequest(address="198.18.0.2", count=1001), "count"),
    (guest_pb2.PingRequest(address="198.18.0.2", size=1473), "size"),
    (guest_pb2.PingRequest(address="198.18.0.2", timeout_ms=60001), "timeout"),
])
async def test_service_rejects_bad_ping(lan: GuestLan, request_: guest_pb2.PingRequest,
                                        message: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub(lan.guests[0]).Ping(request_, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (err.value.details() or "")


async def test_service_rejects_bad_send_and_ping_without_ip(lan: GuestLan) -> None:
    a = stub(lan.guests[0])
    for frames, message in (([b"short"], "frame 0 has 5 bytes"),
                            ([frame_to(MAC_B, 1), b"x" * 16385], "frame 1 has 16385")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await a.Send(guest_pb2.SendRequest(frames=frames), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub(lan.guests[2]).Ping(guest_pb2.PingRequest(address="198.18.0.1"), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "--ip" in (err.value.details() or "")


def test_service_refuses_bad_options(tmp_path: Path) -> None:
    for args, message in ((["--ip", "198.18.0.1"], "prefix length"),
                          (["--ip", "198.18.0.0/24"], "network or broadcast"),
                          (["--netns", "x"], "need --bridge-tap"),
                          (["--bridge-tap", "vw-bad/name"], "bad ifname"),
                          (["--bridge-tap", "vwx", "--netns", "vw-missing-ns"], "does not exist"),
                          (["--netns-create"], "--netns-create needs --netns"),
                          (["--bridge-tap", "vwx", "--netns", "a/b", "--netns-create"],
                           "bad network namespace name"),
                          (["--rx-ring", "100"], "rx_ring")):
        with pytest.raises(BackendError) as err:
            start_guest(["--e1000", "127.0.0.1:1", "--guestmem", "127.0.0.1:2", *args],
                        tmp_path, timeout=20)
        assert message in str(err.value)


def test_service_fails_to_start_without_an_e1000(tmp_path: Path) -> None:
    mem = start_service("guestmem", ["--size", "4M"], tmp_path)
    try:
        with pytest.raises(BackendError, match="unreachable"):
            start_guest(["--e1000", "127.0.0.1:9", "--guestmem", mem.address,
                         "--connect-timeout", "1"], tmp_path)
    finally:
        mem.stop()


async def test_mmio_requests_keep_posted_writes_in_order() -> None:
    """A read or sync must not overtake posted writes made before it (PCI ordering).

    Regression: GrpcMmio once sent a flush from a task that started a loop
    turn after the writes were grabbed, so a later request could pass it.
    """
    mem = GuestMemServer("127.0.0.1:0", 4 << 20)
    await mem.start()
    nic = E1000Server("127.0.0.1:0", guestmem=mem.address, mac="52:54:00:00:00:01")
    await nic.start()
    port = GrpcMmio(nic.address)
    await port.connect()
    try:
        finals = []
        for i in range(20):
            port.write(r.E1000_RDTR, 2 * i)
            await asyncio.sleep(0)  # the flush callback runs; its task has not started
            port.write(r.E1000_RDTR, 2 * i + 1)
            await port.sync()
            await asyncio.sleep(0.01)
            finals.append(await port.read(r.E1000_RDTR))
        assert finals == [2 * i + 1 for i in range(20)]
    finally:
        await port.close()
        await nic.stop(grace=0.1)
        await mem.stop(grace=0.1)


async def test_cancelled_mmio_callers_leave_the_stream_working() -> None:
    """A caller cancelled mid-request (a timeout, a driver going down) must not
    end the MMIO stream: grpc.aio cancels the RPC when write() is cancelled.

    Regression: the guest service failed its shutdown with "RPC already
    finished" after its interrupt task was cancelled inside a read.
    """
    mem = GuestMemServer("127.0.0.1:0", 4 << 20)
    await mem.start()
    nic = E1000Server("127.0.0.1:0", guestmem=mem.address, mac="52:54:00:00:00:01")
    await nic.start()
    port = GrpcMmio(nic.address)
    await port.connect()
    try:
        for turns in range(6):
            task = asyncio.create_task(port.read(r.E1000_STATUS))
            for _ in range(turns):
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        port.write(r.E1000_RDTR, 7)
        await port.sync()
        assert await port.read(r.E1000_RDTR) == 7
        assert port.error is None
        # The NIC going away fails later calls with a BackendError, never a hang.
        await nic.stop(grace=0.1)
        with pytest.raises(BackendError):
            async with asyncio.timeout(10):
                while True:
                    await port.read(r.E1000_RDTR)
    finally:
        await port.close()
        await nic.stop(grace=0.1)
        await mem.stop(grace=0.1)


async def test_service_refuses_to_send_while_the_link_is_down(lan: GuestLan) -> None:
    c = stub(lan.guests[2])
    async with grpc.aio.insecure_channel(lan.nics[2].address) as channel:
        nics = netclient_pb2_grpc.NetClientServiceStub(channel)
        await nics.SetLink(netclient_pb2.SetLinkRequest(name="e1000", up=False))
        try:
            async def link_up() -> bool:
                return (await c.GetStatus(guest_pb2.GetStatusRequest())).link_up

            for _ in range(100):
                if not await link_up():
                    break
                await asyncio.sleep(0.05)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await c.Send(guest_pb2.SendRequest(frames=[frame_to(MAC_A, 1)]), timeout=10)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "link is down" in (err.value.details() or "")
        finally:
            await nics.SetLink(netclient_pb2.SetLinkRequest(name="e1000", up=True))
        for _ in range(100):  # autonegotiation brings it back 500 ms later
            if await link_up():
                break
            await asyncio.sleep(0.05)
        resp = await c.Send(guest_pb2.SendRequest(frames=[frame_to(MAC_A, 1)]), timeout=10)
        assert resp.queued == 1
