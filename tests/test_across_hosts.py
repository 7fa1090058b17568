"""One LAN across two hosts: `virtwire serve orchestrator` on each, `up` with host:.

Two network namespaces play two hosts, joined by a veth pair on
198.18.7.0/24 and with no other route. Each runs `virtwire serve
orchestrator` on its own address. `virtwire up` (in host A) starts hub0 and
vm1 on A and vm2 plus a QEMU-compatible stream port on B through those
orchestrators; vm2's e1000 dials the hub on A over TCP. Then: ping crosses
between the hosts, a client on B speaking QEMU's stream framing gets vm1's
ARP reply from A, a real QEMU VM joined to that port on B pings both
virtwire VMs (and is pinged from vm1), a killed hub is restarted through its host and the LAN
works again, and `down` leaves no service on either host.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from virtwire import certs
from virtwire.guest.responder import ARP_REPLY, ARP_REQUEST, build_arp, parse_arp
from virtwire.net.eth import parse_mac

from support import netns
from support.procs import VIRTWIRE, wait_gone
from support.qemu_vm import QemuVM, require_qemu, stream_netdev

pytestmark = pytest.mark.timeout(300)

A_IP, B_IP = "198.18.7.1", "198.18.7.2"
AGENT_PORT = 50050
STREAM_PORT = 10555

TOPOLOGY = f"""\
name: twohosts
hosts:
  a: {{address: {A_IP}}}
  b: {{address: {B_IP}, port: {AGENT_PORT}}}
nodes:
  hub0: {{kind: hub, host: a}}
  vm1: {{kind: vm, mac: "52:54:00:12:34:01", ip: 198.18.0.1/24, memory: 16M, host: a}}
  vm2: {{kind: vm, mac: "52:54:00:12:34:02", ip: 198.18.0.2/24, memory: 16M, host: b}}
  qemu0: {{kind: tap, backend: stream, listen: "127.0.0.1:{STREAM_PORT}", host: b}}
links:
  - [vm1, hub0]
  - [vm2, hub0]
  - [qemu0, hub0:qemu]
"""

#: Run in host B: QEMU's -netdev stream framing (4-byte big-endian length),
#: an ARP request in, the first ARP frame out, printed as hex.
STREAM_CLIENT = """\
import socket, struct, sys
frame = bytes.fromhex(sys.argv[2])
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=20)
for _ in range(3):
    s.sendall(struct.pack(">I", len(frame)) + frame)
buf = b""
while True:
    while len(buf) < 4 or len(buf) < 4 + struct.unpack(">I", buf[:4])[0]:
        chunk = s.recv(65536)
        if not chunk:
            sys.exit("stream closed")
        buf += chunk
    n = struct.unpack(">I", buf[:4])[0]
    got, buf = buf[4:4 + n], buf[4 + n:]
    if got[12:14] == b"\\x08\\x06":
        print(got.hex())
        break
"""


@dataclass
class Host:
    ns: netns.NetNs
    address: str
    state_dir: Path
    proc: subprocess.Popen[bytes] | None = None

    def virtwire(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """The CLI, run on this host."""
        return subprocess.run(
            [*self.ns.exec_prefix, "env", f"VIRTWIRE_STATE_DIR={self.state_dir}",
             *VIRTWIRE, *args], capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL)

def _agent_services(host: Host, lan: str, identity: str = "") -> list[dict[str, Any]]:
    """ListServices of a host's orchestrator, asked from inside that host (over
    mutual TLS as ``identity``, ``DIR:NAME``, when given)."""
    script = ("import sys, grpc, json\n"
              "from google.protobuf import json_format\n"
              "from virtwire import tls\n"
              "from virtwire.v1 import orchestrator_pb2 as p, orchestrator_pb2_grpc as g\n"
              "if sys.argv[3]:\n"
              "    d, n = sys.argv[3].rsplit(':', 1)\n"
              "    tls.configure(tls.TlsConfig.from_dir(d, n))\n"
              "with tls.sync_channel(sys.argv[1]) as ch:\n"
              "    r = g.OrchestratorServiceStub(ch).ListServices(\n"
              "        p.OrchestratorServiceListServicesRequest(lan=sys.argv[2]), timeout=10)\n"
              "print(json_format.MessageToJson(r, preserving_proto_field_name=True))\n")
    out = host.ns.exec(VIRTWIRE[0], "-c", script, f"{host.address}:{AGENT_PORT}", lan,
                       identity)
    data: dict[str, Any] = json.loads(out.stdout)
    return list(data.get("services", []))


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[tuple[Host, Host]]:
    yield from _two_hosts(tmp_path, None)


@pytest.fixture
def tls_hosts(tmp_path: Path) -> Iterator[tuple[Host, Host]]:
    """As ``hosts``, each host's orchestrator with its own certificate from one CA."""
    pki = tmp_path / "pki"
    ca = certs.init_ca(pki)
    for name, ip in (("hosta", A_IP), ("hostb", B_IP)):
        ca.issue_to(pki, name, [ip], "service")
    ca.issue_to(pki, "viewer", [], "viewer")
    yield from _two_hosts(tmp_path, pki)


def _two_hosts(tmp_path: Path, pki: Path | None) -> Iterator[tuple[Host, Host]]:
    netns.require_root()
    with netns.netns() as ns_a, netns.netns() as ns_b:
        ns_a.add_veth(cidr=f"{A_IP}/24", peer_ns=ns_b, peer_cidr=f"{B_IP}/24")
        pair = (Host(ns_a, A_IP, tmp_path / "a"), Host(ns_b, B_IP, tmp_path / "b"))
        try:
            for host in pair:
                host.state_dir.mkdir()
                ready = host.state_dir / "agent.ready"
                log = open(host.state_dir / "agent.log", "wb")
                host.proc = host.ns.popen(
                    "env", f"VIRTWIRE_STATE_DIR={host.state_dir}", *VIRTWIRE, "serve",
                    "orchestrator", "--listen", f"{host.address}:{AGENT_PORT}",
                    *(["--tls-dir", str(pki), "--tls-name",
                       "hosta" if host.address == A_IP else "hostb"] if pki else
                      ["--insecure"]),
                    "--ready-file", str(ready), stdout=log, stderr=subprocess.STDOUT)
                log.close()
                deadline = time.monotonic() + 20
                while not ready.exists():
                    assert host.proc.poll() is None, (host.state_dir / "agent.log").read_text()
                    assert time.monotonic() < deadline, "the orchestrator did not start"
                    time.sleep(0.05)
            yield pair
        finally:
            for host in pair:
                if host.proc is not None and host.proc.poll() is None:
                    host.proc.send_signal(signal.SIGTERM)
                    try:
                        host.proc.wait(15)
                    except subprocess.TimeoutExpired:
                        host.proc.kill()
                        host.proc.wait()


def test_one_lan_on_two_hosts(hosts: tuple[Host, Host], tmp_path: Path) -> None:
    a, b = hosts
    topo = tmp_path / "twohosts.yaml"
    topo.write_text(TOPOLOGY)
    ctl = Host(a.ns, a.address, tmp_path / "controller")  # `up` runs on host A
    up = ctl.virtwire("up", str(topo), "--detach", timeout=120)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"host b: services through {B_IP}:{AGENT_PORT}" in up.stdout
        state = json.loads((ctl.state_dir / "twohosts" / "state.json").read_text())
        where = {s["name"]: (s["host"], s["backend"], s["address"]) for s in state["services"]}
        for name, host in (("hub0", "a"), ("vm1-e1000", "a"), ("vm2-e1000", "b"),
                           ("vm2-guest", "b"), ("qemu0", "b")):
            ip = A_IP if host == "a" else B_IP
            assert where[name][:2] == (host, "remote") and where[name][2].startswith(ip + ":")
        assert {s["name"] for s in _agent_services(a, "twohosts")} == {
            "hub0", "vm1-guestmem", "vm1-e1000", "vm1-guest"}
        assert {s["name"] for s in _agent_services(b, "twohosts")} == {
            "vm2-guestmem", "vm2-e1000", "vm2-guest", "qemu0"}

        # Ping crosses between the hosts, both ways.
        for src, dst in (("vm1", "vm2"), ("vm2", "vm1")):
            ping = ctl.virtwire("ping", src, dst, "-c", "10")
            assert ping.returncode == 0, ping.stdout + ping.stderr
            print(ping.stdout.splitlines()[-1])  # the figures the README quotes
            assert "10 received" in ping.stdout

        status = ctl.virtwire("status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert "host a" in status.stdout and "host b" in status.stdout

        # A QEMU-compatible peer on host B reaches vm1 on host A.
        me = parse_mac("52:54:00:aa:bb:cc")
        arp = build_arp(ARP_REQUEST, me, IPv4Address("198.18.0.9"), b"\0" * 6,
                        IPv4Address("198.18.0.1"), eth_dst=b"\xff" * 6)
        client = b.ns.exec(VIRTWIRE[0], "-c", STREAM_CLIENT, str(STREAM_PORT), arp.hex(),
                           timeout=60)
        reply = parse_arp(bytes.fromhex(client.stdout.strip()))
        assert reply.op == ARP_REPLY and reply.spa == IPv4Address("198.18.0.1")
        assert reply.sha == parse_mac("52:54:00:12:34:01")

        # The hub (on host A) dies: the orchestrator restarts it there, on its old
        # address, and the dialers on both hosts come back.
        hub = next(s for s in state["services"] if s["name"] == "hub0")
        os.kill(hub["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            state = json.loads((ctl.state_dir / "twohosts" / "state.json").read_text())
            now = next(s for s in state["services"] if s["name"] == "hub0")
            if now["restarts"] == 1 and now["healthy"]:
                break
            assert time.monotonic() < deadline, state
            time.sleep(0.3)
        assert now["address"] == hub["address"] and now["pid"] != hub["pid"]
        deadline = time.monotonic() + 60
        while (ping := ctl.virtwire("ping", "vm2", "vm1", "-c", "2")).returncode != 0:
            assert time.monotonic() < deadline, ping.stdout + ping.stderr
            time.sleep(1)
        pids = [s["pid"] for s in state["services"]]
    finally:
        down = ctl.virtwire("down", "twohosts")
    assert down.returncode == 0, down.stdout + down.stderr
    assert "8 services stopped" in down.stdout
    assert _agent_services(a, "twohosts") == [] and _agent_services(b, "twohosts") == []
    wait_gone(pids)
    # The hosts' orchestrators keep serving, for the next LAN.
    assert all(h.proc is not None and h.proc.poll() is None for h in hosts)


async def test_a_qemu_vm_on_host_b_pings_vm1_on_host_a(hosts: tuple[Host, Host],
                                                         tmp_path: Path) -> None:
    """A real QEMU VM (Linux's e1000 driver) joins the stream port on host B."""
    require_qemu()
    a, b = hosts
    topo = tmp_path / "twohosts.yaml"
    topo.write_text(TOPOLOGY)
    ctl = Host(a.ns, a.address, tmp_path / "controller")
    up = await asyncio.to_thread(ctl.virtwire, "up", str(topo), "--detach", timeout=120)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        async with QemuVM("q", stream_netdev(STREAM_PORT, server=False), "198.18.0.20/24",
                          "52:54:00:12:34:20", tmp_path, wrapper=b.ns.exec_prefix) as vm:
            assert await vm.ping("198.18.0.1", count=3)  # vm1, on host A
            assert await vm.ping("198.18.0.2", count=3)  # vm2, beside it on host B
            ping = await asyncio.to_thread(ctl.virtwire, "ping", "vm1", "198.18.0.20")
            assert ping.returncode == 0, ping.stdout + ping.stderr
    finally:
        down = await asyncio.to_thread(ctl.virtwire, "down", "twohosts")
        assert down.returncode == 0, down.stdout + down.stderr


def test_down_after_the_orchestrator_was_killed(hosts: tuple[Host, Host],
                                               tmp_path: Path) -> None:
    a, b = hosts
    topo = tmp_path / "twohosts.yaml"
    topo.write_text(TOPOLOGY)
    ctl = Host(a.ns, a.address, tmp_path / "controller")
    up = ctl.virtwire("up", str(topo), "--detach", timeout=120)
    assert up.returncode == 0, up.stdout + up.stderr
    state = json.loads((ctl.state_dir / "twohosts" / "state.json").read_text())
    os.kill(state["orchestrator_pid"], signal.SIGKILL)
    # The hosts' services outlive it (their parents are the hosts' orchestrators) ...
    assert len(_agent_services(b, "twohosts")) == 4
    # ... until down finds the LAN's state and stops them through their hosts.
    down = ctl.virtwire("down", "twohosts")
    assert down.returncode == 0, down.stdout + down.stderr
    assert "did not answer" in down.stderr
    assert _agent_services(a, "twohosts") == [] and _agent_services(b, "twohosts") == []


def test_unreachable_host_is_a_clear_error(hosts: tuple[Host, Host], tmp_path: Path) -> None:
    a, _ = hosts
    topo = tmp_path / "lost.yaml"
    topo.write_text(TOPOLOGY.replace(B_IP, "198.18.7.3").replace("twohosts", "lost"))
    ctl = Host(a.ns, a.address, tmp_path / "controller")
    up = ctl.virtwire("up", str(topo), "--detach", timeout=120)
    assert up.returncode == 1, up.stdout + up.stderr
    assert "host 'b' (198.18.7.3:50050): no virtwire orchestrator answers" in up.stdout
    assert _agent_services(a, "lost") == []
    assert not (ctl.state_dir / "lost" / "state.json").exists()


#: Run in a host: /metrics at ADDR, parsed with prometheus-client's parser; the
#: lan/service labels of virtwire_netclients and whether it came over HTTPS.
SCRAPE = """\
import json, ssl, sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families
ctx = None
if len(sys.argv) > 2:
    ctx = ssl.create_default_context(cafile=sys.argv[2] + "/ca.pem")
    ctx.load_cert_chain(sys.argv[2] + "/viewer.pem", sys.argv[2] + "/viewer-key.pem")
    ctx.check_hostname = False
scheme = "https" if ctx else "http"
with urllib.request.urlopen(f"{scheme}://{sys.argv[1]}/metrics", timeout=10,
                            context=ctx) as resp:
    text = resp.read().decode()
for family in text_string_to_metric_families(text):
    for sample in family.samples:
        if sample.name == "virtwire_netclients":
            print(json.dumps(sample.labels, sort_keys=True))
"""


def test_services_on_hosts_serve_metrics_traces_and_json_logs(hosts: tuple[Host, Host],
                                                                tmp_path: Path) -> None:
    """With `metrics:` each host numbers its own services from the port up, on its
    address; up's --trace-* and --log-format reach them through StartService, and
    each host keeps their spans in its own state dir (agent/LAN/traces/)."""
    a, b = hosts
    topo = tmp_path / "twohosts.yaml"
    topo.write_text(TOPOLOGY + "metrics: {port: 9700}\n")
    ctl = Host(a.ns, a.address, tmp_path / "controller")
    up = ctl.virtwire("up", str(topo), "--detach",
                      "--trace-sample", "1/1", "--trace-file", "--log-format", "json",
                      timeout=120)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        status = ctl.virtwire("status", "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        services = [svc for node in json.loads(status.stdout)["nodes"]
                    for svc in node["services"]]
        order = [s["name"] for s in json.loads(
            (ctl.state_dir / "twohosts" / "state.json").read_text())["services"]]
        services.sort(key=lambda svc: order.index(svc["name"]))
        for host, ip in (("a", A_IP), ("b", B_IP)):
            mine = [svc for svc in services if svc["host"] == host]
            assert [svc["metrics"] for svc in mine] == [f"{ip}:{9700 + i}"
                                                        for i in range(len(mine))], mine
        # Scraped from the other host: its /metrics is on its LAN address.
        e1000 = next(svc for svc in services if svc["name"] == "vm2-e1000")
        got = a.ns.exec(VIRTWIRE[0], "-c", SCRAPE, e1000["metrics"]).stdout.splitlines()
        assert [json.loads(line) for line in got] == [{"lan": "twohosts",
                                                        "service": "vm2-e1000"}]
        ping = ctl.virtwire("ping", "vm2", "vm1", "-c", "3")
        assert ping.returncode == 0, ping.stdout + ping.stderr
    finally:
        down = ctl.virtwire("down", "twohosts")
    assert down.returncode == 0, down.stdout + down.stderr
    traces = b.state_dir / "agent" / "twohosts" / "traces"
    files = sorted(p.name for p in traces.iterdir())
    assert files == sorted(f"{n}.jsonl" for n in ("vm2-guestmem", "vm2-e1000", "vm2-guest",
                                                  "qemu0")), files
    spans = [json.loads(line) for p in traces.iterdir() for line in p.read_text().splitlines()]
    assert spans, "no spans on host b"
    assert {s["resource"]["attributes"]["service.name"] for s in spans} <= {
        "vm2-guestmem", "vm2-e1000", "vm2-guest", "qemu0"}
    assert {s["resource"]["attributes"]["virtwire.lan"] for s in spans} == {"twohosts"}
    # Their logs are JSON lines, naming the service.
    log = b.state_dir / "agent" / "twohosts" / "vm2-e1000.log"
    events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert events and {e.get("service") for e in events} == {"vm2-e1000"}, events
    # Nothing of it on the controller's machine: the path was the host's choice.
    assert not (ctl.state_dir / "twohosts" / "traces").exists()


def test_agent_rpcs_refuse_bad_requests(hosts: tuple[Host, Host]) -> None:
    a, _ = hosts
    script = ("import sys, grpc\n"
              "from virtwire.v1 import orchestrator_pb2 as p, orchestrator_pb2_grpc as g\n"
              "from virtwire.v1 import tap_pb2 as t\n"
              "stub = g.OrchestratorServiceStub(grpc.insecure_channel(sys.argv[1]))\n"
              "hub = p.StartHubOptions()\n"
              "cases = [\n"
              "  p.OrchestratorServiceStartServiceRequest(lan='x', name='h',"
              " listen='127.0.0.1:0'),\n"
              "  p.OrchestratorServiceStartServiceRequest(lan='X Y', name='h', hub=hub,"
              " listen='127.0.0.1:0'),\n"
              "  p.OrchestratorServiceStartServiceRequest(lan='x', name='h', listen='127.0.0.1:0',"
              " tap=p.StartTapOptions(backend=t.BackendConfig(tap=t.TapBackendConfig("
              "script='/bin/sh')))),\n"
              "  p.OrchestratorServiceStartServiceRequest(lan='x', name='h', hub=hub,"
              " listen='nowhere'),\n"
              "  p.OrchestratorServiceStartServiceRequest(lan='x', name='h', listen='127.0.0.1:0',"
              " tap=p.StartTapOptions(backend=t.BackendConfig(stream=t.StreamBackendConfig("
              "address='198.18.255.254:5000', listen=True)))),\n"
              "]\n"
              "for req in cases:\n"
              "    try:\n"
              "        stub.StartService(req, timeout=30)\n"
              "        print('OK')\n"
              "    except grpc.RpcError as e:\n"
              "        print(e.code().name, e.details().splitlines()[0])\n"
              "for req in [p.OrchestratorServiceStopServicesRequest(lan='x', names=['nope']),\n"
              "            p.OrchestratorServiceStopServicesRequest(lan='x', timeout_ms=10**6)]:\n"
              "    try:\n"
              "        stub.StopServices(req, timeout=10)\n"
              "        print('OK')\n"
              "    except grpc.RpcError as e:\n"
              "        print(e.code().name, e.details().splitlines()[0])\n")
    out = a.ns.exec(VIRTWIRE[0], "-c", script, f"{A_IP}:{AGENT_PORT}").stdout.splitlines()
    assert out[0].startswith("INVALID_ARGUMENT StartService needs the service's options")
    assert out[1].startswith("INVALID_ARGUMENT bad LAN name 'X Y'")
    assert out[2].startswith("PERMISSION_DENIED script: '/bin/sh' is a path")
    assert out[3].startswith("INVALID_ARGUMENT bad address 'nowhere'")
    assert out[4].startswith("FAILED_PRECONDITION h: virtwire serve tap exited with 1")
    assert out[5].startswith("NOT_FOUND")
    assert out[6].startswith("OUT_OF_RANGE")
    assert _agent_services(a, "x") == []


def test_one_lan_on_two_hosts_with_mutual_tls(tls_hosts: tuple[Host, Host],
                                              tmp_path: Path) -> None:
    """Each host's orchestrator has its host's certificate; `up` of a topology with
    `tls:` is the controller. Services on a host present that host's certificate, so
    vm2's e1000 on B dials the hub on A over mutual TLS. A client without a
    certificate, or a viewer, cannot start services on a host."""
    a, b = tls_hosts
    pki = tmp_path / "pki"
    topo = tmp_path / "twohosts.yaml"
    topo.write_text(TOPOLOGY.replace("hosts:", "tls: {dir: pki}\nhosts:", 1)
                    + "metrics: {port: 9700}\n")
    ctl = Host(a.ns, a.address, tmp_path / "controller")
    up = ctl.virtwire("up", str(topo), "--detach", timeout=120)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        for src, dst in (("vm1", "vm2"), ("vm2", "vm1")):
            ping = ctl.virtwire("ping", src, dst, "-c", "3")
            assert ping.returncode == 0, ping.stdout + ping.stderr
        # /metrics on host B is HTTPS under B's identity, with client certificates.
        state = json.loads((ctl.state_dir / "twohosts" / "state.json").read_text())
        metrics = next(s["metrics"] for s in state["services"] if s["name"] == "vm2-e1000")
        assert metrics.startswith(f"{B_IP}:97")
        got = a.ns.exec(VIRTWIRE[0], "-c", SCRAPE, metrics, str(pki)).stdout.splitlines()
        assert [json.loads(line) for line in got] == [{"lan": "twohosts",
                                                        "service": "vm2-e1000"}]
        plain = subprocess.run([*a.ns.exec_prefix, VIRTWIRE[0], "-c", SCRAPE, metrics],
                               capture_output=True, text=True, timeout=30)
        assert plain.returncode != 0 and not plain.stdout
        status = ctl.virtwire("status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert len(_agent_services(b, "twohosts", f"{pki}:viewer")) == 4
        probe = ("import sys, grpc\n"
                 "from virtwire import tls\n"
                 "from virtwire.v1 import orchestrator_pb2 as p, orchestrator_pb2_grpc as g\n"
                 "if sys.argv[2]:\n"
                 "    tls.configure(tls.TlsConfig.from_dir(sys.argv[2], 'viewer'))\n"
                 "req = p.OrchestratorServiceStartServiceRequest(lan='x', name='h',"
                 " hub=p.StartHubOptions(), listen='127.0.0.1:0')\n"
                 "try:\n"
                 "    g.OrchestratorServiceStub(tls.sync_channel(sys.argv[1])).StartService("
                 "req, timeout=10)\n"
                 "    print('OK')\n"
                 "except grpc.RpcError as e:\n"
                 "    print(e.code().name)\n")
        agent_b = f"{B_IP}:{AGENT_PORT}"
        assert a.ns.exec(VIRTWIRE[0], "-c", probe, agent_b, "").stdout.strip() == \
            "UNAVAILABLE"
        assert a.ns.exec(VIRTWIRE[0], "-c", probe, agent_b, str(pki)).stdout.strip() == \
            "PERMISSION_DENIED"
    finally:
        down = ctl.virtwire("down", "twohosts")
    assert down.returncode == 0, down.stdout + down.stderr
    assert _agent_services(b, "twohosts", f"{pki}:viewer") == []
