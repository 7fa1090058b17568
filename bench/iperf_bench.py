#!/usr/bin/env python3
"""iperf3 between two bridged virtwire guests (needs root).

hub + 2 x (guestmem, e1000, guest --bridge-tap IF --netns NS --bridge-ip CIDR):
each guest's NIC appears as a TAP in its own network namespace (198.18.0.0/15,
no routes out), so the kernels' TCP runs over e1000 -> hub -> e1000 with TSO
from the TAP's virtio_net_hdr. iperf3 runs 5 s each way. Bounded in time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from virtwire.orchestrator.launch import ServiceProcess, start_service

SECONDS = 5
SIDES = (("vwbA", "52:54:00:00:0c:01", "198.18.3.1/24"),
         ("vwbB", "52:54:00:00:0c:02", "198.18.3.2/24"))


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _iperf(client_ns: str, server_ip: str, reverse: bool) -> float:
    argv = ["ip", "netns", "exec", client_ns, "iperf3", "-c", server_ip, "-t", str(SECONDS),
            "-J", "--connect-timeout", "5000", *(["-R"] if reverse else [])]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=SECONDS + 30)
    if out.returncode != 0:
        raise RuntimeError(f"iperf3 failed: {out.stdout[-500:]} {out.stderr[-500:]}")
    result = json.loads(out.stdout)
    return float(result["end"]["sum_received"]["bits_per_second"]) / 1e6


def run(quick: bool = False) -> dict[str, Any]:
    if os.geteuid() != 0:
        print("  (skipped: iperf3 between bridged guests needs root)")
        return {"bench": "iperf3", "skipped": "needs root"}
    tag = f"{os.getpid() % 10000}"
    namespaces = [f"{name}{tag}" for name, _, _ in SIDES]
    procs: list[ServiceProcess] = []
    server: subprocess.Popen[bytes] | None = None
    out: dict[str, Any] = {"bench": "iperf3", "seconds": SECONDS}
    try:
        with tempfile.TemporaryDirectory(prefix="vw-iperf-") as tmp:
            workdir = Path(tmp)
            hub = start_service("hub", [], workdir)
            procs.append(hub)
            for ns, (name, mac, cidr) in zip(namespaces, SIDES, strict=True):
                _ip("netns", "add", ns)
                _ip("-n", ns, "link", "set", "lo", "up")
                mem = start_service("guestmem", ["--size", "64M"], workdir)
                nic = start_service("e1000", ["--guestmem", mem.address, "--mac", mac,
                                              "--peer", f"{hub.address}/"], workdir)
                guest = start_service("guest", [
                    "--e1000", nic.address, "--guestmem", mem.address,
                    "--bridge-tap", name[:4] + tag, "--netns", ns, "--bridge-ip", cidr],
                    workdir, timeout=30)
                procs += [mem, nic, guest]
            server_ip = SIDES[1][2].split("/")[0]
            server = subprocess.Popen(["ip", "netns", "exec", namespaces[1], "iperf3", "-s"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            subprocess.run(["ip", "netns", "exec", namespaces[0], "busybox", "ping", "-c", "2",
                            "-W", "5", server_ip], capture_output=True, timeout=30)
            out["a_to_b_mbit_s"] = round(_iperf(namespaces[0], server_ip, False), 1)
            out["b_to_a_mbit_s"] = round(_iperf(namespaces[0], server_ip, True), 1)
            print(f"  iperf3 guest A -> guest B: {out['a_to_b_mbit_s']} Mbit/s, "
                  f"B -> A: {out['b_to_a_mbit_s']} Mbit/s ({SECONDS} s each)", flush=True)
    finally:
        if server is not None:
            server.kill()
            server.wait()
        for proc in reversed(procs):
            proc.stop()
        for ns in namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
    return out


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
    sys.exit(0)
