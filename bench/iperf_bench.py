#!/usr/bin/env python3
"""iperf3 between two bridged virtwire guests (needs root), every frame accounted for.

hub + 2 x (guestmem, e1000, guest --bridge-tap IF --netns NS --bridge-ip CIDR):
each guest's NIC appears as a TAP in its own network namespace (198.18.0.0/15,
no routes out), so the kernels' TCP runs over e1000 -> hub -> e1000 with TSO
from the TAP's virtio_net_hdr. One steady single-stream iperf3 run (``-P 1``)
each way, SECONDS long (QUICK_SECONDS with --quick, as bench/vm_bench.py's
QEMU VMs). Every step is bounded in time.

Around each run the counters of every service of the path are read over gRPC
(and the kernel's counters of both TAPs), and the difference is accounted:

- frames: each e1000's good frames sent and received (GPTC, GPRC), each
  NetClient's rx/tx frames (hub ports, the NICs' NetClients), each driver's
  frames (GetStatus), each TAP's packets as its kernel counts them;
- drops: the e1000 drop counters by cause (GetStats.drops, without
  ``rx_deferred``: queued, not lost; ``mmio_reentrant`` and ``dma_errors``:
  accesses, not frames), every NetClient's ``dropped_total`` (its
  ``dropped_*`` causes and queue drops), each guest's ``dropped`` (driver TX
  ring and RX, bridge TAP writes and reads) and each TAP's kernel
  ``rx_dropped``/``tx_dropped`` (packets the bridge did not read in time).

``carried`` is the frames that reached a guest's RX ring (both NICs' GPRC: the
data and the ACKs), ``dropped / (carried + dropped)`` the drop fraction, and
``sent - carried - dropped between the NICs`` what is unaccounted (still in
flight when the counters were read). Guest- and TAP-side drops count packets
(a TSO packet is up to 45 frames), so that fraction is a lower bound when they
are not 0. iperf3's TCP retransmits come from its -J output, the CPU time of
every service process from /proc (bench/procstat.py): µs per frame carried and
ms per MB that iperf3 received.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procstat import CpuMeter
from report import PercentTarget, Target, md_table, num, ratio

from virtwire import tls
from virtwire.orchestrator.launch import ServiceProcess, start_service
from virtwire.v1 import (
    e1000_pb2,
    e1000_pb2_grpc,
    guest_pb2,
    guest_pb2_grpc,
    netclient_pb2,
    netclient_pb2_grpc,
)

SECONDS = 5
QUICK_SECONDS = 3
#: iperf3 streams: one, the steady single-stream run the drop target is about.
STREAMS = 1
#: After a run, time for the last frames (ACKs) to settle before the counters are read.
SETTLE_S = 0.5
RPC_TIMEOUT_S = 5.0
SIDES = (("vwbA", "52:54:00:00:0c:01", "198.18.3.1/24"),
         ("vwbB", "52:54:00:00:0c:02", "198.18.3.2/24"))
#: Labels of the services of each side, in SIDES order.
SIDE_LABELS = ("A", "B")
#: Issue 10's targets for two virtwire guests (each against its reference in the same run).
TARGET_OVER_DIRECT = 0.4
TARGET_MBIT = 150.0
TARGET_DROPPED_PCT = 0.1
#: e1000 GetStats.drops that are no lost frame: queued for later (rx_deferred),
#: MMIO accesses refused (mmio_reentrant), DMA accesses that failed (dma_errors:
#: the frames they cost are in rx_dma_errors / tx_dma_errors).
NOT_FRAME_DROPS = frozenset({"rx_deferred", "mmio_reentrant", "dma_errors"})
#: NetClientCounters read as frame counts; every cause is in dropped_total.
NC_FRAMES = ("rx_frames", "tx_frames")
NC_DROP_CAUSES = ("dropped_queue_full", "dropped_link_down", "dropped_refused",
                  "dropped_malformed", "dropped_purged", "dropped_filter")


@dataclass
class Counters:
    """Monotonic counters of a path at one moment, as ``where.what``: ``where`` is
    a service label (``hub``, ``nicA``, ``guestB``, ``tapA``) with
    ``/NETCLIENT`` for a NetClient's counters."""

    frames: dict[str, int] = field(default_factory=dict)
    #: Every counter here is a lost frame (or packet), counted once.
    drops: dict[str, int] = field(default_factory=dict)
    #: Causes behind a NetClient's ``dropped_total`` (not added to drops again).
    causes: dict[str, int] = field(default_factory=dict)


def _diff(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    out = {}
    for key, now in after.items():
        delta = now - before.get(key, 0)
        if delta < 0:
            raise ValueError(f"counter {key} went back from {before[key]} to {now} "
                             "(a service restarted?)")
        out[key] = delta
    return out


def diff_counters(before: Counters, after: Counters) -> Counters:
    """``after - before`` per counter; a counter missing before counts from 0.
    ValueError when one went backwards (its service restarted: the run's
    figures would be wrong)."""
    return Counters(_diff(before.frames, after.frames), _diff(before.drops, after.drops),
                    _diff(before.causes, after.causes))


def where(key: str) -> str:
    """``nicA/nic0.dropped_total`` -> ``nicA``."""
    return key.partition(".")[0].partition("/")[0]


def account(delta: Counters, nics: Sequence[str], between: Sequence[str]) -> dict[str, Any]:
    """Frames carried and dropped over one run, from the counters' difference.

    ``nics``: the two e1000 labels; ``between``: the labels from one NIC's
    wire to the other's RX ring (the NICs and the hub), whose drops explain
    frames sent but not carried.
    """
    frames = delta.frames
    sent = sum(frames.get(f"{nic}.GPTC", 0) for nic in nics)
    carried = sum(frames.get(f"{nic}.GPRC", 0) for nic in nics)
    dropped = sum(delta.drops.values())
    in_path = sum(v for k, v in delta.drops.items() if where(k) in between)
    offered = carried + dropped
    return {
        "sent": sent, "carried": carried, "dropped": dropped,
        "dropped_between_nics": in_path,
        "unaccounted": sent - carried - in_path,
        "dropped_pct": 100.0 * dropped / offered if offered else None,
        "drops_by_counter": {k: v for k, v in sorted(delta.drops.items()) if v},
        "drop_causes": {k: v for k, v in sorted(delta.causes.items()) if v},
    }


def cpu_figures(used_s: Mapping[str, float], frames: int, received_bytes: int
                ) -> dict[str, Any]:
    """CPU of every process over a run: seconds each, µs per frame carried
    and ms per MB received (``None`` without frames or bytes)."""
    total = sum(used_s.values())
    mb = received_bytes / 1e6
    return {"cpu_s": {k: round(v, 3) for k, v in used_s.items()},
            "cpu_s_sum": round(total, 3),
            "cpu_us_per_frame": round(total * 1e6 / frames, 1) if frames else None,
            "cpu_ms_per_mb": round(total * 1e3 / mb, 2) if mb else None}


def iperf_figures(result: Mapping[str, Any]) -> dict[str, Any]:
    """Mbit/s and bytes received, and TCP retransmits, from iperf3 -J output."""
    end = result["end"]
    received = end["sum_received"]
    retransmits = end.get("sum_sent", {}).get("retransmits")
    return {"mbit_s": round(float(received["bits_per_second"]) / 1e6, 1),
            "received_bytes": int(received["bytes"]),
            "seconds": round(float(received["seconds"]), 2),
            "retransmits": int(retransmits) if retransmits is not None else None,
            "streams": len(result.get("start", {}).get("connected", [])) or None}


def mean_mbit(res: Mapping[str, Any]) -> float | None:
    """The mean of both directions' Mbit/s of an iperf_bench result, None if not both."""
    rates = [res.get(d, {}).get("mbit_s") for d in ("a_to_b", "b_to_a")]
    if any(r is None for r in rates):
        return None
    return sum(float(r) for r in rates if r is not None) / len(rates)


def worst_dropped_pct(res: Mapping[str, Any]) -> float | None:
    """The larger drop fraction (%) of the two directions, None if not measured."""
    pcts = [res.get(d, {}).get("frames", {}).get("dropped_pct") for d in ("a_to_b", "b_to_a")]
    known = [float(p) for p in pcts if p is not None]
    return max(known) if len(known) == len(pcts) else None


def targets(iperf: Mapping[str, Any], vm: Mapping[str, Any] | None) -> list[Target]:
    """Issue 10's targets for two virtwire guests: iperf3 (mean of both directions)
    against two QEMU VMs direct from bench/vm_bench.py's run (``vm``, may be None),
    the absolute rate, and the frames dropped in the worse direction."""
    guests = mean_mbit(iperf)
    direct = vm.get("direct_mbit_s") if vm else None
    return [
        Target("iperf3, two virtwire guests / two QEMU VMs direct",
               ratio(guests, float(direct) if direct is not None else None),
               TARGET_OVER_DIRECT, "min"),
        Target("iperf3, two virtwire guests", guests, TARGET_MBIT, "min", "Mbit/s"),
        PercentTarget("frames dropped, steady single stream (worse direction)",
                      worst_dropped_pct(iperf), TARGET_DROPPED_PCT, "max"),
    ]


def comparison(iperf: Mapping[str, Any], vm: Mapping[str, Any]) -> dict[str, Any]:
    """The ratios virtwire guests / two QEMU VMs direct, both from one run."""
    direct = vm.get("paths", {}).get("direct", {})
    out: dict[str, Any] = {"accel": vm.get("accel")}
    for d in ("a_to_b", "b_to_a"):
        out[f"{d}_ratio"] = ratio(iperf.get(d, {}).get("mbit_s"),
                                  direct.get(d, {}).get("mbit_s"))
    out["mean_ratio"] = ratio(mean_mbit(iperf), vm.get("direct_mbit_s"))
    out["cpu_ms_per_mb"] = {
        d: {"virtwire_guests": iperf.get(d, {}).get("cpu", {}).get("cpu_ms_per_mb"),
            "qemu_direct": direct.get(d, {}).get("cpu_ms_per_mb")}
        for d in ("a_to_b", "b_to_a")}
    return out


def comparison_table(iperf: Mapping[str, Any], vm: Mapping[str, Any] | None) -> str:
    direct = (vm or {}).get("paths", {}).get("direct", {})
    rows = []
    for d, label in (("a_to_b", "A → B"), ("b_to_a", "B → A")):
        guests, qemu = iperf.get(d, {}), direct.get(d, {})
        rows.append([label, num(guests.get("mbit_s"), 1), num(qemu.get("mbit_s"), 1),
                     num(ratio(guests.get("mbit_s"), qemu.get("mbit_s")), 3),
                     num(guests.get("cpu", {}).get("cpu_ms_per_mb"), 2),
                     num(qemu.get("cpu_ms_per_mb"), 2)])
    return md_table(["direction", "virtwire guests Mbit/s", "QEMU VMs direct Mbit/s", "ratio",
                     "virtwire CPU ms/MB", "QEMU direct CPU ms/MB"], rows)


def targets_table(ts: Sequence[Target]) -> str:
    return md_table(["target (two virtwire guests)", "measured"],
                    [[t.goal(), t.cell()] for t in ts])


# -- the counters of a running path -------------------------------------------------------
@dataclass
class Service:
    label: str
    kind: str
    address: str


async def _netclients(address: str) -> list[netclient_pb2.NetClientInfo]:
    async with tls.aio_channel(address) as channel:
        got = await netclient_pb2_grpc.NetClientServiceStub(channel).ListNetClients(
            netclient_pb2.ListNetClientsRequest(), timeout=RPC_TIMEOUT_S)
    return list(got.netclients)


async def _e1000_stats(address: str) -> e1000_pb2.GetStatsResponse:
    async with tls.aio_channel(address) as channel:
        stats: e1000_pb2.GetStatsResponse = await e1000_pb2_grpc.E1000ServiceStub(
            channel).GetStats(e1000_pb2.GetStatsRequest(), timeout=RPC_TIMEOUT_S)
    return stats


async def _guest_status(address: str) -> guest_pb2.GetStatusResponse:
    async with tls.aio_channel(address) as channel:
        status: guest_pb2.GetStatusResponse = await guest_pb2_grpc.GuestServiceStub(
            channel).GetStatus(guest_pb2.GetStatusRequest(), timeout=RPC_TIMEOUT_S)
    return status


def tap_stats(netns: str, ifname: str) -> dict[str, int]:
    """The kernel's counters of a TAP in ``netns`` (``ip -s -j link``): packets and
    drops each way, from the kernel's side (tx: to the bridge, rx: from it)."""
    out = subprocess.run(["ip", "-n", netns, "-s", "-j", "link", "show", "dev", ifname],
                         capture_output=True, text=True, timeout=10, check=True)
    stats = json.loads(out.stdout)[0]["stats64"]
    return {f"{way}_{what}": int(stats[way][what])
            for way in ("rx", "tx") for what in ("packets", "dropped")}


async def read_counters(services: Sequence[Service], taps: Sequence[tuple[str, str, str]]
                        ) -> Counters:
    """Every counter of the path: ListNetClients of every service, the e1000s'
    GetStats, the guests' GetStatus, and ``taps`` (label, netns, ifname)."""
    c = Counters()
    for svc in services:
        for nc in await _netclients(svc.address):
            key = f"{svc.label}/{nc.name}"
            for name in NC_FRAMES:
                c.frames[f"{key}.{name}"] = getattr(nc.counters, name)
            c.drops[f"{key}.dropped_total"] = nc.counters.dropped_total
            for name in NC_DROP_CAUSES:
                c.causes[f"{key}.{name}"] = getattr(nc.counters, name)
        if svc.kind == "e1000":
            stats = await _e1000_stats(svc.address)
            for name, value in stats.registers.items():
                c.frames[f"{svc.label}.{name}"] = value
            for name, value in stats.drops.items():
                if name not in NOT_FRAME_DROPS:
                    c.drops[f"{svc.label}.{name}"] = value
        elif svc.kind == "guest":
            status = await _guest_status(svc.address)
            c.frames[f"{svc.label}.tx_frames"] = status.tx_frames
            c.frames[f"{svc.label}.rx_frames"] = status.rx_frames
            c.drops[f"{svc.label}.dropped"] = status.dropped
    for label, netns, ifname in taps:
        kernel = await asyncio.to_thread(tap_stats, netns, ifname)
        for name in ("rx_packets", "tx_packets"):
            c.frames[f"{label}.{name}"] = kernel[name]
        for name in ("rx_dropped", "tx_dropped"):
            c.drops[f"{label}.{name}"] = kernel[name]
    return c


# -- the run ------------------------------------------------------------------------------
def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _iperf(client_ns: str, server_ip: str, reverse: bool, seconds: int) -> dict[str, Any]:
    argv = ["ip", "netns", "exec", client_ns, "iperf3", "-c", server_ip, "-t", str(seconds),
            "-P", str(STREAMS), "-J", "--connect-timeout", "5000",
            *(["-R"] if reverse else [])]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    if out.returncode != 0:
        raise RuntimeError(f"iperf3 failed: {out.stdout[-500:]} {out.stderr[-500:]}")
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def measure_direction(services: Sequence[Service], taps: Sequence[tuple[str, str, str]],
                      procs: Sequence[tuple[str, int]], client_ns: str, server_ip: str,
                      reverse: bool, seconds: int) -> dict[str, Any]:
    """One iperf3 run with the counters and CPU read around it."""
    nics = [s.label for s in services if s.kind == "e1000"]
    between = [*nics, *(s.label for s in services if s.kind == "hub")]
    before = asyncio.run(read_counters(services, taps))
    meter = CpuMeter(procs)
    meter.start()
    started = time.monotonic()
    result = _iperf(client_ns, server_ip, reverse, seconds)
    time.sleep(SETTLE_S)
    meter.stop()
    wall = time.monotonic() - started
    after = asyncio.run(read_counters(services, taps))
    delta = diff_counters(before, after)
    out = iperf_figures(result)
    out["frames"] = account(delta, nics, between)
    out["cpu"] = cpu_figures(meter.used_s, out["frames"]["carried"], out["received_bytes"])
    out["cpu"]["wall_s"] = round(wall, 2)
    if meter.gone:
        out["cpu"]["gone"] = meter.gone
    out["counters"] = {"frames": {k: v for k, v in delta.frames.items() if v},
                       "drops": delta.drops}
    return out


def _line(name: str, d: dict[str, Any]) -> str:
    f, cpu = d["frames"], d["cpu"]
    pct = "-" if f["dropped_pct"] is None else f"{f['dropped_pct']:.3f} %"
    drops = ", ".join(f"{k} {v}" for k, v in f["drops_by_counter"].items()) or "none"
    return (f"  iperf3 {name}: {d['mbit_s']:,.1f} Mbit/s, {d['retransmits']} retransmits; "
            f"frames sent {f['sent']:,}, carried {f['carried']:,}, dropped {f['dropped']:,} "
            f"({pct}; {drops}), unaccounted {f['unaccounted']:,}; CPU "
            f"{num(cpu['cpu_us_per_frame'], 1)} µs/frame, {num(cpu['cpu_ms_per_mb'], 2)} ms/MB")


def print_tables(out: dict[str, Any]) -> None:
    rows = []
    for d, label in (("a_to_b", "A → B"), ("b_to_a", "B → A")):
        r = out.get(d)
        if r is None:
            continue
        f, cpu = r["frames"], r["cpu"]
        rows.append([label, num(r["mbit_s"], 1), num(r["retransmits"]), f"{f['sent']:,}",
                     f"{f['carried']:,}", f"{f['dropped']:,}",
                     "-" if f["dropped_pct"] is None else f"{f['dropped_pct']:.3f} %",
                     f"{f['unaccounted']:,}", num(cpu["cpu_us_per_frame"], 1),
                     num(cpu["cpu_ms_per_mb"], 2)])
    print(f"\n**Two virtwire guests bridged to TAPs, iperf3 -P {STREAMS} -t {out['seconds']}** "
          "(frames: both NICs' GPTC / GPRC, data and ACKs; dropped: every drop counter of "
          "the path; CPU: utime + stime of the 7 service processes, /proc)\n")
    print(md_table(["direction", "Mbit/s", "TCP retransmits", "frames sent", "carried",
                    "dropped", "dropped %", "unaccounted", "CPU µs/frame", "CPU ms/MB"], rows))


def run(quick: bool = False) -> dict[str, Any]:
    if os.geteuid() != 0:
        print("  (skipped: iperf3 between bridged guests needs root)")
        return {"bench": "iperf3", "skipped": "needs root"}
    seconds = QUICK_SECONDS if quick else SECONDS
    tag = f"{os.getpid() % 10000}"
    namespaces = [f"{name}{tag}" for name, _, _ in SIDES]
    procs: list[ServiceProcess] = []
    server: subprocess.Popen[bytes] | None = None
    out: dict[str, Any] = {"bench": "iperf3", "seconds": seconds, "streams": STREAMS}
    try:
        with tempfile.TemporaryDirectory(prefix="vw-iperf-") as tmp:
            workdir = Path(tmp)
            hub = start_service("hub", [], workdir)
            procs.append(hub)
            services = [Service("hub", "hub", hub.address)]
            labelled = [("hub", hub.pid)]
            taps = []
            for ns, side, (name, mac, cidr) in zip(namespaces, SIDE_LABELS, SIDES, strict=True):
                _ip("netns", "add", ns)
                _ip("-n", ns, "link", "set", "lo", "up")
                ifname = name[:4] + tag
                mem = start_service("guestmem", ["--size", "64M"], workdir)
                nic = start_service("e1000", ["--guestmem", mem.address, "--mac", mac,
                                              "--peer", f"{hub.address}/"], workdir)
                guest = start_service("guest", [
                    "--e1000", nic.address, "--guestmem", mem.address,
                    "--bridge-tap", ifname, "--netns", ns, "--bridge-ip", cidr],
                    workdir, timeout=30)
                procs += [mem, nic, guest]
                services += [Service(f"mem{side}", "guestmem", mem.address),
                             Service(f"nic{side}", "e1000", nic.address),
                             Service(f"guest{side}", "guest", guest.address)]
                labelled += [(f"mem{side}", mem.pid), (f"nic{side}", nic.pid),
                             (f"guest{side}", guest.pid)]
                taps.append((f"tap{side}", ns, ifname))
            server_ip = SIDES[1][2].split("/")[0]
            server = subprocess.Popen(["ip", "netns", "exec", namespaces[1], "iperf3", "-s"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            subprocess.run(["ip", "netns", "exec", namespaces[0], "busybox", "ping", "-c", "2",
                            "-W", "5", server_ip], capture_output=True, timeout=30)
            for key, reverse, name in (("a_to_b", False, "guest A -> guest B"),
                                       ("b_to_a", True, "guest B -> guest A")):
                out[key] = measure_direction(services, taps, labelled, namespaces[0],
                                             server_ip, reverse, seconds)
                print(_line(name, out[key]), flush=True)
    finally:
        if server is not None:
            server.kill()
            server.wait()
        for proc in reversed(procs):
            proc.stop()
        for ns in namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
    mean = mean_mbit(out)
    out["mbit_s"] = round(mean, 1) if mean is not None else None
    out["dropped_pct_worst"] = worst_dropped_pct(out)
    print_tables(out)
    return out


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv[1:]), indent=1))
    sys.exit(0)
