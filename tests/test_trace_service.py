"""TraceService on every server and the tracing flags of `serve` (issue 13 item 2,
docs/tracing.md): ArmTrace's checks, ReadSpans' paging, caps and filters, the
``inject`` root span, --trace-file's JSON lines, --trace-otlp to a real OTLP/gRPC
receiver on loopback, and serve's refusals of bad flags."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider

from virtwire import tracing
from virtwire.address import SockAddr
from virtwire.errors import ConfigError
from virtwire.net.net import NetClient
from virtwire.net.netdev import parse_backend_spec
from virtwire.orchestrator.launch import start_service
from virtwire.server.hub import HubServer
from virtwire.server.tap import TapServer
from virtwire.server.trace import MAX_READ_SPANS
from virtwire.server.tracesetup import TraceSetup, otlp_exporter, parse_otlp_endpoint
from virtwire.v1 import netclient_pb2, netclient_pb2_grpc, trace_pb2, trace_pb2_grpc

from support.doubles import frame, until
from support.procs import VIRTWIRE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _qemu_frame(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


async def _tap(host: TapServer, name: str = "vm") -> NetClient:
    """A stream backend listening on loopback (an ingress NetClient, no peer)."""
    return await host.add_backend(parse_backend_spec(
        f"stream,listen=127.0.0.1:0,id={name}"))


@pytest.fixture
async def tap() -> AsyncIterator[TapServer]:
    host = TapServer("127.0.0.1:0")
    async with host:
        await _tap(host)
        yield host


@pytest.fixture
async def hub() -> AsyncIterator[HubServer]:
    host = HubServer("127.0.0.1:0", name="hub")
    host.add_port("a")
    async with host:
        yield host


async def _code(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value.code(), err.value.details() or ""


# -- ArmTrace ----------------------------------------------------------------------------
async def test_arm_trace_checks_everything_before_arming(tap: TapServer, hub: HubServer
                                                         ) -> None:
    vm = tap.registry.get("vm")
    async with grpc.aio.insecure_channel(tap.address) as ch:
        stub = trace_pb2_grpc.TraceServiceStub(ch)
        cases = [
            (trace_pb2.ArmTraceRequest(netclient="nope", match="ethertype=0x0806", count=1),
             grpc.StatusCode.NOT_FOUND),
            (trace_pb2.ArmTraceRequest(match="ethertype=", count=1),
             grpc.StatusCode.INVALID_ARGUMENT),
            (trace_pb2.ArmTraceRequest(match="ethertype=0x0806", count=0),
             grpc.StatusCode.OUT_OF_RANGE),
            (trace_pb2.ArmTraceRequest(match="ethertype=0x0806", count=10001),
             grpc.StatusCode.OUT_OF_RANGE),
            (trace_pb2.ArmTraceRequest(sample="2/3"), grpc.StatusCode.INVALID_ARGUMENT),
            (trace_pb2.ArmTraceRequest(sample="often"), grpc.StatusCode.INVALID_ARGUMENT),
            (trace_pb2.ArmTraceRequest(sample="1/0"), grpc.StatusCode.INVALID_ARGUMENT),
        ]
        for request, want in cases:
            code, details = await _code(stub.ArmTrace(request))
            assert code == want, (request, code, details)
            assert details, request
            assert vm.sampler is None, request  # nothing armed by a refused call
        # Empty netclient: every ingress NetClient of the service.
        resp = await stub.ArmTrace(trace_pb2.ArmTraceRequest(match="ethertype=0x0806", count=10000,
                                                             sample="1/1000"))
        assert list(resp.netclients) == ["vm"]
        assert vm.sampler is not None and vm.sampler.every == 1000
        assert vm.sampler.count == 10000 and vm.sampler.match is not None
        # No match and no sample: the match goes, the rate stays.
        await stub.ArmTrace(trace_pb2.ArmTraceRequest(netclient="vm"))
        assert vm.sampler is not None and vm.sampler.match is None
        assert vm.sampler.every == 1000
        await stub.ArmTrace(trace_pb2.ArmTraceRequest(netclient="vm", sample="off"))
        assert vm.sampler is None
    async with grpc.aio.insecure_channel(hub.address) as ch:
        stub = trace_pb2_grpc.TraceServiceStub(ch)
        # A hub port is no place where frames enter the LAN.
        code, details = await _code(stub.ArmTrace(
            trace_pb2.ArmTraceRequest(netclient="a", match="ethertype=0x0806", count=1)))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "enters the LAN" in details
        # But every service answers, with nothing to arm.
        resp = await stub.ArmTrace(trace_pb2.ArmTraceRequest(match="ethertype=0x0806", count=1))
        assert list(resp.netclients) == []
        assert hub.registry.get("a").sampler is None


# -- ReadSpans ---------------------------------------------------------------------------
async def test_read_spans_pages_filters_and_caps(hub: HubServer) -> None:
    ring = tracing.recent()
    start = ring.seq
    roots = []
    for i in range(5):
        t = tracing.now_ns()
        root = tracing.add_span("tap.read", None, t, t + 10, {"netclient": f"n{i}"})
        tracing.add_span("link.send", root, t + 10, t + 20)
        roots.append(root)
    async with grpc.aio.insecure_channel(hub.address) as ch:
        stub = trace_pb2_grpc.TraceServiceStub(ch)
        # Paging, three at a time, oldest first.
        got: list[trace_pb2.Span] = []
        after = start
        for _ in range(10):
            resp = await stub.ReadSpans(trace_pb2.ReadSpansRequest(after_seq=after,
                                                                   max_spans=3))
            assert len(resp.spans) <= 3
            assert resp.last_seq >= start + 10
            if not resp.spans:
                break
            got.extend(resp.spans)
            after = resp.spans[-1].seq
        mine = [s for s in got if s.seq <= start + 10]
        assert [s.seq for s in mine] == list(range(start + 1, start + 11))
        assert [s.name for s in mine] == ["tap.read", "link.send"] * 5
        first, child = mine[0], mine[1]
        assert first.trace_id == roots[0].trace_id.to_bytes(16, "big")
        assert first.span_id == roots[0].span_id.to_bytes(8, "big")
        assert first.parent_span_id == b"" and first.attributes["netclient"] == "n0"
        assert child.trace_id == first.trace_id and child.parent_span_id == first.span_id
        assert len(child.span_id) == 8 and first.end_unix_nano - first.start_unix_nano == 10
        # Only the spans of the traces asked for.
        ids = [roots[1].trace_id.to_bytes(16, "big"), roots[3].trace_id.to_bytes(16, "big")]
        resp = await stub.ReadSpans(trace_pb2.ReadSpansRequest(after_seq=start,
                                                               trace_ids=ids))
        assert [(s.trace_id, s.name) for s in resp.spans] == [
            (ids[0], "tap.read"), (ids[0], "link.send"),
            (ids[1], "tap.read"), (ids[1], "link.send")]
        # 0 means the default; above the cap is refused.
        resp = await stub.ReadSpans(trace_pb2.ReadSpansRequest(after_seq=start))
        assert len(resp.spans) >= 10
        code, _ = await _code(stub.ReadSpans(
            trace_pb2.ReadSpansRequest(max_spans=MAX_READ_SPANS + 1)))
        assert code == grpc.StatusCode.OUT_OF_RANGE
        resp = await stub.ReadSpans(trace_pb2.ReadSpansRequest(max_spans=MAX_READ_SPANS))
        assert resp.last_seq == ring.seq
        code, _ = await _code(stub.ReadSpans(trace_pb2.ReadSpansRequest(
            trace_ids=[i.to_bytes(16, "big") for i in range(1, 258)])))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        code, details = await _code(stub.ReadSpans(
            trace_pb2.ReadSpansRequest(trace_ids=[b"\1" * 15])))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "15 bytes" in details


def test_the_ring_counts_what_it_drops() -> None:
    ring = tracing.RecentSpans(maxlen=4)
    provider = TracerProvider()
    provider.add_span_processor(ring)
    tracer = provider.get_tracer("t")
    for i in range(6):
        tracer.start_span(f"s{i}").end()
    assert ring.seq == 6 and ring.dropped == 2
    assert [s.name for s in ring.after(0, 10)] == ["s2", "s3", "s4", "s5"]
    assert [s.seq for s in ring.after(4, 1)] == [5]


# -- inject ------------------------------------------------------------------------------
async def _read_all(stub: trace_pb2_grpc.TraceServiceStub, after: int) -> list[trace_pb2.Span]:
    resp = await stub.ReadSpans(trace_pb2.ReadSpansRequest(after_seq=after,
                                                           max_spans=MAX_READ_SPANS))
    return list(resp.spans)


async def test_injected_frames_a_match_picks_are_inject_roots(tap: TapServer) -> None:
    start = tracing.recent().seq
    wanted = frame(1)
    other = wanted[:12] + b"\x08\x06" + wanted[14:]  # ARP ethertype: not matched
    async with grpc.aio.insecure_channel(tap.address) as ch:
        trace = trace_pb2_grpc.TraceServiceStub(ch)
        nc = netclient_pb2_grpc.NetClientServiceStub(ch)
        # Nothing armed: nothing traced.
        await nc.Inject(netclient_pb2.InjectRequest(name="vm", frame=wanted, repeat=3))
        assert [s for s in await _read_all(trace, start) if s.name == "inject"] == []
        await trace.ArmTrace(trace_pb2.ArmTraceRequest(netclient="vm",
                                                       match="ethertype=0x88b5", count=2))
        await nc.Inject(netclient_pb2.InjectRequest(name="vm", frame=other, repeat=3))
        await nc.Inject(netclient_pb2.InjectRequest(name="vm", frame=wanted, repeat=5))
        spans = [s for s in await _read_all(trace, start) if s.name == "inject"]
    # Two (the count), each the root of its own trace.
    assert len(spans) == 2, spans
    assert len({s.trace_id for s in spans}) == 2
    for s in spans:
        assert s.parent_span_id == b"" and len(s.trace_id) == 16
        assert s.attributes["netclient"] == "vm"
        assert s.attributes["frame.len"] == str(len(wanted))
    sampler = tap.registry.get("vm").sampler
    assert sampler is not None and sampler.done and sampler.traced == 2


# -- --trace-sample, --trace-file in process ---------------------------------------------
async def test_trace_file_writes_a_json_line_a_span(tmp_path: Path) -> None:
    out = tmp_path / "tap0.jsonl"
    host = TapServer("127.0.0.1:0")
    host.trace = TraceSetup.from_flags("tap0", "lab", str(out), "", "1/1")
    start = tracing.recent().seq
    async with host:
        # Added after the start: --trace-sample reaches it through the registry.
        vm = await _tap(host)
        assert vm.sampler is not None and vm.sampler.every == 1
        addr = vm.local_address  # type: ignore[attr-defined]
        _reader, writer = await asyncio.open_connection(addr.host, addr.port)
        try:
            writer.write(b"".join(_qemu_frame(frame(i)) for i in range(3)))
            await writer.drain()
            await until(lambda: sum(s.name == "tap.read"
                                    for s in tracing.recent().after(start, 100)) >= 3,
                        what="three tap.read spans")
        finally:
            writer.close()
    # Stopping the server flushed the file.
    lines = out.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    reads = [r for r in records if r["name"] == "tap.read"]
    assert len(reads) >= 3, lines
    for r in reads:
        assert r["parent_id"] is None
        assert r["resource"]["attributes"]["service.name"] == "tap0"
        assert r["resource"]["attributes"]["virtwire.lan"] == "lab"
        assert r["attributes"]["netclient"] == "vm"
        assert r["context"]["trace_id"].startswith("0x")


def test_trace_flags_are_checked_before_anything_opens(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="1/N"):
        TraceSetup.from_flags("s", "", "", "", "2/3")
    with pytest.raises(ConfigError, match="not a directory"):
        TraceSetup.from_flags("s", "", str(tmp_path / "no" / "x.jsonl"), "", "")
    with pytest.raises(ConfigError, match="--trace-otlp"):
        TraceSetup.from_flags("s", "", "", "ftp://127.0.0.1:4317", "")
    with pytest.raises(ConfigError, match="no path"):
        parse_otlp_endpoint("http://127.0.0.1:4317/v1/traces")
    assert parse_otlp_endpoint("127.0.0.1:4317")[1] is False
    assert parse_otlp_endpoint("https://127.0.0.1:4317")[1] is True
    assert parse_otlp_endpoint("198.18.0.1:4317")[1] is True
    # Plaintext off loopback is refused; TLS without the TLS flags too.
    with pytest.raises(ConfigError, match="refusing plaintext"):
        otlp_exporter("http://198.18.0.1:4317")
    with pytest.raises(ConfigError, match="--tls-dir"):
        otlp_exporter("198.18.0.1:4317")


SAMPLE_REFUSED = [
    ("2/3", "--trace-sample '2/3': expected off or 1/N: the top must be 1, write 1/N "
            "(one frame in N)"),
    ("0/5", "--trace-sample '0/5': expected off or 1/N: the top must be 1, write 1/N "
            "(one frame in N)"),
    ("1/0", f"--trace-sample '1/0': N must be 1 to {tracing.MAX_SAMPLE_EVERY}"),
    (f"1/{tracing.MAX_SAMPLE_EVERY + 1}", f"--trace-sample '1/{tracing.MAX_SAMPLE_EVERY + 1}'"
                                          f": N must be 1 to {tracing.MAX_SAMPLE_EVERY}"),
    ("abc", "--trace-sample 'abc': expected off or 1/N, N a whole number"),
    ("1/x", "--trace-sample '1/x': expected off or 1/N, N a whole number"),
    ("x/3", "--trace-sample 'x/3': expected off or 1/N, N a whole number"),
]


@pytest.mark.parametrize(("text", "message"), SAMPLE_REFUSED)
def test_parse_sample_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        tracing.parse_sample(text)
    assert str(err.value) == message
    with pytest.raises(ConfigError) as flags_err:
        TraceSetup.from_flags("s", "", "", "", text)
    assert str(flags_err.value) == message


@pytest.mark.parametrize(("text", "every"), [
    ("0", 0), ("off", 0), (" OFF ", 0), ("none", 0), ("", 0), ("1/1", 1), ("1", 1),
    ("1/1000", 1000), ("1000", 1000), (f"1/{tracing.MAX_SAMPLE_EVERY}", 1 << 30)])
def test_parse_sample_takes_off_and_one_in_n(text: str, every: int) -> None:
    assert tracing.parse_sample(text) == every


def test_parse_sample_shows_a_long_value_shortened() -> None:
    with pytest.raises(ConfigError) as err:
        tracing.parse_sample("x" * 100000)
    assert "(100000 characters)" in str(err.value) and len(str(err.value)) < 200


@pytest.mark.parametrize(("endpoint", "addr", "want_tls"), [
    ("127.0.0.1:4317", SockAddr("127.0.0.1", 4317), False),
    ("localhost:4317", SockAddr("localhost", 4317), False),
    (" 127.0.0.1:4317 ", SockAddr("127.0.0.1", 4317), False),
    ("http://127.0.0.1:4317", SockAddr("127.0.0.1", 4317), False),
    ("http://127.0.0.1:4317/", SockAddr("127.0.0.1", 4317), False),
    ("https://127.0.0.1:4317", SockAddr("127.0.0.1", 4317), True),
    ("HTTPS://otel.example.:4317/", SockAddr("otel.example.", 4317), True),
    ("198.18.0.1:4317", SockAddr("198.18.0.1", 4317), True),
    ("otel:65535", SockAddr("otel", 65535), True),
    ("[::1]:4317", SockAddr("::1", 4317), False),
    ("https://[2001:db8::1]:1", SockAddr("2001:db8::1", 1), True),
])
def test_tracesetup_parses_the_collector_and_whether_it_wants_tls(
        endpoint: str, addr: SockAddr, want_tls: bool) -> None:
    assert parse_otlp_endpoint(endpoint) == (addr, want_tls)
    assert TraceSetup.from_flags("s", "", "", endpoint, "").otlp == endpoint


# -- --trace-otlp to a real OTLP/gRPC receiver ----------------------------------------------
class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OpenTelemetry collector's trace endpoint, keeping what it is sent."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    async def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
                     context: grpc.aio.ServicerContext[Any, Any]
                     ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[tuple[str, str, bytes]]:
        """(service.name, span name, parent span id) of every span received."""
        out: list[tuple[str, str, bytes]] = []
        for req in self.requests:
            for rs in req.resource_spans:
                service = next(a.value.string_value for a in rs.resource.attributes
                               if a.key == "service.name")
                for ss in rs.scope_spans:
                    out.extend((service, s.name, s.parent_span_id) for s in ss.spans)
        return out


async def test_trace_otlp_exports_to_a_receiver_on_loopback() -> None:
    receiver = Receiver()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        host = TapServer("127.0.0.1:0")
        host.trace = TraceSetup.from_flags("tap1", "lab", "", f"127.0.0.1:{port}", "")
        async with host:
            await _tap(host)
            async with grpc.aio.insecure_channel(host.address) as ch:
                await trace_pb2_grpc.TraceServiceStub(ch).ArmTrace(
                    trace_pb2.ArmTraceRequest(match="ethertype=0x88b5", count=3))
                await netclient_pb2_grpc.NetClientServiceStub(ch).Inject(
                    netclient_pb2.InjectRequest(name="vm", frame=frame(7), repeat=4))
        # Stopping flushed the batch to the receiver.
        got = [s for s in receiver.spans() if s[1] == "inject"]
        assert got == [("tap1", "inject", b"")] * 3, receiver.spans()
    finally:
        await server.stop(None)


# -- serve's flags -----------------------------------------------------------------------
def _serve_fails(*args: str) -> str:
    out = subprocess.run([*VIRTWIRE, "serve", "hub", *args], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0, out
    assert "Traceback" not in out.stderr, out.stderr
    return out.stderr


def test_serve_refuses_bad_trace_flags(tmp_path: Path) -> None:
    assert "1/N" in _serve_fails("--trace-sample", "2/3")
    assert "--trace-sample" in _serve_fails("--trace-sample", "sometimes")
    assert "not a directory" in _serve_fails("--trace-file", str(tmp_path / "no" / "x"))
    assert "--trace-otlp" in _serve_fails("--trace-otlp", "ftp://127.0.0.1:4317")
    assert "no port" in _serve_fails("--trace-otlp", "otel")
    err = _serve_fails("--trace-otlp", "198.18.0.1:4317")
    assert "--tls-dir" in err, err
    assert "refusing plaintext" in _serve_fails("--trace-otlp", "http://198.18.0.1:4317")


def test_serve_help_names_the_trace_flags() -> None:
    for kind in ("hub", "tap", "e1000", "guest", "guestmem", "link", "switch"):
        out = subprocess.run([*VIRTWIRE, "serve", kind, "--help"], capture_output=True,
                             text=True, timeout=60)
        if out.returncode != 0 and "invalid choice" in out.stderr:
            continue  # a kind this build does not have
        assert out.returncode == 0, out.stderr
        for flag in ("--trace-file", "--trace-otlp", "--trace-sample"):
            assert flag in out.stdout, (kind, flag)


async def test_serve_tap_traces_and_flushes_its_file_at_exit(tmp_path: Path) -> None:
    port = _free_port()
    out = tmp_path / "q0.jsonl"
    proc = start_service("tap", ["--backend", f"stream,listen=127.0.0.1:{port},id=vm",
                                 "--log-name", "q0", "--trace-sample", "1/1",
                                 "--trace-file", str(out)], tmp_path)
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        async with grpc.aio.insecure_channel(proc.address) as ch:
            stub = trace_pb2_grpc.TraceServiceStub(ch)
            spans: list[trace_pb2.Span] = []
            for i in range(100):  # at most 10 s
                writer.write(_qemu_frame(frame(i)))
                await writer.drain()
                spans = await _read_all(stub, 0)
                if len([s for s in spans if s.name == "tap.read"]) >= 3:
                    break
                await asyncio.sleep(0.1)
        writer.close()
        reads = [s for s in spans if s.name == "tap.read"]
        assert len(reads) >= 3, spans
        assert {s.service for s in reads} == {"q0"}
    finally:
        proc.proc.send_signal(signal.SIGTERM)
        rc = proc.proc.wait(timeout=30)
    assert rc == 0, proc.log.read_text()
    names = [json.loads(line)["name"] for line in out.read_text().splitlines()]
    assert names.count("tap.read") >= len(reads), names
    assert os.path.getsize(out) > 0
