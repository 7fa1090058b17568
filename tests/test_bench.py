"""The benchmark helpers (bench/): /proc readers, CPU and memory meters around
a load, the ping parser, the markdown and targets. Cheap: one short load over
the `loop` peer, and one over a peer whose "path" is a process of our own."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))

import filterbench
import hubbench
import iperf_bench
import lanbench
import procstat
import report
import run as bench_run
import tracebench
from loadgen import LoadConfig
from peers import (
    LoopPeer,
    PeerError,
    VirtwireHubPeer,
    make_peer,
    run_measured,
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


def _refused(clock: int) -> float:
    raise PermissionError(1, "not permitted")


def test_cpu_time_of_another_process_is_finer_than_a_tick(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The process clock counts a child's every thread, as utime + stime do,
    but in ns; it still reads an exited child until it is reaped, and where it
    cannot be read /proc/PID/stat is."""
    code = ("import threading, time\n"
            "def spin():\n"
            "    t = time.process_time()\n"
            "    while time.process_time() - t < 0.1: pass\n"
            "w = threading.Thread(target=spin); w.start(); w.join(); spin()\n"
            "print('done', flush=True); input()\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "done\n"
        used = procstat.cpu_seconds(child.pid)
        ticks = procstat.stat_cpu_seconds(child.pid)
        assert used is not None and ticks is not None
        assert used >= 0.2  # the exited thread's time is in it
        assert abs(used - ticks) <= 2 * procstat.TICK_S
        assert used * 1e3 != pytest.approx(round(used * 1e3))  # not whole ms: ns precision
    finally:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.close()
        child.stdout.close()
        deadline = time.monotonic() + 10
        while not os.path.exists(f"/proc/{child.pid}") or \
                open(f"/proc/{child.pid}/stat").read().rpartition(")")[2].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        zombie = procstat.cpu_seconds(child.pid)
        assert zombie is not None and used is not None and zombie >= used
        with monkeypatch.context() as m:
            m.setattr(time, "clock_gettime", _refused)
            assert procstat.cpu_seconds(child.pid) == procstat.stat_cpu_seconds(child.pid)
        child.wait()
    assert procstat.cpu_seconds(child.pid) is None


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


async def test_a_process_of_the_path_is_measured_by_its_label() -> None:
    """bench/pyrelay.py (the pyrelay peer, one Python process copying A to B)."""
    peer = make_peer("pyrelay")
    async with peer:
        assert [label for label, _ in peer.path_procs()] == ["pyrelay"]
    m = await asyncio.wait_for(run_measured(make_peer("pyrelay"), LoadConfig(
        size=512, count=20000, timeout=30), rss=True), 60)
    assert m.result.received == 20000 and m.result.lost == 0
    assert set(m.cpu_us_per_frame) == {"pyrelay", "sum"}
    assert m.cpu_us_per_frame["sum"] >= 0
    assert m.memory["pyrelay"]["peak_kib"] >= m.memory["pyrelay"]["before_kib"] > 0
    assert m.memory["pyrelay"]["hwm_kib"] > 0
    paced = await asyncio.wait_for(run_measured(make_peer("pyrelay"), LoadConfig(
        size=64, count=50, rate=500.0, timeout=20)), 60)
    assert paced.result.received == 50 and paced.result.lat_p50_us is not None


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


def _counters(frames: dict[str, int], drops: dict[str, int]) -> iperf_bench.Counters:
    return iperf_bench.Counters(frames=frames, drops=drops)


def test_counters_are_diffed_per_key_and_a_counter_that_went_back_is_refused() -> None:
    before = iperf_bench.Counters({"nicA.GPTC": 10}, {"hub/p0.dropped_total": 1},
                                  {"hub/p0.dropped_queue_full": 1})
    after = iperf_bench.Counters({"nicA.GPTC": 25, "nicB.GPRC": 7},
                                 {"hub/p0.dropped_total": 4},
                                 {"hub/p0.dropped_queue_full": 4})
    delta = iperf_bench.diff_counters(before, after)
    assert delta.frames == {"nicA.GPTC": 15, "nicB.GPRC": 7}  # new counter: from 0
    assert delta.drops == {"hub/p0.dropped_total": 3}
    assert delta.causes == {"hub/p0.dropped_queue_full": 3}
    with pytest.raises(ValueError, match=r"nicA\.GPTC went back"):
        iperf_bench.diff_counters(after, before)


def test_every_frame_is_carried_dropped_or_shown_as_unaccounted() -> None:
    assert iperf_bench.where("nicA/e1000.dropped_total") == "nicA"
    assert iperf_bench.where("tapB.tx_dropped") == "tapB"
    delta = _counters(
        {"nicA.GPTC": 1000, "nicB.GPTC": 100, "nicA.GPRC": 98, "nicB.GPRC": 990},
        {"nicB.rx_no_buffers": 5, "hub/hub0port1.dropped_total": 3, "guestB.dropped": 2,
         "tapA.tx_dropped": 0})
    got = iperf_bench.account(delta, ["nicA", "nicB"], ["nicA", "nicB", "hub"])
    assert (got["sent"], got["carried"], got["dropped"]) == (1100, 1088, 10)
    # guestB's drop is after the ring: it does not explain frames sent but not carried
    assert got["dropped_between_nics"] == 8 and got["unaccounted"] == 4
    assert got["dropped_pct"] == pytest.approx(100 * 10 / 1098)
    assert got["drops_by_counter"] == {"guestB.dropped": 2, "hub/hub0port1.dropped_total": 3,
                                       "nicB.rx_no_buffers": 5}
    empty = iperf_bench.account(_counters({}, {}), ["nicA", "nicB"], [])
    assert empty["dropped_pct"] is None and empty["unaccounted"] == 0


def test_cpu_per_frame_and_per_mb() -> None:
    got = iperf_bench.cpu_figures({"hub": 0.5, "nicA": 1.5}, 100_000, 50_000_000)
    assert got["cpu_s_sum"] == 2.0
    assert got["cpu_us_per_frame"] == 20.0 and got["cpu_ms_per_mb"] == 40.0
    none = iperf_bench.cpu_figures({"hub": 0.5}, 0, 0)
    assert none["cpu_us_per_frame"] is None and none["cpu_ms_per_mb"] is None


def test_iperf3_json_gives_rate_bytes_and_retransmits() -> None:
    result: dict[str, Any] = {"start": {"connected": [{"socket": 5}]},
                              "end": {"sum_received": {"bits_per_second": 4.5e8,
                                                       "bytes": 168_000_000, "seconds": 3.01},
                                      "sum_sent": {"retransmits": 7}}}
    got = iperf_bench.iperf_figures(result)
    assert got == {"mbit_s": 450.0, "received_bytes": 168_000_000, "seconds": 3.01,
                   "retransmits": 7, "streams": 1}
    del result["end"]["sum_sent"]
    assert iperf_bench.iperf_figures(result)["retransmits"] is None


def _guests(ab: float, ba: float, pct_ab: float | None, pct_ba: float | None
            ) -> dict[str, object]:
    return {"a_to_b": {"mbit_s": ab, "frames": {"dropped_pct": pct_ab},
                       "cpu": {"cpu_ms_per_mb": 30.0}},
            "b_to_a": {"mbit_s": ba, "frames": {"dropped_pct": pct_ba},
                       "cpu": {"cpu_ms_per_mb": 32.0}}}


def test_guest_targets_against_qemu_direct_of_the_same_run() -> None:
    vm = {"accel": "tcg", "direct_mbit_s": 500.0,
          "paths": {"direct": {"a_to_b": {"mbit_s": 400.0, "cpu_ms_per_mb": 10.0},
                               "b_to_a": {"mbit_s": 600.0, "cpu_ms_per_mb": 12.0}}}}
    guests = _guests(240.0, 160.0, 0.02, 0.25)
    cells = [t.cell() for t in iperf_bench.targets(guests, vm)]
    assert cells == ["0.400x pass", "200 Mbit/s pass", "0.250 % FAIL"]
    cmp = iperf_bench.comparison(guests, vm)
    assert cmp["a_to_b_ratio"] == pytest.approx(0.6)
    assert cmp["b_to_a_ratio"] == pytest.approx(160 / 600)
    assert cmp["mean_ratio"] == pytest.approx(0.4)
    assert cmp["cpu_ms_per_mb"]["b_to_a"] == {"virtwire_guests": 32.0, "qemu_direct": 12.0}
    table = iperf_bench.comparison_table(guests, vm)
    assert "| A → B | 240.0 | 400.0 | 0.600 | 30.00 | 10.00 |" in table
    assert ("| frames dropped, steady single stream (worse direction) ≤ 0.1 % | 0.250 % FAIL |"
            in iperf_bench.targets_table(iperf_bench.targets(guests, vm)))


def test_guest_targets_without_a_reference_or_a_direction() -> None:
    slow = iperf_bench.targets(_guests(100.0, 120.0, 0.0, 0.05), None)
    assert [t.cell() for t in slow] == ["not measured", "110 Mbit/s FAIL", "0.050 % pass"]
    half = {"a_to_b": _guests(300.0, 0.0, 0.0, None)["a_to_b"]}
    assert [t.measured for t in iperf_bench.targets(half, None)] == [None, None, None]


def test_percent_target_keeps_the_digits_of_a_small_fraction() -> None:
    t = report.PercentTarget("dropped", 0.0123, 0.1, "max")
    assert (t.cell(), t.goal()) == ("0.012 % pass", "dropped ≤ 0.1 %")
    assert t.as_dict()["passed"] is True and t.as_dict()["unit"] == "%"
    assert report.PercentTarget("dropped", None, 0.1, "max").cell() == "not measured"


def test_run_sets_guests_against_direct_only_when_vm_measured_it(
        capsys: pytest.CaptureFixture[str]) -> None:
    guests = _guests(240.0, 160.0, 0.0, 0.0)
    got = bench_run.guests_vs_direct(guests, {"bench": "vm", "skipped": "no vm_bench"})
    assert "mean_ratio" not in got
    assert [t["passed"] for t in got["targets"]] == [None, True, True]
    got = bench_run.guests_vs_direct(guests, {"direct_mbit_s": 800.0, "paths": {}})
    assert got["mean_ratio"] == pytest.approx(0.25)
    assert [t["passed"] for t in got["targets"]] == [False, True, True]
    assert "0.25x FAIL" in capsys.readouterr().out


# -- bench/tracebench.py ----------------------------------------------------------------
def test_tracebench_variants_are_flags_serve_takes() -> None:
    from virtwire.cli import build_parser
    from virtwire.tracing import parse_sample

    seen = set()
    for variant, sample in tracebench.VARIANTS:
        assert "/" not in variant  # names a temporary directory
        args = build_parser().parse_args(["serve", "tap", *tracebench.tap_args(sample)])
        every = parse_sample(args.trace_sample or "off")
        seen.add(every)
        assert (every == 0) == (sample == "")
    assert seen == {0, 1, 100, 1000}
    assert tracebench.BASELINE in dict(tracebench.VARIANTS)


def test_tracebench_expects_one_traced_frames_cost_spread_over_n() -> None:
    figs = {"off": {"64": {"cpu_us_per_frame": 4.0, "cpu_delta_us": 0.0}},
            "every": {"64": {"cpu_us_per_frame": 84.0, "cpu_delta_us": 80.0}}}
    assert tracebench.expected_pct(figs, "64", 1000) == pytest.approx(2.0)
    assert tracebench.expected_pct(figs, "1514", 1000) is None  # no run at that size
    figs["every"]["64"]["cpu_delta_us"] = None  # the traced run failed
    assert tracebench.expected_pct(figs, "64", 1000) is None


# -- bench/filterbench.py ----------------------------------------------------------------
def test_filterbench_objects_are_filters_the_services_take(tmp_path: Path) -> None:
    from virtwire.net.filter import FilterContext, FilterDirection
    from virtwire.net.filter_types import FilterSpec
    from virtwire.net.netem import Netem

    async def build(spec: FilterSpec) -> Any:
        ctx = FilterContext(scheduler=asyncio.get_running_loop(), dump_dir=tmp_path)
        return spec.build(ctx)

    built = {}
    for variant, text in filterbench.VARIANTS:
        args = filterbench.hub_args(text, str(tmp_path))
        if not text:
            assert args == []
            continue
        assert args[0] == "--object"
        assert ("--dump-dir" in args) == (variant == "dump")
        spec = FilterSpec.parse(args[1])
        assert (spec.netdev, spec.direction) == (filterbench.PORT_B, FilterDirection.TX)
        nf = asyncio.run(build(spec))
        built[variant] = nf
        nf.cleanup()
    idle, active = built["netem-idle"], built["netem-active"]
    assert isinstance(idle, Netem) and isinstance(active, Netem)
    assert not idle.config.timed and idle.config.loss == 0.0
    assert (active.config.delay, active.config.loss) == (0.001, 0.01)
    assert active.config.seed == filterbench.SEED
    assert active.config.limit >= filterbench.QUICK.count
    assert built["netem-rate"].config.rate == 10e9
    assert filterbench.filter_object("dump:file=x.pcap", "d1", "p") == (
        "filter-dump,id=d1,netdev=p,queue=tx,file=x.pcap")
    with pytest.raises(ValueError):
        filterbench.filter_object(":x=1")


def _fb_run(received: int, sent: int, cpu: float, fps: float) -> dict[str, Any]:
    return {"result": {"sent": sent, "received": received, "lost": sent - received,
                       "frames_per_s": fps, "lat_p50_us": 10.0},
            "cpu_us_per_frame": {"hub": cpu / 2, "tap": cpu / 2, "sum": cpu}}


def test_filterbench_deltas_against_no_filter_and_loss() -> None:
    runs = {"none": {"64": _fb_run(1000, 1000, 2.0, 600_000.0)},
            "netem-active": {"64": _fb_run(990, 1000, 5.0, 150_000.0)},
            "dump": {"64": {"error": "boom"}}}
    got = filterbench.summary(runs)
    active = got["netem-active"]["64"]
    assert active["cpu_delta_us"] == pytest.approx(3.0)
    assert active["cpu_delta_pct"] == pytest.approx(150.0)
    assert active["fps_delta_pct"] == pytest.approx(-75.0)
    assert (active["delivered_pct"], active["lost"]) == (pytest.approx(99.0), 10)
    assert got["none"]["64"]["cpu_delta_us"] == 0.0
    assert got["dump"]["64"]["cpu_delta_us"] is None and got["dump"]["64"]["lost"] is None
    text = filterbench.table(runs)
    assert "| netem-active | 64 | 150,000 | -75% | 10 (99.00% delivered) | 5.0 | +3.0 |" in text
    assert "| dump | 64 | FAILED |" in text
    # no baseline: no deltas rather than a wrong one
    alone = filterbench.summary({"dump": {"64": _fb_run(10, 10, 4.0, 1.0)}})
    assert alone["dump"]["64"]["cpu_delta_us"] is None


def test_filterbench_keeps_the_lowest_cpu_run_and_never_a_failed_one() -> None:
    good, worse = _fb_run(10, 10, 2.0, 1.0), _fb_run(10, 10, 3.0, 1.0)
    assert filterbench.better(good, None) and filterbench.better({"error": "x"}, None)
    assert filterbench.better(good, worse) and not filterbench.better(worse, good)
    assert not filterbench.better({"error": "x"}, good)
    assert filterbench.better(good, {"error": "x"})


def test_virtwire_peer_with_named_hub_ports_and_a_filter_carries_frames(
        tmp_path: Path) -> None:
    spec = dict(filterbench.VARIANTS)["netem-active"]
    peer = filterbench.make_filter_peer("netem-active", spec, str(tmp_path))
    assert peer.name == "virtwire+netem-active"
    assert peer.hub_ports == (filterbench.PORT_A, filterbench.PORT_B)
    drops: dict[str, int] = {}

    async def after(p: Any) -> None:
        await filterbench.read_drops(p, drops)

    m = asyncio.run(run_measured(peer, LoadConfig(size=64, count=2000, timeout=20, idle=1.0),
                                 after=after))
    assert {"hub", "tap"} <= set(m.cpu_s)
    assert [kind for kind, _ in peer.services] == ["hub", "tap"]
    # What the receiver missed is accounted for: the netem's own loss (1%, seeded),
    # read from the hub, plus, on a loaded box, frames sent while the receiving
    # tap's stream had no client: dropped on the hub's side of the link
    # (docs/links.md, Discarding), or at the tap for those in flight as the
    # client came or went (dropped_link_down, either place).
    assert "hub pb f0 loss" in drops and 0 < drops["hub pb f0 loss"] < 100
    assert set(drops) <= {"hub pb f0 loss", "hub pb dropped_link_down",
                          "tap stream1 dropped_link_down"}, drops
    assert 0 < m.result.lost <= sum(drops.values())


def test_filterbench_drop_causes_come_from_the_counters_not_their_totals() -> None:
    netclients = {"netclients": [
        {"name": "pb", "counters": {"tx_frames": 10, "dropped_queue_full": 3,
                                    "dropped_link_down": 0, "dropped_filter": 9,
                                    "dropped_total": 12}},
        {"name": "pa", "counters": {"rx_frames": 10}}]}
    filters = {"filters": [{"netclient": "pb", "id": "f0",
                            "counters": {"dropped": {"loss": 9, "limit": 0},
                                         "dropped_total": 9}}]}
    assert filterbench.drop_causes("hub", netclients, filters) == {
        "hub pb dropped_queue_full": 3, "hub pb f0 loss": 9}
    assert filterbench.drop_causes("tap", {}, {}) == {}
    run = _fb_run(10, 10, 2.0, 1.0)
    assert filterbench._drops_text(run) == "not read"
    run["drops"] = {}
    assert filterbench._drops_text(run) == "none"


def test_tracebench_judges_1_in_1000_by_the_median_of_paired_deltas() -> None:
    off = [10.0, 8.0, 12.0, 10.0, 9.0]
    on = [10.5, 7.6, 12.6, 11.0, 9.0]  # +5%, -5%, +5%, +10%, 0%
    got = tracebench.paired_deltas(off, on)
    assert got["deltas_pct"] == pytest.approx([5.0, -5.0, 5.0, 10.0, 0.0])
    assert got["median_pct"] == pytest.approx(5.0)
    assert got["q1_pct"] <= got["median_pct"] <= got["q3_pct"]
    assert tracebench.paired_deltas([4.0], [4.2])["median_pct"] == pytest.approx(5.0)
    assert tracebench.paired_deltas([], [])["median_pct"] is None
    with pytest.raises(ValueError):
        tracebench.paired_deltas([1.0, 2.0], [1.0])  # an unpaired run is a bug


async def test_tracebench_toggles_sampling_in_one_hub_and_tap() -> None:
    """Two quick pairs through real services: every load delivered, both
    figures read, and the sampling really switched (the tap's spans grow only
    while on)."""
    plan = tracebench.Toggled(pairs=2, count=20_000, rate=20_000.0)
    got = await tracebench._toggled_size(64, plan, "1/100")
    assert len(got["off_us"]) == len(got["on_us"]) == 2
    assert all(v > 0 for v in got["off_us"] + got["on_us"])
    assert got["median_pct"] is not None
    assert got["spans_on"] > 0 and got["spans_off"] == 0
