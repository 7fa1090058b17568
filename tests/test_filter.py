"""The NetFilter chain (virtwire.net.filter): QEMU's walk order, taking and
handing on, placement, runtime changes and the caps."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from virtwire.errors import ConfigError, LimitError, NotFoundError
from virtwire.net.filter import (
    MAX_FILTERS,
    FilterDirection,
    NetFilter,
)
from virtwire.net.hub import Hub
from virtwire.net.net import NetClient
from virtwire.net.queue import NET_PACKET_FLAG_NONE


class Sink(NetClient):
    def __init__(self, name: str, accept: bool = True) -> None:
        super().__init__(name)
        self.got: list[bytes] = []
        self.accept = accept

    def receive(self, data: bytes) -> int:
        if not self.accept:
            return 0
        self.got.append(data)
        return len(data)

    def can_receive(self) -> bool:
        return self.accept


class Log(NetFilter):
    """Records what it sees, in a log shared by several filters."""

    kind = "log"

    def __init__(self, fid: str, log: list[str], **kw: Any) -> None:
        super().__init__(fid, **kw)
        self.log = log

    def filter_receive(self, direction: FilterDirection, sender: NetClient, flags: int,
                       data: bytes) -> int:
        self.log.append(f"{self.id}:{direction.value}")
        return 0


class Hold(NetFilter):
    """Takes everything; ``release`` hands it on."""

    kind = "hold"
    PROPERTIES: Mapping[str, str] = {"n": "a number"}

    def __init__(self, fid: str, **kw: Any) -> None:
        super().__init__(fid, **kw)
        self.held: list[tuple[NetClient, bytes]] = []
        self.n = 0
        self.cleaned = False

    def filter_receive(self, direction: FilterDirection, sender: NetClient, flags: int,
                       data: bytes) -> int:
        self.held.append((sender, data))
        return len(data)

    def release(self) -> None:
        held, self.held = self.held, []
        for sender, data in held:
            self.stats.released += 1
            self.pass_to_next(sender, NET_PACKET_FLAG_NONE, data)

    def cleanup(self) -> None:
        self.cleaned = True

    def parse_properties(self, props: Mapping[str, str], initial: bool) -> dict[str, Any]:
        if "n" in props:
            try:
                return {"n": int(props["n"])}
            except ValueError:
                raise ConfigError(f"n={props['n']!r} is not a number") from None
        return {}

    def apply(self, parsed: Mapping[str, Any]) -> None:
        if "n" in parsed:
            self.n = parsed["n"]


class Drop(NetFilter):
    kind = "drop"

    def filter_receive(self, direction: FilterDirection, sender: NetClient, flags: int,
                       data: bytes) -> int:
        self.drop("loss")
        return len(data)


def pair() -> tuple[Sink, Sink]:
    a, b = Sink("a"), Sink("b")
    a.peer, b.peer = b, a
    return a, b


def test_tx_head_to_tail_then_rx_tail_to_head() -> None:
    a, b = pair()
    log: list[str] = []
    for fid in ("t1", "t2"):
        a.add_filter(Log(fid, log, direction="tx"))
    a.add_filter(Log("a-rx", log, direction="rx"))
    for fid in ("r1", "r2"):
        b.add_filter(Log(fid, log, direction="rx"))
    b.add_filter(Log("b-all", log))
    b.add_filter(Log("b-tx", log, direction="tx"))
    assert a.send_packet(b"x" * 60) == 60
    assert log == ["t1:tx", "t2:tx", "b-all:rx", "r2:rx", "r1:rx"]
    assert b.got == [b"x" * 60]
    log.clear()
    b.send_packet(b"y" * 60)
    assert log == ["b-all:tx", "b-tx:tx", "a-rx:rx"]


def test_a_taken_packet_counts_as_sent_and_pass_to_next_resumes_after_the_filter() -> None:
    a, b = pair()
    log: list[str] = []
    a.add_filter(Log("before", log, direction="tx"))
    hold = Hold("hold", direction="tx")
    a.add_filter(hold)
    a.add_filter(Log("after", log, direction="tx"))
    b.add_filter(Log("b-rx", log, direction="rx"))
    called: list[int] = []
    assert a.send_packet_async(b"p" * 60, lambda _s, ret: called.append(ret)) == 60
    assert b.got == [] and log == ["before:tx"]
    assert a.stats.tx_frames == 1
    hold.release()
    # On after the holder, then (unlike QEMU, see docs/filters.md) the receiver's rx.
    assert log == ["before:tx", "after:tx", "b-rx:rx"]
    assert b.got == [b"p" * 60]
    assert called == []  # a taken packet never gets its sent_cb
    assert hold.stats.seen == 1 and hold.stats.taken == 1 and hold.stats.released == 1


def test_rx_filter_hands_on_towards_the_head_then_the_incoming_queue() -> None:
    a, b = pair()
    log: list[str] = []
    b.add_filter(Log("head", log, direction="rx"))
    hold = Hold("hold", direction="rx")
    b.add_filter(hold)
    b.add_filter(Log("tail", log, direction="rx"))
    a.send_packet(b"q" * 60)
    assert log == ["tail:rx"]
    hold.release()
    assert log == ["tail:rx", "head:rx"]
    assert b.got == [b"q" * 60]


def test_released_packets_queue_when_the_receiver_cannot_take_them() -> None:
    a, b = pair()
    hold = Hold("hold")
    a.add_filter(hold)
    a.send_packet(b"1" * 60)
    b.accept = False
    hold.release()
    assert len(b.incoming_queue) == 1
    b.accept = True
    b.flush_queued_packets()
    assert b.got == [b"1" * 60]


def test_status_off_and_removal_release_what_is_held() -> None:
    a, b = pair()
    hold = Hold("hold")
    a.add_filter(hold)
    a.send_packet(b"1" * 60)
    hold.configure({"status": "off"})
    assert b.got == [b"1" * 60]
    a.send_packet(b"2" * 60)  # an off filter lets everything through
    assert b.got[-1] == b"2" * 60
    hold.configure({"status": "on"})
    a.send_packet(b"3" * 60)
    assert b.got[-1] == b"2" * 60
    removed = a.remove_filter("hold")
    assert removed is hold and hold.cleaned and hold.netdev is None
    assert b.got[-1] == b"3" * 60
    assert a.filters == []


def test_placement_head_tail_and_relative_to_another() -> None:
    a, _ = pair()
    log: list[str] = []
    a.add_filter(Log("m", log))
    a.add_filter(Log("h", log), position="head")
    a.add_filter(Log("t", log), position="tail")
    a.add_filter(Log("after-m", log), position="id=m")
    a.add_filter(Log("before-m", log), position="id=m", insert="before")
    assert [f.id for f in a.filters] == ["h", "before-m", "m", "after-m", "t"]


def test_bad_placement_and_ids_change_nothing() -> None:
    a, _ = pair()
    log: list[str] = []
    a.add_filter(Log("one", log))
    with pytest.raises(ConfigError, match="already there"):
        a.add_filter(Log("one", log))
    with pytest.raises(NotFoundError, match="no filter 'missing'"):
        a.add_filter(Log("two", log), position="id=missing")
    with pytest.raises(ConfigError, match="position"):
        a.add_filter(Log("two", log), position="middle")
    with pytest.raises(ConfigError, match="insert"):
        a.add_filter(Log("two", log), position="id=one", insert="under")
    with pytest.raises(ConfigError, match="filter id"):
        Log("bad id!", log)
    with pytest.raises(ConfigError, match="direction"):
        Log("x", log, direction="sideways")
    with pytest.raises(NotFoundError):
        a.remove_filter("two")
    assert [f.id for f in a.filters] == ["one"]


def test_configure_is_all_or_nothing() -> None:
    a, _ = pair()
    hold = Hold("h")
    a.add_filter(hold)
    hold.configure({"n": "3"})
    with pytest.raises(ConfigError, match="unknown property bogus"):
        hold.configure({"n": "4", "bogus": "1"})
    with pytest.raises(ConfigError, match="not a number"):
        hold.configure({"n": "four", "status": "off"})
    with pytest.raises(ConfigError, match="status"):
        hold.configure({"n": "5", "status": "maybe"})
    assert hold.n == 3 and hold.status


def test_the_filter_cap_is_counted() -> None:
    a, _ = pair()
    log: list[str] = []
    for i in range(MAX_FILTERS):
        a.add_filter(Log(f"f{i}", log))
    with pytest.raises(LimitError):
        a.add_filter(Log("one-more", log))
    assert a.filters_refused == 1 and len(a.filters) == MAX_FILTERS


def test_drops_are_counted_by_cause_and_on_the_netclient() -> None:
    a, b = pair()
    drop = Drop("d", direction="rx")
    b.add_filter(drop)
    for _ in range(3):
        assert a.send_packet(b"z" * 60) == 60
    assert b.got == []
    assert drop.stats.dropped == {"loss": 3}
    assert b.stats.dropped_filter == 3 and b.dropped_total == 3


def test_batches_walk_the_filters_frame_by_frame() -> None:
    a, b = pair()
    log: list[str] = []
    a.add_filter(Log("t", log, direction="tx"))
    frames = [bytes([i]) * 60 for i in range(5)]
    assert a.send_packets(frames) == 5
    assert log == ["t:tx"] * 5 and b.got == frames


def test_filters_on_hub_ports_see_what_the_hub_forwards() -> None:
    hub = Hub(0, "h")
    p1, p2 = hub.add_port("p1"), hub.add_port("p2")
    n1, n2 = Sink("n1"), Sink("n2")
    n1.peer, p1.peer = p1, n1
    n2.peer, p2.peer = p2, n2
    log: list[str] = []
    p2.add_filter(Log("p2-tx", log, direction="tx"))
    n2.add_filter(Log("n2-rx", log, direction="rx"))
    n1.send_packets([b"a" * 60, b"b" * 60])
    assert log == ["p2-tx:tx", "n2-rx:rx"] * 2
    assert n2.got == [b"a" * 60, b"b" * 60]


def test_a_packet_handed_on_after_removal_walks_from_the_end_it_was_going() -> None:
    a, b = pair()
    log: list[str] = []
    hold = Hold("hold", direction="tx")
    a.add_filter(hold)
    a.add_filter(Log("t2", log, direction="tx"))
    a.send_packet(b"r" * 60)
    # Removal releases first (through t2), so nothing is left behind.
    a.remove_filter("hold")
    assert log == ["t2:tx"] and b.got == [b"r" * 60]
    # A filter that is detached cannot hand on: the packet is counted, not lost silently.
    assert hold.pass_to_next(a, 0, b"s" * 60) == 60
    assert hold.stats.dropped == {"detached": 1}
