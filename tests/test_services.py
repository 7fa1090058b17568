"""Real `virtwire serve` processes: grpcurl, the CLI, pcap, flood and errors."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from virtwire.address import parse_peer
from virtwire.link import LinkPeer
from virtwire.server.link import LinkDialer
from virtwire.v1 import hub_pb2, hub_pb2_grpc, netclient_pb2, netclient_pb2_grpc

from support.doubles import Sink, frame, pump, until
from support.need import need
from support.procs import VIRTWIRE, grpcurl, serve


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VIRTWIRE, *args], capture_output=True, text=True, timeout=timeout)


def test_grpcurl_lists_injects_and_cli_capture_writes_pcap(tmp_path: Path) -> None:
    with serve("hub", ["--ports", "2"], tmp_path) as hub:
        services = grpcurl(hub.address, "list").split()
        for name in ("virtwire.v1.HubService", "virtwire.v1.NetClientService",
                     "virtwire.v1.LinkService", "grpc.health.v1.Health"):
            assert name in services
        health = json.loads(grpcurl(hub.address, "grpc.health.v1.Health/Check"))
        assert health["status"] == "SERVING"
        desc = grpcurl(hub.address, "describe", "virtwire.v1.InjectRequest")
        assert "bytes frame" in desc
        pcap = tmp_path / "cap.pcap"
        capture = subprocess.Popen([*VIRTWIRE, "capture", "-s", hub.address, "hub0port0",
                                    "-w", str(pcap), "--count", "1", "--duration", "20"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        arp = bytes.fromhex("ffffffffffff020000000001" "0806" "0001080006040001"
                            "020000000001c6120001" "000000000000c6120002") + bytes(18)
        payload = json.dumps({"name": "hub0port0", "frame": base64.b64encode(arp).decode()})
        # The capture subscribes asynchronously: inject until it has the frame.
        for _ in range(100):
            out = json.loads(grpcurl("-d", payload, hub.address,
                                     "virtwire.v1.NetClientService/Inject"))
            assert out["accepted"] == 1
            try:
                capture.wait(0.2)
                break
            except subprocess.TimeoutExpired:
                continue
        _, err = capture.communicate(timeout=20)
        assert capture.returncode == 0, err
        assert "captured 1 frames" in err
        listing = json.loads(grpcurl(hub.address, "virtwire.v1.HubService/ListPorts"))
        port0 = next(p for p in listing["ports"] if p["name"] == "hub0port0")
        assert int(port0["counters"]["rx_frames"]) >= 1
        # hub0port1 has no peer: what the hub forwards there is dropped, and counted.
        port1 = next(p for p in listing["ports"] if p["name"] == "hub0port1")
        assert int(port1["counters"]["dropped_link_down"]) >= 1
    need(shutil.which("tshark") is not None, "tshark not installed (Debian package tshark)")
    shown = subprocess.run(["tshark", "-r", str(pcap), "-T", "fields", "-e", "arp.dst.proto_ipv4",
                            "-e", "eth.src"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split() == ["198.18.0.2", "02:00:00:00:00:01"]


def test_cli_inject_list_link_and_errors(tmp_path: Path) -> None:
    with serve("hub", ["--ports", "2", "--port", "named"], tmp_path) as hub:
        out = cli("inject", "-s", hub.address, "hub0port0", "--hex", frame(1).hex())
        assert out.returncode == 0, out.stderr
        assert "1 accepted, 0 dropped" in out.stdout
        out = cli("list", "-s", hub.address)
        assert out.returncode == 0 and "named" in out.stdout and "hub0port1" in out.stdout
        out = cli("list", "-s", hub.address, "--json")
        names = {nc["name"] for nc in json.loads(out.stdout)["netclients"]}
        assert names == {"hub0port0", "hub0port1", "named"}
        out = cli("link", "-s", hub.address, "named", "down")
        assert out.returncode == 0 and "named: link down" in out.stdout
        for args, message in (
            (["inject", "-s", hub.address, "nosuch", "--hex", frame(1).hex()], "nosuch"),
            (["inject", "-s", hub.address, "named", "--hex", "zz"], "not hexadecimal"),
            (["inject", "-s", hub.address, "named", "--hex", ""], "empty frame"),
            (["capture", "-s", hub.address, "named", "-w", "/dev/null", "--mac", "1:2"],
             "bad MAC"),
            (["list", "-s", "127.0.0.1:notaport"], "not a number"),
            (["list", "-s", "127.0.0.1:1", "--timeout", "2"], "cannot reach"),
        ):
            out = cli(*args)
            assert out.returncode != 0, args
            assert message in out.stderr, (args, out.stderr)
            assert "Traceback" not in out.stderr
        # Address already in use: a clear message, non-zero exit.
        out = cli("serve", "hub", "--listen", hub.address, timeout=30)
        assert out.returncode != 0
        assert "cannot listen on" in out.stderr and "Traceback" not in out.stderr
        out = cli("serve", "hub", "--port", "=x")
        assert out.returncode == 2 and "bad --port" in out.stderr


def test_sigterm_stops_gracefully(tmp_path: Path) -> None:
    with serve("hub", ["--ports", "1"], tmp_path) as hub:
        rc = hub.stop(timeout=10)
        assert rc == 0
        log = hub.log.read_text()
        assert f"hub@{hub.address}" in log  # logs name the service and its port
        assert "shutting down" in log


async def test_hub_ports_added_and_removed_at_runtime(tmp_path: Path) -> None:
    with serve("hub", [], tmp_path) as hub:
        async with grpc.aio.insecure_channel(hub.address) as channel:
            stub = hub_pb2_grpc.HubServiceStub(channel)
            resp = await stub.AddPort(hub_pb2.AddPortRequest(name="p1"))
            assert resp.port.name == "p1"
            await stub.AddPort(hub_pb2.AddPortRequest())
            ports = await stub.ListPorts(hub_pb2.ListPortsRequest())
            assert [p.name for p in ports.ports] == ["hub0port1", "p1"]  # newest first
            for req, code in ((hub_pb2.AddPortRequest(name="p1"),
                               grpc.StatusCode.FAILED_PRECONDITION),
                              (hub_pb2.AddPortRequest(peer="nohost"),
                               grpc.StatusCode.INVALID_ARGUMENT)):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.AddPort(req)
                assert err.value.code() == code and err.value.details()
            await stub.RemovePort(hub_pb2.RemovePortRequest(name="p1"))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.RemovePort(hub_pb2.RemovePortRequest(name="p1"))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            ports = await stub.ListPorts(hub_pb2.ListPortsRequest())
            assert [p.name for p in ports.ports] == ["hub0port1"]


class _SlowSink(Sink):
    """Takes at most ``budget`` frames until topped up: really slow, not just late.

    (A Sink that is only made ready now and then drains its whole queue each
    time, so whether it loses frames depended on timing.)
    """

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.budget = 0

    def receive(self, data: bytes) -> int:
        if self.budget <= 0:
            return 0        # stays queued; receive_disabled until the next flush
        self.budget -= 1
        return super().receive(data)

    def can_receive(self) -> bool:
        return self.budget > 0

    def top_up(self, budget: int) -> None:
        self.budget = budget
        self.flush_queued_packets()


async def test_flood_into_hub_with_slow_consumer_is_accounted_and_bounded(
        tmp_path: Path) -> None:
    """200k frames into a hub port; one consumer is slow, one keeps up.

    Every frame the slow consumer does not get is counted as dropped, the
    hub process's memory stays bounded by nq_maxlen, and nothing hangs.
    """
    n, size = 200_000, 1514
    with serve("hub", [], tmp_path) as hub:
        src, slow, fast = Sink("src"), _SlowSink("slow"), Sink("fast")
        slow.budget = 1 << 30
        dialers = []
        for nc in (src, slow, fast):
            dialer = LinkDialer(nc, parse_peer(f"{hub.address}/"))
            dialer.start()
            await asyncio.wait_for(dialer.connected.wait(), 10)
            dialers.append(dialer)
        await until(lambda: isinstance(src.peer, LinkPeer) and src.peer.remote_ready,
                    what="hub ready")
        rss_before = hub.rss_kib()
        slow.budget = 0
        stop = asyncio.Event()
        rss_max = 0

        async def slow_consumer() -> None:
            # Takes at most about 5000 frames/s: far slower than the flood.
            while not stop.is_set():
                slow.top_up(10)
                await asyncio.sleep(0.002)

        async def watch_rss() -> None:
            nonlocal rss_max
            while not stop.is_set():
                rss_max = max(rss_max, hub.rss_kib())
                await asyncio.sleep(0.05)

        tasks = [asyncio.create_task(slow_consumer()), asyncio.create_task(watch_rss())]
        frames = [frame(i, size) for i in range(n)]
        await asyncio.wait_for(pump(src, frames), 120)
        await fast.wait_for(n, timeout=60)
        async with grpc.aio.insecure_channel(hub.address) as channel:
            stub = netclient_pb2_grpc.NetClientServiceStub(channel)

            async def slow_port() -> netclient_pb2.NetClientCounters:
                resp = await stub.ListNetClients(netclient_pb2.ListNetClientsRequest())
                port = next(p for p in resp.netclients if p.peer == "slow")
                return port.counters

            # Drain: the slow consumer eventually gets all that was not dropped.
            for _ in range(600):
                c = await slow_port()
                if c.peer_queue_len == 0 and not slow.incoming_queue.packets:
                    break
                await asyncio.sleep(0.1)
            c = await slow_port()
        stop.set()
        await asyncio.gather(*tasks)
        slow.top_up(1 << 30)
        await until(lambda: len(slow.frames) + c.dropped_queue_full
                    + slow.incoming_queue.dropped >= n, timeout=30, what="drained")
        assert c.dropped_queue_full > 0, "the slow consumer should have lost frames"
        assert len(slow.frames) + c.dropped_queue_full + slow.incoming_queue.dropped == n
        assert c.tx_frames == n  # the hub port sent (forwarded) every frame
        # nq_maxlen frames of 1514 bytes are 15 MB; allow generous slack.
        assert rss_max - rss_before < 120 * 1024, (rss_before, rss_max)
        for dialer in dialers:
            await dialer.stop()


def test_unreachable_peer_is_reported_and_logged(tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    with serve("tap", ["--backend", f"stream,listen=unix:{sock}", "--peer", "127.0.0.1:1/"],
               tmp_path) as tap:
        for _ in range(100):
            out = cli("list", "-s", tap.address, "--json")
            nc = json.loads(out.stdout)["netclients"][0]
            if "unreachable" in nc.get("info", ""):
                break
        assert nc["link_state"] == "LINK_STATE_CONNECTING"
        assert nc["link_down"] is True
        assert "peer 127.0.0.1:1/ unreachable" in nc["info"]
        assert "unreachable" in tap.log.read_text()


def test_cli_validate_topology_files(tmp_path: Path) -> None:
    examples = Path(__file__).parent.parent / "examples"
    out = cli("validate", str(examples / "default.yaml"))
    assert out.returncode == 0 and "LAN 'default'" in out.stdout, out.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nnodes:\n  a: {kind: hub}\nlinks:\n  - [a, nosuch]\n")
    out = cli("validate", str(bad))
    assert out.returncode == 2
    assert f"{bad}:5" in out.stderr and "nosuch" in out.stderr and "Traceback" not in out.stderr


def test_demo_once_brings_up_pings_and_tears_down(tmp_path: Path) -> None:
    """`make run RUN_ARGS=--once`: up, ping with RTTs, counters, down; no recipes."""
    import os
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    text = (Path(__file__).parent.parent / "examples" / "default.yaml").read_text()
    topo = tmp_path / "default.yaml"
    topo.write_text(text.replace("127.0.0.1:10555", f"127.0.0.1:{port}"))
    env = {**os.environ, "VIRTWIRE_STATE_DIR": str(tmp_path / "state")}
    out = subprocess.run([*VIRTWIRE, "demo", str(topo), "--once"], capture_output=True,
                         text=True, timeout=180, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "5 received, 0% packet loss" in out.stdout
    assert "time=" in out.stdout and "hub0port1" in out.stdout
    # --once tears the LAN down, so it prints no recipes to try against it (issue 9).
    assert "grpcurl" not in out.stdout
    assert "is down (8 services stopped)" in out.stdout
    assert not any((tmp_path / "state").glob("*/state.json"))
