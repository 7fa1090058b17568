"""filter-dump (QEMU's net/dump.c): every packet the filter sees, to a pcap file.

``file=NAME`` is a plain file name inside the service's ``--dump-dir`` (the
FilterContext's ``dump_dir``, from its command line only); a service started
without one refuses dumps. ``maxlen`` (default 65536) is the snaplen: longer
packets are cut to it, with their real length in the record. Records carry
the host's wall-clock time. Packets always pass on.

Writes do not hold the event loop: records collect in memory and go to the
file in one ``write`` once ``FLUSH_BYTES`` have gathered, ``FLUSH_INTERVAL_S``
after the first unflushed one, on status off and on removal. ``maxsize``
(default 1 GiB) caps the file: once a record would pass it, writing stops and
every further packet is counted as ``not_written`` (it still passes on), as
is every record lost to a write error.

The file is opened inside the directory (``dir_fd``) with O_NOFOLLOW: a name
that is a symbolic link, not a regular file, hard-linked elsewhere, or
already written by another dump filter is refused; an existing regular file
is truncated, as QEMU does. Files are created mode 0600 (captures hold
traffic). See docs/filters.md.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from virtwire.errors import BackendError, ConfigError
from virtwire.net.filter import FilterBatch, FilterDirection, NetFilter, Scheduler, TimerHandle
from virtwire.net.filter_types import register_filter_type
from virtwire.net.pcap import SNAPLEN, pcap_header, pcap_record

if TYPE_CHECKING:
    from virtwire.net.net import NetClient

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_MAXLEN", "DEFAULT_MAXSIZE", "FilterDump", "check_dump_name", "parse_size"]

DEFAULT_MAXLEN = 65536
#: Largest maxlen: the largest snaplen pcap readers take.
MAX_MAXLEN = SNAPLEN
DEFAULT_MAXSIZE = 1 << 30
#: maxsize bounds: a file must hold its header and a record; an RPC may not
#: ask for more than this of the host's disk per file.
MIN_MAXSIZE = 1024
MAX_MAXSIZE = 16 << 30
#: Buffered records are written once this many bytes have gathered...
FLUSH_BYTES = 64 * 1024
#: ...or this long after the first of them.
FLUSH_INTERVAL_S = 1.0

#: A dump file name: letters, digits, "_", ".", "+", "-"; no "/", not hidden.
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}")
_SIZE_RE = re.compile(r"(\d{1,15})([KMGT]?)(?:i?B)?", re.IGNORECASE)
_SIZE_SHIFT = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}

#: (st_dev, st_ino) of the files dump filters of this process have open.
_OPEN_FILES: set[tuple[int, int]] = set()


def check_dump_name(name: str) -> str:
    """``name`` if it is a plain file name a dump may use, else ConfigError."""
    if not _NAME_RE.fullmatch(name) or ".." in name:
        raise ConfigError(f"dump file {name[:64]!r}: give a plain file name (1-128 letters, "
                          "digits, '_', '.', '+' or '-', no '/', '..' or leading '.'); "
                          "it is created in the service's --dump-dir")
    return name


def parse_size(what: str, text: str) -> int:
    """``"4096"``, ``"64K"``, ``"1G"``, ``"1GiB"`` -> bytes (binary units)."""
    m = _SIZE_RE.fullmatch(text.strip())
    if m is None:
        raise ConfigError(f"{what}={text[:32]!r} is not a size (a number with an optional "
                          "K/M/G/T suffix)")
    return int(m.group(1)) << _SIZE_SHIFT[m.group(2).upper()]


def _parse_int(what: str, text: str, low: int, high: int) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise ConfigError(f"{what}={text[:32]!r} is not a whole number") from None
    if not low <= value <= high:
        raise ConfigError(f"{what}={value} is out of range ({low}..{high})")
    return value


class _DumpFile:
    """One open pcap file inside the dump directory."""

    def __init__(self, fd: int, name: str, key: tuple[int, int]) -> None:
        self.fd = fd
        self.name = name
        self.key = key
        self.size = 0

    @classmethod
    def open(cls, dump_dir: Path, name: str) -> _DumpFile:
        where = f"dump file {name!r} in --dump-dir {dump_dir}"
        try:
            dirfd = os.open(dump_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise BackendError(f"cannot open --dump-dir {dump_dir}: {exc.strerror}") from exc
        try:
            # O_NONBLOCK: a FIFO planted under the name fails (ENXIO) instead of
            # blocking the loop; it has no effect on a regular file.
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                         | os.O_CLOEXEC, 0o600, dir_fd=dirfd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ConfigError(f"{where} is a symbolic link; dumps do not follow "
                                  "links") from exc
            if exc.errno in (errno.EISDIR, errno.ENXIO, errno.ENODEV, errno.ETXTBSY):
                raise ConfigError(f"{where} exists and is not a regular file") from exc
            raise BackendError(f"cannot open {where}: {exc.strerror}") from exc
        finally:
            os.close(dirfd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"{where} exists and is not a regular file")
            if st.st_nlink > 1:
                raise ConfigError(f"{where} has other hard links; refusing to overwrite it")
            key = (st.st_dev, st.st_ino)
            if key in _OPEN_FILES:
                raise ConfigError(f"{where} is being written by another dump filter")
            os.ftruncate(fd, 0)
        except BaseException:
            os.close(fd)
            raise
        _OPEN_FILES.add(key)
        return cls(fd, name, key)

    def write(self, data: bytes | bytearray) -> None:
        """Write all of ``data`` (OSError on failure)."""
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
            self.size += n

    def close(self) -> None:
        if self.fd >= 0:
            _OPEN_FILES.discard(self.key)
            os.close(self.fd)
            self.fd = -1


@register_filter_type
class FilterDump(NetFilter):
    """filter-dump: a pcap of what the filter sees; packets pass on."""

    kind = "dump"
    PROPERTIES: ClassVar[Mapping[str, str]] = {
        "file": "pcap file name inside the service's --dump-dir (required)",
        "maxlen": f"snaplen: bytes kept of each packet (1..{MAX_MAXLEN}, default {DEFAULT_MAXLEN})",
        "maxsize": f"stop writing at this file size ({MIN_MAXSIZE}..{MAX_MAXSIZE >> 30}G, "
                   "default 1G); later packets are counted as not_written",
    }

    def __init__(self, fid: str, *, direction: FilterDirection | str = FilterDirection.ALL,
                 status: bool = True, scheduler: Scheduler | None = None) -> None:
        super().__init__(fid, direction=direction, status=status, scheduler=scheduler)
        self.maxlen = DEFAULT_MAXLEN
        self.maxsize = DEFAULT_MAXSIZE
        self.file: _DumpFile | None = None
        #: The snaplen in the open file's header.
        self.file_snaplen = 0
        #: Records waiting to be written, and how many.
        self._buf = bytearray()
        self._buffered = 0
        self._timer: TimerHandle | None = None
        #: Writing stopped: maxsize reached or a write failed.
        self.stopped = ""
        self.written = 0
        self.not_written = 0
        self.write_errors = 0
        self.flushes = 0

    # -- properties -------------------------------------------------------------
    def parse_properties(self, props: Mapping[str, str], initial: bool) -> dict[str, Any]:
        what = f"filter dump {self.id}"
        parsed: dict[str, Any] = {}
        if "maxlen" in props:
            parsed["maxlen"] = _parse_int(f"{what}: maxlen", props["maxlen"], 1, MAX_MAXLEN)
        if "maxsize" in props:
            size = parse_size(f"{what}: maxsize", props["maxsize"])
            if not MIN_MAXSIZE <= size <= MAX_MAXSIZE:
                raise ConfigError(f"{what}: maxsize={props['maxsize']} is out of range "
                                  f"({MIN_MAXSIZE} bytes..{MAX_MAXSIZE >> 30}G)")
            parsed["maxsize"] = size
        name = props.get("file")
        if name is None and initial:
            raise ConfigError(f"{what}: file= is required (a pcap file name inside the "
                              "service's --dump-dir)")
        new_file = name is not None and (self.file is None or name != self.file.name)
        if name is not None:
            check_dump_name(name)
        if not new_file and "maxlen" in parsed and parsed["maxlen"] > self.file_snaplen:
            raise ConfigError(f"{what}: maxlen={parsed['maxlen']} is above the snaplen of "
                              f"{self.file_snaplen} in {self.file.name if self.file else ''}'s "
                              "header; give a new file= with it")
        if new_file:
            assert name is not None
            dump_dir = self.context.dump_dir
            if dump_dir is None:
                raise ConfigError(f"{what}: this service was started without --dump-dir, so "
                                  "it writes no dumps (start it with --dump-dir DIR)")
            # Last: nothing after this can fail, so a refused update opens nothing.
            parsed["file"] = _DumpFile.open(dump_dir, name)
        return parsed

    def apply(self, parsed: Mapping[str, Any]) -> None:
        if "maxlen" in parsed:
            self.maxlen = parsed["maxlen"]
        if "maxsize" in parsed:
            self.maxsize = parsed["maxsize"]
            if self.stopped == "maxsize":
                self.stopped = ""
        if "file" in parsed:
            self._close_file()
            self.file = parsed["file"]
            self.file_snaplen = self.maxlen
            self.stopped = ""
            self._buf += pcap_header(self.maxlen)
            self.flush()  # an empty capture is a valid pcap at once

    def properties(self) -> dict[str, str]:
        props = {"maxlen": str(self.maxlen), "maxsize": str(self.maxsize)}
        if self.file is not None:
            props["file"] = self.file.name
        return props

    def counters(self) -> dict[str, int]:
        """The dump's own counters (FilterCounters.extra)."""
        return {"written": self.written, "not_written": self.not_written,
                "bytes_written": self.file.size if self.file is not None else 0,
                "write_errors": self.write_errors, "flushes": self.flushes}

    # -- the data path ------------------------------------------------------------
    def filter_receive(self, direction: FilterDirection, sender: NetClient, flags: int,
                       data: bytes) -> int:
        self._record(data, time.time_ns())
        return 0

    def receive_iov_batch(self, direction: FilterDirection, sender: NetClient, flags: int,
                          batch: FilterBatch) -> FilterBatch:
        """A batch: one record each (one timestamp for the batch); all pass on."""
        if self.file is None or self.stopped:
            self.not_written += len(batch.frames)
            return batch
        now = time.time_ns()
        record = self._record
        for data in batch.frames:
            record(data, now)
        return batch

    def _record(self, data: bytes, timestamp_ns: int) -> None:
        """Buffer one record (or count it not written)."""
        file = self.file
        if file is None or self.stopped:
            self.not_written += 1
            return
        record = pcap_record(data, timestamp_ns, self.maxlen)
        if file.size + len(self._buf) + len(record) > self.maxsize:
            self.stopped = "maxsize"
            self.not_written += 1
            logger.warning("filter dump %s: %s reached maxsize (%d bytes); later packets are "
                           "not written", self.id, file.name, self.maxsize)
            return
        self._buf += record
        self._buffered += 1
        if len(self._buf) >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            self._arm_timer()

    def _arm_timer(self) -> None:
        scheduler = self.scheduler
        if scheduler is None:
            import asyncio
            try:
                scheduler = self.scheduler = asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop (plain objects): flushed by size and on removal
        self._timer = scheduler.call_later(FLUSH_INTERVAL_S, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Write the buffered records now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buf:
            return
        buf, records = self._buf, self._buffered
        self._buf, self._buffered = bytearray(), 0
        file = self.file
        if file is None:
            self.not_written += records
            return
        try:
            file.write(buf)
        except OSError as exc:
            self.write_errors += 1
            self.not_written += records
            self.stopped = "write_error"
            logger.warning("filter dump %s: writing %s failed (%s); later packets are not "
                           "written", self.id, file.name, exc.strerror)
            return
        self.written += records
        self.flushes += 1

    def release(self) -> None:
        """Status off: what is buffered goes to the file."""
        self.flush()

    def _close_file(self) -> None:
        self.flush()
        if self.file is not None:
            self.file.close()
            self.file = None

    def cleanup(self) -> None:
        self._close_file()
