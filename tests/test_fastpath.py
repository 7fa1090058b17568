"""The fast data path (docs/links.md): the record codec, the same-host socket's
listener and its caps, links on the socket end to end through a real hub
service, credits returned on delivery, and the batch send paths checked
against sending the same frames one by one.

In-process servers on 127.0.0.1:0 and abstract unix sockets only.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import grpc
import pytest
from test_caps import port_of, refused
from test_link import carry, linked

from virtwire.address import SockAddr, parse_peer
from virtwire.errors import LimitError, UnavailableError
from virtwire.link import MAX_BATCH_BYTES, MAX_BATCH_FRAMES, Batch, LinkPeer, codec
from virtwire.link import unix as fastpath
from virtwire.net.eth import NET_BUFSIZE
from virtwire.net.hub import Hub
from virtwire.net.net import NetClient
from virtwire.net.queue import NET_PACKET_FLAG_NONE
from virtwire.net.stream import StreamBackend
from virtwire.server import link as server_link
from virtwire.server.hub import HubServer
from virtwire.server.link import LinkDialer
from virtwire.server.registry import NetClientRegistry
from virtwire.v1 import link_pb2, link_pb2_grpc

from support.doubles import Sink, frame, pump, until
from support.e1000_rig import Rig, brought_up, eth_frame
from support.links import plug, ready

pytestmark = pytest.mark.timeout(120)

Call = grpc.aio.StreamStreamCall[link_pb2.ConnectRequest, link_pb2.ConnectResponse]


# -- codec -------------------------------------------------------------------------------
def view(batch: Batch) -> tuple[Any, ...]:
    """A batch's fields, comparable whatever sequence type carries the frames."""
    return ([bytes(f) for f in batch.frames], dict(batch.completion_requests),
            list(batch.completions), batch.credits, batch.ready, batch.discards)


ROUND_TRIPS = {
    "empty": Batch(),
    "a lone frame": Batch(frames=[frame(0)]),
    "credits only": Batch(credits=7),
    "not ready": Batch(ready=False, credits=3),
    "ready": Batch(ready=True),
    "ready and discarding": Batch(ready=True, discards=True, credits=1),
    "everything": Batch(
        frames=[frame(i, size=s) for i, s in enumerate((1, 60, 1514, 9000, NET_BUFSIZE))],
        completion_requests={0: 1, 3: 2**64 - 1, 4: 0},
        completions=[(5, 64), (2**64 - 1, -1), (7, 0), (8, -2**63), (9, 2**63 - 1)],
        credits=2**32 - 1, ready=True),
    "an empty frame": Batch(frames=[b"", frame(1)], completion_requests={0: 9}),
    "the most frames": Batch(
        frames=[frame(i, size=MAX_BATCH_BYTES // MAX_BATCH_FRAMES)
                for i in range(MAX_BATCH_FRAMES)],
        completion_requests={i: i + 1 for i in range(MAX_BATCH_FRAMES)},
        completions=[(i, i) for i in range(codec.MAX_COMPLETIONS)], ready=False),
}


@pytest.mark.parametrize("batch", ROUND_TRIPS.values(), ids=ROUND_TRIPS.keys())
def test_a_batch_survives_its_record(batch: Batch) -> None:
    record = codec.encode(batch)
    assert codec.body_length(record) == len(record) - codec.HEADER.size <= codec.MAX_BODY
    decoded, end = codec.decode(record)
    assert end == len(record)
    assert view(decoded) == view(batch)
    assert all(isinstance(f, bytes) for f in decoded.frames)


def test_records_back_to_back_decode_at_their_offsets() -> None:
    batches = list(ROUND_TRIPS.values())[:6]
    data = b"".join(codec.encode(b) for b in batches)
    pos = 0
    for batch in batches:
        decoded, pos = codec.decode(data, pos)
        assert view(decoded) == view(batch)
    assert pos == len(data)


def raw(n: int = 0, n_req: int = 0, n_comp: int = 0, credits: int = 0, ready: int = 0,
        body: bytes = b"", body_len: int | None = None) -> bytes:
    """A record written by hand: its header says what the arguments say."""
    length = len(body) if body_len is None else body_len
    return codec.HEADER.pack(length, n, n_req, n_comp, credits, ready) + body


def lengths(*sizes: int) -> bytes:
    return struct.pack(f"<{len(sizes)}I", *sizes)


GOOD = codec.encode(ROUND_TRIPS["everything"])

MALFORMED = {
    "nothing": b"",
    "half a header": GOOD[:codec.HEADER.size // 2],
    "a header alone": GOOD[:codec.HEADER.size],
    "one byte short": GOOD[:-1],
    "body above MAX_BODY": raw(body_len=codec.MAX_BODY + 1),
    "body of 4 GiB": raw(body_len=2**32 - 1),
    "too many frames": raw(n=MAX_BATCH_FRAMES + 1, body=bytes(4 * (MAX_BATCH_FRAMES + 1))),
    "more requests than frames": raw(n=1, n_req=2, body=lengths(1) + bytes(24) + b"x"),
    "too many completions": raw(n_comp=codec.MAX_COMPLETIONS + 1,
                                body=bytes(16 * (codec.MAX_COMPLETIONS + 1))),
    "frame lengths beyond the body": raw(n=5),
    "completions beyond the body": raw(n_comp=codec.MAX_COMPLETIONS),
    "requests beyond the body": raw(n=2, n_req=2, body=lengths(0, 0)),
    "lengths longer than the body": raw(n=2, body=lengths(10, 10) + bytes(19)),
    "lengths shorter than the body": raw(n=2, body=lengths(10, 10) + bytes(21)),
    "a huge frame length": raw(n=1, body=lengths(2**32 - 1) + bytes(8)),
    "request index out of range": raw(n=1, n_req=1,
                                      body=lengths(1) + struct.pack("<IQ", 1, 5) + b"x"),
    "two requests for one frame": raw(n=2, n_req=2, body=lengths(1, 1)
                                      + struct.pack("<IQIQ", 1, 5, 1, 6) + b"xy"),
    "ready byte 4": raw(ready=4),
    "ready byte 255": raw(ready=255),
}


@pytest.mark.parametrize("record", MALFORMED.values(), ids=MALFORMED.keys())
def test_every_malformed_record_is_a_limit_error(record: bytes) -> None:
    with pytest.raises(LimitError):
        codec.body_length(record)
        codec.decode(record)


def parse(data: bytes) -> int:
    """What a reader does with ``data``: records until it runs out; how many."""
    pos = count = 0
    while pos < len(data):
        start = pos
        end = pos + codec.HEADER.size + codec.body_length(data, pos)
        batch, pos = codec.decode(data, pos)
        assert pos == end <= len(data)
        # What was accepted encodes to the same bytes again (padding aside).
        again, mine = codec.encode(batch), data[start:end]
        assert again[:21] + again[24:] == mine[:21] + mine[24:]
        count += 1
    return count


def test_fuzzed_records_only_ever_raise_limit_error() -> None:
    rng = random.Random(10)
    seeds = [codec.encode(b) for b in list(ROUND_TRIPS.values())[:7]] + list(MALFORMED.values())
    outcomes = {"parsed": 0, "refused": 0}
    for i in range(3000):
        if i % 4 == 0:
            data = rng.randbytes(rng.randrange(0, 96))
        else:
            buf = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(1, 4)):
                op = rng.randrange(4)
                if op == 0 and buf:        # flip a byte
                    buf[rng.randrange(len(buf))] = rng.randrange(256)
                elif op == 1:              # a header field set to something
                    field = rng.randrange(6)
                    offset = 4 * field
                    value = rng.choice((0, 1, 2, 3, 255, 512, 513, 65536, 2**32 - 1))
                    if len(buf) >= offset + 4:
                        size = 1 if field == 5 else 4
                        buf[offset:offset + size] = value.to_bytes(4, "little")[:size]
                elif op == 2:              # truncate
                    del buf[rng.randrange(len(buf) + 1):]
                else:                      # something after it
                    buf += rng.randbytes(rng.randrange(1, 40))
            data = bytes(buf)
        try:
            parse(data)
        except LimitError:
            outcomes["refused"] += 1
        else:
            outcomes["parsed"] += 1
    assert outcomes["parsed"] > 0 and outcomes["refused"] > 0, outcomes


# -- the listener and dial() ---------------------------------------------------------------
@pytest.fixture
async def listener() -> AsyncIterator[fastpath.FastPathListener]:
    lst = fastpath.FastPathListener()
    yield lst
    await lst.close()


async def raw_connect(name: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_unix_connection("\0" + name)


async def closed_by_peer(reader: asyncio.StreamReader, timeout: float = 5.0) -> None:
    """Until the other end closed the connection (EOF or reset)."""
    with contextlib.suppress(ConnectionResetError):
        assert await asyncio.wait_for(reader.read(), timeout) == b""


async def test_a_wrong_or_reused_token_is_refused_and_counted(
        listener: fastpath.FastPathListener) -> None:
    offer = await listener.offer()
    with pytest.raises(UnavailableError, match="refused the token"):
        await fastpath.dial(offer.socket_name, bytes(fastpath.TOKEN_BYTES))
    await until(lambda: listener.tokens_refused == 1, what="wrong token counted")
    assert not offer.stream.done() and listener.accepted == 0
    stream = await fastpath.dial(offer.socket_name, offer.token)
    assert offer.stream.done() and listener.accepted == 1
    with pytest.raises(UnavailableError):
        await fastpath.dial(offer.socket_name, offer.token)   # one time only
    await until(lambda: listener.tokens_refused == 2, what="reused token counted")
    assert listener.handshakes == 0
    stream.close()
    offer.stream.result().close()


@pytest.mark.parametrize("sent", [b"", b"x" * (fastpath.TOKEN_BYTES // 2)],
                         ids=["nothing", "half a token"])
async def test_a_connection_without_a_token_is_closed_after_the_timeout(
        listener: fastpath.FastPathListener, monkeypatch: pytest.MonkeyPatch,
        sent: bytes) -> None:
    monkeypatch.setattr(fastpath, "HANDSHAKE_TIMEOUT_S", 0.2)
    await listener.offer()
    reader, writer = await raw_connect(listener.socket_name)
    writer.write(sent)
    await until(lambda: listener.handshakes == 1, what="handshake waiting")
    await closed_by_peer(reader)
    assert listener.tokens_refused == 1 and listener.handshakes == 0
    writer.close()


async def test_handshakes_beyond_max_are_refused_and_counted(
        listener: fastpath.FastPathListener, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastpath, "MAX_HANDSHAKES", 2)
    offer = await listener.offer()
    held = []
    for i in range(2):
        held.append(await raw_connect(listener.socket_name))
        await until(lambda i=i: listener.handshakes == i + 1, what="handshake waiting")
    reader, writer = await raw_connect(listener.socket_name)
    await closed_by_peer(reader)
    assert listener.handshakes_refused == 1 and listener.handshakes == 2
    # A real dialler is refused too while they wait, and gets in once one goes.
    with pytest.raises(UnavailableError):
        await fastpath.dial(offer.socket_name, offer.token)
    assert listener.handshakes_refused == 2 and not offer.stream.done()
    held[0][1].close()
    await until(lambda: listener.handshakes == 1, what="a handshake gone")
    stream = await fastpath.dial(offer.socket_name, offer.token)
    assert listener.accepted == 1
    stream.close()
    offer.stream.result().close()
    writer.close()
    # Closing the listener closes what still waits for its token.
    await listener.close()
    await closed_by_peer(held[1][0])
    assert listener.handshakes == 0


async def test_offers_beyond_max_are_a_counted_limit_error(
        listener: fastpath.FastPathListener, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastpath, "MAX_PENDING_OFFERS", 2)
    offers = [await listener.offer(), await listener.offer()]
    with pytest.raises(LimitError, match="outstanding"):
        await listener.offer()
    assert listener.offers_refused == 1 and len(listener.pending) == 2
    listener.withdraw(offers[0])
    assert offers[0].stream.cancelled()
    offers.append(await listener.offer())
    assert len(listener.pending) == 2 and listener.offers_refused == 1


async def test_offers_made_at_once_share_the_one_socket(
        listener: fastpath.FastPathListener) -> None:
    """Two links dialled into a fresh server at the same time: the second
    offer must not bind the socket again (EADDRINUSE sent it to the stream)."""
    offers = await asyncio.gather(*(listener.offer() for _ in range(3)))
    assert {o.socket_name for o in offers} == {listener.socket_name}
    streams = [await fastpath.dial(o.socket_name, o.token) for o in offers]
    assert listener.accepted == 3
    for stream, offer in zip(streams, offers, strict=True):
        stream.close()
        offer.stream.result().close()


@pytest.mark.parametrize("name", [
    "", "virtwire-link-", "virtwire-link-" + "0" * 31, "virtwire-link-" + "0" * 33,
    "virtwire-link-" + "A" * 32, "virtwire-link-" + "0" * 32 + "\n", "\0virtwire-link-" + "0" * 32,
    "/tmp/virtwire-link-" + "0" * 32, "../" * 40, "x" * 10_000,
])
async def test_dial_refuses_a_socket_name_no_listener_gives_without_connecting(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "socket", _no_socket)
    with pytest.raises(LimitError, match="socket name") as err:
        await fastpath.dial(name, bytes(fastpath.TOKEN_BYTES))
    assert len(str(err.value)) < 200


@pytest.mark.parametrize("size", [0, 1, fastpath.TOKEN_BYTES - 1, fastpath.TOKEN_BYTES + 1, 4096])
async def test_dial_refuses_a_token_of_the_wrong_size_without_connecting(
        size: int, listener: fastpath.FastPathListener, monkeypatch: pytest.MonkeyPatch) -> None:
    await listener.offer()
    monkeypatch.setattr(socket, "socket", _no_socket)
    with pytest.raises(LimitError, match="token"):
        await fastpath.dial(listener.socket_name, bytes(size))
    monkeypatch.undo()
    await asyncio.sleep(0.05)
    assert listener.handshakes == listener.tokens_refused == listener.handshakes_refused == 0


def _no_socket(*_args: object, **_kwargs: object) -> socket.socket:
    raise AssertionError("dial() made a socket")


# -- one stream on a socketpair ------------------------------------------------------------
@contextlib.asynccontextmanager
async def stream_pair(window: int = 2048) -> AsyncIterator[
        tuple[fastpath.UnixLinkStream, socket.socket, LinkPeer, Sink]]:
    """Our UnixLinkStream on one end of a socketpair, the raw other end, and a
    LinkPeer (attached, not yet bound) in front of a Sink."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()
    _, stream = await loop.connect_accepted_socket(fastpath.UnixLinkStream, sock=ours)
    sink = Sink("b")
    peer = LinkPeer(sink, "a", window)
    peer.attach(object(), credits=window, remote_ready=True)
    try:
        yield stream, theirs, peer, sink
    finally:
        stream.unbind()
        stream.close()
        peer.close()
        theirs.close()


async def test_records_that_arrive_before_bind_do_not_stall_the_stream() -> None:
    """Enough records to pause reading arrive before the session binds the
    stream (the acceptor still reads the dialler's LinkFastPathResult): bind
    must deliver them and read on, as nobody else resumes a pushing stream."""
    async with stream_pair() as (stream, theirs, peer, sink):
        loop = asyncio.get_running_loop()
        first = b"".join(codec.encode(Batch(frames=[frame(i)]))
                         for i in range(2 * fastpath.MAX_PARSED))
        await loop.sock_sendall(theirs, first)
        assert stream.transport is not None
        transport = stream.transport
        await until(lambda: not transport.is_reading(), what="reading paused")
        rest = b"".join(codec.encode(Batch(frames=[frame(i)]))
                        for i in range(2 * fastpath.MAX_PARSED, 3 * fastpath.MAX_PARSED))
        await loop.sock_sendall(theirs, rest)
        stream.bind(peer)
        await sink.wait_for(3 * fastpath.MAX_PARSED, timeout=5)
        assert sink.frames == [frame(i) for i in range(3 * fastpath.MAX_PARSED)]


async def test_a_read_full_of_tiny_records_is_cut_into_turns_without_loss(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer may pack a read with thousands of empty records: the read
    callback stops at RECEIVE_SLICE_S (here 0: every 16 records), reading
    pauses, and the rest goes on next turn, in order."""
    monkeypatch.setattr(fastpath, "RECEIVE_SLICE_S", 0.0)
    async with stream_pair() as (stream, theirs, peer, sink):
        stream.bind(peer)
        turns = 0
        receive = stream.data_received

        def counted(data: bytes) -> None:
            nonlocal turns
            turns += 1
            receive(data)

        stream.data_received = counted  # type: ignore[method-assign]
        n = 1600
        records = [codec.encode(Batch()) for _ in range(n)]
        records += [codec.encode(Batch(frames=[frame(i)])) for i in range(100)]
        await asyncio.get_running_loop().sock_sendall(theirs, b"".join(records))
        await sink.wait_for(100, timeout=10)
        assert sink.frames == [frame(i) for i in range(100)]
        assert turns >= (n + 100) // 16
        assert stream.transport is not None and stream.transport.is_reading()


@pytest.mark.parametrize("bound", [True, False], ids=["bound", "before bind"])
async def test_a_malformed_record_ends_the_stream_as_a_counted_protocol_error(
        bound: bool) -> None:
    async with stream_pair() as (stream, theirs, peer, sink):
        if bound:
            stream.bind(peer)
        good = codec.encode(Batch(frames=[frame(1)]))
        await asyncio.get_running_loop().sock_sendall(theirs, good + raw(ready=7))
        await asyncio.wait_for(asyncio.shield(stream.ended), 5)
        if not bound:
            stream.bind(peer)
        with pytest.raises(LimitError, match="ready byte 7"):
            await stream.wait_closed()
        assert peer.protocol_errors == 1
        assert sink.frames == [frame(1)]   # what came before the bad record got in


# -- links through a hub service ------------------------------------------------------------
def stream_of(peer: object) -> fastpath.UnixLinkStream:
    """The socket a LinkPeer's session pushes on (its kick is the stream's)."""
    assert isinstance(peer, LinkPeer)
    stream = getattr(peer.kick, "__self__", None)
    assert isinstance(stream, fastpath.UnixLinkStream), f"{peer.name} is not on a socket"
    return stream


@pytest.mark.parametrize(("dialler", "acceptor", "expected"), [
    ("auto", "auto", "unix"), ("grpc", "auto", "grpc"), ("auto", "grpc", "grpc"),
])
async def test_frames_cross_both_ways_on_the_transport_each_side_allows(
        hub: HubServer, dialler: str, acceptor: str, expected: str) -> None:
    hub.registry.set_link_transport(acceptor)
    registry = NetClientRegistry()
    registry.set_link_transport(dialler)
    a, b = Sink("a"), Sink("b")
    registry.add(a)
    registry.add(b)
    try:
        for nc in (a, b):
            dialer = registry.connect(nc, f"{hub.address}/")
            await asyncio.wait_for(dialer.connected.wait(), 10)
        await ready(a, b)
        for nc in (a, b):
            assert isinstance(nc.peer, LinkPeer)
            assert nc.peer.transport == expected
            assert port_of(hub, nc.name).transport == expected
        listener = hub.registry.acceptor.listener
        assert (listener.accepted if listener is not None else 0) == (
            2 if expected == "unix" else 0)
        n, m = 3000, 1000
        await asyncio.wait_for(asyncio.gather(
            pump(a, [frame(i, src=1) for i in range(n)]),
            pump(b, [frame(i, src=2, size=1514) for i in range(m)])), 30)
        await b.wait_for(n)
        await a.wait_for(m)
        assert b.frames == [frame(i, src=1) for i in range(n)]
        assert a.frames == [frame(i, src=2, size=1514) for i in range(m)]
        for nc in (a, b):
            info = hub.registry.info(hub.hub.port(port_of(hub, nc.name).local.name))
            assert info.counters.dropped_total == 0
            assert nc.dropped_total == 0 and isinstance(nc.peer, LinkPeer)
            assert nc.peer.dropped_total == 0 and nc.peer.protocol_errors == 0
    finally:
        await registry.close()


@pytest.mark.parametrize("side", ["dialler", "acceptor"])
async def test_a_killed_socket_is_link_down_on_both_sides_and_the_dialler_redials_on_it(
        hub: HubServer, side: str) -> None:
    port = hub.add_port("p0")
    a, b = Sink("a"), Sink("b")
    dialer = LinkDialer(a, parse_peer(f"{hub.address}/p0"), min_backoff=0.5, max_backoff=0.5)
    dialer.start()
    others = [await plug(hub.address, b)]
    try:
        await asyncio.wait_for(dialer.connected.wait(), 10)
        await ready(a, b)
        old = stream_of(a.peer if side == "dialler" else port.peer)
        assert old.transport is not None
        old.transport.abort()
        await until(lambda: a.link_down and port.link_down, what="link_down on both sides")
        assert old.ended.done()
        await until(lambda: isinstance(a.peer, LinkPeer) and a.peer.session is not None
                    and not port.link_down, what="redialled")
        assert isinstance(a.peer, LinkPeer) and a.peer.transport == "unix"
        assert stream_of(a.peer) is not old and stream_of(port.peer) is not old
        await ready(a)
        a.send_packet(frame(1))
        b.send_packet(frame(2))
        await b.wait_for(1)
        await a.wait_for(1)
        assert (a.frames, b.frames) == ([frame(2)], [frame(1)])
        listener = hub.registry.acceptor.listener
        assert listener is not None and listener.accepted == 3
    finally:
        await dialer.stop()
        for d in others:
            await d.stop()


async def unix_hello(hub: HubServer, channel: grpc.aio.Channel, netclient: str,
                     credits: int = 64) -> tuple[Call, fastpath.UnixLinkStream, int]:
    """A dialler done by hand: hello, welcome, the socket and its token, the
    result; returns the call, the stream (pull mode) and the credits granted."""
    call: Call = link_pb2_grpc.LinkServiceStub(channel).Connect()
    hello = link_pb2.LinkHello(netclient=netclient, peer="evil", credits=credits,
                               can_receive=True)
    hello.fast_path.boot_id = server_link.boot_id()
    await call.write(link_pb2.ConnectRequest(hello=hello))
    first = await asyncio.wait_for(call.read(), 10)
    assert isinstance(first, link_pb2.ConnectResponse)
    assert first.welcome.HasField("fast_path")
    stream = await fastpath.dial(first.welcome.fast_path.socket, first.welcome.fast_path.token)
    await call.write(link_pb2.ConnectRequest(
        fast_path_result=link_pb2.LinkFastPathResult(connected=True)))
    return call, stream, first.welcome.credits


Abuse = Callable[[Call, fastpath.UnixLinkStream, int], Any]


async def _beyond_credits(_call: Call, stream: fastpath.UnixLinkStream, granted: int) -> None:
    await stream.write_batch(Batch(frames=[frame(i) for i in range(granted + 1)]))


async def _bad_record(_call: Call, stream: fastpath.UnixLinkStream, _granted: int) -> None:
    assert stream.transport is not None
    stream.transport.write(raw(n=1, n_req=1, body=lengths(1) + struct.pack("<IQ", 3, 1) + b"x"))


async def _talks_on_the_stream(call: Call, _stream: fastpath.UnixLinkStream,
                               _granted: int) -> None:
    await call.write(link_pb2.ConnectRequest(batch=link_pb2.LinkBatch(credits=1)))


ABUSES: dict[str, tuple[Abuse, str]] = {
    "frames beyond its credits": (_beyond_credits, "credits"),
    "a malformed record": (_bad_record, "completion request"),
    "a batch on the Connect stream": (_talks_on_the_stream, "Connect stream"),
}


@pytest.mark.parametrize(("abuse", "words"), ABUSES.values(), ids=ABUSES.keys())
async def test_a_hostile_peer_on_the_socket_ends_its_link_counted(
        hub: HubServer, abuse: Abuse, words: str) -> None:
    window = 8
    hub.registry.acceptor.window = window
    port = hub.add_port("victim")
    async with grpc.aio.insecure_channel(hub.address) as channel:
        call, stream, granted = await unix_hello(hub, channel, "victim")
        assert granted == window
        await until(lambda: isinstance(port.peer, LinkPeer) and port.peer.session is not None,
                    what="victim linked")
        assert stream_of(port.peer) is not None
        first = await asyncio.wait_for(stream.read_batch(), 5)   # the acceptor's first batch
        assert first is not None and first.ready is not None
        await abuse(call, stream, granted)
        err = await refused(call)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
        assert words in (err.details() or "") and len(err.details() or "") < 400
        await asyncio.wait_for(stream.wait_closed(), 5)
        assert port.link_down
        info = hub.registry.info(port)
        assert info.counters.link_protocol_errors == 1
        assert hub.registry.server_counters().link_protocol_errors == 1
        assert info.counters.rx_frames == 0
        stream.close()


@pytest.mark.parametrize("how", ["cancel", "done_writing"])
async def test_ending_the_connect_stream_ends_a_link_on_the_socket(
        hub: HubServer, how: str) -> None:
    port = hub.add_port("p0")
    b = Sink("b")
    others = [await plug(hub.address, b)]
    async with grpc.aio.insecure_channel(hub.address) as channel:
        call, stream, _ = await unix_hello(hub, channel, "p0")
        await until(lambda: not port.link_down, what="p0 up")
        # The link works on the socket: a frame from b arrives there.
        assert await asyncio.wait_for(stream.read_batch(), 5) is not None
        await until(lambda: isinstance(b.peer, LinkPeer) and b.peer.remote_ready,
                    what="b ready")
        b.send_packet(frame(5))
        got: list[bytes] = []
        while not got:
            batch = await asyncio.wait_for(stream.read_batch(), 5)
            assert batch is not None
            got.extend(batch.frames)
        assert got == [frame(5)]
        if how == "cancel":
            call.cancel()
        else:
            await call.done_writing()
        await until(lambda: port.link_down, what="link down")
        assert await asyncio.wait_for(stream.read_batch(), 5) is None or stream.ended.done()
        await asyncio.wait_for(asyncio.shield(stream.ended), 5)
        stream.close()
    for d in others:
        await d.stop()


async def test_capped_offers_fall_back_to_the_connect_stream(
        hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastpath, "MAX_PENDING_OFFERS", 0)
    a, b = Sink("a"), Sink("b")
    dialers = [await plug(hub.address, a), await plug(hub.address, b)]
    await ready(a, b)
    listener = hub.registry.acceptor.listener
    assert listener is not None and listener.offers_refused == 2 and listener.accepted == 0
    for nc in (a, b):
        assert isinstance(nc.peer, LinkPeer) and nc.peer.transport == "grpc"
        assert port_of(hub, nc.name).transport == "grpc"
    a.send_packet(frame(1))
    await b.wait_for(1)
    for d in dialers:
        await d.stop()


# -- credits come back when a frame leaves the receiver's queue ------------------------------
async def test_a_credit_returns_when_the_frame_leaves_the_queue_not_when_it_enters() -> None:
    window = 16
    a, pa, b, pb = linked(1024, window)
    b.ready = False   # b's NetClient cannot receive; its LinkPeer does not know yet
    n = 100
    for i in range(n):
        a.send_packet(frame(i))
    batch = carry(pa, pb)
    assert batch is not None and len(batch.frames) == window
    # In b's queue, not delivered: no credit goes back.
    assert len(b.incoming_queue) == window and pb.out_credits == 0
    back = carry(pb, pa)
    assert back is not None and back.credits == 0 and back.ready is False
    assert pa.credits == 0 and pa.take_batch() is None
    assert len(pa.incoming_queue) == n - window and b.incoming_queue.dropped == 0
    b.set_ready(True)   # the frames leave b's queue: now the credits go back
    assert len(b.frames) == window and pb.out_credits == window
    rounds = 0
    while len(b.frames) < n:
        rounds += 1
        assert rounds < 4 * n, "the link stopped moving"
        carry(pb, pa)
        carry(pa, pb)
        assert pa.on_wire + len(pa.out_frames) + pa.credits <= window
    assert b.frames == [frame(i) for i in range(n)]
    assert pa.incoming_queue.dropped == b.incoming_queue.dropped == 0


async def test_lazy_credits_go_back_an_eighth_of_the_window_at_a_time() -> None:
    window = 64
    a, pa, _b, pb = linked(window, window)
    assert pa.credit_batch == pb.credit_batch == window // 8
    carry(pa, pb)
    carry(pb, pa)   # the first batches (readiness) out of the way
    for i in range(window // 8 - 1):
        a.send_packet(frame(i))
        carry(pa, pb)
        assert pb.take_batch() is None, "a credit went back alone"
    a.send_packet(frame(99))
    carry(pa, pb)
    back = pb.take_batch()
    assert back is not None and back.credits == window // 8 and not back.frames


@pytest.mark.parametrize("transport", ["auto", "grpc"])
@pytest.mark.parametrize("path", ["direct", "through the hub"])
async def test_a_stalled_receiver_paces_the_sender_to_the_window_without_loss(
        hub: HubServer, transport: str, path: str) -> None:
    """b stops receiving: a's paused sender has at most the window in flight,
    nothing is dropped anywhere (not in the far hub port's queue either), and
    every frame arrives, in order, once b receives again."""
    window = 64
    hub.registry.acceptor.window = window
    hub.registry.set_link_transport(transport)
    a, b = Sink("a"), Sink("b")
    if path == "direct":
        hub.registry.add(b)
        dialers = [await plug(hub.address, a, port="b", window=window)]
    else:
        dialers = [await plug(hub.address, x, window=window) for x in (a, b)]
    await ready(a)
    b.set_ready(False)
    n = 5000
    sender = asyncio.create_task(pump(a, [frame(i) for i in range(n)]))
    pa = a.peer
    assert isinstance(pa, LinkPeer)
    await asyncio.sleep(0.5)
    assert not sender.done(), "the sender was never paused"
    assert pa.on_wire + len(pa.out_frames) + pa.credits <= window
    # What left a sits in b's queue (at most its window) or, through the hub,
    # in the port's queue in front of b's link (at most a's link's window).
    held = len(b.incoming_queue) + sum(len(p.incoming_queue) for p in hub.hub.ports)
    assert len(b.incoming_queue) <= window
    assert held + len(pa.incoming_queue) + len(pa.out_frames) + pa.on_wire <= 4 * window
    b.set_ready(True)
    await asyncio.wait_for(sender, 30)
    await b.wait_for(n, timeout=30)
    assert b.frames == [frame(i) for i in range(n)]
    assert a.dropped_total == b.dropped_total == pa.dropped_total == 0
    for port in hub.hub.ports:
        assert hub.registry.info(port).counters.dropped_total == 0
    for d in dialers:
        await d.stop()


# -- a batch has the outcome of its frames one by one -------------------------------------------
class Gate(NetClient):
    """Takes ``allow`` frames (None: any number), then its receive returns 0;
    the calls numbered in ``refuse`` return -1. ``ring`` makes it an e1000
    with that many free buffers: can_receive turns false once they are used,
    and a frame delivered anyway is dropped (-1)."""

    def __init__(self, name: str, allow: int | None = None, refuse: tuple[int, ...] = (),
                 ring: bool = False) -> None:
        super().__init__(name)
        self.allow = allow
        self.refuse = refuse
        self.ring = ring
        self.calls = 0
        self.frames: list[bytes] = []

    def receive(self, data: bytes) -> int:
        self.calls += 1
        if self.calls - 1 in self.refuse:
            return -1
        if self.allow is not None:
            if self.allow <= 0:
                return -1 if self.ring else 0
            self.allow -= 1
        self.frames.append(data)
        return len(data)

    def can_receive(self) -> bool:
        return not (self.ring and self.allow is not None and self.allow <= 0)

    def release(self) -> None:
        self.allow = None
        self.flush_queued_packets()


class Setup:
    """One sender, the NetClient it sends to (``target``) and what is behind it."""

    def __init__(self, kind: str, mod: str) -> None:
        self.log: list[tuple[str, str, bytes]] = []
        self.cb_calls: list[tuple[str, int]] = []
        allow = {"refuses part-way": 3, "refuses at once": 0, "full queue": 1,
                 "can_receive turns false part-way": 3}.get(mod)
        self.gate = Gate("gate", allow=allow, refuse=(1, 4) if mod == "refuses some" else (),
                         ring=mod == "can_receive turns false part-way")
        self.sender = NetClient("tx")
        self.link: LinkPeer | None = None
        self.watched: list[NetClient] = [self.sender, self.gate]
        if kind == "netclient":
            self.target: NetClient = self.gate
            self.sender.peer, self.gate.peer = self.gate, self.sender
        elif kind == "hub port":
            hub = Hub(0)
            p2, p1 = hub.add_port(), hub.add_port()
            self.sender.peer, p1.peer = p1, self.sender
            self.gate.peer, p2.peer = p2, self.gate
            self.target = p1
            self.watched += [p1, p2]
        else:
            self.link = LinkPeer(self.sender, "far", window=64)
            self.link.attach(object(), credits=64 if allow is None else allow,
                             remote_ready=True)
            self.target = self.link
            self.watched.append(self.link)
        if mod == "full queue":
            self.gate.incoming_queue.nq_maxlen = 2
            self.target.incoming_queue.nq_maxlen = 2
        if mod == "link-down receiver":
            self.target.set_carrier(False)
        if mod == "link-down sender":
            self.sender.set_carrier(False)
        if mod == "capture":
            for nc in self.watched:
                nc.capture_hooks.append(self._hook(nc.name))

    def _hook(self, name: str) -> Callable[[str, bytes], None]:
        def hook(direction: str, data: bytes) -> None:
            self.log.append((name, direction, data))

        return hook

    def sent_cb(self, sender: NetClient, ret: int) -> None:
        self.cb_calls.append((sender.name, ret))

    def release(self) -> None:
        if self.link is not None:
            self.link.on_batch(Batch(credits=64))
        self.gate.release()

    def outcome(self) -> dict[str, Any]:
        seen: dict[str, Any] = {"cb": list(self.cb_calls), "gate": list(self.gate.frames)}
        for nc in self.watched:
            q = nc.incoming_queue
            seen[nc.name] = (asdict(nc.stats), q.dropped, q.purged, nc.can_receive_packet(),
                             [(p.sender.name, p.data, p.flags, p.sent_cb is not None)
                              for p in q.packets])
        if self.link is not None:
            seen["wire"] = (list(self.link.out_frames), list(self.link.out_requests),
                            self.link.credits)
        hooks: dict[tuple[str, str], list[bytes]] = {}
        for name, direction, data in self.log:
            hooks.setdefault((name, direction), []).append(data)
        seen["hooks"] = hooks
        return seen


MODS = ["takes all", "refuses part-way", "refuses at once", "refuses some", "full queue",
        "link-down receiver", "link-down sender", "a frame too long", "capture",
        "can_receive turns false part-way"]
CBS = {"no sent_cb": (False, False), "sent_cb": (True, False),
       "sent_cb and queue_rest": (True, True)}


def frames_for(mod: str) -> list[bytes]:
    frames = [frame(i, size=60 + i) for i in range(8)]
    if mod == "a frame too long":
        frames[2] = bytes(NET_BUFSIZE + 1)
    return frames


def one_by_one(setup: Setup, api: str, frames: list[bytes], with_cb: bool,
               queue_rest: bool) -> int:
    """The reference: each frame sent alone; a sender with a sent_cb stops at
    the first that was queued, unless ``queue_rest``."""
    cb = setup.sent_cb if with_cb else None
    taken = 0
    for data in frames:
        if api == "NetClient.send_packets":
            ret = setup.sender.send_packet_async(data, cb)
        else:
            ret = setup.target.incoming_queue.send(setup.sender, NET_PACKET_FLAG_NONE, data, cb)
        if ret != 0:
            taken += 1
        elif with_cb and not queue_rest:
            break
    return taken


def batched(setup: Setup, api: str, frames: list[bytes], with_cb: bool,
            queue_rest: bool) -> int:
    cb = setup.sent_cb if with_cb else None
    if api == "NetClient.send_packets":
        return setup.sender.send_packets(frames, cb, queue_rest=queue_rest)
    return setup.target.incoming_queue.send_batch(setup.sender, frames, cb,
                                                  queue_rest=queue_rest)


def _params() -> list[Any]:
    return [pytest.param(kind, mod, id=f"{kind}: {mod}")
            for kind in ("netclient", "hub port", "link") for mod in MODS]


@pytest.mark.parametrize("api", ["NetClient.send_packets", "NetQueue.send_batch"])
@pytest.mark.parametrize("cb", CBS.keys())
@pytest.mark.parametrize(("kind", "mod"), _params())
def test_a_batch_ends_as_its_frames_sent_one_by_one(api: str, cb: str, kind: str,
                                                    mod: str) -> None:
    with_cb, queue_rest = CBS[cb]
    frames = frames_for(mod)
    ref, got = Setup(kind, mod), Setup(kind, mod)
    taken_ref = one_by_one(ref, api, frames, with_cb, queue_rest)
    taken = batched(got, api, frames, with_cb, queue_rest)
    assert (taken, got.outcome()) == (taken_ref, ref.outcome())
    # And once the receiver takes everything: the same frames, in the same
    # order, and the same completions.
    ref.release()
    got.release()
    assert got.outcome() == ref.outcome()


def test_a_batch_into_an_e1000_with_few_rx_buffers_queues_the_rest_as_one_by_one() -> None:
    """Frames a link hands an e1000 in one batch: those beyond its free RX
    buffers must wait in its queue (can_receive is false), as when they come
    one by one, not be dropped as rx_no_buffers."""
    results = {}
    for how in ("one by one", "batch"):
        rig, _drv = brought_up(Rig(), n_rx=8)   # 7 free buffers
        frames = [eth_frame(fill=i) for i in range(20)]
        if how == "one by one":
            taken = sum(1 for f in frames if rig.peer.send_packet(f))
        else:
            taken = rig.peer.send_packets(frames)
        results[how] = (taken, len(rig.nic.incoming_queue), rig.nic.drops.rx_no_buffers)
    assert results["one by one"] == (7, 13, 0)
    assert results["batch"] == results["one by one"]


# -- the stream backend pauses part-way through a read ------------------------------------------
@pytest.fixture
def sockdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="vwf", dir="/tmp") as path:
        yield Path(path)


async def test_a_stream_backend_resumes_a_read_its_peer_queued_part_way(sockdir: Path) -> None:
    be = StreamBackend("s0", SockAddr(path=str(sockdir / "s.sock")), listen=True)
    gate = Gate("gate", allow=7)
    gate.peer, be.peer = be, gate
    try:
        _reader, writer = await asyncio.open_unix_connection(str(sockdir / "s.sock"))
        await asyncio.wait_for(be.wait_connected(), 5)
        n = 500
        frames = [frame(i, size=60 + i % 200) for i in range(n)]
        # One write: most of it arrives in one read, which the gate cuts short.
        writer.write(b"".join(len(f).to_bytes(4, "big") + f for f in frames))
        await writer.drain()
        pauses = 0
        while len(gate.frames) < n:
            await until(lambda: len(gate.frames) == n or (
                be.conn is not None and be.conn.waiting and len(gate.incoming_queue) == 1),
                what="reading paused")
            if len(gate.frames) == n:
                break
            pauses += 1
            assert pauses <= n, "no progress"
            # Paused at the frame the gate queued: it counts as sent, once.
            assert len(gate.incoming_queue) == 1
            assert be.stats.tx_frames == len(gate.frames) + 1
            gate.allow = 23
            gate.flush_queued_packets()
        assert pauses >= 2
        assert gate.frames == frames
        assert be.stats.tx_frames == n and be.dropped_total == 0
        assert gate.incoming_queue.dropped == 0 and len(gate.incoming_queue) == 0
        writer.close()
    finally:
        be.cleanup()
        await asyncio.sleep(0)


def test_a_stream_whose_write_fails_does_not_stop_the_others_of_a_dispatch() -> None:
    """Streams kicked in one read all get written; one that raises is closed."""
    calls: list[str] = []

    class Transport:
        aborted = False

        def abort(self) -> None:
            self.aborted = True

    class Kicked:
        def __init__(self, name: str, fail: bool) -> None:
            self.name, self.fail = name, fail
            self._pump_scheduled = True
            self.transport = Transport()

        def _pump(self) -> None:
            calls.append(self.name)
            if self.fail:
                raise RuntimeError("boom")
            self._pump_scheduled = False

    a, b, c = Kicked("a", False), Kicked("b", True), Kicked("c", False)
    fastpath._pump_all([a, b, c])  # type: ignore[list-item]
    assert calls == ["a", "b", "c"]
    assert b.transport.aborted and not b._pump_scheduled
    assert not a.transport.aborted and not c.transport.aborted
