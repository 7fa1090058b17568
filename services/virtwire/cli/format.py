"""What the verbs print: tables, link states, drop totals, ping results, JSON."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from virtwire.v1 import guest_pb2, netclient_pb2, orchestrator_pb2

#: Who a verb without ``-s SERVER`` talks to, in messages.
LAN_ORCHESTRATOR = "the LAN's orchestrator"

#: The link's states, as `status`, `list` and their --json "link" show them.
LINK_UP = "up"
LINK_SET_DOWN = "down (set_link)"
LINK_PEER_GONE = "down (peer gone)"
LINK_CONNECTING = "connecting"

#: What carries an up link's frames (NetClientInfo.link_transport), as the
#: LINK column of `status` and `list` adds it: "up (unix socket)".
LINK_TRANSPORT_WORDS = {"grpc": "grpc stream", "unix": "unix socket"}

#: Field types protobuf's JSON mapping writes as strings.
_INT64_TYPES = frozenset({FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64,
                          FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_FIXED64,
                          FieldDescriptor.TYPE_SFIXED64})


def target_name(args: argparse.Namespace) -> str:
    """The server a verb calls, as error messages name it."""
    return str(getattr(args, "server", "") or LAN_ORCHESTRATOR)


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """Columns as wide as their widest cell, two spaces apart, no trailing blanks."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def format_json(message: Message) -> str:
    """A response as JSON: every field in the protos' order and by their
    names, 64-bit integers as numbers (protobuf's JSON mapping writes them as
    strings), each NetClientInfo's "link" and "backend" in words."""
    data = json_format.MessageToDict(message, always_print_fields_with_no_presence=True,
                                     preserving_proto_field_name=True)
    return json.dumps(_json_fields(message, data), indent=2)


def _json_fields(message: Message, data: dict[str, Any]) -> dict[str, Any]:
    """``format_json``'s view of MessageToDict's ``data`` of ``message``; the
    field types and their order come from the message's descriptor."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        if field.name not in data:
            continue  # a message field that is not set
        value = getattr(message, field.name)
        item = data[field.name]
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            int64 = field.message_type.fields_by_name["value"].type in _INT64_TYPES
            out[field.name] = {_map_key(k): _json_value(int64, v, item[_map_key(k)])
                               for k, v in value.items()}
        elif field.is_repeated:
            int64 = field.type in _INT64_TYPES
            out[field.name] = [_json_value(int64, v, i)
                               for v, i in zip(value, item, strict=True)]
        else:
            out[field.name] = _json_value(field.type in _INT64_TYPES, value, item)
        if isinstance(message, netclient_pb2.NetClientInfo):
            if field.name == "link_state":
                out["link"] = link_state_text(message)
            elif field.name == "backend_address":
                out["backend"] = backend_text(message)
    return out


def _map_key(key: object) -> str:
    """A map key as protobuf's JSON mapping writes it."""
    return str(key).lower() if isinstance(key, bool) else str(key)


def _json_value(int64: bool, value: Any, item: Any) -> Any:
    """One value of a field (a 64-bit integer one if ``int64``) as
    ``format_json`` writes it: ``item`` is MessageToDict's, ``value`` the message's."""
    if int64:
        return int(item)
    if isinstance(value, Message) and isinstance(item, dict):
        return _json_fields(value, item)
    return item


def link_state_text(info: netclient_pb2.NetClientInfo) -> str:
    """The NetClient's link, in one of four words (the protos' LinkState):

    - "down (set_link)": set down (QMP set_link), whatever its peer does;
    - "up": linked to its peer;
    - "connecting": this side dials its peer, and the link is not up (yet, or
      again); why is in ``link_error``;
    - "down (peer gone)": no link, and this side waits for its peer to dial
      in (again).

    Whether frames pass also depends on the backend (``backend_text``).
    """
    if info.admin_down:
        return LINK_SET_DOWN
    if info.link_state == netclient_pb2.LINK_STATE_UP:
        return LINK_UP
    if info.dials:
        return LINK_CONNECTING
    return LINK_PEER_GONE


def link_text(info: netclient_pb2.NetClientInfo) -> str:
    """The LINK column of `status` and `list`: ``link_state_text``, and for a
    link that is up, what carries its frames: "up (unix socket)" (the
    same-host socket), "up (grpc stream)" (the Connect stream); just "up" for
    a peer in the same process. ``--json`` keeps the two apart, as "link" and
    "link_transport"."""
    word = link_state_text(info)
    transport = info.link_transport
    if word != LINK_UP or not transport:
        return word
    return f"{word} ({LINK_TRANSPORT_WORDS.get(transport, transport)})"


def backend_text(info: netclient_pb2.NetClientInfo) -> str:
    """The NetClient's host-side backend: "connected", "waiting for a client
    at ADDR" (a listening stream), "connecting to ADDR" (a connecting
    stream), or "" for a NetClient without one (a hub port, a NIC)."""
    state = info.backend_state
    if state == netclient_pb2.BACKEND_STATE_CONNECTED:
        return "connected"
    if state == netclient_pb2.BACKEND_STATE_LISTENING:
        return f"waiting for a client at {info.backend_address}"
    if state == netclient_pb2.BACKEND_STATE_CONNECTING:
        return f"connecting to {info.backend_address}"
    return ""


def link_up_down(info: netclient_pb2.NetClientInfo) -> str:
    """What `virtwire link` prints of the NetClient it set: "link up",
    "link down (set_link)", ... (``link_state_text``)."""
    return f"link {link_state_text(info)}"


def format_netclients(resp: netclient_pb2.ListNetClientsResponse) -> str:
    """`virtwire list`: one row per NetClient of a service."""
    rows = [("NAME", "KIND", "LINK", "BACKEND", "PEER", "RX", "TX", "DROPPED", "QUEUED")]
    for nc in resp.netclients:
        c = nc.counters
        rows.append((nc.name, nc.kind, link_text(nc), backend_text(nc) or "-", nc.peer,
                     str(c.rx_frames), str(c.tx_frames), str(c.dropped_total),
                     str(c.queue_len)))
    return format_table(rows)


def format_status(resp: orchestrator_pb2.OrchestratorServiceGetStatusResponse,
                  orchestrator: str) -> str:
    """`virtwire status`: the LAN, a table of its services, one of its NetClients.

    A NetClient's LINK is ``link_text``: its state, and what carries it when up.

    A NetClient's QUEUED is what waits at it: delivered to it and not yet
    received (``queue_len``, e.g. a NIC whose link is down), and sent by it and
    not yet across its link (``peer_queue_len``).

    A METRICS column (each service's /metrics address, "-" for one without)
    comes only when some service serves /metrics (docs/metrics.md).
    """
    metrics = any(svc.metrics for node in resp.nodes for svc in node.services)
    rows = [("NODE", "KIND", "SERVICE", "RUNS AS", "ADDRESS", "PID", "HEALTH", "RESTARTS",
             *(("METRICS",) if metrics else ()))]
    for node in resp.nodes:
        for svc in node.services:
            runs = f"host {svc.host}" if svc.host else svc.backend
            rows.append((node.name, node.kind, svc.name, runs, svc.address, str(svc.pid),
                         "serving" if svc.healthy else "NOT SERVING", str(svc.restarts),
                         *((svc.metrics or "-",) if metrics else ())))
    rows2 = [("NODE", "NETCLIENT", "LINK", "BACKEND", "PEER", "RX FRAMES", "RX BYTES",
              "TX FRAMES", "TX BYTES", "DROPPED", "QUEUED")]
    for node in resp.nodes:
        for nc in node.netclients:
            info = nc.info
            c = info.counters
            rows2.append((node.name, nc.name, link_text(info), backend_text(info) or "-",
                          info.peer, str(c.rx_frames), str(c.rx_bytes), str(c.tx_frames),
                          str(c.tx_bytes), str(c.dropped_total),
                          str(c.queue_len + c.peer_queue_len)))
    return (f"LAN {resp.name!r}: {resp.state} (orchestrator {orchestrator})\n"
            f"{format_table(rows)}\n\n{format_table(rows2)}")


def format_schedule(resp: orchestrator_pb2.OrchestratorServiceGetStatusResponse) -> str:
    """`virtwire status`'s table of the topology's schedule (GetStatus.schedule):
    each step's time, what it does, whether and when it ran, and why it failed;
    "" when the topology has none. Times are seconds after the LAN was healthy."""
    rows = [("STEP", "AT", "WHAT", "RAN", "ERROR")]
    for step in resp.schedule:
        ran = f"yes, at {step.ran_at:.3f}s" if step.ran else "not yet"
        rows.append((str(step.index), f"{step.at:g}s", step.what, ran, step.error or "-"))
    return format_table(rows) if len(rows) > 1 else ""


def format_ports(resp: orchestrator_pb2.OrchestratorServiceGetStatusResponse) -> str:
    """`virtwire status`'s table of where each stream/dgram port waits for its
    peer, as this host reaches it (NodeStatus.reachable_at), with a RELAY
    column when a ``publish:`` relay serves one; "" when the LAN has none."""
    relayed = any(node.relays for node in resp.nodes)
    rows = [("NODE", "PORT", "LISTENS AT (FROM THIS HOST)", *(("RELAY",) if relayed else ()))]
    for node in resp.nodes:
        if node.reachable_at:
            kind = next((nc.info.kind for nc in node.netclients if nc.name == node.name), "tap")
            host = next((f" (on host {s.host})" for s in node.services if s.host), "")
            relays = ("; ".join(relay_text(r) for r in node.relays) or "-",) if relayed else ()
            rows.append((node.name, kind, node.reachable_at + host, *relays))
    return format_table(rows) if len(rows) > 1 else ""


def relay_text(relay: orchestrator_pb2.PublishRelay) -> str:
    """A ``publish:`` relay's connections: "3 accepted, 1 open, 0 refused, 0 target failed"."""
    return (f"{relay.accepted} accepted, {relay.active} open, {relay.refused} refused, "
            f"{relay.target_failed} target failed")


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
