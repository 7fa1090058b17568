"""The guest's e1000 driver: bring-up, rings and interrupts as Linux's e1000 does them.

``E1000Driver`` runs "inside the guest": it reaches the NIC's BAR0 through a
``MmioPort`` (posted writes, awaited reads, an interrupt line) and owns its
descriptor rings and packet buffers in guest memory, which it reads and
writes directly through the ``DmaMemory`` interface (``GuestMemClient`` on the
shared-memory path, ``GuestMemory`` or ``RamDma`` in-process).

Bring-up (``up``) follows docs/guest.md#bring-up: PCI
COMMAND (memory + bus master); IMC = all, read ICR; the MAC from the EEPROM
through EERD (checksum checked, as Linux does); RA0 and the MTA; the RX ring
(RDBAL/RDBAH/RDLEN, RDH = RDT = 0), RCTL = EN|BAM|SZ_2048 (no SECRC: like
Linux, the driver drops the 4 FCS bytes the NIC counts in the length), RDT =
N-1; the TX ring (TDBAL/TDBAH/TDLEN, TDH = TDT = 0), TCTL = EN|PSP|CT|COLD; IMS
= 0x9C (Linux's 0x9D without TXDW: see ``DRIVER_IMS``). Then every interrupt
(handled inline on the same-host MMIO socket, else by an interrupt task) reads
ICR, reclaims TX descriptors (DD), takes received frames off the RX ring,
re-arms their buffers and writes RDT once per batch, and follows link changes
(LSC).

Transmit writes descriptors and buffers into guest memory and then one TDT
write per batch (a posted write: never one MMIO round trip per frame).
Packets may ask for checksum offload and TCP segmentation (TSO) the way a
virtio_net_hdr does; the driver turns that into an e1000 context descriptor
plus data descriptors with TSE / IXSM / TXSM, exactly as Linux's e1000_tso and
e1000_tx_csum prepare them (IPv4 TSO in the NIC; TCP over IPv6, which the
8254x cannot segment, is segmented here).

Every wait on the NIC is bounded: a NIC that stops answering makes reads time
out (``DriverError``, counted in ``mmio_timeouts``), and a TX ring that stays
full makes ``send`` drop what does not fit (counted), never hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from opentelemetry.trace import SpanContext

from virtwire.errors import BackendError, ConfigError
from virtwire.guest.mmio import InlineIrqPort, MmioPort
from virtwire.hw.dma import DmaError, DmaMemory
from virtwire.hw.e1000_regs import (
    DESC_SIZE,
    E1000_EEPROM_RW_ADDR_SHIFT,
    E1000_EEPROM_RW_REG_DATA,
    E1000_EEPROM_RW_REG_DONE,
    E1000_EEPROM_RW_REG_START,
    E1000_EERD,
    E1000_ICR,
    E1000_ICR_LSC,
    E1000_ICR_RXO,
    E1000_ICR_TXDW,
    E1000_IMC,
    E1000_IMS,
    E1000_MC_TBL_SIZE,
    E1000_MTA,
    E1000_RA,
    E1000_RAH_AV,
    E1000_RAR_ENTRIES,
    E1000_RCTL,
    E1000_RCTL_BAM,
    E1000_RCTL_BSEX,
    E1000_RCTL_EN,
    E1000_RCTL_LPE,
    E1000_RCTL_MPE,
    E1000_RCTL_SECRC,
    E1000_RCTL_SZ_256,
    E1000_RCTL_SZ_512,
    E1000_RCTL_SZ_1024,
    E1000_RCTL_SZ_2048,
    E1000_RCTL_SZ_4096,
    E1000_RCTL_SZ_8192,
    E1000_RCTL_SZ_16384,
    E1000_RDBAH,
    E1000_RDBAL,
    E1000_RDH,
    E1000_RDLEN,
    E1000_RDT,
    E1000_RXD_STAT_DD,
    E1000_RXD_STAT_EOP,
    E1000_STATUS,
    E1000_STATUS_LU,
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
    E1000_TXD_CMD_IP,
    E1000_TXD_CMD_RS,
    E1000_TXD_CMD_TCP,
    E1000_TXD_CMD_TSE,
    E1000_TXD_DTYP_D,
    E1000_TXD_POPTS_IXSM,
    E1000_TXD_POPTS_TXSM,
    E1000_TXD_STAT_DD,
    EEPROM_SUM,
    EEPROM_WORDS,
    ETH_FCS_LEN,
    IMS_ENABLE_MASK,
    RX_DESC,
    RX_DESC_STATUS_OFFSET,
    TX_CTX_DESC,
    TX_DESC,
    TX_DESC_UPPER_OFFSET,
)
from virtwire.net.eth import format_mac
from virtwire.tracing import add_span, now_ns

logger = logging.getLogger(__name__)

MASK16 = 0xFFFF
MASK32 = 0xFFFFFFFF
PAGE = 4096

#: Where the driver puts its rings and buffers in guest memory by default (1 MiB).
DEFAULT_MEM_BASE = 0x100000
DEFAULT_RING = 256
DEFAULT_BUF_SIZE = 2048
MIN_RING = 8
MAX_RING = 4096
#: Linux's E1000_COLLISION_THRESHOLD (15) and full-duplex E1000_COLLISION_DISTANCE (63).
TCTL_CT = 15 << 4
TCTL_COLD = 63 << 12
#: RX descriptor errors that make Linux drop a frame (E1000_RXD_ERR_FRAME_ERR_MASK:
#: CE | SE | SEQ | CXE | RXE).
RXD_ERR_FRAME_ERR_MASK = 0x01 | 0x02 | 0x04 | 0x10 | 0x80
#: Longest frame (without FCS) the driver sends or reassembles.
MAX_FRAME = 16384
#: Longest packet (a TSO super-frame) the driver accepts: the e1000's 64 KiB TX buffer.
MAX_TSO_FRAME = 65535
#: Linux pads shorter frames to this before handing them to the NIC (TCTL.PSP does the rest).
MIN_TX_FRAME = 17
#: Descriptors read per DMA access while scanning the RX ring.
RX_SCAN_CHUNK = 64
#: The causes the driver unmasks: Linux's RXT0 | RXDMT0 | RXSEQ | LSC, without
#: TXDW (0x9C). TX descriptors are reclaimed as frames are sent, on every
#: interrupt, poll and watchdog run, and for status; TXDW is unmasked only while
#: ``wait_tx_space`` waits (docs/guest.md#interrupts). So a frame sent costs no
#: interrupt and ICR round trip competing with its own way through the LAN.
DRIVER_IMS = IMS_ENABLE_MASK & ~E1000_ICR_TXDW

# virtio_net_hdr gso_type values (a TxPacket's ``gso_type``).
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_TCPV6 = 4

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
IPPROTO_TCP = 6

_BUF_SIZE_RCTL: dict[int, int] = {
    256: E1000_RCTL_SZ_256,
    512: E1000_RCTL_SZ_512,
    1024: E1000_RCTL_SZ_1024,
    2048: E1000_RCTL_SZ_2048,
    4096: E1000_RCTL_BSEX | E1000_RCTL_SZ_4096,
    8192: E1000_RCTL_BSEX | E1000_RCTL_SZ_8192,
    16384: E1000_RCTL_BSEX | E1000_RCTL_SZ_16384,
}

DriverState = Literal["down", "up", "failed"]
RxHandler = Callable[[list[bytes]], None]


class DriverError(BackendError):
    """The NIC did not answer, failed, or the driver is not up."""


# -- checksums ------------------------------------------------------------------------
def ones_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The 16-bit one's-complement sum of big-endian words (odd last byte padded),
    plus ``initial``, folded. Not complemented."""
    n = len(data)
    total = int.from_bytes(data[: n & ~1], "big") if n > 1 else 0
    if n & 1:
        total = (total << 16) | (data[n - 1] << 8)
    total += initial
    if total == 0:
        return 0
    # 2**16 == 1 (mod 0xFFFF): the big integer is congruent to the sum of its words.
    return total % MASK16 or MASK16


def inet_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The Internet checksum (RFC 1071) of ``data``: the complemented one's sum."""
    return ~ones_sum(data, initial) & MASK16


def pseudo_header_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """The folded (uncomplemented) sum of an IPv4 or IPv6 pseudo-header."""
    return ones_sum(src + dst, proto + (length & MASK16) + (length >> 16))


# -- packets ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TxPacket:
    """A frame to send, with optional offloads described as a virtio_net_hdr does.

    ``csum_start >= 0``: checksum the frame from ``csum_start`` to its end and
    store it at ``csum_start + csum_offset`` (the field holds the pseudo-header
    sum, as the kernel leaves it). ``gso_type`` GSO_TCPV4 / GSO_TCPV6 with
    ``gso_size`` (the MSS): a TCP super-frame to cut into segments.
    """

    frame: bytes
    csum_start: int = -1
    csum_offset: int = 0
    gso_type: int = GSO_NONE
    gso_size: int = 0


@dataclass(slots=True)
class _Prepared:
    """A packet turned into descriptors: an optional context, then data chunks."""

    frame: bytes
    context: bytes | None = None
    #: True: the context is a TSO context (its own slot every packet); False: a
    #: checksum context (cached: skipped when equal to the last one).
    tso: bool = False
    popts: int = 0
    extended: bool = False


@dataclass
class DriverCounters:
    """What the driver did (GetStatus, logs)."""

    tx_queued: int = 0
    tx_frames: int = 0
    tx_bytes: int = 0
    tx_dropped: int = 0
    tx_invalid: int = 0
    tx_ring_full: int = 0
    tx_tso: int = 0
    tx_csum_offload: int = 0
    tx_soft_segmented: int = 0
    tdt_writes: int = 0
    rx_frames: int = 0
    rx_bytes: int = 0
    rx_dropped: int = 0
    rx_errors: int = 0
    rx_overruns: int = 0
    rx_batches: int = 0
    rdt_writes: int = 0
    interrupts: int = 0
    polls: int = 0
    spurious_interrupts: int = 0
    lsc_events: int = 0
    watchdog_runs: int = 0
    mmio_timeouts: int = 0
    dma_errors: int = 0
    handler_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _page_align(n: int) -> int:
    return (n + PAGE - 1) & ~(PAGE - 1)


@dataclass(frozen=True)
class DriverLayout:
    """Where rings and buffers live in guest memory (page-aligned regions, in
    this order: RX descriptors, TX descriptors, RX buffers, TX buffers)."""

    base: int
    rx_ring: int
    tx_ring: int
    buf_size: int
    rx_desc: int
    tx_desc: int
    rx_bufs: int
    tx_bufs: int
    end: int

    @classmethod
    def plan(cls, base: int, rx_ring: int, tx_ring: int, buf_size: int) -> DriverLayout:
        tx_desc = base + _page_align(rx_ring * DESC_SIZE)
        rx_bufs = tx_desc + _page_align(tx_ring * DESC_SIZE)
        tx_bufs = rx_bufs + _page_align(rx_ring * buf_size)
        end = tx_bufs + _page_align(tx_ring * buf_size)
        return cls(base, rx_ring, tx_ring, buf_size, base, tx_desc, rx_bufs, tx_bufs, end)


def _check_ring(name: str, n: int) -> None:
    if not MIN_RING <= n <= MAX_RING or n % 8:
        raise ConfigError(f"{name} = {n}: a ring holds {MIN_RING} to {MAX_RING} descriptors, "
                          "a multiple of 8 (RDLEN/TDLEN are multiples of 128 bytes)")


# -- frame surgery for offloads -----------------------------------------------------------
def _l3_offset(frame: bytes | bytearray) -> tuple[int, int]:
    """(network header offset, EtherType), looking past one VLAN tag."""
    if len(frame) < 14:
        raise ValueError("runt frame")
    etype = (frame[12] << 8) | frame[13]
    if etype == ETH_P_8021Q:
        if len(frame) < 18:
            raise ValueError("runt VLAN frame")
        return 18, (frame[16] << 8) | frame[17]
    return 14, etype


def _tcp_layout(pkt: TxPacket) -> tuple[int, int, int, bool]:
    """(l3, l4, TCP header length, is IPv4) of a GSO packet; ValueError if malformed."""
    frame = pkt.frame
    l3, etype = _l3_offset(frame)
    if pkt.gso_type == GSO_TCPV4:
        if etype != ETH_P_IP or len(frame) < l3 + 20 or frame[l3] >> 4 != 4:
            raise ValueError("TSO for IPv4 on a frame that is not IPv4")
        ihl = (frame[l3] & 0xF) * 4
        if ihl < 20 or frame[l3 + 9] != IPPROTO_TCP:
            raise ValueError("TSO for IPv4 on a packet that is not TCP")
        l4 = l3 + ihl
        v4 = True
    elif pkt.gso_type == GSO_TCPV6:
        if etype != ETH_P_IPV6 or len(frame) < l3 + 40 or frame[l3] >> 4 != 6:
            raise ValueError("TSO for IPv6 on a frame that is not IPv6")
        # Extension headers: trust csum_start (the kernel's transport offset).
        l4 = pkt.csum_start if pkt.csum_start >= l3 + 40 else l3 + 40
        if l4 == l3 + 40 and frame[l3 + 6] != IPPROTO_TCP:
            raise ValueError("TSO for IPv6 on a packet that is not TCP")
        v4 = False
    else:
        raise ValueError(f"unsupported gso_type {pkt.gso_type}")
    if len(frame) < l4 + 20:
        raise ValueError("truncated TCP header")
    thl = (frame[l4 + 12] >> 4) * 4
    if thl < 20 or len(frame) < l4 + thl:
        raise ValueError("bad TCP header length")
    if not 0 < pkt.gso_size <= MASK16:
        raise ValueError(f"bad gso_size {pkt.gso_size}")
    return l3, l4, thl, v4


def _prepare_tso4(pkt: TxPacket, l3: int, l4: int, thl: int) -> _Prepared:
    """Linux's e1000_tso for IPv4: zero tot_len and the IP checksum, seed the TCP
    checksum with the pseudo-header sum without the length; one TSO context."""
    f = bytearray(pkt.frame)
    hdr_len = l4 + thl
    f[l3 + 2:l3 + 4] = b"\0\0"
    f[l3 + 10:l3 + 12] = b"\0\0"
    phsum = pseudo_header_sum(bytes(f[l3 + 12:l3 + 16]), bytes(f[l3 + 16:l3 + 20]),
                              IPPROTO_TCP, 0)
    f[l4 + 16:l4 + 18] = phsum.to_bytes(2, "big")
    paylen = len(f) - hdr_len
    ctx = TX_CTX_DESC.pack(
        l3, l3 + 10, l4 - 1, l4, l4 + 16, 0,
        E1000_TXD_CMD_DEXT | E1000_TXD_CMD_TSE | E1000_TXD_CMD_IP | E1000_TXD_CMD_TCP
        | (paylen & 0xFFFFF), 0, hdr_len, pkt.gso_size)
    return _Prepared(bytes(f), ctx, tso=True, popts=E1000_TXD_POPTS_IXSM | E1000_TXD_POPTS_TXSM,
                     extended=True)


def software_segment(pkt: TxPacket) -> list[bytes]:
    """Cut a TCP super-frame into MSS-sized frames with their checksums done here
    (TCP over IPv6, or headers too long for a context descriptor)."""
    l3, l4, thl, v4 = _tcp_layout(pkt)
    frame = pkt.frame
    hdr = frame[:l4 + thl]
    payload = memoryview(frame)[l4 + thl:]
    mss = pkt.gso_size
    seq0 = int.from_bytes(frame[l4 + 4:l4 + 8], "big")
    ip_id = int.from_bytes(frame[l3 + 4:l3 + 6], "big") if v4 else 0
    out: list[bytes] = []
    total = len(payload)
    offsets = range(0, total, mss) if total else range(1)
    for k, off in enumerate(offsets):
        seg = payload[off:off + mss]
        last = off + mss >= total
        h = bytearray(hdr)
        h[l4 + 4:l4 + 8] = ((seq0 + off) & MASK32).to_bytes(4, "big")
        if not last:
            h[l4 + 13] &= ~0x09 & 0xFF  # FIN and PSH only on the last segment
        if k:
            h[l4 + 13] &= ~0x80 & 0xFF  # CWR only on the first
        tcp_len = len(h) - l4 + len(seg)
        if v4:
            h[l3 + 2:l3 + 4] = (len(h) - l3 + len(seg)).to_bytes(2, "big")
            h[l3 + 4:l3 + 6] = ((ip_id + k) & MASK16).to_bytes(2, "big")
            h[l3 + 10:l3 + 12] = b"\0\0"
            h[l3 + 10:l3 + 12] = inet_checksum(h[l3:l4]).to_bytes(2, "big")
            src, dst = bytes(h[l3 + 12:l3 + 16]), bytes(h[l3 + 16:l3 + 20])
        else:
            h[l3 + 4:l3 + 6] = (len(h) - l3 - 40 + len(seg)).to_bytes(2, "big")
            src, dst = bytes(h[l3 + 8:l3 + 24]), bytes(h[l3 + 24:l3 + 40])
        h[l4 + 16:l4 + 18] = b"\0\0"
        csum = inet_checksum(seg, ones_sum(h[l4:], pseudo_header_sum(src, dst, IPPROTO_TCP,
                                                                     tcp_len)))
        h[l4 + 16:l4 + 18] = csum.to_bytes(2, "big")
        out.append(bytes(h) + bytes(seg))
    return out


def software_checksum(pkt: TxPacket) -> bytes:
    """Do a packet's checksum offload here: sum from csum_start (the field holds
    the pseudo-header sum) and store it, 0 written as 0xFFFF."""
    start, field = pkt.csum_start, pkt.csum_start + pkt.csum_offset
    if start < 0 or field + 2 > len(pkt.frame) or start > field:
        raise ValueError("checksum offsets outside the frame")
    f = bytearray(pkt.frame)
    csum = inet_checksum(memoryview(f)[start:]) or MASK16
    f[field:field + 2] = csum.to_bytes(2, "big")
    return bytes(f)


# -- the driver ------------------------------------------------------------------------------
class E1000Driver:
    """Linux's e1000 driver, reduced to what a virtwire guest needs."""

    def __init__(self, mmio: MmioPort, mem: DmaMemory, *,
                 mem_base: int = DEFAULT_MEM_BASE, rx_ring: int = DEFAULT_RING,
                 tx_ring: int = DEFAULT_RING, buf_size: int = DEFAULT_BUF_SIZE,
                 mac: bytes | None = None, multicast_promiscuous: bool = False,
                 mmio_timeout: float = 2.0, tx_timeout: float = 0.5,
                 watchdog_interval: float = 2.0, poll_interval: float = 0.0005,
                 name: str = "e1000") -> None:
        self.check_config(rx_ring=rx_ring, tx_ring=tx_ring, buf_size=buf_size,
                          mem_base=mem_base)
        if mac is not None and (len(mac) != 6 or mac[0] & 1):
            raise ConfigError("mac must be a 6-byte unicast address")
        self.layout = DriverLayout.plan(mem_base, rx_ring, tx_ring, buf_size)
        size = getattr(mem, "size", None)
        if size is None and hasattr(mem, "ram"):
            size = len(mem.ram)
        if isinstance(size, int) and self.layout.end > size:
            raise ConfigError(f"the driver needs guest memory up to {self.layout.end:#x} "
                              f"(rings and buffers at {mem_base:#x}), but it has {size:#x}")
        self.mmio = mmio
        self.mem = mem
        self.name = name
        self.rx_count = rx_ring
        self.tx_count = tx_ring
        self.buf_size = buf_size
        self.mac_override = mac
        self.multicast_promiscuous = multicast_promiscuous
        self.mmio_timeout = mmio_timeout
        self.tx_timeout = tx_timeout
        self.watchdog_interval = watchdog_interval
        #: After an interrupt, poll the rings this often while frames keep arriving.
        self.poll_interval = poll_interval
        #: The MAC address (from the EEPROM unless overridden), once up.
        self.mac = b""
        self.eeprom: list[int] = []
        self.state: DriverState = "down"
        self.error: BaseException | None = None
        #: STATUS.LU as last read.
        self.link_up = False
        self.counters = DriverCounters()
        self.rx_handlers: list[RxHandler] = []
        self.link_handlers: list[Callable[[bool], None]] = []
        # Ring state.
        self._rx_ntc = 0
        self._rx_partial: bytearray | None = None
        self._rx_partial_bad = False
        #: Tracing: the first descriptor of the frame being cleaned, and the
        #: traced frames of this batch (irq context, seen ns, descriptor, index).
        self._rx_first = 0
        self._rx_traced: list[tuple[SpanContext, int, int, int]] = []
        mmio.irq.on_trace = self._late_trace
        self._tx_ntu = 0
        self._tx_ntc = 0
        #: For the first slot of each in-flight packet: its last slot; else -1.
        self._tx_eop = [-1] * tx_ring
        self._tx_bytes = [0] * tx_ring
        self._tx_ctx_cache: bytes | None = None
        self._tx_space = asyncio.Event()
        self._irq_task: asyncio.Task[None] | None = None
        #: Interrupts handled inline, in the port's read callback (an InlineIrqPort).
        self._inline: InlineIrqPort | None = None
        #: Inline: the ICR read of the interrupt being handled, and when it left.
        self._icr_read: asyncio.Future[int] | None = None
        self._icr_sent = 0.0
        #: Inline: the interrupt task has work (LSC, NAPI polling).
        self._wake = asyncio.Event()
        self._lsc_pending = False
        self._polling = False
        #: ``wait_tx_space`` calls waiting: TXDW is unmasked while there are any.
        self._tx_waiters = 0
        self._last_rx = 0
        self._rx_blank = b"".join(
            RX_DESC.pack(self.layout.rx_bufs + i * buf_size, 0, 0, 0, 0, 0)
            for i in range(rx_ring))
        self._fcs = 0 if self._rctl() & E1000_RCTL_SECRC else ETH_FCS_LEN

    @staticmethod
    def check_config(*, rx_ring: int, tx_ring: int, buf_size: int, mem_base: int) -> None:
        """ConfigError unless the ring sizes, buffer size and base are usable."""
        _check_ring("rx_ring", rx_ring)
        _check_ring("tx_ring", tx_ring)
        if buf_size not in _BUF_SIZE_RCTL:
            raise ConfigError(f"buf_size {buf_size}: use one of {sorted(_BUF_SIZE_RCTL)}")
        if mem_base < 0 or mem_base % PAGE:
            raise ConfigError(f"mem_base {mem_base:#x} must be page-aligned (4 KiB)")

    # -- register helpers ---------------------------------------------------------------
    def _rctl(self) -> int:
        rctl = E1000_RCTL_EN | E1000_RCTL_BAM | _BUF_SIZE_RCTL[self.buf_size]
        if self.buf_size > 2048:
            rctl |= E1000_RCTL_LPE  # Linux turns on long packets for jumbo buffers
        if self.multicast_promiscuous:
            rctl |= E1000_RCTL_MPE
        return rctl

    def _write(self, offset: int, value: int) -> None:
        try:
            self.mmio.write(offset, value & MASK32)
        except BackendError as exc:
            self._fail(exc)
            raise DriverError(f"{self.name}: MMIO write failed: {exc}") from exc

    async def _read(self, offset: int) -> int:
        # asyncio.timeout, not wait_for: read() must run in this task, so that it
        # takes the posted writes made before it along in the same request.
        try:
            async with asyncio.timeout(self.mmio_timeout):
                return await self.mmio.read(offset)
        except TimeoutError:
            self.counters.mmio_timeouts += 1
            raise DriverError(f"{self.name}: the NIC did not answer a read of "
                              f"{offset:#x} within {self.mmio_timeout:g}s") from None
        except BackendError as exc:
            self._fail(exc)
            raise DriverError(f"{self.name}: MMIO read failed: {exc}") from exc

    async def _sync(self, timeout: float | None = None) -> None:
        try:
            async with asyncio.timeout(timeout or self.mmio_timeout):
                await self.mmio.sync()
        except TimeoutError:
            self.counters.mmio_timeouts += 1
            raise DriverError(f"{self.name}: the NIC did not complete posted writes "
                              f"within {timeout or self.mmio_timeout:g}s") from None
        except BackendError as exc:
            self._fail(exc)
            raise DriverError(f"{self.name}: MMIO failed: {exc}") from exc

    def _fail(self, exc: BaseException) -> None:
        if self.state != "failed":
            logger.error("%s: NIC failed: %s", self.name, exc)
        self.state = "failed"
        self.error = exc
        self.link_up = False
        self._tx_space.set()

    # -- bring-up ------------------------------------------------------------------------
    async def up(self, timeout: float = 30.0) -> None:
        """Bring the NIC up as Linux does; DriverError if it does not answer."""
        if self.state == "up":
            return
        try:
            async with asyncio.timeout(timeout):
                await self._bring_up()
        except TimeoutError:
            raise DriverError(f"{self.name}: bring-up did not finish within {timeout:g}s"
                              ) from None
        except DmaError as exc:
            raise DriverError(f"{self.name}: cannot set up rings in guest memory: {exc}"
                              ) from exc
        self.state = "up"
        self.error = None
        if isinstance(self.mmio, InlineIrqPort):
            self._inline = self.mmio
            self.mmio.on_read = self._on_read
        self._irq_task = asyncio.create_task(self._irq_loop(), name=f"{self.name}-irq")
        logger.info("%s: up, mac %s, link %s, %d/%d descriptors, %d-byte buffers at %#x",
                    self.name, format_mac(self.mac), "up" if self.link_up else "down",
                    self.rx_count, self.tx_count, self.buf_size, self.layout.base)

    async def _bring_up(self) -> None:
        lay = self.layout
        mem = self.mem
        # 1. PCI COMMAND: memory decode and bus mastering.
        try:
            async with asyncio.timeout(self.mmio_timeout):
                await self.mmio.set_pci_command(bus_master=True, memory=True)
        except TimeoutError:
            raise DriverError(f"{self.name}: SetPciCommand timed out") from None
        # 2. Mask every interrupt, clear pending causes.
        self._write(E1000_IMC, MASK32)
        await self._read(E1000_ICR)
        # The MAC address from the EEPROM (EERD), checksum checked as Linux does.
        self.eeprom = await self._read_eeprom()
        if sum(self.eeprom) & MASK16 != EEPROM_SUM:
            raise DriverError(f"{self.name}: the EEPROM checksum is not valid "
                              f"({sum(self.eeprom) & MASK16:#06x}, expected {EEPROM_SUM:#06x})")
        eeprom_mac = b"".join(struct.pack("<H", w) for w in self.eeprom[:3])
        self.mac = self.mac_override or eeprom_mac
        if self.mac[0] & 1 or self.mac == bytes(6):
            raise DriverError(f"{self.name}: invalid MAC address {format_mac(self.mac)}")
        # 3. RA0 = our MAC (AV), the other receive addresses and the MTA cleared.
        m = self.mac
        self._write(E1000_RA, m[0] | m[1] << 8 | m[2] << 16 | m[3] << 24)
        self._write(E1000_RA + 4, m[4] | m[5] << 8 | E1000_RAH_AV)
        for i in range(1, E1000_RAR_ENTRIES):
            self._write(E1000_RA + 8 * i, 0)
            self._write(E1000_RA + 8 * i + 4, 0)
        for i in range(E1000_MC_TBL_SIZE):
            self._write(E1000_MTA + 4 * i, 0)
        # Rings in guest memory: RX descriptors armed with their buffers, TX zeroed.
        mem.dma_write(lay.rx_desc, self._rx_blank)
        mem.dma_write(lay.tx_desc, bytes(self.tx_count * DESC_SIZE))
        mem.dma_flush()
        self._rx_ntc = 0
        self._rx_partial = None
        self._tx_ntu = self._tx_ntc = 0
        self._tx_eop = [-1] * self.tx_count
        self._tx_ctx_cache = None
        # 4. The RX ring.
        self._write(E1000_RDBAL, lay.rx_desc & MASK32)
        self._write(E1000_RDBAH, lay.rx_desc >> 32)
        self._write(E1000_RDLEN, self.rx_count * DESC_SIZE)
        self._write(E1000_RDH, 0)
        self._write(E1000_RDT, 0)
        # 5. Receive on: broadcast accepted, 2 KiB buffers, FCS stripped by us.
        self._write(E1000_RCTL, self._rctl())
        # 6. Post the buffers.
        self._write(E1000_RDT, self.rx_count - 1)
        # 7. The TX ring, then transmit on.
        self._write(E1000_TDBAL, lay.tx_desc & MASK32)
        self._write(E1000_TDBAH, lay.tx_desc >> 32)
        self._write(E1000_TDLEN, self.tx_count * DESC_SIZE)
        self._write(E1000_TDH, 0)
        self._write(E1000_TDT, 0)
        self._write(E1000_TCTL, E1000_TCTL_EN | E1000_TCTL_PSP | TCTL_CT | TCTL_COLD)
        # 8. Unmask RXT0 | RXDMT0 | RXSEQ | LSC (TXDW while waiting for TX space).
        self._write(E1000_IMS, DRIVER_IMS)
        status = await self._read(E1000_STATUS)
        self.link_up = bool(status & E1000_STATUS_LU)

    async def _read_eeprom(self) -> list[int]:
        words = []
        for addr in range(EEPROM_WORDS):
            self._write(E1000_EERD, (addr << E1000_EEPROM_RW_ADDR_SHIFT)
                        | E1000_EEPROM_RW_REG_START)
            for _attempt in range(10):
                value = await self._read(E1000_EERD)
                if value & E1000_EEPROM_RW_REG_DONE:
                    break
            else:
                raise DriverError(f"{self.name}: EEPROM word {addr} never read DONE")
            words.append(value >> E1000_EEPROM_RW_REG_DATA)
        return words

    async def down(self) -> None:
        """Stop the interrupt task; mask interrupts and disable RX/TX (best effort)."""
        task, self._irq_task = self._irq_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._inline is not None:
            self._inline.on_read = None
            self._inline = None
        if self._icr_read is not None:
            self._icr_read.cancel()
            self._icr_read = None
        if self.state == "up":
            with contextlib.suppress(DriverError, BackendError):
                self._write(E1000_IMC, MASK32)
                self._write(E1000_RCTL, 0)
                self._write(E1000_TCTL, 0)
                await self._sync(1.0)
            self.state = "down"
            logger.info("%s: down; counters %s", self.name,
                        " ".join(f"{k}={v}" for k, v in self.counters.as_dict().items() if v))
        self.link_up = False
        self._tx_space.set()

    # -- interrupts -------------------------------------------------------------------------
    async def _irq_loop(self) -> None:
        """Interrupts (unless handled inline), the watchdog and NAPI polling."""
        irq = self.mmio.irq
        while self.state == "up":
            try:
                async with asyncio.timeout(self.watchdog_interval):
                    if self._inline is not None:
                        await self._wake.wait()
                    else:
                        await irq.wait_high()
            except TimeoutError:
                self._check_icr_read()
                await self._guarded(self._watchdog())
                continue
            if self._inline is not None:
                self._wake.clear()
                if self._lsc_pending:
                    self._lsc_pending = False
                    await self._guarded(self._update_link())
            else:
                await self._guarded(self._interrupt())
            # NAPI-like: while frames keep coming, poll the rings (guest memory, no
            # MMIO) instead of waiting for the next interrupt's round trips.
            while self._last_rx and self.poll_interval > 0 and self.state == "up":
                self._polling = True
                await asyncio.sleep(self.poll_interval)
                self.counters.polls += 1
                self.service_rings()
            if self._polling:
                self._polling = False
                self._on_read()  # the line may have risen while we polled

    # -- inline interrupts (an InlineIrqPort) ----------------------------------------------
    def _on_read(self) -> None:
        """After every read from the NIC: take the answer of our ICR read, and
        handle a raised line right here, as a hard IRQ handler would: no task
        wakes, and the ICR read leaves in one write with the RDT/TDT writes."""
        try:
            read = self._icr_read
            if read is not None:
                if not read.done():
                    return
                self._icr_read = None
                self._icr_answered(read)
            port = self._inline
            if port is not None and port.irq.level and self.state == "up" \
                    and not self._polling:
                self._start_interrupt(port)
        except Exception:  # a bug must not break the port's read callback
            self.counters.handler_errors += 1
            logger.exception("%s: interrupt handling failed", self.name)

    def _start_interrupt(self, port: InlineIrqPort) -> None:
        """Take what the rings hold (frames and completions are in guest memory
        before the line rises), then read ICR, which clears the causes and lowers
        the line; its answer brings a second look (``_icr_answered``) for what
        arrived before the read cleared ICR."""
        port.hold()
        try:
            self.service_rings()
            self._icr_read = port.read_posted(E1000_ICR)
        except BackendError as exc:
            self._fail(exc)
        finally:
            port.release()
        self._icr_sent = time.monotonic()

    def _icr_answered(self, read: asyncio.Future[int]) -> None:
        if read.cancelled():
            return
        exc = read.exception()
        if exc is not None:
            if isinstance(exc, BackendError):
                self._fail(exc)
            return
        icr = read.result()
        counters = self.counters
        counters.interrupts += 1
        if not icr:
            counters.spurious_interrupts += 1
        if icr & E1000_ICR_RXO:
            counters.rx_overruns += 1
        if icr & E1000_ICR_LSC:
            counters.lsc_events += 1
            self._lsc_pending = True
            self._wake.set()
        self.service_rings()
        if self._last_rx and self.poll_interval > 0:
            self._polling = True
            self._wake.set()

    def _check_icr_read(self) -> None:
        """An inline ICR read unanswered for mmio_timeout is given up (counted),
        so that the next interrupt is handled."""
        read = self._icr_read
        if read is not None and not read.done() and \
                time.monotonic() - self._icr_sent > self.mmio_timeout:
            self.counters.mmio_timeouts += 1
            logger.warning("%s: the NIC did not answer an ICR read within %gs", self.name,
                           self.mmio_timeout)
            read.cancel()
            self._icr_read = None

    async def _guarded(self, work: Coroutine[Any, Any, None]) -> None:
        """Run one interrupt/watchdog step; a NIC that does not answer is counted,
        logged and retried later, never fatal (unless the MMIO stream is gone)."""
        try:
            await work
        except DriverError as exc:
            if self.state == "failed":
                return
            logger.warning("%s: %s", self.name, exc)
            await asyncio.sleep(min(0.1, self.watchdog_interval))
        except Exception:  # a bug must not silently stop interrupt handling
            self.counters.handler_errors += 1
            logger.exception("%s: interrupt handling failed", self.name)
            await asyncio.sleep(min(0.1, self.watchdog_interval))

    async def _interrupt(self) -> None:
        # Frames and completions are already in guest memory: take them while the
        # ICR read (which clears the causes and lowers the line) makes its round
        # trip, then look again for what arrived before the read cleared ICR.
        read = asyncio.ensure_future(self._read(E1000_ICR))
        self.service_rings()
        try:
            icr = await read
        finally:
            if not read.done():
                read.cancel()
        self.counters.interrupts += 1
        if not icr:
            self.counters.spurious_interrupts += 1
        if icr & E1000_ICR_RXO:
            self.counters.rx_overruns += 1
        if icr & E1000_ICR_LSC:
            self.counters.lsc_events += 1
            await self._update_link()
        self.service_rings()

    async def _watchdog(self) -> None:
        """Linux's e1000_watchdog, reduced: the link state, and any missed work."""
        self.counters.watchdog_runs += 1
        await self._update_link()
        self.service_rings()

    async def _update_link(self) -> None:
        status = await self._read(E1000_STATUS)
        up = bool(status & E1000_STATUS_LU)
        if up != self.link_up:
            self.link_up = up
            logger.info("%s: link %s", self.name, "up" if up else "down")
            for handler in self.link_handlers:
                handler(up)

    def service_rings(self) -> None:
        """Reclaim TX descriptors and take received frames (what the IRQ does)."""
        try:
            self._clean_tx()
            frames = self._clean_rx()
        except DmaError as exc:
            self.counters.dma_errors += 1
            logger.warning("%s: guest memory access failed: %s", self.name, exc)
            return
        except DriverError:  # the RDT write failed: the NIC is gone (state "failed")
            self._last_rx = 0
            return
        self._last_rx = len(frames)
        if frames:
            for handler in self.rx_handlers:
                try:
                    handler(frames)
                except Exception:
                    self.counters.handler_errors += 1
                    logger.exception("%s: receive handler failed", self.name)
        if self._rx_traced:
            self._end_rx_traces(frames)

    # -- tracing (docs/tracing.md) -----------------------------------------------------------
    def _match_trace(self, traces: dict[int, tuple[SpanContext, int]], index: int) -> None:
        """The frame that began at descriptor ``_rx_first`` was cleaned (``index``
        in this batch, -1 if dropped): take the trace its interrupt brought."""
        hit = traces.pop(self._rx_first, None)
        if hit is not None:
            self._rx_traced.append((hit[0], hit[1], self._rx_first, index))

    def _late_trace(self, desc: int, ctx: SpanContext) -> bool:
        """A trace that comes after its frame was taken (the driver polled the
        ring before the NIC's notification arrived): its descriptor no longer
        has DD. guest.rx is then recorded at once, ``polled``."""
        if self.state != "up" or not 0 <= desc < self.rx_count:
            return False
        try:
            raw = self.mem.dma_read(self.layout.rx_desc + desc * DESC_SIZE
                                    + RX_DESC_STATUS_OFFSET, 1)
        except DmaError:
            return False
        if raw[0] & E1000_RXD_STAT_DD:
            return False  # not taken yet: the RX cleanup will find the trace
        t = now_ns()
        add_span("guest.rx", ctx, t, t, {"netclient": self.name, "rx.desc": desc,
                                         "polled": "true"})
        return True

    def _end_rx_traces(self, frames: list[bytes]) -> None:
        """guest.rx for each traced frame of the batch just handed on: from the
        guest learning of its interrupt to the frame delivered (or dropped)."""
        traced, self._rx_traced = self._rx_traced, []
        end = now_ns()
        raised = self.mmio.irq.raised_ns
        for ctx, seen, desc, index in traced:
            attrs: dict[str, str | int] = {"netclient": self.name, "rx.desc": desc}
            if 0 <= index < len(frames):
                attrs["frame.len"] = len(frames[index])
            else:
                attrs["dropped"] = "true"
            add_span("guest.rx", ctx, min(max(seen, raised), end), end, attrs)

    # -- receive -------------------------------------------------------------------------------
    def _clean_rx(self) -> list[bytes]:
        """e1000_clean_rx_irq: frames whose descriptors have DD, buffers re-armed,
        one RDT write for the batch."""
        lay = self.layout
        n = self.rx_count
        mem = self.mem
        bs = self.buf_size
        c = self._rx_ntc
        start = c
        done = 0
        frames: list[bytes] = []
        counters = self.counters
        fcs = self._fcs
        traces = self.mmio.irq.traces  # traced frames' interrupts (mostly empty)
        # At most n - 1 descriptors can be done (the NIC never fills the RDT slot).
        while done < n - 1:
            chunk = min(n - c, RX_SCAN_CHUNK, n - 1 - done)
            raw = mem.dma_read(lay.rx_desc + c * DESC_SIZE, chunk * DESC_SIZE)
            taken = 0
            for k in range(chunk):
                off = k * DESC_SIZE
                status = raw[off + RX_DESC_STATUS_OFFSET]
                if not status & E1000_RXD_STAT_DD:
                    break
                taken += 1
                length = raw[off + 8] | (raw[off + 9] << 8)
                errors = raw[off + RX_DESC_STATUS_OFFSET + 1]
                data = mem.dma_read(lay.rx_bufs + (c + k) * bs, min(length, bs))
                partial = self._rx_partial
                if traces and partial is None:
                    self._rx_first = c + k
                if partial is not None:
                    if len(partial) + len(data) <= MAX_FRAME + fcs:
                        partial += data
                    else:
                        self._rx_partial_bad = True
                if errors & RXD_ERR_FRAME_ERR_MASK:
                    counters.rx_errors += 1
                    self._rx_partial_bad = True
                if not status & E1000_RXD_STAT_EOP:
                    if partial is None:
                        self._rx_partial = bytearray(data)
                    continue
                if partial is not None:
                    whole: bytes | bytearray = partial
                    self._rx_partial = None
                else:
                    whole = data
                bad, self._rx_partial_bad = self._rx_partial_bad, False
                size = len(whole) - fcs
                if traces:
                    self._match_trace(traces, len(frames) if not bad and size > 0 else -1)
                if bad or size <= 0:
                    counters.rx_dropped += 1
                    continue
                frames.append(bytes(whole[:size]))
            done += taken
            c = (c + taken) % n
            if taken < chunk:
                break
        if not done:
            return frames
        # Re-arm: blank descriptors (status 0) pointing at the same buffers.
        blank = self._rx_blank
        if start + done <= n:
            mem.dma_write(lay.rx_desc + start * DESC_SIZE,
                          blank[start * DESC_SIZE:(start + done) * DESC_SIZE])
        else:
            mem.dma_write(lay.rx_desc + start * DESC_SIZE, blank[start * DESC_SIZE:])
            mem.dma_write(lay.rx_desc, blank[:c * DESC_SIZE])
        mem.dma_flush()
        self._rx_ntc = c
        self._write(E1000_RDT, (c - 1) % n)
        counters.rdt_writes += 1
        counters.rx_batches += 1
        counters.rx_frames += len(frames)
        counters.rx_bytes += sum(map(len, frames))
        return frames

    # -- transmit ---------------------------------------------------------------------------------
    @property
    def tx_free(self) -> int:
        """Free TX descriptors (one is always left empty: TDT == TDH means idle)."""
        return self.tx_count - 1 - (self._tx_ntu - self._tx_ntc) % self.tx_count

    @property
    def tx_in_flight(self) -> int:
        return (self._tx_ntu - self._tx_ntc) % self.tx_count

    def _clean_tx(self) -> int:
        """e1000_clean_tx_irq: reclaim every packet whose last descriptor has DD."""
        n = self.tx_count
        base = self.layout.tx_desc
        mem = self.mem
        freed = 0
        c = self._tx_ntc
        eops = self._tx_eop
        counters = self.counters
        while c != self._tx_ntu:
            eop = eops[c]
            if eop < 0:  # cannot happen: every in-flight packet has its record
                eop = c
            upper = mem.dma_read(base + eop * DESC_SIZE + TX_DESC_UPPER_OFFSET, 1)
            if not upper[0] & E1000_TXD_STAT_DD:
                break
            counters.tx_frames += 1
            counters.tx_bytes += self._tx_bytes[c]
            eops[c] = -1
            new_c = (eop + 1) % n
            freed += (new_c - c) % n
            c = new_c
        self._tx_ntc = c
        if freed:
            self._tx_space.set()
        return freed

    def _prepare(self, item: TxPacket | bytes) -> tuple[list[_Prepared], str]:
        """Validate a packet and turn it into descriptor chains: (chains, kind), kind
        one of "plain", "csum", "tso", "soft" (segmented here). ValueError if bad."""
        if not isinstance(item, TxPacket):
            item = TxPacket(bytes(item))
        frame = item.frame
        if item.gso_type != GSO_NONE:
            if len(frame) > MAX_TSO_FRAME:
                raise ValueError(f"a {len(frame)}-byte TSO frame exceeds {MAX_TSO_FRAME}")
            l3, l4, thl, v4 = _tcp_layout(item)
            payload = len(frame) - l4 - thl
            if payload <= item.gso_size:  # nothing to cut: just the checksum
                return self._prepare(TxPacket(frame, l4, 16))
            if v4 and l4 + thl <= 255 and l4 + 16 <= 255:
                return [_prepare_tso4(item, l3, l4, thl)], "tso"
            # The 8254x cannot segment TCP over IPv6 (Linux offers no TSO6 on it).
            return [_Prepared(seg) for seg in software_segment(item)], "soft"
        if len(frame) < 14 or len(frame) > MAX_FRAME:
            raise ValueError(f"a frame of {len(frame)} bytes (14 to {MAX_FRAME})")
        if len(frame) < MIN_TX_FRAME:
            frame = frame + bytes(MIN_TX_FRAME - len(frame))
        if item.csum_start >= 0:
            start, field = item.csum_start, item.csum_start + item.csum_offset
            if field + 2 > len(frame) or item.csum_offset < 0:
                raise ValueError("checksum offsets outside the frame")
            if field > 255:  # a context descriptor's offsets are 8-bit
                return [_Prepared(software_checksum(TxPacket(frame, start, item.csum_offset)))
                        ], "plain"
            ctx = TX_CTX_DESC.pack(0, 0, 0, start, field, 0, E1000_TXD_CMD_DEXT, 0, 0, 0)
            return [_Prepared(frame, ctx, popts=E1000_TXD_POPTS_TXSM, extended=True)], "csum"
        return [_Prepared(frame)], "plain"

    def _descriptors_needed(self, chains: list[_Prepared]) -> int:
        """Descriptors the chains take (an upper bound: a cached context is reused)."""
        bs = self.buf_size
        need = 0
        for p in chains:
            need += max(1, -(-len(p.frame) // bs))
            if p.context is not None and (p.tso or p.context != self._tx_ctx_cache):
                need += 1
        return need

    def _place(self, p: _Prepared, desc: bytearray) -> None:
        """Write one chain's buffers and append its descriptors to ``desc``."""
        n = self.tx_count
        bs = self.buf_size
        lay = self.layout
        mem = self.mem
        first = self._tx_ntu
        slot = first
        if p.context is not None and (p.tso or p.context != self._tx_ctx_cache):
            desc += p.context
            self._tx_ctx_cache = None if p.tso else p.context
            slot = (slot + 1) % n
        frame = p.frame
        total = len(frame)
        if p.extended:
            dcmd = E1000_TXD_CMD_DEXT | E1000_TXD_DTYP_D | E1000_TXD_CMD_IFCS
            if p.tso:
                dcmd |= E1000_TXD_CMD_TSE
            upper = p.popts << 8
        else:
            dcmd = E1000_TXD_CMD_IFCS
            upper = 0
        off = 0
        while True:
            size = min(bs, total - off)
            addr = lay.tx_bufs + slot * bs
            mem.dma_write(addr, frame if size == total else frame[off:off + size])
            off += size
            cmd = dcmd | size
            if off >= total:
                cmd |= E1000_TXD_CMD_EOP | E1000_TXD_CMD_RS
                desc += TX_DESC.pack(addr, cmd, upper)
                break
            desc += TX_DESC.pack(addr, cmd, upper)
            slot = (slot + 1) % n
        self._tx_eop[first] = slot
        self._tx_bytes[first] = total
        self._tx_ntu = (slot + 1) % n

    def _check_up(self) -> None:
        if self.state != "up":
            raise DriverError(f"{self.name}: the NIC is not up"
                              + (f" ({self.error})" if self.error else ""))

    def _queue(self, items: Sequence[TxPacket | bytes], start: int,
               prepared: list[_Prepared] | None) -> tuple[int, list[_Prepared] | None, int, int]:
        """Queue ``items[start:]`` while they fit, with one TDT write for all.

        Returns (index of the first packet not queued, its prepared chains to
        reuse, descriptors it needs, packets dropped as invalid). A packet goes
        entirely or not at all.
        """
        self._check_up()
        self._clean_tx()
        n = self.tx_count
        first_slot = self._tx_ntu
        desc = bytearray()
        counters = self.counters
        i = start
        need = 0
        invalid = 0
        try:
            while i < len(items):
                if prepared is None:
                    try:
                        prepared, kind = self._prepare(items[i])
                    except (ValueError, IndexError) as exc:
                        invalid += 1
                        logger.debug("%s: dropped a packet: %s", self.name, exc)
                        i += 1
                        continue
                else:
                    kind = ""
                need = self._descriptors_needed(prepared)
                if need > n - 1:
                    invalid += 1
                    prepared = None
                    i += 1
                    continue
                if need > self.tx_free:
                    break
                for chain in prepared:
                    self._place(chain, desc)
                if kind == "tso" or (not kind and prepared[0].tso):
                    counters.tx_tso += 1
                elif kind == "csum" or (not kind and prepared[0].context is not None):
                    counters.tx_csum_offload += 1
                elif kind == "soft" or len(prepared) > 1:
                    counters.tx_soft_segmented += 1
                counters.tx_queued += 1
                prepared = None
                need = 0
                i += 1
        finally:
            counters.tx_invalid += invalid
            counters.tx_dropped += invalid
            if desc:
                try:
                    self._write_descriptors(first_slot, desc)
                except DmaError as exc:
                    self.counters.dma_errors += 1
                    raise DriverError(f"{self.name}: cannot write TX descriptors: {exc}"
                                      ) from exc
                self._write(E1000_TDT, self._tx_ntu)
                counters.tdt_writes += 1
        return i, prepared, need, invalid

    def _write_descriptors(self, slot: int, desc: bytearray) -> None:
        base = self.layout.tx_desc
        room = (self.tx_count - slot) * DESC_SIZE
        if len(desc) <= room:
            self.mem.dma_write(base + slot * DESC_SIZE, bytes(desc))
        else:
            self.mem.dma_write(base + slot * DESC_SIZE, bytes(desc[:room]))
            self.mem.dma_write(base, bytes(desc[room:]))
        self.mem.dma_flush()

    def submit(self, items: Sequence[TxPacket | bytes]) -> int:
        """Queue what fits now, without waiting; how many packets were taken (queued,
        or dropped as invalid). The caller retries the rest (``wait_tx_space``)."""
        return self._queue(items, 0, None)[0]

    def try_send(self, items: Sequence[TxPacket | bytes]) -> tuple[int, int]:
        """Queue what fits now and drop the rest (counted): (queued, dropped)."""
        taken, _prepared, _need, invalid = self._queue(items, 0, None)
        rest = len(items) - taken
        if rest:
            self.counters.tx_dropped += rest
            self.counters.tx_ring_full += 1
        return taken - invalid, rest + invalid

    async def send(self, items: Sequence[TxPacket | bytes],
                   timeout: float | None = None) -> tuple[int, int]:
        """Queue packets, waiting (at most ``timeout``, default ``tx_timeout``) for ring
        space; what still does not fit is dropped and counted. (queued, dropped)."""
        limit = self.tx_timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        prepared: list[_Prepared] | None = None
        i = 0
        invalid = 0
        while True:
            i, prepared, need, bad = self._queue(items, i, prepared)
            invalid += bad
            if i >= len(items):
                break
            self.counters.tx_ring_full += 1
            if not await self.wait_tx_space(deadline - loop.time(), need):
                break
        rest = len(items) - i
        self.counters.tx_dropped += rest
        return len(items) - rest - invalid, rest + invalid

    async def wait_tx_space(self, timeout: float, needed: int = 1) -> bool:
        """Wait (bounded) until ``needed`` TX descriptors are free; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        needed = min(needed, self.tx_count - 1)
        self._clean_tx()
        if self.tx_free >= needed or self.state != "up":
            return self.state == "up"
        # TXDW is masked while nobody waits: unmask it for the wait. ICR keeps the
        # TXDW of completions since the last interrupt, so this raises the line at
        # once if some came.
        self._tx_waiters += 1
        try:
            if self._tx_waiters == 1:
                with contextlib.suppress(DriverError):
                    self._write(E1000_IMS, E1000_ICR_TXDW)
            return await self._wait_tx_space(deadline, needed)
        finally:
            self._tx_waiters -= 1
            if not self._tx_waiters and self.state == "up":
                with contextlib.suppress(DriverError):
                    self._write(E1000_IMC, E1000_ICR_TXDW)

    async def _wait_tx_space(self, deadline: float, needed: int) -> bool:
        loop = asyncio.get_running_loop()
        # The NIC completes a TDT write inside it: once our posted writes are done,
        # the descriptors are too (unless transmit is stalled).
        with contextlib.suppress(DriverError):
            await self._sync(max(0.001, deadline - loop.time()))
        while True:
            self._clean_tx()
            if self.tx_free >= needed:
                return True
            left = deadline - loop.time()
            if left <= 0 or self.state != "up":
                return False
            self._tx_space.clear()
            try:
                # TXDW wakes us through the interrupt; poll too, in case the NIC
                # completes descriptors without an interrupt.
                await asyncio.wait_for(self._tx_space.wait(), min(left, 0.05))
            except TimeoutError:
                pass

    # -- status ------------------------------------------------------------------------
    def reclaim_tx(self) -> None:
        """Count the TX descriptors the NIC completed (TXDW is masked: nothing
        else may have looked since the last send or interrupt)."""
        if self.state == "up":
            try:
                self._clean_tx()
            except DmaError as exc:
                self.counters.dma_errors += 1
                logger.warning("%s: guest memory access failed: %s", self.name, exc)

    def status(self) -> dict[str, object]:
        self.reclaim_tx()
        return {"name": self.name, "state": self.state, "mac": format_mac(self.mac),
                "link_up": self.link_up, "counters": self.counters.as_dict(),
                "tx_in_flight": self.tx_in_flight, "time": time.time()}


__all__ = [
    "DEFAULT_MEM_BASE",
    "DRIVER_IMS",
    "GSO_NONE",
    "GSO_TCPV4",
    "GSO_TCPV6",
    "DriverCounters",
    "DriverError",
    "DriverLayout",
    "E1000Driver",
    "TxPacket",
    "inet_checksum",
    "ones_sum",
    "pseudo_header_sum",
    "software_checksum",
    "software_segment",
]
