"""A server's tracing from its own command line (docs/tracing.md).

``--trace-file PATH`` (JSON lines, one span a line), ``--trace-otlp ENDPOINT``
(an OpenTelemetry collector over OTLP/gRPC) and ``--trace-sample 1/N|off``
(the rate its ingress NetClients start with). Only local flags name these: no
RPC names a file to write or a collector to dial. ``TraceSetup.start`` builds
the exporters and names the process's spans (``tracing.configure``);
``stop`` flushes them, within EXPORT_SHUTDOWN_S in all. Each exporter is
wrapped in a ``CountingExporter`` that counts the spans it exported and those
it lost (``ExportCounts``, shown in /metrics, docs/metrics.md).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)

from virtwire import tls, tracing
from virtwire.address import SockAddr, shorten
from virtwire.errors import ConfigError
from virtwire.net.net import NetClient
from virtwire.tracing import Sampler

logger = logging.getLogger(__name__)

#: How long one OTLP export may take (seconds) before it is given up.
OTLP_TIMEOUT_S = 10.0
#: How long the flush at exit may take in all (seconds), whatever the collector
#: does: then the exporters are shut down, which ends an OTLP export in flight
#: (its channel closes) and its retries, and the spans not yet exported are
#: counted as failed. Well inside the 10 s a ServiceProcess waits after SIGTERM.
EXPORT_SHUTDOWN_S = 3.0


@dataclass
class ExportCounts:
    """Spans one exporter exported, and spans it failed to (an export that
    returned FAILURE or raised, or one refused after the exporter was shut
    down). Plain ints: only the exporter's batch processor thread adds to them
    (its exports are serialized), /metrics reads them."""

    exported: int = 0
    failed: int = 0


class CountingExporter(SpanExporter):
    """``inner``, counting into ``counts`` what it does with each batch.

    ``shutdown`` (the batch processor's at exit, or ``TraceSetup.stop``'s at the
    deadline, whichever comes first) shuts ``inner`` down once; an export after
    that fails at once, counted, without reaching ``inner``."""

    def __init__(self, inner: SpanExporter, counts: ExportCounts) -> None:
        self.inner = inner
        self.counts = counts
        self._lock = threading.Lock()
        self._shut = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shut:
            self.counts.failed += len(spans)
            return SpanExportResult.FAILURE
        try:
            result = self.inner.export(spans)
        except Exception:
            self.counts.failed += len(spans)
            raise  # the batch processor logs it
        if result is SpanExportResult.SUCCESS:
            self.counts.exported += len(spans)
        else:
            self.counts.failed += len(spans)
        return result

    def shutdown(self) -> None:
        with self._lock:
            if self._shut:
                return
            self._shut = True
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def json_line(span: ReadableSpan) -> str:
    """One span of ``--trace-file``: the SDK's JSON of it on one line."""
    text: str = span.to_json(indent=None)
    return text + "\n"


def parse_otlp_endpoint(text: str) -> tuple[SockAddr, bool]:
    """``HOST:PORT``, ``http://HOST:PORT`` or ``https://HOST:PORT`` -> (address,
    TLS wanted); ConfigError otherwise (``tracing.parse_otlp_endpoint``, the one
    syntax check that ``up``/``render`` use too). ``http://`` asks for plaintext,
    ``https://`` for TLS; a bare address gets plaintext on loopback and TLS
    elsewhere."""
    endpoint = tracing.parse_otlp_endpoint(text)
    addr = SockAddr(host=endpoint.host, port=endpoint.port)
    return addr, endpoint.tls if endpoint.tls is not None else not tls.is_local(addr)


def otlp_exporter(text: str) -> OTLPSpanExporter:
    """The OTLP/gRPC exporter of ``--trace-otlp``: mutual TLS with this process's
    identity (the TLS flags), or plaintext to a loopback collector only."""
    addr, want_tls = parse_otlp_endpoint(text)
    identity = tls.active()
    if want_tls or (identity is not None and not tls.is_local(addr)):
        if identity is None:
            raise ConfigError(f"--trace-otlp {shorten(text)}: the collector is not on "
                              "loopback, so spans go over TLS: give --tls-dir (or "
                              "--tls-ca/--tls-cert/--tls-key), whose CA must have signed "
                              "the collector's certificate")
        return OTLPSpanExporter(endpoint=addr.grpc_target, insecure=False,
                                credentials=identity.channel_credentials(),
                                timeout=OTLP_TIMEOUT_S, compression=grpc.Compression.NoCompression)
    if not tls.is_local(addr):
        raise ConfigError(f"--trace-otlp {shorten(text)}: refusing plaintext to a collector "
                          "off loopback: write https://HOST:PORT and give the TLS flags")
    return OTLPSpanExporter(endpoint=addr.grpc_target, insecure=True,
                            timeout=OTLP_TIMEOUT_S, compression=grpc.Compression.NoCompression)


@dataclass
class TraceSetup:
    """What a server's tracing flags asked for, and the exporters it made."""

    #: The ``service.name`` of its spans (its --log-name, else its kind).
    service: str = ""
    #: The ``virtwire.lan`` resource attribute ("" for none).
    lan: str = ""
    #: ``--trace-file``: JSON lines appended here ("": none).
    file: str = ""
    #: ``--trace-otlp``: the collector ("": none).
    otlp: str = ""
    #: ``--trace-sample``: one frame in N on every ingress NetClient (0: off).
    every: int = 0
    #: Per exporter kind ("otlp", "file"), from the first start on; kept across
    #: restarts so that the counts only grow.
    counts: dict[str, ExportCounts] = field(default_factory=dict, repr=False)
    _out: IO[str] | None = field(default=None, repr=False)
    _started: bool = field(default=False, repr=False)
    _exporters: list[CountingExporter] = field(default_factory=list, repr=False)

    @classmethod
    def from_flags(cls, service: str, lan: str, file: str, otlp: str,
                   sample: str) -> TraceSetup:
        """Check the flags (ConfigError with the reason), opening nothing yet."""
        setup = cls(service=service, lan=lan, file=file, otlp=otlp,
                    every=tracing.parse_sample(sample) if sample else 0)
        if otlp:
            parse_otlp_endpoint(otlp)
        if file:
            parent = Path(file).parent
            if not parent.is_dir():
                raise ConfigError(f"--trace-file {shorten(file)}: {parent} is not a directory")
        return setup

    def _counting(self, kind: str, inner: SpanExporter) -> CountingExporter:
        exporter = CountingExporter(inner, self.counts.setdefault(kind, ExportCounts()))
        self._exporters.append(exporter)
        return exporter

    def processors(self) -> list[SpanProcessor]:
        """The exporters' processors (opens the file, makes the OTLP channel).
        The file's comes first: the provider shuts its processors down in turn,
        and a local write should not wait behind a collector."""
        procs: list[SpanProcessor] = []
        if self.otlp:
            procs.append(BatchSpanProcessor(self._counting("otlp", otlp_exporter(self.otlp))))
        if self.file:
            try:
                out = open(self.file, "a", encoding="utf-8")  # closed in stop
            except OSError as exc:
                for proc in procs:
                    proc.shutdown()
                self._exporters.clear()
                raise ConfigError(f"--trace-file {shorten(self.file)}: "
                                  f"{exc.strerror}") from None
            self._out = out
            procs.insert(0, BatchSpanProcessor(self._counting(
                "file", ConsoleSpanExporter(out=out, formatter=json_line))))
        return procs

    @property
    def started(self) -> bool:
        return self._started

    def start(self) -> None:
        """Name this process's spans and attach the exporters."""
        tracing.configure(self.service, self.lan, self.processors())
        self._started = True
        logger.info("tracing: sample %s%s%s", f"1/{self.every}" if self.every else "off",
                    f", file {self.file}" if self.file else "",
                    f", OTLP {self.otlp}" if self.otlp else "")

    def arm(self, nc: NetClient) -> None:
        """``--trace-sample`` on ``nc`` if frames enter the LAN there and nothing
        armed it yet."""
        if self.every and nc.ingress_span and nc.sampler is None:
            nc.sampler = Sampler(every=self.every)

    def stop(self) -> None:
        """Flush and close the exporters (a BatchSpanProcessor's shutdown exports
        what it holds), within EXPORT_SHUTDOWN_S: at that deadline a timer shuts
        the exporters down, so that an unreachable collector's export in flight
        ends and the batches still queued fail at once, counted. The process
        keeps a provider with only the ring, so a span made after this (a late
        frame) still has somewhere to go."""
        if self._started:
            self._started = False
            exporters, self._exporters = self._exporters, []

            def give_up() -> None:
                for exporter in exporters:
                    exporter.shutdown()

            timer = threading.Timer(EXPORT_SHUTDOWN_S, give_up)
            timer.daemon = True
            timer.start()
            try:
                tracing.configure(self.service, self.lan, ())  # shuts the old one down
            finally:
                timer.cancel()
            for kind, counts in self.counts.items():
                logger.log(logging.WARNING if counts.failed else logging.INFO,
                           "tracing: %s exporter: %d spans exported, %d failed",
                           kind, counts.exported, counts.failed)
        else:
            self._exporters.clear()
        out, self._out = self._out, None
        if out is not None:
            out.close()


__all__ = ["EXPORT_SHUTDOWN_S", "CountingExporter", "ExportCounts", "TraceSetup", "json_line",
           "otlp_exporter", "parse_otlp_endpoint"]
