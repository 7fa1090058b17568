"""Tracing at the NIC and guest end (docs/tracing.md): a traced frame the e1000
receives gets e1000.receive, dma.write and irq spans, and the guest's driver a
guest.rx span under the irq span once it hands the frame to its stack; untraced
frames get none. In process (the model, RamDma and the driver through
LocalMmio), then across real e1000 and guest services."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest
from opentelemetry.trace import SpanContext, TraceFlags
from test_guest import MAC_A, MAC_B, Rig, frame_to, make_rig, plug

from virtwire import tracing
from virtwire.guest.driver import E1000Driver
from virtwire.guest.mmio import MAX_PENDING_TRACES, GrpcMmio, IrqLine
from virtwire.guest.mmio_unix import UnixMmio
from virtwire.hw import e1000_regs as r
from virtwire.mem.client import GuestMemClient
from virtwire.net.eth import format_mac
from virtwire.server.e1000 import MAX_PENDING_RX_TRACES, E1000Server, IrqWatch
from virtwire.server.guest import open_mmio_socket
from virtwire.server.guestmem import GuestMemServer
from virtwire.tracing import FinishedSpan, TracedFrame
from virtwire.v1 import e1000_pb2, e1000_pb2_grpc

from support.doubles import Sink, until

ROOT = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(1))


def spans_since(seq: int) -> list[FinishedSpan]:
    return tracing.recent().after(seq, 1000)


def by_name(spans: list[FinishedSpan]) -> dict[str, list[FinishedSpan]]:
    out: dict[str, list[FinishedSpan]] = {}
    for span in spans:
        out.setdefault(span.name, []).append(span)
    return out


@contextlib.asynccontextmanager
async def rig_up(**kw: float) -> AsyncIterator[tuple[Rig, Sink]]:
    rig = make_rig(**kw)
    peer = Sink("peer")
    plug(rig.nic, peer)
    await rig.driver.up()
    try:
        yield rig, peer
    finally:
        await rig.driver.down()


def check_chain(spans: list[FinishedSpan], root: SpanContext, frame: bytes,
                raised: str | None = None, nic: str = "nic") -> None:
    named = by_name(spans)
    assert sorted(named) == ["dma.write", "e1000.receive", "guest.rx", "irq"], named
    (rx,), (dma,), (irq,), (grx,) = (named[n] for n in
                                     ("e1000.receive", "dma.write", "irq", "guest.rx"))
    assert {s.trace_id for s in spans} == {root.trace_id}
    assert rx.parent_span_id == root.span_id
    assert dma.parent_span_id == rx.span_id and irq.parent_span_id == rx.span_id
    assert grx.parent_span_id == irq.span_id
    assert rx.attributes["netclient"] == nic
    assert rx.attributes["frame.len"] == str(len(frame))
    desc = rx.attributes["rx.desc"]
    assert irq.attributes["rx.desc"] == desc and grx.attributes["rx.desc"] == desc
    assert int(dma.attributes["bytes"]) == len(frame)
    if grx.attributes.get("polled") != "true":
        assert grx.attributes["frame.len"] == str(len(frame))
    if raised is not None:
        assert irq.attributes["raised"] == raised
    # Time order: the receive holds its DMA; the guest notices after the cause is set.
    assert rx.start_ns <= dma.start_ns <= dma.end_ns <= rx.end_ns
    assert rx.start_ns <= irq.start_ns <= irq.end_ns
    assert irq.start_ns <= grx.start_ns <= grx.end_ns


async def test_traced_frame_gets_nic_and_guest_spans() -> None:
    async with rig_up() as (rig, peer):
        seq = tracing.recent().seq
        frame = frame_to(MAC_A, 1, 200)
        peer.send_packet(TracedFrame(frame, ROOT))
        await until(lambda: len(rig.received) == 1, what="the frame received")
        await until(lambda: "guest.rx" in by_name(spans_since(seq)), what="guest.rx")
        assert rig.received == [frame]
        check_chain(spans_since(seq), ROOT, frame, raised="true")
        assert rig.port.irq.traces == {}


async def test_untraced_frames_make_no_spans_and_traces_match_their_frame() -> None:
    async with rig_up() as (rig, peer):
        seq = tracing.recent().seq
        for i in range(5):
            peer.send_packet(frame_to(MAC_A, i, 100))
        await until(lambda: len(rig.received) == 5, what="five frames")
        assert spans_since(seq) == []
        # One traced frame among untraced ones, delivered in one burst: its trace
        # is matched to its own descriptor.
        root2 = SpanContext(0x99, 0x77, is_remote=True, trace_flags=TraceFlags(1))
        frames = [frame_to(MAC_A, 10 + i, 80 + i) for i in range(4)]
        for i, f in enumerate(frames):
            peer.send_packet(TracedFrame(f, root2) if i == 2 else f)
        await until(lambda: len(rig.received) == 9, what="four more")
        await until(lambda: "guest.rx" in by_name(spans_since(seq)), what="guest.rx")
        check_chain(spans_since(seq), root2, frames[2])


async def test_line_already_high_and_mitigation() -> None:
    async with rig_up() as (rig, peer):
        # Mitigation: ITR opens a window after each interrupt; a frame in the window
        # has an irq span that lasts until the timer raises the line.
        rig.nic.mmio_write(r.ITR * 4, 5000)  # 5000 * 256 ns = 1.28 ms
        seq = tracing.recent().seq
        peer.send_packet(frame_to(MAC_A, 1, 100))  # opens the window
        frame = frame_to(MAC_A, 2, 100)
        peer.send_packet(TracedFrame(frame, ROOT))
        await until(lambda: len(rig.received) == 2, what="two frames")
        await until(lambda: "guest.rx" in by_name(spans_since(seq)), what="guest.rx")
        spans = spans_since(seq)
        check_chain(spans, ROOT, frame)
        (irq,) = by_name(spans)["irq"]
        if irq.attributes.get("mitigated") == "true":
            assert irq.attributes["raised"] == "true"
            assert irq.end_ns - irq.start_ns >= 1_000_000  # the window is in the span
        else:  # the line was still high (not lowered yet): merged into it
            assert irq.attributes["raised"] == "false"


def test_pending_traces_are_capped_and_counted() -> None:
    line = IrqLine()
    for i in range(MAX_PENDING_TRACES + 10):
        line.add_trace(i, ROOT)
    assert len(line.traces) == MAX_PENDING_TRACES
    assert line.traces_dropped == 10
    line.add_trace(0, ROOT)  # a descriptor already waiting is replaced, not dropped
    assert line.traces_dropped == 10


async def test_filtered_frame_makes_no_dma_or_irq_span() -> None:
    async with rig_up() as (rig, peer):
        seq = tracing.recent().seq
        peer.send_packet(TracedFrame(frame_to(MAC_B, 1), ROOT))  # another MAC
        named = by_name(spans_since(seq))
        assert sorted(named) == ["e1000.receive"]
        assert rig.nic.drops.rx_filtered == 1
        assert rig.port.irq.traces == {}


# -- across services: the e1000 service's WatchIrq stream ---------------------------------
@contextlib.asynccontextmanager
async def grpc_rig(transport: str = "grpc", poll_interval: float = 0.0
                   ) -> AsyncIterator[tuple[E1000Server, E1000Driver, list[bytes], Sink]]:
    mem = GuestMemServer("127.0.0.1:0", 4 << 20)
    await mem.start()
    nic = E1000Server("127.0.0.1:0", guestmem=mem.address, mac=format_mac(MAC_A))
    await nic.start()
    port: GrpcMmio | UnixMmio
    if transport == "unix":  # the same-host socket the guest service prefers
        unix, why = await open_mmio_socket(nic.address, nic.address, 5.0)
        assert unix is not None, why
        port = unix
    else:
        port = GrpcMmio(nic.address)
        await port.connect()
    gmem = await GuestMemClient.connect(mem.address)
    driver = E1000Driver(port, gmem, poll_interval=poll_interval)
    received: list[bytes] = []
    driver.rx_handlers.append(received.extend)
    peer = Sink("peer")
    plug(nic.device(), peer)
    await driver.up()
    try:
        yield nic, driver, received, peer
    finally:
        await driver.down()
        await port.close()
        await gmem.close()
        await nic.stop(grace=0.1)
        await mem.stop(grace=0.1)


@pytest.mark.parametrize("transport,poll", [("grpc", 0.0), ("unix", 0.0), ("grpc", 0.0005),
                                            ("unix", 0.0005)])
async def test_irq_notification_carries_traces_to_the_guest(transport: str, poll: float
                                                            ) -> None:
    """WatchIrq (gRPC) and the same-host socket's TRACE records. Without NAPI
    polling the driver takes frames only on interrupts, so guest.rx comes from
    its RX cleanup; with it, a frame taken before its trace arrived still gets
    guest.rx (``polled``)."""
    async with grpc_rig(transport, poll) as (_nic, driver, received, peer):
        seq = tracing.recent().seq
        frames = [frame_to(MAC_A, i, 100 + i) for i in range(3)]
        peer.send_packet(frames[0])
        peer.send_packet(TracedFrame(frames[1], ROOT))
        peer.send_packet(frames[2])
        await until(lambda: len(received) == 3, what="three frames")
        await until(lambda: "guest.rx" in by_name(spans_since(seq)), what="guest.rx")
        assert received == frames
        check_chain(spans_since(seq), ROOT, frames[1], nic="e1000")
        # The line may already be high: a second traced frame still gets its guest.rx.
        seq = tracing.recent().seq
        root2 = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(1))
        peer.send_packet(TracedFrame(frames[0], root2))
        await until(lambda: "guest.rx" in by_name(spans_since(seq)), what="guest.rx")
        check_chain(spans_since(seq), root2, frames[0], nic="e1000")
        assert driver.mmio.irq.traces_dropped == 0


async def test_irq_traces_a_watcher_has_no_room_for_are_counted() -> None:
    async with grpc_rig() as (nic, _driver, _received, _peer):
        watch = IrqWatch()
        nic._irq_watchers.append(watch)  # a watcher that never reads
        try:
            for i in range(MAX_PENDING_RX_TRACES + 5):
                nic._on_rx_trace(i % 64, ROOT)
            assert len(watch.traces) == MAX_PENDING_RX_TRACES
            # Each watcher (ours, and the driver's, which had no turn to read) drops 5.
            assert nic.irq_traces_dropped == 5 * len(nic._irq_watchers) == 10
            async with grpc.aio.insecure_channel(nic.address) as channel:
                stub = e1000_pb2_grpc.E1000ServiceStub(channel)
                stats = await stub.GetStats(e1000_pb2.GetStatsRequest())
            assert stats.drops["irq_traces_dropped"] == 10
        finally:
            nic._irq_watchers.remove(watch)


def test_malformed_wire_trace_is_refused_and_counted() -> None:
    line = IrqLine()
    line.add_wire_trace(3, b"\x00" * 25)
    line.add_wire_trace(4, b"short")
    assert line.traces == {} and line.traces_refused == 2
    line.add_wire_trace(5, tracing.to_wire(ROOT))
    assert line.traces[5][0].span_id == ROOT.span_id
