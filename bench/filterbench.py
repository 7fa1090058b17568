"""What a net filter costs on the hub hop (issue 11): stream backend -> hub ->
stream backend through virtwire (`serve hub` with two named ports, `serve tap`
with both stream backends, bench/peers.py), at 64 and 1514 B, with

- ``none``: no filter (the baseline of this run);
- ``netem-idle``: a netem with every impairment 0 (delay=0, loss=0%, rate=0)
  on the hub port towards b, ``queue=tx``: the chain's and netem's per-frame
  cost with nothing to do;
- ``netem-active``: delay=1ms, loss=1%, fixed seed, limit=100000, on that
  port: every frame held on a timer, about 1% lost (counted, not a failure);
- ``netem-rate``: as active plus rate=10gbit: the token bucket's cost on every
  frame, at a rate the hop does not reach (1gbit would shape 1514 B frames to
  82,000/s and measure the shaping instead);
- ``dump``: a dump filter on that port into a temporary --dump-dir (pcap).

For each: frames/s, CPU µs per delivered frame of every process of the path
(/proc, as bench/hubbench.py), and the delta of both to ``none`` measured in
the same run; delivered % of sent. Variants take turns in every repeat so a
drift of the machine spreads over all of them.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from hubbench import ATTEMPTS, ERROR_CHARS, SIZES, _cpu_text, _run_dict
from loadgen import LoadConfig, LoadgenError
from peers import Peer, PeerError, VirtwireHubPeer, run_measured, wait_for_idle
from report import md_table, num

#: The hub's two named ports: backend a dials PORT_A, b dials PORT_B; the
#: filters go on PORT_B's tx queue (frames the hub sends towards b).
PORT_A, PORT_B = "pa", "pb"
SEED = 11
#: netem's limit for the active variants. A blast comes faster than a delaying
#: netem hands frames on (it does not push back), so with netem's default limit
#: (1000) most frames would be dropped as "limit"; with its highest limit and
#: no more frames a run than that, only loss=1% drops.
LIMIT = 100_000
#: (variant, its filter's --object on the hub, without id/netdev/queue; "" for none).
VARIANTS: tuple[tuple[str, str], ...] = (
    ("none", ""),
    ("netem-idle", f"netem:delay=0,loss=0%,rate=0,seed={SEED}"),
    ("netem-active", f"netem:delay=1ms,loss=1%,limit={LIMIT},seed={SEED}"),
    ("netem-rate", f"netem:delay=1ms,loss=1%,rate=10gbit,limit={LIMIT},seed={SEED}"),
    ("dump", "dump:file=pb.pcap"),
)
VARIANT_NAMES = tuple(v for v, _ in VARIANTS)
BASELINE = "none"
#: Seconds a `virtwire list` / `filter ls` for the drop counters may take.
CLI_TIMEOUT = 20.0


@dataclass(frozen=True)
class Plan:
    """How much to run."""

    #: Frames a run, at most LIMIT (see there).
    count: int
    repeat: int
    #: Wait up to this long for an idle machine before each run.
    idle_wait: float
    #: The receiver's idle timeout: with loss it ends every run. A delaying
    #: netem holds the frames a blast brings faster than it hands them on (p50
    #: in the table), so a shorter one would count late frames as lost.
    rx_idle: float


QUICK = Plan(LIMIT, 1, 3.0, 1.5)
FULL = Plan(LIMIT, 3, 15.0, 1.5)


def filter_object(spec: str, fid: str = "f0", netdev: str = PORT_B) -> str:
    """``KIND:PROPS`` (a VARIANTS entry) as the hub's ``--object`` text, on
    ``netdev``'s tx queue."""
    kind, _, props = spec.partition(":")
    if not kind:
        raise ValueError(f"filter spec {spec!r}: no kind")
    text = f"filter-{kind},id={fid},netdev={netdev},queue=tx"
    return f"{text},{props}" if props else text


def hub_args(spec: str, dump_dir: str) -> list[str]:
    """The extra `serve hub` arguments of a variant (a dump gets --dump-dir)."""
    if not spec:
        return []
    args = ["--object", filter_object(spec)]
    if spec.partition(":")[0] == "dump":
        args += ["--dump-dir", dump_dir]
    return args


def make_filter_peer(variant: str, spec: str, dump_dir: str) -> VirtwireHubPeer:
    return VirtwireHubPeer(taps=1, serve_args={"hub": hub_args(spec, dump_dir)},
                           hub_ports=(PORT_A, PORT_B), name=f"virtwire+{variant}")


def cpu_sum(run: dict[str, Any] | None) -> float | None:
    if not run or "result" not in run:
        return None
    value = run.get("cpu_us_per_frame", {}).get("sum")
    return float(value) if value is not None else None


def fps(run: dict[str, Any] | None) -> float | None:
    if not run or "result" not in run:
        return None
    return float(run["result"]["frames_per_s"])


def delivered_pct(run: dict[str, Any] | None) -> float | None:
    """Frames received per frame sent, in %."""
    if not run or "result" not in run:
        return None
    res = run["result"]
    return 100.0 * res["received"] / res["sent"] if res["sent"] else None


def delta(value: float | None, base: float | None) -> float | None:
    return None if value is None or base is None else value - base


def delta_pct(value: float | None, base: float | None) -> float | None:
    return None if value is None or not base else 100.0 * (value - base) / base


def better(run: dict[str, Any], best: dict[str, Any] | None) -> bool:
    """Of two runs of one variant keep the one with the lower CPU per frame (a
    failed run never replaces a good one)."""
    if best is None:
        return True
    new, old = cpu_sum(run), cpu_sum(best)
    if new is None:
        return False
    return old is None or new < old


def summary(runs: dict[str, dict[str, dict[str, Any]]], baseline: str = BASELINE
            ) -> dict[str, dict[str, Any]]:
    """Per variant and size: the figures and their deltas to ``baseline``."""
    out: dict[str, dict[str, Any]] = {}
    for variant, by_size in runs.items():
        for size, run in by_size.items():
            base = runs.get(baseline, {}).get(size)
            c, f = cpu_sum(run), fps(run)
            out.setdefault(variant, {})[size] = {
                "cpu_us_per_frame": c, "frames_per_s": f, "delivered_pct": delivered_pct(run),
                "lost": run["result"]["lost"] if "result" in run else None,
                "cpu_delta_us": delta(c, cpu_sum(base)),
                "cpu_delta_pct": delta_pct(c, cpu_sum(base)),
                "fps_delta_pct": delta_pct(f, fps(base)),
            }
    return out


def _signed(value: float | None, digits: int = 1, unit: str = "") -> str:
    return "-" if value is None else f"{value:+.{digits}f}{unit}"


def _drops_text(run: dict[str, Any]) -> str:
    if "drops" not in run:
        return "not read"
    return ", ".join(f"{k} {v:,}" for k, v in run["drops"].items()) or "none"


def table(runs: dict[str, dict[str, dict[str, Any]]], baseline: str = BASELINE,
          what: str = "filter on the hub port") -> str:
    figs = summary(runs, baseline)
    rows = []
    for variant, by_size in runs.items():
        for size, run in by_size.items():
            s = figs[variant][size]
            if "result" not in run:
                rows.append([variant, size, "FAILED", "", "", "", run.get("error", ""), "", "",
                             "", ""])
                continue
            res = run["result"]
            rows.append([variant, size, num(s["frames_per_s"]),
                         _signed(s["fps_delta_pct"], 0, "%"),
                         f"{res['lost']:,} ({num(s['delivered_pct'], 2)}% delivered)",
                         num(s["cpu_us_per_frame"], 1), _signed(s["cpu_delta_us"]),
                         _signed(s["cpu_delta_pct"], 0, "%"), _cpu_text(run),
                         num(res["lat_p50_us"]), _drops_text(run)])
    return md_table([what, "size B", "frames/s", f"vs {baseline}", "lost",
                     "CPU µs/frame, all", f"Δ µs/frame vs {baseline}", "Δ %",
                     "CPU µs/frame by process", "p50 µs in the blast",
                     "dropped where (counters)"], rows)


#: ``make_peer(variant, spec, dump_dir)``: a fresh peer for one run of a variant.
PeerFactory = Callable[[str, str, str], Peer]


async def _measure(variant: str, spec: str, cfg: LoadConfig, plan: Plan,
                   dump_dir: str, make_peer: PeerFactory = make_filter_peer) -> dict[str, Any]:
    """One fresh peer, one load (a failed run tried once more, as hubbench's)."""
    errors: list[str] = []
    busy = 0.0
    for _ in range(ATTEMPTS):
        busy = await wait_for_idle(plan.idle_wait)
        drops: dict[str, int] = {}
        try:
            m = await run_measured(make_peer(variant, spec, dump_dir), cfg,
                                   after=functools.partial(read_drops, into=drops))
        except (LoadgenError, PeerError, OSError) as exc:
            errors.append(str(exc).strip() or type(exc).__name__)
            continue
        out = _run_dict(m, None, busy)
        out["drops"] = drops
        break
    else:
        out = _run_dict(None, errors[-1].splitlines()[0], busy)
    if errors:
        out["attempts"] = len(errors) + ("result" in out)
        out["errors"] = [e[-ERROR_CHARS:] for e in errors]
    return out


def drop_causes(kind: str, netclients: dict[str, Any], filters: dict[str, Any]
                ) -> dict[str, int]:
    """Where one service dropped frames, from `virtwire list --json` and `virtwire
    filter ls --json`: ``{"hub pb f0 loss": 918, "tap stream1 dropped_queue_full":
    3}`` (a NetClient's dropped_filter is its filters' own drops, listed by cause;
    totals are left out)."""
    out: dict[str, int] = {}
    for nc in netclients.get("netclients", []):
        for key, value in (nc.get("counters") or {}).items():
            if key.startswith("dropped_") and key not in ("dropped_total", "dropped_filter") \
                    and value:
                out[f"{kind} {nc['name']} {key}"] = int(value)
    for nf in filters.get("filters", []):
        for cause, value in ((nf.get("counters") or {}).get("dropped") or {}).items():
            if value:
                out[f"{kind} {nf['netclient']} {nf['id']} {cause}"] = int(value)
    return out


async def _cli_json(*args: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "virtwire.cli", *args, "--json",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return {}
    try:
        got = json.loads(out) if proc.returncode == 0 else {}
    except ValueError:
        return {}
    return got if isinstance(got, dict) else {}


async def read_drops(peer: Peer, into: dict[str, int]) -> None:
    """Every drop counter of the peer's services (after the load), into ``into``."""
    assert isinstance(peer, VirtwireHubPeer)
    for kind, address in peer.services:
        into.update(drop_causes(kind, await _cli_json("list", "--server", address),
                                await _cli_json("filter", "ls", "--server", address)))


def _dump_bytes(dump_dir: str) -> int:
    return sum(e.stat().st_size for e in os.scandir(dump_dir) if e.is_file())


async def matrix(plan: Plan, variants: Sequence[tuple[str, str]] = VARIANTS,
                 make_peer: PeerFactory = make_filter_peer
                 ) -> dict[str, dict[str, dict[str, Any]]]:
    """Every variant at every size, ``plan.repeat`` times in turns; the best run of each."""
    runs: dict[str, dict[str, dict[str, Any]]] = {v: {} for v, _ in variants}
    for _ in range(plan.repeat):
        for size in SIZES:
            cfg = LoadConfig(size=size, count=plan.count, timeout=30, idle=plan.rx_idle)
            for variant, spec in variants:
                dump_dir = tempfile.mkdtemp(prefix="vw-dump-")
                try:
                    run = await _measure(variant, spec, cfg, plan, dump_dir, make_peer)
                    if spec.startswith("dump:"):
                        run["dump_bytes"] = _dump_bytes(dump_dir)
                finally:
                    shutil.rmtree(dump_dir, ignore_errors=True)
                key = str(size)
                if better(run, runs[variant].get(key)):
                    runs[variant][key] = run
                if "result" in run:
                    res = run["result"]
                    extra = (f" pcap={run['dump_bytes']:,} B" if "dump_bytes" in run else "")
                    extra += f" drops: {_drops_text(run)}"
                    print(f"  {variant:13s} {size:5d} B  {res['frames_per_s']:>9,.0f} frames/s "
                          f"lost={res['lost']:<6d} cpu/frame={num(cpu_sum(run), 1)}us "
                          f"({_cpu_text(run)}){extra}", flush=True)
                else:
                    print(f"  {variant:13s} {size:5d} B  FAILED: {run['error']}", flush=True)
    return runs


def run(quick: bool = False) -> dict[str, Any]:
    """Every variant x size; prints progress lines and the table."""
    plan = QUICK if quick else FULL
    assert plan.count <= LIMIT
    runs = asyncio.run(matrix(plan))
    print(f"\n**Filters on the hub hop** (one filter on hub port {PORT_B}, queue=tx, towards "
          f"the receiver; CPU: utime + stime of hub and tap over the load, /proc, per frame "
          f"delivered, the lowest of {plan.repeat} run(s); {plan.count:,} frames a run; "
          f"netem seed {SEED}; Δ against `none` of this run)\n")
    print(table(runs))
    specs = {v: (filter_object(s) if s else "") for v, s in VARIANTS}
    return {"bench": "filters", "runs": runs, "summary": summary(runs), "objects": specs,
            "plan": asdict(plan)}
