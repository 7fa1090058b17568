"""NetQueue: a NetClient's incoming_queue, with QEMU's net/queue.c semantics.

A packet that cannot be delivered right away is appended. Without a sent_cb it
is dropped once the queue holds ``maxlen`` (nq_maxlen, 10000) packets; with one
it is always queued and its sender must wait until the callback fires.
``delivering`` guards against re-entrant delivery: while set, ``send`` only
appends and ``flush`` returns False at once.

Unlike QEMU, drops are counted (``dropped``) so that users can see them.

Flushes are sliced once a deferral hook is installed (``install_deferral``,
done by every server with its event loop's ``call_soon``): the flushes of one
turn of the loop share a budget (``FLUSH_BUDGET_PACKETS`` packets, or
``FLUSH_SLICE_S`` of time), and a flush that reaches it stops and resumes from
the head on the next turn (``flush_sliced`` counts these). Order and sent_cb
are kept: while a resume is pending ``send`` queues behind it, a purge still
removes packets in place, and a resume whose receiver refuses stops as any
flush does. QEMU delivers the whole queue inside the one flush. With no hook
(plain objects, unit tests) flushes behave exactly as QEMU's.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from virtwire.net.net import NetClient

logger = logging.getLogger(__name__)

NQ_MAXLEN = 10000

#: QEMU_NET_PACKET_FLAG_NONE.
NET_PACKET_FLAG_NONE = 0
#: QEMU_NET_PACKET_FLAG_RAW.
NET_PACKET_FLAG_RAW = 1
#: virtwire: the packet waited in a queue and its sender is paused until its
#: sent_cb fires. A link forwards such packets with a completion request, so
#: the far side never drops them either.
NET_PACKET_FLAG_SENT_CB = 2

#: ``sent_cb(sender, ret)``: ret > 0 delivered, 0 purged, < 0 refused.
SentCb = Callable[["NetClient", int], None]
#: ``deliver(sender, flags, data) -> ret``, QEMU's qemu_deliver_packet_iov.
DeliverFunc = Callable[["NetClient | None", int, bytes], int]
#: ``deliver_batch(sender, frames, recheck) -> taken``: ``deliver`` for each
#: frame in order, up to the first that returned 0 (or, with ``recheck``, the
#: first the receiver could no longer receive); how many were taken before it.
DeliverBatchFunc = Callable[["NetClient", Sequence[bytes], bool], int]
#: ``defer(fn)`` runs ``fn()`` on the next turn of the event loop (``loop.call_soon``).
Defer = Callable[[Callable[[], None]], object]

#: Packets the flushes of one turn of the event loop may deliver together.
FLUSH_BUDGET_PACKETS = 256
#: Time (time.perf_counter) they may take together.
FLUSH_SLICE_S = 0.005


class FlushBudget:
    """What the flushes of one turn of the event loop may still deliver.

    The first flush of a turn opens the budget and defers its closing, so it
    lasts until the next turn; nested flushes (a delivery that flushes another
    queue) and later flushes in the same turn share it. Every flush call
    delivers at least one packet, so each makes progress. The hook is only
    used on the thread that installed it; elsewhere flushes are not sliced.
    """

    __slots__ = ("_deadline", "_hooks", "_left", "_open", "packets", "slice_s")

    def __init__(self, packets: int = FLUSH_BUDGET_PACKETS,
                 slice_s: float = FLUSH_SLICE_S) -> None:
        #: Limits of one turn; ``slice_s`` may be ``math.inf`` (count only).
        self.packets = packets
        self.slice_s = slice_s
        self._hooks: list[tuple[Defer, int]] = []
        self._open = False
        self._left = 0
        self._deadline = 0.0

    @property
    def defer(self) -> Defer | None:
        """The hook in use (the latest installed), or None: flushes not sliced."""
        return self._hooks[-1][0] if self._hooks else None

    def install(self, defer: Defer) -> None:
        """Slice flushes on this thread, resuming them through ``defer``."""
        self._hooks.append((defer, threading.get_ident()))
        self._open = False

    def remove(self, defer: Defer) -> None:
        """Undo one ``install(defer)``; a hook that is not installed is ignored."""
        for i in range(len(self._hooks) - 1, -1, -1):
            if self._hooks[i][0] == defer:
                del self._hooks[i]
                break
        # A turn opened through that hook may never see its end scheduled.
        self._open = False

    def begin(self) -> Defer | None:
        """Called by a flush: the hook to resume through, or None (not sliced)."""
        if not self._hooks:
            return None
        defer, thread = self._hooks[-1]
        if thread != threading.get_ident():
            return None
        if not self._open:
            try:
                defer(self._end)
            except RuntimeError:  # the loop is closed: nothing could resume
                return None
            self._open = True
            self._left = self.packets
            self._deadline = time.perf_counter() + self.slice_s
        return defer

    def _end(self) -> None:
        self._open = False

    @property
    def left(self) -> int:
        """Packets this turn may still deliver."""
        return self._left

    def spend(self, packets: int = 1) -> bool:
        """Packets delivered: True when this turn's budget is used up."""
        self._left -= packets
        return self._left <= 0 or time.perf_counter() >= self._deadline


#: The budget every NetQueue's flushes share.
flush_budget = FlushBudget()


def install_deferral(defer: Defer) -> None:
    """Slice NetQueue flushes on this thread, resuming them through ``defer``
    (a server passes its event loop's ``call_soon``)."""
    flush_budget.install(defer)


def remove_deferral(defer: Defer) -> None:
    """Undo ``install_deferral(defer)`` (when the server stops)."""
    flush_budget.remove(defer)


class NetPacket:
    """One queued packet."""

    __slots__ = ("data", "flags", "sender", "sent_cb")

    def __init__(self, sender: NetClient, flags: int, data: bytes, sent_cb: SentCb | None):
        self.sender = sender
        self.flags = flags
        self.data = data
        self.sent_cb = sent_cb


class NetQueue:
    """A bounded FIFO of packets waiting for their receiver (QEMU's NetQueue)."""

    #: The budget sliced flushes share (see ``FlushBudget``).
    budget: ClassVar[FlushBudget] = flush_budget

    def __init__(self, deliver: DeliverFunc, maxlen: int = NQ_MAXLEN,
                 deliver_batch: DeliverBatchFunc | None = None) -> None:
        self._deliver_fn = deliver
        self._deliver_batch_fn = deliver_batch
        #: Whether the receiver ignores packet flags (all but links), so that a
        #: flush may hand it packets that wait for a sent_cb as a batch too.
        self.flags_ignored = True
        self.nq_maxlen = maxlen
        self.packets: collections.deque[NetPacket] = collections.deque()
        self.delivering = False
        #: Packets dropped because the queue was full (no sent_cb).
        self.dropped = 0
        #: Packets removed by purge (their sent_cb got 0).
        self.purged = 0
        #: Flushes that stopped at the budget and resumed on a later turn.
        self.flush_sliced = 0
        #: A sliced flush waits for its continuation.
        self.resume_pending = False
        #: Called when a resumed flush empties the queue (the owner tells its peer).
        self.on_flushed: Callable[[], None] | None = None

    @property
    def nq_count(self) -> int:
        return len(self.packets)

    def __len__(self) -> int:
        return len(self.packets)

    def append(self, sender: NetClient, flags: int, data: bytes, sent_cb: SentCb | None) -> bool:
        """qemu_net_queue_append: False (and counted) when dropped."""
        if sent_cb is None and len(self.packets) >= self.nq_maxlen:
            self.dropped += 1
            return False
        if sent_cb is not None:
            flags |= NET_PACKET_FLAG_SENT_CB
        self.packets.append(NetPacket(sender, flags, data, sent_cb))
        return True

    def deliver(self, sender: NetClient | None, flags: int, data: bytes) -> int:
        """One delivery with the ``delivering`` guard set around it."""
        self.delivering = True
        try:
            return self._deliver_fn(sender, flags, data)
        finally:
            self.delivering = False

    def send(self, sender: NetClient, flags: int, data: bytes, sent_cb: SentCb | None) -> int:
        """qemu_net_queue_send: deliver now if possible, else queue and return 0.

        A packet that is delivered at once may overtake packets already queued,
        exactly as in QEMU; but not those of a sliced flush still in progress
        (QEMU's flush would have delivered them by now): it queues behind them.
        """
        if self.delivering or self.resume_pending or not sender.can_send_packet():
            self.append(sender, flags, data, sent_cb)
            return 0
        ret = self.deliver(sender, flags, data)
        if ret == 0:
            self.append(sender, flags, data, sent_cb)
            return 0
        self.flush()
        return ret

    def send_batch(self, sender: NetClient, frames: Sequence[bytes],
                   sent_cb: SentCb | None = None, queue_rest: bool = False) -> int:
        """``send`` for each of ``frames`` in order, in one call; returns how many
        were delivered at once.

        The frames from the first that could not be delivered on are queued,
        as ``send`` would queue each: without ``sent_cb`` all of them (dropped
        and counted when the queue is full); with one only that first frame,
        with the callback, and the caller keeps the rest until it fires, as a
        backend that got 0 stops reading; with ``queue_rest`` all of them, each
        with the callback. The queue is flushed once after the batch rather
        than after each frame, so frames of a batch may overtake packets of
        other senders that were waiting, as a single ``send`` may.
        """
        taken = 0
        if not (self.delivering or self.resume_pending) and sender.can_send_packet():
            self.delivering = True
            try:
                if self._deliver_batch_fn is not None:
                    # As send checks can_send for each frame, a batch stops
                    # where the receiver can no longer receive.
                    taken = self._deliver_batch_fn(sender, frames, True)
                else:
                    deliver = self._deliver_fn
                    for data in frames:
                        if (taken and not sender.can_send_packet()) \
                                or deliver(sender, NET_PACKET_FLAG_NONE, data) == 0:
                            break
                        taken += 1
            finally:
                self.delivering = False
            if taken and self.packets:
                self.flush()
        if taken < len(frames):
            if sent_cb is not None and not queue_rest:
                self.append(sender, NET_PACKET_FLAG_NONE, frames[taken], sent_cb)
            else:
                for data in frames[taken:]:
                    self.append(sender, NET_PACKET_FLAG_NONE, data, sent_cb)
        return taken

    def receive(self, data: bytes) -> int:
        """qemu_net_queue_receive: deliver with no sender; 0 while delivering.

        This is the re-entrancy guard a NIC's loopback relies on
        (CVE-2021-3416): a frame looped back from inside a delivery is refused.
        """
        if self.delivering:
            return 0
        return self.deliver(None, NET_PACKET_FLAG_NONE, data)

    def flush(self, sliced: bool = True) -> bool:
        """qemu_net_queue_flush: deliver from the head; True when empty.

        False when the receiver refused a packet (it stays at the head), while
        delivering, or when the flush stopped at the budget and the rest will
        be delivered on a later turn (``resume_pending``). ``sliced=False``
        ignores the budget (a purging flush: QEMU purges only what the
        receiver refused).
        """
        if self.delivering:
            return False
        defer = self.budget.begin() if sliced and self.packets else None
        # self.packets is re-read on every pass: a sent_cb may purge it.
        while self.packets:
            if self._deliver_batch_fn is not None and len(self.packets) > 1 \
                    and (self.flags_ignored or not self.packets[0].flags):
                ran = self._flush_run(max(1, self.budget.left) if defer is not None
                                      else FLUSH_BUDGET_PACKETS)
                if ran < 0:
                    return False
                if ran > 0:
                    if defer is not None and self.budget.spend(ran) and self.packets:
                        self.flush_sliced += 1
                        if not self.resume_pending:
                            self.resume_pending = True
                            defer(self._resume)
                        return False
                    continue
            packet = self.packets.popleft()
            ret = self.deliver(packet.sender, packet.flags, packet.data)
            if ret == 0:
                self.packets.appendleft(packet)
                return False
            if packet.sent_cb is not None:
                packet.sent_cb(packet.sender, ret)
            if defer is not None and self.budget.spend() and self.packets:
                self.flush_sliced += 1
                if not self.resume_pending:
                    self.resume_pending = True
                    defer(self._resume)
                return False
        return True

    def _flush_run(self, limit: int) -> int:
        """Deliver the packets at the head that one sender queued as one batch
        (at most ``limit``; only packets without flags unless the receiver
        ignores them, and only sent_cbs marked ``ignores_ret``, since the
        batch has no per-packet return value), then call their sent_cbs. Returns how many went, 0 if
        the head is a lone such packet (deliver it singly), -1 when the
        receiver refused part-way (the rest stays at the head)."""
        assert self._deliver_batch_fn is not None
        head = self.packets[0]
        sender = head.sender
        any_flags = self.flags_ignored
        run: list[NetPacket] = []
        for packet in self.packets:
            if packet.sender is not sender or (packet.flags and not any_flags) \
                    or (packet.sent_cb is not None
                        and not getattr(packet.sent_cb, "ignores_ret", False)) \
                    or len(run) >= limit:
                break
            run.append(packet)
        if len(run) < 2:
            return 0
        self.delivering = True
        try:
            # A flush delivers without asking can_receive, as QEMU's does.
            taken = self._deliver_batch_fn(sender, [p.data for p in run], False)
        finally:
            self.delivering = False
        packets = self.packets
        for packet in run[:taken]:
            if packets and packets[0] is packet:
                packets.popleft()
        for packet in run[:taken]:
            if packet.sent_cb is not None:
                packet.sent_cb(packet.sender, len(packet.data))
        return taken if taken == len(run) else -1

    def _resume(self) -> None:
        """The continuation of a flush the budget cut short."""
        self.resume_pending = False
        if self.delivering:  # run from inside one of our deliveries: try again later
            defer = self.budget.defer
            if defer is not None:
                self.resume_pending = True
                defer(self._resume)
            return
        if self.flush() and self.on_flushed is not None:
            self.on_flushed()

    def purge(self, sender: NetClient) -> int:
        """qemu_net_queue_purge: remove ``sender``'s packets, sent_cb(sender, 0) each."""
        keep: list[NetPacket] = []
        removed: list[NetPacket] = []
        for packet in self.packets:
            (removed if packet.sender is sender else keep).append(packet)
        # In place: a flush in progress must not deliver what was purged.
        self.packets.clear()
        self.packets.extend(keep)
        self.purged += len(removed)
        for packet in removed:
            if packet.sent_cb is not None:
                packet.sent_cb(packet.sender, 0)
        return len(removed)
