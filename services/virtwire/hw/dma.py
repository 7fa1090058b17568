"""DMA: how a device reaches guest memory (QEMU's pci_dma_read/pci_dma_write).

A device calls ``dma_read`` and ``dma_write`` while it handles one register
write or one received frame, then ``dma_flush`` once at the end. A local
guest-memory client copies through shared memory at once; a remote one may
buffer writes and send them in one batched call at ``dma_flush``, so the hot
path never makes one RPC per access.

An access outside guest memory raises ``DmaError``: the device must treat it
like a failed bus transaction (skip the buffer, count it), never crash.
"""

from __future__ import annotations

from typing import Protocol

from virtwire.errors import VirtwireError


class DmaError(VirtwireError):
    """A DMA access outside guest memory (or the memory is unreachable)."""


class DmaMemory(Protocol):
    """Guest physical memory as a device sees it."""

    def dma_read(self, addr: int, size: int) -> bytes:
        """``size`` bytes at guest physical ``addr``; DmaError if out of range."""
        ...

    def dma_write(self, addr: int, data: bytes) -> None:
        """Write ``data`` at ``addr``; DmaError if out of range."""
        ...

    def dma_flush(self) -> None:
        """Make every write so far visible to the guest (end of a device op)."""
        ...


class RamDma:
    """Guest memory as a plain bytearray: for unit tests and in-process use."""

    def __init__(self, size: int) -> None:
        self.ram = bytearray(size)
        self.reads = 0
        self.writes = 0

    def _check(self, addr: int, size: int) -> None:
        if addr < 0 or size < 0 or addr + size > len(self.ram):
            raise DmaError(f"DMA access [{addr:#x}, +{size:#x}) outside guest memory "
                           f"of {len(self.ram):#x} bytes")

    # The checks are inline: these run several times per frame.
    def dma_read(self, addr: int, size: int) -> bytes:
        if addr < 0 or size < 0 or addr + size > len(self.ram):
            self._check(addr, size)
        self.reads += 1
        return bytes(self.ram[addr:addr + size])

    def dma_write(self, addr: int, data: bytes) -> None:
        size = len(data)
        if addr < 0 or addr + size > len(self.ram):
            self._check(addr, size)
        self.writes += 1
        self.ram[addr:addr + size] = data

    def dma_flush(self) -> None:
        pass
