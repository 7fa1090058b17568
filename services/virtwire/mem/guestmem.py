"""A guest's RAM: a file in /dev/shm, mapped, with bounds-checked access.

``GuestMemory.create`` makes a new file with a unique name (or at a given
path, which must not exist yet) and removes it on ``close``;
``GuestMemory.open`` maps an existing one (another process's guest RAM, e.g.
QEMU's ``memory-backend-file,share=on``) and leaves it in place.

Every access is checked against the size before memory is touched: a
negative address or size, or one that ends past the RAM (however large the
numbers), raises ``GuestMemRangeError`` (a ``DmaError``) and nothing is read
or written, so a write that would straddle the end fails entirely.

The file is preallocated by default: a sparse tmpfs file that runs out of
space would raise SIGBUS on first touch instead of an error. Before
preallocating, the size is checked against free memory (``free_memory``:
MemAvailable, the cgroup's headroom, the directory's free space), so a guest
cannot push the host into the OOM killer; QEMU's ``prealloc=on`` has no such
check. ``default_max_size`` is the largest RAM a host serves unless configured.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import re
import secrets
import socket
import stat
import weakref
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

from virtwire.errors import BackendError, ConfigError, OutOfRangeError, UnavailableError
from virtwire.hw.dma import DmaError

PAGE_SIZE = mmap.PAGESIZE
MIN_SIZE = 1 << 20
MAX_SIZE = 64 << 30
#: Largest single read or write over RPC, and largest total per Batch. gRPC
#: messages are capped at 16 MiB (link.GRPC_OPTIONS), so this leaves room for
#: the per-op framing.
MAX_OP_BYTES = 8 << 20
MAX_BATCH_BYTES = 8 << 20
MAX_BATCH_OPS = 65536
SHM_DIR = "/dev/shm"
SHM_PREFIX = "virtwire-guestmem-"
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
MEMINFO_PATH = "/proc/meminfo"
CGROUP_DIR = "/sys/fs/cgroup"
#: The default cap on guest RAM: this, or half of MemTotal if that is less.
DEFAULT_MAX_SIZE = 4 << 30

#: How an access reached the memory, for the counters.
Via = Literal["shm", "rpc"]
BytesLike = bytes | bytearray | memoryview


class GuestMemError(DmaError):
    """Guest memory is unusable (closed, unreachable, refused the request)."""


class GuestMemRangeError(GuestMemError, OutOfRangeError):
    """An access outside guest memory; nothing was read or written."""


class GuestMemClosedError(GuestMemError, UnavailableError):
    """The memory (or the client) is closed: its server is stopping or stopped."""


_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_SIZE_SHIFT = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}


def format_size(size: int) -> str:
    """``67108864`` -> ``"64 MiB"`` (exact units only, else bytes)."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{size} bytes"


def check_size(size: int) -> int:
    """``size`` if it is a valid guest RAM size, else ConfigError saying why."""
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"guest memory size {format_size(size)} out of range: "
                          f"must be {format_size(MIN_SIZE)} .. {format_size(MAX_SIZE)}")
    if size % PAGE_SIZE:
        raise ConfigError(f"guest memory size {size} is not a multiple of the "
                          f"page size ({PAGE_SIZE})")
    return size


def parse_size(text: str) -> int:
    """``"64M"``, ``"64MiB"``, ``"1G"``, ``"1048576"`` -> bytes (binary units).

    Only parses; ``check_size`` validates the range.
    """
    m = _SIZE_RE.match(text)
    if m is None:
        raise ConfigError(f"bad size {text!r}: expected a number with an optional "
                          "K/M/G/T suffix (binary: 64M = 64 MiB)")
    return int(m.group(1)) << _SIZE_SHIFT[m.group(2).upper()]


def _meminfo(field: str) -> int | None:
    """A /proc/meminfo field in bytes, or None if unreadable."""
    try:
        with open(MEMINFO_PATH) as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key == field:
                    return int(rest.split()[0]) << 10
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_headroom() -> int | None:
    """Our cgroup v2's memory.max - memory.current; None when unlimited or unknown."""
    try:
        own = Path("/proc/self/cgroup").read_text()
        rel = next((line[3:] for line in own.splitlines() if line.startswith("0::")), "/")
        group = Path(CGROUP_DIR, rel.strip().lstrip("/"))
        limit = (group / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((group / "memory.current").read_text()))
    except (OSError, ValueError):
        return None


def _mib(size: int) -> str:
    return format_size(size >> 20 << 20) if size >= 1 << 20 else format_size(size)


def free_memory(directory: str = SHM_DIR) -> tuple[int, str]:
    """Bytes a preallocation in ``directory`` may take, and what limits them.

    The smallest of MemAvailable, the cgroup v2 headroom and the directory's
    free space: guest RAM ends up resident whichever file system holds it.
    """
    limits: list[tuple[int, str]] = []
    available = _meminfo("MemAvailable")
    if available is not None:
        limits.append((available, f"MemAvailable is {_mib(available)}"))
    headroom = _cgroup_headroom()
    if headroom is not None:
        limits.append((headroom, f"the cgroup has {_mib(headroom)} left"))
    try:
        fs = os.statvfs(directory)
        free = fs.f_bavail * fs.f_frsize
        limits.append((free, f"{directory} has {_mib(free)} free"))
    except OSError:
        pass
    if not limits:
        return 1 << 62, "no limit known"
    return min(limits)


def default_max_size() -> int:
    """DEFAULT_MAX_SIZE, or half of MemTotal (page-aligned) when that is less."""
    total = _meminfo("MemTotal")
    if total is None:
        return DEFAULT_MAX_SIZE
    return max(MIN_SIZE, min(DEFAULT_MAX_SIZE, total // 2 // PAGE_SIZE * PAGE_SIZE))


@dataclass(frozen=True)
class HostIdentity:
    """Which kernel a process runs on: equal boot ids mean shared memory can work."""

    boot_id: str
    hostname: str

    @classmethod
    def local(cls) -> HostIdentity:
        try:
            boot_id = Path(BOOT_ID_PATH).read_text().strip()
        except OSError:
            boot_id = ""
        return cls(boot_id=boot_id, hostname=socket.gethostname())

    def same_kernel(self, other: HostIdentity) -> bool:
        """True when both run on one booted kernel (hosts, or its containers)."""
        return bool(self.boot_id) and self.boot_id == other.boot_id


@dataclass(slots=True)
class MemCounters:
    """Accesses by path: shared memory (a direct copy) or RPC."""

    shm_bytes_read: int = 0
    shm_bytes_written: int = 0
    shm_reads: int = 0
    shm_writes: int = 0
    rpc_bytes_read: int = 0
    rpc_bytes_written: int = 0
    rpc_reads: int = 0
    rpc_writes: int = 0
    rpc_batches: int = 0
    out_of_range: int = 0
    invalid_requests: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def count_read(self, size: int, via: Via) -> None:
        if via == "shm":
            self.shm_reads += 1
            self.shm_bytes_read += size
        else:
            self.rpc_reads += 1
            self.rpc_bytes_read += size

    def count_write(self, size: int, via: Via) -> None:
        if via == "shm":
            self.shm_writes += 1
            self.shm_bytes_written += size
        else:
            self.rpc_writes += 1
            self.rpc_bytes_written += size


COUNTER_NAMES = tuple(f.name for f in fields(MemCounters))


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class GuestMemory:
    """A guest's RAM, mapped from a shared-memory file. Also a DmaMemory."""

    def __init__(self, mm: mmap.mmap, size: int, path: str, device: int, inode: int,
                 owned: bool) -> None:
        """Use ``create`` or ``open``."""
        self._mm: mmap.mmap | None = mm
        self.size = size
        self.path = path
        self.device = device
        self.inode = inode
        #: True when this object created the file (and so removes it on close).
        self.owned = owned
        self.counters = MemCounters()
        # Removes a created file even if close() is never called (GC, exit).
        self._finalizer = weakref.finalize(self, _unlink, path) if owned else None

    # -- construction -----------------------------------------------------------
    @classmethod
    def create(cls, size: int, path: str | None = None, *, directory: str = SHM_DIR,
               prealloc: bool = True) -> GuestMemory:
        """New RAM of ``size`` bytes in a new file (unique name in ``directory``).

        With ``prealloc``, BackendError (and no file) when ``size`` exceeds
        ``free_memory`` of the file's directory.
        """
        check_size(size)
        if prealloc:
            free, limit = free_memory(os.path.dirname(os.path.abspath(path)) if path
                                      else directory)
            if size > free:
                raise BackendError(f"cannot allocate {format_size(size)} of guest memory: "
                                   f"{limit} (preallocation stays within free memory)")
        if path is None:
            while True:
                candidate = os.path.join(directory,
                                         f"{SHM_PREFIX}{os.getpid()}-{secrets.token_hex(6)}")
                try:
                    fd = os.open(candidate, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                                 0o600)
                except FileExistsError:
                    continue
                except OSError as exc:
                    raise ConfigError(f"cannot create guest memory in {directory}: "
                                      f"{exc.strerror}") from exc
                path = candidate
                break
        else:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError as exc:
                raise ConfigError(f"cannot create guest memory file {path}: it already exists "
                                  "(open it instead, or remove it)") from exc
            except OSError as exc:
                raise ConfigError(f"cannot create guest memory file {path}: "
                                  f"{exc.strerror}") from exc
        try:
            os.ftruncate(fd, size)
            if prealloc:
                os.posix_fallocate(fd, 0, size)
            st = os.fstat(fd)
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            _unlink(path)
            if exc.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
                raise BackendError(f"cannot allocate {format_size(size)} of guest memory "
                                   f"in {path}: {exc.strerror}") from exc
            raise BackendError(f"cannot set up guest memory file {path}: "
                               f"{exc.strerror}") from exc
        finally:
            os.close(fd)
        return cls(mm, size, path, st.st_dev, st.st_ino, owned=True)

    @classmethod
    def open(cls, path: str, size: int | None = None, *, device: int | None = None,
             inode: int | None = None) -> GuestMemory:
        """Map an existing RAM file; ``size``/``device``/``inode`` must match if given."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise ConfigError(f"cannot open guest memory file {path}: {exc.strerror}") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"guest memory file {path} is not a regular file")
            if (device is not None and st.st_dev != device) or \
                    (inode is not None and st.st_ino != inode):
                raise ConfigError(f"{path} is another file than the one expected "
                                  f"(dev/inode {st.st_dev}/{st.st_ino}, "
                                  f"expected {device}/{inode})")
            if size is not None and st.st_size != size:
                raise ConfigError(f"guest memory file {path} holds {format_size(st.st_size)}, "
                                  f"expected {format_size(size)}")
            check_size(st.st_size)
            mm = mmap.mmap(fd, st.st_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            raise ConfigError(f"cannot map guest memory file {path}: {exc.strerror}") from exc
        finally:
            os.close(fd)
        return cls(mm, st.st_size, path, st.st_dev, st.st_ino, owned=False)

    @classmethod
    def open_or_create(cls, path: str, size: int | None, *,
                       prealloc: bool = True) -> GuestMemory:
        """Open ``path`` if it exists (its size must be ``size`` if given), else create it."""
        if os.path.exists(path):
            return cls.open(path, size)
        if size is None:
            raise ConfigError(f"{path} does not exist: give a size to create it")
        return cls.create(size, path, prealloc=prealloc)

    # -- access -------------------------------------------------------------------
    def check(self, addr: int, size: int) -> None:
        """GuestMemRangeError unless [addr, addr + size) lies inside the RAM."""
        if addr < 0 or size < 0 or size > self.size - addr:
            self.counters.out_of_range += 1
            raise GuestMemRangeError(
                f"access [{addr:#x}, +{size:#x}) outside guest memory of "
                f"{self.size:#x} bytes ({format_size(self.size)})")

    def read(self, addr: int, size: int, via: Via = "shm") -> bytes:
        """``size`` bytes at ``addr``."""
        if addr < 0 or size < 0 or size > self.size - addr:
            self.check(addr, size)
        mm = self._mm
        if mm is None:
            raise GuestMemClosedError(f"guest memory {self.path} is closed")
        data = mm[addr:addr + size]
        self.counters.count_read(size, via)
        return data

    def write(self, addr: int, data: BytesLike, via: Via = "shm") -> None:
        """Store ``data`` at ``addr``: all of it, or (out of range) none of it."""
        if isinstance(data, memoryview) and data.format != "B":
            data = data.cast("B")
        size = len(data)
        if addr < 0 or size > self.size - addr:
            self.check(addr, size)
        mm = self._mm
        if mm is None:
            raise GuestMemClosedError(f"guest memory {self.path} is closed")
        mm[addr:addr + size] = data
        self.counters.count_write(size, via)

    # DmaMemory, for devices in the same process.
    def dma_read(self, addr: int, size: int) -> bytes:
        return self.read(addr, size)

    def dma_write(self, addr: int, data: bytes) -> None:
        self.write(addr, data)

    def dma_flush(self) -> None:
        """Writes through the mapping are visible at once."""

    # -- lifetime -----------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._mm is None

    def close(self) -> None:
        """Unmap; remove the file if this object created it. Idempotent."""
        mm, self._mm = self._mm, None
        if mm is not None:
            mm.close()
        if self._finalizer is not None:
            self._finalizer()  # unlinks, once

    def __enter__(self) -> GuestMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return (f"GuestMemory({self.path!r}, {format_size(self.size)}, "
                f"{'owned' if self.owned else 'shared'}, {state})")
