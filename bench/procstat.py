"""What /proc says about the processes of a benchmarked path: CPU time and memory.

``cpu_seconds(pid)`` is the CPU time of the whole process (every thread,
living or exited), in nanoseconds: the kernel's CPU-time clock of the process
(``clock_getcpuclockid(3)``), the scheduler's runtime from which /proc/PID/stat
derives utime + stime. Those two fields (14 and 15) are rounded to clock ticks
of ``SC_CLK_TCK``, usually 10 ms, which on a load of a fraction of a second is
several percent of a process's time; they are read only where the clock
cannot be (``stat_cpu_seconds``). Children are not counted (cutime/cstime):
the benchmarks spawn every process of a path themselves and name each one.
``memory_kib(pid)`` is VmRSS and VmHWM from /proc/PID/status.

:class:`CpuMeter` takes a snapshot of labelled processes before a load and
one after, and turns the difference into µs per frame; :class:`RssSampler`
samples the resident sets during a load (its peak), next to the kernel's
high-water mark.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

#: Seconds per clock tick of /proc/PID/stat.
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")

# Fields of /proc/PID/stat after the ")" that closes comm: field 3 (state) is index 0.
_UTIME = 14 - 3
_STIME = 15 - 3

Labelled = Sequence[tuple[str, int]]


def parse_stat_cpu(text: str) -> float:
    """utime + stime in seconds from the text of /proc/PID/stat.

    comm (field 2) may hold spaces and parentheses, so fields are counted from
    the last ")".
    """
    rest = text[text.rindex(")") + 1:].split()
    return (int(rest[_UTIME]) + int(rest[_STIME])) * TICK_S


def parse_status_kib(text: str) -> dict[str, int]:
    """{"VmRSS": kB, "VmHWM": kB} from the text of /proc/PID/status (those present)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def process_clock(pid: int) -> int:
    """The clock id of ``pid``'s CPU time, as ``clock_getcpuclockid(3)`` makes
    it (Linux: the complement of the pid, shifted by 3, and 2 for the
    scheduler's runtime of the whole thread group)."""
    return (~pid << 3) | 2


def stat_cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` from /proc/PID/stat (in clock ticks), or None
    once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return parse_stat_cpu(f.read())
    except (OSError, ValueError, IndexError):
        return None


def cpu_seconds(pid: int) -> float | None:
    """The process's CPU time so far (ns precision), or None once it is gone."""
    try:
        return time.clock_gettime(process_clock(pid))
    except (OSError, OverflowError):
        # Not ours to read, or not a live process (gone, or a zombie: /proc
        # still has its times).
        return stat_cpu_seconds(pid)


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in KiB ({} once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return parse_status_kib(f.read())
    except (OSError, ValueError, IndexError):
        return {}


def unique_labels(labels: Sequence[str]) -> list[str]:
    """``tap, tap`` -> ``tap1, tap2``; unique names stay as they are."""
    out = []
    for i, name in enumerate(labels):
        if labels.count(name) > 1:
            name = f"{name}{labels[:i].count(name) + 1}"
        out.append(name)
    return out


@dataclass
class CpuMeter:
    """CPU seconds of labelled processes between :meth:`start` and :meth:`stop`."""

    procs: Labelled
    before: dict[str, float] = field(default_factory=dict)
    used_s: dict[str, float] = field(default_factory=dict)
    #: Processes that were gone at the second snapshot (their time is unknown).
    gone: list[str] = field(default_factory=list)

    def _snapshot(self) -> dict[str, float | None]:
        return {label: cpu_seconds(pid) for label, pid in self.procs}

    def start(self) -> None:
        self.before = {k: v for k, v in self._snapshot().items() if v is not None}

    def stop(self) -> None:
        for label, now in self._snapshot().items():
            then = self.before.get(label)
            if now is None or then is None:
                self.gone.append(label)
            else:
                self.used_s[label] = now - then

    def per_frame_us(self, frames: int) -> dict[str, float]:
        """µs per frame of each process, and their ``sum``."""
        if frames <= 0 or not self.used_s:
            return {}
        out = {label: s * 1e6 / frames for label, s in self.used_s.items()}
        out["sum"] = sum(self.used_s.values()) * 1e6 / frames
        return out


@dataclass
class RssSampler:
    """VmRSS of labelled processes every ``interval`` s while running; the peaks."""

    procs: Labelled
    interval: float = 0.05
    before_kib: dict[str, int] = field(default_factory=dict)
    peak_kib: dict[str, int] = field(default_factory=dict)
    hwm_kib: dict[str, int] = field(default_factory=dict)
    after_kib: dict[str, int] = field(default_factory=dict)
    samples: int = 0

    def _rss(self) -> dict[str, int]:
        out = {}
        for label, pid in self.procs:
            mem = memory_kib(pid)
            if "VmRSS" in mem:
                out[label] = mem["VmRSS"]
        return out

    def sample(self) -> None:
        self.samples += 1
        for label, kib in self._rss().items():
            self.peak_kib[label] = max(kib, self.peak_kib.get(label, 0))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[RssSampler]:
        """Sample in the background for the duration of the block."""
        self.before_kib = self._rss()
        self.sample()

        async def loop() -> None:
            while True:
                await asyncio.sleep(self.interval)
                self.sample()

        task = asyncio.create_task(loop())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.sample()
            self.after_kib = self._rss()
            for label, pid in self.procs:
                hwm = memory_kib(pid).get("VmHWM")
                if hwm is not None:
                    self.hwm_kib[label] = hwm

    def as_dict(self) -> dict[str, dict[str, int]]:
        """{label: {before, peak, after, hwm}} in KiB."""
        return {label: {"before_kib": self.before_kib.get(label, 0),
                        "peak_kib": self.peak_kib.get(label, 0),
                        "after_kib": self.after_kib.get(label, 0),
                        "hwm_kib": self.hwm_kib.get(label, 0)}
                for label, _ in self.procs}
