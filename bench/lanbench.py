"""Default-LAN latency: `virtwire ping vm1 vm2` on examples/default.yaml.

The LAN runs as a user runs it (`virtwire up FILE --detach`, process backend,
loopback), with its state in a temporary directory (VIRTWIRE_STATE_DIR) and
qemu0's stream port moved to a free one; `virtwire down` stops it, also on
error. Round trips are what `virtwire ping` prints (measured in vm1's guest
service, from the echo request handed to its driver to the reply taken off its
RX ring: guest -> e1000 -> hub -> e1000 -> guest and back):

- ``virtwire ping vm1 vm2 -c N``: through the orchestrator, which paces its
  requests 100 ms apart (10/s; the verb's --interval applies with -s only);
- ``virtwire ping -s VM1_GUEST 198.18.0.2 -c N -i 0.01`` and ``-i 0.001``:
  the same guest's Ping RPC, paced at 100/s and 1000/s.

Then the resident set of every service of the LAN. Bounded: every command has
a timeout, the counts are fixed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from peers import free_tcp_port
from procstat import memory_kib
from report import Target, md_table, num, percentile

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "default.yaml"
LAN = "default"
SOURCE, TARGET = "vm1", "vm2"
VIRTWIRE = [sys.executable, "-m", "virtwire.cli"]
#: (pings/s, count, quick count); 10/s is the verb through the orchestrator.
RUNS = ((10, 200, 30), (100, 1000, 200), (1000, 1000, 500))
UP_TIMEOUT_S = 240.0
P50_TARGET_MS = 2.0
_REPLY = re.compile(r"^seq=(\d+) time=([0-9.]+) ms$")
_HEAD = re.compile(r"^PING (\S+) from ")


def parse_ping(text: str) -> dict[str, Any]:
    """What `virtwire ping` printed: the address, requests, round trips (ms)."""
    rtts: list[float] = []
    sent = 0
    address = ""
    for line in text.splitlines():
        head = _HEAD.match(line)
        if head:
            address = head.group(1)
        reply = _REPLY.match(line)
        if reply:
            rtts.append(float(reply.group(2)))
            sent += 1
        elif line.startswith("seq=") and line.endswith("no reply"):
            sent += 1
    return {"address": address, "transmitted": sent, "received": len(rtts),
            "p50_ms": percentile(rtts, 50), "p99_ms": percentile(rtts, 99),
            "min_ms": min(rtts, default=None), "max_ms": max(rtts, default=None)}


class Lan:
    """examples/default.yaml up in a temporary state directory, down on exit."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="vw-lanbench-"))
        self.file = self.tmp / "lan.yaml"
        self.file.write_text(EXAMPLE.read_text().replace("127.0.0.1:10555",
                                                         f"127.0.0.1:{free_tcp_port()}"))
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("VIRTWIRE_TLS_DIR", "VIRTWIRE_TLS_NAME")}
        self.env["VIRTWIRE_STATE_DIR"] = str(self.tmp / "state")
        self.services: list[dict[str, Any]] = []
        self.up = False
        #: vm2's address, as the first ping reports it.
        self.target_ip = "198.18.0.2"

    def cli(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*VIRTWIRE, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def __enter__(self) -> Lan:
        try:
            done = self.cli("up", str(self.file), "--detach", timeout=UP_TIMEOUT_S)
            self.up = True
            if done.returncode != 0:
                raise RuntimeError(f"virtwire up failed: {(done.stdout + done.stderr)[-800:]}")
            status = self.cli("status", LAN, "--json", timeout=60)
            if status.returncode != 0:
                raise RuntimeError(f"virtwire status failed: {status.stderr[-800:]}")
            self.services = [s for n in json.loads(status.stdout)["nodes"] for s in n["services"]]
        except BaseException:
            self.__exit__()
            raise
        return self

    def address(self, service: str) -> str:
        return next(str(s["address"]) for s in self.services if s["name"] == service)

    def __exit__(self, *exc: object) -> None:
        try:
            if self.up:
                self.cli("down", LAN, timeout=120)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _ping(lan: Lan, rate: int, count: int) -> dict[str, Any]:
    if rate == 10:
        args = ["ping", SOURCE, TARGET, "-c", str(count), "--lan", LAN]
        how = f"virtwire ping {SOURCE} {TARGET} -c {count}"
    else:
        interval = f"{1 / rate:g}"
        address = lan.address(f"{SOURCE}-guest")
        args = ["ping", "-s", address, lan.target_ip, "-c", str(count), "-i", interval]
        how = f"virtwire ping -s {SOURCE}-guest {lan.target_ip} -c {count} -i {interval}"
    t0 = time.monotonic()
    done = lan.cli(*args, timeout=60 + count * 1.2 / rate)
    out = {"how": how, "rate": rate, "count": count, **parse_ping(done.stdout),
           "wall_s": round(time.monotonic() - t0, 2), "exit": done.returncode}
    if done.returncode != 0 and not out["received"]:
        out["error"] = (done.stderr or done.stdout).strip()[-400:]
    return out


def run(quick: bool = False) -> dict[str, Any]:
    """Bring the default LAN up, ping at 10, 100 and 1000/s, bring it down; print tables."""
    out: dict[str, Any] = {"bench": "default-lan-ping", "topology": str(EXAMPLE.name),
                           "pings": []}
    t0 = time.monotonic()
    try:
        with Lan() as lan:
            out["up_s"] = round(time.monotonic() - t0, 1)
            for rate, count, quick_count in RUNS:
                res = _ping(lan, rate, quick_count if quick else count)
                if rate == 10 and res["address"]:
                    lan.target_ip = res["address"]
                out["pings"].append(res)
                print(f"  {res['how']}: {res['received']}/{res['transmitted']} replies, "
                      f"p50 {num(res['p50_ms'], 3)} ms, p99 {num(res['p99_ms'], 3)} ms"
                      + (f" [{res['error']}]" if "error" in res else ""), flush=True)
            out["memory"] = {s["name"]: memory_kib(int(s["pid"])) for s in lan.services
                             if s.get("pid")}
    except (RuntimeError, OSError, subprocess.TimeoutExpired, StopIteration) as exc:
        out["error"] = str(exc)
        print(f"  default LAN FAILED: {exc}", flush=True)
    verb = next((p for p in out["pings"] if p["rate"] == 10), None)
    target = Target("`virtwire ping vm1 vm2` p50", verb["p50_ms"] if verb else None,
                    P50_TARGET_MS, "max", "ms")
    out["target"] = target.as_dict()
    print("\n**Default LAN, `virtwire ping`** (examples/default.yaml, process backend; "
          "round trips as the ping verb reports them)\n")
    print(md_table(["command", "pings/s", "sent", "replies", "p50 ms", "p99 ms", "min ms",
                    "max ms"],
                   [[f"`{p['how']}`", str(p["rate"]), str(p["transmitted"]), str(p["received"]),
                     num(p["p50_ms"], 3), num(p["p99_ms"], 3), num(p["min_ms"], 3),
                     num(p["max_ms"], 3)] for p in out["pings"]]))
    if out.get("memory"):
        print("\nVmRSS after the pings: " + ", ".join(
            f"{name} {m.get('VmRSS', 0) / 1024:.1f} MiB" for name, m in out["memory"].items()))
    measured = "not measured" if target.measured is None else (
        f"{target.measured:.3f} ms {'pass' if target.passed else 'FAIL'}")
    print(f"\ntarget: {target.goal()}: {measured}")
    return out
