"""Test doubles: NetClients whose receive and can_receive the test controls."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from virtwire.net.net import NetClient


class Sink(NetClient):
    """Records frames; ``ready`` switches can_receive; ``ret`` forces a return."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.frames: list[bytes] = []
        self.ready = True
        self.ret: int | None = None
        self.arrived = asyncio.Event()

    def receive(self, data: bytes) -> int:
        if self.ret is not None:
            return self.ret
        self.frames.append(data)
        self.arrived.set()
        return len(data)

    def can_receive(self) -> bool:
        return self.ready

    def set_ready(self, ready: bool) -> None:
        self.ready = ready
        if ready:
            self.flush_queued_packets()

    async def wait_for(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.frames) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: {len(self.frames)} of {n} frames arrived")
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), min(left, 0.05))
            except TimeoutError:
                pass


class Receiver(NetClient):
    """A NetClient whose receive and can_receive the test controls, synchronously.

    ``ret``: what receive returns (None: len(data)); ``ready``: can_receive;
    ``calls``: every receive() call; ``frames``: frames consumed (ret > 0);
    ``log``: (name, data) of every receive() call, a list several receivers may
    share to record their order; ``on_receive``: a hook run inside receive (for
    re-entrancy tests).
    """

    def __init__(self, name: str = "rx", log: list[tuple[str, bytes]] | None = None) -> None:
        super().__init__(name)
        self.ready = True
        self.ret: int | None = None
        self.calls: list[bytes] = []
        self.frames: list[bytes] = []
        self.log = log if log is not None else []
        self.link_changes = 0
        self.on_receive: Callable[[bytes], None] | None = None

    def receive(self, data: bytes) -> int:
        self.calls.append(data)
        self.log.append((self.name, data))
        if self.on_receive is not None:
            self.on_receive(data)
        ret = len(data) if self.ret is None else self.ret
        if ret > 0:
            self.frames.append(data)
        return ret

    def can_receive(self) -> bool:
        return self.ready

    def link_status_changed(self) -> None:
        self.link_changes += 1


def pair(sender: str = "tx", receiver: str = "rx") -> tuple[NetClient, Receiver]:
    """A plain NetClient and a Receiver, each the other's peer."""
    s = NetClient(sender)
    r = Receiver(receiver)
    s.peer = r
    r.peer = s
    return s, r


class CbLog:
    """Records sent_cb calls as (tag, sender, ret)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, NetClient, int]] = []

    def cb(self, tag: str) -> Callable[[NetClient, int], None]:
        def sent_cb(sender: NetClient, ret: int) -> None:
            self.calls.append((tag, sender, ret))

        return sent_cb

    def tags(self) -> list[str]:
        return [tag for tag, _, _ in self.calls]


async def pump(nc: NetClient, frames: list[bytes]) -> None:
    """Send like a backend does: async, pausing while a frame is queued."""
    resumed = asyncio.Event()

    def sent_cb(_sender: NetClient, _ret: int) -> None:
        resumed.set()

    for i, data in enumerate(frames):
        if nc.send_packet_async(data, sent_cb) == 0:
            await resumed.wait()
            resumed.clear()
        elif i % 64 == 63:
            await asyncio.sleep(0)


def frame(n: int, size: int = 64, src: int = 1, dst: int = 0xFF) -> bytes:
    """A frame with a 4-byte sequence number; EtherType 0x88B5 (local experimental)."""
    body = bytes([dst] * 6) + bytes([2, 0, 0, 0, 0, src]) + b"\x88\xb5" + n.to_bytes(4, "big")
    return body + bytes(max(0, size - len(body)))


def f(n: int, size: int = 64) -> bytes:
    """A frame carrying the number ``n`` (its first 4 bytes), for queue and hub tests."""
    return n.to_bytes(4, "big") + bytes(size - 4)


async def until(predicate: object, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate()`` until true; TimeoutError naming ``what`` otherwise."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
