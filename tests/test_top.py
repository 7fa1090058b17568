"""`virtwire top [LAN]`: each NetClient's rates, refreshed.

The rates are a pure function of two counter samples (``cli.rates``), checked
in-process; ``--count 2`` on a running LAN shows the frames injected meanwhile
as a non-zero rate on the NetClient they went to; and under tmux the live
table refreshes until ``q`` (or Ctrl-C) ends it with exit 0 and the
terminal's mode as it was.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtwire.cli.format import LINK_SET_DOWN, LINK_UP
from virtwire.cli.rates import Counters, Rate, Sample, rate, rates, sample_of
from virtwire.cli.top import build_table, sorted_rows
from virtwire.errors import ConfigError
from virtwire.v1 import netclient_pb2, orchestrator_pb2

from support.doubles import frame

pytestmark = pytest.mark.timeout(180)

VIRTWIRE_SCRIPT = Path(sys.executable).parent / "virtwire"
DEFAULT = Path(__file__).parent.parent / "examples" / "default.yaml"
TMUX = shutil.which("tmux")


def cli(*args: str, env: dict[str, str] | None = None,
        ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([str(VIRTWIRE_SCRIPT), *args], capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode in ok, (args, out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    return out


# -- rates from two samples (pure) ----------------------------------------------------------
def test_rate_of_two_readings() -> None:
    before = Counters(rx_frames=100, rx_bytes=10_000, tx_frames=5, tx_bytes=500, dropped=1)
    after = Counters(rx_frames=300, rx_bytes=260_000, tx_frames=5, tx_bytes=500, dropped=5)
    r = rate(before, after, 2.0)
    assert r == Rate(rx_fps=100.0, rx_mbps=1.0, tx_fps=0.0, tx_mbps=0.0, drops_ps=2.0)
    assert r.fps == 100.0


def test_a_counter_that_went_back_counts_from_zero() -> None:
    """A restarted service counts from 0: what it shows is what moved since."""
    r = rate(Counters(rx_frames=1000, tx_bytes=9000), Counters(rx_frames=40, tx_bytes=134_000),
             0.5)
    assert r.rx_fps == 80.0  # went back: 40 since the restart
    assert r.tx_mbps == 2.0  # went on: 125 000 bytes in 0.5 s


def test_samples_at_the_same_time_are_refused() -> None:
    with pytest.raises(ConfigError):
        rate(Counters(), Counters(), 0.0)


def test_rates_of_every_netclient_busiest_first() -> None:
    before = Sample(at=10.0, counters={("hub0", "p1"): Counters(rx_frames=10),
                                       ("vm1", "vm1"): Counters(tx_frames=10),
                                       ("gone", "gone"): Counters(tx_frames=7)})
    after = Sample(at=14.0, counters={("hub0", "p1"): Counters(rx_frames=50),
                                      ("vm1", "vm1"): Counters(tx_frames=410, dropped=8),
                                      ("new", "new"): Counters(rx_frames=4)})
    got = rates(before, after)
    assert set(got) == {("hub0", "p1"), ("vm1", "vm1"), ("new", "new")}
    assert got[("hub0", "p1")].rx_fps == 10.0
    assert got[("vm1", "vm1")] == Rate(tx_fps=100.0, drops_ps=2.0)
    assert got[("new", "new")].rx_fps == 1.0  # new since: from 0
    assert [key for key, _ in sorted_rows(before, after)] == [
        ("vm1", "vm1"), ("hub0", "p1"), ("new", "new")]


def _status(counters: dict[str, int], admin_down: bool = False
            ) -> orchestrator_pb2.OrchestratorServiceGetStatusResponse:
    info = netclient_pb2.NetClientInfo(
        name="vm2", link_state=netclient_pb2.LINK_STATE_UP, admin_down=admin_down,
        counters=netclient_pb2.NetClientCounters(**counters))
    return orchestrator_pb2.OrchestratorServiceGetStatusResponse(name="t", nodes=[
        orchestrator_pb2.NodeStatus(name="vm2", kind="vm", netclients=[
            orchestrator_pb2.NodeNetClient(name="vm2", service="vm2-e1000", info=info)])])


def test_a_sample_is_status_jsons_counters_and_link_word() -> None:
    s = sample_of(_status({"rx_frames": 3, "rx_bytes": 180, "tx_frames": 1, "tx_bytes": 60,
                           "dropped_link_down": 2, "dropped_total": 2}, admin_down=True), 5.0)
    assert s.at == 5.0
    assert s.counters == {("vm2", "vm2"): Counters(3, 180, 1, 60, 2)}
    assert s.rows[("vm2", "vm2")].link == LINK_SET_DOWN
    assert s.rows[("vm2", "vm2")].service == "vm2-e1000"
    assert sample_of(_status({}), 0.0).rows[("vm2", "vm2")].link == LINK_UP


def test_the_table_shows_the_rates() -> None:
    from rich.console import Console

    before = sample_of(_status({"rx_frames": 0}), 1.0)
    after = sample_of(_status({"rx_frames": 250, "rx_bytes": 250_000, "dropped_total": 5}),
                      3.5)
    console = Console(width=160, record=True)
    console.print(build_table("t", before, after))
    text = console.export_text()
    row = next(line for line in text.splitlines() if "vm2" in line)
    cells = [c.strip() for c in row.split("│") if c.strip()]
    assert cells == ["vm2", "vm2", "up", "100.0", "0.800", "0", "0", "2.0"], cells
    assert "rates over 2.5 s" in text


# -- a running LAN --------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """examples/default.yaml, up (as tests/test_link_states.py's); its CLI's environment."""
    tmp = tmp_path_factory.mktemp("lan")
    env = {**os.environ, "VIRTWIRE_STATE_DIR": str(tmp / "state")}
    file = tmp / "lan.yaml"
    file.write_text(DEFAULT.read_text().replace("127.0.0.1:10555",
                                                f"127.0.0.1:{_free_port()}"))
    cli("up", str(file), "--detach", env=env)
    try:
        yield env
    finally:
        cli("down", "default", env=env, ok=(0, 1))


def _tables(text: str) -> list[dict[tuple[str, str], list[str]]]:
    """Each table `top --count` printed: its rows' cells by (NODE, NETCLIENT)."""
    tables: list[dict[tuple[str, str], list[str]]] = []
    for line in text.splitlines():
        if line.startswith("LAN "):
            assert re.match(r"LAN default at \d\d:\d\d:\d\d: rates over", line), line
            tables.append({})
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 8 and tables:
            tables[-1][(cells[0], cells[1])] = cells
    return tables


def test_count_2_shows_the_injected_netclients_rate(lan: dict[str, str]) -> None:
    top = subprocess.Popen([str(VIRTWIRE_SCRIPT), "top", "--count", "2", "--interval", "1.5"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=lan)
    try:
        # Frames keep arriving on hub0port1 (as if from vm1) while top samples.
        deadline = time.monotonic() + 20
        while top.poll() is None and time.monotonic() < deadline:
            cli("inject", "hub0:hub0port1", "--hex", frame(0, 60).hex(), "--repeat", "200",
                env=lan)
            time.sleep(0.05)
        out, err = top.communicate(timeout=30)
    finally:
        if top.poll() is None:
            top.kill()
            top.wait()
    assert top.returncode == 0, (out, err)
    tables = _tables(out)
    assert len(tables) == 2, out
    moving = []
    for table in tables:
        assert set(table) == {("hub0", "qemu0"), ("hub0", "hub0port1"), ("hub0", "hub0port2"),
                              ("vm1", "vm1"), ("vm2", "vm2"), ("qemu0", "qemu0")}, out
        # NODE NETCLIENT LINK RX-FR/S RX-MBIT/S TX-FR/S TX-MBIT/S DROPS/S
        port = table[("hub0", "hub0port1")]
        assert port[2] == LINK_UP
        assert float(table[("vm1", "vm1")][5]) == 0, out  # vm1 itself sent none
        if float(port[3]) > 0:
            moving.append(table)
            assert float(port[4]) > 0, out
            # The hub forwards them out of its other ports.
            assert float(table[("hub0", "qemu0")][5]) > 0, out
    # An inject call (a process start) lands every second or so: in most intervals.
    assert moving, out
    # The busiest (frames/s both ways) first.
    for table in tables:
        fps = [float(cells[3]) + float(cells[5]) for cells in table.values()]
        assert fps == sorted(fps, reverse=True), out


def test_once_prints_one_table(lan: dict[str, str]) -> None:
    out = cli("top", "default", "--once", "--interval", "0.2", env=lan).stdout
    assert len(_tables(out)) == 1
    assert "q or Ctrl-C" not in out  # only the live view says how to quit
    got = cli("top", "--interval", "0.01", "--once", env=lan, ok=(2,))
    assert "--interval must be at least" in got.stderr


def _tmux(sock: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """tmux on its own socket; its server (and so the pane) gets this environment without
    COLUMNS and LINES (the test run may have them, e.g. 80x24): the pane's size is its own."""
    assert TMUX is not None
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run([TMUX, "-S", str(sock), *args], capture_output=True, text=True,
                          timeout=20, env=env)


@pytest.mark.skipif(TMUX is None, reason="tmux is not installed")
@pytest.mark.parametrize("key", ["q", "C-c"])
def test_live_top_under_tmux_refreshes_and_ends_on_a_key(lan: dict[str, str], tmp_path: Path,
                                                          key: str) -> None:
    """In a 160x40 terminal: the table, refreshed, until q (or Ctrl-C): exit 0 and the
    terminal's mode (stty) as it was before."""
    sock, done = tmp_path / "tmux.sock", tmp_path / "done"
    script = tmp_path / "run.sh"
    top = shlex.join([str(VIRTWIRE_SCRIPT), "top", "--interval", "0.3"])
    # The shell traps SIGINT (so it lives on to write the exit code); top, its child,
    # gets Ctrl-C with SIGINT's default disposition, as from an interactive shell.
    script.write_text(f"trap true INT\nstty -g > {tmp_path}/before\n{top}\nrc=$?\n"
                      f"stty -g > {tmp_path}/after\necho $rc > {done}.tmp\n"
                      f"mv {done}.tmp {done}\n")
    env_args = [arg for k in ("VIRTWIRE_STATE_DIR", "PATH") for arg in ("-e", f"{k}={lan[k]}")]
    _tmux(sock, "new-session", "-d", "-x", "160", "-y", "40", "-s", "top", *env_args,
          f"sh {script}")
    try:
        # A few refreshes: the title's clock (HH:MM:SS) shows three different times.
        want = ("q or Ctrl-C quits", "NETCLIENT", "DROPS/S", "hub0port1", "hub0port2",
                "vm1", "vm2", "qemu0")
        deadline, screen = time.monotonic() + 30, ""
        clocks: set[str] = set()
        while time.monotonic() < deadline and len(clocks) < 3:
            screen = _tmux(sock, "capture-pane", "-p", "-t", "top").stdout
            title = re.search(r"^LAN default at (\d\d:\d\d:\d\d): rates over", screen, re.M)
            if title and all(w in screen for w in want):
                clocks.add(title.group(1))
            time.sleep(0.2)
        assert len(clocks) >= 3, (clocks, screen)
        assert not done.exists()  # still refreshing
        _tmux(sock, "send-keys", "-t", "top", key)
        deadline = time.monotonic() + 15
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert done.exists(), _tmux(sock, "capture-pane", "-p", "-t", "top").stdout
        assert done.read_text().strip() == "0"
        assert (tmp_path / "after").read_text() == (tmp_path / "before").read_text()
    finally:
        _tmux(sock, "kill-server")
