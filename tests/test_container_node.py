"""kind: container (issue 12 item 1): a container of the local engine on the LAN.

The unit half checks the topology (FILE:LINE for each mistake), the plan (the
interface's tap service opens its TAP in the container's namespace, from its
command line) and ``render compose``, without an engine. The docker half
(marker docker) runs a LAN with the process backend against a local engine and
a busybox image made by ``docker import`` (support.busybox_image): the
container pings a virtwire vm, ``virtwire exec`` shows its eth1 with its
address and no other interface but lo, and ``down`` removes the container and
its TAP; an image missing from the engine, or a container whose command
exits, fails ``up`` with nothing left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from virtwire.errors import ConfigError
from virtwire.orchestrator.plan import CONTAINER_NETNS, plan, service_spec
from virtwire.orchestrator.render import capabilities, render_compose, render_k8s
from virtwire.orchestrator.spec import TapServiceSpec
from virtwire.topology import ContainerNode, TopologyError, parse_topology

from support.procs import VIRTWIRE

GOOD = """\
name: ct
nodes:
  hub0: {kind: hub}
  vm1: {kind: vm, ip: 198.18.0.1/24}
  c1:
    kind: container
    image: vw-busybox:test
    command: sleep 600
    env: {GREETING: hello, COUNT: 3}
    interfaces:
      eth1: {ip: 198.18.0.20/24, mac: "02:00:00:00:00:20"}
      eth2:
links:
  - [vm1, hub0]
  - [c1:eth1, hub0]
  - [c1:eth2, hub0]
"""


def problems(text: str, **kwargs: object) -> list[str]:
    with pytest.raises(TopologyError) as info:
        parse_topology(text, "t.yaml", **kwargs)  # type: ignore[arg-type]
    return list(info.value.problems)


def test_container_node_resolves() -> None:
    topo = parse_topology(GOOD, "t.yaml")
    node = topo.node("c1")
    assert isinstance(node, ContainerNode)
    assert node.image == "vw-busybox:test"
    assert node.command == ("sleep", "600")
    assert dict(node.env) == {"GREETING": "hello", "COUNT": "3"}
    assert [i.name for i in node.interfaces] == ["eth1", "eth2"]
    assert str(node.interfaces[0].ip) == "198.18.0.20/24"
    assert node.interfaces[1].ip is None and not node.interfaces[1].mac
    # One tap service per interface, after the hub it dials; NetClient = service.
    services = {s.name: s for s in topo.services}
    assert services["c1-eth1"].kind == "tap" and services["c1-eth1"].needs == ("hub0",)
    link = topo.links[1]
    assert (link.dialer.service, link.dialer.netclient) == ("c1-eth1", "c1-eth1")
    assert topo.to_dict()["nodes"]["c1"]["interfaces"]["eth1"] == {
        "ip": "198.18.0.20/24", "mac": "02:00:00:00:00:20"}


def test_command_as_a_list_and_defaults() -> None:
    topo = parse_topology(GOOD.replace("command: sleep 600", "command: [sh, -c, 'sleep 9']"),
                          "t.yaml")
    node = topo.node("c1")
    assert isinstance(node, ContainerNode)
    assert node.command == ("sh", "-c", "sleep 9")
    topo = parse_topology(GOOD.replace("    command: sleep 600\n", ""), "t.yaml")
    node = topo.node("c1")
    assert isinstance(node, ContainerNode) and node.command == ()  # the image's own


@pytest.mark.parametrize(("change", "expected"), [
    # Interface names: eth1..ethN, checked at load with their line.
    (("eth2:\n", "eth0:\n"), "t.yaml:12: node 'c1': interfaces.eth0: interface 'eth0'"),
    (("eth2:\n", "wan:\n"), "t.yaml:12: node 'c1': interfaces.wan: interface 'wan'"),
    (("[c1:eth2, hub0]", "[c1:eth3, hub0]"),
     "t.yaml:16: links[2] (c1:eth3 -- hub0): 'c1:eth3': unknown interface 'eth3' of "
     "container c1 (it has: eth1, eth2)"),
    (("[c1:eth2, hub0]", "[c1, hub0]"),
     "t.yaml:16: links[2] (c1 -- hub0): 'c1': container c1 has several interfaces"),
    (("[c1:eth2, hub0]", "[c1:eth1, vm1]"),
     "t.yaml:16: links[2] (c1:eth1 -- vm1): interface c1:eth1 is already linked by links[1]"),
    (("image: vw-busybox:test", "image: 'no such/image!'"),
     "t.yaml:7: node 'c1': image: bad image 'no such/image!'"),
    (("GREETING: hello", "1BAD: hello"), "t.yaml:9: node 'c1': env.1BAD: bad variable name"),
    (("command: sleep 600", "command: \"sleep 'x\""),
     "t.yaml:8: node 'c1': command: cannot split the command"),
    (("    env:", "    management: host\n    env:"), "node 'c1': management: management: 'host'"),
    (("    env:", "    host: h1\n    env:"), "node 'c1': host: a container node runs in this "
                                           "machine's engine"),
    (("vm1: {kind: vm, ip: 198.18.0.1/24}", "vm1: {kind: vm, ip: 198.18.0.20/24}"),
     "t.yaml:11: node 'c1': interfaces.eth1.ip: IP address 198.18.0.20 is already used by "
     "node 'vm1'"),
])
def test_mistakes_name_their_line(change: tuple[str, str], expected: str) -> None:
    text = GOOD.replace(*change)
    if "host: h1" in text:
        text = text.replace("nodes:", "hosts: {h1: {address: 198.18.9.1}}\nnodes:")
    found = problems(text)
    assert any(expected in p for p in found), found


def test_no_interfaces_is_an_error() -> None:
    text = GOOD.replace("""    interfaces:
      eth1: {ip: 198.18.0.20/24, mac: "02:00:00:00:00:20"}
      eth2:
""", "    interfaces: {}\n").replace("  - [c1:eth1, hub0]\n  - [c1:eth2, hub0]\n", "")
    assert any("t.yaml:10: node 'c1': interfaces" in p for p in problems(text))


def test_a_topology_sent_by_rpc_may_not_have_one() -> None:
    from virtwire.allowlist import RpcPolicy

    with pytest.raises(TopologyError) as info:
        parse_topology(GOOD, "rpc", remote=RpcPolicy(command="test"))
    assert info.value.denied
    assert any("a container node runs an image and a command" in p
               for p in info.value.problems)


def test_plan_opens_the_tap_in_the_container() -> None:
    topo = parse_topology(GOOD, "t.yaml")
    addresses = {s.name: f"{s.name}:1" for s in topo.services}
    spec = service_spec(topo, "c1-eth1", addresses)
    assert isinstance(spec, TapServiceSpec)
    # Docker backend and compose: the pid namespace is shared, the first process's.
    assert spec.argv() == ["--backend", "tap,ifname=eth1,id=c1-eth1", "--peer",
                           "hub0:1/hub0port1", "--netns", CONTAINER_NETNS, "--tap-ip",
                           "198.18.0.20/24", "--tap-mac", "02:00:00:00:00:20"]
    # The process backend: the orchestrator gives the container's pid's.
    specs = plan(topo, addresses, netns={"c1": "/proc/4242/ns/net"})
    eth2 = specs["c1-eth2"]
    assert isinstance(eth2, TapServiceSpec)
    assert eth2.argv() == ["--backend", "tap,ifname=eth2,id=c1-eth2", "--peer",
                           "hub0:1/hub0port2", "--netns", "/proc/4242/ns/net"]


def test_render_compose_includes_the_container() -> None:
    topo = parse_topology(GOOD, "t.yaml")
    doc = render_compose(topo)
    c1 = doc["services"]["c1"]
    assert c1["image"] == "vw-busybox:test"
    assert c1["command"] == ["sleep", "600"]
    assert c1["environment"] == {"GREETING": "hello", "COUNT": "3"}
    assert c1["network_mode"] == "none" and "networks" not in c1
    eth1 = doc["services"]["c1-eth1"]
    assert eth1["pid"] == "service:c1"
    assert "c1" in eth1["depends_on"]
    assert eth1["cap_add"] == ["NET_ADMIN", "SYS_ADMIN"] and eth1["user"] == "0"
    assert eth1["command"][eth1["command"].index("--netns") + 1] == CONTAINER_NETNS
    svc = next(s for s in topo.services if s.name == "c1-eth1")
    assert capabilities(topo, svc) == ["NET_ADMIN", "SYS_ADMIN"]
    # A management network joins as the user's own (external) network.
    managed = parse_topology(GOOD.replace("    env:", "    management: mgmt\n    env:"),
                             "t.yaml")
    doc = render_compose(managed)
    assert doc["services"]["c1"]["networks"] == ["mgmt"]
    assert doc["networks"]["mgmt"] == {"external": True}
    with pytest.raises(ConfigError, match="render as compose only"):
        render_k8s(topo)


def test_serve_tap_netns_flags_are_command_line_only() -> None:
    from virtwire.net.netdev import NetdevTap, parse_backend_spec

    # A spec (what AddBackend takes) cannot name a namespace.
    with pytest.raises(ConfigError, match="unknown option 'netns'"):
        parse_backend_spec("tap,ifname=eth1,netns=/proc/1/ns/net")
    config = parse_backend_spec("tap,ifname=eth1")
    assert isinstance(config, NetdevTap) and config.netns == ""
    out = subprocess.run([*VIRTWIRE, "serve", "tap", "--backend", "stream,listen=127.0.0.1:0",
                          "--netns", "/proc/1/ns/net"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode != 0 and "are for tap backends" in out.stderr


# -- with a local engine ------------------------------------------------------------------
LAN = """\
name: {name}
nodes:
  hub0: {{kind: hub}}
  vm1: {{kind: vm, ip: 198.18.0.1/24, memory: 16M}}
  c1:
    kind: container
    image: {image}
    command: {command}
    env: {{GREETING: hello}}
    interfaces:
      eth1: {{ip: 198.18.0.20/24}}
links:
  - [vm1, hub0]
  - [c1:eth1, hub0]
"""


def run(*args: str, env: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VIRTWIRE, *args], capture_output=True, text=True, env=env,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def containers_of(lan: str) -> list[str]:
    out = subprocess.run(["docker", "ps", "-a", "--quiet", "--filter",
                          f"label=virtwire.lan={lan}"], capture_output=True, text=True,
                         timeout=30, check=True)
    return out.stdout.split()


@pytest.fixture
def lan_env(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], Path]]:
    name = f"ct{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "VIRTWIRE_STATE_DIR": str(tmp_path / "state")}
    yield name, env, tmp_path
    run("down", name, env=env)
    for cid in containers_of(name):
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def busybox(engine: None) -> str:
    from support.busybox_image import busybox_image

    return busybox_image()


@pytest.mark.docker
@pytest.mark.root
def test_container_pings_a_vm_and_exec_shows_eth1(
        busybox: str, lan_env: tuple[str, dict[str, str], Path]) -> None:
    name, env, tmp = lan_env
    topo = tmp / "lan.yaml"
    topo.write_text(LAN.format(name=name, image=busybox, command="sleep 600"))
    up = run("up", str(topo), "--detach", env=env)
    assert up.returncode == 0, up.stdout + up.stderr
    [cid] = containers_of(name)
    inspect = json.loads(subprocess.run(["docker", "inspect", cid], capture_output=True,
                                        text=True, check=True, timeout=30).stdout)[0]
    assert inspect["HostConfig"]["NetworkMode"] == "none"
    assert "GREETING=hello" in inspect["Config"]["Env"]
    pid = inspect["State"]["Pid"]

    shown = run("exec", "--lan", name, "c1", "--", "ip", "-o", "-4", "addr", "show", "eth1",
                env=env)
    assert shown.returncode == 0, shown.stderr
    assert "eth1" in shown.stdout and "inet 198.18.0.20/24" in shown.stdout
    links = run("exec", "--lan", name, "c1", "--", "ls", "/sys/class/net", env=env)
    assert links.returncode == 0, links.stderr
    assert sorted(links.stdout.split()) == ["eth1", "lo"]
    ping = run("exec", "--lan", name, "c1", "--", "ping", "-c", "3", "-W", "2", "198.18.0.1",
               env=env)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert "3 packets received" in ping.stdout
    # The command's exit status is exec's.
    assert run("exec", "--lan", name, "c1", "--", "sh", "-c", "exit 7", env=env).returncode == 7
    status = json.loads(run("status", name, "--json", env=env).stdout)
    assert next(n for n in status["nodes"] if n["name"] == "c1")["kind"] == "container"

    # The TAP is in the container's namespace, not the host's.
    in_ns = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "ip", "-o", "link",
                            "show", "eth1"], capture_output=True, text=True, timeout=30)
    assert in_ns.returncode == 0 and "eth1" in in_ns.stdout
    host = subprocess.run(["ip", "link", "show", "eth1"], capture_output=True, timeout=30)
    assert host.returncode != 0

    down = run("down", name, env=env)
    assert down.returncode == 0, down.stderr
    assert containers_of(name) == []
    assert not Path(f"/proc/{pid}").exists()  # its namespace, and the TAP in it, are gone
    gone = run("exec", "--lan", name, "c1", "--", "true", env=env)
    assert gone.returncode != 0


@pytest.mark.docker
def test_a_missing_image_fails_up_with_the_line(
        engine: None, lan_env: tuple[str, dict[str, str], Path]) -> None:
    name, env, tmp = lan_env
    topo = tmp / "lan.yaml"
    topo.write_text(LAN.format(name=name, image="vw-no-such-image:0", command="sleep 600"))
    up = run("up", str(topo), "--detach", env=env)
    assert up.returncode != 0
    assert f"{topo}:5: node 'c1': no image 'vw-no-such-image:0' in the local Docker " \
           "engine" in up.stdout + up.stderr
    assert containers_of(name) == []


@pytest.mark.docker
@pytest.mark.root
def test_a_failed_up_removes_the_container(
        busybox: str, lan_env: tuple[str, dict[str, str], Path]) -> None:
    name, env, tmp = lan_env
    topo = tmp / "lan.yaml"
    # A command that exits: the container is created, then up fails and removes it.
    topo.write_text(LAN.format(name=name, image=busybox, command="'true'"))
    up = run("up", str(topo), "--detach", env=env)
    assert up.returncode != 0
    assert "container" in up.stdout + up.stderr and "is not running" in up.stdout + up.stderr
    assert containers_of(name) == []


def test_example_validates() -> None:
    root = Path(__file__).resolve().parents[1]
    topo = parse_topology((root / "examples/container.yaml").read_text(),
                          "examples/container.yaml", base_dir=root / "examples")
    assert topo.containers()
    yaml.safe_dump(render_compose(topo))


@pytest.mark.docker
@pytest.mark.root
@pytest.mark.timeout(900)  # the image fixture may build virtwire:<version> first
def test_with_the_docker_backend(image: str, busybox: str,
                                 lan_env: tuple[str, dict[str, str], Path]) -> None:
    """The interface's service is a container too, sharing the container node's pid
    namespace (/proc/1/ns/net there): the same LAN, the same checks."""
    name, env, tmp = lan_env
    topo = tmp / "lan.yaml"
    topo.write_text(LAN.format(name=name, image=busybox, command="sleep 600"))
    up = run("up", str(topo), "--backend", "docker", "--detach", env=env, timeout=240)
    assert up.returncode == 0, up.stdout + up.stderr
    eth1 = json.loads(subprocess.run(
        ["docker", "inspect", f"virtwire-{name}-c1-eth1"], capture_output=True, text=True,
        check=True, timeout=30).stdout)[0]
    c1 = subprocess.run(["docker", "inspect", "--format", "{{.Id}}", f"virtwire-{name}-c1"],
                        capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    assert eth1["HostConfig"]["PidMode"] == f"container:{c1}"
    shown = run("exec", "--lan", name, "c1", "--", "ip", "-o", "-4", "addr", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "eth1    inet 198.18.0.20/24" in shown.stdout
    assert sorted(run("exec", "--lan", name, "c1", "--", "ls", "/sys/class/net",
                      env=env).stdout.split()) == ["eth1", "lo"]
    ping = run("exec", "--lan", name, "c1", "--", "ping", "-c", "3", "-W", "2", "198.18.0.1",
               env=env)
    assert ping.returncode == 0 and "3 packets received" in ping.stdout, ping.stdout
    down = run("down", name, env=env, timeout=240)
    assert down.returncode == 0, down.stderr
    assert containers_of(name) == []


@pytest.mark.docker
@pytest.mark.root
def test_down_after_a_killed_orchestrator_removes_the_container(
        busybox: str, lan_env: tuple[str, dict[str, str], Path]) -> None:
    name, env, tmp = lan_env
    topo = tmp / "lan.yaml"
    topo.write_text(LAN.format(name=name, image=busybox, command="sleep 600"))
    up = run("up", str(topo), "--detach", env=env)
    assert up.returncode == 0, up.stdout + up.stderr
    assert len(containers_of(name)) == 1
    state = json.loads((tmp / "state" / name / "state.json").read_text())
    os.kill(state["orchestrator_pid"], 9)
    down = run("down", name, env=env)
    assert down.returncode == 0, down.stderr
    assert containers_of(name) == []
