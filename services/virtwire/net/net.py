"""NetClient: one end of a peer pair, with QEMU's net/net.c send and deliver paths.

Subclasses override the NetClientInfo callbacks ``receive``, ``can_receive``,
``link_status_changed`` and ``cleanup``. The peer may be a local NetClient or,
across processes, a ``LinkPeer`` that stands in for the remote one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from virtwire.net.eth import NET_BUFSIZE
from virtwire.net.filter import FilterChain, NetFilter, filter_send, filter_send_batch
from virtwire.net.queue import NET_PACKET_FLAG_NONE, NetQueue, SentCb
from virtwire.tracing import Sampler

logger = logging.getLogger(__name__)

#: Called with (direction, frame) for every frame a NetClient sends ("tx") or
#: receives ("rx"); see virtwire.net.capture.
CaptureHook = Callable[[str, bytes], None]


#: ``receive_room`` of a NetClient that takes any batch whole while it can
#: receive (a stream backend's connection buffer, a link that discards).
ROOM_ANY = 1 << 30


@dataclass
class NetClientStats:
    """Counters of one NetClient (mirrors virtwire.v1.NetClientCounters)."""

    rx_frames: int = 0
    rx_bytes: int = 0
    tx_frames: int = 0
    tx_bytes: int = 0
    dropped_link_down: int = 0
    dropped_refused: int = 0
    dropped_malformed: int = 0
    #: Dropped by one of this NetClient's filters (each counts its causes).
    dropped_filter: int = 0
    #: Filtered by a switch port (net.switch: VLAN, same port...; it counts each cause).
    dropped_switch: int = 0


class NetClient(FilterChain):
    """QEMU's NetClientState: a named frame endpoint with one peer."""

    #: NetClientInfo type name, e.g. "hubport", "tap", "stream".
    kind = "generic"
    #: NET_CLIENT_DRIVER_NIC: set_link on a NIC's peer changes the NIC too.
    is_nic = False
    #: The span a frame this NetClient sends starts its trace with, when its
    #: ``sampler`` picks it (docs/tracing.md). Backends where frames enter the
    #: LAN name it ("tap.read"; "e1000.transmit" for a NIC); "" (hub ports,
    #: links) means not an ingress point: ``--trace-sample`` arms no sampler.
    ingress_span = ""
    #: Chooses frames to trace as they are sent (None: none; ``Sampler.idle``
    #: ones are cleared on the next send).
    sampler: Sampler | None = None

    def __init__(self, name: str) -> None:
        self.name = name
        self.peer: NetClient | None = None
        self.incoming_queue = NetQueue(self._deliver_packet, deliver_batch=self.deliver_packets)
        self.incoming_queue.on_flushed = self._incoming_queue_flushed
        #: The data path's link_down: admin_down or carrier_down.
        self.link_down = False
        #: Set by set_link (QMP).
        self.admin_down = False
        #: Why the carrier is down: "link" while the link to a remote peer is
        #: broken, "backend" while e.g. a stream socket is disconnected.
        self.carrier_down: set[str] = set()
        self.receive_disabled = False
        self.stats = NetClientStats()
        self.capture_hooks: list[CaptureHook] = []
        #: Frames capture subscribers lost because they fell behind.
        self.capture_dropped = 0
        #: Capture subscriptions refused: the NetClient had its most subscribers.
        self.capture_refused = 0
        #: NetFilters, head first (virtwire.net.filter).
        self.filters: list[NetFilter] = []
        #: Filters refused: the NetClient had MAX_FILTERS.
        self.filters_refused = 0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    # -- NetClientInfo callbacks -------------------------------------------
    def receive(self, data: bytes) -> int:
        """Consume a frame: > 0 consumed, 0 queue it (receive_disabled), < 0 drop."""
        return len(data)

    def can_receive(self) -> bool:
        return True

    def link_status_changed(self) -> None:
        """Called after link_down changed."""

    def peer_ready_changed(self) -> None:
        """Hint that our peer's can_receive (or its link state, or its filters)
        may have changed (used by links)."""

    def filters_changed(self) -> None:
        """A filter was added or removed: our peer may care (a link's discarding)."""
        if self.peer is not None:
            self.peer.peer_ready_changed()

    def cleanup(self) -> None:
        """Release backend resources."""

    def describe(self) -> str:
        """One line of backend details for status output (QEMU's info_str)."""
        return ""

    # -- net.c ---------------------------------------------------------------
    def can_receive_packet(self) -> bool:
        """qemu_can_receive_packet."""
        return not self.receive_disabled and self.can_receive()

    def can_send_packet(self) -> bool:
        """qemu_can_send_packet: True with no peer, else the peer can receive."""
        peer = self.peer
        return peer is None or peer.can_receive_packet()

    def send_packet_async(self, data: bytes, sent_cb: SentCb | None) -> int:
        """qemu_send_packet_async: 0 means queued, wait for sent_cb."""
        if self.sampler is not None:
            data = self._sample((data,))[0]
        peer = self.peer
        if self.link_down or peer is None:
            self.stats.dropped_link_down += 1
            return len(data)
        if len(data) > NET_BUFSIZE:
            self.stats.dropped_malformed += 1
            return len(data)
        stats = self.stats
        stats.tx_frames += 1
        stats.tx_bytes += len(data)
        if self.capture_hooks:
            for hook in self.capture_hooks:
                hook("tx", data)
        if self.filters or peer.filters:
            ret = filter_send(self, peer, NET_PACKET_FLAG_NONE, data)
            if ret:
                return ret
        return peer.incoming_queue.send(self, NET_PACKET_FLAG_NONE, data, sent_cb)

    def send_packet(self, data: bytes) -> int:
        """qemu_send_packet: no sent_cb, so a full peer queue drops the frame."""
        return self.send_packet_async(data, None)

    def send_packets(self, frames: Sequence[bytes], sent_cb: SentCb | None = None,
                     queue_rest: bool = False) -> int:
        """``send_packet_async`` for each of ``frames`` in order, in one call.

        Returns how many were delivered at once. Without ``sent_cb`` the rest
        are queued (or dropped and counted), as ``send_packet`` does with each.
        With one, the frame at the returned index (if any) was queued with it
        and the caller keeps the frames after it until it fires; with
        ``queue_rest`` too, every frame after it was queued with it as well.
        Frames of more than NET_BUFSIZE bytes are dropped and counted, as one
        by one. With filters on either side the batch walks them together
        (``filter_send_batch``), and a frame a filter took counts as
        delivered; but with a sent_cb and no ``queue_rest`` (where the caller
        keeps the frames after the first queued one, which must not have been
        through the filters) every frame walks them alone. A link-down
        NetClient drops them all (counted) and returns their number.
        """
        if self.sampler is not None:
            frames = self._sample(frames)
        peer = self.peer
        stats = self.stats
        if self.link_down or peer is None:
            stats.dropped_link_down += len(frames)
            return len(frames)
        if frames and max(map(len, frames)) > NET_BUFSIZE:
            return self._send_one_by_one(frames, sent_cb, queue_rest)
        if self.filters or peer.filters:
            if len(frames) > 1 and (sent_cb is None or queue_rest):
                return self._send_filtered(peer, frames, sent_cb)
            return self._send_one_by_one(frames, sent_cb, queue_rest)
        taken = peer.incoming_queue.send_batch(self, frames, sent_cb, queue_rest)
        sent = frames
        if sent_cb is not None and not queue_rest and taken + 1 < len(frames):
            sent = frames[:taken + 1]
        stats.tx_frames += len(sent)
        stats.tx_bytes += sum(map(len, sent))
        if self.capture_hooks:
            for data in sent:
                for hook in self.capture_hooks:
                    hook("tx", data)
        return taken

    def _sample(self, frames: Sequence[bytes]) -> Sequence[bytes]:
        """``frames`` with those the sampler picks made TracedFrames."""
        sampler = self.sampler
        assert sampler is not None
        if sampler.idle:
            self.sampler = None
            return frames
        return sampler.sample(frames, self.ingress_span or "netclient.send",
                              {"netclient": self.name})

    def _send_filtered(self, peer: NetClient, frames: Sequence[bytes],
                       sent_cb: SentCb | None) -> int:
        """``send_packets`` through filters, every frame sent: without a sent_cb
        or with ``queue_rest``. As ``send_packet_async`` for each: counted and
        captured, then through the filters, then what passed to the peer's
        incoming_queue (frames a filter handed on meanwhile with no sent_cb).
        Returns the frames the filters took plus those delivered at once."""
        stats = self.stats
        stats.tx_frames += len(frames)
        stats.tx_bytes += sum(map(len, frames))
        if self.capture_hooks:
            for data in frames:
                for hook in self.capture_hooks:
                    hook("tx", data)
        batch = filter_send_batch(self, peer, NET_PACKET_FLAG_NONE,
                                  frames if isinstance(frames, list) else list(frames))
        out = batch.frames
        handed = batch.handed
        taken = len(frames) - (len(out) - batch.handed_count)
        if not out:
            return taken
        queue = peer.incoming_queue
        if handed is None:
            return taken + queue.send_batch(self, out, sent_cb, True)
        if sent_cb is None:
            sent = queue.send_batch(self, out, None)
            return taken + sent - sum(handed[:sent])
        # Runs of the sender's frames (with sent_cb) and handed-on ones (without).
        i, n = 0, len(out)
        while i < n:
            mark = handed[i]
            j = i + 1
            while j < n and handed[j] == mark:
                j += 1
            sent = queue.send_batch(self, out[i:j], None if mark else sent_cb, True)
            if not mark:
                taken += sent
            i = j
        return taken

    def _send_one_by_one(self, frames: Sequence[bytes], sent_cb: SentCb | None,
                         queue_rest: bool) -> int:
        """``send_packets`` frame by frame: a batch with a frame too long, or
        through filters with a sent_cb and no ``queue_rest``."""
        taken = 0
        for i, data in enumerate(frames):
            if self.send_packet_async(data, sent_cb) != 0:
                taken += 1
            elif sent_cb is not None and not queue_rest:
                return i
        return taken

    def receive_packet(self, data: bytes) -> int:
        """qemu_receive_packet: deliver to ourselves (NIC loopback), guarded."""
        if not self.can_receive_packet():
            return 0
        return self.incoming_queue.receive(data)

    def _deliver_packet(self, sender: NetClient | None, flags: int, data: bytes) -> int:
        """qemu_deliver_packet_iov for packets sent to this NetClient."""
        if self.link_down:
            self.stats.dropped_link_down += 1
            return len(data)
        if self.receive_disabled:
            return 0
        if len(data) > NET_BUFSIZE:
            self.stats.dropped_malformed += 1
            return -1
        ret = self.receive_flags(data, flags)
        if ret == 0:
            self.receive_disabled = True
        elif ret > 0:
            stats = self.stats
            stats.rx_frames += 1
            stats.rx_bytes += len(data)
            if self.capture_hooks:
                for hook in self.capture_hooks:
                    hook("rx", data)
        else:
            self.stats.dropped_refused += 1
        return ret

    def deliver_packets(self, sender: NetClient, frames: Sequence[bytes],
                        recheck: bool = False) -> int:
        """``_deliver_packet`` for each of ``frames`` in order, up to the first
        that returns 0 or, with ``recheck`` (a send, which asks can_receive
        before each frame as qemu_net_queue_send does), the first we can no
        longer receive; returns how many came before it.

        Subclasses on the data path (hub ports, links) take a whole batch at
        once; this default delivers one by one, so every NetClient sees the
        same callbacks as with single sends.
        """
        deliver = self._deliver_packet
        for i, data in enumerate(frames):
            if i and recheck and not self.can_receive_packet():
                return i
            if deliver(sender, NET_PACKET_FLAG_NONE, data) == 0:
                return i
        return len(frames)

    def receive_room(self) -> int:
        """How many frames we can surely take now, one by one, without
        can_receive turning false (0 when it is false). The default knows only
        the next frame; links know their credits; ROOM_ANY: any batch."""
        return 1 if self.can_receive_packet() else 0

    def batch_fast(self, frames: Sequence[bytes]) -> bool:
        """For a subclass's ``deliver_packets``: whether the whole batch may go
        at once (link up, receiving, no capture, no frame too long); if not,
        the default one-by-one delivery gives the exact per-frame outcome."""
        return not (self.link_down or self.receive_disabled or self.capture_hooks
                    or max(map(len, frames), default=0) > NET_BUFSIZE)

    def receive_flags(self, data: bytes, flags: int) -> int:
        """receive() with the packet flags; LinkPeer needs them, others don't."""
        return self.receive(data)

    def flush_queued_packets(self, purge: bool = False) -> None:
        """qemu_flush_or_purge_queued_packets: clear receive_disabled and flush.

        When our peer is a hub port, every other port of that hub is flushed
        too. With ``purge``, what our peer queued is dropped if the flush
        could not empty the queue. Links are told readiness may have changed.
        """
        self.receive_disabled = False
        peer = self.peer
        if peer is not None:
            peer.flush_peer_side()
        # A purging flush is not sliced: QEMU purges only what was refused.
        if not self.incoming_queue.flush(sliced=not purge) and purge and peer is not None:
            self.incoming_queue.purge(peer)
        if peer is not None:
            peer.peer_ready_changed()

    def _incoming_queue_flushed(self) -> None:
        """A sliced flush of our incoming_queue emptied it on a later turn: tell
        our peer, as the flush that started it did (QEMU has no later turn)."""
        peer = self.peer
        if peer is not None:
            peer.flush_peer_side()
            peer.peer_ready_changed()

    def flush_peer_side(self) -> None:
        """Extra flushing when our peer flushes (hub ports flush the other ports)."""

    def purge_queued_packets(self) -> None:
        """qemu_purge_queued_packets: drop what our peer queued for us."""
        if self.peer is not None:
            self.peer.incoming_queue.purge(self)

    # -- link state --------------------------------------------------------
    def _update_link_down(self) -> bool:
        down = self.admin_down or bool(self.carrier_down)
        if down == self.link_down:
            return False
        self.link_down = down
        self.link_status_changed()
        if self.peer is not None:
            self.peer.peer_ready_changed()
        return True

    def set_link(self, up: bool) -> None:
        """QMP set_link: this NetClient, and its peer too if that is a NIC.

        As qmp_set_link does, link_status_changed is called even when the
        state does not change (an e1000 then restarts autonegotiation). Hub
        ports and backends on the peer side keep their state.
        """
        self.admin_down = not up
        self.link_down = self.admin_down or bool(self.carrier_down)
        self.link_status_changed()
        peer = self.peer
        if peer is not None and peer.is_nic:
            peer.admin_down = not up
            peer.link_down = peer.admin_down or bool(peer.carrier_down)
            peer.link_status_changed()
        if peer is not None:
            peer.peer_ready_changed()

    def set_carrier(self, up: bool, source: str = "link") -> None:
        """Carrier from ``source`` ("link" or "backend") went up or down.

        The NetClient is link_down while any source is down (or admin down),
        as QEMU sets nc->link_down when a stream backend loses its socket.
        """
        if up:
            self.carrier_down.discard(source)
        else:
            self.carrier_down.add(source)
        if self._update_link_down() and up:
            self.flush_queued_packets()

    @property
    def dropped_total(self) -> int:
        """Every frame this NetClient dropped, whatever the cause."""
        s = self.stats
        q = self.incoming_queue
        return (s.dropped_link_down + s.dropped_refused + s.dropped_malformed
                + s.dropped_filter + s.dropped_switch + q.dropped + q.purged)
