"""NetFilter: a NetClient's chain of filters, with QEMU's net/filter.c walk.

Every NetClient holds ``filters``, head first. A filter sees the packets of
its ``direction``: "tx" the NetClient sends, "rx" its peer sends to it, "all"
both. A send (``NetClient.send_packet_async``) walks:

1. the sender's filters that see "tx", head to tail;
2. then the receiver's filters that see "rx", tail to head;
3. then the receiver's incoming_queue, as before.

A filter's ``receive`` returns 0 to pass the packet on, or the packet's size
to say it took it; the sender then counts it as sent (no sent_cb will fire),
so a filter never holds a link's credits or a backend's read. A filter that
took a packet may hand it on later with ``pass_to_next``: the walk resumes
at the next filter in the same direction and ends in the receiver's
incoming_queue, with no sent_cb (a full queue drops and counts it).

One deliberate difference from QEMU (documented in docs/filters.md): a packet
a "tx" filter hands on later also walks the receiver's "rx" filters, as a
packet passed on at once does. QEMU's qemu_netfilter_pass_to_next sends it
straight to the incoming_queue, so a dump on the receiver would miss packets
that a buffer on the sender delayed.

Filters are added (``add_filter``: position head, tail or another filter's
id, insert behind or before it), changed (``update``, all-or-nothing) and
removed (``remove_filter``) at runtime. Turning a filter's status off, or
removing it, releases what it holds. Every packet a filter drops is counted by
cause in its ``stats`` and in its NetClient's ``stats.dropped_filter``.

Batches (``NetClient.send_packets`` without a sent_cb or with ``queue_rest``,
as hubs and links send) walk the chain together: ``filter_send_batch`` lays
out the walk order (the sender's "tx" filters head to tail, then the
receiver's "rx" filters tail to head) and hands the batch to each filter that
overrides ``receive_iov_batch`` (netem, dump) at once; runs of filters that do
not are walked frame by frame together, so what they see, and in what order,
is what single sends give them. A filter that hands a frame on synchronously
during the walk (``pass_to_next``: a netem duplicate or corrupted frame) puts
it in the batch where a single send would have delivered it, and it goes on
with no sent_cb. The surviving frames reach the receiver's incoming_queue in
one ``send_batch``. See docs/filters.md.

Filters with timers take a ``Scheduler`` (an asyncio loop is one: its
``time`` and ``call_later``); tests pass a manual clock.
"""

from __future__ import annotations

import collections
import enum
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, cast

from virtwire.errors import ConfigError, LimitError, NotFoundError

if TYPE_CHECKING:
    from virtwire.net.net import NetClient

__all__ = [
    "MAX_FILTERS",
    "FilterBatch",
    "FilterContext",
    "FilterDirection",
    "FilterStats",
    "NetFilter",
    "Scheduler",
    "TimerHandle",
    "check_filter_id",
    "filter_send",
    "filter_send_batch",
]

#: Filters one NetClient takes; one more is refused (LimitError) and counted.
MAX_FILTERS = 16
#: Filter ids: like QEMU object ids, a letter then letters, digits, "-", "_", ".".
_ID_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


class FilterDirection(enum.Enum):
    """QEMU's NetFilterDirection (the ``queue`` property)."""

    ALL = "all"
    RX = "rx"
    TX = "tx"

    @classmethod
    def parse(cls, text: str) -> FilterDirection:
        try:
            return cls(text)
        except ValueError:
            raise ConfigError(f"filter direction {text!r} is not one of rx, tx, all") from None

    def sees(self, direction: FilterDirection) -> bool:
        return self is FilterDirection.ALL or self is direction


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    """What filters with timers need: ``asyncio.AbstractEventLoop`` has both."""

    def time(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle: ...


@dataclass
class FilterStats:
    """Counters of one filter (mirrors virtwire.v1.FilterCounters)."""

    #: Packets handed to the filter.
    seen: int = 0
    #: Passed on at once.
    passed: int = 0
    #: Taken, to be handed on later (or dropped).
    taken: int = 0
    #: Handed on later through pass_to_next.
    released: int = 0
    #: Packets the filter added (a mirror's copies, a duplicate, an injection).
    added: int = 0
    #: Dropped, by cause ("loss", "queue_full", "detached", ...).
    dropped: dict[str, int] = field(default_factory=lambda: collections.defaultdict(int))

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


def check_filter_id(fid: str) -> str:
    if not isinstance(fid, str) or not _ID_RE.fullmatch(fid):
        raise ConfigError(f"filter id {fid!r}: use 1-64 letters, digits, '-', '_' or '.', "
                          "starting with a letter")
    return fid


def parse_status(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("on", "true", "1"):
        return True
    if value in ("off", "false", "0"):
        return False
    raise ConfigError(f"filter status {value!r} is not on or off")


class FilterBatch:
    """Frames walking a filter chain together, in order; ``handed[i]`` is True
    for a frame a filter handed on during the walk (pass_to_next) rather than
    one the sender sent (None: there are none). ``passed`` counts, for the
    filter that built this batch from another, the frames of that other it
    passed on (the rest it took)."""

    __slots__ = ("frames", "handed", "passed")

    def __init__(self, frames: list[bytes] | None = None) -> None:
        self.frames: list[bytes] = [] if frames is None else frames
        self.handed: list[bool] | None = None
        self.passed = 0

    def __len__(self) -> int:
        return len(self.frames)

    def add(self, data: bytes, handed: bool = False) -> None:
        """Append a frame; ``handed``: one a filter handed on."""
        if handed and self.handed is None:
            self.handed = [False] * len(self.frames)
        self.frames.append(data)
        if self.handed is not None:
            self.handed.append(handed)

    def pass_on(self, source: FilterBatch, i: int) -> None:
        """Frame ``i`` of ``source`` passes on (it keeps its mark)."""
        self.add(source.frames[i], source.handed is not None and source.handed[i])
        self.passed += 1

    @property
    def handed_count(self) -> int:
        return sum(self.handed) if self.handed is not None else 0


#: A walk order: each filter with the direction it sees the packets in.
_Order = list[tuple["NetFilter", FilterDirection]]


class _Collect:
    """A batch walk in progress over ``run`` (part of a walk order): where
    ``pass_to_next`` from one of its filters, for ``sender``, puts a frame."""

    __slots__ = ("out", "run", "sender")

    def __init__(self, run: _Order, sender: NetClient, out: FilterBatch) -> None:
        self.run = run
        self.sender = sender
        self.out = out


@dataclass
class FilterContext:
    """What a service gives its filters. It comes only from the service's own
    command line, never from an RPC: a dump's directory, the chardevs a mirror
    or redirector may name, and how to find a NetClient by name."""

    scheduler: Scheduler | None = None
    #: Where ``dump`` filters write (their ``file`` is a name inside it).
    dump_dir: Path | None = None
    #: Chardevs by id (``--chardev`` on the command line): virtwire.net.chardev.
    chardevs: Mapping[str, Any] = field(default_factory=dict)
    #: NetClient by name (a mirror to another NetClient); NotFoundError if none.
    netclient: Callable[[str], NetClient] | None = None


class NetFilter:
    """QEMU's NetFilterState: one filter on one NetClient (``netdev``).

    Subclasses override ``filter_receive`` (NetFilterClass.receive_iov), and
    ``release`` and ``cleanup`` if they hold packets, and declare the
    properties they take in ``PROPERTIES`` (parsed by ``configure``). Those
    for which a whole batch is cheaper override ``receive_iov_batch`` too.
    """

    #: Set while a batch walk runs over this filter (see ``pass_to_next``).
    _collect: _Collect | None = None

    #: The filter type, e.g. "dump", "buffer", "mirror", "netem".
    kind: ClassVar[str] = "generic"
    #: Property name -> one-line help; ``configure`` gets only these.
    PROPERTIES: ClassVar[Mapping[str, str]] = {}

    def __init__(self, fid: str, *, direction: FilterDirection | str = FilterDirection.ALL,
                 status: bool = True, scheduler: Scheduler | None = None) -> None:
        self.id = check_filter_id(fid)
        self.direction = (direction if isinstance(direction, FilterDirection)
                          else FilterDirection.parse(direction))
        self.status = status
        self.netdev: NetClient | None = None
        self.scheduler = scheduler
        self.stats = FilterStats()
        #: What the host gave filters (set by ``create``).
        self.context = FilterContext(scheduler=scheduler)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} on {self.netdev}>"

    # -- NetFilterClass callbacks -----------------------------------------------
    def filter_receive(self, direction: FilterDirection, sender: NetClient, flags: int,
                       data: bytes) -> int:
        """0: pass ``data`` on; len(data): taken (hand it on later or drop it)."""
        return 0

    def receive_iov_batch(self, direction: FilterDirection, sender: NetClient, flags: int,
                          batch: FilterBatch) -> FilterBatch:
        """``filter_receive`` for a whole batch: the frames to pass on, in
        order (``batch`` itself when every frame passes unchanged), their
        ``passed`` counted. This default hands each frame to
        ``filter_receive``; a frame it hands on meanwhile (``pass_to_next``)
        lands in the result where a single send would have delivered it.
        The walk counts seen/passed/taken."""
        collect = self._collect
        out = collect.out if collect is not None else FilterBatch()
        receive = self.filter_receive
        for i, data in enumerate(batch.frames):
            if not receive(direction, sender, flags, data):
                out.pass_on(batch, i)
        return out

    def release(self) -> None:
        """Hand on everything held now (status off, removal)."""

    def cleanup(self) -> None:
        """The filter is gone: cancel timers, close files and sockets."""

    @classmethod
    def create(cls, fid: str, props: Mapping[str, str], ctx: FilterContext, *,
               direction: FilterDirection | str = FilterDirection.ALL,
               status: bool = True) -> NetFilter:
        """A new filter of this type from its properties (ConfigError if bad)."""
        nf = cls(fid, direction=direction, status=status, scheduler=ctx.scheduler)
        nf.context = ctx
        nf.configure(props, initial=True)
        return nf

    def configure(self, props: Mapping[str, str], initial: bool = False) -> None:
        """Check ``props`` and apply them all, or raise ConfigError and change
        nothing. The base takes ``status``; subclasses parse their own (with
        ``initial`` on creation, when required ones must be there), then
        ``apply`` takes every parsed value."""
        unknown = sorted(set(props) - set(self.PROPERTIES) - {"status"})
        if unknown:
            raise ConfigError(f"filter {self.kind} {self.id}: unknown propert"
                              f"{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; "
                              f"it takes {', '.join(['status', *self.PROPERTIES]) }")
        status = parse_status(props["status"]) if "status" in props else None
        parsed = self.parse_properties({k: v for k, v in props.items() if k != "status"},
                                       initial)
        self.apply(parsed)
        if status is not None:
            self.set_status(status)

    def parse_properties(self, props: Mapping[str, str], initial: bool) -> dict[str, Any]:
        """The subclass's properties parsed (ConfigError on a bad one)."""
        return dict(props)

    def apply(self, parsed: Mapping[str, Any]) -> None:
        """Take properties ``parse_properties`` accepted; must not fail."""

    def properties(self) -> dict[str, str]:
        """The current properties, as ``configure`` takes them (for listing)."""
        return {}

    def counters(self) -> dict[str, int]:
        """Counters of the filter's own kind, beyond ``stats`` (netem's
        delayed, reordered...), by name; the List RPC shows them."""
        return {}

    # -- filter.c ---------------------------------------------------------------------
    def set_status(self, on: bool) -> None:
        """status=off lets everything through, and releases what is held."""
        was = self.status
        self.status = on
        if was and not on:
            self.release()

    def now(self) -> float:
        return self.require_scheduler().time()

    def require_scheduler(self) -> Scheduler:
        if self.scheduler is None:
            import asyncio
            try:
                self.scheduler = asyncio.get_running_loop()
            except RuntimeError:
                raise ConfigError(f"filter {self.kind} {self.id} needs an event loop") from None
        return self.scheduler

    def resolved_direction(self, sender: NetClient | None) -> FilterDirection:
        """The direction of a packet this filter handles: its own, or for an
        "all" filter TX if its NetClient sent the packet, RX otherwise."""
        if self.direction is not FilterDirection.ALL:
            return self.direction
        return FilterDirection.TX if sender is self.netdev else FilterDirection.RX

    def drop(self, cause: str, count: int = 1) -> None:
        """Count ``count`` packets dropped by this filter for ``cause``."""
        self.stats.dropped[cause] += count
        if self.netdev is not None:
            self.netdev.stats.dropped_filter += count

    def pass_to_next(self, sender: NetClient | None, flags: int, data: bytes,
                     direction: FilterDirection | None = None) -> int:
        """qemu_netfilter_pass_to_next: walk on from this filter, then deliver.

        ``direction`` is needed only for "all" filters handing on a packet
        whose sender cannot tell (an injection). Returns what the next filter
        or the incoming_queue returned (0: queued there).
        """
        netdev = self.netdev
        if netdev is None or sender is None:
            self.drop("detached")
            return len(data)
        if direction is None:
            direction = self.resolved_direction(sender)
        if direction is FilterDirection.ALL:
            raise ValueError("pass_to_next needs a direction")
        collect = self._collect
        if collect is not None and collect.sender is sender:
            # Inside a batch walk over us: on through the rest of its run, then
            # into the batch, where a single send would have delivered it.
            for at, (nf, d) in enumerate(collect.run):
                if nf is self and d is direction:
                    ret = _walk_frame(collect.run[at + 1:], sender, flags, data)
                    if not ret:
                        collect.out.add(data, True)
                    return ret
        chain = netdev.filters
        at = self._position(chain, direction)
        if direction is FilterDirection.TX:
            ret = _walk(chain[at + 1:], FilterDirection.TX, sender, flags, data)
            if ret:
                return ret
            receiver = sender.peer
            if receiver is None:
                self.drop("no_peer")
                return len(data)
            ret = _walk(receiver.filters[::-1], FilterDirection.RX, sender, flags, data)
        else:
            receiver = netdev
            ret = _walk(chain[:max(at, 0)][::-1], FilterDirection.RX, sender, flags, data)
        if ret:
            return ret
        return receiver.incoming_queue.send(sender, flags, data, None)

    def _position(self, chain: list[NetFilter], direction: FilterDirection) -> int:
        """Our index in ``chain``, where a hand-on resumes after; if we were
        removed while holding packets, the end they were going from (the
        whole chain is walked)."""
        try:
            return chain.index(self)
        except ValueError:
            return -1 if direction is FilterDirection.TX else len(chain)

    def pass_batch_to_next(self, sender: NetClient | None, flags: int, frames: list[bytes],
                           direction: FilterDirection | None = None) -> None:
        """``pass_to_next`` for each of ``frames`` (one sender), in order, as one
        batch: the rest of the walk as ``filter_send_batch`` does it, then one
        ``send_batch`` (no sent_cb) to the receiver's incoming_queue."""
        netdev = self.netdev
        if not frames:
            return
        if netdev is None or sender is None or self._collect is not None:
            for data in frames:
                self.pass_to_next(sender, flags, data, direction)
            return
        if direction is None:
            direction = self.resolved_direction(sender)
        if direction is FilterDirection.ALL:
            raise ValueError("pass_batch_to_next needs a direction")
        chain = netdev.filters
        at = self._position(chain, direction)
        if direction is FilterDirection.TX:
            receiver = sender.peer
            if receiver is None:
                # As pass_to_next: the sender's later filters still see them.
                for data in frames:
                    self.pass_to_next(sender, flags, data, direction)
                return
            order = _order(chain[at + 1:], FilterDirection.TX)
            order += _order(receiver.filters[::-1], FilterDirection.RX)
        else:
            receiver = netdev
            order = _order(chain[:max(at, 0)][::-1], FilterDirection.RX)
        batch = _walk_batch(order, sender, flags, FilterBatch(frames))
        if batch.frames:
            receiver.incoming_queue.send_batch(sender, batch.frames, None)


def _order(filters: list[NetFilter], direction: FilterDirection) -> _Order:
    """Of ``filters`` (in walk order), those that are on and see ``direction``."""
    return [(nf, direction) for nf in filters if nf.status and nf.direction.sees(direction)]


def _batches(nf: NetFilter) -> bool:
    """Whether ``nf`` takes batches at once (overrides receive_iov_batch)."""
    return type(nf).receive_iov_batch is not NetFilter.receive_iov_batch


def _walk_frame(run: _Order, sender: NetClient, flags: int, data: bytes) -> int:
    """``_walk`` over a walk order that is already filtered."""
    for nf, direction in run:
        stats = nf.stats
        stats.seen += 1
        ret = nf.filter_receive(direction, sender, flags, data)
        if ret:
            stats.taken += 1
            return ret
        stats.passed += 1
    return 0


def _walk_batch(order: _Order, sender: NetClient, flags: int, batch: FilterBatch) -> FilterBatch:
    """``batch`` through the filters of ``order``: a filter that overrides
    receive_iov_batch gets it whole; each run of filters that do not is
    walked frame by frame (each frame through the whole run before the next
    one, as single sends go). Returns what passed all of them."""
    i = 0
    n_order = len(order)
    while i < n_order and batch.frames:
        nf, direction = order[i]
        if _batches(nf):
            run = order[i:i + 1]
            i += 1
        else:
            j = i + 1
            while j < n_order and not _batches(order[j][0]):
                j += 1
            run = order[i:j]
            i = j
        out = FilterBatch()
        collect = _Collect(run, sender, out)
        saved = [f._collect for f, _ in run]
        for f, _ in run:
            f._collect = collect
        try:
            if len(run) == 1 and _batches(nf):
                n = len(batch.frames)
                result = nf.receive_iov_batch(direction, sender, flags, batch)
                passed = n if result is batch else result.passed
                if result is not out and out.frames:
                    # Frames handed on meanwhile into a batch the filter did not
                    # build on: they go first (they were handed on before it ended).
                    for k in range(len(result.frames)):
                        out.pass_on(result, k)
                    result = out
                stats = nf.stats
                stats.seen += n
                stats.passed += passed
                stats.taken += n - passed
                result.passed = 0
                batch = result
            else:
                for k, data in enumerate(batch.frames):
                    if not _walk_frame(run, sender, flags, data):
                        out.pass_on(batch, k)
                out.passed = 0
                batch = out
        finally:
            for (f, _), old in zip(run, saved, strict=True):
                f._collect = old
    return batch


def filter_send_batch(sender: NetClient, receiver: NetClient, flags: int,
                      frames: list[bytes]) -> FilterBatch:
    """Steps 1 and 2 of a send, for a batch: what goes on to the receiver's
    incoming_queue (frames the filters took are gone; frames they handed on
    meanwhile are marked ``handed``)."""
    order = _order(sender.filters, FilterDirection.TX) if sender.filters else []
    if receiver.filters:
        order += _order(receiver.filters[::-1], FilterDirection.RX)
    return _walk_batch(order, sender, flags, FilterBatch(frames))


def _walk(filters: list[NetFilter], direction: FilterDirection, sender: NetClient,
          flags: int, data: bytes) -> int:
    """Hand ``data`` to each of ``filters`` (in walk order) that sees
    ``direction`` and is on; the first nonzero answer ends the walk."""
    for nf in filters:
        if nf.status and nf.direction.sees(direction):
            nf.stats.seen += 1
            ret = nf.filter_receive(direction, sender, flags, data)
            if ret:
                nf.stats.taken += 1
                return ret
            nf.stats.passed += 1
    return 0


def filter_send(sender: NetClient, receiver: NetClient, flags: int, data: bytes) -> int:
    """Steps 1 and 2 of a send: 0 to go on to the incoming_queue, else the size
    a filter took."""
    if sender.filters:
        ret = _walk(sender.filters, FilterDirection.TX, sender, flags, data)
        if ret:
            return ret
    if receiver.filters:
        return _walk(receiver.filters[::-1], FilterDirection.RX, sender, flags, data)
    return 0


class FilterChain:
    """The mixin half of NetClient that manages its ``filters``."""

    filters: list[NetFilter]
    filters_refused: int

    def iter_filters(self) -> Iterator[NetFilter]:
        return iter(self.filters)

    def filters_changed(self) -> None:
        """Called after a filter was added or removed (NetClient tells its peer)."""

    def find_filter(self, fid: str) -> NetFilter:
        for nf in self.filters:
            if nf.id == fid:
                return nf
        raise NotFoundError(f"{self}: no filter {fid!r}"
                            + (f"; it has {', '.join(f.id for f in self.filters)}"
                               if self.filters else "; it has none"))

    def add_filter(self, nf: NetFilter, position: str = "tail", insert: str = "behind") -> None:
        """netfilter_complete: place ``nf`` at ``position`` ("head", "tail" or
        "id=OTHER"), ``insert`` "behind" (after) or "before" OTHER."""
        if any(f.id == nf.id for f in self.filters):
            raise ConfigError(f"{self}: a filter {nf.id!r} is already there")
        if insert not in ("behind", "before"):
            raise ConfigError(f"filter insert {insert!r} is not behind or before")
        if position == "head":
            index = 0
        elif position == "tail":
            index = len(self.filters)
        elif position.startswith("id="):
            other = self.find_filter(position[3:])
            index = self.filters.index(other) + (1 if insert == "behind" else 0)
        else:
            raise ConfigError(f"filter position {position!r} is not head, tail or id=FILTER")
        if len(self.filters) >= MAX_FILTERS:
            self.filters_refused += 1
            raise LimitError(f"{self} already has {MAX_FILTERS} filters, the most it takes")
        nf.netdev = cast("NetClient", self)
        self.filters.insert(index, nf)
        self.filters_changed()

    def remove_filter(self, fid: str) -> NetFilter:
        """object-del: release what it holds, then take it out and clean up."""
        nf = self.find_filter(fid)
        nf.release()
        self.filters.remove(nf)
        nf.cleanup()
        nf.netdev = None
        self.filters_changed()
        return nf

    def remove_all_filters(self) -> None:
        for nf in list(self.filters):
            self.remove_filter(nf.id)
