"""Prometheus ``/metrics`` for a ServiceHost (``--metrics-listen``; docs/metrics.md).

Nothing here runs per frame. The counters the data path already keeps (NetClient
stats, queue and link counters, e1000 registers, guest-memory counters) are read
at scrape time: prometheus-client's own HTTP server thread has the service's
event loop run the snapshot (``ServiceHost.collect_metrics``, a generator filling
a plain ``MetricSet``) one step per loop callback, SNAPSHOT_STEP NetClients a
step, waiting for each, and turns the set into metric families in that thread.
The loop is held only for one step at a time; the longest hold is itself a
metric (``virtwire_metrics_snapshot_seconds``). The one per-call cost is the RPC
latency histogram (``RpcMetricsInterceptor``), per RPC.

Every family carries the ``lan`` and ``service`` labels of the process
(``--metrics-lan``, ``--metrics-service``); per-NetClient families add
``netclient``.

The endpoint binds loopback by default. Elsewhere it follows docs/security.md:
with the process's TLS identity it serves HTTPS with the service's certificate
and requires a client certificate from the same CA; without one a
non-loopback address is refused unless ``--insecure`` (then logged).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import grpc
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from virtwire import tls, tracing
from virtwire.address import SockAddr, parse_sockaddr
from virtwire.errors import ConfigError
from virtwire.rpc.status import WrappingInterceptor

if TYPE_CHECKING:
    from virtwire.link import LinkPeer
    from virtwire.mem.guestmem import MemCounters
    from virtwire.server.registry import NetClientRegistry
    from virtwire.server.tracesetup import TraceSetup

logger = logging.getLogger(__name__)

PREFIX = "virtwire_"
#: How long a scrape waits for a step of the snapshot before answering without it.
SNAPSHOT_TIMEOUT_S = 5.0
#: NetClients read per step of a snapshot (one event-loop callback each): a 256-port
#: hub is read in 8 steps of about a millisecond each, not one of several.
SNAPSHOT_STEP = 32
#: The RPC latency histogram's buckets, in seconds (100 us to 10 s).
RPC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
               0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: The labels every family has.
BASE_LABELS = ("lan", "service")

Kind = Literal["counter", "gauge"]
#: A snapshot: fills a MetricSet, yielding where the event loop may run in between.
Snapshot = Generator[None, None, None]


@dataclass
class Family:
    """One metric family of a snapshot: its samples as (label values, value)."""

    kind: Kind
    help: str
    labelnames: tuple[str, ...]
    samples: list[tuple[tuple[str, ...], float]] = field(default_factory=list)


class MetricSet:
    """A snapshot of counters, by family name (counters without ``_total``:
    prometheus-client's counter families add it)."""

    def __init__(self) -> None:
        self.families: dict[str, Family] = {}

    def _add(self, kind: Kind, name: str, help: str, value: float,
             labels: dict[str, str]) -> None:
        if not name.startswith(PREFIX) or name.endswith("_total"):
            raise ValueError(f"bad metric family name {name!r}")
        fam = self.families.get(name)
        names = tuple(labels)
        if fam is None:
            fam = self.families[name] = Family(kind, help, names)
        elif fam.kind != kind or fam.labelnames != names:
            raise ValueError(f"metric {name}: {kind}{names} after {fam.kind}{fam.labelnames}")
        fam.samples.append((tuple(labels.values()), float(value)))

    def counter(self, name: str, help: str, value: float, **labels: str) -> None:
        self._add("counter", name, help, value, labels)

    def gauge(self, name: str, help: str, value: float, **labels: str) -> None:
        self._add("gauge", name, help, value, labels)

    def to_families(self, base: dict[str, str]) -> Iterator[Metric]:
        """prometheus-client families, each sample labelled ``base`` first."""
        base_names = list(base)
        base_values = list(base.values())
        for name, fam in self.families.items():
            labelnames = [*base_names, *fam.labelnames]
            metric: CounterMetricFamily | GaugeMetricFamily
            if fam.kind == "counter":
                metric = CounterMetricFamily(name, fam.help, labels=labelnames)
            else:
                metric = GaugeMetricFamily(name, fam.help, labels=labelnames)
            for values, value in fam.samples:
                metric.add_metric([*base_values, *values], value)
            yield metric


class SnapshotCollector(Collector):
    """A custom collector: one snapshot taken on the service's event loop per scrape."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 snapshot: Callable[[MetricSet], Snapshot], base: dict[str, str]) -> None:
        self.loop = loop
        self.snapshot = snapshot
        self.base = base
        #: Scrapes answered without a snapshot (loop busy past the timeout, or closed).
        self.failures = 0
        #: The longest step of the last scrape's snapshot, in seconds.
        self.longest_step_s = 0.0

    def _step(self, ms: MetricSet, steps: list[Snapshot]) -> bool:
        """Runs on the loop: one step of the snapshot; False once it is complete."""
        start = time.perf_counter()
        try:
            if not steps:
                steps.append(self.snapshot(ms))
            next(steps[0])
            more = True
        except StopIteration:
            more = False
        self.longest_step_s = max(self.longest_step_s, time.perf_counter() - start)
        return more

    def _on_loop(self, ms: MetricSet, steps: list[Snapshot]) -> bool:
        fut: concurrent.futures.Future[bool] = concurrent.futures.Future()

        def run() -> None:
            if not fut.set_running_or_notify_cancel():
                return
            try:
                fut.set_result(self._step(ms, steps))
            except BaseException as exc:
                fut.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        try:
            return fut.result(timeout=SNAPSHOT_TIMEOUT_S)
        finally:
            fut.cancel()

    def collect(self) -> Iterator[Metric]:
        ms = MetricSet()
        steps: list[Snapshot] = []
        self.longest_step_s = 0.0
        try:
            while self._on_loop(ms, steps):
                pass
        except Exception as exc:
            ms = MetricSet()
            self.failures += 1
            logger.warning("metrics: no snapshot from the event loop: %s",
                           exc or type(exc).__name__)
        finally:
            if steps:
                # Closed on the loop's thread or not at all: it only reads counters.
                with contextlib.suppress(RuntimeError):
                    self.loop.call_soon_threadsafe(steps[0].close)
        ms.gauge("virtwire_metrics_snapshot_seconds",
                 "The longest the last scrape's snapshot held the event loop at once",
                 self.longest_step_s)
        ms.counter("virtwire_metrics_snapshot_failures",
                   "Scrapes answered without a snapshot (event loop busy or closed)",
                   self.failures)
        yield from ms.to_families(self.base)


# -- RPC latency -------------------------------------------------------------------
def rpc_histogram(registry: CollectorRegistry, base: dict[str, str]) -> Histogram:
    return Histogram("virtwire_rpc_server_handling_seconds",
                     "Time from an RPC's start to its status, by method and status code",
                     labelnames=[*base, "method", "code"], buckets=RPC_BUCKETS,
                     registry=registry)


def _code_name(context: grpc.aio.ServicerContext[Any, Any], default: str) -> str:
    code: Any = None
    with contextlib.suppress(Exception):
        code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return status.name
    return default


class RpcMetricsInterceptor(WrappingInterceptor):
    """Observes every RPC's duration and final status code in one histogram.

    Listed first, so it sees the status the error interceptor set.
    """

    def __init__(self, histogram: Histogram, base: dict[str, str]) -> None:
        self.histogram = histogram
        self.base = base

    @contextlib.asynccontextmanager
    async def _observe(self, context: grpc.aio.ServicerContext[Any, Any],
                       method: str) -> AsyncIterator[None]:
        start = time.perf_counter()
        code = "OK"
        try:
            yield
        except (asyncio.CancelledError, GeneratorExit):
            code = "CANCELLED"
            raise
        except BaseException:
            code = _code_name(context, "UNKNOWN")
            raise
        else:
            code = _code_name(context, "OK")
        finally:
            self.histogram.labels(**self.base, method=method, code=code).observe(
                time.perf_counter() - start)

    def around(self, context: grpc.aio.ServicerContext[Any, Any],
               method: str) -> contextlib.AbstractAsyncContextManager[None]:
        return self._observe(context, method)


# -- the endpoint ------------------------------------------------------------------
def parse_metrics_listen(text: str) -> SockAddr:
    """``--metrics-listen ADDR:PORT`` (TCP only: prometheus scrapes HTTP over TCP);
    a bare PORT is loopback's, 127.0.0.1:PORT."""
    if text.isdigit():
        text = f"127.0.0.1:{text}"
    addr = parse_sockaddr(text)
    if addr.is_unix:
        raise ConfigError(f"--metrics-listen {text}: give ADDR:PORT, not a unix socket")
    return addr


class MetricsEndpoint:
    """prometheus-client's HTTP(S) server thread serving one service's /metrics."""

    def __init__(self, addr: SockAddr, *, insecure: bool = False, what: str = "virtwire") -> None:
        self.addr = addr
        self.insecure = insecure
        self.what = what
        self.registry = CollectorRegistry()
        self.port = 0
        self.https = False
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return str(SockAddr(self.addr.host, self.port))

    def start(self) -> None:
        """Bind and serve; ConfigError for a used port or a refused address."""
        config = tls.active()
        kwargs: dict[str, Any] = {}
        if config is not None:
            kwargs = {"certfile": str(config.cert), "keyfile": str(config.key),
                      "client_cafile": str(config.ca), "client_auth_required": True}
        elif not tls.is_local(self.addr):
            if not self.insecure:
                raise ConfigError(
                    f"{self.what}: refusing to serve metrics on {self.addr} without TLS: "
                    "give --tls-dir (or --tls-ca/--tls-cert/--tls-key), or --insecure to "
                    "let anyone who reaches the address read them, or a loopback address")
            logger.warning("%s: metrics on %s WITHOUT TLS (--insecure)", self.what, self.addr)
        host = self.addr.host.strip("[]")
        try:
            server, thread = start_http_server(self.addr.port, host, self.registry, **kwargs)
        except OSError as exc:
            why = ("address in use" if exc.errno == errno.EADDRINUSE
                   else exc.strerror or str(exc))
            raise ConfigError(f"{self.what}: cannot serve metrics on {self.addr}: {why}"
                              ) from None
        self._server, self._thread = server, thread
        self.port = int(server.server_port)
        self.https = config is not None
        logger.info("%s metrics on %s://%s/metrics", self.what,
                    "https" if self.https else "http", self.address)

    def stop(self) -> None:
        """Blocks until the server thread ends (up to its poll interval): call off the loop."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None




# -- what every service has: its NetClients, their links, its server counters ----------
#: NetClientCounters fields that are drops, by ``cause`` label.
DROP_CAUSES = ("queue_full", "link_down", "refused", "malformed", "purged", "filter", "switch")


def registry_metrics(registry: NetClientRegistry, ms: MetricSet) -> Snapshot:
    """Per NetClient: frames and bytes each way, drops by cause, queues, link state;
    per link: batches, credits, completions; the server's own counters. Yields
    every SNAPSHOT_STEP NetClients (one gone meanwhile is still read: its counters
    are plain attributes)."""
    from virtwire.link import LinkPeer
    from virtwire.v1 import netclient_pb2

    state_names = {v: k.removeprefix("LINK_STATE_").lower()
                   for k, v in netclient_pb2.LinkState.items()}
    ncs = registry.all()
    ms.gauge("virtwire_netclients", "NetClients this service hosts", len(ncs))
    for i, nc in enumerate(ncs):
        if i and i % SNAPSHOT_STEP == 0:
            yield
        info = registry.info(nc)
        c = info.counters
        name = nc.name
        for direction, frames, nbytes in (("rx", c.rx_frames, c.rx_bytes),
                                          ("tx", c.tx_frames, c.tx_bytes)):
            ms.counter("virtwire_netclient_frames",
                       "Frames a NetClient received (rx: delivered to it) or sent (tx)",
                       frames, netclient=name, direction=direction)
            ms.counter("virtwire_netclient_bytes", "Bytes of those frames", nbytes,
                       netclient=name, direction=direction)
        for cause in DROP_CAUSES:
            ms.counter("virtwire_netclient_dropped_frames",
                       "Frames a NetClient dropped, by cause (docs/queues.md)",
                       getattr(c, f"dropped_{cause}"), netclient=name, cause=cause)
        ms.counter("virtwire_netclient_capture_dropped_frames",
                   "Frames capture subscribers lost for not keeping up", c.capture_dropped,
                   netclient=name)
        ms.counter("virtwire_netclient_flush_sliced",
                   "Queue flushes that stopped at the per-turn budget", c.flush_sliced,
                   netclient=name)
        ms.gauge("virtwire_netclient_queued_frames",
                 "Frames waiting: in the NetClient's incoming queue, or to cross its link",
                 c.queue_len, netclient=name, queue="incoming")
        ms.gauge("virtwire_netclient_queued_frames",
                 "Frames waiting: in the NetClient's incoming queue, or to cross its link",
                 c.peer_queue_len, netclient=name, queue="link")
        ms.gauge("virtwire_netclient_capture_subscribers", "Capture streams watching it",
                 c.capture_subscribers, netclient=name)
        current = state_names.get(info.link_state, "unspecified")
        for state in ("no_peer", "connecting", "up"):
            ms.gauge("virtwire_netclient_link_state",
                     "1 for the NetClient's link state (no_peer, connecting, up)",
                     1 if state == current else 0, netclient=name, state=state)
        ms.gauge("virtwire_netclient_link_down",
                 "1 while the NetClient's link is set down (set_link / SetLink)",
                 1 if info.link_down else 0, netclient=name)
        peer = nc.peer
        if isinstance(peer, LinkPeer):
            _link_metrics(peer, name, ms)
    s = registry.server_counters()
    for fd in s.DESCRIPTOR.fields:
        value = getattr(s, fd.name)
        if fd.name == "max_capture_subscribers":
            ms.gauge("virtwire_server_max_capture_subscribers",
                     "Capture streams one NetClient takes (--max-captures)", value)
        else:
            ms.counter(f"virtwire_server_{fd.name}",
                       f"ServerCounters.{fd.name} (docs/metrics.md)", value)


def trace_metrics(trace: TraceSetup | None, ms: MetricSet) -> None:
    """The span ring's overflow, always; with the service's tracing flags set
    up (``trace`` started once), each exporter's spans exported and lost."""
    ms.counter("virtwire_trace_spans_ring_dropped",
               "Spans pushed out of the in-memory ring (TraceService) before being read",
               tracing.recent().dropped)
    if trace is None:
        return
    for kind, counts in list(trace.counts.items()):
        ms.counter("virtwire_trace_spans_exported",
                   "Spans an exporter (otlp: --trace-otlp, file: --trace-file) exported",
                   counts.exported, exporter=kind)
        ms.counter("virtwire_trace_spans_export_failed",
                   "Spans an exporter failed to export (an export that failed, or not "
                   "exported by the deadline at exit)", counts.failed, exporter=kind)


def _link_metrics(peer: LinkPeer, name: str, ms: MetricSet) -> None:
    ms.counter("virtwire_link_batches_sent", "Batches this side sent over the link",
               peer.batches_sent, netclient=name)
    ms.gauge("virtwire_link_credits",
             "Credits: available (granted by the remote, unused), granted (to the remote, "
             "unused), in_flight (frames sent whose credit has not come back)",
             peer.credits, netclient=name, kind="available")
    ms.gauge("virtwire_link_credits",
             "Credits: available (granted by the remote, unused), granted (to the remote, "
             "unused), in_flight (frames sent whose credit has not come back)",
             peer.remote_credits, netclient=name, kind="granted")
    ms.gauge("virtwire_link_credits",
             "Credits: available (granted by the remote, unused), granted (to the remote, "
             "unused), in_flight (frames sent whose credit has not come back)",
             peer.on_wire, netclient=name, kind="in_flight")
    ms.gauge("virtwire_link_window", "The link's credit window (frames)", peer.window,
             netclient=name)
    ms.counter("virtwire_link_credits_refused",
               "Credits the remote granted beyond the window (clamped away)",
               peer.credits_refused, netclient=name)
    ms.counter("virtwire_link_completions_requested",
               "Frames sent with a completion request", peer.completions_requested,
               netclient=name)
    ms.counter("virtwire_link_completions_refused",
               "The remote's completion requests refused beyond the window",
               peer.completions_refused, netclient=name)
    ms.gauge("virtwire_link_completions_pending",
             "The remote's frames with a completion request queued here, unanswered",
             peer.pending_requests, netclient=name)
    ms.counter("virtwire_link_protocol_errors",
               "Link sessions ended because the remote broke the protocol",
               peer.protocol_errors, netclient=name)
    for transport in ("grpc", "unix"):
        ms.gauge("virtwire_link_transport",
                 "1 for what carries the link's batches: grpc (the stream) or unix "
                 "(the same-host socket)", 1 if peer.transport == transport else 0,
                 netclient=name, transport=transport)


def mem_metrics(counters: MemCounters, ms: MetricSet, **labels: str) -> None:
    """Guest-memory accesses split shared memory / RPC (``MemCounters``)."""
    for path in ("shm", "rpc"):
        for op, verb in (("read", "reads"), ("write", "writes")):
            ms.counter("virtwire_dma_operations",
                       "Guest-memory DMA operations, by op and path (shm: shared memory, "
                       "rpc: over gRPC)", getattr(counters, f"{path}_{verb}"),
                       **labels, op=op, path=path)
            ms.counter("virtwire_dma_bytes", "Bytes of those operations",
                       getattr(counters, f"{path}_bytes_{'read' if op == 'read' else 'written'}"),
                       **labels, op=op, path=path)
    ms.counter("virtwire_dma_rpc_batches", "Batched DMA RPCs", counters.rpc_batches, **labels)
    ms.counter("virtwire_dma_errors", "DMA requests refused, by cause",
               counters.out_of_range, **labels, cause="out_of_range")
    ms.counter("virtwire_dma_errors", "DMA requests refused, by cause",
               counters.invalid_requests, **labels, cause="invalid_request")


__all__ = ["MetricSet", "MetricsEndpoint", "RpcMetricsInterceptor", "Snapshot",
           "SnapshotCollector", "mem_metrics", "parse_metrics_listen", "registry_metrics",
           "rpc_histogram", "trace_metrics"]
