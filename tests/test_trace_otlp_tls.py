"""--trace-otlp to a collector that only speaks TLS (docs/tracing.md, "Where
spans go"): a real ``virtwire serve tap`` with ``https://`` and the shared TLS
flags exports its spans over mutual TLS, trusting the collector through the
flags' CA and showing its own certificate; with ``http://`` to the same
collector nothing arrives, the service keeps answering, logs why the export
failed, and still stops on SIGTERM within a few seconds however many batches
wait. Its /metrics counts the spans each way (docs/metrics.md, tracing)."""

from __future__ import annotations

import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from virtwire import certs
from virtwire.orchestrator.launch import ServiceProcess
from virtwire.server.tracesetup import EXPORT_SHUTDOWN_S, OTLP_TIMEOUT_S
from virtwire.v1 import netclient_pb2, netclient_pb2_grpc, trace_pb2, trace_pb2_grpc

from support.doubles import frame
from support.procs import serve

#: The batch span processor's delay (ms) in the children: spans leave in well
#: under a second instead of the SDK's 5 s (an OpenTelemetry SDK variable).
SCHEDULE_DELAY_MS = "200"


@dataclass
class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """A collector's OTLP/gRPC trace endpoint on loopback that requires mutual
    TLS; keeps what it is sent. A threaded server, so it answers while the test
    waits on a child process."""

    requests: list[trace_service_pb2.ExportTraceServiceRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
               context: grpc.ServicerContext) -> trace_service_pb2.ExportTraceServiceResponse:
        with self.lock:
            self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[tuple[str, str, bytes, bytes]]:
        """(service.name, span name, trace id, parent span id) of each span."""
        out: list[tuple[str, str, bytes, bytes]] = []
        with self.lock:
            requests = list(self.requests)
        for req in requests:
            for rs in req.resource_spans:
                service = next(a.value.string_value for a in rs.resource.attributes
                               if a.key == "service.name")
                for ss in rs.scope_spans:
                    out.extend((service, s.name, s.trace_id, s.parent_span_id)
                               for s in ss.spans)
        return out


@dataclass
class Pki:
    """One CA: the collector's, the service's and a controller's certificates."""

    dir: Path

    def pem(self, name: str) -> tuple[bytes, bytes]:
        """(certificate, key) of ``name``."""
        return (certs.cert_path(self.dir, name).read_bytes(),
                certs.key_path(self.dir, name).read_bytes())

    def channel(self, address: str) -> grpc.Channel:
        cert, key = self.pem("controller")
        creds = grpc.ssl_channel_credentials(
            root_certificates=(self.dir / certs.CA_CERT).read_bytes(),
            private_key=key, certificate_chain=cert)
        return grpc.secure_channel(address, creds)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("otlp-pki") / "ca"
    ca = certs.init_ca(base)
    for name, role in (("collector", "service"), ("svc", "service"),
                       ("controller", "controller")):
        ca.issue_to(base, name, [], role)  # loopback SANs are always in
    return Pki(base)


@pytest.fixture
def collector(pki: Pki) -> Iterator[tuple[Collector, int]]:
    """The TLS-only collector on 127.0.0.1: (servicer, port)."""
    servicer = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        servicer, server)
    cert, key = pki.pem("collector")
    creds = grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=(pki.dir / certs.CA_CERT).read_bytes(),
        require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", creds)
    assert port
    server.start()
    try:
        yield servicer, port
    finally:
        server.stop(None).wait(5)


def inject(pki: Pki, svc: ServiceProcess, repeat: int) -> int:
    """``repeat`` copies of a frame into the tap service's ``vm``, over its TLS
    port; how many it answered for. Nobody is connected to the backend, so they
    are dropped there, after the sampler gave each its ``inject`` span."""
    with pki.channel(svc.address) as ch:
        got = netclient_pb2_grpc.NetClientServiceStub(ch).Inject(
            netclient_pb2.InjectRequest(name="vm", frame=frame(7), repeat=repeat), timeout=5)
    return int(got.accepted + got.dropped)


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tap_args(pki: Pki, endpoint: str, metrics: str) -> list[str]:
    return ["--backend", "stream,listen=127.0.0.1:0,id=vm", "--log-name", "otlp-tap",
            "--trace-sample", "1/1", "--trace-otlp", endpoint,
            "--tls-dir", str(pki.dir), "--tls-name", "svc", "--metrics-listen", metrics]


def trace_counts(pki: Pki, metrics: str) -> dict[str, float]:
    """The service's trace span counters from its /metrics (HTTPS: it has a TLS
    identity, so it wants a client certificate): exported, failed (the otlp
    exporter's) and ring_dropped."""
    ctx = ssl.create_default_context(cafile=str(pki.dir / certs.CA_CERT))
    ctx.check_hostname = False
    ctx.load_cert_chain(str(certs.cert_path(pki.dir, "controller")),
                        str(certs.key_path(pki.dir, "controller")))
    with urllib.request.urlopen(f"https://{metrics}/metrics", timeout=10,
                                context=ctx) as resp:
        text = resp.read().decode()
    wanted = {"virtwire_trace_spans_exported_total": "exported",
              "virtwire_trace_spans_export_failed_total": "failed",
              "virtwire_trace_spans_ring_dropped_total": "ring_dropped"}
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            key = wanted.get(sample.name)
            if key is None:
                continue
            assert sample.labels["service"] == "tap", sample
            assert sample.labels.get("exporter", "otlp") == "otlp", sample
            out[key] = sample.value
    assert set(out) == set(wanted.values()), text
    return out


def test_https_collector_gets_the_spans_over_mutual_tls(
        pki: Pki, collector: tuple[Collector, int], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    receiver, port = collector
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", SCHEDULE_DELAY_MS)
    metrics = f"127.0.0.1:{free_port()}"
    with serve("tap", tap_args(pki, f"https://127.0.0.1:{port}", metrics), tmp_path) as svc:
        assert trace_counts(pki, metrics) == {"exported": 0, "failed": 0, "ring_dropped": 0}
        assert inject(pki, svc, 3) == 3
        # Exported while the service runs (not only by the flush at exit).
        wait_for(lambda: sum(s[1] == "inject" for s in receiver.spans()) >= 3, 15,
                 "three inject spans at the collector")
        # Counted once the export has returned, which is just after the collector
        # kept the request.
        wait_for(lambda: trace_counts(pki, metrics)["exported"] >= 3, 5,
                 "the spans counted as exported")
        counts = trace_counts(pki, metrics)
        assert counts["exported"] == len(receiver.spans()), (counts, receiver.spans())
        assert counts["failed"] == 0
    spans = [s for s in receiver.spans() if s[1] == "inject"]
    assert [(s[0], s[1], s[3]) for s in spans] == [("otlp-tap", "inject", b"")] * 3, spans
    assert len({s[2] for s in spans}) == 3  # each frame is its own trace
    assert all(len(s[2]) == 16 for s in spans)
    assert "Failed to export" not in svc.log.read_text()


def test_plaintext_to_a_tls_only_collector_fails_logged_and_does_not_hang(
        pki: Pki, collector: tuple[Collector, int], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``http://`` on loopback is plaintext even with the TLS flags given (the
    service's own port still takes TLS). The collector refuses the handshake;
    the exporter retries in the batch processor's thread, not the event loop,
    so the service goes on answering; the SDK logs each failure in the
    service's log and, at the export's deadline, drops the batch, counted in
    /metrics as failed. SIGTERM with many batches still queued behind the one
    in flight gives up on them at EXPORT_SHUTDOWN_S, counting them too, instead
    of waiting out each one's timeout."""
    receiver, port = collector
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", SCHEDULE_DELAY_MS)
    # Batches of 2 spans: the 40 frames injected below wait as 20 batches.
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2")
    endpoint = f"127.0.0.1:{port}"
    metrics = f"127.0.0.1:{free_port()}"
    with serve("tap", tap_args(pki, f"http://{endpoint}", metrics), tmp_path) as svc:
        assert inject(pki, svc, 3) == 3
        wait_for(lambda: "Transient error StatusCode.UNAVAILABLE encountered while "
                         f"exporting traces to {endpoint}" in svc.log.read_text(), 15,
                 "the exporter's first failure in the service's log")
        # The exporter is retrying now; the service still answers at once (a call
        # that makes no span, so the batch in flight stays the only one).
        t = time.monotonic()
        with pki.channel(svc.address) as ch:
            read = trace_pb2_grpc.TraceServiceStub(ch).ReadSpans(
                trace_pb2.ReadSpansRequest(), timeout=5)
        assert time.monotonic() - t < 2.0
        assert sum(s.name == "inject" for s in read.spans) == 3  # kept in the ring
        # The first batch fails at its export's deadline (its retries' backoff
        # would pass OTLP_TIMEOUT_S); then it is counted.
        wait_for(lambda: trace_counts(pki, metrics)["failed"] >= 2, OTLP_TIMEOUT_S + 5,
                 "the first batch counted as failed")
        counts = trace_counts(pki, metrics)
        assert counts["exported"] == 0, counts
        # Twenty more batches wait; each would take up to OTLP_TIMEOUT_S.
        assert inject(pki, svc, 40) == 40
        with pki.channel(svc.address) as ch:
            made = len(trace_pb2_grpc.TraceServiceStub(ch).ReadSpans(
                trace_pb2.ReadSpansRequest(), timeout=5).spans)
        assert made >= 43
        t = time.monotonic()
        code = svc.stop(timeout=OTLP_TIMEOUT_S + 10)
        stopped_in = time.monotonic() - t
    log = svc.log.read_text()
    assert code == 0, log
    # The exporters' EXPORT_SHUTDOWN_S and the rest of the shutdown; not one
    # OTLP_TIMEOUT_S per batch, nor ServiceProcess's 10 s before it kills.
    assert EXPORT_SHUTDOWN_S < 8
    assert stopped_in < 8, (stopped_in, log)
    assert (f"Failed to export traces to {endpoint}, error code: StatusCode.UNAVAILABLE"
            in log), log
    # Every span the service made is accounted for: none exported, all failed.
    assert f"tracing: otlp exporter: 0 spans exported, {made} failed" in log, log
    assert receiver.spans() == []
