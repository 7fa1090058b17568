"""Host-side backends (tap, stream, dgram) and the tap service, over real sockets.

Stream and dgram tests use 127.0.0.1 and temporary unix sockets only. TAP
tests (root, /dev/net/tun) move the device into a private network namespace
right after it is created and talk to it there with an AF_PACKET socket, so no
frame ever reaches the host's own stack or network.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from virtwire.address import SockAddr
from virtwire.errors import BackendError, ConfigError
from virtwire.link import LinkPeer
from virtwire.net.dgram import DgramBackend
from virtwire.net.eth import ETH_ZLEN, NET_BUFSIZE
from virtwire.net.net import NetClient
from virtwire.net.netdev import parse_backend_spec
from virtwire.net.queue import NQ_MAXLEN
from virtwire.net.stream import StreamBackend
from virtwire.net.tap import SCRIPT_OUTPUT_MAX, TapBackend, launch_script
from virtwire.rpc.netdev import netdev_to_proto
from virtwire.server.hub import HubServer
from virtwire.server.tap import TapServer
from virtwire.v1 import netclient_pb2, netclient_pb2_grpc, tap_pb2, tap_pb2_grpc

from support.doubles import Sink, frame, pump, until
from support.need import need
from support.netns import NetNs, netns, require_root, unique_name

ETH_P_ALL = 0x0003
ETH_P_EXPERIMENTAL = 0x88B5
PACKET_OUTGOING = 4
CLONE_NEWNET = 0x40000000


# -- helpers ------------------------------------------------------------------------
def qemu_frame(data: bytes) -> bytes:
    """QEMU's stream framing: 4-byte big-endian length, then the frame."""
    return len(data).to_bytes(4, "big") + data


async def read_qemu_frame(reader: asyncio.StreamReader, timeout: float = 10.0) -> bytes:
    header = await asyncio.wait_for(reader.readexactly(4), timeout)
    return await asyncio.wait_for(reader.readexactly(int.from_bytes(header, "big")), timeout)


def plug(backend: NetClient, name: str = "sink") -> Sink:
    """Peer ``backend`` with a local Sink, as QEMU peers a netdev with a NIC."""
    sink = Sink(name)
    sink.peer = backend
    backend.peer = sink
    return sink


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short directory for unix sockets (sun_path is only 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="vwb", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def backends() -> AsyncIterator[list[NetClient]]:
    """Backends appended here are cleaned up after the test."""
    created: list[NetClient] = []
    yield created
    for nc in created:
        nc.cleanup()
    await asyncio.sleep(0)


def stream_addr(transport: str, sockdir: Path, name: str = "s.sock") -> SockAddr:
    return SockAddr(path=str(sockdir / name)) if transport == "unix" else SockAddr("127.0.0.1", 0)


async def open_client(addr: SockAddr) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if addr.is_unix:
        return await asyncio.open_unix_connection(addr.path)
    return await asyncio.open_connection(addr.host, addr.port)


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- stream: listen (server=on) -------------------------------------------------------
@pytest.mark.parametrize("transport", ["tcp", "unix"])
async def test_stream_listen_frames_both_ways(transport: str, sockdir: Path,
                                              backends: list[NetClient]) -> None:
    be = StreamBackend("s0", stream_addr(transport, sockdir), listen=True)
    backends.append(be)
    sink = plug(be)
    assert be.link_down, "no connection yet: the carrier is down"
    reader, writer = await open_client(be.local_address)
    await asyncio.wait_for(be.wait_connected(), 5)
    assert not be.link_down
    # Frames of every size, in one write, arrive whole and unpadded.
    sizes = [1, 14, 59, 60, 1514, 9000, NET_BUFSIZE]
    writer.write(b"".join(qemu_frame(frame(i, size)[:size]) for i, size in enumerate(sizes)))
    await sink.wait_for(len(sizes))
    assert [len(f) for f in sink.frames] == sizes
    assert sink.frames[2] == frame(2, 59)[:59]
    # And the other way, framed.
    for i in range(3):
        sink.send_packet(frame(100 + i, 42)[:42])
    for i in range(3):
        assert await read_qemu_frame(reader) == frame(100 + i, 42)[:42]
    assert be.stats.tx_frames == len(sizes) and be.stats.rx_frames == 3
    writer.close()
    await until(lambda: be.link_down, what="carrier down after EOF")


async def test_stream_frames_split_across_reads(backends: list[NetClient]) -> None:
    be = StreamBackend("s0", SockAddr("127.0.0.1", 0), listen=True)
    backends.append(be)
    sink = plug(be)
    _reader, writer = await open_client(be.local_address)
    await asyncio.wait_for(be.wait_connected(), 5)
    data = b"".join(qemu_frame(frame(i, 100)) for i in range(50))
    for i in range(0, len(data), 7):  # byte-dribbled: headers split too
        writer.write(data[i:i + 7])
        await writer.drain()
        if i % 140 == 0:
            await asyncio.sleep(0.001)
    await sink.wait_for(50)
    assert sink.frames == [frame(i, 100) for i in range(50)]
    writer.close()


async def test_stream_listen_takes_one_client_at_a_time(backends: list[NetClient]) -> None:
    be = StreamBackend("s0", SockAddr("127.0.0.1", 0), listen=True)
    backends.append(be)
    sink = plug(be)
    _r1, w1 = await open_client(be.local_address)
    await asyncio.wait_for(be.wait_connected(), 5)
    r2, w2 = await open_client(be.local_address)  # waits in the backlog
    w2.write(qemu_frame(frame(2)))
    w1.write(qemu_frame(frame(1)))
    await sink.wait_for(1)
    await asyncio.sleep(0.2)
    assert sink.frames == [frame(1)], "the second client is not served while the first is"
    assert be.connects == 1
    w1.close()
    await sink.wait_for(2)
    assert sink.frames == [frame(1), frame(2)]
    assert be.connects == 2
    sink.send_packet(frame(3))
    assert await read_qemu_frame(r2) == frame(3)
    w2.close()


@pytest.mark.parametrize("length", [0, NET_BUFSIZE + 1, 0xFFFFFFFF])
async def test_stream_bad_length_closes_connection(length: int,
                                                   backends: list[NetClient]) -> None:
    be = StreamBackend("s0", SockAddr("127.0.0.1", 0), listen=True)
    backends.append(be)
    sink = plug(be)
    reader, writer = await open_client(be.local_address)
    await asyncio.wait_for(be.wait_connected(), 5)
    writer.write(qemu_frame(frame(1)) + length.to_bytes(4, "big") + bytes(64))
    assert await asyncio.wait_for(reader.read(), 5) == b"", "connection closed"
    assert sink.frames == [frame(1)]
    assert be.bad_lengths == 1 and be.stats.dropped_malformed == 1
    assert f"bad frame length {length}" in be.describe()
    await until(lambda: be.link_down, what="carrier down")
    # The listener takes the next client.
    _r, w = await open_client(be.local_address)
    w.write(qemu_frame(frame(2)))
    await sink.wait_for(2)
    w.close()


async def test_stream_frames_to_disconnected_backend_are_dropped_and_counted(
        backends: list[NetClient]) -> None:
    be = StreamBackend("s0", SockAddr("127.0.0.1", 0), listen=True)
    backends.append(be)
    sink = plug(be)
    for i in range(5):
        assert sink.send_packet(frame(i)) == len(frame(i))
    assert be.stats.dropped_link_down == 5
    assert be.stats.rx_frames == 0 and len(be.incoming_queue) == 0


async def test_stream_listen_on_live_unix_socket_is_refused(sockdir: Path,
                                                            backends: list[NetClient]) -> None:
    addr = SockAddr(path=str(sockdir / "x.sock"))
    backends.append(StreamBackend("s0", addr, listen=True))
    with pytest.raises(BackendError, match="another process"):
        StreamBackend("s1", addr, listen=True)
    (sockdir / "file").write_text("not a socket")
    with pytest.raises(BackendError, match="not a socket"):
        StreamBackend("s2", SockAddr(path=str(sockdir / "file")), listen=True)


async def test_stream_listen_on_taken_port_is_a_backend_error(
        backends: list[NetClient]) -> None:
    be = StreamBackend("s0", SockAddr("127.0.0.1", 0), listen=True)
    backends.append(be)
    with pytest.raises(BackendError, match=r"cannot listen on 127\.0\.0\.1"):
        StreamBackend("s1", be.local_address, listen=True)


async def test_stream_unix_socket_file_removed_at_cleanup(sockdir: Path) -> None:
    path = sockdir / "gone.sock"
    be = StreamBackend("s0", SockAddr(path=str(path)), listen=True)
    assert path.exists()
    be.cleanup()
    assert not path.exists()


# -- stream: connect (server=off) --------------------------------------------------------
class FakeQemu:
    """A `-netdev stream,server=on` end: accepts, records connections and frames."""

    def __init__(self) -> None:
        self.conns: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = \
            asyncio.Queue()
        self.server: asyncio.Server | None = None

    async def start(self, addr: SockAddr) -> SockAddr:
        async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await self.conns.put((r, w))

        if addr.is_unix:
            self.server = await asyncio.start_unix_server(on_conn, addr.path)
            return addr
        self.server = await asyncio.start_server(on_conn, addr.host, addr.port)
        port = self.server.sockets[0].getsockname()[1]
        return SockAddr(addr.host, port)

    async def accept(self, timeout: float = 10.0) -> tuple[asyncio.StreamReader,
                                                            asyncio.StreamWriter]:
        return await asyncio.wait_for(self.conns.get(), timeout)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.mark.parametrize("transport", ["tcp", "unix"])
async def test_stream_connect_frames_both_ways(transport: str, sockdir: Path,
                                               backends: list[NetClient]) -> None:
    qemu = FakeQemu()
    addr = await qemu.start(stream_addr(transport, sockdir, "qemu.sock"))
    be = StreamBackend("s0", addr, listen=False)
    backends.append(be)
    sink = plug(be)
    reader, writer = await qemu.accept()
    await asyncio.wait_for(be.wait_connected(), 5)
    writer.write(b"".join(qemu_frame(frame(i)) for i in range(10)))
    await sink.wait_for(10)
    assert sink.frames == [frame(i) for i in range(10)]
    sink.send_packet(frame(42, 1514))
    assert await read_qemu_frame(reader) == frame(42, 1514)
    assert f"connect={addr}" in be.describe()
    writer.close()
    qemu.close()


async def test_stream_connect_reconnects_after_peer_closes(backends: list[NetClient]) -> None:
    qemu = FakeQemu()
    addr = await qemu.start(SockAddr("127.0.0.1", 0))
    be = StreamBackend("s0", addr, listen=False, reconnect_seconds=0.1)
    backends.append(be)
    sink = plug(be)
    _r1, w1 = await qemu.accept()
    await asyncio.wait_for(be.wait_connected(), 5)
    w1.write(qemu_frame(frame(1)))
    await sink.wait_for(1)
    w1.close()
    await until(lambda: be.link_down, what="carrier down after the peer closed")
    sink.send_packet(frame(99))  # nobody to send it to: dropped and counted
    assert be.stats.dropped_link_down == 1
    r2, w2 = await qemu.accept()
    await until(lambda: not be.link_down, what="reconnected")
    assert be.connects == 2 and be.disconnects == 1
    w2.write(qemu_frame(frame(2)))
    await sink.wait_for(2)
    sink.send_packet(frame(3))
    assert await read_qemu_frame(r2) == frame(3)
    w2.close()
    qemu.close()


async def test_stream_connect_retries_until_the_server_appears(
        sockdir: Path, backends: list[NetClient]) -> None:
    addr = SockAddr(path=str(sockdir / "late.sock"))
    be = StreamBackend("s0", addr, listen=False, reconnect_seconds=0.05)
    backends.append(be)
    plug(be)
    await until(lambda: be.connect_errors >= 2, what="failed connects")
    assert be.link_down and "last_error" in be.describe()
    qemu = FakeQemu()
    await qemu.start(addr)
    _r, w = await qemu.accept()
    await asyncio.wait_for(be.wait_connected(), 5)
    assert not be.link_down
    w.close()
    qemu.close()


# -- stream: backpressure ------------------------------------------------------------------
async def test_stream_slow_peer_pauses_reading_and_loses_nothing(
        backends: list[NetClient]) -> None:
    be = StreamBackend("s0", SockAddr("127.0.0.1", 0), listen=True)
    backends.append(be)
    sink = plug(be)
    sink.ready = False
    _reader, writer = await open_client(be.local_address)
    await asyncio.wait_for(be.wait_connected(), 5)
    n = 3 * NQ_MAXLEN  # more than a queue without sent_cb would keep
    data = b"".join(qemu_frame(frame(i, 200)) for i in range(n))

    async def feed() -> None:
        writer.write(data)
        await writer.drain()

    feeder = asyncio.create_task(feed())
    await until(lambda: be.conn is not None and be.conn.waiting, what="reading paused")
    await asyncio.sleep(0.2)
    # Reading stopped at the first queued frame: the rest waits in the socket.
    assert len(sink.incoming_queue) == 1
    assert not feeder.done(), "the writer is blocked by TCP flow control"
    sink.set_ready(True)
    await sink.wait_for(n, timeout=30)
    await asyncio.wait_for(feeder, 10)
    assert sink.frames == [frame(i, 200) for i in range(n)]
    assert sink.incoming_queue.dropped == 0 and be.dropped_total == 0
    writer.close()


async def test_stream_slow_socket_reader_queues_frames_without_loss(
        backends: list[NetClient]) -> None:
    be = StreamBackend("s0", SockAddr("127.0.0.1", 0), listen=True)
    backends.append(be)
    sink = plug(be)
    reader, writer = await open_client(be.local_address)
    await asyncio.wait_for(be.wait_connected(), 5)
    n = 20000
    frames = [frame(i, 1000) for i in range(n)]
    paused = False

    def watch() -> None:
        nonlocal paused
        if be.receive_disabled or (be.conn is not None and be.conn.write_paused):
            paused = True

    sender = asyncio.create_task(pump(sink, frames))
    # The client reads nothing for a while: the backend must push back.
    for _ in range(50):
        watch()
        await asyncio.sleep(0.01)
    assert paused, "receive returned 0 once the transport buffer passed its high-water mark"
    assert not sender.done()
    got = [await read_qemu_frame(reader) for _ in range(n)]
    await asyncio.wait_for(sender, 10)
    assert got == frames
    assert be.dropped_total == 0 and be.incoming_queue.dropped == 0
    writer.close()


# -- dgram ---------------------------------------------------------------------------------
async def test_dgram_unicast_both_ways(backends: list[NetClient]) -> None:
    far = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    far.bind(("127.0.0.1", 0))
    far.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        remote = SockAddr("127.0.0.1", far.getsockname()[1])
        be = DgramBackend("d0", SockAddr("127.0.0.1", 0), remote)
        backends.append(be)
        sink = plug(be)
        local = ("127.0.0.1", be.local_address.port)
        for i in range(5):
            far.sendto(frame(i, 42)[:42], local)
        far.sendto(b"", local)  # ignored, counted
        far.sendto(frame(9, 1514), local)
        await sink.wait_for(6)
        assert sink.frames == [frame(i, 42)[:42] for i in range(5)] + [frame(9, 1514)]
        await until(lambda: be.empty_datagrams == 1, what="empty datagram counted")
        assert be.stats.dropped_malformed == 1
        for i in range(3):
            sink.send_packet(frame(20 + i))
        for i in range(3):
            data, src = await asyncio.wait_for(loop.sock_recvfrom(far, 70000), 5)
            assert data == frame(20 + i) and src == local
    finally:
        far.close()


async def test_dgram_unix_both_ways(sockdir: Path, backends: list[NetClient]) -> None:
    far_path = str(sockdir / "far.sock")
    far = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    far.bind(far_path)
    far.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        be = DgramBackend("d0", SockAddr(path=str(sockdir / "be.sock")),
                          SockAddr(path=far_path))
        backends.append(be)
        sink = plug(be)
        far.sendto(frame(1), str(sockdir / "be.sock"))
        await sink.wait_for(1)
        sink.send_packet(frame(2))
        assert await asyncio.wait_for(loop.sock_recv(far, 70000), 5) == frame(2)
    finally:
        far.close()


async def test_dgram_multicast_loopback(backends: list[NetClient]) -> None:
    group = SockAddr("239.255.86.87", free_udp_port())
    a = DgramBackend("a", group, multicast=True, multicast_interface="127.0.0.1")
    b = DgramBackend("b", group, multicast=True, multicast_interface="127.0.0.1")
    backends.extend([a, b])
    sink_a, sink_b = plug(a, "sink_a"), plug(b, "sink_b")
    for i in range(10):
        sink_a.send_packet(frame(i, src=1))
    sink_b.send_packet(frame(100, src=2))
    await sink_b.wait_for(10)
    await sink_a.wait_for(1)
    await asyncio.sleep(0.1)
    assert sink_b.frames == [frame(i, src=1) for i in range(10)]
    # A member hears the others but not the loopback copies of its own frames.
    assert sink_a.frames == [frame(100, src=2)]
    assert a.echo_dropped == 10 and b.echo_dropped == 1
    assert "mcast=239.255.86.87" in a.describe()


async def test_dgram_rejects_bad_configs() -> None:
    with pytest.raises(ConfigError, match="not an IPv4 multicast"):
        DgramBackend("d", SockAddr("127.0.0.1", 5000), multicast=True)
    with pytest.raises(ConfigError, match="needs a remote"):
        DgramBackend("d", SockAddr("127.0.0.1", 0))
    with pytest.raises(ConfigError, match="both be unix"):
        DgramBackend("d", SockAddr("127.0.0.1", 0), SockAddr(path="/tmp/x"))


# -- tap ---------------------------------------------------------------------------------
def _setns_thread(ns: NetNs, fn: object) -> object:
    """Run ``fn()`` in a thread that joined ``ns``; sockets it opens stay in ``ns``."""
    assert callable(fn)
    result: list[object] = []

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{ns.name}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns failed")
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


class Wire:
    """An AF_PACKET socket on the TAP inside the test's namespace."""

    def __init__(self, ns: NetNs, ifname: str) -> None:
        def open_socket() -> socket.socket:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            s.bind((ifname, 0))
            s.setblocking(False)
            return s

        sock = _setns_thread(ns, open_socket)
        assert isinstance(sock, socket.socket)
        self.sock = sock

    def send(self, data: bytes) -> None:
        self.sock.send(data)

    async def recv(self, timeout: float = 5.0) -> bytes:
        """The next frame of ours (EtherType 0x88B5) that came in from the TAP fd."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no frame on the TAP")
            data, addr = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 70000), left)
            if addr[2] != PACKET_OUTGOING and data[12:14] == b"\x88\xb5":
                return data

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def tapns() -> Iterator[NetNs]:
    require_root()
    with netns("vwb") as ns:
        ns.exec("sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
        ns.exec("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        yield ns


def move_into(ns: NetNs, ifname: str) -> None:
    subprocess.run(["ip", "link", "set", ifname, "netns", ns.name], check=True)
    ns.ip("link", "set", ifname, "up")


@contextlib.asynccontextmanager
async def tap_in(ns: NetNs, *, vnet_hdr: bool = False, no_padding: bool = False,
                 script: str = "", downscript: str = ""
                 ) -> AsyncIterator[tuple[TapBackend, Sink, Wire]]:
    """A TapBackend whose device was moved into ``ns``, its Sink, and a Wire on it."""
    be = await TapBackend.create("t0", unique_name("vwt"), vnet_hdr=vnet_hdr,
                                 no_padding=no_padding, script=script, downscript=downscript)
    wire = None
    try:
        move_into(ns, be.ifname)
        wire = Wire(ns, be.ifname)
        yield be, plug(be), wire
    finally:
        if wire is not None:
            wire.close()
        await be.close()


def exp_frame(n: int, size: int) -> bytes:
    """A frame to a locally administered unicast MAC nobody has."""
    body = bytes.fromhex("020000000099" "020000000001") + b"\x88\xb5" + n.to_bytes(4, "big")
    return (body + bytes(size))[:size]


@pytest.mark.root
async def test_tap_frames_both_ways_with_padding(tapns: NetNs) -> None:
    async with tap_in(tapns) as (be, sink, wire):
        assert be.describe().startswith(f"ifname={be.ifname}")
        sink.send_packet(exp_frame(1, 1514))
        sink.send_packet(exp_frame(2, 60))
        assert await wire.recv() == exp_frame(1, 1514)
        assert await wire.recv() == exp_frame(2, 60)
        wire.send(exp_frame(3, 42))  # short: padded to ETH_ZLEN on the way in
        wire.send(exp_frame(4, 1000))
        await until(lambda: len([f for f in sink.frames if f[12:14] == b"\x88\xb5"]) == 2,
                    what="frames from the TAP")
        ours = [f for f in sink.frames if f[12:14] == b"\x88\xb5"]
        assert ours[0] == exp_frame(3, 42) + bytes(ETH_ZLEN - 42)
        assert ours[1] == exp_frame(4, 1000)


@pytest.mark.root
async def test_tap_no_padding(tapns: NetNs) -> None:
    async with tap_in(tapns, no_padding=True) as (_be, sink, wire):
        wire.send(exp_frame(3, 42))
        await until(lambda: any(f[12:14] == b"\x88\xb5" for f in sink.frames), what="frame")
        assert [f for f in sink.frames if f[12:14] == b"\x88\xb5"] == [exp_frame(3, 42)]


@pytest.mark.root
async def test_tap_vnet_hdr_stripped_and_prepended(tapns: NetNs) -> None:
    async with tap_in(tapns, vnet_hdr=True) as (be, sink, wire):
        assert "vnet_hdr=on" in be.describe()
        sink.send_packet(exp_frame(1, 100))
        assert await wire.recv() == exp_frame(1, 100)
        wire.send(exp_frame(2, 100))
        wire.send(exp_frame(3, 50))
        await until(lambda: len([f for f in sink.frames if f[12:14] == b"\x88\xb5"]) == 2,
                    what="frames from the TAP")
        ours = [f for f in sink.frames if f[12:14] == b"\x88\xb5"]
        assert ours == [exp_frame(2, 100), exp_frame(3, 50) + bytes(10)]


@pytest.mark.root
async def test_tap_slow_peer_pauses_reading(tapns: NetNs) -> None:
    async with tap_in(tapns) as (be, sink, wire):
        sink.ready = False
        for i in range(200):
            wire.send(exp_frame(i, 100))
        await until(lambda: not be.poll.read_poll, what="tap_read_poll(false)")
        assert len(sink.incoming_queue) == 1
        assert "paused" in be.describe()
        sink.set_ready(True)
        await until(lambda: len([f for f in sink.frames if f[12:14] == b"\x88\xb5"]) == 200,
                    what="all frames")
        ours = [f for f in sink.frames if f[12:14] == b"\x88\xb5"]
        assert ours == [exp_frame(i, 100) for i in range(200)]
        assert be.poll.read_poll


@pytest.mark.root
async def test_tap_write_eagain_keeps_frame_queued(tapns: NetNs,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    async with tap_in(tapns) as (be, sink, wire):
        real_write = os.write
        calls = 0

        def flaky_write(fd: int, data: bytes) -> int:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise BlockingIOError(11, "Resource temporarily unavailable")
            return real_write(fd, data)

        monkeypatch.setattr("virtwire.net.tap.os.write", flaky_write)
        assert sink.send_packet(exp_frame(1, 80)) == 0  # queued, not lost
        assert be.write_eagain == 1
        assert await wire.recv() == exp_frame(1, 80)  # flushed once writable
        assert len(be.incoming_queue) == 0 and not be.poll.write_poll


@pytest.mark.root
async def test_tap_write_to_down_interface_is_counted(tapns: NetNs) -> None:
    async with tap_in(tapns) as (be, sink, _wire):
        tapns.ip("link", "set", be.ifname, "down")
        sink.send_packet(exp_frame(1, 60))
        assert be.write_errors == 1 and be.stats.dropped_refused == 1


@pytest.mark.root
async def test_tap_script_and_downscript(tapns: NetNs, tmp_path: Path) -> None:
    log = tmp_path / "log"
    script = tmp_path / "ifup"
    script.write_text(f"#!/bin/sh\necho \"up $1\" >> {log}\n")
    down = tmp_path / "ifdown"
    down.write_text(f"#!/bin/sh\necho \"down $1\" >> {log}\n")
    script.chmod(0o755)
    down.chmod(0o755)
    async with tap_in(tapns, script=str(script), downscript=str(down)) as (be, _sink, _wire):
        ifname = be.ifname
        assert log.read_text() == f"up {ifname}\n"
    assert log.read_text() == f"up {ifname}\ndown {ifname}\n"


@pytest.mark.root
async def test_tap_failing_script_closes_the_device(tmp_path: Path) -> None:
    require_root()
    script = tmp_path / "ifup"
    script.write_text("#!/bin/sh\necho 'no bridge here' >&2\nexit 3\n")
    script.chmod(0o755)
    ifname = unique_name("vwt")
    with pytest.raises(BackendError, match=r"failed with status 3: no bridge here"):
        await TapBackend.create("t0", ifname, script=str(script))
    assert not Path(f"/sys/class/net/{ifname}").exists()


@pytest.mark.root
async def test_tap_errors() -> None:
    require_root()
    ifname = unique_name("vwt")
    be = TapBackend("t0", ifname)
    try:
        with pytest.raises(BackendError, match="busy"):
            TapBackend("t1", ifname)
    finally:
        be.cleanup()
    with pytest.raises(BackendError, match="not a TAP"):
        TapBackend("t2", "lo")
    with pytest.raises(ConfigError, match="longer than 15"):
        TapBackend("t3", "x" * 16)
    with pytest.raises(ConfigError, match="not allowed"):
        TapBackend("t4", "a/b")


@pytest.mark.root
async def test_tap_kernel_picks_a_name() -> None:
    require_root()
    be = TapBackend("t0")
    try:
        assert be.ifname.startswith("tap")
        assert Path(f"/sys/class/net/{be.ifname}").exists()
    finally:
        be.cleanup()


# -- scripts: asyncio subprocesses with a timeout ------------------------------------------
def write_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


#: Touches $0.started, then waits (at most 20 s) for $0.go to appear.
WAIT_FOR_GO = ('touch "$0.started"\ni=0\nwhile [ ! -e "$0.go" ] && [ $i -lt 400 ]; do\n'
               '  sleep 0.05; i=$((i+1))\ndone\necho "up $1" >> "$0.log"\n')


def pid_gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] in "ZX"
    except FileNotFoundError:
        return True


async def test_a_script_runs_while_the_loop_goes_on(tmp_path: Path) -> None:
    script = write_script(tmp_path / "ifup", WAIT_FOR_GO)
    run = asyncio.create_task(launch_script("script", str(script), "vw0"))
    # `until` polls from the loop: with a blocking script it could not run.
    await until(lambda: Path(f"{script}.started").exists(), what="the script to start")
    ticks = 0
    for _ in range(5):
        await asyncio.sleep(0.01)
        ticks += 1
    assert ticks == 5 and not run.done()
    Path(f"{script}.go").touch()
    await asyncio.wait_for(run, 30)
    assert Path(f"{script}.log").read_text() == "up vw0\n"


async def test_a_script_past_its_timeout_is_killed_with_its_group(tmp_path: Path) -> None:
    script = write_script(tmp_path / "ifup", 'sleep 60 &\necho $! > "$0.pid"\nwait\n')
    with pytest.raises(BackendError, match=r"script .*ifup vw0: still running after 0\.5s, killed"):
        await launch_script("script", str(script), "vw0", timeout=0.5)
    child = int(Path(f"{script}.pid").read_text())
    await until(lambda: pid_gone(child), what="the script's child to be killed")


async def test_a_cancelled_script_is_killed(tmp_path: Path) -> None:
    script = write_script(tmp_path / "ifup", 'echo $$ > "$0.pid"\nsleep 60\n')
    run = asyncio.create_task(launch_script("script", str(script), "vw0"))
    await until(lambda: Path(f"{script}.pid").exists() and Path(f"{script}.pid").read_text(),
                what="the script to start")
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    pid = int(Path(f"{script}.pid").read_text())
    await until(lambda: pid_gone(pid), what="the cancelled script to be killed")


async def test_a_script_leaving_a_child_on_its_output_does_not_hang(tmp_path: Path) -> None:
    script = write_script(tmp_path / "ifup", 'sleep 60 &\necho $! > "$0.pid"\necho started\n')
    try:
        await asyncio.wait_for(launch_script("script", str(script), "vw0"), 30)
    finally:
        os.kill(int(Path(f"{script}.pid").read_text()), 9)


async def test_script_failure_reports_the_end_of_its_output(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture
                                                             ) -> None:
    script = write_script(tmp_path / "ifup", "head -c 2000000 /dev/zero | tr '\\0' x\necho\n"
                                             "echo 'no bridge here' >&2\nexit 4\n")
    with caplog.at_level("INFO", logger="virtwire.net.tap"), \
            pytest.raises(BackendError, match=r"failed with status 4: no bridge here$"):
        await launch_script("script", str(script), "vw0")
    logged = [r.getMessage() for r in caplog.records if "ifup vw0:" in r.getMessage()]
    assert logged and len(logged[0]) < SCRIPT_OUTPUT_MAX + 200  # the tail, not 2 MB


@pytest.mark.root
async def test_tap_script_timeout_closes_the_device(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    require_root()
    monkeypatch.setattr("virtwire.net.tap.SCRIPT_TIMEOUT_S", 0.5)
    script = write_script(tmp_path / "ifup", "sleep 60\n")
    ifname = unique_name("vwt")
    with pytest.raises(BackendError, match=r"still running after 0\.5s, killed"):
        await TapBackend.create("t0", ifname, script=str(script))
    assert not Path(f"/sys/class/net/{ifname}").exists()


@pytest.mark.root
async def test_tap_service_answers_while_a_script_runs(tapsrv: TapServer,
                                                       tmp_path: Path) -> None:
    """A TAP's script= that takes its time does not block the service's RPCs."""
    require_root()
    script = write_script(tmp_path / "ifup", WAIT_FOR_GO)
    ifname = unique_name("vwt")
    add = asyncio.create_task(tapsrv.add_backend(parse_backend_spec(
        f"tap,ifname={ifname},script={script},id=slow")))
    await until(lambda: Path(f"{script}.started").exists(), what="the script to start")
    async with grpc.aio.insecure_channel(tapsrv.address) as channel:
        listed = await netclient_pb2_grpc.NetClientServiceStub(channel).ListNetClients(
            netclient_pb2.ListNetClientsRequest(), timeout=10)
        assert "slow" in [nc.name for nc in listed.netclients]
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert not add.done()
    Path(f"{script}.go").touch()
    backend = await asyncio.wait_for(add, 30)
    assert isinstance(backend, TapBackend) and backend.poll.read_poll
    assert Path(f"{script}.log").read_text() == f"up {ifname}\n"


@pytest.mark.root
async def test_tap_server_stop_runs_the_downscripts(tmp_path: Path) -> None:
    require_root()
    log = tmp_path / "log"
    up = write_script(tmp_path / "ifup", f'echo "up $1" >> {log}\n')
    down = write_script(tmp_path / "ifdown", f'echo "down $1" >> {log}\n')
    ifname = unique_name("vwt")
    host = TapServer("127.0.0.1:0")
    host.pending_configs.append(parse_backend_spec(
        f"tap,ifname={ifname},script={up},downscript={down}"))
    await host.start()
    try:
        assert log.read_text() == f"up {ifname}\n"
    finally:
        await host.stop(grace=0.1)
    assert log.read_text() == f"up {ifname}\ndown {ifname}\n"
    assert not Path(f"/sys/class/net/{ifname}").exists()


# -- the tap service -------------------------------------------------------------------------
@pytest.fixture
async def tapsrv() -> AsyncIterator[TapServer]:
    host = TapServer("127.0.0.1:0")
    await host.start()
    yield host
    await host.stop(grace=0.2)


async def test_stream_hub_stream_path_keeps_qemu_framing(hub: HubServer, tapsrv: TapServer,
                                                         sockdir: Path) -> None:
    a = await tapsrv.add_backend(parse_backend_spec(
        f"stream,listen=unix:{sockdir}/a.sock,peer={hub.address}/"))
    b = await tapsrv.add_backend(parse_backend_spec(
        f"stream,listen=127.0.0.1:0,id=vmb,peer={hub.address}/"))
    assert (a.name, b.name) == ("stream0", "vmb")
    assert isinstance(b, StreamBackend)
    ra, wa = await asyncio.open_unix_connection(f"{sockdir}/a.sock")
    rb, wb = await open_client(b.local_address)
    await until(lambda: not a.link_down and not b.link_down, what="sockets and links up")
    for be in (a, b):
        await until(lambda be=be: isinstance(be.peer, LinkPeer) and be.peer.remote_ready,
                    what=f"{be.name} ready")
    assert len(hub.hub.ports) == 2
    frames = [frame(i, size) for i, size in enumerate([60, 64, 1514, 9000, 42] * 20)]
    wa.write(b"".join(qemu_frame(f) for f in frames))
    got = [await read_qemu_frame(rb) for _ in frames]
    assert got == frames  # hub and links neither pad nor reframe
    wb.write(qemu_frame(frame(7)))
    assert await read_qemu_frame(ra) == frame(7)
    info = {i.name: i for i in (tapsrv.registry.info(a), tapsrv.registry.info(b))}
    assert info["stream0"].counters.tx_frames == len(frames)
    assert info["vmb"].counters.rx_frames == len(frames)
    assert info["vmb"].kind == "stream" and "listen=127.0.0.1:" in info["vmb"].info
    for w in (wa, wb):
        w.close()


async def test_stream_hub_stream_throughput(hub: HubServer, tapsrv: TapServer,
                                            sockdir: Path) -> None:
    """Many small frames through stream -> hub -> stream: none lost, a floor on speed."""
    a = await tapsrv.add_backend(parse_backend_spec(f"stream,listen=unix:{sockdir}/a.sock,"
                                              f"peer={hub.address}/"))
    b = await tapsrv.add_backend(parse_backend_spec(f"stream,listen=unix:{sockdir}/b.sock,"
                                              f"peer={hub.address}/"))
    _ra, wa = await asyncio.open_unix_connection(f"{sockdir}/a.sock")
    rb, wb = await asyncio.open_unix_connection(f"{sockdir}/b.sock", limit=1 << 20)
    await until(lambda: not a.link_down and not b.link_down, what="up")
    for be in (a, b):
        await until(lambda be=be: isinstance(be.peer, LinkPeer) and be.peer.remote_ready,
                    what=f"{be.name} ready")
    n = 50000
    one = qemu_frame(frame(0, 64))
    payload = one * n
    start = time.perf_counter()

    async def feed() -> None:
        wa.write(payload)
        await wa.drain()

    feeder = asyncio.create_task(feed())
    expected = len(payload)
    got = 0
    while got < expected:
        chunk = await asyncio.wait_for(rb.read(1 << 20), 30)
        assert chunk
        got += len(chunk)
    elapsed = time.perf_counter() - start
    await feeder
    assert got == expected
    rate = n / elapsed
    print(f"stream->hub->stream: {rate:,.0f} frames/s of 64 bytes (one process)")
    assert rate > 5000
    for w in (wa, wb):
        w.close()


async def test_tap_server_add_list_remove_over_grpc(tapsrv: TapServer) -> None:
    port = free_tcp_port()
    async with grpc.aio.insecure_channel(tapsrv.address) as channel:
        stub = tap_pb2_grpc.TapServiceStub(channel)
        resp = await stub.AddBackend(tap_pb2.AddBackendRequest(config=tap_pb2.BackendConfig(
            stream=tap_pb2.StreamBackendConfig(address=f"127.0.0.1:{port}", listen=True))))
        assert resp.backend.name == "stream0" and resp.backend.kind == "stream"
        assert resp.backend.link_down  # nobody connected yet
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        resp = await stub.AddBackend(tap_pb2.AddBackendRequest(config=netdev_to_proto(
            parse_backend_spec("dgram,local=127.0.0.1:0,remote=127.0.0.1:9,id=d"))))
        assert resp.backend.name == "d"
        listed = await stub.ListBackends(tap_pb2.ListBackendsRequest())
        assert sorted(b.name for b in listed.backends) == ["d", "stream0"]
        await stub.RemoveBackend(tap_pb2.RemoveBackendRequest(name="stream0"))
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
        listed = await stub.ListBackends(tap_pb2.ListBackendsRequest())
        assert [b.name for b in listed.backends] == ["d"]


@pytest.mark.parametrize(("config", "code", "message"), [
    (tap_pb2.BackendConfig(), grpc.StatusCode.INVALID_ARGUMENT, "sets no kind"),
    (tap_pb2.BackendConfig(stream=tap_pb2.StreamBackendConfig(address="nohost")),
     grpc.StatusCode.INVALID_ARGUMENT, "expected HOST:PORT"),
    (tap_pb2.BackendConfig(stream=tap_pb2.StreamBackendConfig(address="")),
     grpc.StatusCode.INVALID_ARGUMENT, "needs an address"),
    (tap_pb2.BackendConfig(dgram=tap_pb2.DgramBackendConfig(local="230.1.1.1:5000")),
     grpc.StatusCode.INVALID_ARGUMENT, "needs remote"),
    (tap_pb2.BackendConfig(dgram=tap_pb2.DgramBackendConfig(local="10.1.1.1:5000",
                                                            multicast=True)),
     grpc.StatusCode.INVALID_ARGUMENT, "multicast"),
    (tap_pb2.BackendConfig(tap=tap_pb2.TapBackendConfig(ifname="bad name")),
     grpc.StatusCode.INVALID_ARGUMENT, "not allowed"),
    (tap_pb2.BackendConfig(peer="x", stream=tap_pb2.StreamBackendConfig(
        address="127.0.0.1:0", listen=True)),
     grpc.StatusCode.INVALID_ARGUMENT, "bad address"),
    (tap_pb2.BackendConfig(name="dup", stream=tap_pb2.StreamBackendConfig(
        address="127.0.0.1:0", listen=True)),
     grpc.StatusCode.FAILED_PRECONDITION, "already exists"),
    (tap_pb2.BackendConfig(stream=tap_pb2.StreamBackendConfig(
        address="198.18.255.254:5000", listen=True)),
     grpc.StatusCode.FAILED_PRECONDITION, "cannot listen on 198.18.255.254:5000"),
    # Host paths come from the command line only (virtwire serve tap --backend ...).
    (tap_pb2.BackendConfig(stream=tap_pb2.StreamBackendConfig(
        address="unix:/nonexistent-dir/x.sock", listen=True)),
     grpc.StatusCode.PERMISSION_DENIED, "listen=: 'unix:/nonexistent-dir/x.sock' is a unix "
     "socket path: over an RPC only HOST:PORT addresses are allowed"),
    (tap_pb2.BackendConfig(dgram=tap_pb2.DgramBackendConfig(local="unix:/tmp/a",
                                                            remote="unix:/tmp/b")),
     grpc.StatusCode.PERMISSION_DENIED, "local=: 'unix:/tmp/a' is a unix socket path"),
    (tap_pb2.BackendConfig(peer="unix:/tmp/hub.sock/", stream=tap_pb2.StreamBackendConfig(
        address="127.0.0.1:0", listen=True)),
     grpc.StatusCode.PERMISSION_DENIED, "peer: 'unix:/tmp/hub.sock/' is a unix socket path"),
    (tap_pb2.BackendConfig(tap=tap_pb2.TapBackendConfig(ifname="f", script="/usr/bin/touch")),
     grpc.StatusCode.PERMISSION_DENIED, "script: '/usr/bin/touch' is a path: over an RPC a "
     "script is a NAME that the receiving host allows (virtwire serve tap --allow-script "
     "NAME=PATH there)"),
    (tap_pb2.BackendConfig(tap=tap_pb2.TapBackendConfig(ifname="f", downscript="up")),
     grpc.StatusCode.PERMISSION_DENIED, "downscript: script 'up' is not allowed on this host "
     "(none is allowed); allow it with 'virtwire serve tap --allow-script up=PATH'"),
    (tap_pb2.BackendConfig(tap=tap_pb2.TapBackendConfig(ifname="f", script="x" * 100_000)),
     grpc.StatusCode.INVALID_ARGUMENT, "bad script name 'xxxx"),
])
async def test_add_backend_bad_input_over_grpc(tapsrv: TapServer, config: tap_pb2.BackendConfig,
                                               code: grpc.StatusCode, message: str) -> None:
    await tapsrv.add_backend(parse_backend_spec("stream,listen=127.0.0.1:0,id=dup"))
    async with grpc.aio.insecure_channel(tapsrv.address) as channel:
        stub = tap_pb2_grpc.TapServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.AddBackend(tap_pb2.AddBackendRequest(config=config))
        assert info.value.code() == code
        assert message in (info.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.RemoveBackend(tap_pb2.RemoveBackendRequest(name="nope"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert [b.name for b in tapsrv.backends()] == ["dup"]


async def test_tap_server_pending_configs_fail_cleanly(sockdir: Path) -> None:
    host = TapServer("127.0.0.1:0")
    host.pending_configs.extend([
        parse_backend_spec(f"stream,listen=unix:{sockdir}/ok.sock"),
        parse_backend_spec("stream,listen=unix:/nonexistent-dir/x.sock"),
    ])
    with pytest.raises(BackendError, match="cannot listen"):
        await host.start()
    assert host.registry.all() == []
    assert not (sockdir / "ok.sock").exists(), "the first backend was closed again"


async def test_tap_server_starts_pending_backends(sockdir: Path) -> None:
    host = TapServer("127.0.0.1:0")
    host.pending_configs.append(parse_backend_spec(f"stream,listen=unix:{sockdir}/p.sock"))
    await host.start()
    try:
        assert [b.name for b in host.backends()] == ["stream0"]
    finally:
        await host.stop(grace=0.1)
    assert not (sockdir / "p.sock").exists()


@pytest.mark.root
async def test_tap_server_tap_backend_runs_allowed_scripts(tmp_path: Path) -> None:
    """AddBackend names scripts the server's --allow-script allows; it runs their paths."""
    require_root()
    log = tmp_path / "log"
    for name, word in (("ifup", "up"), ("ifdown", "down")):
        (tmp_path / name).write_text(f"#!/bin/sh\necho \"{word} $1\" >> {log}\n")
        (tmp_path / name).chmod(0o755)
    ifname = unique_name("vwt")
    config = tap_pb2.BackendConfig(name="t", tap=tap_pb2.TapBackendConfig(
        ifname=ifname, script="up", downscript="down"))
    tapsrv = TapServer("127.0.0.1:0", allowed_scripts={"up": str(tmp_path / "ifup"),
                                                       "down": str(tmp_path / "ifdown")})
    await tapsrv.start()
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(tapsrv.stop, 0.2)
        channel = await stack.enter_async_context(grpc.aio.insecure_channel(tapsrv.address))
        stub = tap_pb2_grpc.TapServiceStub(channel)
        resp = await stub.AddBackend(tap_pb2.AddBackendRequest(config=config))
        assert resp.backend.kind == "tap" and f"ifname={ifname}" in resp.backend.info
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.AddBackend(tap_pb2.AddBackendRequest(config=tap_pb2.BackendConfig(
                tap=tap_pb2.TapBackendConfig(ifname=ifname))))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "busy" in (info.value.details() or "")
        await stub.RemoveBackend(tap_pb2.RemoveBackendRequest(name="t"))
    assert log.read_text() == f"up {ifname}\ndown {ifname}\n"
    assert not Path(f"/sys/class/net/{ifname}").exists()


# -- interoperability with a real QEMU --------------------------------------------------------
@pytest.mark.qemu
async def test_real_qemu_forwards_between_our_stream_and_dgram_backends(
        sockdir: Path, backends: list[NetClient]) -> None:
    """QEMU's own hub joins `-netdev stream` and `-netdev dgram` to our backends: the
    framing and datagram conventions are QEMU's, in both directions."""
    qemu = shutil.which("qemu-system-x86_64")
    need(qemu is not None, "needs qemu-system-x86_64 (Debian package qemu-system-x86)")
    assert qemu is not None
    qemu_port, our_port = free_udp_port(), free_udp_port()
    path = sockdir / "qemu.sock"
    proc = await asyncio.create_subprocess_exec(
        qemu, "-machine", "none", "-nodefaults", "-display", "none", "-monitor", "none",
        "-netdev", f"stream,id=s,server=on,addr.type=unix,addr.path={path}",
        "-netdev", f"dgram,id=d,local.type=inet,local.host=127.0.0.1,local.port={qemu_port},"
                   f"remote.type=inet,remote.host=127.0.0.1,remote.port={our_port}",
        "-netdev", "hubport,id=hs,hubid=0,netdev=s",
        "-netdev", "hubport,id=hd,hubid=0,netdev=d",
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        stream = StreamBackend("s", SockAddr(path=str(path)), listen=False,
                               reconnect_seconds=0.05)
        dgram = DgramBackend("d", SockAddr("127.0.0.1", our_port),
                             SockAddr("127.0.0.1", qemu_port))
        backends.extend([stream, dgram])
        via_stream, via_dgram = plug(stream, "via_stream"), plug(dgram, "via_dgram")
        await asyncio.wait_for(stream.wait_connected(), 10)
        sizes = [42, 60, 1514, 9000]
        for i, size in enumerate(sizes):
            via_stream.send_packet(frame(i, size)[:size])
        await via_dgram.wait_for(len(sizes))
        assert via_dgram.frames == [frame(i, size)[:size] for i, size in enumerate(sizes)]
        for i, size in enumerate(sizes):
            via_dgram.send_packet(frame(10 + i, size)[:size])
        await via_stream.wait_for(len(sizes))
        assert via_stream.frames == [frame(10 + i, size)[:size]
                                     for i, size in enumerate(sizes)]
    finally:
        if proc.returncode is None:
            proc.terminate()
        _, err = await proc.communicate()
        assert b"error" not in err.lower(), err.decode()
