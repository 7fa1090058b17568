"""The orchestration plan: one source for what every service is started with.

The process runtime starts each service with the plan's arguments, render
writes the same (with the deployment's addresses), and a hub's automatic
ports are named as the hub itself names a new port.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from virtwire.net.hub import Hub, hub_port_name
from virtwire.orchestrator import plan as plan_mod
from virtwire.orchestrator.core import Orchestrator
from virtwire.orchestrator.plan import auto_ports, plan
from virtwire.orchestrator.render import LISTEN, address_of, container_spec, service_commands
from virtwire.orchestrator.spec import E1000ServiceSpec, HubPortSpec, HubServiceSpec
from virtwire.topology import Topology, parse_topology

# hub0: a named port (uplink) and two unnamed link ends (a VM, a hub dialing
# in); hub1 dials hub0 from its port trunk.
TOPOLOGY = """\
name: plan
nodes:
  hub0: {kind: hub}
  hub1: {kind: hub}
  vm1: {kind: vm, mac: "52:54:00:12:34:01", ip: 198.18.0.1/24, memory: 16M}
  t1: {kind: tap, backend: dgram, local: "127.0.0.1:0", remote: "127.0.0.1:9"}
links:
  - [vm1, hub0]
  - [hub1:trunk, hub0]
  - [t1, hub0:uplink]
"""


@pytest.fixture
def topo() -> Topology:
    return parse_topology(TOPOLOGY, "plan.yaml")


def _addresses(topo: Topology) -> dict[str, str]:
    return {svc.name: f"127.0.0.1:{6000 + i}" for i, svc in enumerate(topo.services)}


def test_plan_of_a_small_lan(topo: Topology) -> None:
    addr = _addresses(topo)
    specs = plan(topo, addr)
    assert list(specs) == [svc.name for svc in topo.services]
    assert specs["hub0"] == HubServiceSpec(ports=(
        HubPortSpec("uplink"), HubPortSpec(hub_port_name(0, 1)),
        HubPortSpec(hub_port_name(0, 2))))
    assert specs["hub1"] == HubServiceSpec(ports=(
        HubPortSpec("trunk", f"{addr['hub0']}/{hub_port_name(0, 2)}"),))
    e1000 = specs["vm1-e1000"]
    assert isinstance(e1000, E1000ServiceSpec)
    assert (e1000.guestmem, e1000.peer) == (addr["vm1-guestmem"],
                                            f"{addr['hub0']}/{hub_port_name(0, 1)}")
    assert specs["t1"].argv()[-2:] == ["--peer", f"{addr['hub0']}/uplink"]


def test_a_service_needs_only_the_addresses_of_those_before_it(topo: Topology) -> None:
    """As the orchestrator starts them: each spec from the addresses known by then."""
    addr = _addresses(topo)
    full = plan(topo, addr)
    known: dict[str, str] = {}
    for svc in topo.services:
        assert plan_mod.service_spec(topo, svc.name, known) == full[svc.name]
        known[svc.name] = addr[svc.name]


def test_auto_ports_are_named_as_the_hub_names_a_new_port(topo: Topology) -> None:
    """Creating the planned ports in order, an unnamed one gets the planned name."""
    for hub_name in ("hub0", "hub1"):
        spec = plan(topo, _addresses(topo))[hub_name]
        assert isinstance(spec, HubServiceSpec)
        auto = set(auto_ports(topo, hub_name).values())
        hub = Hub(spec.hub_id)
        for port in spec.ports:
            assert hub.add_port("" if port.name in auto else port.name).name == port.name
    assert auto_ports(topo, "hub0") == {0: "hub0port1", 1: "hub0port2"}


def test_hub_port_names_come_from_the_hub(topo: Topology,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plan_mod, "hub_port_name", lambda hub, port: f"h{hub}p{port}")
    assert auto_ports(topo, "hub0") == {0: "h0p1", 1: "h0p2"}


def test_render_writes_the_plan(topo: Topology) -> None:
    specs = plan(topo, {svc.name: address_of(svc.name) for svc in topo.services})
    commands = service_commands(topo)
    assert list(commands) == list(specs)
    for name, spec in specs.items():
        assert commands[name] == ["serve", spec.kind, "--listen", LISTEN,
                                  *container_spec(spec).argv(), "--insecure"]


def test_render_needs_no_orchestrator() -> None:
    """render (and the plan) import neither the Orchestrator nor any runtime."""
    code = ("import sys, virtwire.orchestrator.render\n"
            "print(sorted(m for m in sys.modules if m.startswith('virtwire.orchestrator.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "core" not in out and "runtime" not in out, out


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


async def test_the_process_runtime_starts_each_service_with_the_plan(
        topo: Topology, tmp_path: Path) -> None:
    orch = Orchestrator(state_dir=tmp_path / "state")
    events = [event async for event in orch.up(topo)]
    try:
        assert events[-1].kind == "done", events[-1].message
        addresses = {name: rec.address for name, rec in orch.services.items()}
        specs = plan(topo, addresses)
        assert orch.specs == specs
        for name, rec in orch.services.items():
            argv = specs[name].argv()
            assert rec.args == argv
            cmd = _cmdline(rec.pid)
            serve = cmd.index("serve")
            assert cmd[serve + 1:serve + 4 + len(argv)] == [
                specs[name].kind, "--listen", "127.0.0.1:0", *argv], cmd
    finally:
        await orch.down()
