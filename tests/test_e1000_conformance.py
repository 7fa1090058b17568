"""Differential conformance: QEMU's own e1000 (qtest) vs virtwire's model, byte for byte.

Every test builds a program (support.e1000_program), runs it on a fresh QEMU
and on a fresh model, and compares the traces: every register and memory
read, every frame put on the wire and every change of the interrupt line. A
mismatch fails with a readable diff (which op, QEMU's value vs ours).

The test_qemu_* tests check the harness itself against QEMU alone (they run
even when the model is missing).
"""

from __future__ import annotations

import functools
import itertools
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.e1000_program import (
    BPRC,
    BPTC,
    CTRL,
    CTRL_VME,
    EECD,
    EECD_CS,
    EECD_DI,
    EECD_SK,
    EERD,
    EERD_START,
    GORCH,
    GORCL,
    GOTCH,
    GOTCL,
    GPRC,
    GPTC,
    ICR,
    ICR_MDAC,
    ICS,
    IMC,
    IMS,
    ITR,
    LEDCTL,
    MANC,
    MDIC,
    MDIC_INT_EN,
    MDIC_READ,
    MDIC_WRITE,
    MII_BMCR_LOOPBACK,
    MIT_WINDOW_NS,
    MODELS,
    MPC,
    MPRC,
    MPTC,
    MTA,
    PBA,
    POPTS_IXSM,
    POPTS_TXSM,
    PRC64,
    PRC127,
    PRC255,
    PRC511,
    PRC1023,
    PRC1522,
    PTC64,
    PTC127,
    PTC255,
    PTC511,
    PTC1023,
    PTC1522,
    RA,
    RADV,
    RAM_DMA_START,
    RAM_SIZE,
    RCTL,
    RCTL_BAM,
    RCTL_BSEX,
    RCTL_EN,
    RCTL_LPE,
    RCTL_MO_SHIFT,
    RCTL_MPE,
    RCTL_SBP,
    RCTL_SECRC,
    RCTL_SZ_256,
    RCTL_SZ_512,
    RCTL_SZ_1024,
    RCTL_UPE,
    RCTL_VFE,
    RDBAH,
    RDBAL,
    RDH,
    RDLEN,
    RDT,
    RDTR,
    REG_NAMES,
    RNBC,
    ROC,
    RUC,
    RUN_OVERHEAD_NS,
    STATUS,
    TADV,
    TCTL,
    TCTL_EN,
    TCTL_PSP,
    TDBAH,
    TDBAL,
    TDH,
    TDLEN,
    TDT,
    TORH,
    TORL,
    TOTH,
    TOTL,
    TPR,
    TPT,
    TSCTC,
    TUCMD_IP,
    TUCMD_TCP,
    TUCMD_TSE,
    TXD_EOP,
    TXD_IDE,
    TXD_IFCS,
    TXD_RPS,
    TXD_RS,
    TXD_TSE,
    TXD_VLE,
    VET,
    VFTA,
    ClockStep,
    CollectTx,
    InjectFrame,
    Op,
    QemuBackend,
    ReadMem,
    ReadReg,
    SetBusMaster,
    SetLink,
    Trace,
    WriteMem,
    WriteReg,
    compare,
    diff,
    eth,
    format_diff,
    inet_checksum,
    ipv4,
    ipv6,
    payload_pattern,
    pseudo_sum_v4,
    quantize,
    run,
    rx_desc,
    tcp,
    tx_context,
    tx_data,
    tx_legacy,
    udp,
    vlan_tag,
)
from support.need import need
from support.qtest import qemu_available

pytestmark = pytest.mark.qemu


@pytest.fixture(autouse=True, scope="module")
def _qemu() -> None:
    need(qemu_available(), "qemu-system-x86_64 not installed (Debian package qemu-system-x86)")


MAC = bytes.fromhex("525400123456")
OTHER = bytes.fromhex("525400abcdef")
PEER = bytes.fromhex("02aabbccddee")
BCAST = b"\xff" * 6
MCAST = bytes.fromhex("01005e000001")

AUTONEG_STEP = quantize(600_000_000)
RX_RING = RAM_DMA_START            # 0x100000
TX_RING = RAM_DMA_START + 0x10000  # 0x110000
RX_BUF = 0x20_0000                 # RX buffer i at RX_BUF + i * RX_BUF_STRIDE
RX_BUF_STRIDE = 0x4000
TX_BUF = 0x40_0000

#: Every statistics register, read after each RX/TX test.
STATS = (MPC, PRC64, PRC127, PRC255, PRC511, PRC1023, PRC1522, GPRC, BPRC, MPRC, GPTC,
         GORCL, GORCH, GOTCL, GOTCH, RNBC, RUC, ROC, TORL, TORH, TOTL, TOTH, TPR, TPT,
         PTC64, PTC127, PTC255, PTC511, PTC1023, PTC1522, MPTC, BPTC, TSCTC)

#: The model runs with the compat of the installed QEMU (VirtwireBackend's
#: default, support.qtest.qemu_compat), "7.2" on Debian 12: QEMU 7.2 pads short
#: frames, uses 1522/16384 oversize limits, lets MPE accept broadcast and counts
#: BPRC/MPRC by filter match, where 9.0 (the reference) does not.


def check(program: list[Op], model: str = "82540EM", *, settle_rctl: bool = True,
          **options: object) -> Trace:
    """Run on both; fail with a readable diff on any difference. Returns QEMU's trace.

    ``options`` go to the model's constructor.
    """
    qemu, ours = compare(program, model, settle_rctl=settle_rctl, **options)
    assert not diff(qemu, ours), format_diff(program, qemu, ours, settle_rctl=settle_rctl)
    return qemu


def qemu_only(program: list[Op], model: str = "82540EM") -> Trace:
    with QemuBackend(model, MAC) as backend:
        return run(program, backend)


def values(trace: Trace) -> list[object]:
    return [r.value for r in trace.records if r.kind == "value"]


# ---------------------------------------------------------------------------- program pieces
def frame_to(dst: bytes, size: int = 64, seq: int = 0, ethertype: int = 0x88B5) -> bytes:
    """A frame of ``size`` bytes (no FCS) to ``dst``."""
    body = struct.pack(">I", seq) + payload_pattern(max(0, size - 18), seq)
    return eth(dst, PEER, ethertype, body)[:max(size, 14)]


def rx_setup(n: int = 8, rctl: int = RCTL_EN | RCTL_BAM, *, post: int | None = None,
             pre: list[Op] | None = None) -> list[Op]:
    """A ring of ``n`` descriptors, RCTL, then RDT = post (n - 1 by default)."""
    ops: list[Op] = [WriteReg(IMC, 0xFFFF_FFFF), ReadReg(ICR)]
    ops += pre or []
    ops += [WriteMem(RX_RING + 16 * i, rx_desc(RX_BUF + RX_BUF_STRIDE * i)) for i in range(n)]
    ops += [WriteReg(RDBAL, RX_RING), WriteReg(RDBAH, 0), WriteReg(RDLEN, n * 16),
            WriteReg(RDH, 0), WriteReg(RDT, 0), WriteReg(RCTL, rctl),
            WriteReg(RDT, n - 1 if post is None else post)]
    return ops


def rx_readback(n: int = 8, buf_bytes: int = 128) -> list[Op]:
    ops: list[Op] = [ReadReg(RDH), ReadReg(RDT), ReadMem(RX_RING, 16 * n)]
    ops += [ReadMem(RX_BUF + RX_BUF_STRIDE * i, buf_bytes) for i in range(n)]
    ops += [ReadReg(ICS), ReadReg(ICR)]
    return ops + [ReadReg(r) for r in STATS]


def tx_setup(n: int = 8, tctl: int = TCTL_EN | TCTL_PSP) -> list[Op]:
    return [WriteReg(TDBAL, TX_RING), WriteReg(TDBAH, 0), WriteReg(TDLEN, n * 16),
            WriteReg(TDH, 0), WriteReg(TDT, 0), WriteReg(TCTL, tctl)]


def tx_readback(n: int = 8) -> list[Op]:
    ops: list[Op] = [CollectTx(), ReadReg(TDH), ReadReg(TDT), ReadMem(TX_RING, 16 * n),
                     ReadReg(ICS), ReadReg(ICR)]
    return ops + [ReadReg(r) for r in STATS]


def tx_packet(descs: list[bytes], buffers: list[tuple[int, bytes]], start: int = 0,
              n: int = 8) -> list[Op]:
    """Write buffers and descriptors at ring slots start.., then bump TDT past them."""
    ops: list[Op] = [WriteMem(addr, data) for addr, data in buffers]
    ops += [WriteMem(TX_RING + 16 * ((start + i) % n), d) for i, d in enumerate(descs)]
    ops.append(WriteReg(TDT, (start + len(descs)) % n))
    return ops


def mdic(op: int, reg: int, data: int = 0, phy: int = 1) -> int:
    return op | (phy << 21) | (reg << 16) | (data & 0xFFFF)


def microwire_read(word: int, opcode: int = 0b110, addr_bits: int = 6) -> list[Op]:
    """Bit-bang one EEPROM read through EECD; every EECD read is recorded."""
    ops: list[Op] = [WriteReg(EECD, 0), WriteReg(EECD, EECD_CS)]
    bits = (opcode << addr_bits) | (word & ((1 << addr_bits) - 1))
    for k in reversed(range(3 + addr_bits)):
        di = EECD_DI if (bits >> k) & 1 else 0
        ops += [WriteReg(EECD, EECD_CS | di), WriteReg(EECD, EECD_CS | di | EECD_SK)]
    for _ in range(16):
        ops += [WriteReg(EECD, EECD_CS), WriteReg(EECD, EECD_CS | EECD_SK), ReadReg(EECD)]
    ops += [WriteReg(EECD, 0), ReadReg(EECD)]
    return ops


# Every register the spec documents, plus the arrays.
DOCUMENTED = sorted(set(REG_NAMES) | {0x3828, 0x5808, 0x5B50, 0x2C00, 0x0028, 0x002C,
                                      0x0030, 0x0170, 0x0178, 0x2828, 0x3840})
ARRAYS = ([MTA + 4 * i for i in range(128)] + [RA + 4 * i for i in range(32)]
          + [VFTA + 4 * i for i in range(128)])


# ---------------------------------------------------------------------------- harness self-checks
def test_qemu_harness_reset_values() -> None:
    trace = qemu_only([ReadReg(CTRL), ReadReg(STATUS), ReadReg(PBA), ReadReg(LEDCTL),
                       ReadReg(MANC), ReadReg(VET), ReadReg(RA), ReadReg(RA + 4)])
    assert values(trace) == [0x00140240, 0x80080783, 0x00100030, 0x602, 0x00222300, 0x8100,
                             0x12005452, 0x80005634]


def test_qemu_harness_tx_reaches_the_wire() -> None:
    frame = frame_to(BCAST, 60, seq=7)
    prog = tx_setup() + tx_packet([tx_legacy(TX_BUF, len(frame), TXD_EOP | TXD_IFCS | TXD_RS)],
                                  [(TX_BUF, frame)])
    prog += [CollectTx(), ReadMem(TX_RING, 16)]
    tx, desc = values(qemu_only(prog))
    assert tx == (frame,)
    assert isinstance(desc, bytes) and desc[12] & 1  # DD written back


def test_qemu_harness_rx_lands_in_memory() -> None:
    frame = frame_to(MAC, 100, seq=3)
    prog = [*rx_setup(), InjectFrame(frame), ReadReg(RDH), ReadMem(RX_RING, 16),
            ReadMem(RX_BUF, 100)]
    rdh, desc, data = values(qemu_only(prog))[-3:]
    assert rdh == 1
    assert isinstance(desc, bytes) and struct.unpack_from("<HHBB", desc, 8) == (104, 0, 7, 0)
    assert data == frame


def test_qemu_harness_virtual_time_is_exact() -> None:
    """RX is blocked for 1 s (ms-granular) after an RCTL write: a frame injected
    then is refused, waits, and is purged when the VM pauses again."""
    frame = frame_to(MAC)
    prog = [*rx_setup(), WriteReg(RCTL, RCTL_EN), InjectFrame(frame), ReadReg(RDH),
            ClockStep(quantize(999_000_000)), ReadReg(RDH), InjectFrame(frame),
            ClockStep(quantize(1_100_000)), InjectFrame(frame), ReadReg(RDH)]
    with QemuBackend("82540EM", MAC) as backend:
        trace = run(prog, backend, settle_rctl=False)
        clock = backend.machine.clock_ns
    # queued, purged at the first pause; the second one waits and is delivered
    # by the flush timer at 1 s; the third goes straight in.
    assert values(trace)[-3:] == [0, 0, 2]
    assert clock == quantize(999_000_000) + quantize(1_100_000) + 2 * RUN_OVERHEAD_NS


def test_qemu_harness_irq_line_and_mitigation() -> None:
    """The line rises at once, and a new edge waits for the 128 us window."""
    prog: list[Op] = [WriteReg(IMS, 0x4), WriteReg(ICS, 0x4), ReadReg(ICR),
                      WriteReg(ICS, 0x4), ClockStep(quantize(100_000)),
                      ClockStep(quantize(30_000)), ReadReg(ICR)]
    trace = qemu_only(prog)
    irq = [(r.index, r.value) for r in trace.records if r.kind == "irq"]
    assert irq == [(1, True), (2, False), (5, True), (6, False)]


# ---------------------------------------------------------------------------- reset state
@pytest.mark.parametrize("model", MODELS)
def test_reset_state(model: str) -> None:
    check([ReadReg(off) for off in DOCUMENTED + ARRAYS], model)


def test_reset_state_whole_bar() -> None:
    """Every 32-bit offset of BAR0 at reset (unimplemented ones read 0)."""
    check([ReadReg(off) for off in range(0, 0x20000, 4)])


# ---------------------------------------------------------------------------- EEPROM
@pytest.mark.parametrize("model", MODELS)
def test_eeprom_eerd(model: str) -> None:
    prog: list[Op] = []
    for word in [*range(64), 64, 0x80, 0xFF]:
        prog += [WriteReg(EERD, (word << 8) | EERD_START), ReadReg(EERD)]
    prog += [WriteReg(EERD, 0x0500), ReadReg(EERD), WriteReg(EERD, 0xFFFF_FFFF), ReadReg(EERD)]
    check(prog, model)


def test_eeprom_eecd_bitbang() -> None:
    prog: list[Op] = [ReadReg(EECD)]
    for word in range(64):
        prog += microwire_read(word)
    check(prog)


def test_eeprom_eecd_odd_sequences() -> None:
    """Wrong opcode, no CS, clock without CS, reading past 16 bits, other models."""
    prog: list[Op] = microwire_read(3, opcode=0b101) + microwire_read(5, opcode=0b111)
    prog += [WriteReg(EECD, EECD_SK), WriteReg(EECD, 0), ReadReg(EECD)]
    prog += microwire_read(0x3F)[:-2]
    for _ in range(20):  # keep clocking past the word
        prog += [WriteReg(EECD, EECD_CS), WriteReg(EECD, EECD_CS | EECD_SK), ReadReg(EECD)]
    prog += [WriteReg(EECD, 0xFFFF_FFFF), ReadReg(EECD), WriteReg(EECD, 0), ReadReg(EECD)]
    check(prog, "82545EM")


# ---------------------------------------------------------------------------- PHY (MDIC)
@pytest.mark.parametrize("model", MODELS)
def test_mdic_every_phy_register(model: str) -> None:
    prog: list[Op] = [WriteReg(IMS, ICR_MDAC)]
    for reg in range(32):
        prog += [WriteReg(MDIC, mdic(MDIC_READ, reg)), ReadReg(MDIC)]
    for reg in range(32):
        if reg == 0:
            continue  # BMCR writes have side effects: test_mdic_bmcr
        prog += [WriteReg(MDIC, mdic(MDIC_WRITE, reg, 0x5A5A ^ reg)), ReadReg(MDIC),
                 WriteReg(MDIC, mdic(MDIC_READ, reg)), ReadReg(MDIC)]
    for phy in (0, 2, 31):
        prog += [WriteReg(MDIC, mdic(MDIC_READ, 1, phy=phy)), ReadReg(MDIC),
                 WriteReg(MDIC, mdic(MDIC_WRITE, 4, 0x1234, phy=phy)), ReadReg(MDIC)]
    prog += [WriteReg(MDIC, mdic(MDIC_READ | MDIC_INT_EN, 2)), ReadReg(MDIC), ReadReg(ICR),
             WriteReg(MDIC, mdic(MDIC_WRITE | MDIC_INT_EN, 31, 1)), ReadReg(MDIC), ReadReg(ICS),
             ReadReg(ICR), WriteReg(MDIC, 0), ReadReg(MDIC),
             WriteReg(MDIC, mdic(MDIC_READ | MDIC_WRITE, 2)), ReadReg(MDIC),
             WriteReg(MDIC, 0xFFFF_FFFF), ReadReg(MDIC), ReadReg(ICR)]
    check(prog, model)


def test_mdic_bmcr_autoneg_and_link() -> None:
    """BMCR writes: reserved and self-clearing bits, autoneg restart (link down for
    500 ms, then LSC), autoneg off."""
    read_phy = [WriteReg(MDIC, mdic(MDIC_READ, 0)), ReadReg(MDIC),
                WriteReg(MDIC, mdic(MDIC_READ, 1)), ReadReg(MDIC),
                WriteReg(MDIC, mdic(MDIC_READ, 5)), ReadReg(MDIC)]
    prog: list[Op] = [WriteReg(IMS, 0x4), *read_phy,
                      WriteReg(MDIC, mdic(MDIC_WRITE, 0, 0x1140 | 0x0200 | 0x003F)),
                      ReadReg(STATUS), *read_phy, ClockStep(quantize(400_000_000)),
                      ReadReg(STATUS), ClockStep(quantize(200_000_000)), ReadReg(STATUS),
                      *read_phy, ReadReg(ICR),
                      WriteReg(MDIC, mdic(MDIC_WRITE, 0, 0x0140 | 0x0200)), ReadReg(STATUS),
                      *read_phy, ClockStep(quantize(600_000_000)), ReadReg(STATUS),
                      ReadReg(ICR), WriteReg(MDIC, mdic(MDIC_WRITE, 0, 0x8000)), *read_phy]
    check(prog)


# ---------------------------------------------------------------------------- RX filters
def rx_case(rctl: int, frames: list[bytes], pre: list[Op] | None = None, n: int = 16,
            buf_bytes: int = 96, model: str = "82540EM") -> None:
    prog = rx_setup(n, rctl, pre=pre)
    prog += [InjectFrame(f) for f in frames]
    check(prog + rx_readback(n, buf_bytes), model)


FILTER_FRAMES = [frame_to(BCAST, seq=1), frame_to(MCAST, seq=2), frame_to(MAC, seq=3),
                 frame_to(OTHER, seq=4), frame_to(bytes.fromhex("333300000001"), seq=5),
                 frame_to(bytes.fromhex("0180c2000000"), seq=6)]


@pytest.mark.parametrize("rctl", [RCTL_EN, RCTL_EN | RCTL_BAM, RCTL_EN | RCTL_MPE | RCTL_BAM,
                                  RCTL_EN | RCTL_UPE, RCTL_EN | RCTL_UPE | RCTL_MPE | RCTL_BAM],
                         ids=["exact", "bam", "mpe-bam", "upe", "promisc"])
def test_rx_filter_modes(rctl: int) -> None:
    rx_case(rctl, FILTER_FRAMES)


@pytest.mark.parametrize("rctl", [RCTL_EN | RCTL_MPE, RCTL_EN | RCTL_MPE | RCTL_UPE],
                         ids=["mpe", "mpe-upe"])
def test_rx_filter_mpe_without_bam(rctl: int) -> None:
    rx_case(rctl, FILTER_FRAMES)


@pytest.mark.parametrize("rctl", [RCTL_EN | RCTL_BAM, RCTL_EN | RCTL_BAM | RCTL_MPE,
                                  RCTL_EN | (1 << RCTL_MO_SHIFT)],
                         ids=["bam", "bam-mpe", "mta"])
def test_rx_bprc_mprc_classification(rctl: int) -> None:
    """BPRC/MPRC after broadcast, multicast and unicast frames, some accepted by
    the MTA hash, some dropped for lack of buffers."""
    pre: list[Op] = [WriteReg(MTA + 4 * i, 0xFFFF_FFFF) for i in range(128)]
    frames = [*FILTER_FRAMES, frame_to(BCAST, seq=20), frame_to(MCAST, seq=21)]
    prog = rx_setup(4, rctl, pre=pre)
    prog += [InjectFrame(f) for f in frames]
    check([*prog, ReadReg(RDH), ReadReg(RNBC), ReadReg(BPRC), ReadReg(MPRC), ReadReg(GPRC)])


def test_rx_filter_ra_entries() -> None:
    """RA exact match only with AV; all 16 entries; RA0 rewritten."""
    pre: list[Op] = []
    addrs = [bytes([0x02, 0, 0, 0, k, k * 3]) for k in range(16)]
    for k, a in enumerate(addrs):
        low = int.from_bytes(a[:4], "little")
        high = int.from_bytes(a[4:], "little") | (0x8000_0000 if k % 3 else 0)
        pre += [WriteReg(RA + 8 * k, low), WriteReg(RA + 8 * k + 4, high)]
    frames = [frame_to(a, seq=k) for k, a in enumerate(addrs)] + [frame_to(MAC, seq=99)]
    rx_case(RCTL_EN, frames, pre, n=32, buf_bytes=32)


@pytest.mark.parametrize("mo", [0, 1, 2, 3])
def test_rx_filter_mta_hash(mo: int) -> None:
    """MTA hash for MO 0..3, multicast and unicast destinations."""
    dests = [bytes([0x01, 0x00, 0x5E, 0x12, x, y]) for x, y in
             ((0x34, 0x56), (0xFF, 0xFF), (0x00, 0x01), (0xAB, 0xCD))]
    dests += [bytes([0x02, 0, 0, 0, 0x77, 0x88]), bytes([0x02, 0, 0, 0, 0x10, 0x20])]
    pre: list[Op] = []
    shift = (4, 3, 2, 0)[mo]
    for d in dests[::2]:  # set the bit of every other destination
        h = (((d[5] << 8) | d[4]) >> shift) & 0xFFF
        pre.append(WriteReg(MTA + 4 * (h >> 5), 1 << (h & 31)))
    rx_case(RCTL_EN | (mo << RCTL_MO_SHIFT), [frame_to(d, seq=k) for k, d in enumerate(dests)],
            pre, buf_bytes=32)


VLAN_FRAMES = [vlan_tag(frame_to(MAC, 70, seq=k), tci) for k, tci in
               enumerate((0x0005, 0x2005, 0x0064, 0xF064, 0x0FFF, 0x0000))]


@pytest.mark.parametrize("vme", [False, True])
@pytest.mark.parametrize("vfe", [False, True])
def test_rx_vlan_filter_and_strip(vfe: bool, vme: bool) -> None:
    pre: list[Op] = [WriteReg(VFTA + 4 * (5 >> 5), 1 << 5), WriteReg(VFTA + 4 * (100 >> 5),
                                                                      1 << (100 & 31))]
    if vme:
        pre.append(WriteReg(CTRL, 0x00140240 | CTRL_VME))
    frames = [*VLAN_FRAMES, frame_to(MAC, 70, seq=9), vlan_tag(frame_to(BCAST, seq=10), 5)]
    rx_case(RCTL_EN | RCTL_BAM | (RCTL_VFE if vfe else 0), frames, pre, buf_bytes=80)


def test_rx_vlan_custom_vet() -> None:
    pre: list[Op] = [WriteReg(VET, 0x88A8), WriteReg(CTRL, 0x00140240 | CTRL_VME),
                     WriteReg(VFTA, 1 << 5)]
    frames = [vlan_tag(frame_to(MAC, seq=1), 5, 0x88A8), vlan_tag(frame_to(MAC, seq=2), 6, 0x88A8),
              vlan_tag(frame_to(MAC, seq=3), 5, 0x8100)]
    rx_case(RCTL_EN | RCTL_VFE, frames, pre, buf_bytes=80)


# ---------------------------------------------------------------------------- RX buffers
@pytest.mark.parametrize("rctl", [RCTL_SZ_256, RCTL_SZ_512, RCTL_SZ_1024,
                                  RCTL_SZ_256 | RCTL_SECRC, RCTL_SZ_1024 | RCTL_BSEX],
                         ids=["256", "512", "1024", "256-secrc", "16k"])
def test_rx_multi_descriptor(rctl: int) -> None:
    frames = [frame_to(MAC, size, seq=k) for k, size in enumerate((60, 254, 256, 1000, 1514))]
    rx_case(RCTL_EN | RCTL_LPE | rctl, frames, n=16, buf_bytes=260)


def test_rx_ring_wrap_and_rdmts() -> None:
    """An 8-descriptor ring refilled as it goes round three times; RXDMT0 thresholds."""
    prog = rx_setup(8, RCTL_EN | 0x100)  # RDMTS = 1/4
    for k in range(20):
        prog += [InjectFrame(frame_to(MAC, 64 + k, seq=k)), ReadReg(RDH), ReadReg(ICR)]
        if k % 3 == 2:
            prog.append(WriteReg(RDT, (k + 6) % 8))
    check(prog + rx_readback(8, 96))


def test_rx_no_buffers_rxo_rnbc() -> None:
    """RDH == RDT: frames are dropped with RNBC, MPC and RXO; then a big frame that
    does not fit the buffers that are left; then a null buffer address."""
    prog = rx_setup(8, RCTL_EN | RCTL_SZ_256 | RCTL_LPE, post=0)
    prog += [InjectFrame(frame_to(MAC, seq=k)) for k in range(3)]
    prog += [ReadReg(ICR), ReadReg(RNBC), ReadReg(MPC), WriteReg(RDT, 2),
             InjectFrame(frame_to(MAC, 1000, seq=5)), ReadReg(ICR), ReadReg(RDH),
             WriteMem(RX_RING + 16 * 2, rx_desc(0)), WriteReg(RDT, 6),
             InjectFrame(frame_to(MAC, 300, seq=6)), InjectFrame(frame_to(MAC, 100, seq=7))]
    check(prog + rx_readback(8, 64))


@pytest.mark.parametrize("rctl", [RCTL_EN, RCTL_EN | RCTL_LPE, RCTL_EN | RCTL_SBP],
                         ids=["plain", "lpe", "sbp"])
def test_rx_oversize_lpe_sbp(rctl: int) -> None:
    frames = [frame_to(MAC, size, seq=size) for size in (1514, 1518, 1523, 2000)]
    prog = rx_setup(8, rctl | RCTL_BSEX | RCTL_SZ_1024)  # 16 KiB buffers
    prog += [InjectFrame(f) for f in frames]
    check(prog + rx_readback(8, 16))


def test_rx_jumbo_limit() -> None:
    frames = [frame_to(MAC, size, seq=size) for size in (16380, 16385, 20000)]
    prog = rx_setup(8, RCTL_EN | RCTL_LPE | RCTL_BSEX | RCTL_SZ_1024)
    prog += [InjectFrame(f) for f in frames]
    check(prog + rx_readback(8, 16) + [ReadMem(RX_BUF, 16384)])


@pytest.mark.parametrize(("rctl", "sizes"), [(RCTL_EN, (1519, 1522)),
                                             (RCTL_EN | RCTL_LPE, (16381, 16384))],
                         ids=["1519-1522", "16381-16384"])
def test_rx_oversize_boundary(rctl: int, sizes: tuple[int, ...]) -> None:
    prog = rx_setup(8, rctl | RCTL_BSEX | RCTL_SZ_1024)
    prog += [InjectFrame(frame_to(MAC, size, seq=size)) for size in sizes]
    check(prog + rx_readback(8, 16))


def test_rx_short_frames() -> None:
    """Frames shorter than 60 bytes (the socket backend does not pad them)."""
    frames = [frame_to(MAC, size, seq=size) for size in (14, 20, 42, 59, 60)]
    rx_case(RCTL_EN, frames, buf_bytes=64)


def test_rx_disabled_and_link_down() -> None:
    prog = rx_setup(8, RCTL_EN | RCTL_BAM)
    prog += [WriteReg(RCTL, RCTL_BAM), InjectFrame(frame_to(MAC, seq=1)), ReadReg(RDH),
             WriteReg(RCTL, RCTL_EN | RCTL_BAM), SetLink(False), ReadReg(STATUS),
             InjectFrame(frame_to(MAC, seq=2)), ReadReg(RDH), SetLink(True), ReadReg(STATUS),
             InjectFrame(frame_to(MAC, seq=3)), ClockStep(quantize(600_000_000)),
             ReadReg(STATUS), InjectFrame(frame_to(MAC, seq=4))]
    check(prog + rx_readback(8, 64))


def test_rx_during_flush_timer_is_queued_then_purged() -> None:
    """Frames that arrive in the 1 s after an RCTL write wait in the NIC's queue."""
    prog = rx_setup(8, RCTL_EN)
    prog += [WriteReg(RCTL, RCTL_EN), InjectFrame(frame_to(MAC, seq=1)), ReadReg(RDH),
             WriteReg(RDT, 7), ReadReg(RDH), ClockStep(quantize(500_000_000)), ReadReg(RDH),
             InjectFrame(frame_to(MAC, seq=3)), ClockStep(quantize(600_000_000)),
             ReadReg(RDH), InjectFrame(frame_to(MAC, seq=4))]
    check(prog + rx_readback(8, 64), settle_rctl=False)


def test_rx_bus_master_off() -> None:
    prog = rx_setup(8, RCTL_EN)
    prog += [SetBusMaster(False), InjectFrame(frame_to(MAC, seq=1)), ReadReg(RDH),
             SetBusMaster(True), ReadReg(RDH), InjectFrame(frame_to(MAC, seq=2))]
    check(prog + rx_readback(8, 64))


# ---------------------------------------------------------------------------- TX
def test_tx_legacy_frames_and_writeback() -> None:
    frames = [frame_to(BCAST, 60, 1), frame_to(MCAST, 100, 2), frame_to(PEER, 1514, 3),
              frame_to(PEER, 30, 4)]
    prog = tx_setup()
    slot = 0
    for k, f in enumerate(frames):
        cmd = TXD_EOP | TXD_IFCS | (TXD_RS if k % 2 == 0 else TXD_RPS if k == 1 else 0)
        prog += tx_packet([tx_legacy(TX_BUF + 0x1000 * k, len(f), cmd)],
                          [(TX_BUF + 0x1000 * k, f)], slot)
        slot += 1
    # One packet gathered from three descriptors, with CSO/CSS set (ignored for legacy).
    f = frame_to(PEER, 300, 9)
    parts = [f[:20], f[20:200], f[200:]]
    descs = [tx_legacy(TX_BUF + 0x8000 + 0x400 * i, len(p),
                       (TXD_EOP | TXD_RS if i == 2 else 0), cso=20, css=14)
             for i, p in enumerate(parts)]
    prog += tx_packet(descs, [(TX_BUF + 0x8000 + 0x400 * i, p) for i, p in enumerate(parts)],
                      slot)
    check(prog + tx_readback())


def test_tx_ring_wrap_and_tctl() -> None:
    prog = tx_setup(8, 0)  # TCTL.EN off: nothing goes out
    for k in range(5):
        f = frame_to(PEER, 64 + k, k)
        prog += [WriteMem(TX_BUF + 0x100 * k, f),
                 WriteMem(TX_RING + 16 * k, tx_legacy(TX_BUF + 0x100 * k, len(f),
                                                      TXD_EOP | TXD_RS))]
    prog += [WriteReg(TDT, 5), CollectTx(), ReadReg(TDH), WriteReg(TCTL, TCTL_EN), CollectTx(),
             ReadReg(TDH), ReadReg(ICR)]
    for k in range(5, 19):  # round the ring twice more
        f = frame_to(PEER, 64 + k, k)
        prog += [WriteMem(TX_BUF + 0x100 * k, f),
                 WriteMem(TX_RING + 16 * (k % 8), tx_legacy(TX_BUF + 0x100 * k, len(f),
                                                            TXD_EOP | TXD_RS)),
                 WriteReg(TDT, (k + 1) % 8)]
    check(prog + tx_readback())


def _ipv4_tcp_frame(payload: bytes, *, dst: bytes = PEER, seq: int = 1000,
                    flags: int = 0x19) -> bytes:
    src_ip, dst_ip = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    seg = tcp(1234, 80, seq, payload, flags=flags)
    return eth(dst, MAC, 0x0800, ipv4(src_ip, dst_ip, 6, seg))


def test_tx_checksum_offload() -> None:
    """IXSM/TXSM with a context descriptor: IPv4+TCP, IPv4+UDP, TUCSE set, only IXSM,
    context reused by a second packet, legacy descriptors ignore it."""
    src_ip, dst_ip = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    tcp_frame = _ipv4_tcp_frame(payload_pattern(200))
    udp_frame = eth(PEER, MAC, 0x0800, ipv4(src_ip, dst_ip, 17, udp(53, 5353,
                                                                    payload_pattern(77))))
    # zero the IP checksum so the NIC's shows up
    tcp_frame = tcp_frame[:24] + b"\0\0" + tcp_frame[26:]
    udp_frame = udp_frame[:24] + b"\0\0" + udp_frame[26:]
    ctx_tcp = tx_context(ipcss=14, ipcso=24, ipcse=33, tucss=34, tucso=50, tucse=0,
                         tucmd=TUCMD_IP | TUCMD_TCP)
    ctx_udp = tx_context(ipcss=14, ipcso=24, ipcse=33, tucss=34, tucso=40, tucse=0,
                         tucmd=TUCMD_IP)
    ctx_cse = tx_context(ipcss=14, ipcso=24, ipcse=33, tucss=34, tucso=40, tucse=60,
                         tucmd=TUCMD_IP)
    both = POPTS_IXSM | POPTS_TXSM
    packets = [
        ([ctx_tcp, tx_data(TX_BUF, len(tcp_frame), TXD_EOP | TXD_RS, popts=both)], tcp_frame),
        ([ctx_udp, tx_data(TX_BUF + 0x1000, len(udp_frame), TXD_EOP | TXD_RS, popts=both)],
         udp_frame),
        ([ctx_cse, tx_data(TX_BUF + 0x1000, len(udp_frame), TXD_EOP, popts=POPTS_TXSM)],
         udp_frame),
        ([tx_data(TX_BUF, len(tcp_frame), TXD_EOP, popts=POPTS_IXSM)], tcp_frame),
        ([tx_legacy(TX_BUF, len(tcp_frame), TXD_EOP | TXD_RS, cso=50, css=34)], tcp_frame),
    ]
    prog = tx_setup(16)
    slot = 0
    for k, (descs, data) in enumerate(packets):
        addr = TX_BUF + (0x1000 if data is udp_frame else 0)
        del k
        prog += tx_packet(descs, [(addr, data)], slot, 16)
        slot += len(descs)
    check(prog + tx_readback(16))


def _tso_program(frame: bytes, hdr_len: int, mss: int, ctx: bytes, *, popts: int,
                 split: tuple[int, ...] = (), vlan: int | None = None) -> list[Op]:
    """One TSO packet: a context descriptor, then data descriptors splitting the frame
    at ``split`` offsets."""
    cuts = [0, *split, len(frame)]
    pieces = [frame[a:b] for a, b in itertools.pairwise(cuts)]
    descs = [ctx]
    buffers = []
    for i, piece in enumerate(pieces):
        addr = TX_BUF + 0x10000 * i
        last = i == len(pieces) - 1
        cmd = TXD_TSE | (TXD_EOP | TXD_RS if last else 0) | (TXD_VLE if vlan is not None else 0)
        descs.append(tx_data(addr, len(piece), cmd, popts=popts,
                             special=vlan if vlan is not None else 0))
        buffers.append((addr, piece))
    del hdr_len, mss
    return tx_packet(descs, buffers, 0, 16)


def test_tso_ipv4_tcp() -> None:
    payload = payload_pattern(3000, 5)
    src_ip, dst_ip = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    phs = pseudo_sum_v4(src_ip, dst_ip, 6, 0)
    seg = tcp(1234, 80, 0x1000_0000, payload, flags=0x19, csum=phs)
    frame = eth(PEER, MAC, 0x0800, ipv4(src_ip, dst_ip, 6, seg, ident=0x4242, checksum=False))
    hdr_len, mss = 54, 1000
    ctx = tx_context(ipcss=14, ipcso=24, ipcse=33, tucss=34, tucso=50, tucse=0,
                     paylen=len(payload), tucmd=TUCMD_IP | TUCMD_TCP | TUCMD_TSE,
                     hdr_len=hdr_len, mss=mss)
    prog = tx_setup(16) + _tso_program(frame, hdr_len, mss, ctx,
                                       popts=POPTS_IXSM | POPTS_TXSM, split=(54, 1500, 2222))
    check(prog + tx_readback(16))


def test_tso_ipv6_tcp() -> None:
    payload = payload_pattern(2500, 9)
    src_ip, dst_ip = bytes(15) + b"\1", bytes(15) + b"\2"
    seg = tcp(4321, 443, 77, payload, flags=0x18)
    frame = eth(PEER, MAC, 0x86DD, ipv6(src_ip, dst_ip, 6, seg))
    hdr_len, mss = 74, 1200
    ctx = tx_context(ipcss=14, ipcso=0, ipcse=0, tucss=54, tucso=70, tucse=0,
                     paylen=len(payload), tucmd=TUCMD_TCP | TUCMD_TSE, hdr_len=hdr_len, mss=mss)
    prog = tx_setup(16) + _tso_program(frame, hdr_len, mss, ctx, popts=POPTS_TXSM,
                                       split=(74,))
    check(prog + tx_readback(16))


def test_tso_udp() -> None:
    payload = payload_pattern(4000, 3)
    src_ip, dst_ip = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    dgram = udp(5000, 6000, payload)
    frame = eth(PEER, MAC, 0x0800, ipv4(src_ip, dst_ip, 17, dgram, checksum=False))
    hdr_len, mss = 42, 1400
    ctx = tx_context(ipcss=14, ipcso=24, ipcse=33, tucss=34, tucso=40, tucse=0,
                     paylen=len(payload), tucmd=TUCMD_IP | TUCMD_TSE, hdr_len=hdr_len, mss=mss)
    prog = tx_setup(16) + _tso_program(frame, hdr_len, mss, ctx,
                                       popts=POPTS_IXSM | POPTS_TXSM, split=(100, 3000))
    check(prog + tx_readback(16))


def test_tso_with_vlan_insert_and_odd_descriptors() -> None:
    """TSO + VLE, a header split over descriptors, mss smaller than a descriptor."""
    payload = payload_pattern(1000, 1)
    src_ip, dst_ip = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    seg = tcp(1, 2, 3, payload, flags=0x11)
    frame = eth(PEER, MAC, 0x0800, ipv4(src_ip, dst_ip, 6, seg, checksum=False))
    ctx = tx_context(ipcss=14, ipcso=24, ipcse=33, tucss=34, tucso=50, tucse=0,
                     paylen=len(payload), tucmd=TUCMD_IP | TUCMD_TCP | TUCMD_TSE,
                     hdr_len=54, mss=300)
    prog: list[Op] = [WriteReg(CTRL, 0x00140240 | CTRL_VME), *tx_setup(16)]
    prog += _tso_program(frame, 54, 300, ctx, popts=POPTS_IXSM | POPTS_TXSM,
                         split=(10, 40, 54, 700), vlan=0x2064)
    check(prog + tx_readback(16))


def test_tx_vlan_insert() -> None:
    f = frame_to(PEER, 100, 1)
    prog: list[Op] = [*tx_setup()]
    prog += tx_packet([tx_legacy(TX_BUF, len(f), TXD_EOP | TXD_VLE | TXD_RS, special=0x1234)],
                      [(TX_BUF, f)], 0)
    prog += [WriteReg(CTRL, 0x00140240 | CTRL_VME), WriteReg(VET, 0x88A8)]
    prog += tx_packet([tx_legacy(TX_BUF, len(f), TXD_EOP | TXD_VLE | TXD_RS, special=0x0ABC)],
                      [(TX_BUF, f)], 1)
    prog += tx_packet([tx_data(TX_BUF, 50, TXD_VLE, special=7),
                       tx_data(TX_BUF + 50, len(f) - 50, TXD_EOP | TXD_VLE, special=9)],
                      [(TX_BUF, f)], 2)
    check(prog + tx_readback())


def test_tx_interrupts_and_mitigation() -> None:
    """TXDW/TXQE through IMS, IDE with TADV, ITR; the line's timing is compared."""
    f = frame_to(PEER, 80, 1)
    prog: list[Op] = [*tx_setup(), WriteReg(IMS, 0x3), WriteReg(TADV, 100), WriteReg(ITR, 1000),
                      WriteMem(TX_BUF, f)]
    for k in range(4):
        cmd = TXD_EOP | TXD_RS | (TXD_IDE if k % 2 else 0)
        prog += [WriteMem(TX_RING + 16 * k, tx_legacy(TX_BUF, len(f), cmd)),
                 WriteReg(TDT, k + 1), ClockStep(quantize(50_000)), ReadReg(ICR),
                 ClockStep(quantize(200_000)), ReadReg(ICR)]
    check(prog + tx_readback())


# ---------------------------------------------------------------------------- misc
def test_interrupt_registers() -> None:
    prog: list[Op] = [ReadReg(ICR), WriteReg(ICS, 0xFFFF_FFFF), ReadReg(ICS), ReadReg(ICR),
                      ReadReg(ICR), WriteReg(IMS, 0x1F), ReadReg(IMS), WriteReg(IMC, 0x3),
                      ReadReg(IMS), ReadReg(IMC), WriteReg(ICS, 0x10), ReadReg(ICS),
                      WriteReg(ICR, 0x10), ReadReg(ICS), WriteReg(ICS, 0x84),
                      ClockStep(MIT_WINDOW_NS), WriteReg(IMS, 0x80), ClockStep(MIT_WINDOW_NS),
                      ReadReg(ICR), WriteReg(RDTR, 5), WriteReg(RADV, 7), WriteReg(ITR, 0x12345),
                      ReadReg(RDTR), ReadReg(RADV), ReadReg(ITR), ReadReg(TADV)]
    check(prog)


def test_register_masks() -> None:
    prog: list[Op] = []
    for reg in (CTRL, RCTL, TCTL, RDLEN, TDLEN, RDH, TDH, RDT, TDT, RDTR, RADV, TADV, ITR,
                VET, LEDCTL, PBA, STATUS, MANC, RDBAL, RDBAH, TDBAL, TDBAH, 0x3828, 0x5808,
                0x2C00, 0x0028, 0x5B50, 0x3410, 0x3418, 0x3420, 0x3428, 0x3430, 0x2410,
                0x2418, 0x2420, 0x2428, 0x2430, 0x5838, 0x5840, 0x5A80, 0x5F00, 0x9000):
        prog += [WriteReg(reg, 0xFFFF_FFFF), ReadReg(reg), WriteReg(reg, 0x5A5A_A5A5),
                 ReadReg(reg)]
    check(prog, settle_rctl=False)


def test_statistics_read_to_clear() -> None:
    prog = rx_setup(16, RCTL_EN | RCTL_BAM | RCTL_LPE | RCTL_BSEX | RCTL_SZ_1024)
    for k, size in enumerate((60, 64, 65, 127, 128, 255, 256, 511, 512, 1023, 1024, 1518, 2000)):
        dst = (BCAST, MAC, MAC)[k % 3]
        prog.append(InjectFrame(frame_to(dst, size, seq=k)))
    prog += tx_setup()
    for k, size in enumerate((60, 100, 300, 600, 1200)):
        f = frame_to((BCAST, MCAST, PEER)[k % 3], size, k)
        prog += tx_packet([tx_legacy(TX_BUF + 0x1000 * k, len(f), TXD_EOP)],
                          [(TX_BUF + 0x1000 * k, f)], k)
    prog += [ReadReg(r) for r in STATS] + [ReadReg(r) for r in STATS]
    prog += [InjectFrame(frame_to(MAC, 100)), ReadReg(TORL), ReadReg(TORH), ReadReg(TORL),
             ReadReg(GORCL), ReadReg(GORCH), ReadReg(GORCL)]
    check(prog)


def test_phy_loopback() -> None:
    """BMCR loopback: transmitted frames come back to the NIC's own receive path;
    RCTL.LBM alone does nothing."""
    prog = rx_setup(8, RCTL_EN | RCTL_BAM | 0xC0) + tx_setup()
    f1, f2 = frame_to(MAC, 100, 1), frame_to(BCAST, 200, 2)
    prog += tx_packet([tx_legacy(TX_BUF, len(f1), TXD_EOP | TXD_RS)], [(TX_BUF, f1)], 0)
    prog += [CollectTx(), WriteReg(MDIC, mdic(MDIC_WRITE, 0, 0x1140 | MII_BMCR_LOOPBACK)),
             ReadReg(STATUS)]
    prog += tx_packet([tx_legacy(TX_BUF + 0x1000, len(f2), TXD_EOP | TXD_RS)],
                      [(TX_BUF + 0x1000, f2)], 1)
    prog += tx_packet([tx_legacy(TX_BUF, len(f1), TXD_EOP | TXD_RS)], [(TX_BUF, f1)], 2)
    check(prog + rx_readback(8, 210) + tx_readback())


def test_link_changes() -> None:
    prog: list[Op] = [WriteReg(IMS, 0x4), SetLink(False), ReadReg(STATUS), ReadReg(ICR),
                      WriteReg(MDIC, mdic(MDIC_READ, 1)), ReadReg(MDIC), SetLink(False),
                      ReadReg(ICR), SetLink(True), ReadReg(STATUS),
                      ClockStep(quantize(499_000_000)), ReadReg(STATUS),
                      ClockStep(quantize(2_000_000)), ReadReg(STATUS), ReadReg(ICR),
                      WriteReg(MDIC, mdic(MDIC_READ, 1)), ReadReg(MDIC),
                      WriteReg(MDIC, mdic(MDIC_READ, 5)), ReadReg(MDIC),
                      # autoneg off: link comes back at once
                      WriteReg(MDIC, mdic(MDIC_WRITE, 0, 0x0140)), SetLink(False), SetLink(True),
                      ReadReg(STATUS), ReadReg(ICR)]
    check(prog)


def test_dma_outside_guest_ram() -> None:
    """Rings and buffers above 4 GiB (nothing there). QEMU reads zeros and drops
    writes; the model does that with dma_error_policy='zero'. Its default, 'stop',
    is a documented deviation, tested in test_e1000_robust."""
    f = frame_to(MAC, 80, 1)
    prog = rx_setup(8, RCTL_EN) + tx_setup()
    prog += [WriteReg(TDBAH, 1), WriteReg(TDT, 2), ReadReg(TDH), CollectTx(), ReadReg(ICR),
             WriteReg(RDBAH, 1), InjectFrame(f), ReadReg(RDH), ReadReg(ICR),
             WriteReg(RDBAH, 0), WriteReg(TDBAH, 0),
             WriteMem(RX_RING + 16 * 2, rx_desc(0x1_0000_0000)), InjectFrame(f),
             WriteMem(TX_RING + 16 * 2, tx_legacy(0x1_0000_0000, 60, TXD_EOP | TXD_RS)),
             WriteReg(TDT, 3)]
    check(prog + rx_readback(8, 16) + tx_readback(), dma_error_policy="zero")


def test_set_link_up_when_up() -> None:
    prog: list[Op] = [WriteReg(IMS, 0x4), SetLink(True), ReadReg(STATUS), ReadReg(ICR),
                      ClockStep(AUTONEG_STEP), ReadReg(STATUS), ReadReg(ICR),
                      SetLink(True), ReadReg(STATUS), ReadReg(ICR),
                      SetLink(False), SetLink(False), ReadReg(STATUS), ReadReg(ICR)]
    check(prog)


def test_ctrl_reset_bit_and_slu() -> None:
    prog: list[Op] = [WriteReg(CTRL, 0x0400_0000 | 0x40), ReadReg(CTRL), ReadReg(STATUS),
                      WriteReg(CTRL, 0), ReadReg(CTRL), ReadReg(STATUS)]
    check(prog)


# ---------------------------------------------------------------------------- random programs
#: Random writes leave RCTL alone (its 1 s RX block is stepped over by the
#: harness after every write) and the ring base addresses (DMA outside guest
#: RAM is a documented deviation: test_dma_outside_guest_ram).
_REG_POOL = sorted(set(DOCUMENTED) - {RCTL, RDBAL, RDBAH, TDBAL, TDBAH})
_RING = 8


@st.composite
def random_programs(draw: st.DrawFn) -> list[Op]:
    """A random mix of ring setup, register writes, frames, TX descriptors and time."""
    ops: list[Op] = []
    rctl = draw(st.sampled_from([RCTL_EN, RCTL_EN | RCTL_BAM, RCTL_EN | RCTL_UPE,
                                 RCTL_EN | RCTL_MPE | RCTL_BAM | RCTL_SZ_256,
                                 RCTL_EN | RCTL_SECRC | 0x100,
                                 RCTL_EN | RCTL_VFE | RCTL_BAM | RCTL_SZ_512]))
    ops += rx_setup(_RING, rctl, post=draw(st.integers(0, _RING - 1)))
    ops += tx_setup(_RING, draw(st.sampled_from([TCTL_EN, 0, TCTL_EN | TCTL_PSP])))
    ops.append(WriteReg(IMS, draw(st.integers(0, 0xFFFF))))
    dests = st.sampled_from([MAC, BCAST, MCAST, OTHER, bytes.fromhex("333300000001")])
    n_ops = draw(st.integers(4, 24))
    tdt = 0
    link_up = True
    for _ in range(n_ops):
        kind = draw(st.sampled_from(["frame", "frame", "vframe", "reg", "read", "tx", "step",
                                     "rdt", "mem", "tso", "mdic", "link", "ics"]))
        if kind == "frame":
            size = draw(st.one_of(st.integers(60, 1518), st.integers(1523, 1600)))
            ops.append(InjectFrame(frame_to(draw(dests), size,
                                            seq=draw(st.integers(0, 255)))))
        elif kind == "vframe":
            ops.append(InjectFrame(vlan_tag(frame_to(draw(dests), draw(st.integers(56, 300))),
                                            draw(st.integers(0, 0xFFFF)))))
        elif kind == "reg":
            reg = draw(st.sampled_from(_REG_POOL + [MTA + 4 * i for i in range(4)]
                                       + [VFTA + 4 * i for i in range(4)]))
            ops.append(WriteReg(reg, draw(st.integers(0, 0xFFFF_FFFF))))
        elif kind == "read":
            ops.append(ReadReg(draw(st.sampled_from(DOCUMENTED))))
        elif kind == "tx":
            size = draw(st.integers(1, 600))
            f = frame_to(draw(dests), size)
            cmd = draw(st.sampled_from([TXD_EOP, TXD_EOP | TXD_RS, 0, TXD_EOP | TXD_VLE | TXD_RS,
                                        TXD_EOP | TXD_RPS]))
            desc = draw(st.sampled_from([
                tx_legacy(TX_BUF + 0x1000 * tdt, len(f), cmd, special=0x123),
                tx_data(TX_BUF + 0x1000 * tdt, len(f), cmd,
                        popts=draw(st.integers(0, 3)), special=0x456),
                tx_context(ipcss=14, ipcso=24, tucss=34, tucso=draw(st.integers(0, 80)),
                           tucse=draw(st.integers(0, 90)), tucmd=TUCMD_IP)]))
            ops += [WriteMem(TX_BUF + 0x1000 * tdt, f), WriteMem(TX_RING + 16 * tdt, desc)]
            tdt = (tdt + 1) % _RING
            ops.append(WriteReg(TDT, tdt))
        elif kind == "step":
            ops.append(ClockStep(CLOCK_STEPS[draw(st.integers(0, len(CLOCK_STEPS) - 1))]))
        elif kind == "rdt":
            ops.append(WriteReg(RDT, draw(st.integers(0, _RING - 1))))
        elif kind == "tso":
            hdr_len = draw(st.integers(14, 80))
            mss = draw(st.integers(1, 700))
            data = payload_pattern(draw(st.integers(1, 3000)), draw(st.integers(0, 255)))
            ctx = tx_context(ipcss=14, ipcso=24, ipcse=33, tucss=draw(st.integers(0, 60)),
                             tucso=draw(st.integers(0, 70)), paylen=len(data) - hdr_len,
                             tucmd=draw(st.sampled_from([TUCMD_TSE | TUCMD_IP | TUCMD_TCP,
                                                         TUCMD_TSE | TUCMD_IP, TUCMD_TSE,
                                                         TUCMD_TSE | TUCMD_TCP])),
                             hdr_len=hdr_len, mss=mss)
            cut = draw(st.integers(0, len(data)))
            popts = draw(st.integers(0, 3))
            ops += [WriteMem(TX_BUF + 0x10000, data),
                    WriteMem(TX_RING + 16 * tdt, ctx),
                    WriteMem(TX_RING + 16 * ((tdt + 1) % _RING),
                             tx_data(TX_BUF + 0x10000, cut, TXD_TSE, popts=popts)),
                    WriteMem(TX_RING + 16 * ((tdt + 2) % _RING),
                             tx_data(TX_BUF + 0x10000 + cut, len(data) - cut,
                                     TXD_TSE | TXD_EOP | TXD_RS, popts=popts))]
            tdt = (tdt + 3) % _RING
            ops.append(WriteReg(TDT, tdt))
        elif kind == "mdic":
            op = draw(st.sampled_from([MDIC_READ, MDIC_WRITE]))
            ops += [WriteReg(MDIC, mdic(op, draw(st.integers(0, 31)), draw(st.integers(0, 0xFFFF)),
                                        phy=draw(st.sampled_from([1, 1, 1, 2])))),
                    ReadReg(MDIC)]
        elif kind == "link":  # a change (test_set_link_up_when_up covers the rest)
            link_up = not link_up
            ops.append(SetLink(link_up))
        elif kind == "ics":
            ops += [WriteReg(ICS, draw(st.integers(0, 0x3FF))), ReadReg(ICR)]
        else:
            slot = draw(st.integers(0, _RING - 1))
            ops.append(WriteMem(RX_RING + 16 * slot, rx_desc(RX_BUF + RX_BUF_STRIDE * slot,
                                                             draw(st.integers(0, 255)))))
    return ops + rx_readback(_RING, 64) + tx_readback(_RING)


CLOCK_STEPS = (960, 1920, quantize(128_000), quantize(10_000_000), quantize(600_000_000))


@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(program=random_programs())
def test_random_programs(program: list[Op]) -> None:
    """Random rings, register writes, frames, TX descriptors and clock steps.

    Frames < 60 bytes, 1519..1522 bytes and MPE without BAM have their own
    tests above and are kept out here.
    """
    check(program)


# ---------------------------------------------------------------------------- sanity of helpers
def test_helpers() -> None:
    assert inet_checksum(b"\x45\x00\x00\x1c") == 0xBAE3
    assert RAM_SIZE > TX_BUF + 0x100000
    assert functools.reduce(lambda a, b: a | b, (TXD_RS, TXD_EOP)) == TXD_RS | TXD_EOP
