"""Guest memory: a guest's RAM in a shared-memory file, and the client devices use.

- ``GuestMemory`` (guestmem.py): the RAM, a file in /dev/shm mapped into the
  process, with bounds-checked reads and writes and per-path counters.
- ``GuestMemClient`` (client.py): a device's DmaMemory over the guestmem
  service; it maps the file when on the same host, else uses batched RPCs.
"""

from virtwire.mem.guestmem import (
    GuestMemError,
    GuestMemory,
    GuestMemRangeError,
    HostIdentity,
    MemCounters,
    parse_size,
)

__all__ = [
    "GuestMemError",
    "GuestMemRangeError",
    "GuestMemory",
    "HostIdentity",
    "MemCounters",
    "parse_size",
]
