"""Shared rig for the e1000 tests: NIC + RamDma + ManualScheduler + a peer double,
and a mini driver that brings the NIC up as Linux's e1000 driver does
(docs/guest.md#bring-up), and TX descriptor builders. Imported by the
test_e1000_* modules.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from virtwire.hw.dma import RamDma
from virtwire.hw.e1000 import E1000, ModelName
from virtwire.hw.e1000_regs import (
    E1000_ICR,
    E1000_IMC,
    E1000_IMS,
    E1000_MDIC,
    E1000_MDIC_OP_READ,
    E1000_MDIC_OP_WRITE,
    E1000_MDIC_READY,
    E1000_RCTL,
    E1000_RCTL_BAM,
    E1000_RCTL_EN,
    E1000_RCTL_SZ_2048,
    E1000_RDBAH,
    E1000_RDBAL,
    E1000_RDH,
    E1000_RDLEN,
    E1000_RDT,
    E1000_TCTL,
    E1000_TCTL_EN,
    E1000_TCTL_PSP,
    E1000_TDBAH,
    E1000_TDBAL,
    E1000_TDH,
    E1000_TDLEN,
    E1000_TDT,
    E1000_TXD_CMD_DEXT,
    E1000_TXD_CMD_EOP,
    E1000_TXD_CMD_IFCS,
    E1000_TXD_CMD_RS,
    E1000_TXD_DTYP_D,
    IMS_ENABLE_MASK,
    RX_DESC,
    TX_CTX_DESC,
    TX_DESC,
)
from virtwire.hw.timer import NS_PER_MS, NS_PER_S, ManualScheduler
from virtwire.net.net import NetClient

MAC = bytes.fromhex("525400123456")
PEER_MAC = bytes.fromhex("5254000abcde")
BCAST = b"\xff" * 6

RAM_SIZE = 1 << 20
RX_RING = 0x1000
TX_RING = 0x2000
RX_BUFS = 0x10000
TX_BUFS = 0x80000
BUF_STRIDE = 0x4000

TCTL_CT = 0x0F << 4
TCTL_COLD = 0x40 << 12
#: The command bits of a packet's last descriptor: end of packet, insert FCS, report status.
EOP_RS = E1000_TXD_CMD_EOP | E1000_TXD_CMD_IFCS | E1000_TXD_CMD_RS


class Peer(NetClient):
    """The NIC's peer: records every frame the NIC sends; ``ready`` is can_receive."""

    def __init__(self, name: str = "peer") -> None:
        super().__init__(name)
        self.frames: list[bytes] = []
        self.ready = True
        self.on_receive: Callable[[bytes], None] | None = None

    def receive(self, data: bytes) -> int:
        self.frames.append(bytes(data))
        if self.on_receive is not None:
            self.on_receive(data)
        return len(data)

    def can_receive(self) -> bool:
        return self.ready


def eth_frame(dst: bytes = MAC, src: bytes = PEER_MAC, ethertype: int = 0x88B5,
              size: int = 64, fill: int = 0) -> bytes:
    """A frame of ``size`` bytes (no FCS) with a counting payload."""
    hdr = dst + src + ethertype.to_bytes(2, "big")
    body = bytes((fill + i) & 0xFF for i in range(max(0, size - len(hdr))))
    return (hdr + body)[:size]


def vlan_frame(tci: int, dst: bytes = MAC, size: int = 68, tpid: int = 0x8100) -> bytes:
    inner = eth_frame(dst=dst, size=size - 4)
    return inner[:12] + struct.pack(">HH", tpid, tci) + inner[12:]


class Rig:
    """One e1000 wired to a Peer, on RamDma and a ManualScheduler."""

    def __init__(self, model: ModelName = "82540EM", ram: int = RAM_SIZE,
                 dma_error_policy: str = "stop", rx_flush_timer: bool = True,
                 mac: bytes = MAC, compat: str = "9.0") -> None:
        self.sched = ManualScheduler()
        self.dma = RamDma(ram)
        self.irqs: list[bool] = []
        self.nic = E1000("e1000", mac, self.dma, model=model, set_irq=self.irqs.append,
                         scheduler=self.sched,
                         dma_error_policy=dma_error_policy,  # type: ignore[arg-type]
                         rx_flush_timer=rx_flush_timer,
                         compat=compat)  # type: ignore[arg-type]
        self.peer = Peer()
        self.nic.peer = self.peer
        self.peer.peer = self.nic

    # registers
    def r(self, off: int) -> int:
        return self.nic.mmio_read(off)

    def w(self, off: int, val: int) -> None:
        self.nic.mmio_write(off, val)

    def advance_ms(self, ms: float) -> None:
        self.sched.advance(int(ms * NS_PER_MS))

    def advance_s(self, s: float) -> None:
        self.sched.advance(int(s * NS_PER_S))

    # PHY
    def phy_read(self, reg: int) -> int:
        self.w(E1000_MDIC, E1000_MDIC_OP_READ | (1 << 21) | (reg << 16))
        val = self.r(E1000_MDIC)
        assert val & E1000_MDIC_READY
        return val

    def phy_write(self, reg: int, data: int) -> int:
        self.w(E1000_MDIC, E1000_MDIC_OP_WRITE | (1 << 21) | (reg << 16) | data)
        return self.r(E1000_MDIC)

    # memory
    def mem(self, addr: int, size: int) -> bytes:
        return bytes(self.dma.ram[addr:addr + size])

    def poke(self, addr: int, data: bytes) -> None:
        self.dma.ram[addr:addr + len(data)] = data

    # frames from the peer
    def inject(self, frame: bytes) -> int:
        """The peer sends ``frame`` (qemu_send_packet): delivered or queued."""
        return self.peer.send_packet(frame)


class Driver:
    """Just enough of Linux's e1000 driver: rings, buffers, send, receive."""

    def __init__(self, rig: Rig, n_rx: int = 8, n_tx: int = 8, rx_ring: int = RX_RING,
                 tx_ring: int = TX_RING, rctl: int = E1000_RCTL_EN | E1000_RCTL_BAM
                 | E1000_RCTL_SZ_2048, bufsize: int = BUF_STRIDE) -> None:
        self.rig = rig
        self.n_rx = n_rx
        self.n_tx = n_tx
        self.rx_ring = rx_ring
        self.tx_ring = tx_ring
        self.rctl = rctl
        self.bufsize = bufsize
        self.rx_next = 0
        self.tx_tail = 0
        self.tx_buf_next = 0

    def rx_buf(self, i: int) -> int:
        return RX_BUFS + i * self.bufsize

    def bring_up(self, wait_flush: bool = True) -> None:
        rig = self.rig
        rig.nic.set_bus_master(True)                      # 1. PCI COMMAND
        rig.w(E1000_IMC, 0xFFFFFFFF)                      # 2.
        rig.r(E1000_ICR)
        rig.w(E1000_RDBAL, self.rx_ring & 0xFFFFFFFF)     # 4.
        rig.w(E1000_RDBAH, self.rx_ring >> 32)
        rig.w(E1000_RDLEN, self.n_rx * 16)
        rig.w(E1000_RDH, 0)
        rig.w(E1000_RDT, 0)
        for i in range(self.n_rx):
            self.write_rx_desc(i, self.rx_buf(i))
        rig.w(E1000_RCTL, self.rctl)                      # 5.
        rig.w(E1000_RDT, self.n_rx - 1)                   # 6.
        rig.w(E1000_TDBAL, self.tx_ring & 0xFFFFFFFF)     # 7.
        rig.w(E1000_TDBAH, self.tx_ring >> 32)
        rig.w(E1000_TDLEN, self.n_tx * 16)
        rig.w(E1000_TDH, 0)
        rig.w(E1000_TDT, 0)
        rig.w(E1000_TCTL, E1000_TCTL_EN | E1000_TCTL_PSP | TCTL_CT | TCTL_COLD)
        rig.w(E1000_IMS, IMS_ENABLE_MASK)                 # 8.
        if wait_flush:
            rig.advance_s(1)

    def write_rx_desc(self, i: int, addr: int, status: int = 0) -> None:
        self.rig.poke(self.rx_ring + 16 * i, RX_DESC.pack(addr, 0, 0, status, 0, 0))

    def rx_desc(self, i: int) -> tuple[int, int, int, int, int, int]:
        raw = self.rig.mem(self.rx_ring + 16 * i, 16)
        addr, length, csum, status, errors, special = RX_DESC.unpack(raw)
        return addr, length, csum, status, errors, special

    def tx_desc_raw(self, i: int) -> bytes:
        return self.rig.mem(self.tx_ring + 16 * i, 16)

    # TX
    def put_tx(self, desc: bytes) -> int:
        """Write a raw descriptor at the tail (does not bump TDT); its index."""
        i = self.tx_tail
        self.rig.poke(self.tx_ring + 16 * i, desc)
        self.tx_tail = (i + 1) % self.n_tx
        return i

    def tx_buffer(self, data: bytes) -> int:
        addr = TX_BUFS + self.tx_buf_next
        self.tx_buf_next = (self.tx_buf_next + len(data) + 0xFF) & ~0xFF
        if self.tx_buf_next > 0x70000:
            self.tx_buf_next = 0
        self.rig.poke(addr, data)
        return addr

    def legacy(self, data: bytes, cmd: int = E1000_TXD_CMD_EOP | E1000_TXD_CMD_IFCS
               | E1000_TXD_CMD_RS, cso: int = 0, css: int = 0, special: int = 0) -> bytes:
        addr = self.tx_buffer(data)
        lower = (len(data) & 0xFFFF) | (cso << 16) | cmd
        upper = (css << 8) | (special << 16)
        return TX_DESC.pack(addr, lower, upper)

    def kick(self) -> None:
        self.rig.w(E1000_TDT, self.tx_tail)

    def send(self, data: bytes, **kw: int) -> int:
        i = self.put_tx(self.legacy(data, **kw))
        self.kick()
        return i

    # RX
    def receive_all(self, fcs: bool = True) -> list[bytes]:
        """Collect completed frames (DD), hand buffers back (RDT = index).

        With ``fcs`` the 4 FCS bytes the lengths include are cut off (the NIC
        does not write them)."""
        frames = []
        cur = b""
        while True:
            addr, length, _csum, status, _err, _sp = self.rx_desc(self.rx_next)
            if not status & 1:
                break
            cur += self.rig.mem(addr, length) if addr else b""
            if status & 2:
                frames.append(cur[:-4] if fcs else cur)
                cur = b""
            self.write_rx_desc(self.rx_next, addr)
            self.rig.w(E1000_RDT, self.rx_next)
            self.rx_next = (self.rx_next + 1) % self.n_rx
        return frames


def brought_up(rig: Rig, **driver: Any) -> tuple[Rig, Driver]:
    """``rig`` brought up by the mini driver (``driver``: its arguments), ICR cleared."""
    drv = Driver(rig, **driver)
    drv.bring_up()
    rig.r(E1000_ICR)
    return rig, drv


# -- TX descriptors -------------------------------------------------------------
def payload(n: int) -> bytes:
    """``n`` bytes of a fixed pattern."""
    return bytes((i * 7 + 3) & 0xFF for i in range(n))


def context(ipcss: int, ipcso: int, ipcse: int, tucss: int, tucso: int, tucse: int,
            cmd: int, paylen: int = 0, hdr_len: int = 0, mss: int = 0) -> bytes:
    """A context descriptor (offsets, TUCMD in ``cmd``, TSO's paylen/hdr_len/mss)."""
    return TX_CTX_DESC.pack(ipcss, ipcso, ipcse, tucss, tucso, tucse,
                            E1000_TXD_CMD_DEXT | cmd | (paylen & 0xFFFFF), 0, hdr_len, mss)


def data_desc(drv: Driver, buf: bytes, cmd: int, popts: int = 0, special: int = 0) -> bytes:
    """A data descriptor for ``buf``, written to one of the driver's TX buffers."""
    addr = drv.tx_buffer(buf)
    lower = E1000_TXD_CMD_DEXT | E1000_TXD_DTYP_D | cmd | len(buf)
    return TX_DESC.pack(addr, lower, (popts << 8) | (special << 16))


def send_chain(drv: Driver, descs: list[bytes]) -> None:
    """Put ``descs`` on the TX ring and write TDT once."""
    for d in descs:
        drv.put_tx(d)
    drv.kick()
