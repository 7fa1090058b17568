"""What a server's exporters did with its spans (docs/tracing.md, "Where spans
go"; docs/metrics.md, tracing): ``CountingExporter`` counts the spans each
exporter exported and those it lost, and ``TraceSetup.stop`` gives up on an
exporter that is still busy at EXPORT_SHUTDOWN_S, counting what it held."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from virtwire import tracing
from virtwire.server import tracesetup
from virtwire.server.metrics import MetricSet, trace_metrics
from virtwire.server.tracesetup import CountingExporter, ExportCounts, TraceSetup


class FakeExporter(SpanExporter):
    """Answers each batch with the next of ``results`` ("ok", "fail", "raise",
    or "hang": wait until shut down, then fail, as an OTLP export to an
    unreachable collector does)."""

    def __init__(self, results: Sequence[str]) -> None:
        self.results = list(results)
        self.batches: list[int] = []
        self.shutdowns = 0
        self.stopped = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.batches.append(len(spans))
        what = self.results.pop(0) if self.results else "ok"
        if what == "raise":
            raise ConnectionError("collector went away")
        if what == "hang":
            self.stopped.wait(30)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS if what == "ok" else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self.shutdowns += 1
        self.stopped.set()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def spans(n: int) -> list[ReadableSpan]:
    return [ReadableSpan(name=f"s{i}") for i in range(n)]


def test_counts_exported_and_failed_batches_and_raised_exports() -> None:
    fake = FakeExporter(["ok", "fail", "raise", "ok"])
    counts = ExportCounts()
    exporter = CountingExporter(fake, counts)
    assert exporter.export(spans(3)) is SpanExportResult.SUCCESS
    assert exporter.export(spans(2)) is SpanExportResult.FAILURE
    with pytest.raises(ConnectionError):  # the batch processor logs it
        exporter.export(spans(4))
    assert exporter.export(spans(1)) is SpanExportResult.SUCCESS
    assert (counts.exported, counts.failed) == (4, 6)
    assert fake.batches == [3, 2, 4, 1]


def test_after_shutdown_exports_fail_at_once_counted() -> None:
    fake = FakeExporter([])
    counts = ExportCounts()
    exporter = CountingExporter(fake, counts)
    exporter.shutdown()
    exporter.shutdown()  # the timer's and the batch processor's: inner once
    assert fake.shutdowns == 1
    assert exporter.export(spans(5)) is SpanExportResult.FAILURE
    assert fake.batches == []  # never reached the shut exporter
    assert (counts.exported, counts.failed) == (0, 5)


@pytest.fixture
def hanging_otlp(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeExporter]:
    """``--trace-otlp`` makes a FakeExporter whose exports hang until shut
    down; batches of 2 every 10 ms; the deadline at exit 0.5 s."""
    fake = FakeExporter(["hang"] * 1000)
    monkeypatch.setattr(tracesetup, "otlp_exporter", lambda text: fake)
    monkeypatch.setattr(tracesetup, "EXPORT_SHUTDOWN_S", 0.5)
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "10")
    try:
        yield fake
    finally:
        fake.stopped.set()
        tracing.configure("", "", ())


def test_stop_gives_up_on_a_hanging_exporter_and_counts_what_it_held(
        hanging_otlp: FakeExporter, tmp_path: Path) -> None:
    trace_file = tmp_path / "spans.jsonl"
    setup = TraceSetup.from_flags("counts", "", str(trace_file), "127.0.0.1:4317", "")
    setup.start()
    now = tracing.now_ns()
    for i in range(10):
        tracing.add_span(f"span{i}", None, now, now)
    # The first batch is in flight, hanging; the other 8 spans wait behind it.
    deadline = time.monotonic() + 5
    while not hanging_otlp.batches:
        assert time.monotonic() < deadline, "the first export never started"
        time.sleep(0.01)
    t = time.monotonic()
    setup.stop()
    took = time.monotonic() - t
    assert 0.4 < took < 1.5, took
    assert hanging_otlp.shutdowns == 1
    assert hanging_otlp.batches == [2]  # the rest failed without reaching it
    otlp = setup.counts["otlp"]
    assert (otlp.exported, otlp.failed) == (0, 10)
    # The file went first and has every span.
    assert len(trace_file.read_text().splitlines()) == 10
    assert (setup.counts["file"].exported, setup.counts["file"].failed) == (10, 0)


def test_metrics_show_each_exporter_and_the_ring(hanging_otlp: FakeExporter) -> None:
    ms = MetricSet()
    trace_metrics(None, ms)  # no tracing flags: only the ring
    assert set(ms.families) == {"virtwire_trace_spans_ring_dropped"}
    setup = TraceSetup.from_flags("counts", "", "", "127.0.0.1:4317", "")
    ms = MetricSet()
    trace_metrics(setup, ms)  # not started yet: no exporter
    assert set(ms.families) == {"virtwire_trace_spans_ring_dropped"}
    setup.start()
    setup.counts["otlp"].exported = 7
    setup.counts["otlp"].failed = 3
    ms = MetricSet()
    trace_metrics(setup, ms)
    fams = ms.families
    assert fams["virtwire_trace_spans_exported"].samples == [(("otlp",), 7.0)]
    assert fams["virtwire_trace_spans_export_failed"].samples == [(("otlp",), 3.0)]
    assert fams["virtwire_trace_spans_exported"].labelnames == ("exporter",)
    assert fams["virtwire_trace_spans_ring_dropped"].samples == [
        ((), float(tracing.recent().dropped))]
    setup.stop()
