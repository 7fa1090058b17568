"""A hostile guest: every case of docs/e1000.md#robustness (QEMU's e1000 CVEs),
bogus DMA addresses, rings that point at themselves, re-entrancy, and a
hypothesis test that random register writes, descriptors and frames never raise
or hang."""

from __future__ import annotations

import random
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virtwire.hw.dma import DmaError, RamDma
from virtwire.hw.e1000 import E1000
from virtwire.hw.e1000_regs import (
    E1000_CTRL,
    E1000_CTRL_VME,
    E1000_EECD,
    E1000_EERD,
    E1000_GPRC,
    E1000_GPTC,
    E1000_ICR,
    E1000_ICR_RXO,
    E1000_ICR_TXQE,
    E1000_ICS,
    E1000_IMC,
    E1000_IMS,
    E1000_ITR,
    E1000_MDIC,
    E1000_MDIC_INT_EN,
    E1000_MDIC_OP_READ,
    E1000_MDIC_OP_WRITE,
    E1000_MTA,
    E1000_RA,
    E1000_RADV,
    E1000_RCTL,
    E1000_RCTL_BAM,
    E1000_RCTL_EN,
    E1000_RCTL_LPE,
    E1000_RCTL_SBP,
    E1000_RCTL_UPE,
    E1000_RDBAH,
    E1000_RDBAL,
    E1000_RDH,
    E1000_RDLEN,
    E1000_RDT,
    E1000_RDTR,
    E1000_STATUS,
    E1000_TADV,
    E1000_TCTL,
    E1000_TCTL_EN,
    E1000_TDBAH,
    E1000_TDBAL,
    E1000_TDH,
    E1000_TDLEN,
    E1000_TDT,
    E1000_TXD_CMD_EOP,
    E1000_TXD_CMD_IP,
    E1000_TXD_CMD_TCP,
    E1000_TXD_CMD_TSE,
    E1000_VET,
    E1000_VFTA,
    MII_BMCR,
    TX_DESC,
)
from virtwire.hw.timer import ManualScheduler

from support.e1000_rig import (
    EOP_RS,
    MAC,
    PEER_MAC,
    RX_RING,
    TX_RING,
    Driver,
    Rig,
    brought_up,
    context,
    data_desc,
    eth_frame,
    payload,
    send_chain,
)

TSO = E1000_TXD_CMD_TSE


RIG_ARGS = {"model", "ram", "dma_error_policy", "rx_flush_timer"}


def up(**kw: object) -> tuple[Rig, Driver]:
    """A Rig (the ``kw`` in RIG_ARGS) brought up by the mini driver (the others)."""
    rig = Rig(**{k: v for k, v in kw.items() if k in RIG_ARGS})  # type: ignore[arg-type]
    return brought_up(rig, **{k: v for k, v in kw.items() if k not in RIG_ARGS})


def test_cve_2012_0029_tx_buffer_is_bounded() -> None:
    """Descriptors without EOP never grow the 64 KiB TX buffer."""
    rig, drv = up(n_tx=64)
    chunk = payload(0xFFFF)
    for _ in range(63):
        drv.put_tx(drv.legacy(chunk, cmd=0))
    drv.kick()
    assert len(rig.nic.tx.data) == 0x10000 and rig.nic.tx.size < 0x10000
    assert rig.peer.frames == [] and rig.r(E1000_TDH) == 63


def test_oversize_frames_are_discarded() -> None:
    """Frames over 16380 bytes are dropped (ROC) even with LPE; over NET_BUFSIZE the
    NetClient layer drops them first."""
    rig, drv = up(rctl=E1000_RCTL_EN | E1000_RCTL_BAM | E1000_RCTL_LPE)
    assert rig.nic.receive(eth_frame(size=16381)) == 16381
    assert rig.nic.receive(eth_frame(size=70000)) == 70000
    assert rig.inject(eth_frame(size=70000)) > 0
    assert drv.receive_all() == [] and rig.nic.hw_stats()["ROC"] == 2
    # SBP stores even a jumbo frame, as long as buffers cover it.
    rig.w(E1000_RCTL, E1000_RCTL_EN | E1000_RCTL_SBP | 0x02030000)  # BSEX|SZ_4096
    rig.advance_s(1)
    assert rig.nic.receive(eth_frame(size=20000)) == 20000  # 5 of 7 4096-byte buffers
    assert drv.receive_all() == [eth_frame(size=20000)]
    assert rig.nic.receive(eth_frame(size=30000)) == -1  # 7 * 4096 < 30004: RXO
    assert rig.r(E1000_ICR) & E1000_ICR_RXO


def test_cve_2015_6815_tso_hdr_len_and_mss_zero() -> None:
    """hdr_len = mss = 0 must terminate (QEMU sends what it has at EOP)."""
    rig, drv = up()
    send_chain(drv, [context(0, 0, 0, 0, 0, 0, TSO | E1000_TXD_CMD_TCP, paylen=100),
                     data_desc(drv, payload(100), TSO),
                     data_desc(drv, payload(100), TSO | EOP_RS, popts=3)])
    assert rig.r(E1000_TDH) == 3
    assert rig.peer.frames == [b""]


def test_tso_mss_one_is_bounded() -> None:
    """hdr_len = 0, mss = 1: one segment per byte, then the empty remainder."""
    rig, drv = up()
    send_chain(drv, [context(0, 0, 0, 0, 0, 0, TSO, hdr_len=0, mss=1),
                     data_desc(drv, payload(300), TSO | EOP_RS)])
    assert len(rig.peer.frames) == 301
    assert b"".join(rig.peer.frames) == payload(300)


def test_cve_2016_1981_head_beyond_ring() -> None:
    """TDH >= TDLEN/16 and RDH >= RDLEN/16 process one descriptor and stop."""
    rig, drv = up()
    rig.w(E1000_TDH, 100)
    rig.poke(TX_RING + 16 * 100, drv.legacy(eth_frame(dst=PEER_MAC)))
    rig.w(E1000_TDT, 5)
    assert rig.r(E1000_TDH) == 0 and len(rig.peer.frames) == 1
    assert rig.r(E1000_ICR) & E1000_ICR_TXQE
    rig.w(E1000_RDH, 100)
    rig.w(E1000_RDT, 5)
    rig.poke(RX_RING + 16 * 100, TX_DESC.pack(0x40000, 0, 0))
    assert rig.inject(eth_frame()) == -1
    assert rig.r(E1000_RDH) == 0 and rig.r(E1000_ICR) & E1000_ICR_RXO
    assert rig.mem(0x40000, 64) == eth_frame()


def test_zero_length_rings_terminate() -> None:
    rig, drv = up()
    rig.w(E1000_TDLEN, 0)
    rig.w(E1000_RDLEN, 0)
    drv.put_tx(drv.legacy(eth_frame(dst=PEER_MAC)))
    drv.kick()
    assert rig.r(E1000_TDH) == 0 and len(rig.peer.frames) == 1
    rig.w(E1000_TDT, 7)
    assert rig.r(E1000_TDH) == 0
    rig.w(E1000_RDT, 3)
    assert rig.inject(eth_frame()) == -1
    assert rig.r(E1000_RDH) == 0


def test_cve_2021_20257_evil_tso_descriptor() -> None:
    """A packet already longer than a new context's hdr_len + mss, and hdr_len + mss
    beyond the 64 KiB buffer: the TSO loop terminates."""
    rig, drv = up(n_tx=16)
    send_chain(drv, [
        context(14, 24, 33, 34, 50, 0, TSO | E1000_TXD_CMD_IP | E1000_TXD_CMD_TCP,
                paylen=5000, hdr_len=54, mss=1000),
        data_desc(drv, payload(500), TSO),
        context(0, 0, 0, 0, 0, 0, TSO, hdr_len=0, mss=10),
        data_desc(drv, payload(4000), TSO),
        data_desc(drv, payload(10), TSO | EOP_RS),
    ])
    assert [len(f) for f in rig.peer.frames] == [500]
    rig.peer.frames.clear()
    big = payload(0xFFFF)
    descs = [context(0, 0, 0, 0, 0, 0, TSO, hdr_len=255, mss=0xFFFF)]
    descs += [data_desc(drv, big, TSO) for _ in range(3)]
    descs.append(data_desc(drv, b"x", TSO | EOP_RS))
    t0 = time.perf_counter()
    send_chain(drv, descs)
    assert time.perf_counter() - t0 < 5
    assert rig.r(E1000_TDH) == rig.r(E1000_TDT)


def test_mixed_legacy_and_data_chains() -> None:
    """A TSE data descriptor followed by a legacy EOP descriptor: the legacy one
    clears cptse, so the gathered bytes go out as one plain frame."""
    rig, drv = up()
    send_chain(drv, [
        context(14, 24, 33, 34, 50, 0, TSO | E1000_TXD_CMD_IP | E1000_TXD_CMD_TCP,
                paylen=5000, hdr_len=54, mss=1000),
        data_desc(drv, payload(100), TSO),
        drv.legacy(payload(50)[::-1], cmd=EOP_RS),
        drv.legacy(payload(30), cmd=0),
        data_desc(drv, payload(20), EOP_RS, popts=3),
    ])
    assert rig.peer.frames[0] == payload(100) + payload(50)[::-1]
    assert rig.peer.frames[1] == payload(30) + payload(20)
    assert len(rig.peer.frames) == 2


def test_cve_2021_3416_loopback_into_own_rings() -> None:
    """PHY loopback with the RX ring and RX buffers on top of the TX ring: every
    frame re-enters our own receive; nothing recurses, everything terminates."""
    rig, drv = up(n_tx=8)
    rig.phy_write(MII_BMCR, 0x5140)
    rig.w(E1000_RCTL, E1000_RCTL_EN | E1000_RCTL_UPE | E1000_RCTL_BAM)
    rig.advance_s(1)
    rig.w(E1000_RDBAL, TX_RING)
    rig.w(E1000_RDLEN, 8 * 16)
    rig.w(E1000_RDH, 0)
    for i in range(7):  # a ring of 8 holds 7 (8 would wrap TDT back onto TDH: no work)
        frame = TX_DESC.pack(TX_RING + 16 * ((i + 1) % 8), 0x0B000000 | 64, 0).ljust(64, b"\1")
        drv.put_tx(drv.legacy(frame))
    rig.w(E1000_RDT, 7)
    drv.kick()
    assert rig.peer.frames == []
    assert rig.r(E1000_TDH) == rig.r(E1000_TDT) == 7
    assert (rig.r(E1000_GPTC), rig.r(E1000_GPRC)) == (7, 7)  # each sent and received back
    assert rig.nic.dma_errors == 0


def test_loopback_reentrancy_from_a_synchronous_peer() -> None:
    """A peer that answers inside its receive: our RX runs inside our TX."""
    rig, drv = up()
    reply = eth_frame(dst=MAC, src=PEER_MAC, size=90)
    rig.peer.on_receive = lambda data: rig.peer.send_packet(reply)
    drv.send(eth_frame(dst=PEER_MAC, src=MAC))
    drv.send(eth_frame(dst=PEER_MAC, src=MAC))
    assert drv.receive_all() == [reply, reply]


class MmioDma(RamDma):
    """Guest memory where [BAR, BAR + 0x20000) is the NIC's own BAR0: DMA there
    re-enters MMIO (CVE-2023-3019)."""

    BAR = 0x80000000

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.nic: E1000 | None = None

    def dma_read(self, addr: int, size: int) -> bytes:
        if self.nic is not None and self.BAR <= addr < self.BAR + 0x20000:
            return b"".join(self.nic.mmio_read(addr - self.BAR + i).to_bytes(4, "little")
                            for i in range(0, size, 4))[:size]
        return super().dma_read(addr, size)

    def dma_write(self, addr: int, data: bytes) -> None:
        if self.nic is not None and self.BAR <= addr < self.BAR + 0x20000:
            for i in range(0, len(data) - 3, 4):
                self.nic.mmio_write(addr - self.BAR + i, int.from_bytes(data[i:i + 4], "little"))
            return
        super().dma_write(addr, data)


def test_cve_2023_3019_dma_into_own_mmio_is_blocked() -> None:
    rig = Rig()
    mdma = MmioDma(len(rig.dma.ram))
    rig.nic.dma = mdma
    rig.dma = mdma
    mdma.nic = rig.nic
    drv = Driver(rig)
    drv.bring_up()
    # RX buffers at the NIC's own TDT/RDT/ICS registers.
    for i, reg in enumerate((E1000_TDT, E1000_RDT, E1000_ICS, E1000_TCTL)):
        drv.write_rx_desc(i, MmioDma.BAR + reg - 12)
    frame = eth_frame(size=64)
    rig.inject(frame)
    rig.inject(frame)
    # TX descriptors (and a TX buffer) read from the BAR.
    rig.w(E1000_TDBAL, MmioDma.BAR + 0x3800)
    rig.w(E1000_TDBAH, 0)
    rig.w(E1000_TDT, 1)
    drv_tx = TX_DESC.pack(MmioDma.BAR + E1000_ICR, EOP_RS | 64, 0)
    rig.w(E1000_TDBAL, TX_RING)
    rig.poke(TX_RING + 16, drv_tx)
    rig.w(E1000_TDT, 2)
    assert rig.nic.drops.mmio_reentrant > 0
    assert rig.r(E1000_RDH) == 2


class FlakyDma(RamDma):
    """RamDma that fails writes in [lo, hi)."""

    def __init__(self, size: int, lo: int, hi: int) -> None:
        super().__init__(size)
        self.lo, self.hi = lo, hi

    def dma_write(self, addr: int, data: bytes) -> None:
        if self.lo <= addr < self.hi:
            raise DmaError("write refused")
        super().dma_write(addr, data)


def test_dma_outside_guest_memory_stops_the_tx_ring() -> None:
    rig, drv = up()
    frame = eth_frame(dst=PEER_MAC, src=MAC)
    drv.put_tx(drv.legacy(frame, cmd=0))
    drv.put_tx(TX_DESC.pack(1 << 40, EOP_RS | 64, 0))  # buffer outside RAM
    drv.put_tx(drv.legacy(frame))
    drv.kick()
    assert rig.nic.dma_errors == 1 and rig.nic.drops.tx_dma_errors == 1
    assert rig.r(E1000_TDH) == 1  # stopped on the bad descriptor
    assert rig.nic.tx.size == 0  # the half-gathered packet was dropped
    assert rig.peer.frames == []
    # The guest repairs the descriptor: processing resumes there.
    rig.poke(TX_RING + 16, drv.legacy(frame))
    drv.kick()
    assert rig.peer.frames == [frame, frame]
    # A ring outside guest memory.
    rig.w(E1000_TDBAH, 0x10)
    drv.send(frame)
    assert rig.nic.drops.tx_dma_errors == 2 and rig.r(E1000_TDH) == 3


def test_tx_writeback_failure_consumes_the_descriptor_and_stops() -> None:
    rig = Rig()
    flaky = FlakyDma(len(rig.dma.ram), TX_RING + 16, TX_RING + 32)
    rig.nic.dma = rig.dma = flaky
    drv = Driver(rig)
    drv.bring_up()
    frame = eth_frame(dst=PEER_MAC, src=MAC)
    for _ in range(3):
        drv.put_tx(drv.legacy(frame))
    drv.kick()
    assert len(rig.peer.frames) == 2 and rig.r(E1000_TDH) == 2
    assert rig.nic.drops.tx_dma_errors == 1
    rig.w(E1000_TDT, 3)
    assert len(rig.peer.frames) == 3


def test_dma_outside_guest_memory_drops_the_rx_frame() -> None:
    rig, drv = up()
    drv.write_rx_desc(0, 1 << 40)
    assert rig.inject(eth_frame()) == -1
    assert rig.nic.dma_errors == 1 and rig.nic.drops.rx_dma_errors == 1
    assert rig.r(E1000_RDH) == 0
    rig.w(E1000_RDBAL, 0xFFFFFFF0)
    assert rig.inject(eth_frame()) == -1
    assert rig.nic.drops.rx_dma_errors == 2
    rig.w(E1000_RDBAL, RX_RING)
    drv.write_rx_desc(0, drv.rx_buf(0))
    rig.inject(eth_frame())
    assert drv.receive_all() == [eth_frame()]


def test_zero_policy_behaves_like_qemu() -> None:
    """dma_error_policy='zero': failed reads return zeros, failed writes vanish, and
    the ring keeps going (QEMU's unassigned-memory behaviour)."""
    rig, drv = up(dma_error_policy="zero")
    frame = eth_frame(dst=PEER_MAC, src=MAC, size=64)
    drv.put_tx(TX_DESC.pack(1 << 40, E1000_TXD_CMD_EOP | 64, 0))
    drv.put_tx(drv.legacy(frame))
    drv.kick()
    assert rig.peer.frames == [bytes(64), frame]
    assert rig.nic.dma_errors == 1 and rig.r(E1000_TDH) == 2
    drv.write_rx_desc(0, 1 << 40)
    assert rig.inject(eth_frame()) == 64
    assert drv.rx_desc(0)[1] == 68 and rig.r(E1000_RDH) == 1


def test_descriptors_pointing_back_at_the_rings() -> None:
    rig, drv = up()
    # A TX buffer that is the TX ring itself.
    drv.put_tx(TX_DESC.pack(TX_RING, EOP_RS | 128, 0))
    drv.kick()
    assert rig.peer.frames[0][:16] == TX_DESC.pack(TX_RING, EOP_RS | 128, 0)
    # RX buffers on top of the RX ring: the frame overwrites descriptors.
    for i in range(8):
        drv.write_rx_desc(i, RX_RING)
    evil = (TX_DESC.pack(RX_RING, 0, 0) * 8)[:100]
    for _ in range(5):
        rig.inject(evil)
    assert rig.r(E1000_RDH) < 8


def test_irq_callback_reentering_mmio_is_blocked() -> None:
    """set_irq runs inside device operations: MMIO from it is refused."""
    rig, drv = up()
    calls: list[int] = []
    rig.nic._set_irq = lambda level: calls.append(rig.nic.mmio_read(E1000_ICR))
    drv.send(eth_frame(dst=PEER_MAC, src=MAC))
    assert calls == [0] and rig.nic.drops.mmio_reentrant == 1
    assert rig.nic.irq_level


def test_cleanup_stops_timers() -> None:
    rig, _drv = up()
    rig.w(E1000_RCTL, E1000_RCTL_EN)
    rig.w(E1000_ICS, 1)
    rig.nic.set_link(False)
    rig.nic.set_link(True)
    assert rig.sched.pending
    rig.nic.cleanup()
    assert rig.sched.pending == 0


def test_dma_flush_after_every_mmio_write_and_receive() -> None:
    class CountingDma(RamDma):
        flushes = 0

        def dma_flush(self) -> None:
            self.flushes += 1

    dma = CountingDma(1 << 20)
    nic = E1000("x", MAC, dma, set_irq=lambda _l: None, scheduler=ManualScheduler())
    nic.mmio_write(E1000_IMS, 1)
    assert dma.flushes == 1
    nic.receive(eth_frame())
    assert dma.flushes == 2
    nic.mmio_read(E1000_ICR)
    assert dma.flushes == 2


# -- hypothesis: random guests ------------------------------------------------------------

HYP_RAM = 0x10000
INTERESTING = [E1000_CTRL, E1000_STATUS, E1000_EECD, E1000_EERD, E1000_MDIC, E1000_VET,
               E1000_ICR, E1000_ITR, E1000_ICS, E1000_IMS, E1000_IMC, E1000_RCTL, E1000_TCTL,
               E1000_RDBAL, E1000_RDBAH, E1000_RDLEN, E1000_RDH, E1000_RDT, E1000_RDTR,
               E1000_RADV, E1000_TDBAL, E1000_TDBAH, E1000_TDLEN, E1000_TDH, E1000_TDT,
               E1000_TADV, E1000_MTA, E1000_RA, E1000_RA + 4, E1000_VFTA, 0x4000, 0x40C4]
offsets = st.one_of(st.sampled_from(INTERESTING), st.integers(0, 0x1FFFF),
                    st.integers(-(1 << 40), 1 << 40))
values = st.one_of(st.integers(0, 0xFFFFFFFF), st.integers(0, 0x800),
                   st.sampled_from([0, 1, 2, 0xFFFFFFFF, 0x8000_0000, E1000_TCTL_EN,
                                    E1000_RCTL_EN | E1000_RCTL_UPE | E1000_RCTL_LPE,
                                    E1000_CTRL_VME | 0x40, 0x5140, 0x0C000000 | (1 << 21)]))
kicks = st.tuples(st.just("w"), st.sampled_from([E1000_TDT, E1000_RDT, E1000_TDH, E1000_RDH]),
                  st.integers(0, 70))
mdic = st.tuples(st.just("w"), st.just(E1000_MDIC), st.builds(
    lambda op, reg, data, ie: op | (1 << 21) | (reg << 16) | data | ie,
    st.sampled_from([E1000_MDIC_OP_READ, E1000_MDIC_OP_WRITE, 0]), st.integers(0, 31),
    st.integers(0, 0xFFFF), st.sampled_from([0, E1000_MDIC_INT_EN])))
eecd = st.tuples(st.just("w"), st.sampled_from([E1000_EECD, E1000_EERD]), st.integers(0, 0x7FFF))
ops = st.one_of(
    kicks,
    kicks,
    mdic,
    eecd,
    st.tuples(st.just("w"), offsets, values),
    st.tuples(st.just("r"), offsets, st.just(0)),
    st.tuples(st.just("rx"), st.binary(max_size=1600), st.just(0)),
    st.tuples(st.just("poke"), st.integers(0, HYP_RAM - 1), st.binary(min_size=1, max_size=48)),
    st.tuples(st.just("time"), st.integers(0, 2_000_000_000), st.just(0)),
    st.tuples(st.just("bm"), st.booleans(), st.just(0)),
    st.tuples(st.just("link"), st.booleans(), st.just(0)),
    st.tuples(st.just("reset"), st.just(0), st.just(0)),
)


def _random_ram(seed: int) -> bytearray:
    """Random RAM whose first 4 KiB looks like descriptors pointing into RAM."""
    rng = random.Random(seed)
    ram = bytearray(rng.randbytes(HYP_RAM))
    for slot in range(0, 0x1000, 16):
        if rng.random() < 0.9:
            ram[slot:slot + 8] = rng.randrange(HYP_RAM - 0x1000).to_bytes(8, "little")
        if rng.random() < 0.8:
            ram[slot + 8:slot + 10] = rng.randrange(1600).to_bytes(2, "little")
        if rng.random() < 0.3:  # a TSO context with small hdr_len / mss
            ram[slot + 13] = rng.randrange(64)
            ram[slot + 14:slot + 16] = rng.randrange(1, 600).to_bytes(2, "little")
    return ram


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**32), program=st.lists(ops, max_size=40),
       prime=st.booleans(), policy=st.sampled_from(["stop", "zero"]),
       model=st.sampled_from(["82540EM", "82544GC", "82545EM"]),
       compat=st.sampled_from(["9.0", "7.2"]))
def test_random_guest_never_raises_or_hangs(seed: int, program: list[tuple[str, object, object]],
                                            prime: bool, policy: str, model: str,
                                            compat: str) -> None:
    rig = Rig(model=model, ram=HYP_RAM, dma_error_policy=policy,  # type: ignore[arg-type]
              compat=compat)
    rig.dma.ram[:] = _random_ram(seed)
    nic = rig.nic
    rig.peer.on_receive = lambda data: rig.peer.send_packet(bytes(data[:64]))  # echo
    if prime:  # rings in the descriptor-shaped area, RX and TX enabled
        nic.set_bus_master(True)
        for off, val in ((E1000_RDBAL, 0), (E1000_RDLEN, 0x400), (E1000_RDT, 0x30),
                         (E1000_TDBAL, 0x800), (E1000_TDLEN, 0x400),
                         (E1000_RCTL, E1000_RCTL_EN | E1000_RCTL_UPE | E1000_RCTL_BAM),
                         (E1000_TCTL, E1000_TCTL_EN), (E1000_IMS, 0xFFFF)):
            rig.w(off, val)
        rig.advance_s(1)
    for op, a, b in program:
        t0 = time.perf_counter()
        if op == "w":
            nic.mmio_write(a, b)  # type: ignore[arg-type]
        elif op == "r":
            assert 0 <= nic.mmio_read(a) <= 0xFFFFFFFF  # type: ignore[arg-type]
        elif op == "rx":
            rig.peer.send_packet(a)  # type: ignore[arg-type]
            nic.receive(a)  # type: ignore[arg-type]
        elif op == "poke":
            rig.poke(a, b)  # type: ignore[arg-type]
        elif op == "time":
            rig.sched.advance(a)  # type: ignore[arg-type]
        elif op == "bm":
            nic.set_bus_master(bool(a))
        elif op == "link":
            nic.set_link(bool(a))
        else:
            nic.reset()
        assert time.perf_counter() - t0 < 10, op
        assert 0 <= nic.mac_reg[E1000_TDH >> 2] <= 0xFFFF
        assert 0 <= nic.mac_reg[E1000_RDH >> 2] <= 0xFFFF
        assert len(nic.tx.data) == 0x10000
    assert all(0 <= v <= 0xFFFFFFFF for v in nic.mac_reg)
    assert all(0 <= v <= 0xFFFF for v in nic.phy_reg)
    assert nic.irq_level == bool(nic.mac_reg[E1000_IMS >> 2] & nic.mac_reg[E1000_ICR >> 2]) \
        or nic.mit_timer_on
