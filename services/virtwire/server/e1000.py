"""The e1000 service: virtwire.v1.E1000Service over a hw.e1000.E1000.

The NIC is a NetClient of this server, so NetClientService (inject, capture,
set_link) and LinkService (its peer dials in, or it dials ``--peer``) cover it
like any other. Its DMA goes to a guestmem service through GuestMemClient:
shared memory on the same host, batched RPCs otherwise.

A batch of register accesses (AccessRegisters, one Mmio request) runs in
chunks of ``ACCESS_SLICE``, each sharing one slice of the NIC's work budget,
with a turn of the event loop in between: a batch of TDT, TCTL or RDT writes
holds the loop no longer than a single write may.

With ``--link-transport auto`` a driver on this kernel may ask for the
same-host MMIO socket instead (OfferMmioSocket): a one-time token on a
``virtwire.link.unix.FastPathListener`` whose connections become
``virtwire.guest.mmio_unix.UnixMmioDevice`` sessions over this NIC.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
from opentelemetry.trace import SpanContext

from virtwire.address import parse_peer, parse_sockaddr
from virtwire.errors import ConfigError, LimitError, OutOfRangeError
from virtwire.guest.mmio_unix import UnixMmioDevice
from virtwire.hw.e1000 import COMPAT_VERSIONS, E1000, MODELS
from virtwire.hw.e1000_regs import E1000_STATUS_LU, STATUS
from virtwire.hw.timer import AsyncioScheduler, SliceBudget
from virtwire.link import unix as fastpath
from virtwire.mem.client import GuestMemClient
from virtwire.net.eth import format_mac, parse_mac
from virtwire.server.base import ServiceHost
from virtwire.server.link import boot_id
from virtwire.server.metrics import MetricSet, Snapshot, mem_metrics
from virtwire.tracing import to_wire
from virtwire.v1 import e1000_pb2, e1000_pb2_grpc

logger = logging.getLogger(__name__)

BAR0_SIZE = 0x20000
MAX_ACCESSES = 4096
#: Accesses run between two turns of the event loop (~2 ms of register writes).
ACCESS_SLICE = 512
#: What a read of BAR0 returns while memory decode is off (a master abort).
MASTER_ABORT = 0xFFFFFFFF
IRQ_QUEUE_LEN = 1024
#: Traced frames' interrupts waiting for one IRQ watcher (WatchIrq stream or
#: same-host session); more are dropped and counted (irq_traces_dropped).
MAX_PENDING_RX_TRACES = 256
#: Same-host MMIO sessions one NIC serves at once (a driver needs one).
MAX_MMIO_SESSIONS = 8
#: An offer not taken within this long is withdrawn.
MMIO_OFFER_TTL_S = 2 * fastpath.HANDSHAKE_TIMEOUT_S


def check_offset(offset: int) -> None:
    """A BAR0 offset must be 4-byte aligned (ConfigError) and inside the 128 KiB
    BAR (OutOfRangeError)."""
    if offset % 4:
        raise ConfigError(f"register offset {offset:#x} is not 4-byte aligned")
    if offset >= BAR0_SIZE:
        raise OutOfRangeError(f"register offset {offset:#x} is outside BAR0 "
                              f"(size {BAR0_SIZE:#x})")


#: 64-bit octet counters hw_stats() joins from their halves (the halves are left out).
_OCTET_REGISTERS = frozenset({"GORC", "GOTC", "TOR", "TOT"})
_OCTET_HALVES = frozenset({f"{r}{h}" for r in _OCTET_REGISTERS for h in "LH"})


class IrqWatch:
    """One IRQ watcher's messages: (level, seq) in order (the oldest dropped when
    full: the seq shows the gap), and the traces the next one carries."""

    __slots__ = ("queue", "traces")

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bool, int]] = asyncio.Queue(IRQ_QUEUE_LEN)
        self.traces: list[tuple[int, bytes]] = []

    def put(self, level: bool, seq: int) -> None:
        if self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait((level, seq))


class E1000Server(ServiceHost):
    """One e1000 NIC; the NetClient is named ``name`` (default "e1000")."""

    service_name = "e1000"

    def __init__(self, listen: str = "127.0.0.1:0", *, guestmem: str, mac: str,
                 model: str = "82540EM", name: str = "e1000", peer: str = "",
                 force_rpc: bool = False, compat: str = "9.0") -> None:
        super().__init__(listen)
        if model not in MODELS:
            raise ConfigError(f"unknown e1000 model {model!r}: use one of "
                              f"{', '.join(sorted(MODELS))}")
        self.mac = parse_mac(mac)
        if self.mac[0] & 1:
            raise ConfigError(f"MAC {mac} is a multicast address")
        if compat not in COMPAT_VERSIONS:
            raise ConfigError(f"unknown QEMU compat {compat!r}: use one of "
                              f"{', '.join(COMPAT_VERSIONS)}")
        self.compat = compat
        parse_sockaddr(guestmem, allow_port_zero=False)
        if peer:
            parse_peer(peer)
        self.guestmem_address = guestmem
        self.model = model
        self.nic_name = name
        self.peer = peer
        self.force_rpc = force_rpc
        self.dma: GuestMemClient | None = None
        self.nic: E1000 | None = None
        self.memory_enabled = True
        self.irq_seq = 0
        #: Rising edges of the interrupt line (interrupts delivered to the guest).
        self.irq_raised = 0
        self._irq_watchers: list[IrqWatch] = []
        self._irq_sinks: list[Callable[[bool, int], None]] = []
        #: Same-host sessions' trace sinks: ``sink(rx_desc, context wire bytes)``,
        #: False when the trace was dropped.
        self._trace_sinks: list[Callable[[int, bytes], bool]] = []
        #: Traced frames' interrupts no watcher had room for (GetStats drops).
        self.irq_traces_dropped = 0
        #: The same-host MMIO socket (made on the first offer) and its sessions.
        self.mmio_listener: fastpath.FastPathListener | None = None
        self.mmio_sessions: set[UnixMmioDevice] = set()
        #: Offers not made (another kernel, --link-transport grpc, a cap).
        self.mmio_offers_declined = 0
        #: Sessions refused at MAX_MMIO_SESSIONS, and closed for a bad record.
        self.mmio_sessions_refused = 0
        self.mmio_records_refused = 0

    def add_servicers(self, server: grpc.aio.Server) -> Sequence[str]:
        e1000_pb2_grpc.add_E1000ServiceServicer_to_server(E1000Servicer(self), server)
        return [e1000_pb2.DESCRIPTOR.services_by_name["E1000Service"].full_name]

    async def start(self) -> None:
        self.dma = await GuestMemClient.connect(self.guestmem_address,
                                                prefer_shm=not self.force_rpc)
        try:
            self.nic = E1000(self.nic_name, self.mac, self.dma,
                             model=self.model,  # type: ignore[arg-type]
                             set_irq=self._on_irq, scheduler=AsyncioScheduler(),
                             compat=self.compat)  # type: ignore[arg-type]
            self.nic.rx_trace = self._on_rx_trace
            self.registry.add(self.nic)
            if self.peer:
                self.registry.connect(self.nic, self.peer)
            await super().start()
        except BaseException:
            await self.registry.close()
            await self.dma.close()
            raise
        logger.info("e1000 %s model=%s mac=%s, DMA to %s over %s", self.nic_name, self.model,
                    format_mac(self.mac), self.guestmem_address, self.dma.path)

    async def close_backends(self) -> None:
        for session in list(self.mmio_sessions):
            session.close()
        if self.mmio_listener is not None:
            await self.mmio_listener.close()
            self.mmio_listener = None
        if self.dma is not None:
            await self.dma.close()

    # -- register file ------------------------------------------------------------
    def device(self) -> E1000:
        assert self.nic is not None, "the e1000 service is not started"
        return self.nic

    def access(self, acc: e1000_pb2.RegisterAccess) -> int | None:
        """One access; the read value, or None for a write."""
        if acc.write:
            self.mmio_write(acc.offset, acc.value)
            return None
        return self.mmio_read(acc.offset)

    # mmio_read / mmio_write carry every register access of a driver (several
    # per frame): the offset check and device() run only when they would fail.
    def mmio_read(self, offset: int) -> int:
        nic = self.nic
        if offset & 3 or not 0 <= offset < BAR0_SIZE or nic is None:
            check_offset(offset)
            nic = self.device()
        return nic.mmio_read(offset) if self.memory_enabled else MASTER_ABORT

    def mmio_write(self, offset: int, value: int) -> None:
        nic = self.nic
        if offset & 3 or not 0 <= offset < BAR0_SIZE or nic is None:
            check_offset(offset)
            nic = self.device()
        if self.memory_enabled:
            nic.mmio_write(offset, value)

    def budget_scope(self) -> _BudgetScope:
        """The NIC's budget; frames it sent leave on same-host links as it ends."""
        return _BudgetScope(self.device().budget)

    async def access_all(self, accesses: Sequence[e1000_pb2.RegisterAccess]) -> list[int]:
        """Every access in order (all checked first); the values read."""
        if len(accesses) > MAX_ACCESSES:
            raise ConfigError(f"{len(accesses)} accesses in one request (at most {MAX_ACCESSES})")
        for acc in accesses:
            check_offset(acc.offset)
        nic = self.device()
        values = []
        for start in range(0, len(accesses), ACCESS_SLICE):
            if start:
                await asyncio.sleep(0)
            with nic.budget_scope():
                for acc in accesses[start:start + ACCESS_SLICE]:
                    value = self.access(acc)
                    if value is not None:
                        values.append(value)
        return values

    def set_pci_command(self, bus_master: bool, memory: bool) -> None:
        self.memory_enabled = memory
        self.device().set_bus_master(bus_master)

    # -- interrupt line -------------------------------------------------------------
    def _on_irq(self, level: bool) -> None:
        self.irq_seq += 1
        self.irq_raised += level
        for sink in self._irq_sinks:
            sink(level, self.irq_seq)
        for watch in self._irq_watchers:
            watch.put(level, self.irq_seq)

    def _on_rx_trace(self, desc: int, ctx: SpanContext) -> None:
        """A traced frame's interrupt (before the line changes): to every watcher,
        with the next message (one with the same level if the line stays)."""
        wire = to_wire(ctx)
        level = self.device().irq_level
        for watch in self._irq_watchers:
            if len(watch.traces) >= MAX_PENDING_RX_TRACES:
                self.irq_traces_dropped += 1
                continue
            watch.traces.append((desc, wire))
            if watch.queue.empty():
                watch.put(level, self.irq_seq)
        for sink in self._trace_sinks:
            if not sink(desc, wire):
                self.irq_traces_dropped += 1

    async def watch_irq(self) -> AsyncIterator[tuple[bool, int, list[tuple[int, bytes]]]]:
        """(level, seq, traces) now and on every change or traced frame."""
        watch = IrqWatch()
        watch.put(self.device().irq_level, self.irq_seq)
        self._irq_watchers.append(watch)
        try:
            while True:
                level, seq = await watch.queue.get()
                traces, watch.traces = watch.traces, []
                yield level, seq, traces
        finally:
            self._irq_watchers.remove(watch)

    def watch_rx_traces(self, sink: Callable[[int, bytes], bool]) -> Callable[[], None]:
        """``sink(rx_desc, context)`` for each traced frame, before its level; the
        unwatch (a same-host session, which caps what it holds itself)."""
        self._trace_sinks.append(sink)
        return lambda: self._trace_sinks.remove(sink)

    def watch_irq_level(self, sink: Callable[[bool, int], None]) -> Callable[[], None]:
        """``sink(level, seq)`` now and on every change, in the NIC's call; the unwatch."""
        sink(self.device().irq_level, self.irq_seq)
        self._irq_sinks.append(sink)
        return lambda: self._irq_sinks.remove(sink)

    # -- the same-host MMIO socket ----------------------------------------------------
    async def offer_mmio_socket(self, driver_boot_id: str) -> tuple[str, bytes, str]:
        """(socket name, token, "") for a driver on this kernel, else ("", b"", why)."""
        why = ""
        if self.registry.link_transport != "auto":
            why = f"--link-transport {self.registry.link_transport}"
        elif not driver_boot_id or driver_boot_id != boot_id():
            why = "the driver runs on another kernel"
        elif len(self.mmio_sessions) >= MAX_MMIO_SESSIONS:
            self.mmio_sessions_refused += 1
            why = f"{MAX_MMIO_SESSIONS} MMIO sessions are open"
        if not why:
            if self.mmio_listener is None:
                self.mmio_listener = fastpath.FastPathListener()
            listener = self.mmio_listener
            try:
                offer = await listener.offer(lambda: UnixMmioDevice(self))
            except (LimitError, OSError) as exc:
                why = f"no socket: {exc}"
            else:
                asyncio.get_running_loop().call_later(MMIO_OFFER_TTL_S, listener.withdraw, offer)
                return offer.socket_name, offer.token, ""
        self.mmio_offers_declined += 1
        return "", b"", why

    def collect_metrics(self, ms: MetricSet) -> Snapshot:
        yield from super().collect_metrics(ms)
        nic = self.nic
        if nic is None:
            return
        name = nic.name
        for register, value in nic.hw_stats().items():
            if register in _OCTET_REGISTERS:
                ms.counter("virtwire_e1000_statistics_bytes",
                           "The e1000's octet statistics registers (64-bit GORC, GOTC, TOR, "
                           "TOT), read without clearing them", value,
                           netclient=name, register=register)
            elif register not in _OCTET_HALVES:
                ms.counter("virtwire_e1000_statistics",
                           "The e1000's statistics registers (packets, errors, collisions), "
                           "read without clearing them: a guest read resets them",
                           value, netclient=name, register=register)
        for cause, value in nic.drop_counters().items():
            ms.counter("virtwire_e1000_dropped_frames",
                       "Frames or descriptors the e1000 dropped, by cause", value,
                       netclient=name, cause=cause)
        for what, value in nic.deferred_counters().items():
            ms.counter("virtwire_e1000_deferred",
                       "Work left for a later turn of the event loop (nothing lost), by kind",
                       value, netclient=name, kind=what)
        ms.counter("virtwire_e1000_interrupts", "Rising edges of the interrupt line",
                   self.irq_raised, netclient=name)
        ms.counter("virtwire_e1000_irq_transitions",
                   "Changes of the interrupt line's level (either way)", self.irq_seq,
                   netclient=name)
        ms.gauge("virtwire_e1000_irq_level", "The interrupt line's level (1: raised)",
                 1 if nic.irq_level else 0, netclient=name)
        ms.gauge("virtwire_e1000_link_up", "STATUS.LU: 1 while the NIC reports link up",
                 1 if nic.mac_reg[STATUS] & E1000_STATUS_LU else 0, netclient=name)
        for what, value in self.mmio_counters().items():
            if what == "sessions":
                ms.gauge("virtwire_e1000_mmio_sessions",
                         "Drivers whose MMIO uses the same-host socket", value, netclient=name)
            else:
                ms.counter(f"virtwire_e1000_mmio_{what}",
                           f"Same-host MMIO socket: {what.replace('_', ' ')}", value,
                           netclient=name)
        if self.dma is not None:
            mem_metrics(self.dma.counters, ms, netclient=name)

    def mmio_counters(self) -> dict[str, int]:
        """What GetStats shows of the same-host MMIO socket."""
        listener = self.mmio_listener
        return {"sessions": len(self.mmio_sessions),
                "offers_declined": self.mmio_offers_declined,
                "sessions_refused": self.mmio_sessions_refused,
                "records_refused": self.mmio_records_refused,
                "tokens_refused": listener.tokens_refused if listener else 0,
                "handshakes_refused": listener.handshakes_refused if listener else 0}

    def mmio_session_opened(self, session: UnixMmioDevice) -> bool:
        if len(self.mmio_sessions) >= MAX_MMIO_SESSIONS:
            self.mmio_sessions_refused += 1
            return False
        self.mmio_sessions.add(session)
        logger.info("e1000 %s: a driver's MMIO moved to the same-host socket", self.nic_name)
        return True

    def mmio_session_closed(self, session: UnixMmioDevice) -> None:
        if session in self.mmio_sessions:
            self.mmio_sessions.discard(session)
            if session.error:
                self.mmio_records_refused += 1
                logger.warning("e1000 %s: MMIO socket closed: %s", self.nic_name, session.error)


class _BudgetScope:
    """``with fastpath.Dispatching(), nic.budget_scope():`` as one plain context
    manager: it opens every record run of the same-host MMIO socket, on the
    latency path of each TDT write, where two generator-based scopes cost a
    cold wake-up tens of microseconds (issue 10)."""

    __slots__ = ("budget", "dispatch", "owned")

    def __init__(self, budget: SliceBudget) -> None:
        self.budget = budget
        self.dispatch = fastpath.Dispatching()
        self.owned = False

    def __enter__(self) -> None:
        self.dispatch.__enter__()
        self.owned = self.budget.begin()

    def __exit__(self, *exc: object) -> None:
        try:
            if self.owned:
                self.budget.end()
        finally:
            self.dispatch.__exit__(*exc)


class E1000Servicer(e1000_pb2_grpc.E1000ServiceServicer):
    """Thin adapter: RPCs to E1000Server methods."""

    def __init__(self, host: E1000Server) -> None:
        self.host = host

    async def ReadRegister(self, request: e1000_pb2.ReadRegisterRequest,
                           context: grpc.aio.ServicerContext[Any, Any]
                           ) -> e1000_pb2.ReadRegisterResponse:
        value = self.host.access(e1000_pb2.RegisterAccess(offset=request.offset))
        assert value is not None
        return e1000_pb2.ReadRegisterResponse(value=value)

    async def WriteRegister(self, request: e1000_pb2.WriteRegisterRequest,
                            context: grpc.aio.ServicerContext[Any, Any]
                            ) -> e1000_pb2.WriteRegisterResponse:
        self.host.access(e1000_pb2.RegisterAccess(offset=request.offset, write=True,
                                                  value=request.value))
        return e1000_pb2.WriteRegisterResponse()

    async def AccessRegisters(self, request: e1000_pb2.AccessRegistersRequest,
                              context: grpc.aio.ServicerContext[Any, Any]
                              ) -> e1000_pb2.AccessRegistersResponse:
        values = await self.host.access_all(request.accesses)
        return e1000_pb2.AccessRegistersResponse(values=values)

    async def Mmio(self, request_iterator: AsyncIterator[e1000_pb2.MmioRequest],
                   context: grpc.aio.ServicerContext[Any, Any]
                   ) -> AsyncIterator[e1000_pb2.MmioResponse]:
        async for request in request_iterator:
            values = await self.host.access_all(request.accesses)
            if values or request.sync:
                yield e1000_pb2.MmioResponse(tag=request.tag, values=values)

    async def SetPciCommand(self, request: e1000_pb2.SetPciCommandRequest,
                            context: grpc.aio.ServicerContext[Any, Any]
                            ) -> e1000_pb2.SetPciCommandResponse:
        self.host.set_pci_command(request.bus_master, request.memory)
        return e1000_pb2.SetPciCommandResponse()

    async def WatchIrq(self, request: e1000_pb2.WatchIrqRequest,
                       context: grpc.aio.ServicerContext[Any, Any]
                       ) -> AsyncIterator[e1000_pb2.WatchIrqResponse]:
        async for level, seq, traces in self.host.watch_irq():
            yield e1000_pb2.WatchIrqResponse(
                level=level, seq=seq,
                traces=[e1000_pb2.RxTrace(rx_desc=d, context=c) for d, c in traces])

    async def OfferMmioSocket(self, request: e1000_pb2.OfferMmioSocketRequest,
                              context: grpc.aio.ServicerContext[Any, Any]
                              ) -> e1000_pb2.OfferMmioSocketResponse:
        name, token, why = await self.host.offer_mmio_socket(request.boot_id)
        return e1000_pb2.OfferMmioSocketResponse(socket=name, token=token, reason=why)

    async def GetStats(self, request: e1000_pb2.GetStatsRequest,
                       context: grpc.aio.ServicerContext[Any, Any]
                       ) -> e1000_pb2.GetStatsResponse:
        nic = self.host.device()
        return e1000_pb2.GetStatsResponse(
            registers=nic.hw_stats(),
            drops={**nic.drop_counters(), "irq_traces_dropped": self.host.irq_traces_dropped},
            deferred=nic.deferred_counters(), mmio_socket=self.host.mmio_counters(),
            link_up=bool(nic.mac_reg[STATUS] & E1000_STATUS_LU),
            irq_level=nic.irq_level)

    async def DescribeDevice(self, request: e1000_pb2.DescribeDeviceRequest,
                             context: grpc.aio.ServicerContext[Any, Any]
                             ) -> e1000_pb2.DescribeDeviceResponse:
        host = self.host
        nic = host.device()
        return e1000_pb2.DescribeDeviceResponse(
            model=host.model, device_id=nic.device_id, mac=format_mac(host.mac),
            guestmem=host.guestmem_address, dma_path=host.dma.path if host.dma else "",
            netclient=nic.name)

    async def ResetDevice(self, request: e1000_pb2.ResetDeviceRequest,
                          context: grpc.aio.ServicerContext[Any, Any]
                          ) -> e1000_pb2.ResetDeviceResponse:
        self.host.device().reset()
        return e1000_pb2.ResetDeviceResponse()
