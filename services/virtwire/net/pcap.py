"""pcap files (libpcap format, nanosecond timestamps, LINKTYPE_ETHERNET)."""

from __future__ import annotations

import struct
from typing import BinaryIO

PCAP_MAGIC_NS = 0xA1B23C4D
LINKTYPE_ETHERNET = 1
SNAPLEN = 262144


class PcapWriter:
    """Appends Ethernet frames to a pcap stream; flushes after every record."""

    def __init__(self, out: BinaryIO, snaplen: int = SNAPLEN) -> None:
        self.out = out
        out.write(struct.pack("<IHHiIII", PCAP_MAGIC_NS, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET))
        out.flush()
        self.count = 0

    def write(self, frame: bytes, timestamp_ns: int, orig_len: int | None = None) -> None:
        sec, nsec = divmod(timestamp_ns, 1_000_000_000)
        self.out.write(struct.pack("<IIII", sec, nsec, len(frame),
                                   len(frame) if orig_len is None else orig_len))
        self.out.write(frame)
        self.out.flush()
        self.count += 1


def read_pcap(data: bytes) -> list[bytes]:
    """The frames of a pcap file written by PcapWriter (or any LE pcap)."""
    magic = struct.unpack_from("<I", data)[0]
    if magic not in (PCAP_MAGIC_NS, 0xA1B2C3D4):
        raise ValueError(f"not a little-endian pcap file (magic {magic:#x})")
    off = 24
    frames = []
    while off + 16 <= len(data):
        _, _, incl, _ = struct.unpack_from("<IIII", data, off)
        off += 16
        frames.append(data[off:off + incl])
        off += incl
    return frames
