"""NetQueue and NetClient as docs/queues.md describes them.

Plain in-process objects: no gRPC, no sockets. Each test's docstring states the
behaviour it pins. ``Regression`` comments name bugs these tests caught.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virtwire.net.eth import NET_BUFSIZE
from virtwire.net.net import NetClient
from virtwire.net.queue import (
    NET_PACKET_FLAG_NONE,
    NET_PACKET_FLAG_SENT_CB,
    NQ_MAXLEN,
    NetQueue,
)

from support.doubles import CbLog, Receiver, f, pair

# -- nq_maxlen and append -------------------------------------------------------


def test_each_netclient_owns_an_incoming_queue_with_maxlen_10000() -> None:
    """Spec 1: every NetClientState owns one incoming_queue; nq_maxlen = 10000."""
    a, b = NetClient("a"), NetClient("b")
    assert isinstance(a.incoming_queue, NetQueue)
    assert a.incoming_queue is not b.incoming_queue
    assert NQ_MAXLEN == 10000
    assert a.incoming_queue.nq_maxlen == 10000
    assert a.incoming_queue.nq_count == 0 and len(a.incoming_queue) == 0


def test_append_without_sent_cb_drops_at_maxlen_and_counts() -> None:
    """Spec 1: append with no sent_cb when nq_count >= nq_maxlen -> dropped.

    virtwire counts the drop in queue.dropped (QEMU drops silently).
    """
    s, r = pair()
    q = r.incoming_queue
    for i in range(NQ_MAXLEN):
        assert q.append(s, NET_PACKET_FLAG_NONE, f(i), None) is True
    assert q.nq_count == NQ_MAXLEN
    assert q.append(s, NET_PACKET_FLAG_NONE, f(NQ_MAXLEN), None) is False
    assert q.nq_count == NQ_MAXLEN
    assert q.dropped == 1
    # The queued ones are untouched: the newest one was the one dropped.
    assert q.packets[-1].data == f(NQ_MAXLEN - 1)


def test_send_packet_to_a_full_queue_drops_counted_and_returns_0() -> None:
    """Spec 1: nq_maxlen drop without sent_cb, reached through qemu_send_packet."""
    s, r = pair()
    r.ready = False
    for i in range(NQ_MAXLEN + 5):
        assert s.send_packet(f(i)) == 0
    assert r.incoming_queue.nq_count == NQ_MAXLEN
    assert r.incoming_queue.dropped == 5
    assert r.calls == []
    assert r.dropped_total == 5


def test_packet_with_sent_cb_is_always_queued_beyond_maxlen() -> None:
    """Spec 1: a packet with a sent_cb is always queued; its sender must stop
    until the callback fires."""
    s, r = pair()
    r.ready = False
    log = CbLog()
    for i in range(NQ_MAXLEN):
        s.send_packet(f(i))
    assert s.send_packet_async(f(NQ_MAXLEN), log.cb("over")) == 0
    q = r.incoming_queue
    assert q.nq_count == NQ_MAXLEN + 1
    assert q.dropped == 0
    assert q.packets[-1].data == f(NQ_MAXLEN)
    assert q.packets[-1].flags & NET_PACKET_FLAG_SENT_CB
    assert log.calls == []
    r.ready = True
    r.flush_queued_packets()
    assert log.calls == [("over", s, 64)]
    assert len(r.frames) == NQ_MAXLEN + 1


# -- qemu_net_queue_send --------------------------------------------------------


def test_send_while_delivering_appends_and_returns_0() -> None:
    """Spec 1: qemu_net_queue_send: if queue->delivering -> append, return 0."""
    s, r = pair()
    other = NetClient("other")
    q = r.incoming_queue
    seen: list[tuple[int, int]] = []

    def nested(data: bytes) -> None:
        if data == f(1):
            seen.append((q.send(other, 0, f(2), None), q.nq_count))

    r.on_receive = nested
    assert q.deliver(s, 0, f(1)) == 64
    assert seen == [(0, 1)]
    assert [p.data for p in q.packets] == [f(2)]
    assert r.calls == [f(1)]  # f(2) was not delivered recursively


def test_send_when_sender_cannot_send_appends_and_returns_0() -> None:
    """Spec 1: qemu_net_queue_send: !qemu_can_send_packet(sender) (the peer
    can't receive) -> append, return 0."""
    s, r = pair()
    r.ready = False
    assert s.can_send_packet() is False
    log = CbLog()
    assert s.send_packet_async(f(1), log.cb("1")) == 0
    assert r.calls == []  # receive was never tried
    assert [p.data for p in r.incoming_queue.packets] == [f(1)]
    assert r.receive_disabled is False
    assert log.calls == []


def test_receiver_returning_0_queues_sets_receive_disabled_and_sent_cb_fires_on_flush() -> None:
    """Spec 1: a 0 from the receiver -> append (with sent_cb), return 0; the
    receiver gets receive_disabled=1 and must later call
    qemu_flush_queued_packets, which calls sent_cb with the receiver's value."""
    s, r = pair()
    log = CbLog()
    r.ret = 0
    assert s.send_packet_async(f(1), log.cb("1")) == 0
    assert r.calls == [f(1)]
    assert r.receive_disabled is True
    assert [p.data for p in r.incoming_queue.packets] == [f(1)]
    assert log.calls == []
    r.ret = 1234
    r.flush_queued_packets()
    assert r.receive_disabled is False
    assert r.calls == [f(1), f(1)]
    assert log.calls == [("1", s, 1234)]
    assert len(r.incoming_queue) == 0


def test_successful_send_returns_receiver_value_and_flushes_the_queue() -> None:
    """Spec 1: otherwise flush the queue and return the receiver's value."""
    s, r = pair()
    log = CbLog()
    r.ready = False
    s.send_packet_async(f(1), log.cb("1"))
    r.ready = True  # ready again, but nobody flushed yet
    r.ret = 77
    assert s.send_packet_async(f(2), log.cb("2")) == 77
    assert len(r.incoming_queue) == 0
    assert log.calls == [("1", s, 77)]  # only the queued packet gets a sent_cb


def test_new_packet_overtakes_queued_ones() -> None:
    """Spec 1: a new packet can therefore overtake older queued ones."""
    s, r = pair()
    r.ready = False
    s.send_packet(f(1))
    s.send_packet(f(2))
    r.ready = True  # no flush: the old packets are still queued
    assert s.send_packet(f(3)) == 64
    assert r.frames == [f(3), f(1), f(2)]


# -- delivering (re-entrancy guard) ----------------------------------------------


def test_delivering_is_set_around_every_deliver() -> None:
    """Spec 1: `delivering` is set around every deliver."""
    s, r = pair()
    q = r.incoming_queue
    during: list[bool] = []
    r.on_receive = lambda data: during.append(q.delivering)
    assert q.delivering is False
    s.send_packet(f(1))
    r.ready = False
    s.send_packet(f(2))
    r.ready = True
    q.flush()
    assert during == [True, True]
    assert q.delivering is False


def test_delivering_is_cleared_when_receive_raises() -> None:
    """Spec 1: `delivering` is set around every deliver (and not left set)."""
    s, r = pair()

    def boom(data: bytes) -> None:
        raise RuntimeError("receiver bug")

    r.on_receive = boom
    with pytest.raises(RuntimeError):
        s.send_packet(f(1))
    assert r.incoming_queue.delivering is False


def test_flush_returns_false_at_once_while_delivering() -> None:
    """Spec 1: while delivering is set, flush returns false at once."""
    s, r = pair()
    q = r.incoming_queue
    r.ready = False
    s.send_packet(f(1))
    r.ready = True
    results: list[bool] = []
    r.on_receive = lambda data: results.append(q.flush())
    assert q.deliver(s, 0, f(2)) == 64
    assert results == [False]
    assert r.calls == [f(2)]  # the nested flush delivered nothing
    assert [p.data for p in q.packets] == [f(1)]


def test_flush_queued_packets_from_inside_receive_does_not_recurse() -> None:
    """Spec 1: re-entrancy guard: a receiver flushing from inside its own
    receive callback delivers nothing recursively."""
    s, r = pair()
    r.ready = False
    s.send_packet(f(1))
    s.send_packet(f(2))
    r.ready = True
    depth = [0]
    max_depth = [0]

    def reenter(data: bytes) -> None:
        depth[0] += 1
        max_depth[0] = max(max_depth[0], depth[0])
        r.flush_queued_packets()
        depth[0] -= 1

    r.on_receive = reenter
    r.flush_queued_packets()
    assert max_depth[0] == 1
    assert r.frames == [f(1), f(2)]


def test_receive_callback_sending_into_the_same_queue_is_queued_not_recursive() -> None:
    """Spec 1: re-entrancy guard: while delivering, send only appends; the
    packet sent from inside receive is delivered after the outer delivery."""
    s, r = pair()
    echo = NetClient("echo")
    echo.peer = r  # echo sends into r.incoming_queue, the queue now delivering
    depth = [0]
    max_depth = [0]
    returns: list[int] = []

    def reply(data: bytes) -> None:
        depth[0] += 1
        max_depth[0] = max(max_depth[0], depth[0])
        if data == f(1):
            returns.append(echo.send_packet(f(100)))
            assert r.calls == [f(1)]  # not delivered recursively
            assert [p.data for p in r.incoming_queue.packets] == [f(100)]
        depth[0] -= 1

    r.on_receive = reply
    assert s.send_packet(f(1)) == 64
    assert returns == [0]
    assert max_depth[0] == 1
    # The outer send flushed the queue afterwards.
    assert r.frames == [f(1), f(100)]
    assert len(r.incoming_queue) == 0


def test_queue_receive_returns_0_while_delivering() -> None:
    """Spec 1: while `delivering` is set, ... receive returns 0 (re-entrancy guard).

    QEMU's qemu_net_queue_receive (used by qemu_receive_packet, e.g. the e1000
    loopback path guarded for CVE-2021-3416) returns 0 while delivering.
    """
    s, r = pair()
    q = r.incoming_queue
    nested: list[int] = []
    r.on_receive = lambda data: nested.append(q.receive(f(9))) if data == f(1) else None  # type: ignore[attr-defined]
    q.deliver(s, 0, f(1))
    assert nested == [0]
    assert r.calls == [f(1)]
    assert q.receive(f(2)) == 64  # type: ignore[attr-defined]


# -- flush ------------------------------------------------------------------------


def test_flush_returns_true_when_empty() -> None:
    """Spec 1: flush ... True when empty."""
    s, r = pair()
    q = r.incoming_queue
    assert q.flush() is True
    r.ready = False
    s.send_packet(f(1))
    r.ready = True
    assert q.flush() is True
    assert len(q) == 0 and r.frames == [f(1)]


def test_flush_stops_at_0_and_puts_the_packet_back_at_the_head() -> None:
    """Spec 1: flush: pop from head and deliver; a 0 puts the packet back at
    the head and stops."""
    s, r = pair()
    log = CbLog()
    q = r.incoming_queue
    r.ready = False
    for i in (1, 2, 3):
        s.send_packet_async(f(i), log.cb(str(i)))
    r.ready = True
    results = iter([64, 0])

    # Program the receiver: first call consumes, second returns 0.
    def program(data: bytes) -> None:
        r.ret = next(results)

    r.on_receive = program
    assert q.flush() is False
    assert r.calls == [f(1), f(2)]
    assert [p.data for p in q.packets] == [f(2), f(3)]  # f(2) back at the head
    assert log.calls == [("1", s, 64)]
    assert r.receive_disabled is True
    # flush itself does not clear receive_disabled: nothing is delivered.
    r.on_receive = None
    r.ret = None
    assert q.flush() is False
    assert r.calls == [f(1), f(2)]
    r.flush_queued_packets()
    assert r.frames == [f(1), f(2), f(3)]
    assert log.tags() == ["1", "2", "3"]


def test_flush_calls_sent_cb_with_a_negative_ret() -> None:
    """Spec 1: flush: otherwise sent_cb(sender, ret) (ret may be negative) and free."""
    s, r = pair()
    log = CbLog()
    r.ready = False
    s.send_packet_async(f(1), log.cb("1"))
    s.send_packet_async(f(2), log.cb("2"))
    r.ready = True
    r.ret = -5
    assert r.incoming_queue.flush() is True
    assert log.calls == [("1", s, -5), ("2", s, -5)]
    assert len(r.incoming_queue) == 0
    assert r.stats.dropped_refused == 2


def test_flush_frees_packets_without_sent_cb() -> None:
    """Spec 1: flush: ... sent_cb(sender, ret) [if any] and free."""
    s, r = pair()
    r.ready = False
    s.send_packet(f(1))
    r.ready = True
    assert r.incoming_queue.flush() is True
    assert r.frames == [f(1)]
    assert len(r.incoming_queue) == 0


# -- purge --------------------------------------------------------------------------


def test_purge_removes_only_that_senders_packets_with_sent_cb_0() -> None:
    """Spec 1: purge(q, from): remove that sender's packets, calling
    sent_cb(sender, 0) each. virtwire counts them in queue.purged."""
    s1, r = pair("s1")
    s2 = NetClient("s2")
    s2.peer = r
    log = CbLog()
    q = r.incoming_queue
    r.ready = False
    s1.send_packet_async(f(1), log.cb("a"))
    s2.send_packet_async(f(2), log.cb("b"))
    s1.send_packet(f(3))  # no sent_cb: removed silently (but counted)
    s2.send_packet(f(4))
    assert q.purge(s1) == 2
    assert log.calls == [("a", s1, 0)]
    assert [p.data for p in q.packets] == [f(2), f(4)]
    assert q.purged == 2
    assert q.purge(s1) == 0
    assert q.purged == 2
    r.ready = True
    r.flush_queued_packets()
    assert r.frames == [f(2), f(4)]
    assert log.calls == [("a", s1, 0), ("b", s2, 64)]


def test_purge_queued_packets_removes_what_we_queued_at_our_peer() -> None:
    """Spec 1: deleting a NIC purges its pending packets from the peer's queue
    (qemu_purge_queued_packets(nc) purges nc->peer->incoming_queue of nc)."""
    s, r = pair()
    other = NetClient("other")
    other.peer = r
    log = CbLog()
    r.ready = False
    s.send_packet_async(f(1), log.cb("s"))
    other.send_packet(f(2))
    s.purge_queued_packets()
    assert log.calls == [("s", s, 0)]
    assert [p.data for p in r.incoming_queue.packets] == [f(2)]
    NetClient("lonely").purge_queued_packets()  # no peer: nothing to do


# Regression: purge() once rebound self.packets while flush() iterated the old
# deque, so a purge from a sent_cb during a flush delivered purged packets (and
# fired their sent_cb twice) and delivered survivors twice.
# QEMU removes purged packets from the one list in place (QTAILQ_FOREACH_SAFE).
def test_purge_during_flush_removes_packets_from_the_flush_in_progress() -> None:
    """Spec 1: purge(q, from): remove that sender's packets, calling
    sent_cb(sender, 0) each; flush: pop from head and deliver."""
    s1, r = pair("s1")
    s2 = NetClient("s2")
    s2.peer = r
    log = CbLog()
    q = r.incoming_queue

    def purge_s2(sender: NetClient, ret: int) -> None:
        log.calls.append(("a", sender, ret))
        q.purge(s2)

    r.ready = False
    s1.send_packet_async(f(1), purge_s2)
    s2.send_packet_async(f(2), log.cb("b"))
    s1.send_packet_async(f(3), log.cb("c"))
    r.ready = True
    r.flush_queued_packets()
    assert log.calls == [("a", s1, 64), ("b", s2, 0), ("c", s1, 64)]
    assert r.frames == [f(1), f(3)]
    assert len(q) == 0
    r.flush_queued_packets()
    assert r.frames == [f(1), f(3)]  # nothing delivered twice


# -- receive return values --------------------------------------------------------


def test_receive_positive_means_consumed() -> None:
    """Spec 1: receive return values: >0 consumed."""
    s, r = pair()
    assert s.send_packet(f(1, 100)) == 100
    assert r.frames == [f(1, 100)]
    assert r.stats.rx_frames == 1 and r.stats.rx_bytes == 100
    assert s.stats.tx_frames == 1 and s.stats.tx_bytes == 100
    assert r.receive_disabled is False
    assert len(r.incoming_queue) == 0


def test_receive_zero_means_queue_it_and_disables_receive() -> None:
    """Spec 1: receive return values: 0 "queue it" (the receiver gets
    receive_disabled=1 and must later call qemu_flush_queued_packets)."""
    s, r = pair()
    r.ret = 0
    assert s.send_packet(f(1)) == 0
    assert r.receive_disabled is True
    assert r.can_receive_packet() is False
    assert s.can_send_packet() is False
    # Later sends are queued without calling receive.
    r.ret = None
    assert s.send_packet(f(2)) == 0
    assert r.calls == [f(1)]
    assert r.stats.rx_frames == 0
    assert r.dropped_total == 0
    r.flush_queued_packets()
    assert r.frames == [f(1), f(2)]


def test_receive_negative_means_drop_counted_as_refused() -> None:
    """Spec 1: receive return values: <0 drop (virtwire: dropped_refused)."""
    s, r = pair()
    log = CbLog()
    r.ret = -1
    assert s.send_packet_async(f(1), log.cb("1")) == -1
    assert r.stats.dropped_refused == 1
    assert r.stats.rx_frames == 0
    assert r.receive_disabled is False
    assert len(r.incoming_queue) == 0
    assert log.calls == []  # sent_cb is only for queued packets


# -- qemu_deliver_packet_iov order ----------------------------------------------


def test_deliver_to_link_down_receiver_returns_size_and_counts() -> None:
    """Spec 1: qemu_deliver_packet_iov: receiver link_down -> return size
    (silent drop; virtwire counts dropped_link_down)."""
    s, r = pair()
    r.set_link(False)
    assert s.send_packet(f(1, 90)) == 90
    assert r.calls == []
    assert r.stats.dropped_link_down == 1
    assert r.stats.rx_frames == 0
    assert len(r.incoming_queue) == 0


def test_deliver_link_down_is_checked_before_receive_disabled() -> None:
    """Spec 1: deliver order: receiver link_down -> return size; then
    receive_disabled -> 0."""
    s, r = pair()
    log = CbLog()
    r.ret = 0
    s.send_packet_async(f(1), log.cb("1"))
    assert r.receive_disabled is True
    r.set_link(False)
    assert r.incoming_queue.deliver(s, 0, f(2)) == 64
    # A queued packet flushed to a link-down receiver: sent_cb gets the size.
    assert r.incoming_queue.flush() is True
    assert log.calls == [("1", s, 64)]
    assert r.stats.dropped_link_down == 2
    assert r.calls == [f(1)]


def test_deliver_to_receive_disabled_returns_0_without_calling_receive() -> None:
    """Spec 1: deliver order: receive_disabled -> 0."""
    s, r = pair()
    r.receive_disabled = True
    assert r.incoming_queue.deliver(s, 0, f(1)) == 0
    assert r.calls == []
    assert r.dropped_total == 0


def test_deliver_oversize_returns_minus_1_counted_malformed() -> None:
    """Spec 1: deliver: receive_iov (or linearise; > NET_BUFSIZE = 4096+65536 -> -1)."""
    s, r = pair()
    assert NET_BUFSIZE == 4096 + 65536 == 69632
    q = r.incoming_queue
    assert q.deliver(s, 0, bytes(NET_BUFSIZE + 1)) == -1
    assert r.calls == []
    assert r.stats.dropped_malformed == 1
    assert r.receive_disabled is False
    assert q.deliver(s, 0, bytes(NET_BUFSIZE)) == NET_BUFSIZE  # the limit itself is fine
    assert r.stats.rx_frames == 1


def test_deliver_receive_disabled_is_checked_before_size() -> None:
    """Spec 1: deliver order: receive_disabled -> 0 comes before the size check."""
    s, r = pair()
    r.receive_disabled = True
    assert r.incoming_queue.deliver(s, 0, bytes(NET_BUFSIZE + 1)) == 0
    assert r.stats.dropped_malformed == 0


# -- can_receive_packet / can_send_packet -----------------------------------------


@pytest.mark.parametrize(("disabled", "ready", "expected"), [
    (False, True, True),
    (False, False, False),
    (True, True, False),
    (True, False, False),
])
def test_can_receive_packet(disabled: bool, ready: bool, expected: bool) -> None:
    """Spec 1: qemu_can_receive_packet(nc) = !receive_disabled && can_receive(nc)."""
    r = Receiver()
    r.receive_disabled = disabled
    r.ready = ready
    assert r.can_receive_packet() is expected


def test_can_send_packet_is_true_with_no_peer() -> None:
    """Spec 1: qemu_can_send_packet(sender) = 1 if no peer."""
    assert NetClient("alone").can_send_packet() is True


def test_can_send_packet_follows_the_peers_can_receive_packet() -> None:
    """Spec 1: qemu_can_send_packet(sender) = ... else can_receive(peer)
    (QEMU 9.0 calls qemu_can_receive_packet(peer), so receive_disabled counts)."""
    s, r = pair()
    assert s.can_send_packet() is True
    r.ready = False
    assert s.can_send_packet() is False
    r.ready = True
    r.receive_disabled = True
    assert s.can_send_packet() is False


# -- qemu_send_packet_async ------------------------------------------------------


def test_send_async_with_sender_link_down_returns_size_and_counts() -> None:
    """Spec 1: qemu_send_packet_async: sender link_down -> return size
    (dropped but reported as sent)."""
    s, r = pair()
    log = CbLog()
    s.set_link(False)
    assert s.send_packet_async(f(1, 80), log.cb("1")) == 80
    assert s.stats.dropped_link_down == 1
    assert s.stats.tx_frames == 0
    assert r.calls == [] and len(r.incoming_queue) == 0
    assert log.calls == []


def test_send_async_with_no_peer_returns_size_and_counts() -> None:
    """Spec 1: qemu_send_packet_async: no peer -> return size (dropped but
    reported as sent)."""
    s = NetClient("alone")
    assert s.send_packet_async(f(1, 70), None) == 70
    assert s.send_packet(f(2, 75)) == 75
    assert s.stats.dropped_link_down == 2
    assert s.dropped_total == 2


def test_send_async_drops_frames_larger_than_net_bufsize() -> None:
    """Spec 1: frames > NET_BUFSIZE are dropped on the sendv path."""
    s, r = pair()
    big = bytes(NET_BUFSIZE + 1)
    assert s.send_packet(big) == len(big)
    assert s.stats.dropped_malformed == 1
    assert r.calls == []
    assert s.send_packet(bytes(NET_BUFSIZE)) == NET_BUFSIZE


def test_send_async_queues_on_the_peers_incoming_queue() -> None:
    """Spec 1: qemu_send_packet_async: ... queue_send on peer->incoming_queue."""
    s, r = pair()
    r.ready = False
    s.send_packet(f(1))
    assert len(r.incoming_queue) == 1
    assert len(s.incoming_queue) == 0
    packet = r.incoming_queue.packets[0]
    assert packet.sender is s and packet.sent_cb is None
    assert packet.flags == NET_PACKET_FLAG_NONE


def test_send_packet_is_send_async_without_sent_cb() -> None:
    """Spec 1: qemu_send_packet = same with sent_cb NULL."""
    s, r = pair()
    r.ready = False
    r.incoming_queue.nq_maxlen = 1
    assert s.send_packet(f(1)) == 0
    assert s.send_packet(f(2)) == 0  # no sent_cb: dropped at the cap
    assert r.incoming_queue.dropped == 1
    assert [p.sent_cb for p in r.incoming_queue.packets] == [None]


def test_capture_tx_hook_fires_on_send_and_rx_hook_on_successful_receive() -> None:
    """Spec 1: netfilters: "tx" = packets sent by the netdev, "rx" = packets
    sent to it (virtwire: tx at send time, rx on a successful receive)."""
    s, r = pair()
    tx: list[tuple[str, bytes]] = []
    rx: list[tuple[str, bytes]] = []
    s.capture_hooks.append(lambda d, data: tx.append((d, data)))
    r.capture_hooks.append(lambda d, data: rx.append((d, data)))
    s.send_packet(f(1))
    assert tx == [("tx", f(1))]
    assert rx == [("rx", f(1))]
    # Queued: tx fires when sent, rx only once it is received.
    r.ready = False
    s.send_packet(f(2))
    assert tx[-1] == ("tx", f(2))
    assert rx == [("rx", f(1))]
    r.ready = True
    r.flush_queued_packets()
    assert rx == [("rx", f(1)), ("rx", f(2))]


def test_capture_rx_hook_skips_refused_requeued_and_link_down_frames() -> None:
    """Spec 1: rx capture only for frames actually received (ret > 0)."""
    s, r = pair()
    rx: list[tuple[str, bytes]] = []
    tx: list[tuple[str, bytes]] = []
    r.capture_hooks.append(lambda d, data: rx.append((d, data)))
    s.capture_hooks.append(lambda d, data: tx.append((d, data)))
    r.ret = -1
    s.send_packet(f(1))
    r.ret = 0
    s.send_packet(f(2))
    r.ret = None
    r.receive_disabled = False
    r.incoming_queue.packets.clear()
    r.set_link(False)
    s.send_packet(f(3))
    assert rx == []
    assert tx == [("tx", f(1)), ("tx", f(2)), ("tx", f(3))]
    # Frames the sender drops (link down, no peer) are not captured as tx.
    s.set_link(False)
    s.send_packet(f(4))
    assert len(tx) == 3


# -- flush_queued_packets --------------------------------------------------------


def test_flush_queued_packets_clears_receive_disabled_and_flushes() -> None:
    """Spec 1: flush_queued_packets(nc): clear receive_disabled; ... flush own
    incoming_queue."""
    s, r = pair()
    r.ret = 0
    s.send_packet(f(1))
    s.send_packet(f(2))
    assert r.receive_disabled is True
    r.ret = None
    r.flush_queued_packets()
    assert r.receive_disabled is False
    assert r.frames == [f(1), f(2)]
    assert len(r.incoming_queue) == 0


def test_flush_queued_packets_with_no_peer() -> None:
    """Spec 1: flush_queued_packets(nc) works for a NetClient without a peer."""
    r = Receiver()
    s = NetClient("s")
    s.peer = r
    r.ready = False
    s.send_packet(f(1))
    r.ready = True
    r.flush_queued_packets()
    assert r.frames == [f(1)]


# QEMU's qemu_flush_or_purge_queued_packets(nc, purge=true) purges nc->peer's
# packets from nc->incoming_queue when the flush cannot empty it.
def test_flush_or_purge_removes_the_peers_packets_when_the_flush_stalls() -> None:
    """Spec 1: flush_queued_packets(nc): ... (purge variant removes the peer's packets)."""
    s, r = pair()
    other = NetClient("other")
    other.peer = r
    log = CbLog()
    r.ready = False
    s.send_packet_async(f(1), log.cb("s"))
    other.send_packet(f(2))
    r.ret = 0
    r.ready = True
    r.flush_queued_packets(purge=True)
    assert log.calls == [("s", s, 0)]
    assert [p.data for p in r.incoming_queue.packets] == [f(2)]


# -- set_link --------------------------------------------------------------------


def test_set_link_sets_link_down_and_notifies() -> None:
    """Spec 1: set_link (QMP) sets link_down on the named client."""
    r = Receiver()
    r.set_link(False)
    assert r.link_down is True and r.admin_down is True
    assert r.link_changes == 1
    r.set_link(False)
    assert r.link_changes == 2  # qmp_set_link notifies even without a change
    r.set_link(True)
    assert r.link_down is False and r.admin_down is False
    assert r.link_changes == 3


def test_set_link_on_a_backend_leaves_a_non_nic_peer_alone() -> None:
    """Spec 1: set_link ... if the peer is a NIC, on the peer too (so a
    backend peer is not changed)."""
    s, r = pair()
    s.set_link(False)
    assert s.link_down is True
    assert r.link_down is False


def test_set_link_up_with_carrier_down_stays_down() -> None:
    """Spec 1: set_link; virtwire: link_down = admin_down or carrier down."""
    r = Receiver()
    r.set_carrier(False)
    r.set_link(True)
    assert r.link_down is True
    r.set_carrier(True)
    assert r.link_down is False


# QMP set_link also sets link_down on the peer when the peer is a NIC (and calls
# the peer's link_status_changed).
def test_set_link_also_sets_link_down_on_a_nic_peer() -> None:
    """Spec 1: set_link (QMP) sets link_down on the named client and, if the
    peer is a NIC, on the peer too."""
    backend = NetClient("tap0")
    nic = Receiver("nic0")
    nic.is_nic = True
    backend.peer = nic
    nic.peer = backend
    backend.set_link(False)
    assert nic.link_down is True
    assert nic.link_changes == 1
    backend.set_link(True)
    assert nic.link_down is False


# -- property: nothing is lost silently -----------------------------------------

_SENDERS = 2

#: Action kinds, sends weighted to half of them so that queues fill up.
_KINDS = ["send"] * 8 + ["ready", "ready", "mode", "mode", "rx_link", "tx_link", "flush",
                         "flush", "queue_flush", "purge"]
#: (kind, sender index, flag, number 0..19): each kind reads what it needs.
_action = st.tuples(st.sampled_from(_KINDS), st.integers(0, _SENDERS - 1), st.booleans(),
                    st.integers(0, 19))


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), st.lists(_action, min_size=20, max_size=80))
def test_property_no_frame_is_lost_silently(
        start_ready: bool, actions: list[tuple[str, int, bool, int]]) -> None:
    """Spec 1 (all of it): whatever the interleaving of sends (with and without
    sent_cb), receiver toggles and flushes, every frame sent is delivered,
    still queued, or counted as dropped; every queued packet with a sent_cb
    gets it exactly once; queued packets of one sender are delivered FIFO."""
    r = Receiver()
    r.ready = start_ready
    r.incoming_queue.nq_maxlen = 4  # small, so the nq_maxlen drop is exercised
    senders = [NetClient(f"s{i}") for i in range(_SENDERS)]
    for s in senders:
        s.peer = r
    r.peer = senders[0]

    frames: dict[int, bytes] = {}
    owner: dict[int, int] = {}
    queued: set[int] = set()  # send returned 0
    with_cb: set[int] = set()
    cb_calls: dict[int, list[tuple[NetClient, int]]] = {}
    seq = 0

    def fid(data: bytes) -> int:
        return int.from_bytes(data[:4], "big")

    def make_cb(n: int) -> Callable[[NetClient, int], None]:
        def sent_cb(sender: NetClient, ret: int) -> None:
            cb_calls[n].append((sender, ret))

        return sent_cb

    def check_accounting() -> None:
        delivered = [fid(d) for d in r.frames]
        assert len(delivered) == len(set(delivered)), "a frame was delivered twice"
        assert set(delivered) <= set(frames)
        q = r.incoming_queue
        in_queue = [fid(p.data) for p in q.packets]
        assert len(in_queue) == len(set(in_queue))
        assert not set(in_queue) & set(delivered)
        counted = (r.stats.dropped_refused + r.stats.dropped_link_down
                   + r.stats.dropped_malformed + q.dropped + q.purged
                   + sum(s.stats.dropped_link_down + s.stats.dropped_malformed
                         for s in senders))
        assert len(frames) == len(delivered) + len(in_queue) + counted

    for kind, idx, flag, n in actions:
        if kind == "send":
            seq += 1
            size = NET_BUFSIZE + 1 if n == 0 else 60  # 1 in 20 oversize
            data = seq.to_bytes(4, "big") + bytes(size - 4)
            frames[seq] = data
            owner[seq] = idx
            sent_cb = None
            if flag:
                with_cb.add(seq)
                cb_calls[seq] = []
                sent_cb = make_cb(seq)
            if senders[idx].send_packet_async(data, sent_cb) == 0:
                queued.add(seq)
        elif kind == "ready":
            r.ready = flag
        elif kind == "mode":  # receive returns 0 (1 in 5), -1 (1 in 5), else len
            r.ret = 0 if n < 4 else -1 if n < 8 else None
        elif kind == "rx_link":
            r.set_link(flag or n > 4)  # mostly up
        elif kind == "tx_link":
            senders[idx].set_link(flag or n > 4)
        elif kind == "flush":
            r.flush_queued_packets()
        elif kind == "queue_flush":
            r.incoming_queue.flush()
        elif kind == "purge":
            senders[idx].purge_queued_packets()
        check_accounting()

    # Drain: everything still queued must come out now.
    r.ready = True
    r.ret = None
    r.set_link(True)
    r.flush_queued_packets()
    assert len(r.incoming_queue) == 0
    check_accounting()

    delivered = [fid(d) for d in r.frames]
    for n in frames:
        calls = cb_calls.get(n, [])
        if n in with_cb and n in queued:
            assert len(calls) == 1, f"frame {n}: sent_cb fired {len(calls)} times"
            sender, ret = calls[0]
            assert sender is senders[owner[n]]
            if n in delivered:
                assert ret == len(frames[n])
        else:
            assert calls == [], f"frame {n} was not queued but got a sent_cb"
    for idx in range(_SENDERS):
        order = [n for n in delivered if owner[n] == idx and n in queued]
        assert order == sorted(order), f"sender {idx}: queued frames out of order"
