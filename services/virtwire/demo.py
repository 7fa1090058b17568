"""`virtwire demo` (make run): the default LAN on loopback, with traffic.

It starts a hub and a tap service as separate processes. The tap service has
three `stream` backends (QEMU's -netdev stream framing), each plugged into a
new hub port: two unix sockets where this demo plays two hosts, and one TCP
port where a real QEMU VM can join. Host A pings host B through the hub with
frames of EtherType 0x88B5 (local experimental); B echoes them. It prints the
round-trip times, the per-port counters, and how to inject and capture with
grpcurl. It needs no root.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import tempfile
import time
from pathlib import Path

import grpc

from virtwire.launch import ServiceProcess, start_service
from virtwire.v1 import netclient_pb2, netclient_pb2_grpc

ETH_P_DEMO = 0x88B5
MAC_A = bytes.fromhex("020000000a01")
MAC_B = bytes.fromhex("020000000a02")


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _connect_unix(path: Path, timeout: float = 10.0) -> tuple[
        asyncio.StreamReader, asyncio.StreamWriter]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await asyncio.open_unix_connection(str(path))
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    """One frame in QEMU's stream framing (4-byte big-endian length)."""
    (length,) = struct.unpack(">I", await reader.readexactly(4))
    return await reader.readexactly(length)


def _write_frame(writer: asyncio.StreamWriter, frame: bytes) -> None:
    writer.write(struct.pack(">I", len(frame)) + frame)


async def _echo_host(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Host B: answer every demo frame addressed to it."""
    while True:
        frame = await _read_frame(reader)
        if frame[0:6] == MAC_B and frame[12:14] == struct.pack(">H", ETH_P_DEMO):
            _write_frame(writer, frame[6:12] + MAC_B + frame[12:])
            await writer.drain()


async def _ping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                seq: int) -> float:
    payload = struct.pack(">IQ", seq, time.perf_counter_ns()).ljust(46, b"\0")
    _write_frame(writer, MAC_B + MAC_A + struct.pack(">H", ETH_P_DEMO) + payload)
    await writer.drain()
    while True:
        frame = await asyncio.wait_for(_read_frame(reader), 5)
        if frame[0:6] == MAC_A and frame[12:14] == struct.pack(">H", ETH_P_DEMO):
            got_seq, sent_ns = struct.unpack(">IQ", frame[14:26])
            if got_seq == seq:
                return float(time.perf_counter_ns() - int(sent_ns)) / 1e6


async def _print_counters(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = netclient_pb2_grpc.NetClientServiceStub(channel)
        resp = await stub.ListNetClients(netclient_pb2.ListNetClientsRequest(), timeout=5)
    print(f"  {'port':<12} {'peer':<10} {'rx':>6} {'tx':>6} {'dropped':>8}")
    for nc in resp.netclients:
        c = nc.counters
        dropped = (c.dropped_queue_full + c.dropped_link_down + c.dropped_refused
                   + c.dropped_malformed + c.dropped_purged)
        print(f"  {nc.name:<12} {nc.peer:<10} {c.rx_frames:>6} {c.tx_frames:>6} {dropped:>8}")


async def run_demo(once: bool = False, pings: int = 5) -> int:
    with tempfile.TemporaryDirectory(prefix="virtwire-demo-") as tmp:
        workdir = Path(tmp)
        qemu_port = _free_tcp_port()
        sock_a, sock_b = workdir / "hostA.sock", workdir / "hostB.sock"
        services: list[ServiceProcess] = []
        try:
            hub = start_service("hub", [], workdir)
            services.append(hub)
            print(f"hub          gRPC {hub.address}")
            tap = start_service("tap", [
                "--backend", f"stream,listen=unix:{sock_a}", "--peer", f"{hub.address}/",
                "--backend", f"stream,listen=unix:{sock_b}", "--peer", f"{hub.address}/",
                "--backend", f"stream,listen=127.0.0.1:{qemu_port}", "--peer", f"{hub.address}/",
            ], workdir)
            services.append(tap)
            print(f"tap service  gRPC {tap.address}  (stream backends: host A, host B, "
                  f"QEMU on 127.0.0.1:{qemu_port})")
            reader_a, writer_a = await _connect_unix(sock_a)
            reader_b, writer_b = await _connect_unix(sock_b)
            echo = asyncio.create_task(_echo_host(reader_b, writer_b))
            await asyncio.sleep(0.3)  # the backends see their clients connect
            print("\nhost A -> host B through the hub (EtherType 0x88B5 echo):")
            seq = 0
            try:
                while True:
                    for _ in range(pings):
                        seq += 1
                        try:
                            rtt = await _ping(reader_a, writer_a, seq)
                            print(f"  seq={seq} rtt={rtt:.3f} ms")
                        except TimeoutError:
                            print(f"  seq={seq} timed out")
                        await asyncio.sleep(0.2)
                    print("\nhub ports:")
                    await _print_counters(hub.address)
                    if seq == pings:
                        _print_recipes(hub.address, qemu_port)
                        if not once:
                            print("\nCtrl-C stops the LAN.")
                    if once:
                        break
                    await asyncio.sleep(1)
            finally:
                echo.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await echo
            return 0
        finally:
            for service in reversed(services):
                service.stop()


def _print_recipes(hub: str, qemu_port: int) -> None:
    print(f"""
Try it yourself while the LAN runs (grpcurl from .venv/bin):
  grpcurl -plaintext {hub} list
  grpcurl -plaintext {hub} virtwire.v1.HubService/ListPorts
  grpcurl -plaintext -d '{{"name":"hub0port0","frame":"'$(printf '\\xff\\xff\\xff\\xff\\xff\\xff\\x02\\0\\0\\0\\0\\x01\\x88\\xb5hello' | base64)'"}}' \\
      {hub} virtwire.v1.NetClientService/Inject
  virtwire capture -s {hub} hub0port1 -w /tmp/port1.pcap --count 10   # then: tshark -r /tmp/port1.pcap
Join a QEMU VM:
  qemu-system-x86_64 ... -netdev stream,id=n0,server=off,addr.type=inet,addr.host=127.0.0.1,addr.port={qemu_port} -device e1000,netdev=n0""")
