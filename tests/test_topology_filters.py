"""Filters and schedules in topology files (issue 11): what a file may say, the
FILE:LINE errors it gets, and the ``--object``/``--dump-dir`` each service is
started with, here and (StartService.filters) on another host."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from virtwire.allowlist import RpcPolicy
from virtwire.errors import ConfigError
from virtwire.net.filter import FilterDirection
from virtwire.net.filter_types import FilterSpec
from virtwire.orchestrator.core import DUMP_DIR, remove_lan_dir
from virtwire.orchestrator.plan import plan
from virtwire.orchestrator.render import render
from virtwire.orchestrator.spec import (
    E1000ServiceSpec,
    HubPortSpec,
    HubServiceSpec,
    QemuServiceSpec,
    TapServiceSpec,
)
from virtwire.orchestrator.start_options import (
    MAX_START_FILTERS,
    from_start_request,
    to_start_options,
)
from virtwire.orchestrator.statedir import private_dir
from virtwire.topology import (
    Topology,
    TopologyError,
    json_schema,
    load_topology,
    parse_topology,
)
from virtwire.v1 import orchestrator_pb2

EXAMPLES = Path(__file__).parent.parent / "examples"

LAN = """\
name: f
nodes:
  hub0:
    kind: hub
    ports:
      up:
        netem: {delay: 5ms}
  hub1: {kind: hub}
  vm1:
    kind: vm
    netem: {delay: 20ms, loss: 1%}
    filters:
      - {type: dump, file: vm1.pcap, maxlen: 128}
      - {type: buffer, id: b0, interval: 1000, queue: rx, position: head}
  vm2: {kind: vm}
  t1: {kind: tap, backend: dgram, local: "127.0.0.1:0", remote: "127.0.0.1:9"}
links:
  - ends: [vm1, hub0]
    filters:
      hub0: [{type: netem, id: n0, queue: all, rate: 10mbit, status: off}]
  - ends: [vm2, hub0:up]
    netem: {vm2: {delay: 1ms, id: v2}}
  - ends: [hub1, hub0]
    netem: {hub1: {jitter: 1ms, delay: 3ms}, hub0: {delay: 4ms}}
  - ends: [t1, hub1:t]
    filters: {t1: [{type: mirror, netdev_out: x}], "hub1:t": [{type: netem, delay: 1ms}]}
"""


def _lan(text: str = LAN) -> Topology:
    return parse_topology(text, "f.yaml")


def _problems(text: str) -> list[str]:
    with pytest.raises(TopologyError) as info:
        parse_topology(text, "f.yaml")
    return list(info.value.problems)


def _addresses(topo: Topology) -> dict[str, str]:
    return {svc.name: f"127.0.0.1:{7000 + i}" for i, svc in enumerate(topo.services)}


# -- where filters go ------------------------------------------------------------------
def test_a_mirror_to_a_tap_is_refused_with_its_line() -> None:
    assert _problems(LAN) == [
        "f.yaml:26: links[3] (t1 -- hub1:t): filters.t1[0]: netdev_out=x: t1's service has "
        "no other NetClient (a mirror there copies to a chardev)"]


def test_filters_of_nodes_ports_and_link_ends_resolve_to_their_netclients() -> None:
    topo = _lan(LAN.replace("[{type: mirror, netdev_out: x}]", "[{type: netem, loss: 2%}]"))
    got = [(f.service, f.netclient, f.link, f.spec.format()) for f in topo.filters]
    assert got == [
        ("hub0", "up", None, "filter-netem,id=netem,netdev=up,queue=tx,delay=5ms"),
        ("vm1-e1000", "vm1", None,
         "filter-netem,id=netem,netdev=vm1,queue=tx,delay=20ms,loss=1%"),
        ("vm1-e1000", "vm1", None, "filter-dump,id=dump,netdev=vm1,file=vm1.pcap,maxlen=128"),
        ("vm1-e1000", "vm1", None,
         "filter-buffer,id=b0,netdev=vm1,queue=rx,position=head,interval=1000"),
        # A hub's end without a port name: the port the plan names (netdev a placeholder).
        ("hub0", "", 0, "filter-netem,id=n0,netdev=port,status=off,rate=10mbit"),
        ("vm2-e1000", "vm2", 1, "filter-netem,id=v2,netdev=vm2,queue=tx,delay=1ms"),
        ("hub1", "", 2, "filter-netem,id=netem,netdev=port,queue=tx,jitter=1ms,delay=3ms"),
        ("hub0", "", 2, "filter-netem,id=netem,netdev=port,queue=tx,delay=4ms"),
        ("t1", "t1", 3, "filter-netem,id=netem,netdev=t1,loss=2%"),
        ("hub1", "t", 3, "filter-netem,id=netem,netdev=t,delay=1ms"),
    ]
    # Each parses back as --object text, and a topology's JSON names them.
    assert all(FilterSpec.parse(f.spec.format()) == f.spec for f in topo.filters)
    assert len(json.loads(json.dumps(topo.to_dict()))["filters"]) == 10


def test_the_plan_gives_each_service_its_objects_and_a_dump_dir() -> None:
    topo = _lan(LAN.replace("[{type: mirror, netdev_out: x}]", "[{type: netem, loss: 2%}]"))
    specs = plan(topo, _addresses(topo), dump_root="/state/f/dump")
    hub0 = specs["hub0"]
    assert isinstance(hub0, HubServiceSpec)
    # hub0: port up (named), hub0port1 (vm1's end), hub0port2 (hub1's end).
    assert [p.name for p in hub0.ports] == ["up", "hub0port1", "hub0port2"]
    argv = hub0.argv()
    assert argv[argv.index("--object"):] == [
        "--object", "filter-netem,id=netem,netdev=up,queue=tx,delay=5ms",
        "--object", "filter-netem,id=n0,netdev=hub0port1,status=off,rate=10mbit",
        "--object", "filter-netem,id=netem,netdev=hub0port2,queue=tx,delay=4ms"]
    hub1 = specs["hub1"].argv()
    assert "filter-netem,id=netem,netdev=to-hub0,queue=tx,jitter=1ms,delay=3ms" in hub1
    vm1 = specs["vm1-e1000"]
    assert isinstance(vm1, E1000ServiceSpec)
    assert vm1.argv()[-2:] == ["--dump-dir", "/state/f/dump/vm1-e1000"]
    assert vm1.argv().count("--object") == 3
    tap = specs["t1"]
    assert isinstance(tap, TapServiceSpec)
    assert tap.argv()[-2:] == ["--object", "filter-netem,id=netem,netdev=t1,loss=2%"]
    assert "--dump-dir" not in specs["hub0"].argv()  # no dump there
    # The guest and guestmem services have no NetClients to filter.
    assert "--object" not in specs["vm1-guest"].argv() + specs["vm1-guestmem"].argv()
    # Without a dump root (render, a remote host) no --dump-dir.
    assert "--dump-dir" not in plan(topo, _addresses(topo))["vm1-e1000"].argv()


@pytest.mark.parametrize("path", sorted(p for p in EXAMPLES.glob("*.yaml")
                                        if p.name != "netem.yaml"), ids=lambda p: p.name)
def test_a_topology_without_filters_is_started_as_before(path: Path) -> None:
    topo = load_topology(path)
    assert topo.filters == () and topo.schedule == ()
    assert "filters" not in topo.to_dict() and "schedule" not in topo.to_dict()
    for spec in plan(topo, _addresses(topo), dump_root="/state/x/dump").values():
        assert "--object" not in spec.argv() and "--dump-dir" not in spec.argv()
        if isinstance(spec, QemuServiceSpec):  # runs here only, never by StartService
            continue
        assert "filters" not in to_start_options(spec)


def test_the_netem_example() -> None:
    topo = load_topology(EXAMPLES / "netem.yaml")
    assert topo.warnings == ()
    assert [s.describe() for s in topo.schedule] == [
        "link vm2 down", "link vm2 up", "netem vm2 loss=30%", "netem vm2 loss=0%",
        "netem_reset vm1"]
    assert [s.at for s in topo.schedule] == [10.0, 12.0, 20.0, 40.0, 45.0]
    assert {f.spec.id for f in topo.filters} == {"shaper", "netem"}


def test_the_json_schema_describes_filters_links_and_the_schedule() -> None:
    schema = json_schema()
    assert "schedule" in schema["properties"]
    text = json.dumps(schema)
    assert "ends" in text and "netem" in text


# -- errors, each with its line -----------------------------------------------------------
_BASE = "name: f\nnodes:\n  hub0: {kind: hub}\n  vm1:\n    kind: vm\n"


@pytest.mark.parametrize(("extra", "problem"), [
    ("    netem: {delay: 20}\n",
     "f.yaml:6: node 'vm1': netem: netem netem delay '20' needs a unit: e.g. 20ms "
     "(s, ms, us, ns)"),
    ("    netem: {loss: 101%}\n",
     "f.yaml:6: node 'vm1': netem: netem netem loss '101%' is more than 100%"),
    ("    netem: {rate: 10 furlongs}\n", "f.yaml:6: node 'vm1': netem: netem netem rate"),
    ("    filters:\n      - {type: bogus}\n",
     "f.yaml:7: node 'vm1': filters[0].type: filter type 'bogus' is not one of"),
    ("    filters:\n      - {delay: 1ms}\n",
     "f.yaml:7: node 'vm1': filters[0]: missing field 'type'"),
    ("    filters:\n      - netem\n",
     "f.yaml:7: node 'vm1': filters[0]: a filter is a mapping {type: KIND"),
    ("    filters:\n      - {type: netem, delay: 1ms}\n      - {type: netem, loss: 1%}\n",
     "f.yaml:8: node 'vm1': filters[1]: a filter 'netem' is already on vm1's NetClient: "
     "give this one an id"),
    ("    netem: {delay: 1ms}\n    filters:\n      - {type: netem, id: netem, loss: 1%}\n",
     "f.yaml:8: node 'vm1': filters[0].id: a filter 'netem' is already on vm1's NetClient"),
    ("    filters:\n      - {type: netem, delay: 1ms, colour: red}\n",
     "f.yaml:7: node 'vm1': filters[0].colour: netem has no property colour (it takes delay"),
    ("    filters:\n      - {type: netem, queue: up, delay: 1ms}\n",
     "f.yaml:7: node 'vm1': filters[0].queue: filter direction 'up' is not one of"),
    ("    filters:\n      - {type: netem, position: id=x, delay: 1ms}\n",
     "f.yaml:7: node 'vm1': filters[0].position: id=x: no filter 'x' is on vm1's NetClient "
     "before this one (there: none)"),
    ("    filters:\n      - {type: dump, file: /etc/passwd}\n",
     "f.yaml:7: node 'vm1': filters[0].file: dump file '/etc/passwd' is a path: give a plain "
     "file name"),
    ("    filters:\n      - {type: dump, file: ..}\n",
     "f.yaml:7: node 'vm1': filters[0]: dump file '..': give a plain file name"),
    ("    filters:\n      - {type: dump}\n",
     "f.yaml:7: node 'vm1': filters[0]: dump needs file: NAME"),
    ("    filters:\n      - {type: dump, id: a, file: x.pcap}\n"
     "      - {type: dump, id: b, file: x.pcap}\n",
     "f.yaml:8: node 'vm1': filters[1].file: dump file 'x.pcap' is already written by "
     "node 'vm1': filters[0] (line 7) in service vm1-e1000"),
    ("    filters:\n      - {type: dump, file: x.pcap, maxlen: 0}\n",
     "f.yaml:7: node 'vm1': filters[0]: filter dump dump: maxlen=0 is out of range"),
    ("    filters:\n      - {type: mirror, outdev: c0}\n",
     "f.yaml:7: node 'vm1': filters[0].outdev: mirror outdev= names a chardev"),
    ("    filters:\n      - {type: redirector, indev: c0}\n",
     "f.yaml:7: node 'vm1': filters[0]: redirector reads and writes chardevs"),
    ("    filters:\n      - {type: netem, delay: [1]}\n",
     "f.yaml:7: node 'vm1': filters[0].delay: expected a string, a number or true/false, "
     "not a list"),
    ("    filters:\n      - {type: netem, delay: 'a,b'}\n",
     "f.yaml:7: node 'vm1': filters[0]: netem netem delay 'a,b'"),
    ("    filters: 3\n", "f.yaml:6: node 'vm1': filters: input should be a valid list"),
])
def test_a_bad_filter_is_reported_with_its_line(extra: str, problem: str) -> None:
    text = _BASE + extra + "links:\n  - [vm1, hub0]\n"
    problems = _problems(text)
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_seventeen_filters_on_one_netclient_are_refused() -> None:
    items = "".join(f"      - {{type: netem, id: n{i}, delay: 1ms}}\n" for i in range(17))
    assert _problems(_BASE + "    filters:\n" + items + "links:\n  - [vm1, hub0]\n") == [
        "f.yaml:23: node 'vm1': filters[16]: vm1's NetClient takes at most 16 filters"]


@pytest.mark.parametrize(("hub", "links", "problem"), [
    ("  hub1:\n    kind: hub\n    filters: []\n", "  - [vm1, hub1]\n",
     "f.yaml:9: node 'hub1': unknown field 'filters': a hub has no NetClient of its own"),
    ("  hub1:\n    kind: hub\n    ports:\n      p9: {netem: {delay: 1ms}}\n",
     "  - [vm1, hub1:p1]\n",
     "f.yaml:10: node 'hub1': ports.p9: port 'p9' is in no link: name it in one "
     "(e.g. [NODE, hub1:p9])"),
    ("  hub1:\n    kind: hub\n    ports:\n      p1: {colour: red}\n", "  - [vm1, hub1:p1]\n",
     "f.yaml:10: node 'hub1': ports.p1: unknown field 'colour' (allowed: filters, netem)"),
    ("  hub1: {kind: hub}\n", "  - ends: [vm1, hub1]\n    netem: {vm2: {delay: 1ms}}\n",
     "f.yaml:10: links[0] (vm1 -- hub1): netem.vm2: 'vm2' is not an end of this link "
     "(its ends: vm1, hub1)"),
    ("  hub1: {kind: hub}\n", "  - ends: [vm1, hub1:p1]\n    netem: {hub1:p2: {delay: 1ms}}\n",
     "f.yaml:10: links[0] (vm1 -- hub1:p1): netem.hub1:p2: 'hub1:p2' is not an end"),
    ("  hub1: {kind: hub}\n", "  - ends: [vm1, hub1]\n    endpoints: [vm1, hub1]\n",
     "f.yaml:10: links[0] (vm1 -- hub1): unknown field 'endpoints' (allowed: ends, filters, "
     "netem)"),
    ("  hub1: {kind: hub}\n", "  - {netem: {vm1: {delay: 1ms}}}\n",
     "f.yaml:9: links[0]: a link written as a mapping needs ends: [NODE, NODE]"),
    ("  hub1: {kind: hub}\n", "  - ends: [vm1, hub1]\n    filters: {vm1: {type: netem}}\n",
     "f.yaml:10: links[0] (vm1 -- hub1): filters.vm1: expected a list of filters, not a "
     "mapping"),
])
def test_bad_ports_and_link_ends_are_reported_with_their_lines(
        hub: str, links: str, problem: str) -> None:
    text = "name: f\nnodes:\n  vm1: {kind: vm}\n  vm2: {kind: vm}\n  hub0: {kind: hub}\n" \
        "  vm3: {kind: vm}\n" + hub + "links:\n" + links
    problems = [p for p in _problems(text) if "not in any link" not in p]
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_mirror_to_another_named_port_of_its_hub() -> None:
    text = ("name: f\nnodes:\n  hub0:\n    kind: hub\n    ports:\n      a:\n"
            "        filters: [{type: mirror, netdev_out: b}]\n"
            "  vm1: {kind: vm}\n  vm2: {kind: vm}\n"
            "links:\n  - [vm1, hub0:a]\n  - [vm2, hub0:b]\n")
    (nf,) = _lan(text).filters
    assert nf.spec.format() == "filter-mirror,id=mirror,netdev=a,netdev_out=b"
    assert _problems(text.replace("netdev_out: b", "netdev_out: c")) == [
        "f.yaml:7: node 'hub0': ports.a.filters[0]: netdev_out=c: not another named port of "
        "hub hub0 (named ports: b)"]


# -- the schedule -------------------------------------------------------------------------
_SCHED = ("name: f\nnodes:\n  hub0: {kind: hub}\n  vm1: {kind: vm}\n  vm2: {kind: vm}\n"
          "links:\n  - [vm1, hub0]\n  - [vm2, hub0:p2]\nschedule:\n")


def test_flap_at_10s_and_loss_from_20_to_40s() -> None:
    topo = _lan(_SCHED + "  - {at: 40s, netem: {target: vm2, loss: 0%}}\n"
                "  - {at: 10s, link: {node: vm2, state: down}}\n"
                "  - {at: 10.5, link: {target: hub0:p2, state: up}}\n"
                "  - {at: 20s, netem: {target: vm2, loss: 30%, delay: 5ms}}\n"
                "  - {at: 20s, filter: {target: vm1, op: add, type: buffer, id: b, "
                "interval: 100, status: off}}\n"
                "  - {at: 21s, filter: {target: vm1, op: update, id: b, status: on}}\n"
                "  - {at: 22s, filter: {target: vm1, op: remove, id: b}}\n"
                "  - {at: 41s, netem_reset: {target: vm2}}\n")
    steps = topo.schedule
    assert [(s.at, s.index, s.describe()) for s in steps] == [
        (10.0, 1, "link vm2 down"),
        (10.5, 2, "link hub0:p2 up"),
        (20.0, 3, "netem vm2 loss=30% delay=5ms"),
        (20.0, 4, "filter add buffer b on vm1 status=off interval=100"),
        (21.0, 5, "filter update b on vm1 status=on"),
        (22.0, 6, "filter remove b on vm1"),
        (40.0, 0, "netem vm2 loss=0%"),
        (41.0, 7, "netem_reset vm2"),
    ]
    netem = steps[2]
    assert (netem.op, netem.kind, netem.fid, netem.direction) == (
        "set", "netem", "netem", FilterDirection.TX)
    assert steps[0].up is False and steps[1].up is True
    assert [s.line for s in steps[:2]] == [11, 12]
    assert topo.warnings == ()


@pytest.mark.parametrize(("step", "problem"), [
    ("{link: {node: vm2, state: down}}", "f.yaml:10: schedule[0]: missing field 'at'"),
    ("{at: '10', link: {node: vm2, state: down}}", "f.yaml:10: schedule[0].at: at '10' needs"),
    ("{at: -1, link: {node: vm2, state: down}}", "f.yaml:10: schedule[0].at: at -1 is not"),
    ("{at: 8d, link: {node: vm2, state: down}}", "f.yaml:10: schedule[0].at: at '8d'"),
    ("{at: 1000000, link: {node: vm2, state: down}}",
     "f.yaml:10: schedule[0].at: at 1000000: at most a week"),
    ("{at: 1s}", "f.yaml:10: schedule[0]: a step does one thing: give one of link, netem, "
     "netem_reset, filter"),
    ("{at: 1s, link: {node: vm2, state: down}, netem_reset: {target: vm2}}",
     "f.yaml:10: schedule[0]: a step does one thing: give one of link, netem, netem_reset, "
     "filter, not link and netem_reset"),
    ("{at: 1s, flap: {node: vm2}}", "f.yaml:10: schedule[0]: unknown field 'flap'"),
    ("{at: 1s, link: {node: vm9, state: down}}",
     "f.yaml:10: schedule[0].link.node: unknown node 'vm9' (known: hub0, vm1, vm2)"),
    ("{at: 1s, link: {node: hub0, state: down}}",
     "f.yaml:10: schedule[0].link.node: hub0 is a hub: name a port, hub0:PORT"),
    ("{at: 1s, link: {node: 'hub0:p9', state: down}}",
     "f.yaml:10: schedule[0].link.node: hub hub0 has no port named 'p9' in its links "
     "(named: p2)"),
    ("{at: 1s, link: {node: 'vm1:eth0', state: down}}",
     "f.yaml:10: schedule[0].link.node: 'vm1:eth0': a vm node has a single port"),
    ("{at: 1s, link: {node: vm2, state: sideways}}",
     "f.yaml:10: schedule[0].link.state: state: up or down, not 'sideways'"),
    ("{at: 1s, link: {node: vm2}}", "f.yaml:10: schedule[0].link: missing field 'state'"),
    ("{at: 1s, link: {node: vm2, state: up, when: now}}",
     "f.yaml:10: schedule[0].link: unknown field 'when' (allowed: node, state)"),
    ("{at: 1s, link: vm2}", "f.yaml:10: schedule[0].link: expected a mapping"),
    ("{at: 1s, netem: {target: vm2}}",
     "f.yaml:10: schedule[0].netem: give the netem properties to set"),
    ("{at: 1s, netem: {target: vm2, loss: 300%}}",
     "f.yaml:10: schedule[0].netem: netem netem loss '300%' is more than 100%"),
    ("{at: 1s, netem: {target: vm2, colour: red}}",
     "f.yaml:10: schedule[0].netem.colour: netem has no property colour"),
    ("{at: 1s, filter: {target: vm2, op: paint}}",
     "f.yaml:10: schedule[0].filter.op: op: add, update or remove, not 'paint'"),
    ("{at: 1s, filter: {target: vm2, op: remove, id: x}}",
     "f.yaml:10: schedule[0].filter.id: no filter 'x' is on vm2 at this point of the "
     "schedule (there: none)"),
    ("{at: 1s, filter: {target: vm2, op: update}}",
     "f.yaml:10: schedule[0].filter: missing field 'id' (the filter to update)"),
    ("{at: 1s, filter: {target: vm2, op: add, type: dump, file: a/b}}",
     "f.yaml:10: schedule[0].filter.file: dump file 'a/b' is a path"),
])
def test_a_bad_step_is_reported_with_its_line(step: str, problem: str) -> None:
    problems = _problems(_SCHED + f"  - {step}\n")
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_steps_are_checked_in_time_order_against_the_filters_of_the_moment() -> None:
    # Removed at 5 s, so the update at 6 s (written first) finds no filter.
    problems = _problems(
        _SCHED.replace("  vm1: {kind: vm}\n", "  vm1:\n    kind: vm\n"
                       "    filters: [{type: netem, id: n, delay: 1ms}]\n")
        + "  - {at: 6s, filter: {target: vm1, op: update, id: n, delay: 2ms}}\n"
        "  - {at: 5s, filter: {target: vm1, op: remove, id: n}}\n"
        "  - {at: 7s, filter: {target: vm1, op: add, type: netem, id: n, delay: 1ms}}\n"
        "  - {at: 8s, filter: {target: vm1, op: add, type: netem, id: n, delay: 1ms}}\n")
    assert problems == [
        "f.yaml:12: schedule[0].filter.id: no filter 'n' is on vm1 at this point of the "
        "schedule (there: none)",
        "f.yaml:15: schedule[3].filter.id: a filter 'n' is already on vm1's NetClient"]


def test_a_netem_step_keeps_the_queue_of_the_netem_it_changes() -> None:
    text = _SCHED.replace("  vm2: {kind: vm}\n", "  vm2:\n    kind: vm\n"
                          "    netem: {delay: 1ms, queue: rx}\n")
    topo = _lan(text + "  - {at: 1s, netem: {target: vm2, loss: 5%}}\n")
    assert topo.schedule[0].direction is FilterDirection.RX
    assert _problems(text + "  - {at: 1s, netem: {target: vm2, queue: tx, loss: 5%}}\n") == [
        "f.yaml:12: schedule[0].netem.queue: the netem on vm2 sees rx already: netem_reset "
        "it first to change its queue"]


def test_a_reset_with_no_netem_is_a_warning() -> None:
    topo = _lan(_SCHED + "  - {at: 1s, netem_reset: {target: vm2}}\n")
    assert topo.warnings == (
        "f.yaml:10: warning: schedule[0].netem_reset: no netem 'netem' is on vm2 at this "
        "point of the schedule: the step does nothing unless one was added by hand",)


def test_too_many_steps_are_refused() -> None:
    steps = "".join("  - {at: 1s, link: {node: vm2, state: up}}\n" for _ in range(1001))
    assert _problems(_SCHED + steps) == ["f.yaml:9: schedule: 1001 steps: at most 1000"]


# -- another host: StartService.filters ---------------------------------------------------
def _request(spec: object) -> orchestrator_pb2.OrchestratorServiceStartServiceRequest:
    return orchestrator_pb2.OrchestratorServiceStartServiceRequest(
        lan="f", name="x", listen="127.0.0.1:0", **to_start_options(spec))  # type: ignore[arg-type]


def test_start_service_carries_the_filters_and_the_agent_checks_them() -> None:
    topo = _lan(LAN.replace("[{type: mirror, netdev_out: x}]", "[{type: netem, loss: 2%}]"))
    policy = RpcPolicy(command="virtwire serve orchestrator")
    for name, spec in plan(topo, _addresses(topo), dump_root="/here/dump").items():
        back = from_start_request(_request(spec), policy)
        assert getattr(back, "filters", ()) == getattr(spec, "filters", ()), name
        assert getattr(back, "dump_dir", "") == ""  # the agent picks its own


@pytest.mark.parametrize(("filters", "problem"), [
    (["filter-dump,id=d,netdev=vm1,file=../../etc/shadow"], "dump file '../../etc/shadow'"),
    (["filter-dump,id=d,netdev=vm1,file=/tmp/x"], "dump file '/tmp/x'"),
    (["filter-mirror,id=m,netdev=vm1,outdev=c0"], "names a chardev"),
    (["filter-redirector,id=r,netdev=vm1,indev=c0"], "names a chardev"),
    (["dump,id=d,netdev=vm1"], "start with filter-TYPE"),
    (["filter-netem,id=n,netdev=../x"], "filter netdev"),
    (["filter-netem,id=n,netdev=vm1,delay=1ms"] * (MAX_START_FILTERS + 1), "at most 256"),
])
def test_the_agent_refuses_bad_filters(filters: list[str], problem: str) -> None:
    topo = _lan(_SCHED.replace("schedule:\n", ""))
    spec = plan(topo, _addresses(topo))["vm1-e1000"]
    request = _request(spec)
    request.filters.extend(filters)
    with pytest.raises(ConfigError, match=problem.replace("(", r"\(").replace(".", r"\.")):
        from_start_request(request, RpcPolicy(command="virtwire serve orchestrator"))


def test_the_agent_refuses_filters_for_a_service_without_netclients() -> None:
    topo = _lan(_SCHED.replace("schedule:\n", ""))
    request = _request(plan(topo, _addresses(topo))["vm1-guestmem"])
    request.filters.append("filter-netem,id=n,netdev=vm1,delay=1ms")
    with pytest.raises(ConfigError, match="a guestmem service has no NetClients"):
        from_start_request(request, RpcPolicy(command="virtwire serve orchestrator"))


# -- dumps: kept after down, not rendered ---------------------------------------------------
def test_render_refuses_a_dump() -> None:
    topo = _lan(_BASE + "    filters: [{type: dump, file: a.pcap}]\nlinks:\n  - [vm1, hub0]\n")
    with pytest.raises(ConfigError, match=r"f\.yaml:6: a dump filter writes in the LAN's "
                                          "state dir"):
        render(topo, "compose")


def test_removing_a_lan_dir_keeps_its_dumps(tmp_path: Path) -> None:
    lan = private_dir(tmp_path, "lab")
    assert lan is not None
    (lan / "state.json").write_text("{}")
    (lan / "vm1-e1000.log").write_text("log")
    dumps = private_dir(tmp_path, "lab", DUMP_DIR, "vm1-e1000")
    assert dumps is not None
    (dumps / "vm1.pcap").write_bytes(b"pcap")
    remove_lan_dir("lab", tmp_path)
    assert sorted(p.name for p in lan.iterdir()) == [DUMP_DIR]
    assert (dumps / "vm1.pcap").read_bytes() == b"pcap"
    # An empty dump dir is not worth keeping: the LAN's dir goes.
    (dumps / "vm1.pcap").unlink()
    remove_lan_dir("lab", tmp_path)
    assert not lan.exists()


async def test_an_agent_starts_a_service_with_its_filters_and_a_dump_dir_of_its_own(
        tmp_path: Path) -> None:
    from virtwire import tls
    from virtwire.orchestrator.agent import Agent
    from virtwire.v1 import filter_pb2, filter_pb2_grpc

    agent = Agent(tmp_path / "state" / "agent")
    request = _request(HubServiceSpec(name="hub0", ports=(HubPortSpec("p1"),), filters=(
        "filter-dump,id=cap,netdev=p1,file=p1.pcap",
        "filter-netem,id=netem,netdev=p1,queue=tx,delay=1ms")))
    request.name = "hub0"
    try:
        rec = await agent.start_request(request)
        async with tls.aio_channel(rec.address) as ch:
            got = await filter_pb2_grpc.FilterServiceStub(ch).ListFilters(
                filter_pb2.ListFiltersRequest(netclient="p1"), timeout=5)
        assert [(f.id, f.kind) for f in got.filters] == [("cap", "dump"), ("netem", "netem")]
        assert (tmp_path / "state" / "agent" / "f" / DUMP_DIR / "hub0" / "p1.pcap").is_file()
    finally:
        await agent.close()
