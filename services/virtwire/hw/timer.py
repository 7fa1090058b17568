"""Timers for device models: QEMU's QEMU_CLOCK_VIRTUAL as a small protocol.

A device model never sleeps and never touches an event loop directly: it asks
a ``Scheduler`` for the time (``now_ns``) and to run a callback later
(``call_later``), and keeps the returned ``TimerHandle`` to cancel it
(QEMU's timer_mod / timer_del / timer_pending).

- ``AsyncioScheduler``: real (monotonic) time on the running asyncio loop, for
  the services.
- ``ManualScheduler``: virtual time that only moves when ``advance`` is
  called, firing due timers in deadline order; for unit tests and for a
  qtest-style harness that steps the clock (QEMU's ``clock_step``).

``SliceBudget`` is how a device model keeps one operation short: work that
outgrows it stops and resumes from a ``call_later(0, ...)`` continuation, so
the event loop runs in between (QEMU needs no such thing: its device work
runs on a vCPU or I/O thread, not on a shared event loop).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Protocol

NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000

TimerCallback = Callable[[], None]


class TimerHandle(Protocol):
    """A scheduled callback; ``cancel`` is idempotent and safe after it ran."""

    def cancel(self) -> None:
        ...


class Scheduler(Protocol):
    """A clock and a way to run a callback after a delay (both in nanoseconds)."""

    def now_ns(self) -> int:
        ...

    def call_later(self, delay_ns: int, fn: TimerCallback) -> TimerHandle:
        ...


class AsyncioScheduler:
    """Real time on an asyncio loop (the running one unless given)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def now_ns(self) -> int:
        return int(self.loop.time() * NS_PER_S)

    def call_later(self, delay_ns: int, fn: TimerCallback) -> TimerHandle:
        if delay_ns <= 0:
            # The next turn of the loop (slice continuations, the end of a
            # frame's budget: several per frame): no clock read, no timer heap.
            return self.loop.call_soon(fn)
        return self.loop.call_later(delay_ns / NS_PER_S, fn)


class ManualTimer:
    """A timer of a ManualScheduler."""

    __slots__ = ("cancelled", "deadline_ns", "fired", "fn")

    def __init__(self, deadline_ns: int, fn: TimerCallback) -> None:
        self.deadline_ns = deadline_ns
        self.fn = fn
        self.cancelled = False
        self.fired = False

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def pending(self) -> bool:
        return not (self.cancelled or self.fired)


class ManualScheduler:
    """Virtual time: starts at ``start_ns`` and moves only in ``advance``."""

    def __init__(self, start_ns: int = 0) -> None:
        self._now = start_ns
        self._heap: list[tuple[int, int, ManualTimer]] = []
        self._seq = itertools.count()

    def now_ns(self) -> int:
        return self._now

    def call_later(self, delay_ns: int, fn: TimerCallback) -> ManualTimer:
        timer = ManualTimer(self._now + max(0, delay_ns), fn)
        heapq.heappush(self._heap, (timer.deadline_ns, next(self._seq), timer))
        return timer

    def _drop_cancelled(self) -> None:
        while self._heap and not self._heap[0][2].pending:
            heapq.heappop(self._heap)

    def next_deadline(self) -> int | None:
        """The deadline of the earliest pending timer, or None."""
        self._drop_cancelled()
        return self._heap[0][0] if self._heap else None

    @property
    def pending(self) -> int:
        """How many timers are still pending."""
        return sum(1 for _, _, t in self._heap if t.pending)

    def advance(self, ns: int, max_events: int = 1_000_000) -> int:
        """Move the clock forward by ``ns``, firing every timer that falls due.

        Timers fire in deadline order (ties: in the order they were set), with
        the clock set to their deadline while they run; timers they set that
        fall due within the window fire too. Returns how many fired. A timer
        chain that keeps re-arming itself with no delay raises RuntimeError
        after ``max_events`` callbacks instead of hanging.
        """
        if ns < 0:
            raise ValueError("time only moves forward")
        target = self._now + ns
        fired = 0
        while True:
            self._drop_cancelled()
            if not self._heap or self._heap[0][0] > target:
                break
            deadline, _, timer = heapq.heappop(self._heap)
            self._now = max(self._now, deadline)
            timer.fired = True
            fired += 1
            if fired > max_events:
                raise RuntimeError("ManualScheduler.advance: too many timer events")
            timer.fn()
        self._now = target
        return fired

    def run_until_idle(self, limit_ns: int = 3600 * NS_PER_S) -> int:
        """Advance to each pending deadline in turn until none is left (or the limit)."""
        start = self._now
        fired = 0
        while True:
            deadline = self.next_deadline()
            if deadline is None or deadline - start > limit_ns:
                return fired
            fired += self.advance(deadline - self._now)


class SliceBudget:
    """How much work one device operation may do before it yields.

    An operation (an MMIO write, a queue flush, a continuation) opens a scope
    with ``begin``; the work inside charges units (``charge``) and asks ``spent``
    between steps. Nested operations share the outer scope. Two limits: a
    deterministic cap of ``units`` and ``slice_ns`` on the scheduler's clock.
    Under a ManualScheduler the clock stands still inside an operation, so only
    the unit cap applies and results are reproducible; under the
    AsyncioScheduler the time limit normally decides. ``spent`` is False until
    something was charged, so every slice makes progress.
    """

    __slots__ = ("_charged", "_deadline_ns", "_left", "active", "scheduler", "slice_ns",
                 "units")

    def __init__(self, scheduler: Scheduler, units: int, slice_ns: int) -> None:
        if units < 1 or slice_ns < 0:
            raise ValueError("a slice budget needs units >= 1 and slice_ns >= 0")
        self.scheduler = scheduler
        self.units = units
        self.slice_ns = slice_ns
        self.active = False
        self._left = 0
        self._charged = False
        self._deadline_ns = 0

    def begin(self) -> bool:
        """Open a scope; False (and nothing changes) when one is already open."""
        if self.active:
            return False
        self.active = True
        self._left = self.units
        self._charged = False
        self._deadline_ns = self.scheduler.now_ns() + self.slice_ns
        return True

    def end(self) -> None:
        self.active = False

    def charge(self, units: int) -> None:
        if self.active:
            self._left -= units
            self._charged = True

    def spent(self) -> bool:
        """True inside a scope that did some work and reached either limit."""
        if not (self.active and self._charged):
            return False
        return self._left <= 0 or self.scheduler.now_ns() >= self._deadline_ns
