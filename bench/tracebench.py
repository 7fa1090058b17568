"""What per-frame tracing costs on the hub hop (issue 13): stream backend ->
hub -> stream backend through virtwire, as bench/filterbench.py, at 64 and
1514 B, with the sending tap service started with

- ``off`` and ``off-again``: no ``--trace-sample`` (the baseline, twice: the
  gap between the two is this run's noise, against which "unmeasurable" is
  judged);
- ``1-in-1000``: ``--trace-sample 1/1000``: one frame in 1000 traced at random,
  each leaving spans tap.read and link.send in the tap, hub.forward and
  link.send in the hub, and link.send's peer (the receiving tap) handing it on;
- ``1-in-100``: the same, ten times as often;
- ``every``: ``--trace-sample 1/1``, every frame traced: what one traced
  frame costs, per frame (not a mode to run a LAN in).

Each service keeps its spans in its ring only (no file, no collector), so the
figure is the cost of making the spans and carrying the contexts. For each:
frames/s, CPU µs per delivered frame of every process of the path (/proc), and
their deltas to ``off`` of the same run; variants take turns in every repeat.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from filterbench import Plan, matrix, summary, table
from peers import VirtwireHubPeer

BASELINE = "off"
#: Frames a run: at 64 B a blast of 1M takes about 3 s, so that the lowest of
#: three runs resolves a few percent of CPU per frame (filterbench's 100k, a
#: netem limit, would be a third of a second).
QUICK = Plan(200_000, 1, 3.0, 1.5)
FULL = Plan(1_000_000, 3, 15.0, 1.5)
#: (variant, the --trace-sample value for the sending tap; "" for none).
VARIANTS: tuple[tuple[str, str], ...] = (
    ("off", ""),
    ("1-in-1000", "1/1000"),
    ("1-in-100", "1/100"),
    ("every", "1/1"),
    ("off-again", ""),
)


def tap_args(sample: str) -> list[str]:
    """The extra `serve tap` arguments of a variant."""
    return ["--trace-sample", sample] if sample else []


def make_trace_peer(variant: str, sample: str, dump_dir: str) -> VirtwireHubPeer:
    del dump_dir  # no files: spans stay in each service's ring
    return VirtwireHubPeer(taps=1, serve_args={"tap": tap_args(sample)},
                           name=f"virtwire+trace-{variant}")


def noise_pct(figs: dict[str, dict[str, Any]], size: str) -> float | None:
    """CPU per frame of ``off-again`` against ``off``, in %: this run's noise."""
    value = figs.get("off-again", {}).get(size, {}).get("cpu_delta_pct")
    return float(value) if value is not None else None


def expected_pct(figs: dict[str, dict[str, Any]], size: str, every: int) -> float | None:
    """What tracing one frame in ``every`` should cost, in % of ``off``'s CPU
    per frame: the CPU one traced frame costs (``every`` - ``off``, a delta
    far above the noise), spread over ``every`` frames. Next to the measured
    1-in-1000 delta, which is of the size of the run's noise, it shows whether
    that delta is the spans or something else."""
    traced = figs.get("every", {}).get(size, {})
    base = figs.get(BASELINE, {}).get(size, {}).get("cpu_us_per_frame")
    per = traced.get("cpu_delta_us")
    if per is None or not base:
        return None
    return 100.0 * float(per) / every / float(base)


def run(quick: bool = False) -> dict[str, Any]:
    """Every variant x size; prints progress lines and the table."""
    plan = QUICK if quick else FULL
    runs = asyncio.run(matrix(plan, VARIANTS, make_trace_peer))
    figs = summary(runs, BASELINE)
    print(f"\n**Tracing on the hub hop** (`--trace-sample` on the sending tap service; CPU: "
          f"utime + stime of hub and tap over the load, /proc, per frame delivered, the lowest "
          f"of {plan.repeat} run(s); {plan.count:,} frames a run; Δ against `off` of this run; "
          f"`off-again` shows the run's noise)\n")
    print(table(runs, BASELINE, "trace sampling on the sending tap"))
    expected: dict[str, float] = {}
    for size in ("64", "1514"):
        noise = noise_pct(figs, size)
        rate = figs.get("1-in-1000", {}).get(size, {}).get("cpu_delta_pct")
        if noise is not None and rate is not None:
            print(f"\n{size} B: 1/1000 costs {rate:+.1f}% CPU per frame; off-again vs off "
                  f"{noise:+.1f}% (noise)")
        pct = expected_pct(figs, size, 1000)
        if pct is not None:
            expected[size] = pct
            per = figs["every"][size]["cpu_delta_us"]
            print(f"{size} B: one traced frame costs {per:.1f} µs of CPU (every - off), so "
                  f"tracing 1 in 1000 adds {per / 1000:.3f} µs a frame: {pct:+.1f}% of off")
    return {"bench": "trace", "runs": runs, "summary": figs, "expected_1_in_1000_pct": expected,
            "variants": dict(VARIANTS), "plan": asdict(plan)}
