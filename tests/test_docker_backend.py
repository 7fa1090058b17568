"""`virtwire up --backend docker`: a LAN of containers, end to end.

The `engine` and `image` fixtures install docker.io when missing, start dockerd,
debootstrap the base image and build virtwire:<version> from host wheels (or
skip without root). The CLI then brings up a topology as one container per
service on an internal 198.18.0.0/15 network, pings across it, kills a
container (the orchestrator restarts it), and tears it down; afterwards no
container or network of the LAN is left, also after a SIGKILLed orchestrator.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from virtwire.errors import ConfigError
from virtwire.orchestrator.docker import AUTO_SUBNETS, check_subnet, pick_subnet

from support.docker_engine import docker
from support.procs import VIRTWIRE

pytestmark = pytest.mark.timeout(900)

TOPOLOGY = """\
name: {name}
nodes:
  hub0: {{kind: hub}}
  vm1: {{kind: vm, mac: "52:54:00:12:34:01", ip: 198.18.0.1/24, memory: 16M}}
  vm2: {{kind: vm, mac: "52:54:00:12:34:02", ip: 198.18.0.2/24, memory: 16M}}
  vm3:
    kind: vm
    mac: "52:54:00:12:34:03"
    memory: 16M
    bridge: {{ifname: vwb0, netns: lab, ip: 198.18.0.13/24}}
  tap0: {{kind: tap, backend: tap, ifname: vwt0}}
links:
  - [vm1, hub0]
  - [vm2, hub0]
  - [vm3, hub0]
  - [tap0, hub0]
"""


class DockerLan:
    def __init__(self, tmp: Path) -> None:
        self.name = f"vwd{uuid.uuid4().hex[:6]}"
        self.state_dir = tmp / "state"
        self.env = {**os.environ, "VIRTWIRE_STATE_DIR": str(self.state_dir)}
        self.file = tmp / "lan.yaml"
        self.file.write_text(TOPOLOGY.format(name=self.name))

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*VIRTWIRE, *args], capture_output=True, text=True,
                              timeout=timeout, env=self.env, stdin=subprocess.DEVNULL)

    def state(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(
            (self.state_dir / self.name / "state.json").read_text())
        return data

    def containers(self) -> list[str]:
        return docker("ps", "--all", "--format", "{{.Names}}", "--filter",
                      f"label=virtwire.lan={self.name}").stdout.split()

    def networks(self) -> list[str]:
        return docker("network", "ls", "--format", "{{.Name}}", "--filter",
                      f"label=virtwire.lan={self.name}").stdout.split()

    def ping(self) -> subprocess.CompletedProcess[str]:
        return self.cli("ping", "vm1", "vm2", "-c", "3", "--lan", self.name)


@pytest.fixture
def lan(image: str, tmp_path: Path) -> Iterator[DockerLan]:
    lan = DockerLan(tmp_path)
    try:
        yield lan
    finally:
        lan.cli("down", lan.name)
        for name in lan.containers():
            docker("rm", "--force", name, check=False)
        for name in lan.networks():
            docker("network", "rm", name, check=False)


def _inspect(name: str) -> dict[str, Any]:
    data: list[dict[str, Any]] = json.loads(docker("inspect", name).stdout)
    return data[0]


def test_subnets() -> None:
    assert str(pick_subnet([])) == "198.19.255.0/24"
    used = [ipaddress.ip_network("198.19.255.0/24"), ipaddress.ip_network("198.19.254.0/23")]
    assert str(pick_subnet(used)) == "198.19.253.0/24"
    assert pick_subnet([ipaddress.ip_network("198.19.0.0/17")]).subnet_of(AUTO_SUBNETS)
    assert str(check_subnet("198.18.99.0/24")) == "198.18.99.0/24"
    for bad, why in (("10.0.0.0/24", "not inside"), ("198.18.0.0/29", "too small"),
                     ("198.18.0.1/24", "host bits"), ("nonsense", "bad subnet"),
                     ("2001:db8::/64", "not inside")):
        with pytest.raises(ConfigError, match=why):
            check_subnet(bad)


def test_up_ping_restart_down(lan: DockerLan) -> None:
    up = lan.cli("up", str(lan.file), "--backend", "docker", "--detach")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "a container per service" in up.stdout
    state = lan.state()
    assert state["backend"] == "docker"
    services = {s["name"]: s for s in state["services"]}
    assert len(services) == 11

    # One container per service, on one internal network with a 198.18.0.0/15 subnet.
    names = sorted(lan.containers())
    assert names == sorted(f"virtwire-{lan.name}-{s}" for s in services)
    [net] = lan.networks()
    info = json.loads(docker("network", "inspect", net).stdout)[0]
    assert info["Internal"] is True
    subnet = ipaddress.IPv4Network(info["IPAM"]["Config"][0]["Subnet"])
    assert subnet.subnet_of(ipaddress.IPv4Network("198.18.0.0/15"))
    for svc in services.values():
        assert ipaddress.ip_address(svc["address"].rpartition(":")[0]) in subnet

    # Privileges only where a TAP is made; guest memory shared through IPC.
    for svc in services:
        host = _inspect(f"virtwire-{lan.name}-{svc}")
        caps = host["HostConfig"]["CapAdd"] or []
        devices = [d["PathOnHost"] for d in host["HostConfig"]["Devices"] or []]
        if svc == "tap0":
            assert caps == ["NET_ADMIN"] and devices == ["/dev/net/tun"]
            assert host["Config"]["User"] == "0"
        elif svc == "vm3-guest":  # a bridged guest also makes its netns
            assert caps == ["NET_ADMIN", "SYS_ADMIN"] and devices == ["/dev/net/tun"]
            assert host["Config"]["User"] == "0"
        else:
            assert not caps and not devices, svc
            assert host["Config"]["User"] != "0", svc
    assert _inspect(f"virtwire-{lan.name}-vm1-guestmem")["HostConfig"]["IpcMode"] == "shareable"
    assert "over shm" in docker("logs", f"virtwire-{lan.name}-vm1-e1000").stderr
    tap = docker("exec", f"virtwire-{lan.name}-tap0", "ip", "-br", "link", "show", "vwt0")
    assert tap.stdout.startswith("vwt0")

    ping = lan.ping()
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert "3 received" in ping.stdout
    # vm3's NIC is a TAP in netns "lab" inside its guest container: a kernel answers.
    assert "lab" in docker("exec", f"virtwire-{lan.name}-vm3-guest", "ip", "netns").stdout
    kernel = lan.cli("ping", "vm1", "198.18.0.13", "-c", "3", "--lan", lan.name)
    assert kernel.returncode == 0, kernel.stdout + kernel.stderr

    status = lan.cli("status", lan.name)
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count(" docker ") == 11

    # A container that dies is restarted on its address; the LAN works again.
    docker("kill", f"virtwire-{lan.name}-hub0")
    deadline = time.monotonic() + 60
    while True:
        hub = next(s for s in lan.state()["services"] if s["name"] == "hub0")
        if hub["restarts"] == 1 and hub["healthy"]:
            break
        assert time.monotonic() < deadline, lan.state()
        time.sleep(0.5)
    assert hub["address"] == services["hub0"]["address"]
    deadline = time.monotonic() + 60
    while (ping := lan.ping()).returncode != 0:
        assert time.monotonic() < deadline, ping.stdout + ping.stderr
        time.sleep(1)

    down = lan.cli("down", lan.name)
    assert down.returncode == 0, down.stdout + down.stderr
    assert lan.containers() == [] and lan.networks() == []
    assert not (lan.state_dir / lan.name).exists()


def test_down_after_the_orchestrator_was_killed(lan: DockerLan) -> None:
    up = lan.cli("up", str(lan.file), "--backend", "docker", "--detach",
                 "--subnet", "198.18.222.0/24")
    assert up.returncode == 0, up.stdout + up.stderr
    assert lan.state()["services"][0]["address"] == "198.18.222.10:50051"
    os.kill(lan.state()["orchestrator_pid"], signal.SIGKILL)
    down = lan.cli("down", lan.name)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "did not answer" in down.stderr
    assert lan.containers() == [] and lan.networks() == []


def test_bad_requests_exit_2_and_leave_nothing(lan: DockerLan) -> None:
    bad = lan.cli("up", str(lan.file), "--backend", "docker", "--subnet", "10.1.0.0/24")
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert "not inside 198.18.0.0/15" in bad.stderr
    bad = lan.cli("up", str(lan.file), "--backend", "podman")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    assert lan.containers() == [] and lan.networks() == []
