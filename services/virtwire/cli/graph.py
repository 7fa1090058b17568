"""`virtwire graph FILE|LAN -o OUT.svg|.png|.dot|.mmd`: the topology as a picture.

The picture is built in three steps, each a plain function:

- ``build_graph`` makes a ``Graph`` of a loaded ``Topology``: a ``GraphNode``
  per node (its kind and style key, e.g. ``tap/stream``), a ``GraphEdge`` per
  link with the NetClient at each end (a hub's port name, also of an unnamed
  link end: the port the plan names, ``orchestrator.plan.auto_ports``), and
  the topology's hosts, which become clusters;
- ``overlay_status`` adds what a running LAN's orchestrator says (GetStatus,
  as `virtwire status` gets it): each link's state (down when either end's
  link is not up: dashed and red) and, from two samples ``--interval`` apart,
  frames/s and Mbit/s each way (``cli.rates``), or the totals from one;
- ``to_dot`` and ``to_mermaid`` write it as text. SVG and PNG are Graphviz's
  ``dot`` (the Debian package graphviz) run on the DOT text: always the
  program ``dot`` found on this machine's PATH, never one an RPC names.

``STYLES`` is the kind -> style table: a new kind (switch, container, netns,
qemu) is one line there. A running LAN's topology is the file its
orchestrator was started with (its state's ``source``), loaded again here
with the same loader, so a bad file reads FILE:LINE.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from virtwire import tls
from virtwire.cli.exitcode import EXIT_OK
from virtwire.cli.format import LINK_UP, backend_text
from virtwire.cli.lan import orchestrator_stub
from virtwire.cli.rates import Counters, Rate, Sample, rates
from virtwire.errors import BackendError, ConfigError, NotFoundError
from virtwire.orchestrator.core import read_state
from virtwire.orchestrator.plan import auto_ports, dial_port
from virtwire.topology import Endpoint, HubNode, Link, TapNode, Topology, VmNode, load_topology

FORMATS = ("svg", "png", "dot", "mmd")
#: Graphviz's layout program (Debian: graphviz); looked up on PATH only.
DOT_PROGRAM = "dot"
#: The longest --interval between a running LAN's two samples.
MAX_INTERVAL_S = 600.0
#: How long dot may take to lay out a LAN.
DOT_TIMEOUT_S = 60.0


# -- the kind -> style table -------------------------------------------------------------
@dataclass(frozen=True)
class NodeStyle:
    """How one kind of node is drawn: a Graphviz shape and colour, a Mermaid shape."""

    shape: str
    fill: str
    #: Mermaid's brackets around the label, e.g. ("((", "))") for a circle.
    mermaid: tuple[str, str]
    #: Extra Graphviz style words, e.g. "rounded".
    style: str = ""


#: A node's style key -> its style: the kind, or KIND/BACKEND for a tap. A key
#: not here falls back to its kind's, then to "default".
STYLES: dict[str, NodeStyle] = {
    "hub": NodeStyle("ellipse", "#fde68a", ("((", "))")),
    "switch": NodeStyle("box3d", "#fcd34d", ("[[", "]]")),
    "vm": NodeStyle("box", "#bfdbfe", ("(", ")"), "rounded"),
    "tap": NodeStyle("hexagon", "#bbf7d0", ("{{", "}}")),
    "tap/stream": NodeStyle("cds", "#bbf7d0", (">", "]")),
    "tap/dgram": NodeStyle("parallelogram", "#d9f99d", ("[/", "/]")),
    "tap/tap": NodeStyle("hexagon", "#a7f3d0", ("{{", "}}")),
    "container": NodeStyle("component", "#e9d5ff", ("[(", ")]")),
    "netns": NodeStyle("folder", "#fecaca", ("[/", "\\]")),
    "qemu": NodeStyle("box3d", "#fbcfe8", ("[[", "]]")),
    "default": NodeStyle("box", "#e5e7eb", ("[", "]")),
}


def style_of(key: str) -> NodeStyle:
    return STYLES.get(key) or STYLES.get(key.split("/", 1)[0]) or STYLES["default"]


# -- the graph -------------------------------------------------------------------------
@dataclass(frozen=True)
class GraphNode:
    name: str
    kind: str
    #: STYLES' key: the kind, or tap/BACKEND.
    style: str
    #: Lines under the name (kind, addresses, a backend's state).
    details: tuple[str, ...] = ()
    host: str | None = None


@dataclass(frozen=True)
class GraphEnd:
    node: str
    #: The NetClient at this end (a hub's port; a vm's or tap's own name).
    netclient: str

    @property
    def port_label(self) -> str:
        """What the edge end says: a port name, "" for a NetClient named after its node."""
        return "" if self.netclient == self.node else self.netclient


#: A link's state in a picture: "" for a file (not running).
LinkState = str
UP, DOWN, UNKNOWN = "up", "down", "unknown"


@dataclass(frozen=True)
class GraphEdge:
    a: GraphEnd
    b: GraphEnd
    state: LinkState = ""
    #: Why a link is down or unknown, e.g. "vm2: down (set_link)".
    why: str = ""
    #: Traffic lines, e.g. "vm1→hub0 12 fr/s 0.01 Mbit/s".
    traffic: tuple[str, ...] = ()


@dataclass(frozen=True)
class Graph:
    name: str
    nodes: tuple[GraphNode, ...]
    edges: tuple[GraphEdge, ...]
    #: Host name -> its address, for the clusters (empty: one machine, no clusters).
    hosts: Mapping[str, str] = field(default_factory=dict)
    #: What the picture's title adds, e.g. "running, rates over 1.0 s".
    note: str = ""


def _end(topo: Topology, link: Link, end: Endpoint, dialer: bool) -> GraphEnd:
    node = topo.node(end.node)
    netclient = end.netclient
    if isinstance(node, HubNode):
        netclient = (dial_port(link) if dialer
                     else end.netclient or auto_ports(topo, node.name)[link.index])
    return GraphEnd(end.node, netclient or end.node)


def _node(topo: Topology, name: str) -> GraphNode:
    node = topo.node(name)
    kind = str(node.kind)
    style, details = kind, [kind]
    if isinstance(node, TapNode):
        style = f"{kind}/{node.backend}"
        details = [f"tap ({node.backend})"]
        where = node.listen_address() or node.options.get("connect", "") \
            or node.options.get("ifname", "")
        if where:
            details.append(where)
    elif isinstance(node, VmNode):
        details += [node.mac] + ([str(node.ip)] if node.ip else [])
    return GraphNode(name=name, kind=kind, style=style, details=tuple(details), host=node.host)


def build_graph(topo: Topology) -> Graph:
    """The picture of a topology file: its nodes, links with their ports, hosts."""
    edges = tuple(GraphEdge(_end(topo, link, link.dialer, True),
                            _end(topo, link, link.listener, False)) for link in topo.links)
    return Graph(name=topo.name, nodes=tuple(_node(topo, n) for n in topo.nodes),
                 edges=edges, hosts={h.name: h.address for h in topo.hosts.values()})


# -- a running LAN ---------------------------------------------------------------------
def _traffic(edge: GraphEdge, last: Sample, moved: Mapping[tuple[str, str], Rate] | None
             ) -> tuple[str, ...]:
    """Each way's frames/s and Mbit/s (or totals): what each end sent its peer."""
    lines = []
    for src, dst in ((edge.a, edge.b), (edge.b, edge.a)):
        key = (src.node, src.netclient)
        if key not in last.counters:
            continue
        if moved is not None:
            r = moved.get(key, Rate())
            lines.append(f"{src.node}→{dst.node} {r.tx_fps:.1f} fr/s {r.tx_mbps:.3f} Mbit/s")
        else:
            c = last.counters.get(key, Counters())
            lines.append(f"{src.node}→{dst.node} {c.tx_frames} frames {c.tx_bytes} B")
    return tuple(lines)


def overlay_status(graph: Graph, first: Sample, second: Sample | None) -> Graph:
    """The graph with each link's state and traffic from one or two samples."""
    last = second or first
    moved = rates(first, second) if second is not None else None
    edges = []
    for edge in graph.edges:
        rows = [last.rows.get((end.node, end.netclient)) for end in (edge.a, edge.b)]
        downs = [f"{row.netclient}: {row.link}" for row in rows
                 if row is not None and row.link != LINK_UP]
        if downs:
            state, why = DOWN, ", ".join(downs)
        elif any(row is None for row in rows):
            state, why = UNKNOWN, "not in the orchestrator's status"
        else:
            state, why = UP, ""
        edges.append(replace(edge, state=state, why=why,
                             traffic=_traffic(edge, last, moved)))
    nodes = []
    for node in graph.nodes:
        row = last.rows.get((node.name, node.name))
        backend = backend_text(row.info) if row is not None else ""
        nodes.append(replace(node, details=(*node.details, backend)) if backend else node)
    note = (f"running; rates over {second.at - first.at:.1f} s" if second is not None
            else "running; totals")
    return replace(graph, nodes=tuple(nodes), edges=tuple(edges), note=note)


# -- DOT ---------------------------------------------------------------------------------
def _q(text: str) -> str:
    """A DOT quoted string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


_EDGE_DOT = {DOWN: ("dashed", "#dc2626"), UNKNOWN: ("dotted", "#6b7280"),
             UP: ("solid", "#15803d"), "": ("solid", "#374151")}


def _dot_node(node: GraphNode, indent: str) -> str:
    st = style_of(node.style)
    style = ",".join(w for w in ("filled", st.style) if w)
    label = "\n".join((node.name, *node.details))
    return (f"{indent}{_q(node.name)} [label={_q(label)}, shape={st.shape}, "
            f"style={_q(style)}, fillcolor={_q(st.fill)}];")


def _state_words(edge: GraphEdge) -> list[str]:
    """A down or unknown link's first label line: which end and why."""
    if edge.state == DOWN:
        return [f"down: {edge.why}"]
    if edge.state == UNKNOWN:
        return [f"unknown: {edge.why}"]
    return []


def to_dot(graph: Graph) -> str:
    """The graph in Graphviz's DOT language."""
    title = f"LAN {graph.name}" + (f" ({graph.note})" if graph.note else "")
    out = [f"graph {_q(graph.name)} {{",
           f"  graph [label={_q(title)}, labelloc=t, fontname=Helvetica, overlap=false];",
           "  node [fontname=Helvetica, fontsize=11];",
           "  edge [fontname=Helvetica, fontsize=9];"]
    by_host: dict[str | None, list[GraphNode]] = {}
    for node in graph.nodes:
        by_host.setdefault(node.host if graph.hosts else None, []).append(node)
    for host, nodes in by_host.items():
        if host is None:
            if graph.hosts:
                out.append(f"  subgraph {_q('cluster_local')} {{")
                out.append(f"    label={_q('this host')}; style=dashed;")
                out += [_dot_node(n, "    ") for n in nodes]
                out.append("  }")
            else:
                out += [_dot_node(n, "  ") for n in nodes]
            continue
        label = f"host {host} ({graph.hosts.get(host, '?')})"
        out.append(f"  subgraph {_q('cluster_' + host)} {{")
        out.append(f"    label={_q(label)}; style=rounded; color=\"#6b7280\";")
        out += [_dot_node(n, "    ") for n in nodes]
        out.append("  }")
    for edge in graph.edges:
        style, color = _EDGE_DOT[edge.state]
        attrs = [f"style={style}", f"color={_q(color)}"]
        if edge.a.port_label:
            attrs.append(f"taillabel={_q(edge.a.port_label)}")
        if edge.b.port_label:
            attrs.append(f"headlabel={_q(edge.b.port_label)}")
        words = [*_state_words(edge), *edge.traffic]
        if words:
            attrs.append(f"label={_q(chr(10).join(words))}")
        if edge.why:
            attrs.append(f"tooltip={_q(edge.why)}")
        if edge.state == DOWN:
            attrs.append("penwidth=2")
        out.append(f"  {_q(edge.a.node)} -- {_q(edge.b.node)} [{', '.join(attrs)}];")
    out.append("}")
    return "\n".join(out) + "\n"


# -- Mermaid ------------------------------------------------------------------------------
def _m(text: str) -> str:
    """Text inside a Mermaid label's quotes (no quote, no bracket trouble)."""
    return text.replace('"', "#quot;").replace("\n", "<br/>")


def to_mermaid(graph: Graph) -> str:
    """The graph as a Mermaid flowchart (``.mmd``)."""
    ids = {node.name: f"n{i}" for i, node in enumerate(graph.nodes)}
    out = ["---", f"title: {_m('LAN ' + graph.name + (f' ({graph.note})' if graph.note else ''))}",
           "---", "flowchart LR"]

    def node_line(node: GraphNode, indent: str) -> str:
        opening, closing = style_of(node.style).mermaid
        label = _m("\n".join((node.name, *node.details)))
        return f'{indent}{ids[node.name]}{opening}"{label}"{closing}'

    grouped: dict[str | None, list[GraphNode]] = {}
    for node in graph.nodes:
        grouped.setdefault(node.host if graph.hosts else None, []).append(node)
    for host, nodes in grouped.items():
        if host is None and not graph.hosts:
            out += [node_line(n, "  ") for n in nodes]
            continue
        cid = f"host_{host}" if host else "host_local"
        label = f"host {host} ({graph.hosts.get(host, '?')})" if host else "this host"
        out.append(f'  subgraph {cid.replace("-", "_").replace(".", "_")} ["{_m(label)}"]')
        out += [node_line(n, "    ") for n in nodes]
        out.append("  end")
    styles = []
    for i, edge in enumerate(graph.edges):
        ends = " — ".join(p for p in (edge.a.port_label, edge.b.port_label) if p)
        words = [w for w in (ends, *_state_words(edge), *edge.traffic) if w]
        arrow = "-.-" if edge.state in (DOWN, UNKNOWN) else "---"
        label = f'|"{_m(chr(10).join(words))}"|' if words else ""
        out.append(f"  {ids[edge.a.node]} {arrow}{label} {ids[edge.b.node]}")
        _, color = _EDGE_DOT[edge.state]
        styles.append(f"  linkStyle {i} stroke:{color}"
                      + (",stroke-width:2px,stroke-dasharray:5 5" if edge.state == DOWN else ""))
    for node in graph.nodes:
        st = style_of(node.style)
        out.append(f"  style {ids[node.name]} fill:{st.fill}")
    out += styles
    return "\n".join(out) + "\n"


# -- output ------------------------------------------------------------------------------
def output_format(path: str, given: str | None) -> str:
    if given:
        return given
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix == "mermaid":
        suffix = "mmd"
    if suffix == "gv":
        suffix = "dot"
    if suffix not in FORMATS:
        raise ConfigError(f"-o {path}: say the format by its suffix "
                          f"({', '.join('.' + f for f in FORMATS)}) or with --format")
    return suffix


def render_with_dot(dot_text: str, fmt: str) -> bytes:
    """SVG or PNG bytes from DOT text, by Graphviz's dot on this machine's PATH."""
    program = shutil.which(DOT_PROGRAM)
    if program is None:
        raise BackendError(f"{fmt} needs Graphviz's '{DOT_PROGRAM}' program, which is not "
                           "on PATH (Debian: apt-get install graphviz); .dot and .mmd "
                           "output need no Graphviz")
    try:
        done = subprocess.run([program, f"-T{fmt}"], input=dot_text.encode(),
                              capture_output=True, timeout=DOT_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise BackendError(f"{DOT_PROGRAM} did not lay the graph out in "
                           f"{DOT_TIMEOUT_S:.0f} s") from None
    if done.returncode != 0:
        raise BackendError(f"{DOT_PROGRAM} -T{fmt} failed (exit {done.returncode}): "
                           f"{done.stderr.decode(errors='replace').strip()[:500]}")
    return done.stdout


def render_graph(graph: Graph, fmt: str) -> bytes:
    if fmt == "mmd":
        return to_mermaid(graph).encode()
    text = to_dot(graph)
    return text.encode() if fmt == "dot" else render_with_dot(text, fmt)


# -- the verb ----------------------------------------------------------------------------
def _is_file(target: str) -> bool:
    return Path(target).suffix.lower() in (".yaml", ".yml", ".json") or "/" in target \
        or Path(target).is_file()


async def _lan_graph(lan: str | None, interval: float) -> Graph:
    """A running LAN's picture: its topology file, with its orchestrator's status."""
    from virtwire.cli.top import take_sample

    state = read_state(lan)
    # `up --detach` records the file's absolute path; a foreground `up` the path it was
    # given, which is found from the same directory. Either way the LAN's name must match.
    if not state.source or not Path(state.source).is_file():
        raise NotFoundError(f"LAN {state.name!r}: its topology file {state.source!r} is not "
                            "here to read (run 'virtwire graph FILE' on the file it was "
                            "started from)")
    topo = await asyncio.to_thread(load_topology, state.source)
    if topo.name != state.name:
        raise ConfigError(f"{state.source}: now names LAN {topo.name!r}, not the running "
                          f"{state.name!r}")
    ch, stub = orchestrator_stub(state.name)
    async with ch:
        first = await take_sample(stub)
        second = None
        if interval > 0:
            await asyncio.sleep(interval)
            second = await take_sample(stub)
    return overlay_status(build_graph(topo), first, second)


async def cmd_graph(args: argparse.Namespace) -> int:
    fmt = output_format(args.output, args.format)
    if not 0 <= args.interval <= MAX_INTERVAL_S:
        raise ConfigError(f"--interval must be 0 to {MAX_INTERVAL_S:.0f} s")
    if args.lan is not None:
        if args.target is not None and args.target != args.lan:
            raise ConfigError(f"two LANs named: {args.target} and --lan {args.lan}")
        graph = await _lan_graph(args.lan, args.interval)
    elif args.target is not None and _is_file(args.target):
        topo = await asyncio.to_thread(load_topology, args.target)  # FILE:LINE errors
        for warning in topo.warnings:
            print(warning, file=sys.stderr)
        graph = build_graph(topo)
    else:
        graph = await _lan_graph(args.target, args.interval)
    data = await asyncio.to_thread(render_graph, graph, fmt)
    if args.output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return EXIT_OK
    try:
        Path(args.output).write_bytes(data)
    except OSError as exc:
        raise BackendError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    print(f"wrote {args.output} ({fmt}, {len(graph.nodes)} nodes, {len(graph.edges)} links)",
          file=sys.stderr)
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    g = sub.add_parser(
        "graph", allow_abbrev=False,
        help="draw a topology or a running LAN (SVG, PNG, DOT, Mermaid)",
        description="Draw a topology file, or a running LAN, as a picture: nodes by kind, "
        "links with their hub ports, hosts as clusters. For a running LAN also each "
        "link's state (down: dashed, red) and its frames/s and Mbit/s each way, from "
        "two samples --interval apart (totals with --interval 0). SVG and PNG need "
        "Graphviz's dot (Debian: graphviz); DOT and Mermaid (.mmd) are text.")
    g.set_defaults(verb=cmd_graph)
    g.add_argument("target", nargs="?", metavar="FILE|LAN",
                   help="a topology file, or a running LAN (default: the only one running)")
    g.add_argument("--lan", help="the running LAN, as LAN (when several run)")
    g.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="where to write: OUT.svg, .png, .dot or .mmd ('-': stdout)")
    g.add_argument("--format", choices=FORMATS, help="the format, instead of OUT's suffix")
    g.add_argument("--interval", type=float, default=1.0, metavar="S",
                   help="a running LAN: seconds between the two counter samples rates "
                        "come from (default 1; 0: one sample, totals)")
    tls.add_arguments(g, default_name=tls.DEFAULT_CLIENT_NAME)


__all__ = ["STYLES", "Graph", "GraphEdge", "GraphEnd", "GraphNode", "build_graph",
           "overlay_status", "render_graph", "to_dot", "to_mermaid"]
