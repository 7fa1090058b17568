"""A Scheduler on the real clock whose timers only fire when the test says so.

``now_ns`` is the monotonic clock plus whatever ``advance`` added, so a
device's time budget (virtwire.hw.timer.SliceBudget) works as it does on the
AsyncioScheduler; ``turn`` is one pass of an event loop: it fires the timers
that are due now, but not the ones they set (those wait for the next turn),
so a chain of continuations never runs away inside one call.
"""

from __future__ import annotations

import heapq
import itertools
import time

from virtwire.hw.timer import ManualTimer, TimerCallback


class WallClockScheduler:
    """Real time plus virtual jumps; timers fire in ``turn`` / ``advance``."""

    def __init__(self) -> None:
        self._offset = 0
        self._heap: list[tuple[int, int, ManualTimer]] = []
        self._seq = itertools.count()

    def now_ns(self) -> int:
        return time.monotonic_ns() + self._offset

    def call_later(self, delay_ns: int, fn: TimerCallback) -> ManualTimer:
        timer = ManualTimer(self.now_ns() + max(0, delay_ns), fn)
        heapq.heappush(self._heap, (timer.deadline_ns, next(self._seq), timer))
        return timer

    @property
    def pending(self) -> int:
        return sum(1 for _, _, t in self._heap if t.pending)

    def turn(self) -> int:
        """Fire every timer due now (not those they set); how many fired."""
        now = self.now_ns()
        due = []
        while self._heap and self._heap[0][0] <= now:
            due.append(heapq.heappop(self._heap)[2])
        fired = 0
        for timer in due:
            if timer.pending:
                timer.fired = True
                fired += 1
                timer.fn()
        return fired

    def advance(self, ns: int) -> int:
        """Jump the clock forward by ``ns`` and run one turn."""
        self._offset += max(0, ns)
        return self.turn()
