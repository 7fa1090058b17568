"""bench/switchbench.py's peers and figures (short loads; the real run is `make bench`)."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))

import switchbench
from loadgen import LoadConfig
from peers import run_measured

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("name", ["virtwire-switch", "virtwire-switch-learned"])
def test_the_virtwire_switch_peers_carry_frames(name: str) -> None:
    peer = switchbench.PEERS[name]()
    drops: dict[str, int] = {}

    async def after(p: Any) -> None:
        await switchbench.read_drops(p, drops)

    m = asyncio.run(run_measured(peer, LoadConfig(size=64, count=2000, timeout=20, idle=1.0),
                                 after=after))
    assert [kind for kind, _ in peer.services] == ["switch", "tap"]
    assert {"switch", "tap"} <= set(m.cpu_s)
    assert m.result.received == m.result.sent == 2000
    assert not any("dropped_switch" in k for k in drops), drops


@pytest.mark.skipif(shutil.which("vde_switch") is None, reason="vde_switch (vde2) not installed")
def test_vde_switch_runs_without_hub() -> None:
    peer = switchbench.PEERS[switchbench.REFERENCE]()
    m = asyncio.run(run_measured(peer, LoadConfig(size=64, count=500, timeout=20, idle=1.0)))
    assert m.result.received > 0 and "vde_switch" in m.cpu_s
    assert peer.name == "vde-switch" and not peer.hub


def _run(fps: float, cpu: float, lost: int = 0) -> dict[str, Any]:
    return {"result": {"frames_per_s": fps, "received": 100 - lost, "sent": 100, "lost": lost},
            "cpu_us_per_frame": {"sum": cpu}}


def test_summary_sets_each_peer_against_vde_switch_of_the_same_run() -> None:
    runs = {"virtwire-switch": {"64": _run(200.0, 6.0)},
            switchbench.REFERENCE: {"64": _run(100.0, 4.0, lost=10)},
            "virtwire-hub": {"64": {"error": "boom"}}}
    s = switchbench.summary(runs)
    assert s["virtwire-switch"]["64"]["fps_vs_vde"] == 2.0
    assert s["virtwire-switch"]["64"]["cpu_vs_vde"] == 1.5
    assert s[switchbench.REFERENCE]["64"]["delivered_pct"] == 90.0
    assert s["virtwire-hub"]["64"]["frames_per_s"] is None
    text = switchbench.table(runs)
    assert "2.00x" in text and "FAILED" in text
