"""Ethernet frame constants and small helpers shared by every NetClient."""

from __future__ import annotations

import re

from virtwire.address import shorten
from virtwire.errors import ConfigError

#: QEMU's NET_BUFSIZE (4096 + 65536): the largest frame the data path carries.
NET_BUFSIZE = 4096 + 65536
#: ETH_ZLEN: the minimum frame length without FCS; the tap backend pads to it.
ETH_ZLEN = 60
ETH_ALEN = 6
ETH_HLEN = 14
ETH_P_8021Q = 0x8100

_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


class FrameError(ConfigError):
    """A frame or an address that the data path cannot carry."""


def check_frame(frame: bytes) -> None:
    """Raise FrameError unless 1 <= len(frame) <= NET_BUFSIZE."""
    if not frame:
        raise FrameError("empty frame")
    if len(frame) > NET_BUFSIZE:
        raise FrameError(f"frame of {len(frame)} bytes exceeds NET_BUFSIZE ({NET_BUFSIZE})")


def parse_mac(text: str) -> bytes:
    """'aa:bb:cc:dd:ee:ff' -> 6 bytes; FrameError otherwise."""
    if not _MAC_RE.match(text):
        raise FrameError(f"bad MAC address {shorten(text)}: expected aa:bb:cc:dd:ee:ff")
    return bytes.fromhex(text.replace(":", ""))


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def ethertype(frame: bytes) -> int:
    """The EtherType, looking past one 802.1Q tag; -1 for a runt frame."""
    if len(frame) < ETH_HLEN:
        return -1
    etype = (frame[12] << 8) | frame[13]
    if etype == ETH_P_8021Q and len(frame) >= ETH_HLEN + 4:
        etype = (frame[16] << 8) | frame[17]
    return etype


def pad_to_zlen(frame: bytes) -> bytes:
    """Pad a short frame with zeros to ETH_ZLEN, as QEMU's tap backend does."""
    if len(frame) < ETH_ZLEN:
        return frame + bytes(ETH_ZLEN - len(frame))
    return frame
