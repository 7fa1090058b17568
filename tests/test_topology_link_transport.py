"""``link_transport: auto|grpc`` in a topology: the LAN's default and a node's own.

It becomes ``--link-transport grpc`` on exactly the services of the nodes
that choose grpc (a hub, a tap, a vm's e1000 and guest, never its guestmem),
in the process runtime's argv and in ``render compose`` / ``render k8s``;
"auto" adds nothing, so a topology that never says it starts as before.
The end-to-end test brings up the default LAN both ways and reads what
carries each link from ``virtwire status --json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from virtwire.allowlist import RpcPolicy
from virtwire.errors import ConfigError
from virtwire.orchestrator.plan import plan
from virtwire.orchestrator.render import render_compose, render_k8s, service_commands
from virtwire.orchestrator.spec import E1000ServiceSpec
from virtwire.orchestrator.start_options import from_start_request, to_start_options
from virtwire.topology import Topology, TopologyError, parse_topology
from virtwire.v1 import orchestrator_pb2

from support.procs import VIRTWIRE

EXAMPLE = Path(__file__).parent.parent / "examples" / "default.yaml"
GRPC = ["--link-transport", "grpc"]

LAN = """\
name: lt
{top}nodes:
  hub0: {{kind: hub{hub0}}}
  vm1: {{kind: vm, ip: 198.18.0.1/24{vm1}}}
  vm2: {{kind: vm, ip: 198.18.0.2/24}}
  t1: {{kind: tap, backend: dgram, local: "127.0.0.1:0", remote: "127.0.0.1:9"{t1}}}
links:
  - [vm1, hub0]
  - [vm2, hub0]
  - [t1, hub0]
"""


def _lan(top: str = "", **nodes: str) -> Topology:
    text = LAN.format(top=f"link_transport: {top}\n" if top else "",
                      **{n: f", link_transport: {nodes[n]}" if n in nodes else ""
                         for n in ("hub0", "vm1", "t1")})
    return parse_topology(text, "lt.yaml")


def _grpc_services(topo: Topology) -> set[str]:
    """The services whose argv has --link-transport grpc (checked to be at most once)."""
    specs = plan(topo, {svc.name: f"127.0.0.1:{6000 + i}" for i, svc in enumerate(topo.services)})
    out = set()
    for name, sp in specs.items():
        argv = sp.argv()
        assert "auto" not in argv, (name, argv)
        count = argv.count("--link-transport")
        assert count <= 1, (name, argv)
        if count:
            assert argv[argv.index("--link-transport"):][:2] == GRPC, (name, argv)
            out.add(name)
    return out


# -- parsing -----------------------------------------------------------------------
def test_the_default_is_auto_everywhere() -> None:
    topo = _lan()
    assert topo.link_transport == "auto"
    assert {n.link_transport for n in topo.nodes.values()} == {"auto"}
    assert topo.to_dict()["link_transport"] == "auto"


def test_the_top_level_value_is_every_nodes_default() -> None:
    topo = _lan("grpc")
    assert topo.link_transport == "grpc"
    assert {n.name: n.link_transport for n in topo.nodes.values()} == {
        "hub0": "grpc", "vm1": "grpc", "vm2": "grpc", "t1": "grpc"}
    assert topo.to_dict()["nodes"]["vm2"]["link_transport"] == "grpc"


def test_a_node_overrides_the_lans_value_both_ways() -> None:
    topo = _lan("grpc", hub0="auto")
    assert {n.name: n.link_transport for n in topo.nodes.values()} == {
        "hub0": "auto", "vm1": "grpc", "vm2": "grpc", "t1": "grpc"}
    topo = _lan(vm1="grpc", t1="grpc")
    assert {n.name: n.link_transport for n in topo.nodes.values()} == {
        "hub0": "auto", "vm1": "grpc", "vm2": "auto", "t1": "grpc"}
    # Not a backend option of the tap: its --backend spec is unchanged.
    assert "link_transport" not in topo.nodes["t1"].to_dict()["spec"]


@pytest.mark.parametrize(("top", "nodes", "line", "where", "value"), [
    ("udp", {}, 2, "", "'udp'"),
    ("", {"vm1": "unix"}, 4, "node 'vm1': ", "'unix'"),
    ("", {"hub0": "GRPC"}, 3, "node 'hub0': ", "'GRPC'"),
    ("", {"t1": "true"}, 6, "node 't1': ", "True"),
    ("1", {}, 2, "", "1"),
])
def test_a_bad_value_is_an_error_with_its_line_and_the_allowed_values(
        top: str, nodes: dict[str, str], line: int, where: str, value: str) -> None:
    with pytest.raises(TopologyError) as info:
        _lan(top, **nodes)
    value = value if value != "True" else "true"
    assert info.value.problems == (
        f"lt.yaml:{line}: {where}link_transport: input should be 'auto' or 'grpc', "
        f"not {value}",)


def test_link_transport_of_a_link_entry_is_not_a_link_syntax() -> None:
    # A link's long form has ends and filters: the choice is per node.
    with pytest.raises(TopologyError, match=r"lt\.yaml:4: links\[0\] \(v -- h\): unknown "
                                            r"field 'link_transport' \(allowed: ends"):
        parse_topology("name: lt\nnodes: {h: {kind: hub}, v: {kind: vm}}\n"
                       "links:\n  - {ends: [v, h], link_transport: grpc}\n", "lt.yaml")


def test_grpc_on_a_node_on_another_host_reaches_its_start_service() -> None:
    text = """\
name: lt
hosts:
  h1: {address: 198.18.1.1}
nodes:
  hub0: {kind: hub, host: h1,
         link_transport: grpc}
  vm1: {kind: vm}
links:
  - [vm1, hub0]
"""
    topo = parse_topology(text, "lt.yaml")
    assert topo.nodes["hub0"].link_transport == "grpc"
    assert topo.nodes["vm1"].link_transport == "auto"


def test_start_options_carry_a_grpc_choice_and_the_agent_takes_it() -> None:
    spec = E1000ServiceSpec(guestmem="127.0.0.1:1", mac="52:54:00:12:34:56", model="82540EM",
                            compat="9.0", name="vm1", link_transport="grpc")
    options = to_start_options(spec)
    assert options["link_transport"] == "grpc"
    request = orchestrator_pb2.OrchestratorServiceStartServiceRequest(
        lan="lt", name="vm1-e1000", listen="127.0.0.1:0", **options)
    got = from_start_request(request, RpcPolicy(command="virtwire serve orchestrator"))
    assert got.link_transport == "grpc"
    assert got.argv()[-2:] == ["--link-transport", "grpc"]
    auto = to_start_options(dataclasses.replace(spec, link_transport="auto"))
    assert "link_transport" not in auto
    request.link_transport = "shm"
    with pytest.raises(ConfigError, match="link_transport 'shm'"):
        from_start_request(request, RpcPolicy(command="virtwire serve orchestrator"))


# -- the plan ----------------------------------------------------------------------
def test_auto_adds_no_argument() -> None:
    assert _grpc_services(_lan()) == set()
    assert _grpc_services(_lan("auto", vm1="auto")) == set()
    auto = plan(_lan(), {s.name: "127.0.0.1:1" for s in _lan().services})
    assert all("--link-transport" not in sp.argv() for sp in auto.values())


def test_grpc_reaches_exactly_the_services_of_the_nodes_that_choose_it() -> None:
    assert _grpc_services(_lan("grpc")) == {
        "hub0", "vm1-e1000", "vm1-guest", "vm2-e1000", "vm2-guest", "t1"}
    assert _grpc_services(_lan(vm1="grpc")) == {"vm1-e1000", "vm1-guest"}
    assert _grpc_services(_lan(hub0="grpc")) == {"hub0"}
    assert _grpc_services(_lan(t1="grpc")) == {"t1"}
    assert _grpc_services(_lan("grpc", vm1="auto", t1="auto")) == {
        "hub0", "vm2-e1000", "vm2-guest"}


def test_the_rest_of_the_argv_is_unchanged() -> None:
    auto, grpc = (plan(t, {s.name: "127.0.0.1:1" for s in t.services})
                  for t in (_lan(), _lan("grpc")))
    for name, sp in grpc.items():
        argv = sp.argv()
        if "--link-transport" in argv:
            i = argv.index("--link-transport")
            argv = argv[:i] + argv[i + 2:]
        assert argv == auto[name].argv(), name


# -- render ------------------------------------------------------------------------
def test_render_compose_and_k8s_carry_it_in_the_commands() -> None:
    topo = _lan(vm1="grpc")
    commands = service_commands(topo)
    assert {n for n, c in commands.items() if "--link-transport" in c} == {
        "vm1-e1000", "vm1-guest"}
    compose = render_compose(topo)
    assert compose["services"]["vm1-guest"]["command"] == commands["vm1-guest"]
    assert "--link-transport" not in compose["services"]["vm2-guest"]["command"]
    k8s = render_k8s(topo)
    args = {d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]["args"]
            for d in k8s if d["kind"] == "Deployment"}
    assert {n for n, a in args.items() if "--link-transport" in a} == {"vm1-e1000", "vm1-guest"}
    i = args["vm1-e1000"].index("--link-transport")
    assert args["vm1-e1000"][i:i + 2] == GRPC
    auto = _lan()
    assert render_compose(auto) == render_compose(parse_topology(
        LAN.format(top="link_transport: auto\n", hub0="", vm1="", t1=""), "lt.yaml"))


# -- end to end: the process backend -------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VIRTWIRE, *args], capture_output=True, text=True, timeout=90,
                          env=env)


def _transports(status: dict[str, Any]) -> dict[str, str]:
    """Each linked NetClient's ``link_transport``, by SERVICE/NETCLIENT."""
    return {f"{nc['service']}/{nc['name']}": nc["info"]["link_transport"]
            for node in status["nodes"] for nc in node.get("netclients", [])
            if nc["info"]["peer"]}


@pytest.mark.parametrize(("top", "expected"), [("link_transport: grpc\n", "grpc"),
                                               ("", "unix")])
def test_the_default_lan_with_and_without_grpc(tmp_path: Path, top: str,
                                               expected: str) -> None:
    env = {**os.environ, "VIRTWIRE_STATE_DIR": str(tmp_path / "state")}
    lan = tmp_path / "lan.yaml"
    lan.write_text(top + EXAMPLE.read_text().replace("127.0.0.1:10555",
                                                     f"127.0.0.1:{_free_port()}"))
    out = _run(env, "up", str(lan), "--detach")
    assert out.returncode == 0, out.stdout + out.stderr
    try:
        deadline = time.monotonic() + 30
        while True:
            status = _run(env, "status", "default", "--json")
            assert status.returncode in (0, 1), status.stderr
            seen = _transports(json.loads(status.stdout))
            # hub0's three ports, vm1, vm2 and qemu0's dialling side (once connected).
            if len(seen) >= 5 and all(seen.values()):
                break
            assert time.monotonic() < deadline, seen
            time.sleep(0.2)
        assert set(seen.values()) == {expected}, seen
        assert {"vm1-e1000/vm1", "vm2-e1000/vm2"} <= set(seen), seen
    finally:
        down = _run(env, "down", "default")
        assert down.returncode == 0, down.stdout + down.stderr
