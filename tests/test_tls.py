"""Mutual TLS and roles (issue 7): certificates, every server kind, viewers, names.

The services run as real ``virtwire serve KIND`` processes with their own
certificates; clients are plain grpc channels with chosen credentials, and
grpcurl as users run it.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from virtwire import certs, tls
from virtwire.address import parse_sockaddr
from virtwire.errors import ConfigError, ConflictError
from virtwire.orchestrator.launch import ServiceProcess
from virtwire.server.authz import Access, access_of, allowed
from virtwire.v1 import (
    e1000_pb2,
    filter_pb2,
    guest_pb2,
    guestmem_pb2,
    hub_pb2,
    link_pb2,
    netclient_pb2,
    orchestrator_pb2,
    tap_pb2,
)

from support.procs import GRPCURL, VIRTWIRE, serve

KINDS = ("hub", "tap", "guestmem", "e1000", "guest", "orchestrator")
_OWN = {"hub": hub_pb2.DESCRIPTOR.services_by_name["HubService"],
        "tap": tap_pb2.DESCRIPTOR.services_by_name["TapService"],
        "guestmem": guestmem_pb2.DESCRIPTOR.services_by_name["GuestMemService"],
        "e1000": e1000_pb2.DESCRIPTOR.services_by_name["E1000Service"],
        "guest": guest_pb2.DESCRIPTOR.services_by_name["GuestService"],
        "orchestrator": orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"]}
_COMMON = (netclient_pb2.DESCRIPTOR.services_by_name["NetClientService"],
           link_pb2.DESCRIPTOR.services_by_name["LinkService"],
           filter_pb2.DESCRIPTOR.services_by_name["FilterService"])


@dataclass
class Pki:
    dir: Path
    other: Path  # a second, unrelated CA with its own controller

    def creds(self, name: str, directory: Path | None = None) -> grpc.ChannelCredentials:
        d = directory or self.dir
        return grpc.ssl_channel_credentials(
            root_certificates=(self.dir / "ca.pem").read_bytes(),
            private_key=certs.key_path(d, name).read_bytes(),
            certificate_chain=certs.cert_path(d, name).read_bytes())

    def args(self, name: str) -> list[str]:
        return ["--tls-dir", str(self.dir), "--tls-name", name]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    ca = certs.init_ca(base / "ca")
    for name, role in (("controller", "controller"), ("viewer", "viewer"),
                       ("svc", "service"), *((k, "service") for k in KINDS)):
        ca.issue_to(base / "ca", name, [], role)
    other = certs.init_ca(base / "other")
    other.issue_to(base / "other", "controller", [], "controller")
    return Pki(base / "ca", base / "other")


@pytest.fixture(scope="module")
def lan(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One service of each kind, all with TLS; the guest drives its e1000 and guestmem
    over TLS, so the clients inside the services are covered too."""
    work = tmp_path_factory.mktemp("svc")
    procs: list[ServiceProcess] = []

    def start(kind: str, *args: str) -> str:
        cm = serve(kind, [*args, *pki.args(kind)], work)
        proc = cm.__enter__()
        procs.append(proc)
        stoppers.append(cm)
        return proc.address

    stoppers: list[object] = []
    try:
        addr = {"hub": start("hub", "--ports", "1"),
                "guestmem": start("guestmem", "--size", "16M")}
        addr["e1000"] = start("e1000", "--guestmem", addr["guestmem"],
                              "--peer", addr["hub"] + "/hub0port0")
        addr["guest"] = start("guest", "--e1000", addr["e1000"], "--guestmem",
                              addr["guestmem"], "--ip", "198.18.3.1/24")
        addr["tap"] = start("tap", "--backend", "stream,listen=127.0.0.1:0,id=s0")
        addr["orchestrator"] = start("orchestrator")
        yield addr
    finally:
        for cm in reversed(stoppers):
            cm.__exit__(None, None, None)  # type: ignore[attr-defined]


def _health(address: str, creds: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    channel = (grpc.secure_channel(address, creds) if creds is not None
               else grpc.insecure_channel(address))
    with channel:
        try:
            got = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    assert got.status == health_pb2.HealthCheckResponse.SERVING
    return grpc.StatusCode.OK


# -- certificates --------------------------------------------------------------------
def test_certs_cli_makes_a_ca_and_0600_keys(tmp_path: Path) -> None:
    d = tmp_path / "pki"
    run = [*VIRTWIRE, "certs"]
    subprocess.run([*run, "init", str(d)], check=True, capture_output=True)
    subprocess.run([*run, "issue", str(d), "hostb", "--san", "198.18.7.2", "--san",
                    "hostb.lab", "--role", "viewer"], check=True, capture_output=True)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    for key in ("ca-key.pem", "hostb-key.pem"):
        assert stat.S_IMODE(os.stat(d / key).st_mode) == 0o600, key
    info = certs.describe((d / "hostb.pem").read_bytes())
    assert info["role"] == "viewer" and info["name"] == "hostb"
    assert {"198.18.7.2", "hostb.lab", "localhost", "127.0.0.1"} <= set(info["sans"].split(","))
    listing = subprocess.run([*run, "ls", str(d)], check=True, capture_output=True,
                             text=True).stdout
    assert "hostb" in listing and "viewer" in listing
    # A second init would throw the CA away: refused, exit 1, nothing changed.
    before = (d / "ca.pem").read_bytes()
    again = subprocess.run([*run, "init", str(d)], capture_output=True, text=True)
    assert again.returncode == 1 and "already holds a CA" in again.stderr
    assert (d / "ca.pem").read_bytes() == before
    bad = subprocess.run([*run, "issue", str(d), "../x"], capture_output=True, text=True)
    assert bad.returncode == 2 and "bad certificate name" in bad.stderr
    assert not (tmp_path / "x.pem").exists()


def test_issue_refuses_unknown_role_and_bad_san(tmp_path: Path) -> None:
    ca = certs.init_ca(tmp_path)
    with pytest.raises(ConfigError, match="unknown role"):
        ca.issue("a", role="admin")
    with pytest.raises(ConfigError, match="bad --san"):
        ca.issue("a", ["no spaces allowed"])
    with pytest.raises(ConflictError):
        certs.init_ca(tmp_path)


def test_tls_config_checks_the_files(pki: Pki, tmp_path: Path) -> None:
    good = tls.TlsConfig.from_dir(pki.dir, "controller")
    assert good.role == "controller"
    with pytest.raises(ConfigError, match="not signed by the CA"):
        tls.TlsConfig.from_files(pki.dir / "ca.pem", pki.other / "controller.pem",
                                 pki.other / "controller-key.pem")
    with pytest.raises(ConfigError, match="is not the key of"):
        tls.TlsConfig.from_files(pki.dir / "ca.pem", pki.dir / "controller.pem",
                                 pki.dir / "viewer-key.pem")
    with pytest.raises(ConfigError, match=r"--tls-cert .*No such file"):
        tls.TlsConfig.from_dir(pki.dir, "nobody")


async def test_plaintext_off_loopback_needs_insecure() -> None:
    server = grpc.aio.server()
    with pytest.raises(ConfigError, match="without TLS"):
        tls.add_port(server, parse_sockaddr("198.18.3.9:0"), what="hub")
    assert tls.is_local(parse_sockaddr("127.0.0.5:1"))
    assert tls.is_local(parse_sockaddr("unix:/tmp/x"))
    assert not tls.is_local(parse_sockaddr("0.0.0.0:1"))


def test_serve_off_loopback_without_tls_exits_with_a_message() -> None:
    out = subprocess.run([*VIRTWIRE, "serve", "hub", "--listen", "0.0.0.0:0"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "refusing to listen on 0.0.0.0:0 without TLS" in out.stderr
    assert "Traceback" not in out.stderr


# -- every server kind ------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_each_server_requires_a_certificate_from_its_ca(
        kind: str, lan: dict[str, str], pki: Pki) -> None:
    address = lan[kind]
    ca_only = grpc.ssl_channel_credentials(root_certificates=(pki.dir / "ca.pem").read_bytes())
    assert _health(address, None) == grpc.StatusCode.UNAVAILABLE
    assert _health(address, ca_only) == grpc.StatusCode.UNAVAILABLE
    assert _health(address, pki.creds("controller", pki.other)) == grpc.StatusCode.UNAVAILABLE
    assert _health(address, pki.creds("controller")) == grpc.StatusCode.OK
    assert _health(address, pki.creds("viewer")) == grpc.StatusCode.OK


def _call(channel: grpc.Channel, method: str, client_stream: bool,
          server_stream: bool) -> grpc.StatusCode:
    try:
        if client_stream:
            call = channel.stream_stream(method) if server_stream else \
                channel.stream_unary(method)
            got = call(iter([b""]), timeout=5)
            if server_stream:
                next(iter(got))
        elif server_stream:
            next(iter(channel.unary_stream(method)(b"", timeout=5)))
        else:
            channel.unary_unary(method)(b"", timeout=5)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    except StopIteration:
        return grpc.StatusCode.OK
    return grpc.StatusCode.OK


@pytest.mark.parametrize("kind", KINDS)
def test_viewer_and_service_roles_are_refused_what_they_may_not_do(
        kind: str, lan: dict[str, str], pki: Pki) -> None:
    """Every RPC the server offers, by the table: a viewer gets PERMISSION_DENIED
    on everything but reads, a service on controller-only RPCs."""
    checked = 0
    for role, name in (("viewer", "viewer"), ("service", "svc")):
        with grpc.secure_channel(lan[kind], pki.creds(name)) as channel:
            for service in (*_COMMON, _OWN[kind]):
                for m in service.methods:
                    method = f"/{service.full_name}/{m.name}"
                    if allowed(role, method):
                        continue
                    code = _call(channel, method, m.client_streaming, m.server_streaming)
                    assert code == grpc.StatusCode.PERMISSION_DENIED, (role, method, code)
                    checked += 1
    assert checked >= 4


def test_the_mutating_rpcs_the_issue_names_are_controller_only() -> None:
    for method in ("OrchestratorService/Up", "OrchestratorService/Down",
                   "OrchestratorService/StartService", "OrchestratorService/StopServices",
                   "OrchestratorService/SetLink", "OrchestratorService/Inject",
                   "NetClientService/SetLink", "NetClientService/Inject",
                   "HubService/AddPort", "TapService/AddBackend"):
        assert access_of(f"/virtwire.v1.{method}") is Access.CONTROL, method
        assert not allowed("viewer", f"/virtwire.v1.{method}")
        assert not allowed("service", f"/virtwire.v1.{method}")
        assert allowed("controller", f"/virtwire.v1.{method}")
    for method in ("OrchestratorService/GetStatus", "NetClientService/ListNetClients",
                   "NetClientService/Capture", "OrchestratorService/Ping"):
        assert allowed("viewer", f"/virtwire.v1.{method}"), method
    assert not allowed("viewer", "/virtwire.v1.LinkService/Connect")
    assert allowed("service", "/virtwire.v1.LinkService/Connect")
    # A method nobody classified is for controllers only.
    assert not allowed("service", "/virtwire.v1.HubService/SomethingNew")


def test_viewer_reads_and_controller_writes(lan: dict[str, str], pki: Pki) -> None:
    from virtwire.v1 import netclient_pb2_grpc

    with grpc.secure_channel(lan["hub"], pki.creds("viewer")) as channel:
        stub = netclient_pb2_grpc.NetClientServiceStub(channel)
        names = [nc.name for nc in stub.ListNetClients(
            netclient_pb2.ListNetClientsRequest(), timeout=5).netclients]
        assert "hub0port0" in names
        with pytest.raises(grpc.RpcError) as err:
            stub.SetLink(netclient_pb2.SetLinkRequest(name="hub0port0", up=False), timeout=5)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "needs the controller role" in (err.value.details() or "")
    with grpc.secure_channel(lan["hub"], pki.creds("controller")) as channel:
        stub = netclient_pb2_grpc.NetClientServiceStub(channel)
        got = stub.SetLink(netclient_pb2.SetLinkRequest(name="hub0port0", up=True), timeout=5)
        assert got.netclient.name == "hub0port0"


def test_guest_drives_its_nic_over_tls(lan: dict[str, str], pki: Pki) -> None:
    """The guest's Mmio/WatchIrq and the e1000's guestmem client ran over TLS, and
    DMA still takes the shared-memory fast path."""
    from virtwire.v1 import e1000_pb2_grpc, guest_pb2_grpc

    with grpc.secure_channel(lan["guest"], pki.creds("controller")) as channel:
        status = guest_pb2_grpc.GuestServiceStub(channel).GetStatus(
            guest_pb2.GetStatusRequest(), timeout=5)
    assert status.link_up or status.mac
    with grpc.secure_channel(lan["e1000"], pki.creds("viewer")) as channel:
        desc = e1000_pb2_grpc.E1000ServiceStub(channel).DescribeDevice(
            e1000_pb2.DescribeDeviceRequest(), timeout=5)
    assert "shm" in str(desc).lower() or "shared" in str(desc).lower(), desc


def test_grpcurl_with_certificates(lan: dict[str, str], pki: Pki) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(GRPCURL), *args], capture_output=True, text=True,
                              timeout=20)

    flags = ["-cacert", str(pki.dir / "ca.pem"), "-cert", str(pki.dir / "viewer.pem"),
             "-key", str(pki.dir / "viewer-key.pem")]
    listed = run(*flags, lan["hub"], "list")
    assert listed.returncode == 0, listed.stderr
    assert "virtwire.v1.HubService" in listed.stdout
    got = run(*flags, lan["hub"], "virtwire.v1.NetClientService/ListNetClients")
    assert got.returncode == 0 and "hub0port0" in got.stdout, got.stderr
    denied = run(*flags, "-d", '{"name": "hub0port0"}', lan["hub"],
                 "virtwire.v1.NetClientService/SetLink")
    assert denied.returncode != 0 and "PermissionDenied" in denied.stderr
    assert run("-plaintext", lan["hub"], "list").returncode != 0
    assert run("-cacert", str(pki.dir / "ca.pem"), lan["hub"], "list").returncode != 0


def test_client_checks_the_server_name(pki: Pki, tmp_path: Path) -> None:
    """A server reached at an address its certificate does not name is refused."""
    with serve("hub", ["--listen", "127.0.0.2:0", *pki.args("hub")], tmp_path) as hub:
        assert _health(hub.address, pki.creds("controller")) == grpc.StatusCode.UNAVAILABLE
        out = subprocess.run([*VIRTWIRE, "list", "-s", hub.address, *pki.args("controller")],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 1 and "cannot reach" in out.stderr
    ca = certs.Authority.load(pki.dir)
    ca.issue_to(tmp_path, "hub2", ["127.0.0.2"], "service")
    (tmp_path / "ca.pem").write_bytes((pki.dir / "ca.pem").read_bytes())
    with serve("hub", ["--listen", "127.0.0.2:0", "--tls-dir", str(tmp_path),
                       "--tls-name", "hub2"], tmp_path) as hub:
        assert _health(hub.address, pki.creds("controller")) == grpc.StatusCode.OK


def test_cli_reads_the_tls_dir_from_the_environment(lan: dict[str, str], pki: Pki) -> None:
    env = {**os.environ, "VIRTWIRE_TLS_DIR": str(pki.dir)}
    ok = subprocess.run([*VIRTWIRE, "list", "-s", lan["hub"]], capture_output=True,
                        text=True, timeout=30, env=env)
    assert ok.returncode == 0 and "hub0port0" in ok.stdout, ok.stderr
    viewer = subprocess.run([*VIRTWIRE, "link", "-s", lan["hub"], "hub0port0", "down"],
                            capture_output=True, text=True, timeout=30,
                            env={**env, "VIRTWIRE_TLS_NAME": "viewer"})
    assert viewer.returncode == 1 and "PERMISSION_DENIED" in viewer.stderr
    plain = subprocess.run([*VIRTWIRE, "list", "-s", lan["hub"]], capture_output=True,
                           text=True, timeout=30)
    assert plain.returncode == 1 and "cannot reach" in plain.stderr


# -- the default LAN with tls: ------------------------------------------------------
EXAMPLE = Path(__file__).parent.parent / "examples" / "default.yaml"


def test_default_lan_runs_with_mutual_tls(tmp_path: Path) -> None:
    """`up -d` of the default LAN with `tls: {dir}`: every service gets its own
    certificate, status/ping/link/capture work through the LAN's controller
    identity, plaintext and viewer clients are refused, and down removes the keys."""
    import json
    import socket

    pki_dir = tmp_path / "pki"
    subprocess.run([*VIRTWIRE, "certs", "init", str(pki_dir)], check=True,
                   capture_output=True)
    subprocess.run([*VIRTWIRE, "certs", "issue", str(pki_dir), "viewer", "--role", "viewer"],
                   check=True, capture_output=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    topo = tmp_path / "lan.yaml"
    topo.write_text(EXAMPLE.read_text().replace("127.0.0.1:10555", f"127.0.0.1:{port}")
                    .replace("name: default", "name: tlslan\ntls: {dir: pki}"))
    state = tmp_path / "state"
    env = {**os.environ, "VIRTWIRE_STATE_DIR": str(state)}
    env.pop("VIRTWIRE_TLS_DIR", None)

    def cli(*args: str, extra: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*VIRTWIRE, *args], capture_output=True, text=True,
                              timeout=90, env={**env, **(extra or {})})

    up = cli("up", str(topo), "--detach")
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        lan_tls = state / "tlslan" / "tls"
        assert stat.S_IMODE(os.stat(lan_tls).st_mode) == 0o700
        keys = sorted(p.name for p in lan_tls.glob("*-key.pem"))
        assert "controller-key.pem" in keys and "vm1-e1000-key.pem" in keys, keys
        for key in lan_tls.glob("*-key.pem"):
            assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
        status = cli("status", "--json")
        assert status.returncode == 0, status.stderr
        services = [s for n in json.loads(status.stdout)["nodes"] for s in n["services"]]
        assert len(services) == 8 and all(s["healthy"] for s in services)
        ping = cli("ping", "vm1", "vm2", "-c", "2")
        assert ping.returncode == 0, ping.stdout + ping.stderr
        link = cli("link", "vm2", "down")
        assert link.returncode == 0, link.stderr
        assert cli("ping", "vm1", "vm2", "-c", "1", "-W", "0.5").returncode == 1
        assert cli("link", "vm2", "up").returncode == 0
        # Another client: the viewer may read but not set links; plaintext gets nothing.
        viewer = {"VIRTWIRE_TLS_DIR": str(pki_dir), "VIRTWIRE_TLS_NAME": "viewer"}
        assert cli("status", extra=viewer).returncode == 0
        denied = cli("link", "vm2", "down", extra=viewer)
        assert denied.returncode == 1 and "PERMISSION_DENIED" in denied.stderr
        hub = next(s["address"] for s in services if s["kind"] == "hub")
        assert _health(hub, None) == grpc.StatusCode.UNAVAILABLE
        orch = json.loads((state / "tlslan" / "state.json").read_text())["orchestrator"]
        assert _health(orch, None) == grpc.StatusCode.UNAVAILABLE
    finally:
        down = cli("down", "tlslan")
    assert down.returncode == 0, down.stderr
    assert not (state / "tlslan").exists()
