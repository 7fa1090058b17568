"""`virtwire render compose|k8s`: every example and a mixed LAN, both formats."""

from __future__ import annotations

import base64
import ipaddress
import itertools
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from virtwire import __version__
from virtwire.cli import build_parser, main
from virtwire.errors import ConfigError
from virtwire.orchestrator.render import PORT, render
from virtwire.topology import (
    ContainerNode,
    SwitchNode,
    TapNode,
    Topology,
    VmNode,
    load_topology,
)

from support.need import need

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BENCHMARK = ipaddress.ip_network("198.18.0.0/15")
LISTEN = f"0.0.0.0:{PORT}"

# Hub-to-hub trunk, a vm peer pair, a Linux TAP, a bridged guest, a loopback
# dgram backend and a big guest RAM: every case the renderer handles.
MIXED = """\
name: mixed
nodes:
  hubb: {kind: hub}
  huba: {kind: hub}
  vm1: {kind: vm, ip: 198.18.0.1/24, memory: 256MiB}
  vm2: {kind: vm, ip: 198.18.0.2/24}
  vm3: {kind: vm, bridge: {ifname: vw-b0, ip: 198.18.0.13/24}}
  vm4: {kind: vm, ip: 198.18.0.4/24}
  t1: {kind: tap, backend: tap, ifname: vw0, vnet_hdr: on}
  t2: {kind: tap, backend: dgram, local: 127.0.0.1:6000, remote: 198.18.9.9:6001}
  t3: {kind: tap, backend: stream, connect: 198.18.9.9:5555, reconnect: 1}
links:
  - [vm1, vm2]
  - [huba:trunk, hubb]
  - [vm3, huba]
  - [vm4, hubb:vm4]
  - [t1, hubb]
  - [t2, huba]
  - [t3, hubb]
"""


def _topologies(tmp_path: Path) -> list[Path]:
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text(MIXED)
    return [*sorted(p for p in EXAMPLES.glob("*.yaml") if _renderable(p)), mixed]


def _renderable(path: Path) -> bool:
    """Whether render takes the example: netns and qemu nodes run only under
    'virtwire up' on their machine (test_host_nodes checks the refusal)."""
    return not any(n.kind in ("netns", "qemu") for n in load_topology(path).nodes.values())


@pytest.fixture(params=[*sorted(p.name for p in EXAMPLES.glob("*.yaml") if _renderable(p)),
                        "mixed.yaml"])
def topo_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    name = str(request.param)
    if name == "mixed.yaml":
        path = tmp_path / name
        path.write_text(MIXED)
        return path
    return EXAMPLES / name


def _render(topo_file: Path, fmt: str, tmp_path: Path) -> Path:
    out = tmp_path / f"out-{fmt}.yaml"
    assert main(["render", fmt, str(topo_file), "-o", str(out)]) == 0
    return out


def _expected_targets(topo: Topology) -> dict[str, list[str]]:
    """For each dialing service: the ``LISTENER:50051/NETCLIENT`` it must dial."""
    want: dict[str, list[str]] = {}
    for link in topo.links:
        want.setdefault(link.dialer.service, []).append(
            f"{link.listener.service}:{PORT}/{link.listener.netclient}")
    return want


def _dial_targets(command: list[str]) -> list[str]:
    """The addresses a command dials: --peer ADDR, or a hub's --port NAME=ADDR."""
    targets = []
    for flag, value in itertools.pairwise(command):
        if flag == "--peer":
            targets.append(value)
        elif flag == "--port" and "=" in value:
            targets.append(value.split("=", 1)[1])
    return targets


def _check_commands(topo: Topology, commands: dict[str, list[str]]) -> None:
    assert list(commands) == [s.name for s in topo.services]
    want = _expected_targets(topo)
    for svc in topo.services:
        cmd = commands[svc.name]
        # A switch node's service is a hub's, served by `serve switch`.
        serve_kind = "switch" if isinstance(topo.node(svc.node), SwitchNode) else svc.kind
        assert cmd[:4] == ["serve", serve_kind, "--listen", LISTEN], cmd
        got = _dial_targets(cmd)
        assert len(got) == len(want.get(svc.name, [])), svc.name
        for target, expected in zip(got, want.get(svc.name, []), strict=True):
            if expected.endswith("/"):
                # A link to a hub without a port: a port the hub creates at start,
                # named as that hub names ports, so a restarted dialer finds it again.
                hub, _, port = target.partition(f":{PORT}/")
                assert target.startswith(expected) and re.fullmatch(rf"{hub}port\d+", port)
                hub_args = [list(p) for p in itertools.pairwise(commands[hub])]
                assert ["--port", port] in hub_args and ["--name", hub] in hub_args
            else:
                assert target == expected, svc.name
        assert not any("127.0.0.1" in arg for arg in cmd), cmd
        node = topo.node(svc.node)
        if isinstance(node, TapNode):
            spec = cmd[cmd.index("--backend") + 1]
            assert spec.split(",")[0] == node.backend and f"id={node.name}" in spec
        if svc.kind in ("e1000", "guest"):
            assert isinstance(node, VmNode)
            assert cmd[cmd.index("--guestmem") + 1] == f"{node.name}-guestmem:{PORT}"
            # A bridged guest's netns is made inside its container, by the guest.
            netns = svc.kind == "guest" and node.bridge is not None and bool(node.bridge.netns)
            assert ("--netns-create" in cmd) == netns, cmd


def _needs_caps(topo: Topology, name: str) -> bool:
    svc = next(s for s in topo.services if s.name == name)
    node = topo.node(svc.node)
    if isinstance(node, TapNode):
        return node.backend == "tap"
    if isinstance(node, ContainerNode):  # its TAP, opened inside the container node
        return True
    return isinstance(node, VmNode) and svc.kind == "guest" and node.bridge is not None


def _no_k8s_for_containers(topo: Topology) -> None:
    """render k8s refuses container nodes (test_container_node checks the message)."""
    if topo.containers():
        pytest.skip("container nodes render as compose only")


def _parse_shm(text: str) -> int:
    assert text.endswith("m")
    return int(text[:-1]) << 20


def test_compose(topo_file: Path, tmp_path: Path) -> None:
    topo = load_topology(topo_file)
    doc: dict[str, Any] = yaml.safe_load(_render(topo_file, "compose", tmp_path).read_text())
    assert doc["version"] == "3.8"
    services = doc["services"]
    # Container nodes run their own image (test_container_node checks them).
    assert list(services) == [*(s.name for s in topo.services),
                              *(c.name for c in topo.containers())]
    _check_commands(topo, {svc.name: services[svc.name]["command"] for svc in topo.services})
    (net_name, net), = doc["networks"].items()
    (ipam,) = net["ipam"]["config"]
    assert ipaddress.ip_network(ipam["subnet"]).subnet_of(BENCHMARK)  # type: ignore[arg-type]
    assert net["internal"] is True
    for svc in topo.services:
        spec = services[svc.name]
        assert spec["image"] == f"virtwire:{__version__}"
        assert spec["networks"] == [net_name]
        assert "ports" not in spec  # nothing is published by default
        # compose restarts by `restart`, a Swarm by deploy.restart_policy.
        assert spec["restart"] == "on-failure"
        assert spec["deploy"] == {"restart_policy": {"condition": "on-failure"}}
        node = topo.node(svc.node)
        container = [node.name] if isinstance(node, ContainerNode) else []
        assert spec.get("depends_on", []) == [*svc.needs, *container]
        if _needs_caps(topo, svc.name):
            assert "NET_ADMIN" in spec["cap_add"]
            assert spec["devices"] == ["/dev/net/tun:/dev/net/tun"] and spec["user"] == "0"
        else:
            assert not {"cap_add", "devices", "user"} & set(spec), svc.name
        node = topo.node(svc.node)
        if svc.kind == "guestmem":
            assert isinstance(node, VmNode)
            assert _parse_shm(spec["shm_size"]) >= node.memory
            assert spec["ipc"] == "shareable"
        elif isinstance(node, VmNode):
            assert spec["ipc"] == f"service:{node.name}-guestmem"
            assert "shm_size" not in spec
        else:
            assert "shm_size" not in spec and "ipc" not in spec


def test_k8s(topo_file: Path, tmp_path: Path) -> None:
    topo = load_topology(topo_file)
    _no_k8s_for_containers(topo)
    docs = list(yaml.safe_load_all(_render(topo_file, "k8s", tmp_path).read_text()))
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    k8s_services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    names = [s.name for s in topo.services]
    assert len(docs) == 2 * len(names)
    assert list(deployments) == names and list(k8s_services) == names
    commands = {}
    for svc in topo.services:
        dep, kvc = deployments[svc.name], k8s_services[svc.name]
        for obj in (dep, kvc, dep["spec"]["template"]):
            labels = obj["metadata"]["labels"]
            assert labels["app.kubernetes.io/part-of"] == "virtwire"
            assert labels["virtwire/lan"] == topo.name
        assert dep["apiVersion"] == "apps/v1" and dep["spec"]["replicas"] == 1
        selector = dep["spec"]["selector"]["matchLabels"]
        assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
        assert kvc["spec"]["selector"] == selector
        assert kvc["spec"]["type"] == "ClusterIP"
        assert [p["port"] for p in kvc["spec"]["ports"]] == [PORT]
        pod = dep["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == f"virtwire:{__version__}"
        assert [p["containerPort"] for p in container["ports"]] == [PORT]
        commands[svc.name] = container["args"]
        if _needs_caps(topo, svc.name):
            assert "NET_ADMIN" in container["securityContext"]["capabilities"]["add"]
        else:
            assert "securityContext" not in container, svc.name
        node = topo.node(svc.node)
        if svc.kind == "guestmem":
            assert isinstance(node, VmNode)
            (shm,) = [v for v in pod["volumes"] if v["name"] == "shm"]
            assert shm["emptyDir"]["medium"] == "Memory"
            assert int(shm["emptyDir"]["sizeLimit"].removesuffix("Mi")) << 20 >= node.memory
    _check_commands(topo, commands)


def test_both_formats_give_the_same_commands(topo_file: Path) -> None:
    topo = load_topology(topo_file)
    _no_k8s_for_containers(topo)
    compose = yaml.safe_load(render(topo, "compose"))
    k8s = [d for d in yaml.safe_load_all(render(topo, "k8s")) if d["kind"] == "Deployment"]
    assert [d["spec"]["template"]["spec"]["containers"][0]["args"] for d in k8s] == [
        spec["command"] for spec in compose["services"].values()]


def test_loopback_backends_listen_on_all_addresses(tmp_path: Path) -> None:
    topo = load_topology(_topologies(tmp_path)[-1])
    compose = yaml.safe_load(render(topo, "compose"))
    t2 = compose["services"]["t2"]["command"]
    assert t2[t2.index("--backend") + 1] == (
        "dgram,local=0.0.0.0:6000,remote=198.18.9.9:6001,id=t2")
    t3 = compose["services"]["t3"]["command"]
    assert "connect=198.18.9.9:5555" in t3[t3.index("--backend") + 1]
    default = yaml.safe_load(render(load_topology(EXAMPLES / "default.yaml"), "compose"))
    qemu0 = default["services"]["qemu0"]["command"]
    assert "stream,listen=0.0.0.0:10555,id=qemu0" in qemu0
    # The trunk: huba's port "trunk" dials a new port of hubb.
    huba = compose["services"]["huba"]["command"]
    trunk = next(a for a in huba if a.startswith(f"trunk=hubb:{PORT}/"))
    port = trunk.rpartition("/")[2]
    assert re.fullmatch(r"hubbport\d+", port)
    hubb = compose["services"]["hubb"]["command"]
    assert ["--port", port] in [list(p) for p in itertools.pairwise(hubb)]


def test_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "compose", str(EXAMPLES / "default.yaml")]) == 0
    assert "hub0" in yaml.safe_load(capsys.readouterr().out)["services"]


PUBLISHED = """\
name: pub
nodes:
  hub0: {kind: hub}
  vm1: {kind: vm, memory: 1G}
  q1: {kind: tap, backend: stream, listen: 127.0.0.1:10555, publish: 127.0.0.1:20555}
  q2: {kind: tap, backend: stream, listen: 127.0.0.1:10556}
links: [[vm1, hub0], [q1, hub0], [q2, hub0]]
"""


def test_the_header_says_how_to_run_and_tear_down(topo_file: Path, tmp_path: Path) -> None:
    out = _render(topo_file, "compose", tmp_path)
    header = [line for line in out.read_text().splitlines() if line.startswith("#")]
    name = load_topology(topo_file).name
    for command in (f"docker compose -p {name} -f {out} up -d",
                    f"docker compose -p {name} -f {out} down -v",
                    f"docker stack deploy -c {out} {name}", f"docker stack rm {name}"):
        assert any(command in line for line in header), (command, header)
    _no_k8s_for_containers(load_topology(topo_file))
    k8s = _render(topo_file, "k8s", tmp_path).read_text()
    assert f"kubectl -n {name} apply -f " in k8s and f"kubectl -n {name} delete -f " in k8s
    assert "# Run:       docker compose -p default -f FILE up -d" in render(
        load_topology(EXAMPLES / "default.yaml"), "compose")


def test_memory_is_a_size_not_a_quoted_number(tmp_path: Path) -> None:
    (tmp_path / "pub.yaml").write_text(PUBLISHED)
    text = render(load_topology(tmp_path / "pub.yaml"), "compose")
    assert "'1073741824'" not in text and "- --size\n    - 1G\n" in text
    text = render(load_topology(EXAMPLES / "default.yaml"), "compose")
    assert "'67108864'" not in text and "- --size\n    - 64M\n" in text
    command = yaml.safe_load(text)["services"]["vm1-guestmem"]["command"]
    assert command[command.index("--size") + 1] == "64M"


def test_a_stream_port_is_published_when_the_topology_asks(tmp_path: Path) -> None:
    (tmp_path / "pub.yaml").write_text(PUBLISHED)
    text = render(load_topology(tmp_path / "pub.yaml"), "compose")
    doc = yaml.safe_load(text)
    services = doc["services"]
    assert services["q1"]["ports"] == ["127.0.0.1:20555:10555"]
    assert services["q1"]["networks"] == ["lan", "publish"]
    for name, spec in services.items():
        if name != "q1":
            assert "ports" not in spec and spec["networks"] == ["lan"], name
    # The LAN's network stays internal; the publishing one does not masquerade.
    assert doc["networks"]["lan"]["internal"] is True
    assert doc["networks"]["publish"]["driver_opts"] == {
        "com.docker.network.bridge.enable_ip_masquerade": "false"}
    assert "# q1: its stream port is published at 127.0.0.1:20555" in text
    assert "# q2: its stream port is q2:10556 on the network, not published" in text
    compose = shutil.which("docker-compose")
    if compose is not None:
        out = tmp_path / "pub.yml"
        out.write_text(text)
        result = subprocess.run([compose, "-f", str(out), "config", "-q"], cwd=tmp_path,
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("fmt", ["compose", "k8s"])
def test_bad_topology_exits_2(tmp_path: Path, fmt: str,
                              capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nnodes:\n  hub0: {kind: hub, colour: red}\n")
    out = tmp_path / "out.yaml"
    assert main(["render", fmt, str(bad), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "colour" in err
    assert not out.exists()
    assert main(["render", fmt, str(tmp_path / "missing.yaml")]) == 2


def test_subnet(capsys: pytest.CaptureFixture[str]) -> None:
    example = str(EXAMPLES / "default.yaml")
    assert main(["render", "compose", example, "--subnet", "198.18.77.0/24"]) == 0
    net = yaml.safe_load(capsys.readouterr().out)["networks"]["lan"]
    assert net["ipam"]["config"] == [{"subnet": "198.18.77.0/24"}]
    for args, message in ((["compose", example, "--subnet", "10.0.0.0/24"], "not inside"),
                          (["compose", example, "--subnet", "junk"], "bad subnet"),
                          (["k8s", example, "--subnet", "198.18.77.0/24"], "compose format only")):
        assert main(["render", *args]) == 2
        assert message in capsys.readouterr().err


def test_unknown_format_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["render", "helm", str(EXAMPLES / "default.yaml")])
    assert exc.value.code == 2
    assert "invalid choice: 'helm'" in capsys.readouterr().err


def test_docker_compose_accepts_it(topo_file: Path, tmp_path: Path) -> None:
    compose = shutil.which("docker-compose")
    need(compose is not None, "docker-compose is not installed (Debian package docker-compose)")
    assert compose is not None
    out = _render(topo_file, "compose", tmp_path)
    result = subprocess.run([compose, "-f", str(out), "config", "-q"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


# --- trust: --insecure without tls:, each service's own secret with it ----------------

def _tls_topology(tmp_path: Path, ca_key: bool = True) -> Path:
    """examples/default.yaml plus a bridged guest and a Linux TAP (root containers),
    with ``tls: {dir: pki}``: a CA (and, without ``ca_key``, the handed-out pair)."""
    from virtwire import certs

    authority = certs.init_ca(tmp_path / "pki")
    if not ca_key:
        authority.issue_to(tmp_path / "pki", "controller", role="controller")
        authority.issue_to(tmp_path / "pki", "service", ["vm1-guest", "hub0"])
        (tmp_path / "pki" / certs.CA_KEY).unlink()
    text = (EXAMPLES / "default.yaml").read_text().replace("links:\n", (
        "  vm3: {kind: vm, bridge: {ifname: vw-b0, ip: 198.18.0.13/24}}\n"
        "  t1: {kind: tap, backend: tap, ifname: vw0}\n"
        "links:\n  - [vm3, hub0]\n  - [t1, hub0]\n"))
    topo = tmp_path / "lan.yaml"
    topo.write_text(text + "tls: {dir: pki}\n")
    return topo


def _flag(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def _cert_info(pem: bytes) -> dict[str, str]:
    from virtwire import certs

    return certs.describe(pem)


def test_without_tls_every_service_is_insecure(topo_file: Path, tmp_path: Path) -> None:
    topo = load_topology(topo_file)
    for fmt in ("compose", "k8s") if not topo.containers() else ("compose",):
        text = _render(topo_file, fmt, tmp_path).read_text()
        assert "--insecure" in text.split("\n", 3)[1] + text.split("\n", 3)[2]
        docs = list(yaml.safe_load_all(text))
        if fmt == "compose":
            commands = [s["command"] for s in docs[0]["services"].values()
                        if s["labels"]["virtwire.kind"] != "container"]
            assert "secrets" not in docs[0]
            assert not any("secrets" in s or "environment" in s
                           for s in docs[0]["services"].values()
                           if s["labels"]["virtwire.kind"] != "container")
        else:
            assert not [d for d in docs if d["kind"] == "Secret"]
            commands = [d["spec"]["template"]["spec"]["containers"][0]["args"]
                        for d in docs if d["kind"] == "Deployment"]
        assert len(commands) == len(topo.services)
        for cmd in commands:
            assert cmd[-1] == "--insecure" and not any(a.startswith("--tls") for a in cmd)
    assert not list(tmp_path.glob("*-certs"))


def test_compose_tls_secrets(tmp_path: Path) -> None:
    from virtwire import tls

    topo_path = _tls_topology(tmp_path)
    topo = load_topology(topo_path)
    out = tmp_path / "deploy" / "lan.yml"
    out.parent.mkdir()
    assert main(["render", "compose", str(topo_path), "-o", str(out)]) == 0
    text = out.read_text()
    assert "Mutual TLS" in text.splitlines()[1] and "--insecure" not in text
    doc = yaml.safe_load(text)
    certs_dir = tmp_path / "deploy" / "lan-certs"
    assert certs_dir.stat().st_mode & 0o777 == 0o700
    secrets = doc["secrets"]
    # Paths relative to the compose file, so the directory moves with it.
    assert secrets["ca"] == {"file": "./lan-certs/ca.pem"}
    assert set(secrets) == {"ca"} | {f"{s.name}-{w}" for s in topo.services
                                     for w in ("cert", "key")}
    ca = (certs_dir / "ca.pem").read_bytes()
    assert ca == (tmp_path / "pki" / "ca.pem").read_bytes()
    for svc in topo.services:
        spec = doc["services"][svc.name]
        cmd = spec["command"]
        assert _flag(cmd, "--tls-ca") == "/run/secrets/ca.pem"
        assert _flag(cmd, "--tls-cert") == f"/run/secrets/{svc.name}.pem"
        assert _flag(cmd, "--tls-key") == f"/run/secrets/{svc.name}-key.pem"
        # Only its own certificate and key, and the CA.
        assert [s["source"] for s in spec["secrets"]] == ["ca", f"{svc.name}-cert",
                                                          f"{svc.name}-key"]
        assert [s["target"] for s in spec["secrets"]] == [
            "ca.pem", f"{svc.name}.pem", f"{svc.name}-key.pem"]
        key_secret = spec["secrets"][2]
        root = _needs_caps(topo, svc.name)
        assert (key_secret["uid"], key_secret["gid"]) == (("0", "0") if root
                                                          else ("10000", "10000"))
        assert key_secret["mode"] == 0o400
        assert spec["environment"] == {"VIRTWIRE_TLS_DIR": "/run/secrets",
                                       "VIRTWIRE_TLS_NAME": svc.name}
        cert = out.parent / secrets[f"{svc.name}-cert"]["file"]
        key = out.parent / secrets[f"{svc.name}-key"]["file"]
        info = _cert_info(cert.read_bytes())
        assert info["name"] == svc.name and info["role"] == "service"
        assert svc.name in info["sans"].split(",")
        assert key.stat().st_mode & 0o777 == 0o600
        if os.geteuid() == 0:  # docker-compose bind-mounts it as it is
            assert (key.stat().st_uid, key.stat().st_gid) == ((0, 0) if root
                                                              else (10000, 10000))
        # The files are a working identity signed by the LAN's CA.
        tls.TlsConfig.from_files(certs_dir / "ca.pem", cert, key)
    controller = tls.TlsConfig.from_dir(certs_dir, "controller")
    assert controller.role == "controller"
    compose = shutil.which("docker-compose")
    if compose is not None:  # the secrets section is valid compose
        result = subprocess.run([compose, "-f", str(out), "config", "-q"], cwd=out.parent,
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr


def test_k8s_tls_secrets(tmp_path: Path) -> None:
    topo_path = _tls_topology(tmp_path)
    topo = load_topology(topo_path)
    out = tmp_path / "lan-k8s.yml"
    assert main(["render", "k8s", str(topo_path), "-o", str(out)]) == 0
    assert out.stat().st_mode & 0o777 == 0o600  # it holds private keys
    docs = list(yaml.safe_load_all(out.read_text()))
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert list(secrets) == [f"{s.name}-tls" for s in topo.services]
    ca = (tmp_path / "pki" / "ca.pem").read_bytes()
    for svc in topo.services:
        secret = secrets[f"{svc.name}-tls"]
        assert secret["type"] == "kubernetes.io/tls"
        data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
        assert data["ca.crt"] == ca
        info = _cert_info(data["tls.crt"])
        assert info["name"] == svc.name and svc.name in info["sans"].split(",")
        assert b"PRIVATE KEY" in data["tls.key"]
        pod = deployments[svc.name]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        args = container["args"]
        assert _flag(args, "--tls-cert") == f"/run/secrets/virtwire/{svc.name}.pem"
        assert _flag(args, "--tls-key") == f"/run/secrets/virtwire/{svc.name}-key.pem"
        assert _flag(args, "--tls-ca") == "/run/secrets/virtwire/ca.pem"
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "tls"]
        assert mount == {"name": "tls", "mountPath": "/run/secrets/virtwire", "readOnly": True}
        (volume,) = [v for v in pod["volumes"] if v["name"] == "tls"]
        assert volume["secret"]["secretName"] == f"{svc.name}-tls"  # its own only
        assert [i["path"] for i in volume["secret"]["items"]] == [
            "ca.pem", f"{svc.name}.pem", f"{svc.name}-key.pem"]
        if _needs_caps(topo, svc.name):
            assert volume["secret"]["defaultMode"] == 0o400
            assert "securityContext" not in pod
        else:  # the image's user reads it through the pod's fsGroup
            assert volume["secret"]["defaultMode"] == 0o440
            assert pod["securityContext"] == {"fsGroup": 10000}
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env == {"VIRTWIRE_TLS_DIR": "/run/secrets/virtwire",
                       "VIRTWIRE_TLS_NAME": svc.name}


def test_tls_handed_out_certificates(tmp_path: Path) -> None:
    """Without the CA key, tls.dir's service.pem is every service's (as `up` does)."""
    topo_path = _tls_topology(tmp_path, ca_key=False)
    certs_dir = tmp_path / "elsewhere"
    out = tmp_path / "lan.yml"
    assert main(["render", "compose", str(topo_path), "-o", str(out),
                 "--certs-dir", str(certs_dir)]) == 0
    doc = yaml.safe_load(out.read_text())
    service = (tmp_path / "pki" / "service.pem").read_bytes()
    for name in doc["services"]:
        assert (certs_dir / f"{name}.pem").read_bytes() == service
        assert doc["secrets"][f"{name}-cert"]["file"] == f"./elsewhere/{name}.pem"
    assert (certs_dir / "controller.pem").read_bytes() == (
        tmp_path / "pki" / "controller.pem").read_bytes()


def test_tls_render_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    topo_path = _tls_topology(tmp_path)
    # To stdout, the certificates need a home.
    assert main(["render", "compose", str(topo_path)]) == 2
    assert "--certs-dir" in capsys.readouterr().err
    assert main(["render", "k8s", str(topo_path), "-o", str(tmp_path / "k.yml"),
                 "--certs-dir", str(tmp_path / "pki")]) == 2
    assert "tls.dir" in capsys.readouterr().err
    assert not (tmp_path / "k.yml").exists()
    assert main(["render", "compose", str(EXAMPLES / "default.yaml"),
                 "--certs-dir", str(tmp_path / "c")]) == 2
    assert "--certs-dir is for a topology with tls:" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
    # With --certs-dir, stdout is fine.
    assert main(["render", "compose", str(topo_path), "--certs-dir",
                 str(tmp_path / "c2")]) == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    assert doc["secrets"]["ca"]["file"] == str((tmp_path / "c2" / "ca.pem").resolve())


def test_tls_rendered_by_a_non_root_user(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys cannot be given away: they stay the user's, and the header says what to chown."""
    import virtwire.orchestrator.render as render_mod

    monkeypatch.setattr(render_mod.os, "geteuid", lambda: 4242)
    monkeypatch.setattr(render_mod.os, "getuid", lambda: 4242)
    topo_path = _tls_topology(tmp_path)
    out = tmp_path / "lan.yml"
    assert main(["render", "compose", str(topo_path), "-o", str(out)]) == 0
    header = [line for line in out.read_text().splitlines() if line.startswith("#")]
    (chown,) = [line for line in header if "sudo chown 10000:10000" in line]
    topo = load_topology(topo_path)
    for svc in topo.services:
        key = str(tmp_path / "lan-certs" / f"{svc.name}-key.pem")
        # Root containers (a TAP, a bridged guest) read any file; the others need it.
        assert (key in chown.split()) != _needs_caps(topo, svc.name), svc.name
        assert (tmp_path / "lan-certs" / f"{svc.name}-key.pem").stat().st_uid != 10000


# -- metrics: (docs/metrics.md) --------------------------------------------------------
def _metrics_topology(tmp_path: Path, port: int = 9500) -> Topology:
    topo = tmp_path / "metrics.yaml"
    topo.write_text((EXAMPLES / "default.yaml").read_text() + f"metrics: {{port: {port}}}\n")
    return load_topology(topo)


def test_compose_carries_metrics_ports_and_scrape_labels(tmp_path: Path) -> None:
    topo = _metrics_topology(tmp_path)
    services = yaml.safe_load(render(topo, "compose"))["services"]
    assert set(services) == {s.name for s in topo.services}
    for svc in topo.services:
        spec = services[svc.name]
        cmd = spec["command"]
        assert _flag(cmd, "--metrics-listen") == "0.0.0.0:9500"
        assert _flag(cmd, "--metrics-lan") == topo.name
        assert _flag(cmd, "--metrics-service") == svc.name
        assert "--insecure" in cmd  # plaintext off loopback, as the gRPC port
        assert spec["expose"] == ["9500"]
        assert {k: v for k, v in spec["labels"].items() if k.startswith("prometheus.io/")} == {
            "prometheus.io/scrape": "true", "prometheus.io/port": "9500",
            "prometheus.io/path": "/metrics", "prometheus.io/scheme": "http"}
    # Without metrics: none of it.
    plain = yaml.safe_load(render(load_topology(EXAMPLES / "default.yaml"), "compose"))
    for spec in plain["services"].values():
        assert "--metrics-listen" not in spec["command"] and "expose" not in spec
        assert not any(k.startswith("prometheus.io/") for k in spec["labels"])


def test_k8s_carries_metrics_ports_and_scrape_annotations(tmp_path: Path) -> None:
    topo = _metrics_topology(tmp_path, 9600)
    docs = list(yaml.safe_load_all(render(topo, "k8s")))
    deployments = {d["metadata"]["name"]: d for d in docs if d and d["kind"] == "Deployment"}
    k8s_services = {d["metadata"]["name"]: d for d in docs if d and d["kind"] == "Service"}
    assert set(deployments) == {s.name for s in topo.services}
    for name, dep in deployments.items():
        template = dep["spec"]["template"]
        assert template["metadata"]["annotations"] == {
            "prometheus.io/scrape": "true", "prometheus.io/port": "9600",
            "prometheus.io/path": "/metrics", "prometheus.io/scheme": "http"}
        container = template["spec"]["containers"][0]
        assert {"name": "metrics", "containerPort": 9600, "protocol": "TCP"} in container["ports"]
        assert _flag(container["args"], "--metrics-listen") == "0.0.0.0:9600"
        assert _flag(container["args"], "--metrics-service") == name
        ports = k8s_services[name]["spec"]["ports"]
        assert [p["name"] for p in ports] == ["grpc", "metrics"]
        assert ports[1]["port"] == ports[1]["targetPort"] == 9600
    plain = list(yaml.safe_load_all(render(load_topology(EXAMPLES / "default.yaml"), "k8s")))
    for doc in plain:
        if doc and doc["kind"] == "Deployment":
            assert "annotations" not in doc["spec"]["template"]["metadata"]


def test_metrics_over_tls_are_scraped_over_https(tmp_path: Path) -> None:
    path = _tls_topology(tmp_path)
    path.write_text(path.read_text() + "metrics: {}\n")
    topo = load_topology(path)
    out = tmp_path / "lan.yml"
    assert main(["render", "compose", str(path), "-o", str(out)]) == 0
    services = yaml.safe_load(out.read_text())["services"]
    hub = services["hub0"]
    assert _flag(hub["command"], "--metrics-listen") == "0.0.0.0:9400"  # the default port
    assert "--insecure" not in hub["command"] and "--tls-cert" in hub["command"]
    assert hub["labels"]["prometheus.io/scheme"] == "https"
    assert topo.metrics_port == 9400


def test_log_format_json_reaches_every_service_command(tmp_path: Path) -> None:
    """render --log-format json: each service logs JSON lines named after itself
    (docs/logs.md); without it, or with text, the output is as it was."""
    mixed = _topologies(tmp_path)[-1]
    topo = load_topology(mixed)
    for fmt in ("compose", "k8s"):
        plain = _render(mixed, fmt, tmp_path).read_text()
        out = tmp_path / f"json-{fmt}.yaml"
        assert main(["render", fmt, str(mixed), "-o", str(out), "--log-format", "json"]) == 0
        if fmt == "compose":
            commands = {name: spec["command"] for name, spec in
                        yaml.safe_load(out.read_text())["services"].items()}
        else:
            commands = {d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0][
                "args"] for d in yaml.safe_load_all(out.read_text()) if d["kind"] == "Deployment"}
        assert list(commands) == [s.name for s in topo.services]
        for name, command in commands.items():
            assert command[-4:] == ["--log-format", "json", "--log-name", name], command
            args = build_parser().parse_args(command)  # what `virtwire serve` takes
            assert (args.log_format, args.log_name) == ("json", name)
        _check_commands(topo, {name: c[:-4] for name, c in commands.items()})
        assert "--log-format" not in plain
        again = tmp_path / f"out-{fmt}.yaml"  # the header names the file: the same one
        assert main(["render", fmt, str(mixed), "-o", str(again), "--log-format", "text"]) == 0
        assert again.read_text() == plain
    with pytest.raises(ConfigError, match="log format 'xml'"):
        render(topo, "compose", log_format="xml")
