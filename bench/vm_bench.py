#!/usr/bin/env python3
"""Two real QEMU VMs (Linux's e1000 driver) with iperf3 and ping, three ways, in one run.

``direct``        VM A ``-netdev stream,server=on`` on a loopback port, VM B connects.
``qemu-hub``      each VM connects to a VM-less QEMU (``-machine none``) joining two
                  stream servers with ``-netdev hubport,hubid=0`` (peers.QemuHubPeer).
``virtwire-hub``  ``virtwire serve hub`` plus one ``serve tap`` with two
                  ``stream,listen=`` backends on new hub ports; each VM connects to one.
``virtwire-hub-1p`` ``virtwire serve hub`` alone, opening both ``stream,listen=``
                  backends on its own ports (``--port-backend``): one process, as
                  QEMU's hub holds its netdevs.

Every path boots a fresh pair of VMs (tests/support/qemu_vm.py), pings B from A
(PINGS at 0.2 s: RTT p50/p99), then runs iperf3 A -> B and B -> A (``-R``) for
SECONDS each. Around each iperf3 run the CPU seconds (utime + stime,
procstat.cpu_seconds) of every process of the path are read: the two VMs' QEMUs and
the hub's processes, reported per MB that arrived. KVM when usable, else TCG:
the ratios only compare paths measured in one run, with one accelerator.

``--link-transport grpc|auto`` is passed to the virtwire services whose
``--help`` lists it (a note is printed otherwise). Every process is stopped on
every path (also on Ctrl-C or failure); every step is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import procstat
from peers import QemuHubPeer, wait_for_idle

from virtwire.orchestrator.launch import VIRTWIRE_CMD

from support.procs import serve
from support.qemu_vm import (
    QemuVM,
    free_port,
    kvm_usable,
    stream_netdev,
    wait_tcp_listening,
)

PATHS = ("direct", "qemu-hub", "virtwire-hub", "virtwire-hub-1p")
SIDES = (("a", "198.18.0.11/24", "52:54:00:12:34:11"),
         ("b", "198.18.0.12/24", "52:54:00:12:34:12"))
PINGS = 20
PING_INTERVAL = 0.2
BOOT_TIMEOUT = 150.0
#: Targets of issue 10 (each against its reference in the same run).
TARGET_HUB_RATIO = 0.8
TARGET_GUESTS_OVER_DIRECT = 0.4
TARGET_GUESTS_MBIT = 150.0


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` (all its threads; procstat.cpu_seconds); a VM or
    hub gone in the middle of a run is an error, not a zero."""
    used = procstat.cpu_seconds(pid)
    if used is None:
        raise RuntimeError(f"process {pid} exited during the run")
    return used


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (``p`` in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def services_listing(flag: str) -> dict[str, bool]:
    """For the hub and tap services: does ``virtwire serve KIND --help`` list ``flag``?"""
    out = {}
    for kind in ("hub", "tap"):
        try:
            text = subprocess.run([*VIRTWIRE_CMD, "serve", kind, "--help"], capture_output=True,
                                  text=True, timeout=60).stdout
        except subprocess.TimeoutExpired:
            text = ""
        out[kind] = flag in text
    return out


@dataclass
class Wiring:
    """How the two VMs join one path, and the path's processes besides them."""

    netdev_a: list[str]
    netdev_b: list[str]
    #: A listens on this port and must do so before B launches (direct path).
    a_listens_on: int | None = None
    hub_pids: list[int] = field(default_factory=list)
    hub_processes: str = ""


async def wire_direct(stack: contextlib.AsyncExitStack, workdir: Path,
                      service_args: dict[str, list[str]]) -> Wiring:
    port = free_port()
    return Wiring(stream_netdev(port, server=True), stream_netdev(port, server=False),
                  a_listens_on=port)


async def wire_qemu_hub(stack: contextlib.AsyncExitStack, workdir: Path,
                        service_args: dict[str, list[str]]) -> Wiring:
    peer = QemuHubPeer(transport="tcp")
    a, b = await stack.enter_async_context(peer)
    ports = [int(ep.address.rpartition(":")[2]) for ep in (a, b)]
    return Wiring(stream_netdev(ports[0], server=False), stream_netdev(ports[1], server=False),
                  hub_pids=[p.pid for p in peer.procs], hub_processes="qemu -machine none")


async def wire_virtwire_hub(stack: contextlib.AsyncExitStack, workdir: Path,
                            service_args: dict[str, list[str]]) -> Wiring:
    # serve() blocks until the service is ready (at most its 20 s timeout): a
    # Ctrl-C meanwhile cancels at the next await, after the service is on the stack.
    hub = stack.enter_context(serve("hub", service_args["hub"], workdir))
    ports = [free_port(), free_port()]
    args = list(service_args["tap"])
    for port in ports:
        args += ["--backend", f"stream,listen=127.0.0.1:{port}", "--peer", f"{hub.address}/"]
    tap = stack.enter_context(serve("tap", args, workdir))
    for port in ports:
        await wait_tcp_listening(port, 20)
    return Wiring(stream_netdev(ports[0], server=False), stream_netdev(ports[1], server=False),
                  hub_pids=[hub.pid, tap.pid], hub_processes="virtwire hub + tap")


async def wire_virtwire_hub_1p(stack: contextlib.AsyncExitStack, workdir: Path,
                               service_args: dict[str, list[str]]) -> Wiring:
    ports = [free_port(), free_port()]
    args = list(service_args["hub"])
    for name, port in zip("ab", ports, strict=True):
        args += ["--port-backend", f"{name}=stream,listen=127.0.0.1:{port}"]
    hub = stack.enter_context(serve("hub", args, workdir))
    for port in ports:
        await wait_tcp_listening(port, 20)
    return Wiring(stream_netdev(ports[0], server=False), stream_netdev(ports[1], server=False),
                  hub_pids=[hub.pid], hub_processes="virtwire hub (port backends)")


Wire = Callable[[contextlib.AsyncExitStack, Path, dict[str, list[str]]], Awaitable[Wiring]]
WIRES: dict[str, Wire] = {"direct": wire_direct, "qemu-hub": wire_qemu_hub,
                          "virtwire-hub": wire_virtwire_hub,
                          "virtwire-hub-1p": wire_virtwire_hub_1p}


async def boot_pair(stack: contextlib.AsyncExitStack, wiring: Wiring,
                    workdir: Path) -> tuple[QemuVM, QemuVM]:
    """Launch both VMs (A first when B connects to it) and wait for both shells."""
    vms = []
    for (name, cidr, mac), netdev in zip(SIDES, (wiring.netdev_a, wiring.netdev_b),
                                         strict=True):
        vm = QemuVM(name, netdev, cidr, mac, workdir)
        stack.push_async_callback(vm.stop)  # idempotent, also when never launched
        vms.append(vm)
    vm_a, vm_b = vms
    await vm_a.launch()
    if wiring.a_listens_on is not None:
        await wait_tcp_listening(wiring.a_listens_on, 30)
    await vm_b.launch()
    # Not a TaskGroup: on 3.11 a failing child leaves this task's cancelling()
    # raised, which measure() reads as Ctrl-C.
    waits = [asyncio.create_task(vm.wait_ready(BOOT_TIMEOUT)) for vm in vms]
    try:
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()  # the first failure, if any
    finally:
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
    return vm_a, vm_b


async def measure_path(name: str, seconds: int, service_args: dict[str, list[str]],
                       workdir: Path) -> dict[str, Any]:
    """Boot a pair on path ``name``, ping, iperf3 both ways; stop everything."""
    out: dict[str, Any] = {"path": name}
    async with contextlib.AsyncExitStack() as stack:
        wiring = await WIRES[name](stack, workdir, service_args)
        out["hub_processes"] = wiring.hub_processes or "none"
        vm_a, vm_b = await boot_pair(stack, wiring, workdir)
        out["boot_s"] = [round(vm.boot_seconds or 0.0, 1) for vm in (vm_a, vm_b)]
        b_ip = vm_b.ip
        for _ in range(3):  # warm ARP; a fresh link may lose a first frame
            if await vm_a.ping(b_ip, count=2):
                break
        else:
            raise RuntimeError(f"{name}: VM A cannot ping VM B")
        rtts = await vm_a.ping_rtts(b_ip, PINGS, PING_INTERVAL)
        out["ping"] = {"sent": PINGS, "received": len(rtts),
                       "p50_ms": percentile(rtts, 50), "p99_ms": percentile(rtts, 99),
                       "max_ms": max(rtts, default=None)}
        await vm_b.iperf3_server()
        vm_pids = [pid for pid in (vm_a.pid, vm_b.pid) if pid is not None]
        for key, reverse in (("a_to_b", False), ("b_to_a", True)):
            before = {pid: cpu_seconds(pid) for pid in [*vm_pids, *wiring.hub_pids]}
            report = await vm_a.iperf3_client(b_ip, seconds, reverse=reverse)
            spent = {pid: cpu_seconds(pid) - t for pid, t in before.items()}
            received = report["end"]["sum_received"]
            mb = float(received["bytes"]) / 1e6
            vms_s = sum(spent[pid] for pid in vm_pids)
            hub_s = sum(spent[pid] for pid in wiring.hub_pids)
            out[key] = {
                "mbit_s": round(float(received["bits_per_second"]) / 1e6, 1),
                "mb": round(mb, 1),
                "retransmits": report["end"].get("sum_sent", {}).get("retransmits"),
                "cpu_s_vms": round(vms_s, 2),
                "cpu_s_hub": round(hub_s, 2),
                "cpu_ms_per_mb": round(1000 * (vms_s + hub_s) / mb, 2) if mb else None,
                "hub_cpu_ms_per_mb": round(1000 * hub_s / mb, 2) if mb else None,
            }
    rates = [out[k]["mbit_s"] for k in ("a_to_b", "b_to_a")]
    out["mbit_s"] = round(sum(rates) / len(rates), 1)
    return out


def _describe(exc: BaseException) -> str:
    """``Type: message``, with a TaskGroup's group unwrapped to its first error."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


def _fmt(value: Any, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def print_table(res: dict[str, Any]) -> None:
    print(f"\nTwo QEMU VMs (Linux e1000 driver), accel={res['accel']}, iperf3 -t "
          f"{res['seconds']} each way, {PINGS} pings at {PING_INTERVAL} s\n")
    print("| path | hub processes | A→B Mbit/s | B→A Mbit/s | ping p50 ms | ping p99 ms | "
          "CPU ms/MB (all) | CPU ms/MB (hub) | machine busy before |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in PATHS:
        r = res["paths"].get(name, {})
        if "error" in r:
            print(f"| {name} | FAILED: {r['error'].splitlines()[0][:80]} ||||||||")
            continue
        ab, ba, ping = r["a_to_b"], r["b_to_a"], r["ping"]
        cpu = [(d["cpu_ms_per_mb"], d["hub_cpu_ms_per_mb"]) for d in (ab, ba)]
        print(f"| {name} | {r['hub_processes']} | {ab['mbit_s']:,.0f} | {ba['mbit_s']:,.0f} | "
              f"{_fmt(ping['p50_ms'], '.2f')} | {_fmt(ping['p99_ms'], '.2f')} | "
              f"{_fmt(cpu[0][0])} / {_fmt(cpu[1][0])} | {_fmt(cpu[0][1])} / {_fmt(cpu[1][1])} | "
              f"{r['machine_busy_before']:.0%} |")
    print("\n(CPU columns: A→B / B→A; 'all' counts both VMs' QEMUs and the hub's processes.)")
    for key, what in (("virtwire_hub_over_qemu_hub", "virtwire hub + tap"),
                      ("virtwire_hub_1p_over_qemu_hub", "virtwire hub with port backends")):
        ratio = res.get(key)
        if ratio is not None:
            verdict = "meets" if ratio >= TARGET_HUB_RATIO else "misses"
            print(f"ratio {what} / QEMU hub, iperf3 (mean of both directions): {ratio:.3f} "
                  f"({verdict} the target >= {TARGET_HUB_RATIO})")
    direct = res.get("direct_mbit_s")
    if direct is not None:
        print(f"direct (two QEMU VMs, no hub): {direct:,.0f} Mbit/s; two virtwire guests "
              f"(bench/iperf_bench.py) need >= {TARGET_GUESTS_OVER_DIRECT} x direct and >= "
              f"{TARGET_GUESTS_MBIT:.0f} Mbit/s: >= {res['virtwire_guests_need_mbit_s']:,.0f} "
              f"Mbit/s (valid for accel={res['accel']} only)")


async def measure(quick: bool, link_transport: str | None) -> dict[str, Any]:
    seconds = 3 if quick else 5
    res: dict[str, Any] = {"bench": "vm", "accel": "kvm" if kvm_usable() else "tcg",
                           "seconds": seconds, "pings": PINGS, "link_transport": link_transport,
                           "loadavg_before": os.getloadavg(), "paths": {}}
    service_args: dict[str, list[str]] = {"hub": [], "tap": []}
    if link_transport is not None:
        listed = services_listing("--link-transport")
        for kind, has_flag in listed.items():
            if has_flag:
                service_args[kind] = ["--link-transport", link_transport]
            else:
                print(f"  note: `virtwire serve {kind} --help` has no --link-transport; "
                      f"running {kind} without it", flush=True)
        res["link_transport_passed_to"] = [k for k, has in listed.items() if has]
    print(f"  accel={res['accel']} (KVM {'usable' if res['accel'] == 'kvm' else 'not usable'})",
          flush=True)
    for name in PATHS:
        busy = await wait_for_idle(10 if quick else 20)
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"vw-vm-{name}-") as tmp:
            try:
                async with asyncio.timeout(BOOT_TIMEOUT + 60 + 2 * (seconds + 70)):
                    r = await measure_path(name, seconds, service_args, Path(tmp))
            except Exception as exc:  # one path failing must not lose the others
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # Ctrl-C also kills the VMs (one process group): their
                    # errors may win over the cancellation, which must go on.
                    raise asyncio.CancelledError from exc
                r = {"path": name, "error": _describe(exc)}
        r["machine_busy_before"] = round(busy, 2)
        r["wall_s"] = round(time.monotonic() - started, 1)
        res["paths"][name] = r
        if "error" in r:
            print(f"  {name:13s} FAILED: {r['error'][:2000]}", flush=True)
        else:
            print(f"  {name:13s} A->B {r['a_to_b']['mbit_s']:7,.1f} Mbit/s  B->A "
                  f"{r['b_to_a']['mbit_s']:7,.1f} Mbit/s  ping p50 "
                  f"{_fmt(r['ping']['p50_ms'], '.2f')} ms p99 {_fmt(r['ping']['p99_ms'], '.2f')}"
                  f" ms ({r['ping']['received']}/{PINGS})  boot {r['boot_s']} s  "
                  f"[machine {busy:.0%} busy before]", flush=True)
    res["loadavg_after"] = os.getloadavg()
    paths = res["paths"]
    mbit = {n: paths[n]["mbit_s"] for n in PATHS if "mbit_s" in paths[n]}
    if "virtwire-hub" in mbit and mbit.get("qemu-hub"):
        res["virtwire_hub_over_qemu_hub"] = round(mbit["virtwire-hub"] / mbit["qemu-hub"], 3)
        res["virtwire_hub_over_qemu_hub_target"] = TARGET_HUB_RATIO
    if "virtwire-hub-1p" in mbit and mbit.get("qemu-hub"):
        res["virtwire_hub_1p_over_qemu_hub"] = round(mbit["virtwire-hub-1p"] / mbit["qemu-hub"],
                                                     3)
    if "direct" in mbit:
        res["direct_mbit_s"] = mbit["direct"]
        res["virtwire_guests_need_mbit_s"] = round(
            max(TARGET_GUESTS_MBIT, TARGET_GUESTS_OVER_DIRECT * mbit["direct"]), 1)
    return res


async def _measure_until_sigterm(quick: bool, link_transport: str | None) -> dict[str, Any]:
    """measure(), cancelled (so cleaned up) by SIGTERM as by Ctrl-C."""
    task = asyncio.current_task()
    assert task is not None
    with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # not main thread
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await measure(quick, link_transport)


def run(quick: bool = False, link_transport: str | None = None) -> dict[str, Any]:
    """All three paths, one accelerator; prints a table and returns the figures.

    Ctrl-C or SIGTERM stops every process started and raises KeyboardInterrupt
    or CancelledError.
    """
    res = asyncio.run(_measure_until_sigterm(quick, link_transport))
    print_table(res)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="iperf3 -t 3 instead of 5")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    ap.add_argument("--link-transport", choices=("grpc", "auto"),
                    help="pass to the virtwire services (if their --help lists it)")
    a = ap.parse_args(argv)
    try:
        res = run(a.quick, a.link_transport)
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: every process started was stopped", file=sys.stderr)
        return 130
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0 if all("error" not in r for r in res["paths"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
