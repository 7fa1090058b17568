"""A tiny IPv4 host for a virtwire guest: ARP and ICMP echo, both ways.

``Responder`` answers ARP requests for the guest's address and ICMP echo
requests sent to it, keeps a small ARP cache from what it sees, and is the
ping client behind the guest service's Ping RPC (``ping``: ARP resolution,
then echo requests with a sequence number and a timestamp, round-trip times
measured from send to the reply's arrival off the RX ring).

Frames come in through ``handle`` (a driver RX handler) and leave through
the ``transmit`` callable (the driver's ``try_send``). Everything parsed from
a frame is validated first (lengths, versions, checksums): a malformed frame
is counted and ignored, never raised.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface

from virtwire.errors import ConfigError
from virtwire.guest.driver import inet_checksum

logger = logging.getLogger(__name__)

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ARP_REQUEST = 1
ARP_REPLY = 2
IPPROTO_ICMP = 1
ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8
BROADCAST = b"\xff" * 6
ETH_HDR = struct.Struct("!6s6sH")
ARP_PKT = struct.Struct("!HHBBH6s4s6s4s")
IPV4_HDR = struct.Struct("!BBHHHBBH4s4s")
ICMP_ECHO = struct.Struct("!BBHHH")

#: ARP cache: at most this many entries, each trusted this long.
ARP_CACHE_SIZE = 256
ARP_TTL_S = 60.0
#: Ping limits (the Ping RPC's documented bounds).
MAX_PING_COUNT = 1000
MAX_PING_SIZE = 1472
MAX_PING_TIMEOUT_MS = 60000
MAX_PING_INTERVAL_MS = 60000
ARP_RETRY_S = 0.2
TTL = 64

Transmit = Callable[[list[bytes]], object]


class MalformedFrame(ConfigError):
    """A frame that fails validation (internal: counted, never escapes handle)."""


def parse_interface(text: str, what: str = "ip") -> IPv4Interface:
    """'198.18.0.1/24' -> IPv4Interface; ConfigError saying why otherwise.

    The prefix is required; the address must be a usable unicast host address
    of its subnet (not the network or broadcast address, not loopback,
    multicast or unspecified).
    """
    if "/" not in text:
        raise ConfigError(f"{what} {text!r} needs a prefix length, e.g. 198.18.0.1/24")
    try:
        iface = IPv4Interface(text.strip())
    except (ipaddress.AddressValueError, ipaddress.NetmaskValueError, ValueError) as exc:
        raise ConfigError(f"bad {what} {text!r}: {exc}") from None
    addr = iface.ip
    if addr.is_multicast or addr.is_unspecified or addr.is_loopback or \
            addr == IPv4Address("255.255.255.255"):
        raise ConfigError(f"{what} {text!r} is not a unicast host address")
    net = iface.network
    if net.prefixlen < 31 and addr in (net.network_address, net.broadcast_address):
        raise ConfigError(f"{what} {text!r} is the network or broadcast address of {net}")
    return iface


# -- frame builders --------------------------------------------------------------------
def build_arp(op: int, src_mac: bytes, src_ip: IPv4Address, dst_mac: bytes,
              dst_ip: IPv4Address, eth_dst: bytes | None = None) -> bytes:
    """An Ethernet ARP frame (no padding)."""
    eth = ETH_HDR.pack(eth_dst if eth_dst is not None else dst_mac, src_mac, ETH_P_ARP)
    return eth + ARP_PKT.pack(1, ETH_P_IP, 6, 4, op, src_mac, src_ip.packed, dst_mac,
                              dst_ip.packed)


def build_ipv4(src: IPv4Address, dst: IPv4Address, proto: int, payload: bytes,
               ident: int = 0, ttl: int = TTL) -> bytes:
    """An IPv4 packet (no options, DF clear) with a valid header checksum."""
    hdr = bytearray(IPV4_HDR.pack(0x45, 0, 20 + len(payload), ident & 0xFFFF, 0, ttl, proto,
                                  0, src.packed, dst.packed))
    hdr[10:12] = inet_checksum(hdr).to_bytes(2, "big")
    return bytes(hdr) + payload


def build_icmp_echo(kind: int, ident: int, seq: int, data: bytes) -> bytes:
    """An ICMP echo request (8) or reply (0) with its checksum."""
    msg = bytearray(ICMP_ECHO.pack(kind, 0, 0, ident & 0xFFFF, seq & 0xFFFF) + data)
    msg[2:4] = inet_checksum(msg).to_bytes(2, "big")
    return bytes(msg)


def build_echo_frame(kind: int, src_mac: bytes, dst_mac: bytes, src: IPv4Address,
                     dst: IPv4Address, ident: int, seq: int, data: bytes,
                     ip_id: int = 0) -> bytes:
    icmp = build_icmp_echo(kind, ident, seq, data)
    return ETH_HDR.pack(dst_mac, src_mac, ETH_P_IP) + build_ipv4(src, dst, IPPROTO_ICMP, icmp,
                                                                 ip_id)


# -- parsing ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ArpPacket:
    op: int
    sha: bytes
    spa: IPv4Address
    tha: bytes
    tpa: IPv4Address


@dataclass(frozen=True, slots=True)
class IcmpEcho:
    eth_src: bytes
    src: IPv4Address
    dst: IPv4Address
    kind: int
    ident: int
    seq: int
    data: bytes


def parse_arp(frame: bytes) -> ArpPacket:
    """An Ethernet/IPv4 ARP packet; MalformedFrame otherwise."""
    if len(frame) < ETH_HDR.size + ARP_PKT.size:
        raise MalformedFrame("truncated ARP")
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = ARP_PKT.unpack_from(frame, ETH_HDR.size)
    if htype != 1 or ptype != ETH_P_IP or hlen != 6 or plen != 4:
        raise MalformedFrame("ARP for another hardware or protocol type")
    if op not in (ARP_REQUEST, ARP_REPLY):
        raise MalformedFrame(f"ARP opcode {op}")
    return ArpPacket(op, sha, IPv4Address(spa), tha, IPv4Address(tpa))


def parse_icmp_echo(frame: bytes) -> IcmpEcho | None:
    """An ICMP echo request or reply over IPv4; None for other valid IPv4 traffic,
    MalformedFrame for a broken header or checksum."""
    raw = _parse_echo(frame)
    if raw is None:
        return None
    src, dst, icmp = raw
    kind, _code, _c, ident, seq = ICMP_ECHO.unpack_from(icmp)
    return IcmpEcho(bytes(frame[6:12]), IPv4Address(src), IPv4Address(dst), kind, ident, seq,
                    bytes(icmp[ICMP_ECHO.size:]))


def _parse_echo(frame: bytes) -> tuple[bytes, bytes, memoryview] | None:
    """``parse_icmp_echo`` without the objects: (source, destination address
    bytes, the ICMP message) of a valid echo request or reply."""
    if len(frame) < ETH_HDR.size + IPV4_HDR.size:
        raise MalformedFrame("truncated IPv4 header")
    ip = memoryview(frame)[ETH_HDR.size:]
    (ver_ihl, _tos, total, _ident, frag, _ttl, proto, _csum, src,
     dst) = IPV4_HDR.unpack_from(ip)
    ihl = (ver_ihl & 0xF) * 4
    if ver_ihl >> 4 != 4 or ihl < 20:
        raise MalformedFrame("not an IPv4 header")
    if total < ihl or total > len(ip):
        raise MalformedFrame(f"IPv4 total length {total} with {len(ip)} bytes present")
    if inet_checksum(ip[:ihl]) != 0:
        raise MalformedFrame("bad IPv4 header checksum")
    if proto != IPPROTO_ICMP or frag & 0x3FFF:  # not ICMP, or a fragment
        return None
    icmp = ip[ihl:total]
    if len(icmp) < ICMP_ECHO.size:
        raise MalformedFrame("truncated ICMP header")
    if inet_checksum(icmp) != 0:
        raise MalformedFrame("bad ICMP checksum")
    kind = icmp[0]
    if kind not in (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY) or icmp[1] != 0:
        return None
    return bytes(src), bytes(dst), icmp


# -- ARP cache ------------------------------------------------------------------------------
class ArpCache:
    """IPv4 -> MAC, bounded (least recently updated evicted) and expiring."""

    def __init__(self, size: int = ARP_CACHE_SIZE, ttl: float = ARP_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.size = size
        self.ttl = ttl
        self.clock = clock
        self._entries: OrderedDict[IPv4Address, tuple[bytes, float]] = OrderedDict()
        self._waiters: dict[IPv4Address, list[asyncio.Future[bytes]]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def update(self, ip: IPv4Address, mac: bytes) -> None:
        self._entries.pop(ip, None)
        self._entries[ip] = (mac, self.clock() + self.ttl)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        for fut in self._waiters.pop(ip, []):
            if not fut.done():
                fut.set_result(mac)

    def lookup(self, ip: IPv4Address) -> bytes | None:
        entry = self._entries.get(ip)
        if entry is None:
            return None
        if entry[1] < self.clock():
            del self._entries[ip]
            return None
        return entry[0]

    def waiter(self, ip: IPv4Address) -> asyncio.Future[bytes]:
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(ip, []).append(fut)
        return fut

    def forget_waiter(self, ip: IPv4Address, fut: asyncio.Future[bytes]) -> None:
        waiters = self._waiters.get(ip)
        if waiters and fut in waiters:
            waiters.remove(fut)
            if not waiters:
                del self._waiters[ip]

    def entries(self) -> dict[str, str]:
        now = self.clock()
        return {str(ip): mac.hex(":") for ip, (mac, exp) in self._entries.items() if exp >= now}


# -- the responder and ping client ------------------------------------------------------------
@dataclass
class ResponderCounters:
    arp_replies: int = 0
    echo_replies: int = 0
    arp_requests_sent: int = 0
    echo_requests_sent: int = 0
    echo_replies_received: int = 0
    malformed: int = 0
    ignored: int = 0


@dataclass
class PingResult:
    """One Ping: for every request its sequence number and RTT (None: no reply)."""

    address: IPv4Address
    replies: list[tuple[int, float | None]] = field(default_factory=list)
    #: The destination's MAC if ARP resolved it.
    mac: bytes | None = None

    @property
    def transmitted(self) -> int:
        return len(self.replies)

    @property
    def received(self) -> int:
        return sum(1 for _, rtt in self.replies if rtt is not None)


class Responder:
    """ARP and ICMP echo for one IPv4 address, and a ping client."""

    def __init__(self, mac: bytes, iface: IPv4Interface, transmit: Transmit, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if len(mac) != 6 or mac[0] & 1:
            raise ConfigError("the responder needs a unicast MAC address")
        self.mac = mac
        self.iface = iface
        self.ip = iface.ip
        self._ip_packed = iface.ip.packed
        self.transmit = transmit
        self.arp = ArpCache(clock=clock)
        self.counters = ResponderCounters()
        self._ip_id = secrets.randbelow(0x10000)
        #: (ident, seq) -> (send time in ns, future of the arrival time in ns)
        self._outstanding: dict[tuple[int, int], tuple[int, asyncio.Future[int]]] = {}
        #: When the frames ``handle`` is looking at were taken off the RX ring.
        self._arrived_ns = 0
        #: A ping's payload after its timestamp, by size.
        self._padding: dict[int, bytes] = {}
        self._idents: set[int] = set()

    @property
    def replies(self) -> int:
        """ARP and echo requests answered."""
        return self.counters.arp_replies + self.counters.echo_replies

    def _next_ip_id(self) -> int:
        self._ip_id = (self._ip_id + 1) & 0xFFFF
        return self._ip_id

    # -- receive -----------------------------------------------------------------------------
    def handle(self, frames: Sequence[bytes]) -> None:
        """An RX handler: answer what is for us; never raises for a bad frame."""
        out: list[bytes] = []
        self._arrived_ns = time.perf_counter_ns()
        for frame in frames:
            try:
                reply = self._handle_one(frame)
            except MalformedFrame:
                self.counters.malformed += 1
                continue
            except (ValueError, struct.error, IndexError) as exc:  # belt and braces
                self.counters.malformed += 1
                logger.debug("responder: unexpected bad frame: %s", exc)
                continue
            if reply is not None:
                out.append(reply)
        if out:
            self.transmit(out)

    def _handle_one(self, frame: bytes) -> bytes | None:
        if len(frame) < ETH_HDR.size:
            raise MalformedFrame("runt frame")
        dst, src, etype = ETH_HDR.unpack_from(frame)
        if dst != self.mac and dst != BROADCAST:
            self.counters.ignored += 1
            return None
        if src[0] & 1:  # a multicast source address is never valid
            raise MalformedFrame("multicast source MAC")
        if etype == ETH_P_ARP:
            return self._handle_arp(frame)
        if etype == ETH_P_IP:
            return self._handle_ip(frame, dst)
        self.counters.ignored += 1
        return None

    def _learnable(self, ip: IPv4Address, mac: bytes) -> bool:
        return (ip in self.iface.network and ip != self.ip and not ip.is_unspecified
                and ip != self.iface.network.broadcast_address
                and not mac[0] & 1 and mac != bytes(6))

    def _handle_arp(self, frame: bytes) -> bytes | None:
        arp = parse_arp(frame)
        if self._learnable(arp.spa, arp.sha) and (
                arp.tpa == self.ip or self.arp.lookup(arp.spa) is not None
                or arp.op == ARP_REPLY):
            self.arp.update(arp.spa, arp.sha)
        if arp.op == ARP_REQUEST and arp.tpa == self.ip and not arp.sha[0] & 1:
            self.counters.arp_replies += 1
            return build_arp(ARP_REPLY, self.mac, self.ip, arp.sha, arp.spa)
        self.counters.ignored += 1
        return None

    def _handle_ip(self, frame: bytes, eth_dst: bytes) -> bytes | None:
        # On the addresses' bytes, not IPv4Address objects: the echo reply is
        # on the latency path of every ping (bench/lanbench.py).
        echo = _parse_echo(frame)
        if echo is None or echo[1] != self._ip_packed:
            self.counters.ignored += 1
            return None
        src, _dst, icmp = echo
        if icmp[0] == ICMP_ECHO_REQUEST:
            # Not to a multicast (224/4), unspecified or limited-broadcast source.
            if eth_dst != self.mac or 224 <= src[0] <= 239 or src == b"\0\0\0\0" \
                    or src == b"\xff\xff\xff\xff":
                self.counters.ignored += 1
                return None
            self.counters.echo_replies += 1
            # The request's message with type 0 is the reply's (code 0, same
            # ident, seq and data): build_echo_frame's bytes.
            reply = bytearray(icmp)
            reply[0] = ICMP_ECHO_REPLY
            reply[2:4] = b"\0\0"
            reply[2:4] = inet_checksum(reply).to_bytes(2, "big")
            hdr = bytearray(IPV4_HDR.pack(0x45, 0, 20 + len(reply), self._next_ip_id(), 0, TTL,
                                          IPPROTO_ICMP, 0, self._ip_packed, src))
            hdr[10:12] = inet_checksum(hdr).to_bytes(2, "big")
            return ETH_HDR.pack(frame[6:12], self.mac, ETH_P_IP) + hdr + reply
        _kind, _code, _c, ident, seq = ICMP_ECHO.unpack_from(icmp)
        entry = self._outstanding.get((ident, seq))
        if entry is not None and not entry[1].done():
            self.counters.echo_replies_received += 1
            entry[1].set_result(self._arrived_ns)
        else:
            self.counters.ignored += 1
        return None

    # -- ping ----------------------------------------------------------------------------------
    def check_target(self, address: str | IPv4Address) -> IPv4Address:
        """The address to ping; ConfigError unless a host on our subnet."""
        try:
            ip = IPv4Address(address.strip() if isinstance(address, str) else address)
        except (ipaddress.AddressValueError, ValueError):
            raise ConfigError(f"bad IPv4 address {address!r}") from None
        net = self.iface.network
        if ip.is_multicast or ip.is_unspecified or ip == IPv4Address("255.255.255.255"):
            raise ConfigError(f"{ip} is not a unicast address")
        if ip not in net:
            raise ConfigError(f"{ip} is not on the guest's subnet {net} (the guest has no routes)")
        if net.prefixlen < 31 and ip in (net.network_address, net.broadcast_address):
            raise ConfigError(f"{ip} is the network or broadcast address of {net}")
        if ip == self.ip:
            raise ConfigError(f"{ip} is the guest's own address")
        return ip

    async def resolve(self, ip: IPv4Address, timeout: float) -> bytes | None:
        """The MAC of ``ip``: from the cache, else by ARP requests (retried)."""
        mac = self.arp.lookup(ip)
        if mac is not None:
            return mac
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        fut = self.arp.waiter(ip)
        try:
            while True:
                self.counters.arp_requests_sent += 1
                self.transmit([build_arp(ARP_REQUEST, self.mac, self.ip, bytes(6), ip,
                                         eth_dst=BROADCAST)])
                left = deadline - loop.time()
                if left <= 0:
                    return None
                try:
                    return await asyncio.wait_for(asyncio.shield(fut), min(left, ARP_RETRY_S))
                except TimeoutError:
                    if loop.time() >= deadline:
                        return None
        finally:
            self.arp.forget_waiter(ip, fut)
            fut.cancel()

    async def ping(self, address: str | IPv4Address, *, count: int = 3, interval: float = 0.2,
                   timeout: float = 1.0, size: int = 56) -> PingResult:
        """ICMP echo ``count`` times; every request waits up to ``timeout`` for its reply."""
        ip = self.check_target(address)
        if not 1 <= count <= MAX_PING_COUNT:
            raise ConfigError(f"count {count}: 1 to {MAX_PING_COUNT}")
        if not 0 <= size <= MAX_PING_SIZE:
            raise ConfigError(f"size {size}: 0 to {MAX_PING_SIZE} bytes")
        if not 0 < timeout <= MAX_PING_TIMEOUT_MS / 1000:
            raise ConfigError(f"timeout {timeout}s: up to {MAX_PING_TIMEOUT_MS / 1000:g}s")
        if not 0.001 <= interval <= MAX_PING_INTERVAL_MS / 1000:
            raise ConfigError(f"interval {interval}s: 1 ms to {MAX_PING_INTERVAL_MS / 1000:g}s")
        result = PingResult(ip)
        ident = secrets.randbelow(0x10000)
        while ident in self._idents:
            ident = secrets.randbelow(0x10000)
        self._idents.add(ident)
        loop = asyncio.get_running_loop()
        pending: list[tuple[int, int, asyncio.Future[int]]] = []
        unresolved: list[int] = []
        try:
            for seq in range(1, count + 1):
                if seq > 1:
                    await asyncio.sleep(interval)
                mac = await self.resolve(ip, timeout)
                if mac is None:
                    unresolved.append(seq)
                    continue
                result.mac = mac
                padding = self._padding.get(size)
                if padding is None:
                    padding = self._padding[size] = bytes(i & 0xFF for i in range(max(0, size - 8)))
                stamp = time.time_ns().to_bytes(8, "big")
                data = (stamp + padding)[:size]
                frame = build_echo_frame(ICMP_ECHO_REQUEST, self.mac, mac, self.ip, ip, ident, seq,
                                         data, self._next_ip_id())
                fut: asyncio.Future[int] = loop.create_future()
                self.counters.echo_requests_sent += 1
                # As ping(8) does: from the request handed to the driver to the
                # reply taken off the RX ring (``handle``).
                sent_ns = time.perf_counter_ns()
                self._outstanding[(ident, seq)] = (sent_ns, fut)
                self.transmit([frame])
                pending.append((seq, sent_ns, fut))
            rtts: dict[int, float | None] = dict.fromkeys(unresolved)
            for seq, sent_ns, fut in pending:
                left = sent_ns / 1e9 + timeout - time.perf_counter_ns() / 1e9
                try:
                    arrived = await asyncio.wait_for(asyncio.shield(fut), max(0.0, left))
                    rtts[seq] = (arrived - sent_ns) / 1000
                except TimeoutError:
                    rtts[seq] = None
            result.replies = sorted(rtts.items())
            return result
        finally:
            for seq, _sent, fut in pending:
                self._outstanding.pop((ident, seq), None)
                fut.cancel()
            self._idents.discard(ident)


__all__ = [
    "ArpCache",
    "MalformedFrame",
    "PingResult",
    "Responder",
    "build_arp",
    "build_echo_frame",
    "build_icmp_echo",
    "build_ipv4",
    "parse_arp",
    "parse_icmp_echo",
    "parse_interface",
]
