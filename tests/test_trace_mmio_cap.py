"""The same-host MMIO socket's cap on traces a driver does not read (docs/e1000.md,
"Traces on the interrupt notification"): while the driver's end takes nothing, the
NIC's end writes the TRACE records of at most 256 traced frames' interrupts
beyond what the socket already holds, counts the rest in ``irq_traces_dropped``
(GetStats drops), and once the driver reads again every held trace arrives and
new ones flow. In process: a real e1000 service and guestmem, the driver on
``UnixMmio``."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from opentelemetry.trace import SpanContext, TraceFlags
from test_guest import MAC_A, frame_to, plug

from virtwire import tracing
from virtwire.guest.driver import E1000Driver
from virtwire.guest.mmio_unix import MAX_HELD_TRACES, UnixMmio, UnixMmioDevice
from virtwire.mem.client import GuestMemClient
from virtwire.net.eth import format_mac
from virtwire.server.e1000 import E1000Server
from virtwire.server.guest import open_mmio_socket
from virtwire.server.guestmem import GuestMemServer
from virtwire.tracing import FinishedSpan, TracedFrame
from virtwire.v1 import e1000_pb2, e1000_pb2_grpc

from support.doubles import Sink, until

#: Receive descriptors: room for every frame of the test without the driver cleaning.
RX_RING = 1024
#: Traced frames sent after the NIC's end stopped writing: the cap and this many more.
OVER = 44
#: The NIC's end gives up finding the socket full after this many frames.
MAX_FILL = 600


def root(n: int) -> SpanContext:
    """Frame ``n``'s own trace (trace id ``n + 1``)."""
    return SpanContext(n + 1, 0x5000 + n, is_remote=True, trace_flags=TraceFlags(1))


@dataclass
class Rig:
    nic: E1000Server
    port: UnixMmio
    session: UnixMmioDevice
    driver: E1000Driver
    received: list[bytes]
    peer: Sink
    #: (RX descriptor, irq context) of every trace the driver's end read, in order.
    arrived: list[tuple[int, SpanContext]]


@contextlib.asynccontextmanager
async def socket_rig() -> AsyncIterator[Rig]:
    mem = GuestMemServer("127.0.0.1:0", 8 << 20)
    await mem.start()
    nic = E1000Server("127.0.0.1:0", guestmem=mem.address, mac=format_mac(MAC_A))
    await nic.start()
    port, why = await open_mmio_socket(nic.address, nic.address, 5.0)
    assert port is not None, why
    gmem = await GuestMemClient.connect(mem.address)
    # No NAPI polling and no watchdog run: the driver touches the NIC only when
    # the socket brings it something.
    driver = E1000Driver(port, gmem, rx_ring=RX_RING, poll_interval=0.0,
                         watchdog_interval=60.0)
    received: list[bytes] = []
    driver.rx_handlers.append(received.extend)
    arrived: list[tuple[int, SpanContext]] = []
    late = port.irq.on_trace  # the driver's own look at each trace, kept

    def seen(desc: int, ctx: SpanContext) -> bool:
        arrived.append((desc, ctx))
        return late(desc, ctx) if late is not None else False

    port.irq.on_trace = seen
    peer = Sink("peer")
    plug(nic.device(), peer)
    await driver.up()
    try:
        (session,) = nic.mmio_sessions
        yield Rig(nic, port, session, driver, received, peer, arrived)
    finally:
        await driver.down()
        await port.close()
        await gmem.close()
        await nic.stop(grace=0.1)
        await mem.stop(grace=0.1)


def spans_since(seq: int) -> list[FinishedSpan]:
    return tracing.recent().after(seq, 100_000)


async def drops(nic: E1000Server) -> int:
    """``irq_traces_dropped`` as users see it: GetStats' drops."""
    async with grpc.aio.insecure_channel(nic.address) as channel:
        stats = await e1000_pb2_grpc.E1000ServiceStub(channel).GetStats(
            e1000_pb2.GetStatsRequest(), timeout=5)
    return int(stats.drops["irq_traces_dropped"])


def send_traced(rig: Rig, n: int) -> None:
    rig.peer.send_packet(TracedFrame(frame_to(MAC_A, n % 250, 64), root(n)))


async def taken(rig: Rig, frames: int) -> None:
    """Until the NIC has received ``frames`` in all: it takes a burst in slices
    across turns of the event loop (docs/e1000.md#slicing)."""
    await until(lambda: rig.nic.device().hw_stats()["GPRC"] >= frames,
                what=f"the NIC receiving {frames} frames")


async def test_traces_a_driver_does_not_read_are_capped_counted_and_flow_again() -> None:
    async with socket_rig() as rig:
        # No WatchIrq stream: the socket is the one place traces go, so every drop
        # counted is the socket's.
        assert rig.nic._irq_watchers == []
        # A traced frame goes the whole way first (and waits out the NIC's 1 s
        # receive hold-off after RCTL).
        seq = tracing.recent().seq
        await until(lambda: rig.nic.device().receive(
            TracedFrame(frame_to(MAC_A, 1, 64), root(0))) > 0, what="the NIC receiving")
        await until(lambda: any(s.name == "guest.rx" for s in spans_since(seq)),
                    what="guest.rx of the first frame")
        assert [ctx.trace_id for _, ctx in rig.arrived] == [root(0).trace_id]
        assert await drops(rig.nic) == 0

        # The driver stops reading. The NIC's socket buffer is made small and its
        # transport pauses as soon as it holds a byte, so it is full in a few frames.
        assert rig.port.transport is not None and rig.session.transport is not None
        rig.port.transport.pause_reading()
        sock = rig.session.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        rig.session.transport.set_write_buffer_limits(high=0, low=0)
        sent = 1
        while not rig.session._writing_paused:
            assert sent < MAX_FILL, "the NIC's end never found the socket full"
            send_traced(rig, sent)
            sent += 1
            await taken(rig, sent)
        before_pause = sent  # traces 0 .. before_pause - 1 were written unpaused
        # The driver reads nothing, so the socket stays full: exactly
        # MAX_HELD_TRACES more are written, the rest dropped and counted.
        for _ in range(MAX_HELD_TRACES + OVER):
            send_traced(rig, sent)
            sent += 1
        await taken(rig, sent)
        assert rig.nic.irq_traces_dropped == OVER
        assert rig.session._writing_paused
        assert await drops(rig.nic) == OVER  # where users see it
        assert len(rig.arrived) == 1  # the driver has read none of them yet

        # The driver reads again: every held trace arrives, in order, then no more.
        held = before_pause + MAX_HELD_TRACES
        rig.port.transport.resume_reading()
        await until(lambda: len(rig.arrived) >= held, what="the held traces")
        await until(lambda: not rig.session._writing_paused, what="the NIC's end writing")
        await until(lambda: len(rig.received) == sent, what="every frame received")
        await asyncio.sleep(0.1)
        assert [ctx.trace_id for _, ctx in rig.arrived] == [root(n).trace_id
                                                            for n in range(held)]
        # Each trace names its frame's own RX descriptor (the ring did not wrap).
        assert [desc for desc, _ in rig.arrived] == list(range(held))
        assert len(rig.received) == sent  # only traces were dropped, never frames

        # Traces flow again: a traced frame gets its guest.rx under its irq span...
        seq = tracing.recent().seq
        rig.session.transport.set_write_buffer_limits()  # asyncio's defaults again
        send_traced(rig, sent)
        mine = root(sent).trace_id
        await until(lambda: any(s.name == "guest.rx" and s.trace_id == mine
                                for s in spans_since(seq)), what="guest.rx of a new frame")
        spans = {s.name: s for s in spans_since(seq) if s.trace_id == mine}
        assert spans["guest.rx"].parent_span_id == spans["irq"].span_id
        sent += 1
        # ...and the held count started again: a burst while the driver does not
        # read, the socket full once more, is written whole below the cap.
        rig.port.transport.pause_reading()
        rig.session.transport.set_write_buffer_limits(high=0, low=0)
        burst_from = len(rig.arrived)
        for _ in range(MAX_HELD_TRACES - 1):
            send_traced(rig, sent)
            sent += 1
        await taken(rig, sent)
        assert rig.session._writing_paused
        assert rig.nic.irq_traces_dropped == OVER
        rig.port.transport.resume_reading()
        await until(lambda: len(rig.arrived) == burst_from + MAX_HELD_TRACES - 1,
                    what="the burst's traces")
        await asyncio.sleep(0.1)
        assert [ctx.trace_id for _, ctx in rig.arrived[burst_from:]] == [
            root(n).trace_id for n in range(sent - (MAX_HELD_TRACES - 1), sent)]
        await until(lambda: len(rig.received) == sent, what="the burst's frames")
        assert rig.nic.irq_traces_dropped == OVER
        assert await drops(rig.nic) == OVER
