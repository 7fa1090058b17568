"""filter-buffer (QEMU's net/filter-buffer.c): crude delay by batching.

Every packet the filter sees is taken into its own queue; every ``interval``
microseconds (required, 1..60 s) the whole queue is released through
``pass_to_next``, in order. A frame the receiver cannot take then is handled
by its incoming_queue as any send without a sent_cb (queued, or dropped and
counted there when full): QEMU purges what cannot be delivered.

Releases fall on a fixed grid from the moment the interval was set, as
QEMU's periodic timer does, so a packet waits less than one interval; the
timer is armed only while packets are held, so an idle filter costs nothing.
A release hands on at most ``RELEASE_SLICE`` packets per turn of the event
loop (the rest follow on the next turns, before anything that arrived after
the tick). Status off and removal release everything at once.

The queue is bounded (``MAX_PACKETS`` packets, QEMU's nq_maxlen, and
``MAX_BYTES``); a packet beyond either is dropped and counted as
``queue_full``. See docs/filters.md.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from virtwire.errors import ConfigError
from virtwire.net.filter import FilterDirection, NetFilter, Scheduler, TimerHandle
from virtwire.net.filter_types import register_filter_type
from virtwire.net.queue import NQ_MAXLEN

if TYPE_CHECKING:
    from virtwire.net.net import NetClient

__all__ = ["MAX_BYTES", "MAX_INTERVAL_US", "MAX_PACKETS", "RELEASE_SLICE", "FilterBuffer"]

#: Longest interval taken: 60 s.
MAX_INTERVAL_US = 60_000_000
#: Most packets and bytes held; one more is dropped as "queue_full".
MAX_PACKETS = NQ_MAXLEN
MAX_BYTES = 64 << 20
#: Packets a timed release hands on per turn of the event loop.
RELEASE_SLICE = 256

_Held = tuple["NetClient", int, bytes, FilterDirection]


@register_filter_type
class FilterBuffer(NetFilter):
    """filter-buffer: holds packets, releases them all every interval."""

    kind = "buffer"
    PROPERTIES: ClassVar[Mapping[str, str]] = {
        "interval": f"release period in microseconds (required, 1..{MAX_INTERVAL_US})",
    }

    def __init__(self, fid: str, *, direction: FilterDirection | str = FilterDirection.ALL,
                 status: bool = True, scheduler: Scheduler | None = None) -> None:
        super().__init__(fid, direction=direction, status=status, scheduler=scheduler)
        self.interval_us = 0
        #: Held until the next tick.
        self.queue: collections.deque[_Held] = collections.deque()
        #: Released at the last tick, still being handed on slice by slice.
        self.releasing: collections.deque[_Held] = collections.deque()
        self.held_bytes = 0
        self.releases = 0
        self._epoch = 0.0
        self._timer: TimerHandle | None = None
        self._slice: TimerHandle | None = None

    # -- properties -----------------------------------------------------------------
    def parse_properties(self, props: Mapping[str, str], initial: bool) -> dict[str, Any]:
        what = f"filter buffer {self.id}"
        if "interval" not in props:
            if initial:
                raise ConfigError(f"{what}: interval= is required (microseconds between "
                                  "releases, 1.." f"{MAX_INTERVAL_US})")
            return {}
        text = props["interval"]
        try:
            interval = int(text, 10)
        except ValueError:
            raise ConfigError(f"{what}: interval={text[:32]!r} is not a whole number of "
                              "microseconds") from None
        if not 0 < interval <= MAX_INTERVAL_US:
            raise ConfigError(f"{what}: interval={interval} is out of range: it must be above "
                              f"0 and at most {MAX_INTERVAL_US} us (60 s)")
        self.require_scheduler()
        return {"interval": interval}

    def apply(self, parsed: Mapping[str, Any]) -> None:
        if "interval" in parsed:
            self.interval_us = parsed["interval"]
            self._epoch = self.now()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
                self._arm()

    def properties(self) -> dict[str, str]:
        return {"interval": str(self.interval_us)}

    def counters(self) -> dict[str, int]:
        """The buffer's own counters (FilterCounters.extra)."""
        return {"held": len(self.queue) + len(self.releasing), "held_bytes": self.held_bytes,
                "releases": self.releases}

    # -- the data path ------------------------------------------------------------------
    def filter_receive(self, direction: FilterDirection, sender: NetClient, flags: int,
                       data: bytes) -> int:
        if (len(self.queue) + len(self.releasing) >= MAX_PACKETS
                or self.held_bytes + len(data) > MAX_BYTES):
            self.drop("queue_full")
            return len(data)
        self.queue.append((sender, flags, data, direction))
        self.held_bytes += len(data)
        if self._timer is None:
            self._arm()
        return len(data)

    def _arm(self) -> None:
        """The timer, at the next point of the interval's grid."""
        scheduler = self.require_scheduler()
        interval = self.interval_us / 1e6
        now = scheduler.time()
        ticks = math.floor((now - self._epoch) / interval) + 1
        self._timer = scheduler.call_later(max(self._epoch + ticks * interval - now, 0.0),
                                           self._tick)

    def _tick(self) -> None:
        self._timer = None
        if not self.queue:
            return
        self.releases += 1
        self.releasing.extend(self.queue)
        self.queue.clear()
        if self._slice is None:
            self._release_slice()

    def _release_slice(self) -> None:
        self._slice = None
        releasing = self.releasing
        for _ in range(min(RELEASE_SLICE, len(releasing))):
            self._hand_on(*releasing.popleft())
        if releasing:
            self._slice = self.require_scheduler().call_later(0.0, self._release_slice)
        elif self.queue and self._timer is None:
            self._arm()  # packets that came back through us while we released

    def _hand_on(self, sender: NetClient, flags: int, data: bytes,
                 direction: FilterDirection) -> None:
        self.held_bytes -= len(data)
        self.stats.released += 1
        self.pass_to_next(sender, flags, data, direction)

    def release(self) -> None:
        """Status off, removal: hand on everything held, now."""
        for handle in (self._timer, self._slice):
            if handle is not None:
                handle.cancel()
        self._timer = self._slice = None
        if not (self.queue or self.releasing):
            return
        self.releases += 1
        held = self.releasing
        held.extend(self.queue)
        self.queue.clear()
        self.releasing = collections.deque()
        for item in held:
            self._hand_on(*item)
        if self.queue and self.status and self.netdev is not None:
            self._arm()  # came back through us (status on): wait for the next tick

    def cleanup(self) -> None:
        for handle in (self._timer, self._slice):
            if handle is not None:
                handle.cancel()
        self._timer = self._slice = None
        # Anything still here came back during the removal's release: nobody
        # will hand it on.
        left = len(self.queue) + len(self.releasing)
        if left:
            self.drop("removed", left)
        self.queue.clear()
        self.releasing.clear()
        self.held_bytes = 0
