"""How a driver reaches its NIC: BAR0 accesses and the interrupt line.

``MmioPort`` is what the e1000 driver uses. ``LocalMmio`` calls an in-process
E1000 directly (tests, single process); ``GrpcMmio`` talks to an e1000 service
over its Mmio stream: writes are posted (batched with whatever else is
written in the same event-loop turn, never one round trip each), a read waits
for its answer, and the WatchIrq stream drives the ``IrqLine``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import grpc
from opentelemetry.trace import SpanContext

from virtwire import tls
from virtwire.errors import BackendError, ConfigError, VirtwireError
from virtwire.rpc.options import GRPC_EOF, GRPC_OPTIONS
from virtwire.rpc.status import translated
from virtwire.tracing import from_wire, now_ns
from virtwire.v1 import e1000_pb2, e1000_pb2_grpc

logger = logging.getLogger(__name__)


#: Traced frames' interrupts a driver may have waiting (RX descriptor -> irq
#: context); more are dropped and counted in ``IrqLine.traces_dropped``.
MAX_PENDING_TRACES = 256


class IrqLine:
    """A level-triggered interrupt line as the driver sees it (INTx).

    With it come the traces of traced frames (docs/tracing.md): ``traces``
    maps a frame's first RX descriptor to (the context of its irq span, when
    the guest learnt of it), for the driver to find as it cleans that
    descriptor; the NIC's notification brings them before (or with) the level.
    """

    def __init__(self) -> None:
        self.level = False
        self.changes = 0
        self._raised = asyncio.Event()
        self.traces: dict[int, tuple[SpanContext, int]] = {}
        #: When the line last rose while traces were waiting (tracing.now_ns).
        self.raised_ns = 0
        #: The driver's look at a trace as it comes: True if the frame was
        #: already taken (polled before the notification arrived), not kept.
        self.on_trace: Callable[[int, SpanContext], bool] | None = None
        #: Traces refused at MAX_PENDING_TRACES, and for a malformed context.
        self.traces_dropped = 0
        self.traces_refused = 0

    def set(self, level: bool) -> None:
        self.changes += 1
        self.level = level
        if level:
            if self.traces:
                self.raised_ns = now_ns()
            self._raised.set()
        else:
            self._raised.clear()

    def add_trace(self, desc: int, ctx: SpanContext) -> None:
        """A traced frame's interrupt: written back at RX descriptor ``desc``."""
        on_trace = self.on_trace
        if on_trace is not None and on_trace(desc, ctx):
            return
        traces = self.traces
        if len(traces) >= MAX_PENDING_TRACES and desc not in traces:
            self.traces_dropped += 1
            return
        traces[desc] = (ctx, now_ns())

    def add_wire_trace(self, desc: int, context: bytes) -> None:
        """``add_trace`` from a notification: a malformed context is counted in
        ``traces_refused`` and ignored (the frame is still received)."""
        try:
            ctx = from_wire(context)
        except ConfigError:
            self.traces_refused += 1
            return
        self.add_trace(desc, ctx)

    async def wait_high(self) -> None:
        """Return once the line is (or becomes) asserted."""
        await self._raised.wait()


class MmioPort(Protocol):
    """BAR0 of one NIC, PCI COMMAND, and its interrupt line."""

    irq: IrqLine

    def write(self, offset: int, value: int) -> None:
        """A posted 32-bit write."""
        ...

    async def read(self, offset: int) -> int:
        """A 32-bit read (all posted writes before it are done first)."""
        ...

    async def sync(self) -> None:
        """Wait until every posted write has been done."""
        ...

    async def set_pci_command(self, *, bus_master: bool, memory: bool = True) -> None:
        """PCI COMMAND bits 2 (bus master) and 1 (memory decode)."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class InlineIrqPort(MmioPort, Protocol):
    """A port whose line changes arrive in event-loop callbacks (not inside the
    driver's own accesses), so the driver may handle interrupts right there:
    ``on_read`` runs after every read from the NIC, ``read_posted`` posts a
    read that leaves with the next write, and between ``hold`` and ``release``
    everything posted leaves as one write (``virtwire.guest.mmio_unix.UnixMmio``)."""

    on_read: Callable[[], None] | None

    def read_posted(self, offset: int) -> asyncio.Future[int]: ...
    def hold(self) -> None: ...
    def release(self) -> None: ...


class LocalNic(Protocol):
    """What LocalMmio needs of an in-process NIC (virtwire.hw.e1000.E1000)."""

    def mmio_read(self, offset: int) -> int: ...
    def mmio_write(self, offset: int, value: int) -> None: ...
    def set_bus_master(self, enable: bool) -> None: ...


class LocalMmio:
    """An in-process NIC. Create the NIC with ``set_irq=port.irq.set``."""

    def __init__(self) -> None:
        self.irq = IrqLine()
        self.nic: LocalNic | None = None

    def attach(self, nic: LocalNic) -> None:
        self.nic = nic
        if hasattr(nic, "rx_trace"):  # an E1000: its traced frames' interrupts
            nic.rx_trace = self.irq.add_trace

    def _nic(self) -> LocalNic:
        if self.nic is None:
            raise BackendError("LocalMmio has no NIC attached")
        return self.nic

    def write(self, offset: int, value: int) -> None:
        self._nic().mmio_write(offset, value)

    async def read(self, offset: int) -> int:
        return self._nic().mmio_read(offset)

    async def sync(self) -> None:
        pass

    async def set_pci_command(self, *, bus_master: bool, memory: bool = True) -> None:
        self._nic().set_bus_master(bus_master)

    async def close(self) -> None:
        pass


class GrpcMmio:
    """An e1000 service's BAR0 over its Mmio stream, and its WatchIrq stream."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.irq = IrqLine()
        self._channel = tls.aio_channel(address, options=GRPC_OPTIONS)
        self._stub = e1000_pb2_grpc.E1000ServiceStub(self._channel)
        self._call: grpc.aio.StreamStreamCall[e1000_pb2.MmioRequest,
                                              e1000_pb2.MmioResponse] | None = None
        self._posted: list[e1000_pb2.RegisterAccess] = []
        self._flush_scheduled = False
        self._tag = 0
        self._waiting: dict[int, asyncio.Future[list[int]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        # Requests go out through one writer task, in the order they were made.
        # Callers never await the stream's write() themselves: grpc.aio cancels
        # the whole RPC when a task is cancelled inside write(), and a caller's
        # timeout or a driver going down must not take the NIC's stream with it.
        self._outbox: asyncio.Queue[e1000_pb2.MmioRequest] = asyncio.Queue()
        self.error: BaseException | None = None
        #: Requests sent and accesses carried (posted writes share requests).
        self.requests = 0
        self.accesses = 0

    async def connect(self, timeout: float = 10.0) -> GrpcMmio:
        """Open the streams; BackendError if the e1000 service is unreachable."""
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
        except TimeoutError:
            await self._channel.close(None)
            raise BackendError(f"e1000 service {self.address} unreachable") from None
        self._call = self._stub.Mmio()
        irq_call = self._stub.WatchIrq(e1000_pb2.WatchIrqRequest())
        self._tasks = [asyncio.create_task(self._write_requests()),
                       asyncio.create_task(self._read_responses()),
                       asyncio.create_task(self._watch_irq(irq_call))]
        return self

    def write(self, offset: int, value: int) -> None:
        self._check()
        self._posted.append(e1000_pb2.RegisterAccess(offset=offset, write=True, value=value))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_posted)

    def _flush_posted(self) -> None:
        self._flush_scheduled = False
        if self._posted and self.error is None:
            self._enqueue([], sync=False)

    def _enqueue(self, accesses: list[e1000_pb2.RegisterAccess],
                 sync: bool) -> asyncio.Future[list[int]] | None:
        """Queue the posted writes, then ``accesses``, as one request.

        Synchronous, so a request never overtakes writes posted before it (PCI
        ordering); returns the future for its response when it has reads or sync.
        """
        if self._posted:
            accesses = [*self._posted, *accesses]
            self._posted = []
        if not accesses and not sync:
            return None
        self._tag += 1
        waiter: asyncio.Future[list[int]] | None = None
        if sync or any(not a.write for a in accesses):
            waiter = asyncio.get_running_loop().create_future()
            self._waiting[self._tag] = waiter
        self._outbox.put_nowait(e1000_pb2.MmioRequest(accesses=accesses, sync=sync,
                                                      tag=self._tag))
        self.requests += 1
        self.accesses += len(accesses)
        return waiter

    async def _send(self, accesses: list[e1000_pb2.RegisterAccess],
                    sync: bool) -> list[int] | None:
        self._check()
        waiter = self._enqueue(accesses, sync)
        # A cancelled caller cancels only its waiter; the response is dropped.
        return await waiter if waiter is not None else None

    async def read(self, offset: int) -> int:
        self._check()
        values = await self._send([e1000_pb2.RegisterAccess(offset=offset)], sync=False)
        assert values is not None
        return values[-1]

    async def sync(self) -> None:
        self._check()
        await self._send([], sync=True)

    async def set_pci_command(self, *, bus_master: bool, memory: bool = True) -> None:
        await self.sync()
        with translated(f"e1000 service {self.address}"):
            await self._stub.SetPciCommand(e1000_pb2.SetPciCommandRequest(
                bus_master=bus_master, memory=memory))

    def _check(self) -> None:
        if self.error is not None:
            raise BackendError(f"e1000 service {self.address}: MMIO stream failed: "
                               f"{self.error}") from self.error

    async def _read_responses(self) -> None:
        assert self._call is not None
        try:
            while True:
                with translated():
                    msg = await self._call.read()
                if msg is GRPC_EOF:
                    raise BackendError("the e1000 service closed the MMIO stream")
                assert isinstance(msg, e1000_pb2.MmioResponse)
                waiter = self._waiting.pop(msg.tag, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(list(msg.values))
        except VirtwireError as exc:
            self._fail(exc)

    async def _write_requests(self) -> None:
        assert self._call is not None
        try:
            while True:
                request = await self._outbox.get()
                with translated():
                    await self._call.write(request)
        except (VirtwireError, asyncio.InvalidStateError) as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        """The stream is gone: fail every waiting request, and every later one."""
        if self.error is None:
            self.error = exc
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(BackendError(
                    f"e1000 service {self.address}: MMIO stream failed: {exc}"))
        self._waiting.clear()

    async def _watch_irq(self, call: grpc.aio.UnaryStreamCall[
            e1000_pb2.WatchIrqRequest, e1000_pb2.WatchIrqResponse]) -> None:
        with contextlib.suppress(VirtwireError), translated():
            async for change in call:
                irq = self.irq
                if change.traces:
                    for trace in change.traces:
                        irq.add_wire_trace(trace.rx_desc, trace.context)
                    if change.level == irq.level:
                        continue  # traces for an interrupt already told
                irq.set(change.level)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            if self._call is not None and self.error is None:
                await self.sync()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._channel.close(None)
