"""PortForwarder: publish a container's TCP port on a host address by relaying.

The docker runtime keeps a LAN's containers on an internal network, which
gives them no route out; Docker publishes no port of such a container. So a
stream node's ``publish: HOST:PORT`` is served by the orchestrator itself: it
listens on HOST:PORT and relays each connection, byte for byte, to the
container's address on the LAN's network (QEMU's stream framing passes
through unchanged).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from virtwire.address import SockAddr
from virtwire.errors import BackendError

logger = logging.getLogger(__name__)

#: Connections relayed at once; more are refused (counted).
MAX_CONNECTIONS = 64
CONNECT_TIMEOUT_S = 5.0
_CHUNK = 64 * 1024


class PortForwarder:
    """Relays TCP connections from ``listen`` to ``target``."""

    def __init__(self, listen: SockAddr, target: SockAddr) -> None:
        self.listen = listen
        self.target = target
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: Connections accepted, refused at the cap, and failed to reach the target
        #: (``NodeStatus.relays`` in GetStatus).
        self.accepted = 0
        self.refused = 0
        self.target_failed = 0

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._accept, self.listen.host,
                                                      self.listen.port)
        except OSError as exc:
            raise BackendError(f"cannot publish on {self.listen}: {exc.strerror or exc}") from exc
        logger.info("publishing %s at %s", self.target, self.listen)

    @property
    def active(self) -> int:
        """Connections open now: being relayed, or reaching the target."""
        return len(self._tasks)

    @property
    def bound(self) -> SockAddr:
        """The address it listens on (the real port when ``listen`` asked for 0)."""
        assert self._server is not None
        return SockAddr(self.listen.host, int(self._server.sockets[0].getsockname()[1]))

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._tasks) >= MAX_CONNECTIONS:
            self.refused += 1
            writer.close()
            return
        self.accepted += 1
        task = asyncio.get_running_loop().create_task(self._relay(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(self.target.host, self.target.port), CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            self.target_failed += 1
            logger.warning("publish %s: cannot reach %s: %s", self.listen, self.target, exc)
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF or an error, then half-close the other side."""
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.close()
