#!/usr/bin/env python3
"""DMA operations/s through the guestmem service: RPC (single, batched) vs shared memory.

A guestmem server runs in its own process (so the client's GIL does not slow
it down); this process connects two GuestMemClients to it, one on the shared
memory path and one forced onto RPCs, and times DmaMemory calls as a device
makes them:

``shm_read`` / ``shm_write``      ``dma_read``/``dma_write`` through the mapping.
``rpc_read_single``               one ``dma_read`` = one Read RPC (sync channel).
``rpc_write_single``              ``dma_write`` + ``dma_flush`` = one Batch RPC.
``rpc_write_batch32``             32 ``dma_write`` then one ``dma_flush`` (one Batch).
``rpc_read_batch32``              ``await client.batch`` of 32 ReadOps (async channel).
``rpc_read_async``                ``await client.read``: one Batch RPC (async channel).

each at 64 bytes (a descriptor) and 2 KiB (a receive buffer). Every case stops
after ``max_ops`` operations or ``max_seconds``, whichever comes first.

    .venv/bin/python bench/dma_bench.py [--quick] [--json]

``run(quick) -> dict`` is the entry point for bench/run.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from virtwire.mem.client import GuestMemClient, ReadOp

SIZES = (64, 2048)
BATCH = 32
GUEST_SIZE = 64 << 20

_SERVER = """
import asyncio, signal, sys
from virtwire.server.guestmem import GuestMemServer

async def main():
    host = GuestMemServer(sys.argv[1], int(sys.argv[2]))
    await host.start()
    print(host.address, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await host.stop(0.5)

asyncio.run(main())
"""


@contextlib.contextmanager
def guestmem_server(size: int = GUEST_SIZE) -> Iterator[str]:
    """A guestmem server in a child process; yields its address."""
    proc = subprocess.Popen([sys.executable, "-c", _SERVER, "127.0.0.1:0", str(size)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().strip()
        if not address:
            raise RuntimeError(f"guestmem server exited with {proc.wait(10)}")
        yield address
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _result(ops: int, elapsed: float, size: int, calls: int) -> dict[str, float]:
    return {"ops": ops, "seconds": round(elapsed, 4), "rpc_calls": calls,
            "ops_per_s": round(ops / elapsed, 1),
            "us_per_op": round(elapsed / ops * 1e6, 3),
            "mb_per_s": round(ops * size / elapsed / 1e6, 2)}


def _time_sync(step: Callable[[int], None], per_step: int, calls_per_step: int, size: int,
               max_ops: int, max_seconds: float) -> dict[str, float]:
    """Run ``step(i)`` (doing ``per_step`` ops) until a bound is reached."""
    for i in range(8):  # warm up (connections, caches)
        step(i)
    ops = steps = 0
    start = time.perf_counter()
    deadline = start + max_seconds
    while ops < max_ops:
        for _ in range(16):
            step(steps)
            steps += 1
        ops = steps * per_step
        if time.perf_counter() >= deadline:
            break
    return _result(ops, time.perf_counter() - start, size, steps * calls_per_step)


async def _time_async(step: Callable[[int], Awaitable[None]], per_step: int, size: int,
                      max_ops: int, max_seconds: float) -> dict[str, float]:
    for i in range(8):
        await step(i)
    ops = steps = 0
    start = time.perf_counter()
    deadline = start + max_seconds
    while ops < max_ops:
        await step(steps)
        steps += 1
        ops = steps * per_step
        if time.perf_counter() >= deadline:
            break
    return _result(ops, time.perf_counter() - start, size, steps)


async def measure(address: str, quick: bool) -> dict[str, dict[str, float]]:
    max_s = 0.3 if quick else 2.0
    shm_ops = 200_000 if quick else 2_000_000
    rpc_ops = 5_000 if quick else 200_000
    shm = await GuestMemClient.connect(address)
    rpc = await GuestMemClient.connect(address, prefer_shm=False)
    cases: dict[str, dict[str, float]] = {}
    try:
        if shm.path != "shm":
            raise RuntimeError(f"expected the shared-memory path: {shm.reason}")
        slots = 4096  # spread accesses over 8 MiB, 2 KiB apart
        for size in SIZES:
            data = (bytes(range(256)) * 8)[:size]

            def addr(i: int) -> int:
                return (i % slots) * 2048

            def shm_read(i: int, size: int = size) -> None:
                shm.dma_read(addr(i), size)

            def shm_write(i: int, data: bytes = data) -> None:
                shm.dma_write(addr(i), data)

            def rpc_read(i: int, size: int = size) -> None:
                rpc.dma_read(addr(i), size)

            def rpc_write(i: int, data: bytes = data) -> None:
                rpc.dma_write(addr(i), data)
                rpc.dma_flush()

            def rpc_write_batch(i: int, data: bytes = data) -> None:
                base = i * BATCH
                for j in range(BATCH):
                    rpc.dma_write(addr(base + j), data)
                rpc.dma_flush()

            reads = [[ReadOp(addr(i * BATCH + j), size) for j in range(BATCH)]
                     for i in range(64)]

            async def rpc_read_batch(i: int, reads: list[list[ReadOp]] = reads) -> None:
                await rpc.batch(reads[i % len(reads)])

            async def rpc_read_async(i: int, size: int = size) -> None:
                await rpc.read(addr(i), size)

            cases[f"shm_read_{size}"] = _time_sync(shm_read, 1, 0, size, shm_ops, max_s)
            cases[f"shm_write_{size}"] = _time_sync(shm_write, 1, 0, size, shm_ops, max_s)
            cases[f"rpc_read_single_{size}"] = _time_sync(rpc_read, 1, 1, size, rpc_ops, max_s)
            cases[f"rpc_write_single_{size}"] = _time_sync(rpc_write, 1, 1, size, rpc_ops,
                                                           max_s)
            cases[f"rpc_write_batch{BATCH}_{size}"] = _time_sync(
                rpc_write_batch, BATCH, 1, size, rpc_ops * BATCH, max_s)
            cases[f"rpc_read_batch{BATCH}_{size}"] = await _time_async(
                rpc_read_batch, BATCH, size, rpc_ops * BATCH, max_s)
            cases[f"rpc_read_async_{size}"] = await _time_async(
                rpc_read_async, 1, size, rpc_ops, max_s)
    finally:
        await shm.close()
        await rpc.close()
    return cases


def format_table(cases: dict[str, dict[str, float]]) -> str:
    rows = [("case", "ops/s", "us/op", "MB/s", "ops", "rpc calls")]
    for name, r in cases.items():
        rows.append((name, f"{r['ops_per_s']:,.0f}", f"{r['us_per_op']:.2f}",
                     f"{r['mb_per_s']:,.1f}", f"{int(r['ops']):,}", f"{int(r['rpc_calls']):,}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True)))
                     for row in rows)


def run(quick: bool = False) -> dict[str, Any]:
    """Run every case; print the table; return ``{"cases": {name: figures}, ...}``."""
    with guestmem_server() as address:
        cases = asyncio.run(measure(address, quick))
    print(format_table(cases))
    return {"bench": "dma", "quick": quick, "guest_size": GUEST_SIZE, "batch": BATCH,
            "cpus": os.cpu_count(), "cases": cases}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False,
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="0.3 s per case instead of 2 s")
    p.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = p.parse_args(argv)
    result = run(args.quick)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
