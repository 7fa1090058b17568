"""Topology files: the examples, every kind of error (with file, place and line), fuzzing."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virtwire import topology as topology_mod
from virtwire.allowlist import RpcPolicy
from virtwire.errors import ConfigError
from virtwire.net.netdev import NETDEV_OPTIONS, parse_backend_spec
from virtwire.topology import (
    TAP_SPECS,
    HubNode,
    TapNode,
    Topology,
    TopologyError,
    VmNode,
    json_schema,
    load_topology,
    parse_topology,
)

from support.unprivileged import open_dir, unprivileged

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(tmp_path: Path, text: str, name: str = "lab.yaml") -> Topology:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return load_topology(path)


def problems(tmp_path: Path, text: str) -> str:
    """The TopologyError message for ``text`` saved as lab.yaml."""
    with pytest.raises(TopologyError) as info:
        load(tmp_path, text)
    message = str(info.value)
    assert str(tmp_path / "lab.yaml") in message
    return message


def one_problem(tmp_path: Path, text: str, *parts: str) -> str:
    """Exactly one problem, at ``lab.yaml:LINE: WHERE``, containing every part."""
    message = problems(tmp_path, text)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    return message


# -- the examples ---------------------------------------------------------------------
def test_the_examples_exist() -> None:
    names = {p.name for p in EXAMPLES.glob("*.yaml")}
    assert {"default.yaml", "qemu-lan.yaml", "bridged.yaml", "two-hosts.yaml"} <= names


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_parses_without_warnings(path: Path) -> None:
    topology = load_topology(path)
    assert topology.warnings == ()
    json.dumps(topology.to_dict())  # plain data
    assert topology.name == path.stem


def test_the_default_example() -> None:
    topology = load_topology(EXAMPLES / "default.yaml")
    assert [s.name for s in topology.services] == [
        "hub0", "vm1-guestmem", "vm1-e1000", "vm1-guest",
        "vm2-guestmem", "vm2-e1000", "vm2-guest", "qemu0"]
    assert [s.kind for s in topology.services] == [
        "hub", "guestmem", "e1000", "guest", "guestmem", "e1000", "guest", "tap"]
    vm1, vm2 = topology.vms()
    assert (str(vm1.ip), str(vm2.ip)) == ("198.18.0.1/24", "198.18.0.2/24")
    assert vm1.memory == 64 << 20 and vm1.model == "82540EM" and vm1.compat == "9.0"
    (qemu0,) = topology.taps()
    assert qemu0.backend == "stream" and dict(qemu0.options) == {"listen": "127.0.0.1:10555"}
    # Every VM and the tap dial the hub; the tap gets the named port.
    ends = [(link.dialer.node, link.listener.node, link.listener.netclient)
            for link in topology.links]
    assert ends == [("vm1", "hub0", ""), ("vm2", "hub0", ""), ("qemu0", "hub0", "qemu0")]
    assert topology.links[0].dialer.service == "vm1-e1000"
    assert topology.links[0].dialer.netclient == "vm1"
    hub = topology.node("hub0")
    assert isinstance(hub, HubNode) and hub.ports == ("qemu0",)


def test_the_two_hosts_example_places_services() -> None:
    topology = load_topology(EXAMPLES / "two-hosts.yaml")
    assert {h.name: h.address for h in topology.hosts.values()} == {
        "h1": "198.18.1.1", "h2": "198.18.1.2"}
    assert {s.name: s.host for s in topology.services}["vm2-guest"] == "h2"


# -- the resolved topology ------------------------------------------------------------
LAN = """\
name: lab
nodes:
  t1: {kind: tap, backend: stream, connect: 127.0.0.1:10600, reconnect: 2}
  vm1: {kind: vm, ip: 198.18.0.1/24}
  hubb: {kind: hub}
  vm2: {kind: vm, ip: 198.18.0.2/24, mac: 52:54:00:12:34:56}
  huba: {kind: hub}
  vm3: {kind: vm, memory: 32MiB, model: 82545EM, compat: 7.2}
  t2: {kind: tap, backend: dgram, mcast: 230.0.0.1:10700}
  t3: {kind: tap, backend: tap, ifname: vw0, vnet_hdr: on}
links:
  - [vm1, vm2]
  - [t1, vm3]
  - [huba:trunk, hubb]
  - [t2, t3]
"""


def test_start_order_is_hubs_then_vms_then_taps_in_file_order(tmp_path: Path) -> None:
    topology = load(tmp_path, LAN)
    assert list(topology.nodes) == ["hubb", "huba", "vm1", "vm2", "vm3", "t1", "t2", "t3"]
    names = [s.name for s in topology.services]
    assert names[:2] == ["hubb", "huba"] and names[-3:] == ["t1", "t2", "t3"]
    seen: set[str] = set()
    for service in topology.services:  # every service needs only earlier ones
        assert set(service.needs) <= seen, service
        seen.add(service.name)


def test_the_later_started_end_dials(tmp_path: Path) -> None:
    topology = load(tmp_path, LAN)
    dials = {link.index: (link.dialer.node, link.listener.node) for link in topology.links}
    assert dials == {0: ("vm2", "vm1"),      # peer pair: the later vm dials
                     1: ("t1", "vm3"),       # taps start after vms
                     2: ("huba", "hubb"),    # the later-declared hub dials
                     3: ("t3", "t2")}
    trunk = topology.links[2]
    assert (trunk.dialer.netclient, trunk.listener.netclient) == ("trunk", "")
    assert trunk.ends == ("huba:trunk", "hubb")
    huba = topology.node("huba")  # its port "trunk" dials: created with its peer
    assert isinstance(huba, HubNode) and huba.ports == ()
    assert topology.links[1].listener.service == "vm3-e1000"
    assert topology.links[1].listener.netclient == "vm3"
    e1000 = next(s for s in topology.services if s.name == "vm2-e1000")
    assert e1000.needs == ("vm2-guestmem", "vm1-e1000")


def test_macs_default_as_qemu_does_and_skip_used_ones(tmp_path: Path) -> None:
    topology = load(tmp_path, LAN)
    macs = {vm.name: (vm.mac, vm.mac_assigned) for vm in topology.vms()}
    assert macs == {"vm1": ("52:54:00:12:34:57", True), "vm2": ("52:54:00:12:34:56", False),
                    "vm3": ("52:54:00:12:34:58", True)}


def test_values_are_normalised(tmp_path: Path) -> None:
    topology = load(tmp_path, LAN)
    vm3 = topology.node("vm3")
    assert isinstance(vm3, VmNode)
    assert (vm3.memory, vm3.model, vm3.compat) == (32 << 20, "82545EM", "7.2")
    t3 = topology.node("t3")
    assert isinstance(t3, TapNode) and dict(t3.options) == {"ifname": "vw0", "vnet_hdr": "on"}
    t1 = topology.node("t1")
    assert isinstance(t1, TapNode) and t1.options["reconnect"] == "2"


def test_backend_spec_round_trips_through_the_tap_parser(tmp_path: Path) -> None:
    topology = load(tmp_path, LAN)
    for tap in topology.taps():
        assert parse_backend_spec(tap.backend_spec()) == tap.backend_config()
        assert tap.backend_config("127.0.0.1:7000/").peer == "127.0.0.1:7000/"
        assert tap.backend_config().name == tap.name


def test_to_dict_is_json(tmp_path: Path) -> None:
    data = json.loads(json.dumps(load(tmp_path, LAN).to_dict()))
    assert data["nodes"]["vm3"]["memory"] == 32 << 20
    assert data["links"][0]["dialer"] == {"node": "vm2", "service": "vm2-e1000",
                                          "netclient": "vm2"}
    assert data["services"][0] == {"name": "hubb", "kind": "hub", "node": "hubb",
                                   "host": None, "needs": []}


def test_parse_topology_names_its_source() -> None:
    with pytest.raises(TopologyError, match=r"^<string>:1: "):
        parse_topology("name: Bad\nnodes: {h: {kind: hub}}\n")
    with pytest.raises(TopologyError, match=r"^inline\.yaml:1: "):
        parse_topology("name: Bad\nnodes: {h: {kind: hub}}\n", "inline.yaml")


def test_a_topology_error_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        parse_topology("name: lab\n")


def test_the_tap_schema_has_exactly_the_tap_services_options() -> None:
    for backend, model in TAP_SPECS.items():
        # publish: (a stream port's host address in containers) is no backend option,
        # nor is link_transport (the service's --link-transport), nor are its filters.
        node_fields = {"kind", "backend", "host", "link_transport", "filters", "netem"} \
            | ({"publish"} if backend == "stream" else set())
        fields = set(model.model_fields) - node_fields
        assert fields == set(NETDEV_OPTIONS[backend])
        assert node_fields <= set(model.model_fields)


def test_json_schema() -> None:
    schema = json_schema()
    assert schema["additionalProperties"] is False
    assert {"name", "nodes"} <= set(schema["required"])


# -- YAML ------------------------------------------------------------------------------
def test_yaml_syntax_error(tmp_path: Path) -> None:
    one_problem(tmp_path, """\
        name: lab
        nodes:
          hub0: {kind: hub
        links: []
        """, "lab.yaml:4: YAML: ", "flow mapping", "line 3")


def test_yaml_scalars_follow_the_core_schema(tmp_path: Path) -> None:
    # YAML 1.1 would read the MAC as a base-60 integer, "on"/"no" as booleans, 010 as 8.
    topology = load(tmp_path, """\
        name: lab
        nodes:
          no: {kind: hub}
          vm1: {kind: vm, mac: 52:54:00:12:34:01}
          t: {kind: tap, backend: tap, vnet_hdr: on, no_padding: off}
        links: [[vm1, no], [t, no]]
        """)
    assert next(iter(topology.nodes)) == "no"
    vm1 = topology.node("vm1")
    assert isinstance(vm1, VmNode) and vm1.mac == "52:54:00:12:34:01"


def test_anchors_merge_keys_and_extension_fields(tmp_path: Path) -> None:
    topology = load(tmp_path, """\
        name: lab
        x-vm: &vm {kind: vm, memory: 16M}
        nodes:
          hub0: {kind: hub}
          vm1: {<<: *vm, ip: 198.18.0.1/24}
          vm2: {<<: *vm, ip: 198.18.0.2/24, memory: 8M}
        links: [[vm1, hub0], [vm2, hub0]]
        """)
    memory = {vm.name: vm.memory for vm in topology.vms()}
    assert memory == {"vm1": 16 << 20, "vm2": 8 << 20}


@pytest.mark.parametrize(("text", "expected"), [
    ("", "lab.yaml: the file is empty"),
    ("- a\n- b\n", "lab.yaml:1: a topology is a mapping"),
    ("name: a\n---\nname: b\n",
     "lab.yaml:2: YAML: expected a single document in the stream at line 1, but found"),
    ("name: !!python/object:os.system x\n", "lab.yaml:1: YAML: could not determine"),
    ("name: !!int abc\n", "lab.yaml:1: YAML: 'abc' is not an integer"),
    ("name: lab\nnodes: {[a]: {kind: hub}}\n", "lab.yaml:2: YAML: "),
    ("[" * 5000 + "]" * 5000, "lab.yaml: YAML: nested too deeply"),
    ("name: lab\x00\n", "lab.yaml:1: YAML: character '\\x00' is not allowed"),
])
def test_unreadable_yaml(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in problems(tmp_path, text)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match=r"missing\.yaml: cannot read"):
        load_topology(tmp_path / "missing.yaml")
    (tmp_path / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    with pytest.raises(TopologyError, match=r"latin1\.yaml: not UTF-8"):
        load_topology(tmp_path / "latin1.yaml")


# -- one test per kind of error ------------------------------------------------------------
def test_unknown_field_lists_the_allowed_ones(tmp_path: Path) -> None:
    one_problem(tmp_path, """\
        name: lab
        nodes:
          vm1:
            kind: vm
            macaddr: 52:54:00:12:34:01
        """, "lab.yaml:5: node 'vm1': unknown field 'macaddr'",
        "(allowed: kind, mac, model, compat, memory, ip, bridge, host, link_transport, "
        "filters, netem)")


def test_unknown_top_level_and_bridge_fields(tmp_path: Path) -> None:
    message = problems(tmp_path, """\
        name: lab
        link: []
        nodes:
          vm1: {kind: vm, bridge: {ifname: vw0, mtu: 1500}}
        """)
    assert ("lab.yaml:2: unknown field 'link' (allowed: version, name, hosts, tls, "
            "metrics, link_transport, nodes, links, schedule)") in message
    assert "lab.yaml:4: node 'vm1': bridge: unknown field 'mtu' (allowed: ifname, netns, ip)" \
        in message


def test_an_option_of_another_backend_is_named_as_such(tmp_path: Path) -> None:
    one_problem(tmp_path, """\
        name: lab
        nodes:
          q: {kind: tap, backend: stream, ifname: vw0}
        """, "lab.yaml:3: node 'q': unknown field 'ifname': 'ifname' is an option of the "
        "tap backend (allowed here: kind, backend, host, link_transport, filters, netem, "
        "listen, connect, reconnect, publish)")


def test_missing_fields(tmp_path: Path) -> None:
    message = problems(tmp_path, """\
        nodes:
          hub0: {host: h1}
          q: {kind: tap}
          vm1: {kind: vm, bridge: {netns: ns1}}
          empty:
        """)
    assert "lab.yaml:1: missing field 'name' (required: name, nodes)" in message
    assert ("lab.yaml:2: node 'hub0': missing field 'kind' "
            "(one of hub, switch, vm, tap, netns, qemu") in message
    assert "lab.yaml:3: node 'q': missing field 'backend' (one of tap, stream, dgram)" \
        in message
    assert "lab.yaml:4: node 'vm1': bridge: missing field 'ifname' (required: ifname)" \
        in message
    assert "lab.yaml:5: node 'empty': the node is empty: give at least its kind" in message


def test_unknown_kind_and_backend(tmp_path: Path) -> None:
    message = problems(tmp_path, """\
        name: lab
        nodes:
          a: {kind: bridge}
          b: {kind: tap, backend: vde}
        """)
    assert ("lab.yaml:3: node 'a': kind: unknown kind 'bridge': expected one of hub, switch, "
            "vm, tap") in message
    assert "lab.yaml:4: node 'b': backend: unknown backend 'vde'" in message


def test_duplicate_node_names(tmp_path: Path) -> None:
    one_problem(tmp_path, """\
        name: lab
        nodes:
          hub0: {kind: hub}
          vm1: {kind: vm}
          hub0: {kind: vm}
        """, "lab.yaml:5: node 'hub0' is defined twice (lines 3 and 5)")


def test_duplicate_keys_anywhere(tmp_path: Path) -> None:
    one_problem(tmp_path, """\
        name: lab
        nodes:
          vm1:
            kind: vm
            ip: 198.18.0.1/24
            ip: 198.18.0.2/24
        """, "lab.yaml:6: node 'vm1': 'ip' is given twice (lines 5 and 6)")


def test_bad_names(tmp_path: Path) -> None:
    message = problems(tmp_path, """\
        name: Lab_1
        nodes:
          VM1: {kind: vm}
          7: {kind: hub}
        """)
    assert "lab.yaml:1: name: bad LAN name 'Lab_1'" in message
    assert "lab.yaml:3: bad node name 'VM1': use 1 to 28 of a-z, 0-9 and '-'" in message
    assert "lab.yaml:4: node name 7 is not a string: quote it" in message


def test_duplicate_mac(tmp_path: Path) -> None:
    one_problem(tmp_path, """\
        name: lab
        nodes:
          hub0: {kind: hub}
          vm1: {kind: vm, mac: 52:54:00:12:34:01}
          vm2: {kind: vm, mac: 52:54:00:12:34:01}
        links: [[vm1, hub0], [vm2, hub0]]
        """, "lab.yaml:5: node 'vm2': mac: MAC 52:54:00:12:34:01 is already used by node "
        "'vm1' (line 4)")


@pytest.mark.parametrize(("mac", "problem"), [
    ("01:00:5e:00:00:01", "01:00:5e:00:00:01 is a multicast MAC address"),
    ("ff:ff:ff:ff:ff:ff", "ff:ff:ff:ff:ff:ff is a multicast MAC address"),
    ("52:54:00:12:34", "bad MAC address '52:54:00:12:34': expected aa:bb:cc:dd:ee:ff"),
    ("52-54-00-12-34-01", "bad MAC address '52-54-00-12-34-01'"),
    ("'00:00:00:00:00:00'", "00:00:00:00:00:00 is the all-zero MAC address"),
])
def test_bad_mac(tmp_path: Path, mac: str, problem: str) -> None:
    one_problem(tmp_path, f"""\
        name: lab
        nodes:
          vm1:
            kind: vm
            mac: {mac}
        """, f"lab.yaml:5: node 'vm1': mac: {problem}")


@pytest.mark.parametrize(("ip", "problem"), [
    ("198.18.0.300/24", "bad address '198.18.0.300/24': Octet 300"),
    ("198.18.0.1", "address '198.18.0.1' needs a prefix length"),
    ("198.18.0.1/33", "bad address '198.18.0.1/33'"),
    ("198.18.0.0/24", "address '198.18.0.0/24' is the network or broadcast address of "
     "198.18.0.0/24"),
    ("198.18.0.255/24", "address '198.18.0.255/24' is the network or broadcast"),
    ("224.0.0.1/24", "address '224.0.0.1/24' is not a unicast host address"),
    ("'2001:db8::1/64'", "address '2001:db8::1/64' is IPv6"),
])
def test_bad_cidr(tmp_path: Path, ip: str, problem: str) -> None:
    one_problem(tmp_path, f"""\
        name: lab
        nodes:
          vm1:
            kind: vm
            bridge:
              ifname: vw0
              ip: {ip}
        """, f"lab.yaml:7: node 'vm1': bridge.ip: {problem}")


def test_duplicate_ips(tmp_path: Path) -> None:
    one_problem(tmp_path, """\
        name: lab
        nodes:
          hub0: {kind: hub}
          vm1: {kind: vm, ip: 198.18.0.1/24}
          vm2:
            kind: vm
            bridge: {ifname: vw2, ip: 198.18.0.1/16}
        links: [[vm1, hub0], [vm2, hub0]]
        """, "lab.yaml:7: node 'vm2': bridge.ip: IP address 198.18.0.1 is already used by "
        "node 'vm1': ip (line 4)")


def test_link_to_a_missing_node(tmp_path: Path) -> None:
    one_problem(tmp_path, """\
        name: lab
        nodes:
          hub0: {kind: hub}
          vm1: {kind: vm}
        links:
          - [vm1, hub1]
        """, "lab.yaml:6: links[0] (vm1 -- hub1): unknown node 'hub1' (known: hub0, vm1)")


@pytest.mark.parametrize(("link", "problem"), [
    ("[vm1]", "a link is a pair [NODE, NODE] where a hub end may be HUB:PORT, not a list of 1"),
    ("[vm1, hub0, hub0]", "not a list of 3"),
    ("vm1 -- hub0", "not 'vm1 -- hub0'"),
    ("[vm1, 5]", "end 1 is 5"),
])
def test_malformed_links(tmp_path: Path, link: str, problem: str) -> None:
    one_problem(tmp_path, f"""\
        name: lab
        nodes:
          hub0: {{kind: hub}}
          vm1: {{kind: vm}}
        links:
          - {link}
        """, "lab.yaml:6: links[0]", problem)


def test_a_vm_or_tap_port_used_twice(tmp_path: Path) -> None:
    one_problem(tmp_path, """\
        name: lab
        nodes:
          hub0: {kind: hub}
          hub1: {kind: hub}
          vm1: {kind: vm}
        links:
          - [vm1, hub0]
          - [vm1, hub1]
        """, "lab.yaml:8: links[1] (vm1 -- hub1): node 'vm1' is already linked by links[0] "
        "(line 7): a vm has a single port")


def test_a_named_hub_port_used_twice(tmp_path: Path) -> None:
    one_problem(tmp_path, """\
        name: lab
        nodes:
          hub0: {kind: hub}
          vm1: {kind: vm}
          q: {kind: tap, backend: stream, listen: 127.0.0.1:10555}
        links:
          - [vm1, hub0:up]
          - [q, hub0:up]
        """, "lab.yaml:8: links[1] (q -- hub0:up): hub port hub0:up is already linked by "
        "links[0] (line 7)")


def test_unnamed_hub_ports_are_new_each_time(tmp_path: Path) -> None:
    topology = load(tmp_path, """\
        name: lab
        nodes:
          hub0: {kind: hub}
          vm1: {kind: vm}
          vm2: {kind: vm}
        links: [[hub0, vm1], [vm2, hub0]]
        """)
    assert [link.listener.netclient for link in topology.links] == ["", ""]
    assert [link.dialer.node for link in topology.links] == ["vm1", "vm2"]


def test_port_names(tmp_path: Path) -> None:
    message = problems(tmp_path, """\
        name: lab
        nodes:
          hub0: {kind: hub}
          vm1: {kind: vm}
          vm2: {kind: vm}
        links:
          - [vm1:eth0, hub0]
          - [vm2, "hub0:hub0port1"]
        """)
    assert "lab.yaml:7: links[0] (vm1:eth0 -- hub0): 'vm1:eth0': a vm node has a single " \
           "port: write just 'vm1'" in message
    assert "lab.yaml:8: links[1] (vm2 -- hub0:hub0port1): hub port name 'hub0port1' is how " \
           "the hub numbers its unnamed ports" in message


def test_a_peer_pair_is_allowed_but_not_a_self_link(tmp_path: Path) -> None:
    load(tmp_path, """\
        name: lab
        nodes:
          vm1: {kind: vm}
          vm2: {kind: vm}
        links: [[vm1, vm2]]
        """)
    one_problem(tmp_path, """\
        name: lab
        nodes:
          hub0: {kind: hub}
        links:
          - [hub0:a, hub0:b]
        """, "lab.yaml:5: links[0] (hub0:a -- hub0:b): node 'hub0' is linked to itself")


def test_a_self_link_and_the_other_cross_checks_are_reported_with_node_errors(
        tmp_path: Path) -> None:
    """A node that fails the schema (a bad MAC, an unknown field) does not hide the
    link and clash checks: every problem of the file is reported at once."""
    message = problems(tmp_path, """\
        name: lab
        nodes:
          hub0: {kind: hub}
          vm1: {kind: vm, mac: zz}
          vm2: {kind: vm, colour: red}
          vm3: {kind: vm, mac: 52:54:00:12:34:03}
          vm4: {kind: vm, mac: 52:54:00:12:34:03}
          q: {kind: tap, backend: stream, listen: 127.0.0.1:10555, bogus: 1}
        links:
          - [vm1, vm1]
          - [vm2, hub0]
          - [q, nope]
          - [vm3]
          - [vm3, hub0]
          - [vm4, hub0]
          - [vm2:eth0, hub0]
        """)
    assert message.splitlines() == [f"{tmp_path / 'lab.yaml'}:{line}: {what}" for line, what in [
        (4, "node 'vm1': mac: bad MAC address 'zz': expected aa:bb:cc:dd:ee:ff"),
        (5, "node 'vm2': unknown field 'colour' (allowed: kind, mac, model, compat, memory, "
            "ip, bridge, host, link_transport, filters, netem)"),
        (7, "node 'vm4': mac: MAC 52:54:00:12:34:03 is already used by node 'vm3' (line 6)"),
        (8, "node 'q': unknown field 'bogus' (allowed: kind, backend, host, link_transport, "
            "filters, netem, listen, connect, reconnect, publish)"),
        (10, "links[0] (vm1 -- vm1): node 'vm1' is linked to itself"),
        (12, "links[2] (q -- nope): unknown node 'nope' (known: hub0, vm1, vm2, vm3, vm4, q)"),
        (13, "links[3]: a link is a pair [NODE, NODE] where a hub end may be HUB:PORT, not a "
             "list of 1"),
        (16, "links[6] (vm2:eth0 -- hub0): 'vm2:eth0': a vm node has a single port: write "
             "just 'vm2'"),
    ]]


def test_the_cross_checks_around_broken_parts_raise_no_false_alarms(tmp_path: Path) -> None:
    """Stand-ins for what failed the schema: a node of an unknown kind may take a
    hub's ports, a broken host is still known, a broken node's host is not checked."""
    message = problems(tmp_path, """\
        name: Bad_Name
        hosts:
          h1: {address: "not an address!"}
          h2: {address: 198.18.1.2}
        nodes:
          sw: {kind: bridge}
          vm1: {kind: vm, host: h1, model: nope}
          vm2: {kind: vm, host: h1}
          VM3: {kind: vm}
          vm4: {kind: vm, host: h2}
        links:
          - [vm2, sw:up]
          - [vm1, sw]
          - [VM3, vm4]
          - [vm4, sw]
        """)
    where = [line.split(": ")[1] for line in message.splitlines()]
    # The schema's five, and vm4 linked twice; no "unknown host 'h1'", no
    # "a vm node has a single port" for sw:up, nothing about vm1 on h1 dialling sw.
    assert where == ["name", "host 'h1'", "node 'sw'", "node 'vm1'",
                     "bad node name 'VM3'", "links[3] (vm4 -- sw)"], message
    assert "node 'vm4' is already linked by links[2] (line 14)" in message


def test_no_possessive_after_a_quoted_name(tmp_path: Path) -> None:
    """'node vm1's' reads badly as "node 'vm1''s": the messages say whose another way."""
    message = problems(tmp_path, "name: lab\n"
                       "hosts: {h1: {address: 198.18.1.1}, h2: {address: 198.18.1.1}}\n"
                       "nodes:\n"
                       "  vm1: {kind: vm, mac: 52:54:00:12:34:01, host: h1}\n"
                       "  vm2: {kind: vm, mac: 52:54:00:12:34:01, host: h2}\n"
                       "links: [[vm1, vm2]]\n")
    assert "is already the address of host 'h1' (line 2)" in message
    assert "MAC 52:54:00:12:34:01 is already used by node 'vm1' (line 4)" in message
    assert "''s" not in message and "'s " not in message.replace("host's", "")


def test_a_loop_of_hubs(tmp_path: Path) -> None:
    one_problem(tmp_path, """\
        name: lab
        nodes:
          h0: {kind: hub}
          h1: {kind: hub}
          h2: {kind: hub}
        links:
          - [h0, h1]
          - [h1, h2]
          - [h2, h0]
        """, "lab.yaml:9: links[2] (h2 -- h0): closes a loop h2 -- h1 -- h0 -- h2")


def test_unknown_host(tmp_path: Path) -> None:
    one_problem(tmp_path, """\
        name: lab
        hosts:
          h1: {address: 198.18.1.1}
        nodes:
          hub0:
            kind: hub
            host: h2
        """, "lab.yaml:7: node 'hub0': host: unknown host 'h2' (known: h1)")


def test_bad_and_duplicate_host_addresses(tmp_path: Path) -> None:
    message = problems(tmp_path, """\
        name: lab
        hosts:
          h1: {address: 0.0.0.0}
          h2: {address: "bad host!"}
        nodes:
          hub0: {kind: hub}
        """)
    assert "lab.yaml:3: host 'h1': address: host address '0.0.0.0' is not one" in message
    assert "lab.yaml:4: host 'h2': address: bad host address 'bad host!'" in message
    one_problem(tmp_path, """\
        name: lab
        hosts:
          h1: {address: 198.18.1.1}
          h2: {address: 198.18.1.1}
        nodes:
          hub0: {kind: hub, host: h1}
          vm1: {kind: vm, host: h2}
        links: [[vm1, hub0]]
        """, "lab.yaml:4: host 'h2': address: 198.18.1.1 is already the address of host "
        "'h1' (line 3)")


def test_host_orchestrator_ports(tmp_path: Path) -> None:
    message = problems(tmp_path, """\
        name: lab
        hosts:
          h1: {address: 198.18.1.1, port: 0}
          h2: {address: 198.18.1.2, port: "x"}
          h3: {address: 198.18.1.3, port: 65536}
        nodes:
          hub0: {kind: hub, host: h1}
          hub1: {kind: hub, host: h2}
          hub2: {kind: hub, host: h3}
        """)
    assert "lab.yaml:3: host 'h1': port: input should be greater than or equal to 1" in message
    assert "lab.yaml:4: host 'h2': port: input should be a valid integer" in message
    assert "lab.yaml:5: host 'h3': port: input should be less than or equal to 65535" in message
    topo = parse_topology(textwrap.dedent("""\
        name: lab
        hosts:
          h1: {address: 198.18.1.1}
          h2: {address: "2001:db8::2", port: 7000}
        nodes:
          hub0: {kind: hub, host: h1}
          hub1: {kind: hub, host: h2}
        """), "lab.yaml")
    assert [h.agent for h in topo.hosts.values()] == ["198.18.1.1:50050", "[2001:db8::2]:7000"]


def test_a_remote_node_cannot_dial_this_machines_loopback(tmp_path: Path) -> None:
    one_problem(tmp_path, """\
        name: lab
        hosts:
          h1: {address: 198.18.1.1}
        nodes:
          hub0: {kind: hub}
          vm1: {kind: vm, host: h1}
        links:
          - [vm1, hub0]
        """, "lab.yaml:8: links[0] (vm1 -- hub0): 'vm1' on host 'h1' dials 'hub0', which "
        "runs on this machine")


@pytest.mark.parametrize(("options", "problem"), [
    ("backend: stream", "a stream backend needs exactly one of listen=ADDR or connect=ADDR"),
    ("{backend: stream, listen: 127.0.0.1:10555, reconnect: 5}", "reconnect= only applies"),
    ("{backend: stream, connect: 127.0.0.1:10555, reconnect: 0}", "must be at least 1"),
    ("{backend: stream, listen: 'nowhere'}", "bad address 'nowhere'"),
    ("{backend: dgram, local: 127.0.0.1:10555}", "needs remote=HOST:PORT"),
    ("{backend: dgram, mcast: 127.0.0.1:10555}", "127.0.0.1"),
    ("{backend: tap, vnet_hdr: maybe}", "option vnet_hdr='maybe': expected on or off"),
    ("{backend: tap, ifname: a/b}", "bad ifname 'a/b'"),
    ("{backend: tap, script: ./missing.sh}", "missing.sh' does not exist"),
])
def test_backend_options_use_the_tap_services_checks(tmp_path: Path, options: str,
                                                       problem: str) -> None:
    if not options.startswith("{"):
        options = "{" + options + "}"
    one_problem(tmp_path, f"""\
        name: lab
        nodes:
          q: {{kind: tap, {options[1:]}
        """, "lab.yaml:3: node 'q': ", problem)


def test_backend_id_and_peer_come_from_the_topology(tmp_path: Path) -> None:
    message = problems(tmp_path, """\
        name: lab
        nodes:
          q: {kind: tap, backend: stream, listen: 127.0.0.1:1, id: x, peer: 127.0.0.1:2/}
        """)
    assert "unknown field 'id': a tap node's backend is named after the node" in message
    assert "unknown field 'peer': a tap node's peer comes from its link" in message


def test_scripts_are_relative_to_the_file_and_names_on_other_hosts(tmp_path: Path) -> None:
    script = tmp_path / "up.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    topology = load(tmp_path, """\
        name: lab
        hosts:
          h1: {address: 198.18.1.1}
        nodes:
          here: {kind: tap, backend: tap, script: up.sh, downscript: no}
          there: {kind: tap, backend: tap, script: up.sh, host: h1}
        """)
    here, there = topology.taps()
    assert here.options["script"] == str(script) and here.options["downscript"] == "no"
    # On h1 a script is a NAME its orchestrator allows (--allow-script up.sh=PATH).
    assert there.options["script"] == "up.sh"
    assert there.backend_config().script == "up.sh"
    one_problem(tmp_path, """\
        name: lab
        hosts:
          h1: {address: 198.18.1.1}
        nodes:
          there: {kind: tap, backend: tap, script: /etc/vw/up.sh, host: h1}
        """, "lab.yaml:5: node 'there': script: '/etc/vw/up.sh' is a path: a node on host "
        "'h1' names its script by a NAME", "--allow-script NAME=PATH")


# -- topologies sent by RPC (remote=): no programs, paths or namespaces of this host ------
REMOTE = RpcPolicy(command="virtwire serve orchestrator", scripts={"up": "/bin/true"})


def remote_problems(text: str, policy: RpcPolicy = REMOTE) -> TopologyError:
    with pytest.raises(TopologyError) as info:
        parse_topology(textwrap.dedent(text), "rpc.yaml", remote=policy)
    return info.value


@pytest.mark.parametrize(("node", "field", "problem"), [
    ("{kind: tap, backend: tap, script: /usr/bin/touch}", "script",
     "'/usr/bin/touch' is a path: over an RPC a script is a NAME"),
    ("{kind: tap, backend: tap, downscript: ./down.sh}", "downscript", "is a path"),
    ("{kind: tap, backend: tap, script: nope}", "script",
     "script 'nope' is not allowed on this host (allowed: up)"),
    ("{kind: tap, backend: stream, listen: 'unix:/tmp/x.sock'}", "listen",
     "'unix:/tmp/x.sock' is a unix socket path"),
    ("{kind: tap, backend: stream, connect: 'unix:/run/y'}", "connect", "unix socket path"),
    ("{kind: tap, backend: dgram, local: 'unix:/a', remote: 'unix:/b'}", "local",
     "unix socket path"),
    ("{kind: vm, bridge: {ifname: vw0, netns: ns1}}", "bridge.netns",
     "network namespace 'ns1' is not allowed over an RPC on this host; allow it with "
     "'virtwire serve orchestrator --allow-netns'"),
])
def test_a_remote_topology_names_nothing_of_this_host(node: str, field: str,
                                                      problem: str) -> None:
    err = remote_problems(f"name: lab\nnodes:\n  n1: {node}\n")
    assert err.denied, err
    assert f"rpc.yaml:3: node 'n1': {field}: " in str(err) and problem in str(err), str(err)


def test_a_remote_topology_may_name_allowed_scripts_and_keeps_names_for_hosts() -> None:
    topo = parse_topology(textwrap.dedent("""\
        name: lab
        hosts:
          h1: {address: 198.18.1.1}
        nodes:
          here: {kind: tap, backend: tap, script: up, downscript: no}
          there: {kind: tap, backend: tap, script: other, host: h1}
          vm1: {kind: vm, bridge: {ifname: vw0, netns: ns1}, host: h1}
          q: {kind: tap, backend: stream, listen: 127.0.0.1:10555}
        """), "rpc.yaml", remote=REMOTE)
    here, there, q = topo.taps()
    assert here.options["script"] == "/bin/true" and here.options["downscript"] == "no"
    # Names for h1 are h1's to resolve (its agent refuses what it does not allow).
    assert there.options["script"] == "other"
    vm1 = topo.node("vm1")
    assert isinstance(vm1, VmNode) and vm1.bridge is not None and vm1.bridge.netns == "ns1"
    assert q.options["listen"] == "127.0.0.1:10555"
    allowing = RpcPolicy(command="virtwire serve orchestrator", allow_netns=True)
    topo = parse_topology("name: lab\nnodes:\n  vm1: {kind: vm, bridge: {ifname: vw0, "
                          "netns: ns1}}\n", remote=allowing)
    assert topo.vms()[0].bridge is not None


def test_a_remote_topology_mistake_is_not_only_a_refusal() -> None:
    err = remote_problems("name: lab\nnodes:\n  t: {kind: tap, backend: tap, "
                          "script: /bin/sh, ifname: a/b}\n")
    assert not err.denied and "bad ifname" in str(err)
    err = remote_problems("name: lab\nnodes:\n  t: {kind: tap, backend: tap, "
                          "script: 'bad name'}\n")
    assert not err.denied and "bad script name" in str(err)
    # The same text read from a file on this host is fine: scripts are its own.
    assert parse_topology("name: lab\nnodes:\n  t: {kind: tap, backend: tap, "
                          "script: /bin/true}\n").taps()[0].options["script"] == "/bin/true"


def test_host_resources_must_not_clash(tmp_path: Path) -> None:
    message = problems(tmp_path, """\
        name: lab
        hosts:
          h1: {address: 198.18.1.1}
        nodes:
          a: {kind: tap, backend: stream, listen: 127.0.0.1:10555}
          b: {kind: tap, backend: stream, listen: 127.0.0.1:10555}
          c: {kind: tap, backend: stream, listen: 127.0.0.1:10555, host: h1}
          d: {kind: tap, backend: tap, ifname: vw0}
          vm1: {kind: vm, bridge: {ifname: vw0}}
        """)
    assert "lab.yaml:6: node 'b': listen: address 127.0.0.1:10555 is already used by " \
           "node 'a': listen (line 5)" in message
    assert "lab.yaml:9: node 'vm1': bridge.ifname: interface vw0 is already used by " \
           "node 'd': ifname (line 8)" in message
    assert "node 'c'" not in message  # another host


def test_publish_a_stream_port(tmp_path: Path) -> None:
    topo = load(tmp_path, """\
        name: lab
        nodes:
          hub0: {kind: hub}
          q1: {kind: tap, backend: stream, listen: 127.0.0.1:10555, publish: 127.0.0.1:10555}
          q2: {kind: tap, backend: stream, listen: "127.0.0.1:7", publish: "198.19.0.1:8"}
          q3: {kind: tap, backend: stream, connect: 127.0.0.1:10556}
          d1: {kind: tap, backend: dgram, local: 127.0.0.1:6000, remote: 127.0.0.1:6001}
          d2: {kind: tap, backend: dgram, mcast: 230.0.0.1:6002}
        links: [[q1, hub0], [q2, hub0], [q3, hub0], [d1, hub0], [d2, hub0]]
        """)
    q1, q2, q3, d1, d2 = topo.taps()
    assert (q1.publish, q2.publish, q3.publish) == ("127.0.0.1:10555", "198.19.0.1:8", "")
    assert "publish" not in q1.options and "publish" not in q1.backend_spec()
    assert q1.to_dict()["publish"] == "127.0.0.1:10555" and q3.to_dict()["publish"] is None
    assert [t.listen_address() for t in (q1, q2, q3, d1, d2)] == [
        "127.0.0.1:10555", "127.0.0.1:7", "", "127.0.0.1:6000", "230.0.0.1:6002"]


@pytest.mark.parametrize(("node", "problem"), [
    ("listen: 127.0.0.1:1, publish: 0.0.0.0:10555", "publish: '0.0.0.0:10555' is not on a "
     "loopback (127.0.0.0/8) or 198.18.0.0/15 IPv4 address: publish there, e.g. "
     "127.0.0.1:10555"),
    ("listen: 127.0.0.1:1, publish: 10.0.0.1:10555", "'10.0.0.1:10555' is not on a loopback"),
    ("listen: 127.0.0.1:1, publish: localhost:10555", "'localhost:10555' is not on a"),
    ("listen: 127.0.0.1:1, publish: '[::1]:10555'", "'[::1]:10555' is not on a loopback"),
    ("listen: 127.0.0.1:1, publish: 127.0.0.1:0", "bad address '127.0.0.1:0': port '0' "
     "out of range"),
    ("listen: 127.0.0.1:1, publish: 127.0.0.1:65536", "port '65536' out of range"),
    ("listen: 127.0.0.1:1, publish: unix:/tmp/x", "unix sockets are not allowed here"),
    ("listen: 127.0.0.1:1, publish: '10555'", "expected HOST:PORT"),
    ("listen: 127.0.0.1:1, publish: 10555", "publish: input should be a valid string"),
    ("connect: 127.0.0.1:1, publish: 127.0.0.1:10555", "publish 127.0.0.1:10555: only a "
     "stream port that listens on TCP at a fixed port is published"),
    ("listen: 127.0.0.1:0, publish: 127.0.0.1:10555", "only a stream port that listens"),
    ("listen: unix:/tmp/vw.sock, publish: 127.0.0.1:10555", "only a stream port that listens"),
])
def test_publish_is_a_loopback_or_benchmark_address_of_a_listening_port(
        tmp_path: Path, node: str, problem: str) -> None:
    one_problem(tmp_path, f"""\
        name: lab
        nodes:
          q: {{kind: tap, backend: stream, {node}}}
        """, "lab.yaml:3: node 'q': ", problem)


def test_publish_is_for_stream_ports_and_each_host_address_once(tmp_path: Path) -> None:
    one_problem(tmp_path, """\
        name: lab
        nodes:
          d: {kind: tap, backend: dgram, local: 127.0.0.1:6000, publish: 127.0.0.1:6000}
        """, "lab.yaml:3: node 'd': unknown field 'publish': 'publish' is an option of the "
        "stream backend")
    one_problem(tmp_path, """\
        name: lab
        nodes:
          a: {kind: tap, backend: stream, listen: 127.0.0.1:10555, publish: 127.0.0.1:10555}
          b: {kind: tap, backend: stream, listen: 127.0.0.1:10556, publish: 127.0.0.1:10555}
        """, "lab.yaml:4: node 'b': publish: host address 127.0.0.1:10555 is already used by "
        "node 'a': publish (line 3)")


def test_a_node_name_taken_by_a_vm_service(tmp_path: Path) -> None:
    one_problem(tmp_path, """\
        name: lab
        nodes:
          vm1-e1000: {kind: hub}
          vm1: {kind: vm}
        links: [[vm1, vm1-e1000]]
        """, "lab.yaml:3: node 'vm1-e1000': the name is taken by the e1000 service of vm 'vm1'")


@pytest.mark.parametrize(("memory", "problem"), [
    ("12Q", "bad size '12Q'"),
    ("512K", "guest memory size 512 KiB out of range"),
    ("128G", "guest memory size 128 GiB out of range"),
    ("1048577", "is not a multiple of the page size"),
    ("true", "expected a size such as 64M, or a number of bytes, not true"),
    ("[64M]", "expected a size such as 64M, or a number of bytes, not a list"),
])
def test_memory_sizes(tmp_path: Path, memory: str, problem: str) -> None:
    one_problem(tmp_path, f"""\
        name: lab
        nodes:
          vm1:
            kind: vm
            memory: {memory}
        """, "lab.yaml:5: node 'vm1': memory: ", problem)


def test_bad_model_compat_version_and_netns(tmp_path: Path) -> None:
    message = problems(tmp_path, """\
        version: 2
        name: lab
        nodes:
          vm1: {kind: vm, model: 82574L, compat: 8.2, bridge: {ifname: vw0, netns: "a/b"}}
        """)
    assert "lab.yaml:1: version: input should be 1" in message
    assert "lab.yaml:4: node 'vm1': model: input should be '82540EM', '82544GC' or " \
           "'82545EM', not '82574L'" in message
    assert "lab.yaml:4: node 'vm1': compat: input should be '9.0' or '7.2'" in message
    assert "lab.yaml:4: node 'vm1': bridge.netns: bad netns name 'a/b'" in message


def test_every_problem_is_reported_in_line_order(tmp_path: Path) -> None:
    message = problems(tmp_path, """\
        name: lab
        nodes:
          vm1: {kind: vm, mac: 52:54:00:12:34:01, ip: 198.18.0.1/24}
          vm2: {kind: vm, mac: 52:54:00:12:34:01, ip: 198.18.0.1/24}
        links:
          - [vm1, nope]
        """)
    lines = message.splitlines()
    assert len(lines) == 3
    assert [line.split(":")[0:2] for line in lines] == [
        [str(tmp_path / "lab.yaml"), "4"], [str(tmp_path / "lab.yaml"), "4"],
        [str(tmp_path / "lab.yaml"), "6"]]


def test_unlinked_nodes_and_unused_hosts_are_warnings(tmp_path: Path) -> None:
    topology = load(tmp_path, """\
        name: lab
        hosts:
          h1: {address: 198.18.1.1}
        nodes:
          hub0: {kind: hub}
          vm1: {kind: vm}
          q: {kind: tap, backend: stream, listen: 127.0.0.1:10555}
        """)
    path = tmp_path / "lab.yaml"
    assert topology.warnings == (
        f"{path}:3: warning: host 'h1': no node is placed on this host",
        f"{path}:5: warning: node 'hub0': no links: nothing is plugged into this hub",
        f"{path}:6: warning: node 'vm1': not in any link: it has no peer",
        f"{path}:7: warning: node 'q': not in any link: it has no peer",
    )


# -- fuzzing: whatever the input, only TopologyError ------------------------------------
def expect_topology_or_error(text: str) -> None:
    try:
        topology = parse_topology(text, "fuzz.yaml")
    except TopologyError as exc:
        assert str(exc).startswith("fuzz.yaml")
        assert exc.problems and all(p.startswith("fuzz.yaml") for p in exc.problems)
        assert "''s" not in str(exc)  # no "node 'vm1''s"
    else:
        json.dumps(topology.to_dict())


TOKENS = ["name", "nodes", "links", "hosts", "kind", "hub", "vm", "tap", "backend", "stream",
          "dgram", "listen", "connect", "mac", "ip", "memory", "bridge", "ifname", "netns",
          "host", "address", "model", "compat", "version", "hub0", "vm1", "vm2", "lab",
          "52:54:00:12:34:01", "01:00:5e:00:00:01", "198.18.0.1/24", "198.18.0.300",
          "127.0.0.1:10555", "unix:/tmp/x", "64M", "0", "-1", "1e999", ".nan", "~", "null",
          "true", "on", "<<", "&a", "*a", "!!int", "!!binary", "!!python/name:os.system",
          "!foo", "x-a", "- ", ": ", ":", "[", "]", "{", "}", ",", "\n", "\n  ", "\n    ",
          " ", "'", '"', "#", "|", ">", "?", "%YAML 1.2\n", "---\n", "...\n", "\t", "\\",
          "\x00", "\u2028", "é", "\ufeff"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(TOKENS), max_size=60).map("".join))
def test_fuzz_yaml_tokens(text: str) -> None:
    expect_topology_or_error(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_any_text(text: str) -> None:
    expect_topology_or_error(text)


SCALARS = st.one_of(st.sampled_from(TOKENS), st.integers(), st.floats(), st.booleans(),
                    st.none(), st.text(max_size=10))
KEYS = st.one_of(st.sampled_from(TOKENS[:30]), st.text(max_size=6), st.integers(0, 9))
TREES = st.recursive(SCALARS, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(KEYS, children, max_size=5)),
    max_leaves=25)


def mostly(values: list[object], other: st.SearchStrategy[object] = SCALARS
           ) -> st.SearchStrategy[object]:
    """Values close to valid ones, sometimes anything."""
    return st.integers(0, 9).flatmap(lambda i: st.sampled_from(values) if i else other)


NAMES = ["hub0", "hub1", "vm1", "vm2", "q1", "q2", "vm1-e1000"]
ENDS = mostly([*NAMES, "hub0:up", "hub1:up", "vm1:x", "hub0:hub0port0", "hub0:", "nope"])
HOSTS = mostly(["h1", "h2", "h3", None])
CIDRS = mostly(["198.18.0.1/24", "198.18.0.2/24", "198.18.0.1", "198.18.0.0/24", None])
HUB = st.fixed_dictionaries({"kind": st.just("hub")}, optional={"host": HOSTS})
VM = st.fixed_dictionaries({"kind": st.just("vm")}, optional={
    "mac": mostly(["52:54:00:12:34:01", "52:54:00:12:34:56", "01:00:5e:00:00:01", "x"]),
    "ip": CIDRS, "memory": mostly(["64M", "1G", 1 << 20, "1K", "0"]),
    "model": mostly(["82540EM", "82545EM", "e1000"]), "compat": mostly(["9.0", 7.2, 8.0]),
    "host": HOSTS,
    "bridge": st.one_of(TREES, st.fixed_dictionaries(
        {"ifname": mostly(["vw0", "vw1", "", "a/b"])},
        optional={"netns": mostly(["ns1", ".."]), "ip": CIDRS}))})
TAP = st.fixed_dictionaries(
    {"kind": st.just("tap"), "backend": mostly(["tap", "stream", "dgram", "vde"])},
    optional={"host": HOSTS, "ifname": mostly(["vw0", "vw1"]), "vnet_hdr": mostly([True, "on"]),
              "listen": mostly(["127.0.0.1:10555", "unix:/tmp/vw.sock", "127.0.0.1:0"]),
              "connect": mostly(["127.0.0.1:10555"]), "reconnect": mostly([1, 0, "x"]),
              "local": mostly(["127.0.0.1:10600"]), "remote": mostly(["127.0.0.1:10601"]),
              "mcast": mostly(["230.0.0.1:10700", "127.0.0.1:1"]), "localaddr": SCALARS,
              "script": mostly(["/bin/true", "no", "./x.sh"]), "id": SCALARS,
              "publish": mostly(["127.0.0.1:10555", "198.18.0.1:1", "0.0.0.0:10555"])})
DOCUMENTS = st.fixed_dictionaries(
    {"name": mostly(["lab", "Lab"], TREES),
     "nodes": st.integers(0, 9).flatmap(lambda i: st.dictionaries(
         st.sampled_from(NAMES), st.one_of(HUB, VM, TAP), min_size=1, max_size=6) if i
         else TREES)},
    optional={"version": mostly([1, 2]),
              "hosts": mostly([{}], TREES).flatmap(lambda h: st.dictionaries(
                  st.sampled_from(["h1", "h2"]), st.fixed_dictionaries(
                      {"address": mostly(["198.18.1.1", "198.18.1.2", "0.0.0.0", "a b"])}),
                  max_size=2) if h == {} else st.just(h)),
              "links": st.integers(0, 9).flatmap(lambda i: st.lists(
                  st.lists(ENDS, min_size=2, max_size=2), max_size=6) if i else TREES),
              "x-any": TREES})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DOCUMENTS)
def test_fuzz_yaml_documents(document: dict[str, object]) -> None:
    expect_topology_or_error(yaml.safe_dump(document, allow_unicode=True))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(EXAMPLES.glob("*.yaml"))), st.data())
def test_fuzz_mutated_examples(path: Path, data: st.DataObject) -> None:
    text = path.read_text()
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 8))
        insert = data.draw(st.sampled_from(["", ":", " ", "\n", "-", "[", "x", "0", "#", "'"]))
        text = text[:at] + insert + text[at + cut:]
    expect_topology_or_error(text)


def test_a_billion_laughs_stays_cheap(tmp_path: Path) -> None:
    lines = ["name: lab", "x-0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"x-{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    lines += ["nodes: {hub0: {kind: hub, host: *a9}}", "links: *a9"]
    message = problems(tmp_path, "\n".join(lines) + "\n")
    assert "node 'hub0': host:" in message


def _load_error(path: Path) -> str:
    """load_topology's TopologyError message, or "" when it loads."""
    try:
        load_topology(path)
    except TopologyError as exc:
        return str(exc)
    return ""


def test_an_unreadable_file() -> None:
    """As a user without privileges: root reads any file (support.unprivileged)."""
    with open_dir() as directory:
        path = directory / "lab.yaml"
        path.write_text("name: lab\n")
        path.chmod(0)
        assert re.search("cannot read: Permission denied", unprivileged(lambda: _load_error(path)))


# -- size: a topology over 1 MiB is refused before any YAML is parsed ---------------
_SMALL = "name: big\nnodes:\n  hub0: {kind: hub}\n"


def _padded(size: int) -> str:
    """_SMALL padded with one comment line to exactly ``size`` bytes."""
    return _SMALL + "#" + "x" * (size - len(_SMALL) - 2) + "\n"


def test_a_topology_of_1_mib_parses_and_one_byte_more_is_refused() -> None:
    limit = topology_mod.TOPOLOGY_MAX_BYTES
    assert limit == 1 << 20
    assert parse_topology(_padded(limit)).name == "big"
    with pytest.raises(TopologyError, match=r"too large \(1048577 bytes; at most 1 MiB"):
        parse_topology(_padded(limit + 1))


def test_the_size_counts_utf8_bytes_not_characters() -> None:
    text = _SMALL + "# " + "\u00e9" * (600 << 10) + "\n"  # 600 Ki characters, 1.2 MB
    assert len(text) < topology_mod.TOPOLOGY_MAX_BYTES
    with pytest.raises(TopologyError, match="too large"):
        parse_topology(text)


def test_a_big_topology_is_refused_before_yaml_parsing(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    def no_yaml(*args: object, **kwargs: object) -> None:
        raise AssertionError("YAML was parsed")

    monkeypatch.setattr(topology_mod, "_read_yaml", no_yaml)
    with pytest.raises(TopologyError, match="too large"):
        parse_topology("#" * (10 << 20), "big.yaml")
    path = tmp_path / "big.yaml"
    path.write_text(_padded(2 << 20))
    with pytest.raises(TopologyError, match=rf"{path}: the topology is too large"):
        load_topology(path)


def test_load_topology_checks_the_size_without_reading_the_file(tmp_path: Path) -> None:
    sparse = tmp_path / "sparse.yaml"
    with open(sparse, "wb") as f:
        f.truncate(64 << 30)  # 64 GiB of holes: reading it would take minutes
    with pytest.raises(TopologyError, match=r"too large \(68719476736 bytes"):
        load_topology(sparse)
    # Not a regular file: no more than the cap is read.
    with pytest.raises(TopologyError, match="too large"):
        load_topology("/dev/zero")
