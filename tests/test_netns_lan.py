"""netns nodes on learning switches, brought up by `virtwire up` (root, process backend).

Five network namespaces (real Linux stacks) on two switches joined by a trunk:

    h1 (VLAN 10) --a  sw0  trunk == [10, 20] == up  sw1  a-- h4 (VLAN 10)
    h2 (VLAN 10) --b                                     b-- h5 (VLAN 20)
    h3 (VLAN 20) --c

All five share one IPv4 subnet, so only the switches' VLANs keep VLAN 20 from
VLAN 10; h3 and h5 also talk IPv6. Startup commands turn IPv6 off on the
VLAN 10 hosts, so they send nothing unasked (the aging checks rely on it).
Pings are busybox's, run in a namespace by `virtwire exec`; frames leaving
switch ports are counted by the orchestrator's CountFrames.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from virtwire.v1 import netclient_pb2, orchestrator_pb2, orchestrator_pb2_grpc

from support.netns import list_netns, require_root
from support.procs import VIRTWIRE

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

NO_V6 = "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.eth0.disable_ipv6=1"

TOPOLOGY = f"""\
name: nslan
nodes:
  sw0:
    kind: switch
    aging: 6s
    ports:
      a: {{vlan: 10}}
      b: {{vlan: 10}}
      c: {{vlan: 20}}
      trunk: {{trunk: [10, 20]}}
  sw1:
    kind: switch
    aging: 6s
    ports:
      a: {{vlan: 10}}
      b: {{vlan: 20}}
      up: {{trunk: [10, 20]}}
  h1:
    kind: netns
    interfaces: {{eth0: {{addresses: [198.18.10.1/24]}}}}
    commands: ["{NO_V6}"]
  h2:
    kind: netns
    interfaces: {{eth0: {{addresses: [198.18.10.2/24], mtu: 1400}}}}
    routes: [{{to: 198.18.99.0/24, via: 198.18.10.1}}]
    commands: ["{NO_V6}"]
  h3:
    kind: netns
    interfaces: {{eth0: {{addresses: [198.18.10.3/24, "fd00:20::3/64"]}}}}
  h4:
    kind: netns
    interfaces: {{eth0: {{addresses: [198.18.10.4/24]}}}}
    commands: ["{NO_V6}"]
  h5:
    kind: netns
    interfaces: {{eth0: {{addresses: [198.18.10.5/24, "fd00:20::5/64"]}}}}
links:
  - [h1, sw0:a]
  - [h2:eth0, sw0:b]
  - [h3, sw0:c]
  - [h4, sw1:a]
  - [h5, sw1:b]
  - [sw1:up, sw0:trunk]
"""


class NetnsLan:
    def __init__(self, tmp: Path, name: str = "nslan", text: str = TOPOLOGY) -> None:
        self.dir = tmp
        self.name = name
        self.env = {**os.environ, "VIRTWIRE_STATE_DIR": str(tmp / "state")}
        self.file = tmp / f"{name}.yaml"
        self.file.write_text(text)
        self.macs: dict[str, str] = {}

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*VIRTWIRE, *args], capture_output=True, text=True,
                              timeout=timeout, env=self.env)

    def exec(self, node: str, *cmd: str) -> subprocess.CompletedProcess[str]:
        return self.cli("exec", node, "--lan", self.name, "--", *cmd)

    def ping(self, node: str, ip: str, count: int = 1) -> bool:
        out = self.exec(node, "busybox", "ping", "-c", str(count), "-W", "1", ip)
        return out.returncode == 0

    def mac(self, node: str) -> str:
        if node not in self.macs:
            self.macs[node] = self.exec(node, "cat", "/sys/class/net/eth0/address").stdout.strip()
        return self.macs[node]

    def fdb(self, switch: str) -> set[tuple[str, int, str]]:
        out = self.cli("fdb", switch, "--lan", self.name, "--json")
        assert out.returncode == 0, out.stderr
        return {(e["mac"], e["vlan"], e["port"]) for e in json.loads(out.stdout)["entries"]}

    def state(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(
            (self.dir / "state" / self.name / "state.json").read_text())
        return data


@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsLan]:
    require_root()
    lan = NetnsLan(tmp_path_factory.mktemp("nslan"))
    out = lan.cli("up", str(lan.file), "--detach")
    assert out.returncode == 0, out.stdout + out.stderr
    try:
        yield lan
    finally:
        down = lan.cli("down", "nslan")
        assert down.returncode == 0, down.stderr
        assert not [n for n in list_netns() if n.startswith("vw-nslan-")]


def test_vlan10_hosts_ping_each_other_across_the_switch(lan: NetnsLan) -> None:
    assert lan.ping("h1", "198.18.10.2")
    assert lan.ping("h2", "198.18.10.1")


def test_a_vlan20_host_cannot_reach_vlan10(lan: NetnsLan) -> None:
    assert not lan.ping("h3", "198.18.10.1")
    assert not lan.ping("h1", "198.18.10.3")


def test_the_trunk_carries_both_vlans_to_the_second_switch(lan: NetnsLan) -> None:
    h1, h3 = lan.mac("h1"), lan.mac("h3")
    assert lan.ping("h1", "198.18.10.4")  # VLAN 10, sw0 -> trunk -> sw1
    assert (h1, 10, "up") in lan.fdb("sw1")  # (within the 6 s aging)
    assert lan.ping("h3", "198.18.10.5")  # VLAN 20 the same way
    assert (h3, 20, "up") in lan.fdb("sw1")
    assert lan.exec("h3", "busybox", "ping", "-6", "-c", "2", "-W", "2",
                    "fd00:20::5").returncode == 0
    assert not lan.ping("h4", "198.18.10.5")  # VLAN 10 on sw1 does not see VLAN 20


def test_exec_shows_the_interfaces_addresses_routes_and_commands(lan: NetnsLan) -> None:
    out = lan.exec("h2", "ip", "-br", "addr", "show")
    assert out.returncode == 0, out.stderr
    eth0 = next(line for line in out.stdout.splitlines() if line.startswith("eth0"))
    assert "198.18.10.2/24" in eth0, out.stdout
    assert ",UP," in lan.exec("h2", "ip", "link", "show", "eth0").stdout
    assert [line.split()[0] for line in out.stdout.splitlines()] == ["lo", "eth0"]
    assert "mtu 1400" in lan.exec("h2", "ip", "link", "show", "eth0").stdout
    assert "198.18.99.0/24 via 198.18.10.1 dev eth0" in lan.exec("h2", "ip", "route").stdout
    # The startup command ran; h3, without it, has its IPv6 address.
    assert lan.exec("h2", "cat", "/proc/sys/net/ipv6/conf/eth0/disable_ipv6").stdout == "1\n"
    assert "fd00:20::3/64" in lan.exec("h3", "ip", "-br", "addr", "show", "eth0").stdout
    # The command's exit status is exec's; a node exec cannot enter is an error.
    assert lan.exec("h1", "sh", "-c", "exit 7").returncode == 7
    bad = lan.exec("sw0", "true")
    assert bad.returncode != 0 and "not a node of LAN 'nslan' that exec can enter" in bad.stderr
    assert lan.cli("exec", "h1", "--lan", "nslan").returncode != 0  # no command


def _count(lan: NetnsLan, targets: list[str], match: str, traffic: list[str],
           duration_ms: int = 1200) -> dict[str, int]:
    """CountFrames of ``match`` leaving each target port while ``traffic`` runs."""
    counts: dict[str, int] = {}
    with grpc.insecure_channel(lan.state()["orchestrator"]) as ch:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)

        def count(target: str) -> None:
            resp = stub.CountFrames(orchestrator_pb2.OrchestratorServiceCountFramesRequest(
                target=target, match=match, direction=netclient_pb2.DIRECTION_TX,
                duration_ms=duration_ms), timeout=30)
            counts[target] = int(resp.count)

        proc = subprocess.Popen([*VIRTWIRE, "exec", *traffic], env=lan.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.5)  # exec starts, the first request and reply: both MACs learned
        threads = [threading.Thread(target=count, args=(t,)) for t in targets]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert proc.wait(30) == 0
    return counts


def test_a_unicast_to_a_learned_mac_reaches_only_its_port(lan: NetnsLan) -> None:
    h2 = lan.mac("h2")
    assert lan.ping("h1", "198.18.10.2", count=1)  # ARP resolved both ways
    got = _count(lan, ["sw0:b", "sw0:c", "sw0:trunk"], f"eth.dst={h2}",
                 ["h1", "--", "busybox", "ping", "-c", "20", "-i", "0.2", "198.18.10.2"])
    assert got["sw0:b"] >= 4 and got["sw0:c"] == 0 and got["sw0:trunk"] == 0, got


def test_mac_aging_forgets_a_silent_host(lan: NetnsLan) -> None:
    h4 = lan.mac("h4")
    assert lan.ping("h4", "198.18.10.1", count=1)
    assert (h4, 10, "a") in lan.fdb("sw1")
    assert (h4, 10, "trunk") in lan.fdb("sw0")
    # Linux would confirm a neighbour a ping used with a unicast ARP probe 5 s
    # later (ICMP does not confirm reachability), which the switches learn again:
    # forget the neighbours on both ends so h4 and h1 really say nothing.
    for node in ("h4", "h1"):
        out = lan.exec(node, "ip", "neigh", "flush", "dev", "eth0")
        assert out.returncode == 0, out.stderr
    deadline = time.monotonic() + 20  # aging 6 s; each CLI call takes a while
    while time.monotonic() < deadline:
        if h4 not in {mac for mac, _, _ in lan.fdb("sw1")} | \
                {mac for mac, _, _ in lan.fdb("sw0")}:
            break
        time.sleep(1)
    assert h4 not in {mac for mac, _, _ in lan.fdb("sw1")}
    assert h4 not in {mac for mac, _, _ in lan.fdb("sw0")}


def test_fdb_flush_forgets_what_was_learned(lan: NetnsLan) -> None:
    h1, h2 = lan.mac("h1"), lan.mac("h2")
    assert lan.ping("h1", "198.18.10.2", count=1)
    before = lan.fdb("sw0")
    assert (h1, 10, "a") in before and (h2, 10, "b") in before
    out = lan.cli("fdb", "sw0", "--lan", "nslan", "--flush", "--port", "b")
    assert out.returncode == 0 and "flushed" in out.stdout, out.stderr
    assert h2 not in {mac for mac, _, _ in lan.fdb("sw0")}
    assert lan.ping("h1", "198.18.10.2", count=1)  # and it is learned again
    assert (h2, 10, "b") in lan.fdb("sw0")


def test_capture_on_a_netns_interface(lan: NetnsLan) -> None:
    """A netns interface is NODE:IFACE for the verbs on NetClients (its tap service)."""
    out = lan.cli("status", "nslan", "--json")
    nodes = {n["name"]: n for n in json.loads(out.stdout)["nodes"]}
    assert nodes["h2"]["kind"] == "netns"
    assert [nc["name"] for nc in nodes["h2"]["netclients"]] == ["h2-eth0"]
    link = lan.cli("link", "h2:eth0", "down", "--lan", "nslan")
    assert link.returncode == 0, link.stderr
    try:
        assert not lan.ping("h1", "198.18.10.2", count=1)
    finally:
        assert lan.cli("link", "h2:eth0", "up", "--lan", "nslan").returncode == 0
    assert lan.ping("h1", "198.18.10.2")


SMALL = """\
name: {name}
nodes:
  hub0: {{kind: hub}}
  n1:
    kind: netns
    interfaces: {{eth0: {{addresses: [198.18.30.1/24]}}}}
    commands: [{command}]
links:
  - [n1, hub0]
"""


def test_a_restarted_interface_is_wired_again(lan: NetnsLan) -> None:
    pid = next(s["pid"] for s in lan.state()["services"] if s["name"] == "h2-eth0")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while next(s["restarts"] for s in lan.state()["services"] if s["name"] == "h2-eth0") < 1:
        assert time.monotonic() < deadline, "h2-eth0 was not restarted"
        time.sleep(0.2)
    assert "198.18.10.2/24" in lan.exec("h2", "ip", "-br", "addr", "show", "eth0").stdout
    assert "198.18.99.0/24 via 198.18.10.1" in lan.exec("h2", "ip", "route").stdout
    assert lan.ping("h1", "198.18.10.2", count=2)
    # Its MAC is the one it had (its peers' ARP caches stay right).
    assert lan.exec("h2", "cat", "/sys/class/net/eth0/address").stdout.strip() == lan.mac("h2")


def test_a_failed_up_and_a_crashed_orchestrator_leave_no_namespace(tmp_path: Path) -> None:
    require_root()
    bad = NetnsLan(tmp_path, "nsfail", SMALL.format(name="nsfail", command="'exit 3'"))
    out = bad.cli("up", str(bad.file), "--detach")
    assert out.returncode != 0 and "exited 3" in out.stdout + out.stderr, out.stdout
    assert not [n for n in list_netns() if n.startswith("vw-nsfail-")]
    # The orchestrator is SIGKILLed: 'down' still removes the namespace it made.
    ok = NetnsLan(tmp_path, "nscrash", SMALL.format(name="nscrash", command="'true'"))
    assert ok.cli("up", str(ok.file), "--detach").returncode == 0
    assert "vw-nscrash-n1" in list_netns()
    os.kill(ok.state()["orchestrator_pid"], signal.SIGKILL)
    time.sleep(0.5)
    assert ok.cli("down", "nscrash").returncode == 0
    assert "vw-nscrash-n1" not in list_netns()
