"""Capture: watch the frames a NetClient sends (tx) and receives (rx).

Like QEMU's filter-dump, but streamed: each subscriber gets a bounded queue;
a subscriber that falls behind loses frames, and they are counted.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from virtwire.net.eth import ETH_HLEN, ethertype
from virtwire.net.net import NetClient

#: Frames one subscriber may have waiting before it loses frames.
CAPTURE_QUEUE_LEN = 8192


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
                 maxlen: int = CAPTURE_QUEUE_LEN) -> None:
        self.nc = nc
        self.filter = flt
        self.queue: asyncio.Queue[CapturedFrame] = asyncio.Queue(maxlen)
        self.dropped = 0

    def _hook(self, direction: str, frame: bytes) -> None:
        flt = self.filter
        if not (flt.rx if direction == "rx" else flt.tx) or not flt.matches(frame):
            return
        try:
            self.queue.put_nowait(CapturedFrame(direction, frame, time.time_ns()))
        except asyncio.QueueFull:
            self.dropped += 1
            self.nc.capture_dropped += 1

    def __enter__(self) -> CaptureSubscription:
        self.nc.capture_hooks.append(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._hook in self.nc.capture_hooks:
            self.nc.capture_hooks.remove(self._hook)

    async def get(self) -> CapturedFrame:
        return await self.queue.get()
