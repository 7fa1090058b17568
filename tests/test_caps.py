"""Caps against hostile peers, driven through the raw gRPC stubs.

A Connect peer that grants itself 2^32 credits and never reads, one that
sends beyond its credits, 30 cancelled anonymous Connects, 100 KB names, too
many ports and too many Capture streams: each cap holds, each refusal has the
right status code and a short message, and each is counted where users look.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from virtwire.address import NAME_MAX, check_name, parse_peer, shorten
from virtwire.errors import ConfigError, LimitError
from virtwire.link import DEFAULT_WINDOW, LinkPeer
from virtwire.net.capture import CaptureFilter, CaptureSubscription
from virtwire.net.queue import NQ_MAXLEN
from virtwire.server.hub import HubServer
from virtwire.server.link import LinkDialer
from virtwire.v1 import (
    hub_pb2,
    hub_pb2_grpc,
    link_pb2,
    link_pb2_grpc,
    netclient_pb2,
    netclient_pb2_grpc,
)

from support.doubles import Sink, frame, pump, until
from support.links import plug, ready
from support.procs import serve

MAX_CREDITS = 2**32 - 1
#: An error message is short whatever the request held.
SHORT = 400
HUGE_NAME = "p" * 100_000

Call = grpc.aio.StreamStreamCall[link_pb2.ConnectRequest, link_pb2.ConnectResponse]


@pytest.fixture
async def channel(hub: HubServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(hub.address) as ch:
        yield ch


async def hello(channel: grpc.aio.Channel, netclient: str = "", peer: str = "evil",
                credits: int = MAX_CREDITS) -> Call:
    call: Call = link_pb2_grpc.LinkServiceStub(channel).Connect()
    await call.write(link_pb2.ConnectRequest(hello=link_pb2.LinkHello(
        netclient=netclient, peer=peer, credits=credits, can_receive=True)))
    return call


async def refused(call: Call) -> grpc.aio.AioRpcError:
    """The status the server ended ``call`` with (reading past the welcome)."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        while True:
            msg = await asyncio.wait_for(call.read(), 10)
            assert msg is not grpc.aio.EOF  # type: ignore[attr-defined]
    return err.value


def port_of(hub: HubServer, dialler: str) -> LinkPeer:
    for port in hub.hub.ports:
        if isinstance(port.peer, LinkPeer) and port.peer.remote_name == dialler:
            return port.peer
    raise AssertionError(f"no port linked to {dialler}")


async def list_netclients(channel: grpc.aio.Channel) -> netclient_pb2.ListNetClientsResponse:
    stub = netclient_pb2_grpc.NetClientServiceStub(channel)
    return await stub.ListNetClients(netclient_pb2.ListNetClientsRequest())


# -- credits ----------------------------------------------------------------------------
async def test_a_peer_granting_2_32_credits_and_never_reading_holds_at_most_the_window(
        hub: HubServer, channel: grpc.aio.Channel) -> None:
    """Big frames, so gRPC's flow control stops the writer: our side must stay bounded."""
    window = 64
    hub.registry.acceptor.window = window  # the hub's LinkPeers take this window
    a, c = Sink("a"), Sink("c")
    dialers = [await plug(hub.address, a), await plug(hub.address, c)]
    await ready(a)
    evil = await hello(channel)
    await until(lambda: any(isinstance(p.peer, LinkPeer) and p.peer.remote_name == "evil"
                            for p in hub.hub.ports), what="evil port")
    lp = port_of(hub, "evil")
    assert lp.credits == window
    stop = asyncio.Event()

    async def keep_granting() -> None:
        # Never reads; grants 2^32 - 1 more credits every few milliseconds.
        while not stop.is_set():
            await evil.write(link_pb2.ConnectRequest(batch=link_pb2.LinkBatch(
                credits=MAX_CREDITS)))
            await asyncio.sleep(0.005)

    granter = asyncio.create_task(keep_granting())
    n = 400
    for i in range(n):
        a.send_packet(frame(i, size=60_000))
        if i % 20 == 19:
            await asyncio.sleep(0.01)
    await c.wait_for(n, timeout=30)   # the other port keeps the hub receiving
    await asyncio.sleep(0.2)
    stop.set()
    await granter
    q = lp.incoming_queue
    assert lp.credits + len(lp.out_frames) + lp.on_wire <= window
    assert len(lp.out_frames) <= window
    assert len(q) <= NQ_MAXLEN
    # The writer is stuck on gRPC's flow control: what did not fit waits in
    # QEMU's queue, visible and bounded, not in a hidden buffer.
    assert len(q) > 0
    taken = lp.stats.rx_frames - len(lp.out_frames)
    assert taken + len(lp.out_frames) + len(q) + q.dropped == n
    assert taken < n // 2, "gRPC absorbed most frames: the test did not stall the writer"
    assert lp.credits_refused > MAX_CREDITS
    resp = await list_netclients(channel)
    info = next(p for p in resp.netclients if p.peer == "evil")
    assert info.counters.link_credits_refused == lp.credits_refused
    assert info.counters.peer_queue_len == len(q)
    assert resp.server.link_credits_refused >= lp.credits_refused
    evil.cancel()
    for d in dialers:
        await d.stop()


async def test_hostile_credits_keep_the_hub_process_memory_bounded(tmp_path: Path) -> None:
    """The issue's probe against a real `serve hub`: 100k frames, one peer never reads."""
    n, size = 100_000, 1514
    with serve("hub", [], tmp_path) as hub:
        a, c = Sink("a"), Sink("c")
        dialers = [await plug(hub.address, a), await plug(hub.address, c)]
        await ready(a)
        async with grpc.aio.insecure_channel(hub.address) as ch:
            evil = await hello(ch)
            stop = asyncio.Event()

            async def keep_granting() -> None:
                while not stop.is_set():
                    await evil.write(link_pb2.ConnectRequest(batch=link_pb2.LinkBatch(
                        credits=MAX_CREDITS)))
                    await asyncio.sleep(0.01)

            granter = asyncio.create_task(keep_granting())
            rss_before = hub.rss_kib()
            await asyncio.wait_for(pump(a, [frame(i, size) for i in range(n)]), 120)
            await c.wait_for(n, timeout=60)
            rss_after = hub.rss_kib()
            resp = await list_netclients(ch)
            stop.set()
            await granter
            evil.cancel()
        for d in dialers:
            await d.stop()
    # Unbounded, the 150 MB that never left would sit in the hub. Bounded:
    # window + nq_maxlen frames (~18 MB) plus what gRPC's flow control lets out.
    assert rss_after - rss_before < 80 * 1024, (rss_before, rss_after)
    counters = next(p for p in resp.netclients if p.peer == "evil").counters
    assert counters.tx_frames == n
    assert counters.peer_queue_len <= NQ_MAXLEN
    assert counters.dropped_queue_full > 0
    assert counters.link_credits_refused > MAX_CREDITS


async def test_frames_beyond_the_credits_end_the_link(
        hub: HubServer, channel: grpc.aio.Channel) -> None:
    port = hub.add_port("victim")
    call = await hello(channel, "victim", credits=8)
    first = await call.read()
    assert isinstance(first, link_pb2.ConnectResponse)
    granted = first.welcome.credits
    assert granted == DEFAULT_WINDOW
    await call.write(link_pb2.ConnectRequest(batch=link_pb2.LinkBatch(
        frames=[frame(i) for i in range(granted + 1)])))
    err = await refused(call)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "credits" in (err.details() or "") and len(err.details() or "") < SHORT
    await until(lambda: not isinstance(port.peer, LinkPeer) or port.peer.session is None,
                what="link down")
    resp = await list_netclients(channel)
    info = next(p for p in resp.netclients if p.name == "victim")
    assert info.counters.link_protocol_errors == 1
    assert resp.server.link_protocol_errors == 1
    assert info.counters.rx_frames == 0  # none of the batch got in


async def test_completion_requests_beyond_the_window_end_the_link(
        hub: HubServer, channel: grpc.aio.Channel) -> None:
    """A lone port cannot receive (no other port), so requested frames stay queued."""
    window = 16
    hub.registry.acceptor.window = window
    port = hub.add_port("lonely")
    call = await hello(channel, "lonely", credits=8)
    await call.read()  # welcome

    def requested(first: int, count: int) -> link_pb2.ConnectRequest:
        batch = link_pb2.LinkBatch(frames=[frame(first + i) for i in range(count)])
        for i in range(count):
            batch.completion_requests.add(index=i, id=first + i + 1)
        return link_pb2.ConnectRequest(batch=batch)

    await call.write(requested(0, window))   # all our credits: fine
    await until(lambda: len(port.incoming_queue) == window, what="requests queued")
    # The hub hands the credits back (the frames are in its queue); one more
    # request is more than the window allows pending.
    got = 0
    while got < window:
        msg = await asyncio.wait_for(call.read(), 10)
        got += msg.batch.credits
    await call.write(requested(window, 1))
    err = await refused(call)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "completion requests" in (err.details() or "")
    await until(lambda: len(port.incoming_queue) == 0, what="queue purged on link down")


async def test_an_honest_peer_with_a_larger_window_still_works(hub: HubServer) -> None:
    """Clamping is not an error: a dialler granting more than the hub's window links."""
    hub.registry.acceptor.window = 32
    a, b = Sink("a"), Sink("b")
    dialers = []
    for nc in (a, b):
        d = LinkDialer(nc, parse_peer(f"{hub.address}/"), window=4096)
        d.start()
        await asyncio.wait_for(d.connected.wait(), 10)
        dialers.append(d)
    await until(lambda: isinstance(a.peer, LinkPeer) and a.peer.remote_ready, what="ready")
    await asyncio.wait_for(pump(a, [frame(i) for i in range(5000)]), 30)
    await b.wait_for(5000)
    assert b.frames == [frame(i) for i in range(5000)]
    assert port_of(hub, "b").credits_refused == 4096 - 32
    for d in dialers:
        await d.stop()


# -- anonymous ports ----------------------------------------------------------------------
async def test_cancelled_anonymous_connects_leave_no_ports(
        hub: HubServer, channel: grpc.aio.Channel) -> None:
    hub.add_port("named")                # like `serve hub --port NAME`: stays
    stub = hub_pb2_grpc.HubServiceStub(channel)
    await stub.AddPort(hub_pb2.AddPortRequest(name="added"))   # stays too
    start = {p.name for p in hub.hub.ports}
    for i in range(30):
        call = await hello(channel, peer=f"c{i}")
        if i % 2:
            await call.read()            # half of them get their welcome first
        call.cancel()
    await until(lambda: {p.name for p in hub.hub.ports} == start, what="ports back to start")
    # The same through a LinkDialer that goes away.
    a = Sink("a")
    dialer = await plug(hub.address, a)
    assert len(hub.hub.ports) == len(start) + 1
    await dialer.stop()
    await until(lambda: {p.name for p in hub.hub.ports} == start, what="dialer's port gone")
    ports = await stub.ListPorts(hub_pb2.ListPortsRequest())
    assert {p.name for p in ports.ports} == start == {"named", "added"}


async def test_an_anonymous_dialer_gets_a_new_port_after_its_stream_breaks() -> None:
    host = HubServer("127.0.0.1:0")
    await host.start()
    addr = host.address
    a = Sink("a")
    dialer = LinkDialer(a, parse_peer(f"{addr}/"), min_backoff=0.05, max_backoff=0.2)
    dialer.start()
    await asyncio.wait_for(dialer.connected.wait(), 10)
    await host.stop(grace=0.1)
    await until(lambda: a.link_down, what="link down")
    host2 = HubServer(addr)
    await host2.start()
    # The old port's name is gone with the old hub; the redial asks for a new one.
    await until(lambda: not a.link_down, timeout=10, what="redialled")
    assert [p.name for p in host2.hub.ports] == ["hub0port0"]
    await dialer.stop()
    await until(lambda: not host2.hub.ports, what="port removed")
    await host2.stop(grace=0.1)


# -- the port cap -----------------------------------------------------------------------
async def test_ports_are_capped_for_add_port_and_anonymous_links() -> None:
    host = HubServer("127.0.0.1:0", max_ports=3)
    host.add_port("p0")
    await host.start()
    try:
        async with grpc.aio.insecure_channel(host.address) as ch:
            stub = hub_pb2_grpc.HubServiceStub(ch)
            await stub.AddPort(hub_pb2.AddPortRequest(name="p1"))
            live = await hello(ch, peer="x")
            await live.read()
            assert len(host.hub.ports) == 3
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.AddPort(hub_pb2.AddPortRequest(name="p3"))
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "max-ports" in (err.value.details() or "")
            over = await refused(await hello(ch, peer="y"))
            assert over.code() == grpc.StatusCode.FAILED_PRECONDITION
            ports = await stub.ListPorts(hub_pb2.ListPortsRequest())
            assert (ports.max_ports, ports.ports_refused, len(ports.ports)) == (3, 2, 3)
            resp = await list_netclients(ch)
            assert resp.server.links_refused == 1
            live.cancel()
            await until(lambda: len(host.hub.ports) == 2, what="anonymous port gone")
            await stub.AddPort(hub_pb2.AddPortRequest(name="p3"))   # room again
        with pytest.raises(LimitError):
            host.add_port()
    finally:
        await host.stop(grace=0.1)


def test_cli_max_ports(tmp_path: Path) -> None:
    from virtwire.errors import BackendError

    with pytest.raises(BackendError, match="max-ports"):
        with serve("hub", ["--max-ports", "2", "--ports", "3"], tmp_path):
            pass
    with serve("hub", ["--max-ports", "2", "--port", "a"], tmp_path) as svc:

        async def check() -> hub_pb2.ListPortsResponse:
            async with grpc.aio.insecure_channel(svc.address) as ch:
                return await hub_pb2_grpc.HubServiceStub(ch).ListPorts(
                    hub_pb2.ListPortsRequest())

        assert asyncio.run(check()).max_ports == 2


# -- names ------------------------------------------------------------------------------
def test_names_and_shortened_messages() -> None:
    for good in ("hub0port3", "e1000", "vm1", "to-hub1", "a.b_c-D", "x" * NAME_MAX):
        assert check_name(good) == good
    for bad in ("", "x" * (NAME_MAX + 1), "vm1>hub0port0", "a b", "a/b", "é", HUGE_NAME):
        with pytest.raises(ConfigError, match="bad NetClient name") as err:
            check_name(bad)
        assert len(str(err.value)) < SHORT
    assert shorten("abc") == "'abc'"
    assert shorten(HUGE_NAME).endswith("... (100000 characters)") and len(shorten(HUGE_NAME)) < 120
    # Address parsing echoes a bounded excerpt too.
    for bad in (f"127.0.0.1:1/{HUGE_NAME}", f"{HUGE_NAME}:1/x", f"h:{'9' * 100_000}/x",
                f"127.0.0.1:1/a/{HUGE_NAME}"):
        with pytest.raises(ConfigError) as err:
            parse_peer(bad)
        assert len(str(err.value)) < SHORT


async def test_a_100kb_name_is_refused_with_a_short_message_and_later_errors_stay_right(
        hub: HubServer, channel: grpc.aio.Channel) -> None:
    hub_stub = hub_pb2_grpc.HubServiceStub(channel)
    nc_stub = netclient_pb2_grpc.NetClientServiceStub(channel)
    for name in (HUGE_NAME, "bad>name", "a" * 65):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await hub_stub.AddPort(hub_pb2.AddPortRequest(name=name))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert len(err.value.details() or "") < SHORT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await hub_stub.AddPort(hub_pb2.AddPortRequest(peer=f"127.0.0.1:1/{HUGE_NAME}"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(err.value.details() or "") < SHORT
    for call in (await hello(channel, netclient=HUGE_NAME), await hello(channel, peer=HUGE_NAME)):
        e = await refused(call)
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and len(e.details() or "") < SHORT
    assert not hub.hub.ports  # nothing was created
    # Many ports with the longest names: NOT_FOUND stays NOT_FOUND, and short.
    for i in range(100):
        await hub_stub.AddPort(hub_pb2.AddPortRequest(name=f"{i:03d}" + "n" * 61))
    for request in (netclient_pb2.GetNetClientRequest(name=HUGE_NAME),
                    netclient_pb2.GetNetClientRequest(name="nosuch")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await nc_stub.GetNetClient(request)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND, err.value.details()
        assert len(err.value.details() or "") < 1000
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await nc_stub.Inject(netclient_pb2.InjectRequest(name=HUGE_NAME, frame=frame(1)))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    resp = await list_netclients(channel)
    assert resp.server.names_refused == 5
    assert resp.server.links_refused == 2


# -- captures ---------------------------------------------------------------------------
async def test_capture_subscribers_are_capped_and_refusals_counted(
        hub: HubServer, channel: grpc.aio.Channel) -> None:
    hub.registry.max_captures = 3
    port = hub.add_port("watched")
    hub.add_port("other")  # so "watched" can receive what is injected
    stub = netclient_pb2_grpc.NetClientServiceStub(channel)
    calls = [stub.Capture(netclient_pb2.CaptureRequest(name="watched")) for _ in range(3)]
    await until(lambda: len(port.capture_hooks) == 3, what="three subscribers")
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.Capture(netclient_pb2.CaptureRequest(name="watched")):
                pass
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "capture subscribers" in (err.value.details() or "")
    info = (await stub.GetNetClient(netclient_pb2.GetNetClientRequest(name="watched"))).netclient
    assert (info.counters.capture_refused, info.counters.capture_subscribers) == (2, 3)
    assert (await list_netclients(channel)).server.max_capture_subscribers == 3
    calls[0].cancel()
    await until(lambda: len(port.capture_hooks) == 2, what="a subscriber left")
    again = stub.Capture(netclient_pb2.CaptureRequest(name="watched", count=1))
    await until(lambda: len(port.capture_hooks) == 3, what="room for a new one")
    await stub.Inject(netclient_pb2.InjectRequest(name="watched", frame=frame(5)))
    assert [r.frame async for r in again] == [frame(5)]
    for call in calls[1:]:
        call.cancel()
    await until(lambda: not port.capture_hooks, what="all gone")


async def test_a_capture_queue_is_bounded_in_bytes_too() -> None:
    nc = Sink("n")
    nc.peer = Sink("peer")
    nc.peer.peer = nc
    with CaptureSubscription(nc, CaptureFilter(), max_bytes=10 * 1000) as sub:
        for i in range(50):
            nc.send_packet(frame(i, size=1000))
        assert sub.queue.qsize() == 10 and sub.dropped == 40 and nc.capture_dropped == 40
        await sub.get()
        nc.send_packet(frame(99, size=1000))
        assert sub.queue.qsize() == 10
    with pytest.raises(LimitError):
        subs = [CaptureSubscription(nc, CaptureFilter(), max_subscribers=2) for _ in range(3)]
        for s in subs:
            s.start()
    assert nc.capture_refused == 1


# -- Inject does not hold the loop ------------------------------------------------------------
async def test_a_large_inject_lets_the_event_loop_run(hub: HubServer,
                                                      channel: grpc.aio.Channel) -> None:
    sinks = [Sink(f"s{i}") for i in range(3)]
    dialers = [await plug(hub.address, s) for s in sinks]
    target = hub.add_port("target")
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    stub = netclient_pb2_grpc.NetClientServiceStub(channel)
    resp = await stub.Inject(netclient_pb2.InjectRequest(name=target.name, frame=frame(1),
                                                         repeat=100_000))
    stop.set()
    await task
    assert resp.accepted + resp.dropped == 100_000
    # Unsliced, 100k injections into a three-way hub hold the loop for ~0.5 s.
    # Sliced, the longest stall left is a hub flushing a full queue (~0.1 s).
    assert max(gaps) < 0.3, max(gaps)
    for d in dialers:
        await d.stop()


async def test_add_backend_refuses_a_100kb_name_and_counts_it() -> None:
    from virtwire.server.tap import TapServer
    from virtwire.v1 import tap_pb2, tap_pb2_grpc

    host = TapServer("127.0.0.1:0")
    await host.start()
    try:
        async with grpc.aio.insecure_channel(host.address) as ch:
            stub = tap_pb2_grpc.TapServiceStub(ch)
            for name in (HUGE_NAME, "a b"):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.AddBackend(tap_pb2.AddBackendRequest(config=tap_pb2.BackendConfig(
                        name=name, stream=tap_pb2.StreamBackendConfig(
                            address="127.0.0.1:0", listen=True))))
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert len(err.value.details() or "") < SHORT
            resp = await list_netclients(ch)
            assert not resp.netclients and resp.server.names_refused == 2
    finally:
        await host.stop(grace=0.1)


async def test_capture_filter_errors_are_short(hub: HubServer,
                                               channel: grpc.aio.Channel) -> None:
    hub.add_port("w")
    stub = netclient_pb2_grpc.NetClientServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.Capture(netclient_pb2.CaptureRequest(
                name="w", filter=netclient_pb2.CaptureFilter(mac="a" * 100_000))):
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(err.value.details() or "") < SHORT


def test_cli_max_captures(tmp_path: Path) -> None:
    with serve("hub", ["--max-captures", "1", "--port", "w", "--port", "o"], tmp_path) as svc:

        async def check() -> None:
            async with grpc.aio.insecure_channel(svc.address) as ch:
                stub = netclient_pb2_grpc.NetClientServiceStub(ch)
                first = stub.Capture(netclient_pb2.CaptureRequest(name="w"))
                for _ in range(500):
                    got = await stub.GetNetClient(netclient_pb2.GetNetClientRequest(name="w"))
                    if got.netclient.counters.capture_subscribers == 1:
                        break
                    await asyncio.sleep(0.01)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    async for _ in stub.Capture(netclient_pb2.CaptureRequest(name="w")):
                        pass
                assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                first.cancel()

        asyncio.run(check())
