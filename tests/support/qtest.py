"""Drive QEMU's own e1000 through qtest: registers, guest RAM, the wire, virtual time.

:class:`QtestE1000` starts ``qemu-system-x86_64 -machine pc`` with no guest
code (the BIOS is 64 KiB of ``hlt``) and one e1000 whose netdev is one end of
a socketpair (``-netdev socket,fd=N``; QEMU frames each packet on a stream
socket with a 4-byte big-endian length). The test holds the other end, so it
injects frames "from the wire" and reads what the NIC transmits. Registers and
guest RAM are reached with qtest's text protocol (``readl``/``writel``,
``b64read``/``b64write``, ``outl``/``inl`` on 0xCF8/0xCFC for PCI config), and
the NIC's INTx line through ``irq_intercept_in ioapic`` (the PIIX3 routes every
PIRQ to ISA IRQ 11, so the e1000's level is ioapic pin 11).

Virtual time
------------
Debian builds QEMU without the qtest accelerator, so ``clock_step`` does not
exist. Instead the machine runs with ``-icount shift=0,sleep=off`` and starts
paused (``-S``): while paused, QEMU_CLOCK_VIRTUAL does not move and no device
timer fires. :meth:`QtestE1000.run` resumes the VM (QMP ``cont``) with an
i6300esb watchdog armed to fire exactly ``ns`` later and ``-action
watchdog=pause``: the vCPU stays halted, so icount warps the clock straight from
one timer deadline to the next, runs every timer up to the fence, and the
watchdog pauses the VM again at exactly ``now + ns``. The watchdog counts in
units of 960 ns (:data:`CLOCK_QUANTUM_NS`); one run is at most
:data:`MAX_RUN_NS`. The HPET main counter (10 ns resolution) is read after every
run to check that the clock moved by exactly ``ns``.

What a paused VM means for the NIC (QEMU's net/net.c, faithfully):

* A packet *sent* while the VM is paused is queued, never delivered
  (``qemu_can_send_packet`` is false): frames the socket backend reads wait in
  the e1000's incoming queue, and frames the e1000 transmits wait in the socket
  backend's incoming queue until the next run.
* Flushes still deliver while paused: an RDT write with buffers, link up, a PCI
  COMMAND write with bus master set (:meth:`flush_rx`, used after every
  injection), each delivers the e1000's queued frames at once.
* Resuming flushes the e1000's queue if it can receive; pausing flushes every
  queue and *purges* what the e1000 could not take
  (``net_vm_change_state_handler``).

The socket backend stops reading while one of its frames waits in a queue, so
after every operation this driver waits until QEMU has read what it can from
the socket (its unread byte count, ``TIOCOUTQ``, is stable across qtest round
trips: every round trip is a main-loop iteration) and then flushes or runs for
0 ns again, so that frames that were still in the socket end up exactly where a
single in-process queue would have put them. See
``support.e1000_program.VirtwireBackend`` for the model side of the same rules.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import fcntl
import functools
import json
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import termios
import time
from pathlib import Path
from types import TracebackType
from typing import Any

QEMU_BINARY = "qemu-system-x86_64"

#: Guest RAM size (-m). Guest physical RAM usable for DMA is [1 MiB, RAM_SIZE):
#: 0xA0000-0xFFFFF is the legacy VGA/BIOS hole on a pc machine.
RAM_SIZE = 16 << 20
RAM_DMA_START = 0x10_0000
#: Where the e1000's BAR0 (0x20000 bytes of MMIO) is placed: in the PCI hole,
#: far from RAM, the i6300esb BAR, the IOAPIC (0xFEC00000), HPET (0xFED00000),
#: LAPIC (0xFEE00000) and BIOS (0xFFFF0000).
E1000_MMIO_BASE = 0xE000_0000
WDT_MMIO_BASE = 0xE010_0000
HPET_BASE = 0xFED0_0000
#: ISA IRQ (= ioapic pin) every PIIX3 PIRQ is routed to.
INTX_IRQ = 11

#: Virtual time moves in multiples of this (one i6300esb tick at 1 MHz scale:
#: 32 ticks of 30 ns).
CLOCK_QUANTUM_NS = 960
_WDT_MAX_PRELOAD = 0xFFFFF
#: The shortest run: a fence already due when the VM is resumed sometimes fires
#: while the VM is still paused (QEMU 7.2 runs expired virtual timers then), and
#: "cont" then swallows its pause request.
MIN_RUN_NS = CLOCK_QUANTUM_NS
#: Every run ends this much after the requested time (see QtestE1000._run_fence).
RUN_OVERHEAD_NS = 10
#: Longest single run: both watchdog stages at their 20-bit maximum.
MAX_RUN_NS = 2 * _WDT_MAX_PRELOAD * CLOCK_QUANTUM_NS

#: QEMU device name and PCI device ID of each e1000 model.
E1000_MODELS: dict[str, tuple[str, int]] = {
    "82540EM": ("e1000", 0x100E),
    "82544GC": ("e1000-82544gc", 0x100C),
    "82545EM": ("e1000-82545em", 0x100F),
}

_VENDOR_INTEL = 0x8086
_DEV_PIIX3 = 0x7000
_DEV_I6300ESB = 0x25AB
_PCI_COMMAND = 0x04
_PCI_BAR0 = 0x10
_CMD_MEMORY = 0x2
_CMD_MASTER = 0x4
_PIIX3_PIRQRC = 0x60
# i6300esb (hw/watchdog/wdt_i6300esb.c)
_ESB_CONFIG_REG = 0x60
_ESB_LOCK_REG = 0x68
_ESB_TIMER1 = 0x00
_ESB_TIMER2 = 0x04
_ESB_RELOAD = 0x0C
_ESB_WDT_FREQ_1MHZ = 0x04
_ESB_WDT_INTTYPE_NONE = 0x01  # neither IRQ (0) nor SMI (2): nothing on stage 1
_ESB_WDT_ENABLE = 0x02
# HPET
_HPET_CFG = 0x10
_HPET_COUNTER = 0xF0
_HPET_PERIOD_NS = 10
_HPET_T0_CMP = 0x108

_PR_SET_PDEATHSIG = 1
_SO_SNDBUFFORCE = 32
_WIRE_BUFFER = 8 << 20
_NET_BUFSIZE = 4096 + 65536


class QtestError(RuntimeError):
    """QEMU refused a command, died, or did not answer in time."""


def qemu_available() -> bool:
    return shutil.which(QEMU_BINARY) is not None


@functools.cache
def qemu_compat() -> str:
    """The model's ``compat`` (docs/e1000.md#compat-versions) that reproduces the
    installed QEMU: "7.2" for 7.2.x (Debian 12), "9.0" for 9.0 and later."""
    out = subprocess.run([QEMU_BINARY, "--version"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    m = re.search(r"version (\d+)\.(\d+)", out)
    if m is None:
        raise QtestError(f"cannot read the version of {QEMU_BINARY}: {out!r}")
    version = (int(m[1]), int(m[2]))
    if version == (7, 2):
        return "7.2"
    if version >= (9, 0):
        return "9.0"
    raise QtestError(f"QEMU {version[0]}.{version[1]}: the e1000 model reproduces 7.2 and "
                     "9.0+ only (compat), so it cannot be compared with this QEMU")


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL QEMU if the test process dies without cleaning up."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _cfg_addr(bdf: tuple[int, int, int], reg: int) -> int:
    bus, dev, fn = bdf
    return 0x8000_0000 | (bus << 16) | (dev << 11) | (fn << 8) | (reg & 0xFC)


class QtestE1000:
    """One paused pc machine with one e1000, driven over qtest and QMP.

    ``model`` is one of :data:`E1000_MODELS`; ``mac`` the NIC's address.
    Use as a context manager (or call :meth:`start` and :meth:`close`).
    Every method is synchronous and returns once QEMU has finished the
    operation, including whatever it did to frames waiting on the wire.
    """

    def __init__(
        self,
        model: str = "82540EM",
        mac: bytes = bytes.fromhex("525400123456"),
        *,
        qemu: str = QEMU_BINARY,
        timeout: float = 30.0,
    ) -> None:
        if model not in E1000_MODELS:
            raise ValueError(f"unknown e1000 model {model!r}; one of {sorted(E1000_MODELS)}")
        if len(mac) != 6:
            raise ValueError("mac must be 6 bytes")
        self.model = model
        self.mac = mac
        self.qemu = qemu
        self.timeout = timeout
        #: Virtual nanoseconds since the machine was set up (changed by run()).
        self.clock_ns = 0
        self._bus_master = True
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self._qtest: socket.socket | None = None
        self._qtest_buf = b""
        self._qmp: socket.socket | None = None
        self._qmp_buf = b""
        self._events: list[str] = []
        self._wire: socket.socket | None = None
        self._wire_buf = b""
        self._tx: list[bytes] = []
        self._irq: dict[int, bool] = {}
        self.e1000_bdf = (0, 0, 0)
        self._wdt_bdf = (0, 0, 0)

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> QtestE1000:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def command_line(self, qtest_path: Path, qmp_path: Path, bios: Path, wire_fd: int) -> list[str]:
        device, _ = E1000_MODELS[self.model]
        mac = ":".join(f"{b:02x}" for b in self.mac)
        return [
            self.qemu,
            "-machine", "pc,pit=off",  # no free-running PIT timer on the virtual clock
            "-nodefaults", "-display", "none", "-m", f"{RAM_SIZE >> 20}",
            "-bios", str(bios),
            "-icount", "shift=0,sleep=off",
            "-action", "watchdog=pause", "-device", "i6300esb",
            "-qtest", f"unix:{qtest_path}", "-qtest-log", "/dev/null",
            "-qmp", f"unix:{qmp_path},server=on,wait=off",
            "-device", f"{device},netdev=n0,romfile=,mac={mac}",
            "-netdev", f"socket,id=n0,fd={wire_fd}",
        ]

    def start(self) -> None:
        if self._proc is not None:
            raise QtestError("already started")
        self._dir = Path(tempfile.mkdtemp(prefix="vw-qtest-"))
        try:
            self._launch()
            self._setup_machine()
        except BaseException:
            self.close()
            raise

    def _launch(self) -> None:
        assert self._dir is not None
        bios = self._dir / "hlt.bin"
        bios.write_bytes(b"\xf4" * 0x10000)
        qtest_path = self._dir / "qtest.sock"
        qmp_path = self._dir / "qmp.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(qtest_path))
        listener.listen(1)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for sock in (ours, theirs):  # room for bursts (TSO) in both directions
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, _WIRE_BUFFER)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _WIRE_BUFFER)
        self._wire = ours
        ours.setblocking(False)
        self._log = open(self._dir / "qemu.log", "w+b")
        try:
            self._proc = subprocess.Popen(
                self.command_line(qtest_path, qmp_path, bios, theirs.fileno()),
                stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                pass_fds=[theirs.fileno()], preexec_fn=_die_with_parent,
            )
        finally:
            theirs.close()
        try:
            listener.settimeout(0.05)
            deadline = time.monotonic() + self.timeout
            while True:
                try:
                    self._qtest, _ = listener.accept()
                    break
                except TimeoutError:
                    self._check_alive()
                    if time.monotonic() > deadline:
                        raise QtestError("QEMU did not connect to the qtest socket") from None
        finally:
            listener.close()
        self._qtest.setblocking(False)
        deadline = time.monotonic() + self.timeout
        while True:
            qmp = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                qmp.connect(str(qmp_path))
                break
            except OSError:
                qmp.close()
                self._check_alive()
                if time.monotonic() > deadline:
                    raise QtestError("QEMU's QMP socket did not appear") from None
                time.sleep(0.01)
        qmp.setblocking(False)
        self._qmp = qmp
        greeting = self._qmp_read()
        if "QMP" not in greeting:
            raise QtestError(f"unexpected QMP greeting {greeting}")
        self.qmp("qmp_capabilities")

    def _setup_machine(self) -> None:
        self.qtest("irq_intercept_in ioapic")
        found: dict[int, tuple[int, int, int]] = {}
        for dev in range(32):
            for fn in range(8):
                ids = self.pci_read((0, dev, fn), 0, 4)
                if ids == 0xFFFF_FFFF:
                    if fn == 0:
                        break
                    continue
                if ids & 0xFFFF == _VENDOR_INTEL:
                    found.setdefault(ids >> 16, (0, dev, fn))
        want = E1000_MODELS[self.model][1]
        wanted = (("PIIX3", _DEV_PIIX3), ("i6300esb", _DEV_I6300ESB), (self.model, want))
        for name, dev_id in wanted:
            if dev_id not in found:
                raise QtestError(f"no {name} (8086:{dev_id:04x}) on PCI bus 0: {found}")
        self.e1000_bdf = found[want]
        self._wdt_bdf = found[_DEV_I6300ESB]
        # Every PIRQ -> ISA IRQ 11, so the e1000's INTx shows up as ioapic pin 11.
        self.pci_write(found[_DEV_PIIX3], _PIIX3_PIRQRC, 4, INTX_IRQ * 0x01010101)
        self.pci_write(self._wdt_bdf, _PCI_BAR0, 4, WDT_MMIO_BASE)
        self.pci_write(self._wdt_bdf, _PCI_COMMAND, 2, _CMD_MEMORY)
        self.pci_write(self.e1000_bdf, _PCI_BAR0, 4, E1000_MMIO_BASE)
        self.pci_write(self.e1000_bdf, _PCI_COMMAND, 2, _CMD_MEMORY | _CMD_MASTER)
        self.qtest(f"writel {HPET_BASE + _HPET_CFG:#x} 0x1")  # main counter on, no comparators
        # The VM started running (the vCPU executed its one hlt and idles; with
        # no timer pending the clock stands still). Pause it with a fence at
        # "now" and take that as the clock origin: from here on the clock only
        # moves in run(). (Starting with -S instead leaves QEMU_CLOCK_VIRTUAL
        # enabled while paused in prelaunch, and the first fence can then fire
        # before "cont", whose vm_prepare_start swallows the pause request.)
        self._run_fence(0, check=False, resume=False)
        self.clock_ns = 0

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None and self._qmp is not None:
                with contextlib.suppress(Exception):
                    self._qmp.setblocking(True)
                    self._qmp.settimeout(1.0)
                    self._qmp.sendall(b'{"execute": "quit"}\n')
            try:
                proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for sock in (self._qtest, self._qmp, self._wire):
            if sock is not None:
                sock.close()
        self._qtest = self._qmp = self._wire = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _stderr_tail(self) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0)
        data: bytes = self._log.read()
        return data.decode(errors="replace")[-2000:]

    def _check_alive(self) -> None:
        if self._proc is None:
            raise QtestError("QEMU is not running")
        rc = self._proc.poll()
        if rc is not None:
            raise QtestError(f"QEMU exited with {rc}: {self._stderr_tail()}")

    # ------------------------------------------------------------------ qtest
    def _recv_some(self, sock: socket.socket, deadline: float, what: str) -> bytes:
        while True:
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                data = None
            if data is not None:
                if not data:
                    self._check_alive()
                    raise QtestError(f"QEMU closed the {what} socket")
                return data
            left = deadline - time.monotonic()
            if left <= 0:
                self._check_alive()
                raise QtestError(f"QEMU did not answer on {what} within {self.timeout} s")
            select.select([sock], [], [], min(left, 0.5))
            self._check_alive()

    def _qtest_line(self, deadline: float) -> str:
        assert self._qtest is not None
        while b"\n" not in self._qtest_buf:
            self._qtest_buf += self._recv_some(self._qtest, deadline, "qtest")
        line, _, self._qtest_buf = self._qtest_buf.partition(b"\n")
        return line.decode()

    def qtest(self, command: str) -> str:
        """Send one qtest command; return the text after ``OK``. IRQ reports are absorbed."""
        if self._qtest is None:
            raise QtestError("not started")
        self._qtest.setblocking(True)
        try:
            self._qtest.sendall(command.encode() + b"\n")
        finally:
            self._qtest.setblocking(False)
        deadline = time.monotonic() + self.timeout
        while True:
            line = self._qtest_line(deadline)
            words = line.split()
            if words[:1] == ["IRQ"] and len(words) == 3:
                self._irq[int(words[2])] = words[1] == "raise"
                continue
            if words[:1] == ["OK"]:
                return line[3:]
            raise QtestError(f"qtest {command[:80]!r}: {line}")

    def _ping(self) -> None:
        self.qtest("endianness")

    # ------------------------------------------------------------------ QMP
    def _qmp_read(self) -> dict[str, Any]:
        assert self._qmp is not None
        deadline = time.monotonic() + self.timeout
        while b"\n" not in self._qmp_buf:
            self._qmp_buf += self._recv_some(self._qmp, deadline, "QMP")
        line, _, self._qmp_buf = self._qmp_buf.partition(b"\n")
        msg: dict[str, Any] = json.loads(line)
        return msg

    def qmp(self, command: str, **arguments: Any) -> Any:
        """Run a QMP command; return its ``return`` value (events are collected)."""
        if self._qmp is None:
            raise QtestError("not started")
        req: dict[str, Any] = {"execute": command}
        if arguments:
            req["arguments"] = arguments
        self._qmp.setblocking(True)
        try:
            self._qmp.sendall(json.dumps(req).encode() + b"\n")
        finally:
            self._qmp.setblocking(False)
        while True:
            msg = self._qmp_read()
            if "event" in msg:
                self._events.append(str(msg["event"]))
            elif "error" in msg:
                raise QtestError(f"QMP {command}: {msg['error']}")
            elif "return" in msg:
                return msg["return"]

    def _wait_event(self, name: str) -> None:
        while name not in self._events:
            msg = self._qmp_read()
            if "event" in msg:
                self._events.append(str(msg["event"]))
        self._events.remove(name)

    # ------------------------------------------------------------------ PCI, MMIO, RAM
    def pci_read(self, bdf: tuple[int, int, int], reg: int, size: int) -> int:
        self.qtest(f"outl 0xcf8 {_cfg_addr(bdf, reg):#x}")
        op = {1: "inb", 2: "inw", 4: "inl"}[size]
        return int(self.qtest(f"{op} {0xCFC + (reg & 3):#x}"), 16)

    def pci_write(self, bdf: tuple[int, int, int], reg: int, size: int, value: int) -> None:
        self.qtest(f"outl 0xcf8 {_cfg_addr(bdf, reg):#x}")
        op = {1: "outb", 2: "outw", 4: "outl"}[size]
        self.qtest(f"{op} {0xCFC + (reg & 3):#x} {value:#x}")

    def mmio_read(self, offset: int) -> int:
        """A 32-bit read of e1000 BAR0 at ``offset``."""
        pending = self._unread()
        value = int(self.qtest(f"readl {E1000_MMIO_BASE + offset:#x}"), 16)
        self._settle(pending, after_run=False)
        return value

    def mmio_write(self, offset: int, value: int) -> None:
        """A 32-bit write of e1000 BAR0 at ``offset``."""
        pending = self._unread()
        self.qtest(f"writel {E1000_MMIO_BASE + offset:#x} {value & 0xFFFF_FFFF:#x}")
        self._settle(pending, after_run=False)

    def mem_read(self, addr: int, size: int) -> bytes:
        if size == 0:
            return b""
        data = base64.b64decode(self.qtest(f"b64read {addr:#x} {size:#x}"))
        if len(data) != size:
            raise QtestError(f"b64read {addr:#x} {size:#x} returned {len(data)} bytes")
        return data

    def mem_write(self, addr: int, data: bytes) -> None:
        if data:
            self.qtest(f"b64write {addr:#x} {len(data):#x} {base64.b64encode(data).decode()}")

    def set_bus_master(self, on: bool) -> None:
        """Write PCI COMMAND (memory space, plus bus master if ``on``)."""
        pending = self._unread()
        self._bus_master = on
        self.pci_write(self.e1000_bdf, _PCI_COMMAND, 2, _CMD_MEMORY | (_CMD_MASTER if on else 0))
        self._settle(pending, after_run=False)

    def flush_rx(self) -> None:
        """Make the e1000 flush its incoming queue, as QEMU does on a PCI COMMAND
        write with bus master set (no-op while bus master is off)."""
        if self._bus_master:
            self.pci_write(self.e1000_bdf, _PCI_COMMAND, 2, _CMD_MEMORY | _CMD_MASTER)

    @property
    def irq_level(self) -> bool:
        """The e1000's INTx level as the ioapic sees it."""
        return self._irq.get(INTX_IRQ, False)

    # ------------------------------------------------------------------ time
    def _hpet_ticks(self) -> int:
        lo = int(self.qtest(f"readl {HPET_BASE + _HPET_COUNTER:#x}"), 16)
        hi = int(self.qtest(f"readl {HPET_BASE + _HPET_COUNTER + 4:#x}"), 16)
        return (hi << 32) | lo

    def _run_fence(self, ticks: int, *, check: bool = True, resume: bool = True) -> None:
        """Resume the VM until it pauses ``ticks`` quanta + RUN_OVERHEAD_NS later.

        The watchdog fires at the fence (every timer due by then runs in the
        same pass of the vCPU thread). Its pause request is only seen after
        QEMU's main loop has warped the clock once more, to the next pending
        deadline: the HPET comparator set RUN_OVERHEAD_NS after the fence makes
        that warp short and always the same. Timers due in that last stretch
        run at the start of the next run.
        """
        first = min(ticks, _WDT_MAX_PRELOAD)
        second = ticks - first
        assert second <= _WDT_MAX_PRELOAD
        now = self._hpet_ticks()
        guard = now + (ticks * CLOCK_QUANTUM_NS + RUN_OVERHEAD_NS) // _HPET_PERIOD_NS
        self.qtest(f"writel {HPET_BASE + _HPET_T0_CMP:#x} {guard & 0xFFFF_FFFF:#x}")
        self.qtest(f"writel {HPET_BASE + _HPET_T0_CMP + 4:#x} {guard >> 32:#x}")
        wdt = self._wdt_bdf
        # 1 MHz scale, no stage-1 interrupt, reboot (= the pause action) enabled.
        self.pci_write(wdt, _ESB_CONFIG_REG, 2, _ESB_WDT_FREQ_1MHZ | _ESB_WDT_INTTYPE_NONE)
        for reg, preload in ((_ESB_TIMER1, first), (_ESB_TIMER2, second)):
            self.qtest(f"writew {WDT_MMIO_BASE + _ESB_RELOAD:#x} 0x80")  # unlock sequence
            self.qtest(f"writew {WDT_MMIO_BASE + _ESB_RELOAD:#x} 0x86")
            self.qtest(f"writel {WDT_MMIO_BASE + reg:#x} {preload:#x}")
        if resume:
            self._events.clear()
        self.pci_write(wdt, _ESB_LOCK_REG, 1, _ESB_WDT_ENABLE)  # stage 1 starts now
        if resume:
            self.qmp("cont")
        self._wait_event("STOP")
        status = self.qmp("query-status")
        if status.get("running") or status.get("status") != "watchdog":
            raise QtestError(f"VM did not pause on the watchdog: {status}")
        after = self._hpet_ticks()
        if check and after != guard:
            raise QtestError(
                f"virtual clock ended {(after - guard) * _HPET_PERIOD_NS:+} ns off the fence: "
                "an e1000 timer fell due within RUN_OVERHEAD_NS of it")

    def run(self, ns: int) -> None:
        """Let the VM run for exactly ``ns`` of virtual time, then pause it.

        Every timer due by then fires; the NIC's queue is flushed on resume and
        flushed-or-purged on pause (see the module docstring).
        """
        if ns < MIN_RUN_NS or ns % CLOCK_QUANTUM_NS or ns > MAX_RUN_NS:
            raise ValueError(f"run({ns}): need {MIN_RUN_NS} <= ns <= {MAX_RUN_NS}, "
                             f"a multiple of {CLOCK_QUANTUM_NS}")
        pending = self._unread()
        self._run_fence(ns // CLOCK_QUANTUM_NS)
        self.clock_ns += ns + RUN_OVERHEAD_NS
        self._settle(pending, after_run=True)
        self._drain_wire()

    # ------------------------------------------------------------------ the wire
    def _unread(self) -> int:
        """Bytes we wrote to the socket that QEMU has not read yet."""
        assert self._wire is not None
        buf = fcntl.ioctl(self._wire.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        value: int = struct.unpack("i", buf)[0]
        return value

    def _wait_read_settled(self, unread: int) -> int:
        """Wait until QEMU reads no more from the socket; return what is left.

        QEMU's main loop dispatches every ready handler in each iteration and a
        qtest round trip takes at least one iteration, so the count is final
        once two round trips in a row leave it unchanged.
        """
        stable = 0
        deadline = time.monotonic() + self.timeout
        while unread and stable < 2:
            self._ping()
            now = self._unread()
            stable = stable + 1 if now == unread else 0
            unread = now
            if time.monotonic() > deadline:
                raise QtestError("QEMU's socket backend neither reads nor stays paused")
        return unread

    def _settle(self, unread_before: int, *, after_run: bool) -> None:
        """Frames still in the socket when an operation started may have been
        read (and, the VM being paused, queued) because of it: deliver them as
        a flush would have, or, after a run, let the pause purge them."""
        unread = unread_before
        while unread:
            now = self._wait_read_settled(unread)
            if now == unread:
                return  # the backend waits for a queued frame: nothing more moves
            unread = now
            if after_run:
                # The pause purged the frame the backend waited for, so it read
                # more, which the model purged too: QEMU would need another
                # (zero-length) pause, which cannot be done exactly.
                raise QtestError(
                    "frames were still waiting in the socket when the VM paused with the "
                    "e1000 refusing frames (RX flush timer pending): inject at most one "
                    "frame while the timer runs")
            self.flush_rx()

    def inject(self, frame: bytes) -> None:
        """Put one frame on the wire; it reaches the e1000 (or its queue) before this returns."""
        if not frame or len(frame) > _NET_BUFSIZE:
            raise ValueError(f"frame length {len(frame)} out of range")
        assert self._wire is not None
        self._wire.setblocking(True)
        try:
            self._wire.sendall(struct.pack(">I", len(frame)) + frame)
        finally:
            self._wire.setblocking(False)
        unread = self._wait_read_settled(self._unread())
        self.flush_rx()
        self._settle(unread, after_run=False)

    def _drain_wire(self) -> None:
        """Read everything QEMU wrote. When the socket was full QEMU queued the
        rest and writes it when the socket turns writable (in its main loop):
        keep reading until two qtest round trips bring nothing new."""
        quiet = 0
        while quiet < 2:
            quiet = 0 if self._read_wire() else quiet + 1
            if quiet < 2:
                self._ping()

    def _read_wire(self) -> bool:
        assert self._wire is not None
        got = False
        while True:
            try:
                data = self._wire.recv(1 << 20)
            except BlockingIOError:
                break
            if not data:
                self._check_alive()
                raise QtestError("QEMU closed the wire")
            got = True
            self._wire_buf += data
        while len(self._wire_buf) >= 4:
            (length,) = struct.unpack_from(">I", self._wire_buf)
            if len(self._wire_buf) < 4 + length:
                break
            self._tx.append(self._wire_buf[4:4 + length])
            self._wire_buf = self._wire_buf[4 + length:]
        return got

    def collect_tx(self) -> list[bytes]:
        """Frames the e1000 transmitted that reached the wire so far (they leave
        QEMU only while the VM runs: call run(0) first)."""
        self._drain_wire()
        frames, self._tx = self._tx, []
        return frames

    def set_link(self, up: bool) -> None:
        """QMP ``set_link n0``: the socket netdev and the e1000 behind it."""
        pending = self._unread()
        self.qmp("set_link", name="n0", up=up)
        # IRQ reports for what set_link did arrive on the qtest socket: a
        # round trip there collects them.
        self._ping()
        self._settle(pending, after_run=False)
