"""A virtwire guest as a real Linux interface: ping and iperf3 over the emulated e1000.

The guest service bridges its NIC to a TAP in a network namespace (checksum
and TSO offload through virtio_net_hdr -> e1000 context/TSE descriptors), so
the namespace's kernel stack talks over guestmem + e1000 + hub:

(a) with a real QEMU VM (Linux's e1000 driver over QEMU's e1000, joined
    through `-netdev stream` into a `serve tap` stream backend on the hub);
(b) with a second virtwire guest bridged into its own namespace.

Only 198.18.0.0/15 addresses, no routes out. The iperf3 figures are printed
(run with -s to see them) and attached as user properties of the test.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from virtwire.v1 import guest_pb2, guest_pb2_grpc

from support import netns
from support.need import need
from support.procs import guest_lan, serve
from support.qemu_vm import (
    QemuVM,
    free_port,
    require_qemu,
    stream_netdev,
    wait_tcp_listening,
)

pytestmark = pytest.mark.qemu

IPERF_SECONDS = 5
VM_MAC = "52:54:00:12:34:12"


def _require_tools(vm: bool) -> None:
    netns.require_root()
    need(shutil.which("iperf3") is not None, "iperf3 not installed (Debian package iperf3)")
    need(shutil.which("busybox") is not None,
         "busybox not installed (Debian package busybox-static)")
    if vm:
        require_qemu()


def _ping(ns: netns.NetNs, ip: str) -> None:
    out = ns.exec("busybox", "ping", "-c", "3", "-W", "5", ip, check=False, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


async def _iperf3(ns: netns.NetNs, server_ip: str, reverse: bool) -> float:
    """Run an iperf3 client in ``ns`` for IPERF_SECONDS; the received Mbit/s."""
    argv = ["iperf3", "-c", server_ip, "-t", str(IPERF_SECONDS), "-J",
            "--connect-timeout", "5000", *(["-R"] if reverse else [])]
    last = ""
    for _attempt in range(5):  # the server may still be starting
        out = await asyncio.to_thread(ns.exec, *argv, check=False,
                                      timeout=IPERF_SECONDS + 40)
        try:
            result = json.loads(out.stdout)
            return float(result["end"]["sum_received"]["bits_per_second"]) / 1e6
        except (ValueError, KeyError, TypeError):
            last = out.stdout[-2000:] + out.stderr[-2000:]
        await asyncio.sleep(1)
    raise AssertionError(f"iperf3 -c {server_ip} failed: {last}")


def _report(record: pytest.RecordProperty, what: str, mbps: float) -> None:
    record(what, f"{mbps:.1f}")
    print(f"\niperf3 {what}: {mbps:.1f} Mbit/s")


async def test_qemu_vm_and_bridged_guest_ping_and_iperf3(
        tmp_path: Path, record_property: pytest.RecordProperty) -> None:
    _require_tools(vm=True)
    tap = netns.unique_name("vwg")
    with netns.netns("vwns") as ns:
        with guest_lan(tmp_path, [["--bridge-tap", tap, "--netns", ns.name,
                                   "--bridge-ip", "198.18.0.21/24"]]) as lan:
            port = free_port()
            with serve("tap", ["--backend", f"stream,listen=127.0.0.1:{port}",
                               "--peer", f"{lan.hub.address}/"], tmp_path):
                await wait_tcp_listening(port)
                async with QemuVM("v", stream_netdev(port, server=False), "198.18.0.12/24",
                                  VM_MAC, tmp_path) as vm:
                    await asyncio.to_thread(_ping, ns, "198.18.0.12")
                    assert await vm.ping("198.18.0.21", count=3)
                    await vm.check("iperf3 -s -D >/dev/null 2>&1")
                    tx = await _iperf3(ns, "198.18.0.12", reverse=False)
                    rx = await _iperf3(ns, "198.18.0.12", reverse=True)
    assert "tx_tso=" in lan.guests[0].log.read_text()
    _report(record_property, "guest_to_vm_mbps", tx)
    _report(record_property, "vm_to_guest_mbps", rx)
    assert tx > 1 and rx > 1


async def test_two_bridged_guests_ping_and_iperf3(
        tmp_path: Path, record_property: pytest.RecordProperty) -> None:
    _require_tools(vm=False)
    taps = [netns.unique_name("vwg"), netns.unique_name("vwg")]
    with netns.netns("vwna") as ns_a, netns.netns("vwnb") as ns_b:
        with guest_lan(tmp_path, [
                ["--bridge-tap", taps[0], "--netns", ns_a.name, "--bridge-ip", "198.18.1.1/24"],
                ["--bridge-tap", taps[1], "--netns", ns_b.name, "--bridge-ip", "198.18.1.2/24"],
        ]) as lan:
            await asyncio.to_thread(_ping, ns_a, "198.18.1.2")
            await asyncio.to_thread(_ping, ns_b, "198.18.1.1")
            async with grpc.aio.insecure_channel(lan.guests[0].address) as channel:
                status = await guest_pb2_grpc.GuestServiceStub(channel).GetStatus(
                    guest_pb2.GetStatusRequest())
            assert status.bridge_tap == taps[0] and status.link_up and status.ip == ""
            server = ns_b.popen("iperf3", "-s", stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
            try:
                tx = await _iperf3(ns_a, "198.18.1.2", reverse=False)
                rx = await _iperf3(ns_a, "198.18.1.2", reverse=True)
            finally:
                server.kill()
                server.wait()
    # The offloads were used: the kernel handed TSO super-frames to the bridge and the
    # driver gave them to the NIC as TSO (its counters are logged when it goes down).
    for guest in lan.guests:
        assert "tx_tso=" in guest.log.read_text()
    _report(record_property, "guest_a_to_b_mbps", tx)
    _report(record_property, "guest_b_to_a_mbps", rx)
    assert tx > 1 and rx > 1
