"""No code and no host paths from RPCs (issue 7, item 4): each probe is refused.

The probes that owned a host through its ports: StartService ran a caller's
shell script as root (`--backend tap,...,script=/bin/sh` in raw args) after
writing it through a guestmem started with `--shm-path`; AddBackend and Up
ran `script=` paths; `--liste=` slipped past the reserved-argument check as
an abbreviation. Each is refused here with its gRPC code and a message that
says which field and how to allow it, and each test checks that nothing ran
(a script that would leave a marker file) and nothing was written (a victim
file keeps its bytes and mtime). What the host's own command line allows
(`--allow-script NAME=PATH`, `--allow-netns`, a topology file read here)
still works.
"""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from virtwire.address import shorten
from virtwire.allowlist import RpcPolicy, parse_allow_scripts
from virtwire.cli import build_parser
from virtwire.errors import ConfigError, PermissionDeniedError
from virtwire.orchestrator.spec import (
    GuestServiceSpec,
    HubPortSpec,
    HubServiceSpec,
    TapServiceSpec,
)
from virtwire.orchestrator.start_options import from_start_request, to_start_options
from virtwire.server.orchestrator import OrchestratorServer
from virtwire.topology import parse_topology
from virtwire.v1 import orchestrator_pb2, orchestrator_pb2_grpc, tap_pb2, tap_pb2_grpc

from support.netns import require_root, unique_name
from support.procs import VIRTWIRE, serve

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
StartRequest = orchestrator_pb2.OrchestratorServiceStartServiceRequest


def marker_script(tmp_path: Path, name: str = "evil.sh") -> tuple[Path, Path]:
    """An executable script that leaves ``marker`` (with its arguments) if it ever runs."""
    marker = tmp_path / f"{name}.ran"
    script = tmp_path / name
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {marker}\n")
    script.chmod(0o755)
    return script, marker


@pytest.fixture
async def orch(tmp_path: Path) -> AsyncIterator[OrchestratorServer]:
    """`virtwire serve orchestrator` with no --allow-* flags, in-process."""
    host = OrchestratorServer("127.0.0.1:0", state_dir=tmp_path / "state")
    await host.start()
    yield host
    await host.stop(grace=0.5)


async def _rpc_error(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value


def _field(number: int, value: str) -> bytes:
    """A length-delimited protobuf field (what an old client sent as kind and args)."""
    data = value.encode()
    out = bytearray([(number << 3) | 2])
    size = len(data)
    while True:
        out.append((size & 0x7F) | (0x80 if size > 0x7F else 0))
        size >>= 7
        if not size:
            return bytes(out) + data


async def _raw_start_service(address: str, request: bytes
                             ) -> orchestrator_pb2.OrchestratorServiceStartServiceResponse:
    async with grpc.aio.insecure_channel(address) as ch:
        call = ch.unary_unary(
            "/virtwire.v1.OrchestratorService/StartService",
            request_serializer=None,
            response_deserializer=(
                orchestrator_pb2.OrchestratorServiceStartServiceResponse.FromString))
        got: orchestrator_pb2.OrchestratorServiceStartServiceResponse = await call(
            request, timeout=30)
        return got


# -- StartService -------------------------------------------------------------------------
async def test_start_service_with_raw_args_is_refused_and_runs_nothing(
        orch: OrchestratorServer, tmp_path: Path) -> None:
    """The first probe, as an old client sends it: kind tap, args with script=."""
    script, marker = marker_script(tmp_path)
    old = (StartRequest(lan="x", name="t", listen="127.0.0.1:0").SerializeToString()
           + _field(3, "tap") + _field(4, "--backend")
           + _field(4, f"tap,ifname=vwx0,script={script}"))
    err = await _rpc_error(_raw_start_service(orch.address, old))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "StartService needs the service's options: set one of hub, tap" in err.details()
    assert not marker.exists() and orch.agent.records == {}


async def test_start_service_tap_script_path_is_permission_denied(
        orch: OrchestratorServer, tmp_path: Path) -> None:
    script, marker = marker_script(tmp_path)
    async with grpc.aio.insecure_channel(orch.address) as ch:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
        for option in ("script", "downscript"):
            backend = tap_pb2.BackendConfig(name="t", tap=tap_pb2.TapBackendConfig(
                ifname="vwx0", **{option: str(script)}))
            err = await _rpc_error(stub.StartService(StartRequest(
                lan="x", name="t", listen="127.0.0.1:0",
                tap=orchestrator_pb2.StartTapOptions(backend=backend)), timeout=30))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
            assert err.details().startswith(f"{option}: {shorten(str(script))} is a path: "
                                            "over an RPC a script is a NAME that the receiving "
                                            "host allows (virtwire serve orchestrator "
                                            "--allow-script NAME=PATH there)")
        # A name it does not allow, and a unix socket: refused too.
        err = await _rpc_error(stub.StartService(StartRequest(
            lan="x", name="t", listen="127.0.0.1:0", tap=orchestrator_pb2.StartTapOptions(
                backend=tap_pb2.BackendConfig(tap=tap_pb2.TapBackendConfig(script="up")))),
            timeout=30))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "script 'up' is not allowed on this host" in err.details()
        assert "'virtwire serve orchestrator --allow-script up=PATH'" in err.details()
        err = await _rpc_error(stub.StartService(StartRequest(
            lan="x", name="t", listen="127.0.0.1:0", tap=orchestrator_pb2.StartTapOptions(
                backend=tap_pb2.BackendConfig(stream=tap_pb2.StreamBackendConfig(
                    address=f"unix:{tmp_path}/s.sock", listen=True)))), timeout=30))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "is a unix socket path" in err.details()
        listed = await stub.ListServices(
            orchestrator_pb2.OrchestratorServiceListServicesRequest(), timeout=10)
    assert not marker.exists() and list(listed.services) == []
    assert not (tmp_path / "s.sock").exists()


async def test_guestmem_over_start_service_never_opens_a_given_path(
        orch: OrchestratorServer, tmp_path: Path) -> None:
    """The --shm-path probe: there is no such option; a smuggled old field is ignored."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n" * 1000)
    before = victim.stat()
    smuggled = _field(4, "--shm-path") + _field(4, str(victim))
    # Old-style (args only): refused.
    err = await _rpc_error(_raw_start_service(orch.address, StartRequest(
        lan="x", name="m", listen="127.0.0.1:0").SerializeToString() + smuggled))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Typed options plus the smuggled field: a guestmem of its own, the field unread.
    typed = StartRequest(lan="x", name="m", listen="127.0.0.1:0",
                         guestmem=orchestrator_pb2.StartGuestMemOptions(size=1 << 20,
                                                                         no_prealloc=True))
    got = await _raw_start_service(orch.address, typed.SerializeToString() + smuggled)
    assert got.pid > 0
    cmdline = Path(f"/proc/{got.pid}/cmdline").read_bytes().split(b"\0")
    assert b"--shm-path" not in cmdline and str(victim).encode() not in cmdline
    assert cmdline[cmdline.index(b"--size") + 1] == b"1048576"
    await orch.agent.stop("x", [], timeout=5)
    after = victim.stat()
    assert victim.read_bytes() == b"precious\n" * 1000
    assert (after.st_mtime_ns, after.st_size, after.st_ino) == (
        before.st_mtime_ns, before.st_size, before.st_ino)


async def test_start_service_guest_netns_needs_allow_netns(orch: OrchestratorServer) -> None:
    request = StartRequest(lan="x", name="g", listen="127.0.0.1:0",
                           guest=orchestrator_pb2.StartGuestOptions(
                               e1000="127.0.0.1:1", guestmem="127.0.0.1:2",
                               bridge_tap="vwg0", netns="victim-ns"))
    async with grpc.aio.insecure_channel(orch.address) as ch:
        err = await _rpc_error(orchestrator_pb2_grpc.OrchestratorServiceStub(ch).StartService(
            request, timeout=30))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert err.details() == ("guest.netns: network namespace 'victim-ns' is not allowed over "
                             "an RPC on this host; allow it with 'virtwire serve orchestrator "
                             "--allow-netns'")
    allowing = RpcPolicy(command="virtwire serve orchestrator", allow_netns=True)
    spec = from_start_request(request, allowing)
    assert isinstance(spec, GuestServiceSpec) and "--netns-create" not in spec.argv()
    assert spec.argv()[-2:] == ["--netns", "victim-ns"]


@pytest.mark.parametrize(("options", "message"), [
    ({"hub": orchestrator_pb2.StartHubOptions(ports=[
        orchestrator_pb2.StartHubPort(name="p", peer="unix:/run/x.sock/")])},
     "hub.ports[p].peer: 'unix:/run/x.sock/' is a unix socket path"),
    ({"e1000": orchestrator_pb2.StartE1000Options(
        guestmem="unix:/dev/shm/x", mac="52:54:00:12:34:56", model="82540EM", compat="9.0",
        name="e")}, "e1000.guestmem: 'unix:/dev/shm/x' is a unix socket path"),
])
async def test_start_service_dials_no_unix_socket(orch: OrchestratorServer,
                                                  options: dict[str, object],
                                                  message: str) -> None:
    async with grpc.aio.insecure_channel(orch.address) as ch:
        err = await _rpc_error(orchestrator_pb2_grpc.OrchestratorServiceStub(ch).StartService(
            StartRequest(lan="x", name="s", listen="127.0.0.1:0", **options), timeout=30))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and message in err.details()


@pytest.mark.parametrize(("options", "message"), [
    ({"hub": orchestrator_pb2.StartHubOptions(ports=[orchestrator_pb2.StartHubPort(
        name="--shm-path=/x")])}, "bad hub port name '--shm-path=/x'"),
    ({"e1000": orchestrator_pb2.StartE1000Options(
        guestmem="127.0.0.1:1", mac="--ready-file=/etc/passwd", model="82540EM",
        compat="9.0", name="e")}, "e1000.mac"),
    ({"e1000": orchestrator_pb2.StartE1000Options(
        guestmem="127.0.0.1:1", mac="52:54:00:12:34:56", model="x" * 10_000,
        compat="9.0", name="e")}, "e1000.model 'xxxxx"),
    ({"guestmem": orchestrator_pb2.StartGuestMemOptions(size=1 << 50)}, "must be"),
    ({"guest": orchestrator_pb2.StartGuestOptions(e1000="127.0.0.1:1", guestmem="127.0.0.1:2",
                                                  ip="198.18.0.1")}, "198.18.0.1"),
])
async def test_start_service_checks_every_field(orch: OrchestratorServer,
                                                options: dict[str, object],
                                                message: str) -> None:
    async with grpc.aio.insecure_channel(orch.address) as ch:
        err = await _rpc_error(orchestrator_pb2_grpc.OrchestratorServiceStub(ch).StartService(
            StartRequest(lan="x", name="s", listen="127.0.0.1:0", **options), timeout=30))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert message in err.details() and len(err.details()) < 600
    assert orch.agent.records == {}


def test_typed_options_round_trip_and_allowed_names_resolve(tmp_path: Path) -> None:
    script, _ = marker_script(tmp_path, "ifup")
    hub = HubServiceSpec(hub_id=3, ports=(HubPortSpec("uplink", "198.18.7.1:5000/hub0port2"),
                                          HubPortSpec("hub0port0")))
    policy = RpcPolicy(command="virtwire serve orchestrator", scripts={"up": str(script)})
    back = from_start_request(StartRequest(**to_start_options(hub)), policy)
    assert back == hub
    tap = TapServiceSpec(backend="tap", options={"ifname": "vw0", "vnet_hdr": "on",
                                                 "script": "up", "id": "t0"},
                         peer="198.18.7.1:5000/")
    back = from_start_request(StartRequest(**to_start_options(tap)), policy)
    assert isinstance(back, TapServiceSpec) and back.peer == tap.peer
    # The agent runs the path its own --allow-script gave the name.
    assert back.options["script"] == str(script)
    spec = back.argv()[1]
    assert spec.startswith("tap,") and f"script={script}" in spec and "id=t0" in spec
    with pytest.raises(PermissionDeniedError, match="script 'up' is not allowed"):
        from_start_request(StartRequest(**to_start_options(tap)),
                           RpcPolicy(command="virtwire serve orchestrator"))


def test_allow_script_options_are_checked(tmp_path: Path) -> None:
    script, _ = marker_script(tmp_path, "ifup")
    assert parse_allow_scripts([f"up={script}"]) == {"up": str(script)}
    for bad, message in (("up", "expected NAME=PATH"), ("a/b=/bin/true", "bad --allow-script"),
                         (f"up={tmp_path}/none", "does not exist")):
        with pytest.raises(ConfigError, match=message):
            parse_allow_scripts(bad.split(","))
    with pytest.raises(ConfigError, match="given twice"):
        parse_allow_scripts([f"up={script}", f"up={script}"])
    out = subprocess.run([*VIRTWIRE, "serve", "tap", "--backend", "stream,listen=127.0.0.1:0",
                          "--allow-script", "up=/nonexistent"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 2 and "--allow-script up '/nonexistent' does not exist" in out.stderr


# -- AddBackend ---------------------------------------------------------------------------
def test_add_backend_script_path_is_refused_by_a_real_tap_service(tmp_path: Path) -> None:
    """The second probe against `virtwire serve tap`: /usr/bin/touch f did run as root."""
    script, marker = marker_script(tmp_path)
    with serve("tap", ["--backend", "stream,listen=127.0.0.1:0"], tmp_path) as tap:
        with grpc.insecure_channel(tap.address) as ch:
            stub = tap_pb2_grpc.TapServiceStub(ch)
            for name in ("/usr/bin/touch", str(script)):
                with pytest.raises(grpc.RpcError) as info:
                    stub.AddBackend(tap_pb2.AddBackendRequest(config=tap_pb2.BackendConfig(
                        tap=tap_pb2.TapBackendConfig(ifname="f", script=name))), timeout=10)
                assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert info.value.details().startswith(f"script: {shorten(name)} is a path")
                assert "virtwire serve tap --allow-script NAME=PATH" in info.value.details()
            listed = stub.ListBackends(tap_pb2.ListBackendsRequest(), timeout=10)
    assert [b.name for b in listed.backends] == ["stream0"]
    assert not marker.exists() and not (tmp_path / "f").exists()
    assert not Path("/sys/class/net/f").exists()


@pytest.mark.root
def test_add_backend_runs_a_script_the_command_line_allows(tmp_path: Path) -> None:
    """`serve tap --allow-script up=PATH`: AddBackend says `up`, the service runs PATH."""
    require_root()
    script, marker = marker_script(tmp_path, "ifup")
    ifname = unique_name("vwn")
    with serve("tap", ["--backend", "stream,listen=127.0.0.1:0",
                       "--allow-script", f"up={script}"], tmp_path) as tap:
        with grpc.insecure_channel(tap.address) as ch:
            stub = tap_pb2_grpc.TapServiceStub(ch)
            got = stub.AddBackend(tap_pb2.AddBackendRequest(config=tap_pb2.BackendConfig(
                name="t", tap=tap_pb2.TapBackendConfig(ifname=ifname, script="up"))),
                timeout=30)
            assert got.backend.kind == "tap"
            assert marker.read_text() == f"{ifname}\n"
            stub.RemoveBackend(tap_pb2.RemoveBackendRequest(name="t"), timeout=30)
    assert not Path(f"/sys/class/net/{ifname}").exists()


# -- Up -------------------------------------------------------------------------------------
def _tap_lan(script: str, ifname: str = "vwz0") -> str:
    return textwrap.dedent(f"""\
        name: probe
        nodes:
          hub0: {{kind: hub}}
          t: {{kind: tap, backend: tap, ifname: {ifname}, script: {script}}}
        links: [[t, hub0]]
        """)


async def _up(address: str, topology: str) -> list[orchestrator_pb2.OrchestratorServiceUpResponse]:
    async with grpc.aio.insecure_channel(address) as ch:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
        return [event async for event in stub.Up(orchestrator_pb2.OrchestratorServiceUpRequest(
            topology=topology, source="probe.yaml"), timeout=60)]


async def test_up_by_rpc_with_a_script_path_is_refused(orch: OrchestratorServer,
                                                       tmp_path: Path) -> None:
    script, marker = marker_script(tmp_path)
    err = await _rpc_error(_up(orch.address, _tap_lan(str(script))))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert err.details() == (
        f"probe.yaml:4: node 't': script: {shorten(str(script))} is a path: over an RPC a "
        "script is a NAME that the receiving host allows (virtwire serve orchestrator "
        "--allow-script NAME=PATH there), or give the path on that host's own command line "
        "or topology file")
    # Unix sockets, netns and tls: dirs, all at once; and a mistake beside them is
    # INVALID_ARGUMENT.
    text = textwrap.dedent("""\
        name: probe
        tls: {dir: /etc/virtwire/pki}
        nodes:
          q: {kind: tap, backend: stream, listen: 'unix:/tmp/probe.sock'}
          vm1: {kind: vm, bridge: {ifname: vw0, netns: ns1}}
        """)
    err = await _rpc_error(_up(orch.address, text))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert len(err.details().splitlines()) == 3, err.details()
    assert "probe.yaml:2: tls: a topology sent by RPC may not name a directory" in err.details()
    assert "node 'q': listen: 'unix:/tmp/probe.sock' is a unix socket path" in err.details()
    assert "node 'vm1': bridge.netns: network namespace 'ns1'" in err.details()
    err = await _rpc_error(_up(orch.address, text.replace("vw0", "a/b")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not marker.exists() and orch.orchestrator.topology is None
    assert not Path("/tmp/probe.sock").exists()


async def test_up_without_topology_needs_one_given_at_start(orch: OrchestratorServer) -> None:
    err = await _rpc_error(_up(orch.address, ""))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "this orchestrator was started without one" in err.details()


async def test_up_source_is_not_echoed_unbounded(orch: OrchestratorServer) -> None:
    async with grpc.aio.insecure_channel(orch.address) as ch:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
        call = stub.Up(orchestrator_pb2.OrchestratorServiceUpRequest(
            topology="name: x\nnodes: {}\n", source="s" * 100_000), timeout=30)
        err = await _rpc_error(call.read())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and len(err.details()) < 400


@pytest.mark.root
async def test_up_by_rpc_runs_a_script_name_the_orchestrator_allows(tmp_path: Path) -> None:
    require_root()
    script, marker = marker_script(tmp_path, "ifup")
    ifname = unique_name("vwu")
    host = OrchestratorServer("127.0.0.1:0", state_dir=tmp_path / "state",
                              allowed_scripts={"up": str(script)})
    await host.start()
    try:
        events = await _up(host.address, _tap_lan("up", ifname))
        assert events[-1].kind == orchestrator_pb2.UP_EVENT_KIND_DONE, events[-1].message
        assert marker.read_text() == f"{ifname}\n"
    finally:
        await host.stop(grace=1)
    assert not Path(f"/sys/class/net/{ifname}").exists()


@pytest.mark.root
def test_local_up_of_a_file_runs_its_script(tmp_path: Path) -> None:
    """`virtwire up FILE --detach`: the file is read here, so its script= path runs."""
    require_root()
    _, marker = marker_script(tmp_path, "ifup")
    ifname = unique_name("vwl")
    (tmp_path / "lan.yaml").write_text(_tap_lan("./ifup", ifname))
    env = {**os.environ, "VIRTWIRE_STATE_DIR": str(tmp_path / "state")}
    up = subprocess.run([*VIRTWIRE, "up", str(tmp_path / "lan.yaml"), "--detach"],
                        capture_output=True, text=True, timeout=120, env=env)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert marker.read_text() == f"{ifname}\n"
        assert Path(f"/sys/class/net/{ifname}").exists()
    finally:
        down = subprocess.run([*VIRTWIRE, "down", "probe"], capture_output=True, text=True,
                              timeout=60, env=env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not Path(f"/sys/class/net/{ifname}").exists()


# -- argparse abbreviations ------------------------------------------------------------------
def test_abbreviated_options_are_refused(tmp_path: Path) -> None:
    """The fourth probe: `--liste=unix:PATH` no longer means --listen."""
    sock = tmp_path / "any.sock"
    out = subprocess.run([*VIRTWIRE, "serve", "hub", f"--liste=unix:{sock}"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and f"unrecognized arguments: --liste=unix:{sock}" in out.stderr
    assert not sock.exists()
    out = subprocess.run([*VIRTWIRE, "serve", "guestmem", "--shm=/tmp/x"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "unrecognized arguments: --shm=/tmp/x" in out.stderr


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _parsers(sub)
    return found


def test_every_parser_refuses_abbreviations() -> None:
    parsers = _parsers(build_parser())
    assert len(parsers) > 15
    assert [p.prog for p in parsers if p.allow_abbrev] == []
    # bench/ and deploy/ too: every ArgumentParser(...) and add_parser(...) says so.
    calls = 0
    for path in [*(ROOT / "services").rglob("*.py"), *(ROOT / "bench").rglob("*.py"),
                 *(ROOT / "deploy").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
                if name in ("ArgumentParser", "add_parser"):
                    calls += 1
                    kw = {k.arg: k.value for k in node.keywords}
                    assert isinstance(kw.get("allow_abbrev"), ast.Constant) and \
                        kw["allow_abbrev"].value is False, f"{path}:{node.lineno}"
    assert calls > 20


def test_a_topology_from_a_file_keeps_its_paths() -> None:
    """The trusted path is unchanged: a file read here may name scripts and sockets."""
    topo = parse_topology(_tap_lan("/bin/true").replace(
        "links: [[t, hub0]]", "  q: {kind: tap, backend: stream, listen: 'unix:/tmp/q.sock'}\n"
        "links: [[t, hub0], [q, hub0]]"))
    assert [t.options.get("script", t.options.get("listen")) for t in topo.taps()] == [
        "/bin/true", "unix:/tmp/q.sock"]


async def test_up_parses_the_topology_off_the_event_loop(
        orch: OrchestratorServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import virtwire.server.orchestrator as server

    threads: list[threading.Thread] = []

    def parse(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread())
        return parse_topology(*args, **kwargs)

    monkeypatch.setattr(server, "parse_topology", parse)
    err = await _rpc_error(_up(orch.address, "name: x\nnodes: {}\n"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert threads and threads[0] is not threading.main_thread()


async def test_add_port_dials_no_unix_socket(tmp_path: Path) -> None:
    """A hub port added by RPC dials only HOST:PORT: a unix socket is a host path."""
    from virtwire import tls
    from virtwire.server.hub import HubServer
    from virtwire.v1 import hub_pb2, hub_pb2_grpc

    sock = tmp_path / "victim.sock"
    async with HubServer("127.0.0.1:0") as hub, tls.aio_channel(hub.address) as channel:
        stub = hub_pb2_grpc.HubServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.AddPort(hub_pb2.AddPortRequest(name="p", peer=f"unix:{sock}/x"))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "unix socket path" in (err.value.details() or "")
        ports = await stub.ListPorts(hub_pb2.ListPortsRequest())
        assert [p.name for p in ports.ports] == []
        got = await stub.AddPort(hub_pb2.AddPortRequest(name="p", peer="127.0.0.1:1/x"))
        assert got.port.name == "p"
