"""A bare asyncio relay: the floor of one Python process hop on this machine.

``python bench/pyrelay.py A B`` listens on the unix sockets A and B, takes one
client on each, and copies whatever bytes arrive on one to the other, in
``data_received``, with nothing else: no framing, no queue, no hub. It is the
least any Python service built on asyncio does per frame (an epoll wake-up,
one read, one write), so its latency and CPU per frame at low rates are what
the machine charges for a Python hop before virtwire does any work.
bench/peers.py runs it as the ``pyrelay`` peer, next to QEMU's hub.
"""

from __future__ import annotations

import asyncio
import sys


class _End(asyncio.Protocol):
    def __init__(self, name: str, ends: dict[str, asyncio.Transport]) -> None:
        self.name = name
        self.ends = ends

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.ends[self.name] = transport

    def data_received(self, data: bytes) -> None:
        other = self.ends.get("b" if self.name == "a" else "a")
        if other is not None:
            other.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.ends.pop(self.name, None)


async def main(a: str, b: str) -> None:
    loop = asyncio.get_running_loop()
    ends: dict[str, asyncio.Transport] = {}
    await loop.create_unix_server(lambda: _End("a", ends), a, backlog=1)
    await loop.create_unix_server(lambda: _End("b", ends), b, backlog=1)
    await asyncio.Event().wait()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: pyrelay.py SOCKET_A SOCKET_B")
    asyncio.run(main(sys.argv[1], sys.argv[2]))
