"""virtwire trace (issue 13 item 2): the orchestrator's collector against fake
TraceServices, the table and JSON a traced frame prints as, the verb's errors on a
real LAN, and up/render's --trace-* flags on the services' command lines."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from rich.console import Console

from virtwire import tracing
from virtwire.cli.trace import build_table, causal_order, check_args, frame_dict
from virtwire.errors import ConfigError, OutOfRangeError
from virtwire.orchestrator.core import Orchestrator
from virtwire.orchestrator.render import TraceFlags, check_otlp, render, service_commands
from virtwire.orchestrator.spec import HubServiceSpec
from virtwire.orchestrator.traces import CollectedTrace, TraceCollector, summary
from virtwire.server import tracesetup
from virtwire.server.tracesetup import TraceSetup
from virtwire.topology import parse_topology
from virtwire.v1 import orchestrator_pb2, orchestrator_pb2_grpc, trace_pb2, trace_pb2_grpc

from support.procs import VIRTWIRE


# -- fake TraceServices ------------------------------------------------------------------
def _tid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def _sid(n: int) -> bytes:
    return n.to_bytes(8, "big")


class FakeTrace(trace_pb2_grpc.TraceServiceServicer):
    """A ring of spans; ``on_arm`` runs when ArmTrace arms a match."""

    def __init__(self, bad_match: bool = False) -> None:
        self.spans: list[trace_pb2.Span] = []
        self.arms: list[trace_pb2.ArmTraceRequest] = []
        self.on_arm: Callable[[], None] | None = None
        self.bad_match = bad_match

    def add(self, trace: int, span: int, parent: int, name: str, start: int,
            dur: int = 1000, **attrs: str) -> None:
        self.spans.append(trace_pb2.Span(
            seq=len(self.spans) + 1, trace_id=_tid(trace), span_id=_sid(span),
            parent_span_id=_sid(parent) if parent else b"", name=name, service="kind",
            start_unix_nano=start, end_unix_nano=start + dur, attributes=attrs))

    async def ArmTrace(self, request: trace_pb2.ArmTraceRequest,
                       context: grpc.aio.ServicerContext[Any, Any]) -> trace_pb2.ArmTraceResponse:
        if self.bad_match and request.match:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad match: what is zz")
        self.arms.append(request)
        if request.match and self.on_arm is not None:
            self.on_arm()
        return trace_pb2.ArmTraceResponse(netclients=[request.netclient] if request.match
                                          else [])

    async def ReadSpans(self, request: trace_pb2.ReadSpansRequest,
                        context: grpc.aio.ServicerContext[Any, Any]
                        ) -> trace_pb2.ReadSpansResponse:
        out = [s for s in self.spans if s.seq > request.after_seq][:request.max_spans or 1024]
        return trace_pb2.ReadSpansResponse(spans=out, last_seq=len(self.spans))


class Fakes:
    def __init__(self) -> None:
        self.fakes: dict[str, FakeTrace] = {}
        self.addresses: dict[str, str] = {}
        self.servers: list[grpc.aio.Server] = []

    async def add(self, name: str, fake: FakeTrace | None = None) -> FakeTrace:
        fake = fake or FakeTrace()
        server = grpc.aio.server()
        trace_pb2_grpc.add_TraceServiceServicer_to_server(fake, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self.servers.append(server)
        self.fakes[name] = fake
        self.addresses[name] = f"127.0.0.1:{port}"
        return fake


@pytest.fixture
async def lan() -> AsyncIterator[Fakes]:
    fakes = Fakes()
    await fakes.add("q0")
    await fakes.add("hub0")
    await fakes.add("vm1-guest")
    try:
        yield fakes
    finally:
        for server in fakes.servers:
            await server.stop(0)


def _frame_path(lan: Fakes, trace: int, t0: int, delivered: bool = True) -> None:
    """tap.read (q0) -> link.send -> hub.forward (hub0) -> guest.rx (vm1-guest)."""
    base = trace * 100
    lan.fakes["q0"].add(trace, base + 1, 0, "tap.read", t0, 0, netclient="q0")
    lan.fakes["q0"].add(trace, base + 2, base + 1, "link.send", t0 + 5_000, netclient="q0")
    lan.fakes["hub0"].add(trace, base + 3, base + 2, "hub.forward", t0 + 40_000,
                          netclient="hub0port0")
    if delivered:
        lan.fakes["vm1-guest"].add(trace, base + 4, base + 3, "guest.rx", t0 + 90_000)


async def _collect(collector: TraceCollector, address: str, netclient: str = "q0",
                   match: str = "ip.proto=icmp") -> list[CollectedTrace]:
    return [t async for t in collector.run(address, netclient, match)]


async def test_spans_of_every_service_are_grouped_by_trace(lan: Fakes) -> None:
    # Spans from before the trace began are not this trace's.
    _frame_path(lan, 9, 1_000_000)

    def arm() -> None:
        _frame_path(lan, 1, 2_000_000)
        _frame_path(lan, 2, 3_000_000)

    lan.fakes["q0"].on_arm = arm
    collector = TraceCollector(lan.addresses, count=2, timeout_s=10, settle_s=0.2)
    got = await _collect(collector, lan.addresses["q0"])
    assert [t.trace_id for t in got] == [_tid(1), _tid(2)]
    for t in got:
        assert [s.name for s in t.spans] == ["tap.read", "link.send", "hub.forward",
                                             "guest.rx"]
        # Named as the LAN names its services, not by their kind.
        assert [s.service for s in t.spans] == ["q0", "q0", "hub0", "vm1-guest"]
        assert t.delivered and not t.dropped
    first = lan.fakes["q0"].arms[0]
    assert (first.netclient, first.match, first.count) == ("q0", "ip.proto=icmp", 2)
    # All came: nothing to disarm.
    assert len(lan.fakes["q0"].arms) == 1
    assert "tap.read on q0" in summary(got[0]) and "delivered" in summary(got[0])


async def test_a_trace_waits_for_spans_until_it_settles(lan: Fakes) -> None:
    """Not delivered: the trace is yielded once quiet, with the late hop in it."""
    async def late_hop() -> None:
        await asyncio.sleep(0.1)
        lan.fakes["hub0"].add(1, 103, 102, "hub.forward", 2_040_000)

    tasks: list[asyncio.Task[None]] = []

    def arm() -> None:
        lan.fakes["q0"].add(1, 101, 0, "tap.read", 2_000_000, 0, netclient="q0")
        lan.fakes["q0"].add(1, 102, 101, "link.send", 2_005_000, netclient="q0")
        tasks.append(asyncio.get_running_loop().create_task(late_hop()))

    lan.fakes["q0"].on_arm = arm
    collector = TraceCollector(lan.addresses, count=1, timeout_s=10, settle_s=0.5)
    got = await _collect(collector, lan.addresses["q0"])
    assert [s.name for s in got[0].spans] == ["tap.read", "link.send", "hub.forward"]
    assert not got[0].delivered


async def test_count_caps_spans_and_roots_from_elsewhere(lan: Fakes) -> None:
    def arm() -> None:
        for n in range(1, 6):
            _frame_path(lan, n, n * 1_000_000)
        # A long trace: 100 more spans under trace 1's hub.forward.
        for i in range(100):
            lan.fakes["hub0"].add(1, 1000 + i, 103, "hub.forward", 1_050_000 + i)
        # Entered on another NetClient, and at another service: not ours.
        lan.fakes["q0"].add(50, 5001, 0, "tap.read", 1_500_000, 0, netclient="q1")
        lan.fakes["hub0"].add(51, 5101, 0, "tap.read", 1_600_000, 0, netclient="q0")
        lan.fakes["hub0"].add(51, 5102, 5101, "hub.forward", 1_600_100)

    lan.fakes["q0"].on_arm = arm
    collector = TraceCollector(lan.addresses, count=3, timeout_s=10, settle_s=0.2,
                               max_spans=64)
    got = await _collect(collector, lan.addresses["q0"])
    assert [t.trace_id for t in got] == [_tid(1), _tid(2), _tid(3)]
    assert len(got[0].spans) == 64 and got[0].dropped == 104 - 64
    assert "40 spans not kept" in summary(got[0])


async def test_a_timeout_ends_with_what_came_and_disarms(lan: Fakes) -> None:
    lan.fakes["q0"].on_arm = lambda: lan.fakes["q0"].add(1, 1, 0, "tap.read", 5, 0,
                                                         netclient="q0")
    # The settle time is longer than the timeout: the started trace is flushed.
    collector = TraceCollector(lan.addresses, count=3, timeout_s=0.3, settle_s=60)
    got = await _collect(collector, lan.addresses["q0"])
    assert [t.trace_id for t in got] == [_tid(1)]
    arms = lan.fakes["q0"].arms
    assert [a.match for a in arms] == ["ip.proto=icmp", ""], arms  # disarmed at the end


async def test_no_frame_within_the_timeout_yields_none(lan: Fakes) -> None:
    collector = TraceCollector(lan.addresses, count=1, timeout_s=0.2)
    assert await _collect(collector, lan.addresses["q0"]) == []


async def test_the_services_refusal_of_a_match_is_raised() -> None:
    fakes = Fakes()
    await fakes.add("q0", FakeTrace(bad_match=True))
    try:
        collector = TraceCollector(fakes.addresses, count=1, timeout_s=1)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _collect(collector, fakes.addresses["q0"], match="zz=1")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "zz" in (err.value.details() or "")
    finally:
        await fakes.servers[0].stop(0)


async def test_a_service_without_trace_service_is_skipped(lan: Fakes) -> None:
    addresses = {**lan.addresses, "gone": "127.0.0.1:1"}
    lan.fakes["q0"].on_arm = lambda: _frame_path(lan, 1, 1_000_000)
    collector = TraceCollector(addresses, count=1, timeout_s=10, settle_s=0.1)
    got = await _collect(collector, lan.addresses["q0"])
    assert len(got) == 1 and len(got[0].spans) == 4
    assert collector.unreadable == ["gone"]


def test_bad_counts_are_refused() -> None:
    for count in (0, 10001):
        with pytest.raises(OutOfRangeError):
            TraceCollector({}, count=count, timeout_s=1)
        with pytest.raises(OutOfRangeError):
            check_args(count, 1.0)
    with pytest.raises(OutOfRangeError):
        check_args(1, 7200.0)


# -- printing -------------------------------------------------------------------------
def _canned() -> orchestrator_pb2.TracedFrame:
    def span(sid: int, parent: int, name: str, service: str, start: int, end: int,
             nc: str = "") -> trace_pb2.Span:
        return trace_pb2.Span(trace_id=_tid(7), span_id=_sid(sid),
                              parent_span_id=_sid(parent) if parent else b"", name=name,
                              service=service, start_unix_nano=start, end_unix_nano=end,
                              attributes={"netclient": nc} if nc else {})
    # Out of order on purpose; hub.forward has two children (a broadcast).
    spans = [span(4, 3, "link.send", "hub0", 60_000, 62_000, "hub0port1"),
             span(3, 2, "hub.forward", "hub0", 50_000, 55_000, "hub0port0"),
             span(1, 0, "tap.read", "q0", 10_000, 10_000, "q0"),
             span(5, 3, "link.send", "hub0", 58_000, 59_500, "hub0port2"),
             span(2, 1, "link.send", "q0", 12_000, 14_000, "q0")]
    return orchestrator_pb2.TracedFrame(trace_id=_tid(7), spans=spans, summary="tap.read on q0")


def test_spans_print_in_causal_order_with_hop_latencies() -> None:
    hops = causal_order(_canned().spans)
    assert [(h.span.name, h.span.attributes.get("netclient"), h.depth) for h in hops] == [
        ("tap.read", "q0", 0), ("link.send", "q0", 1), ("hub.forward", "hub0port0", 2),
        ("link.send", "hub0port2", 3), ("link.send", "hub0port1", 3)]
    assert [h.offset_us for h in hops] == [0, 2, 40, 48, 50]
    assert [h.duration_us for h in hops] == [0, 2, 5, 1.5, 2]
    assert [h.hop_us for h in hops] == [None, 2, 38, 8, 10]


def test_an_orphan_span_hangs_after_the_root() -> None:
    frame = _canned()
    del frame.spans[4]  # q0's link.send lost: hub.forward has no parent here
    hops = causal_order(frame.spans)
    assert [h.span.name for h in hops][:2] == ["tap.read", "hub.forward"]
    assert hops[1].hop_us is None and hops[1].depth == 0


def test_the_table_and_the_json() -> None:
    out = io.StringIO()
    Console(file=out, width=160).print(build_table(_canned(), 1))
    text = out.getvalue()
    assert f"trace {_tid(7).hex()}: tap.read on q0" in text
    for word in ("SPAN", "SERVICE", "NETCLIENT", "START µs", "DURATION µs", "HOP µs",
                 "hub.forward", "hub0port2", "38.0"):
        assert word in text, text
    lines = [line for line in text.splitlines() if "link.send" in line]
    assert "hub0port2" in lines[1] and "hub0port1" in lines[2]
    got = json.loads(json.dumps(frame_dict(_canned())))
    assert got["trace_id"] == _tid(7).hex()
    assert [s["name"] for s in got["spans"]] == ["tap.read", "link.send", "hub.forward",
                                                 "link.send", "link.send"]
    assert got["spans"][2]["hop_us"] == 38.0 and got["spans"][0]["hop_us"] is None
    assert got["spans"][2]["attributes"] == {"netclient": "hub0port0"}


# -- flags on the services' command lines -------------------------------------------------
TINY_LAN = """\
name: {name}
nodes:
  hub0: {{kind: hub}}
  q0: {{kind: tap, backend: stream, listen: 127.0.0.1:{port}}}
links:
  - [q0, hub0]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_trace_flags_are_checked() -> None:
    assert TraceFlags("1/100", "127.0.0.1:4317", "/s").checked().args("q0") == [
        "--trace-sample", "1/100", "--trace-otlp", "127.0.0.1:4317",
        "--trace-file", "/s/q0.jsonl"]
    assert TraceFlags("off").checked().args("q0") == []
    for bad in (TraceFlags("2/3"), TraceFlags("1/x"), TraceFlags(otlp="a b"),
                TraceFlags(otlp="file:///etc/passwd"), TraceFlags(otlp="h:70000")):
        with pytest.raises(ConfigError):
            bad.checked()


_FORMS = "expected HOST:PORT, http://HOST:PORT or https://HOST:PORT"
OTLP_REFUSED = [
    # A URL path, a query or a fragment: OTLP/gRPC has none, so none is dropped quietly.
    ("http://127.0.0.1:4317/v1/traces", "--trace-otlp 'http://127.0.0.1:4317/v1/traces': "
                                        f"OTLP/gRPC takes no path, query or fragment; {_FORMS}"),
    ("otel:4317/v1/traces", "--trace-otlp 'otel:4317/v1/traces': OTLP/gRPC takes no path, "
                            f"query or fragment; {_FORMS}"),
    ("https://otel:4317?tenant=a", "--trace-otlp 'https://otel:4317?tenant=a': OTLP/gRPC "
                                   f"takes no path, query or fragment; {_FORMS}"),
    ("https://otel:4317/?tenant=a", "--trace-otlp 'https://otel:4317/?tenant=a': OTLP/gRPC "
                                    f"takes no path, query or fragment; {_FORMS}"),
    ("http://otel:4317#x", "--trace-otlp 'http://otel:4317#x': OTLP/gRPC takes no path, "
                           f"query or fragment; {_FORMS}"),
    # A bare host: the port is not guessed.
    ("otel", f"--trace-otlp: bad address 'otel': no port; {_FORMS}"),
    ("http://otel", f"--trace-otlp: bad address 'otel': no port; {_FORMS}"),
    (":4317", f"--trace-otlp: bad address ':4317': no host; {_FORMS}"),
    # Bad ports.
    ("otel:0", "--trace-otlp: bad address 'otel:0': port '0' out of range"),
    ("otel:70000", "--trace-otlp: bad address 'otel:70000': port '70000' out of range"),
    ("otel:", "--trace-otlp: bad address 'otel:': port '' is not a number"),
    ("otel:43x7", "--trace-otlp: bad address 'otel:43x7': port '43x7' is not a number"),
    ("otel:+4317", "--trace-otlp: bad address 'otel:+4317': port '+4317' is not a number"),
    # Other schemes, hosts and IPv6 spellings.
    ("ftp://otel:4317", f"--trace-otlp 'ftp://otel:4317': {_FORMS}"),
    ("file:///etc/passwd", f"--trace-otlp 'file:///etc/passwd': {_FORMS}"),
    ("unix:/tmp/otel.sock", "--trace-otlp: bad address 'unix:/tmp/otel.sock': unix sockets "
                            "are not allowed here"),
    ("a b:4317", "--trace-otlp: bad address 'a b:4317': 'a b' is not a host name or IP"),
    ("http://user@otel:4317", "--trace-otlp: bad address 'user@otel:4317': 'user@otel' is "
                              "not a host name or IP"),
    ("::1:4317", "--trace-otlp: bad address '::1:4317': write IPv6 hosts as [ADDR]:PORT"),
    ("[::1:4317", "--trace-otlp: bad address '[::1:4317': expected [IPV6]:PORT"),
    ("[otel]:4317", "--trace-otlp: bad address '[otel]:4317': 'otel' is not an IPv6 address"),
]


@pytest.mark.parametrize(("endpoint", "message"), OTLP_REFUSED, ids=[e for e, _ in OTLP_REFUSED])
def test_up_render_and_serve_refuse_the_same_otlp_endpoints(endpoint: str,
                                                              message: str) -> None:
    """up/render (check_otlp, TraceFlags) and the services (tracesetup) check an
    endpoint with one parser, so they refuse the same ones with the same words."""
    refusals = []
    for check in (lambda: check_otlp(endpoint), lambda: TraceFlags(otlp=endpoint).checked(),
                  lambda: tracesetup.parse_otlp_endpoint(endpoint),
                  lambda: TraceSetup.from_flags("s", "", "", endpoint, ""),
                  lambda: tracing.parse_otlp_endpoint(endpoint)):
        with pytest.raises(ConfigError) as err:
            check()
        refusals.append(str(err.value))
    assert refusals == [message] * 5


@pytest.mark.parametrize(("endpoint", "parsed"), [
    ("127.0.0.1:4317", ("127.0.0.1", 4317, None)),
    ("otel:4317", ("otel", 4317, None)),
    (" otel:4317 ", ("otel", 4317, None)),
    ("http://127.0.0.1:4317", ("127.0.0.1", 4317, False)),
    ("http://otel:4317/", ("otel", 4317, False)),
    ("https://otel.example.:65535", ("otel.example.", 65535, True)),
    ("HTTPS://otel:1", ("otel", 1, True)),
    ("[::1]:4317", ("::1", 4317, None)),
    ("https://[2001:db8::1]:4317/", ("2001:db8::1", 4317, True)),
])
def test_up_render_and_serve_take_the_same_otlp_endpoints(
        endpoint: str, parsed: tuple[str, int, bool | None]) -> None:
    assert tracing.parse_otlp_endpoint(endpoint) == parsed
    check_otlp(endpoint)
    assert TraceFlags(otlp=endpoint).checked().otlp == endpoint
    addr, _want_tls = tracesetup.parse_otlp_endpoint(endpoint)
    assert (addr.host, addr.port) == parsed[:2]


def test_the_process_services_get_the_trace_flags(tmp_path: Path) -> None:
    orch = Orchestrator(state_dir=tmp_path)
    assert "--trace-sample" not in orch._service_args("q0", "127.0.0.1")
    orch.trace = TraceFlags("1/1000", "127.0.0.1:4317", str(tmp_path / "traces"))
    args = orch._service_args("q0", "127.0.0.1")
    assert args[args.index("--trace-sample") + 1] == "1/1000"
    assert args[args.index("--trace-otlp") + 1] == "127.0.0.1:4317"
    assert args[args.index("--trace-file") + 1] == str(tmp_path / "traces" / "q0.jsonl")


def test_the_docker_runtime_and_render_pass_sample_and_otlp() -> None:
    from virtwire.orchestrator.runtime.docker import DockerRuntime

    topo = parse_topology(TINY_LAN.format(name="d", port=10555), "lan.yaml")
    flags = TraceFlags("1/10", "otel:4317", "/not/in/a/container")
    command = DockerRuntime(topo, trace=flags)._command("hub0", HubServiceSpec())
    assert command[-4:] == ["--trace-sample", "1/10", "--trace-otlp", "otel:4317"]
    assert "--trace-sample" not in DockerRuntime(topo)._command("hub0", HubServiceSpec())
    for name, cmd in service_commands(topo, trace=flags).items():
        assert cmd[-4:] == ["--trace-sample", "1/10", "--trace-otlp", "otel:4317"], name
    assert render(topo, "compose") == render(topo, "compose", trace=TraceFlags())
    assert "--trace-sample" in render(topo, "k8s", trace=TraceFlags("1/10"))


def test_up_and_render_refuse_bad_trace_flags(tmp_path: Path) -> None:
    file = tmp_path / "t.yaml"
    file.write_text(TINY_LAN.format(name="tflags", port=_free_port()))
    env = {**os.environ, "VIRTWIRE_STATE_DIR": str(tmp_path / "state")}
    for args in (["up", str(file), "--trace-sample", "3/4"],
                 ["up", str(file), "--trace-otlp", "x y"],
                 ["up", str(file), "--trace-file", "--backend", "docker"],
                 ["render", "compose", str(file), "--trace-sample", "1/0"]):
        out = subprocess.run([*VIRTWIRE, *args], capture_output=True, text=True,
                             timeout=60, env=env)
        assert out.returncode == 2 and "trace" in out.stderr, (args, out.stderr)
    assert not (tmp_path / "state" / "tflags").exists()
    out = subprocess.run([*VIRTWIRE, "render", "compose", str(file), "--trace-sample",
                          "1/100", "--trace-otlp", "otel:4317"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0 and out.stdout.count("--trace-sample") == 2, out.stderr


# -- the verb against a real orchestrator ---------------------------------------------------
@pytest.fixture(scope="module")
def tiny_lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("trace-lan")
    env = {**os.environ, "VIRTWIRE_STATE_DIR": str(tmp / "state")}
    (tmp / "lan.yaml").write_text(TINY_LAN.format(name="tlan", port=_free_port()))
    out = subprocess.run([*VIRTWIRE, "up", str(tmp / "lan.yaml"), "--detach"],
                         capture_output=True, text=True, timeout=90, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    try:
        yield env
    finally:
        down = subprocess.run([*VIRTWIRE, "down", "tlan"], capture_output=True, text=True,
                              timeout=60, env=env)
        assert down.returncode == 0, down.stdout + down.stderr


def _trace(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VIRTWIRE, "trace", *args], capture_output=True, text=True,
                          timeout=90, env=env)


def test_the_verbs_errors(tiny_lan: dict[str, str]) -> None:
    out = _trace(tiny_lan, "vm9", "-m", "any")
    assert out.returncode == 2 and "no node 'vm9'" in out.stderr, out.stderr
    for count in ("0", "10001"):
        out = _trace(tiny_lan, "q0", "-m", "any", "--count", count)
        assert out.returncode == 2 and "--count" in out.stderr, out.stderr
    out = _trace(tiny_lan, "hub0", "-m", "any")  # a hub needs a port
    assert out.returncode == 2 and "hub0:PORT" in out.stderr, out.stderr


async def test_the_orchestrator_checks_the_request(tiny_lan: dict[str, str]) -> None:
    state = json.loads((Path(tiny_lan["VIRTWIRE_STATE_DIR"]) / "tlan" / "state.json"
                        ).read_text())
    async with grpc.aio.insecure_channel(state["orchestrator"]) as ch:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
        Req = orchestrator_pb2.OrchestratorServiceTraceRequest
        for request, code in (
                (Req(target="q0", match="any", count=0), grpc.StatusCode.OUT_OF_RANGE),
                (Req(target="q0", match="any", count=10001), grpc.StatusCode.OUT_OF_RANGE),
                (Req(target="q0", match="any", count=1, timeout_ms=3_600_001),
                 grpc.StatusCode.OUT_OF_RANGE),
                (Req(target="nope", match="any", count=1), grpc.StatusCode.NOT_FOUND)):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in stub.Trace(request, timeout=30):
                    pass
            assert err.value.code() == code, (request, err.value)


# -- end to end: a stream tap's frames through the hub --------------------------------------
E2E_LAN = """\
name: {name}
nodes:
  hub0: {{kind: hub}}
  q0: {{kind: tap, backend: stream, listen: 127.0.0.1:{port}}}
  q1: {{kind: tap, backend: stream, listen: 127.0.0.1:{port2}}}
links:
  - [q0, hub0]
  - [q1, hub0]
"""


@pytest.fixture
def e2e_lan(tmp_path: Path) -> Iterator[tuple[dict[str, str], int]]:
    """Two stream taps on a hub, up (detached); its environment and q0's port."""
    port = _free_port()
    (tmp_path / "lan.yaml").write_text(E2E_LAN.format(name="te2e", port=port,
                                                      port2=_free_port()))
    env = {**os.environ, "VIRTWIRE_STATE_DIR": str(tmp_path / "state")}
    up = subprocess.run([*VIRTWIRE, "up", str(tmp_path / "lan.yaml"), "--detach"],
                        capture_output=True, text=True, timeout=90, env=env)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield env, port
    finally:
        down = subprocess.run([*VIRTWIRE, "down", "te2e"], capture_output=True, text=True,
                              timeout=60, env=env)
        assert down.returncode == 0, down.stdout + down.stderr


async def _trace_while_sending(env: dict[str, str], writer: asyncio.StreamWriter,
                               frame: bytes, *args: str) -> tuple[int, str, str]:
    """`virtwire trace ARGS`, sending ``frame`` (stream framing) every 100 ms until
    it ends (at most 200 frames: it must arm and trace them before that)."""
    import struct

    proc = await asyncio.create_subprocess_exec(
        *VIRTWIRE, "trace", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    done = asyncio.ensure_future(proc.communicate())
    for _ in range(200):
        if done.done():
            break
        writer.write(struct.pack(">I", len(frame)) + frame)
        await writer.drain()
        await asyncio.wait({done}, timeout=0.1)
    out, err = await asyncio.wait_for(done, 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_trace_a_stream_taps_frames_through_the_hub(
        e2e_lan: tuple[dict[str, str], int]) -> None:
    env, port = e2e_lan
    frame = (b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5"
             + b"virtwire trace".ljust(46, b"\0"))
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    rc, out, err = await _trace_while_sending(
        env, writer, frame, "q0", "--match", "ethertype=0x88b5", "--count", "2",
        "--timeout", "20s", "--json")
    assert rc == 0, (out, err)
    frames = [json.loads(line) for line in out.splitlines()]
    assert len(frames) == 2
    for got in frames:
        path = [(s["name"], s["service"]) for s in got["spans"]]
        assert path[:3] == [("tap.read", "q0"), ("link.send", "q0"),
                            ("hub.forward", "hub0")], path
        # The hub sends it on to q1's link (not back to q0's), and as q1 has no
        # client that link drops it on the hub's side (docs/links.md, Discarding).
        assert ("link.discard", "hub0") in path[3:], path
        assert ("link.send", "hub0") not in path[3:], path
        assert all(s["hop_us"] is None or s["hop_us"] >= 0 for s in got["spans"])
    # And as a table.
    rc, out, err = await _trace_while_sending(env, writer, frame, "q0", "-m",
                                              "ethertype=0x88b5", "-t", "20s")
    assert rc == 0, (out, err)
    assert "tap.read" in out and "hub.forward" in out and "HOP µs" in out, out
    writer.close()


def test_up_passes_the_trace_flags_to_each_process_service(tmp_path: Path) -> None:
    file = tmp_path / "t.yaml"
    file.write_text(TINY_LAN.format(name="tup", port=_free_port()))
    env = {**os.environ, "VIRTWIRE_STATE_DIR": str(tmp_path / "state")}
    up = subprocess.run([*VIRTWIRE, "up", str(file), "--detach", "--trace-sample", "1/50",
                         "--trace-otlp", "127.0.0.1:4317", "--trace-file"],
                        capture_output=True, text=True, timeout=90, env=env)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        state = json.loads((tmp_path / "state" / "tup" / "state.json").read_text())
        for rec in state["services"]:
            argv = Path(f"/proc/{rec['pid']}/cmdline").read_bytes().decode().split("\0")
            assert argv[argv.index("--trace-sample") + 1] == "1/50", argv
            assert argv[argv.index("--trace-otlp") + 1] == "127.0.0.1:4317", argv
            assert argv[argv.index("--trace-file") + 1] == str(
                tmp_path / "state" / "tup" / "traces" / f"{rec['name']}.jsonl"), argv
    finally:
        down = subprocess.run([*VIRTWIRE, "down", "tup"], capture_output=True, text=True,
                              timeout=60, env=env)
        assert down.returncode == 0, down.stderr
