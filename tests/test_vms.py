"""Real QEMU VMs (Linux's e1000 driver over QEMU's e1000) on a virtwire hub.

The VMs join through `stream` backends of a virtwire tap service, exactly as a
user's VM would: `-netdev stream,server=off,addr.type=inet,...`.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtwire.orchestrator.launch import ServiceProcess

from support import netns
from support.procs import serve
from support.qemu_vm import (
    QemuVM,
    dgram_netdev,
    free_port,
    require_qemu,
    stream_netdev,
    wait_tcp_listening,
)

pytestmark = pytest.mark.qemu


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[ServiceProcess]:
    require_qemu()
    with serve("hub", [], tmp_path) as proc:
        yield proc


async def test_two_qemu_vms_ping_through_the_hub(hub: ServiceProcess, tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    args: list[str] = []
    for port in ports:
        args += ["--backend", f"stream,listen=127.0.0.1:{port}", "--peer", f"{hub.address}/"]
    with serve("tap", args, tmp_path):
        for port in ports:
            await wait_tcp_listening(port)
        vm_a = QemuVM("a", stream_netdev(ports[0], server=False), "198.18.0.11/24",
                      "52:54:00:12:34:11", tmp_path)
        vm_b = QemuVM("b", stream_netdev(ports[1], server=False), "198.18.0.12/24",
                      "52:54:00:12:34:12", tmp_path)
        try:
            await asyncio.gather(vm_a.launch(), vm_b.launch())
            await asyncio.gather(vm_a.wait_ready(), vm_b.wait_ready())
            assert await vm_a.ping("198.18.0.12", count=3)
            assert await vm_b.ping("198.18.0.11", count=3)
        finally:
            await asyncio.gather(vm_a.stop(), vm_b.stop())


async def test_tap_in_netns_pings_qemu_vm_across_the_hub(
        hub: ServiceProcess, tmp_path: Path) -> None:
    netns.require_root()
    ifname = netns.unique_name("vwt")
    with netns.netns("vwns") as ns:
        # script= moves the new TAP into the namespace and addresses it there;
        # the tap service keeps the fd, as QEMU's ifup scripts do with bridges.
        script = tmp_path / "ifup.sh"
        script.write_text("#!/bin/sh\nset -e\n"
                          f"ip link set \"$1\" netns {ns.name}\n"
                          f"ip -n {ns.name} addr add 198.18.0.21/24 dev \"$1\"\n"
                          f"ip -n {ns.name} link set \"$1\" up\n")
        script.chmod(0o755)
        vm_port = free_port()
        with serve("tap", [
            "--backend", f"tap,ifname={ifname},script={script}", "--peer", f"{hub.address}/",
            "--backend", f"stream,listen=127.0.0.1:{vm_port}", "--peer", f"{hub.address}/",
        ], tmp_path):
            await wait_tcp_listening(vm_port)
            async with QemuVM("v", stream_netdev(vm_port, server=False), "198.18.0.12/24",
                              "52:54:00:12:34:12", tmp_path) as vm:
                out = await asyncio.to_thread(ns.exec, "busybox", "ping", "-c", "3", "-W",
                                              "5", "198.18.0.12", check=False, timeout=60)
                assert out.returncode == 0, out.stdout + out.stderr
                assert await vm.ping("198.18.0.21", count=3)


async def test_qemu_vm_joins_over_dgram(hub: ServiceProcess, tmp_path: Path) -> None:
    """-netdev dgram (one frame per UDP datagram) against a dgram backend."""
    stream_port = free_port()
    vm_udp, our_udp = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    with serve("tap", [
        "--backend", f"stream,listen=127.0.0.1:{stream_port}", "--peer", f"{hub.address}/",
        "--backend", f"dgram,local=127.0.0.1:{our_udp},remote=127.0.0.1:{vm_udp}",
        "--peer", f"{hub.address}/",
    ], tmp_path):
        await wait_tcp_listening(stream_port)
        vm_a = QemuVM("a", stream_netdev(stream_port, server=False), "198.18.0.11/24",
                      "52:54:00:12:34:11", tmp_path)
        vm_b = QemuVM("b", dgram_netdev(vm_udp, our_udp), "198.18.0.12/24",
                      "52:54:00:12:34:12", tmp_path)
        try:
            await asyncio.gather(vm_a.launch(), vm_b.launch())
            await asyncio.gather(vm_a.wait_ready(), vm_b.wait_ready())
            assert await vm_b.ping("198.18.0.11", count=3)
        finally:
            await asyncio.gather(vm_a.stop(), vm_b.stop())
