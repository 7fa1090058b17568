"""e1000 model against docs/e1000.md: registers, interrupts, mitigation, EEPROM,
MDIC/PHY, link, statistics, and the bring-up of docs/guest.md#bring-up.

Pure in-process: RamDma, ManualScheduler and a Peer double (test_e1000_rig).
RX, TX/TSO and robustness have their own modules (test_e1000_rx/_tx/_robust).
"""

from __future__ import annotations

import struct

import pytest

from virtwire.hw.e1000 import DEVIATIONS, E1000, MODELS
from virtwire.hw.e1000_regs import (
    E1000_AIT,
    E1000_CTRL,
    E1000_CTRL_EXT,
    E1000_CTRL_RST,
    E1000_CTRL_VME,
    E1000_EECD,
    E1000_EECD_CS,
    E1000_EECD_DI,
    E1000_EECD_DO,
    E1000_EECD_GNT,
    E1000_EECD_PRES,
    E1000_EECD_REQ,
    E1000_EECD_SK,
    E1000_EERD,
    E1000_FCAH,
    E1000_FCAL,
    E1000_FCT,
    E1000_FCTTV,
    E1000_FFLT,
    E1000_FFMT,
    E1000_GORCH,
    E1000_GORCL,
    E1000_GOTCH,
    E1000_GOTCL,
    E1000_ICR,
    E1000_ICR_LSC,
    E1000_ICR_MDAC,
    E1000_ICR_RXT0,
    E1000_ICR_TXDW,
    E1000_ICR_TXQE,
    E1000_ICS,
    E1000_IMC,
    E1000_IMS,
    E1000_ITR,
    E1000_LEDCTL,
    E1000_MANC,
    E1000_MDIC,
    E1000_MDIC_ERROR,
    E1000_MDIC_INT_EN,
    E1000_MDIC_OP_READ,
    E1000_MDIC_READY,
    E1000_MPC,
    E1000_PBA,
    E1000_RA,
    E1000_RADV,
    E1000_RCTL,
    E1000_RDFH,
    E1000_RDFHS,
    E1000_RDH,
    E1000_RDLEN,
    E1000_RDT,
    E1000_RDTR,
    E1000_RNBC,
    E1000_RXCSUM,
    E1000_RXDCTL,
    E1000_STATUS,
    E1000_STATUS_LU,
    E1000_SWSM,
    E1000_TADV,
    E1000_TCTL,
    E1000_TDFH,
    E1000_TDH,
    E1000_TDLEN,
    E1000_TDT,
    E1000_TIDV,
    E1000_TIPG,
    E1000_TORH,
    E1000_TORL,
    E1000_TOTH,
    E1000_TOTL,
    E1000_TXCW,
    E1000_TXD_CMD_EOP,
    E1000_TXD_CMD_IDE,
    E1000_TXD_CMD_IFCS,
    E1000_TXD_CMD_RS,
    E1000_VET,
    E1000_VFTA,
    E1000_WUC,
    E1000_WUS,
    EEPROM_TEMPLATE,
    IMS_ENABLE_MASK,
    MII_ANAR,
    MII_ANER,
    MII_ANLPAR,
    MII_BMCR,
    MII_BMCR_ANRESTART,
    MII_BMCR_AUTOEN,
    MII_BMSR,
    MII_BMSR_AN_COMP,
    MII_BMSR_LINK_ST,
    MII_CTRL1000,
    MII_PHYID1,
    MII_PHYID2,
    MII_STAT1000,
    STATISTICS_REGISTERS,
)
from virtwire.hw.eeprom import eeprom_checksum_ok, eeprom_image
from virtwire.hw.timer import NS_PER_MS, ManualScheduler

from support.e1000_rig import BCAST, MAC, PEER_MAC, Driver, Rig, eth_frame


def test_models_device_ids_and_phy_id2() -> None:
    """Models: 82540EM 0x100E, 82544GC 0x100C, 82545EM 0x100F (+ QEMU type names)."""
    expected = {"82540EM": (0x100E, 0x0C20), "82544GC": (0x100C, 0x0C30),
                "82545EM": (0x100F, 0x0C20)}
    for model, (dev, id2) in expected.items():
        rig = Rig(model=model)  # type: ignore[arg-type]
        assert rig.nic.device_id == dev and rig.nic.vendor_id == 0x8086
        assert rig.phy_read(MII_PHYID2) & 0xFFFF == id2
        assert rig.nic.eeprom.data[11] == rig.nic.eeprom.data[13] == dev
    assert Rig(model="e1000-82545em").nic.device_id == 0x100F
    with pytest.raises(ValueError):
        Rig(model="82599")  # type: ignore[arg-type]
    assert MODELS["82540EM"].typename == "e1000"
    assert DEVIATIONS


def test_reset_values() -> None:
    """CTRL=0x00140240, STATUS=0x80080783, PBA=0x00100030, LEDCTL=0x602,
    MANC=0x00222300, VET=0x8100, RAL0/RAH0 = MAC with AV; everything else 0."""
    rig = Rig()
    assert rig.r(E1000_CTRL) == 0x00140240
    assert rig.r(E1000_STATUS) == 0x80080783
    assert rig.r(E1000_PBA) == 0x00100030
    assert rig.r(E1000_LEDCTL) == 0x602
    assert rig.r(E1000_MANC) == 0x00222300
    assert rig.r(E1000_VET) == 0x8100
    assert rig.r(E1000_RA) == 0x12005452
    assert rig.r(E1000_RA + 4) == 0x80000000 | 0x5634
    assert rig.nic.describe() == "model=e1000,macaddr=52:54:00:12:34:56"
    special = {E1000_CTRL, E1000_STATUS, E1000_PBA, E1000_LEDCTL, E1000_MANC, E1000_VET,
               E1000_RA, E1000_RA + 4, E1000_EECD}
    for off in range(0, 0x20000, 4):
        if off not in special:
            assert rig.r(off) == 0, hex(off)
    # EECD reads PRES|GNT and DO (not reading).
    assert rig.r(E1000_EECD) == E1000_EECD_PRES | E1000_EECD_GNT | E1000_EECD_DO
    assert rig.irqs == [] and not rig.nic.bus_master


def test_reset_restores_and_clears_link_when_down() -> None:
    """STATUS.LU is cleared at reset if the netdev link is down."""
    rig = Rig()
    rig.w(E1000_CTRL, 0)
    rig.w(E1000_IMS, 0xFF)
    rig.w(E1000_ICS, E1000_ICR_TXQE)
    assert rig.irqs == [True]
    rig.nic.set_bus_master(True)
    rig.nic.set_link(False)
    rig.nic.reset()
    assert rig.irqs == [True, False]
    assert rig.r(E1000_CTRL) == 0x00140240
    assert rig.r(E1000_STATUS) == 0x80080783 & ~E1000_STATUS_LU
    assert not rig.phy_read(MII_BMSR) & MII_BMSR_LINK_ST
    assert rig.r(E1000_IMS) == 0 and rig.r(E1000_ICR) == 0
    assert not rig.nic.bus_master


@pytest.mark.parametrize("off", [E1000_TIDV, E1000_TIPG, E1000_CTRL_EXT, E1000_RXCSUM,
                                 E1000_RXDCTL, E1000_TXCW, E1000_FCAL, E1000_FCAH, E1000_FCT,
                                 E1000_FCTTV, 0x0E04, 0x8000, 0xFFFC])
def test_unimplemented_registers_read_0_and_ignore_writes(off: int) -> None:
    rig = Rig()
    rig.w(off, 0xDEADBEEF)
    assert rig.r(off) == 0


def test_masked_writes() -> None:
    """TDLEN/RDLEN &0xFFF80; TDH, RDH, RDTR, RADV, TADV, ITR &0xFFFF; RDT, TDT &0xFFFF;
    the FIFO registers 11/13 bits; FFMT 4 bits."""
    rig = Rig()
    for off in (E1000_TDLEN, E1000_RDLEN):
        rig.w(off, 0xFFFFFFFF)
        assert rig.r(off) == 0xFFF80
    for off in (E1000_TDH, E1000_RDH, E1000_RDTR, E1000_RADV, E1000_TADV, E1000_ITR,
                E1000_RDT, E1000_TDT, E1000_AIT):
        rig.w(off, 0xFFFFFFFF)
        assert rig.r(off) == 0xFFFF, hex(off)
    rig.w(E1000_TDFH, 0xFFFFFFFF)
    assert rig.r(E1000_TDFH) == 0x7FF
    rig.w(E1000_RDFH, 0xFFFFFFFF)
    assert rig.r(E1000_RDFH) == 0x1FFF
    rig.w(E1000_RDFHS, 0xFFFFFFFF)
    assert rig.r(E1000_RDFHS) == 0x1FFF
    rig.w(E1000_FFLT, 0xFFFFFFFF)
    assert rig.r(E1000_FFLT) == 0x7FF
    rig.w(E1000_FFMT, 0xFFFFFFFF)
    assert rig.r(E1000_FFMT) == 0xF
    for off in (E1000_VFTA + 4, E1000_SWSM, E1000_WUC, E1000_WUS):
        rig.w(off, 0x12345678)
        assert rig.r(off) == 0x12345678


def test_read_only_registers_and_ctrl_rst() -> None:
    """STATUS and MANC are read-only; CTRL stores val & ~RST; MPC is read-only."""
    rig = Rig()
    rig.w(E1000_STATUS, 0)
    rig.w(E1000_MANC, 0)
    rig.w(E1000_MPC, 5)
    assert rig.r(E1000_STATUS) == 0x80080783
    assert rig.r(E1000_MANC) == 0x00222300
    assert rig.r(E1000_MPC) == 0
    rig.w(E1000_CTRL, 0xFFFFFFFF)
    assert rig.r(E1000_CTRL) == 0xFFFFFFFF & ~E1000_CTRL_RST
    # CTRL.RST does not reset anything.
    rig.w(E1000_IMS, 4)
    rig.w(E1000_CTRL, E1000_CTRL_RST)
    assert rig.r(E1000_IMS) == 4 and rig.r(E1000_CTRL) == 0


def test_ra_write_updates_info_string() -> None:
    rig = Rig()
    rig.w(E1000_RA, 0x44332211)
    rig.w(E1000_RA + 4, 0x80006655)
    assert rig.nic.describe() == "model=e1000,macaddr=11:22:33:44:55:66"


def test_offsets_alias_and_any_value_is_safe() -> None:
    """index = (addr & 0x1ffff) >> 2; values are truncated to 32 bits."""
    rig = Rig()
    rig.w(0x20000 + E1000_IMS, 0x1_0000_0004)
    assert rig.r(E1000_IMS) == 4
    assert rig.r(-0x20000 + E1000_IMS) == 4
    rig.w(E1000_VET, -1)
    assert rig.r(E1000_VET) == 0xFFFFFFFF


def test_unaligned_access_is_split_like_qemu_memory_core() -> None:
    """A 4-byte access at addr % 4 != 0 becomes naturally aligned pieces, each a
    full 32-bit register access whose low bytes are kept."""
    rig = Rig()
    rig.w(E1000_VET + 2, 0xAABBCCDD)   # 2 bytes at VET+2 (whole VET = 0xCCDD), 2 at +4
    assert rig.r(E1000_VET) == 0xCCDD
    rig.w(E1000_VET, 0x11223344)
    # bytes at VET+1 (VET & 0xFF), VET+2 (2 bytes: VET & 0xFFFF), VET+4 (1 byte, reg 0x3C).
    assert rig.r(E1000_VET + 1) == 0x44 | (0x3344 << 8)
    rig.w(E1000_IMS, 0xFF)
    rig.w(E1000_ICS, 0x80)
    assert rig.r(E1000_ICR + 2) == 0x80  # read-to-clear ran on the first piece
    assert rig.r(E1000_ICR) == 0
    # PBM ends the BAR: the low half lands in its last register, the rest outside.
    rig.w(0x1FFFE, 0xFFFFFFFF)
    assert rig.r(0x1FFFC) == 0xFFFF and rig.r(0x1FFFE) == 0xFFFF


def test_ics_icr_ims_imc_and_irq_level() -> None:
    """ICS ORs into ICR and reads as ICR; ICR read returns and clears; ICR write
    clears written bits; IMS ORs; IMC clears and reads 0; level = (IMS & ICR) != 0,
    reported only on changes."""
    rig = Rig()
    rig.w(E1000_ICS, 0x5)
    rig.w(E1000_ICS, 0x80)
    assert rig.r(E1000_ICS) == 0x85 and rig.irqs == []
    rig.w(E1000_IMS, 0x4)
    assert rig.irqs == [True]
    rig.w(E1000_IMS, 0x80)
    assert rig.r(E1000_IMS) == 0x84 and rig.irqs == [True]
    rig.w(E1000_ICR, 0x4)
    assert rig.r(E1000_ICS) == 0x81 and rig.irqs == [True]
    rig.w(E1000_IMC, 0x80)
    assert rig.r(E1000_IMS) == 0x4 and rig.r(E1000_IMC) == 0
    assert rig.irqs == [True, False]
    assert rig.r(E1000_ICR) == 0x81
    assert rig.r(E1000_ICR) == 0 and rig.r(E1000_ICS) == 0
    assert rig.irqs == [True, False]
    rig.advance_ms(1)
    rig.w(E1000_ICS, 0x4)
    assert rig.irqs == [True, False, True]
    rig.r(E1000_ICR)
    assert rig.irqs == [True, False, True, False]


def test_mitigation_delays_the_next_rising_edge() -> None:
    """A rising edge is raised at once and opens a window of max(ITR, 500) * 256 ns;
    edges inside it wait for the window to close."""
    rig = Rig()
    rig.w(E1000_IMS, E1000_ICR_TXQE)
    rig.w(E1000_ICS, E1000_ICR_TXQE)
    assert rig.irqs == [True]
    rig.r(E1000_ICR)
    assert rig.irqs == [True, False]
    rig.w(E1000_ICS, E1000_ICR_TXQE)          # inside the 128 us window
    assert rig.irqs == [True, False]
    rig.sched.advance(500 * 256 - 1)
    assert rig.irqs == [True, False]
    rig.sched.advance(1)
    assert rig.irqs == [True, False, True]    # the window closed: raised, new window
    # A cause cleared before the window closes never raises the line.
    rig.r(E1000_ICR)
    rig.w(E1000_ICS, E1000_ICR_TXQE)
    rig.w(E1000_ICR, E1000_ICR_TXQE)
    rig.sched.advance(500 * 256)
    assert rig.irqs == [True, False, True, False]
    # ITR larger than the minimum: 1000 * 256 ns.
    rig.sched.advance(10**6)
    rig.w(E1000_ITR, 1000)
    rig.w(E1000_ICS, E1000_ICR_TXQE)
    rig.r(E1000_ICR)
    rig.w(E1000_ICS, E1000_ICR_TXQE)
    rig.sched.advance(1000 * 256 - 1)
    assert rig.irqs[-1] is False
    rig.sched.advance(1)
    assert rig.irqs[-1] is True


def test_mitigation_radv_needs_rdtr_and_tadv_needs_ide() -> None:
    """RADV (x1024 ns) only with RDTR != 0 and an RXT0 cause; TADV only after a TX
    descriptor with IDE; the smallest nonzero delay wins, at least 500."""
    rig = Rig()
    rig.w(E1000_ITR, 4000)
    rig.w(E1000_RADV, 200)      # 200 * 4 = 800 units
    rig.w(E1000_IMS, E1000_ICR_RXT0)
    rig.w(E1000_ICS, E1000_ICR_RXT0)        # RDTR == 0: ITR (4000) applies
    rig.r(E1000_ICR)
    rig.w(E1000_ICS, E1000_ICR_RXT0)
    rig.sched.advance(4000 * 256 - 1)
    assert rig.irqs == [True, False]
    rig.sched.advance(1)
    assert rig.irqs == [True, False, True]
    rig.r(E1000_ICR)
    rig.sched.advance(10**7)
    rig.w(E1000_RDTR, 1)
    rig.w(E1000_ICS, E1000_ICR_RXT0)        # now min(800, 4000) = 800
    rig.r(E1000_ICR)
    rig.w(E1000_ICS, E1000_ICR_RXT0)
    rig.sched.advance(800 * 256 - 1)
    assert rig.irqs[-1] is False
    rig.sched.advance(1)
    assert rig.irqs[-1] is True
    # TADV with IDE on a transmitted descriptor.
    rig2 = Rig()
    drv = Driver(rig2)
    drv.bring_up()
    rig2.w(E1000_ITR, 0)
    rig2.w(E1000_TADV, 300)                 # 1200 units
    rig2.sched.advance(10**7)
    rig2.r(E1000_ICR)
    drv.send(eth_frame(dst=PEER_MAC, src=MAC),
             cmd=E1000_TXD_CMD_EOP | E1000_TXD_CMD_IFCS | E1000_TXD_CMD_RS
             | E1000_TXD_CMD_IDE)
    assert rig2.irqs[-1] is True
    rig2.r(E1000_ICR)
    rig2.w(E1000_ICS, E1000_ICR_TXDW)
    rig2.sched.advance(1200 * 256 - 1)
    assert rig2.irqs[-1] is False
    rig2.sched.advance(1)
    assert rig2.irqs[-1] is True


# -- EEPROM -----------------------------------------------------------------------------

def test_eeprom_image_and_checksum() -> None:
    """64 words: 0-2 = MAC (little-endian), 11 and 13 = device ID, 0x3F makes the
    16-bit sum 0xBABA."""
    words = eeprom_image(MAC, 0x100E)
    assert words[0:3] == [0x5452, 0x1200, 0x5634]
    assert words[11] == words[13] == 0x100E
    assert sum(words) & 0xFFFF == 0xBABA and eeprom_checksum_ok(words)
    assert words[3:11] == list(EEPROM_TEMPLATE[3:11])
    with pytest.raises(ValueError):
        eeprom_image(b"\x00", 0x100E)


def test_eerd_reads_every_word() -> None:
    """EERD: START -> (data<<16)|DONE|addr<<8; addr > 0x3F -> only DONE; no START
    -> reads back what was written."""
    rig = Rig(model="82545EM")
    words = []
    for addr in range(64):
        rig.w(E1000_EERD, (addr << 8) | 1)
        val = rig.r(E1000_EERD)
        assert val & 0xFFFF == (addr << 8) | 0x10
        words.append(val >> 16)
    assert words == rig.nic.eeprom.data and sum(words) & 0xFFFF == 0xBABA
    assert words[11] == 0x100F
    rig.w(E1000_EERD, (0x40 << 8) | 1)
    assert rig.r(E1000_EERD) == (0x40 << 8) | 0x10
    rig.w(E1000_EERD, 0x1234 << 8)
    assert rig.r(E1000_EERD) == 0x1234 << 8


def _eecd_read_word(rig: Rig, addr: int) -> int:
    """Linux e1000's Microwire read: CS, opcode 110, 6 address bits, 16 data bits."""
    base = E1000_EECD_REQ
    rig.w(E1000_EECD, base)
    rig.w(E1000_EECD, base | E1000_EECD_CS)

    def shift_out(val: int, n: int) -> None:
        for bit in reversed(range(n)):
            di = E1000_EECD_DI if (val >> bit) & 1 else 0
            rig.w(E1000_EECD, base | E1000_EECD_CS | di)
            rig.w(E1000_EECD, base | E1000_EECD_CS | di | E1000_EECD_SK)
            rig.w(E1000_EECD, base | E1000_EECD_CS | di)

    shift_out(0b110, 3)
    shift_out(addr, 6)
    word = 0
    for _ in range(16):
        rig.w(E1000_EECD, base | E1000_EECD_CS | E1000_EECD_SK)
        val = rig.r(E1000_EECD)
        assert val & (E1000_EECD_PRES | E1000_EECD_GNT) == E1000_EECD_PRES | E1000_EECD_GNT
        word = (word << 1) | (1 if val & E1000_EECD_DO else 0)
        rig.w(E1000_EECD, base | E1000_EECD_CS)
    rig.w(E1000_EECD, base)
    return word


def test_eecd_microwire_bit_bang_reads_the_eeprom() -> None:
    rig = Rig()
    words = [_eecd_read_word(rig, a) for a in range(64)]
    assert words == rig.nic.eeprom.data
    assert sum(words) & 0xFFFF == 0xBABA
    # Reads remember SK/CS/DI/REQ; DO is 1 while not reading.
    rig.w(E1000_EECD, E1000_EECD_REQ | E1000_EECD_CS)
    assert rig.r(E1000_EECD) & 0x7F == E1000_EECD_REQ | E1000_EECD_CS | E1000_EECD_DO
    # A wrong opcode never starts a read: DO stays 1.
    rig.w(E1000_EECD, 0)
    rig.w(E1000_EECD, E1000_EECD_CS)
    for _ in range(9):
        rig.w(E1000_EECD, E1000_EECD_CS | E1000_EECD_SK)
        rig.w(E1000_EECD, E1000_EECD_CS)
    assert rig.r(E1000_EECD) & E1000_EECD_DO


# -- MDIC / PHY -------------------------------------------------------------------------

PHY_INIT = {MII_BMCR: 0x1140, MII_BMSR: 0x794D, MII_PHYID1: 0x141, MII_ANAR: 0x0DE1,
            MII_ANLPAR: 0x01E0, MII_CTRL1000: 0x0E00, MII_STAT1000: 0x3C00,
            MII_PHYID2: 0x0C20, MII_ANER: 0, 0x10: 0x360, 0x11: 0xAC00, 0x14: 0x0D60,
            0x15: 0}
PHY_W = {0, 4, 9, 0x10, 0x14}


def test_mdic_phy_registers() -> None:
    """PHY address != 1 -> ERROR; READY always; readable 0,1,2,3,4,5,6,9,10,0x10,
    0x11,0x14,0x15 with QEMU's init values; writable 0,4,9,0x10,0x14; others ERROR."""
    rig = Rig()
    for reg in range(32):
        val = rig.phy_read(reg)
        if reg in PHY_INIT:
            assert not val & E1000_MDIC_ERROR
            assert val & 0xFFFF == PHY_INIT[reg], hex(reg)
            assert val & 0x03FF0000 == (1 << 21) | (reg << 16)
        else:
            assert val & E1000_MDIC_ERROR, hex(reg)
    for reg in range(32):
        val = rig.phy_write(reg, 0x0A5A)
        assert val & E1000_MDIC_READY
        if reg in PHY_W:
            assert not val & E1000_MDIC_ERROR
        else:
            assert val & E1000_MDIC_ERROR, hex(reg)
    for reg in (4, 9, 0x10, 0x14):
        assert rig.phy_read(reg) & 0xFFFF == 0x0A5A
    assert rig.phy_read(MII_BMSR) & 0xFFFF == 0x794D  # read-only
    # Wrong PHY address: old MDIC | ERROR | READY.
    old = rig.r(E1000_MDIC)
    rig.w(E1000_MDIC, E1000_MDIC_OP_READ | (2 << 21))
    assert rig.r(E1000_MDIC) == old | E1000_MDIC_ERROR | E1000_MDIC_READY
    # INT_EN raises MDAC.
    rig.w(E1000_MDIC, E1000_MDIC_OP_READ | (1 << 21) | E1000_MDIC_INT_EN)
    assert rig.r(E1000_ICR) & E1000_ICR_MDAC


def test_bmcr_write_masks_and_restarts_autoneg() -> None:
    """BMCR: bits 0-5, RESET and ANRESTART are not stored; ANRESTART with AUTOEN
    drops the link and brings it back (LSC) 500 ms later."""
    rig = Rig()
    rig.phy_write(MII_BMCR, 0xFFFF & ~MII_BMCR_ANRESTART)
    assert rig.phy_read(MII_BMCR) & 0xFFFF == 0xFFFF & ~(0x3F | 0x8000 | 0x200)
    rig.phy_write(MII_BMCR, MII_BMCR_AUTOEN | MII_BMCR_ANRESTART)
    assert not rig.r(E1000_STATUS) & E1000_STATUS_LU
    assert rig.r(E1000_ICR) == 0  # no LSC for the restart itself
    rig.advance_ms(499)
    assert not rig.r(E1000_STATUS) & E1000_STATUS_LU
    rig.advance_ms(1)
    assert rig.r(E1000_STATUS) & E1000_STATUS_LU
    assert rig.r(E1000_ICR) & E1000_ICR_LSC
    bmsr = rig.phy_read(MII_BMSR) & 0xFFFF
    assert bmsr & MII_BMSR_AN_COMP and bmsr & MII_BMSR_LINK_ST
    assert rig.phy_read(MII_ANLPAR) & 0x4000
    # ANRESTART without AUTOEN does nothing.
    rig.phy_write(MII_BMCR, MII_BMCR_ANRESTART)
    assert rig.r(E1000_STATUS) & E1000_STATUS_LU


def test_autoneg_deadline_is_millisecond_granular() -> None:
    """QEMU's autoneg timer is a ms timer: the deadline is (now_ms + 500) ms."""
    rig = Rig()
    rig.sched.advance(1_700_000)  # 1.7 ms
    rig.phy_write(MII_BMCR, MII_BMCR_AUTOEN | MII_BMCR_ANRESTART)
    rig.sched.advance(500 * NS_PER_MS - 700_001)
    assert not rig.r(E1000_STATUS) & E1000_STATUS_LU
    rig.sched.advance(1)
    assert rig.r(E1000_STATUS) & E1000_STATUS_LU


# -- link ---------------------------------------------------------------------------------

def test_link_down_and_up_with_autoneg() -> None:
    """link down: STATUS.LU, BMSR LINK_ST/AN_COMP clear, LSC; link up with autoneg:
    LU after 500 ms (virtual), LSC, queued frames flushed."""
    rig = Rig()
    drv = Driver(rig)
    drv.bring_up()
    rig.r(E1000_ICR)
    rig.peer.set_link(False)  # QMP set_link on the peer also sets the NIC
    assert rig.nic.link_down
    assert not rig.r(E1000_STATUS) & E1000_STATUS_LU
    bmsr = rig.phy_read(MII_BMSR)
    assert not bmsr & (MII_BMSR_LINK_ST | MII_BMSR_AN_COMP)
    assert rig.r(E1000_ICR) & E1000_ICR_LSC
    assert not rig.nic.can_receive()
    rig.peer.set_link(True)
    assert not rig.r(E1000_STATUS) & E1000_STATUS_LU  # negotiating
    # A frame sent meanwhile waits in the NIC's queue (can_receive is false).
    rig.peer.link_down = False
    assert rig.inject(eth_frame()) == 0
    assert len(rig.nic.incoming_queue) == 1
    rig.advance_ms(500)
    assert rig.r(E1000_STATUS) & E1000_STATUS_LU
    assert rig.r(E1000_ICR) & E1000_ICR_LSC
    assert len(rig.nic.incoming_queue) == 0
    assert drv.receive_all() == [eth_frame()]


def test_link_up_without_autoneg_is_immediate() -> None:
    rig = Rig()
    rig.phy_write(MII_BMCR, 0x0140)  # AUTOEN off
    rig.nic.set_link(False)
    rig.r(E1000_ICR)
    rig.nic.set_link(True)
    assert rig.r(E1000_STATUS) & E1000_STATUS_LU
    assert rig.r(E1000_ICR) & E1000_ICR_LSC


def test_link_up_after_completed_autoneg_is_immediate() -> None:
    """Once autonegotiation completed (BMSR.AN_COMP), link up needs no new 500 ms."""
    rig = Rig()
    rig.phy_write(MII_BMCR, MII_BMCR_AUTOEN | MII_BMCR_ANRESTART)
    rig.advance_ms(500)
    rig.r(E1000_ICR)
    rig.nic.set_link(False)
    rig.nic.set_link(True)  # down cleared AN_COMP, so negotiate again
    assert not rig.r(E1000_STATUS) & E1000_STATUS_LU
    rig.advance_ms(500)
    assert rig.r(E1000_STATUS) & E1000_STATUS_LU
    # The autoneg timer does nothing if the link went down meanwhile.
    rig.nic.set_link(False)
    rig.nic.set_link(True)
    rig.nic.set_link(False)
    rig.r(E1000_ICR)
    rig.advance_ms(600)
    assert not rig.r(E1000_STATUS) & E1000_STATUS_LU
    assert rig.r(E1000_ICR) == 0


# -- statistics -----------------------------------------------------------------------------

CLEAR_ON_READ = {"PRC64", "PRC127", "PRC255", "PRC511", "PRC1023", "PRC1522", "PTC64",
                 "PTC127", "PTC255", "PTC511", "PTC1023", "PTC1522", "GPRC", "GPTC", "TPR",
                 "TPT", "RUC", "ROC", "BPRC", "MPRC", "BPTC", "MPTC", "TSCTC",
                 "GORCH", "GOTCH", "TORH", "TOTH"}


def test_statistics_read_to_clear_set() -> None:
    """Read-to-clear: PRC*, PTC*, GPRC, GPTC, TPR, TPT, RUC, ROC, BPRC, MPRC, BPTC, MPTC,
    TSCTC; reading TORH/TOTH/GORCH/GOTCH clears both halves; the rest read plainly."""
    rig = Rig()
    for name, index in STATISTICS_REGISTERS.items():
        rig.nic.mac_reg[index] = 7
        assert rig.nic.hw_stats()[name] == 7  # hw_stats does not clear
        assert rig.r(index << 2) == 7, name
        assert rig.r(index << 2) == (0 if name in CLEAR_ON_READ else 7), name
    for lo, hi in ((E1000_TORL, E1000_TORH), (E1000_TOTL, E1000_TOTH),
                   (E1000_GORCL, E1000_GORCH), (E1000_GOTCL, E1000_GOTCH)):
        rig.nic.mac_reg[lo >> 2] = 5
        rig.nic.mac_reg[hi >> 2] = 6
        assert rig.r(lo) == 5 and rig.r(lo) == 5  # the low half reads plainly
        assert rig.r(hi) == 6
        assert rig.r(lo) == 0 and rig.r(hi) == 0
    # Statistics registers are not writable.
    rig.w(E1000_RNBC, 9)
    assert rig.r(E1000_RNBC) == 7


def test_statistics_saturate() -> None:
    rig = Rig()
    drv = Driver(rig)
    drv.bring_up()
    mac = rig.nic.mac_reg
    mac[E1000_MPC >> 2] = 0xFFFFFFFF
    mac[STATISTICS_REGISTERS["TPT"]] = 0xFFFFFFFF
    mac[E1000_TOTL >> 2] = 0xFFFFFFF0
    mac[E1000_TOTH >> 2] = 0xFFFFFFFF
    drv.send(eth_frame(dst=PEER_MAC, src=MAC, size=100))
    st = rig.nic.hw_stats()
    assert st["TPT"] == 0xFFFFFFFF
    assert st["TOT"] == 0xFFFFFFFFFFFFFFFF
    assert st["GOTC"] == 104


# -- bring-up (docs/guest.md) ---------------------------------------------------------

def test_bring_up_send_and_receive_byte_for_byte() -> None:
    """The mini driver brings the NIC up, sends one legacy descriptor
    (completes inside the TDT write), receives one frame; write-backs are checked
    byte for byte."""
    rig = Rig()
    drv = Driver(rig)
    drv.bring_up()
    assert rig.irqs == []
    assert rig.nic.can_receive()
    out = eth_frame(dst=BCAST, src=MAC, ethertype=0x0806, size=60, fill=3)
    desc_before = drv.legacy(out, css=0x11, special=0x2233)
    i = drv.put_tx(desc_before)
    drv.kick()
    assert rig.peer.frames == [out]
    assert rig.r(E1000_TDH) == 1
    # Only the upper dword is written back: status |= DD, css/special untouched.
    expect = bytearray(desc_before)
    expect[12] |= 1
    assert drv.tx_desc_raw(i) == bytes(expect)
    assert rig.irqs == [True]
    assert rig.r(E1000_ICR) == E1000_ICR_TXDW | E1000_ICR_TXQE
    assert rig.irqs == [True, False]

    incoming = eth_frame(dst=MAC, src=PEER_MAC, size=98, fill=9)
    rig.poke(drv.rx_buf(0) + 98, b"\xee" * 8)  # where the FCS would go
    assert rig.inject(incoming) == 98
    raw = rig.mem(drv.rx_ring, 16)
    assert raw == struct.pack("<QHHBBH", drv.rx_buf(0), 102, 0, 0x07, 0, 0)
    assert rig.mem(drv.rx_buf(0), 98) == incoming
    assert rig.mem(drv.rx_buf(0) + 98, 8) == b"\xee" * 8  # FCS bytes are not written
    assert rig.r(E1000_RDH) == 1
    rig.sched.advance(500 * 256)  # the mitigation window from the TX interrupt
    assert rig.irqs == [True, False, True]
    assert rig.r(E1000_ICR) == E1000_ICR_RXT0
    assert drv.receive_all() == [incoming]
    assert rig.r(E1000_RDT) == 0
    st = rig.nic.hw_stats()
    assert (st["GPRC"], st["TPR"], st["GORC"], st["TOR"]) == (1, 1, 102, 102)
    assert (st["GPTC"], st["TPT"], st["GOTC"], st["TOT"], st["BPTC"]) == (1, 1, 64, 64, 1)
    assert st["PTC64"] == 1 and st["PRC127"] == 1


def test_ims_enable_mask_is_linux_value() -> None:
    assert IMS_ENABLE_MASK == 0x9D


def test_manual_scheduler_order_and_cancel() -> None:
    sched = ManualScheduler()
    seen: list[str] = []
    sched.call_later(20, lambda: seen.append("b"))
    t = sched.call_later(10, lambda: seen.append("x"))
    sched.call_later(10, lambda: seen.append("a"))
    t.cancel()
    sched.call_later(5, lambda: sched.call_later(1, lambda: seen.append("nested")))
    assert sched.next_deadline() == 5
    assert sched.advance(30) == 4
    assert seen == ["nested", "a", "b"] and sched.now_ns() == 30
    assert sched.pending == 0 and sched.next_deadline() is None
    with pytest.raises(ValueError):
        sched.advance(-1)
    sched.call_later(100, lambda: seen.append("late"))
    sched.run_until_idle()
    assert seen[-1] == "late" and sched.now_ns() == 130


async def test_asyncio_scheduler_runs_callbacks() -> None:
    import asyncio

    from virtwire.hw.timer import AsyncioScheduler

    sched = AsyncioScheduler()
    fired = asyncio.Event()
    t0 = sched.now_ns()
    sched.call_later(1_000_000, fired.set)
    cancelled = sched.call_later(0, lambda: pytest.fail("cancelled timer ran"))
    cancelled.cancel()
    await asyncio.wait_for(fired.wait(), 2)
    assert sched.now_ns() - t0 >= 1_000_000


def test_nic_is_a_netclient_nic() -> None:
    assert E1000.is_nic and E1000.kind == "nic"
    rig = Rig()
    assert rig.nic.drop_counters()["dma_errors"] == 0
    assert rig.r(E1000_VET) == 0x8100
    rig.w(E1000_CTRL, E1000_CTRL_VME)
    assert rig.r(E1000_CTRL) == E1000_CTRL_VME
    rig.w(E1000_TCTL, 0)
    rig.w(E1000_TDT, 1)  # TX disabled: nothing happens, not even TXQE
    assert rig.r(E1000_TDH) == 0 and rig.r(E1000_ICR) == 0
    rig.w(E1000_RCTL, 0)
    assert rig.r(E1000_RDLEN) == 0 and rig.r(E1000_RDT) == 0
