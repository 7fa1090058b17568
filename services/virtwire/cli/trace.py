"""`virtwire trace NODE --match EXPR --count N`: where frames go, hop by hop.

The LAN's orchestrator arms the node's service with the match and gathers the
spans every service records for the frames it picks
(OrchestratorService.Trace, docs/tracing.md). Per frame this prints a table
of its spans in causal order (parents first, siblings by start time): the
span, the service, the NetClient, its start from the root's, its duration,
and its hop latency (its start minus its parent's), all in microseconds;
``--json`` prints one JSON object per frame instead. Exit 0 when at least one
frame was traced, 1 when none came within the timeout; 2 for a bad match,
count or node (``exitcode``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from virtwire import tls
from virtwire.cli.exitcode import EXIT_ERROR, EXIT_OK
from virtwire.cli.expect import RPC_MARGIN_S, _seconds
from virtwire.cli.format import LAN_ORCHESTRATOR
from virtwire.cli.lan import orchestrator_stub
from virtwire.errors import OutOfRangeError
from virtwire.rpc.status import translated
from virtwire.tracing import MAX_MATCH_COUNT
from virtwire.v1 import orchestrator_pb2, trace_pb2

#: The longest --timeout (the orchestrator's cap, 1 h).
MAX_TIMEOUT_S = 3600.0
#: Columns of a table written to a pipe or a file (no cut at 80).
TEXT_WIDTH = 160


@dataclass(frozen=True)
class Hop:
    """One span of a traced frame as printed: its depth in the tree and times (µs)."""

    span: trace_pb2.Span
    depth: int
    offset_us: float
    duration_us: float
    #: Its start minus its parent's; None for the root (or an orphan).
    hop_us: float | None


def causal_order(spans: Sequence[trace_pb2.Span]) -> list[Hop]:
    """``spans`` parents first, siblings by start time. A span whose parent is
    not among them (not kept, or another process's ring lost it) hangs from the
    root as if it were a root's child, its hop latency unknown."""
    if not spans:
        return []
    by_id = {s.span_id: s for s in spans}
    children: dict[bytes, list[trace_pb2.Span]] = {}
    roots: list[trace_pb2.Span] = []
    for s in spans:
        if s.parent_span_id and s.parent_span_id in by_id and s.parent_span_id != s.span_id:
            children.setdefault(s.parent_span_id, []).append(s)
        else:
            roots.append(s)
    roots.sort(key=lambda s: (bool(s.parent_span_id), s.start_unix_nano))
    base = roots[0].start_unix_nano
    out: list[Hop] = []
    seen: set[bytes] = set()

    def visit(span: trace_pb2.Span, depth: int, parent: trace_pb2.Span | None) -> None:
        if span.span_id in seen:  # a cycle in what a peer sent: once each
            return
        seen.add(span.span_id)
        hop = None if parent is None else (span.start_unix_nano - parent.start_unix_nano) / 1000
        out.append(Hop(span, depth, (span.start_unix_nano - base) / 1000,
                       (span.end_unix_nano - span.start_unix_nano) / 1000, hop))
        for child in sorted(children.get(span.span_id, []), key=lambda s: s.start_unix_nano):
            visit(child, depth + 1, span)

    for root in roots:
        visit(root, 0, None)
    return out


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def build_table(frame: orchestrator_pb2.TracedFrame, index: int) -> Table:
    """The spans of one traced frame (see the module doc)."""
    table = Table(title=f"frame {index}: trace {frame.trace_id.hex()}: {frame.summary}",
                  title_justify="left")
    for col in ("SPAN", "SERVICE", "NETCLIENT"):
        table.add_column(col, no_wrap=True)
    for col in ("START µs", "DURATION µs", "HOP µs"):
        table.add_column(col, justify="right", no_wrap=True)
    for hop in causal_order(frame.spans):
        table.add_row("  " * hop.depth + hop.span.name, hop.span.service,
                      hop.span.attributes.get("netclient", "") or "-",
                      _us(hop.offset_us), _us(hop.duration_us), _us(hop.hop_us))
    if frame.spans_dropped:
        table.caption = f"{frame.spans_dropped} more spans not kept"
    return table


def frame_dict(frame: orchestrator_pb2.TracedFrame) -> dict[str, Any]:
    """One traced frame as ``--json`` prints it (docs/tracing.md)."""
    return {
        "trace_id": frame.trace_id.hex(), "summary": frame.summary,
        "delivered": frame.delivered, "spans_dropped": frame.spans_dropped,
        "spans": [{"name": h.span.name, "service": h.span.service,
                   "span_id": h.span.span_id.hex(),
                   "parent_span_id": h.span.parent_span_id.hex(), "depth": h.depth,
                   "start_unix_nano": int(h.span.start_unix_nano),
                   "end_unix_nano": int(h.span.end_unix_nano),
                   "offset_us": round(h.offset_us, 3), "duration_us": round(h.duration_us, 3),
                   "hop_us": None if h.hop_us is None else round(h.hop_us, 3),
                   "attributes": dict(sorted(h.span.attributes.items()))}
                  for h in causal_order(frame.spans)]}


def check_args(count: int, timeout_s: float) -> None:
    """OutOfRangeError for a count or timeout the orchestrator would refuse."""
    if not 1 <= count <= MAX_MATCH_COUNT:
        raise OutOfRangeError(f"--count {count}: expected 1 to {MAX_MATCH_COUNT}")
    if not 0 < timeout_s <= MAX_TIMEOUT_S:
        raise OutOfRangeError(f"--timeout {timeout_s:g} s: expected more than 0, at most 1h")


async def cmd_trace(args: argparse.Namespace) -> int:
    check_args(args.count, args.timeout)
    timeout_ms = max(1, round(args.timeout * 1000))
    console = Console()
    if not console.is_terminal:
        console = Console(width=TEXT_WIDTH)
    ch, stub = orchestrator_stub(args.lan)
    traced = 0
    async with ch:
        with translated(LAN_ORCHESTRATOR):
            call = stub.Trace(orchestrator_pb2.OrchestratorServiceTraceRequest(
                target=args.node, match=args.match, count=args.count,
                timeout_ms=timeout_ms), timeout=args.timeout + RPC_MARGIN_S)
            async for item in call:
                traced += 1
                if args.json:
                    print(json.dumps(frame_dict(item.frame)), flush=True)
                else:
                    console.print(build_table(item.frame, traced))
    if not traced:
        print(f"{args.node}: no frame matching {args.match} within {args.timeout:g} s",
              file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sp = sub.add_parser(
        "trace", allow_abbrev=False,
        help="follow frames entering the LAN at a node through every hop, with latencies",
        description=(
            "Trace the next frames matching an expression where they enter the LAN at "
            "NODE (a tap, stream or dgram port, or a vm's e1000) of a running LAN: each "
            "service they cross records a span (tap.read, link.send, hub.forward, "
            "e1000.receive, dma.write, irq, guest.rx), and a table per frame shows them "
            "in causal order with their start, duration and hop latency in "
            "microseconds. Exit 0 when a frame was traced, 1 when none came within "
            "the timeout, 2 for a bad match, count or node.\n\n"
            "EXPR is the language of 'virtwire expect' (docs/match.md)."))
    tls.add_arguments(sp, default_name=tls.DEFAULT_CLIENT_NAME)
    sp.set_defaults(verb=cmd_trace)
    sp.add_argument("node", metavar="NODE", help="NODE or HUB:PORT of the LAN")
    sp.add_argument("--lan", help="the LAN, when several run")
    sp.add_argument("--match", "-m", required=True, metavar="EXPR",
                    help="which frames, e.g. 'ip.proto=icmp' or 'pcap:arp'")
    sp.add_argument("--count", "-c", type=int, default=1, metavar="N",
                    help=f"how many frames to trace, 1 to {MAX_MATCH_COUNT} (default 1)")
    sp.add_argument("--timeout", "-t", type=_seconds, default=5.0,
                    help="how long to wait for them: 2s, 500ms, or seconds; at most 1h "
                         "(default 5s)")
    sp.add_argument("--json", action="store_true",
                    help="one JSON object per traced frame, one per line (docs/tracing.md)")
