#!/usr/bin/env python3
"""`make bench`: every virtwire benchmark, with the reference peers, in one run.

- hub: the hub hop (bench/hubbench.py): stream backend -> hub -> stream
  backend at 64 and 1514 B through virtwire (hub + one tap service; the hub
  alone with both stream backends on its ports, ``--port-backend``; with
  mutual TLS; with ``--link-transport grpc`` when the services take it; hub +
  two tap services), QEMU's own hub and ``vde_switch --hub``: frames/s, CPU µs
  per frame of every process of the path (/proc), latency p50/p99 at 10, 100
  and 1000 frames/s, resident sets under a 2x flood, the ratios to QEMU's hub
  and the issue's targets with pass/fail;
- filters: the virtwire hub hop with no filter, an idle netem, an active
  netem (delay, loss) and a dump on one hub port: CPU µs per frame, frames/s,
  the delta to no filter and loss (bench/filterbench.py);
- switch: the learning switch's hop (bench/switchbench.py) against
  ``vde_switch`` without ``--hub`` in the same run, flooding and learned
  unicast, with virtwire's hub as baseline: frames/s, CPU µs per frame, loss;
- lan: `virtwire ping vm1 vm2` on the default LAN at 10, 100 and 1000/s
  (bench/lanbench.py);
- dma: guest-memory DMA (dma_bench);
- guest: guest to guest through e1000 -> hub -> e1000 (guest_bench);
- iperf: iperf3 between two guests bridged to TAPs (iperf_bench, root);
- vm: two real QEMU VMs with iperf3, direct, through QEMU's hub and through a
  virtwire hub (hub + tap service, and the hub alone with the VMs' stream
  ports as its port backends) (vm_bench, when bench/vm_bench.py is there).

After every part has run, two virtwire guests (iperf) are set against two QEMU
VMs direct (vm) of the same run: the ratio each way, and issue 10's targets for
them as pass/fail (``guests_vs_direct`` in the JSON).

Tables are markdown, as the README takes them; the machine load is printed
before and after, and --json FILE writes every figure.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from report import load_figures, load_note

PARTS = ("hub", "filters", "trace", "switch", "lan", "dma", "guest", "iperf", "vm")


def _parts(text: str) -> list[str]:
    parts = [p for p in text.split(",") if p]
    for p in parts:
        if p not in PARTS:
            raise argparse.ArgumentTypeError(f"{p!r} is not one of {', '.join(PARTS)}")
    return parts


def run_part(name: str, quick: bool) -> dict[str, Any]:
    """One benchmark's figures (printed as it goes)."""
    if name == "hub":
        import hubbench

        print("\n## Hub hop: stream -> hub -> stream (unix sockets)\n", flush=True)
        return hubbench.run(quick=quick)
    if name == "filters":
        import filterbench

        print("\n## Net filters on the hub hop: none, idle and active netem, dump\n", flush=True)
        return filterbench.run(quick=quick)
    if name == "trace":
        import tracebench

        print("\n## Per-frame tracing on the hub hop: off, 1/1000, 1/100, every frame\n",
              flush=True)
        return tracebench.run(quick=quick)
    if name == "switch":
        import switchbench

        print("\n## Switch hop: stream -> switch -> stream, against vde_switch\n", flush=True)
        return switchbench.run(quick=quick)
    if name == "lan":
        import lanbench

        print("\n## Default LAN: virtwire ping vm1 vm2\n", flush=True)
        return lanbench.run(quick=quick)
    if name == "dma":
        import dma_bench

        print("\n## Guest memory DMA\n", flush=True)
        return dma_bench.run(quick=quick)
    if name == "guest":
        import guest_bench

        print("\n## Guest to guest: e1000 -> hub -> e1000\n", flush=True)
        return guest_bench.run(quick=quick, with_tls=True)
    if name == "iperf":
        import iperf_bench

        print("\n## iperf3 between two guests bridged to TAPs\n", flush=True)
        return iperf_bench.run(quick=quick)
    print("\n## Two QEMU VMs with iperf3: direct, QEMU's hub, virtwire hub\n", flush=True)
    if importlib.util.find_spec("vm_bench") is None:
        print("  (skipped: bench/vm_bench.py is not there)")
        return {"bench": "vm", "skipped": "bench/vm_bench.py is not there"}
    vm_bench = importlib.import_module("vm_bench")
    result: dict[str, Any] = vm_bench.run(quick=quick)
    return result


def guests_vs_direct(iperf: dict[str, Any], vm: dict[str, Any] | None) -> dict[str, Any]:
    """Two virtwire guests against two QEMU VMs direct, both measured in this run
    (printed; the ratio and the QEMU figures are "not measured" without vm)."""
    import iperf_bench

    if vm is not None and ("skipped" in vm or "direct_mbit_s" not in vm):
        vm = None
    out = iperf_bench.comparison(iperf, vm) if vm is not None else {}
    ts = iperf_bench.targets(iperf, vm)
    out["targets"] = [t.as_dict() for t in ts]
    accel = f", QEMU accel={vm.get('accel')}" if vm is not None else ""
    print(f"\n## Two virtwire guests vs two QEMU VMs direct (iperf3, this run{accel})\n")
    print(iperf_bench.comparison_table(iperf, vm))
    print("\n**Targets** (issue 10; a report, not a test)\n")
    print(iperf_bench.targets_table(ts))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller counts, one repeat")
    ap.add_argument("--json", metavar="FILE", help="write all figures to FILE")
    ap.add_argument("--only", type=_parts, metavar="PART[,PART]",
                    help=f"run these benchmarks only, of {', '.join(PARTS)}")
    a = ap.parse_args(argv)
    parts = a.only or list(PARTS)
    report: dict[str, Any] = {"started": time.time(), "quick": a.quick,
                              "load_before": load_figures(), "machine": load_note()}
    print(f"# virtwire benchmarks{' (--quick)' if a.quick else ''}\n\n"
          f"before: {load_note()}", flush=True)
    t0 = time.monotonic()
    for name in PARTS:
        if name in parts:
            report[name] = run_part(name, a.quick)
    if isinstance(report.get("iperf"), dict) and "skipped" not in report["iperf"]:
        report["guests_vs_direct"] = guests_vs_direct(report["iperf"], report.get("vm"))
    report["load_after"] = load_figures()
    report["elapsed_s"] = round(time.monotonic() - t0, 1)
    print(f"\nafter: {load_note()} ({report['elapsed_s']:.0f} s of benchmarks)")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
