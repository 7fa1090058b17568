"""SwitchService over gRPC on an in-process SwitchServer, and `serve switch` +
`virtwire fdb -s ADDR` as processes."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from virtwire.net.switch import PortVlans
from virtwire.server.switch import SwitchServer
from virtwire.v1 import (
    hub_pb2,
    hub_pb2_grpc,
    netclient_pb2,
    netclient_pb2_grpc,
    switch_pb2,
    switch_pb2_grpc,
)

from support.doubles import Receiver
from support.procs import VIRTWIRE, serve

A = bytes.fromhex("020000000001")
B = bytes.fromhex("020000000002")
BCAST = b"\xff" * 6


def frame(dst: bytes, src: bytes) -> bytes:
    return dst + src + b"\x08\x00" + b"x" * 46


class Clock:
    now = 50.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def switch() -> AsyncIterator[tuple[SwitchServer, list[Receiver], Clock]]:
    clock = Clock()
    host = SwitchServer("127.0.0.1:0", name="sw", aging=100.0, max_entries=8, clock=clock)
    devs = []
    for name, vlans in (("a", PortVlans.access(10)), ("b", PortVlans.access(10)),
                        ("c", PortVlans.access(20)), ("up", PortVlans.trunked([10, 20]))):
        port = host.add_switch_port(name, vlans=vlans)
        dev = Receiver(f"dev-{name}")
        port.peer, dev.peer = dev, port
        devs.append(dev)
    await host.start()
    try:
        yield host, devs, clock
    finally:
        await host.stop(0.5)


async def test_mac_table_flush_and_port_vlans_over_rpc(
        switch: tuple[SwitchServer, list[Receiver], Clock]) -> None:
    host, devs, clock = switch
    async with grpc.aio.insecure_channel(host.address) as ch:
        sw = switch_pb2_grpc.SwitchServiceStub(ch)
        nc = netclient_pb2_grpc.NetClientServiceStub(ch)
        # Inject delivers into a port as if its peer had sent the frame.
        await nc.Inject(netclient_pb2.InjectRequest(name="a", frame=frame(BCAST, A)))
        clock.now += 7
        await nc.Inject(netclient_pb2.InjectRequest(name="b", frame=frame(A, B)))
        assert devs[0].frames == [frame(A, B)]  # learned: only a's port
        assert devs[2].frames == []  # VLAN 20 saw nothing
        table = await sw.ListMacTable(switch_pb2.ListMacTableRequest())
        assert [(e.mac, e.vlan, e.port, round(e.age_seconds)) for e in table.entries] == [
            ("02:00:00:00:00:01", 10, "a", 7), ("02:00:00:00:00:02", 10, "b", 0)]
        assert (table.max_entries, table.aging_seconds, table.size) == (8, 100.0, 2)
        only_b = await sw.ListMacTable(switch_pb2.ListMacTableRequest(port="b"))
        assert [e.port for e in only_b.entries] == ["b"]

        ports = await sw.ListSwitchPorts(switch_pb2.ListSwitchPortsRequest(node="sw"))
        by_name = {p.port.name: p for p in ports.ports}
        assert by_name["up"].vlans.trunk and list(by_name["up"].vlans.allowed) == [10, 20]
        assert by_name["a"].counters.flooded == 1
        assert by_name["b"].counters.forwarded_unicast == 1

        # A filtered frame shows in the NetClient counters users already see.
        await nc.Inject(netclient_pb2.InjectRequest(name="a", frame=frame(A, B)))
        got = await nc.GetNetClient(netclient_pb2.GetNetClientRequest(name="a"))
        assert got.netclient.counters.dropped_switch == 1
        assert got.netclient.counters.dropped_total == 1
        assert "filtered_same_port=1" in got.netclient.info

        # That frame came in on a from B: B moved to a (learning comes first).
        flushed = await sw.FlushMacTable(switch_pb2.FlushMacTableRequest(port="a"))
        assert flushed.flushed == 2
        set_resp = await sw.SetPortVlans(switch_pb2.SetPortVlansRequest(
            port="b", vlans=switch_pb2.SwitchPortVlans(vlan=20)))
        assert set_resp.port.vlans.vlan == 20 and not set_resp.port.vlans.trunk
        assert (await sw.ListMacTable(switch_pb2.ListMacTableRequest())).size == 0

        # Ports are a hub's: HubService lists them.
        hub_ports = await hub_pb2_grpc.HubServiceStub(ch).ListPorts(hub_pb2.ListPortsRequest())
        assert sorted(p.name for p in hub_ports.ports) == ["a", "b", "c", "up"]


@pytest.mark.parametrize(("request_", "code"), [
    (switch_pb2.SetPortVlansRequest(port="a", vlans=switch_pb2.SwitchPortVlans(vlan=4095)),
     grpc.StatusCode.INVALID_ARGUMENT),
    (switch_pb2.SetPortVlansRequest(port="a", vlans=switch_pb2.SwitchPortVlans(
        trunk=True)), grpc.StatusCode.INVALID_ARGUMENT),
    (switch_pb2.SetPortVlansRequest(port="a", vlans=switch_pb2.SwitchPortVlans(
        vlan=10, native=1)), grpc.StatusCode.INVALID_ARGUMENT),
    (switch_pb2.SetPortVlansRequest(port="a"), grpc.StatusCode.INVALID_ARGUMENT),
    (switch_pb2.SetPortVlansRequest(port="nosuch", vlans=switch_pb2.SwitchPortVlans(vlan=1)),
     grpc.StatusCode.NOT_FOUND),
    (switch_pb2.FlushMacTableRequest(vlan=5000), grpc.StatusCode.INVALID_ARGUMENT),
    (switch_pb2.FlushMacTableRequest(port="nosuch"), grpc.StatusCode.NOT_FOUND),
    (switch_pb2.ListMacTableRequest(node="other"), grpc.StatusCode.NOT_FOUND),
])
async def test_bad_requests_get_a_status_and_a_message(
        switch: tuple[SwitchServer, list[Receiver], Clock], request_: object,
        code: grpc.StatusCode) -> None:
    host, _, _ = switch
    async with grpc.aio.insecure_channel(host.address) as ch:
        sw = switch_pb2_grpc.SwitchServiceStub(ch)
        rpc = {switch_pb2.SetPortVlansRequest: sw.SetPortVlans,
               switch_pb2.FlushMacTableRequest: sw.FlushMacTable,
               switch_pb2.ListMacTableRequest: sw.ListMacTable}[type(request_)]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await rpc(request_)
        assert err.value.code() == code and err.value.details()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VIRTWIRE, *args], capture_output=True, text=True, timeout=60)


def test_serve_switch_and_fdb_with_s(tmp_path: Path) -> None:
    """`virtwire serve switch` takes ports, VLANs, a mirror and aging; `virtwire
    fdb -s ADDR` lists, sets VLANs and flushes."""
    with serve("switch", ["--name", "sw", "--port", "a", "--port", "b", "--port", "m",
                          "--vlans", "a=10", "--vlans", "b=trunk=10,20,native=1",
                          "--mirror", "m", "--aging", "30s", "--max-entries", "16"],
               tmp_path) as sw:
        inj = _cli("inject", "-s", sw.address, "a", "--hex", frame(BCAST, A).hex())
        assert inj.returncode == 0, inj.stderr
        out = _cli("fdb", "-s", sw.address, "--json")
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        assert [(e["mac"], e["vlan"], e["port"]) for e in data["entries"]] == [
            ("02:00:00:00:00:01", 10, "a")]
        assert data["aging_seconds"] == 30 and data["max_entries"] == 16
        text = _cli("fdb", "sw", "-s", sw.address)
        assert "02:00:00:00:00:01  10    a" in text.stdout and "aging 30s" in text.stdout
        ports = _cli("fdb", "-s", sw.address, "--ports")
        assert ports.returncode == 0 and "mirror" in ports.stdout, ports.stderr
        assert "trunk 10,20 native 1" in ports.stdout
        setv = _cli("fdb", "-s", sw.address, "--set", "a=20")
        assert setv.returncode == 0 and "a: vlans 20" in setv.stdout, setv.stderr
        assert json.loads(_cli("fdb", "-s", sw.address, "--json").stdout)["entries"] == []
        _cli("inject", "-s", sw.address, "a", "--hex", frame(BCAST, A).hex())
        flush = _cli("fdb", "-s", sw.address, "--flush")
        assert flush.returncode == 0 and "flushed 1 entries" in flush.stdout
        bad = _cli("fdb", "-s", sw.address, "--set", "a=4095")
        assert bad.returncode != 0 and "4095" in bad.stderr
        wrong = _cli("fdb", "other", "-s", sw.address)
        assert wrong.returncode != 0 and "not 'other'" in wrong.stderr
