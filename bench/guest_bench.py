#!/usr/bin/env python3
"""Guest to guest through e1000 -> hub -> e1000 (issue 3's benchmark).

Two virtwire VMs (guestmem + e1000 + guest, 3 processes each) on a hub: 7
processes on the reference box's 2 cores. Guest A's driver puts frames on its
TX ring (GuestService.Send, a batch per call); guest B's driver takes them off
its RX ring; frames/s and Mbit/s are counted at B (GetStatus.rx_frames), from
the first frame sent to the last received. Bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchtls

from virtwire import tls
from virtwire.orchestrator.launch import ServiceProcess, start_service
from virtwire.v1 import e1000_pb2, e1000_pb2_grpc, guest_pb2, guest_pb2_grpc

MACS = ("52:54:00:00:0b:01", "52:54:00:00:0b:02")
IPS = ("198.18.0.1/24", "198.18.0.2/24")
BATCH = 256


class TwoGuests:
    """hub + 2 x (guestmem, e1000, guest) as real processes."""

    def __init__(self, workdir: Path, tls_args: list[str] | None = None) -> None:
        self.workdir = workdir
        #: `--tls-dir D --tls-name svc` for a TLS-on run.
        self.tls_args = tls_args or []
        self.procs: list[ServiceProcess] = []
        self.guests: list[str] = []
        self.nics: list[str] = []

    def __enter__(self) -> TwoGuests:
        try:
            hub = self._start("hub", [])
            for mac, ip in zip(MACS, IPS, strict=True):
                mem = self._start("guestmem", ["--size", "64M"])
                nic = self._start("e1000", ["--guestmem", mem.address, "--mac", mac,
                                            "--peer", f"{hub.address}/"])
                self.nics.append(nic.address)
                guest = self._start("guest", ["--e1000", nic.address, "--guestmem",
                                              mem.address, "--ip", ip])
                self.guests.append(guest.address)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self, kind: str, args: list[str]) -> ServiceProcess:
        proc = start_service(kind, [*args, *self.tls_args], self.workdir, timeout=30)
        self.procs.append(proc)
        return proc

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def _frame(size: int, seq: int) -> bytes:
    dst = bytes.fromhex(MACS[1].replace(":", ""))
    src = bytes.fromhex(MACS[0].replace(":", ""))
    head = dst + src + b"\x88\xb5" + seq.to_bytes(4, "big")
    return head + bytes(size - len(head))


async def _rx_frames(stub: guest_pb2_grpc.GuestServiceStub) -> int:
    status = await stub.GetStatus(guest_pb2.GetStatusRequest(), timeout=5)
    return int(status.rx_frames)


async def _nic_drops(address: str) -> dict[str, int]:
    async with tls.aio_channel(address) as channel:
        stats = await e1000_pb2_grpc.E1000ServiceStub(channel).GetStats(
            e1000_pb2.GetStatsRequest(), timeout=5)
    return {k: int(v) for k, v in stats.drops.items() if v}


async def measure(guests: list[str], size: int, count: int, nic_b: str,
                  timeout: float = 30.0) -> dict[str, Any]:
    async with tls.aio_channel(guests[0]) as ch_a, \
            tls.aio_channel(guests[1]) as ch_b:
        a = guest_pb2_grpc.GuestServiceStub(ch_a)
        b = guest_pb2_grpc.GuestServiceStub(ch_b)
        # Wait for both links (ping through the responders), then count from here.
        reply = await a.Ping(guest_pb2.PingRequest(address=IPS[1].split("/")[0], count=3,
                                                   timeout_ms=2000), timeout=20)
        if reply.received == 0:
            raise RuntimeError("guest B does not answer pings: the LAN is not up")
        base = await _rx_frames(b)
        batch = [_frame(size, i) for i in range(BATCH)]
        queued = dropped = 0
        start = time.perf_counter()
        deadline = start + timeout
        sent = 0
        while sent < count and time.perf_counter() < deadline:
            n = min(BATCH, count - sent)
            resp = await a.Send(guest_pb2.SendRequest(frames=batch[:n]), timeout=10)
            queued += resp.queued
            dropped += resp.dropped
            sent += n
        last, last_change = base, time.perf_counter()
        while time.perf_counter() < deadline:
            got = await _rx_frames(b)
            now = time.perf_counter()
            if got != last:
                last, last_change = got, now
            elif got - base >= queued or now - last_change > 1.0:
                break
            await asyncio.sleep(0.02)
        received = last - base
        elapsed = last_change - start
    drops = await _nic_drops(nic_b)
    fps = received / elapsed if elapsed > 0 else 0.0
    return {"size": size, "sent": sent, "queued": queued, "tx_ring_full": dropped,
            "received": received, "elapsed_s": round(elapsed, 3),
            "frames_per_s": round(fps), "mbit_per_s": round(fps * size * 8 / 1e6, 1),
            "receiver_nic_drops_total": drops}


def run(quick: bool = False, with_tls: bool = False) -> dict[str, Any]:
    """Both sizes, plaintext; with ``with_tls`` also every service on mutual TLS."""
    out: dict[str, Any] = {"bench": "guest-to-guest", "results": []}
    for secure in (False, True) if with_tls else (False,):
        out["results"] += _run(quick, secure)
    return out


def _run(quick: bool, secure: bool) -> list[dict[str, Any]]:
    count = 20_000 if quick else 100_000
    results = []
    with tempfile.TemporaryDirectory(prefix="vw-guestbench-") as tmp:
        pki = benchtls.make_pki(Path(tmp) / "pki") if secure else None
        benchtls.use_controller(pki)
        try:
            with TwoGuests(Path(tmp), benchtls.service_args(pki) if pki else None) as lan:
                for size in (64, 1514):
                    res = asyncio.run(measure(lan.guests, size, count, lan.nics[1]))
                    res["tls"] = secure
                    results.append(res)
                    _print(res)
        finally:
            benchtls.use_controller(None)
    return results


def _print(res: dict[str, Any]) -> None:
    size = res["size"]
    mode = "TLS" if res["tls"] else "plaintext"
    print(f"  e1000 -> hub -> e1000 {size:5d} B {mode:9s}: {res['frames_per_s']:>8,} frames/s "
          f"{res['mbit_per_s']:>8,} Mbit/s (received {res['received']} of "
          f"{res['sent']}, TX ring full {res['tx_ring_full']}; B's e1000 drops so far: "
          f"{res['receiver_nic_drops_total'] or 'none'})", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--tls", action="store_true", help="also run with mutual TLS on")
    a = ap.parse_args(argv)
    res = run(a.quick, a.tls)
    if a.json:
        print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
