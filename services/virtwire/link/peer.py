"""Links: a NetClient's peer living in another process, container or host.

A ``LinkPeer`` is a local NetClient that stands in for the remote peer. The
local NetClient sends to it exactly as to any peer: when the link can take a
frame (link up, a credit left, the remote NetClient can receive) ``receive``
puts it in the outgoing batch; otherwise it returns 0, so the frame waits in
the LinkPeer's incoming_queue (bounded at nq_maxlen, drops counted) and an
async sender pauses until its sent_cb fires, as with QEMU's tap_read_poll.

On the far side, frames leave the stream into the peer NetClient, with the
remote LinkPeer as their sender: delivered at once, or waiting in its
incoming_queue with a sent_cb (``_credit``). A credit goes back for each as it
leaves that queue (lazily: ``credit_batch`` at a time, or with other news). So
at most ``window`` frames are ever in flight or waiting at the receiver, a
fast sender is paced by the slowest receiver, and the only queues are QEMU's
own.

Neither side trusts the other's accounting (a peer may be hostile):
- credits: what we hold, plus what waits for the writer, plus what went on the
  wire and has not been credited back, never exceeds our ``window``. A credit
  can only return a frame we put on the wire; credits beyond that are clamped
  away and counted (``credits_refused``), not an error, so a peer with a larger
  window still works. A peer that grants itself credits and never reads thus
  holds at most ``window`` frames here (the writer waits on gRPC's flow
  control), and the rest waits in the incoming_queue (nq_maxlen, drops counted).
- frames: a peer that sends more frames than the credits we granted it, or
  keeps more than ``window`` completion requests pending, breaks the protocol:
  the session ends with a LimitError (FAILED_PRECONDITION to a dialler), and
  ``protocol_errors`` counts it.

This module is the protocol core, with no transport: a session (one Connect
stream, in ``virtwire.server.link``) ``attach``es, hands every ``Batch`` that
arrives to ``on_batch``, writes what ``take_batch`` returns (waiting in
``wait_for_output`` while it returns None), and ``detach``es when the stream
ends. While no session is attached both ends see link_down.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from virtwire.errors import ConfigError, LimitError
from virtwire.net.net import ROOM_ANY, NetClient
from virtwire.net.queue import NET_PACKET_FLAG_SENT_CB
from virtwire.tracing import (
    STATE,
    TracedFrame,
    add_span,
    any_traced,
    from_wire,
    now_ns,
    to_wire,
)

logger = logging.getLogger(__name__)

#: Frames a receiver lets be in flight towards it (its initial credit grant).
DEFAULT_WINDOW = 2048
#: Most frames and bytes in one LinkBatch.
MAX_BATCH_FRAMES = 512
MAX_BATCH_BYTES = 1 << 20
#: How often a LinkPeer that advertised "cannot receive" re-checks by itself.
READY_POLL_S = 0.02
#: How long either side waits for the other's LinkHello / LinkWelcome.
HELLO_TIMEOUT_S = 10.0


class LinkRunState(enum.Enum):
    """State of the link behind a NetClient (virtwire.v1.LinkState)."""

    NO_PEER = "no_peer"
    CONNECTING = "connecting"
    UP = "up"


@dataclass(slots=True)
class Batch:
    """What one message of the link carries, either way (virtwire.v1.LinkBatch)."""

    frames: Sequence[bytes] = ()
    #: Index in ``frames`` -> completion id, for the frames that want a sent_cb.
    completion_requests: dict[int, int] = field(default_factory=dict)
    #: (completion id, ret) for frames of the other side's that were delivered
    #: or purged here.
    completions: list[tuple[int, int]] = field(default_factory=list)
    #: Credits granted back: frames of the other side's taken in here.
    credits: int = 0
    #: Whether the sender's NetClient can receive; None when unchanged.
    ready: bool | None = None
    #: With ``ready`` True: the sender's NetClient drops on arrival whatever it
    #: is sent (its link is down and no filter sees the frames), so the other
    #: side drops instead of sending, and counts the drops (``LinkPeer.discards``).
    discards: bool = False
    #: (index in ``frames``, ``tracing.to_wire`` context) of the traced frames:
    #: the context is the sender's ``link.send`` span (docs/links.md, Tracing).
    traces: Sequence[tuple[int, bytes]] = ()


class LinkPeer(NetClient):
    """The local stand-in for a NetClient on the far side of a link."""

    kind = "link"

    def __init__(self, local: NetClient, remote_name: str, window: int = DEFAULT_WINDOW) -> None:
        super().__init__(f"{local.name}>{remote_name}")
        # A waiting frame's flags decide whether it crosses with a completion request.
        self.incoming_queue.flags_ignored = False
        self.local = local
        self.remote_name = remote_name
        self.window = window
        local.peer = self
        self.peer = local
        #: The attached session (any object: only its identity matters), or None.
        self.session: object | None = None
        #: What carries the batches of the current (or last) session: "grpc"
        #: (the Connect stream) or "unix" (the same-host socket); "" before any.
        self.transport = ""
        # Credits the remote granted us, and whether its NetClient can receive.
        self.credits = 0
        self.remote_ready = False
        #: The remote said its NetClient drops whatever arrives: we drop instead.
        self.remote_discards = False
        # Outgoing state, drained by the session's writer.
        self.out_frames: list[bytes] = []
        self.out_requests: list[tuple[int, int]] = []  # (index in out_frames, id)
        self.out_completions: list[tuple[int, int]] = []
        self.out_credits = 0
        self.out_ready: bool | None = None
        self.advertised_ready = False
        self.out_discards = False
        self.advertised_discards = False
        self._next_completion_id = 1
        self._wakeup = asyncio.Event()
        #: Called whenever ``take_batch`` may have something: wakes a pulling
        #: session's writer; a pushing session (the same-host socket) replaces
        #: it with its own scheduler while attached.
        self.kick: Callable[[], None] = self._wakeup.set
        #: Credits are returned once this many are owed, or with frames or
        #: other news going out anyway: a lone frame costs no extra message.
        #: An eighth of the smaller window (set again as a session attaches:
        #: the remote holds at most its own window of our credits).
        self.credit_batch = max(1, window // 8)
        #: Frames handed to the writer whose credit has not come back.
        self.on_wire = 0
        #: Credits we granted the remote that it has not used (or whose grant
        #: is still waiting for the writer).
        self.remote_credits = 0
        #: The remote's frames with a completion request queued here, unanswered.
        self.pending_requests = 0
        # Counters specific to links.
        self.completions_requested = 0
        self.completions_refused = 0
        self.batches_sent = 0
        #: Credits the remote granted beyond our window (clamped away).
        self.credits_refused = 0
        #: Sessions ended because the remote broke the protocol.
        self.protocol_errors = 0
        #: id() of each traced frame in ``out_frames`` -> when we took it (the
        #: start of its ``link.send`` span); at most one per frame there.
        self._trace_start: dict[int, int] = {}
        #: Traced frames dropped for a discarding remote, and when: their
        #: ``link.discard`` spans wait for the writer's next look.
        self._discarded_traces: list[tuple[TracedFrame, int]] = []
        # Not up until a session attaches.
        self.set_carrier(False)
        local.set_carrier(False)

    @property
    def state(self) -> LinkRunState:
        return LinkRunState.UP if self.session is not None else LinkRunState.CONNECTING

    # -- NetClientInfo: frames from the local NetClient towards the wire ------
    def _wire_open(self) -> bool:
        """A frame may go on the wire now: link up, a credit, the remote ready."""
        return self.session is not None and self.credits > 0 and self.remote_ready

    @property
    def discards(self) -> bool:
        """Frames for the remote are dropped here, counted as our link_down
        drops (they would be dropped on arrival: the remote NetClient is
        link_down, nothing filters them): no wire, no credit, no wake-up there."""
        return self.remote_discards and self.session is not None and not self.link_down

    def can_receive(self) -> bool:
        if self.session is None:
            # A broken link drops (counted, link_down) rather than stalls.
            return True
        if self.discards:
            return True
        # While a backlog waits for the wire, new frames queue behind it: so a
        # hub port does not count as ready while its link is still catching up.
        return self._wire_open() and not self.incoming_queue.packets

    def receive_flags(self, data: bytes, flags: int) -> int:
        if not self._wire_open():
            return 0
        self.credits -= 1
        if flags & NET_PACKET_FLAG_SENT_CB:
            self.out_requests.append((len(self.out_frames), self._next_completion_id))
            self._next_completion_id += 1
            self.completions_requested += 1
        self.out_frames.append(data)
        if STATE.live and type(data) is TracedFrame:
            self._trace_start[id(data)] = now_ns()
        self.kick()
        return len(data)

    def receive_room(self) -> int:
        """Frames we take now: our credits, while the wire is open and nothing
        waits; any number while we drop for a discarding remote."""
        if self.discards:
            return ROOM_ANY
        return self.credits if self.can_receive() else 0

    def _deliver_packet(self, sender: NetClient | None, flags: int, data: bytes) -> int:
        if self.discards:
            self._discard((data,))
            return len(data)
        return super()._deliver_packet(sender, flags, data)

    def _discard(self, frames: Sequence[bytes]) -> None:
        """Drop ``frames`` for a discarding remote, counted. A traced one ends
        its trace with a ``link.discard`` span where ``link.send`` would be:
        recorded as the writer next looks (``take_batch``), so that, as for
        ``link.send``, its parent is what the sending hop set (``hub.forward``)."""
        self.stats.dropped_link_down += len(frames)
        if STATE.live and any_traced(frames):
            start = now_ns()
            held = self._discarded_traces
            for data in frames:
                if type(data) is TracedFrame:
                    held.append((data, start))
            if len(held) >= MAX_BATCH_FRAMES:
                self._end_discards()
            self.kick()

    def _end_discards(self) -> None:
        """The ``link.discard`` spans of the traced frames dropped since the last look."""
        attrs: dict[str, str | int] = {"netclient": self.local.name,
                                       "link.peer": self.remote_name,
                                       "drop.reason": "link_down"}
        held, self._discarded_traces = self._discarded_traces, []
        for data, start in held:
            add_span("link.discard", data.ctx, start, None, attrs)

    def deliver_packets(self, sender: NetClient, frames: Sequence[bytes],
                        recheck: bool = False) -> int:
        """A batch of ``receive_flags``: as many frames as there are credits go
        in the outgoing batch; at the first that finds none the NetClient stops
        receiving, as a 0 from ``receive`` makes it."""
        if self.discards:
            self._discard(frames)
            return len(frames)
        if not self.batch_fast(frames):
            return super().deliver_packets(sender, frames, recheck)
        if not self._wire_open():
            self.receive_disabled = True
            return 0
        taken = min(self.credits, len(frames))
        self.credits -= taken
        if taken == len(frames):
            self.out_frames.extend(frames)
        else:
            self.out_frames.extend(frames[:taken])
            self.receive_disabled = True
        stats = self.stats
        stats.rx_frames += taken
        stats.rx_bytes += sum(map(len, frames[:taken])) if taken < len(frames) \
            else sum(map(len, frames))
        if any_traced(frames):
            self._note_traced(frames[:taken] if taken < len(frames) else frames)
        self.kick()
        return taken

    def _note_traced(self, frames: Sequence[bytes]) -> None:
        """When the traced ones among ``frames`` (just taken) started their link.send."""
        t = now_ns()
        starts = self._trace_start
        for data in frames:
            if type(data) is TracedFrame:
                starts[id(data)] = t

    def flush_queued_packets(self, purge: bool = False) -> None:
        """Our backlog goes on the wire first, then the usual flush.

        Flushing our own queue before the hub peers' means that, when they
        look at our readiness, the backlog that made us not ready is gone.
        """
        self.receive_disabled = False
        self.incoming_queue.flush()
        super().flush_queued_packets(purge)

    def _local_discards(self) -> bool:
        """Whether the local NetClient drops on arrival whatever the remote
        sends it: link_down (a stream backend with no client, set_link down)
        with no filter on the way (QEMU runs the receiver's RX filters before
        its link_down drop, so a filter keeps frames coming)."""
        local = self.local
        return local.link_down and not local.filters and not self.filters

    def peer_ready_changed(self) -> None:
        ready = self.local.can_receive_packet()
        discards = ready and self._local_discards()
        if ready != self.advertised_ready or discards != self.advertised_discards:
            self.out_ready = ready
            self.advertised_ready = ready
            self.out_discards = self.advertised_discards = discards
            self.kick()

    # -- frames from the wire towards the local NetClient ----------------------
    def _completion_cb(self, cid: int) -> Callable[[NetClient, int], None]:
        session = self.session

        def sent_cb(_sender: NetClient, ret: int) -> None:
            if self.session is session and session is not None:
                self.pending_requests -= 1
                self.out_completions.append((cid, ret))
                self.kick()

        return sent_cb

    def _credit(self, _sender: NetClient, _ret: int) -> None:
        """sent_cb of a frame of the remote's that waited in our NetClient's
        queue: delivered, refused or purged, so its credit goes back (not
        after the session ended: a new one starts with a full window)."""
        if self.session is None:
            return
        self.out_credits += 1
        if self.out_credits >= self.credit_batch:
            self.kick()

    _credit.ignores_ret = True  # type: ignore[attr-defined]

    def _accept_credits(self, granted: int) -> None:
        """Take the remote's grant, clamped so held + waiting + on the wire <= window."""
        returned = min(granted, self.on_wire)
        self.on_wire -= returned
        room = self.window - self.credits - len(self.out_frames) - self.on_wire
        accepted = min(granted, max(room, 0))
        self.credits += accepted
        if accepted < granted:
            self.credits_refused += granted - accepted

    def protocol_error(self, message: str) -> LimitError:
        self.protocol_errors += 1
        return LimitError(f"link {self.name}: {message}")

    def on_batch(self, batch: Batch) -> None:
        """Take in one batch from the remote: its credits, readiness and
        completions, and its frames into the local NetClient's incoming_queue.

        Raises LimitError (counted in ``protocol_errors``) when the batch
        breaks the protocol; the session must then end.
        """
        was_sendable = self.can_receive_packet()
        frames = batch.frames
        if len(frames) > self.remote_credits:
            raise self.protocol_error(
                f"the peer sent {len(frames)} frames with {self.remote_credits} credits left "
                f"(window {self.window})")
        if batch.traces:
            frames = self._traced_frames(frames, batch.traces)
        if batch.credits:
            self._accept_credits(batch.credits)
        discards_changed = False
        if batch.ready is not None:
            self.remote_ready = batch.ready
            discards = batch.ready and batch.discards
            discards_changed = discards != self.remote_discards
            self.remote_discards = discards
        for _cid, ret in batch.completions:
            if ret < 0:
                self.completions_refused += 1
        if frames:
            self.remote_credits -= len(frames)
            requests = batch.completion_requests
            if not requests and all(frames):
                self.out_credits += self.send_packets(frames, self._credit, queue_rest=True)
            else:
                self._take_frames(frames, requests)
            if self.out_credits >= self.credit_batch or self.out_completions:
                self.kick()
        # Newly sendable (credits, remote ready): flush what waits for us, and,
        # if our NetClient is a hub port, what the other ports hold back.
        if (self._wire_open() or self.discards) and (
            not was_sendable or self.receive_disabled or self.incoming_queue.packets
            or discards_changed
        ):
            self.flush_queued_packets()
        self.peer_ready_changed()

    def _traced_frames(self, frames: Sequence[bytes], traces: Sequence[tuple[int, bytes]]
                       ) -> list[bytes]:
        """``frames`` with those ``traces`` lists made TracedFrames carrying the
        sender's link.send context; a bad entry (index outside the batch or
        twice, a malformed context) breaks the protocol."""
        n = len(frames)
        if len(traces) > n:
            raise self.protocol_error(f"{len(traces)} frame traces for {n} frames")
        out = list(frames)
        seen: set[int] = set()
        for index, context in traces:
            if not 0 <= index < n or index in seen:
                raise self.protocol_error(f"a bad frame trace for frame {index} of {n}")
            seen.add(index)
            try:
                ctx = from_wire(bytes(context))
            except ConfigError as exc:
                raise self.protocol_error(f"frame trace {index}: {exc}") from None
            out[index] = TracedFrame(out[index], ctx)
        return out

    def _take_frames(self, frames: Sequence[bytes], requests: dict[int, int]) -> None:
        """Frames of a batch one by one: empty ones, and those with a completion
        request (always queued, answered when delivered or purged)."""
        stats = self.stats
        plain: list[bytes] = []
        for i, frame in enumerate(frames):
            if not frame:
                stats.dropped_malformed += 1
                self.out_credits += 1
                continue
            cid = requests.get(i) if requests else None
            if cid is None:
                plain.append(frame)
                continue
            if plain:
                self.out_credits += self.send_packets(plain, self._credit, queue_rest=True)
                plain = []
            self.out_credits += 1
            if self.link_down:
                stats.dropped_link_down += 1
                self.out_completions.append((cid, len(frame)))
                continue
            if self.pending_requests >= self.window:
                raise self.protocol_error(
                    f"the peer keeps more than {self.window} completion requests pending")
            # As any send: counted, captured, through the filters, then queued.
            if self.send_packet_async(frame, self._completion_cb(cid)) == 0:
                self.pending_requests += 1
        if plain:
            self.out_credits += self.send_packets(plain, self._credit, queue_rest=True)

    def take_batch(self, max_bytes: int = MAX_BATCH_BYTES) -> Batch | None:
        """Everything waiting to go out, up to the batch limits (``max_bytes``
        of frames at most); None if nothing.

        The frames taken count as on the wire until the remote credits them back.
        """
        if self._discarded_traces:
            self._end_discards()
        batch = Batch()
        if self.out_frames:
            frames = self.out_frames
            n = 0
            size = 0
            limit = min(len(frames), MAX_BATCH_FRAMES)
            while n < limit and (n == 0 or size + len(frames[n]) <= max_bytes):
                size += len(frames[n])
                n += 1
            batch.frames = frames[:n]
            del frames[:n]
            self.on_wire += n
            if self._trace_start:
                batch.traces = self._send_spans(batch.frames)
            if self.out_requests:
                rest: list[tuple[int, int]] = []
                for index, cid in self.out_requests:
                    if index < n:
                        batch.completion_requests[index] = cid
                    else:
                        rest.append((index - n, cid))
                self.out_requests = rest
        if self.out_completions:
            batch.completions = self.out_completions
            self.out_completions = []
        if self.out_credits and (batch.frames or batch.completions or self.out_ready is not None
                                 or self.out_credits >= self.credit_batch):
            batch.credits = self.out_credits
            self.remote_credits += self.out_credits
            self.out_credits = 0
        if self.out_ready is not None:
            batch.ready = self.out_ready
            batch.discards = self.out_discards
            self.out_ready = None
        if not (batch.frames or batch.completions or batch.credits or batch.ready is not None):
            return None
        return batch

    def _send_spans(self, frames: Sequence[bytes]) -> list[tuple[int, bytes]]:
        """A ``link.send`` span for each traced frame of a batch going out (from
        when we took it to now, as the batch goes to the writer), parented on
        the frame's context; the batch's traces. The frame's own ``ctx`` stays
        as it is: the same frame object may be going out of other ports too."""
        traces: list[tuple[int, bytes]] = []
        if not any_traced(frames):
            return traces
        starts = self._trace_start
        attrs: dict[str, str | int] = {"netclient": self.local.name,
                                       "link.peer": self.remote_name,
                                       "link.transport": self.transport or "grpc"}
        for i, data in enumerate(frames):
            if type(data) is TracedFrame:
                # (The same frame object twice in a batch: the second from now.)
                start = starts.pop(id(data), None) or now_ns()
                ctx = add_span("link.send", data.ctx, start, None, attrs)
                traces.append((i, to_wire(ctx)))
        return traces

    def reset_kick(self) -> None:
        """Back to waking ``wait_for_output`` (a pushing session detached)."""
        self.kick = self._wakeup.set

    async def wait_for_output(self) -> None:
        """Return when ``take_batch`` may have something again.

        While the local NetClient said it cannot receive, this also returns
        every READY_POLL_S after restating its readiness, in case no flush
        announces the change.
        """
        self._wakeup.clear()
        if self.advertised_ready:
            await self._wakeup.wait()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), READY_POLL_S)
        self.peer_ready_changed()

    # -- sessions -------------------------------------------------------------
    def attach(self, session: object, credits: int, remote_ready: bool) -> None:
        """Start a session: the remote granted ``credits``, we granted ``window``."""
        self.session = session
        self.credits = 0
        self.on_wire = 0
        self.remote_credits = self.window
        self.pending_requests = 0
        self.remote_ready = remote_ready
        self.remote_discards = False
        self.out_frames.clear()
        self._trace_start.clear()
        self.out_requests.clear()
        self.out_completions.clear()
        self.out_credits = 0
        self._accept_credits(credits)
        self.credit_batch = max(1, min(self.window, credits) // 8)
        # The hello/welcome carried can_receive as it was then; restate it now
        # in the first batch, since it may have changed in between.
        self.advertised_ready = self.local.can_receive_packet()
        self.out_ready = self.advertised_ready
        self.out_discards = self.advertised_discards = \
            self.advertised_ready and self._local_discards()
        self.kick()
        self.set_carrier(True)
        self.local.set_carrier(True)
        self.flush_queued_packets()
        logger.info("link %s: up", self.name)

    def detach(self, reason: str) -> None:
        """End the session: link_down on both sides, what waited is dropped or purged."""
        if self.session is None:
            return
        self.session = None
        self.remote_discards = False
        if self._discarded_traces:
            self._end_discards()
        dropped = len(self.out_frames)
        self.stats.dropped_link_down += dropped
        self.out_frames.clear()
        self._trace_start.clear()
        self.out_requests.clear()
        self.out_completions.clear()
        self.set_carrier(False)
        self.local.set_carrier(False)
        # What waited for the wire is purged (senders get completion 0, so a
        # paused backend resumes and then sees link_down); what the remote had
        # queued at our NetClient goes too, its sender is gone.
        self.incoming_queue.purge(self.local)
        self.local.incoming_queue.purge(self)
        self.kick()
        logger.warning("link %s: down (%s); sent %d frames in %d batches", self.name, reason,
                       self.stats.rx_frames, self.batches_sent)

    def close(self) -> None:
        """Unplug from the local NetClient for good."""
        self.detach("closed")
        if self.local.peer is self:
            self.local.peer = None
            self.local.set_carrier(True)
