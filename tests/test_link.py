"""Links: the LinkPeer core on its own, then over real gRPC on 127.0.0.1:0
(batching, credits, backpressure, redial)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from virtwire.address import parse_peer
from virtwire.errors import LimitError
from virtwire.link import Batch, LinkPeer
from virtwire.net.queue import NQ_MAXLEN
from virtwire.server import link as server_link
from virtwire.server.hub import HubServer
from virtwire.server.link import LinkDialer
from virtwire.v1 import link_pb2, link_pb2_grpc, netclient_pb2, netclient_pb2_grpc

from support.doubles import Sink, frame, pump, until
from support.links import carry, linked, plug, ready


async def test_credits_bound_what_is_in_flight_without_grpc() -> None:
    window = 8
    a, pa, b, pb = linked(1024, window)
    n = 100
    for i in range(n):
        a.send_packet(frame(i))
    # Only a window's worth left a: the rest waits in the LinkPeer's own queue.
    assert pa.credits == 0 and len(pa.out_frames) == window
    assert len(pa.incoming_queue) == n - window
    rounds = 0
    while len(b.frames) < n:
        rounds += 1
        assert rounds <= n, "the link stopped moving"
        batch = carry(pa, pb)
        assert batch is not None and 0 < len(batch.frames) <= window
        # Taken but not credited back: never more than b's window.
        assert pa.on_wire + len(pa.out_frames) + pa.credits <= window
        assert pb.remote_credits >= 0
        back = carry(pb, pa)   # b took them in: the credits return, a sends more
        assert back is not None and back.credits == len(batch.frames)
    assert b.frames == [frame(i) for i in range(n)]
    assert pa.incoming_queue.dropped == 0 and pa.credits_refused == 0


async def test_a_peer_beyond_its_credits_or_over_granting_is_caught_without_grpc() -> None:
    window = 4
    _a, pa, b, pb = linked(window, window)
    # Credits beyond the window are clamped away and counted, not an error.
    pa.on_batch(Batch(credits=1000))
    assert pa.credits == window and pa.credits_refused == 1000
    # More frames than the credits granted end the session.
    with pytest.raises(LimitError, match="credits"):
        pb.on_batch(Batch(frames=[frame(i) for i in range(window + 1)]))
    assert pb.protocol_errors == 1 and b.frames == []


async def test_frames_cross_the_hub_both_ways(hub: HubServer) -> None:
    a, b, c = Sink("a"), Sink("b"), Sink("c")
    dialers = [await plug(hub.address, x) for x in (a, b, c)]
    assert len(hub.hub.ports) == 3
    await ready(a, b)
    for i in range(100):
        a.send_packet(frame(i, src=1))
    b.send_packet(frame(999, src=2))
    await b.wait_for(100)
    await c.wait_for(101)
    await a.wait_for(1)
    assert b.frames == [frame(i, src=1) for i in range(100)]
    assert a.frames == [frame(999, src=2)]
    infos = {p.name: hub.registry.info(p) for p in hub.hub.ports}
    assert sum(i.counters.rx_frames for i in infos.values()) == 101
    assert sum(i.counters.tx_frames for i in infos.values()) == 202
    for d in dialers:
        await d.stop()


async def test_lone_frame_goes_at_once_and_busy_link_batches(hub: HubServer) -> None:
    a, b = Sink("a"), Sink("b")
    await plug(hub.address, a)
    await plug(hub.address, b)
    await ready(a)
    a.send_packet(frame(1))
    await b.wait_for(1, timeout=2)
    # 500 frames queued in one go leave in far fewer messages than frames.
    sent_before = _batches(a)
    for i in range(500):
        a.send_packet(frame(i))
    await b.wait_for(501)
    assert _batches(a) - sent_before < 100


def _batches(nc: Sink) -> int:
    assert isinstance(nc.peer, LinkPeer)
    return nc.peer.batches_sent


async def test_slow_receiver_backpressures_async_sender_without_loss(hub: HubServer) -> None:
    """A sent_cb sender is paused (0) and resumed by its callback; nothing is lost."""
    a, b = Sink("a"), Sink("b")
    await plug(hub.address, a)
    await plug(hub.address, b)
    await ready(a)
    b.set_ready(False)
    # As in QEMU, "cannot receive" is found out when frames arrive: the first
    # ones cross and wait in b's queue, then the state travels back to a.
    resumed = asyncio.Event()
    sent = 0
    for i in range(2000):
        sent += 1
        if a.send_packet_async(frame(i), lambda s, r: resumed.set()) == 0:
            break
        await asyncio.sleep(0.002)
    else:
        raise AssertionError("the sender was never paused")
    b.set_ready(True)
    await asyncio.wait_for(resumed.wait(), 5)
    await b.wait_for(sent)
    assert b.frames == [frame(i) for i in range(sent)]
    assert hub.registry.info(hub.hub.port(_port_of(hub, "a"))).counters.dropped_queue_full == 0


def _port_of(hub: HubServer, dialler: str) -> str:
    for port in hub.hub.ports:
        if isinstance(port.peer, LinkPeer) and port.peer.remote_name == dialler:
            return port.name
    raise AssertionError(f"no port for {dialler}")


async def test_queue_bound_holds_end_to_end(hub: HubServer) -> None:
    """Flooding a stalled receiver: at most nq_maxlen queued, every drop counted."""
    a, b, c = Sink("a"), Sink("b"), Sink("c")
    await plug(hub.address, a)
    await plug(hub.address, b, window=64)
    await plug(hub.address, c)
    await ready(a)
    b.set_ready(False)  # b stalls; c keeps the hub port receiving
    n = 30000
    await asyncio.wait_for(pump(a, [frame(i) for i in range(n)]), 30)
    await c.wait_for(n, timeout=30)
    port_b = hub.hub.port(_port_of(hub, "b"))
    assert isinstance(port_b.peer, LinkPeer)
    out_q = port_b.peer.incoming_queue
    await until(lambda: len(b.incoming_queue) + len(out_q) + out_q.dropped
                + b.incoming_queue.dropped >= n, what="all frames accounted")
    # b's own queue holds what crossed before credits ran out; the hub side
    # holds at most nq_maxlen; the rest was dropped and counted.
    assert len(b.incoming_queue) <= 64
    assert len(out_q) <= NQ_MAXLEN
    assert out_q.dropped > 0
    info = hub.registry.info(port_b)
    assert info.counters.dropped_queue_full == out_q.dropped
    # The total counts the link's drops for the NetClient behind it, once.
    assert info.counters.dropped_total == sum(
        getattr(info.counters, f"dropped_{k}")
        for k in ("queue_full", "link_down", "refused", "malformed", "purged"))
    assert info.counters.dropped_total >= out_q.dropped > 0
    b.set_ready(True)
    await b.wait_for(n - out_q.dropped - b.incoming_queue.dropped, timeout=30)
    assert len(b.frames) + out_q.dropped + b.incoming_queue.dropped == n


async def test_broken_link_is_link_down_on_both_ends_and_redials() -> None:
    host = HubServer("127.0.0.1:0")
    port = host.add_port("p0")  # named, as the topology names hub ports: it stays
    await host.start()
    addr = host.address
    a = Sink("a")
    dialer = LinkDialer(a, parse_peer(f"{addr}/p0"), min_backoff=0.05, max_backoff=0.2)
    dialer.start()
    await asyncio.wait_for(dialer.connected.wait(), 10)
    assert not a.link_down and not port.link_down
    # The dialling side goes away: the hub port is link_down, and drops.
    await dialer.stop()
    await until(lambda: port.link_down, what="hub port link_down")
    b = Sink("b")
    await plug(host.address, b)
    b.send_packet(frame(0))
    await until(lambda: host.registry.info(port).counters.dropped_link_down == 1,
                what="drop counted on the dead port")
    # The server goes away: the dialler is link_down and redials by itself.
    dialer = LinkDialer(a, parse_peer(f"{addr}/p0"), min_backoff=0.05,
                        max_backoff=0.2)
    dialer.start()
    await until(lambda: not a.link_down, what="re-plugged")
    await host.stop(grace=0.1)
    await until(lambda: a.link_down, what="dialler link_down")
    a.send_packet(frame(1))
    assert a.stats.dropped_link_down == 1  # the sender itself is link_down
    # A new server on the same address: the dialler comes back by itself.
    host2 = HubServer(addr)
    host2.add_port("p0")
    await host2.start()
    await until(lambda: not a.link_down, timeout=10, what="redial")
    b = Sink("b2")
    await plug(host2.address, b)
    a.send_packet(frame(2))
    await b.wait_for(1)
    await dialer.stop()
    await host2.stop(grace=0.1)


async def test_link_errors_have_status_codes(hub: HubServer) -> None:
    a = Sink("a")
    await plug(hub.address, a, port="")
    taken = hub.hub.ports[0].name
    async with grpc.aio.insecure_channel(hub.address) as channel:
        stub = link_pb2_grpc.LinkServiceStub(channel)
        for name, code in ((taken, grpc.StatusCode.FAILED_PRECONDITION),
                           ("nosuch", grpc.StatusCode.NOT_FOUND)):
            call = stub.Connect()
            await call.write(link_pb2.ConnectRequest(hello=link_pb2.LinkHello(
                netclient=name, peer="x", credits=10)))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call.read()
            assert err.value.code() == code, err.value.details()
            assert name in (err.value.details() or "")
        call = stub.Connect()
        await call.write(link_pb2.ConnectRequest(batch=link_pb2.LinkBatch()))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.read()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_dialler_that_sends_no_hello_gets_deadline_exceeded(
        hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_link, "HELLO_TIMEOUT_S", 0.2)
    refused = hub.registry.acceptor.links_refused
    async with grpc.aio.insecure_channel(hub.address) as channel:
        call = link_pb2_grpc.LinkServiceStub(channel).Connect()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(call.read(), 10)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert err.value.details() == "no LinkHello received"
    assert hub.registry.acceptor.links_refused == refused + 1


async def test_inject_and_capture_over_grpc(hub: HubServer) -> None:
    a, b = Sink("a"), Sink("b")
    await plug(hub.address, a)
    await plug(hub.address, b)
    port_a = _port_of(hub, "a")
    async with grpc.aio.insecure_channel(hub.address) as channel:
        stub = netclient_pb2_grpc.NetClientServiceStub(channel)
        call = stub.Capture(netclient_pb2.CaptureRequest(
            name=port_a, count=1, filter=netclient_pb2.CaptureFilter(
                direction=netclient_pb2.DIRECTION_RX, ethertype=0x88B5)))
        await until(lambda: bool(hub.hub.port(port_a).capture_hooks), what="capture hook")
        resp = await stub.Inject(netclient_pb2.InjectRequest(name=port_a, frame=frame(7)))
        assert (resp.accepted, resp.dropped) == (1, 0)
        got = [item async for item in call]
        assert [g.frame for g in got] == [frame(7)]
        assert got[0].direction == netclient_pb2.DIRECTION_RX
        await b.wait_for(1)
        assert b.frames == [frame(7)] and a.frames == []
        bad = [
            netclient_pb2.InjectRequest(name=port_a, frame=b""),
            netclient_pb2.InjectRequest(name=port_a, frame=bytes(69633)),
            netclient_pb2.InjectRequest(name=port_a, frame=frame(1), repeat=10**6),
        ]
        for req in bad:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Inject(req)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Inject(netclient_pb2.InjectRequest(name="nosuch", frame=frame(1)))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.Capture(netclient_pb2.CaptureRequest(
                    name=port_a, filter=netclient_pb2.CaptureFilter(mac="zz"))):
                pass
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_set_link_down_drops_and_counts(hub: HubServer) -> None:
    a, b = Sink("a"), Sink("b")
    await plug(hub.address, a)
    await plug(hub.address, b)
    await ready(a)
    port_b = _port_of(hub, "b")
    async with grpc.aio.insecure_channel(hub.address) as channel:
        stub = netclient_pb2_grpc.NetClientServiceStub(channel)
        resp = await stub.SetLink(netclient_pb2.SetLinkRequest(name=port_b, up=False))
        assert resp.netclient.link_down and resp.netclient.admin_down
        for i in range(10):
            a.send_packet(frame(i))
        info = hub.registry.info(hub.hub.port(port_b))
        await until(lambda: hub.registry.info(hub.hub.port(port_b)).counters.dropped_link_down
                    == 10, what="10 drops counted")
        assert b.frames == []
        await stub.SetLink(netclient_pb2.SetLinkRequest(name=port_b, up=True))
        a.send_packet(frame(99))
        await b.wait_for(1)
        assert b.frames == [frame(99)]
        assert info.admin_down


async def test_a_cancel_that_lands_while_a_session_winds_down_still_ends_it() -> None:
    """The session's stream ends, and while its tasks wind down the dialer is
    stopped: the cancel must end the session's caller, not be taken for the
    session's end (a dialer would then redial for ever and never stop)."""
    winding = asyncio.Event()

    class Stream:
        async def read_batch(self) -> Batch | None:
            return None  # the remote closed the stream

        async def write_batch(self, batch: Batch) -> None:
            try:
                await asyncio.sleep(3600)
            finally:
                winding.set()
                await asyncio.sleep(0.2)  # a slow wind-down: the cancel lands here

    peer = LinkPeer(Sink("a"), "b")
    peer.out_frames.append(frame(0))  # so the writer is busy writing
    peer.credits = 1
    session = server_link.LinkSession(peer, Stream())
    runner = asyncio.create_task(session.run(credits=1, remote_ready=True))
    await asyncio.wait_for(winding.wait(), 5)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(runner, 5)
    assert peer.session is None  # detached all the same
