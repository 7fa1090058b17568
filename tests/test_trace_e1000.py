"""Tracing at the NIC and guest end (docs/tracing.md): a traced frame the e1000
receives gets e1000.receive, dma.write and irq spans, and the guest's driver a
guest.rx span under the irq span once it hands the frame to its stack; untraced
frames get none. In process (the model, RamDma and the driver through
LocalMmio), then across real e1000 and guest services."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from opentelemetry.trace import SpanContext, TraceFlags
from test_guest import MAC_A, MAC_B, Rig, frame_to, make_rig, plug

from virtwire import tracing
from virtwire.guest.mmio import MAX_PENDING_TRACES, IrqLine
from virtwire.hw import e1000_regs as r
from virtwire.tracing import FinishedSpan, TracedFrame

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
                raised: str | None = None) -> None:
    named = by_name(spans)
    assert sorted(named) == ["dma.write", "e1000.receive", "guest.rx", "irq"], named
    (rx,), (dma,), (irq,), (grx,) = (named[n] for n in
                                     ("e1000.receive", "dma.write", "irq", "guest.rx"))
    assert {s.trace_id for s in spans} == {root.trace_id}
    assert rx.parent_span_id == root.span_id
    assert dma.parent_span_id == rx.span_id and irq.parent_span_id == rx.span_id
    assert grx.parent_span_id == irq.span_id
    assert rx.attributes["netclient"] == "nic"
    assert rx.attributes["frame.len"] == str(len(frame))
    desc = rx.attributes["rx.desc"]
    assert irq.attributes["rx.desc"] == desc and grx.attributes["rx.desc"] == desc
    assert int(dma.attributes["bytes"]) == len(frame)
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
