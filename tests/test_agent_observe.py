"""A host's agent starts a service that can be watched (issue 13): StartService's
metrics_listen, trace_sample, trace_otlp, trace_file and log_format.

The agent (`virtwire serve orchestrator`, in process on loopback) starts a tap
service with a QEMU stream port: frames sent into that port move its
/metrics counters (read with prometheus-client's parser), its spans land in
the agent's own state dir (agent/LAN/traces/NAME.jsonl) and its log is JSON.
Every bad field is INVALID_ARGUMENT before anything starts. Across real
addresses (TLS rules off loopback): tests/test_across_hosts.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from virtwire.address import SockAddr, parse_sockaddr
from virtwire.orchestrator.agent import ServiceExtras, agent_tls_args
from virtwire.server.orchestrator import OrchestratorServer
from virtwire.server.tracesetup import parse_otlp_endpoint
from virtwire.v1 import orchestrator_pb2, orchestrator_pb2_grpc, tap_pb2

from support.doubles import frame

pytestmark = pytest.mark.timeout(120)

StartRequest = orchestrator_pb2.OrchestratorServiceStartServiceRequest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tap(port: int) -> orchestrator_pb2.StartTapOptions:
    """A stream port listening on loopback (NetClient ``vm``)."""
    return orchestrator_pb2.StartTapOptions(backend=tap_pb2.BackendConfig(
        name="vm", stream=tap_pb2.StreamBackendConfig(address=f"127.0.0.1:{port}",
                                                      listen=True)))


@pytest.fixture
async def orch(tmp_path: Path) -> AsyncIterator[OrchestratorServer]:
    host = OrchestratorServer("127.0.0.1:0", state_dir=tmp_path / "state")
    await host.start()
    yield host
    await host.agent.close()
    await host.stop(grace=0.5)


def _dropped(text: str) -> tuple[float, dict[str, str]]:
    """The vm NetClient's frames dropped for want of a peer (it has none here),
    virtwire_netclient_dropped_frames_total{cause=link_down}, and its labels."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (sample.name == "virtwire_netclient_dropped_frames_total"
                    and sample.labels.get("netclient") == "vm"
                    and sample.labels.get("cause") == "link_down"):
                return sample.value, dict(sample.labels)
    raise AssertionError(f"no drop counter of vm in:\n{text[:2000]}")


def _scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as resp:
        assert resp.status == 200
        return str(resp.read().decode())


async def test_an_agent_starts_a_service_with_metrics_traces_and_json_logs(
        orch: OrchestratorServer, tmp_path: Path) -> None:
    stream, metrics = _free_port(), _free_port()
    request = StartRequest(lan="obs", name="q0", listen="127.0.0.1:0", tap=_tap(stream),
                           metrics_listen=f"127.0.0.1:{metrics}", trace_sample="1/1",
                           trace_file=True, log_format="json")
    agent_dir = tmp_path / "state" / "agent" / "obs"
    async with grpc.aio.insecure_channel(orch.address) as ch:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
        got = await stub.StartService(request, timeout=60)
        assert got.pid > 0
        before, labels = _dropped(await asyncio.to_thread(_scrape, f"127.0.0.1:{metrics}"))
        assert labels["lan"] == "obs" and labels["service"] == "q0"
        _reader, writer = await asyncio.open_connection("127.0.0.1", stream)
        try:
            for i in range(5):  # QEMU's stream framing: a 4-byte length, the frame
                data = frame(i)
                writer.write(len(data).to_bytes(4, "big") + data)
            await writer.drain()

            async def moved() -> bool:
                now, _ = _dropped(await asyncio.to_thread(_scrape, f"127.0.0.1:{metrics}"))
                return now >= before + 5

            for _ in range(100):
                if await moved():
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the drop counter did not move with five frames")
        finally:
            writer.close()
        # Stopping it flushes its spans (SIGTERM: the exporters shut down).
        stopped = await stub.StopServices(orchestrator_pb2.OrchestratorServiceStopServicesRequest(
            lan="obs", names=["q0"], timeout_ms=10_000), timeout=30)
        assert stopped.stopped == 1
    spans = [json.loads(line) for line in
             (agent_dir / "traces" / "q0.jsonl").read_text().splitlines()]
    reads = [s for s in spans if s["name"] == "tap.read"]
    assert len(reads) >= 5, spans
    assert {s["resource"]["attributes"]["service.name"] for s in reads} == {"q0"}
    assert {s["resource"]["attributes"]["virtwire.lan"] for s in reads} == {"obs"}
    # Its log is JSON lines, one event a line, naming the service.
    events = [json.loads(line) for line in (agent_dir / "q0.log").read_text().splitlines()
              if line.startswith("{")]
    assert events and all(e.get("service") == "q0" for e in events), events


BAD = [
    ({"metrics_listen": "nowhere"}, "StartService.metrics_listen: bad address 'nowhere'"),
    ({"metrics_listen": "unix:/tmp/m.sock"}, "StartService.metrics_listen: bad address "
                                             "'unix:/tmp/m.sock': unix sockets"),
    ({"metrics_listen": "127.0.0.1:0"}, "StartService.metrics_listen: bad address "
                                        "'127.0.0.1:0': port '0' out of range"),
    ({"metrics_listen": "9400"}, "StartService.metrics_listen: bad address '9400'"),
    ({"trace_sample": "2/3"}, "StartService.trace_sample: --trace-sample '2/3': expected "
                              "off or 1/N"),
    ({"trace_sample": "1/0"}, "StartService.trace_sample: --trace-sample '1/0': N must be"),
    ({"trace_sample": "often"}, "StartService.trace_sample: --trace-sample 'often'"),
    ({"trace_otlp": "ftp://127.0.0.1:4317"}, "StartService.trace_otlp: --trace-otlp "),
    ({"trace_otlp": "http://127.0.0.1:4317/v1/traces"}, "StartService.trace_otlp: "
                                                        "--trace-otlp 'http://127.0.0.1:4317/v1/"),
    ({"trace_otlp": "127.0.0.1:0"}, "StartService.trace_otlp: --trace-otlp: bad address"),
    ({"trace_otlp": "http://198.18.0.9:4317"}, "StartService.trace_otlp 'http://198.18.0.9"
                                               ":4317': refusing plaintext"),
    ({"log_format": "xml"}, "StartService.log_format 'xml': use one of text, json"),
    ({"trace_sample": "1/" + "9" * 300}, "StartService.trace_sample: 302 characters, at most"),
]


@pytest.mark.parametrize(("fields", "message"), BAD, ids=[m[:40] for _, m in BAD])
async def test_bad_fields_are_invalid_argument_before_anything_starts(
        orch: OrchestratorServer, tmp_path: Path, fields: dict[str, Any], message: str) -> None:
    stream = _free_port()
    async with grpc.aio.insecure_channel(orch.address) as ch:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.StartService(StartRequest(lan="bad", name="q0", listen="127.0.0.1:0",
                                                 tap=_tap(stream), **fields), timeout=30)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert (err.value.details() or "").startswith(message), err.value.details()
        listed = await stub.ListServices(
            orchestrator_pb2.OrchestratorServiceListServicesRequest(lan="bad"), timeout=10)
    assert list(listed.services) == []
    # Nothing listens on the stream port and no state was made for the LAN.
    with socket.socket() as s:
        s.bind(("127.0.0.1", stream))
    assert not (tmp_path / "state" / "agent" / "bad").exists()


async def test_a_collector_over_tls_needs_the_agents_identity(
        orch: OrchestratorServer) -> None:
    async with grpc.aio.insecure_channel(orch.address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await orchestrator_pb2_grpc.OrchestratorServiceStub(ch).StartService(StartRequest(
                lan="bad", name="q0", listen="127.0.0.1:0", tap=_tap(_free_port()),
                trace_otlp="https://127.0.0.1:4317"), timeout=30)
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "has no TLS identity" in (err.value.details() or "")


def test_extras_become_the_services_flags(tmp_path: Path) -> None:
    extras = ServiceExtras.from_request(StartRequest(
        metrics_listen="198.18.7.2:9400", trace_sample="7", trace_otlp="127.0.0.1:4317",
        trace_file=True, log_format="json"), parse_otlp_endpoint)
    assert extras.args("lab", "vm2-e1000", tmp_path) == [
        "--metrics-listen", "198.18.7.2:9400", "--metrics-lan", "lab",
        "--metrics-service", "vm2-e1000", "--trace-sample", "1/7",
        "--trace-otlp", "127.0.0.1:4317", "--trace-file", f"{tmp_path}/vm2-e1000.jsonl"]
    assert extras.log_format == "json"
    off = ServiceExtras.from_request(StartRequest(trace_sample="off"), parse_otlp_endpoint)
    assert off.args("lab", "x", tmp_path) == [] and off.log_format == ""
    # /metrics off loopback follows the gRPC port's rule: plaintext needs --insecure.
    lan: SockAddr = parse_sockaddr("198.18.7.2:9400")
    assert agent_tls_args("x", "127.0.0.1") == []
    assert agent_tls_args("x", "127.0.0.1", parse_sockaddr("127.0.0.1:9400")) == []
    assert agent_tls_args("x", "127.0.0.1", lan) == ["--insecure"]
    assert agent_tls_args("x", "198.18.7.2", None) == ["--insecure"]

