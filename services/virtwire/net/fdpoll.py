"""PolledFd: one non-blocking fd's read and write handlers on the event loop.

The backends switch reading off while their peer cannot take more (the
sent_cb switches it back on) and writing on while the fd is full, as QEMU's
``tap_update_fd_handler`` and ``net_dgram_update_fd_handler`` do with
``qemu_set_fd_handler``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class PolledFd:
    """The loop watches ``fd`` for reading while ``read_poll`` and for writing
    while ``write_poll``; after ``close`` neither can be switched on again.

    Writability is one-shot, as in QEMU's ``tap_writable``: write polling goes
    off, then ``on_writable`` runs (the backend flushes its queue and switches
    it back on if the fd fills again)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int,
                 on_readable: Callable[[], None], on_writable: Callable[[], None]) -> None:
        self.loop = loop
        self.fd = fd
        self.on_readable = on_readable
        self.on_writable = on_writable
        self.read_poll = False
        self.write_poll = False
        self.closed = False

    def set_read_poll(self, enable: bool) -> None:
        if self.closed or enable == self.read_poll:
            return
        self.read_poll = enable
        if enable:
            self.loop.add_reader(self.fd, self.on_readable)
        else:
            self.loop.remove_reader(self.fd)

    def set_write_poll(self, enable: bool) -> None:
        if self.closed or enable == self.write_poll:
            return
        self.write_poll = enable
        if enable:
            self.loop.add_writer(self.fd, self._writable)
        else:
            self.loop.remove_writer(self.fd)

    def _writable(self) -> None:
        self.set_write_poll(False)
        self.on_writable()

    def close(self) -> None:
        """Stop watching the fd (the caller closes it)."""
        self.set_read_poll(False)
        self.set_write_poll(False)
        self.closed = True
