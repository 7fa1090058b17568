"""The hub hop: stream backend -> hub -> stream backend (unix sockets), side by
side with QEMU's hub and vde_switch, at 64 and 1514 bytes, and with ``pyrelay``
(bench/pyrelay.py: a bare asyncio relay, the floor of one Python process hop,
for reading the latency figures).

For every peer (bench/peers.py) and size, each on a fresh peer:

- throughput: a bounded blast; frames/s, loss, and the CPU time of every
  process of the path (utime + stime in ns, procstat.cpu_seconds, from just
  before the frames start until the receiver is done) divided by the frames delivered;
- latency: one frame per send, paced at 10, 100 and 1000 frames/s; p50, p99;
- memory (virtwire's peers and QEMU's hub): a flood paced at twice the rate
  the throughput run delivered, bounded in count and time, with VmRSS of every
  process sampled throughout and VmHWM at its end.

Then the ratios of each virtwire peer to QEMU's hub (and vde_switch) and the
issue's targets with pass/fail, as markdown tables. ``virtwire-grpc`` (every
service with ``--link-transport grpc``) runs only when the services take that
flag.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from loadgen import LoadConfig, LoadgenError
from peers import Measured, PeerError, has_link_transport, make_peer, run_measured, wait_for_idle
from report import Target, md_table, num, ratio

PEERS = ("virtwire", "virtwire-1p", "virtwire-grpc", "virtwire-tls", "virtwire-3p", "vde", "qemu",
         "pyrelay")
VIRTWIRE_PEERS = tuple(p for p in PEERS if p.startswith("virtwire"))
MEMORY_PEERS = ("virtwire", "virtwire-1p", "virtwire-grpc", "virtwire-3p", "qemu")
SIZES = (64, 1514)
RATES = (10, 100, 1000)
#: The flood: at least this many frames per paced send, about FLOOD_SENDS_PER_S
#: sends a second, and a bound on its frames.
FLOOD_BURST = 32
FLOOD_SENDS_PER_S = 2000
FLOOD_MAX_FRAMES = 1_000_000
#: A NetQueue's cap (nq_maxlen), for reading the memory figures.
NQ_MAXLEN = 10_000
REF_NAMES = {"qemu": "QEMU's hub", "vde": "vde_switch", "pyrelay": "a bare asyncio relay"}
#: Tries per run, and how much of an error (with the peer's logs) the JSON keeps.
ATTEMPTS = 2
ERROR_CHARS = 2000


@dataclass(frozen=True)
class Plan:
    """How much to run."""

    count: int
    repeat: int
    lat_counts: dict[int, int]
    flood_s: float
    #: Wait up to this long for an idle machine before each run.
    idle_wait: float


QUICK = Plan(100_000, 1, {10: 30, 100: 200, 1000: 1000}, 1.5, 5.0)
FULL = Plan(300_000, 3, {10: 100, 100: 500, 1000: 2000}, 4.0, 20.0)


def peer_names() -> tuple[list[str], dict[str, str]]:
    """The peers to run, and why any is left out."""
    skipped: dict[str, str] = {}
    if not has_link_transport():
        skipped["virtwire-grpc"] = ("`virtwire serve hub/tap --help` lists no --link-transport "
                                    "(the services have one link transport)")
    return [p for p in PEERS if p not in skipped], skipped


def _run_dict(m: Measured | None, error: str | None, busy: float) -> dict[str, Any]:
    out: dict[str, Any] = {"busy_before": round(busy, 3)}
    if m is None:
        out["error"] = error
        return out
    out["result"] = asdict(m.result)
    out["cpu_s"] = {k: round(v, 3) for k, v in m.cpu_s.items()}
    out["cpu_us_per_frame"] = {k: round(v, 2) for k, v in m.cpu_us_per_frame.items()}
    if m.memory:
        out["memory"] = m.memory
    return out


async def _measure(name: str, cfg: LoadConfig, idle_wait: float,
                   rss: bool = False) -> dict[str, Any]:
    """One fresh peer, one load: the run's figures, or its error. A failed run
    is tried once more on a fresh peer (the shared tree may be mid-edit); the
    first error stays in the figures."""
    errors: list[str] = []
    for _ in range(ATTEMPTS):
        busy = await wait_for_idle(idle_wait)
        try:
            m = await run_measured(make_peer(name), cfg, rss)
        except (LoadgenError, PeerError, OSError) as exc:
            errors.append(str(exc).strip() or type(exc).__name__)
            continue
        out = _run_dict(m, None, busy)
        break
    else:
        out = _run_dict(None, errors[-1].splitlines()[0], busy)
    if errors:
        out["attempts"] = len(errors) + ("result" in out)
        out["errors"] = [e[-ERROR_CHARS:] for e in errors]
    return out


def _fps(run: dict[str, Any] | None) -> float | None:
    if not run or "result" not in run:
        return None
    fps: float = run["result"]["frames_per_s"]
    return fps


def _retried(run: dict[str, Any]) -> str:
    """`` [try 2 of 2; the first failed: ...]`` for a run that needed a second try."""
    if not run.get("errors") or "result" not in run:
        return ""
    return f" [try {run['attempts']}; the first failed: {run['errors'][0].splitlines()[0]}]"


def _cpu_text(run: dict[str, Any]) -> str:
    per = run.get("cpu_us_per_frame") or {}
    return ", ".join(f"{k} {v:.1f}" for k, v in per.items() if k != "sum") or "-"


def _lost_text(res: dict[str, Any]) -> str:
    return f"{res['lost']:,} ({100.0 * res['lost'] / max(1, res['sent']):.1f}%)"


async def matrix(plan: Plan, names: Sequence[str]) -> dict[str, Any]:
    """Every peer x size: throughput (best of plan.repeat), latency at RATES, flood."""
    out: dict[str, Any] = {"throughput": {}, "latency": {}, "memory": {}}
    for name in names:
        for size in SIZES:
            key = str(size)
            best: dict[str, Any] | None = None
            for _ in range(plan.repeat):
                run = await _measure(name, LoadConfig(size=size, count=plan.count, timeout=30),
                                     plan.idle_wait)
                if best is None or (_fps(run) or 0) > (_fps(best) or 0):
                    best = run
            assert best is not None
            out["throughput"].setdefault(name, {})[key] = best
            if "result" in best:
                res = best["result"]
                cpu = best.get("cpu_us_per_frame", {}).get("sum")
                print(f"  {name:14s} {size:5d} B  {res['frames_per_s']:>9,.0f} frames/s "
                      f"lost={res['lost']:<7d} cpu/frame={num(cpu, 1)}us ({_cpu_text(best)})"
                      f"{_retried(best)}", flush=True)
            else:
                print(f"  {name:14s} {size:5d} B  throughput FAILED: {best['error']}", flush=True)
            lat: dict[str, Any] = {}
            for rate in RATES:
                count = plan.lat_counts[rate]
                cfg = LoadConfig(size=size, count=count, rate=float(rate),
                                 timeout=count / rate + 15)
                lat[str(rate)] = await _measure(name, cfg, plan.idle_wait)
            out["latency"].setdefault(name, {})[key] = lat
            print(f"  {name:14s} {size:5d} B  latency p50/p99 µs: " + "  ".join(
                f"{r}/s {_lat_cell(lat[str(r)])}" for r in RATES)
                + "".join(_retried(lat[str(r)]) for r in RATES), flush=True)
            fps = _fps(best)
            if name in MEMORY_PEERS and fps:
                target = 2.0 * fps
                count = min(FLOOD_MAX_FRAMES, max(1000, int(target * plan.flood_s)))
                burst = max(FLOOD_BURST, int(target / FLOOD_SENDS_PER_S))
                cfg = LoadConfig(size=size, count=count, rate=target, burst=burst,
                                 timeout=8 * plan.flood_s + 10)
                flood = await _measure(name, cfg, plan.idle_wait, rss=True)
                flood["target_rate"] = round(target)
                out["memory"].setdefault(name, {})[key] = flood
                print(f"  {name:14s} {size:5d} B  flood at {target:,.0f}/s: "
                      f"{_memory_text(flood)}{_retried(flood)}", flush=True)
    return out


def _lat_cell(run: dict[str, Any]) -> str:
    if "result" not in run:
        return "FAILED"
    res = run["result"]
    return f"{num(res['lat_p50_us'])}/{num(res['lat_p99_us'])}"


def _memory_text(run: dict[str, Any]) -> str:
    if "result" not in run:
        return f"FAILED: {run.get('error')}"
    mem = run.get("memory") or {}
    return ", ".join(
        f"{label} {m['before_kib'] / 1024:.1f} → {m['peak_kib'] / 1024:.1f} MiB "
        f"(VmHWM {m['hwm_kib'] / 1024:.1f})" for label, m in mem.items()) or "-"


# -- tables ------------------------------------------------------------------------------
def throughput_table(results: dict[str, Any]) -> str:
    rows = []
    for name, by_size in results["throughput"].items():
        for size, run in by_size.items():
            if "result" not in run:
                rows.append([name, size, "FAILED", "", "", run.get("error", ""), "", ""])
                continue
            res = run["result"]
            rows.append([name, size, num(res["frames_per_s"]), num(res["mbit_per_s"]),
                         _lost_text(res), _cpu_text(run),
                         num(run.get("cpu_us_per_frame", {}).get("sum"), 1),
                         f"{run['busy_before']:.0%}"])
    return md_table(["path", "size B", "frames/s", "Mbit/s", "lost",
                     "CPU µs/frame by process", "CPU µs/frame, all", "busy before"], rows)


def latency_table(results: dict[str, Any]) -> str:
    header = ["path", "size B"]
    for rate in RATES:
        header += [f"{rate}/s p50 µs", f"{rate}/s p99 µs"]
    header += ["lost", f"CPU µs/frame at {RATES[-1]}/s"]
    rows = []
    for name, by_size in results["latency"].items():
        for size, by_rate in by_size.items():
            row = [name, size]
            lost = 0
            for rate in RATES:
                run = by_rate.get(str(rate), {})
                res = run.get("result")
                if res is None:
                    row += ["FAILED", ""]
                    continue
                row += [num(res["lat_p50_us"]), num(res["lat_p99_us"])]
                lost += res["lost"]
            fastest = by_rate.get(str(RATES[-1]), {})
            cpu = fastest.get("cpu_us_per_frame", {}).get("sum")
            rows.append([*row, f"{lost:,}", num(cpu, 1 if (cpu or 0) < 100 else 0)])
    return md_table(header, rows)


def memory_table(results: dict[str, Any]) -> str:
    rows = []
    for name, by_size in results["memory"].items():
        for size, run in by_size.items():
            res = run.get("result")
            if res is None:
                rows.append([name, size, num(run.get("target_rate")), "FAILED", "", "",
                             run.get("error", "")])
                continue
            rows.append([name, size, num(run.get("target_rate")), num(res["offered_per_s"]),
                         num(res["frames_per_s"]), _lost_text(res), _memory_text(run)])
    return md_table(["path", "size B", "flood target/s", "offered/s", "delivered/s", "lost",
                     "VmRSS by process: before → peak (VmHWM at the end)"], rows)


def _figure(results: dict[str, Any], name: str, size: int, what: str) -> float | None:
    """cpu (µs/frame, all processes), fps, or p50 at 1000/s of one peer and size."""
    if what == "p50":
        run = results["latency"].get(name, {}).get(str(size), {}).get("1000", {})
        value = run.get("result", {}).get("lat_p50_us")
        return float(value) if value is not None else None
    run = results["throughput"].get(name, {}).get(str(size), {})
    if what == "fps":
        return _fps(run)
    cpu = run.get("cpu_us_per_frame", {}).get("sum")
    return float(cpu) if cpu is not None else None


def targets(results: dict[str, Any], name: str) -> list[Target]:
    """The issue's hub-hop targets for peer ``name`` against QEMU's hub."""
    out = []
    for size, limit in ((64, 3.0), (1514, 3.5)):
        out.append(Target(f"CPU per frame at {size} B, vs QEMU's hub",
                          ratio(_figure(results, name, size, "cpu"),
                                _figure(results, "qemu", size, "cpu")), limit, "max"))
    for size in SIZES:
        out.append(Target(f"frames/s at {size} B, vs QEMU's hub",
                          ratio(_figure(results, name, size, "fps"),
                                _figure(results, "qemu", size, "fps")), 0.5, "min"))
    for size in SIZES:
        out.append(Target(f"p50 at 1000 frames/s, {size} B", _figure(results, name, size, "p50"),
                          150.0, "max", "µs"))
    return out


def ratios_table(results: dict[str, Any], names: Sequence[str]) -> str:
    rows = []
    for ref in ("qemu", "vde", "pyrelay"):
        for what, label in (("cpu", "CPU per frame"), ("fps", "frames/s"),
                            ("p50", "p50 at 1000/s")):
            if ref == "pyrelay" and what != "p50":
                continue  # the relay is a latency floor, not a hub
            for size in SIZES:
                base = _figure(results, ref, size, what)
                rows.append([f"{label}, {size} B, / {REF_NAMES[ref]}"] + [
                    num(ratio(_figure(results, n, size, what), base), 2) for n in names])
    for size in SIZES:
        base = _figure(results, "virtwire", size, "fps")
        rows.append([f"frames/s, {size} B, / virtwire"] + [
            num(ratio(_figure(results, n, size, "fps"), base), 2) for n in names])
    return md_table(["ratio", *names], rows)


def targets_table(results: dict[str, Any], names: Sequence[str]) -> str:
    per = {n: targets(results, n) for n in names}
    rows = [[t.goal()] + [per[n][i].cell() for n in names]
            for i, t in enumerate(per[names[0]])]
    return md_table(["target (hub hop)", *names], rows)


def run(quick: bool = False) -> dict[str, Any]:
    """The whole hub-hop matrix; prints progress lines and the tables."""
    plan = QUICK if quick else FULL
    names, skipped = peer_names()
    for name, why in skipped.items():
        print(f"  (no {name} peer: {why})")
    results = asyncio.run(matrix(plan, names))
    vw = [n for n in names if n in VIRTWIRE_PEERS]
    print("\n**Hub hop, throughput and CPU** (CPU: utime + stime of every process of the "
          "path over the load, /proc, per frame delivered; the load generator is not "
          "counted)\n")
    print(throughput_table(results))
    print("\n**Hub hop, latency** (one frame per send, paced)\n")
    print(latency_table(results))
    print(f"\n**Hub hop, memory under a 2x flood** (paced at twice the frames/s delivered "
          f"above, in bursts of {FLOOD_BURST} or more, {plan.flood_s:g} s of frames at the "
          "target rate; a stream backend pushes back as QEMU's does, so what the path does "
          "not take waits in the sender's socket (offered/s) and only drops are lost; a "
          f"NetQueue holds at most {NQ_MAXLEN:,} frames, {NQ_MAXLEN * 1514 / 2**20:.1f} MiB "
          "of 1514 B frames)\n")
    print(memory_table(results))
    if vw:
        print("\n**Ratios**\n")
        print(ratios_table(results, vw))
        print("\n**Targets** (issue 10; a report, not a test)\n")
        print(targets_table(results, vw))
    results["peers"] = names
    results["skipped"] = skipped
    results["plan"] = asdict(plan)
    results["targets"] = {n: [t.as_dict() for t in targets(results, n)] for n in vw}
    return results
