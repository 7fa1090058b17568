"""QEMU's e1000 NIC (hw/net/e1000.c) as a plain, synchronous Python model.

``E1000`` is a NetClient (QEMU's NICState/NetClientState) with the e1000's
BAR0 register file, EEPROM, PHY, interrupt logic and RX/TX engines. The
behaviour it reproduces is described in docs/e1000.md; names follow
QEMU (``mac_reg``, ``phy_reg``, ``set_ics``, ``start_xmit``,
``process_tx_desc``, ``xmit_seg``, ``receive_iov``...). Nothing here is
asynchronous: timers go through a ``Scheduler`` (virtwire.hw.timer), guest
memory through a ``DmaMemory`` (virtwire.hw.dma), and the interrupt line is
reported through ``set_irq(level)`` whenever it changes.

The guest drives the device with ``mmio_read`` / ``mmio_write`` (32-bit
accesses to BAR0) and ``set_bus_master`` (PCI COMMAND bit 2). Frames from the
peer arrive through the NetClient machinery (``receive``); frames the guest
transmits leave with ``send_packet`` (or, in PHY loopback, come back through
``receive_packet``).

``compat`` picks the QEMU to reproduce: "9.0" (the default) or "7.2"
(QEMU 7.2.x as shipped by Debian 12, the QEMU the differential harness runs):
7.2 pads received frames shorter than 60 bytes, uses oversize limits of 1522
/ 16384 bytes, lets RCTL.MPE accept broadcasts, and counts BPRC/MPRC when the
filter matches (BAM, MPE or an MTA hash hit) instead of by the received
frame's destination.

``set_irq`` is called synchronously from inside device operations (MMIO, frame
delivery, timers). An MMIO access made from inside it while the device is
handling MMIO or a frame is refused, as QEMU's MemReentrancyGuard refuses DMA
into the device's own BAR: deliver interrupts to the guest asynchronously.

Work is sliced (``SliceBudget``): one MMIO write, queue flush or timer does at
most a budget of work (units, and time on the scheduler's clock); the rest of
a TX ring, or of a TSO descriptor, resumes from a ``call_later(0, ...)``
continuation, so no guest can hold the event loop. Within the budget
everything completes inside the write, exactly as in QEMU.

Deliberate differences from QEMU are listed in ``DEVIATIONS`` below.
"""

from __future__ import annotations

import contextlib
import logging
import struct
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Literal

from opentelemetry.trace import Span, SpanContext

from virtwire.errors import ConfigError
from virtwire.hw.dma import DmaError, DmaMemory
from virtwire.hw.e1000_regs import (
    AIT,
    BPRC,
    BPTC,
    CEXTERR,
    COLC,
    CRCERRS,
    CTRL,
    CTRL_RESET,
    DC,
    DESC_SIZE,
    E1000_CTRL_RST,
    E1000_CTRL_VME,
    E1000_DEV_ID_82540EM,
    E1000_DEV_ID_82544GC_COPPER,
    E1000_DEV_ID_82545EM_COPPER,
    E1000_ICR_MDAC,
    E1000_ICR_TXDW,
    E1000_ICR_TXQE,
    E1000_ICS_LSC,
    E1000_ICS_RXDMT0,
    E1000_ICS_RXO,
    E1000_ICS_RXT0,
    E1000_MC_TBL_SIZE,
    E1000_MDIC_DATA_MASK,
    E1000_MDIC_ERROR,
    E1000_MDIC_INT_EN,
    E1000_MDIC_OP_READ,
    E1000_MDIC_OP_WRITE,
    E1000_MDIC_PHY_MASK,
    E1000_MDIC_PHY_SHIFT,
    E1000_MDIC_READY,
    E1000_MDIC_REG_MASK,
    E1000_MDIC_REG_SHIFT,
    E1000_PHY_ID2_8254XX_DEFAULT,
    E1000_PHY_ID2_82544X,
    E1000_RAH_AV,
    E1000_RAR_ENTRIES,
    E1000_RCTL_BAM,
    E1000_RCTL_BSEX,
    E1000_RCTL_EN,
    E1000_RCTL_LPE,
    E1000_RCTL_MO_SHIFT,
    E1000_RCTL_MPE,
    E1000_RCTL_RDMTS_QUAT,
    E1000_RCTL_SBP,
    E1000_RCTL_SECRC,
    E1000_RCTL_UPE,
    E1000_RCTL_VFE,
    E1000_REVISION,
    E1000_RXD_STAT_DD,
    E1000_RXD_STAT_EOP,
    E1000_RXD_STAT_IXSM,
    E1000_RXD_STAT_VP,
    E1000_STATUS_LU,
    E1000_TCTL_EN,
    E1000_TXD_CMD_DEXT,
    E1000_TXD_CMD_EOP,
    E1000_TXD_CMD_IDE,
    E1000_TXD_CMD_IP,
    E1000_TXD_CMD_RPS,
    E1000_TXD_CMD_RS,
    E1000_TXD_CMD_TCP,
    E1000_TXD_CMD_TSE,
    E1000_TXD_CMD_VLE,
    E1000_TXD_DTYP_D,
    E1000_TXD_POPTS_IXSM,
    E1000_TXD_POPTS_TXSM,
    E1000_TXD_STAT_DD,
    E1000_TXD_STAT_EC,
    E1000_TXD_STAT_LC,
    E1000_TXD_STAT_TU,
    E1000_VLAN_FILTER_TBL_SIZE,
    ECOL,
    EECD,
    EERD,
    FCRUC,
    FFLT,
    FFMT,
    FFVT,
    GORCH,
    GORCL,
    GOTCH,
    GOTCL,
    GPRC,
    GPTC,
    ICR,
    ICS,
    IMC,
    IMS,
    IP4AT,
    IP6AT,
    IPAV,
    ITR,
    LATECOL,
    LEDCTL,
    LEDCTL_RESET,
    MAC_REG_COUNT,
    MANC,
    MANC_RESET,
    MAXIMUM_ETHERNET_HDR_LEN,
    MAXIMUM_ETHERNET_LPE_SIZE,
    MAXIMUM_ETHERNET_VLAN_SIZE,
    MCC,
    MDIC,
    MGTPDC,
    MGTPRC,
    MGTPTC,
    MII_ANLPAR,
    MII_ANLPAR_ACK,
    MII_BMCR,
    MII_BMCR_ANRESTART,
    MII_BMCR_AUTOEN,
    MII_BMCR_LOOPBACK,
    MII_BMCR_RESET,
    MII_BMSR,
    MII_BMSR_AN_COMP,
    MII_BMSR_LINK_ST,
    MII_PHYID2,
    MIT_MIN_DELAY,
    MIT_UNIT_NS,
    MPC,
    MPRC,
    MPTC,
    MTA,
    PBA,
    PBA_RESET,
    PBM,
    PCI_CLASS_NETWORK_ETHERNET,
    PCI_VENDOR_ID_INTEL,
    PHY_READABLE,
    PHY_REG_COUNT,
    PHY_RESET,
    PHY_WRITABLE,
    PNPMMIO_SIZE,
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
    RCTL,
    RDBAH,
    RDBAL,
    RDFH,
    RDFHS,
    RDFPC,
    RDFT,
    RDFTS,
    RDH,
    RDLEN,
    RDT,
    RDTR,
    RFC,
    RJC,
    RLEC,
    RNBC,
    ROC,
    RUC,
    RX_DESC,
    RX_DESC_STATUS_OFFSET,
    SCC,
    SEQEC,
    STATISTICS_REGISTERS,
    STATUS,
    STATUS_RESET,
    SWSM,
    TADV,
    TCTL,
    TDBAH,
    TDBAL,
    TDFH,
    TDFHS,
    TDFPC,
    TDFT,
    TDFTS,
    TDH,
    TDLEN,
    TDT,
    TNCRS,
    TORH,
    TORL,
    TOTH,
    TOTL,
    TPR,
    TPT,
    TSCTC,
    TSCTFC,
    TX_BUFFER_SIZE,
    TX_CTX_DESC,
    TX_DESC,
    TX_DESC_UPPER_OFFSET,
    TX_HEADER_SIZE,
    TXDCTL,
    VET,
    VET_RESET,
    VFTA,
    WUC,
    WUFC,
    WUPM,
    WUS,
    XOFFRXC,
    XOFFTXC,
    XONRXC,
    XONTXC,
)
from virtwire.hw.eeprom import MicrowireEeprom, eeprom_image
from virtwire.hw.timer import NS_PER_MS, Scheduler, SliceBudget, TimerHandle
from virtwire.net.eth import format_mac
from virtwire.net.net import NetClient
from virtwire.tracing import TracedFrame, add_span, begin, now_ns

logger = logging.getLogger(__name__)

MASK16 = 0xFFFF
MASK32 = 0xFFFFFFFF
MASK64 = 0xFFFFFFFFFFFFFFFF

#: Virtual-time delays QEMU uses (in ms, on millisecond-granular timers).
AUTONEG_DELAY_MS = 500
RX_FLUSH_DELAY_MS = 1000

#: One slice of device work: a deterministic cap in work units (a frame costs
#: 1 + 1 per KiB, a descriptor 1, DMA 1 per KiB). Generous, so that what any
#: sane driver (and the QEMU-compared programs) does in one write completes
#: inside it; under a real clock ``SLICE_NS`` ends a slice first.
#: irq spans of traced frames kept open while mitigation defers their interrupt;
#: past this many, one ends at once (the trace stays whole, the delay unseen).
MAX_OPEN_IRQ_SPANS = 256
WORK_BUDGET_UNITS = 8192
#: ... and at most this long on the scheduler's clock (a unit overshoots it by
#: well under a millisecond with shared-memory DMA).
SLICE_NS = 5 * NS_PER_MS
#: Null-buffer RX descriptors written back in one DMA read and write: the first
#: read-ahead is small (a null descriptor amid buffers costs little), and it
#: doubles while the run goes on.
RX_NULL_RUN_MIN = 16
RX_NULL_RUN_MAX = 4096

#: Intentional differences from QEMU's e1000 (for the README).
DEVIATIONS: tuple[str, ...] = (
    "DMA outside guest memory (DmaError): by default ('stop') the access is counted in "
    "dma_errors and the ring being processed stops at that descriptor (TX: TDH stays on it "
    "and a half-gathered packet is dropped; RX: the frame is dropped, RDH stays). QEMU "
    "instead reads zeros, drops the writes and carries on; dma_error_policy='zero' does that.",
    "An empty (0-byte) frame is reported consumed (receive returns 1): QEMU returns 0 for "
    "it, which disables the queue and re-delivers the same frame on every flush.",
    "Frames shorter than 14 bytes are never treated as VLAN-tagged, and header bytes past "
    "the end of a frame shorter than 18 bytes read as zero (QEMU reads uninitialised stack).",
    "Stripping a VLAN tag does not modify the delivered buffer (QEMU moves the MAC "
    "addresses in place, so other receivers of the same buffer see a mangled frame); only "
    "QEMU's resulting BPRC/MPRC classification is reproduced.",
    "Checksum offsets with a start beyond the packet end checksum nothing (as QEMU does "
    "with its negative length) and never read outside the 64 KiB TX buffer.",
    "The I/O BAR (BAR1, IOADDR/IODATA) is not modelled; QEMU's reads 0 and ignores writes.",
    "reset() is a PCI function reset: it also clears the bus-master bit and deasserts "
    "the interrupt line; EEPROM bit-bang state and the RX buffer size survive, as in QEMU.",
    "The 1 s RX block after an RCTL write is modelled by default (rx_flush_timer=True); "
    "with rx_flush_timer=False it is skipped.",
    "Work is sliced: past a budget (WORK_BUDGET_UNITS, or SLICE_NS on a real clock) a TDT "
    "or TCTL write returns with TX still running; it resumes from the event loop in order "
    "(TDH moves on, TXDW is raised per slice, TXQE once the ring is done; a TDT write "
    "meanwhile only moves the tail). QEMU finishes the whole ring inside the write.",
    "Frames past the budget (of a queue flush, or of the frames arriving in one turn of "
    "the event loop) stay queued (receive returns 0, counted in rx_sliced) and are "
    "flushed on the next turn, in order. A looped-back frame is never left queued.",
    "Reset, or clearing TCTL.EN, while sliced TX work is pending cancels it (tx_cancelled): "
    "a descriptor half done (a TSO burst cut by the budget) is dropped, TDH stays on it. "
    "Moving TDH under pending work drops that descriptor the same way.",
    "Runs of null-buffer RX descriptors are written back with one DMA read and one write "
    "(the same bytes QEMU writes, one descriptor at a time).",
)


class _DmaAbort(DmaError):
    """Internal: a DMA access failed and the ring must stop (policy 'stop'); never
    escapes the device."""


#: Status byte of a written-back null RX descriptor: status | DD (| VP).
_NULL_DESC_STATUS = {
    vp: bytes(v | E1000_RXD_STAT_DD | vp for v in range(256))
    for vp in (0, E1000_RXD_STAT_VP)
}


def _null_run(raw: bytes, count: int) -> int:
    """How many of the ``count`` RX descriptors in ``raw`` have buffer_addr 0, from the start."""
    acc = 0
    for col in range(8):  # OR the 8 address bytes of every descriptor, as one big int
        acc |= int.from_bytes(raw[col::DESC_SIZE], "big")
    return count - (acc.bit_length() + 7) // 8


@dataclass(frozen=True)
class E1000Model:
    """One e1000 variant: QEMU type name, PCI device ID and PHY ID2."""

    name: str
    typename: str
    device_id: int
    phy_id2: int


MODELS: dict[str, E1000Model] = {
    "82540EM": E1000Model("82540EM", "e1000", E1000_DEV_ID_82540EM,
                          E1000_PHY_ID2_8254XX_DEFAULT),
    "82544GC": E1000Model("82544GC", "e1000-82544gc", E1000_DEV_ID_82544GC_COPPER,
                          E1000_PHY_ID2_82544X),
    "82545EM": E1000Model("82545EM", "e1000-82545em", E1000_DEV_ID_82545EM_COPPER,
                          E1000_PHY_ID2_8254XX_DEFAULT),
}
_MODEL_ALIASES = {m.typename: m for m in MODELS.values()}

ModelName = Literal["82540EM", "82544GC", "82545EM", "e1000", "e1000-82544gc",
                    "e1000-82545em"]
DmaErrorPolicy = Literal["stop", "zero"]
#: Which QEMU's e1000 to reproduce: "9.0" (docs/e1000.md#compat-versions) or
#: "7.2" (QEMU 7.2.x, e.g. Debian 12's 7.2.22, where the RX path still pads
#: short frames to 60 bytes, the oversize limits are 1522 / 16384, multicast
#: promiscuous mode also takes broadcasts, and BPRC/MPRC count filter matches).
QemuCompat = Literal["9.0", "7.2"]
COMPAT_VERSIONS: tuple[str, ...] = ("9.0", "7.2")
#: QEMU 7.2's MIN_BUF_SIZE: short frames are padded to this on receive.
MIN_BUF_SIZE_72 = 60


@dataclass
class TxdProps:
    """e1000x_txd_props: what a context descriptor sets up."""

    ipcss: int = 0
    ipcso: int = 0
    ipcse: int = 0
    tucss: int = 0
    tucso: int = 0
    tucse: int = 0
    paylen: int = 0
    hdr_len: int = 0
    mss: int = 0
    ip: bool = False
    tcp: bool = False
    tse: bool = False

    @classmethod
    def from_context(cls, desc: bytes) -> TxdProps:
        """e1000x_read_tx_ctx_descr."""
        (ipcss, ipcso, ipcse, tucss, tucso, tucse, op, _status, hdr_len,
         mss) = TX_CTX_DESC.unpack(desc)
        return cls(ipcss, ipcso, ipcse, tucss, tucso, tucse, op & 0xFFFFF, hdr_len, mss,
                   bool(op & E1000_TXD_CMD_IP), bool(op & E1000_TXD_CMD_TCP),
                   bool(op & E1000_TXD_CMD_TSE))


@dataclass(slots=True)
class TxDescWork:
    """A TX descriptor being processed, kept while a slice is pending."""

    #: The TDH it sits at and its guest address (for the writeback).
    index: int
    base: int
    desc: bytes
    started: bool = False
    #: Next buffer byte to gather and how many are left (QEMU's addr, split_size).
    addr: int = 0
    split_size: int = 0


@dataclass
class TxState:
    """QEMU's struct e1000_tx: the packet being gathered, kept across descriptors."""

    header: bytearray = field(default_factory=lambda: bytearray(TX_HEADER_SIZE))
    vlan_header: bytearray = field(default_factory=lambda: bytearray(4))
    vlan: bytearray = field(default_factory=lambda: bytearray(4))
    data: bytearray = field(default_factory=lambda: bytearray(TX_BUFFER_SIZE))
    #: uint16_t in QEMU: wraps at 64 KiB.
    size: int = 0
    vlan_needed: bool = False
    sum_needed: int = 0
    cptse: bool = False
    props: TxdProps = field(default_factory=TxdProps)
    tso_props: TxdProps = field(default_factory=TxdProps)
    tso_frames: int = 0
    busy: bool = False
    #: virtwire: the descriptor a slice stopped inside (a TSO burst), or None.
    work: TxDescWork | None = None

    def end_packet(self) -> None:
        """What process_tx_desc resets after EOP."""
        self.tso_frames = 0
        self.sum_needed = 0
        self.vlan_needed = False
        self.size = 0
        self.cptse = False


@dataclass
class E1000Drops:
    """Why frames did not make it (virtwire counters; not guest-visible)."""

    #: Received while STATUS.LU was clear (receive returned -1).
    rx_link_down: int = 0
    #: Received while RCTL.EN was clear (receive returned -1).
    rx_disabled: int = 0
    #: Discarded as oversize (ROC).
    rx_oversize: int = 0
    #: Rejected by the VLAN/unicast/multicast/broadcast filters.
    rx_filtered: int = 0
    #: Not enough RX descriptors (RXO, RNBC, MPC), including ring wrap-around.
    rx_no_buffers: int = 0
    #: Dropped because an RX DMA access failed.
    rx_dma_errors: int = 0
    #: TX descriptors or buffers that could not be read (or written back).
    tx_dma_errors: int = 0
    #: Refused while the 1 s post-RCTL-write timer ran (receive returned 0: queued).
    rx_deferred: int = 0
    #: PHY-loopback frames our own receive path refused (can_receive false).
    loopback_refused: int = 0
    #: MMIO accesses blocked by the re-entrancy guard (MemReentrancyGuard).
    mmio_reentrant: int = 0
    #: Times TX stopped at the slice budget and resumed from the event loop.
    tx_sliced: int = 0
    #: Frames a flush left queued at the slice budget (delivered on the next turn).
    rx_sliced: int = 0
    #: Pending sliced TX work cancelled by a reset, TCTL.EN clear or a TDH move.
    tx_cancelled: int = 0


#: Counters of E1000Drops that count deferred work, not lost frames.
_DEFERRED = ("tx_sliced", "rx_sliced")


def _put16(buf: bytearray, off: int, val: int) -> None:
    buf[off] = (val >> 8) & 0xFF
    buf[off + 1] = val & 0xFF


def _get16(buf: bytearray, off: int) -> int:
    return (buf[off] << 8) | buf[off + 1]


def net_checksum(data: bytes | bytearray | memoryview) -> int:
    """The one's-complement sum of big-endian 16-bit words (an odd last byte is
    the high byte), folded to 16 bits: net_checksum_add then the folding loop
    of net_checksum_finish. 0 only when every byte is 0."""
    n = len(data)
    total = int.from_bytes(data[: n & ~1], "big") if n > 1 else 0
    if n & 1:
        total = (total << 16) | (data[n - 1] << 8)
    if total == 0:
        return 0
    # 2**16 == 1 (mod 0xFFFF): the big integer is congruent to the sum of its words.
    r = total % MASK16
    return r or MASK16


def checksum_finish_nozero(folded: int) -> int:
    """net_checksum_finish_nozero: complement, and 0 becomes 0xFFFF."""
    return (~folded & MASK16) or MASK16


def putsum(data: bytearray, n: int, sloc: int, css: int, cse: int) -> None:
    """QEMU's putsum: checksum data[css:n] (n = cse + 1 when cse and cse < n)
    and store it big-endian at sloc, if sloc < n - 1 (32-bit unsigned)."""
    if cse and cse < n:
        n = cse + 1
    if sloc < ((n - 1) & MASK32):
        folded = net_checksum(memoryview(data)[css:n]) if n > css else 0
        _put16(data, sloc, checksum_finish_nozero(folded))


def rxbufsize(rctl: int) -> int:
    """e1000x_rxbufsize: the RX buffer size RCTL.BSIZE/BSEX select."""
    v = rctl & (E1000_RCTL_BSEX | 0x00030000)
    return {
        E1000_RCTL_BSEX | 0x00010000: 16384,
        E1000_RCTL_BSEX | 0x00020000: 8192,
        E1000_RCTL_BSEX | 0x00030000: 4096,
        0x00010000: 1024,
        0x00020000: 512,
        0x00030000: 256,
    }.get(v, 2048)


#: The upper dword of a written-back TX descriptor keeps all but EC, LC and TU.
_TXD_STAT_CLEAR = ~(E1000_TXD_STAT_EC | E1000_TXD_STAT_LC | E1000_TXD_STAT_TU) & MASK32

_PRC_REGS = (PRC64, PRC127, PRC255, PRC511, PRC1023, PRC1522)
_PTC_REGS = (PTC64, PTC127, PTC255, PTC511, PTC1023, PTC1522)
_MTA_SHIFT = (4, 3, 2, 0)
_BROADCAST = b"\xff" * 6

ReadOp = Callable[[int], int]
WriteOp = Callable[[int, int], None]


class E1000(NetClient):
    """QEMU's e1000 / e1000-82544gc / e1000-82545em as a NetClient."""

    kind = "nic"
    is_nic = True
    #: Frames the guest transmits enter the LAN here (docs/tracing.md).
    ingress_span = "e1000.transmit"

    def __init__(self, name: str, mac: bytes, dma: DmaMemory, *,
                 model: ModelName = "82540EM",
                 set_irq: Callable[[bool], None],
                 scheduler: Scheduler,
                 dma_error_policy: DmaErrorPolicy = "stop",
                 rx_flush_timer: bool = True,
                 compat: QemuCompat = "9.0",
                 work_budget: int = WORK_BUDGET_UNITS,
                 slice_ns: int = SLICE_NS) -> None:
        super().__init__(name)
        info = MODELS.get(model) or _MODEL_ALIASES.get(model)
        if info is None:
            raise ConfigError(f"unknown e1000 model {model!r}: use one of {sorted(MODELS)}")
        if len(mac) != 6:
            raise ConfigError("a MAC address has 6 bytes")
        if dma_error_policy not in ("stop", "zero"):
            raise ConfigError("dma_error_policy is 'stop' or 'zero'")
        if compat not in COMPAT_VERSIONS:
            raise ConfigError(f"compat is one of {COMPAT_VERSIONS}")
        #: The QEMU version whose e1000 this reproduces.
        self.compat: QemuCompat = compat
        self._qemu72 = compat == "7.2"
        self.model = info
        self.macaddr = bytes(mac)
        self.dma = dma
        self.scheduler = scheduler
        self._set_irq = set_irq
        self.dma_error_policy: DmaErrorPolicy = dma_error_policy
        self.rx_flush_timer = rx_flush_timer
        # PCI identity (config space is outside this model).
        self.vendor_id = PCI_VENDOR_ID_INTEL
        self.device_id = info.device_id
        self.revision = E1000_REVISION
        self.class_code = PCI_CLASS_NETWORK_ETHERNET

        self.mac_reg: list[int] = [0] * MAC_REG_COUNT
        self.phy_reg: list[int] = [0] * PHY_REG_COUNT
        self.eeprom = MicrowireEeprom(eeprom_image(self.macaddr, info.device_id))
        # Not reset by reset(), as in QEMU (0 until the first RCTL write).
        self.rxbuf_size = 0
        self.rxbuf_min_shift = 1
        self.tx = TxState()
        #: PCI COMMAND bit 2 (bus master enable).
        self.bus_master = False
        #: The interrupt pin as last reported through set_irq.
        self.irq_level = False
        self.mit_timer_on = False
        self.mit_irq_level = False
        self.mit_ide = 0
        self._autoneg_timer: TimerHandle | None = None
        self._mit_timer: TimerHandle | None = None
        self._flush_queue_timer: TimerHandle | None = None
        #: DMA accesses that failed (DmaError), in either direction.
        self.dma_errors = 0
        self.drops = E1000Drops()
        #: MemReentrancyGuard.engaged_in_io: set during MMIO and frame delivery.
        self._engaged_in_io = False
        self._ra_cache: list[bytes] | None = None
        self._info_str = ""
        #: How much one operation may do before the rest resumes on the next turn.
        self.budget = SliceBudget(scheduler, work_budget, slice_ns)
        self._tx_resume_timer: TimerHandle | None = None
        self._rx_flush_timer: TimerHandle | None = None
        #: start_xmit's tdh_start, kept across slices.
        self._tx_start = 0
        #: Set while a frame loops back (PHY loopback): it cannot be queued.
        self._in_loopback = False
        #: Set during a purging flush: frames are not left queued at the budget.
        self._rx_no_defer = False
        #: ``rx_trace(desc, irq_ctx)``: told of each traced frame written back
        #: (its first RX descriptor, its irq span's context) before the line changes.
        self.rx_trace: Callable[[int, SpanContext], None] | None = None
        #: irq spans of traced frames whose interrupt the mitigation timer defers.
        self._irq_spans: list[Span] = []
        self._readops, self._writeops = self._build_ops()
        self.reset()

    # -- identity --------------------------------------------------------------
    def describe(self) -> str:
        return self._info_str

    def _format_info_str(self, mac: bytes) -> None:
        """qemu_format_nic_info_str."""
        self._info_str = f"model={self.model.typename},macaddr={format_mac(mac)}"

    # -- reset -----------------------------------------------------------------
    def reset(self) -> None:
        """PCI function reset (QEMU's e1000_reset_hold plus the PCI core's part)."""
        self.cleanup()
        if self._irq_spans:
            self._end_irq_spans(False)
        self.mit_timer_on = False
        self.mit_irq_level = False
        self.mit_ide = 0
        # In place, so that references to mac_reg / phy_reg stay valid.
        phy = self.phy_reg
        phy[:] = [0] * PHY_REG_COUNT
        for reg, val in PHY_RESET.items():
            phy[reg] = val
        phy[MII_PHYID2] = self.model.phy_id2
        mac = self.mac_reg
        mac[:] = [0] * MAC_REG_COUNT
        mac[PBA] = PBA_RESET
        mac[LEDCTL] = LEDCTL_RESET
        mac[CTRL] = CTRL_RESET
        mac[STATUS] = STATUS_RESET
        mac[MANC] = MANC_RESET
        self.rxbuf_min_shift = 1
        self.tx = TxState()
        if self.link_down:
            self._update_regs_on_link_down()
        # e1000x_reset_mac_addr
        m = self.macaddr
        mac[RA] = m[0] | (m[1] << 8) | (m[2] << 16) | (m[3] << 24)
        mac[RA + 1] = E1000_RAH_AV | m[4] | (m[5] << 8)
        self._ra_cache = None
        self._format_info_str(m)
        mac[VET] = VET_RESET
        # PCI core: COMMAND is cleared and INTx deasserted.
        self.bus_master = False
        self._pci_set_irq(False)

    def cleanup(self) -> None:
        """The NIC goes away (pci_e1000_uninit): stop its timers and pending slices."""
        self._tx_cancel()
        for timer in (self._autoneg_timer, self._mit_timer, self._flush_queue_timer,
                      self._rx_flush_timer):
            if timer is not None:
                timer.cancel()
        self._autoneg_timer = self._mit_timer = self._flush_queue_timer = None
        self._rx_flush_timer = None

    # -- slicing -----------------------------------------------------------------
    @contextlib.contextmanager
    def budget_scope(self) -> Iterator[None]:
        """One slice of work: everything inside (e.g. a batch of MMIO accesses)
        shares one budget; nested scopes join the outer one."""
        owned = self.budget.begin()
        try:
            yield
        finally:
            if owned:
                self.budget.end()

    def flush_queued_packets(self, purge: bool = False) -> None:
        """qemu_flush_queued_packets, within one slice: frames past the budget
        stay queued for the next turn (rx_sliced). A purging flush delivers
        everything it can first, as QEMU's does."""
        with self.budget_scope():
            if not purge:
                super().flush_queued_packets(purge)
                return
            no_defer, self._rx_no_defer = self._rx_no_defer, True
            try:
                super().flush_queued_packets(purge)
            finally:
                self._rx_no_defer = no_defer

    def _rx_flush_cb(self) -> None:
        """The continuation of a flush the budget cut short."""
        self._rx_flush_timer = None
        self.flush_queued_packets()

    @property
    def tx_pending(self) -> bool:
        """Sliced TX work is waiting for its continuation."""
        return self._tx_resume_timer is not None

    @property
    def rx_flush_pending(self) -> bool:
        """A flush cut short by the budget is waiting for its continuation."""
        return self._rx_flush_timer is not None

    # -- PCI ---------------------------------------------------------------------
    def set_bus_master(self, enable: bool) -> None:
        """PCI COMMAND bus-master bit; setting it flushes queued frames (as QEMU)."""
        self.bus_master = bool(enable)
        if self.bus_master:
            self.flush_queued_packets()

    def _pci_set_irq(self, level: bool) -> None:
        if level != self.irq_level:
            self.irq_level = level
            self._set_irq(level)

    # -- timers ------------------------------------------------------------------
    def _ms_deadline_delay(self, delay_ms: int) -> int:
        """Delay in ns to QEMU's ms-timer deadline qemu_clock_get_ms() + delay_ms."""
        now = self.scheduler.now_ns()
        return (now // NS_PER_MS + delay_ms) * NS_PER_MS - now

    def _autoneg_timer_arm(self) -> None:
        if self._autoneg_timer is not None:
            self._autoneg_timer.cancel()
        self._autoneg_timer = self.scheduler.call_later(
            self._ms_deadline_delay(AUTONEG_DELAY_MS), self._autoneg_timer_cb)

    def _autoneg_timer_cb(self) -> None:
        """e1000_autoneg_timer."""
        self._autoneg_timer = None
        if not self.link_down:
            self._autoneg_done()
            self.set_ics(E1000_ICS_LSC)

    def _mit_timer_cb(self) -> None:
        """e1000_mit_timer: the mitigation window closed; re-evaluate the line."""
        self._mit_timer = None
        self.mit_timer_on = False
        self.set_interrupt_cause(self.mac_reg[ICR])

    def _flush_queue_timer_cb(self) -> None:
        """e1000_flush_queue_timer."""
        self._flush_queue_timer = None
        self.flush_queued_packets()

    @property
    def flush_queue_timer_pending(self) -> bool:
        return self._flush_queue_timer is not None

    # -- interrupts --------------------------------------------------------------
    def set_interrupt_cause(self, val: int) -> None:
        """ICR = ICS = val; raise or lower the line, with interrupt mitigation."""
        mac = self.mac_reg
        val &= MASK32
        mac[ICR] = val
        mac[ICS] = val
        pending = mac[IMS] & val
        if not self.mit_irq_level and pending:
            # A rising edge: postponed while the mitigation window is open;
            # otherwise raised now, opening a new window.
            if self.mit_timer_on:
                return
            # mit_update_delay on each candidate: the smallest non-zero one.
            mit_delay = 0
            if self.mit_ide and pending & (E1000_ICR_TXQE | E1000_ICR_TXDW):
                mit_delay = mac[TADV] * 4
            if mac[RDTR] and pending & E1000_ICS_RXT0:
                value = mac[RADV] * 4
                if value and (mit_delay == 0 or value < mit_delay):
                    mit_delay = value
            value = mac[ITR]
            if value and (mit_delay == 0 or value < mit_delay):
                mit_delay = value
            mit_delay = max(mit_delay, MIT_MIN_DELAY)
            self.mit_timer_on = True
            if self._mit_timer is not None:
                self._mit_timer.cancel()
            self._mit_timer = self.scheduler.call_later(mit_delay * MIT_UNIT_NS,
                                                        self._mit_timer_cb)
            self.mit_ide = 0
        level = self.mit_irq_level = pending != 0
        if level != self.irq_level:  # _pci_set_irq
            self.irq_level = level
            self._set_irq(level)
        if self._irq_spans and level:
            self._end_irq_spans(True)

    def set_ics(self, val: int) -> None:
        """set_ics: OR causes into ICR."""
        self.set_interrupt_cause(val | self.mac_reg[ICR])

    # -- link and PHY ---------------------------------------------------------------
    def _update_regs_on_link_down(self) -> None:
        self.mac_reg[STATUS] &= ~E1000_STATUS_LU & MASK32
        phy = self.phy_reg
        phy[MII_BMSR] &= ~(MII_BMSR_LINK_ST | MII_BMSR_AN_COMP) & MASK16
        phy[MII_ANLPAR] &= ~MII_ANLPAR_ACK & MASK16

    def _update_regs_on_link_up(self) -> None:
        self.mac_reg[STATUS] |= E1000_STATUS_LU
        self.phy_reg[MII_BMSR] |= MII_BMSR_LINK_ST

    def _link_up(self) -> None:
        self._update_regs_on_link_up()
        self.flush_queued_packets()

    def _autoneg_done(self) -> None:
        self._update_regs_on_link_up()
        self.phy_reg[MII_ANLPAR] |= MII_ANLPAR_ACK
        self.phy_reg[MII_BMSR] |= MII_BMSR_AN_COMP
        self.flush_queued_packets()

    def have_autoneg(self) -> bool:
        return bool(self.phy_reg[MII_BMCR] & MII_BMCR_AUTOEN)

    def _restart_autoneg(self) -> None:
        """e1000x_restart_autoneg: link down now, up again 500 ms later."""
        self._update_regs_on_link_down()
        self._autoneg_timer_arm()

    def link_status_changed(self) -> None:
        """e1000_set_link_status (NetClientInfo.link_status_changed)."""
        old_status = self.mac_reg[STATUS]
        if self.link_down:
            self._update_regs_on_link_down()
        elif self.have_autoneg() and not self.phy_reg[MII_BMSR] & MII_BMSR_AN_COMP:
            self._restart_autoneg()
        else:
            self._link_up()
        if self.mac_reg[STATUS] != old_status:
            self.set_ics(E1000_ICS_LSC)

    def _set_phy_ctrl(self, val: int) -> None:
        """BMCR write: reserved bits 0-5, RESET and ANRESTART read back as 0."""
        self.phy_reg[MII_BMCR] = val & ~(0x3F | MII_BMCR_RESET | MII_BMCR_ANRESTART)
        if self.have_autoneg() and val & MII_BMCR_ANRESTART:
            self._restart_autoneg()

    # -- DMA ---------------------------------------------------------------------------
    def _dma_read(self, addr: int, size: int) -> bytes:
        """pci_dma_read: zeros while bus mastering is off (nothing is accessed)."""
        if size <= 0:
            return b""
        if not self.bus_master:
            return bytes(size)
        try:
            data = self.dma.dma_read(addr & MASK64, size)
        except DmaError:
            self.dma_errors += 1
            if self.dma_error_policy == "zero":
                return bytes(size)
            raise _DmaAbort from None
        if len(data) != size:  # a misbehaving DmaMemory: never trust lengths
            data = bytes(data[:size]).ljust(size, b"\0")
        return data

    def _dma_read_quiet(self, addr: int, size: int) -> bytes | None:
        """A read ahead: like _dma_read, but None (not counted) when it fails."""
        if not self.bus_master:
            return bytes(size)
        try:
            data = self.dma.dma_read(addr & MASK64, size)
        except DmaError:
            return None
        return data if len(data) == size else None

    def _dma_write(self, addr: int, data: bytes) -> None:
        """pci_dma_write: dropped while bus mastering is off."""
        if not data or not self.bus_master:
            return
        try:
            self.dma.dma_write(addr & MASK64, data)
        except DmaError:
            self._dma_write_failed()

    def _dma_write_failed(self) -> None:
        """A DMA write raised DmaError: counted; under policy 'stop' the ring stops."""
        self.dma_errors += 1
        if self.dma_error_policy == "stop":
            raise _DmaAbort from None

    @staticmethod
    def _dma_write_dropped(addr: int, data: bytes) -> None:
        """pci_dma_write while bus mastering is off: nothing is written."""

    def _dma_flush(self) -> None:
        try:
            self.dma.dma_flush()
        except DmaError:
            self.dma_errors += 1

    # -- statistics helpers ---------------------------------------------------------------
    def _inc_reg(self, index: int) -> None:
        """e1000x_inc_reg_if_not_full: saturating increment."""
        if self.mac_reg[index] != MASK32:
            self.mac_reg[index] += 1

    def _count_frame(self, size_regs: tuple[int, ...], wire_size: int, tp_reg: int,
                     gp_reg: int, total_reg: int, good_reg: int, octets: int,
                     cast_reg: int) -> None:
        """One good frame's statistics in one call (the per-frame hot path):
        the size bucket, TPT/TPR, GPTC/GPRC, TOT/TOR and GOT/GOR (by ``octets``)
        and, when ``cast_reg`` >= 0, BPxC or MPxC; each saturates as in
        e1000x_inc_reg_if_not_full / e1000x_grow_8reg_if_not_full."""
        mac = self.mac_reg
        if wire_size > 1023:
            size_reg = size_regs[5]
        elif wire_size > 511:
            size_reg = size_regs[4]
        elif wire_size > 255:
            size_reg = size_regs[3]
        elif wire_size > 127:
            size_reg = size_regs[2]
        elif wire_size > 64:
            size_reg = size_regs[1]
        else:
            size_reg = size_regs[0] if wire_size == 64 else -1
        for index in (size_reg, tp_reg, gp_reg, cast_reg):
            if index >= 0 and mac[index] != MASK32:
                mac[index] += 1
        for index in (total_reg, good_reg):
            total = mac[index] | (mac[index + 1] << 32)
            total = min(total + octets, MASK64)
            mac[index] = total & MASK32
            mac[index + 1] = total >> 32

    def hw_stats(self) -> dict[str, int]:
        """The statistics registers, without the read-to-clear side effects."""
        mac = self.mac_reg
        out = {name: mac[index] for name, index in STATISTICS_REGISTERS.items()}
        out["GORC"] = mac[GORCL] | (mac[GORCH] << 32)
        out["GOTC"] = mac[GOTCL] | (mac[GOTCH] << 32)
        out["TOR"] = mac[TORL] | (mac[TORH] << 32)
        out["TOT"] = mac[TOTL] | (mac[TOTH] << 32)
        return out

    def drop_counters(self) -> dict[str, int]:
        """virtwire's drop counters (and dma_errors), for status output."""
        out = {k: v for k, v in asdict(self.drops).items() if k not in _DEFERRED}
        out["dma_errors"] = self.dma_errors
        return out

    def deferred_counters(self) -> dict[str, int]:
        """Work left for the next event-loop turn (slicing): nothing was lost."""
        return {k: getattr(self.drops, k) for k in _DEFERRED}

    # -- MMIO ------------------------------------------------------------------------------
    def mmio_read(self, offset: int) -> int:
        """A 32-bit read of BAR0 at ``offset``; unknown registers read 0.

        An unaligned access is split the way QEMU's memory core splits it:
        naturally aligned pieces, each dispatched as a 4-byte register read
        whose low bytes are kept.
        """
        offset = int(offset)
        if not offset & 3:
            return self._mmio_read_reg(offset)
        value = 0
        for addr, length, shift in self._split_access(offset):
            if addr < PNPMMIO_SIZE:
                piece = self._mmio_read_reg(addr) & ((1 << (8 * length)) - 1)
                value |= piece << shift
        return value & MASK32

    def mmio_write(self, offset: int, value: int) -> None:
        """A 32-bit write of ``value`` to BAR0 at ``offset`` (see mmio_read)."""
        offset = int(offset)
        value = int(value) & MASK32
        if not offset & 3:
            self._mmio_write_reg(offset, value)
            return
        for addr, length, shift in self._split_access(offset):
            if addr < PNPMMIO_SIZE:
                self._mmio_write_reg(addr, (value >> shift) & ((1 << (8 * length)) - 1))

    @staticmethod
    def _split_access(offset: int) -> list[tuple[int, int, int]]:
        """(address, length, bit shift) pieces of a 4-byte access (memory_access_size)."""
        addr = offset & (PNPMMIO_SIZE - 1)
        pieces = []
        done = 0
        while done < 4:
            length = 4 - done
            align = addr & -addr
            if align and align < length:
                length = align
            length = 1 << (length.bit_length() - 1)  # pow2floor
            pieces.append((addr, length, 8 * done))
            addr += length
            done += length
        return pieces

    def _mmio_read_reg(self, addr: int) -> int:
        """e1000_mmio_read."""
        if self._engaged_in_io:
            self.drops.mmio_reentrant += 1
            return 0
        self._engaged_in_io = True
        try:
            index = (addr & (PNPMMIO_SIZE - 1)) >> 2
            op = self._readops[index]
            return op(index) & MASK32 if op is not None else 0
        finally:
            self._engaged_in_io = False

    def _mmio_write_reg(self, addr: int, value: int) -> None:
        """e1000_mmio_write, then a DMA flush."""
        if self._engaged_in_io:
            self.drops.mmio_reentrant += 1
            return
        self._engaged_in_io = True
        owned = self.budget.begin()
        try:
            index = (addr & (PNPMMIO_SIZE - 1)) >> 2
            op = self._writeops[index]
            if op is not None:
                op(index, value)
        finally:
            if owned:
                self.budget.end()
            self._engaged_in_io = False
            try:  # _dma_flush, inline on the path of every register write
                self.dma.dma_flush()
            except DmaError:
                self.dma_errors += 1

    def _build_ops(self) -> tuple[list[ReadOp | None], list[WriteOp | None]]:
        """macreg_readops / macreg_writeops (every compat flag on, as QEMU 9 default)."""
        r: list[ReadOp | None] = [None] * MAC_REG_COUNT
        w: list[WriteOp | None] = [None] * MAC_REG_COUNT
        plain_r = (PBA, RCTL, TDH, TXDCTL, WUFC, TDT, CTRL, LEDCTL, MANC, MDIC, SWSM,
                   STATUS, TORL, TOTL, IMS, TCTL, RDH, RDT, VET, ICS, TDBAL, TDBAH, RDBAH,
                   RDBAL, TDLEN, RDLEN, RDTR, RADV, TADV, ITR, FCRUC, IPAV, WUC, WUS, SCC,
                   ECOL, MCC, LATECOL, COLC, DC, TNCRS, SEQEC, CEXTERR, RLEC, XONRXC,
                   XONTXC, XOFFRXC, XOFFTXC, RFC, RJC, RNBC, TSCTFC, MGTPRC, MGTPDC,
                   MGTPTC, GORCL, GOTCL, RDFH, RDFT, RDFHS, RDFTS, RDFPC, TDFH, TDFT,
                   TDFHS, TDFTS, TDFPC, AIT)
        ranges = [(CRCERRS, MPC + 1), (IP6AT, IP6AT + 4), (IP4AT, IP4AT + 7),
                  (FFLT, FFLT + 7), (RA, RA + 32), (WUPM, WUPM + 32),
                  (MTA, MTA + E1000_MC_TBL_SIZE), (VFTA, VFTA + E1000_VLAN_FILTER_TBL_SIZE),
                  (FFMT, FFMT + 255), (FFVT, FFVT + 255), (PBM, PBM + 16384)]
        for i in plain_r:
            r[i] = self._mac_readreg
        for lo, hi in ranges:
            for i in range(lo, hi):
                r[i] = self._mac_readreg
        for i in (TOTH, TORH, GOTCH, GORCH):
            r[i] = self._mac_read_clr8
        for i in (*_PRC_REGS, *_PTC_REGS, GPRC, GPTC, TPT, TPR, RUC, ROC, BPRC, MPRC,
                  TSCTC, BPTC, MPTC):
            r[i] = self._mac_read_clr4
        r[ICR] = self._mac_icr_read
        r[EECD] = self._get_eecd
        r[EERD] = self._flash_eerd_read

        for i in (PBA, EERD, SWSM, WUFC, TDBAL, TDBAH, TXDCTL, RDBAH, RDBAL, LEDCTL, VET,
                  FCRUC, IPAV, WUC, WUS):
            w[i] = self._mac_writereg
        for lo, hi in [(IP6AT, IP6AT + 4), (IP4AT, IP4AT + 7), (WUPM, WUPM + 32),
                       (MTA, MTA + E1000_MC_TBL_SIZE),
                       (VFTA, VFTA + E1000_VLAN_FILTER_TBL_SIZE), (FFVT, FFVT + 255),
                       (PBM, PBM + 16384)]:
            for i in range(lo, hi):
                w[i] = self._mac_writereg
        for i in range(RA, RA + 32):
            w[i] = self._set_ra
        for i in range(FFLT, FFLT + 7):
            w[i] = self._set_11bit
        for i in range(FFMT, FFMT + 255):
            w[i] = self._set_4bit
        w[TDLEN] = w[RDLEN] = self._set_dlen
        w[TCTL] = self._set_tctl
        w[TDT] = self._set_tdt
        w[MDIC] = self._set_mdic
        w[ICS] = self._set_ics_reg
        for i in (TDH, RDH, RDTR, RADV, TADV, ITR, AIT):
            w[i] = self._set_16bit
        w[RDT] = self._set_rdt
        w[IMC] = self._set_imc
        w[IMS] = self._set_ims
        w[ICR] = self._set_icr
        w[EECD] = self._set_eecd
        w[RCTL] = self._set_rx_control
        w[CTRL] = self._set_ctrl
        w[TDFH] = w[TDFT] = self._set_11bit
        for i in (TDFHS, TDFTS, TDFPC, RDFH, RDFT, RDFHS, RDFTS, RDFPC):
            w[i] = self._set_13bit
        return r, w

    # read ops
    def _mac_readreg(self, index: int) -> int:
        return self.mac_reg[index]

    def _mac_icr_read(self, index: int) -> int:
        ret = self.mac_reg[ICR]
        self.set_interrupt_cause(0)
        return ret

    def _mac_read_clr4(self, index: int) -> int:
        ret = self.mac_reg[index]
        self.mac_reg[index] = 0
        return ret

    def _mac_read_clr8(self, index: int) -> int:
        ret = self.mac_reg[index]
        self.mac_reg[index] = 0
        self.mac_reg[index - 1] = 0
        return ret

    def _get_eecd(self, index: int) -> int:
        return self.eeprom.read_eecd()

    def _flash_eerd_read(self, index: int) -> int:
        return self.eeprom.read_eerd(self.mac_reg[EERD])

    # write ops
    def _mac_writereg(self, index: int, val: int) -> None:
        self.mac_reg[index] = val

    def _set_ra(self, index: int, val: int) -> None:
        self.mac_reg[index] = val
        self._ra_cache = None
        if index == RA + 1:
            mac = self.mac_reg
            self._format_info_str(struct.pack("<II", mac[RA], mac[RA + 1])[:6])

    def _set_4bit(self, index: int, val: int) -> None:
        self.mac_reg[index] = val & 0xF

    def _set_11bit(self, index: int, val: int) -> None:
        self.mac_reg[index] = val & 0x7FF

    def _set_13bit(self, index: int, val: int) -> None:
        self.mac_reg[index] = val & 0x1FFF

    def _set_16bit(self, index: int, val: int) -> None:
        self.mac_reg[index] = val & MASK16

    def _set_dlen(self, index: int, val: int) -> None:
        self.mac_reg[index] = val & 0xFFF80

    def _set_tctl(self, index: int, val: int) -> None:
        self.mac_reg[index] = val
        self.mac_reg[TDT] &= MASK16
        self.start_xmit()

    def _set_tdt(self, index: int, val: int) -> None:
        """set_tctl for TDT (the doorbell of every transmit), with start_xmit's
        common case inline: TX enabled, not busy, no slice pending."""
        mac = self.mac_reg
        mac[TDT] = val & MASK16
        if (mac[TCTL] & E1000_TCTL_EN and not self.tx.busy
                and self._tx_resume_timer is None):
            self._tx_start = mac[TDH]
            self._xmit()
        else:
            self.start_xmit()

    def _set_ics_reg(self, index: int, val: int) -> None:
        self.set_ics(val)

    def _set_icr(self, index: int, val: int) -> None:
        self.set_interrupt_cause(self.mac_reg[ICR] & ~val)

    def _set_imc(self, index: int, val: int) -> None:
        self.mac_reg[IMS] &= ~val & MASK32
        self.set_ics(0)

    def _set_ims(self, index: int, val: int) -> None:
        self.mac_reg[IMS] |= val
        self.set_ics(0)

    def _set_ctrl(self, index: int, val: int) -> None:
        # RST is self-clearing, and QEMU does not reset anything for it.
        self.mac_reg[CTRL] = val & ~E1000_CTRL_RST & MASK32

    def _set_eecd(self, index: int, val: int) -> None:
        self.eeprom.write_eecd(val)

    def _set_rdt(self, index: int, val: int) -> None:
        self.mac_reg[index] = val & MASK16
        if self._has_rxbufs(1):
            self.flush_queued_packets()

    def _set_rx_control(self, index: int, val: int) -> None:
        mac = self.mac_reg
        mac[RCTL] = val
        self.rxbuf_size = rxbufsize(val)
        self.rxbuf_min_shift = ((val // E1000_RCTL_RDMTS_QUAT) & 3) + 1
        if self.rx_flush_timer:
            if self._flush_queue_timer is not None:
                self._flush_queue_timer.cancel()
            self._flush_queue_timer = self.scheduler.call_later(
                self._ms_deadline_delay(RX_FLUSH_DELAY_MS), self._flush_queue_timer_cb)

    def _set_mdic(self, index: int, val: int) -> None:
        """MDIC: PHY register access, completed at once (READY)."""
        data = val & E1000_MDIC_DATA_MASK
        addr = (val & E1000_MDIC_REG_MASK) >> E1000_MDIC_REG_SHIFT
        if (val & E1000_MDIC_PHY_MASK) >> E1000_MDIC_PHY_SHIFT != 1:
            val = self.mac_reg[MDIC] | E1000_MDIC_ERROR
        elif val & E1000_MDIC_OP_READ:
            if addr not in PHY_READABLE:
                val |= E1000_MDIC_ERROR
            else:
                val = (val ^ data) | self.phy_reg[addr]
        elif val & E1000_MDIC_OP_WRITE:
            if addr not in PHY_WRITABLE:
                val |= E1000_MDIC_ERROR
            elif addr == MII_BMCR:
                self._set_phy_ctrl(data)
            else:
                self.phy_reg[addr] = data
        self.mac_reg[MDIC] = val | E1000_MDIC_READY
        if val & E1000_MDIC_INT_EN:
            self.set_ics(E1000_ICR_MDAC)

    # -- transmit -------------------------------------------------------------------------
    def start_xmit(self) -> None:
        """Process TX descriptors from TDH up to TDT; ends with ICS TXQE.

        Bounded: TDH wraps at TDLEN/16 and the loop stops when it comes back to
        where it started (or started outside the ring). Sliced: past the budget
        the rest resumes from the event loop (``_tx_resume_cb``); while that is
        pending a TDT or TCTL write only restarts the wrap check from the
        current TDH. Clearing TCTL.EN cancels pending work.
        """
        mac = self.mac_reg
        if not mac[TCTL] & E1000_TCTL_EN:
            self._tx_cancel()
            return
        if self.tx.busy:
            return
        self._tx_start = mac[TDH]
        if self._tx_resume_timer is not None:
            return
        self._xmit()

    def _xmit(self) -> None:
        """The start_xmit loop, from where the last slice stopped."""
        mac = self.mac_reg
        tp = self.tx
        budget = self.budget
        cause = E1000_ICR_TXQE
        work = tp.work
        if work is not None and work.index != mac[TDH]:
            self._tx_drop_work()  # the guest moved TDH under a pending slice
            self.drops.tx_cancelled += 1
            self._tx_start = mac[TDH]
            work = None
        tdh_start = self._tx_start
        done = True
        tp.busy = True
        try:
            while work is not None or mac[TDH] != mac[TDT]:
                if work is None:
                    base = ((mac[TDBAH] << 32) + (mac[TDBAL] & ~0xF)
                            + DESC_SIZE * mac[TDH]) & MASK64
                    try:
                        desc = self._dma_read(base, DESC_SIZE)
                    except _DmaAbort:
                        self.drops.tx_dma_errors += 1
                        break
                    budget.charge(1)
                    work = TxDescWork(mac[TDH], base, desc)
                try:
                    finished = self.process_tx_desc(work)
                except _DmaAbort:
                    # The packet being gathered is lost; stay on this descriptor.
                    self.drops.tx_dma_errors += 1
                    tp.work = None
                    tp.end_packet()
                    break
                if not finished:
                    tp.work = work
                    done = False
                    break
                tp.work = None
                stop = False
                try:
                    cause |= self._txdesc_writeback(work.base, work.desc)
                except _DmaAbort:
                    self.drops.tx_dma_errors += 1
                    stop = True
                work = None
                mac[TDH] += 1
                if mac[TDH] * DESC_SIZE >= mac[TDLEN]:
                    mac[TDH] = 0
                if stop or mac[TDH] == tdh_start or tdh_start >= mac[TDLEN] // DESC_SIZE:
                    break
                if mac[TDH] != mac[TDT] and budget.spent():
                    done = False
                    break
        finally:
            tp.busy = False
        if done:
            self.set_interrupt_cause(cause | mac[ICR])  # set_ics
            return
        self.drops.tx_sliced += 1
        self._tx_resume_timer = self.scheduler.call_later(0, self._tx_resume_cb)
        if cause & E1000_ICR_TXDW:
            self.set_ics(E1000_ICR_TXDW)  # descriptors done so far can be reclaimed

    def _tx_resume_cb(self) -> None:
        """The next slice of TX work: like the MMIO write that started it, under
        the re-entrancy guard, with its own budget and a DMA flush at the end."""
        self._tx_resume_timer = None
        if self._engaged_in_io:  # a clock stepped from inside a device operation
            self._tx_resume_timer = self.scheduler.call_later(0, self._tx_resume_cb)
            return
        self._engaged_in_io = True
        owned = self.budget.begin()
        try:
            if self.mac_reg[TCTL] & E1000_TCTL_EN:
                self._xmit()
            else:
                self._tx_cancel()
        finally:
            if owned:
                self.budget.end()
            self._engaged_in_io = False
            self._dma_flush()

    def _tx_drop_work(self) -> None:
        """Drop a descriptor a slice stopped inside, and the packet it was building."""
        if self.tx.work is not None:
            self.tx.work = None
            self.tx.end_packet()

    def _tx_cancel(self) -> None:
        """Reset or TX disabled: pending sliced work is dropped (counted)."""
        pending = self._tx_resume_timer is not None or self.tx.work is not None
        if self._tx_resume_timer is not None:
            self._tx_resume_timer.cancel()
            self._tx_resume_timer = None
        self._tx_drop_work()
        if pending:
            self.drops.tx_cancelled += 1

    def _txdesc_writeback(self, base: int, desc: bytes) -> int:
        """Set DD in the descriptor's upper dword if RS or RPS asked for it (QEMU
        writes back only that dword)."""
        _addr, lower, upper = TX_DESC.unpack(desc)
        if not lower & (E1000_TXD_CMD_RS | E1000_TXD_CMD_RPS):
            return 0
        upper = (upper | E1000_TXD_STAT_DD) & _TXD_STAT_CLEAR
        self._dma_write(base + TX_DESC_UPPER_OFFSET, upper.to_bytes(4, "little"))
        return E1000_ICR_TXDW

    def process_tx_desc(self, work: TxDescWork) -> bool:
        """One TX descriptor: context, data (DEXT|DTYP_D) or legacy.

        Returns False when the budget ran out inside a TSO burst: ``work``
        then holds where to go on (QEMU's addr and split_size).
        """
        buffer_addr, txd_lower, txd_upper = TX_DESC.unpack(work.desc)
        tp = self.tx
        if not work.started:
            work.started = True
            if not self._tx_desc_begin(work, buffer_addr, txd_lower, txd_upper):
                return True
        if tp.cptse:
            if not self._tso_gather(work):
                return False
        else:
            split_size = min(TX_BUFFER_SIZE - tp.size, work.split_size)
            tp.data[tp.size:tp.size + split_size] = self._dma_read(work.addr, split_size)
            tp.size = (tp.size + split_size) & MASK16
            if split_size >> 10:  # (_xmit charged this descriptor already)
                self.budget.charge(split_size >> 10)

        # eop:
        if not txd_lower & E1000_TXD_CMD_EOP:
            return True
        if not (tp.cptse and tp.size < tp.tso_props.hdr_len):
            self.xmit_seg()
        # tp.end_packet(), inline:
        tp.tso_frames = tp.sum_needed = tp.size = 0
        tp.vlan_needed = tp.cptse = False
        return True

    def _tx_desc_begin(self, work: TxDescWork, buffer_addr: int, txd_lower: int,
                       txd_upper: int) -> bool:
        """The first part of process_tx_desc; False for a context descriptor (done)."""
        tp = self.tx
        dtype = txd_lower & (E1000_TXD_CMD_DEXT | E1000_TXD_DTYP_D)
        self.mit_ide |= txd_lower & E1000_TXD_CMD_IDE
        if dtype == E1000_TXD_CMD_DEXT:  # context descriptor
            props = TxdProps.from_context(work.desc)
            if txd_lower & E1000_TXD_CMD_TSE:
                tp.tso_props = props
                tp.tso_frames = 0
            else:
                tp.props = props
            return False
        if dtype == E1000_TXD_CMD_DEXT | E1000_TXD_DTYP_D:  # data descriptor
            if tp.size == 0:
                tp.sum_needed = (txd_upper >> 8) & 0xFF
            tp.cptse = bool(txd_lower & E1000_TXD_CMD_TSE)
        else:  # legacy descriptor
            tp.cptse = False

        mac = self.mac_reg
        if (mac[CTRL] & E1000_CTRL_VME and txd_lower & E1000_TXD_CMD_VLE
                and (tp.cptse or txd_lower & E1000_TXD_CMD_EOP)):
            tp.vlan_needed = True
            tp.vlan_header[:] = struct.pack(">HH", mac[VET] & MASK16, txd_upper >> 16)
        work.addr = buffer_addr
        work.split_size = txd_lower & MASK16
        return True

    def _tso_gather(self, work: TxDescWork) -> bool:
        """QEMU's TSO loop: gather hdr_len + mss bytes, send a segment, replay the
        header; False when the budget ran out between two segments."""
        tp = self.tx
        hdr_len = tp.tso_props.hdr_len
        msh = hdr_len + tp.tso_props.mss
        addr = work.addr
        split_size = work.split_size
        budget = self.budget
        while True:
            nbytes = split_size
            if tp.size >= msh:
                break  # goto eop
            if tp.size + nbytes > msh:
                nbytes = msh - tp.size
            nbytes = min(TX_BUFFER_SIZE - tp.size, nbytes)
            chunk = self._dma_read(addr, nbytes)
            tp.data[tp.size:tp.size + nbytes] = chunk
            sz = tp.size + nbytes
            if sz >= hdr_len and tp.size < hdr_len:
                tp.header[:hdr_len] = tp.data[:hdr_len]
            tp.size = sz & MASK16
            addr = (addr + nbytes) & MASK64
            if sz == msh:
                self.xmit_seg()
                tp.data[:hdr_len] = tp.header[:hdr_len]
                tp.size = hdr_len
            split_size -= nbytes
            if not (nbytes and split_size):
                break
            if budget.spent():
                work.addr, work.split_size = addr, split_size
                return False
        work.addr, work.split_size = addr, split_size
        return True

    def xmit_seg(self) -> None:
        """Send the gathered packet (or one TSO segment), with header fix-ups,
        checksums and VLAN insertion."""
        tp = self.tx
        data = tp.data
        size = tp.size
        frames = tp.tso_frames
        props = tp.tso_props if tp.cptse else tp.props
        if tp.cptse:
            css = props.ipcss
            if props.ip:  # IPv4: total length and ID
                _put16(data, css + 2, size - css)
                _put16(data, css + 4, _get16(data, css + 4) + frames)
            else:  # IPv6: payload length field (QEMU stores size - ipcss)
                _put16(data, css + 4, size - css)
            css = props.tucss
            length = (size - css) & MASK16
            if props.tcp:
                sofar = (frames * props.mss) & MASK32
                seq = int.from_bytes(data[css + 4:css + 8], "big")
                data[css + 4:css + 8] = ((seq + sofar) & MASK32).to_bytes(4, "big")
                if ((props.paylen - sofar) & MASK32) > props.mss:
                    data[css + 13] &= ~9 & 0xFF  # PSH, FIN only on the last segment
                elif frames:
                    self._inc_reg(TSCTC)
            else:  # UDP length
                _put16(data, css + 4, length)
            if tp.sum_needed & E1000_TXD_POPTS_TXSM:
                # Add the segment's length to the pseudo-header sum.
                sp = props.tucso
                phsum = _get16(data, sp) + length
                phsum = (phsum >> 16) + (phsum & MASK16)
                _put16(data, sp, phsum)
            tp.tso_frames = (tp.tso_frames + 1) & MASK16

        if tp.sum_needed & E1000_TXD_POPTS_TXSM:
            putsum(data, size, props.tucso, props.tucss, props.tucse)
        if tp.sum_needed & E1000_TXD_POPTS_IXSM:
            putsum(data, size, props.ipcso, props.ipcss, props.ipcse)
        if tp.vlan_needed:
            tp.vlan[:] = data[0:4]
            data[0:8] = data[4:12]
            data[8:12] = tp.vlan_header
            dest = bytes(tp.vlan) + bytes(data[0:2])
            frame = bytes(tp.vlan) + bytes(memoryview(data)[:size])
        else:
            dest = bytes(data[0:6])
            frame = bytes(memoryview(data)[:size])
        self._e1000_send_packet(frame, dest, size)

    def _e1000_send_packet(self, frame: bytes, dest: bytes, size: int) -> None:
        """e1000_send_packet: out to the peer, or back to ourselves in PHY loopback;
        then its statistics and xmit_seg's (TPT, TOT, GPTC, GOT by ``size`` + 4)."""
        self.budget.charge(1 + (len(frame) >> 10))
        if self.phy_reg[MII_BMCR] & MII_BMCR_LOOPBACK:
            self._in_loopback = True
            try:
                ret = self.receive_packet(frame)
            finally:
                self._in_loopback = False
            if ret == 0:
                self.drops.loopback_refused += 1
        else:
            self.send_packet(frame)
        # QEMU classifies by the buffer's first 6 bytes even for shorter frames.
        cast = BPTC if dest == _BROADCAST else MPTC if dest[0] & 1 else -1
        self._count_frame(_PTC_REGS, len(frame) + 4, TPT, GPTC, TOTL, GOTCL, size + 4, cast)

    # -- receive ---------------------------------------------------------------------------
    def _has_rxbufs(self, total_size: int) -> bool:
        """e1000_has_rxbufs, with QEMU's integer widths."""
        mac = self.mac_reg
        rdh, rdt = mac[RDH], mac[RDT]
        if total_size <= self.rxbuf_size:
            return rdh != rdt
        if rdh < rdt:
            bufs = rdt - rdh
        elif rdh > rdt:
            bufs = mac[RDLEN] // DESC_SIZE + rdt - rdh
        else:
            return False
        return total_size <= (bufs * self.rxbuf_size) & MASK32

    def can_receive(self) -> bool:
        """e1000_can_receive: link up, RX enabled, bus master, a free buffer,
        and not within 1 s of an RCTL write."""
        mac = self.mac_reg
        return bool(mac[STATUS] & E1000_STATUS_LU and mac[RCTL] & E1000_RCTL_EN
                    and self.bus_master and self._has_rxbufs(1)
                    and self._flush_queue_timer is None)

    def _is_oversized(self, size: int) -> bool:
        """e1000x_is_oversized (counts ROC)."""
        rctl = self.mac_reg[RCTL]
        if self._qemu72:  # before QEMU 8.1 the limits included the FCS
            lpe_max, vlan_max = MAXIMUM_ETHERNET_LPE_SIZE + 4, MAXIMUM_ETHERNET_VLAN_SIZE + 4
        else:
            lpe_max, vlan_max = MAXIMUM_ETHERNET_LPE_SIZE, MAXIMUM_ETHERNET_VLAN_SIZE
        if ((size > lpe_max or (size > vlan_max and not rctl & E1000_RCTL_LPE))
                and not rctl & E1000_RCTL_SBP):
            self._inc_reg(ROC)
            return True
        return False

    def _ra_addresses(self) -> list[bytes]:
        if self._ra_cache is None:
            mac = self.mac_reg
            self._ra_cache = [
                struct.pack("<II", mac[RA + 2 * i], mac[RA + 2 * i + 1])[:6]
                for i in range(E1000_RAR_ENTRIES) if mac[RA + 2 * i + 1] & E1000_RAH_AV]
        return self._ra_cache

    def _rx_group_filter(self, dest: bytes) -> bool:
        """e1000x_rx_group_filter: broadcast/multicast/unicast, RA, then MTA hash."""
        mac = self.mac_reg
        rctl = mac[RCTL]
        if dest == _BROADCAST:
            if rctl & E1000_RCTL_BAM:
                return True
        elif dest[0] & 1:
            if rctl & E1000_RCTL_MPE:
                return True
        elif rctl & E1000_RCTL_UPE:
            return True
        return self._rx_exact_or_hash(dest)

    def _rx_exact_or_hash(self, dest: bytes) -> bool:
        """The 16 receive addresses (with AV), then the MTA hash."""
        mac = self.mac_reg
        if dest in self._ra_addresses():
            return True
        f = _MTA_SHIFT[(mac[RCTL] >> E1000_RCTL_MO_SHIFT) & 3]
        f = (((dest[5] << 8) | dest[4]) >> f) & 0xFFF
        if mac[MTA + (f >> 5)] & (1 << (f & 0x1F)):
            if self._qemu72:
                self._inc_reg(MPRC)  # QEMU 7.2 counts every hash match
            return True
        return False

    def _rx_group_filter_72(self, dest: bytes) -> bool:
        """QEMU 7.2's receive_filter: UPE for unicast, MPE for any group address
        (broadcast included), BAM for broadcast; BPRC/MPRC count these matches."""
        rctl = self.mac_reg[RCTL]
        isbcast = dest == _BROADCAST
        ismcast = bool(dest[0] & 1)
        if not isbcast and not ismcast and rctl & E1000_RCTL_UPE:
            return True
        if ismcast and rctl & E1000_RCTL_MPE:
            self._inc_reg(MPRC)
            return True
        if isbcast and rctl & E1000_RCTL_BAM:
            self._inc_reg(BPRC)
            return True
        return self._rx_exact_or_hash(dest)

    def _receive_filter(self, hdr: bytes, is_vlan: bool) -> bool:
        """receive_filter: the VLAN filter (VFE), then the group filter."""
        mac = self.mac_reg
        if is_vlan and mac[RCTL] & E1000_RCTL_VFE:
            vid = (hdr[14] << 8) | hdr[15]
            if not mac[VFTA + ((vid >> 5) & 0x7F)] & (1 << (vid & 0x1F)):
                return False
        if self._qemu72:
            return self._rx_group_filter_72(hdr[0:6])
        return self._rx_group_filter(hdr[0:6])

    def _rx_null_run(self, rdba: int, rdh_start: int, special: int, vp: int) -> bool:
        """Write back the null-buffer descriptors that follow at RDH, many at a
        time, leaving RDH on the next one with a buffer. The bytes written are
        those of QEMU's loop (status | DD | VP, special), so only the speed
        differs. True when RDH came back to ``rdh_start`` (an overrun). A chunk
        that cannot be read is left to the one-descriptor path."""
        mac = self.mac_reg
        n_ring = mac[RDLEN] // DESC_SIZE
        if rdh_start >= n_ring:
            return False
        status_table = _NULL_DESC_STATUS[vp]
        lo, hi = bytes((special & 0xFF,)), bytes((special >> 8,))
        chunk = RX_NULL_RUN_MIN
        while True:
            rdh = mac[RDH]
            limit = min(n_ring - rdh, (rdh_start - rdh - 1) % n_ring + 1, chunk)
            chunk = min(2 * chunk, RX_NULL_RUN_MAX)
            base = (rdba + DESC_SIZE * rdh) & MASK64
            raw = self._dma_read_quiet(base, limit * DESC_SIZE)
            if raw is None:
                return False
            run = _null_run(raw, limit)
            if run == 0:
                return False
            buf = bytearray(raw[:run * DESC_SIZE])
            buf[RX_DESC_STATUS_OFFSET::DESC_SIZE] = \
                buf[RX_DESC_STATUS_OFFSET::DESC_SIZE].translate(status_table)
            buf[14::DESC_SIZE] = lo * run
            buf[15::DESC_SIZE] = hi * run
            self._dma_write(base, bytes(buf))
            self.budget.charge(1 + (run >> 6))
            rdh += run
            mac[RDH] = 0 if rdh >= n_ring else rdh
            if mac[RDH] == rdh_start:
                return True
            if run < limit:
                return False

    def _receiver_overrun(self) -> None:
        self._inc_reg(RNBC)
        self._inc_reg(MPC)
        self.drops.rx_no_buffers += 1
        self.set_ics(E1000_ICS_RXO)

    def receive_iov(self, data: bytes) -> int:
        """e1000_receive_iov (the same as ``receive``)."""
        return self.receive(data)

    def receive(self, data: bytes) -> int:
        """e1000_receive_iov, under the NIC's re-entrancy guard, then a DMA flush.

        A frame that arrives outside any device operation (from the peer) opens
        a slice that lasts until the next turn of the event loop, so that the
        frames delivered in one turn (a batch from a link, the queue a
        successful send flushes behind it) share one budget.
        """
        if not self.budget.active:
            self.budget.begin()
            self.scheduler.call_later(0, self.budget.end)
        if type(data) is TracedFrame:
            return self._receive_traced(data)
        owned = not self._engaged_in_io
        self._engaged_in_io = True
        try:
            ret = self._receive_iov(bytes(data))
        finally:
            if owned:
                self._engaged_in_io = False
            try:  # _dma_flush, inline on the path of every frame
                self.dma.dma_flush()
            except DmaError:
                self.dma_errors += 1
        return ret

    def _receive_traced(self, data: TracedFrame) -> int:
        """``receive`` of a traced frame, with its spans (docs/tracing.md):
        e1000.receive (the whole receive, descriptors written back and flushed),
        and as its children dma.write (the frame's data and descriptor DMA and
        the flush that commits it) and irq (the cause set, until the line is up:
        at once when it rises or is already high, ``raised`` telling which; at
        the mitigation timer when that defers it).

        ``rx_trace(desc, irq_ctx)`` learns the frame's first RX descriptor and
        the irq span's context before the line changes, so that whatever tells
        the guest of the interrupt can carry the trace with it."""
        mac = self.mac_reg
        start = now_ns()
        rdh = mac[RDH]
        irq_before = self.irq_level
        span = begin("e1000.receive", data.ctx, start,
                     {"netclient": self.name, "frame.len": len(data), "rx.desc": rdh})
        ctx = span.get_span_context()
        levels: list[bool] = []
        set_irq = self._set_irq
        self._set_irq = levels.append  # held back until the trace is reported
        owned = not self._engaged_in_io
        self._engaged_in_io = True
        ret = -1
        try:
            ret = self._receive_iov(bytes(data))
        finally:
            self._set_irq = set_irq
            if owned:
                self._engaged_in_io = False
            cause_ns = now_ns()
            try:
                self.dma.dma_flush()
            except DmaError:
                self.dma_errors += 1
            end = now_ns()
            try:
                if ret > 0 and mac[RDH] != rdh:
                    self._trace_rx_done(ctx, rdh, ret, start, cause_ns, end, irq_before)
            finally:
                for level in levels:
                    set_irq(level)
                span.set_attribute("ret", ret)
                span.end(end_time=now_ns())
        return ret

    def _trace_rx_done(self, ctx: SpanContext, rdh: int, size: int, start: int,
                       cause_ns: int, end: int, irq_before: bool) -> None:
        """dma.write and irq for a traced frame written back at descriptor ``rdh``."""
        mac = self.mac_reg
        descs = (mac[RDH] - rdh) % max(1, mac[RDLEN] // DESC_SIZE)
        add_span("dma.write", ctx, start, end,
                 {"netclient": self.name, "bytes": size, "rx.descriptors": descs,
                  "path": getattr(self.dma, "path", "local")})
        pending = mac[IMS] & mac[ICR]
        deferred = bool(pending) and not self.irq_level and self.mit_timer_on
        irq = begin("irq", ctx, cause_ns, {"netclient": self.name, "icr": mac[ICR],
                                           "rx.desc": rdh})
        if deferred and len(self._irq_spans) < MAX_OPEN_IRQ_SPANS:
            irq.set_attribute("mitigated", "true")
            self._irq_spans.append(irq)  # ends when the mitigation timer raises the line
        else:
            irq.set_attribute("raised", str(self.irq_level and not irq_before).lower())
            irq.set_attribute("level", str(self.irq_level).lower())
            irq.end(end_time=now_ns())
        sink = self.rx_trace
        if sink is not None:
            sink(rdh, irq.get_span_context())

    def _end_irq_spans(self, raised: bool) -> None:
        """The line rose (or the device reset): end the irq spans it deferred."""
        spans, self._irq_spans = self._irq_spans, []
        t = now_ns()
        for irq in spans:
            irq.set_attribute("raised", str(raised).lower())
            irq.set_attribute("level", str(self.irq_level).lower())
            irq.end(end_time=t)

    def _receive_iov(self, data: bytes) -> int:
        mac = self.mac_reg
        if not mac[STATUS] & E1000_STATUS_LU:
            self.drops.rx_link_down += 1
            return -1
        if not mac[RCTL] & E1000_RCTL_EN:
            self.drops.rx_disabled += 1
            return -1
        if self._flush_queue_timer is not None:
            self.drops.rx_deferred += 1
            return 0
        if self.budget.spent() and not (self._in_loopback or self._rx_no_defer):
            # Past this slice's budget: stay queued, the next turn flushes.
            self.drops.rx_sliced += 1
            if self._rx_flush_timer is None:
                self._rx_flush_timer = self.scheduler.call_later(0, self._rx_flush_cb)
            return 0
        qemu72 = self._qemu72
        if qemu72 and len(data) < MIN_BUF_SIZE_72:
            data = data.ljust(MIN_BUF_SIZE_72, b"\0")  # QEMU 7.2 pads short frames
        size = len(data)
        consumed = size or 1  # never 0 ("queue it") for an empty frame
        hdr = data if size >= MAXIMUM_ETHERNET_HDR_LEN else data.ljust(
            MAXIMUM_ETHERNET_HDR_LEN, b"\0")
        rctl = mac[RCTL]
        # e1000x_is_oversized's limits can only be passed by a frame over 1518 bytes.
        if size > MAXIMUM_ETHERNET_VLAN_SIZE and self._is_oversized(size):
            self.drops.rx_oversize += 1
            return consumed
        is_vlan = size >= 14 and ((hdr[12] << 8) | hdr[13]) == mac[VET] & MASK16
        # The common case first: an untagged unicast frame for one of the receive
        # addresses (the group filter's RA match), without UPE, on QEMU 9.
        ra = self._ra_cache
        if (is_vlan or qemu72 or ra is None or hdr[0] & 1 or rctl & E1000_RCTL_UPE
                or hdr[0:6] not in ra) and not self._receive_filter(hdr, is_vlan):
            self.drops.rx_filtered += 1
            return consumed

        vlan_special = 0
        vlan_status = 0
        payload = data
        dest = hdr[0:6]
        if mac[CTRL] & E1000_CTRL_VME and is_vlan:
            vlan_special = (hdr[14] << 8) | hdr[15]
            payload = (data[0:12] + data[16:])[:size - 4]
            if size >= MAXIMUM_ETHERNET_HDR_LEN:
                # QEMU moves the addresses in place before classifying the frame.
                dest = data[0:4] + data[0:2]
            vlan_status = E1000_RXD_STAT_VP
            size -= 4

        rdh_start = mac[RDH]
        desc_offset = 0
        total_size = size + (0 if rctl & E1000_RCTL_SECRC else 4)
        rxbuf_size = self.rxbuf_size
        if (rdh_start == mac[RDT] if total_size <= rxbuf_size
                else not self._has_rxbufs(total_size)):
            self._receiver_overrun()
            return -1
        rdba = (mac[RDBAH] << 32) + (mac[RDBAL] & ~0xF)
        budget = self.budget
        budget.charge(1 + (size >> 10))
        # _dma_write inline (three writes per descriptor): every write below
        # has data, and bus mastering cannot change inside the loop.
        dma_write = self.dma.dma_write if self.bus_master else self._dma_write_dropped
        try:
            while True:
                budget.charge(1)
                desc_size = min(total_size - desc_offset, rxbuf_size)
                base = (rdba + DESC_SIZE * mac[RDH]) & MASK64
                raw = self._dma_read(base, DESC_SIZE)
                buffer_addr, length, csum, status, errors, _special = RX_DESC.unpack(raw)
                status &= ~E1000_RXD_STAT_DD
                if buffer_addr:
                    if desc_offset < size:
                        copy_size = min(size - desc_offset, rxbuf_size)
                        try:
                            dma_write(buffer_addr, payload[desc_offset:desc_offset + copy_size])
                        except DmaError:
                            self._dma_write_failed()
                    desc_offset += desc_size
                    length = desc_size & MASK16
                    if desc_offset >= total_size:
                        status |= E1000_RXD_STAT_EOP | E1000_RXD_STAT_IXSM
                    else:
                        status &= ~E1000_RXD_STAT_EOP
                # else: a null buffer address; written back with DD, skipped.
                try:
                    dma_write(base, RX_DESC.pack(buffer_addr, length, csum, status, errors,
                                                 vlan_special))
                except DmaError:
                    self._dma_write_failed()
                status |= vlan_status | E1000_RXD_STAT_DD
                try:
                    dma_write((base + RX_DESC_STATUS_OFFSET) & MASK64, bytes((status,)))
                except DmaError:
                    self._dma_write_failed()
                mac[RDH] += 1
                if mac[RDH] * DESC_SIZE >= mac[RDLEN]:
                    mac[RDH] = 0
                if mac[RDH] == rdh_start or rdh_start >= mac[RDLEN] // DESC_SIZE:
                    self._receiver_overrun()
                    return -1
                if desc_offset >= total_size:
                    break
                if not buffer_addr and self._rx_null_run(rdba, rdh_start, vlan_special,
                                                         vlan_status):
                    self._receiver_overrun()
                    return -1
        except _DmaAbort:
            self.drops.rx_dma_errors += 1
            return -1

        # e1000x_update_rx_total_stats (QEMU 7.2 counted BPRC/MPRC in the filter instead)
        cast = (-1 if qemu72 else BPRC if dest == _BROADCAST else MPRC if dest[0] & 1
                else -1)
        self._count_frame(_PRC_REGS, total_size, TPR, GPRC, TORL, GORCL, size + 4, cast)

        n = E1000_ICS_RXT0
        rdt = mac[RDT]
        if rdt < mac[RDH]:
            rdt += mac[RDLEN] // DESC_SIZE
        if ((rdt - mac[RDH]) & MASK32) * DESC_SIZE <= mac[RDLEN] >> self.rxbuf_min_shift:
            n |= E1000_ICS_RXDMT0
        self.set_interrupt_cause(n | mac[ICR])  # set_ics
        return size or consumed
