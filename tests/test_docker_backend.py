"""`virtwire up --backend docker`: a LAN of containers, end to end.

The `engine` and `image` fixtures install docker.io when missing, start dockerd,
debootstrap the base image and build virtwire:<version> from host wheels (or
skip without root). The CLI then brings up a topology as one container per
service on an internal 198.18.0.0/15 network, pings across it, kills a
container (the orchestrator restarts it), and tears it down; afterwards no
container or network of the LAN is left, also after a SIGKILLed orchestrator.
Without ``tls:`` every container's service runs with ``--insecure`` (and logs
so); a second LAN runs with ``tls:``: each container holds only its own
certificate, read-only, and a plaintext client and a viewer are refused.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import grpc
import pytest

from virtwire import certs, tls
from virtwire.errors import ConfigError
from virtwire.guest.responder import ARP_REPLY, ARP_REQUEST, build_arp, parse_arp
from virtwire.net.eth import parse_mac
from virtwire.orchestrator.pki import LanPki
from virtwire.orchestrator.runtime.docker import DockerRuntime
from virtwire.orchestrator.spec import HubServiceSpec
from virtwire.orchestrator.subnet import AUTO_SUBNETS, check_subnet, pick_subnet
from virtwire.topology import load_topology
from virtwire.v1 import hub_pb2, hub_pb2_grpc, netclient_pb2, netclient_pb2_grpc

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


# Kept small (CI time): a hub, two VMs and a Linux TAP (a root container).
TLS_TOPOLOGY = """\
name: {name}
tls: {{dir: pki}}
nodes:
  hub0: {{kind: hub}}
  vm1: {{kind: vm, mac: "52:54:00:12:34:01", ip: 198.18.0.1/24, memory: 16M}}
  vm2: {{kind: vm, mac: "52:54:00:12:34:02", ip: 198.18.0.2/24, memory: 16M}}
  tap0: {{kind: tap, backend: tap, ifname: vwt0}}
links:
  - [vm1, hub0]
  - [vm2, hub0]
  - [tap0, hub0]
"""


class DockerLan:
    def __init__(self, tmp: Path, topology: str = TOPOLOGY) -> None:
        self.name = f"vwd{uuid.uuid4().hex[:6]}"
        self.state_dir = tmp / "state"
        self.env = {**os.environ, "VIRTWIRE_STATE_DIR": str(self.state_dir)}
        self.file = tmp / "lan.yaml"
        self.file.write_text(topology.format(name=self.name))

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

    def ping_again(self, timeout: float = 60) -> None:
        """Ping until vm1 reaches vm2 again (after a restart)."""
        deadline = time.monotonic() + timeout
        while (ping := self.ping()).returncode != 0:
            assert time.monotonic() < deadline, ping.stdout + ping.stderr
            time.sleep(1)

    def down_leaves_nothing(self) -> None:
        down = self.cli("down", self.name)
        assert down.returncode == 0, down.stdout + down.stderr
        assert self.containers() == [] and self.networks() == []
        assert not (self.state_dir / self.name).exists()


def _clean_up(lan: DockerLan) -> None:
    lan.cli("down", lan.name)
    for name in lan.containers():
        docker("rm", "--force", name, check=False)
    for name in lan.networks():
        docker("network", "rm", name, check=False)


@pytest.fixture
def lan(image: str, tmp_path: Path) -> Iterator[DockerLan]:
    lan = DockerLan(tmp_path)
    try:
        yield lan
    finally:
        _clean_up(lan)


@pytest.fixture
def tls_lan(image: str, tmp_path: Path) -> Iterator[DockerLan]:
    """TLS_TOPOLOGY, with a CA in tmp/pki."""
    certs.init_ca(tmp_path / "pki")
    lan = DockerLan(tmp_path, TLS_TOPOLOGY)
    try:
        yield lan
    finally:
        _clean_up(lan)


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
        # No tls: in the topology: plaintext off loopback, said out loud.
        assert host["Config"]["Cmd"][-1] == "--insecure", svc
        assert not host["Mounts"], svc
    assert "WITHOUT TLS" in docker("logs", f"virtwire-{lan.name}-hub0").stderr
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
    lan.ping_again()
    lan.down_leaves_nothing()


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


# --- stream ports: where they listen, and publish: ----------------------------------------

PORTS_TOPOLOGY = """\
name: {name}
nodes:
  hub0: {{kind: hub}}
  vm1: {{kind: vm, mac: "52:54:00:12:34:01", ip: 198.18.0.1/24, memory: 16M}}
  qemu0: {{kind: tap, backend: stream, listen: 127.0.0.1:10555, publish: "127.0.0.1:PORT"}}
  qemu1: {{kind: tap, backend: stream, listen: 127.0.0.1:10556}}
links:
  - [vm1, hub0]
  - [qemu0, hub0]
  - [qemu1, hub0]
"""


def _arp_through_stream_port(address: str) -> None:
    """QEMU's -netdev stream framing (4-byte big-endian length), as a raw client: an
    ARP request for vm1 in at ``address`` (HOST:PORT), vm1's reply back out."""
    host, _, port = address.rpartition(":")
    me = parse_mac("52:54:00:aa:bb:cc")
    arp = build_arp(ARP_REQUEST, me, IPv4Address("198.18.0.9"), b"\0" * 6,
                    IPv4Address("198.18.0.1"), eth_dst=b"\xff" * 6)
    deadline = time.monotonic() + 30
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        buf = b""
        while time.monotonic() < deadline:
            sock.sendall(struct.pack(">I", len(arp)) + arp)
            sock.settimeout(1)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            assert chunk, f"{address}: the stream closed"
            buf += chunk
            while len(buf) >= 4 and len(buf) >= 4 + struct.unpack(">I", buf[:4])[0]:
                n = struct.unpack(">I", buf[:4])[0]
                frame, buf = buf[4:4 + n], buf[4 + n:]
                if frame[12:14] == b"\x08\x06":
                    reply = parse_arp(frame)
                    if reply.op == ARP_REPLY and reply.spa == IPv4Address("198.18.0.1"):
                        return
    pytest.fail(f"no ARP reply from vm1 through {address}")


def test_stream_ports_say_where_they_listen_and_publish_on_the_host(
        image: str, tmp_path: Path) -> None:
    """Each stream port is reachable from the host where up and status say: qemu1 at
    its container's address on the LAN's network, qemu0 (publish:) at a host port."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = int(free.getsockname()[1])
    lan = DockerLan(tmp_path, PORTS_TOPOLOGY.replace("PORT", str(port)))
    try:
        up = lan.cli("up", str(lan.file), "--backend", "docker", "--detach")
        assert up.returncode == 0, up.stdout + up.stderr
        qemu1 = next(s for s in lan.state()["services"] if s["name"] == "qemu1")
        container_ip = qemu1["address"].rpartition(":")[0]
        assert f"its stream port listens at 127.0.0.1:{port}" in up.stdout
        assert f"qemu1's stream port listens at {container_ip}:10556" in up.stdout

        status = lan.cli("status", lan.name, "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        reachable = {n["name"]: n["reachable_at"] for n in json.loads(status.stdout)["nodes"]}
        assert reachable == {"hub0": "", "vm1": "", "qemu0": f"127.0.0.1:{port}",
                             "qemu1": f"{container_ip}:10556"}
        table = lan.cli("status", lan.name).stdout.splitlines()
        # NODE PORT LISTENS AT, then the RELAY column of a published port.
        (relayed,) = [line.split() for line in table
                      if line.split()[:3] == ["qemu0", "stream", f"127.0.0.1:{port}"]]
        assert " ".join(relayed[3:]).startswith("0 accepted, 0 open, 0 refused"), relayed
        assert any(line.split()[:3] == ["qemu1", "stream", f"{container_ip}:10556"]
                   for line in table)

        _arp_through_stream_port(f"127.0.0.1:{port}")
        _arp_through_stream_port(f"{container_ip}:10556")

        # The orchestrator relays the published port (orchestrator/forward.py): the
        # LAN keeps one internal network, no container gets a route out or a binding.
        nets = {n: json.loads(docker("network", "inspect", n).stdout)[0]
                for n in lan.networks()}
        assert set(nets) == {f"virtwire-{lan.name}"}
        assert nets[f"virtwire-{lan.name}"]["Internal"] is True
        for svc in ("hub0", "qemu0", "qemu1"):
            info = _inspect(f"virtwire-{lan.name}-{svc}")
            assert not info["HostConfig"]["PortBindings"], svc
            assert set(info["NetworkSettings"]["Networks"]) == {f"virtwire-{lan.name}"}, svc
        lan.down_leaves_nothing()
    finally:
        _clean_up(lan)


# --- with tls: -------------------------------------------------------------------------

def test_identity_mounts_without_an_engine(tmp_path: Path) -> None:
    """What each container gets, planned without Docker: its own files only, read-only,
    owned by the user it runs as, issued once (a restart gets the same)."""
    certs.init_ca(tmp_path / "pki")
    topo_file = tmp_path / "lan.yaml"
    topo_file.write_text(TLS_TOPOLOGY.format(name="plan"))
    topo = load_topology(topo_file)
    pki = LanPki(tmp_path / "pki", tmp_path / "state" / "tls")
    backend = DockerRuntime(topo, pki=pki)
    plain = DockerRuntime(topo)
    for i, svc in enumerate(topo.services):
        ip = f"198.19.7.{10 + i}"
        mounts = backend.identity_mounts(svc.name, ip)
        assert sorted(m["bind"] for m in mounts.values()) == sorted([
            "/run/secrets/ca.pem", f"/run/secrets/{svc.name}.pem",
            f"/run/secrets/{svc.name}-key.pem"])
        assert all(m["mode"] == "ro" for m in mounts.values())
        files = {m["bind"].rpartition("/")[2]: Path(src) for src, m in mounts.items()}
        assert {p.parent for p in files.values()} == {
            tmp_path / "state" / "tls" / "containers" / svc.name}
        key = files[f"{svc.name}-key.pem"]
        assert key.stat().st_mode & 0o777 == 0o600
        root = svc.name == "tap0"
        assert backend._user(svc.name) == ("0" if root else (
            "10000:10000" if os.geteuid() == 0 else f"{os.getuid()}:{os.getgid()}"))
        if os.geteuid() == 0:
            assert (key.stat().st_uid, key.stat().st_gid) == ((0, 0) if root else (10000, 10000))
        info = certs.describe(files[f"{svc.name}.pem"].read_bytes())
        assert info["role"] == "service" and info["name"] == svc.name
        assert {ip, svc.name} <= set(info["sans"].split(","))
        assert files["ca.pem"].read_bytes() == (tmp_path / "pki" / "ca.pem").read_bytes()
        # A restarted container mounts the same files, not a new certificate.
        before = key.read_bytes()
        assert backend.identity_mounts(svc.name, ip) == mounts and key.read_bytes() == before
        assert plain.identity_mounts(svc.name, ip) == {}
        assert plain._user(svc.name) == ("0" if root else None)
    spec = HubServiceSpec()
    assert backend._command("hub0", spec)[-6:] == [
        "--tls-ca", "/run/secrets/ca.pem", "--tls-cert", "/run/secrets/hub0.pem",
        "--tls-key", "/run/secrets/hub0-key.pem"]
    assert plain._command("hub0", spec)[-1] == "--insecure"


def _call(target: str, credentials: grpc.ChannelCredentials | None, mutate: bool
          ) -> grpc.StatusCode:
    """AddPort (a controller's call) or ListNetClients (a read) on a hub, from the host."""
    channel = (grpc.secure_channel(target, credentials) if credentials is not None
               else grpc.insecure_channel(target))
    with channel:
        try:
            if mutate:
                hub_pb2_grpc.HubServiceStub(channel).AddPort(
                    hub_pb2.AddPortRequest(name="intruder"), timeout=10)
            else:
                netclient_pb2_grpc.NetClientServiceStub(channel).ListNetClients(
                    netclient_pb2.ListNetClientsRequest(), timeout=10)
        except grpc.RpcError as exc:
            code: grpc.StatusCode = exc.code()
            return code
    return grpc.StatusCode.OK


def test_tls_lan(tls_lan: DockerLan, tmp_path: Path) -> None:
    lan = tls_lan
    up = lan.cli("up", str(lan.file), "--backend", "docker", "--detach")
    assert up.returncode == 0, up.stdout + up.stderr
    services = {s["name"]: s for s in lan.state()["services"]}
    assert len(services) == 8
    tls_dir = lan.state_dir / lan.name / "tls"

    for svc in services:
        info = _inspect(f"virtwire-{lan.name}-{svc}")
        cmd = info["Config"]["Cmd"]
        assert "--insecure" not in cmd
        assert cmd[cmd.index("--tls-cert") + 1] == f"/run/secrets/{svc}.pem"
        assert cmd[cmd.index("--tls-key") + 1] == f"/run/secrets/{svc}-key.pem"
        assert cmd[cmd.index("--tls-ca") + 1] == "/run/secrets/ca.pem"
        # Only its own certificate and key, and the CA: read-only bind mounts.
        mounts = info["Mounts"]
        assert sorted(m["Destination"] for m in mounts) == sorted([
            "/run/secrets/ca.pem", f"/run/secrets/{svc}.pem", f"/run/secrets/{svc}-key.pem"])
        for mount in mounts:
            assert mount["Type"] == "bind" and mount["RW"] is False, mount
            assert Path(mount["Source"]).parent == tls_dir / "containers" / svc
        assert info["Config"]["User"] == ("0" if svc == "tap0" else "10000:10000"), svc
        assert f"VIRTWIRE_TLS_NAME={svc}" in info["Config"]["Env"]
    hub_log = docker("logs", f"virtwire-{lan.name}-hub0")
    assert "WITHOUT TLS" not in hub_log.stdout + hub_log.stderr
    # The CLI inside a container speaks TLS with that container's identity.
    listed = docker("exec", f"virtwire-{lan.name}-hub0", "virtwire", "list", "-s",
                    "127.0.0.1:50051", check=False)
    assert listed.returncode == 0 and "tap0" in listed.stdout, listed.stdout + listed.stderr

    ping = lan.ping()
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert "3 received" in ping.stdout
    # Health checks and status over TLS: every service serving (exit 1 otherwise).
    status = lan.cli("status", lan.name)
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count(" docker ") == 8
    assert "NOT SERVING" not in status.stdout and status.stdout.count(" serving ") == 8

    # From the host: plaintext is refused at the handshake, a viewer may read but
    # not change the hub, the LAN's controller may do both.
    hub = services["hub0"]["address"]
    pki = tmp_path / "pki"
    certs.Authority.load(pki).issue_to(pki, "viewer", role="viewer")
    viewer = tls.TlsConfig.from_dir(pki, "viewer").channel_credentials()
    assert _call(hub, None, mutate=True) == grpc.StatusCode.UNAVAILABLE
    assert _call(hub, None, mutate=False) == grpc.StatusCode.UNAVAILABLE
    assert _call(hub, viewer, mutate=False) == grpc.StatusCode.OK
    assert _call(hub, viewer, mutate=True) == grpc.StatusCode.PERMISSION_DENIED
    other = certs.init_ca(tmp_path / "other")
    other.issue_to(tmp_path / "other", "controller", role="controller")
    stranger = tls.TlsConfig.from_dir(tmp_path / "other", "controller").channel_credentials()
    assert _call(hub, stranger, mutate=True) == grpc.StatusCode.UNAVAILABLE
    denied = docker("logs", f"virtwire-{lan.name}-hub0")
    assert "denied /virtwire.v1.HubService/AddPort" in denied.stdout + denied.stderr

    # A killed container comes back with the same identity; the LAN works again.
    key = tls_dir / "containers" / "hub0" / "hub0-key.pem"
    before = key.read_bytes()
    docker("kill", f"virtwire-{lan.name}-hub0")
    deadline = time.monotonic() + 60
    while True:
        rec = next(s for s in lan.state()["services"] if s["name"] == "hub0")
        if rec["restarts"] == 1 and rec["healthy"]:
            break
        assert time.monotonic() < deadline, lan.state()
        time.sleep(0.5)
    assert key.read_bytes() == before
    lan.ping_again()
    lan.down_leaves_nothing()


def test_identity_mounts_of_a_non_root_orchestrator(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Not root: no chown; unprivileged containers run as the orchestrator's uid:gid."""
    import virtwire.orchestrator.runtime.docker as docker_mod

    monkeypatch.setattr(docker_mod.os, "geteuid", lambda: 4242)
    monkeypatch.setattr(docker_mod.os, "getuid", lambda: 4242)
    monkeypatch.setattr(docker_mod.os, "getgid", lambda: 4343)
    chowned: list[str] = []
    monkeypatch.setattr(docker_mod.os, "chown", lambda path, *ids: chowned.append(path))
    certs.init_ca(tmp_path / "pki")
    topo_file = tmp_path / "lan.yaml"
    topo_file.write_text(TLS_TOPOLOGY.format(name="plan"))
    backend = DockerRuntime(load_topology(topo_file),
                            pki=LanPki(tmp_path / "pki", tmp_path / "state" / "tls"))
    for name in ("hub0", "tap0"):
        assert backend.identity_mounts(name, "198.19.7.10")
    assert chowned == []
    assert backend._user("hub0") == "4242:4343" and backend._user("tap0") == "0"
