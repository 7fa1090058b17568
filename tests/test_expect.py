"""Assertions, the LAN as a test oracle (issue 11 item 4): FrameWatch in-process,
NetClientService.WaitForFrame / ExpectNoFrame / CountFrames against an
in-process hub (answers, bounds, errors, the subscriber cap, cancellation), and
`virtwire expect` through the real console script, on a service and on the
default LAN, with its exit codes; the orchestrator's WaitForFrame /
ExpectNoFrame / CountFrames for LAN nodes (by stub and grpcurl), forwarded to
the node's service with the caller's deadline."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from google.protobuf.message import Message

from virtwire.cli.exitcode import EXIT_ERROR, EXIT_OK, EXIT_USAGE
from virtwire.errors import LimitError, OutOfRangeError
from virtwire.guest.responder import build_echo_frame
from virtwire.net.assertion import MAX_WAIT_S, FrameWatch
from virtwire.net.match import parse_match
from virtwire.server.authz import Access, access_of
from virtwire.server.base import inject
from virtwire.server.hub import HubServer
from virtwire.v1 import (
    netclient_pb2,
    netclient_pb2_grpc,
    orchestrator_pb2,
    orchestrator_pb2_grpc,
)

from support.doubles import Sink, frame, until
from support.e1000_program import eth, ipv4, udp
from support.procs import GRPCURL, grpcurl

VIRTWIRE_SCRIPT = Path(sys.executable).parent / "virtwire"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "default.yaml"

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")
IP_A = ipaddress.IPv4Address("198.18.0.1")
IP_B = ipaddress.IPv4Address("198.18.0.2")
PING = build_echo_frame(8, MAC_A, MAC_B, IP_A, IP_B, 7, 1, b"ping")
DNS = eth(MAC_B, MAC_A, 0x0800, ipv4(IP_A.packed, IP_B.packed, 17, udp(40000, 53, b"q")))
OTHER = frame(1)  # EtherType 0x88B5


@pytest.fixture
async def hub_sink(hub: HubServer) -> AsyncIterator[tuple[HubServer, Sink]]:
    """p0 (frames injected into it go out of p1, to a sink: p1's tx)."""
    hub.add_port("p0")
    p1 = hub.add_port("p1")
    sink = Sink("sink")
    p1.peer, sink.peer = sink, p1
    yield hub, sink


@pytest.fixture
async def stub(hub_sink: tuple[HubServer, Sink]
               ) -> AsyncIterator[netclient_pb2_grpc.NetClientServiceStub]:
    async with grpc.aio.insecure_channel(hub_sink[0].address) as ch:
        yield netclient_pb2_grpc.NetClientServiceStub(ch)


async def watching(hub: HubServer, name: str, n: int = 1) -> None:
    """Until ``name`` has ``n`` capture subscribers (an assertion has started)."""
    nc = hub.registry.get(name)
    await until(lambda: len(nc.capture_hooks) >= n, what=f"{n} watches on {name}")


# -- FrameWatch in-process -----------------------------------------------------------------
async def test_a_watch_queues_only_matching_frames_and_counts_what_it_lost(
        hub_sink: tuple[HubServer, Sink]) -> None:
    hub, sink = hub_sink
    p0, p1 = hub.registry.get("p0"), hub.registry.get("p1")
    with FrameWatch(p1, parse_match("ip.proto=udp,udp.dport=53"), rx=False, maxlen=4) as w:
        inject(p0, OTHER, 50)  # does not match: takes no place in the queue
        inject(p0, DNS, 10)
        got = await w.count_frames(30, at_least=10)
    assert (got.count, got.lost) == (10, 6)
    assert p1.capture_dropped == 6
    assert p1.capture_hooks == []
    assert len(sink.frames) == 60, "watching does not take frames off the data path"


async def test_a_watch_sees_one_direction_only(hub_sink: tuple[HubServer, Sink]) -> None:
    hub, _ = hub_sink
    p0, p1 = hub.registry.get("p0"), hub.registry.get("p1")
    with FrameWatch(p1, parse_match("any"), tx=False) as rx_only:
        inject(p0, PING)  # p1 sends it: tx
        assert await rx_only.expect_no_frame(0.05) is None
    with FrameWatch(p1, parse_match("any"), rx=False) as tx_only:
        inject(p0, PING)
        got = await tx_only.wait_for_frame(30)
    assert got is not None and (got.direction, got.frame) == ("tx", PING)


async def test_bounds_of_a_wait(hub_sink: tuple[HubServer, Sink]) -> None:
    p1 = hub_sink[0].registry.get("p1")
    with FrameWatch(p1, parse_match("any")) as w:
        for bad in (0.0, -1.0, MAX_WAIT_S + 1):
            with pytest.raises(OutOfRangeError, match="out of range"):
                await w.wait_for_frame(bad)
            with pytest.raises(OutOfRangeError):
                await w.count_frames(bad)


async def test_a_watch_past_the_subscriber_cap_is_refused_and_counted(
        hub_sink: tuple[HubServer, Sink]) -> None:
    p1 = hub_sink[0].registry.get("p1")
    with FrameWatch(p1, parse_match("any"), max_subscribers=1):
        with pytest.raises(LimitError), FrameWatch(p1, parse_match("any"), max_subscribers=1):
            pass
    assert p1.capture_refused == 1


# -- the RPCs ---------------------------------------------------------------------------
async def test_wait_for_frame_returns_the_first_matching_one(
        hub_sink: tuple[HubServer, Sink], stub: netclient_pb2_grpc.NetClientServiceStub) -> None:
    hub, _ = hub_sink
    call = asyncio.ensure_future(stub.WaitForFrame(netclient_pb2.WaitForFrameRequest(
        name="p1", match="ip.src=198.18.0.1,ip.proto=icmp", timeout_ms=60_000)))
    await watching(hub, "p1")
    p0 = hub.registry.get("p0")
    inject(p0, OTHER)
    inject(p0, DNS)
    inject(p0, PING)
    got = await asyncio.wait_for(call, 30)
    assert got.frame.frame == PING
    assert got.frame.direction == netclient_pb2.DIRECTION_TX
    assert got.frame.timestamp_ns > 0
    assert hub.registry.get("p1").capture_hooks == []


async def test_wait_for_frame_in_time_or_deadline_exceeded(
        hub_sink: tuple[HubServer, Sink], stub: netclient_pb2_grpc.NetClientServiceStub) -> None:
    hub, _ = hub_sink
    call = asyncio.ensure_future(stub.WaitForFrame(netclient_pb2.WaitForFrameRequest(
        name="p0", match="pcap:udp dst port 53", direction=netclient_pb2.DIRECTION_RX,
        timeout_ms=200)))
    await watching(hub, "p0")
    inject(hub.registry.get("p0"), PING)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await asyncio.wait_for(call, 30)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert info.value.details() == ("no frame matching pcap:udp dst port 53 on p0 "
                                    "within 0.2 s")


async def test_expect_no_frame_ok_or_the_offending_one(
        hub_sink: tuple[HubServer, Sink], stub: netclient_pb2_grpc.NetClientServiceStub) -> None:
    hub, _ = hub_sink
    p0 = hub.registry.get("p0")
    call = asyncio.ensure_future(stub.ExpectNoFrame(netclient_pb2.ExpectNoFrameRequest(
        name="p1", match="udp.dport=53", duration_ms=300)))
    await watching(hub, "p1")
    inject(p0, PING)
    got = await asyncio.wait_for(call, 30)
    assert not got.seen and not got.HasField("frame")

    # The first offending frame ends the watch (the duration is far longer than the test).
    call = asyncio.ensure_future(stub.ExpectNoFrame(netclient_pb2.ExpectNoFrameRequest(
        name="p1", match="udp.dport=53", duration_ms=3_600_000)))
    await watching(hub, "p1")
    inject(p0, PING)
    inject(p0, DNS)
    got = await asyncio.wait_for(call, 30)
    assert got.seen and got.frame.frame == DNS


async def test_count_frames_over_a_duration_or_up_to_at_least(
        hub_sink: tuple[HubServer, Sink], stub: netclient_pb2_grpc.NetClientServiceStub) -> None:
    hub, _ = hub_sink
    p0 = hub.registry.get("p0")
    call = asyncio.ensure_future(stub.CountFrames(netclient_pb2.CountFramesRequest(
        name="p1", match="ethertype=0x88b5", duration_ms=1000)))
    await watching(hub, "p1")
    inject(p0, OTHER, 5)
    inject(p0, PING, 3)
    got = await asyncio.wait_for(call, 30)
    assert (got.count, got.lost) == (5, 0)
    assert got.elapsed_ms >= 1000

    call = asyncio.ensure_future(stub.CountFrames(netclient_pb2.CountFramesRequest(
        name="p1", match="ip.proto=icmp", duration_ms=3_600_000, at_least=4)))
    await watching(hub, "p1")
    inject(p0, PING, 4)
    got = await asyncio.wait_for(call, 30)
    assert got.count == 4 and got.elapsed_ms < 3_600_000


@pytest.mark.parametrize(("request_", "code", "words"), [
    (netclient_pb2.WaitForFrameRequest(name="p9", match="any", timeout_ms=10),
     grpc.StatusCode.NOT_FOUND, "no NetClient named 'p9'"),
    (netclient_pb2.WaitForFrameRequest(name="p1", match="udp.dprot=53", timeout_ms=10),
     grpc.StatusCode.INVALID_ARGUMENT, "did you mean udp.dport?"),
    (netclient_pb2.WaitForFrameRequest(name="p1", match="", timeout_ms=10),
     grpc.StatusCode.INVALID_ARGUMENT, "empty match expression"),
    (netclient_pb2.WaitForFrameRequest(name="p1", match="pcap:port", timeout_ms=10),
     grpc.StatusCode.INVALID_ARGUMENT, "syntax error"),
    (netclient_pb2.WaitForFrameRequest(name="p1", match="any", timeout_ms=0),
     grpc.StatusCode.OUT_OF_RANGE, "timeout 0 s is out of range"),
    (netclient_pb2.WaitForFrameRequest(name="p1", match="any", timeout_ms=3_600_001),
     grpc.StatusCode.OUT_OF_RANGE, "at most 3600 s"),
    (netclient_pb2.WaitForFrameRequest(name="p1", match="any", timeout_ms=10,
                                      direction=cast(Any, 9)),
     grpc.StatusCode.INVALID_ARGUMENT, "unknown direction 9"),
    (netclient_pb2.ExpectNoFrameRequest(name="p1", match="any", duration_ms=0),
     grpc.StatusCode.OUT_OF_RANGE, "duration 0 s is out of range"),
    (netclient_pb2.CountFramesRequest(name="p1", match="a" * 1025, duration_ms=10),
     grpc.StatusCode.INVALID_ARGUMENT, "longer than 1024"),
    (netclient_pb2.CountFramesRequest(name="p1", match="any", duration_ms=4_000_000),
     grpc.StatusCode.OUT_OF_RANGE, "out of range"),
])
async def test_bad_requests_are_refused_with_their_status(
        hub_sink: tuple[HubServer, Sink], stub: netclient_pb2_grpc.NetClientServiceStub,
        request_: Message, code: grpc.StatusCode, words: str) -> None:
    method = {netclient_pb2.WaitForFrameRequest: stub.WaitForFrame,
              netclient_pb2.ExpectNoFrameRequest: stub.ExpectNoFrame,
              netclient_pb2.CountFramesRequest: stub.CountFrames}[type(request_)]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await method(request_, timeout=30)
    assert info.value.code() == code
    assert words in (info.value.details() or "")
    assert hub_sink[0].registry.get("p1").capture_hooks == []


async def test_each_assertion_takes_a_capture_subscription_while_it_runs(
        hub_sink: tuple[HubServer, Sink], stub: netclient_pb2_grpc.NetClientServiceStub) -> None:
    hub, _ = hub_sink
    hub.registry.max_captures = 1
    first = asyncio.ensure_future(stub.WaitForFrame(netclient_pb2.WaitForFrameRequest(
        name="p1", match="any", timeout_ms=3_600_000)))
    await watching(hub, "p1")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CountFrames(netclient_pb2.CountFramesRequest(
            name="p1", match="any", duration_ms=10), timeout=30)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "capture subscribers" in (info.value.details() or "")
    # A caller that goes away releases its watch.
    first.cancel()
    p1 = hub.registry.get("p1")
    await until(lambda: p1.capture_hooks == [], what="the cancelled watch closed")
    assert p1.capture_refused == 1


def test_the_assertions_are_reads() -> None:
    for method in ("WaitForFrame", "ExpectNoFrame", "CountFrames"):
        assert access_of(f"/virtwire.v1.NetClientService/{method}") is Access.READ


# -- virtwire expect -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def script() -> Path:
    assert VIRTWIRE_SCRIPT.exists(), "pip install -e . makes the virtwire script"
    return VIRTWIRE_SCRIPT


async def _run(script: Path, *args: str, env: dict[str, str] | None = None
               ) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(script), *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _expect_while(hub: HubServer, script: Path, args: tuple[str, ...],
                        frames: list[bytes], watched: str = "p1") -> tuple[int, str, str]:
    """Run `virtwire expect ARGS`; once it watches, inject ``frames`` into p0."""
    run = asyncio.ensure_future(_run(script, "expect", *args))
    await watching(hub, watched)
    for f in frames:
        inject(hub.registry.get("p0"), f)
    return await run


async def test_expect_exits_0_when_the_frame_comes(
        script: Path, hub_sink: tuple[HubServer, Sink]) -> None:
    hub, _ = hub_sink
    rc, out, err = await _expect_while(
        hub, script, ("-s", hub.address, "p1", "--match", "ip.proto=icmp", "--timeout", "60s"),
        [DNS, PING])
    assert rc == EXIT_OK, (out, err)
    assert out.startswith("met: p1: frame matching ip.proto=icmp: seen after "), out
    assert f"(tx, {len(PING)} bytes, 02:00:00:00:00:01 > 02:00:00:00:00:02, IPv4 198.18.0.1 > " \
           "198.18.0.2 icmp)" in out, out


async def test_expect_exits_1_when_it_does_not(
        script: Path, hub_sink: tuple[HubServer, Sink]) -> None:
    hub, _ = hub_sink
    rc, out, err = await _expect_while(
        hub, script, (f"{hub.address}/p1", "-m", "pcap:udp port 53", "-t", "300ms"), [PING])
    assert rc == EXIT_ERROR, (out, err)
    assert out.strip() == (f"not met: {hub.address}/p1: frame matching pcap:udp port 53: "
                           "none within 0.3 s")
    assert err == ""


async def test_expect_none_and_count(script: Path, hub_sink: tuple[HubServer, Sink]) -> None:
    hub, _ = hub_sink
    base = ("-s", hub.address, "p1")
    rc, out, _ = await _expect_while(
        hub, script, (*base, "-m", "udp.dport=53", "--none", "-t", "300ms"), [PING])
    assert rc == EXIT_OK and out.strip() == "met: p1: no frame matching udp.dport=53 in 0.3 s"
    rc, out, _ = await _expect_while(
        hub, script, (*base, "-m", "udp.dport=53", "--none", "-t", "3600s"), [PING, DNS])
    assert rc == EXIT_ERROR and out.startswith(
        "not met: p1: no frame matching udp.dport=53: one seen after "), out

    rc, out, _ = await _expect_while(
        hub, script, (*base, "-m", "ip.proto=icmp", "--count", "3", "-t", "3600s"), [PING] * 3)
    assert rc == EXIT_OK and out.startswith("met: p1: frame matching ip.proto=icmp: 3 in "), out
    rc, out, _ = await _expect_while(
        hub, script, (*base, "-m", "ip.proto=icmp", "--count", "3", "-t", "300ms"), [PING] * 2)
    assert rc == EXIT_ERROR and out.endswith(", wanted at least 3\n"), out
    rc, out, _ = await _expect_while(
        hub, script, (*base, "-m", "ip.proto=icmp", "-c", "2", "--exact", "-t", "500ms"),
        [PING] * 3)
    assert rc == EXIT_ERROR and ": 3 in " in out and out.endswith("wanted exactly 2\n"), out


@pytest.mark.parametrize(("args", "words"), [
    (("-m", "udp.dprot=53"), "did you mean udp.dport?"),
    (("-m", "any", "-t", "7200s"), "--timeout 7200 s is out of range"),
    (("-m", "any", "-t", "0"), "out of range"),
    (("-m", "any", "--exact"), "--exact goes with --count N"),
    (("-m", "any", "--none", "--count", "1"), "not allowed with argument"),
    (("-m", "any", "-t", "soon"), "is not a number with a unit"),
])
async def test_expect_usage_errors_exit_2(script: Path, hub_sink: tuple[HubServer, Sink],
                                          args: tuple[str, ...], words: str) -> None:
    rc, out, err = await _run(script, "expect", "-s", hub_sink[0].address, "p1", *args)
    assert rc == EXIT_USAGE, (out, err)
    assert words in err and "Traceback" not in err, err


async def test_expect_on_an_unknown_netclient_exits_2_with_the_services_words(
        script: Path, hub_sink: tuple[HubServer, Sink]) -> None:
    rc, out, err = await _run(script, "expect", f"{hub_sink[0].address}/p9", "-m", "any")
    assert rc == EXIT_USAGE, (out, err)
    assert "no NetClient named 'p9'" in err and "Traceback" not in err, err


# -- on the default LAN ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def lan_env(tmp_path_factory: pytest.TempPathFactory, script: Path) -> Iterator[dict[str, str]]:
    """examples/default.yaml, up (detached) on a free stream port, its state in a
    temporary directory; the environment that finds it."""
    tmp = tmp_path_factory.mktemp("expect-lan")
    env = {**os.environ, "VIRTWIRE_STATE_DIR": str(tmp / "state")}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp / "lan.yaml").write_text(EXAMPLE.read_text().replace("127.0.0.1:10555",
                                                              f"127.0.0.1:{port}"))
    out = subprocess.run([str(script), "up", str(tmp / "lan.yaml"), "--detach"],
                         capture_output=True, text=True, timeout=90, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    try:
        yield env
    finally:
        down = subprocess.run([str(script), "down", "default"], capture_output=True,
                              text=True, timeout=60, env=env)
        assert down.returncode == 0, down.stdout + down.stderr


async def test_expect_a_ping_on_a_lan_node(script: Path, lan_env: dict[str, str]) -> None:
    """vm2's NIC receives vm1's echo request and sends its reply, as the
    orchestrator's WaitForFrame, forwarded to vm2's e1000, finds them."""
    request = ("vm2", "-m", "ip.src=198.18.0.1,ip.dst=198.18.0.2,ip.proto=icmp",
               "--direction", "rx", "-t", "60s")
    reply = ("vm2", "-m", "pcap:icmp[icmptype] = icmp-echoreply and src host 198.18.0.2",
             "--direction", "tx", "-t", "60s")
    runs = [asyncio.ensure_future(_run(script, "expect", *a, env=lan_env))
            for a in (request, reply)]
    # The watches start when the orchestrator's streams do: ping until both are met.
    for _ in range(60):
        rc, out, err = await _run(script, "ping", "vm1", "vm2", "-c", "1", env=lan_env)
        assert rc == EXIT_OK, (out, err)
        if all(r.done() for r in runs):
            break
        await asyncio.sleep(0.5)
    for run in runs:
        rc, out, err = await asyncio.wait_for(run, 90)
        assert rc == EXIT_OK, (out, err)
        assert out.startswith("met: vm2: frame matching "), out
    rc, out, err = await _run(script, "expect", "vm2", "-m", "udp.dport=9", "--none",
                              "-t", "300ms", env=lan_env)
    assert rc == EXIT_OK, (out, err)
    rc, out, err = await _run(script, "expect", "vm9", "-m", "any", env=lan_env)
    assert rc == EXIT_USAGE and "no node 'vm9'" in err, (out, err)


# -- the orchestrator serves the assertions for LAN nodes -----------------------------------
def _orchestrator(env: dict[str, str]) -> str:
    state = json.loads((Path(env["VIRTWIRE_STATE_DIR"]) / "default" / "state.json").read_text())
    return str(state["orchestrator"])


async def _subscribers(stub: orchestrator_pb2_grpc.OrchestratorServiceStub, node: str,
                       netclient: str) -> int:
    status = await stub.GetStatus(orchestrator_pb2.OrchestratorServiceGetStatusRequest(),
                                  timeout=30)
    for ns in status.nodes:
        if ns.name == node:
            for nc in ns.netclients:
                if nc.name == netclient:
                    return int(nc.info.counters.capture_subscribers)
    raise AssertionError(f"no {node} {netclient} in {status}")


async def _until_watched(stub: orchestrator_pb2_grpc.OrchestratorServiceStub, node: str,
                         netclient: str, call: asyncio.Future[Any]) -> None:
    """Until ``node``'s ``netclient`` is watched (``call``'s watch started; its
    failure, if it ends first)."""
    for _ in range(600):
        if call.done():
            call.result()
            raise AssertionError(f"{call} ended before its watch was seen")
        if await _subscribers(stub, node, netclient) >= 1:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{node} {netclient}: no watch within 30 s")


async def test_the_orchestrator_forwards_the_assertions_to_the_nodes_service(
        lan_env: dict[str, str]) -> None:
    """Each RPC by node name, answered by the hub: a frame injected into the
    hub's qemu0 port is its rx, and goes out of hub0port1 (tx) to vm1."""
    async with grpc.aio.insecure_channel(_orchestrator(lan_env)) as ch:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
        call = asyncio.ensure_future(stub.WaitForFrame(
            orchestrator_pb2.OrchestratorServiceWaitForFrameRequest(
                target="hub0:hub0port1", match="ethertype=0x88b5",
                direction=netclient_pb2.DIRECTION_TX, timeout_ms=60_000), timeout=90))
        await _until_watched(stub, "hub0", "hub0port1", call)
        await stub.Inject(orchestrator_pb2.OrchestratorServiceInjectRequest(
            target="hub0:qemu0", frame=DNS), timeout=30)
        await stub.Inject(orchestrator_pb2.OrchestratorServiceInjectRequest(
            target="hub0:qemu0", frame=OTHER), timeout=30)
        got = await call
        assert got.frame.frame == OTHER
        assert got.frame.direction == netclient_pb2.DIRECTION_TX

        count = asyncio.ensure_future(stub.CountFrames(
            orchestrator_pb2.OrchestratorServiceCountFramesRequest(
                target="hub0:qemu0", match="ip.proto=udp,udp.dport=53",
                direction=netclient_pb2.DIRECTION_RX, duration_ms=3_600_000, at_least=3),
            timeout=90))
        await _until_watched(stub, "hub0", "qemu0", count)
        await stub.Inject(orchestrator_pb2.OrchestratorServiceInjectRequest(
            target="hub0:qemu0", frame=OTHER, repeat=2), timeout=30)
        await stub.Inject(orchestrator_pb2.OrchestratorServiceInjectRequest(
            target="hub0:qemu0", frame=DNS, repeat=3), timeout=30)
        counted = await count
        assert (counted.count, counted.lost) == (3, 0)
        assert counted.elapsed_ms < 3_600_000

        none = await stub.ExpectNoFrame(orchestrator_pb2.OrchestratorServiceExpectNoFrameRequest(
            target="vm2", match="udp.dport=9", duration_ms=200), timeout=30)
        assert not none.seen and not none.HasField("frame")

        # None in time: the service's DEADLINE_EXCEEDED and its words, passed on.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.WaitForFrame(orchestrator_pb2.OrchestratorServiceWaitForFrameRequest(
                target="hub0:qemu0", match="udp.dport=9", timeout_ms=200), timeout=30)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert info.value.details() == ("no frame matching udp.dport=9 on qemu0 "
                                        "within 0.2 s")


async def test_the_callers_deadline_goes_with_the_forwarded_call(
        lan_env: dict[str, str]) -> None:
    """A caller that gives up after 1 s of an hour's wait: the forwarded call
    carries that deadline, so the hub releases its watch then, not in an hour."""
    async with grpc.aio.insecure_channel(_orchestrator(lan_env)) as ch:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
        before = await _subscribers(stub, "hub0", "hub0port2")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.WaitForFrame(orchestrator_pb2.OrchestratorServiceWaitForFrameRequest(
                target="hub0:hub0port2", match="udp.dport=9", timeout_ms=3_600_000),
                timeout=1)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        for _ in range(600):
            if await _subscribers(stub, "hub0", "hub0port2") == before:
                break
            await asyncio.sleep(0.05)
        assert await _subscribers(stub, "hub0", "hub0port2") == before, \
            "the hub still watches for a caller that is gone"


@pytest.mark.parametrize(("method", "body", "code", "words"), [
    ("WaitForFrame", {"target": "vm9", "match": "any", "timeout_ms": 10},
     "NotFound", "no node 'vm9' in LAN 'default'"),
    ("CountFrames", {"target": "hub0:nope", "match": "any", "duration_ms": 10},
     "NotFound", "no NetClient named 'nope'"),
    ("WaitForFrame", {"target": "vm2", "match": "udp.dprot=53", "timeout_ms": 10},
     "InvalidArgument", "did you mean udp.dport?"),
    ("ExpectNoFrame", {"target": "vm2", "match": "pcap:port", "duration_ms": 10},
     "InvalidArgument", "syntax error"),
    ("WaitForFrame", {"target": "hub0", "match": "any", "timeout_ms": 10},
     "InvalidArgument", "hub0 is a hub: name a port"),
    ("CountFrames", {"target": "vm2", "match": "any", "duration_ms": 4_000_000},
     "OutOfRange", "out of range"),
])
def test_bad_assertions_to_the_orchestrator_through_grpcurl(
        lan_env: dict[str, str], method: str, body: dict[str, Any], code: str,
        words: str) -> None:
    out = subprocess.run([str(GRPCURL), "-plaintext", "-d", json.dumps(body),
                          _orchestrator(lan_env), f"virtwire.v1.OrchestratorService/{method}"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0, out.stdout
    assert f"Code: {code}" in out.stderr and words in out.stderr, out.stderr


def test_grpcurl_waits_for_a_frame_on_a_lan_node(lan_env: dict[str, str]) -> None:
    """grpcurl as a user would call it: ExpectNoFrame answered by vm2's e1000."""
    out = grpcurl("-d", json.dumps({"target": "vm2", "match": "udp.dport=9",
                                    "duration_ms": 200}),
                  _orchestrator(lan_env), "virtwire.v1.OrchestratorService/ExpectNoFrame",
                  timeout=60)
    assert json.loads(out or "{}").get("seen", False) is False


def test_the_orchestrators_assertions_are_reads() -> None:
    for method in ("WaitForFrame", "ExpectNoFrame", "CountFrames"):
        assert access_of(f"/virtwire.v1.OrchestratorService/{method}") is Access.READ


async def test_expect_on_a_lan_uses_the_orchestrators_rpc(
        script: Path, lan_env: dict[str, str]) -> None:
    """The CLI asks the orchestrator (one watch on the hub while it runs: no
    Capture stream of its own) and prints the service's verdict."""
    async with grpc.aio.insecure_channel(_orchestrator(lan_env)) as ch:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
        run = asyncio.ensure_future(_run(script, "expect", "hub0:qemu0", "-m", "ethertype=0x88b5",
                                         "--direction", "rx", "-c", "2", "-t", "3600s",
                                         env=lan_env))
        await _until_watched(stub, "hub0", "qemu0", run)
        await stub.Inject(orchestrator_pb2.OrchestratorServiceInjectRequest(
            target="hub0:qemu0", frame=OTHER, repeat=2), timeout=30)
        rc, out, err = await run
    assert rc == EXIT_OK, (out, err)
    assert out.startswith("met: hub0:qemu0: frame matching ethertype=0x88b5: 2 in "), out
    rc, out, err = await _run(script, "expect", "hub0:nope", "-m", "any", "-t", "1s",
                              env=lan_env)
    assert rc == EXIT_USAGE and "no NetClient named 'nope'" in err, (out, err)
    rc, out, err = await _run(script, "expect", "hub0:qemu0", "-m", "udp.dport=9", "-t", "200ms",
                              env=lan_env)
    assert rc == EXIT_ERROR, (out, err)
    assert out.strip() == "not met: hub0:qemu0: frame matching udp.dport=9: none within 0.2 s"


class _Context:
    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining


@pytest.mark.parametrize(("remaining", "wait_ms", "deadline"), [
    (2.5, 60_000, 2.5),          # the caller's deadline, kept
    (None, 2_000, 12.0),         # none: the wait and the orchestrator's margin
    (1e9, 2_000, 12.0),          # one past the wait: no longer than it needs
    (-1.0, 2_000, 0.0),          # already past: the callee answers DEADLINE_EXCEEDED
])
def test_the_forwarded_deadline(remaining: float | None, wait_ms: int,
                                deadline: float) -> None:
    from virtwire.server.orchestrator import assertion_deadline

    assert assertion_deadline(cast(Any, _Context(remaining)), wait_ms) == deadline


# -- virtwire expect --json ------------------------------------------------------------------
_JSON_KEYS = ["target", "match", "mode", "met", "elapsed_s", "timeout_s", "frame", "count",
              "lost", "at_least", "exact"]


async def test_expect_json_in_each_mode_with_the_same_exit_codes(
        script: Path, hub_sink: tuple[HubServer, Sink]) -> None:
    hub, _ = hub_sink
    base = ("-s", hub.address, "p1", "--json")
    rc, out, err = await _expect_while(
        hub, script, (*base, "-m", "ip.proto=icmp", "-t", "60s"), [DNS, PING])
    assert rc == EXIT_OK, (out, err)
    got = json.loads(out)
    assert list(got) == _JSON_KEYS
    assert (got["target"], got["match"], got["mode"], got["met"]) == (
        "p1", "ip.proto=icmp", "frame", True)
    assert got["timeout_s"] == 60 and 0 < got["elapsed_s"] < 60
    assert got["frame"]["direction"] == "tx" and got["frame"]["hex"] == PING.hex()
    assert got["frame"]["length"] == len(PING) and got["frame"]["timestamp_ns"] > 0
    assert got["frame"]["summary"].startswith(f"{len(PING)} bytes, 02:00:00:00:00:01 > ")
    assert (got["count"], got["lost"], got["at_least"], got["exact"]) == (None, None, None,
                                                                        False)

    rc, out, _ = await _expect_while(hub, script, (*base, "-m", "udp.dport=53", "-t", "200ms"),
                                     [PING])
    got = json.loads(out)
    assert rc == EXIT_ERROR and (got["met"], got["frame"], got["timeout_s"]) == (False, None,
                                                                                0.2)

    rc, out, _ = await _expect_while(
        hub, script, (*base, "-m", "udp.dport=53", "--none", "-t", "3600s"), [PING, DNS])
    got = json.loads(out)
    assert rc == EXIT_ERROR and (got["mode"], got["met"]) == ("none", False)
    assert got["frame"]["hex"] == DNS.hex()

    rc, out, _ = await _expect_while(
        hub, script, (*base, "-m", "ip.proto=icmp", "-c", "2", "--exact", "-t", "500ms"),
        [PING] * 3)
    got = json.loads(out)
    assert rc == EXIT_ERROR
    assert (got["mode"], got["met"], got["count"], got["lost"], got["at_least"],
            got["exact"], got["frame"]) == ("count", False, 3, 0, 2, True, None)
    assert got["elapsed_s"] >= 0.5


async def test_expect_json_errors_are_not_json(script: Path,
                                               hub_sink: tuple[HubServer, Sink]) -> None:
    rc, out, err = await _run(script, "expect", f"{hub_sink[0].address}/p9", "-m", "any",
                              "--json")
    assert rc == EXIT_USAGE and out == "", (out, err)
    assert "no NetClient named 'p9'" in err


async def test_expect_json_on_a_lan_node(script: Path, lan_env: dict[str, str]) -> None:
    rc, out, err = await _run(script, "expect", "vm2", "-m", "udp.dport=9", "--none",
                              "-t", "200ms", "--json", env=lan_env)
    assert rc == EXIT_OK, (out, err)
    got = json.loads(out)
    assert (got["target"], got["mode"], got["met"], got["frame"]) == ("vm2", "none", True, None)
