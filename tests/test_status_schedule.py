"""`virtwire status` (table form) shows the topology's schedule (each step's
time, what it does, whether and when it ran, why it failed) and the LAN's
filters (the orchestrator's ListFilters, by node); `virtwire validate FILE`
lists the filters and schedule steps it parsed. A LAN without either prints
neither table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtwire.cli.format import format_schedule
from virtwire.v1 import orchestrator_pb2

VIRTWIRE = Path(sys.executable).parent / "virtwire"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

TOPOLOGY = """\
name: statsched
nodes:
  hub0:
    kind: hub
    ports:
      p1:
        filters:
          - {type: netem, id: shaper, queue: rx, delay: 1ms}
  t0:
    kind: tap
    backend: stream
    listen: 127.0.0.1:0
    filters:
      - {type: netem, id: n1, delay: 1ms}
links:
  - [t0, hub0:p1]
schedule:
  - {at: 0s, link: {node: t0, state: down}}
  - {at: 0.1s, filter: {target: t0, op: update, id: n1, loss: 10%}}
  - {at: 3600s, link: {node: t0, state: up}}
"""


def _cli(env: dict[str, str], *args: str, timeout: float = 90
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VIRTWIRE), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("status-schedule")
    env = {**os.environ, "VIRTWIRE_STATE_DIR": str(tmp / "state")}
    (tmp / "lan.yaml").write_text(TOPOLOGY)
    up = _cli(env, "up", str(tmp / "lan.yaml"), "--detach")
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield env
    finally:
        down = _cli(env, "down", "statsched", timeout=60)
        assert down.returncode == 0, down.stdout + down.stderr


def _until_ran(env: dict[str, str], steps: int) -> None:
    """Until the first ``steps`` steps ran (each at or after its time)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        out = _cli(env, "status", "statsched", "--json")
        schedule = json.loads(out.stdout)["schedule"]
        if all(step["ran"] for step in schedule[:steps]):
            return
        time.sleep(0.1)
    raise AssertionError(f"the first {steps} steps did not run within 60 s")


def test_status_shows_the_schedule_and_the_filters(lan: dict[str, str]) -> None:
    _until_ran(lan, 2)
    out = _cli(lan, "status", "statsched")
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "SCHEDULE (seconds after the LAN was healthy)\nSTEP  AT" in text, text
    lines = text.splitlines()
    rows = {line.split()[0]: line for line in lines[lines.index(next(
        line for line in lines if line.startswith("STEP "))) + 1:] if line.strip()}
    assert rows["0"].split()[1:5] == ["0s", "link", "t0", "down"], rows
    assert "yes, at " in rows["0"] and rows["0"].rstrip().endswith("-"), rows["0"]
    assert "filter update n1 on t0 loss=10%" in rows["1"] and "yes, at " in rows["1"]
    assert "3600s" in rows["2"] and "link t0 up" in rows["2"] and "not yet" in rows["2"]

    assert "\nFILTERS\nNETCLIENT " in text, text
    filters = text[text.index("\nFILTERS\n"):]
    assert any(line.split()[:4] == ["hub0:p1", "shaper", "netem", "rx"]
               for line in filters.splitlines()), filters
    assert any(line.split()[:3] == ["t0", "n1", "netem"] and "loss=10%" in line
               for line in filters.splitlines()), filters
    assert out.stderr == ""


def test_status_of_a_lan_without_a_schedule_or_filters_shows_neither(tmp_path: Path) -> None:
    env = {**os.environ, "VIRTWIRE_STATE_DIR": str(tmp_path / "state")}
    (tmp_path / "lan.yaml").write_text("name: plain\nnodes:\n  hub0: {kind: hub}\n")
    up = _cli(env, "up", str(tmp_path / "lan.yaml"), "--detach")
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        out = _cli(env, "status", "plain")
        assert out.returncode == 0, out.stderr
        assert "SCHEDULE" not in out.stdout and "FILTERS" not in out.stdout, out.stdout
        assert out.stderr == ""
    finally:
        assert _cli(env, "down", "plain", timeout=60).returncode == 0


def test_the_schedule_table_says_why_a_step_failed() -> None:
    resp = orchestrator_pb2.OrchestratorServiceGetStatusResponse()
    resp.schedule.add(index=0, at=2, what="link vm2 down", ran=True, ran_at=2.0031)
    resp.schedule.add(index=1, at=3.5, what="filter update n1 on vm1 loss=10%", ran=True,
                      ran_at=3.5, error="vm1: NOT_FOUND: no filter 'n1' on vm1")
    resp.schedule.add(index=2, at=600, what="link vm2 down")
    assert format_schedule(resp).splitlines() == [
        "STEP  AT    WHAT                              RAN             ERROR",
        "0     2s    link vm2 down                     yes, at 2.003s  -",
        "1     3.5s  filter update n1 on vm1 loss=10%  yes, at 3.500s  "
        "vm1: NOT_FOUND: no filter 'n1' on vm1",
        "2     600s  link vm2 down                     not yet         -",
    ]
    assert format_schedule(orchestrator_pb2.OrchestratorServiceGetStatusResponse()) == ""


def test_validate_lists_the_filters_and_the_schedule_it_parsed() -> None:
    out = _cli(dict(os.environ), "validate", str(EXAMPLES / "netem.yaml"))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "\n3 filters, put on at start:\nTARGET " in text, text
    rows = [line.split() for line in text.splitlines()]
    assert ["hub0:wan", "shaper", "netem", "rx", "on", "rate=10mbit,limit=500", "hub0"] in [
        r[:7] for r in rows]
    assert ["vm1", "netem", "netem", "tx", "on", "delay=20ms,jitter=5ms,loss=1%,seed=7",
            "vm1-e1000"] in [r[:7] for r in rows]
    # A hub's link end: the port the plan gives it.
    assert ["hub0:vm2-port", "netem", "netem", "tx", "on", "delay=2ms", "hub0"] in [
        r[:7] for r in rows]
    assert "\n5 schedule steps, in seconds after the LAN is healthy:\nSTEP  AT" in text
    assert ["0", "10s", "link", "vm2", "down"] in [r[:5] for r in rows]
    assert ["2", "20s", "netem", "vm2", "loss=30%"] in [r[:5] for r in rows]
    assert ["4", "45s", "netem_reset", "vm1"] in [r[:4] for r in rows]


def test_validate_of_a_topology_without_either_lists_neither(tmp_path: Path) -> None:
    (tmp_path / "lan.yaml").write_text("name: plain\nnodes:\n  hub0: {kind: hub}\n")
    out = _cli(dict(os.environ), "validate", str(tmp_path / "lan.yaml"))
    assert out.returncode == 0, out.stderr
    assert "filters, put on" not in out.stdout and "schedule steps" not in out.stdout
