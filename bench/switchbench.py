"""The learning switch's hop (issue 12 item 4) against vde_switch without
``--hub``, in the same run: stream backend -> switch -> stream backend
through virtwire (`serve switch` with two named ports and one `serve tap` with
both stream backends, bench/peers.py) and vde_switch as a switch with the
load generator attached natively (libvdeplug's protocol), at 64 and 1514 B.

Peers:

- ``virtwire-switch``: the load's destination MAC is never heard from (the
  receiver only receives), so every frame is unknown unicast, flooded to the
  one other port of VLAN 1; the sender's MAC is refreshed in the table on
  every frame;
- ``virtwire-switch-learned``: as above, but before the load one frame from
  the destination MAC is injected into the receiver's port, so every frame
  takes the learned-unicast path (a table lookup, one port);
- ``vde-switch``: ``vde_switch`` (no ``--hub``); it floods unknown unicast as
  well;
- ``virtwire-hub``: virtwire's hub in the same place, the switch's baseline.

For each: frames/s, CPU µs per delivered frame of every process of the path
(utime + stime from /proc over the load), loss and, for virtwire, where
frames were dropped (the services' counters, read before they stop). Peers
take turns in every repeat so a drift of the machine spreads over all.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from filterbench import _drops_text, cpu_sum, delivered_pct, fps, read_drops
from hubbench import ATTEMPTS, ERROR_CHARS, SIZES, _cpu_text, _run_dict
from loadgen import DST_MAC, SRC_MAC, LoadConfig, LoadgenError
from peers import Peer, PeerError, VdeHubPeer, VirtwireHubPeer, run_measured, wait_for_idle
from report import md_table, num

PORT_A, PORT_B = "pa", "pb"
REFERENCE = "vde-switch"
#: Seconds the priming inject may take.
CLI_TIMEOUT = 20.0


class PrimedSwitchPeer(VirtwireHubPeer):
    """`serve switch` whose table knows the load's destination MAC on port b."""

    async def start(self) -> Any:
        eps = await super().start()
        kind, address = self.services[0]
        assert kind == "switch"
        prime = (DST_MAC + SRC_MAC[:5] + b"\xfe" + b"\x88\xb5").ljust(60, b"\0")
        proc = await asyncio.create_subprocess_exec(
            *self.cli_cmd(), "inject", "--server", address, PORT_B, "--hex", prime.hex(),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        try:
            _, err = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise PeerError("priming inject timed out") from None
        if proc.returncode != 0:
            raise PeerError(f"priming inject failed: {err.decode(errors='replace')}")
        return eps

    @staticmethod
    def cli_cmd() -> list[str]:
        import sys

        return [sys.executable, "-m", "virtwire.cli"]


def _switch(name: str) -> VirtwireHubPeer:
    return VirtwireHubPeer(taps=1, hub_ports=(PORT_A, PORT_B), hub_kind="switch", name=name)


#: name -> a fresh peer.
PEERS: dict[str, Callable[[], Peer]] = {
    "virtwire-switch": functools.partial(_switch, "virtwire-switch"),
    "virtwire-switch-learned": lambda: PrimedSwitchPeer(
        taps=1, hub_ports=(PORT_A, PORT_B), hub_kind="switch", name="virtwire-switch-learned"),
    REFERENCE: lambda: VdeHubPeer("native", hub=False),
    "virtwire-hub": lambda: VirtwireHubPeer(taps=1, hub_ports=(PORT_A, PORT_B),
                                            name="virtwire-hub"),
}


@dataclass(frozen=True)
class Plan:
    count: int
    repeat: int
    idle_wait: float


QUICK = Plan(50_000, 1, 3.0)
FULL = Plan(200_000, 3, 15.0)


async def _measure(name: str, cfg: LoadConfig, plan: Plan) -> dict[str, Any]:
    errors: list[str] = []
    busy = 0.0
    for _ in range(ATTEMPTS):
        busy = await wait_for_idle(plan.idle_wait)
        drops: dict[str, int] = {}
        peer = PEERS[name]()
        after = (functools.partial(read_drops, into=drops)
                 if isinstance(peer, VirtwireHubPeer) else None)
        try:
            m = await run_measured(peer, cfg, after=after)
        except (LoadgenError, PeerError, OSError) as exc:
            errors.append(str(exc).strip() or type(exc).__name__)
            continue
        out = _run_dict(m, None, busy)
        if after is not None:
            out["drops"] = drops
        break
    else:
        out = _run_dict(None, errors[-1].splitlines()[0], busy)
    if errors:
        out["attempts"] = len(errors) + ("result" in out)
        out["errors"] = [e[-ERROR_CHARS:] for e in errors]
    return out


def _better(run: dict[str, Any], best: dict[str, Any] | None) -> bool:
    """Keep the run with the lower CPU per frame (a failed one never wins)."""
    if best is None:
        return True
    new, old = cpu_sum(run), cpu_sum(best)
    return new is not None and (old is None or new < old)


async def matrix(plan: Plan, names: Sequence[str] = tuple(PEERS)
                 ) -> dict[str, dict[str, dict[str, Any]]]:
    runs: dict[str, dict[str, dict[str, Any]]] = {n: {} for n in names}
    for _ in range(plan.repeat):
        for size in SIZES:
            cfg = LoadConfig(size=size, count=plan.count, timeout=30)
            for name in names:
                run = await _measure(name, cfg, plan)
                if _better(run, runs[name].get(str(size))):
                    runs[name][str(size)] = run
                if "result" in run:
                    res = run["result"]
                    print(f"  {name:24s} {size:5d} B  {res['frames_per_s']:>9,.0f} frames/s "
                          f"lost={res['lost']:<6d} cpu/frame={num(cpu_sum(run), 1)}us "
                          f"({_cpu_text(run)})", flush=True)
                else:
                    print(f"  {name:24s} {size:5d} B  FAILED: {run['error']}", flush=True)
    return runs


def summary(runs: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, by_size in runs.items():
        for size, run in by_size.items():
            ref = runs.get(REFERENCE, {}).get(size)
            f, c = fps(run), cpu_sum(run)
            rf, rc = fps(ref), cpu_sum(ref)
            out.setdefault(name, {})[size] = {
                "frames_per_s": f, "cpu_us_per_frame": c, "delivered_pct": delivered_pct(run),
                "lost": run["result"]["lost"] if "result" in run else None,
                "fps_vs_vde": f / rf if f is not None and rf else None,
                "cpu_vs_vde": c / rc if c is not None and rc else None,
            }
    return out


def table(runs: dict[str, dict[str, dict[str, Any]]]) -> str:
    figs = summary(runs)
    rows = []
    for name, by_size in runs.items():
        for size, run in by_size.items():
            s = figs[name][size]
            if "result" not in run:
                rows.append([name, size, "FAILED", "", "", "", "", "", run.get("error", "")])
                continue
            res = run["result"]
            rows.append([
                name, size, num(s["frames_per_s"]),
                "-" if s["fps_vs_vde"] is None else f"{s['fps_vs_vde']:.2f}x",
                f"{res['lost']:,} ({num(s['delivered_pct'], 2)}% delivered)",
                num(s["cpu_us_per_frame"], 1),
                "-" if s["cpu_vs_vde"] is None else f"{s['cpu_vs_vde']:.2f}x",
                _cpu_text(run), _drops_text(run) if "drops" in run else "-"])
    return md_table(["peer", "size B", "frames/s", "frames/s vs vde_switch", "lost",
                     "CPU µs/frame, all", "CPU vs vde_switch", "CPU µs/frame by process",
                     "dropped where (counters)"], rows)


def run(quick: bool = False) -> dict[str, Any]:
    plan = QUICK if quick else FULL
    runs = asyncio.run(matrix(plan))
    print(f"\n**Switch hop** (stream -> switch -> stream, unix sockets; CPU: utime + stime of "
          f"every process of the path over the load, per frame delivered, the lowest of "
          f"{plan.repeat} run(s); {plan.count:,} frames a run)\n")
    print(table(runs))
    return {"bench": "switch", "runs": runs, "summary": summary(runs), "plan": asdict(plan)}


if __name__ == "__main__":
    import argparse
    import json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    figures = run(quick=args.quick)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
