"""Programs for an e1000, run against QEMU (qtest) and virtwire's model, traces compared.

A program is a list of operations (dataclasses below): register writes and
reads, guest-memory writes and reads, frames arriving from the wire, virtual
time, link changes. :func:`run` executes one on a :class:`Backend` and returns
the :class:`Trace`: every recorded value (register and memory reads, the frames
the NIC put on the wire) plus every change of the interrupt line, each tagged
with the operation that produced it. Two backends exist:

* :class:`QemuBackend`: QEMU's own e1000 through ``support.qtest``.
* :class:`VirtwireBackend`: ``virtwire.hw.e1000.E1000`` in-process, with guest
  RAM in a ``RamDma``, time from a ``ManualScheduler`` and a recording NetClient
  as its peer (the wire).

:func:`compare` runs the same program on both and :func:`format_diff` prints
which operation differs and both values.

Semantics shared by both backends (they are QEMU's, with the VM paused between
operations; see the ``support.qtest`` docstring for why):

* ``InjectFrame``: the frame is queued for the NIC as if the VM were paused,
  then the NIC's queue is flushed as a PCI COMMAND write with bus master set
  does. So the frame is received (or dropped, counted) at once, unless the NIC
  refuses it for now (RX flush timer pending): then it waits in the queue. A
  link that is down drops it.
* ``ClockStep(ns)``: the VM runs for ``ns`` (a positive multiple of
  :data:`CLOCK_QUANTUM_NS`), in runs of at most :data:`MAX_RUN_NS`; each run
  really lasts :data:`RUN_OVERHEAD_NS` longer than asked. A run starts by
  flushing the NIC's queue if it can receive and ends by flushing it and
  purging what it still refuses (QEMU's net_vm_change_state_handler).
* Transmitted frames wait in the netdev's queue while the VM is paused and go
  out when it runs (a link that went down meanwhile drops them). ``CollectTx``
  therefore runs the VM for :data:`MIN_RUN_NS` (plus the overhead) first, then
  records the frames that reached the wire.
* A write to RCTL is followed by a run of :data:`RCTL_SETTLE_NS` (past QEMU's
  1 s RX block) unless :func:`run` is told otherwise.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

from virtwire.hw.dma import RamDma
from virtwire.hw.e1000 import E1000
from virtwire.hw.timer import ManualScheduler
from virtwire.net.net import NetClient

from support.qtest import CLOCK_QUANTUM_NS as CLOCK_QUANTUM_NS
from support.qtest import MAX_RUN_NS as MAX_RUN_NS
from support.qtest import MIN_RUN_NS as MIN_RUN_NS
from support.qtest import RAM_DMA_START as RAM_DMA_START
from support.qtest import RAM_SIZE as RAM_SIZE
from support.qtest import RUN_OVERHEAD_NS as RUN_OVERHEAD_NS
from support.qtest import QtestE1000, qemu_compat

DEFAULT_MAC = bytes.fromhex("525400123456")
MODELS = ("82540EM", "82544GC", "82545EM")

# ---------------------------------------------------------------------------- registers
CTRL, STATUS, EECD, EERD, MDIC, VET = 0x0000, 0x0008, 0x0010, 0x0014, 0x0020, 0x0038
ICR, ITR, ICS, IMS, IMC = 0x00C0, 0x00C4, 0x00C8, 0x00D0, 0x00D8
RCTL, TCTL, TIPG, LEDCTL, PBA = 0x0100, 0x0400, 0x0410, 0x0E00, 0x1000
RDBAL, RDBAH, RDLEN, RDH, RDT, RDTR, RADV = 0x2800, 0x2804, 0x2808, 0x2810, 0x2818, 0x2820, 0x282C
TDBAL, TDBAH, TDLEN, TDH, TDT, TIDV, TADV = 0x3800, 0x3804, 0x3808, 0x3810, 0x3818, 0x3820, 0x382C
CRCERRS, MPC = 0x4000, 0x4010
PRC64, PRC127, PRC255, PRC511, PRC1023, PRC1522 = 0x405C, 0x4060, 0x4064, 0x4068, 0x406C, 0x4070
GPRC, BPRC, MPRC, GPTC = 0x4074, 0x4078, 0x407C, 0x4080
GORCL, GORCH, GOTCL, GOTCH = 0x4088, 0x408C, 0x4090, 0x4094
RNBC, RUC, ROC = 0x40A0, 0x40A4, 0x40AC
TORL, TORH, TOTL, TOTH, TPR, TPT = 0x40C0, 0x40C4, 0x40C8, 0x40CC, 0x40D0, 0x40D4
PTC64, PTC127, PTC255, PTC511, PTC1023, PTC1522 = 0x40D8, 0x40DC, 0x40E0, 0x40E4, 0x40E8, 0x40EC
MPTC, BPTC, TSCTC = 0x40F0, 0x40F4, 0x40F8
MTA, RA, VFTA, WUC, MANC = 0x5200, 0x5400, 0x5600, 0x5800, 0x5820

REG_NAMES: dict[int, str] = {
    value: name for name, value in list(globals().items())
    if name.isupper() and isinstance(value, int) and name not in {"RAM_SIZE", "MAX_RUN_NS"}
    and 0 <= value < 0x20000 and not name.startswith(("CLOCK", "RAM", "RUN", "DEFAULT"))
}


def reg_name(offset: int) -> str:
    """CTRL, RDT, MTA[5], RAH[1], VFTA[3]... or the hex offset."""
    if offset in REG_NAMES:
        return REG_NAMES[offset]
    if MTA <= offset < MTA + 0x200:
        return f"MTA[{(offset - MTA) // 4}]"
    if RA <= offset < RA + 0x80:
        return f"{'RAH' if offset & 4 else 'RAL'}[{(offset - RA) // 8}]"
    if VFTA <= offset < VFTA + 0x200:
        return f"VFTA[{(offset - VFTA) // 4}]"
    return f"{offset:#x}"


# Bits (QEMU's e1000_regs.h names).
CTRL_SLU, CTRL_RST, CTRL_VME = 0x40, 0x0400_0000, 0x4000_0000
RCTL_EN, RCTL_SBP, RCTL_UPE, RCTL_MPE, RCTL_LPE = 0x2, 0x4, 0x8, 0x10, 0x20
RCTL_RDMTS_HALF, RCTL_MO_SHIFT, RCTL_BAM = 0x000, 12, 0x8000
RCTL_SZ_1024, RCTL_SZ_512, RCTL_SZ_256 = 0x10000, 0x20000, 0x30000
RCTL_VFE, RCTL_BSEX, RCTL_SECRC = 0x40000, 0x0200_0000, 0x0400_0000
TCTL_EN, TCTL_PSP = 0x2, 0x8
ICR_TXDW, ICR_TXQE, ICR_LSC, ICR_RXDMT0, ICR_RXO, ICR_RXT0, ICR_MDAC = (
    0x1, 0x2, 0x4, 0x10, 0x40, 0x80, 0x200)
MDIC_READ, MDIC_WRITE, MDIC_READY, MDIC_INT_EN, MDIC_ERROR = (
    0x0800_0000, 0x0400_0000, 0x1000_0000, 0x2000_0000, 0x4000_0000)
EERD_START, EERD_DONE = 0x1, 0x10
EECD_SK, EECD_CS, EECD_DI, EECD_DO = 0x1, 0x2, 0x4, 0x8
TXD_DTYP_D, TXD_EOP, TXD_IFCS, TXD_TSE, TXD_RS = (
    0x0010_0000, 0x0100_0000, 0x0200_0000, 0x0400_0000, 0x0800_0000)
TXD_RPS, TXD_DEXT, TXD_VLE, TXD_IDE = 0x1000_0000, 0x2000_0000, 0x4000_0000, 0x8000_0000
TUCMD_TCP, TUCMD_IP, TUCMD_TSE = 0x0100_0000, 0x0200_0000, 0x0400_0000
POPTS_IXSM, POPTS_TXSM = 0x1, 0x2
MII_BMCR_LOOPBACK = 0x4000

#: A run long enough for QEMU's RX flush timer (1 s, ms-granular) to expire.
RCTL_SETTLE_NS = -(-1_000_000_000 // CLOCK_QUANTUM_NS) * CLOCK_QUANTUM_NS
#: Past autonegotiation (500 ms).
AUTONEG_SETTLE_NS = -(-600_000_000 // CLOCK_QUANTUM_NS) * CLOCK_QUANTUM_NS
#: The interrupt mitigation window (500 * 256 ns), rounded up to the clock quantum.
MIT_WINDOW_NS = -(-128_000 // CLOCK_QUANTUM_NS) * CLOCK_QUANTUM_NS


def quantize(ns: int) -> int:
    """``ns`` rounded up to a multiple of CLOCK_QUANTUM_NS."""
    return -(-ns // CLOCK_QUANTUM_NS) * CLOCK_QUANTUM_NS


# ---------------------------------------------------------------------------- operations
@dataclass(frozen=True)
class WriteReg:
    offset: int
    value: int

    def __str__(self) -> str:
        return f"WriteReg({reg_name(self.offset)}, {self.value:#x})"


@dataclass(frozen=True)
class ReadReg:
    offset: int

    def __str__(self) -> str:
        return f"ReadReg({reg_name(self.offset)})"


@dataclass(frozen=True)
class WriteMem:
    addr: int
    data: bytes

    def __str__(self) -> str:
        return f"WriteMem({self.addr:#x}, {len(self.data)} bytes)"


@dataclass(frozen=True)
class ReadMem:
    addr: int
    size: int

    def __str__(self) -> str:
        return f"ReadMem({self.addr:#x}, {self.size})"


@dataclass(frozen=True)
class InjectFrame:
    frame: bytes

    def __str__(self) -> str:
        return f"InjectFrame({len(self.frame)} bytes, dst {self.frame[:6].hex(':')})"


@dataclass(frozen=True)
class ClockStep:
    ns: int

    def __str__(self) -> str:
        return f"ClockStep({self.ns} ns)"


@dataclass(frozen=True)
class CollectTx:
    def __str__(self) -> str:
        return "CollectTx()"


@dataclass(frozen=True)
class SetLink:
    up: bool

    def __str__(self) -> str:
        return f"SetLink({'up' if self.up else 'down'})"


@dataclass(frozen=True)
class SetBusMaster:
    on: bool

    def __str__(self) -> str:
        return f"SetBusMaster({self.on})"


Op = WriteReg | ReadReg | WriteMem | ReadMem | InjectFrame | ClockStep | CollectTx | SetLink \
    | SetBusMaster
Program = Sequence[Op]
Value = int | bytes | tuple[bytes, ...] | bool


@dataclass(frozen=True)
class Record:
    """One recorded value: ``kind`` is "value" (the op's result) or "irq" (the
    interrupt line changed to ``value`` during the op)."""

    index: int
    op: Op
    kind: str
    value: Value


@dataclass
class Trace:
    records: list[Record] = field(default_factory=list)

    def values(self) -> list[tuple[int, str, Value]]:
        return [(r.index, r.kind, r.value) for r in self.records]


# ---------------------------------------------------------------------------- backends
class Backend(Protocol):
    """The primitives a program needs from an e1000 and its machine."""

    def mmio_read(self, offset: int) -> int: ...
    def mmio_write(self, offset: int, value: int) -> None: ...
    def mem_read(self, addr: int, size: int) -> bytes: ...
    def mem_write(self, addr: int, data: bytes) -> None: ...
    def inject(self, frame: bytes) -> None: ...
    def run_vm(self, ns: int) -> None: ...
    def collect_tx(self) -> list[bytes]: ...
    def set_link(self, up: bool) -> None: ...
    def set_bus_master(self, on: bool) -> None: ...
    def irq_level(self) -> bool: ...


class QemuBackend:
    """QEMU's e1000 (``support.qtest.QtestE1000``). A context manager."""

    name = "QEMU"

    def __init__(self, model: str = "82540EM", mac: bytes = DEFAULT_MAC) -> None:
        self.machine = QtestE1000(model, mac)

    def __enter__(self) -> QemuBackend:
        self.machine.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.machine.close()

    def mmio_read(self, offset: int) -> int:
        return self.machine.mmio_read(offset)

    def mmio_write(self, offset: int, value: int) -> None:
        self.machine.mmio_write(offset, value)

    def mem_read(self, addr: int, size: int) -> bytes:
        return self.machine.mem_read(addr, size)

    def mem_write(self, addr: int, data: bytes) -> None:
        self.machine.mem_write(addr, data)

    def inject(self, frame: bytes) -> None:
        self.machine.inject(frame)

    def run_vm(self, ns: int) -> None:
        self.machine.run(ns)

    def collect_tx(self) -> list[bytes]:
        return self.machine.collect_tx()

    def set_link(self, up: bool) -> None:
        self.machine.set_link(up)

    def set_bus_master(self, on: bool) -> None:
        self.machine.set_bus_master(on)

    def irq_level(self) -> bool:
        return self.machine.irq_level


class Wire(NetClient):
    """The netdev behind the model: records what the NIC sends.

    While the VM is paused nothing can be sent (QEMU's qemu_can_send_packet is
    false), so what the NIC transmits waits in this NetClient's queue until the
    VM runs, exactly as in QEMU's socket netdev.
    """

    kind = "socket"

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.frames: list[bytes] = []
        self.vm_paused = True

    def can_receive(self) -> bool:
        return not self.vm_paused

    def receive(self, data: bytes) -> int:
        self.frames.append(bytes(data))
        return len(data)


class VirtwireBackend:
    """virtwire's e1000 model in-process, mirroring QemuBackend's VM semantics."""

    name = "virtwire"

    def __init__(self, model: str = "82540EM", mac: bytes = DEFAULT_MAC,
                 **options: Any) -> None:
        """``options`` go to the E1000 constructor (e.g. dma_error_policy).

        compat defaults to the one that reproduces the installed QEMU, the one
        the harness compares with (support.qtest.qemu_compat: "7.2" on Debian 12).
        """
        options.setdefault("compat", qemu_compat())
        self.ram = RamDma(RAM_SIZE)
        self.scheduler = ManualScheduler()
        self._irq = False
        self.nic = E1000("e1000", mac, self.ram, model=model,  # type: ignore[arg-type]
                         set_irq=self._set_irq, scheduler=self.scheduler, **options)
        self.wire = Wire("n0")
        self.wire.peer = self.nic
        self.nic.peer = self.wire
        self._bus_master = True
        self.nic.set_bus_master(True)

    def __enter__(self) -> VirtwireBackend:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        pass

    def _set_irq(self, level: bool) -> None:
        self._irq = level

    def mmio_read(self, offset: int) -> int:
        return int(self.nic.mmio_read(offset))

    def mmio_write(self, offset: int, value: int) -> None:
        self.nic.mmio_write(offset, value)

    def mem_read(self, addr: int, size: int) -> bytes:
        return bytes(self.ram.ram[addr:addr + size])

    def mem_write(self, addr: int, data: bytes) -> None:
        self.ram.ram[addr:addr + len(data)] = data

    def inject(self, frame: bytes) -> None:
        # The socket backend sends while the VM is paused: qemu_send_packet_async
        # drops it on a link that is down, else it is appended to the NIC's queue
        # (qemu_can_send_packet is false). Then QtestE1000.flush_rx's PCI COMMAND
        # write flushes the queue if bus master is on.
        if self.wire.link_down:
            return
        self.nic.incoming_queue.append(self.wire, 0, bytes(frame), None)
        if self._bus_master:
            self.nic.set_bus_master(True)

    def run_vm(self, ns: int) -> None:
        # net_vm_change_state_handler, over QEMU's net_clients (the netdev was
        # created first). Running: flush a client's peer if the client can send.
        self.wire.vm_paused = False
        if self.nic.can_receive_packet():
            self.nic.flush_queued_packets()
        self.wire.flush_queued_packets()
        self.scheduler.advance(ns + RUN_OVERHEAD_NS)
        # Paused: flush every client's own queue, purge what is left.
        self.wire.vm_paused = True
        self.wire.flush_queued_packets(purge=True)
        self.nic.flush_queued_packets(purge=True)

    def collect_tx(self) -> list[bytes]:
        frames = self.wire.frames
        self.wire.frames = []
        return frames

    def set_link(self, up: bool) -> None:
        self.wire.set_link(up)

    def set_bus_master(self, on: bool) -> None:
        self._bus_master = on
        self.nic.set_bus_master(on)

    def irq_level(self) -> bool:
        return self._irq


# ---------------------------------------------------------------------------- running
def expand(program: Program, *, settle_rctl: bool = True) -> list[Op]:
    """The program as executed: with ``settle_rctl``, every RCTL write is
    followed by ClockStep(RCTL_SETTLE_NS)."""
    ops: list[Op] = []
    for op in program:
        ops.append(op)
        if settle_rctl and isinstance(op, WriteReg) and op.offset == RCTL:
            ops.append(ClockStep(RCTL_SETTLE_NS))
    return ops


def run(program: Program, backend: Backend, *, settle_rctl: bool = True) -> Trace:
    """Execute ``program`` on ``backend``; record values and interrupt-line changes.

    Record indices refer to ``expand(program, settle_rctl=...)``.
    """
    trace = Trace()
    irq = backend.irq_level()
    for index, op in enumerate(expand(program, settle_rctl=settle_rctl)):
        value: Value | None = None
        if isinstance(op, WriteReg):
            backend.mmio_write(op.offset, op.value)
        elif isinstance(op, ReadReg):
            value = backend.mmio_read(op.offset)
        elif isinstance(op, WriteMem):
            backend.mem_write(op.addr, op.data)
        elif isinstance(op, ReadMem):
            value = backend.mem_read(op.addr, op.size)
        elif isinstance(op, InjectFrame):
            backend.inject(op.frame)
        elif isinstance(op, ClockStep):
            if op.ns <= 0 or op.ns % CLOCK_QUANTUM_NS:
                raise ValueError(f"{op}: a positive multiple of {CLOCK_QUANTUM_NS} ns is needed")
            left = op.ns
            while True:
                chunk = min(left, MAX_RUN_NS)
                backend.run_vm(chunk)
                left -= chunk
                if not left:
                    break
        elif isinstance(op, CollectTx):
            backend.run_vm(MIN_RUN_NS)
            value = tuple(backend.collect_tx())
        elif isinstance(op, SetLink):
            backend.set_link(op.up)
        elif isinstance(op, SetBusMaster):
            backend.set_bus_master(op.on)
        else:  # pragma: no cover - exhaustive
            raise TypeError(f"unknown operation {op!r}")
        if value is not None:
            trace.records.append(Record(index, op, "value", value))
        level = backend.irq_level()
        if level != irq:
            irq = level
            trace.records.append(Record(index, op, "irq", level))
    return trace


@contextlib.contextmanager
def backends(model: str = "82540EM", mac: bytes = DEFAULT_MAC, **options: Any
             ) -> Iterator[tuple[QemuBackend, VirtwireBackend]]:
    """A fresh QEMU and a fresh model (``options`` go to the model), for one comparison."""
    with QemuBackend(model, mac) as qemu, VirtwireBackend(model, mac, **options) as ours:
        yield qemu, ours


# ---------------------------------------------------------------------------- diffs
def _hexdiff(a: bytes, b: bytes) -> str:
    if len(a) != len(b):
        prefix = f"length {len(a)} vs {len(b)}; "
    else:
        prefix = ""
    n = min(len(a), len(b))
    first = next((i for i in range(n) if a[i] != b[i]), n)
    if first == n and len(a) == len(b):
        return "equal"
    lo = max(0, first - 8)
    return (f"{prefix}first difference at byte {first}:\n"
            f"        QEMU     [{lo}:] {a[lo:lo + 32].hex(' ')}\n"
            f"        virtwire [{lo}:] {b[lo:lo + 32].hex(' ')}")


def _show(value: Value) -> str:
    if isinstance(value, bool):
        return "raised" if value else "lowered"
    if isinstance(value, int):
        return f"{value:#010x}"
    if isinstance(value, bytes):
        return value[:32].hex(" ") + (" ..." if len(value) > 32 else "")
    return f"{len(value)} frames " + str([len(f) for f in value])


def _describe(a: Record, b: Record) -> str:
    head = f"op #{a.index} {a.op}"
    if a.kind == "irq" or b.kind == "irq" or a.index != b.index or a.kind != b.kind:
        return (f"{head}: QEMU {a.kind} {_show(a.value)} vs virtwire "
                f"op #{b.index} {b.op} {b.kind} {_show(b.value)}")
    if isinstance(a.value, int) and not isinstance(a.value, bool) \
            and isinstance(b.value, int):
        return (f"{head}: QEMU {a.value:#010x} vs virtwire {b.value:#010x} "
                f"(xor {a.value ^ b.value:#010x})")
    if isinstance(a.value, bytes) and isinstance(b.value, bytes):
        return f"{head}: {_hexdiff(a.value, b.value)}"
    if isinstance(a.value, tuple) and isinstance(b.value, tuple):
        lines = [f"{head}: QEMU sent {len(a.value)} frames, virtwire {len(b.value)}"]
        for k, (fa, fb) in enumerate(zip(a.value, b.value, strict=False)):
            if fa != fb:
                lines.append(f"    frame {k}: {_hexdiff(fa, fb)}")
        return "\n".join(lines)
    return f"{head}: QEMU {_show(a.value)} vs virtwire {_show(b.value)}"


def diff(qemu: Trace, ours: Trace, limit: int = 10) -> list[str]:
    """Readable differences, first ``limit`` of them (empty if the traces agree)."""
    out: list[str] = []
    for a, b in zip(qemu.records, ours.records, strict=False):
        if (a.index, a.kind, a.value) != (b.index, b.kind, b.value):
            out.append(_describe(a, b))
            if len(out) >= limit:
                return out
    la, lb = len(qemu.records), len(ours.records)
    if la != lb:
        extra, who = (qemu.records[lb:], "QEMU") if la > lb else (ours.records[la:], "virtwire")
        out.append(f"only {who} recorded {len(extra)} more: " + "; ".join(
            f"op #{r.index} {r.op} {r.kind} {_show(r.value)}" for r in extra[:5]))
    return out


def format_diff(program: Program, qemu: Trace, ours: Trace, *, settle_rctl: bool = True,
                limit: int = 10) -> str:
    lines = diff(qemu, ours, limit)
    if not lines:
        return "traces agree"
    ops = expand(program, settle_rctl=settle_rctl)
    return (f"{len(lines)} difference(s) between QEMU and virtwire "
            f"({len(ops)} ops, {len(qemu.records)} vs {len(ours.records)} records):\n"
            + "\n".join("  " + line for line in lines))


def compare(program: Program, model: str = "82540EM", mac: bytes = DEFAULT_MAC, *,
            settle_rctl: bool = True, **options: Any) -> tuple[Trace, Trace]:
    """Run ``program`` on a fresh QEMU and a fresh model; return both traces."""
    with backends(model, mac, **options) as (qemu, ours):
        a = run(program, qemu, settle_rctl=settle_rctl)
        b = run(program, ours, settle_rctl=settle_rctl)
    return a, b


# ---------------------------------------------------------------------------- builders
def rx_desc(buffer_addr: int, status: int = 0) -> bytes:
    """A legacy RX descriptor: addr u64, length, csum, status, errors, special."""
    return struct.pack("<QHHBBH", buffer_addr, 0, 0, status, 0, 0)


def tx_legacy(addr: int, length: int, cmd: int, *, cso: int = 0, css: int = 0,
              special: int = 0) -> bytes:
    """A legacy TX descriptor; ``cmd`` is in the TXD_* (lower dword) bit positions."""
    lower = (length & 0xFFFF) | (cso << 16) | (cmd & 0xFF00_0000)
    return struct.pack("<QIBBH", addr, lower, 0, css, special)


def tx_context(*, ipcss: int = 0, ipcso: int = 0, ipcse: int = 0, tucss: int = 0,
               tucso: int = 0, tucse: int = 0, paylen: int = 0, tucmd: int = 0,
               hdr_len: int = 0, mss: int = 0, cmd: int = 0) -> bytes:
    """A TX context descriptor (DEXT, DTYP 0); ``tucmd`` takes TUCMD_*, ``cmd`` TXD_*."""
    cmd_and_length = (paylen & 0xFFFFF) | TXD_DEXT | tucmd | (cmd & 0xFF00_0000)
    return struct.pack("<BBHBBHIBBH", ipcss, ipcso, ipcse, tucss, tucso, tucse,
                       cmd_and_length, 0, hdr_len, mss)


def tx_data(addr: int, length: int, cmd: int, *, popts: int = 0, special: int = 0) -> bytes:
    """A TX data descriptor (DEXT | DTYP_D)."""
    lower = (length & 0xFFFFF) | TXD_DEXT | TXD_DTYP_D | (cmd & 0xFF00_0000)
    return struct.pack("<QIBBH", addr, lower, 0, popts, special)


def inet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f">{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def eth(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return dst + src + struct.pack(">H", ethertype) + payload


def vlan_tag(frame: bytes, tci: int, tpid: int = 0x8100) -> bytes:
    return frame[:12] + struct.pack(">HH", tpid, tci) + frame[12:]


def ipv4(src: bytes, dst: bytes, proto: int, payload: bytes, *, ident: int = 0x1234,
         checksum: bool = True) -> bytes:
    hdr = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0x4000, 64,
                      proto, 0, src, dst)
    if checksum:
        hdr = hdr[:10] + struct.pack(">H", inet_checksum(hdr)) + hdr[12:]
    return hdr + payload


def ipv6(src: bytes, dst: bytes, next_header: int, payload: bytes) -> bytes:
    return struct.pack(">IHBB16s16s", 0x6000_0000, len(payload), next_header, 64,
                       src, dst) + payload


def tcp(sport: int, dport: int, seq: int, payload: bytes, *, flags: int = 0x18,
        csum: int = 0) -> bytes:
    return struct.pack(">HHIIBBHHH", sport, dport, seq, 0, 5 << 4, flags, 0xFFFF,
                       csum, 0) + payload


def udp(sport: int, dport: int, payload: bytes, *, csum: int = 0) -> bytes:
    return struct.pack(">HHHH", sport, dport, 8 + len(payload), csum) + payload


def pseudo_sum_v4(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """The folded (not inverted) pseudo-header sum a driver seeds TSO/TXSM with."""
    return 0xFFFF & ~inet_checksum(src + dst + struct.pack(">BBH", 0, proto, length))


def payload_pattern(n: int, seed: int = 0) -> bytes:
    return bytes((seed + i * 7) & 0xFF for i in range(n))


ProgramBuilder = Callable[[], list[Op]]
