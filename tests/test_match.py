"""Frame matches (virtwire.net.match, docs/match.md): the expression parser, its
errors and caps, and each field on real frames; pcap-filter expressions through
the host's libpcap, checked against the field form on the same frames."""

from __future__ import annotations

import ctypes.util
import ipaddress

import pytest

from virtwire.errors import ConfigError
from virtwire.guest.responder import build_echo_frame
from virtwire.net.match import (
    MAX_MATCH_LEN,
    MAX_MATCH_TERMS,
    MatchError,
    describe,
    dissect,
    parse_match,
)

from support.e1000_program import eth, ipv4, ipv6, tcp, udp, vlan_tag
from support.need import need

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")
BCAST = b"\xff" * 6
IP_A = ipaddress.IPv4Address("198.18.0.1")
IP_B = ipaddress.IPv4Address("198.18.0.2")
V6_A = ipaddress.IPv6Address("2001:db8::1").packed
V6_B = ipaddress.IPv6Address("2001:db8::2").packed

ICMP = build_echo_frame(8, MAC_A, MAC_B, IP_A, IP_B, 7, 1, b"ping")
DNS = eth(MAC_A, MAC_B, 0x0800, ipv4(IP_B.packed, IP_A.packed, 17, udp(40000, 53, b"q")))
HTTP = eth(MAC_B, MAC_A, 0x0800, ipv4(IP_A.packed, IP_B.packed, 6, tcp(51000, 80, 1, b"GET")))
V6_UDP = eth(MAC_A, MAC_B, 0x86DD, ipv6(V6_A, V6_B, 17, udp(546, 547, b"dhcp")))
ARP = eth(BCAST, MAC_A, 0x0806, bytes(28))
VLAN_DNS = vlan_tag(DNS, 0x2000 | 42)
FRAMES = {"icmp": ICMP, "dns": DNS, "http": HTTP, "v6udp": V6_UDP, "arp": ARP,
          "vlan_dns": VLAN_DNS}


def matching(expr: str) -> set[str]:
    m = parse_match(expr)
    return {name for name, frame in FRAMES.items() if m.matches(frame)}


@pytest.mark.parametrize(("expr", "names"), [
    ("any", set(FRAMES)),
    ("ethertype=0x0800", {"icmp", "dns", "http", "vlan_dns"}),
    ("ethertype=arp", {"arp"}),
    ("ethertype=ipv6", {"v6udp"}),
    ("eth.src=02:00:00:00:00:01", {"icmp", "http", "arp"}),
    ("eth.dst=ff:ff:ff:ff:ff:ff", {"arp"}),
    ("eth.addr=02:00:00:00:00:02", {"icmp", "dns", "http", "v6udp", "vlan_dns"}),
    ("vlan=42", {"vlan_dns"}),
    ("vlan=40-50", {"vlan_dns"}),
    ("vlan=none,ip.proto=udp", {"dns", "v6udp"}),
    ("vlan=any", {"vlan_dns"}),
    ("ip.src=198.18.0.1", {"icmp", "http"}),
    ("ip.dst=198.18.0.1", {"dns", "vlan_dns"}),
    ("ip.addr=198.18.0.0/15", {"icmp", "dns", "http", "vlan_dns"}),
    ("ip.src=2001:db8::/32", {"v6udp"}),
    ("ip6.dst=2001:db8::2", {"v6udp"}),
    ("ip.proto=icmp", {"icmp"}),
    ("ip.proto=udp", {"dns", "v6udp", "vlan_dns"}),
    ("ip6.proto=udp", {"v6udp"}),
    ("ip.proto=6", {"http"}),
    ("udp.dport=53", {"dns", "vlan_dns"}),
    ("udp.port=546-547", {"v6udp"}),
    ("tcp.dport=80", {"http"}),
    ("tcp.sport=80", set()),
    ("udp.dport=80", set()),
    ("l4.dport=53|80", {"dns", "http", "vlan_dns"}),
    ("l4.sport=40000", {"dns", "vlan_dns"}),
    ("bytes@14=45", {"icmp", "dns", "http"}),
    ("bytes@14=40/f0", {"icmp", "dns", "http"}),
    ("bytes@12=81:00", {"vlan_dns"}),
    ("bytes@12=0800", {"icmp", "dns", "http"}),
    ("ethertype=0x0800,ip.src=198.18.0.1,ip.proto=icmp,bytes@14=4500", {"icmp"}),
    ("ip.proto!=icmp,ethertype=ipv4", {"dns", "http", "vlan_dns"}),
    ("len=42", {"arp"}),
    ("ETHERTYPE = 0x0806", {"arp"}),
    ("mac.src=02:00:00:00:00:01,eth.type=arp", {"arp"}),
])
def test_each_field_on_real_frames(expr: str, names: set[str]) -> None:
    assert matching(expr) == names


def test_bytes_past_the_frame_do_not_match() -> None:
    assert not parse_match(f"bytes@{len(ARP) - 1}=0000").matches(ARP)
    assert not parse_match(f"bytes@{len(ARP) - 1}=0000/ffff").matches(ARP)
    assert parse_match(f"bytes@{len(ARP) - 2}=0000").matches(ARP)


def test_a_fragment_has_no_ports_and_a_runt_has_no_fields() -> None:
    hdr = bytearray(DNS)
    hdr[14 + 6:14 + 8] = (0x2000 | 10).to_bytes(2, "big")  # MF, offset 80 bytes
    frag = bytes(hdr)
    assert parse_match("ip.proto=udp").matches(frag)
    assert not parse_match("udp.dport=53").matches(frag)
    runt = DNS[:10]
    assert dissect(runt).ethertype == -1
    assert not parse_match("ethertype=0x0800").matches(runt)
    assert not parse_match("eth.src=02:00:00:00:00:02").matches(runt)
    assert describe(runt) == "10 bytes (runt)"


def test_ipv6_extension_headers_are_walked_to_the_ports() -> None:
    hop_by_hop = bytes([17, 0]) + bytes(6)  # next header UDP, 8 bytes
    frame = eth(MAC_A, MAC_B, 0x86DD, ipv6(V6_A, V6_B, 0, hop_by_hop + udp(546, 547, b"x")))
    assert parse_match("ip.proto=udp,udp.dport=547").matches(frame)
    later_fragment = bytes([17, 0, 0, 8 << 3, 0, 0, 0, 1])  # offset 64: no ports
    frame = eth(MAC_A, MAC_B, 0x86DD, ipv6(V6_A, V6_B, 44, later_fragment + udp(1, 2, b"")))
    assert parse_match("ip6.proto=udp").matches(frame)
    assert not parse_match("udp.dport=2").matches(frame)


def test_describe_names_the_layers() -> None:
    assert describe(DNS) == (f"{len(DNS)} bytes, 02:00:00:00:00:02 > 02:00:00:00:00:01, "
                             "IPv4 198.18.0.2 > 198.18.0.1 udp 40000 > 53")
    assert "vlan 42" in describe(VLAN_DNS)
    assert "ethertype 0x0806" in describe(ARP)


@pytest.mark.parametrize(("expr", "words"), [
    ("", "empty match expression"),
    ("   ", "empty match expression"),
    ("udp.dprot=53", "unknown field 'udp.dprot' (did you mean udp.dport?)"),
    ("ip.proto", "match term 1 'ip.proto': is not FIELD=VALUE"),
    ("ip.proto=icmp,,udp.dport=53", "match term 2 is empty"),
    ("ip.proto=icmp,", "match term 2 is empty"),
    ("=5", "has no field before '='"),
    ("ip.src=198.18.0.300", "is not an IPv4 or IPv6 address or CIDR"),
    ("ip6.src=198.18.0.1", "is not an IPv6 address"),
    ("ethertype=0x10000", "ethertype 65536 is out of range (0..65535)"),
    ("ethertype=ipx", "ethertype 'ipx' is not a number"),
    ("vlan=4096", "VLAN id 4096 is out of range"),
    ("udp.dport=70000", "port 70000 is out of range"),
    ("udp.dport=60-50", "runs backwards"),
    ("ip.proto=bogus", "IP protocol 'bogus' is not a number"),
    ("eth.src=02:00:00:00:01", "bad MAC address"),
    ("bytes@14=4", "is not hexadecimal"),
    ("bytes@14=zz", "is not hexadecimal"),
    ("bytes@14=4500/ff", "mask 'ff' is 1 bytes, the value 2"),
    ("bytes@14=45/0f", "has bits outside mask"),
    ("bytes@x=45", "offset 'x' is not a number"),
    ("bytes@70000=45", "offset 70000 is out of range"),
    (f"bytes@0={'00' * 257}", "longer than 256"),
    ("ip.proto=udp|", "has an empty value"),
    ("udp.dport=" + "|".join(["1"] * 17), "17 alternatives, more than 16"),
    (",".join(["any"] * (MAX_MATCH_TERMS + 1)), f"more than {MAX_MATCH_TERMS}"),
    ("a" * (MAX_MATCH_LEN + 1), f"longer than {MAX_MATCH_LEN}"),
    ("pcap:", "pcap: needs a pcap-filter expression"),
])
def test_a_bad_expression_is_a_config_error_naming_the_term(expr: str, words: str) -> None:
    with pytest.raises(MatchError) as info:
        parse_match(expr)
    assert isinstance(info.value, ConfigError)
    assert words in str(info.value)


def test_the_caps_are_inclusive() -> None:
    assert parse_match(",".join(["ip.proto=udp"] * MAX_MATCH_TERMS)).matches(DNS)
    padded = "ip.proto=udp" + " " * (MAX_MATCH_LEN - len("ip.proto=udp"))
    assert parse_match(padded).matches(DNS)
    assert str(parse_match(" ip.proto=udp ")) == "ip.proto=udp"


# -- pcap-filter through libpcap ---------------------------------------------------------
@pytest.fixture
def needs_libpcap() -> None:
    need(ctypes.util.find_library("pcap") is not None,
         "libpcap not installed (Debian package libpcap0.8)")

#: pcap-filter expression -> the field form that means the same on FRAMES.
EQUIVALENT = [
    ("icmp", "ip.proto=icmp"),
    ("udp dst port 53", "udp.dport=53,vlan=none"),
    ("vlan 42 and udp dst port 53", "vlan=42,udp.dport=53"),
    ("ip src 198.18.0.1", "ip.src=198.18.0.1"),
    ("ip6 and udp", "ip6.proto=udp"),
    ("arp", "ethertype=arp"),
    ("ether src 02:00:00:00:00:01", "eth.src=02:00:00:00:00:01"),
    ("ether broadcast", "eth.dst=ff:ff:ff:ff:ff:ff"),
    ("tcp port 80 and host 198.18.0.2", "tcp.port=80,ip.addr=198.18.0.2"),
    ("net 198.18.0.0/15", "ip.addr=198.18.0.0/15,vlan=none"),
    ("ip[0] & 0xf0 = 0x40", "bytes@14=40/f0"),
]


@pytest.mark.usefixtures("needs_libpcap")
@pytest.mark.parametrize(("pcap", "fields"), EQUIVALENT)
def test_pcap_filter_agrees_with_the_field_form(pcap: str, fields: str) -> None:
    got = matching(f"pcap:{pcap}")
    assert got == matching(fields)
    assert got, "each pair matches at least one frame"


@pytest.mark.usefixtures("needs_libpcap")
def test_a_bad_pcap_filter_is_a_config_error_with_libpcaps_words() -> None:
    with pytest.raises(MatchError, match=r"pcap-filter expression 'udp port': .*syntax error"):
        parse_match("pcap:udp port")
    with pytest.raises(MatchError, match="ASCII"):
        parse_match("pcap:host \u00e9")




@pytest.mark.usefixtures("needs_libpcap")
def test_the_examples_of_the_docs_parse() -> None:
    """docs/match.md's first block and the module's docstring hold valid matches."""
    import re
    from pathlib import Path

    from virtwire.net import match as module

    text = (Path(__file__).resolve().parent.parent / "docs" / "match.md").read_text()
    block = re.search(r"```\n(.*?)```", text, re.DOTALL)
    assert block is not None and module.__doc__ is not None
    examples = [*block.group(1).splitlines(), module.__doc__.split("\n\n")[2]]
    assert len(examples) == 6
    for example in examples:
        parse_match(example)
