"""What the verbs print: tables, link states, drop totals, ping results, JSON."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from google.protobuf import json_format
from google.protobuf.message import Message

from virtwire.v1 import guest_pb2, netclient_pb2, orchestrator_pb2

#: Who a verb without ``-s SERVER`` talks to, in messages.
LAN_ORCHESTRATOR = "the LAN's orchestrator"


def target_name(args: argparse.Namespace) -> str:
    """The server a verb calls, as error messages name it."""
    return str(getattr(args, "server", "") or LAN_ORCHESTRATOR)


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """Columns as wide as their widest cell, two spaces apart, no trailing blanks."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def format_json(message: Message) -> str:
    """A response as JSON, with every field and the protos' field names."""
    return json_format.MessageToJson(message, always_print_fields_with_no_presence=True,
                                     preserving_proto_field_name=True)


def link_state_text(info: netclient_pb2.NetClientInfo, *, admin: bool = False) -> str:
    """"up", "connecting (down)", ...: the link's state and whether frames pass;
    with ``admin``, a link set down (QMP set_link) says "(set down)"."""
    text = netclient_pb2.LinkState.Name(info.link_state).removeprefix("LINK_STATE_").lower()
    if admin and info.admin_down:
        return text + " (set down)"
    if info.link_down:
        return text + " (down)"
    return text


def link_up_down(info: netclient_pb2.NetClientInfo) -> str:
    """"link up" or "link down", as SetLink left it."""
    return f"link {'down' if info.link_down else 'up'}"


def format_netclients(resp: netclient_pb2.ListNetClientsResponse) -> str:
    """`virtwire list`: one row per NetClient of a service."""
    rows = [("NAME", "KIND", "LINK", "PEER", "RX", "TX", "DROPPED", "QUEUED")]
    for nc in resp.netclients:
        c = nc.counters
        rows.append((nc.name, nc.kind, link_state_text(nc), nc.peer, str(c.rx_frames),
                     str(c.tx_frames), str(c.dropped_total), str(c.queue_len)))
    return format_table(rows)


def format_status(resp: orchestrator_pb2.OrchestratorServiceGetStatusResponse,
                  orchestrator: str) -> str:
    """`virtwire status`: the LAN, a table of its services, one of its NetClients."""
    rows = [("NODE", "KIND", "SERVICE", "RUNS AS", "ADDRESS", "PID", "HEALTH", "RESTARTS")]
    for node in resp.nodes:
        for svc in node.services:
            runs = f"host {svc.host}" if svc.host else svc.backend
            rows.append((node.name, node.kind, svc.name, runs, svc.address, str(svc.pid),
                         "serving" if svc.healthy else "NOT SERVING", str(svc.restarts)))
    rows2 = [("NODE", "NETCLIENT", "LINK", "PEER", "RX FRAMES", "RX BYTES", "TX FRAMES",
              "TX BYTES", "DROPPED")]
    for node in resp.nodes:
        for nc in node.netclients:
            info = nc.info
            c = info.counters
            rows2.append((node.name, nc.name, link_state_text(info, admin=True), info.peer,
                          str(c.rx_frames), str(c.rx_bytes), str(c.tx_frames),
                          str(c.tx_bytes), str(c.dropped_total)))
    return (f"LAN {resp.name!r}: {resp.state} (orchestrator {orchestrator})\n"
            f"{format_table(rows)}\n\n{format_table(rows2)}")


def format_ping(address: str, source: str, resp: guest_pb2.PingResponse) -> str:
    """ping(8)'s lines: one per request, then the statistics."""
    lines = [f"PING {address} from {source}"]
    rtts = []
    for reply in resp.replies:
        if reply.HasField("rtt_us"):
            rtts.append(reply.rtt_us / 1000)
            lines.append(f"seq={reply.seq} time={reply.rtt_us / 1000:.3f} ms")
        else:
            lines.append(f"seq={reply.seq} no reply")
    tx, rx = resp.transmitted, resp.received
    loss = 100 * (tx - rx) / tx if tx else 0
    lines.append(f"--- {address} ping statistics ---")
    summary = f"{tx} transmitted, {rx} received, {loss:.0f}% packet loss"
    if rtts:
        summary += (f", rtt min/avg/max = {min(rtts):.3f}/{sum(rtts) / len(rtts):.3f}/"
                    f"{max(rtts):.3f} ms")
    lines.append(summary)
    return "\n".join(lines)
