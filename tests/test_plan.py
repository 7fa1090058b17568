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

from virtwire.net.hub import HUB_NAME_MAX, Hub, hub_port_name
from virtwire.orchestrator import plan as plan_mod
from virtwire.orchestrator.core import Orchestrator
from virtwire.orchestrator.plan import auto_ports, plan
from virtwire.orchestrator.render import (
    LISTEN,
    address_of,
    container_spec,
    service_commands,
    size_text,
)
from virtwire.orchestrator.spec import (
    E1000ServiceSpec,
    GuestMemServiceSpec,
    HubPortSpec,
    HubServiceSpec,
)
from virtwire.topology import NODE_NAME_MAX, Topology, TopologyError, parse_topology

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
    assert specs["hub0"] == HubServiceSpec(name="hub0", ports=(
        HubPortSpec("uplink"), HubPortSpec(hub_port_name("hub0", 1)),
        HubPortSpec(hub_port_name("hub0", 2))))
    assert specs["hub1"] == HubServiceSpec(name="hub1", ports=(
        HubPortSpec("trunk", f"{addr['hub0']}/{hub_port_name('hub0', 2)}"),))
    e1000 = specs["vm1-e1000"]
    assert isinstance(e1000, E1000ServiceSpec)
    assert (e1000.guestmem, e1000.peer) == (addr["vm1-guestmem"],
                                            f"{addr['hub0']}/{hub_port_name('hub0', 1)}")
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
        hub = Hub(spec.hub_id, spec.name)
        for port in spec.ports:
            assert hub.add_port("" if port.name in auto else port.name).name == port.name
    assert auto_ports(topo, "hub0") == {0: "hub0port1", 1: "hub0port2"}


def test_hub_port_names_come_from_the_hub(topo: Topology,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plan_mod, "hub_port_name", lambda hub, port: f"h{hub}p{port}")
    assert auto_ports(topo, "hub0") == {0: "hhub0p1", 1: "hhub0p2"}


# sw: a named port (uplink), a port that dials hub0 (trunk), two unnamed link ends.
SW_TOPOLOGY = """\
name: plan
nodes:
  hub0: {kind: hub}
  sw: {kind: hub}
  vm1: {kind: vm, ip: 198.18.0.1/24, memory: 16M}
  vm2: {kind: vm, ip: 198.18.0.2/24, memory: 16M}
  t1: {kind: tap, backend: dgram, local: "127.0.0.1:0", remote: "127.0.0.1:9"}
links:
  - [vm1, sw]
  - [t1, sw:uplink]
  - [sw:trunk, hub0]
  - [vm2, sw]
"""


def test_a_hub_called_sw_names_its_ports_swport_n() -> None:
    """The plan starts hub sw with its name; its unnamed link ends are swportN, as the
    hub itself names them, and hub0's stay hub0portN."""
    topo = parse_topology(SW_TOPOLOGY, "sw.yaml")
    addr = _addresses(topo)
    specs = plan(topo, addr)
    assert auto_ports(topo, "sw") == {0: "swport2", 3: "swport3"}
    assert auto_ports(topo, "hub0") == {2: "hub0port0"}
    assert specs["sw"] == HubServiceSpec(name="sw", ports=(
        HubPortSpec("uplink"), HubPortSpec("trunk", f"{addr['hub0']}/hub0port0"),
        HubPortSpec("swport2"), HubPortSpec("swport3")))
    assert specs["sw"].argv()[:2] == ["--name", "sw"]
    assert [(s.name, s.peer) for s in (specs["vm1-e1000"], specs["vm2-e1000"])
            if isinstance(s, E1000ServiceSpec)] == [
        ("vm1", f"{addr['sw']}/swport2"), ("vm2", f"{addr['sw']}/swport3")]
    hub = Hub(specs["sw"].hub_id, specs["sw"].name)
    for port in specs["sw"].ports:
        named = port.name in ("uplink", "trunk")
        assert hub.add_port(port.name if named else "").name == port.name


def test_a_port_may_not_take_a_name_its_hub_numbers_with() -> None:
    """swport5 on sw would be an unnamed port's name; hub0port1 on sw is just a name."""
    with pytest.raises(TopologyError, match="'swport5' is how the hub numbers its unnamed"):
        parse_topology(SW_TOPOLOGY.replace("sw:uplink", "sw:swport5"), "sw.yaml")
    topo = parse_topology(SW_TOPOLOGY.replace("sw:uplink", "sw:hub0port1"), "sw.yaml")
    assert plan(topo, _addresses(topo))["t1"].argv()[-1].endswith("/hub0port1")


def test_a_hub_name_too_long_for_its_port_names_is_refused() -> None:
    """Every node name a topology takes makes port names that fit (NAME_MAX); a longer
    one is refused when the topology is validated."""
    assert NODE_NAME_MAX <= HUB_NAME_MAX
    long = "s" * (HUB_NAME_MAX + 1)
    with pytest.raises(TopologyError) as err:
        parse_topology(SW_TOPOLOGY.replace("sw", long), "sw.yaml")
    message = str(err.value)
    assert message.startswith("sw.yaml:4: ") and long in message, message
    assert f"1 to {NODE_NAME_MAX}" in message, message


def test_render_writes_the_plan(topo: Topology) -> None:
    specs = plan(topo, {svc.name: address_of(svc.name) for svc in topo.services})
    commands = service_commands(topo)
    assert list(commands) == list(specs)
    for name, spec in specs.items():
        argv = container_spec(spec).argv()
        if isinstance(spec, GuestMemServiceSpec):
            # The one rewrite: guest RAM as a size a compose file shows as is (64M).
            argv[argv.index("--size") + 1] = size_text(spec.size)
        assert commands[name] == ["serve", spec.kind, "--listen", LISTEN, *argv, "--insecure"]


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
