"""The e1000's 64-word EEPROM: its image, EERD reads and the EECD Microwire port.

The driver reads the EEPROM either through EERD (write START and the word
address, read back DONE and the data) or by bit-banging the Microwire
protocol through EECD: raise CS, clock in a 3-bit opcode (READ = 0b110) and a
6-bit address on DI with rising SK edges, then read the 16 data bits, most
significant first, on DO (each falling SK edge moves to the next bit).
"""

from __future__ import annotations

from collections.abc import Sequence

from virtwire.hw.e1000_regs import (
    E1000_EECD_CS,
    E1000_EECD_DI,
    E1000_EECD_DO,
    E1000_EECD_FWE_MASK,
    E1000_EECD_GNT,
    E1000_EECD_PRES,
    E1000_EECD_REQ,
    E1000_EECD_SK,
    E1000_EEPROM_RW_ADDR_SHIFT,
    E1000_EEPROM_RW_REG_DATA,
    E1000_EEPROM_RW_REG_DONE,
    E1000_EEPROM_RW_REG_START,
    EEPROM_CHECKSUM_REG,
    EEPROM_READ_OPCODE_MICROWIRE,
    EEPROM_SUM,
    EEPROM_TEMPLATE,
    EEPROM_WORDS,
)

#: EECD bits the device remembers from the last write (and reads back).
_EECD_KEPT = E1000_EECD_SK | E1000_EECD_CS | E1000_EECD_DI | E1000_EECD_FWE_MASK | E1000_EECD_REQ


def eeprom_image(mac: bytes, device_id: int,
                 template: Sequence[int] = EEPROM_TEMPLATE) -> list[int]:
    """The EEPROM words: template, MAC in words 0-2 (little-endian pairs), the
    device ID in words 11 and 13, and word 0x3F so that the sum is 0xBABA."""
    if len(mac) != 6:
        raise ValueError("a MAC address has 6 bytes")
    words = [w & 0xFFFF for w in template][:EEPROM_WORDS]
    words += [0] * (EEPROM_WORDS - len(words))
    for i in range(3):
        words[i] = mac[2 * i] | (mac[2 * i + 1] << 8)
    words[11] = words[13] = device_id & 0xFFFF
    words[EEPROM_CHECKSUM_REG] = (EEPROM_SUM - sum(words[:EEPROM_CHECKSUM_REG])) & 0xFFFF
    return words


def eeprom_checksum_ok(words: Sequence[int]) -> bool:
    """What a driver checks: the 16-bit sum of all 64 words is 0xBABA."""
    return sum(words[:EEPROM_WORDS]) & 0xFFFF == EEPROM_SUM


class MicrowireEeprom:
    """EEPROM contents plus the EECD bit-bang state (QEMU's eecd_state).

    Like QEMU, a device reset does not reset this state; the counters keep
    QEMU's widths (16-bit bit counters, 32-bit shift register).
    """

    def __init__(self, words: Sequence[int]) -> None:
        self.data = [w & 0xFFFF for w in words][:EEPROM_WORDS]
        self.data += [0] * (EEPROM_WORDS - len(self.data))
        self.val_in = 0
        self.bitnum_in = 0
        self.bitnum_out = 0
        self.reading = False
        self.old_eecd = 0

    # -- EECD ------------------------------------------------------------------
    def read_eecd(self) -> int:
        """get_eecd: PRES|GNT, the remembered bits, and DO."""
        ret = E1000_EECD_PRES | E1000_EECD_GNT | self.old_eecd
        if not self.reading:
            return ret | E1000_EECD_DO
        word = self.data[(self.bitnum_out >> 4) & 0x3F]
        if (word >> ((self.bitnum_out & 0xF) ^ 0xF)) & 1:
            ret |= E1000_EECD_DO
        return ret

    def write_eecd(self, val: int) -> None:
        """set_eecd: chip select, clock edges and data in."""
        oldval = self.old_eecd
        self.old_eecd = val & _EECD_KEPT
        if not val & E1000_EECD_CS:  # CS inactive: nothing to do
            return
        if (val ^ oldval) & E1000_EECD_CS:  # CS rising edge: reset the state
            self.val_in = 0
            self.bitnum_in = 0
            self.bitnum_out = 0
            self.reading = False
        if not (val ^ oldval) & E1000_EECD_SK:  # no clock edge
            return
        if not val & E1000_EECD_SK:  # falling edge: next output bit
            self.bitnum_out = (self.bitnum_out + 1) & 0xFFFF
            return
        self.val_in = ((self.val_in << 1) | (1 if val & E1000_EECD_DI else 0)) & 0xFFFFFFFF
        self.bitnum_in = (self.bitnum_in + 1) & 0xFFFF
        if self.bitnum_in == 9 and not self.reading:
            self.bitnum_out = (((self.val_in & 0x3F) << 4) - 1) & 0xFFFF
            self.reading = ((self.val_in >> 6) & 7) == EEPROM_READ_OPCODE_MICROWIRE

    # -- EERD --------------------------------------------------------------------
    def read_eerd(self, eerd: int) -> int:
        """flash_eerd_read: the value EERD reads as, given what was written."""
        if not eerd & E1000_EEPROM_RW_REG_START:
            return eerd
        r = eerd & ~E1000_EEPROM_RW_REG_START & 0xFFFFFFFF
        index = r >> E1000_EEPROM_RW_ADDR_SHIFT
        if index > EEPROM_CHECKSUM_REG:
            return E1000_EEPROM_RW_REG_DONE | r
        return ((self.data[index] << E1000_EEPROM_RW_REG_DATA)
                | E1000_EEPROM_RW_REG_DONE | r) & 0xFFFFFFFF
