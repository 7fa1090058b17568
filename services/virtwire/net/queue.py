"""NetQueue: a NetClient's incoming_queue, with QEMU's net/queue.c semantics.

A packet that cannot be delivered right away is appended. Without a sent_cb it
is dropped once the queue holds ``maxlen`` (nq_maxlen, 10000) packets; with one
it is always queued and its sender must wait until the callback fires.
``delivering`` guards against re-entrant delivery: while set, ``send`` only
appends and ``flush`` returns False at once.

Unlike QEMU, drops are counted (``dropped``) so that users can see them.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

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

    def __init__(self, deliver: DeliverFunc, maxlen: int = NQ_MAXLEN) -> None:
        self._deliver_fn = deliver
        self.nq_maxlen = maxlen
        self.packets: collections.deque[NetPacket] = collections.deque()
        self.delivering = False
        #: Packets dropped because the queue was full (no sent_cb).
        self.dropped = 0
        #: Packets removed by purge (their sent_cb got 0).
        self.purged = 0

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
        exactly as in QEMU.
        """
        if self.delivering or not sender.can_send_packet():
            self.append(sender, flags, data, sent_cb)
            return 0
        ret = self.deliver(sender, flags, data)
        if ret == 0:
            self.append(sender, flags, data, sent_cb)
            return 0
        self.flush()
        return ret

    def receive(self, data: bytes) -> int:
        """qemu_net_queue_receive: deliver with no sender; 0 while delivering.

        This is the re-entrancy guard a NIC's loopback relies on
        (CVE-2021-3416): a frame looped back from inside a delivery is refused.
        """
        if self.delivering:
            return 0
        return self.deliver(None, NET_PACKET_FLAG_NONE, data)

    def flush(self) -> bool:
        """qemu_net_queue_flush: deliver from the head; True when empty."""
        if self.delivering:
            return False
        # self.packets is re-read on every pass: a sent_cb may purge it.
        while self.packets:
            packet = self.packets.popleft()
            ret = self.deliver(packet.sender, packet.flags, packet.data)
            if ret == 0:
                self.packets.appendleft(packet)
                return False
            if packet.sent_cb is not None:
                packet.sent_cb(packet.sender, ret)
        return True

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
