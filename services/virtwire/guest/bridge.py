"""The guest's NIC as a Linux TAP interface, so a real kernel stack runs over it.

``TapBridge`` opens a TAP (with ``virtwire.net.tap.tap_open``) with
IFF_VNET_HDR and turns on checksum and TCP segmentation offload
(TUNSETOFFLOAD: TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6), gives it the NIC's MAC
address (so the kernel's frames pass the e1000's address filter and the
replies come back to it), and optionally moves it into a network namespace
and addresses it there.

- TAP -> NIC: every packet the kernel sends starts with a virtio_net_hdr. A
  NEEDS_CSUM packet becomes a checksum-offload packet (e1000 context
  descriptor + TXSM); a GSO TCPv4 packet becomes a TSO packet (context +
  TSE data descriptors with IXSM|TXSM), so the NIC cuts it into MSS-sized
  frames as Linux's e1000 driver has it do. (TCPv6 super-frames are cut by
  the driver: the 8254x has no IPv6 TSO.) When the TX ring is full the bridge
  stops reading the TAP until there is room (like QEMU's tap_read_poll),
  never dropping for lack of patience alone.
- NIC -> TAP: received frames are written with a zero virtio_net_hdr (the
  kernel checks the checksums itself), except that consecutive in-order
  segments of one TCP/IPv4 flow in an RX batch, once their checksums are
  verified, are merged into one GSO packet (NEEDS_CSUM, GSO_TCPV4), as GRO
  would: the kernel sees fewer, larger packets and sends fewer ACKs.
- The NIC's link state is the TAP's carrier (TUNSETCARRIER).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import struct
from dataclasses import asdict, dataclass
from ipaddress import IPv4Interface
from pathlib import Path

from virtwire.errors import BackendError, ConfigError
from virtwire.guest.driver import (
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    DriverError,
    E1000Driver,
    TxPacket,
    inet_checksum,
    pseudo_header_sum,
)
from virtwire.net.eth import NET_BUFSIZE, format_mac
from virtwire.net.tap import VNET_HDR_LEN, check_ifname, tap_open

logger = logging.getLogger(__name__)

# <linux/if_tun.h>
TUNSETOFFLOAD = 0x400454D0
TUNSETCARRIER = 0x400454E2
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
BRIDGE_OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
# <linux/virtio_net.h>
VIRTIO_NET_HDR = struct.Struct("<BBHHHH")
VIRTIO_NET_HDR_F_NEEDS_CSUM = 0x01
VIRTIO_NET_HDR_GSO_ECN = 0x80
VIRTIO_NET_HDR_GSO_UDP = 3
_ZERO_HDR = bytes(VNET_HDR_LEN)

#: Packets read from the TAP per wakeup (QEMU's tap_send reads up to 50).
READ_BUDGET = 64
#: How long a paused bridge waits for TX ring space before dropping one packet.
RESUME_TIMEOUT_S = 1.0
IP_TIMEOUT_S = 15.0
NETNS_DIR = Path("/run/netns")


def check_netns(name: str, *, must_exist: bool = True) -> None:
    """ConfigError unless ``name`` is a valid (and, if ``must_exist``, existing)
    named network namespace."""
    if not name or "/" in name or name in (".", "..") or len(name) > 255:
        raise ConfigError(f"bad network namespace name {name!r}")
    if must_exist and not (NETNS_DIR / name).exists():
        raise ConfigError(f"network namespace {name!r} does not exist "
                          f"(create it first: ip netns add {name})")


def parse_vnet_packet(buf: bytes) -> TxPacket:
    """A packet read from an IFF_VNET_HDR TAP -> TxPacket; ValueError if unusable."""
    if len(buf) < VNET_HDR_LEN + 14:
        raise ValueError(f"a {len(buf)}-byte read is shorter than header + Ethernet header")
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = \
        VIRTIO_NET_HDR.unpack_from(buf)
    frame = buf[VNET_HDR_LEN:]
    if gso_type & VIRTIO_NET_HDR_GSO_ECN:
        raise ValueError("ECN GSO was not offered")
    gso = gso_type & ~VIRTIO_NET_HDR_GSO_ECN
    if gso not in (GSO_NONE, GSO_TCPV4, GSO_TCPV6):
        raise ValueError(f"unsupported gso_type {gso_type}")
    if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
        if csum_start + csum_offset + 2 > len(frame):
            raise ValueError("checksum offsets outside the frame")
        start = csum_start
    else:
        start, csum_offset = -1, 0
    if gso != GSO_NONE:
        if start < 0 or gso_size == 0:
            raise ValueError("a GSO packet without checksum offload or MSS")
        return TxPacket(frame, start, csum_offset, gso, gso_size)
    return TxPacket(frame, start, csum_offset)


# -- receive coalescing (GRO) ---------------------------------------------------------
#: Largest TCP payload merged into one packet for the TAP (GRO's 64 KiB limit).
GRO_MAX_PAYLOAD = 65535 - 20 - 60
_TCP_ACK = 0x10
_TCP_PSH = 0x08
_ETH_IPV4 = b"\x08\x00"


@dataclass(slots=True)
class _Segment:
    """A TCP/IPv4 segment that may be merged: where its parts are, and its flow."""

    frame: bytes
    key: bytes
    seq: int
    thl: int
    end: int
    flags: int

    @property
    def payload(self) -> int:
        return self.end - 34 - self.thl


def _segment(frame: bytes) -> _Segment | None:
    """The frame as a mergeable segment, or None: it must be TCP over IPv4 without
    IP options or fragmentation, carry data, have only ACK (and PSH) set, and have
    valid IP and TCP checksums (a merged packet reaches the kernel as verified)."""
    if len(frame) < 54 or frame[12:14] != _ETH_IPV4 or frame[14] != 0x45 or frame[23] != 6:
        return None
    if frame[20] & 0x3F or frame[21]:  # MF or a fragment offset
        return None
    total = (frame[16] << 8) | frame[17]
    end = 14 + total
    thl = (frame[46] >> 4) * 4
    flags = frame[47]
    if end > len(frame) or thl < 20 or 34 + thl >= end:
        return None
    if flags & ~(_TCP_ACK | _TCP_PSH) or not flags & _TCP_ACK:
        return None
    if inet_checksum(frame[14:34]) != 0:
        return None
    if inet_checksum(memoryview(frame)[34:end],
                     pseudo_header_sum(frame[26:30], frame[30:34], 6, total - 20)) != 0:
        return None
    # Flow: addresses, ports, ACK number, window, TOS/TTL and the TCP options (as GRO).
    key = frame[15:16] + frame[22:23] + frame[26:38] + frame[42:46] + frame[48:50] \
        + frame[54:34 + thl]
    seq = int.from_bytes(frame[38:42], "big")
    return _Segment(frame, key, seq, thl, end, flags)


def _merge(group: list[_Segment]) -> tuple[bytes, bytes]:
    """Several segments of one flow as one GSO packet: (virtio_net_hdr, frame)."""
    first = group[0]
    thl = first.thl
    hdr_len = 34 + thl
    payload = b"".join(memoryview(seg.frame)[34 + seg.thl:seg.end] for seg in group)
    hdr = bytearray(first.frame[:hdr_len])
    hdr[16:18] = (20 + thl + len(payload)).to_bytes(2, "big")
    hdr[24:26] = b"\0\0"
    hdr[24:26] = inet_checksum(hdr[14:34]).to_bytes(2, "big")
    hdr[47] |= group[-1].flags & _TCP_PSH
    # CHECKSUM_PARTIAL, as the kernel expects it: the pseudo-header sum in the field.
    hdr[50:52] = pseudo_header_sum(bytes(hdr[26:30]), bytes(hdr[30:34]), 6,
                                   thl + len(payload)).to_bytes(2, "big")
    vnet = VIRTIO_NET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, GSO_TCPV4, hdr_len,
                               first.payload, 34, 16)
    return vnet, bytes(hdr) + payload


def coalesce(frames: list[bytes]) -> list[tuple[bytes, bytes]]:
    """GRO for a batch of received frames: consecutive in-order segments of one TCP
    flow become one GSO packet; everything else passes as it is, in order.
    Returns (virtio_net_hdr, frame) pairs."""
    out: list[tuple[bytes, bytes]] = []
    group: list[_Segment] = []
    size = 0

    def flush() -> None:
        nonlocal size
        if len(group) > 1:
            out.append(_merge(group))
        elif group:
            out.append((_ZERO_HDR, group[0].frame))
        group.clear()
        size = 0

    for frame in frames:
        seg = _segment(frame)
        if seg is None:
            flush()
            out.append((_ZERO_HDR, frame))
            continue
        if group:
            last = group[-1]
            first = group[0]
            if (seg.key != first.key or seg.seq != (last.seq + last.payload) & 0xFFFFFFFF
                    or last.payload != first.payload or seg.payload > first.payload
                    or last.flags & _TCP_PSH or size + seg.payload > GRO_MAX_PAYLOAD):
                flush()
        group.append(seg)
        size += seg.payload
    flush()
    return out


@dataclass
class BridgeCounters:
    """What the bridge moved, and what it lost."""

    tap_rx: int = 0
    tap_tx: int = 0
    gso_packets: int = 0
    csum_packets: int = 0
    rx_dropped: int = 0
    tx_dropped: int = 0
    malformed: int = 0
    paused: int = 0
    #: TAP writes that carried several received segments (GRO).
    coalesced: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


async def run_ip(*args: str) -> None:
    """``ip ARGS``; BackendError with its output if it fails or hangs."""
    proc = await asyncio.create_subprocess_exec(
        "ip", *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), IP_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise BackendError(f"ip {' '.join(args)}: timed out") from None
    if proc.returncode != 0:
        raise BackendError(f"ip {' '.join(args)} failed: {out.decode(errors='replace').strip()}")


class TapBridge:
    """Frames between an E1000Driver and a Linux TAP (with offloads)."""

    def __init__(self, driver: E1000Driver, ifname: str, *, netns: str = "",
                 cidr: IPv4Interface | None = None, gro: bool = True) -> None:
        check_ifname(ifname)
        if not ifname:
            raise ConfigError("the bridge needs a TAP interface name")
        if netns:
            check_netns(netns)
        self.driver = driver
        self.ifname = ifname
        self.netns = netns
        self.cidr = cidr
        #: Merge received TCP segments into GSO packets for the TAP.
        self.gro = gro
        self.counters = BridgeCounters()
        self.fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading = False
        self._pending: list[TxPacket] = []
        self._resume_task: asyncio.Task[None] | None = None
        self.closed = False

    async def open(self) -> None:
        """Create the TAP, turn on offloads, name it after the NIC, move and address it."""
        self._loop = asyncio.get_running_loop()
        self.fd, self.ifname = tap_open(self.ifname, vnet_hdr=True)
        try:
            try:
                fcntl.ioctl(self.fd, TUNSETOFFLOAD, BRIDGE_OFFLOADS)
            except OSError as exc:
                raise BackendError(f"TAP {self.ifname}: TUNSETOFFLOAD failed: "
                                   f"{exc.strerror}") from exc
            mac = format_mac(self.driver.mac)
            await run_ip("link", "set", "dev", self.ifname, "address", mac)
            if self.netns:
                await run_ip("link", "set", "dev", self.ifname, "netns", self.netns)
                prefix = ["-n", self.netns]
            else:
                prefix = []
            if self.cidr is not None:
                await run_ip(*prefix, "addr", "add", str(self.cidr), "dev", self.ifname)
            await run_ip(*prefix, "link", "set", "dev", self.ifname, "up")
        except BaseException:
            os.close(self.fd)
            self.fd = -1
            self.closed = True
            raise
        self._set_carrier(self.driver.link_up)
        self.driver.rx_handlers.append(self.on_frames)
        self.driver.link_handlers.append(self._set_carrier)
        self._read_poll(True)
        where = f" in netns {self.netns}" if self.netns else ""
        logger.info("bridge: TAP %s%s (mac %s%s) with checksum and TSO offload",
                    self.ifname, where, mac, f", {self.cidr}" if self.cidr else "")

    def _set_carrier(self, up: bool) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                fcntl.ioctl(self.fd, TUNSETCARRIER, struct.pack("i", 1 if up else 0))

    def _read_poll(self, enable: bool) -> None:
        if self.closed or enable == self._reading or self._loop is None:
            return
        self._reading = enable
        if enable:
            self._loop.add_reader(self.fd, self._on_readable)
        else:
            self._loop.remove_reader(self.fd)

    # -- TAP -> NIC ----------------------------------------------------------------------
    def _on_readable(self) -> None:
        batch: list[TxPacket] = []
        counters = self.counters
        for _ in range(READ_BUDGET):
            try:
                buf = os.read(self.fd, NET_BUFSIZE + VNET_HDR_LEN)
            except BlockingIOError:
                break
            except OSError as exc:
                logger.warning("bridge: read from %s failed: %s", self.ifname, exc.strerror)
                break
            counters.tap_rx += 1
            try:
                pkt = parse_vnet_packet(buf)
            except ValueError as exc:
                counters.malformed += 1
                logger.debug("bridge: dropped a packet from %s: %s", self.ifname, exc)
                continue
            if pkt.gso_type != GSO_NONE:
                counters.gso_packets += 1
            elif pkt.csum_start >= 0:
                counters.csum_packets += 1
            batch.append(pkt)
        if batch:
            self._submit(batch)

    def _submit(self, batch: list[TxPacket]) -> None:
        try:
            taken = self.driver.submit(batch)
        except DriverError as exc:
            self.counters.tx_dropped += len(batch)
            logger.debug("bridge: %s", exc)
            return
        if taken < len(batch):
            self._pending = batch[taken:]
            self.counters.paused += 1
            self._read_poll(False)
            self._resume_task = asyncio.ensure_future(self._resume())

    async def _resume(self) -> None:
        """Wait for TX ring space, send what is pending, then read the TAP again."""
        driver = self.driver
        needed = 1
        try:
            while self._pending and not self.closed:
                room = await driver.wait_tx_space(RESUME_TIMEOUT_S, needed)
                try:
                    taken = driver.submit(self._pending)
                except DriverError:
                    self.counters.tx_dropped += len(self._pending)
                    self._pending = []
                    break
                if taken:
                    self._pending = self._pending[taken:]
                    needed = 1
                elif not room:  # the NIC is stuck: give up on this packet
                    self._pending.pop(0)
                    self.counters.tx_dropped += 1
                else:  # the head packet needs more descriptors: wait for a drained ring
                    needed = driver.tx_count - 1
        finally:
            self._resume_task = None
            if not self.closed:
                self._read_poll(True)

    # -- NIC -> TAP ------------------------------------------------------------------------
    def on_frames(self, frames: list[bytes]) -> None:
        """A driver RX handler: write the frames to the TAP, consecutive segments of
        a TCP flow merged into one GSO packet (GRO), the rest with a zero header."""
        if self.closed:
            return
        fd = self.fd
        counters = self.counters
        packets = coalesce(frames) if self.gro and len(frames) > 1 else \
            [(_ZERO_HDR, frame) for frame in frames]
        for vnet, frame in packets:
            try:
                os.writev(fd, (vnet, frame))
                counters.tap_tx += 1
                if vnet is not _ZERO_HDR:
                    counters.coalesced += 1
            except OSError:  # EAGAIN (the kernel's backlog is full), EIO (TAP down)
                counters.rx_dropped += 1

    async def close(self) -> None:
        if self.closed:
            return
        self._read_poll(False)
        self.closed = True
        task = self._resume_task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(ValueError):
            self.driver.rx_handlers.remove(self.on_frames)
        with contextlib.suppress(ValueError):
            self.driver.link_handlers.remove(self._set_carrier)
        if self.fd >= 0:
            os.close(self.fd)  # a non-persistent TAP goes away with its last fd
            self.fd = -1
        logger.info("bridge: closed %s; counters %s", self.ifname,
                    " ".join(f"{k}={v}" for k, v in self.counters.as_dict().items() if v))


__all__ = ["BRIDGE_OFFLOADS", "BridgeCounters", "TapBridge", "check_netns", "coalesce",
           "parse_vnet_packet", "run_ip"]
