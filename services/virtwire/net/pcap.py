"""pcap files (libpcap format, nanosecond timestamps, LINKTYPE_ETHERNET).

``pcap_header`` and ``pcap_record`` give the bytes, for writers that buffer
them (the ``dump`` filter); ``PcapWriter`` appends to a stream.
"""

from __future__ import annotations

import struct
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
