#!/usr/bin/env python3
"""`make bench`: every virtwire benchmark, with the reference peers, in one run.

Hub hop (below), guest-memory DMA (dma_bench), guest to guest through
e1000 -> hub -> e1000 (guest_bench), and iperf3 between two guests bridged to
TAPs (iperf_bench, root).

Hub hop: stream backend -> hub -> stream backend, at 64 and 1514 bytes,
through virtwire (hub + one tap service: 2 processes, plaintext and with
mutual TLS; and hub + two tap services: 3 processes), QEMU's own hub, and
`vde_switch --hub`. Throughput runs blast a bounded number of frames;
latency runs pace 1000 frames/s.
Prints a table, the ratios against vde_switch and QEMU, and the machine
load, and writes everything as JSON (--json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from loadgen import LoadConfig, LoadResult
from peers import make_peer, run_one, wait_for_idle

PEERS = ("virtwire", "virtwire-tls", "virtwire-3p", "vde", "qemu")
SIZES = (64, 1514)


async def hub_matrix(count: int, lat_count: int, repeat: int) -> dict[str, dict[int, Any]]:
    """{peer: {size: {"throughput": best LoadResult, "latency": LoadResult}}}."""
    out: dict[str, dict[int, Any]] = {}
    for name in PEERS:
        for size in SIZES:
            best: LoadResult | None = None
            for _ in range(repeat):
                await wait_for_idle(20)
                res = await run_one(make_peer(name), LoadConfig(size=size, count=count,
                                                                timeout=30))
                if best is None or res.frames_per_s > best.frames_per_s:
                    best = res
            await wait_for_idle(20)
            lat = await run_one(make_peer(name), LoadConfig(size=size, count=lat_count,
                                                            rate=1000.0, timeout=30))
            out.setdefault(name, {})[size] = {"throughput": best, "latency": lat}
            assert best is not None
            print(f"  {name:12s} {size:5d} B  {best.frames_per_s:>10,.0f} frames/s "
                  f"lost={best.lost:<7d} p50={lat.lat_p50_us or 0:,.0f}us "
                  f"p99={lat.lat_p99_us or 0:,.0f}us", flush=True)
    return out


def print_hub_table(results: dict[str, dict[int, Any]]) -> None:
    print("\n| path | size | frames/s | Mbit/s | lost | p50 µs | p99 µs |")
    print("|---|---|---|---|---|---|---|")
    for name, by_size in results.items():
        for size, r in by_size.items():
            t: LoadResult = r["throughput"]
            lat: LoadResult = r["latency"]
            lost_pct = 100.0 * t.lost / max(1, t.sent)
            print(f"| {name} | {size} | {t.frames_per_s:,.0f} | {t.mbit_per_s:,.0f} | "
                  f"{lost_pct:.1f}% | {lat.lat_p50_us or 0:,.0f} | {lat.lat_p99_us or 0:,.0f} |")
    print()
    for size in SIZES:
        vw = results["virtwire"][size]["throughput"].frames_per_s
        for ref in ("vde", "qemu"):
            other = results[ref][size]["throughput"]
            ratio = vw / max(1.0, other.frames_per_s)
            lost = 100.0 * other.lost / max(1, other.sent)
            print(f"ratio virtwire/{ref} at {size} B: {ratio:.2f} "
                  f"({ref} lost {lost:.0f}% of what it was sent)")
        if "virtwire-tls" in results:
            secure = results["virtwire-tls"][size]
            print(f"TLS on/off at {size} B: {secure['throughput'].frames_per_s / max(1.0, vw):.2f}"
                  f" of the frames/s, p50 {secure['latency'].lat_p50_us or 0:,.0f} µs against "
                  f"{results['virtwire'][size]['latency'].lat_p50_us or 0:,.0f} µs")


def load_note() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller counts, one repeat")
    ap.add_argument("--json", metavar="FILE", help="write all figures to FILE")
    ap.add_argument("--only", choices=["hub", "dma", "guest", "iperf"],
                    help="run one benchmark")
    a = ap.parse_args(argv)
    count, lat_count, repeat = (100_000, 1000, 1) if a.quick else (300_000, 2000, 3)
    report: dict[str, Any] = {"machine": load_note(), "started": time.time()}
    print(f"virtwire benchmarks; {load_note()}")
    if a.only in (None, "hub"):
        print("\nhub hop: stream -> hub -> stream (unix sockets)")
        hub = asyncio.run(hub_matrix(count, lat_count, repeat))
        print_hub_table(hub)
        report["hub"] = {n: {str(s): {k: asdict(v) for k, v in r.items()}
                             for s, r in by.items()} for n, by in hub.items()}
    if a.only in (None, "dma"):
        import dma_bench

        print("\nguest memory DMA")
        report["dma"] = dma_bench.run(quick=a.quick)
    if a.only in (None, "guest"):
        import guest_bench

        print("\nguest to guest: e1000 -> hub -> e1000")
        report["guest"] = guest_bench.run(quick=a.quick, with_tls=True)
    if a.only in (None, "iperf"):
        import iperf_bench

        print("\niperf3 between two guests bridged to TAPs")
        report["iperf"] = iperf_bench.run(quick=a.quick)
    print(f"\nafter: {load_note()}")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
