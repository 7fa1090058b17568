"""Rates from a LAN's counters: what `virtwire top` and `virtwire graph` show.

A ``Sample`` is one GetStatus answer reduced to each NetClient's counters
(the ones ``status --json`` prints), keyed by (node, NetClient), with the
monotonic time it was taken. ``rate`` turns two readings of one NetClient
into frames/s, Mbit/s and drops/s each way; ``rates`` does it for every
NetClient of two samples. Pure functions: no RPC, no clock.

A counter that went down between the samples (its service restarted and
counts from 0 again) counts from 0: its new value is what moved since.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from virtwire.cli.format import link_state_text
from virtwire.errors import ConfigError
from virtwire.v1 import netclient_pb2, orchestrator_pb2

#: (node, NetClient): a NetClient of a LAN.
Key = tuple[str, str]


@dataclass(frozen=True)
class Counters:
    """The counters of one NetClient that rates are made of."""

    rx_frames: int = 0
    rx_bytes: int = 0
    tx_frames: int = 0
    tx_bytes: int = 0
    #: Every frame it dropped (NetClientCounters.dropped_total).
    dropped: int = 0

    @classmethod
    def of(cls, counters: netclient_pb2.NetClientCounters) -> Counters:
        return cls(rx_frames=counters.rx_frames, rx_bytes=counters.rx_bytes,
                   tx_frames=counters.tx_frames, tx_bytes=counters.tx_bytes,
                   dropped=counters.dropped_total)


@dataclass(frozen=True)
class Rate:
    """Per second, between two readings: frames, Mbit (10^6 bits) and drops."""

    rx_fps: float = 0.0
    rx_mbps: float = 0.0
    tx_fps: float = 0.0
    tx_mbps: float = 0.0
    drops_ps: float = 0.0

    @property
    def fps(self) -> float:
        """Frames/s both ways: what `top` sorts by."""
        return self.rx_fps + self.tx_fps


@dataclass(frozen=True)
class NetClientRow:
    """What a sample knows of one NetClient besides its counters."""

    node: str
    netclient: str
    service: str
    #: The link word `status` shows (cli.format.link_state_text).
    link: str
    info: netclient_pb2.NetClientInfo


@dataclass(frozen=True)
class Sample:
    """Each NetClient's counters at monotonic time ``at`` (seconds)."""

    at: float
    counters: Mapping[Key, Counters]
    rows: Mapping[Key, NetClientRow] = field(default_factory=dict)


def _delta(before: int, after: int) -> int:
    return after - before if after >= before else after


def rate(before: Counters, after: Counters, seconds: float) -> Rate:
    """The rates of one NetClient from two readings ``seconds`` apart (> 0)."""
    if seconds <= 0:
        raise ConfigError(f"samples {seconds} s apart: rates need a later second sample")
    return Rate(
        rx_fps=_delta(before.rx_frames, after.rx_frames) / seconds,
        rx_mbps=_delta(before.rx_bytes, after.rx_bytes) * 8 / 1e6 / seconds,
        tx_fps=_delta(before.tx_frames, after.tx_frames) / seconds,
        tx_mbps=_delta(before.tx_bytes, after.tx_bytes) * 8 / 1e6 / seconds,
        drops_ps=_delta(before.dropped, after.dropped) / seconds)


def rates(before: Sample, after: Sample) -> dict[Key, Rate]:
    """The rates of every NetClient in ``after``; one new since ``before`` counts from 0."""
    seconds = after.at - before.at
    return {key: rate(before.counters.get(key, Counters()), now, seconds)
            for key, now in after.counters.items()}


def sample_of(resp: orchestrator_pb2.OrchestratorServiceGetStatusResponse,
              at: float) -> Sample:
    """A Sample from GetStatus's answer, taken at monotonic time ``at``."""
    counters: dict[Key, Counters] = {}
    rows: dict[Key, NetClientRow] = {}
    for node in resp.nodes:
        for nc in node.netclients:
            key = (node.name, nc.name)
            counters[key] = Counters.of(nc.info.counters)
            rows[key] = NetClientRow(node=node.name, netclient=nc.name, service=nc.service,
                                     link=link_state_text(nc.info), info=nc.info)
    return Sample(at=at, counters=counters, rows=rows)
