"""MMIO and the interrupt line over a same-host unix socket: both ends.

When a driver and its e1000 service run on one kernel, the e1000 service may
offer an abstract unix socket and a one-time token (OfferMmioSocket, made by
``virtwire.server``, which also connects it). On that socket both directions
carry fixed 12-byte records (``RECORD``: kind, a, b), in order:

- driver -> NIC: WRITE (offset, value; posted), READ (offset), SYNC, and
  PCI_COMMAND (a: bit 0 bus master, bit 1 memory decode);
- NIC -> driver: ANSWER (a: the value read, 0 for SYNC and PCI_COMMAND), one
  for every READ, SYNC and PCI_COMMAND, in the order they were sent; and IRQ
  (a: the level, b: its sequence number), first the current level, then every
  change, in order with the answers; and before the IRQ record of its
  interrupt (or alone, if the line stays up), a traced frame's trace
  (docs/tracing.md): TRACE (a: its first RX descriptor, b: the context's
  trace flags) and three TRACE_DATA records whose a, b hold the trace id
  (16 bytes) and span id (8) of its irq span, as ``tracing.to_wire`` orders
  them. At most ``MAX_HELD_TRACES`` are written while the driver does not
  read; more are dropped (counted by the NIC's host).

So a read sees every write posted before it, as on the Mmio stream; the
driver's ``UnixMmio`` needs no tags, and an ICR read's answer comes after the
line fell. ``UnixMmioDevice`` (the NIC's end) runs at most ``ACCESS_SLICE``
records per turn of the event loop, and stops reading while
``MAX_PENDING_RECORDS`` wait or the driver does not take its answers: what a
driver sends is bounded by the socket buffers. A record of an unknown kind or
a bad offset closes the socket (counted by the NIC's host).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import struct
from collections.abc import Callable, Collection
from contextlib import AbstractContextManager
from typing import Protocol, cast

from virtwire.errors import BackendError, ConfigError, LimitError, VirtwireError
from virtwire.guest.mmio import IrqLine

RECORD = struct.Struct("<BxxxII")
MASK32 = 0xFFFFFFFF
# Driver -> NIC.
WRITE, READ, SYNC, PCI_COMMAND = 1, 2, 3, 4
# NIC -> driver.
ANSWER, IRQ, TRACE, TRACE_DATA = 1, 2, 3, 4
#: TRACE_DATA records after each TRACE (8 bytes of trace and span id each).
TRACE_PARTS = 3
_TRACE_DATA = struct.Struct("<Bxxx8s")
_PAIR = struct.Struct("<II")
#: Traces the NIC's end writes while the driver does not take what it writes.
MAX_HELD_TRACES = 256
PCI_BUS_MASTER, PCI_MEMORY = 1, 2
#: Records the NIC's end runs between two turns of its event loop.
ACCESS_SLICE = 512
#: Records the NIC's end holds before it stops reading the socket.
MAX_PENDING_RECORDS = 4096
#: How long ``UnixMmio.close`` waits for its posted writes to be done.
CLOSE_SYNC_S = 1.0


def _whole_records(buf: bytearray) -> list[tuple[int, int, int]]:
    """Take the whole records off the front of ``buf``."""
    whole = len(buf) - len(buf) % RECORD.size
    if not whole:
        return []
    records = list(RECORD.iter_unpack(bytes(buf[:whole])))
    del buf[:whole]
    return records


class UnixMmio(asyncio.Protocol):
    """A driver's MmioPort on the socket (``virtwire.guest.mmio.MmioPort``).

    Posted writes made in one turn of the event loop leave in one write; a
    read, sync or PCI COMMAND takes them along at once and waits for its answer,
    and so does a write to one of ``doorbells`` (e.g. TDT: the frames it
    announces should not wait for the end of the turn), except between
    ``hold`` and ``release``, which send what was posted in between as one
    write.

    A driver may also run its interrupt handler inside the read that brings
    the line's change (``on_read``, called after every read's records were
    applied), and post reads (``read_posted``) that leave with the next write:
    an interrupt then costs no task switch, and its ICR read travels with the
    RDT and TDT writes the handler made.
    """

    def __init__(self, address: str, doorbells: Collection[int] = ()) -> None:
        self.address = address
        self.doorbells = frozenset(doorbells)
        self.irq = IrqLine()
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._out = bytearray()
        self._flush_scheduled = False
        self._waiting: collections.deque[asyncio.Future[int]] = collections.deque()
        #: Inside hold(): doorbells wait for release().
        self._held = 0
        #: Called at the end of every read (answers and the line applied), and
        #: once when the socket fails: a driver's inline interrupt handler.
        self.on_read: Callable[[], None] | None = None
        self.error: BaseException | None = None
        #: A TRACE record's desc and flags, and the TRACE_DATA so far.
        self._trace: list[int] | None = None
        #: Socket writes made and accesses carried (posted writes share writes).
        self.requests = 0
        self.accesses = 0

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not subclasses of asyncio.Transport).
        transport = cast(asyncio.Transport, transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        """Answers in order; of the IRQ records only the last level of the read
        is applied (and the changes counted): nothing runs between the records
        of one read, so no waiter could see the levels in between, and a NIC
        that floods level changes cannot hold the loop with one Event call each."""
        self._buf += data
        level = -1
        changes = 0
        waiting = self._waiting
        for kind, a, b in _whole_records(self._buf):
            if kind == IRQ:
                level = a
                changes += 1
            elif kind == ANSWER and waiting:
                waiter = waiting.popleft()
                if not waiter.done():  # a cancelled caller's answer is dropped
                    waiter.set_result(a)
            elif kind == TRACE and self._trace is None:
                self._trace = [a, b]
            elif kind == TRACE_DATA and self._trace is not None:
                trace = self._trace
                trace.extend((a, b))
                if len(trace) == 2 + 2 * TRACE_PARTS:
                    self._trace = None
                    ids = b"".join(_PAIR.pack(trace[i], trace[i + 1])
                                   for i in range(2, len(trace), 2))
                    self.irq.add_wire_trace(trace[0], ids + bytes((trace[1] & 0xFF,)))
            else:
                self._fail(LimitError(f"an MMIO record of kind {kind} nobody asked for"))
                return
        if changes:
            self.irq.set(bool(level))
            self.irq.changes += changes - 1
        if self.on_read is not None:
            self.on_read()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(BackendError("the e1000 service closed the MMIO socket"))

    # -- MmioPort ------------------------------------------------------------------------
    def write(self, offset: int, value: int) -> None:
        self._check()
        self._out += RECORD.pack(WRITE, offset, value & MASK32)
        self.accesses += 1
        if offset in self.doorbells and not self._held:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def read(self, offset: int) -> int:
        return await self._ask(READ, offset)

    def read_posted(self, offset: int) -> asyncio.Future[int]:
        """A read that leaves with the next write (a doorbell, ``release``, a
        read, or the end of this turn); its answer sets the future."""
        self._check()
        self._out += RECORD.pack(READ, offset, 0)
        self.accesses += 1
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        if not self._held and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return waiter

    def hold(self) -> None:
        """Doorbells wait: what is posted until ``release`` leaves in one write."""
        self._held += 1

    def release(self) -> None:
        self._held -= 1
        if not self._held and self._out:
            self._flush()

    async def sync(self) -> None:
        await self._ask(SYNC)

    async def set_pci_command(self, *, bus_master: bool, memory: bool = True) -> None:
        await self._ask(PCI_COMMAND, 0, (PCI_BUS_MASTER if bus_master else 0)
                        | (PCI_MEMORY if memory else 0))

    async def close(self) -> None:
        if self.error is None and self.transport is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.sync(), CLOSE_SYNC_S)
        if self.transport is not None:
            self.transport.close()

    # -- internals ---------------------------------------------------------------------
    async def _ask(self, kind: int, a: int = 0, b: int = 0) -> int:
        self._check()
        self._out += RECORD.pack(kind, a, b)
        self.accesses += 1
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        self._flush()
        return await waiter

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self.error is None and self.transport is not None:
            self.transport.write(bytes(self._out))
            self.requests += 1
        self._out.clear()

    def _check(self) -> None:
        if self.error is not None:
            raise BackendError(f"e1000 service {self.address}: MMIO socket failed: "
                               f"{self.error}") from self.error

    def _fail(self, exc: BaseException) -> None:
        """The socket is gone: fail every waiting request, and every later one."""
        if self.error is None:
            self.error = exc
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(BackendError(
                    f"e1000 service {self.address}: MMIO socket failed: {exc}"))
        if self.transport is not None:
            self.transport.abort()
        if self.on_read is not None:
            self.on_read()


class MmioTarget(Protocol):
    """What the NIC's end needs of its host (``virtwire.server.e1000.E1000Server``)."""

    def mmio_read(self, offset: int) -> int:
        """A read; ConfigError/OutOfRangeError for a bad offset."""
        ...

    def mmio_write(self, offset: int, value: int) -> None: ...
    def set_pci_command(self, bus_master: bool, memory: bool) -> None: ...
    def budget_scope(self) -> AbstractContextManager[None]: ...

    def watch_irq_level(self, sink: Callable[[bool, int], None]) -> Callable[[], None]:
        """Call ``sink(level, seq)`` now and on every change; returns the unwatch."""
        ...

    def watch_rx_traces(self, sink: Callable[[int, bytes], bool]) -> Callable[[], None]:
        """Call ``sink(rx_desc, context)`` for each traced frame's interrupt, before
        its level (False: dropped, counted by the host); returns the unwatch."""
        ...

    def mmio_session_opened(self, session: UnixMmioDevice) -> bool:
        """False (counted) to refuse one more session."""
        ...

    def mmio_session_closed(self, session: UnixMmioDevice) -> None: ...


class UnixMmioDevice(asyncio.Protocol):
    """The NIC's end of one driver's socket."""

    def __init__(self, target: MmioTarget) -> None:
        self.target = target
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._pending: collections.deque[tuple[int, int, int]] = collections.deque()
        self._out = bytearray()
        #: Inside ``_run``: IRQ records join the answers, in order, and leave with them.
        self._running = False
        self._scheduled = False
        self._writing_paused = False
        self._reading_paused = False
        self._unwatch: Callable[[], None] | None = None
        self._unwatch_traces: Callable[[], None] | None = None
        #: Traces written since the driver stopped taking what is written.
        self._traces_held = 0
        self.closed = False
        #: Records run.
        self.records = 0
        #: Why this end closed the socket ("" if it did not).
        self.error = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not subclasses of asyncio.Transport).
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        if not self.target.mmio_session_opened(self):
            self.closed = True
            transport.abort()
            return
        self._unwatch = self.target.watch_irq_level(self._on_irq)
        self._unwatch_traces = self.target.watch_rx_traces(self._on_trace)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        if self._unwatch_traces is not None:
            self._unwatch_traces()
            self._unwatch_traces = None
        self.closed = True
        self.target.mmio_session_closed(self)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._traces_held = 0
        self._schedule()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        self._pending.extend(_whole_records(self._buf))
        if not self._scheduled:
            self._run()
        self._pace()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _on_irq(self, level: bool, seq: int) -> None:
        self._out += RECORD.pack(IRQ, int(level), seq & MASK32)
        if not self._running:
            self._flush()

    def _on_trace(self, desc: int, context: bytes) -> bool:
        """A traced frame's interrupt (``context``: tracing.to_wire bytes)."""
        if self.closed:
            return True
        if self._writing_paused:
            if self._traces_held >= MAX_HELD_TRACES:
                return False
            self._traces_held += 1
        out = self._out
        out += RECORD.pack(TRACE, desc & MASK32, context[24])
        for i in range(TRACE_PARTS):
            out += _TRACE_DATA.pack(TRACE_DATA, context[8 * i:8 * i + 8])
        if not self._running:
            self._flush()
        return True

    def _flush(self) -> None:
        if self._out and self.transport is not None and not self.closed:
            self.transport.write(bytes(self._out))
        self._out.clear()

    def _schedule(self) -> None:
        if not self._scheduled and not self.closed:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._run)

    def _run(self) -> None:
        """Run up to ACCESS_SLICE records in order; the rest on the next turn."""
        self._scheduled = False
        if self.closed or self._writing_paused:
            return
        target, pending, out = self.target, self._pending, self._out
        n = min(len(pending), ACCESS_SLICE)
        self._running = True
        try:
            with target.budget_scope():
                for _ in range(n):
                    kind, a, b = pending.popleft()
                    if kind == WRITE:
                        target.mmio_write(a, b)
                        continue
                    if kind == READ:
                        a = target.mmio_read(a)
                    elif kind == PCI_COMMAND:
                        target.set_pci_command(bool(b & PCI_BUS_MASTER), bool(b & PCI_MEMORY))
                        a = 0
                    elif kind == SYNC:
                        a = 0
                    else:
                        raise ConfigError(f"unknown MMIO record kind {kind}")
                    out += RECORD.pack(ANSWER, a, 0)
        except VirtwireError as exc:
            self._refuse(exc)
            return
        finally:
            self._running = False
            self.records += n
        self._flush()
        if pending:
            self._schedule()
        self._pace()

    def _pace(self) -> None:
        """Stop reading while too many records wait; go on once most are done."""
        if self.transport is None or self.closed:
            return
        waiting = len(self._pending)
        if not self._reading_paused and waiting >= MAX_PENDING_RECORDS:
            self._reading_paused = True
            self.transport.pause_reading()
        elif self._reading_paused and waiting < MAX_PENDING_RECORDS // 4:
            self._reading_paused = False
            self.transport.resume_reading()

    def _refuse(self, exc: VirtwireError) -> None:
        self.error = f"{type(exc).__name__}: {exc}"
        self.closed = True
        self._pending.clear()
        if self.transport is not None:
            self.transport.abort()
