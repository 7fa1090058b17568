"""Frame matches: which Ethernet frames an assertion (``virtwire expect``,
NetClientService.WaitForFrame/ExpectNoFrame/CountFrames) waits for.

A match is written as a small expression (docs/match.md):

    ethertype=ipv4,ip.src=198.18.0.0/15,ip.proto=udp,udp.dport=53|5353,bytes@14=40/f0

terms joined by ``,`` (all must hold); a term is ``FIELD=VALUE``,
``FIELD!=VALUE`` (must not hold) or ``any``; a value may list alternatives
with ``|`` (any one holds). ``pcap:EXPR`` instead takes a whole pcap-filter
expression (tcpdump's), compiled by the host's libpcap (Debian's libpcap0.8),
loaded on first use through ctypes. Pure: no I/O but that library; a bad
expression is a MatchError (a ConfigError) naming the term and why.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import difflib
import ipaddress
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from virtwire.address import shorten
from virtwire.errors import BackendError, ConfigError
from virtwire.net.eth import ETH_HLEN, ETH_P_8021Q, NET_BUFSIZE, parse_mac

__all__ = [
    "MAX_MATCH_LEN",
    "MAX_MATCH_TERMS",
    "FrameMatch",
    "MatchError",
    "describe",
    "dissect",
    "parse_match",
]

#: The longest expression taken, in characters (either form).
MAX_MATCH_LEN = 1024
#: The most terms one expression takes (``,``-separated).
MAX_MATCH_TERMS = 32
#: The most alternatives one term takes (``|``-separated).
MAX_ALTERNATIVES = 16
#: The longest ``bytes@OFFSET=HEX`` pattern, in bytes.
MAX_PATTERN_BYTES = 256

PCAP_PREFIX = "pcap:"

ETHERTYPE_NAMES = {"ipv4": 0x0800, "ip": 0x0800, "arp": 0x0806, "ipv6": 0x86DD,
                   "vlan": ETH_P_8021Q, "lldp": 0x88CC, "rarp": 0x8035, "qinq": 0x88A8}
PROTO_NAMES = {"icmp": 1, "igmp": 2, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "ah": 51,
               "icmpv6": 58, "icmp6": 58, "sctp": 132}
_IPV6_EXT_HEADERS = frozenset((0, 43, 60))  # hop-by-hop, routing, destination options
_IPV6_FRAGMENT = 44
_IPV6_AH = 51
#: IPv6 extension headers walked before giving up on finding the upper layer.
_IPV6_MAX_EXT = 8


class MatchError(ConfigError):
    """A match expression that cannot be parsed; the message names the term."""


# -- dissection ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Dissected:
    """The fields of one frame that terms look at (-1 / None: not present)."""

    frame: bytes
    vlan: int
    ethertype: int
    #: 4 or 6 for an IP packet, else 0.
    ip_version: int
    ip_src: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    ip_dst: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    ip_proto: int
    #: TCP or UDP ports of an unfragmented packet or a first fragment.
    sport: int
    dport: int


def dissect(frame: bytes) -> Dissected:
    """Ethernet, one 802.1Q tag, IPv4/IPv6 (IPv6 extension headers walked) and
    TCP/UDP ports; what is cut short or absent stays -1 / None."""
    n = len(frame)
    vlan = etype = -1
    ip_version = 0
    src: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    proto = sport = dport = -1
    if n >= ETH_HLEN:
        etype = (frame[12] << 8) | frame[13]
        l3 = ETH_HLEN
        if etype == ETH_P_8021Q and n >= ETH_HLEN + 4:
            vlan = ((frame[14] << 8) | frame[15]) & 0x0FFF
            etype = (frame[16] << 8) | frame[17]
            l3 += 4
        l4 = -1
        if etype == 0x0800 and n >= l3 + 20 and frame[l3] >> 4 == 4:
            ihl = (frame[l3] & 0x0F) * 4
            ip_version = 4
            src = ipaddress.IPv4Address(frame[l3 + 12:l3 + 16])
            dst = ipaddress.IPv4Address(frame[l3 + 16:l3 + 20])
            proto = frame[l3 + 9]
            frag_offset = ((frame[l3 + 6] << 8) | frame[l3 + 7]) & 0x1FFF
            if ihl >= 20 and frag_offset == 0:
                l4 = l3 + ihl
        elif etype == 0x86DD and n >= l3 + 40 and frame[l3] >> 4 == 6:
            ip_version = 6
            src = ipaddress.IPv6Address(frame[l3 + 8:l3 + 24])
            dst = ipaddress.IPv6Address(frame[l3 + 24:l3 + 40])
            proto, l4 = _ipv6_upper(frame, frame[l3 + 6], l3 + 40)
        if proto in (6, 17) and 0 <= l4 and n >= l4 + 4:
            sport = (frame[l4] << 8) | frame[l4 + 1]
            dport = (frame[l4 + 2] << 8) | frame[l4 + 3]
    return Dissected(frame, vlan, etype, ip_version, src, dst, proto, sport, dport)


def _ipv6_upper(frame: bytes, nxt: int, off: int) -> tuple[int, int]:
    """(upper-layer protocol, its offset or -1) past IPv6 extension headers."""
    n = len(frame)
    for _ in range(_IPV6_MAX_EXT):
        if nxt in _IPV6_EXT_HEADERS or nxt == _IPV6_AH:
            if n < off + 2:
                return nxt, -1
            length = (frame[off + 1] + 2) * 4 if nxt == _IPV6_AH else (frame[off + 1] + 1) * 8
            nxt, off = frame[off], off + length
        elif nxt == _IPV6_FRAGMENT:
            if n < off + 8:
                return nxt, -1
            first = (((frame[off + 2] << 8) | frame[off + 3]) & 0xFFF8) == 0
            nxt, off = frame[off], off + 8
            if not first:
                return nxt, -1
        else:
            return nxt, off
    return nxt, -1


def describe(frame: bytes) -> str:
    """One line about a frame, for messages: MACs, VLAN, addresses, protocol, ports."""
    d = dissect(frame)
    if d.ethertype < 0:
        return f"{len(frame)} bytes (runt)"
    mac = ":".join(f"{b:02x}" for b in frame[6:12]), ":".join(f"{b:02x}" for b in frame[0:6])
    parts = [f"{len(frame)} bytes", f"{mac[0]} > {mac[1]}"]
    if d.vlan >= 0:
        parts.append(f"vlan {d.vlan}")
    if d.ip_version:
        proto = next((k for k, v in PROTO_NAMES.items() if v == d.ip_proto), str(d.ip_proto))
        ports = f" {d.sport} > {d.dport}" if d.sport >= 0 else ""
        parts.append(f"IPv{d.ip_version} {d.ip_src} > {d.ip_dst} {proto}{ports}")
    else:
        parts.append(f"ethertype {d.ethertype:#06x}")
    return ", ".join(parts)


# -- terms -----------------------------------------------------------------------------
Test = Callable[[Dissected], bool]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _number(text: str, what: str, limit: int) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise MatchError(f"{what} {shorten(text)} is not a number") from None
    if not 0 <= value <= limit:
        raise MatchError(f"{what} {value} is out of range (0..{limit})")
    return value


def _range(text: str, what: str, limit: int) -> tuple[int, int]:
    """``N`` or ``LOW-HIGH``."""
    low, dash, high = text.partition("-")
    if not dash:
        value = _number(text, what, limit)
        return value, value
    lo, hi = _number(low, what, limit), _number(high, what, limit)
    if lo > hi:
        raise MatchError(f"{what} range {text!r} runs backwards")
    return lo, hi


def _ethertype(text: str) -> Test:
    value = ETHERTYPE_NAMES.get(text.lower())
    if value is None:
        value = _number(text, "ethertype", 0xFFFF)
    return lambda d: d.ethertype == value


def _mac(which: str) -> Callable[[str], Test]:
    def build(text: str) -> Test:
        try:
            mac = parse_mac(text)
        except ConfigError as exc:
            raise MatchError(str(exc)) from None
        if which == "src":
            return lambda d: d.frame[6:12] == mac
        if which == "dst":
            return lambda d: d.frame[0:6] == mac
        return lambda d: mac in (d.frame[0:6], d.frame[6:12])
    return build


def _vlan(text: str) -> Test:
    if text.lower() == "none":
        return lambda d: d.vlan < 0
    if text.lower() == "any":
        return lambda d: d.vlan >= 0
    lo, hi = _range(text, "VLAN id", 4095)
    return lambda d: lo <= d.vlan <= hi


def _network(text: str, family: int) -> Network:
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise MatchError(f"{shorten(text)} is not an IPv4 or IPv6 address or CIDR "
                         "(e.g. 198.18.0.1, 198.18.0.0/15, fe80::1)") from None
    if family and net.version != family:
        raise MatchError(f"{shorten(text)} is not an IPv{family} address")
    return net


def _ip(which: str, family: int = 0) -> Callable[[str], Test]:
    def build(text: str) -> Test:
        net = _network(text, family)
        version = net.version

        def test(d: Dissected) -> bool:
            if d.ip_version != version:
                return False
            if which == "src":
                return d.ip_src in net
            if which == "dst":
                return d.ip_dst in net
            return d.ip_src in net or d.ip_dst in net
        return test
    return build


def _proto(family: int = 0) -> Callable[[str], Test]:
    def build(text: str) -> Test:
        value = PROTO_NAMES.get(text.lower())
        if value is None:
            value = _number(text, "IP protocol", 255)
        if family:
            return lambda d: d.ip_version == family and d.ip_proto == value
        return lambda d: d.ip_version != 0 and d.ip_proto == value
    return build


def _port(proto: int, which: str) -> Callable[[str], Test]:
    """Ports of TCP (6), UDP (17) or either (0)."""
    def build(text: str) -> Test:
        lo, hi = _range(text, "port", 0xFFFF)

        def test(d: Dissected) -> bool:
            if d.sport < 0 or (proto and d.ip_proto != proto):
                return False
            if which == "src":
                return lo <= d.sport <= hi
            if which == "dst":
                return lo <= d.dport <= hi
            return lo <= d.sport <= hi or lo <= d.dport <= hi
        return test
    return build


def _length(text: str) -> Test:
    lo, hi = _range(text, "length", NET_BUFSIZE)
    return lambda d: lo <= len(d.frame) <= hi


def _hex(text: str, what: str) -> bytes:
    digits = text.replace(":", "").replace(".", "")
    if digits.lower().startswith("0x"):
        digits = digits[2:]
    try:
        data = bytes.fromhex(digits)
    except ValueError:
        raise MatchError(f"{what} {shorten(text)} is not hexadecimal "
                         "(an even number of 0-9a-f digits, e.g. 4500 or 45:00)") from None
    if not data:
        raise MatchError(f"{what} is empty")
    if len(data) > MAX_PATTERN_BYTES:
        raise MatchError(f"{what} of {len(data)} bytes is longer than {MAX_PATTERN_BYTES}")
    return data


def _bytes_at(offset: int) -> Callable[[str], Test]:
    def build(text: str) -> Test:
        value_text, slash, mask_text = text.partition("/")
        value = _hex(value_text, "bytes")
        if slash:
            mask = _hex(mask_text, "mask")
            if len(mask) != len(value):
                raise MatchError(f"mask {mask_text!r} is {len(mask)} bytes, "
                                 f"the value {len(value)}: give them the same length")
            masked = bytes(v & m for v, m in zip(value, mask, strict=True))
            if masked != value:
                raise MatchError(f"bytes {value_text!r} has bits outside mask {mask_text!r}: "
                                 "they could never match")
            end = offset + len(value)
            return lambda d: (len(d.frame) >= end and bytes(
                b & m for b, m in zip(d.frame[offset:end], mask, strict=True)) == value)
        end = offset + len(value)
        return lambda d: d.frame[offset:end] == value
    return build


#: FIELD -> (what it matches, for help and docs; value parser -> test).
FIELDS: dict[str, tuple[str, Callable[[str], Test]]] = {
    "ethertype": ("EtherType after one 802.1Q tag: 0x0800 or a name", _ethertype),
    "eth.src": ("source MAC", _mac("src")),
    "eth.dst": ("destination MAC", _mac("dst")),
    "eth.addr": ("source or destination MAC", _mac("either")),
    "vlan": ("802.1Q VLAN id (or range), 'none' untagged, 'any' tagged", _vlan),
    "ip.src": ("IPv4 or IPv6 source address or CIDR", _ip("src")),
    "ip.dst": ("IPv4 or IPv6 destination address or CIDR", _ip("dst")),
    "ip.addr": ("IPv4 or IPv6 source or destination address or CIDR", _ip("either")),
    "ip.proto": ("IP protocol (IPv6: next header past extension headers)", _proto()),
    "ip6.src": ("IPv6 source address or CIDR", _ip("src", 6)),
    "ip6.dst": ("IPv6 destination address or CIDR", _ip("dst", 6)),
    "ip6.addr": ("IPv6 source or destination address or CIDR", _ip("either", 6)),
    "ip6.proto": ("IPv6 upper-layer protocol", _proto(6)),
    "tcp.sport": ("TCP source port (or range)", _port(6, "src")),
    "tcp.dport": ("TCP destination port (or range)", _port(6, "dst")),
    "tcp.port": ("TCP source or destination port (or range)", _port(6, "either")),
    "udp.sport": ("UDP source port (or range)", _port(17, "src")),
    "udp.dport": ("UDP destination port (or range)", _port(17, "dst")),
    "udp.port": ("UDP source or destination port (or range)", _port(17, "either")),
    "l4.sport": ("TCP or UDP source port (or range)", _port(0, "src")),
    "l4.dport": ("TCP or UDP destination port (or range)", _port(0, "dst")),
    "l4.port": ("TCP or UDP source or destination port (or range)", _port(0, "either")),
    "len": ("frame length in bytes (or range)", _length),
}
#: Other spellings of fields.
ALIASES = {"eth.type": "ethertype", "mac": "eth.addr", "mac.src": "eth.src",
           "mac.dst": "eth.dst", "vlan.id": "vlan", "frame.len": "len", "ip4.src": "ip.src",
           "ip4.dst": "ip.dst", "ip4.addr": "ip.addr"}


def _field(name: str) -> Callable[[str], Test]:
    key = ALIASES.get(name.lower(), name.lower())
    if key in FIELDS:
        return FIELDS[key][1]
    if key.startswith("bytes@"):
        return _bytes_at(_number(key[6:], "offset", NET_BUFSIZE - 1))
    near = difflib.get_close_matches(key, [*FIELDS, *ALIASES, "bytes@OFFSET"], n=1)
    hint = f" (did you mean {near[0]}?)" if near else ""
    raise MatchError(f"unknown field {shorten(name)}{hint}; fields: {', '.join(FIELDS)}, "
                     "bytes@OFFSET")


def _any_of(tests: list[Test]) -> Test:
    if len(tests) == 1:
        return tests[0]
    return lambda d: any(t(d) for t in tests)


def _term(text: str) -> Test:
    if text.lower() == "any":
        return lambda d: True
    negate = False
    name, eq, value = text.partition("=")
    if not eq:
        raise MatchError("is not FIELD=VALUE (e.g. ip.proto=icmp)")
    if name.endswith("!"):
        negate, name = True, name[:-1]
    name, value = name.strip(), value.strip()
    if not name:
        raise MatchError("has no field before '='")
    build = _field(name)
    alternatives = value.split("|")
    if len(alternatives) > MAX_ALTERNATIVES:
        raise MatchError(f"has {len(alternatives)} alternatives, more than {MAX_ALTERNATIVES}")
    if any(not a.strip() for a in alternatives):
        raise MatchError("has an empty value")
    test = _any_of([build(a.strip()) for a in alternatives])
    if negate:
        return lambda d: not test(d)
    return test


# -- pcap-filter -------------------------------------------------------------------------
class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.c_void_p)]


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _PktHdr(ctypes.Structure):
    _fields_ = [("ts", _Timeval), ("caplen", ctypes.c_uint32), ("len", ctypes.c_uint32)]


_DLT_EN10MB = 1
_PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF
_SNAPLEN = 262144
_libpcap: ctypes.CDLL | None = None


def _load_libpcap() -> ctypes.CDLL:
    """The host's libpcap (pcap_compile and pcap_offline_filter), loaded once."""
    global _libpcap
    if _libpcap is not None:
        return _libpcap
    path = ctypes.util.find_library("pcap") or "libpcap.so.0.8"
    try:
        lib = ctypes.CDLL(path)
    except OSError as exc:
        raise BackendError("pcap-filter expressions need libpcap on the host that matches "
                           "(Debian: apt-get install libpcap0.8); the field=value form "
                           "works without it") from exc
    lib.pcap_open_dead.restype = ctypes.c_void_p
    lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.pcap_compile.restype = ctypes.c_int
    lib.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(_BpfProgram), ctypes.c_char_p,
                                 ctypes.c_int, ctypes.c_uint32]
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_geterr.argtypes = [ctypes.c_void_p]
    lib.pcap_offline_filter.restype = ctypes.c_int
    lib.pcap_offline_filter.argtypes = [ctypes.POINTER(_BpfProgram), ctypes.POINTER(_PktHdr),
                                        ctypes.c_char_p]
    lib.pcap_freecode.restype = None
    lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
    lib.pcap_close.restype = None
    lib.pcap_close.argtypes = [ctypes.c_void_p]
    _libpcap = lib
    return lib


class PcapFilter:
    """A pcap-filter expression compiled to BPF by libpcap (for Ethernet frames),
    run on each frame by ``pcap_offline_filter``; the program is freed with it."""

    def __init__(self, expression: str) -> None:
        lib = _load_libpcap()
        try:
            encoded = expression.encode("ascii")
        except UnicodeEncodeError:
            raise MatchError("a pcap-filter expression is ASCII text") from None
        if b"\0" in encoded:
            raise MatchError("a pcap-filter expression has no NUL characters")
        handle = lib.pcap_open_dead(_DLT_EN10MB, _SNAPLEN)
        if not handle:
            raise BackendError("libpcap could not open a handle to compile with")
        program = _BpfProgram()
        try:
            if lib.pcap_compile(handle, ctypes.byref(program), encoded, 1,
                                _PCAP_NETMASK_UNKNOWN) != 0:
                why = (lib.pcap_geterr(handle) or b"").decode("ascii", "replace")
                raise MatchError(f"pcap-filter expression {shorten(expression)}: {why}")
        finally:
            lib.pcap_close(handle)
        self._lib = lib
        self._program = program
        self._header = _PktHdr()
        weakref.finalize(self, lib.pcap_freecode, ctypes.byref(program))

    def __call__(self, d: Dissected) -> bool:
        header = self._header
        header.caplen = header.len = len(d.frame)
        got: int = self._lib.pcap_offline_filter(ctypes.byref(self._program),
                                                 ctypes.byref(header), d.frame)
        return got != 0


# -- the match ---------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class FrameMatch:
    """A parsed match: ``matches(frame)`` is true when every term holds."""

    #: The expression as given (stripped), for messages.
    text: str
    tests: tuple[Test, ...]

    def matches(self, frame: bytes) -> bool:
        if not self.tests:
            return True
        d = dissect(frame)
        return all(test(d) for test in self.tests)

    def __str__(self) -> str:
        return self.text


def parse_match(text: str) -> FrameMatch:
    """``FIELD=VALUE,...``, ``any`` or ``pcap:EXPR`` -> a FrameMatch; MatchError
    (BackendError for ``pcap:`` without libpcap) otherwise."""
    if not isinstance(text, str):
        raise MatchError(f"a match is text, not {type(text).__name__}")
    if len(text) > MAX_MATCH_LEN:
        raise MatchError(f"match expression of {len(text)} characters is longer than "
                         f"{MAX_MATCH_LEN}")
    stripped = text.strip()
    if not stripped:
        raise MatchError("empty match expression: give FIELD=VALUE terms, 'any' or pcap:EXPR "
                         "(docs/match.md)")
    if stripped.lower().startswith(PCAP_PREFIX):
        expression = stripped[len(PCAP_PREFIX):].strip()
        if not expression:
            raise MatchError("pcap: needs a pcap-filter expression, e.g. 'pcap:icmp'")
        return FrameMatch(stripped, (PcapFilter(expression),))
    terms = stripped.split(",")
    if len(terms) > MAX_MATCH_TERMS:
        raise MatchError(f"match expression has {len(terms)} terms, more than {MAX_MATCH_TERMS}")
    tests: list[Test] = []
    for i, term in enumerate(terms, start=1):
        term = term.strip()
        where = f"match term {i} {shorten(term)}"
        if not term:
            raise MatchError(f"match term {i} is empty (two commas, or one at an end)")
        try:
            test = _term(term)
        except MatchError as exc:
            raise MatchError(f"{where}: {exc}") from None
        if term.lower() != "any":
            tests.append(test)
    return FrameMatch(stripped, tuple(tests))
