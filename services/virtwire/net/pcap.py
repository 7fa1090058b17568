"""pcap files (libpcap format, nanosecond timestamps, LINKTYPE_ETHERNET).

``pcap_header`` and ``pcap_record`` give the bytes, for writers that buffer
them (the ``dump`` filter); ``PcapWriter`` appends to a stream; ``iter_pcap``
reads one back record by record, with timestamps (``virtwire replay``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

PCAP_MAGIC_NS = 0xA1B23C4D
LINKTYPE_ETHERNET = 1
SNAPLEN = 262144
#: Bytes of the file header and of each record's header.
PCAP_HEADER_LEN = 24
PCAP_RECORD_HEADER_LEN = 16

_HEADER = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")


def pcap_header(snaplen: int = SNAPLEN) -> bytes:
    """The file header: version 2.4, nanosecond timestamps, Ethernet, ``snaplen``."""
    return _HEADER.pack(PCAP_MAGIC_NS, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET)


def pcap_record(frame: bytes, timestamp_ns: int, snaplen: int = SNAPLEN) -> bytes:
    """One record: ``frame`` cut to ``snaplen`` bytes, with its original length."""
    sec, nsec = divmod(timestamp_ns, 1_000_000_000)
    incl = frame if len(frame) <= snaplen else frame[:snaplen]
    return _RECORD.pack(sec, nsec, len(incl), len(frame)) + incl


class PcapWriter:
    """Appends Ethernet frames to a pcap stream; flushes after every record
    unless ``flush_each`` is off (then the caller flushes)."""

    def __init__(self, out: BinaryIO, snaplen: int = SNAPLEN, *, flush_each: bool = True) -> None:
        self.out = out
        self.flush_each = flush_each
        out.write(pcap_header(snaplen))
        out.flush()
        self.count = 0

    def write(self, frame: bytes, timestamp_ns: int, orig_len: int | None = None) -> None:
        sec, nsec = divmod(timestamp_ns, 1_000_000_000)
        self.out.write(_RECORD.pack(sec, nsec, len(frame),
                                    len(frame) if orig_len is None else orig_len))
        self.out.write(frame)
        if self.flush_each:
            self.out.flush()
        self.count += 1


def read_pcap(data: bytes) -> list[bytes]:
    """The frames of a pcap file written by PcapWriter (or any LE pcap)."""
    return [frame for frame, _orig in read_pcap_records(data)]


def read_pcap_records(data: bytes) -> list[tuple[bytes, int]]:
    """(captured bytes, original length) of each record of a little-endian pcap."""
    magic = struct.unpack_from("<I", data)[0]
    if magic not in (PCAP_MAGIC_NS, 0xA1B2C3D4):
        raise ValueError(f"not a little-endian pcap file (magic {magic:#x})")
    off = PCAP_HEADER_LEN
    records = []
    while off + PCAP_RECORD_HEADER_LEN <= len(data):
        _, _, incl, orig = _RECORD.unpack_from(data, off)
        off += PCAP_RECORD_HEADER_LEN
        records.append((data[off:off + incl], orig))
        off += incl
    return records


PCAP_MAGIC_US = 0xA1B2C3D4
PCAPNG_MAGIC = 0x0A0D0D0A


@dataclass(frozen=True)
class PcapRecord:
    """One record of a pcap file."""

    frame: bytes
    orig_len: int
    timestamp_ns: int


def iter_pcap(stream: BinaryIO, *, max_record: int = SNAPLEN) -> Iterator[PcapRecord]:
    """The records of a pcap stream (either byte order, micro- or nanosecond
    timestamps, LINKTYPE_ETHERNET), read one at a time; ValueError for another
    format (pcapng included), another link type, a record longer than
    ``max_record``, or a file cut inside a record."""
    head = stream.read(PCAP_HEADER_LEN)
    if len(head) < 4:
        raise ValueError("not a pcap file (empty or shorter than its header)")
    le, = struct.unpack_from("<I", head)
    if le == PCAPNG_MAGIC:
        raise ValueError("a pcapng file: convert it to pcap (editcap -F pcap IN OUT)")
    order = next((o for o in ("<", ">") if struct.unpack_from(f"{o}I", head)[0] in
                  (PCAP_MAGIC_NS, PCAP_MAGIC_US)), None)
    if order is None:
        raise ValueError(f"not a pcap file (magic {le:#010x})")
    if len(head) < PCAP_HEADER_LEN:
        raise ValueError("a pcap file cut inside its header")
    magic, _, _, _, _, _, linktype = struct.unpack(f"{order}IHHiIII", head)
    if linktype != LINKTYPE_ETHERNET:
        raise ValueError(f"link type {linktype}, not Ethernet ({LINKTYPE_ETHERNET})")
    scale = 1 if magic == PCAP_MAGIC_NS else 1000
    record = struct.Struct(f"{order}IIII")
    index = 0
    while True:
        rhead = stream.read(PCAP_RECORD_HEADER_LEN)
        if not rhead:
            return
        index += 1
        if len(rhead) < PCAP_RECORD_HEADER_LEN:
            raise ValueError(f"record {index}: the file ends inside its header")
        sec, frac, incl, orig = record.unpack(rhead)
        if incl > max_record:
            raise ValueError(f"record {index}: {incl} bytes, more than {max_record}")
        data = stream.read(incl)
        if len(data) < incl:
            raise ValueError(f"record {index}: the file ends inside its {incl} bytes")
        yield PcapRecord(data, orig, sec * 1_000_000_000 + frac * scale)
