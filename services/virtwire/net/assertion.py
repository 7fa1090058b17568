"""Assertions on a NetClient's frames: the LAN as a test oracle.

``FrameWatch`` watches one NetClient through a capture subscription
(virtwire.net.capture: bounded queue, counted losses, the NetClient's
subscriber cap) whose filter is a FrameMatch (virtwire.net.match), so only
matching frames are queued: a frame that did not match never takes a slot a
matching one needs. The three waits await that queue (they never hold the
event loop) and end at their deadline:

- ``wait_for_frame``: the first matching frame, or None when none came in time;
- ``expect_no_frame``: None when none came for the whole duration, else the
  first one (returned as soon as it arrives);
- ``count_frames``: matching frames seen since the source started (a watch
  counts from its start), over the duration or until ``at_least`` were seen. A
  frame the queue could not hold still matched and is counted.

The same waits run on any ``FrameSource`` (a stream adapter, or a test's
double); the orchestrator forwards its assertions to the node's service, which
runs them on a FrameWatch. Timeouts and durations are bounded by
``MAX_WAIT_S``: more is an OutOfRangeError.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Protocol

from virtwire.errors import OutOfRangeError
from virtwire.net.capture import (
    CAPTURE_QUEUE_LEN,
    MAX_CAPTURE_SUBSCRIBERS,
    CapturedFrame,
    CaptureFilter,
    CaptureSubscription,
)
from virtwire.net.match import FrameMatch
from virtwire.net.net import NetClient

__all__ = [
    "MAX_WAIT_S",
    "CountResult",
    "FrameSource",
    "FrameWatch",
    "MatchCaptureFilter",
    "check_wait",
    "count_frames",
    "expect_no_frame",
    "wait_for_frame",
]

#: The longest timeout or duration an assertion takes, in seconds (1 hour).
MAX_WAIT_S = 3600.0


def check_wait(seconds: float, what: str = "timeout") -> float:
    """``seconds`` if in (0, MAX_WAIT_S], else OutOfRangeError."""
    if not 0 < seconds <= MAX_WAIT_S:
        raise OutOfRangeError(f"{what} {seconds:g} s is out of range: more than 0, "
                              f"at most {MAX_WAIT_S:g} s (1 h)")
    return seconds


@dataclass(frozen=True, eq=False)
class MatchCaptureFilter(CaptureFilter):
    """A CaptureFilter that also asks a FrameMatch."""

    match: FrameMatch | None = field(default=None)

    def matches(self, frame: bytes) -> bool:
        return super().matches(frame) and (self.match is None or self.match.matches(frame))


class FrameSource(Protocol):
    """Matching frames, in order: a CaptureSubscription, or a stream adapter."""

    @property
    def dropped(self) -> int:
        """Matching frames lost because the reader fell behind."""
        ...

    async def get(self) -> CapturedFrame: ...


@dataclass(frozen=True)
class CountResult:
    #: Matching frames seen (those the queue could not hold included).
    count: int
    #: Of those, frames the queue could not hold (the reader fell behind).
    lost: int
    #: Seconds the count ran (less than the duration when ``at_least`` was reached).
    elapsed_s: float


async def wait_for_frame(source: FrameSource, timeout: float) -> CapturedFrame | None:
    """The first matching frame within ``timeout`` seconds, or None."""
    try:
        async with asyncio.timeout(check_wait(timeout)):
            return await source.get()
    except TimeoutError:
        return None


async def expect_no_frame(source: FrameSource, duration: float) -> CapturedFrame | None:
    """None when no matching frame came within ``duration`` seconds, else the first."""
    return await wait_for_frame(source, check_wait(duration, "duration"))


async def count_frames(source: FrameSource, duration: float, at_least: int = 0) -> CountResult:
    """Matching frames within ``duration`` seconds; stops early once ``at_least``
    (when > 0) were seen."""
    check_wait(duration, "duration")
    start = time.monotonic()
    got = 0
    try:
        async with asyncio.timeout(duration):
            while not at_least or got + source.dropped < at_least:
                await source.get()
                got += 1
    except TimeoutError:
        pass
    lost = source.dropped
    return CountResult(got + lost, lost, time.monotonic() - start)


class FrameWatch:
    """Matching frames of one NetClient, from when it starts; a context manager.

    ``rx`` / ``tx``: which directions (both by default). Starting takes one of
    the NetClient's capture subscriptions: LimitError (counted in its
    capture_refused) when it has the most its server allows.
    """

    def __init__(self, nc: NetClient, match: FrameMatch, *, rx: bool = True, tx: bool = True,
                 max_subscribers: int = MAX_CAPTURE_SUBSCRIBERS,
                 maxlen: int = CAPTURE_QUEUE_LEN) -> None:
        self.match = match
        self.subscription = CaptureSubscription(
            nc, MatchCaptureFilter(rx=rx, tx=tx, match=match), maxlen,
            max_subscribers=max_subscribers)

    @property
    def dropped(self) -> int:
        return self.subscription.dropped

    async def get(self) -> CapturedFrame:
        return await self.subscription.get()

    def start(self) -> None:
        self.subscription.start()

    def close(self) -> None:
        self.subscription.close()

    def __enter__(self) -> FrameWatch:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def wait_for_frame(self, timeout: float) -> CapturedFrame | None:
        return await wait_for_frame(self, timeout)

    async def expect_no_frame(self, duration: float) -> CapturedFrame | None:
        return await expect_no_frame(self, duration)

    async def count_frames(self, duration: float, at_least: int = 0) -> CountResult:
        return await count_frames(self, duration, at_least)
