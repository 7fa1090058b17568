"""kind: netns and kind: qemu in topology files: what is checked (FILE:LINE), what is planned.

No root and no QEMU needed: these are the topology's checks, the plan's specs,
the QEMU command line and the exec registry (test_netns_lan.py and
test_qemu_node.py run the real thing).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from virtwire.allowlist import RpcPolicy
from virtwire.errors import ConfigError, NotFoundError
from virtwire.orchestrator import spec
from virtwire.orchestrator.core import LanState, ServiceRecord, _check_record
from virtwire.orchestrator.hostnodes import iface_mac, netns_name, qemu_paths, tap_name
from virtwire.orchestrator.nodeexec import exec_prefix
from virtwire.orchestrator.plan import plan
from virtwire.orchestrator.qemu import qemu_command
from virtwire.orchestrator.start_options import to_start_options
from virtwire.topology import NetnsNode, QemuNode, TopologyError, load_topology, parse_topology

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "lab.yaml"
    path.write_text(textwrap.dedent(text))
    return load_topology(path)


def _errors(tmp_path: Path, text: str) -> str:
    with pytest.raises(TopologyError) as info:
        _load(tmp_path, text)
    return str(info.value)


GOOD = """\
name: lab
nodes:
  sw0: {kind: switch, ports: {a: {vlan: 10}, b: {vlan: 10}}}
  h1:
    kind: netns
    interfaces:
      eth0: {addresses: [198.18.10.1/24, "fd00::1/64"], mtu: 1400}
      eth1: {}
    routes:
      - {to: default, via: 198.18.10.254}
      - {to: 198.18.50.0/24, dev: eth1}
    commands: ["sysctl -w net.ipv4.ip_forward=1"]
  q1:
    kind: qemu
    kernel: vmlinuz
    initrd: initrd.gz
    append: console=ttyS0
    memory: 128M
    nic: virtio-net-pci
    args: [-smp, "2"]
links:
  - [h1:eth0, sw0:a]
  - [q1, sw0:b]
"""


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "vmlinuz").write_bytes(b"k")
    (tmp_path / "initrd.gz").write_bytes(b"i")
    return tmp_path


def test_a_netns_and_a_qemu_node_resolve_and_plan(files: Path) -> None:
    topo = _load(files, GOOD)
    h1, q1 = topo.nodes["h1"], topo.nodes["q1"]  # type: ignore[attr-defined]
    assert isinstance(h1, NetnsNode) and isinstance(q1, QemuNode)
    assert [i.name for i in h1.interfaces] == ["eth0", "eth1"]
    assert h1.interfaces[0].addresses == ("198.18.10.1/24", "fd00::1/64")
    assert h1.routes[0].ip_args() == ["default", "via", "198.18.10.254"]
    assert q1.kernel == str(files / "vmlinuz") and q1.memory == 128 << 20
    assert q1.mac == "52:54:00:12:34:56" and q1.mac_assigned  # QEMU's default scheme
    names = [(s.name, s.kind) for s in topo.services]  # type: ignore[attr-defined]
    assert names == [("sw0", "hub"), ("h1-eth0", "tap"), ("h1-eth1", "tap"), ("q1", "tap"),
                     ("q1-qemu", "qemu")]
    specs = plan(topo, {n: n for n, _ in names}, lan_dir="/run/vw/lab")  # type: ignore[arg-type]
    eth0 = specs["h1-eth0"]
    assert isinstance(eth0, spec.TapServiceSpec) and eth0.peer == "sw0/a"
    assert eth0.options == {"ifname": tap_name("lab", "h1-eth0"), "id": "h1-eth0"}
    assert len(tap_name("lab", "h1-eth0")) <= 15 and tap_name("lab", "h1-eth0") != tap_name(
        "other", "h1-eth0")
    stream = specs["q1"]
    assert isinstance(stream, spec.TapServiceSpec) and stream.backend == "stream"
    assert stream.options["listen"] == "unix:/run/vw/lab/q1.qsock" and stream.peer == "sw0/b"
    vm = specs["q1-qemu"]
    assert isinstance(vm, spec.QemuServiceSpec)
    assert (vm.stream, vm.console) == qemu_paths("/run/vw/lab", "q1")
    assert vm.argv()[-2:] == ["--arg=-smp", "--arg=2"]
    cmd = qemu_command(vm)
    assert cmd[cmd.index("-device") + 1] == \
        "virtio-net-pci,netdev=vwnet0,mac=52:54:00:12:34:56,romfile="
    assert "stream,id=vwnet0,server=off,addr.type=unix,addr.path=/run/vw/lab/q1.qsock" in cmd
    assert "file,id=vwser0,path=/run/vw/lab/console/q1.log,append=on" in cmd
    assert cmd[-2:] == ["-smp", "2"] and cmd[cmd.index("-append") + 1] == "console=ttyS0"
    # Never through StartService: a program to run.
    with pytest.raises(ConfigError, match="this machine only"):
        to_start_options(vm)


def test_a_qemu_node_with_a_disk_boots_from_it(files: Path) -> None:
    """disk: instead of kernel: is a virtio drive and no -kernel; a comma in its
    path is doubled (QEMU's escape), so the path cannot add drive options."""
    disk = files / "deb,snapshot=on.qcow2"
    disk.write_bytes(b"d")
    text = GOOD.replace("    kernel: vmlinuz\n    initrd: initrd.gz\n    append: console=ttyS0\n",
                        f"    disk: {disk}\n")
    topo = _load(files, text)
    vm = plan(topo, {s.name: s.name for s in topo.services},  # type: ignore[attr-defined]
              lan_dir="/run/vw/lab")["q1-qemu"]
    assert isinstance(vm, spec.QemuServiceSpec)
    cmd = qemu_command(vm)
    assert "-kernel" not in cmd and "-initrd" not in cmd and "-append" not in cmd
    assert cmd[cmd.index("-drive") + 1] == \
        f"file={str(disk).replace(',', ',,')},if=virtio"


@pytest.mark.parametrize(("patch", "expected"), [
    (("198.18.10.1/24", "198.18.10.300/24"),
     "lab.yaml:7: node 'h1': interfaces.eth0.addresses[0]: '198.18.10.300/24' is not an "
     "IPv4 or IPv6 address with a prefix"),
    (("198.18.10.1/24", "198.18.10.1"), "give the prefix length too"),
    (("[h1:eth0, sw0:a]", "[h1:eth5, sw0:a]"),
     "lab.yaml:22: links[0] (h1:eth5 -- sw0:a): 'h1:eth5': unknown interface 'eth5' of "
     "netns h1 (it has: eth0, eth1)"),
    (("[h1:eth0, sw0:a]", "[h1, sw0:a]"),
     "'h1': netns h1 has several interfaces: name one, h1:IFACE (eth0, eth1)"),
    (("dev: eth1", "dev: eth9"), "lab.yaml:11: node 'h1': routes[1].dev: unknown interface "
     "'eth9' (this node has: eth0, eth1)"),
    (("via: 198.18.10.254", "via: fd00::fe"), "to default"),  # a v6 default is fine
    (("to: 198.18.50.0/24", "to: 198.18.50.1/24"), "routes[1].to: '198.18.50.1/24' is not "
     "'default' or a network"),
    (("eth1: {}", "wan0: {}"), "interface 'wan0': name it eth0 .. eth15"),
    (("kernel: vmlinuz", "kernel: nope"), "lab.yaml:15: node 'q1': kernel: 'nope': no such file"),
    (("initrd: initrd.gz", "initrd: nope.gz"), "'nope.gz': no such file"),
    (("nic: virtio-net-pci", "nic: rtl8139"),
     "lab.yaml:19: node 'q1': nic: input should be 'e1000' or 'virtio-net-pci', not 'rtl8139'"),
    (("    kernel: vmlinuz\n", "    disk: vmlinuz\n    kernel: vmlinuz\n"),
     "give either kernel: (with initrd:, append:) or disk:"),
    (("    commands:", "    host: h9\n    commands:"), "unknown host 'h9'"),
])
def test_bad_netns_and_qemu_nodes_are_topology_errors_with_lines(
        files: Path, patch: tuple[str, str], expected: str) -> None:
    text = GOOD.replace(*patch)
    assert text != GOOD
    if expected == "to default":
        _load(files, text)
        return
    message = _errors(files, text)
    assert expected in message, message


def test_an_interface_is_linked_once_and_names_are_not_taken(files: Path) -> None:
    twice = GOOD.replace("  - [q1, sw0:b]", "  - [q1, sw0:b]\n  - [h1:eth0, sw0]")
    assert "interface h1:eth0 is already linked by links[0]" in _errors(files, twice)
    clash = GOOD.replace("  q1:\n", "  h1-eth1: {kind: hub}\n  q1:\n")
    assert "the name is taken by the eth1 service of netns 'h1'" in _errors(files, clash)


def test_a_topology_sent_by_rpc_may_not_have_them(files: Path) -> None:
    with pytest.raises(TopologyError) as info:
        parse_topology(GOOD, "<rpc>", base_dir=files,
                       remote=RpcPolicy(command="virtwire serve orchestrator"))
    assert info.value.denied
    message = str(info.value)
    assert "a netns node runs a network namespace and commands on this host" in message
    assert "a qemu node runs a QEMU VM" in message


def test_state_records_of_their_services_are_valid() -> None:
    for name, node in (("h1-eth0", "h1"), ("h1-eth15", "h1"), ("q1-qemu", "q1"), ("q1", "q1")):
        _check_record(ServiceRecord(name, "tap", node))
    for name in ("h1-wan", "h1-qemux", "h1-eth"):
        with pytest.raises(ConfigError):
            _check_record(ServiceRecord(name, "tap", "h1"))


def test_exec_enters_a_recorded_netns_node_only(tmp_path: Path) -> None:
    state = LanState("lab", "lab.yaml", "127.0.0.1:1", 1,
                     [ServiceRecord("h1-eth0", "tap", "h1"), ServiceRecord("sw0", "hub", "sw0")])
    with pytest.raises(NotFoundError, match="not a node of LAN 'lab' that exec can enter"):
        exec_prefix(state, tmp_path, "h1")  # not recorded (or not there): not entered
    assert netns_name("lab", "h1") == "vw-lab-h1"


def test_interface_macs_are_stable_unicast_and_local() -> None:
    mac = iface_mac("lab", "h1-eth0")
    assert mac == iface_mac("lab", "h1-eth0") != iface_mac("lab", "h1-eth1")
    first = int(mac[:2], 16)
    assert first & 1 == 0 and first & 2 == 2


@pytest.mark.parametrize("name", ["netns.yaml", "qemu.yaml"])
def test_the_examples_validate(name: str) -> None:
    if name == "qemu.yaml" and not Path("/vmlinuz").exists():
        pytest.skip("the example boots the host's /vmlinuz, which is not there")
    topo = load_topology(EXAMPLES / name)
    assert topo.nodes


def test_render_refuses_them(files: Path) -> None:
    from virtwire.orchestrator.render import render

    topo = _load(files, GOOD)
    for fmt in ("compose", "k8s"):
        with pytest.raises(ConfigError, match="h1, q1: netns and qemu nodes run with"):
            render(topo, fmt)  # type: ignore[arg-type]
