"""The filter chain's batch path (``NetClient.send_packets`` through filters,
``filter_send_batch``): the same frames, in the same order, with the same
counters and the same walks through the filters (delivery comes after the
walk, so only that interleaving differs) as the same frames sent one by one,
for mixes of filters: ones that keep the per-frame default, netem (idle and
impairing, with frames it hands on during the walk), dump, and a filter that
takes some frames of a batch."""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_filter import Log as IdLog

from virtwire.net.filter import FilterContext, FilterDirection, NetFilter
from virtwire.net.filter_dump import FilterDump
from virtwire.net.filter_types import new_filter
from virtwire.net.hub import Hub
from virtwire.net.net import NetClient
from virtwire.net.queue import NET_PACKET_FLAG_NONE, SentCb


class Handle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Clock:
    """A manual Scheduler."""

    def __init__(self) -> None:
        self.t = 0.0
        self._seq = 0
        self._timers: list[tuple[float, int, Callable[[], None], Handle]] = []

    def time(self) -> float:
        return self.t

    def call_later(self, delay: float, callback: Callable[[], None]) -> Handle:
        handle = Handle()
        self._seq += 1
        heapq.heappush(self._timers, (self.t + delay, self._seq, callback, handle))
        return handle

    def run_all(self) -> None:
        while self._timers:
            when, _, callback, handle = heapq.heappop(self._timers)
            if not handle.cancelled:
                self.t = max(self.t, when)
                callback()


class Sink(NetClient):
    def __init__(self, name: str, log: list[str], accept: int = 10**9) -> None:
        super().__init__(name)
        self.got: list[bytes] = []
        self.log = log
        #: Frames it takes before it refuses (then the sender's queue holds them).
        self.accept = accept

    def receive(self, data: bytes) -> int:
        if len(self.got) >= self.accept:
            return 0
        self.got.append(data)
        return len(data)

    def can_receive(self) -> bool:
        return len(self.got) < self.accept

    def receive_room(self) -> int:
        # What it surely takes: a hub port in front of it forwards whole runs.
        return max(0, self.accept - len(self.got))


class Log(IdLog):
    """Keeps the per-frame default: logs each frame it sees (id, direction,
    the frame's first two bytes) in a shared log."""

    def filter_receive(self, direction: FilterDirection, sender: NetClient, flags: int,
                       data: bytes) -> int:
        self.log.append(f"{self.id}:{direction.value}:{data[:2].hex()}")
        return 0


class TakeSome(NetFilter):
    """Takes every ``every``-th frame it sees; every other taken one it hands on
    at once (pass_to_next inside filter_receive), the rest on ``release``."""

    kind = "takesome"

    def __init__(self, fid: str, every: int = 3, **kw: Any) -> None:
        super().__init__(fid, **kw)
        self.every = every
        self.n = 0
        self.held: list[tuple[NetClient, bytes]] = []

    def filter_receive(self, direction: FilterDirection, sender: NetClient, flags: int,
                       data: bytes) -> int:
        self.n += 1
        if self.n % self.every:
            return 0
        if self.n % (2 * self.every) == 0:
            self.stats.released += 1
            self.pass_to_next(sender, flags, b"H" + data[1:])
        else:
            self.held.append((sender, data))
        return len(data)

    def release(self) -> None:
        held, self.held = self.held, []
        for sender, data in held:
            self.stats.released += 1
            self.pass_to_next(sender, NET_PACKET_FLAG_NONE, data)


class BatchTakeSome(TakeSome):
    """TakeSome with a receive_iov_batch of its own (the default's loop)."""

    kind = "batchtakesome"

    def receive_iov_batch(self, direction: FilterDirection, sender: NetClient, flags: int,
                          batch: Any) -> Any:
        return super().receive_iov_batch(direction, sender, flags, batch)


#: A filter mix: (where: "a" sender side or "b" receiver side, builder).
Builder = Callable[[list[str], FilterContext], NetFilter]


def netem(fid: str, direction: str, **props: str) -> Builder:
    def build(log: list[str], ctx: FilterContext) -> NetFilter:
        return new_filter("netem", fid, {"seed": "7", **props}, ctx, direction=direction)
    return build


def dump(fid: str, direction: str) -> Builder:
    def build(log: list[str], ctx: FilterContext) -> NetFilter:
        return new_filter("dump", fid, {"file": f"{fid}.pcap"}, ctx, direction=direction)
    return build


def log_filter(fid: str, direction: str) -> Builder:
    return lambda log, ctx: Log(fid, log, direction=direction)


def take_some(fid: str, direction: str, batch: bool = False, every: int = 3) -> Builder:
    cls = BatchTakeSome if batch else TakeSome
    return lambda log, ctx: cls(fid, every=every, direction=direction)


MIXES: dict[str, list[tuple[str, Builder]]] = {
    "logs-both-sides": [("a", log_filter("t1", "tx")), ("a", log_filter("t2", "all")),
                        ("b", log_filter("r1", "rx")), ("b", log_filter("r2", "all"))],
    "idle-netem-and-dump": [("a", netem("n0", "tx")), ("b", dump("d0", "rx")),
                            ("b", log_filter("r1", "rx"))],
    "take-some-between-logs": [("a", log_filter("t1", "tx")), ("a", take_some("k", "tx")),
                               ("a", log_filter("t2", "tx")), ("b", log_filter("r1", "rx"))],
    "batch-filter-takes-some": [("a", take_some("k", "tx", batch=True)),
                                ("a", log_filter("t1", "tx")), ("b", dump("d0", "rx")),
                                ("b", take_some("k2", "all", batch=True, every=4))],
    "netem-impairs": [("a", netem("n1", "tx", loss="20%", duplicate="20%", corrupt="20%")),
                      ("a", log_filter("t1", "tx")),
                      ("b", netem("n2", "rx", loss="10%", duplicate="10%")),
                      ("b", dump("d0", "all"))],
    "netem-delays": [("a", netem("n1", "tx", delay="1ms", jitter="1ms", loss="5%",
                                 duplicate="10%")),
                     ("a", take_some("k", "tx")), ("b", log_filter("r1", "rx")),
                     ("b", netem("n2", "rx", rate="10mbit", corrupt="10%"))],
    "netem-reorders": [("a", netem("n1", "tx", delay="2ms", reorder="30%", corrupt="30%")),
                       ("b", netem("n2", "all")), ("b", take_some("k", "rx", every=5))],
}


@dataclasses.dataclass
class Rig:
    a: NetClient
    b: Sink
    log: list[str]
    clock: Clock
    filters: list[NetFilter]
    cbs: list[tuple[int, int]]
    dump_dir: Path

    def sent_cb(self) -> SentCb:
        def cb(sender: NetClient, ret: int) -> None:
            self.cbs.append((len(self.b.got), ret))
        return cb

    def outcome(self) -> dict[str, Any]:
        """Everything a user or the peers could see."""
        out: dict[str, Any] = {
            "got": list(self.b.got), "log": list(self.log), "cbs": list(self.cbs),
            "a": dataclasses.asdict(self.a.stats), "b": dataclasses.asdict(self.b.stats),
            "queued": [(p.data, p.sent_cb is not None) for p in self.b.incoming_queue.packets],
            "queue_dropped": self.b.incoming_queue.dropped,
        }
        for nf in self.filters:
            st = nf.stats
            out[nf.id] = (st.seen, st.passed, st.taken, st.released, st.added,
                          dict(st.dropped), nf.counters() if nf.kind != "dump" else None)
            if isinstance(nf, FilterDump):
                nf.flush()
                pcap = (self.dump_dir / f"{nf.id}.pcap").read_bytes()
                out[nf.id + ".records"] = _records(pcap)
        return out


def _records(pcap: bytes) -> list[bytes]:
    """The frames of a pcap, without their timestamps."""
    off, frames = 24, []
    while off < len(pcap):
        incl = int.from_bytes(pcap[off + 8:off + 12], "little")
        frames.append(pcap[off + 16:off + 16 + incl])
        off += 16 + incl
    return frames


def rig(mix: list[tuple[str, Builder]], dump_dir: Path, accept: int = 10**9,
        hub: bool = False) -> Rig:
    log: list[str] = []
    clock = Clock()
    dump_dir.mkdir()
    ctx = FilterContext(scheduler=clock, dump_dir=dump_dir)
    b = Sink("b", log, accept)
    if hub:
        # src -> hub port p1 -> hub -> port "a" (the filters' sender) -> b.
        h = Hub(0, "h")
        p1, port_a = h.add_port("p1"), h.add_port("a")
        src = Sink("src", log)
        src.peer, p1.peer = p1, src
        sender: NetClient = port_a
    else:
        sender = Sink("a", log)
    sender.peer, b.peer = b, sender
    filters = []
    for side, build in mix:
        nf = build(log, ctx)
        (sender if side == "a" else b).add_filter(nf)
        filters.append(nf)
    r = Rig(sender, b, log, clock, filters, [], dump_dir)
    if hub:
        r.src = src  # type: ignore[attr-defined]
    return r


def frames_of(n: int, size: int = 60) -> list[bytes]:
    return [bytes([i % 256, i // 256]) + bytes([0x55]) * (size - 2) for i in range(n)]


def run_both(tmp_path: Path, mix: list[tuple[str, Builder]], batches: list[list[bytes]],
             mode: str, accept: int = 10**9) -> tuple[dict[str, Any], dict[str, Any],
                                                      list[int], list[int]]:
    """Send ``batches`` once with send_packets and once frame by frame; the
    outcomes and the return values (per batch: for one by one, the frames
    whose send returned nonzero)."""
    outcomes, rets = [], []
    for how in ("batch", "single"):
        r = rig(mix, tmp_path / how, accept)
        got_rets = []
        for frames in batches:
            cb = None if mode == "nocb" else r.sent_cb()
            if how == "batch":
                got_rets.append(r.a.send_packets(frames, cb, queue_rest=mode == "queue_rest"))
            else:
                got_rets.append(sum(r.a.send_packet_async(f, cb) != 0 for f in frames))
        r.clock.run_all()
        for nf in r.filters:
            nf.release()
        r.clock.run_all()
        outcomes.append(r.outcome())
        rets.append(got_rets)
    return outcomes[0], outcomes[1], rets[0], rets[1]


@pytest.mark.parametrize("mode", ["nocb", "queue_rest"])
@pytest.mark.parametrize("name", sorted(MIXES))
def test_a_batch_gives_what_single_sends_give(tmp_path: Path, name: str, mode: str) -> None:
    batches = [frames_of(40), frames_of(1), frames_of(17)]
    batch, single, batch_rets, single_rets = run_both(tmp_path, MIXES[name], batches, mode)
    assert batch == single
    assert batch_rets == single_rets
    assert batch["got"], "nothing arrived: the mix tests nothing"


@pytest.mark.parametrize("mode", ["nocb", "queue_rest"])
@pytest.mark.parametrize("name", ["take-some-between-logs", "netem-impairs",
                                  "batch-filter-takes-some"])
def test_a_receiver_that_stops_taking_queues_the_same_frames(tmp_path: Path, name: str,
                                                             mode: str) -> None:
    # b takes 10 frames, then refuses: the rest wait in its incoming_queue,
    # those the sender sent with its sent_cb, those handed on without.
    batch, single, batch_rets, single_rets = run_both(
        tmp_path, MIXES[name], [frames_of(30)], mode, accept=10)
    assert batch == single and batch_rets == single_rets
    assert batch["queued"], "nothing was queued: the case tests nothing"


def test_a_filter_that_takes_some_frames_of_a_batch(tmp_path: Path) -> None:
    r = rig([("a", take_some("k", "tx", batch=True)), ("a", log_filter("t", "tx"))],
            tmp_path / "d")
    frames = frames_of(6)
    # Frames 2 and 5 are taken (counted as delivered); 5 is handed on at once, in
    # its place, 2 when released.
    assert r.a.send_packets(frames) == 6
    k = r.filters[0]
    assert (k.stats.seen, k.stats.passed, k.stats.taken) == (6, 4, 2)
    assert r.b.got == [frames[0], frames[1], frames[3], frames[4], b"H" + frames[5][1:]]
    assert r.log == ["t:tx:0000", "t:tx:0100", "t:tx:0300", "t:tx:0400", "t:tx:4800"]
    k.release()
    assert r.b.got[-1] == frames[2] and r.filters[1].stats.seen == 6


def test_runs_of_per_frame_filters_keep_the_per_frame_order(tmp_path: Path) -> None:
    # Per-frame filters on either side of a link: each frame walks all of them
    # before the next one, as single sends (delivery comes after the walk).
    r = rig(MIXES["logs-both-sides"], tmp_path / "d")
    r.a.send_packets(frames_of(2))
    assert r.log == ["t1:tx:0000", "t2:tx:0000", "r2:rx:0000", "r1:rx:0000",
                     "t1:tx:0100", "t2:tx:0100", "r2:rx:0100", "r1:rx:0100"]
    assert r.b.got == frames_of(2)


def test_an_idle_netem_passes_the_batch_through_untouched(tmp_path: Path) -> None:
    r = rig([("a", netem("n0", "tx"))], tmp_path / "d")
    frames = frames_of(8)
    seen: list[int] = []
    n0 = r.filters[0]
    original = n0.filter_receive

    def spy(*args: Any) -> int:
        seen.append(1)
        return original(*args)

    n0.filter_receive = spy  # type: ignore[method-assign,assignment]
    assert r.a.send_packets(frames) == 8
    assert r.b.got == frames and not seen
    assert (n0.stats.seen, n0.stats.passed, n0.stats.taken) == (8, 8, 0)


def test_hub_ports_send_batches_through_their_filters(tmp_path: Path) -> None:
    mix = [("a", netem("n1", "tx", loss="10%", duplicate="10%")), ("a", dump("d0", "tx")),
           ("b", log_filter("r1", "rx"))]
    results = []
    for how in ("batch", "single"):
        r = rig(mix, tmp_path / how, hub=True)
        src: Sink = r.src  # type: ignore[attr-defined]
        frames = frames_of(50)
        if how == "batch":
            src.send_packets(frames)
        else:
            for f in frames:
                src.send_packet(f)
        results.append(r.outcome())
    assert results[0] == results[1]
    assert results[0]["n1"][0] == 50 and results[0]["n1"][4] > 0  # seen, added


def test_netem_releases_due_frames_as_one_batch(tmp_path: Path) -> None:
    # Delayed frames leave on the timer in batches; through the filters after
    # netem they walk as single hand-ons would, and arrive in order.
    mix = [("a", netem("n1", "tx", delay="5ms")), ("a", log_filter("t", "tx")),
           ("b", dump("d0", "rx"))]
    r = rig(mix, tmp_path / "d")
    frames = frames_of(300)
    r.a.send_packets(frames)
    assert r.b.got == []
    r.clock.run_all()
    assert r.b.got == frames
    n1 = r.filters[0]
    assert n1.stats.released == 300 and n1.counters()["held"] == 0
    assert r.log[:3] == ["t:tx:0000", "t:tx:0100", "t:tx:0200"]
    out = r.outcome()
    assert out["d0.records"] == frames
