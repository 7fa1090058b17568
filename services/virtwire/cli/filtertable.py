"""How the CLI words net filters: queue and status words, properties, and the
table of `filter ls` (also under `virtwire status`'s FILTERS)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from virtwire.cli.format import format_table
from virtwire.v1 import filter_pb2

QUEUES = {"all": filter_pb2.FILTER_DIRECTION_ALL, "rx": filter_pb2.FILTER_DIRECTION_RX,
          "tx": filter_pb2.FILTER_DIRECTION_TX}
_QUEUE_WORD = {**{v: k for k, v in QUEUES.items()},
               filter_pb2.FILTER_DIRECTION_UNSPECIFIED: "all"}


def queue_word(direction: int) -> str:
    word: str = _QUEUE_WORD.get(direction, "?")  # type: ignore[call-overload]
    return word


def status_word(status: int) -> str:
    return "off" if status == filter_pb2.FILTER_STATUS_OFF else "on"


def format_props(props: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(props.items())) or "-"


def format_filters(filters: Sequence[filter_pb2.FilterInfo]) -> str:
    """The table of `filter ls`: one filter a row, each NetClient's head first."""
    rows = [("NETCLIENT", "ID", "KIND", "QUEUE", "STATUS", "PROPS", "SEEN", "PASSED",
             "TAKEN", "DROPPED")]
    for f in filters:
        c = f.counters
        dropped = str(c.dropped_total)
        if c.dropped:
            dropped += " (" + ", ".join(f"{k} {v}" for k, v in sorted(c.dropped.items())) + ")"
        rows.append((f.netclient, f.id, f.kind, queue_word(f.direction), status_word(f.status),
                     format_props(f.props), str(c.seen), str(c.passed), str(c.taken), dropped))
    return format_table(rows)
