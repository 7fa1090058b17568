"""The orchestrator: `virtwire up/status/link/down` on examples/default.yaml.

The LAN runs as real processes (process backend) with its state in a
temporary directory; ping goes through the OrchestratorService.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from virtwire.net.pcap import read_pcap
from virtwire.orchestrator import pids
from virtwire.v1 import netclient_pb2, orchestrator_pb2, orchestrator_pb2_grpc

from support.procs import GRPCURL, VIRTWIRE, grpcurl, pid_alive, serve, wait_gone

EXAMPLE = Path(__file__).parent.parent / "examples" / "default.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Lan:
    """A LAN from ``topology`` (default: the example, on a free stream port) named ``name``."""

    def __init__(self, tmp: Path, topology: str = "", name: str = "default") -> None:
        self.dir = tmp
        self.name = name
        self.state_dir = tmp / "state"
        self.env = {**os.environ, "VIRTWIRE_STATE_DIR": str(self.state_dir)}
        self.file = tmp / "lan.yaml"
        self.file.write_text(topology or EXAMPLE.read_text().replace(
            "127.0.0.1:10555", f"127.0.0.1:{_free_port()}"))

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*VIRTWIRE, *args], capture_output=True, text=True,
                              timeout=timeout, env=self.env)

    def state(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.state_dir / self.name / "state.json").read_text())
        return data

    def status(self) -> dict[str, Any]:
        out = self.cli("status", self.name, "--json")
        assert out.returncode in (0, 1), out.stderr
        data: dict[str, Any] = json.loads(out.stdout)
        return data

    def ping(self, src: str, dst: str, count: int = 3) -> int:
        with grpc.insecure_channel(self.state()["orchestrator"]) as ch:
            resp = orchestrator_pb2_grpc.OrchestratorServiceStub(ch).Ping(
                orchestrator_pb2.OrchestratorServicePingRequest(
                    from_node=src, to=dst, count=count, timeout_ms=400), timeout=30)
        return int(resp.received)


def _until_ping(lan: Lan, src: str, dst: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if lan.ping(src, dst, count=1) == 1:
                return
        except grpc.RpcError:  # e.g. the NIC's link is not up yet
            pass
        assert time.monotonic() < deadline, f"no ping {src} -> {dst}"


def _drops(status: dict[str, Any]) -> int:
    total = 0
    for node in status["nodes"]:
        for nc in node.get("netclients", []):
            c = nc["info"]["counters"]
            total += sum(int(c.get(k, 0)) for k in (
                "dropped_queue_full", "dropped_link_down", "dropped_refused",
                "dropped_malformed", "dropped_purged"))
    return total


def _services(status: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for node in status["nodes"] for s in node["services"]]


@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lan]:
    lan = Lan(tmp_path_factory.mktemp("orch"))
    out = lan.cli("up", str(lan.file), "--detach")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "done" in out.stdout and "service_started" in out.stdout
    try:
        yield lan
    finally:
        if (lan.state_dir / "default").exists():
            lan.cli("down", "default")


def test_up_status_ping_and_link_state(lan: Lan) -> None:
    status = lan.status()
    assert status["state"] == "running"
    assert {n["name"] for n in status["nodes"]} == {"hub0", "vm1", "vm2", "qemu0"}
    services = _services(status)
    assert len(services) == 8 and all(s["healthy"] for s in services), services
    table = lan.cli("status")
    assert table.returncode == 0 and "vm2-e1000" in table.stdout, table.stderr

    assert lan.ping("vm1", "vm2") == 3
    before = _drops(lan.status())
    out = lan.cli("link", "vm2", "down")
    assert out.returncode == 0 and "link down" in out.stdout, out.stderr
    assert lan.ping("vm1", "vm2", count=2) == 0
    status = lan.status()
    vm2 = next(nc for n in status["nodes"] for nc in n.get("netclients", [])
               if nc["name"] == "vm2")
    assert vm2["info"]["admin_down"]
    assert _drops(status) > before
    out = lan.cli("link", "vm2", "up")
    assert out.returncode == 0 and "link up" in out.stdout, out.stderr
    # link_up reaches the hub side one link round trip later.
    _until_ping(lan, "vm1", "198.18.0.2")
    assert lan.ping("vm1", "198.18.0.2") == 3


def test_bad_node_names(lan: Lan) -> None:
    out = lan.cli("link", "nosuch", "down")
    assert out.returncode == 2 and "no node 'nosuch'" in out.stderr
    out = lan.cli("link", "hub0", "down")
    assert out.returncode == 2 and "hub0:PORT" in out.stderr


def test_inject_and_capture_by_node_name(lan: Lan) -> None:
    arp = (b"\xff" * 6 + bytes.fromhex("525400123499") + b"\x08\x06"
           + bytes.fromhex("0001080006040001525400123499c6120063") + b"\x00" * 6
           + bytes.fromhex("c6120002") + b"\x00" * 18)
    with grpc.insecure_channel(lan.state()["orchestrator"]) as ch:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
        capture = stub.Capture(orchestrator_pb2.OrchestratorServiceCaptureRequest(
            target="vm2", count=1, filter=netclient_pb2.CaptureFilter(
                ethertype=0x0806, src_mac="52:54:00:12:34:99")), timeout=20)
        deadline = time.monotonic() + 10
        got: list[bytes] = []

        def read() -> None:
            got.extend(item.frame.frame for item in capture)

        reader = threading.Thread(target=read)
        reader.start()
        # Inject until the capture (subscribed asynchronously) sees one.
        while reader.is_alive():
            assert time.monotonic() < deadline
            resp = stub.Inject(orchestrator_pb2.OrchestratorServiceInjectRequest(
                target="hub0:qemu0", frame=arp), timeout=10)
            assert resp.accepted == 1
            reader.join(0.2)
        with pytest.raises(grpc.RpcError) as err:
            stub.Inject(orchestrator_pb2.OrchestratorServiceInjectRequest(
                target="hub0:nosuch", frame=arp), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert got and got[0][:len(arp)] == arp


def test_cli_inject_and_capture_by_node_name(lan: Lan) -> None:
    """`virtwire capture vm2 -w F` and `virtwire inject hub0:qemu0` with no -s."""
    frame = (bytes.fromhex("525400123402525400123477") + b"\x88\xb5" + b"cli-node-form"
             ).ljust(60, b"\0")
    pcap = lan.dir / "vm2.pcap"
    cap = subprocess.Popen([*VIRTWIRE, "capture", "vm2", "-w", str(pcap), "--count", "1",
                            "--duration", "20", "--mac", "52:54:00:12:34:77"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=lan.env)
    deadline = time.monotonic() + 15
    while cap.poll() is None:
        assert time.monotonic() < deadline, "capture never saw the injected frame"
        out = lan.cli("inject", "hub0:qemu0", "--hex", frame.hex())
        assert out.returncode == 0 and "1 accepted" in out.stdout, out.stderr
        time.sleep(0.2)
    _, err = cap.communicate(timeout=10)
    assert cap.returncode == 0 and "captured 1 frames" in err, err
    assert read_pcap(pcap.read_bytes())[0][:len(frame)] == frame
    out = lan.cli("inject", "hub0:nosuch", "--hex", frame.hex())
    assert out.returncode == 2 and "nosuch" in out.stderr


def _kill_and_await_restart(lan: Lan, name: str) -> None:
    """SIGKILL service ``name``; wait until the orchestrator restarted it on its address."""
    before = next(s for s in _services(lan.status()) if s["name"] == name)
    os.kill(int(before["pid"]), signal.SIGKILL)
    deadline = time.monotonic() + 15
    while True:
        now = next(s for s in _services(lan.status()) if s["name"] == name)
        if now.get("restarts") and now["healthy"] and now["pid"] != before["pid"]:
            break
        assert time.monotonic() < deadline, now
        time.sleep(0.2)
    assert now["address"] == before["address"]


def test_killed_service_is_restarted(lan: Lan) -> None:
    _kill_and_await_restart(lan, "hub0")
    # The e1000s redial the restarted hub on their own.
    _until_ping(lan, "vm1", "vm2")
    assert lan.ping("vm2", "vm1") == 3
    out = lan.cli("ping", "vm2", "vm1", "--count", "2")
    assert out.returncode == 0 and "2 received" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("dead", ["vm2-e1000", "vm2-guestmem"])
def test_a_vm_reboots_when_its_nic_or_memory_dies(lan: Lan, dead: str) -> None:
    """A VM's e1000 or guestmem dies: it and the VM's later services restart."""
    before = {s["name"]: s for s in _services(lan.status())}
    hub_ports = _hub_ports(lan)
    os.kill(int(before[dead]["pid"]), signal.SIGKILL)
    rebooted = {"vm2-e1000", "vm2-guest"} | {dead}
    deadline = time.monotonic() + 30
    while True:
        now = {s["name"]: s for s in _services(lan.status())}
        if all(now[n].get("restarts", 0) > before[n].get("restarts", 0) and now[n]["healthy"]
               for n in rebooted):
            break
        assert time.monotonic() < deadline, now
        time.sleep(0.2)
    for name, svc in now.items():
        assert svc["address"] == before[name]["address"]
        if name not in rebooted:
            assert svc.get("restarts", 0) == before[name].get("restarts", 0), name
    _until_ping(lan, "vm1", "vm2", timeout=30)
    assert lan.ping("vm2", "vm1") == 3
    # The new e1000 dialled its old hub port: no port was added, vm2's is up.
    assert _hub_ports(lan) == hub_ports
    assert any("restarting with" in e for e in _events(lan)) or dead == "vm2-guest"


def _hub_ports(lan: Lan, hub_name: str = "hub0") -> dict[str, str]:
    hub = next(n for n in lan.status()["nodes"] if n["name"] == hub_name)
    return {nc["name"]: nc["info"].get("peer", "") for nc in hub["netclients"]}


SW_LAN = """\
name: swlan
nodes:
  sw: {kind: hub}
  vm1: {kind: vm, ip: 198.18.0.1/24, memory: 16M}
  vm2: {kind: vm, ip: 198.18.0.2/24, memory: 16M}
links: [[vm1, sw], [vm2, sw]]
"""


def test_a_hubs_ports_are_named_after_it_and_redialled_after_a_restart(tmp_path: Path) -> None:
    """Hub sw's ports are swportN (QEMU: hub0portN on hub 0); killed, the hub comes
    back with the same ports and each dialer redials its own."""
    lan = Lan(tmp_path, SW_LAN, name="swlan")
    out = lan.cli("up", str(lan.file), "--detach")
    assert out.returncode == 0, out.stdout + out.stderr
    try:
        ports = _hub_ports(lan, "sw")
        assert ports == {"swport1": "vm2", "swport0": "vm1"}, ports
        dialers = {nc["name"]: nc["info"]["peer"] for node in lan.status()["nodes"]
                   if node["name"] != "sw" for nc in node.get("netclients", [])}
        sw = next(s for s in _services(lan.status()) if s["name"] == "sw")
        assert dialers == {"vm1": f"{sw['address']}/swport0",
                           "vm2": f"{sw['address']}/swport1"}, dialers
        table = lan.cli("status", "swlan")
        assert table.returncode == 0 and "swport0" in table.stdout, table.stderr
        assert "hub0port" not in table.stdout
        assert lan.ping("vm1", "vm2") == 3

        _kill_and_await_restart(lan, "sw")
        _until_ping(lan, "vm1", "vm2")
        assert lan.ping("vm2", "vm1") == 3
        # Same names, no port added: each e1000 redialled the port it had.
        assert _hub_ports(lan, "sw") == ports
    finally:
        lan.cli("down", "swlan")


def _events(lan: Lan) -> list[str]:
    log = (lan.state_dir / "default.orchestrator.log").read_text()
    return [line for line in log.splitlines() if "restarting" in line]


def test_the_state_is_private_and_records_who_started(lan: Lan) -> None:
    """0700 dirs, a 0600 state file, and each pid with its start time and boot."""
    assert os.stat(lan.state_dir).st_mode & 0o777 == 0o700
    assert os.stat(lan.state_dir / "default").st_mode & 0o777 == 0o700
    assert os.stat(lan.state_dir / "default" / "state.json").st_mode & 0o777 == 0o600
    state = lan.state()
    assert state["boot_id"] == pids.boot_id() != ""
    assert state["orchestrator_start_time"] == pids.start_time(state["orchestrator_pid"]) > 0
    for svc in state["services"]:
        assert svc["start_time"] == pids.start_time(svc["pid"]) > 0, svc


def test_down_leaves_no_processes(lan: Lan) -> None:
    state = lan.state()
    pids = [int(s["pid"]) for s in state["services"]] + [int(state["orchestrator_pid"])]
    out = lan.cli("down")
    assert out.returncode == 0, out.stderr
    wait_gone(pids)
    assert not (lan.state_dir / "default").exists()
    out = lan.cli("status")
    assert out.returncode == 1 and "no LAN is running" in out.stderr


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_up_and_status_say_where_each_stream_and_dgram_port_listens(tmp_path: Path) -> None:
    """Process backend: each port listens on this host at its own address; up's events,
    status and status --json say where (publish: is for containers and changes nothing)."""
    lan = Lan(tmp_path)
    stream, dgram = _free_port(), _free_udp_port()
    lan.file.write_text(f"""\
name: ports
nodes:
  hub0: {{kind: hub}}
  qemu0: {{kind: tap, backend: stream, listen: 127.0.0.1:{stream}, publish: 127.0.0.1:1}}
  out0: {{kind: tap, backend: stream, connect: 127.0.0.1:1, reconnect: 1}}
  udp0: {{kind: tap, backend: dgram, local: 127.0.0.1:{dgram}, remote: 127.0.0.1:1}}
links: [[qemu0, hub0], [out0, hub0], [udp0, hub0]]
""")
    out = lan.cli("up", str(lan.file), "--detach")
    try:
        assert out.returncode == 0, out.stdout + out.stderr
        started = {line.split()[1]: line for line in out.stdout.splitlines()
                   if line.startswith("service_started")}
        assert started["qemu0"].endswith(f"; its stream port listens at 127.0.0.1:{stream}")
        assert started["udp0"].endswith(f"; its dgram port listens at 127.0.0.1:{dgram}")
        assert "listens" not in started["out0"] + started["hub0"]
        (done,) = [line for line in out.stdout.splitlines() if line.startswith("done")]
        assert done.endswith(f"LAN 'ports' is up; qemu0's stream port listens at 127.0.0.1:"
                             f"{stream}; udp0's dgram port listens at 127.0.0.1:{dgram}")
        with socket.create_connection(("127.0.0.1", stream), timeout=5):
            pass  # where it says, from this host

        table = lan.cli("status", "ports")
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        at = lines.index(next(line for line in lines if line.startswith("NODE ") and
                              "LISTENS AT (FROM THIS HOST)" in line))
        assert [line.split() for line in lines[at + 1:]] == [
            ["qemu0", "stream", f"127.0.0.1:{stream}"], ["udp0", "dgram", f"127.0.0.1:{dgram}"]]
        out = lan.cli("status", "ports", "--json")
        assert out.returncode == 0, out.stderr
        reachable = {n["name"]: n["reachable_at"] for n in json.loads(out.stdout)["nodes"]}
        assert reachable == {"hub0": "", "qemu0": f"127.0.0.1:{stream}", "out0": "",
                             "udp0": f"127.0.0.1:{dgram}"}
    finally:
        lan.cli("down", "ports")


def test_foreground_up_stops_on_down(tmp_path: Path) -> None:
    lan = Lan(tmp_path)
    lan.file.write_text("name: fg\nnodes:\n  hub0: {kind: hub}\n  vm1: {kind: vm, ip: "
                        "198.18.0.1/24}\nlinks:\n  - [vm1, hub0]\n")
    proc = subprocess.Popen([*VIRTWIRE, "up", str(lan.file)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=lan.env)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "is up" in line:
                break
        state = json.loads((lan.state_dir / "fg" / "state.json").read_text())
        assert state["orchestrator_pid"] == proc.pid
        out = lan.cli("down", "fg")
        assert out.returncode == 0, out.stderr
        assert proc.wait(15) == 0
        assert not any(pid_alive(int(s["pid"])) for s in state["services"])
        assert not (lan.state_dir / "fg").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_invalid_topology_exits_2(tmp_path: Path) -> None:
    lan = Lan(tmp_path)
    lan.file.write_text("name: bad\nnodes:\n  hub0: {kind: hub}\nlinks:\n  - [hub0, vm9]\n")
    out = lan.cli("up", str(lan.file), "--detach")
    assert out.returncode == 2
    assert f"{lan.file}:5" in out.stderr and "vm9" in out.stderr, out.stderr
    assert not (lan.state_dir / "bad").exists()


def test_killed_orchestrator_leaves_no_processes(tmp_path: Path) -> None:
    lan = Lan(tmp_path)
    lan.file.write_text("name: crash\nnodes:\n  hub0: {kind: hub}\n  vm1: {kind: vm}\n"
                        "links:\n  - [vm1, hub0]\n")
    out = lan.cli("up", str(lan.file), "--detach")
    assert out.returncode == 0, out.stdout + out.stderr
    state = json.loads((lan.state_dir / "crash" / "state.json").read_text())
    os.kill(state["orchestrator_pid"], signal.SIGKILL)  # PR_SET_PDEATHSIG takes the rest
    pids = [int(s["pid"]) for s in state["services"]]
    wait_gone(pids)
    out = lan.cli("down", "crash")  # forgets the dead LAN
    assert out.returncode == 0, out.stderr
    assert not (lan.state_dir / "crash").exists()


GRPCURL_LAN = """\
name: curl
nodes:
  hub0: {kind: hub}
  vm1: {kind: vm, ip: 198.18.0.1/24, memory: 16M}
  vm2: {kind: vm, ip: 198.18.0.2/24, memory: 16M}
links: [[vm1, hub0], [vm2, hub0]]
"""


def test_everything_through_grpcurl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The orchestrator service alone, driven by grpcurl as the README shows."""
    svc = "virtwire.v1.OrchestratorService"
    monkeypatch.setenv("VIRTWIRE_STATE_DIR", str(tmp_path / "state"))  # for the server
    with serve("orchestrator", [], tmp_path) as orch:
        addr = orch.address
        assert f"{svc}" in grpcurl(addr, "list").split()
        up = grpcurl("-d", json.dumps({"topology": GRPCURL_LAN, "source": "curl.yaml"}),
                     addr, f"{svc}/Up", timeout=120)
        events = [json.loads(e) for e in up.replace("}\n{", "}\0{").split("\0")]
        assert events[-1]["kind"] == "UP_EVENT_KIND_DONE", events
        ping = json.loads(grpcurl("-d", '{"from_node": "vm1", "to": "vm2", "count": 2}',
                                  addr, f"{svc}/Ping", timeout=60))
        assert ping["received"] == 2 and ping["address"] == "198.18.0.2"
        down = json.loads(grpcurl("-d", '{"target": "vm2", "up": false}', addr,
                                  f"{svc}/SetLink"))
        assert down["netclient"]["link_down"] is True
        status = json.loads(grpcurl(addr, f"{svc}/GetStatus"))
        assert status["state"] == "running" and len(status["nodes"]) == 3
        frame = base64.b64encode(bytes.fromhex("ffffffffffff020000000001" "88b5")
                                 + b"x" * 46).decode()
        got = json.loads(grpcurl("-d", json.dumps({"target": "hub0:hub0port1",
                                                   "frame": frame}), addr,
                                 f"{svc}/Inject"))
        assert got["accepted"] == 1
        bad = subprocess.run([str(GRPCURL), "-plaintext", "-d", '{"target": "nope"}',
                              addr, f"{svc}/SetLink"], capture_output=True, text=True,
                             timeout=20)
        assert bad.returncode != 0 and "NotFound" in bad.stderr
        stopped = json.loads(grpcurl(addr, f"{svc}/Down", timeout=60))
        assert stopped["stopped"] == 7


async def test_up_parses_the_topology_off_the_event_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While an Up's topology is being parsed, GetStatus is answered."""
    from virtwire.server import orchestrator as orchestrator_server

    parsing, release = threading.Event(), threading.Event()

    def slow_parse(*args: Any, **kwargs: Any) -> Any:
        parsing.set()
        release.wait(20)  # on the event loop this would hold every RPC
        raise orchestrator_server.TopologyError("<topology>", ["<topology>: parsed slowly"])

    monkeypatch.setattr(orchestrator_server, "parse_topology", slow_parse)
    host = orchestrator_server.OrchestratorServer(state_dir=tmp_path / "state")
    await host.start()
    try:
        async with grpc.aio.insecure_channel(host.address) as ch:
            stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
            up = stub.Up(orchestrator_pb2.OrchestratorServiceUpRequest(topology="name: x\n"))
            reader = asyncio.ensure_future(up.read())
            assert await asyncio.to_thread(parsing.wait, 20)
            status = await stub.GetStatus(
                orchestrator_pb2.OrchestratorServiceGetStatusRequest(), timeout=10)
            assert status.state == "idle" and not reader.done()
            release.set()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await reader
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "parsed slowly" in (info.value.details() or "")
    finally:
        release.set()
        await host.stop(grace=0.1)


async def test_up_refuses_a_topology_over_1_mib(tmp_path: Path) -> None:
    from virtwire.server.orchestrator import OrchestratorServer

    host = OrchestratorServer(state_dir=tmp_path / "state")
    await host.start()
    try:
        text = "name: big\nnodes: {hub0: {kind: hub}}\n" + "#" * (2 << 20) + "\n"
        async with grpc.aio.insecure_channel(host.address) as ch:
            stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _event in stub.Up(orchestrator_pb2.OrchestratorServiceUpRequest(
                        topology=text, source="big.yaml"), timeout=30):
                    pass
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "too large" in (info.value.details() or "")
        assert not (tmp_path / "state" / "big").exists()
    finally:
        await host.stop(grace=0.1)
