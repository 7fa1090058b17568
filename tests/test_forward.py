"""The docker runtime's publish: relay (orchestrator/forward.py), on loopback, and
its counters in GetStatus and `virtwire status`."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest

from virtwire.address import SockAddr
from virtwire.cli.format import format_json, format_ports
from virtwire.errors import BackendError
from virtwire.orchestrator import forward
from virtwire.orchestrator.core import RunState
from virtwire.orchestrator.forward import PortForwarder
from virtwire.orchestrator.runtime.docker import DockerRuntime
from virtwire.server.orchestrator import OrchestratorServer, OrchestratorServicer
from virtwire.topology import parse_topology
from virtwire.v1 import orchestrator_pb2

from support.doubles import until


async def _echo_server() -> asyncio.Server:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(4096):
            writer.write(data)
            await writer.drain()
        writer.close()
    return await asyncio.start_server(echo, "127.0.0.1", 0)


async def test_relays_both_ways_and_half_closes() -> None:
    echo = await _echo_server()
    port = echo.sockets[0].getsockname()[1]
    fwd = PortForwarder(SockAddr("127.0.0.1", 0), SockAddr("127.0.0.1", port))
    await fwd.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", fwd.bound.port)
        payload = bytes(range(256)) * 1024
        writer.write(payload)
        writer.write_eof()
        got = await asyncio.wait_for(reader.read(-1), 10)
        assert got == payload
        writer.close()
        assert fwd.accepted == 1 and fwd.refused == 0 and fwd.target_failed == 0
    finally:
        await fwd.close()
        echo.close()


async def test_connections_over_the_cap_are_refused_and_counted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forward, "MAX_CONNECTIONS", 2)
    echo = await _echo_server()
    fwd = PortForwarder(SockAddr("127.0.0.1", 0),
                        SockAddr("127.0.0.1", echo.sockets[0].getsockname()[1]))
    await fwd.start()
    try:
        held = [await asyncio.open_connection("127.0.0.1", fwd.bound.port) for _ in range(2)]
        for _, w in held:
            w.write(b"x")
        for r, _ in held:
            assert await asyncio.wait_for(r.readexactly(1), 10) == b"x"
        reader, _ = await asyncio.open_connection("127.0.0.1", fwd.bound.port)
        assert await asyncio.wait_for(reader.read(-1), 10) == b""
        assert fwd.refused == 1 and fwd.accepted == 2
    finally:
        await fwd.close()
        echo.close()


async def test_an_unreachable_target_is_counted_and_closes() -> None:
    echo = await _echo_server()
    dead = echo.sockets[0].getsockname()[1]
    echo.close()
    await echo.wait_closed()
    fwd = PortForwarder(SockAddr("127.0.0.1", 0), SockAddr("127.0.0.1", dead))
    await fwd.start()
    try:
        reader, _ = await asyncio.open_connection("127.0.0.1", fwd.bound.port)
        assert await asyncio.wait_for(reader.read(-1), 10) == b""
        assert fwd.target_failed == 1
    finally:
        await fwd.close()


async def test_a_taken_address_is_a_backend_error() -> None:
    echo = await _echo_server()
    taken = echo.sockets[0].getsockname()[1]
    try:
        with pytest.raises(BackendError, match=r"cannot publish on 127\.0\.0\.1"):
            await PortForwarder(SockAddr("127.0.0.1", taken), SockAddr("127.0.0.1", 1)).start()
    finally:
        echo.close()


async def test_active_counts_the_connections_being_relayed() -> None:
    echo = await _echo_server()
    fwd = PortForwarder(SockAddr("127.0.0.1", 0),
                        SockAddr("127.0.0.1", echo.sockets[0].getsockname()[1]))
    await fwd.start()
    try:
        assert fwd.active == 0
        reader, writer = await asyncio.open_connection("127.0.0.1", fwd.bound.port)
        writer.write(b"x")
        assert await asyncio.wait_for(reader.readexactly(1), 10) == b"x"
        assert fwd.active == 1
        writer.close()
        await until(lambda: fwd.active == 0, what="the relay to end")
        assert fwd.accepted == 1
    finally:
        await fwd.close()
        echo.close()


async def test_status_shows_the_relays_counters(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """GetStatus puts the docker runtime's publish: relay in its node's
    NodeStatus.relays; `status` shows its counters under RELAY, --json as numbers."""
    monkeypatch.setattr(forward, "MAX_CONNECTIONS", 2)
    echo = await _echo_server()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    topo = parse_topology(
        "name: pub\nnodes:\n  hub0: {kind: hub}\n  qemu0: {kind: tap, backend: stream, "
        f"listen: 127.0.0.1:10555, publish: 127.0.0.1:{port}}}\nlinks: [[qemu0, hub0]]\n",
        "pub.yaml")
    host = OrchestratorServer(state_dir=tmp_path)
    orch = host.orchestrator
    orch.topology, orch.state = topo, RunState.RUNNING
    runtime = orch.runtimes[""] = DockerRuntime(topo, "")
    # Nothing listens at the target yet: one connection fails to reach it.
    fwd = PortForwarder(SockAddr("127.0.0.1", port), SockAddr("127.0.0.1", 1))
    await fwd.start()
    runtime.forwarders["qemu0"] = fwd
    try:
        reader, _ = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(-1), 10) == b""
        fwd.target = SockAddr("127.0.0.1", echo.sockets[0].getsockname()[1])
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        for r, w in held:
            w.write(b"x")
            assert await asyncio.wait_for(r.readexactly(1), 10) == b"x"
        for _ in range(4):  # over the cap
            reader, _ = await asyncio.open_connection("127.0.0.1", port)
            assert await asyncio.wait_for(reader.read(-1), 10) == b""
        resp = await OrchestratorServicer(host).GetStatus(
            orchestrator_pb2.OrchestratorServiceGetStatusRequest(), None)  # type: ignore[arg-type]
        nodes = {n.name: n for n in resp.nodes}
        assert list(nodes["qemu0"].relays) == [orchestrator_pb2.PublishRelay(
            listen=f"127.0.0.1:{port}", target=str(fwd.target), accepted=3, active=2,
            refused=4, target_failed=1)]
        assert not nodes["hub0"].relays
        ports = format_ports(resp)
        assert ports.splitlines()[0].split()[-1] == "RELAY", ports
        assert ports.splitlines()[1].split(None, 3) == [  # no service runs: "tap"
            "qemu0", "tap", f"127.0.0.1:{port}",
            "3 accepted, 2 open, 4 refused, 1 target failed"], ports
        (relay,) = json.loads(format_json(resp))["nodes"][1]["relays"]
        assert relay == {"listen": f"127.0.0.1:{port}", "target": str(fwd.target),
                         "accepted": 3, "refused": 4, "target_failed": 1, "active": 2}
        for _, w in held:
            w.close()
    finally:
        await fwd.close()
        echo.close()


def test_status_without_a_relay_has_no_relay_column() -> None:
    resp = orchestrator_pb2.OrchestratorServiceGetStatusResponse(nodes=[
        orchestrator_pb2.NodeStatus(name="qemu0", kind="tap", reachable_at="127.0.0.1:10555")])
    assert format_ports(resp).split() == [
        "NODE", "PORT", "LISTENS", "AT", "(FROM", "THIS", "HOST)", "qemu0", "tap",
        "127.0.0.1:10555"]
