"""NetQueue flushes that do not hold the event loop (issue 7, item 6).

With a deferral hook installed (every server installs its loop's call_soon),
the flushes of one turn share a budget; a flush that reaches it stops and the
rest follows on later turns, in QEMU's order, each packet with its sent_cb. The
unit tests drive the hook with a list of callbacks they run turn by turn; one
test runs a real in-process HubServer and watches its event loop.
"""

from __future__ import annotations

import asyncio
import gc
import math
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virtwire.address import parse_peer
from virtwire.hw.e1000_regs import E1000_RDT
from virtwire.net.hub import Hub
from virtwire.net.net import NetClient
from virtwire.net.queue import (
    FLUSH_BUDGET_PACKETS,
    NetQueue,
    flush_budget,
    install_deferral,
    remove_deferral,
)
from virtwire.server.base import inject
from virtwire.server.hub import HubServer
from virtwire.server.link import LinkDialer
from virtwire.v1 import netclient_pb2, netclient_pb2_grpc

from support.doubles import CbLog, Receiver, Sink, f, frame, pair, until
from support.e1000_rig import Driver, Rig, eth_frame

N = 10_000


class Turns:
    """A fake event loop: ``defer`` queues callbacks, ``run`` runs one turn
    (what was queued before it started, as asyncio does)."""

    def __init__(self) -> None:
        self.ready: list[Callable[[], None]] = []

    def defer(self, fn: Callable[[], None]) -> None:
        self.ready.append(fn)

    def run(self) -> None:
        batch, self.ready = self.ready, []
        for fn in batch:
            fn()

    def run_all(self, limit: int = 100_000) -> int:
        """Run turns until nothing is scheduled; how many turns ran."""
        n = 0
        while self.ready:
            self.run()
            n += 1
            assert n < limit, "flush resumes never end"
        return n


@pytest.fixture
def turns() -> Iterator[Turns]:
    """The hook installed with the default packet budget and no time limit
    (so slices do not depend on how busy the machine is)."""
    t = Turns()
    packets, slice_s = flush_budget.packets, flush_budget.slice_s
    flush_budget.slice_s = math.inf
    install_deferral(t.defer)
    try:
        yield t
    finally:
        remove_deferral(t.defer)
        flush_budget.packets, flush_budget.slice_s = packets, slice_s


def fill(s: NetClient, r: Receiver, n: int, log: CbLog, every: int = 2) -> list[bytes]:
    """Queue ``n`` frames from ``s`` at ``r`` (not ready); every ``every``-th has a sent_cb."""
    r.ready = False
    frames = [f(i) for i in range(n)]
    for i, data in enumerate(frames):
        assert s.send_packet_async(data, log.cb(str(i)) if i % every == 0 else None) == 0
    assert len(r.incoming_queue) == n
    r.ready = True
    return frames


# -- splitting ----------------------------------------------------------------------------

def test_a_10000_packet_flush_is_split_in_order_with_every_sent_cb(turns: Turns) -> None:
    s, r = pair()
    log = CbLog()
    frames = fill(s, r, N, log)
    q = r.incoming_queue
    r.flush_queued_packets()
    assert len(r.frames) == FLUSH_BUDGET_PACKETS and q.resume_pending
    assert q.flush_sliced == 1
    delivered = len(r.frames)
    while turns.ready:
        turns.run()
        assert len(r.frames) - delivered <= FLUSH_BUDGET_PACKETS  # one slice a turn
        delivered = len(r.frames)
    assert r.frames == frames
    assert log.tags() == [str(i) for i in range(0, N, 2)]
    assert all(sender is s and ret == 64 for _, sender, ret in log.calls)
    assert q.flush_sliced == math.ceil(N / FLUSH_BUDGET_PACKETS) - 1
    assert not q.resume_pending and len(q) == 0 and q.dropped == 0


def test_without_a_hook_a_flush_delivers_everything_at_once() -> None:
    """Plain objects keep QEMU's qemu_net_queue_flush: until empty or refused."""
    s, r = pair()
    log = CbLog()
    frames = fill(s, r, N, log)
    assert r.incoming_queue.flush() is True
    assert r.frames == frames and r.incoming_queue.flush_sliced == 0
    assert not r.incoming_queue.resume_pending


def test_a_send_during_a_pending_resume_queues_behind_it(turns: Turns) -> None:
    """QEMU's flush would have delivered the queue before this send: so the new
    frame may not overtake it (it waits for its sent_cb like any queued one)."""
    s, r = pair()
    log = CbLog()
    frames = fill(s, r, 1000, log)
    r.flush_queued_packets()
    assert r.incoming_queue.resume_pending
    assert s.send_packet_async(f(5000), log.cb("late")) == 0
    assert s.send_packet(f(5001)) == 0
    turns.run_all()
    assert r.frames == [*frames, f(5000), f(5001)]
    assert log.tags()[-1] == "late"
    # Nothing pending any more: a send is delivered at once again.
    assert s.send_packet(f(5002)) == 64 and r.frames[-1] == f(5002)


def test_a_purge_between_slices_is_respected(turns: Turns) -> None:
    s1, r = pair("s1")
    s2 = NetClient("s2")
    s2.peer = r
    log = CbLog()
    r.ready = False
    for i in range(2000):
        sender = s1 if i % 2 == 0 else s2
        sender.send_packet_async(f(i), log.cb(f"{sender.name}:{i}"))
    r.ready = True
    r.flush_queued_packets()
    first = list(r.frames)
    assert len(first) == FLUSH_BUDGET_PACKETS
    s2.purge_queued_packets()
    purged = [(tag, ret) for tag, _, ret in log.calls if ret == 0]
    assert len(purged) == 1000 - FLUSH_BUDGET_PACKETS // 2
    assert all(tag.startswith("s2:") for tag, _ in purged)
    turns.run_all()
    assert r.frames == first + [f(i) for i in range(len(first), 2000, 2)]
    # Every frame got exactly one sent_cb: delivered (64) or purged (0).
    assert sorted(log.tags()) == sorted(
        f"{'s1' if i % 2 == 0 else 's2'}:{i}" for i in range(2000))
    assert r.incoming_queue.purged == len(purged)


def test_a_purge_that_empties_the_queue_leaves_nothing_to_resume(turns: Turns) -> None:
    s, r = pair()
    log = CbLog()
    fill(s, r, 1000, log)
    r.flush_queued_packets()
    s.purge_queued_packets()
    turns.run_all()
    assert len(r.frames) == FLUSH_BUDGET_PACKETS and len(r.incoming_queue) == 0
    assert [ret for _, _, ret in log.calls].count(64) == FLUSH_BUDGET_PACKETS // 2


def test_a_resume_whose_receiver_refuses_stops_like_a_flush(turns: Turns) -> None:
    s, r = pair()
    log = CbLog()
    frames = fill(s, r, 1000, log)
    r.flush_queued_packets()
    r.ret = 0  # receive returns 0: queue it (receive_disabled)
    turns.run_all()
    q = r.incoming_queue
    assert r.frames == frames[:FLUSH_BUDGET_PACKETS]
    assert r.receive_disabled and not q.resume_pending
    assert len(q) == 1000 - FLUSH_BUDGET_PACKETS and q.packets[0].data == frames[256]
    # The receiver's own flush picks up where it stopped.
    r.ret = None
    r.flush_queued_packets()
    turns.run_all()
    assert r.frames == frames and len(q) == 0


def test_the_delivering_guard_holds_in_a_sliced_flush(turns: Turns) -> None:
    """While delivering, flush returns False at once and send only appends."""
    s, r = pair()
    log = CbLog()
    frames = fill(s, r, 600, log)
    q = r.incoming_queue
    inner: list[bool] = []

    def reenter(data: bytes) -> None:
        if data == frames[3]:
            inner.append(q.flush())
            s.send_packet(f(9999))

    r.on_receive = reenter
    r.flush_queued_packets()
    turns.run_all()
    assert inner == [False]
    assert r.frames == [*frames, f(9999)]


def test_a_purging_flush_is_not_sliced(turns: Turns) -> None:
    """QEMU purges only what the receiver refused, so a flush-or-purge runs to the end."""
    s, r = pair()
    log = CbLog()
    frames = fill(s, r, 1000, log)
    r.flush_queued_packets(purge=True)
    assert r.frames == frames and not turns.ready and r.incoming_queue.purged == 0


def test_the_flushes_of_one_turn_share_the_budget(turns: Turns) -> None:
    """A second queue flushed in the same turn gets what the first left, but at
    least one packet; the next turn starts a new budget."""
    flush_budget.packets = 100
    s1, r1 = pair("s1", "r1")
    s2, r2 = pair("s2", "r2")
    s3, r3 = pair("s3", "r3")
    log = CbLog()
    fill(s1, r1, 60, log)
    fill(s2, r2, 60, log)
    fill(s3, r3, 60, log)
    r1.flush_queued_packets()
    r2.flush_queued_packets()
    r3.flush_queued_packets()
    assert (len(r1.frames), len(r2.frames), len(r3.frames)) == (60, 40, 1)
    turns.run()  # a new budget: r2's 20 and r3's 59 fit
    assert (len(r2.frames), len(r3.frames)) == (60, 60)
    assert r2.incoming_queue.flush_sliced == r3.incoming_queue.flush_sliced == 1


def test_a_resumed_flush_that_empties_the_queue_tells_the_peer(turns: Turns) -> None:
    """The end of flush_queued_packets (the peer's peer_ready_changed, and a hub
    port peer flushing the other ports) is repeated when a later slice empties
    the queue, so a link re-advertises readiness without waiting for its poll."""

    class Peer(NetClient):
        ready_changes = 0

        def peer_ready_changed(self) -> None:
            self.ready_changes += 1

    r = Receiver()
    s = Peer("s")
    s.peer, r.peer = r, s
    log = CbLog()
    fill(s, r, 600, log)
    r.flush_queued_packets()
    assert s.ready_changes == 1
    turns.run_all()
    assert s.ready_changes == 2 and len(r.frames) == 600

    # Through a hub: "slow" is not ready while it has a backlog (as a link is),
    # so what another port sends meanwhile waits at that port; when the backlog
    # is gone on a later turn, the hub flushes it (net_hub_flush).
    class Backlogged(Receiver):
        def can_receive(self) -> bool:
            return self.ready and not self.incoming_queue.packets

    hub = Hub()
    a, b = hub.add_port("a"), hub.add_port("b")
    slow, src = Backlogged("slow"), Receiver("src")
    a.peer, slow.peer = slow, a
    b.peer, src.peer = src, b
    slow.ready = False
    for i in range(600):
        a.send_packet(f(i))  # the hub's frames wait at slow
    slow.ready = True
    slow.flush_queued_packets()
    assert slow.incoming_queue.resume_pending
    for i in range(600, 610):
        src.send_packet(f(i))  # slow still has a backlog: these wait at b
    assert len(b.incoming_queue) == 10
    turns.run_all()
    assert slow.frames == [f(i) for i in range(610)] and len(b.incoming_queue) == 0


def test_property_sliced_flushes_lose_nothing(turns: Turns) -> None:
    """Whatever the interleaving of sends, readiness, flushes, purges and turns,
    with a tiny budget: every frame is delivered, queued or counted; each queued
    sent_cb fires once; one sender's queued frames arrive in order."""
    flush_budget.packets = 3
    run_property(turns)


_KINDS = ["send"] * 6 + ["ready", "mode", "flush", "queue_flush", "purge", "turn", "turn"]
_action = st.tuples(st.sampled_from(_KINDS), st.integers(0, 1), st.booleans(),
                    st.integers(0, 9))


def run_property(turns: Turns) -> None:
    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(st.lists(_action, min_size=20, max_size=80))
    def check(actions: list[tuple[str, int, bool, int]]) -> None:
        turns.ready.clear()
        flush_budget.remove(turns.defer)
        flush_budget.install(turns.defer)
        r = Receiver()
        r.incoming_queue.nq_maxlen = 6
        senders = [NetClient("s0"), NetClient("s1")]
        for s in senders:
            s.peer = r
        r.peer = senders[0]
        sent: dict[int, int] = {}
        queued_cb: dict[int, list[int]] = {}
        seq = 0

        def cb(n: int) -> Callable[[NetClient, int], None]:
            return lambda _s, ret: queued_cb[n].append(ret)

        for kind, idx, flag, n in actions:
            if kind == "send":
                seq += 1
                sent[seq] = idx
                data = seq.to_bytes(4, "big") + bytes(56)
                if flag:
                    queued_cb[seq] = []
                if senders[idx].send_packet_async(data, cb(seq) if flag else None) != 0 \
                        and flag:
                    del queued_cb[seq]  # delivered at once: no sent_cb
            elif kind == "ready":
                r.ready = flag
            elif kind == "mode":
                r.ret = 0 if n < 2 else None
            elif kind == "flush":
                r.flush_queued_packets()
            elif kind == "queue_flush":
                r.incoming_queue.flush()
            elif kind == "purge":
                senders[idx].purge_queued_packets()
            elif kind == "turn":
                turns.run()
        r.ready, r.ret = True, None
        r.flush_queued_packets()
        turns.run_all()
        q = r.incoming_queue
        assert len(q) == 0 and not q.resume_pending
        got = [int.from_bytes(d[:4], "big") for d in r.frames]
        assert len(got) == len(set(got))
        assert len(sent) == len(got) + q.dropped + q.purged
        for n, calls in queued_cb.items():
            assert len(calls) == 1, (n, calls)
            assert calls[0] == (60 if n in got else 0)
        for idx in (0, 1):
            queued = [n for n in got if sent[n] == idx and n in queued_cb]
            assert queued == sorted(queued)

    check()


# -- the hook -------------------------------------------------------------------------------

def test_hooks_stack_and_only_slice_on_their_thread() -> None:
    outer, inner = Turns(), Turns()
    install_deferral(outer.defer)
    install_deferral(inner.defer)
    try:
        assert flush_budget.defer == inner.defer
        remove_deferral(inner.defer)
        assert flush_budget.defer == outer.defer
        remove_deferral(inner.defer)  # not installed: ignored
        assert flush_budget.defer == outer.defer
        # On another thread the hook is not used: the flush runs to the end.
        s, r = pair()
        frames = fill(s, r, 1000, CbLog())
        done: list[bool] = []
        t = threading.Thread(target=lambda: done.append(r.incoming_queue.flush()))
        t.start()
        t.join()
        assert done == [True] and r.frames == frames and not outer.ready
    finally:
        remove_deferral(outer.defer)
    assert flush_budget.defer is None


def test_a_hook_on_a_closed_loop_leaves_the_flush_unsliced() -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    install_deferral(loop.call_soon)
    try:
        s, r = pair()
        frames = fill(s, r, 1000, CbLog())
        assert r.incoming_queue.flush() is True and r.frames == frames
    finally:
        remove_deferral(loop.call_soon)


def test_every_netclient_queue_shares_the_one_budget() -> None:
    assert NetQueue.budget is flush_budget
    assert NetClient("x").incoming_queue.budget is flush_budget


# -- with the e1000's own slicing -------------------------------------------------------------

@pytest.mark.parametrize(("nic_units", "queue_packets"), [(20, 7), (100_000, 7), (20, 100_000)])
def test_queue_slicing_composes_with_the_e1000_rx_slicing(
        nic_units: int, queue_packets: int, turns: Turns) -> None:
    """The e1000 leaves frames queued past its own budget (rx_sliced) and resumes
    through its scheduler; the queue stops past its budget and resumes through
    the hook. Whichever cuts first, every frame lands in the ring, in order."""
    flush_budget.packets = queue_packets
    rig = Rig(ram=4 << 20)
    rig.nic.budget.units = nic_units
    drv = Driver(rig, n_rx=256)
    drv.bring_up()
    rig.w(E1000_RDT, 0)  # no RX buffers: frames wait in the e1000's incoming_queue
    drv.rx_next = 0
    frames = [eth_frame(fill=i % 251, size=60 + i % 64) for i in range(200)]
    for fr in frames:
        rig.inject(fr)
    q = rig.nic.incoming_queue
    assert len(q) == 200
    rig.w(E1000_RDT, 255)
    for fr in frames[:5]:  # arriving meanwhile: behind the queue
        rig.inject(fr)
    while turns.ready or rig.nic.rx_flush_pending:
        turns.run()
        rig.sched.advance(0)
    assert drv.receive_all() == frames + frames[:5]
    assert rig.nic.drops.rx_no_buffers == 0
    sliced_nic, sliced_queue = rig.nic.drops.rx_sliced > 0, q.flush_sliced > 0
    if queue_packets > 1000:
        assert sliced_nic and not sliced_queue
    elif nic_units > 1000:
        assert sliced_queue and not sliced_nic
    else:
        assert sliced_nic or sliced_queue


# -- a real HubServer ----------------------------------------------------------------------

async def test_a_hub_draining_a_10000_frame_backlog_keeps_its_loop_turning(
        hub: HubServer) -> None:
    """Three linked ports that cannot receive, 10,000 frames queued at a fourth;
    the ports become ready and the backlog drains to all three. Unsliced the hub
    held its loop for 50-100 ms of CPU in one flush; sliced, no gap between two
    ticks of a task on that loop reaches 50 ms of CPU time (thread_time: the
    machine is shared), every frame arrives in order, and GetNetClient shows
    the slices."""
    sinks = [Sink(f"s{i}") for i in range(3)]
    dialers = []
    for s in sinks:
        s.ready = False
        d = LinkDialer(s, parse_peer(f"{hub.address}/"))
        d.start()
        dialers.append(d)
        await asyncio.wait_for(d.connected.wait(), 10)
    src = hub.add_port("src")
    await until(lambda: not src.can_receive(), what="no port can take frames")
    frames = [frame(i) for i in range(N)]
    for data in frames:
        assert inject(src, data) == (1, 0)
    assert len(src.incoming_queue) == N

    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.thread_time()
        while not stop.is_set():
            await asyncio.sleep(0)
            now = time.thread_time()
            gaps.append(now - last)
            last = now

    # A full collection walks every object earlier tests left in this process
    # (>100 ms of CPU after a few modules): not the hub's work, so that heap is
    # frozen out of the collector while we watch.
    gc.collect()
    gc.freeze()
    try:
        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        for s in sinks:
            s.set_ready(True)
        for s in sinks:
            await s.wait_for(N, timeout=120)
        stop.set()
        await task
    finally:
        gc.unfreeze()
    for s in sinks:
        assert s.frames == frames
    assert max(gaps) < 0.05, f"longest gap {max(gaps) * 1000:.1f} ms of CPU"
    async with grpc.aio.insecure_channel(hub.address) as ch:
        stub = netclient_pb2_grpc.NetClientServiceStub(ch)
        resp = await stub.GetNetClient(netclient_pb2.GetNetClientRequest(name="src"))
    assert resp.netclient.counters.flush_sliced == src.incoming_queue.flush_sliced > 0
    for d in dialers:
        await d.stop()
