"""A hub's port backends: ``serve hub --port-backend NAME=SPEC`` (docs/hub.md).

The backend is opened in the hub's own process and is its port's peer, with no
link between them (QEMU's ``-netdev hubport,netdev=``); frames keep QEMU's
stream framing, drops are counted where ``list`` shows them, the port cannot be
removed over RPC, and bad flags are clear errors.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest

from virtwire.errors import ConfigError, ConflictError
from virtwire.net.netdev import parse_backend_spec
from virtwire.net.stream import StreamBackend
from virtwire.server.hub import HubServer
from virtwire.server.switch import SwitchServer
from virtwire.server.tap import TapServer
from virtwire.v1 import hub_pb2, hub_pb2_grpc, netclient_pb2, netclient_pb2_grpc

from support.doubles import frame, until
from support.procs import VIRTWIRE, serve


def qemu_frame(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


async def read_qemu_frame(reader: asyncio.StreamReader, timeout: float = 10.0) -> bytes:
    header = await asyncio.wait_for(reader.readexactly(4), timeout)
    return await asyncio.wait_for(reader.readexactly(int.from_bytes(header, "big")), timeout)


@pytest.fixture
def sockdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="vwpb", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def started_hub(sockdir: Path, *ports: str) -> HubServer:
    """A started hub whose ``ports`` each have a stream backend listening at
    ``sockdir/PORT``."""
    host = HubServer("127.0.0.1:0")
    for port in ports:
        host.add_port_backend(port, parse_backend_spec(f"stream,listen=unix:{sockdir}/{port}"))
    await host.start()
    return host


class WriteLog:
    """A transport that records each write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))


def backend_of(host: HubServer, port: str) -> StreamBackend:
    nc = host.registry.get(port).peer
    assert isinstance(nc, StreamBackend)
    return nc


async def test_two_port_backends_carry_frames_in_one_process(sockdir: Path) -> None:
    host = HubServer("127.0.0.1:0", name="hub")
    host.add_port_backend("a", parse_backend_spec(f"stream,listen=unix:{sockdir}/a"))
    host.add_port_backend("b", parse_backend_spec(f"stream,listen=unix:{sockdir}/b,id=vmb"))
    await host.start()
    try:
        a, b = backend_of(host, "a"), backend_of(host, "b")
        assert (a.name, b.name) == ("stream0", "vmb")
        assert a.peer is host.registry.get("a") and host.port_backends[host.hub.port("a")] is a
        ra, wa = await asyncio.open_unix_connection(f"{sockdir}/a")
        rb, wb = await asyncio.open_unix_connection(f"{sockdir}/b")
        await until(lambda: not a.link_down and not b.link_down, what="both clients in")
        frames = [frame(i, size) for i, size in enumerate([60, 64, 1514, 9000, 42] * 20)]
        wa.write(b"".join(qemu_frame(f) for f in frames))
        assert [await read_qemu_frame(rb) for _ in frames] == frames
        wb.write(qemu_frame(frame(7)))
        assert await read_qemu_frame(ra) == frame(7)
        info = {i.name: i for i in map(host.registry.info, host.registry.all())}
        assert set(info) == {"a", "b", "stream0", "vmb"}
        # The port's peer is the backend, in this process: up, with no link.
        assert info["a"].peer == "stream0" and info["stream0"].peer == "a"
        assert info["a"].link_state == netclient_pb2.LINK_STATE_UP
        assert info["a"].link_transport == "" and not info["a"].dials
        assert info["stream0"].backend_state == netclient_pb2.BACKEND_STATE_CONNECTED
        assert info["stream0"].backend_address == f"unix:{sockdir}/a"
        assert info["stream0"].counters.tx_frames == len(frames)
        assert info["vmb"].counters.rx_frames == len(frames)
        assert info["b"].counters.tx_frames == len(frames)
        for w in (wa, wb):
            w.close()
    finally:
        await host.stop(grace=0.1)
    assert not (sockdir / "a").exists() and not (sockdir / "b").exists()


async def test_a_port_backend_reaches_a_linked_tap_backend(sockdir: Path) -> None:
    """Hosted and linked ports mix: QEMU VM -> hub (its backend) -> link -> tap service."""
    host = HubServer("127.0.0.1:0")
    host.add_port_backend("qemu0", parse_backend_spec(f"stream,listen=unix:{sockdir}/q"))
    await host.start()
    tap = TapServer("127.0.0.1:0")
    await tap.start()
    try:
        far = await tap.add_backend(parse_backend_spec(
            f"stream,listen=unix:{sockdir}/t,peer={host.address}/"))
        rq, wq = await asyncio.open_unix_connection(f"{sockdir}/q")
        rt, wt = await asyncio.open_unix_connection(f"{sockdir}/t")
        near = backend_of(host, "qemu0")
        await until(lambda: not near.link_down and not far.link_down
                    and far.peer is not None and getattr(far.peer, "remote_ready", False),
                    what="clients in, link up")
        wq.write(qemu_frame(frame(1)))
        assert await read_qemu_frame(rt) == frame(1)
        wt.write(qemu_frame(frame(2, 1514)))
        assert await read_qemu_frame(rq) == frame(2, 1514)
        for w in (wq, wt):
            w.close()
    finally:
        await tap.stop(grace=0.1)
        await host.stop(grace=0.1)


async def test_frames_for_a_port_backend_without_client_are_counted(sockdir: Path) -> None:
    host = await started_hub(sockdir, "a", "idle")
    try:
        _, wa = await asyncio.open_unix_connection(f"{sockdir}/a")
        a, idle = backend_of(host, "a"), backend_of(host, "idle")
        await until(lambda: not a.link_down, what="a's client in")
        assert idle.link_down  # no client: QEMU's link_down stream backend
        wa.write(b"".join(qemu_frame(frame(i)) for i in range(25)))
        await until(lambda: host.registry.info(idle).counters.dropped_link_down == 25,
                    what="25 frames dropped at the idle backend")
        info = host.registry.info(idle)
        assert info.counters.dropped_total == 25 and info.counters.rx_frames == 0
        assert info.backend_state == netclient_pb2.BACKEND_STATE_LISTENING
        wa.close()
    finally:
        await host.stop(grace=0.1)


async def test_remove_port_refuses_a_port_backend_over_grpc(sockdir: Path) -> None:
    host = HubServer("127.0.0.1:0")
    host.add_port_backend("qemu0", parse_backend_spec(f"stream,listen=unix:{sockdir}/q"))
    await host.start()
    try:
        async with grpc.aio.insecure_channel(host.address) as channel:
            stub = hub_pb2_grpc.HubServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.RemovePort(hub_pb2.RemovePortRequest(name="qemu0"))
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "--port-backend" in (err.value.details() or "")
            listed = await netclient_pb2_grpc.NetClientServiceStub(channel).ListNetClients(
                netclient_pb2.ListNetClientsRequest())
            assert {n.name for n in listed.netclients} == {"qemu0", "stream0"}
        with pytest.raises(ConflictError):
            await host.remove_port("qemu0")
    finally:
        await host.stop(grace=0.1)


async def test_a_port_backend_that_cannot_open_leaves_nothing_open(sockdir: Path) -> None:
    host = HubServer("127.0.0.1:0")
    host.add_port_backend("ok", parse_backend_spec(f"stream,listen=unix:{sockdir}/ok"))
    host.add_port_backend("bad", parse_backend_spec("stream,listen=unix:/nonexistent-dir/x"))
    with pytest.raises(OSError, match="cannot listen"):
        await host.start()
    assert host.registry.all() == []
    assert not (sockdir / "ok").exists()


def test_port_backend_specs_are_checked_before_anything_opens() -> None:
    host = HubServer("127.0.0.1:0")
    with pytest.raises(ConfigError, match="must not name one"):
        host.add_port_backend("a", parse_backend_spec(
            "stream,listen=127.0.0.1:0,peer=127.0.0.1:1/x"))
    host.add_port_backend("a", parse_backend_spec("stream,listen=127.0.0.1:0,id=x"))
    with pytest.raises(ConflictError):
        host.add_port_backend("b", parse_backend_spec("stream,listen=127.0.0.1:0,id=x"))
    with pytest.raises(ConflictError):
        host.add_port_backend("a", parse_backend_spec("stream,listen=127.0.0.1:0"))
    with pytest.raises(ConflictError):
        host.add_port_backend("c", parse_backend_spec("stream,listen=127.0.0.1:0,id=a"))
    assert [p.name for p in host.hub.ports] == ["a"]


async def test_a_switch_port_backend_keeps_its_vlan(sockdir: Path) -> None:
    """A switch is a hub: its port backends sit on access ports like any other."""
    from virtwire.net.switch import PortVlans

    host = SwitchServer("127.0.0.1:0")
    for name in ("a", "b", "c"):
        host.add_port_backend(name, parse_backend_spec(f"stream,listen=unix:{sockdir}/{name}"))
    host.switch.set_port_vlans("c", PortVlans.parse("20"))
    await host.start()
    try:
        conns = {n: await asyncio.open_unix_connection(f"{sockdir}/{n}") for n in "abc"}
        await until(lambda: all(not backend_of(host, n).link_down for n in "abc"),
                    what="three clients in")
        conns["a"][1].write(qemu_frame(frame(3)))  # a broadcast on VLAN 1
        assert await read_qemu_frame(conns["b"][0]) == frame(3)
        await asyncio.sleep(0.2)
        assert host.registry.info(backend_of(host, "c")).counters.rx_frames == 0
        for _, w in conns.values():
            w.close()
    finally:
        await host.stop(grace=0.1)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VIRTWIRE, *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize(("flag", "message"), [
    ("qemu0", "expected NAME=SPEC"),
    ("=stream,listen=127.0.0.1:0", "expected NAME=SPEC"),
    ("qemu0=", "expected NAME=SPEC"),
    ("qemu0=bogus,x=1", "bogus"),
    ("qemu0=stream,listen=127.0.0.1:0,peer=127.0.0.1:1/x", "must not name one"),
    ("bad name=stream,listen=127.0.0.1:0", "bad name"),
])
def test_serve_hub_refuses_bad_port_backends(flag: str, message: str) -> None:
    out = _cli("serve", "hub", "--port-backend", flag)
    assert out.returncode != 0, out
    assert message in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_serve_hub_port_backend_process_forwards(tmp_path: Path, sockdir: Path) -> None:
    """The real command: `virtwire serve hub --port-backend`, driven over its sockets,
    and `virtwire list` shows the backend as the port's peer."""
    import socket

    args = ["--port-backend", f"a=stream,listen=unix:{sockdir}/a",
            "--port-backend", f"b=stream,listen=unix:{sockdir}/b"]
    with serve("hub", args, tmp_path) as hub:
        with socket.socket(socket.AF_UNIX) as sa, socket.socket(socket.AF_UNIX) as sb:
            sa.connect(str(sockdir / "a"))
            sb.connect(str(sockdir / "b"))
            import select

            for _ in range(100):  # until both backends have their client
                sa.sendall(qemu_frame(frame(9)))
                if select.select([sb], [], [], 0.2)[0]:
                    break
            sb.settimeout(10)
            want = len(qemu_frame(frame(9)))
            got = b""
            while len(got) < want:
                chunk = sb.recv(want - len(got))
                assert chunk, "the hub closed b's connection"
                got += chunk
            assert got == qemu_frame(frame(9))
        out = subprocess.run([*VIRTWIRE, "list", "-s", hub.address], capture_output=True,
                             text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert out.returncode == 0, out.stderr
        rows = {line.split()[0]: line for line in out.stdout.splitlines()[1:] if line.split()}
        assert {"a", "b", "stream0", "stream1"} <= set(rows), out.stdout
        assert "stream0" in rows["a"] or "stream1" in rows["a"], out.stdout


async def test_a_read_of_many_frames_leaves_for_a_stream_port_in_one_run(sockdir: Path) -> None:
    """A stream backend takes any batch whole (``receive_room``), so the hub
    forwards a read's frames to it in one run, not one frame at a time."""
    from virtwire.net.net import ROOM_ANY

    host = await started_hub(sockdir, "a", "b")
    try:
        _, wa = await asyncio.open_unix_connection(f"{sockdir}/a")
        rb, wb = await asyncio.open_unix_connection(f"{sockdir}/b")
        a, b = backend_of(host, "a"), backend_of(host, "b")
        await until(lambda: not a.link_down and not b.link_down, what="both clients in")
        assert b.receive_room() == ROOM_ANY
        runs: list[int] = []
        conn = b.conn
        assert conn is not None
        write_frames = conn.write_frames

        def counting(frames: Sequence[bytes]) -> None:
            runs.append(len(frames))
            write_frames(frames)

        conn.write_frames = counting  # type: ignore[method-assign]
        frames = [frame(i) for i in range(100)]
        wa.write(b"".join(qemu_frame(f) for f in frames))
        assert [await read_qemu_frame(rb) for _ in frames] == frames
        assert sum(runs) == 100 and len(runs) < 10, runs
        conn.write_paused = True  # the transport is above its high-water mark
        assert b.receive_room() == 0
        conn.write_paused = False
        for w in (wa, wb):
            w.close()
    finally:
        await host.stop(grace=0.1)


async def test_a_lone_frame_is_written_at_once_and_the_rest_of_the_turn_gathered() -> None:
    """A stream connection's first write in a turn of the loop goes to the
    transport at once; what follows in the same turn leaves as one write."""
    from virtwire.net.stream import FramedConnection

    loop = asyncio.get_running_loop()
    conn = FramedConnection(loop, "test")
    transport = WriteLog()
    conn.transport = transport  # type: ignore[assignment]
    conn._write(loop, b"one")
    assert transport.writes == [b"one"]
    conn._write(loop, b"two")
    conn._write(loop, b"three")
    assert transport.writes == [b"one"]
    await asyncio.sleep(0)
    assert transport.writes == [b"one", b"twothree"]
    conn._write(loop, b"next turn")
    assert transport.writes[-1] == b"next turn"
    await asyncio.sleep(0)
    assert len(transport.writes) == 3


async def test_a_turns_first_write_stays_behind_output_still_buffered() -> None:
    """Output buffered while there was no transport leaves first, in order."""
    from virtwire.net.stream import FramedConnection

    loop = asyncio.get_running_loop()
    conn = FramedConnection(loop, "test")
    conn._write(loop, b"early")  # no transport yet: kept
    await asyncio.sleep(0)
    transport = WriteLog()
    conn.transport = transport  # type: ignore[assignment]
    conn._write(loop, b"later")
    assert transport.writes == []
    await asyncio.sleep(0)
    assert transport.writes == [b"earlylater"]
