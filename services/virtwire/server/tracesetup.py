"""A server's tracing from its own command line (docs/tracing.md).

``--trace-file PATH`` (JSON lines, one span a line), ``--trace-otlp ENDPOINT``
(an OpenTelemetry collector over OTLP/gRPC) and ``--trace-sample 1/N|off``
(the rate its ingress NetClients start with). Only local flags name these: no
RPC names a file to write or a collector to dial. ``TraceSetup.start`` builds
the exporters and names the process's spans (``tracing.configure``);
``stop`` flushes them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

from virtwire import tls, tracing
from virtwire.address import SockAddr, shorten
from virtwire.errors import ConfigError
from virtwire.net.net import NetClient
from virtwire.tracing import Sampler

logger = logging.getLogger(__name__)

#: How long one OTLP export may take (seconds) before it is given up.
OTLP_TIMEOUT_S = 10.0


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
    _out: IO[str] | None = field(default=None, repr=False)
    _started: bool = field(default=False, repr=False)

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

    def processors(self) -> list[SpanProcessor]:
        """The exporters' processors (opens the file, makes the OTLP channel)."""
        procs: list[SpanProcessor] = []
        if self.otlp:
            procs.append(BatchSpanProcessor(otlp_exporter(self.otlp)))
        if self.file:
            try:
                out = open(self.file, "a", encoding="utf-8")  # closed in stop
            except OSError as exc:
                for proc in procs:
                    proc.shutdown()
                raise ConfigError(f"--trace-file {shorten(self.file)}: "
                                  f"{exc.strerror}") from None
            self._out = out
            procs.append(BatchSpanProcessor(ConsoleSpanExporter(out=out,
                                                                formatter=json_line)))
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
        what it holds). The process keeps a provider with only the ring, so a
        span made after this (a late frame) still has somewhere to go."""
        if self._started:
            self._started = False
            tracing.configure(self.service, self.lan, ())  # shuts the old one down
        out, self._out = self._out, None
        if out is not None:
            out.close()


__all__ = ["TraceSetup", "json_line", "otlp_exporter", "parse_otlp_endpoint"]
