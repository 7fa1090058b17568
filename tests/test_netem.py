"""netem (virtwire.net.netem): Linux netem's impairments as a NetFilter, driven
by a manual clock. Statistical checks use fixed seeds and stated intervals."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Mapping, Sequence
from statistics import NormalDist, fmean, pstdev

import pytest

from virtwire.errors import ConfigError
from virtwire.net.filter import FilterContext, FilterDirection
from virtwire.net.filter_types import FILTER_TYPES, FilterSpec, new_filter
from virtwire.net.net import NetClient
from virtwire.net.netem import DEFAULT_LIMIT, RELEASE_BATCH, Netem

from support.binomial import within_binomial_99


class Handle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A Scheduler whose time moves only when a test says so."""

    def __init__(self) -> None:
        self.t = 0.0
        self._seq = 0
        self._timers: list[tuple[float, int, Callable[[], None], Handle]] = []
        self.calls: list[float] = []

    def time(self) -> float:
        return self.t

    def call_later(self, delay: float, callback: Callable[[], None]) -> Handle:
        assert delay >= 0
        handle = Handle()
        self._seq += 1
        heapq.heappush(self._timers, (self.t + delay, self._seq, callback, handle))
        return handle

    @property
    def pending(self) -> int:
        return sum(not h.cancelled for *_, h in self._timers)

    def run_one(self) -> bool:
        """Run the next live timer (time jumps to it); False if there is none."""
        while self._timers:
            when, _, callback, handle = heapq.heappop(self._timers)
            if handle.cancelled:
                continue
            self.t = max(self.t, when)
            self.calls.append(self.t)
            callback()
            return True
        return False

    def run_until(self, t: float) -> None:
        while self._timers and self._timers[0][0] <= t:
            self.run_one()
        self.t = max(self.t, t)

    def run_all(self) -> None:
        while self.run_one():
            pass


class Sink(NetClient):
    def __init__(self, name: str, clock: ManualClock) -> None:
        super().__init__(name)
        self.clock = clock
        self.got: list[tuple[float, bytes]] = []

    def receive(self, data: bytes) -> int:
        self.got.append((self.clock.time(), data))
        return len(data)

    @property
    def frames(self) -> list[bytes]:
        return [d for _, d in self.got]


def frame(i: int, size: int = 60) -> bytes:
    return (i.to_bytes(4, "big") * (size // 4 + 1))[:size]


def index(data: bytes) -> int:
    return int.from_bytes(data[:4], "big")


class Rig:
    """a --netem (a's tx)--> b, on a manual clock."""

    def __init__(self, props: Mapping[str, str], *, direction: str = "tx",
                 on: str = "a") -> None:
        self.clock = ManualClock()
        self.a, self.b = Sink("a", self.clock), Sink("b", self.clock)
        self.a.peer, self.b.peer = self.b, self.a
        self.netem = Netem.create("n", props, FilterContext(scheduler=self.clock),
                                  direction=direction)
        (self.a if on == "a" else self.b).add_filter(self.netem)

    def send_at(self, times: Sequence[float], size: int = 60) -> None:
        for i, t in enumerate(times):
            self.clock.run_until(t)
            self.a.send_packet(frame(i, size))

    def delays(self, times: Sequence[float]) -> dict[int, float]:
        """Frame index -> time it took (first copy)."""
        out: dict[int, float] = {}
        for t, data in self.b.got:
            out.setdefault(index(data), t - times[index(data)])
        return out


def test_registered_and_built_from_a_filter_spec() -> None:
    assert Netem.kind == "netem"
    clock = ManualClock()
    nf = new_filter("netem", "n0", {"delay": "20ms", "seed": "7"},
                    FilterContext(scheduler=clock))
    assert isinstance(nf, Netem) and FILTER_TYPES["netem"] is Netem
    spec = FilterSpec.parse("filter-netem,id=n1,netdev=vm1,queue=rx,delay=5ms,loss=1%,seed=3")
    built = spec.build(FilterContext(scheduler=clock))
    assert isinstance(built, Netem) and built.direction is FilterDirection.RX
    assert built.properties() == {"delay": "5ms", "loss": "1%", "seed": "3"}


def test_an_idle_netem_passes_frames_on_at_once() -> None:
    rig = Rig({"seed": "1"})
    rig.send_at([0.0, 0.0, 0.5])
    assert rig.b.frames == [frame(0), frame(1), frame(2)]
    assert rig.clock.pending == 0
    assert rig.netem.stats.passed == 3 and rig.netem.stats.taken == 0


def test_delay_adds_exactly_the_delay() -> None:
    rig = Rig({"delay": "20ms", "seed": "1"})
    times = [0.0, 0.001, 0.0015, 0.5, 0.5]
    rig.send_at(times)
    rig.clock.run_all()
    assert rig.b.frames == [frame(i) for i in range(5)]
    assert [t for t, _ in rig.b.got] == [t + 0.02 for t in times]
    assert rig.netem.counters()["delayed"] == 5 and rig.netem.held == 0


def test_uniform_jitter_stays_in_bounds_and_keeps_order() -> None:
    # Spaced out: each delay is a sample, within delay +- jitter.
    rig = Rig({"delay": "100ms", "jitter": "10ms", "seed": "2"})
    times = [float(i) for i in range(2000)]
    rig.send_at(times)
    rig.clock.run_all()
    delays = list(rig.delays(times).values())
    assert len(delays) == 2000
    assert all(0.09 - 1e-9 <= d < 0.11 + 1e-9 for d in delays)
    assert min(delays) < 0.0905 and max(delays) > 0.1095  # it does spread
    # Dense: frames 1 ms apart with 20 ms of spread never overtake each other.
    rig = Rig({"delay": "100ms", "jitter": "10ms", "seed": "3"})
    times = [i * 0.001 for i in range(2000)]
    rig.send_at(times)
    rig.clock.run_all()
    assert rig.b.frames == [frame(i) for i in range(2000)]
    arrivals = [t for t, _ in rig.b.got]
    assert arrivals == sorted(arrivals)
    assert all(d >= 0.09 - 1e-9 for d in rig.delays(times).values())


def _quantile_moments(q: Callable[[float], float], n: int = 100_000) -> tuple[float, float]:
    """Mean and sd of a distribution given by its quantile function (midpoint rule)."""
    values = [q((i + 0.5) / n) for i in range(n)]
    return fmean(values), pstdev(values)


_N = NormalDist()


def _normal_q(u: float) -> float:
    return max(-4.0, min(4.0, _N.inv_cdf(u)))


def _pareto_q(u: float) -> float:
    # Pareto of shape 3, scale 1, shifted and scaled as Linux's table, cut at 4.
    return min(4.0, ((1.0 - u) ** (-1 / 3) - 1.5) * 4 / 3)


_QUANTILES: dict[str, Callable[[float], float]] = {
    "uniform": lambda u: 2 * u - 1,
    "normal": _normal_q,
    "pareto": _pareto_q,
    "paretonormal": lambda u: (_normal_q(u) + 3 * _pareto_q(u)) / 4,
}


@pytest.mark.parametrize("dist", ["uniform", "normal", "pareto", "paretonormal"])
def test_distribution_sample_statistics(dist: str) -> None:
    rig = Rig({"delay": "200ms", "jitter": "20ms", "distribution": dist, "seed": "11"})
    n = 20_000
    times = [float(i) for i in range(n)]
    rig.send_at(times)
    rig.clock.run_all()
    t = [(d - 0.2) / 0.02 for d in rig.delays(times).values()]
    assert len(t) == n
    mean, sd = _quantile_moments(_QUANTILES[dist])
    # Stated tolerances: the mean within 0.05 (about 8 standard errors), the sd
    # within 5%, the range inside the distribution's support.
    assert fmean(t) == pytest.approx(mean, abs=0.05)
    assert pstdev(t) == pytest.approx(sd, rel=0.05)
    lo, hi = _QUANTILES[dist](1e-15), _QUANTILES[dist](1 - 1e-15)
    assert lo - 1e-6 <= min(t) and max(t) <= hi + 1e-6


def test_delay_correlation_gives_runs_and_keeps_the_distribution() -> None:
    rig = Rig({"delay": "200ms", "jitter": "20ms", "distribution": "normal",
               "delay_corr": "50%", "seed": "5"})
    n = 20_000
    times = [float(i) for i in range(n)]
    rig.send_at(times)
    rig.clock.run_all()
    t = [(d - 0.2) / 0.02 for _, d in sorted(rig.delays(times).items())]
    m = fmean(t)
    lag1 = sum((x - m) * (y - m) for x, y in itertools.pairwise(t)) / (
        (n - 1) * pstdev(t) ** 2)
    assert lag1 == pytest.approx(0.5, abs=0.05)
    assert m == pytest.approx(0.0, abs=0.1) and pstdev(t) == pytest.approx(1.0, rel=0.05)


def test_loss_rate_is_inside_the_binomial_99_interval() -> None:
    n = 100_000
    rig = Rig({"loss": "1%", "seed": "21"})
    rig.send_at([0.0] * n)
    lost = n - len(rig.b.got)
    assert within_binomial_99(lost, n, 0.01), lost
    assert rig.netem.stats.dropped == {"loss": lost}
    assert rig.a.stats.dropped_filter == lost


@pytest.mark.parametrize(("loss", "expected"), [("0%", 0), ("100%", 500)])
def test_no_loss_and_all_loss(loss: str, expected: int) -> None:
    rig = Rig({"loss": loss, "seed": "1"})
    rig.send_at([0.0] * 500)
    assert 500 - len(rig.b.got) == expected


def _lost_pattern(rig: Rig, n: int) -> list[bool]:
    rig.send_at([0.0] * n)
    arrived = {index(d) for d in rig.b.frames}
    return [i not in arrived for i in range(n)]


def test_loss_correlation_keeps_the_rate_and_makes_bursts() -> None:
    n = 100_000
    lost = _lost_pattern(Rig({"loss": "5%", "loss_corr": "80%", "seed": "4"}), n)
    rate = sum(lost) / n
    assert rate == pytest.approx(0.05, rel=0.15)  # correlated draws: a wider stated band
    after_loss = [b for a, b in itertools.pairwise(lost) if a]
    assert sum(after_loss) / len(after_loss) > 0.2  # vs 0.05 without correlation


def test_gemodel_long_run_loss_matches_its_stationary_formula() -> None:
    p, r, h1, k1 = 0.01, 0.3, 0.5, 0.005
    rig = Rig({"loss_model": "gemodel", "ge_p": "1%", "ge_r": "30%", "ge_1h": "50%",
               "ge_1k": "0.5%", "seed": "8"})
    n = 300_000
    lost = _lost_pattern(rig, n)
    expected = (r * k1 + p * h1) / (p + r)
    assert sum(lost) / n == pytest.approx(expected, rel=0.1)
    assert rig.netem.stats.dropped == {"gemodel": sum(lost)}
    # Losses cluster: after a loss another is far likelier than on average.
    after_loss = [b for a, b in itertools.pairwise(lost) if a]
    assert sum(after_loss) / len(after_loss) > 5 * expected


def test_gemodel_with_p_alone_is_bernoulli() -> None:
    n = 100_000
    rig = Rig({"loss_model": "gemodel", "ge_p": "5%", "seed": "9"})
    assert rig.netem.properties()["ge_r"] == "95%"
    assert within_binomial_99(sum(_lost_pattern(rig, n)), n, 0.05)


def _state_loss(p13: float, p31: float, p32: float, p23: float, p14: float) -> float:
    """Stationary loss (states 3 and 4) of the 4-state chain, by power iteration."""
    m = [[1 - p13 - p14, 0, p13, p14], [0, 1 - p23, p23, 0], [p31, p32, 1 - p31 - p32, 0],
         [1, 0, 0, 0]]
    pi = [1.0, 0.0, 0.0, 0.0]
    for _ in range(20_000):
        pi = [sum(pi[i] * m[i][j] for i in range(4)) for j in range(4)]
    return pi[2] + pi[3]


def test_four_state_model() -> None:
    n = 200_000
    rig = Rig({"loss_model": "state", "state_p13": "2%", "state_p31": "40%",
               "state_p32": "20%", "state_p23": "30%", "state_p14": "1%", "seed": "10"})
    lost = _lost_pattern(rig, n)
    expected = _state_loss(0.02, 0.4, 0.2, 0.3, 0.01)
    assert sum(lost) / n == pytest.approx(expected, rel=0.1)
    assert set(rig.netem.stats.dropped) == {"state"}
    bernoulli = Rig({"loss_model": "state", "state_p13": "3%", "seed": "10"})
    assert within_binomial_99(sum(_lost_pattern(bernoulli, n)), n, 0.03)


def test_duplicate_rate_and_copies() -> None:
    n = 50_000
    rig = Rig({"duplicate": "5%", "seed": "12"})
    rig.send_at([0.0] * n)
    dups = rig.netem.stats.added
    assert within_binomial_99(dups, n, 0.05)
    assert len(rig.b.got) == n + dups and rig.netem.counters()["duplicated"] == dups
    # A copy goes out next to its original, unchanged.
    got = rig.b.frames
    assert sorted(set(got)) == sorted(frame(i) for i in range(n))
    assert sum(a == b for a, b in itertools.pairwise(got)) == dups


def test_corrupt_rate_flips_exactly_one_bit() -> None:
    n = 50_000
    rig = Rig({"corrupt": "2%", "seed": "13"})
    rig.send_at([0.0] * n)
    changed = 0
    for i, data in enumerate(rig.b.frames):
        diff = sum(bin(x ^ y).count("1") for x, y in zip(data, frame(i), strict=True))
        assert diff in (0, 1)
        changed += diff
    assert changed == rig.netem.counters()["corrupted"]
    assert within_binomial_99(changed, n, 0.02)


def test_duplicate_and_loss_together_conserve_frames() -> None:
    n = 20_000
    rig = Rig({"duplicate": "20%", "loss": "20%", "delay": "1ms", "seed": "14"})
    rig.send_at([i * 0.01 for i in range(n)])
    rig.clock.run_all()
    s = rig.netem.stats
    assert s.seen == n
    assert len(rig.b.got) == s.seen + s.added - s.dropped_total
    assert s.seen + s.added == s.passed + s.released + s.dropped_total + rig.netem.held


def test_reorder_every_gap_th_frame_at_100_percent() -> None:
    rig = Rig({"delay": "10ms", "reorder": "100%", "gap": "5", "seed": "15"})
    times = [i * 0.001 for i in range(20)]
    rig.send_at(times)
    rig.clock.run_all()
    delays = rig.delays(times)
    immediate = sorted(i for i, d in delays.items() if d == 0.0)
    # tc-netem(8): the first gap-1 frames are delayed, the next goes at once, and so on.
    assert immediate == [4, 9, 14, 19]
    assert all(delays[i] == pytest.approx(0.01) for i in range(20) if i not in immediate)
    assert rig.netem.counters()["reordered"] == 4
    order = [index(d) for d in rig.b.frames]
    assert order != sorted(order) and sorted(order) == list(range(20))


def test_reorder_with_a_gap_and_a_probability() -> None:
    n = 20_000
    rig = Rig({"delay": "10ms", "reorder": "25%", "gap": "4", "seed": "16"})
    times = [i * 0.001 for i in range(n)]
    rig.send_at(times)
    rig.clock.run_all()
    delays = rig.delays(times)
    reordered = [i for i in range(n) if delays[i] == 0.0]
    # At least gap-1 delayed frames between two reordered ones.
    assert all(b - a >= 4 for a, b in itertools.pairwise(reordered))
    # After those 3, each frame goes at once with probability 1/4: the wait is
    # 3 + a geometric count, mean 3 + 4 = 7 frames per reordered one.
    assert len(reordered) == pytest.approx(n / 7, rel=0.05)


def test_reorder_without_gap_is_a_plain_probability() -> None:
    n = 20_000
    rig = Rig({"delay": "10ms", "reorder": "10%", "seed": "17"})
    times = [i * 0.001 for i in range(n)]
    rig.send_at(times)
    rig.clock.run_all()
    assert within_binomial_99(rig.netem.counters()["reordered"], n, 0.1)


@pytest.mark.parametrize(("size", "overhead"), [(1000, 0), (60, 24), (1500, -14)])
def test_rate_frames_leave_at_the_token_bucket_times(size: int, overhead: int) -> None:
    rate = 10e6
    rig = Rig({"rate": "10mbit", "overhead": str(overhead), "seed": "18"})
    n = 50
    rig.send_at([0.0] * n, size=size)
    rig.clock.run_all()
    tx = (size + overhead) * 8 / rate
    assert [t for t, _ in rig.b.got] == pytest.approx([k * tx for k in range(1, n + 1)])
    assert [index(d) for d in rig.b.frames] == list(range(n))


def test_rate_on_an_idle_link_and_after_a_delay() -> None:
    # Spaced wider than a frame's time: each one just takes its own time.
    rig = Rig({"rate": "1mbit", "seed": "1"})
    times = [0.0, 0.1, 0.2]
    rig.send_at(times, size=1000)
    rig.clock.run_all()
    assert [t for t, _ in rig.b.got] == pytest.approx([t + 0.008 for t in times])
    # With a delay the link sends after it: max(arrival + delay, previous) + size/rate.
    rig = Rig({"rate": "1mbit", "delay": "50ms", "seed": "1"})
    rig.send_at([0.0, 0.0, 0.1], size=1000)
    rig.clock.run_all()
    assert [t for t, _ in rig.b.got] == pytest.approx([0.058, 0.066, 0.158])


def test_limit_drops_are_counted() -> None:
    rig = Rig({"rate": "1mbit", "limit": "10", "seed": "1"})
    rig.send_at([0.0] * 15, size=1000)
    assert rig.netem.held == 10
    assert rig.netem.stats.dropped == {"limit": 5} and rig.a.stats.dropped_filter == 5
    rig.clock.run_all()
    assert [index(d) for d in rig.b.frames] == list(range(10))
    assert rig.netem.counters()["held_peak"] == 10


def _run(props: Mapping[str, str], n: int = 3000) -> tuple[list[tuple[float, bytes]],
                                                             dict[str, int]]:
    rig = Rig(props)
    rig.send_at([i * 0.002 for i in range(n)])
    rig.clock.run_all()
    return rig.b.got, dict(rig.netem.stats.dropped)


_BUSY = {"delay": "10ms", "jitter": "5ms", "distribution": "pareto", "loss": "10%",
         "duplicate": "5%", "corrupt": "5%", "reorder": "10%", "rate": "50mbit"}


def test_the_same_seed_repeats_a_run_frame_for_frame() -> None:
    first = _run({**_BUSY, "seed": "42"})
    assert first == _run({**_BUSY, "seed": "42"})
    assert first != _run({**_BUSY, "seed": "43"})
    assert first[1]["loss"] > 0


def test_setting_the_same_seed_again_starts_the_draws_afresh() -> None:
    """docs/filters.md: setting seed on a running netem starts its draws afresh,
    also when it is the seed in use (`virtwire netem set --seed 42` twice)."""
    rig = Rig({"loss": "30%", "seed": "42"})

    def lost_in_next(n: int) -> list[int]:
        start = rig.netem.stats.seen
        before = {index(d) for d in rig.b.frames}
        for i in range(start, start + n):
            rig.a.send_packet(frame(i))
        arrived = {index(d) for d in rig.b.frames} - before
        return [i - start for i in range(start, start + n) if i not in arrived]

    first = lost_in_next(200)
    assert within_binomial_99(len(first), 200, 0.3), first
    rig.netem.configure({"seed": "42"})
    assert lost_in_next(200) == first
    rig.netem.configure({"loss": "30%"})  # no seed given: the draws go on
    assert lost_in_next(200) != first
    rig.netem.configure({"loss": "30%", "seed": "43"})
    assert lost_in_next(200) != first


def test_without_a_seed_one_is_chosen_and_listed() -> None:
    rig = Rig(_BUSY)
    seed = rig.netem.properties()["seed"]
    assert 0 <= int(seed) < 2**64
    assert Rig(_BUSY).netem.properties()["seed"] != seed
    rig.send_at([i * 0.002 for i in range(3000)])
    rig.clock.run_all()
    assert _run({**_BUSY, "seed": seed}) == (rig.b.got, dict(rig.netem.stats.dropped))


def test_status_off_releases_everything_at_once_in_order() -> None:
    rig = Rig({"delay": "1s", "seed": "1"})
    rig.send_at([0.0, 0.1, 0.2])
    assert rig.b.got == [] and rig.netem.held == 3
    rig.clock.run_until(0.5)
    rig.netem.configure({"status": "off"})
    assert rig.b.got == [(0.5, frame(0)), (0.5, frame(1)), (0.5, frame(2))]
    assert rig.clock.pending == 0
    rig.send_at([0.6])  # off: straight through
    assert len(rig.b.got) == 4
    rig.clock.run_all()
    assert len(rig.b.got) == 4  # nothing left to fire


def test_removal_releases_and_cancels_the_timers() -> None:
    rig = Rig({"delay": "1s", "rate": "1mbit", "seed": "1"}, direction="all")
    rig.send_at([0.0, 0.0])
    rig.b.send_packet(frame(99))  # the rx direction of a's netem
    assert rig.netem.held == 3
    removed = rig.a.remove_filter("n")
    assert removed is rig.netem and rig.a.filters == []
    assert rig.b.frames == [frame(0), frame(1)] and rig.a.frames == [frame(99)]
    assert rig.clock.pending == 0 and rig.netem.held == 0
    assert rig.netem.stats.released == 3 and rig.netem.stats.dropped_total == 0


def test_each_direction_has_its_own_queue_and_rate() -> None:
    rig = Rig({"rate": "1mbit", "seed": "1"}, direction="all")
    rig.a.send_packet(frame(1, 1000))
    rig.b.send_packet(frame(2, 1000))
    rig.clock.run_all()
    assert rig.b.got == [(pytest.approx(0.008), frame(1, 1000))]
    assert rig.a.got == [(pytest.approx(0.008), frame(2, 1000))]


def test_a_netem_on_the_receiver_delays_what_it_receives() -> None:
    rig = Rig({"delay": "5ms", "seed": "1"}, direction="rx", on="b")
    rig.send_at([0.0])
    rig.clock.run_all()
    assert rig.b.got == [(0.005, frame(0))]


def test_one_timer_callback_hands_on_a_bounded_batch() -> None:
    rig = Rig({"delay": "10ms", "seed": "1"})
    n = RELEASE_BATCH * 2 + 10
    rig.send_at([0.0] * n)
    assert rig.clock.run_one()
    assert len(rig.b.got) == RELEASE_BATCH
    assert rig.clock.run_one() and len(rig.b.got) == 2 * RELEASE_BATCH
    rig.clock.run_all()
    assert len(rig.b.got) == n and rig.clock.calls == [0.01] * 3


def test_updating_a_running_netem_keeps_what_it_holds() -> None:
    rig = Rig({"delay": "100ms", "seed": "1"})
    rig.send_at([0.0, 0.01])
    rig.netem.configure({"delay": "10ms", "loss": "0%"})
    rig.send_at([0.0, 0.01, 0.02])  # frames 0..2 again, later
    rig.clock.run_all()
    # The held ones leave at their times; a newer frame does not overtake them.
    assert [t for t, _ in rig.b.got] == pytest.approx([0.1, 0.11, 0.11, 0.11, 0.11])
    assert rig.netem.properties() == {"delay": "10ms", "seed": "1"}


_BAD: list[tuple[dict[str, str], str]] = [
    ({"delay": "61s"}, "more than 60s"),
    ({"delay": "20"}, "needs a unit"),
    ({"delay": "-1ms"}, "negative"),
    ({"jitter": "2min"}, "unit 'min'"),
    ({"loss": "101%"}, "more than 100%"),
    ({"loss_corr": "-5%"}, "negative"),
    ({"duplicate": "lots"}, "not a number"),
    ({"distribution": "cauchy"}, "not one of uniform"),
    ({"loss_model": "markov"}, "not one of random"),
    ({"loss_model": "gemodel"}, "needs ge_p"),
    ({"loss_model": "state"}, "needs state_p13"),
    ({"loss_model": "gemodel", "ge_p": "1%", "loss": "1%"}, "takes none of the random"),
    ({"ge_p": "1%", "state_p13": "1%"}, "at once"),
    ({"state_p13": "60%", "state_p14": "50%"}, "more than 100%"),
    ({"reorder": "5%", "delay": "0"}, "reorder needs a delay"),
    ({"rate": "101gbit"}, "more than 100gbit"),
    ({"rate": "10mb"}, "unit 'mb'"),
    ({"limit": "0"}, r"not in 1\.\.100000"),
    ({"limit": "100001"}, "not in"),
    ({"limit": "ten"}, "not a whole number"),
    ({"gap": "-1"}, "not in 0"),
    ({"overhead": "2000"}, "not in -1024..1024"),
    ({"seed": str(2**64)}, "not in 0"),
    ({"seed": "0x10"}, "not a whole number"),
    ({"bogus": "1"}, "unknown property bogus"),
    ({"delay": "5ms", "loss": "2%", "limit": "0"}, "limit"),
    ({"delay": "5ms", "status": "maybe"}, "status"),
]


@pytest.mark.parametrize(("props", "message"), _BAD)
def test_bad_properties_are_refused_and_change_nothing(props: dict[str, str],
                                                       message: str) -> None:
    rig = Rig({"delay": "50ms", "loss": "1%", "seed": "3"})
    rig.send_at([0.0])
    before, config = rig.netem.properties(), rig.netem.config
    with pytest.raises(ConfigError, match=message):
        rig.netem.configure(props)
    assert rig.netem.properties() == before and rig.netem.config is config
    assert rig.netem.status and rig.netem.held == 1
    with pytest.raises(ConfigError, match=message):
        Netem.create("x", props, FilterContext(scheduler=ManualClock()))


def test_errors_name_the_filter_and_property() -> None:
    with pytest.raises(ConfigError, match=r"^netem n delay '20' needs a unit"):
        Rig({"delay": "20"})


def test_giving_a_model_s_properties_selects_it() -> None:
    rig = Rig({"loss": "3%", "seed": "1"})
    rig.netem.configure({"ge_p": "2%", "ge_1h": "80%"})
    assert rig.netem.config.loss_model == "gemodel" and rig.netem.config.loss == 0.0
    assert rig.netem.properties() == {"loss_model": "gemodel", "ge_p": "2%", "ge_r": "98%",
                                      "ge_1h": "80%", "ge_1k": "0%", "seed": "1"}
    rig.netem.configure({"ge_r": "10%"})  # same model: the others stay
    assert rig.netem.config.gemodel() == pytest.approx((0.02, 0.1, 0.8, 0.0))
    rig.netem.configure({"loss": "1%"})  # back to random: gemodel's settings go
    assert rig.netem.config.ge_p is None
    assert rig.netem.properties() == {"loss": "1%", "seed": "1"}


def test_properties_round_trip() -> None:
    props = {"delay": "20ms", "jitter": "5ms", "delay_corr": "25%", "distribution": "normal",
             "loss_model": "state", "state_p13": "1%", "state_p31": "50%", "state_p32": "10%",
             "state_p23": "20%", "state_p14": "0.5%", "duplicate": "1%",
             "duplicate_corr": "2%", "corrupt": "0.1%", "corrupt_corr": "3%",
             "reorder": "5%", "reorder_corr": "4%", "gap": "3", "rate": "10mbit",
             "overhead": "-14", "limit": "500", "seed": str(2**64 - 1)}
    nf = Rig(props).netem
    assert nf.properties() == props
    assert Rig(nf.properties()).netem.config == nf.config


def test_counters_and_defaults() -> None:
    rig = Rig({"seed": "1"})
    assert rig.netem.config.limit == DEFAULT_LIMIT
    assert rig.netem.counters() == {"held": 0, "held_peak": 0, "delayed": 0, "reordered": 0,
                                    "duplicated": 0, "corrupted": 0}


def test_delay_needs_an_event_loop() -> None:
    nf = Netem("n")
    nf.configure({"loss": "1%"})  # no timing: no loop needed
    with pytest.raises(ConfigError, match="needs an event loop"):
        nf.configure({"delay": "1ms"})
    assert nf.config.delay == 0.0


def test_a_seed_s_losses_do_not_depend_on_the_delay() -> None:
    def lost(props: Mapping[str, str]) -> list[bool]:
        rig = Rig({"loss": "10%", "seed": "77", **props})
        rig.send_at([i * 0.001 for i in range(5000)])
        rig.clock.run_all()
        arrived = {index(d) for d in rig.b.frames}
        return [i not in arrived for i in range(5000)]

    plain = lost({})
    assert plain == lost({"delay": "30ms", "jitter": "10ms", "rate": "10mbit"})
    assert plain == lost({"reorder": "20%", "delay": "1ms"})
    assert 300 < sum(plain) < 700
