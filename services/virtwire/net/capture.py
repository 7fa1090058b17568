"""Capture: watch the frames a NetClient sends (tx) and receives (rx).

Like QEMU's filter-dump, but streamed: each subscriber gets a queue bounded
in frames and in bytes; a subscriber that falls behind loses frames, and they
are counted. A NetClient takes at most ``max_subscribers`` subscribers; one
more is refused (LimitError) and counted in ``capture_refused``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from virtwire.errors import LimitError
from virtwire.net.eth import ETH_HLEN, ethertype
from virtwire.net.net import NetClient

#: Frames one subscriber may have waiting before it loses frames.
CAPTURE_QUEUE_LEN = 8192
#: Bytes of frames one subscriber may have waiting.
CAPTURE_QUEUE_BYTES = 16 << 20
#: Subscribers one NetClient takes (a server may configure another number).
MAX_CAPTURE_SUBSCRIBERS = 16


@dataclass(frozen=True)
class CaptureFilter:
    """Empty fields match everything."""

    rx: bool = True
    tx: bool = True
    ethertype: int = 0
    mac: bytes = b""
    src_mac: bytes = b""
    dst_mac: bytes = b""

    def matches(self, frame: bytes) -> bool:
        if self.ethertype and ethertype(frame) != self.ethertype:
            return False
        if self.mac or self.src_mac or self.dst_mac:
            if len(frame) < ETH_HLEN:
                return False
            dst, src = frame[0:6], frame[6:12]
            if self.mac and self.mac not in (dst, src):
                return False
            if self.src_mac and src != self.src_mac:
                return False
            if self.dst_mac and dst != self.dst_mac:
                return False
        return True


@dataclass(frozen=True)
class CapturedFrame:
    direction: str
    frame: bytes
    timestamp_ns: int


class CaptureSubscription:
    """One subscriber's view of one NetClient; use as a context manager."""

    def __init__(self, nc: NetClient, flt: CaptureFilter,
                 maxlen: int = CAPTURE_QUEUE_LEN, *, max_bytes: int = CAPTURE_QUEUE_BYTES,
                 max_subscribers: int = MAX_CAPTURE_SUBSCRIBERS) -> None:
        self.nc = nc
        self.filter = flt
        self.queue: asyncio.Queue[CapturedFrame] = asyncio.Queue(maxlen)
        self.max_bytes = max_bytes
        self.max_subscribers = max_subscribers
        self.queued_bytes = 0
        self.dropped = 0

    def _hook(self, direction: str, frame: bytes) -> None:
        flt = self.filter
        if not (flt.rx if direction == "rx" else flt.tx) or not flt.matches(frame):
            return
        if self.queued_bytes + len(frame) > self.max_bytes:
            self.dropped += 1
            self.nc.capture_dropped += 1
            return
        try:
            self.queue.put_nowait(CapturedFrame(direction, frame, time.time_ns()))
        except asyncio.QueueFull:
            self.dropped += 1
            self.nc.capture_dropped += 1
            return
        self.queued_bytes += len(frame)

    def start(self) -> None:
        """Begin receiving frames; LimitError when the NetClient has its most subscribers."""
        nc = self.nc
        if len(nc.capture_hooks) >= self.max_subscribers:
            nc.capture_refused += 1
            raise LimitError(f"{nc.name} has {len(nc.capture_hooks)} capture subscribers, "
                             f"the most this server allows")
        nc.capture_hooks.append(self._hook)

    def close(self) -> None:
        if self._hook in self.nc.capture_hooks:
            self.nc.capture_hooks.remove(self._hook)

    def __enter__(self) -> CaptureSubscription:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def get(self) -> CapturedFrame:
        item = await self.queue.get()
        self.queued_bytes -= len(item.frame)
        return item
