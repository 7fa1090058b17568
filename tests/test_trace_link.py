"""Per-frame tracing across links, hubs and switches (docs/links.md, Tracing):
a frame sampled at a tap carries its context over LinkBatch.traces (the gRPC
message and the same-host record), and each hop adds its span with the right
parent. In process first (LinkPeer pairs carried by hand), then over real
links to an in-process hub service."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Iterator

import grpc
import pytest
from test_caps import hello as caps_hello
from test_caps import refused
from test_fastpath import unix_hello

from virtwire import tracing
from virtwire.address import parse_peer
from virtwire.errors import LimitError
from virtwire.link import Batch, LinkPeer, codec
from virtwire.net.hub import Hub
from virtwire.net.net import NetClient
from virtwire.net.switch import PortVlans, Switch
from virtwire.server import link as server_link
from virtwire.server.hub import HubServer
from virtwire.server.link import LinkDialer
from virtwire.tracing import FinishedSpan, Sampler, TracedFrame
from virtwire.v1 import link_pb2

from support.doubles import Sink, frame, until

pytestmark = pytest.mark.timeout(120)

Via = Callable[[Batch], Batch]


def via_proto(batch: Batch) -> Batch:
    """``batch`` as it comes out of a LinkBatch on the Connect stream."""
    data = server_link.batch_to_wire(batch).SerializeToString()
    return server_link.batch_from_wire(link_pb2.LinkBatch.FromString(data))


def via_record(batch: Batch) -> Batch:
    """``batch`` as it comes out of a same-host record."""
    record = codec.encode(batch)
    decoded, end = codec.decode(record)
    assert end == len(record)
    return decoded


VIAS = {"proto": via_proto, "record": via_record}


class Tap(Sink):
    """A backend where frames enter the LAN."""

    ingress_span = "tap.read"


def pair(a: NetClient, b: NetClient, window: int = 64) -> tuple[LinkPeer, LinkPeer]:
    """``a`` and ``b`` joined by a LinkPeer each, sessions attached, no transport."""
    pa, pb = LinkPeer(a, b.name, window), LinkPeer(b, a.name, window)
    pa.attach(object(), credits=pb.window, remote_ready=b.can_receive_packet())
    pb.attach(object(), credits=pa.window, remote_ready=a.can_receive_packet())
    return pa, pb


def settle(pairs: list[tuple[LinkPeer, LinkPeer]], via: Via,
           seen: list[Batch] | None = None) -> None:
    """Carry every batch both ways of every pair until the links are quiet."""
    for _ in range(50):
        moved = False
        for x, y in pairs:
            for src, dst in ((x, y), (y, x)):
                batch = src.take_batch()
                if batch is not None:
                    moved = True
                    if seen is not None:
                        seen.append(batch)
                    dst.on_batch(via(batch))
        if not moved:
            return
    raise AssertionError("the links never went quiet")


@pytest.fixture
def spans() -> Iterator[Callable[[], list[FinishedSpan]]]:
    """The spans finished since the test began."""
    start = tracing.recent().seq
    yield lambda: tracing.recent().after(start, 1000)


def named(spans: list[FinishedSpan], name: str) -> list[FinishedSpan]:
    return [s for s in spans if s.name == name]


def hub_lan(via: Via) -> tuple[Tap, Sink, Sink, Hub, list[tuple[LinkPeer, LinkPeer]]]:
    """tap -link- hub -link- b, and -link- c; links carried ``via``."""
    hub = Hub(0, "hub0")
    p_tap, p_b, p_c = hub.add_port("ptap"), hub.add_port("pb"), hub.add_port("pc")
    tap, b, c = Tap("tap"), Sink("b"), Sink("c")
    pairs = [pair(tap, p_tap), pair(p_b, b), pair(p_c, c)]
    settle(pairs, via)
    return tap, b, c, hub, pairs


@pytest.mark.parametrize("via", VIAS.values(), ids=VIAS.keys())
def test_a_sampled_frame_has_its_spans_at_every_hop(
        via: Via, spans: Callable[[], list[FinishedSpan]]) -> None:
    tap, b, c, _hub, pairs = hub_lan(via)
    tap.sampler = Sampler(every=1)
    tap.send_packet(frame(1))
    settle(pairs, via)
    assert b.frames == [frame(1)] and c.frames == [frame(1)]
    got = spans()
    (root,) = named(got, "tap.read")
    sends = named(got, "link.send")
    (forward,) = named(got, "hub.forward")
    assert len(sends) == 3 and len(got) == 5
    assert root.parent_span_id == 0 and root.attributes["netclient"] == "tap"
    assert {s.trace_id for s in got} == {root.trace_id}
    (first,) = [s for s in sends if s.attributes["netclient"] == "tap"]
    assert first.parent_span_id == root.span_id
    # The hub port's span hangs off the sender's link.send received with the frame.
    assert forward.parent_span_id == first.span_id
    assert forward.attributes["netclient"] == "ptap" and forward.attributes["hub"] == "hub0"
    # Fan-out: each outgoing link.send has hub.forward as its parent.
    out = {s.attributes["netclient"]: s for s in sends if s is not first}
    assert set(out) == {"pb", "pc"}
    assert all(s.parent_span_id == forward.span_id for s in out.values())
    assert all(first.start_ns <= s.start_ns <= s.end_ns for s in (forward, *out.values()))
    # What reached each sink carries the context of the link.send that brought it.
    for sink, port in ((b, "pb"), (c, "pc")):
        (got_frame,) = sink.frames
        assert type(got_frame) is TracedFrame
        assert got_frame.ctx.span_id == out[port].span_id
        assert got_frame.ctx.trace_id == root.trace_id


@pytest.mark.parametrize("via", VIAS.values(), ids=VIAS.keys())
def test_untraced_frames_cross_as_before(via: Via,
                                         spans: Callable[[], list[FinishedSpan]]) -> None:
    tap, b, c, _hub, pairs = hub_lan(via)
    seen: list[Batch] = []
    for i in range(20):
        tap.send_packet(frame(i))
    settle(pairs, via, seen)
    assert b.frames == c.frames == [frame(i) for i in range(20)]
    assert all(type(f) is bytes for f in b.frames + c.frames)
    assert spans() == []
    framed = [batch for batch in seen if batch.frames]
    assert framed and all(not batch.traces for batch in framed)
    for batch in framed:
        # Nothing traced: the message has no traces field and the record's
        # trace count (the former padding) is zero.
        assert not server_link.batch_to_wire(batch).traces
        assert codec.encode(batch)[21:24] == bytes(3)


def test_only_the_sampled_frames_of_a_batch_are_listed(
        spans: Callable[[], list[FinishedSpan]]) -> None:
    tap, b, _c, _hub, pairs = hub_lan(via_record)
    picked = {3, 7}
    sampler = Sampler(match=lambda f: int.from_bytes(f[14:18], "big") in picked, count=2)
    tap.sampler = sampler
    tap.send_packets([frame(i, size=60) for i in range(10)])
    first = pairs[0][0].take_batch()
    assert first is not None and len(first.frames) == 10
    assert [i for i, _ in first.traces] == [3, 7]
    pairs[0][1].on_batch(via_record(first))
    settle(pairs, via_record)
    assert [type(f) is TracedFrame for f in b.frames] == [i in picked for i in range(10)]
    assert len(named(spans(), "tap.read")) == 2 and len(named(spans(), "hub.forward")) == 2


def test_a_switch_adds_switch_forward_and_traces_retagged_copies(
        spans: Callable[[], list[FinishedSpan]]) -> None:
    sw = Switch(0, "sw0")
    p_tap, p_b = sw.add_port("ptap", PortVlans.access(10)), sw.add_port("pb", PortVlans.access(10))
    p_t = sw.add_port("ptrunk", PortVlans.trunked([10]))
    tap, b, t = Tap("tap"), Sink("b"), Sink("t")
    pairs = [pair(tap, p_tap), pair(p_b, b), pair(p_t, t)]
    settle(pairs, via_proto)
    tap.sampler = Sampler(every=1)
    tap.send_packet(frame(1))
    settle(pairs, via_proto)
    assert len(b.frames) == 1 and len(t.frames) == 1
    assert t.frames[0] != b.frames[0]  # the trunk got it tagged
    got = spans()
    (forward,) = named(got, "switch.forward")
    out = {s.attributes["netclient"]: s for s in named(got, "link.send")}
    assert set(out) == {"tap", "pb", "ptrunk"}
    assert forward.parent_span_id == out["tap"].span_id
    assert out["pb"].parent_span_id == out["ptrunk"].parent_span_id == forward.span_id
    assert type(t.frames[0]) is TracedFrame and t.frames[0].ctx.span_id == out["ptrunk"].span_id


def _ctx(trace_id: int = 1, span_id: int = 2) -> bytes:
    return trace_id.to_bytes(16, "big") + span_id.to_bytes(8, "big") + b"\x01"


BAD_TRACES: dict[str, list[tuple[int, bytes]]] = {
    "index beyond the frames": [(2, _ctx())],
    "the same index twice": [(0, _ctx()), (0, _ctx(span_id=3))],
    "more traces than frames": [(0, _ctx()), (1, _ctx()), (2, _ctx())],
    "a zero trace id": [(0, _ctx(trace_id=0))],
    "a zero span id": [(1, _ctx(span_id=0))],
    "a short context": [(0, _ctx()[:24])],
    "a long context": [(0, _ctx() + b"x")],
}


@pytest.mark.parametrize("traces", BAD_TRACES.values(), ids=BAD_TRACES.keys())
def test_a_bad_frame_trace_is_a_counted_protocol_error(traces: list[tuple[int, bytes]]) -> None:
    b = Sink("b")
    _pa, pb = pair(Sink("a"), b)
    msg = server_link.batch_to_wire(Batch(frames=[frame(0), frame(1)], traces=traces))
    with pytest.raises(LimitError, match="trace"):
        pb.on_batch(server_link.batch_from_wire(msg))
    assert pb.protocol_errors == 1 and b.frames == []


def _record(traces: list[tuple[int, bytes]], n: int = 2) -> bytes:
    """A record of ``n`` one-byte frames whose traces are written as given."""
    body = struct.pack(f"<{n}I", *([1] * n))
    body += b"".join(struct.pack("<I", i) + ctx for i, ctx in traces) + b"x" * n
    return struct.pack("<IIIIIBxH", len(body), n, 0, 0, 0, 0, len(traces)) + body


RECORD_BAD = {k: v for k, v in BAD_TRACES.items() if "context" not in k}


@pytest.mark.parametrize("traces", RECORD_BAD.values(), ids=RECORD_BAD.keys())
def test_a_bad_frame_trace_in_a_record_is_a_limit_error(traces: list[tuple[int, bytes]]) -> None:
    record = _record(traces)
    with pytest.raises(LimitError):
        codec.decode(record)


def test_records_with_traces_round_trip_and_cut_ones_are_refused() -> None:
    traces = [(0, _ctx()), (1, _ctx(7, 9))]
    record = _record(traces)
    batch, end = codec.decode(record)
    assert end == len(record) and list(batch.traces) == traces
    assert codec.encode(batch) == record
    # A count the body cannot hold: LimitError, never another exception.
    cut = bytearray(record)
    cut[22:24] = struct.pack("<H", 3)
    for bad in (bytes(cut), record[:-1]):
        with pytest.raises(LimitError):
            codec.decode(bad)


@pytest.mark.parametrize("transport", ["grpc", "auto"])
async def test_a_sampled_frame_over_real_links_to_a_hub_service(
        hub: HubServer, transport: str, spans: Callable[[], list[FinishedSpan]]) -> None:
    tap, b = Tap("tap"), Sink("b")
    dialers = []
    for nc in (tap, b):
        dialer = LinkDialer(nc, parse_peer(f"{hub.address}/"), transport=transport)
        dialer.start()
        dialers.append(dialer)
        await asyncio.wait_for(dialer.connected.wait(), 10)
    await until(lambda: isinstance(tap.peer, LinkPeer) and tap.peer.remote_ready,
                what="tap ready")
    assert isinstance(tap.peer, LinkPeer)
    assert tap.peer.transport == ("unix" if transport == "auto" else "grpc")
    tap.send_packet(frame(0))
    tap.sampler = Sampler(every=1)
    tap.send_packet(frame(1))
    await b.wait_for(2)
    assert [type(f) is TracedFrame for f in b.frames] == [False, True]
    await until(lambda: len(named(spans(), "link.send")) == 2, what="both link.send spans")
    got = spans()
    (root,) = named(got, "tap.read")
    (forward,) = named(got, "hub.forward")
    first, second = sorted(named(got, "link.send"), key=lambda s: s.start_ns)
    assert (first.parent_span_id, forward.parent_span_id, second.parent_span_id) == (
        root.span_id, first.span_id, forward.span_id)
    assert first.attributes["link.transport"] == tap.peer.transport
    assert b.frames[1].ctx.span_id == second.span_id  # type: ignore[attr-defined]
    for dialer in dialers:
        await dialer.stop()


async def test_a_bad_frame_trace_on_the_connect_stream_ends_the_link_counted(
        hub: HubServer) -> None:
    port = hub.add_port("victim")
    async with grpc.aio.insecure_channel(hub.address) as channel:
        call = await caps_hello(channel, "victim", credits=8)
        first = await call.read()
        assert isinstance(first, link_pb2.ConnectResponse) and first.welcome.credits
        batch = link_pb2.LinkBatch(frames=[frame(0)])
        batch.traces.add(index=1, context=_ctx())
        await call.write(link_pb2.ConnectRequest(batch=batch))
        err = await refused(call)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
        assert "frame trace" in (err.details() or "")
        await until(lambda: not isinstance(port.peer, LinkPeer) or port.peer.session is None,
                    what="link down")
        info = hub.registry.info(port)
        assert info.counters.link_protocol_errors == 1
        assert info.counters.rx_frames == 0


async def test_a_bad_frame_trace_on_the_socket_ends_the_link_counted(hub: HubServer) -> None:
    port = hub.add_port("victim")
    async with grpc.aio.insecure_channel(hub.address) as channel:
        call, stream, _granted = await unix_hello(hub, channel, "victim")
        await until(lambda: isinstance(port.peer, LinkPeer) and port.peer.session is not None,
                    what="victim linked")
        first = await asyncio.wait_for(stream.read_batch(), 5)
        assert first is not None
        assert stream.transport is not None
        stream.transport.write(_record([(0, _ctx(trace_id=0))], n=1))
        err = await refused(call)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
        assert "frame trace" in (err.details() or "")
        await asyncio.wait_for(stream.wait_closed(), 5)
        info = hub.registry.info(port)
        assert info.counters.link_protocol_errors == 1
        assert info.counters.rx_frames == 0
        stream.close()


@pytest.mark.parametrize("via", VIAS.values(), ids=VIAS.keys())
def test_a_frame_a_discarding_link_drops_ends_with_link_discard(
        via: Via, spans: Callable[[], list[FinishedSpan]]) -> None:
    """c is link_down (a stream port with no client): its link tells the hub's
    side, which drops the copy for c and ends that branch with link.discard."""
    tap, b, c, _hub, pairs = hub_lan(via)
    c.set_carrier(False, "backend")
    settle(pairs, via)
    tap.sampler = Sampler(every=1)
    tap.send_packet(frame(1))
    settle(pairs, via)
    assert b.frames == [frame(1)] and c.frames == []
    got = spans()
    (forward,) = named(got, "hub.forward")
    (discard,) = named(got, "link.discard")
    assert discard.parent_span_id == forward.span_id
    assert discard.attributes["netclient"] == "pc"
    assert discard.attributes["drop.reason"] == "link_down"
    # b's copy went on the wire as before; c's side saw nothing.
    assert [s.attributes["netclient"] for s in named(got, "link.send")] == ["tap", "pb"]
    assert pairs[2][0].stats.dropped_link_down == 1 and c.stats.dropped_link_down == 0
