"""e1000 receive path against docs/e1000.md#receive."""

from __future__ import annotations

import pytest

from virtwire.hw.e1000_regs import (
    E1000_CTRL,
    E1000_CTRL_VME,
    E1000_ICR,
    E1000_ICR_RXDMT0,
    E1000_ICR_RXO,
    E1000_ICR_RXT0,
    E1000_MPC,
    E1000_MTA,
    E1000_RA,
    E1000_RCTL,
    E1000_RCTL_BAM,
    E1000_RCTL_BSEX,
    E1000_RCTL_EN,
    E1000_RCTL_LPE,
    E1000_RCTL_MPE,
    E1000_RCTL_RDMTS_EIGTH,
    E1000_RCTL_RDMTS_QUAT,
    E1000_RCTL_SBP,
    E1000_RCTL_SECRC,
    E1000_RCTL_SZ_256,
    E1000_RCTL_SZ_512,
    E1000_RCTL_SZ_1024,
    E1000_RCTL_SZ_4096,
    E1000_RCTL_SZ_8192,
    E1000_RCTL_SZ_16384,
    E1000_RCTL_UPE,
    E1000_RCTL_VFE,
    E1000_RDH,
    E1000_RDLEN,
    E1000_RDT,
    E1000_RNBC,
    E1000_ROC,
    E1000_VET,
    E1000_VFTA,
)

from support.e1000_rig import (
    BCAST,
    MAC,
    PEER_MAC,
    RX_BUFS,
    Driver,
    Rig,
    brought_up,
    eth_frame,
    vlan_frame,
)

RCTL_BASE = E1000_RCTL_EN | E1000_RCTL_BAM


def up(rctl: int = RCTL_BASE, n_rx: int = 8, **kw: object) -> tuple[Rig, Driver]:
    """A Rig (``kw``: its arguments) brought up by the mini driver, ICR cleared."""
    return brought_up(Rig(**kw), rctl=rctl, n_rx=n_rx)  # type: ignore[arg-type]


def test_can_receive_needs_lu_en_bus_master_buffers_and_no_flush_timer() -> None:
    rig = Rig()
    drv = Driver(rig)
    drv.bring_up(wait_flush=False)
    nic = rig.nic
    assert not nic.can_receive() and nic.flush_queue_timer_pending
    rig.advance_s(1)
    assert nic.can_receive()
    nic.set_bus_master(False)
    assert not nic.can_receive()
    nic.set_bus_master(True)
    rig.w(E1000_RDT, rig.r(E1000_RDH))
    assert not nic.can_receive()
    rig.w(E1000_RDT, 7)
    assert nic.can_receive()
    nic.set_link(False)
    assert not nic.can_receive()
    nic.set_link(True)
    rig.advance_ms(500)
    assert nic.can_receive()
    rig.w(E1000_RCTL, 0)
    assert not nic.can_receive()


def test_frames_wait_in_the_queue_until_rdt_write() -> None:
    """No RX buffers posted: can_receive is false, frames wait in the NIC's
    incoming_queue (sender sees 0) and flush on the RDT write, in order."""
    rig = Rig()
    drv = Driver(rig)
    drv.bring_up()
    rig.w(E1000_RDT, 0)  # take every buffer back
    assert not rig.nic.can_receive()
    frames = [eth_frame(fill=i) for i in range(3)]
    for f in frames:
        assert rig.inject(f) == 0
    assert len(rig.nic.incoming_queue) == 3 and rig.r(E1000_RDH) == 0
    rig.w(E1000_RDT, 7)
    assert len(rig.nic.incoming_queue) == 0
    assert drv.receive_all() == frames


def test_rctl_write_blocks_rx_for_one_second() -> None:
    """After an RCTL write the NIC refuses frames for 1 s of virtual time (QEMU's
    flush_queue_timer) and then flushes what was queued."""
    rig = Rig()
    drv = Driver(rig)
    drv.bring_up(wait_flush=False)
    assert rig.inject(eth_frame()) == 0
    # A direct delivery while the timer runs returns 0 ("queue it").
    assert rig.nic.receive(eth_frame()) == 0
    assert rig.nic.drops.rx_deferred == 1
    rig.advance_ms(999)
    assert len(rig.nic.incoming_queue) == 1
    rig.advance_ms(1)
    assert len(rig.nic.incoming_queue) == 0
    assert drv.receive_all() == [eth_frame()]
    # Without the timer (rx_flush_timer=False) frames flow at once.
    rig2 = Rig(rx_flush_timer=False)
    drv2 = Driver(rig2)
    drv2.bring_up(wait_flush=False)
    assert rig2.inject(eth_frame()) == 64
    assert drv2.receive_all() == [eth_frame()]


def test_receive_dropped_when_link_down_or_rx_disabled() -> None:
    """!LU or !EN -> receive returns -1 (dropped), counted."""
    rig, _drv = up()
    rig.nic.mac_reg[E1000_RCTL >> 2] = 0
    assert rig.nic.receive(eth_frame()) == -1
    assert rig.nic.drops.rx_disabled == 1
    rig.nic.mac_reg[E1000_RCTL >> 2] = RCTL_BASE
    rig.nic.mac_reg[2] &= ~2  # STATUS.LU
    assert rig.nic.receive(eth_frame()) == -1
    assert rig.nic.drops.rx_link_down == 1
    assert rig.r(E1000_RDH) == 0


def test_bus_master_off_queues_and_set_bus_master_flushes() -> None:
    rig, drv = up()
    rig.nic.set_bus_master(False)
    assert rig.inject(eth_frame()) == 0
    reads, writes = rig.dma.reads, rig.dma.writes
    rig.nic.set_bus_master(True)
    assert rig.dma.writes > writes and rig.dma.reads > reads
    assert drv.receive_all() == [eth_frame()]


def test_no_dma_without_bus_master() -> None:
    """A frame forced in while bus mastering is off never touches guest memory:
    descriptors read as zeros (null buffers) and writes are dropped."""
    rig, _drv = up(n_rx=8)
    rig.nic.set_bus_master(False)
    reads, writes = rig.dma.reads, rig.dma.writes
    assert rig.nic.receive(eth_frame()) == -1  # every descriptor "null": ring overrun
    assert (rig.dma.reads, rig.dma.writes) == (reads, writes)
    assert rig.nic.drops.rx_no_buffers == 1


# -- filters ------------------------------------------------------------------------------

@pytest.mark.parametrize("dst,rctl,accepted", [
    (BCAST, RCTL_BASE, True),
    (BCAST, E1000_RCTL_EN, False),
    (bytes.fromhex("01005e000001"), RCTL_BASE, False),
    (bytes.fromhex("01005e000001"), RCTL_BASE | E1000_RCTL_MPE, True),
    (bytes.fromhex("020000000001"), RCTL_BASE, False),
    (bytes.fromhex("020000000001"), RCTL_BASE | E1000_RCTL_UPE, True),
    (bytes.fromhex("01005e000001"), RCTL_BASE | E1000_RCTL_UPE, False),  # UPE: unicast only
    (MAC, E1000_RCTL_EN, True),
])
def test_group_filter(dst: bytes, rctl: int, accepted: bool) -> None:
    rig, drv = up(rctl=rctl)
    frame = eth_frame(dst=dst)
    assert rig.inject(frame) == 64  # consumed either way
    assert drv.receive_all() == ([frame] if accepted else [])
    assert rig.nic.drops.rx_filtered == (0 if accepted else 1)


def test_sixteen_receive_addresses_need_av() -> None:
    rig, drv = up(rctl=E1000_RCTL_EN)
    for i in range(16):
        addr = bytes([0x02, 0, 0, 0, 0x10, i])
        rig.w(E1000_RA + 8 * i, int.from_bytes(addr[:4], "little"))
        rig.w(E1000_RA + 8 * i + 4, int.from_bytes(addr[4:], "little") | 0x80000000)
    for i in range(16):
        rig.inject(eth_frame(dst=bytes([0x02, 0, 0, 0, 0x10, i])))
        assert len(drv.receive_all()) == 1, i
    rig.w(E1000_RA + 8 * 5 + 4, 0x0510)  # AV clear
    rig.inject(eth_frame(dst=bytes([0x02, 0, 0, 0, 0x10, 5])))
    assert drv.receive_all() == []
    # A multicast address in RA matches exactly too.
    rig.w(E1000_RA + 8 * 7, 0x5E0001)
    rig.w(E1000_RA + 8 * 7 + 4, 0x80000100)
    rig.inject(eth_frame(dst=bytes.fromhex("01005e000001")))
    assert len(drv.receive_all()) == 1


@pytest.mark.parametrize("mo", [0, 1, 2, 3])
@pytest.mark.parametrize("dst", [bytes.fromhex("01005e7f1234"), bytes.fromhex("0200a1b2c3d4")])
def test_mta_hash_for_every_mo(mo: int, dst: bytes) -> None:
    """h = (((d[5]<<8)|d[4]) >> {4,3,2,0}[MO]) & 0xFFF; MTA[h>>5] bit h&31; also
    for unicast addresses."""
    rig, drv = up(rctl=E1000_RCTL_EN | (mo << 12))
    h = (((dst[5] << 8) | dst[4]) >> (4, 3, 2, 0)[mo]) & 0xFFF
    rig.inject(eth_frame(dst=dst))
    assert drv.receive_all() == []
    rig.w(E1000_MTA + 4 * (h >> 5), 1 << (h & 31))
    rig.inject(eth_frame(dst=dst))
    assert drv.receive_all() == [eth_frame(dst=dst)]
    # Any other bit does not match.
    rig.w(E1000_MTA + 4 * (h >> 5), ~(1 << (h & 31)) & 0xFFFFFFFF)
    rig.inject(eth_frame(dst=dst))
    assert drv.receive_all() == []


def test_vlan_filter_is_independent_of_vme() -> None:
    """type == VET and RCTL.VFE and VFTA[(TCI>>5)&0x7F] bit (TCI&0x1F) clear -> reject."""
    rig, drv = up(rctl=RCTL_BASE | E1000_RCTL_VFE)
    tci = 0x2000 | 100  # priority 1, VID 100
    frame = vlan_frame(tci)
    rig.inject(frame)
    assert drv.receive_all() == []
    rig.w(E1000_VFTA + 4 * ((tci >> 5) & 0x7F), 1 << (tci & 0x1F))
    rig.inject(frame)
    assert drv.receive_all() == [frame]  # VME off: the tag stays
    # Untagged frames pass the VLAN filter.
    rig.inject(eth_frame())
    assert drv.receive_all() == [eth_frame()]
    # VET decides what a tag is.
    rig.w(E1000_VET, 0x88A8)
    rig.w(E1000_VFTA + 4 * ((tci >> 5) & 0x7F), 0)
    rig.inject(frame)
    assert drv.receive_all() == [frame]
    rig.inject(vlan_frame(tci, tpid=0x88A8))
    assert drv.receive_all() == []


def test_vme_strips_the_tag() -> None:
    """CTRL.VME and type == VET: strip, special = TCI, status VP, size -= 4."""
    rig, drv = up()
    rig.w(E1000_CTRL, rig.r(E1000_CTRL) | E1000_CTRL_VME)
    frame = vlan_frame(0xE123, size=100)
    assert rig.inject(frame) == 96
    _addr, length, _csum, status, _err, special = drv.rx_desc(0)
    assert (length, status, special) == (96 + 4, 0x0F, 0xE123)
    assert drv.receive_all() == [frame[:12] + frame[16:]]
    st = rig.nic.hw_stats()
    assert st["GORC"] == 100 and st["PRC127"] == 1


def test_vlan_strip_classifies_like_qemu() -> None:
    """QEMU classifies a stripped frame after moving the addresses in place: the
    destination reads as d0 d1 d2 d3 d0 d1 (BPRC instead of MPRC here)."""
    rig, drv = up(rctl=RCTL_BASE | E1000_RCTL_MPE)
    dst = bytes.fromhex("ffffffff0001")
    rig.inject(vlan_frame(5, dst=dst))
    st = rig.nic.hw_stats()
    assert (st["BPRC"], st["MPRC"]) == (0, 1)
    rig.w(E1000_CTRL, rig.r(E1000_CTRL) | E1000_CTRL_VME)
    rig.inject(vlan_frame(5, dst=dst))
    st = rig.nic.hw_stats()
    assert (st["BPRC"], st["MPRC"]) == (1, 1)
    assert len(drv.receive_all()) == 2


# -- sizes --------------------------------------------------------------------------------

def test_oversize_without_lpe() -> None:
    """> 1518 (no FCS) without LPE and without SBP -> ROC++, dropped (consumed)."""
    rig, drv = up()
    assert rig.inject(eth_frame(size=1518)) == 1518
    assert rig.inject(eth_frame(size=1519)) == 1519
    assert [len(f) for f in drv.receive_all()] == [1518]
    assert rig.r(E1000_ROC) == 1 and rig.nic.drops.rx_oversize == 1
    # Checked before the VLAN tag is stripped.
    rig.w(E1000_CTRL, rig.r(E1000_CTRL) | E1000_CTRL_VME)
    rig.inject(vlan_frame(1, size=1519))
    assert drv.receive_all() == []


def test_oversize_with_lpe_and_sbp() -> None:
    big = E1000_RCTL_BSEX | E1000_RCTL_SZ_16384
    rig, drv = up(rctl=RCTL_BASE | E1000_RCTL_LPE | big)
    drv.bufsize = 0x4000
    rig.inject(eth_frame(size=16380))
    rig.inject(eth_frame(size=16381))
    assert [len(f) for f in drv.receive_all()] == [16380]
    assert rig.nic.hw_stats()["ROC"] == 1
    rig.w(E1000_RCTL, RCTL_BASE | E1000_RCTL_SBP | big)
    rig.advance_s(1)
    rig.inject(eth_frame(size=20000))
    assert [len(f) for f in drv.receive_all()] == [20000]


def test_secrc_strips_fcs_from_lengths() -> None:
    rig, drv = up(rctl=RCTL_BASE | E1000_RCTL_SECRC)
    rig.inject(eth_frame(size=60))
    assert drv.rx_desc(0)[1] == 60
    assert drv.receive_all(fcs=False) == [eth_frame(size=60)]
    st = rig.nic.hw_stats()
    assert st["PRC64"] == 0 and st["GORC"] == 64  # PRC counts the stored length


@pytest.mark.parametrize("bits,bufsize", [
    (0, 2048), (E1000_RCTL_SZ_1024, 1024), (E1000_RCTL_SZ_512, 512),
    (E1000_RCTL_SZ_256, 256), (E1000_RCTL_BSEX | E1000_RCTL_SZ_16384, 16384),
    (E1000_RCTL_BSEX | E1000_RCTL_SZ_8192, 8192), (E1000_RCTL_BSEX | E1000_RCTL_SZ_4096, 4096),
    (E1000_RCTL_BSEX, 2048),
])
def test_buffer_sizes_and_multi_descriptor_frames(bits: int, bufsize: int) -> None:
    """BSEX + SZ -> 16384/8192/4096; SZ -> 1024/512/256; else 2048. A frame longer
    than one buffer spans descriptors; EOP|IXSM only on the last."""
    rig, drv = up(rctl=RCTL_BASE | E1000_RCTL_LPE | bits, n_rx=16)
    drv.bufsize = 0x4000
    size = min(bufsize * 2 + 100, 16000)
    frame = eth_frame(size=size, fill=7)
    rig.inject(frame)
    total = size + 4
    lengths = []
    for i in range(16):
        _a, length, _c, status, _e, _s = drv.rx_desc(i)
        if not status & 1:
            break
        lengths.append(length)
        last = sum(lengths) >= total
        assert status == (0x07 if last else 0x01), (i, status)
    assert lengths == [min(bufsize, total - k * bufsize)
                       for k in range((total + bufsize - 1) // bufsize)]
    assert drv.receive_all() == [frame]


def test_fcs_spilling_into_its_own_descriptor() -> None:
    """With 256-byte buffers a 510-byte frame (514 with FCS) takes 256, 256 (254
    data bytes + 2 FCS) and 2 (FCS only, nothing written)."""
    rig, drv = up(rctl=RCTL_BASE | E1000_RCTL_SZ_256)
    rig.poke(drv.rx_buf(2), b"\xaa" * 8)
    frame = eth_frame(size=510)
    rig.inject(frame)
    assert [drv.rx_desc(i)[1] for i in range(3)] == [256, 256, 2]
    assert [drv.rx_desc(i)[3] for i in range(3)] == [1, 1, 7]
    assert rig.mem(drv.rx_buf(2), 8) == b"\xaa" * 8
    assert drv.receive_all() == [frame]


def test_null_buffer_address_is_skipped_but_written_back() -> None:
    rig, drv = up(rctl=RCTL_BASE | E1000_RCTL_SZ_1024)
    rig.w(E1000_RDT, 0)
    drv.write_rx_desc(1, 0, status=0x02)
    # A sentinel length survives on the null descriptor.
    rig.poke(drv.rx_ring + 16 + 8, (0x1234).to_bytes(2, "little"))
    rig.w(E1000_RDT, 7)
    rig.w(E1000_CTRL, rig.r(E1000_CTRL) | E1000_CTRL_VME)
    frame = vlan_frame(0x77, size=1500)
    rig.inject(frame)
    a0, l0, _c, s0, _e, sp0 = drv.rx_desc(0)
    a1, l1, _c, s1, _e, sp1 = drv.rx_desc(1)
    a2, l2, _c, s2, _e, sp2 = drv.rx_desc(2)
    assert (l0, s0, sp0) == (1024, 0x09, 0x77)
    assert (a1, l1, s1, sp1) == (0, 0x1234, 0x0B, 0x77)  # DD|VP, its EOP left alone
    assert (l2, s2, sp2) == (1500 - 4 + 4 - 1024, 0x0F, 0x77)
    assert rig.r(E1000_RDH) == 3
    assert rig.mem(a0, 1024) + rig.mem(a2, 1496 - 1024) == frame[:12] + frame[16:]


def test_ring_wraps() -> None:
    rig, drv = up(n_rx=8)
    got = []
    for i in range(20):
        rig.inject(eth_frame(fill=i))
        got += drv.receive_all()
    assert got == [eth_frame(fill=i) for i in range(20)]
    assert rig.r(E1000_RDH) == 20 % 8


def test_rdlen_is_a_multiple_of_128() -> None:
    """RDLEN keeps bits 7-19 only: a 4-descriptor ring is a 0-length ring, and a
    frame then overruns after one descriptor (and never loops)."""
    rig, _drv = up(n_rx=4)
    assert rig.r(E1000_RDLEN) == 0
    assert rig.inject(eth_frame()) == -1
    assert rig.r(E1000_RDH) == 0 and rig.r(E1000_ICR) & E1000_ICR_RXO


def test_not_enough_buffers_raises_rxo() -> None:
    """Not enough buffers -> RNBC++, MPC++, ICS RXO, drop (receive -1)."""
    rig, drv = up(rctl=RCTL_BASE | E1000_RCTL_SZ_1024 | E1000_RCTL_LPE)
    rig.w(E1000_RDT, 2)  # two 1024-byte buffers: 2048 bytes
    assert rig.nic.can_receive()
    assert rig.inject(eth_frame(size=2045)) == -1  # 2049 with FCS: too long
    assert rig.r(E1000_ICR) & E1000_ICR_RXO
    assert rig.r(E1000_RNBC) == 1 and rig.r(E1000_MPC) == 1
    assert rig.r(E1000_RNBC) == 1  # plain reads
    assert rig.r(E1000_RDH) == 0 and drv.receive_all() == []
    assert rig.nic.drops.rx_no_buffers == 1
    rig.inject(eth_frame(size=2044))
    assert [len(f) for f in drv.receive_all()] == [2044]


def test_has_rxbufs_counts_across_the_wrap() -> None:
    rig, drv = up(rctl=RCTL_BASE | E1000_RCTL_SZ_1024 | E1000_RCTL_LPE, n_rx=8)
    for _ in range(7):
        rig.inject(eth_frame())
        drv.receive_all()
    # RDH = 7, RDT = 6: (8 + 6 - 7) = 7 buffers.
    assert (rig.r(E1000_RDH), rig.r(E1000_RDT)) == (7, 6)
    rig.inject(eth_frame(size=3068))
    assert [len(f) for f in drv.receive_all()] == [3068]


def test_overrun_when_the_ring_wraps_back_to_start() -> None:
    """RDH returning to where it started (null descriptors use up the ring) -> RXO."""
    rig, drv = up(n_rx=8)
    rig.w(E1000_RDT, 0)
    for i in range(8):
        drv.write_rx_desc(i, 0)
    rig.w(E1000_RDT, 2)
    assert rig.inject(eth_frame()) == -1  # refused: dropped
    assert rig.r(E1000_RDH) == 0  # went all the way round (past RDT)
    assert rig.r(E1000_ICR) & E1000_ICR_RXO
    assert [drv.rx_desc(i)[3] for i in range(8)] == [1] * 8


@pytest.mark.parametrize("rdmts,threshold", [(0, 4), (E1000_RCTL_RDMTS_QUAT, 2),
                                             (E1000_RCTL_RDMTS_EIGTH, 1)])
def test_rxdmt0_threshold(rdmts: int, threshold: int) -> None:
    """RXDMT0 if ((RDT - RDH) mod N) * 16 <= RDLEN >> (RDMTS + 1)."""
    rig, _drv = up(rctl=RCTL_BASE | rdmts, n_rx=8)
    rig.w(E1000_RDT, 7)
    for consumed in range(1, 7):
        rig.inject(eth_frame())
        icr = rig.r(E1000_ICR)
        assert icr & E1000_ICR_RXT0
        free = 7 - consumed
        assert bool(icr & E1000_ICR_RXDMT0) == (free <= threshold), consumed


def test_rx_statistics() -> None:
    """PRC buckets (by stored length), TPR, GPRC, TORL/H, GORCL/H += size+4, BPRC/MPRC."""
    rig, drv = up(rctl=RCTL_BASE | E1000_RCTL_MPE | E1000_RCTL_LPE)
    sizes = [60, 61, 124, 200, 600, 1200, 1518]
    for s in sizes:
        rig.inject(eth_frame(size=s))
        drv.receive_all()
    rig.inject(eth_frame(dst=BCAST))
    rig.inject(eth_frame(dst=bytes.fromhex("333300000001")))
    drv.receive_all()
    st = rig.nic.hw_stats()
    assert (st["PRC64"], st["PRC127"], st["PRC255"], st["PRC511"], st["PRC1023"],
            st["PRC1522"]) == (1, 1 + 2, 2, 0, 1, 2)
    assert st["TPR"] == st["GPRC"] == 9
    assert st["TOR"] == st["GORC"] == sum(sizes) + 7 * 4 + 2 * 68
    assert (st["BPRC"], st["MPRC"]) == (1, 1)
    assert rig.nic.stats.rx_frames == 9


def test_short_frames_are_not_padded() -> None:
    """The NIC does not pad (the tap backend does): a 20-byte frame is stored as is."""
    rig, drv = up(rctl=RCTL_BASE | E1000_RCTL_UPE)
    frame = eth_frame(size=20)
    assert rig.inject(frame) == 20
    assert drv.rx_desc(0)[1] == 24
    assert drv.receive_all() == [frame]
    # Runts and an empty frame never raise; an empty frame is reported consumed.
    for n in (0, 1, 5, 13, 14, 15, 17):
        assert rig.nic.receive(eth_frame(size=n)) > 0
    drv.receive_all()
    rig.w(E1000_VET, 0)
    rig.w(E1000_CTRL, rig.r(E1000_CTRL) | E1000_CTRL_VME)
    for n in (0, 3, 13, 14, 15, 16, 17):
        assert rig.nic.receive(bytes(n)) != 0


def test_receive_fills_ring_at_any_base() -> None:
    """Descriptor base comes from RDBAH:RDBAL (low 4 bits ignored)."""
    rig, drv = up()
    rig.w(0x2800, drv.rx_ring | 0xF)
    rig.inject(eth_frame())
    assert drv.receive_all() == [eth_frame()]
    assert rig.r(E1000_RDLEN) == 8 * 16
    assert RX_BUFS == drv.rx_buf(0)
    assert PEER_MAC != MAC


# -- compat="7.2": QEMU 7.2.x (Debian 12's qemu-system-x86 7.2.22) ---------------------------

def test_compat_72_pads_short_frames_to_60() -> None:
    rig, drv = up(rctl=RCTL_BASE | E1000_RCTL_UPE, compat="7.2")
    assert rig.nic.compat == "7.2"
    frame = eth_frame(size=20)
    assert rig.inject(frame) == 60
    assert drv.rx_desc(0)[1] == 64
    assert drv.receive_all() == [frame + bytes(40)]
    assert rig.nic.hw_stats()["PRC64"] == 1


def test_compat_72_filter_and_bprc_mprc() -> None:
    """7.2: MPE takes broadcasts too; BPRC/MPRC count filter matches (MPE, BAM, MTA
    hash), even for frames then dropped; nothing is counted after reception."""
    rig, drv = up(rctl=E1000_RCTL_EN | E1000_RCTL_MPE, compat="7.2")
    rig.inject(eth_frame(dst=BCAST))
    assert len(drv.receive_all()) == 1
    st = rig.nic.hw_stats()
    assert (st["BPRC"], st["MPRC"]) == (0, 1)
    rig.w(E1000_RCTL, E1000_RCTL_EN | E1000_RCTL_BAM)
    rig.advance_s(1)
    rig.inject(eth_frame(dst=BCAST))
    dst = bytes.fromhex("01005e7f1234")
    h = (((dst[5] << 8) | dst[4]) >> 4) & 0xFFF
    rig.w(E1000_MTA + 4 * (h >> 5), 1 << (h & 31))
    rig.inject(eth_frame(dst=dst))
    rig.inject(eth_frame(dst=MAC))  # RA match: not counted
    assert len(drv.receive_all()) == 3
    st = rig.nic.hw_stats()
    assert (st["BPRC"], st["MPRC"]) == (1, 2)
    # UPE only takes unicast.
    rig.w(E1000_RCTL, E1000_RCTL_EN | E1000_RCTL_UPE)
    rig.advance_s(1)
    rig.inject(eth_frame(dst=bytes.fromhex("01005e000009")))
    rig.inject(eth_frame(dst=bytes.fromhex("020000000009")))
    assert len(drv.receive_all()) == 1


def test_compat_72_oversize_limits_include_fcs() -> None:
    rig, drv = up(compat="7.2")
    rig.inject(eth_frame(size=1522))
    rig.inject(eth_frame(size=1523))
    assert [len(f) for f in drv.receive_all()] == [1522]
    assert rig.nic.hw_stats()["ROC"] == 1
    with pytest.raises(ValueError):
        Rig(compat="8.0")  # type: ignore[arg-type]
