"""Prometheus /metrics of every service (--metrics-listen; docs/metrics.md).

Scrapes go through prometheus-client's own parser, and the counters are checked
to move with injected frames: a hub (NetClientService.Inject), a tap server's
stream port linked to a hub, and e1000 + guest processes pinging on a LAN.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from virtwire import certs, tls
from virtwire.errors import ConfigError
from virtwire.link import LinkPeer
from virtwire.net.netdev import parse_backend_spec
from virtwire.orchestrator.launch import ServiceProcess, start_service
from virtwire.server.hub import HubServer
from virtwire.server.metrics import MetricSet
from virtwire.server.tap import TapServer
from virtwire.v1 import guest_pb2, guest_pb2_grpc, netclient_pb2, netclient_pb2_grpc

from support.doubles import frame, until
from support.procs import VIRTWIRE

NAME = re.compile(r"^virtwire_[a-z0-9_]+$")


# -- helpers ------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, context: ssl.SSLContext | None = None) -> str:
    with urllib.request.urlopen(url, timeout=10, context=context) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        body: bytes = resp.read()
    return body.decode()


async def scrape(address: str) -> list[Sample]:
    """Every sample of http://ADDRESS/metrics, fetched off the event loop (the
    service's snapshot runs on it), checked for the naming conventions."""
    text = await asyncio.to_thread(_get, f"http://{address}/metrics")
    return check_conventions(text)


def check_conventions(text: str) -> list[Sample]:
    samples: list[Sample] = []
    families = list(text_string_to_metric_families(text))
    assert families
    for fam in families:
        assert NAME.match(fam.name), fam.name
        assert fam.documentation, fam.name
        for s in fam.samples:
            assert "lan" in s.labels and "service" in s.labels, s
            if fam.type == "counter":
                assert s.name.endswith(("_total", "_created")), s
            elif fam.type == "histogram":
                assert fam.name.endswith("_seconds"), fam.name
            else:
                assert fam.type == "gauge", fam
                assert not s.name.endswith("_total"), s
        samples.extend(s for s in fam.samples if not s.name.endswith("_created"))
    return samples


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The one sample named ``name`` whose labels include ``labels``."""
    found = [s for s in samples if s.name == name
             and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, found)
    return float(found[0].value)


def total(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(float(s.value) for s in samples if s.name == name
               and all(s.labels.get(k) == v for k, v in labels.items()))


def qemu_frame(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


# -- the naming rules themselves ---------------------------------------------------------
def test_metric_set_refuses_names_outside_the_conventions() -> None:
    ms = MetricSet()
    for bad in ("frames", "virtwire_frames_total", "other_frames"):
        with pytest.raises(ValueError):
            ms.counter(bad, "x", 1)
    ms.counter("virtwire_frames", "x", 1, netclient="a")
    with pytest.raises(ValueError):  # one family, one label set
        ms.counter("virtwire_frames", "x", 1, port="a")
    with pytest.raises(ValueError):
        ms.gauge("virtwire_frames", "x", 1, netclient="a")


# -- a hub ------------------------------------------------------------------------
@pytest.fixture
async def hub() -> AsyncIterator[HubServer]:
    host = HubServer("127.0.0.1:0", name="hub")
    host.metrics_listen = "127.0.0.1:0"
    host.metrics_lan = "lab"
    host.metrics_service = "hub0"
    host.add_port("a")
    host.add_port("b")
    async with host:
        yield host


async def test_hub_counters_move_with_injected_frames(hub: HubServer) -> None:
    assert hub.metrics is not None and hub.metrics_address.startswith("127.0.0.1:")
    before = await scrape(hub.metrics_address)
    assert value(before, "virtwire_netclient_frames_total", netclient="a", direction="rx",
                 lan="lab", service="hub0") == 0
    n, size = 25, 100
    async with grpc.aio.insecure_channel(hub.address) as ch:
        stub = netclient_pb2_grpc.NetClientServiceStub(ch)
        resp = await stub.Inject(netclient_pb2.InjectRequest(name="a", frame=frame(1, size),
                                                             repeat=n))
        assert resp.accepted == n
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetNetClient(netclient_pb2.GetNetClientRequest(name="nope"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        status = {nc.name: nc.counters for nc in
                  (await stub.ListNetClients(netclient_pb2.ListNetClientsRequest())).netclients}
    after = await scrape(hub.metrics_address)
    # The frames came in on port a, and the hub sent them out of b, which has no
    # peer: dropped there as link down.
    assert value(after, "virtwire_netclient_frames_total", netclient="a",
                 direction="rx") == status["a"].rx_frames == n
    assert value(after, "virtwire_netclient_bytes_total", netclient="a",
                 direction="rx") == status["a"].rx_bytes == n * size
    assert value(after, "virtwire_netclient_dropped_frames_total", netclient="b",
                 cause="link_down") == status["b"].dropped_link_down == n
    assert total(after, "virtwire_netclient_dropped_frames_total", netclient="b") == \
        status["b"].dropped_total
    assert value(after, "virtwire_netclient_link_state", netclient="a", state="no_peer") == 1
    assert value(after, "virtwire_netclient_queued_frames", netclient="b",
                 queue="incoming") == status["b"].queue_len
    assert value(after, "virtwire_netclients") == 2
    # One histogram for every RPC, by method and code.
    assert value(after, "virtwire_rpc_server_handling_seconds_count",
                 method="/virtwire.v1.NetClientService/Inject", code="OK") == 1
    assert value(after, "virtwire_rpc_server_handling_seconds_count",
                 method="/virtwire.v1.NetClientService/GetNetClient", code="NOT_FOUND") == 1
    assert value(after, "virtwire_rpc_server_handling_seconds_bucket",
                 method="/virtwire.v1.NetClientService/Inject", code="OK", le="+Inf") == 1
    assert value(after, "virtwire_metrics_snapshot_failures_total") == 0
    assert value(after, "virtwire_metrics_snapshot_seconds") > 0


async def test_a_snapshot_in_steps_reads_every_netclient() -> None:
    """A hub with more ports than one step reads: every port is in the scrape once."""
    from virtwire.server.metrics import SNAPSHOT_STEP

    host = HubServer("127.0.0.1:0")
    host.metrics_listen = "127.0.0.1:0"
    n = SNAPSHOT_STEP * 3 + 1
    for _ in range(n):
        host.add_port()
    async with host:
        samples = await scrape(host.metrics_address)
    rx = [s for s in samples if s.name == "virtwire_netclient_frames_total"
          and s.labels["direction"] == "rx"]
    assert len({s.labels["netclient"] for s in rx}) == len(rx) == n
    assert value(samples, "virtwire_netclients") == n
    assert value(samples, "virtwire_server_names_refused_total") == 0  # after the last step


def test_metrics_listen_addresses() -> None:
    from virtwire.server.metrics import parse_metrics_listen

    assert str(parse_metrics_listen("9400")) == "127.0.0.1:9400"  # a bare port: loopback
    assert parse_metrics_listen("[::1]:0").host == "::1"
    for bad in ("unix:/tmp/m.sock", ":9400", "host"):
        with pytest.raises(ConfigError):
            parse_metrics_listen(bad)


async def test_metrics_on_ipv6_loopback() -> None:
    host = HubServer("127.0.0.1:0")
    host.metrics_listen = "[::1]:0"
    try:
        async with host:
            assert host.metrics_address.startswith("[::1]:")
            assert value(await scrape(host.metrics_address), "virtwire_netclients") == 0
    except ConfigError as exc:  # a machine without IPv6 loopback
        pytest.skip(str(exc))


async def test_metrics_stop_with_the_service() -> None:
    host = HubServer("127.0.0.1:0")
    host.metrics_listen = "127.0.0.1:0"
    async with host:
        address = host.metrics_address
        assert value(await scrape(address), "virtwire_netclients", service="hub") == 0
    assert host.metrics is None
    with pytest.raises(urllib.error.URLError):
        await asyncio.to_thread(_get, f"http://{address}/metrics")


async def test_used_metrics_port_fails_the_start_in_process() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        host = HubServer("127.0.0.1:0")
        host.metrics_listen = f"127.0.0.1:{held.getsockname()[1]}"
        with pytest.raises(ConfigError, match="address in use"):
            await host.start()
        assert host.server is None and host.metrics is None


# -- a tap server's stream port, linked to a hub ---------------------------------------
async def test_stream_port_and_link_counters_move(hub: HubServer) -> None:
    tapsrv = TapServer("127.0.0.1:0")
    tapsrv.metrics_listen = "127.0.0.1:0"
    tapsrv.metrics_lan = "lab"
    async with tapsrv:
        be = await tapsrv.add_backend(parse_backend_spec(
            f"stream,listen=127.0.0.1:0,id=vm,peer={hub.address}/a"))
        addr = be.local_address  # type: ignore[attr-defined]
        _reader, writer = await asyncio.open_connection(addr.host, addr.port)
        try:
            await until(lambda: isinstance(be.peer, LinkPeer) and be.peer.remote_ready
                        and not be.link_down, what="stream connected and linked")
            n = 40
            writer.write(b"".join(qemu_frame(frame(i, 80)) for i in range(n)))
            await writer.drain()
            await until(lambda: hub.registry.get("a").stats.rx_frames >= n
                        or hub.registry.get("a").stats.tx_frames >= n,
                        what="frames at the hub")
            tap = await scrape(tapsrv.metrics_address)
            hubm = await scrape(hub.metrics_address)
        finally:
            writer.close()
    assert value(tap, "virtwire_netclient_frames_total", netclient="vm", direction="tx",
                 service="tap") == n
    assert value(tap, "virtwire_netclient_bytes_total", netclient="vm", direction="tx") == n * 80
    assert value(tap, "virtwire_netclient_link_state", netclient="vm", state="up") == 1
    assert value(tap, "virtwire_link_batches_sent_total", netclient="vm") >= 1
    assert value(tap, "virtwire_link_window", netclient="vm") > 0
    assert value(tap, "virtwire_link_credits", netclient="vm", kind="available") >= 0
    assert total(tap, "virtwire_link_transport", netclient="vm") == 1
    # The hub's port a took them in from its link (a LinkPeer sent them to it).
    assert value(hubm, "virtwire_netclient_frames_total", netclient="a", direction="rx",
                 service="hub0") == n
    assert value(hubm, "virtwire_netclient_link_state", netclient="a", state="up") == 1
    assert value(hubm, "virtwire_link_credits", netclient="a", kind="granted") >= 0


# -- e1000 + guest on a LAN, as processes ----------------------------------------------
@pytest.fixture(scope="module")
def guest_lan(tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[tuple[list[ServiceProcess], dict[str, str]]]:
    """A hub, and two VMs (guestmem, e1000, guest) with an address each, every
    service with its own metrics port."""
    work = tmp_path_factory.mktemp("metrics")
    procs: list[ServiceProcess] = []
    metrics: dict[str, str] = {}

    def start(kind: str, name: str, args: list[str]) -> ServiceProcess:
        metrics[name] = f"127.0.0.1:{free_port()}"
        proc = start_service(kind, [*args, "--metrics-listen", metrics[name],
                                    "--metrics-lan", "lab", "--metrics-service", name], work)
        procs.append(proc)
        return proc

    try:
        hub = start("hub", "hub", [])
        for i in (1, 2):
            mem = start("guestmem", f"vm{i}-mem", ["--size", "16M"])
            nic = start("e1000", f"vm{i}-nic", ["--guestmem", mem.address,
                                                "--mac", f"52:54:00:00:0b:{i:02x}",
                                                "--name", f"vm{i}", "--peer", f"{hub.address}/"])
            start("guest", f"vm{i}", ["--e1000", nic.address, "--guestmem", mem.address,
                                      "--ip", f"198.18.0.{i}/24"])
        yield procs, metrics
    finally:
        for proc in reversed(procs):
            proc.stop()


async def test_e1000_and_guest_counters_move_with_a_ping(
        guest_lan: tuple[list[ServiceProcess], dict[str, str]]) -> None:
    procs, metrics = guest_lan
    guest1 = procs[3]
    before = await scrape(metrics["vm1-nic"])
    count = 3
    async with grpc.aio.insecure_channel(guest1.address) as ch:
        resp = await guest_pb2_grpc.GuestServiceStub(ch).Ping(
            guest_pb2.PingRequest(address="198.18.0.2", count=count, interval_ms=20,
                                  timeout_ms=3000), timeout=30)
    assert (resp.transmitted, resp.received) == (count, count)
    nic1 = await scrape(metrics["vm1-nic"])
    nic2 = await scrape(metrics["vm2-nic"])
    g1 = await scrape(metrics["vm1"])
    mem1 = await scrape(metrics["vm1-mem"])
    hubm = await scrape(metrics["hub"])

    def moved(name: str, **labels: str) -> float:
        return value(nic1, name, **labels) - value(before, name, **labels)

    # The NIC sent the requests (and an ARP) and took in the replies: its registers,
    # its NetClient counters and its interrupts moved by at least the ping.
    assert moved("virtwire_e1000_statistics_total", register="GPTC") >= count
    assert moved("virtwire_e1000_statistics_total", register="GPRC") >= count
    assert moved("virtwire_e1000_statistics_bytes_total", register="GOTC") >= count * 98
    assert moved("virtwire_netclient_frames_total", netclient="vm1", direction="tx") >= count
    assert moved("virtwire_netclient_frames_total", netclient="vm1", direction="rx") >= count
    assert moved("virtwire_e1000_interrupts_total", netclient="vm1") >= 1
    assert value(nic1, "virtwire_e1000_link_up", netclient="vm1") == 1
    # Descriptors and buffers went through guest memory: on this host, shared memory.
    assert moved("virtwire_dma_operations_total", op="read", path="shm") > 0
    assert moved("virtwire_dma_bytes_total", op="write", path="shm") > 0
    assert value(nic1, "virtwire_dma_operations_total", op="read", path="rpc") == 0
    assert value(nic2, "virtwire_e1000_statistics_total", register="GPRC",
                 service="vm2-nic") >= count
    # The guest's driver, the guestmem service and the hub show it too.
    assert value(g1, "virtwire_guest_frames_total", direction="tx", service="vm1") >= count
    assert value(g1, "virtwire_guest_driver_interrupts_total") > 0
    assert value(g1, "virtwire_dma_operations_total", op="write", path="shm") > 0
    assert value(mem1, "virtwire_guestmem_size_bytes", service="vm1-mem") == 16 << 20
    assert total(mem1, "virtwire_dma_operations_total") >= 0
    assert total(hubm, "virtwire_netclient_frames_total", direction="rx") >= 2 * count
    assert value(nic1, "virtwire_link_batches_sent_total", netclient="vm1") >= count
    assert value(g1, "virtwire_rpc_server_handling_seconds_count",
                 method="/virtwire.v1.GuestService/Ping", code="OK") >= 1
    # docs/metrics.md lists every family each kind of service serves.
    check_documented([*nic1, *g1, *mem1, *hubm])


DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"


def check_documented(samples: list[Sample]) -> None:
    doc = DOC.read_text()
    names = {re.sub(r"_seconds_(bucket|count|sum)$", "_seconds", s.name) for s in samples}
    missing = []
    for name in sorted(names):
        if f"`{name}`" in doc:
            continue
        if name.startswith("virtwire_guest_driver_"):  # listed by counter name
            driver = name.removeprefix("virtwire_guest_driver_").removesuffix("_total")
            if f" {driver}," in doc or f" {driver} |" in doc:
                continue
        missing.append(name)
    assert not missing, f"not in docs/metrics.md: {missing}"


# -- the CLI's refusals ---------------------------------------------------------------
def _serve_fails(*args: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([*VIRTWIRE, "serve", "hub", *args], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode != 0, out
    return out


def test_metrics_listen_on_a_used_port_is_a_clear_error() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        out = _serve_fails("--metrics-listen", f"127.0.0.1:{port}")
    assert f"cannot serve metrics on 127.0.0.1:{port}: address in use" in out.stderr
    assert "Traceback" not in out.stderr


def test_metrics_off_loopback_without_tls_is_refused() -> None:
    # Refused before anything binds: no traffic leaves the machine.
    out = _serve_fails("--metrics-listen", "198.18.0.1:9400")
    assert "refusing to serve metrics on 198.18.0.1:9400 without TLS" in out.stderr
    assert "--tls-dir" in out.stderr and "Traceback" not in out.stderr
    out = _serve_fails("--metrics-listen", "unix:/tmp/x.sock")
    assert "not a unix socket" in out.stderr


# -- over TLS: HTTPS with the service's certificate, client certificates required ----
async def test_metrics_over_tls_require_a_client_certificate(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    ca = certs.init_ca(ca_dir)
    ca.issue_to(ca_dir, "hub", ["127.0.0.1"], "service")
    ca.issue_to(ca_dir, "controller", [], "controller")
    tls.configure(tls.TlsConfig.from_dir(ca_dir, "hub"))
    try:
        host = HubServer("127.0.0.1:0")
        host.metrics_listen = "127.0.0.1:0"
        async with host:
            assert host.metrics is not None and host.metrics.https
            url = f"https://{host.metrics_address}/metrics"
            ctx = ssl.create_default_context(cafile=str(ca_dir / certs.CA_CERT))
            ctx.check_hostname = False
            with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
                await asyncio.to_thread(_get, url, ctx)
            ctx.load_cert_chain(str(certs.cert_path(ca_dir, "controller")),
                                str(certs.key_path(ca_dir, "controller")))
            text = await asyncio.to_thread(_get, url, ctx)
    finally:
        tls.configure(None)
    samples = check_conventions(text)
    assert value(samples, "virtwire_netclients") == 0


# -- the orchestrator: a metrics port per service, listed by status --------------------
LAN_YAML = """\
name: {name}
nodes:
  hub0: {{kind: hub}}
  vm1: {{kind: vm, ip: 198.18.0.1/24, memory: 16M}}
  vm2: {{kind: vm, ip: 198.18.0.2/24, memory: 16M}}
links:
  - [vm1, hub0]
  - [vm2, hub0]
"""


def free_port_range(count: int) -> int:
    """A base port with ``count`` free ports from it (checked, not reserved)."""
    for _ in range(50):
        base = free_port()
        if base + count > 65535:
            continue
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise AssertionError("no free port range")


def test_metrics_plan_gives_each_local_service_the_next_port(tmp_path: Path) -> None:
    from virtwire.orchestrator.core import metrics_plan
    from virtwire.topology import parse_topology

    topo = parse_topology(LAN_YAML.format(name="m") + "metrics: {port: 9500}\n", "lan.yaml")
    assert topo.metrics_port == 9500
    planned = metrics_plan(topo)
    assert list(planned) == [s.name for s in topo.services]
    assert list(planned.values()) == [f"127.0.0.1:{9500 + i}" for i in range(len(planned))]
    assert metrics_plan(topo, "docker") == {}
    assert metrics_plan(parse_topology(LAN_YAML.format(name="m"), "lan.yaml")) == {}
    assert parse_topology(LAN_YAML.format(name="m") + "metrics: {}\n", "x").metrics_port == 9400
    with pytest.raises(ConfigError, match="do not fit"):
        metrics_plan(parse_topology(LAN_YAML.format(name="m") + "metrics: {port: 65533}\n",
                                    "lan.yaml"))
    with pytest.raises(ConfigError):
        parse_topology(LAN_YAML.format(name="m") + "metrics: {port: 70000}\n", "lan.yaml")


HOSTS_YAML = """\
name: spread
metrics: {port: 9600}
hosts:
  a: {address: 198.18.7.1}
  b: {address: "fd00::2"}
nodes:
  hub0: {kind: hub, host: a}
  vm1: {kind: vm, ip: 198.18.0.1/24, memory: 16M, host: a}
  vm2: {kind: vm, ip: 198.18.0.2/24, memory: 16M, host: b}
  vm3: {kind: vm, ip: 198.18.0.3/24, memory: 16M}
links:
  - [vm1, hub0]
  - [vm2, hub0]
  - [vm3, hub0]
"""


def test_metrics_plan_numbers_each_machine_on_its_own() -> None:
    """Each host's services get ITS address from the first port up, in start
    order, as this machine's get loopback's: the same port on two machines is
    two endpoints."""
    from virtwire.orchestrator.core import metrics_plan
    from virtwire.topology import parse_topology

    topo = parse_topology(HOSTS_YAML, "spread.yaml")
    planned = metrics_plan(topo)
    assert list(planned) == [s.name for s in topo.services]  # start order, all of them
    for host, address in (("a", "198.18.7.1"), ("b", "[fd00::2]"), (None, "127.0.0.1")):
        names = [s.name for s in topo.services if s.host == host]
        assert names, host
        assert [planned[n] for n in names] == [f"{address}:{9600 + i}"
                                               for i in range(len(names))], host
    # The docker backend's containers get theirs from the docker runtime: only the
    # hosts' services are planned here.
    docker = metrics_plan(topo, "docker")
    assert docker == {n: a for n, a in planned.items()
                      if next(s.host for s in topo.services if s.name == n)}
    # A host whose services do not fit below 65536 is named.
    crowded = HOSTS_YAML.replace("port: 9600", "port: 65533")
    with pytest.raises(ConfigError, match="do not fit 4 services of host a"):
        metrics_plan(parse_topology(crowded, "spread.yaml"))


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([*VIRTWIRE, *args], capture_output=True, text=True, timeout=120,
                         env=env)
    assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out


async def test_up_metrics_gives_ports_that_status_lists(tmp_path: Path) -> None:
    import json
    import os

    env = {**os.environ, "VIRTWIRE_STATE_DIR": str(tmp_path / "state")}
    file = tmp_path / "lan.yaml"
    file.write_text(LAN_YAML.format(name="mlan"))
    base = free_port_range(7)
    await asyncio.to_thread(_cli, "up", str(file), "--detach", "--metrics", str(base), env=env)
    try:
        status = json.loads((await asyncio.to_thread(_cli, "status", "--json", env=env)).stdout)
        listed = {s["name"]: s["metrics"] for n in status["nodes"] for s in n["services"]}
        order = ["hub0", "vm1-guestmem", "vm1-e1000", "vm1-guest",
                 "vm2-guestmem", "vm2-e1000", "vm2-guest"]
        assert listed == {name: f"127.0.0.1:{base + i}" for i, name in enumerate(order)}
        for name, address in listed.items():
            samples = await scrape(address)
            assert {s.labels["lan"] for s in samples} == {"mlan"}
            assert {s.labels["service"] for s in samples} == {name}
        hub = await scrape(listed["hub0"])
        assert value(hub, "virtwire_netclients") == 2
        assert value(hub, "virtwire_netclient_link_state", netclient="hub0port0",
                     state="up") == 1
        # The plain table has them too, in a METRICS column.
        table = (await asyncio.to_thread(_cli, "status", env=env)).stdout.split("\n\n")[0]
        header, *rows = table.splitlines()[1:]
        assert header.split()[-1] == "METRICS", table
        assert {row.split()[2]: row.split()[-1] for row in rows} == listed
    finally:
        await asyncio.to_thread(_cli, "down", "mlan", env=env)


def test_status_table_has_metrics_only_when_a_service_serves_them() -> None:
    from virtwire.cli.format import format_status
    from virtwire.v1 import orchestrator_pb2

    resp = orchestrator_pb2.OrchestratorServiceGetStatusResponse(name="lan", state="running")
    node = resp.nodes.add(name="vm1", kind="vm")
    node.services.add(name="vm1-e1000", backend="process", address="127.0.0.1:4001",
                      pid=10, healthy=True)
    node.services.add(name="vm1-guest", backend="process", address="127.0.0.1:4002",
                      pid=11, healthy=True)
    without = format_status(resp, "127.0.0.1:4000").split("\n\n")[0].splitlines()
    assert without[1].split() == ["NODE", "KIND", "SERVICE", "RUNS", "AS", "ADDRESS", "PID",
                                  "HEALTH", "RESTARTS"]
    assert "METRICS" not in format_status(resp, "127.0.0.1:4000")
    resp.nodes[0].services[0].metrics = "127.0.0.1:9400"
    table = format_status(resp, "127.0.0.1:4000").split("\n\n")[0].splitlines()
    assert table[1].split()[-1] == "METRICS"
    # A service without /metrics (a QEMU process, a guest off) shows "-".
    assert [row.split()[-1] for row in table[2:]] == ["127.0.0.1:9400", "-"]
    assert [row.split()[:-1] for row in table[2:]] == [row.split() for row in without[2:]]


def test_docker_containers_get_the_topologys_metrics_port() -> None:
    """Planned without an engine: each container serves /metrics on 0.0.0.0:PORT of
    its own namespace, labelled with the LAN and itself (as render gives it)."""
    from virtwire.orchestrator.runtime.docker import DockerRuntime
    from virtwire.orchestrator.spec import HubServiceSpec
    from virtwire.topology import parse_topology

    topo = parse_topology(LAN_YAML.format(name="d") + "metrics: {port: 9500}\n", "lan.yaml")
    command = DockerRuntime(topo)._command("hub0", HubServiceSpec())
    assert command[-7:] == ["--insecure", "--metrics-listen", "0.0.0.0:9500",
                            "--metrics-lan", "d", "--metrics-service", "hub0"]
    plain = parse_topology(LAN_YAML.format(name="d"), "lan.yaml")
    assert "--metrics-listen" not in DockerRuntime(plain)._command("hub0", HubServiceSpec())
