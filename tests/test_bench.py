"""The benchmark helpers (bench/): /proc readers, CPU and memory meters around
a load, the ping parser, the markdown and targets. Cheap: one short load over
the `loop` peer, and one over a peer whose "path" is a process of our own."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))

import hubbench
import lanbench
import procstat
import report
from loadgen import Endpoint, LoadConfig
from peers import (
    LoopPeer,
    PeerError,
    ProcPeer,
    VirtwireHubPeer,
    make_peer,
    run_measured,
    wait_paths,
)

pytestmark = pytest.mark.timeout(120)

# /proc/PID/stat of a process whose comm holds spaces and parentheses.
STAT = ("4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 "
        "250 50 7 3 20 0 3 0 1000 10000000 500 18446744073709551615 "
        "1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0")


def test_stat_cpu_counts_utime_and_stime_after_the_comm() -> None:
    assert procstat.parse_stat_cpu(STAT) == pytest.approx(300 * procstat.TICK_S)


def test_status_gives_rss_and_high_water_mark() -> None:
    text = "Name:\tpython\nVmPeak:\t 9000 kB\nVmHWM:\t  5120 kB\nVmRSS:\t  4096 kB\n"
    assert procstat.parse_status_kib(text) == {"VmHWM": 5120, "VmRSS": 4096}


def test_readers_on_this_process_and_a_gone_one() -> None:
    assert (procstat.cpu_seconds(os.getpid()) or 0) > 0
    mem = procstat.memory_kib(os.getpid())
    assert mem["VmHWM"] >= mem["VmRSS"] > 0
    assert procstat.cpu_seconds(2**22 + 1) is None  # above pid_max's limit
    assert procstat.memory_kib(2**22 + 1) == {}


def test_cpu_meter_per_frame() -> None:
    meter = procstat.CpuMeter([("me", os.getpid())])
    meter.start()
    end = procstat.cpu_seconds(os.getpid())
    assert end is not None
    while (procstat.cpu_seconds(os.getpid()) or 0) - end < 0.05:
        pass
    meter.stop()
    per = meter.per_frame_us(1000)
    assert per["me"] == per["sum"] >= 0.05 * 1e6 / 1000
    assert meter.gone == []
    assert procstat.unique_labels(["hub", "tap", "tap"]) == ["hub", "tap1", "tap2"]


async def test_loop_peer_has_no_process_to_count() -> None:
    m = await run_measured(LoopPeer(), LoadConfig(size=64, count=2000, timeout=20), rss=True)
    assert m.result.received == 2000
    assert m.cpu_us_per_frame == {} and m.memory == {}


class _RelayPeer(ProcPeer):
    """A path of one process of ours: a Python relay copying the bytes that come
    in at endpoint A out at endpoint B."""

    name = "relay"

    async def start(self) -> tuple[Endpoint, Endpoint]:
        tmp = self.mktemp()
        a, b = os.path.join(tmp, "a"), os.path.join(tmp, "b")
        code = ("import socket,sys\n"
                "s=[socket.socket(socket.AF_UNIX) for _ in range(2)]\n"
                "[x.bind(p) or x.listen(1) for x,p in zip(s,sys.argv[1:])]\n"
                "i,_=s[0].accept(); o,_=s[1].accept()\n"
                "while (d:=i.recv(65536)): o.sendall(d)\n"
                "import time; time.sleep(60)\n")  # alive until the peer stops it
        proc = await self.spawn(sys.executable, "-c", code, a, b, label="relay")
        await wait_paths([a, b], [proc], 20.0)
        return Endpoint("unix", a), Endpoint("unix", b)


async def test_a_process_of_the_path_is_measured_by_its_label() -> None:
    peer = _RelayPeer()
    async with peer:
        assert [label for label, _ in peer.path_procs()] == ["relay"]
    m = await asyncio.wait_for(run_measured(_RelayPeer(), LoadConfig(
        size=512, count=20000, timeout=30), rss=True), 60)
    assert m.result.received == 20000
    assert set(m.cpu_us_per_frame) == {"relay", "sum"}
    assert m.cpu_us_per_frame["sum"] >= 0
    assert m.memory["relay"]["peak_kib"] >= m.memory["relay"]["before_kib"] > 0
    assert m.memory["relay"]["hwm_kib"] > 0


def test_virtwire_grpc_peer_passes_the_transport_to_every_service() -> None:
    peer, plain = make_peer("virtwire-grpc"), make_peer("virtwire")
    assert isinstance(peer, VirtwireHubPeer) and isinstance(plain, VirtwireHubPeer)
    assert peer.name == "virtwire-grpc"
    assert peer.transport_args == ["--link-transport", "grpc"]
    assert plain.transport_args == []


def test_ping_output_is_parsed() -> None:
    text = ("PING 198.18.0.2 from vm1\nseq=1 time=1.500 ms\nseq=2 no reply\n"
            "seq=3 time=0.500 ms\n--- 198.18.0.2 ping statistics ---\n"
            "3 transmitted, 2 received, 33% packet loss, rtt min/avg/max = 0.5/1.0/1.5 ms\n")
    got = lanbench.parse_ping(text)
    assert got["address"] == "198.18.0.2"
    assert (got["transmitted"], got["received"]) == (3, 2)
    assert (got["p50_ms"], got["p99_ms"], got["min_ms"]) == (0.5, 1.5, 0.5)


def test_percentile_table_and_targets() -> None:
    assert report.percentile([], 50) is None
    assert report.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert report.percentile(list(range(1, 101)), 99) == 99
    assert report.md_table(["a", "b"], [["1", "2"]]) == "| a | b |\n|---|---|\n| 1 | 2 |"
    assert report.Target("cpu", 2.0, 3.0, "max").cell() == "2.00x pass"
    assert report.Target("fps", 0.4, 0.5, "min").cell() == "0.40x FAIL"
    assert report.Target("p50", None, 150, "max", "µs").cell() == "not measured"


def test_hub_targets_against_qemu() -> None:
    def tput(fps: float, cpu: float) -> dict[str, object]:
        return {"result": {"frames_per_s": fps}, "cpu_us_per_frame": {"sum": cpu}}

    def lat(p50: float) -> dict[str, object]:
        return {"1000": {"result": {"lat_p50_us": p50}}}

    results = {
        "throughput": {"qemu": {"64": tput(300e3, 3.0), "1514": tput(130e3, 4.0)},
                       "virtwire": {"64": tput(200e3, 6.0), "1514": tput(50e3, 16.0)}},
        "latency": {"qemu": {"64": lat(60), "1514": lat(70)},
                    "virtwire": {"64": lat(100), "1514": lat(200)}},
    }
    cells = [t.cell() for t in hubbench.targets(results, "virtwire")]
    assert cells == ["2.00x pass", "4.00x FAIL", "0.67x pass", "0.38x FAIL",
                     "100 µs pass", "200 µs FAIL"]
    assert "| CPU per frame at 64 B, vs QEMU's hub ≤ 3x | 2.00x pass |" in \
        hubbench.targets_table(results, ["virtwire"])


async def test_a_failed_run_is_tried_once_more_and_its_error_kept(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    good = await run_measured(LoopPeer(), LoadConfig(size=64, count=100, timeout=20))

    async def flaky(peer: object, cfg: LoadConfig, rss: bool = False) -> object:
        calls.append("run")
        if len(calls) == 1:
            raise PeerError("process exited with 1 during start-up\nhub0.log: boom")
        return good

    async def idle(max_wait: float) -> float:
        return 0.0

    monkeypatch.setattr(hubbench, "run_measured", flaky)
    monkeypatch.setattr(hubbench, "wait_for_idle", idle)
    run = await hubbench._measure("loop", LoadConfig(size=64, count=100), 0.0)
    assert run["result"]["received"] == 100 and run["attempts"] == 2
    assert run["errors"] == ["process exited with 1 during start-up\nhub0.log: boom"]
    assert "the first failed: process exited with 1" in hubbench._retried(run)

    async def broken(peer: object, cfg: LoadConfig, rss: bool = False) -> object:
        raise PeerError("no hub")

    monkeypatch.setattr(hubbench, "run_measured", broken)

    run = await hubbench._measure("loop", LoadConfig(size=64, count=100), 0.0)
    assert run["error"] == "no hub" and run["attempts"] == 2 and "result" not in run
