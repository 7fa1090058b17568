"""`virtwire graph FILE|LAN -o OUT.svg|.png|.dot|.mmd`: the topology as a picture.

Every node and every link of a topology is in the DOT and Mermaid text (DOT
read back through Graphviz's own parser, ``dot -Tplain``), hub ports on the
link ends, hosts as clusters; SVG is Graphviz's and is XML naming every node;
without ``dot`` on PATH svg/png fail with a clear message while dot/mmd work;
a bad file reads FILE:LINE. On a running LAN a link set down is drawn down
(dashed, red) and the links carry their traffic.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtwire.cli.graph import STYLES, build_graph, style_of, to_dot, to_mermaid
from virtwire.orchestrator.plan import auto_ports
from virtwire.topology import HubNode, Topology, load_topology

from support.doubles import frame

pytestmark = pytest.mark.timeout(180)

VIRTWIRE_SCRIPT = Path(sys.executable).parent / "virtwire"
EXAMPLES = Path(__file__).parent.parent / "examples"
DEFAULT = EXAMPLES / "default.yaml"
TWO_HOSTS = EXAMPLES / "two-hosts.yaml"
DOT = shutil.which("dot")
needs_dot = pytest.mark.skipif(DOT is None, reason="Graphviz's dot is not installed "
                               "(Debian: graphviz, in the Makefile's DEBS)")


def cli(*args: str, env: dict[str, str] | None = None,
        ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([str(VIRTWIRE_SCRIPT), *args], capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode in ok, (args, out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    return out


def _ports(topo: Topology) -> list[tuple[str, str]]:
    """Each link's two nodes and the hub port at its hub end (as the plan names it)."""
    out = []
    for link in topo.links:
        ends = (link.dialer.node, link.listener.node)
        hub = topo.node(link.listener.node)
        port = ""
        if isinstance(hub, HubNode):
            port = link.listener.netclient or auto_ports(topo, hub.name)[link.index]
        out.append((f"{ends[0]}--{ends[1]}", port))
    return out


def _plain(dot_text: str) -> tuple[set[str], list[tuple[str, str]]]:
    """The nodes and edges Graphviz itself reads in DOT text (``dot -Tplain``)."""
    assert DOT is not None
    out = subprocess.run([DOT, "-Tplain"], input=dot_text, capture_output=True, text=True,
                         timeout=60, check=True)
    nodes, edges = set(), []
    for line in out.stdout.splitlines():
        words = line.split()
        if words[0] == "node":
            nodes.add(words[1].strip('"'))
        elif words[0] == "edge":
            edges.append((words[1].strip('"'), words[2].strip('"')))
    return nodes, edges


@pytest.mark.parametrize("example", [DEFAULT, TWO_HOSTS], ids=lambda p: p.stem)
@needs_dot
def test_dot_names_every_node_and_link(example: Path, tmp_path: Path) -> None:
    topo = load_topology(example)
    out = tmp_path / "lan.dot"
    cli("graph", str(example), "-o", str(out))
    text = out.read_text()
    nodes, edges = _plain(text)
    assert nodes == set(topo.nodes)
    assert sorted(edges) == sorted(link.nodes for link in topo.links)
    # Each link's hub end says its port; the plan's name for an unnamed one.
    for (pair, port), link in zip(_ports(topo), topo.links, strict=True):
        a, b = link.nodes
        line = next(x for x in text.splitlines() if x.strip().startswith(f'"{a}" -- "{b}"'))
        assert f'headlabel="{port}"' in line, (pair, line)


@pytest.mark.parametrize("example", [DEFAULT, TWO_HOSTS], ids=lambda p: p.stem)
def test_mermaid_names_every_node_and_link(example: Path, tmp_path: Path) -> None:
    topo = load_topology(example)
    out = tmp_path / "lan.mmd"
    cli("graph", str(example), "-o", str(out))
    text = out.read_text()
    assert text.splitlines()[3] == "flowchart LR"
    ids = dict(re.findall(r'^\s*(n\d+)[(\[{>]+"([^"<]+)<br/>', text, re.M))
    assert sorted(ids.values()) == sorted(topo.nodes)
    edges = re.findall(r"^\s*(n\d+) (?:---|-\.-)(?:\|\"([^\"]*)\"\|)? (n\d+)$", text, re.M)
    assert sorted((ids[a], ids[b]) for a, _, b in edges) == sorted(
        link.nodes for link in topo.links)
    for (a, label, b), (_, port) in zip(edges, _ports(topo), strict=True):
        assert port in label.split("<br/>")[0], (ids[a], ids[b], label)


@needs_dot
def test_hosts_are_clusters() -> None:
    topo = load_topology(TWO_HOSTS)
    text = to_dot(build_graph(topo))
    clusters = dict(re.findall(r'subgraph "cluster_(\w+)" \{(.*?)\n  \}', text, re.S))
    assert set(clusters) == {"h1", "h2"}
    for name, node in topo.nodes.items():
        assert f'"{name}" [' in clusters[str(node.host)], (name, clusters)
    assert "host h1 (198.18.1.1)" in text
    mmd = to_mermaid(build_graph(topo))
    assert 'subgraph host_h1 ["host h1 (198.18.1.1)"]' in mmd
    # One machine: no clusters.
    assert "subgraph" not in to_dot(build_graph(load_topology(DEFAULT)))


def test_each_kind_and_tap_backend_has_its_own_style() -> None:
    keys = ("hub", "vm", "tap/stream", "tap/dgram", "tap/tap")
    assert len({(style_of(k).shape, style_of(k).fill) for k in keys}) == len(keys)
    # Later kinds are a line in STYLES; an unknown one is drawn, not refused.
    assert {"switch", "container", "netns", "qemu"} <= set(STYLES)
    assert style_of("tap/vde") == STYLES["tap"] and style_of("router") == STYLES["default"]
    graph = build_graph(load_topology(DEFAULT))
    assert {n.name: n.style for n in graph.nodes} == {
        "hub0": "hub", "vm1": "vm", "vm2": "vm", "qemu0": "tap/stream"}


@needs_dot
@pytest.mark.parametrize("example", [DEFAULT, TWO_HOSTS], ids=lambda p: p.stem)
def test_svg_is_xml_naming_every_node(example: Path, tmp_path: Path) -> None:
    topo = load_topology(example)
    out = tmp_path / "lan.svg"
    cli("graph", str(example), "-o", str(out))
    root = ET.parse(out).getroot()
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{ns}svg"
    groups: dict[str | None, list[str]] = {g.get("class"): [] for g in root.iter(f"{ns}g")}
    for g in root.iter(f"{ns}g"):
        title = g.find(f"{ns}title")
        groups[g.get("class")].append(title.text or "" if title is not None else "")
    assert sorted(groups["node"]) == sorted(topo.nodes)
    assert len(groups["edge"]) == len(topo.links)
    texts = {t.text for t in root.iter(f"{ns}text")}
    assert set(topo.nodes) <= texts


@needs_dot
def test_png_is_a_png(tmp_path: Path) -> None:
    out = tmp_path / "lan.png"
    cli("graph", str(DEFAULT), "-o", str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_dot_svg_fails_clearly_and_text_formats_work(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path / "empty")}
    for fmt in ("svg", "png"):
        got = cli("graph", str(DEFAULT), "-o", str(tmp_path / f"x.{fmt}"), env=env, ok=(1,))
        assert "Graphviz" in got.stderr and "apt-get install graphviz" in got.stderr
        assert not (tmp_path / f"x.{fmt}").exists()
    for fmt in ("dot", "mmd"):
        cli("graph", str(DEFAULT), "-o", str(tmp_path / f"x.{fmt}"), env=env)
        assert "vm1" in (tmp_path / f"x.{fmt}").read_text()


def test_bad_file_and_bad_output_are_the_callers_mistake(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nnodes:\n  hub0:\n    kind: hub\nlinks:\n  - [vm9, hub0]\n")
    got = cli("graph", str(bad), "-o", str(tmp_path / "x.dot"), ok=(2,))
    assert re.search(rf"{re.escape(str(bad))}:6:", got.stderr), got.stderr
    got = cli("graph", str(DEFAULT), "-o", str(tmp_path / "x.txt"), ok=(2,))
    assert ".svg" in got.stderr and "--format" in got.stderr
    got = cli("graph", str(DEFAULT), "-o", "-", "--format", "dot")
    assert got.stdout.startswith('graph "default" {')


def test_docs_picture_is_the_tools_picture_of_the_default_lan() -> None:
    """docs/default-lan.svg is `virtwire graph examples/default.yaml -o docs/default-lan.svg`."""
    svg = Path(__file__).parent.parent / "docs" / "default-lan.svg"
    root = ET.parse(svg).getroot()
    ns = "{http://www.w3.org/2000/svg}"
    titles = [g.find(f"{ns}title") for g in root.iter(f"{ns}g") if g.get("class") == "node"]
    assert sorted(t.text or "" for t in titles if t is not None) == sorted(
        load_topology(DEFAULT).nodes)


# -- a running LAN -------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """examples/default.yaml, up (as tests/test_link_states.py's); its CLI's environment."""
    tmp = tmp_path_factory.mktemp("lan")
    env = {**os.environ, "VIRTWIRE_STATE_DIR": str(tmp / "state")}
    file = tmp / "lan.yaml"
    file.write_text(DEFAULT.read_text().replace("127.0.0.1:10555",
                                                f"127.0.0.1:{_free_port()}"))
    cli("up", str(file), "--detach", env=env)
    try:
        yield env
    finally:
        cli("down", "default", env=env, ok=(0, 1))


def _edge_lines(text: str) -> dict[str, str]:
    """DOT edge lines by their non-hub node."""
    return {m.group(1): m.group(0) for m in re.finditer(r'^\s*"(\w+)" -- "hub0" .*$', text,
                                                         re.M)}


def test_a_running_lans_link_set_down_is_drawn_down(lan: dict[str, str],
                                                     tmp_path: Path) -> None:
    cli("link", "vm2", "down", env=lan)
    try:
        out = tmp_path / "live.dot"
        cli("graph", "default", "-o", str(out), "--interval", "0.2", env=lan)
        text = out.read_text()
        mmd = cli("graph", "-o", "-", "--format", "mmd", "--interval", "0", env=lan).stdout
    finally:
        cli("link", "vm2", "up", env=lan)
    edges = _edge_lines(text)
    assert set(edges) == {"vm1", "vm2", "qemu0"}, text
    assert "style=dashed" in edges["vm2"] and '"#dc2626"' in edges["vm2"]
    assert "down: vm2: down (set_link)" in edges["vm2"]
    for up in ("vm1", "qemu0"):
        assert "style=solid" in edges[up] and "down" not in edges[up], edges[up]
    assert "fr/s" in edges["vm1"] and "Mbit/s" in edges["vm1"]
    assert 'label="LAN default (running; rates over' in text
    # Mermaid: the down link dotted and red, the others not.
    vm2_link = next(line for line in mmd.splitlines() if "down: vm2" in line)
    index = [line for line in mmd.splitlines() if re.match(r"\s*n\d+ (---|-\.-)", line)
             ].index(vm2_link)
    assert "-.-" in vm2_link
    assert f"linkStyle {index} stroke:#dc2626" in mmd
    assert mmd.count("-.-") == 1
    # Back up: drawn up.
    edges = _edge_lines(cli("graph", "-o", "-", "--format", "dot", "--interval", "0",
                            env=lan).stdout)
    assert "style=solid" in edges["vm2"], edges["vm2"]


def _sent(edge: str) -> int:
    """The frames the hub sent qemu0, as its link's label says."""
    found = re.search(r"hub0→qemu0 (\d+) frames", edge)
    assert found, edge
    return int(found.group(1))


def test_a_running_lans_links_carry_their_traffic(lan: dict[str, str]) -> None:
    """With one sample, totals: what the hub sent each port since the LAN came up."""
    before = _edge_lines(cli("graph", "-o", "-", "--format", "dot", "--interval", "0",
                             env=lan).stdout)
    sent = _sent(before["qemu0"])
    cli("inject", "hub0:hub0port1", "--hex", frame(0, 60).hex(), "--repeat", "50", env=lan)
    after = _edge_lines(cli("graph", "-o", "-", "--format", "dot", "--interval", "0",
                            env=lan).stdout)
    now = _sent(after["qemu0"])
    assert now - sent == 50, after["qemu0"]


@needs_dot
def test_a_running_lans_svg_names_every_node(lan: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "live.svg"
    cli("graph", "--lan", "default", "--interval", "0", "-o", str(out), env=lan)
    got = cli("graph", "other", "--lan", "default", "-o", str(out), env=lan, ok=(2,))
    assert "two LANs named" in got.stderr
    ns = "{http://www.w3.org/2000/svg}"
    root = ET.parse(out).getroot()
    titles = sorted(getattr(g.find(f"{ns}title"), "text", "") or ""
                    for g in root.iter(f"{ns}g") if g.get("class") == "node")
    assert titles == ["hub0", "qemu0", "vm1", "vm2"]
