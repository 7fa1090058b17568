"""Discarding links (docs/links.md, Discarding): a NetClient whose link is down
drops on arrival whatever it is sent, so its LinkPeer says so, and the far side
drops those frames itself, counted there, instead of sending them.

QEMU's order is kept: the receiver's RX filters see a frame before its
link_down drop, so a filter keeps frames coming; a receiver that cannot
receive (an e1000 with its link down) makes frames wait, not drop.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtwire.link import Batch, LinkPeer
from virtwire.net.filter import FilterDirection, NetFilter
from virtwire.net.net import NetClient
from virtwire.net.netdev import parse_backend_spec
from virtwire.net.stream import StreamBackend
from virtwire.server.hub import HubServer
from virtwire.server.link import batch_from_wire, batch_to_wire
from virtwire.server.tap import TapServer

from support.doubles import Sink, frame, until
from support.links import carry, linked


def linked_pair() -> tuple[Sink, LinkPeer, Sink, LinkPeer]:
    """``support.links.linked`` with small windows, its first batches carried."""
    a, pa, b, pb = linked(64, 64)
    exchange(pa, pb)
    return a, pa, b, pb


def exchange(pa: LinkPeer, pb: LinkPeer) -> None:
    """Carry both ways until neither side has anything to say."""
    for _ in range(10):
        if carry(pa, pb) is None and carry(pb, pa) is None:
            return
    raise AssertionError("the link kept talking")


class Seen(NetFilter):
    """Counts what passes, takes nothing."""

    kind = "seen"

    def __init__(self, fid: str) -> None:
        super().__init__(fid)
        self.seen = 0

    def filter_receive(self, direction: FilterDirection, sender: NetClient, flags: int,
                       data: bytes) -> int:
        self.seen += 1
        return 0


def test_a_link_down_receiver_makes_the_sender_drop_and_count() -> None:
    a, pa, b, pb = linked_pair()
    b.set_carrier(False, "backend")  # e.g. a stream backend whose client left
    assert b.link_down
    batch = carry(pb, pa)
    assert batch is not None and batch.ready is True and batch.discards
    assert pa.discards and pa.can_receive_packet()
    credits = pa.credits
    for i in range(50):
        a.send_packet(frame(i))
    a.send_packets([frame(i) for i in range(50, 80)])
    assert pa.stats.dropped_link_down == 80
    assert pa.credits == credits and not pa.out_frames and pa.take_batch() is None
    assert pb.stats.tx_frames == 0 and b.stats.dropped_link_down == 0 and b.frames == []
    # Its client is back: frames travel again, and none is lost on the way.
    b.set_carrier(True, "backend")
    batch = carry(pb, pa)
    assert batch is not None and batch.ready is True and not batch.discards
    assert not pa.discards
    a.send_packet(frame(99))
    exchange(pa, pb)
    assert b.frames == [frame(99)] and pa.stats.dropped_link_down == 80


def test_set_link_down_discards_and_set_link_up_ends_it() -> None:
    a, pa, b, pb = linked_pair()
    b.set_link(False)
    exchange(pa, pb)
    assert pa.discards
    a.send_packet(frame(1))
    assert pa.stats.dropped_link_down == 1 and pa.take_batch() is None
    b.set_link(True)
    exchange(pa, pb)
    assert not pa.discards
    a.send_packet(frame(2))
    exchange(pa, pb)
    assert b.frames == [frame(2)]


def test_a_filter_on_the_receiver_keeps_frames_coming() -> None:
    """QEMU runs the receiver's RX filters before its link_down drop."""
    a, pa, b, pb = linked_pair()
    seen = Seen("seen")
    b.add_filter(seen)
    b.set_carrier(False, "backend")
    exchange(pa, pb)
    assert not pa.discards
    a.send_packet(frame(1))
    exchange(pa, pb)
    assert seen.seen == 1 and b.stats.dropped_link_down == 1 and pa.stats.dropped_link_down == 0
    # Without the filter the link discards; adding it again stops that.
    b.remove_filter("seen")
    exchange(pa, pb)
    assert pa.discards
    b.add_filter(Seen("again"))
    exchange(pa, pb)
    assert not pa.discards


def test_a_receiver_that_cannot_receive_makes_frames_wait_not_drop() -> None:
    """An e1000 with its link down cannot receive (STATUS.LU): frames wait."""
    a, pa, b, pb = linked_pair()
    b.ready = False
    b.set_link(False)
    exchange(pa, pb)
    assert not pa.discards and not pa.remote_ready
    for i in range(5):
        a.send_packet(frame(i))
    assert len(pa.incoming_queue) == 5 and pa.stats.dropped_link_down == 0


def test_frames_held_for_credits_are_dropped_once_the_remote_discards() -> None:
    a, pa, b, pb = linked_pair()
    for i in range(pa.credits + 10):
        a.send_packet(frame(i))
    assert len(pa.incoming_queue) == 10  # no credit left for these
    b.set_carrier(False, "backend")
    carry(pb, pa)
    assert pa.discards and len(pa.incoming_queue) == 0
    assert pa.stats.dropped_link_down == 10


def test_a_new_session_starts_not_discarding() -> None:
    _a, pa, b, pb = linked_pair()
    b.set_carrier(False, "backend")
    exchange(pa, pb)
    assert pa.discards
    pa.detach("test")
    assert not pa.discards
    pa.attach(object(), credits=pb.window, remote_ready=True)
    assert not pa.discards


def test_discards_cross_the_grpc_message() -> None:
    for batch in (Batch(ready=True, discards=True), Batch(ready=True), Batch(ready=False),
                  Batch()):
        back = batch_from_wire(batch_to_wire(batch))
        assert (back.ready, back.discards) == (batch.ready, batch.discards)


@pytest.fixture
def sockdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="vwld", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("transport", ["auto", "grpc"])
async def test_a_stream_port_without_client_costs_its_tap_service_nothing(
        sockdir: Path, transport: str) -> None:
    """The default LAN's qemu0 before a QEMU VM joins: frames the hub sends it
    are dropped at the hub's side of the link, counted on the hub port's row;
    once a client connects they reach it."""
    hub = HubServer("127.0.0.1:0")
    hub.registry.set_link_transport(transport)
    hub.add_port("src")
    hub.add_port("qemu0port")
    await hub.start()
    tap = TapServer("127.0.0.1:0")
    tap.registry.set_link_transport(transport)
    await tap.start()
    try:
        be = await tap.add_backend(parse_backend_spec(
            f"stream,listen=unix:{sockdir}/q,id=qemu0,peer={hub.address}/qemu0port"))
        assert isinstance(be, StreamBackend)
        port = hub.registry.get("qemu0port")
        await until(lambda: isinstance(port.peer, LinkPeer), what="the link")
        link = port.peer
        assert isinstance(link, LinkPeer)
        await until(lambda: link.discards, what="the hub side told to discard")
        src = hub.registry.get("src")
        for i in range(300):
            src.receive(frame(i))  # as if from src's peer: out of every other port
        info = hub.registry.info(port).counters
        assert info.tx_frames == 300 and info.dropped_link_down == 300
        assert link.stats.rx_frames == 0 and not link.out_frames  # none went on the wire
        tap_info = tap.registry.info(be).counters
        assert tap_info.rx_frames == 0 and tap_info.dropped_link_down == 0
        # A client connects: the tap side says so, frames cross again.
        reader, writer = await asyncio.open_unix_connection(f"{sockdir}/q")
        await until(lambda: not link.discards, what="discarding ended")
        src.receive(frame(1000))
        header = await asyncio.wait_for(reader.readexactly(4), 10)
        assert await asyncio.wait_for(reader.readexactly(int.from_bytes(header, "big")),
                                      10) == frame(1000)
        assert hub.registry.info(port).counters.dropped_link_down == 300
        writer.close()
        await until(lambda: link.discards, what="discarding again once the client left")
    finally:
        await tap.stop(grace=0.1)
        await hub.stop(grace=0.1)

