"""e1000 transmit path against docs/e1000.md#transmit: legacy,
context and data descriptors, checksum offload (putsum), TSO for IPv4 TCP, IPv6
TCP and UDP (segments parsed and checksums recomputed), VLAN insertion, the
64 KiB clip, write-back, interrupts, statistics and PHY loopback."""

from __future__ import annotations

import struct

import pytest

from virtwire.hw.e1000 import net_checksum, putsum
from virtwire.hw.e1000_regs import (
    E1000_CTRL,
    E1000_CTRL_VME,
    E1000_ICR,
    E1000_ICR_TXDW,
    E1000_ICR_TXQE,
    E1000_RCTL,
    E1000_RCTL_BAM,
    E1000_RCTL_EN,
    E1000_RCTL_LBM_MASK,
    E1000_TCTL,
    E1000_TCTL_EN,
    E1000_TDH,
    E1000_TDT,
    E1000_TXD_CMD_EOP,
    E1000_TXD_CMD_IP,
    E1000_TXD_CMD_RPS,
    E1000_TXD_CMD_RS,
    E1000_TXD_CMD_TCP,
    E1000_TXD_CMD_TSE,
    E1000_TXD_CMD_VLE,
    E1000_TXD_POPTS_IXSM,
    E1000_TXD_POPTS_TXSM,
    E1000_VET,
    MII_BMCR,
)

from support.e1000_rig import (
    BCAST,
    EOP_RS,
    MAC,
    PEER_MAC,
    Driver,
    Rig,
    brought_up,
    context,
    data_desc,
    eth_frame,
    payload,
    send_chain,
)

SRC4 = bytes([10, 0, 0, 1])
DST4 = bytes([10, 0, 0, 2])
SRC6 = bytes.fromhex("fd000000000000000000000000000001")
DST6 = bytes.fromhex("fd000000000000000000000000000002")
TCP_FIN, TCP_PSH, TCP_ACK = 0x01, 0x08, 0x10


def up(**kw: object) -> tuple[Rig, Driver]:
    return brought_up(Rig(), **kw)


# -- packet helpers (independent of the model's own checksum code) -------------------------

def csum16(data: bytes) -> int:
    """Folded one's-complement sum of 16-bit big-endian words."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f">{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def pseudo4(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    return src + dst + struct.pack(">BBH", 0, proto, length)


def pseudo6(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    return src + dst + struct.pack(">I3xB", length, proto)


def ipv4(proto: int, ident: int = 0x1234, total: int = 0) -> bytes:
    return struct.pack(">BBHHHBBH4s4s", 0x45, 0, total, ident, 0x4000, 64, proto, 0,
                       SRC4, DST4)


def ipv6(proto: int, plen: int = 0) -> bytes:
    return struct.pack(">IHBB16s16s", 0x60000000, plen, proto, 64, SRC6, DST6)


def tcp(seq: int, flags: int, check: int = 0) -> bytes:
    return struct.pack(">HHIIBBHHH", 1234, 80, seq, 0x55667788, 5 << 4, flags, 0xFFFF,
                       check, 0)


def udp(length: int = 0, check: int = 0) -> bytes:
    return struct.pack(">HHHH", 5000, 6000, length, check)


def eth(ethertype: int) -> bytes:
    return PEER_MAC + MAC + ethertype.to_bytes(2, "big")


def split(data: bytes, sizes: list[int]) -> list[bytes]:
    out, pos = [], 0
    for s in sizes:
        out.append(data[pos:pos + s])
        pos += s
    if pos < len(data):
        out.append(data[pos:])
    return out


# -- legacy descriptors and write-back -------------------------------------------------

def test_legacy_send_and_writeback_rules() -> None:
    """Write back (status |= DD, EC/LC/TU cleared, upper dword only) iff RS or RPS;
    TXDW then; TXQE always."""
    rig, drv = up()
    frame = eth_frame(dst=PEER_MAC, src=MAC, size=80)
    for cmd, written in ((E1000_TXD_CMD_EOP, False), (E1000_TXD_CMD_EOP | E1000_TXD_CMD_RS, True),
                         (E1000_TXD_CMD_EOP | E1000_TXD_CMD_RPS, True)):
        desc = bytearray(drv.legacy(frame, cmd=cmd, css=0x21, special=0xBEEF))
        desc[12] = 0x0E  # EC|LC|TU set by the guest
        i = drv.put_tx(bytes(desc))
        drv.kick()
        after = drv.tx_desc_raw(i)
        if written:
            assert after == bytes(desc[:12]) + bytes([0x01, 0x21]) + (0xBEEF).to_bytes(2, "little")
            assert rig.r(E1000_ICR) == E1000_ICR_TXDW | E1000_ICR_TXQE
        else:
            assert after == bytes(desc)
            assert rig.r(E1000_ICR) == E1000_ICR_TXQE
    assert rig.peer.frames == [frame] * 3


def test_legacy_multi_descriptor_packet_ignores_checksum_fields() -> None:
    """Legacy descriptors gather until EOP; CSO/CSS/IC are ignored."""
    rig, drv = up()
    frame = eth_frame(dst=PEER_MAC, src=MAC, size=300)
    parts = split(frame, [14, 100])
    for j, part in enumerate(parts):
        last = j == len(parts) - 1
        drv.put_tx(drv.legacy(part, cmd=(EOP_RS | 0x04000000) if last else 0, cso=20, css=14))
    assert rig.peer.frames == []
    drv.kick()
    assert rig.peer.frames == [frame]
    assert rig.r(E1000_TDH) == 3


def test_tx_needs_tctl_en_and_tctl_write_starts_it() -> None:
    rig, drv = up()
    rig.w(E1000_TCTL, 0)
    drv.put_tx(drv.legacy(eth_frame(dst=PEER_MAC)))
    drv.kick()
    assert rig.peer.frames == [] and rig.r(E1000_TDH) == 0
    assert rig.r(E1000_ICR) == 0
    rig.w(E1000_TCTL, E1000_TCTL_EN)  # a TCTL write runs start_xmit too
    assert len(rig.peer.frames) == 1
    rig.w(E1000_TDT, 0x10001)  # masked to 16 bits: 1 == TDH, nothing to do
    assert rig.r(E1000_TDT) == 1
    assert rig.r(E1000_ICR) == E1000_ICR_TXDW | E1000_ICR_TXQE


def test_tx_with_bus_master_off_reads_zeros() -> None:
    """No DMA without bus mastering: descriptors read as zeros (len 0, no EOP)."""
    rig, drv = up()
    rig.nic.set_bus_master(False)
    drv.put_tx(drv.legacy(eth_frame(dst=PEER_MAC)))
    reads, writes = rig.dma.reads, rig.dma.writes
    drv.kick()
    assert (rig.dma.reads, rig.dma.writes) == (reads, writes)
    assert rig.peer.frames == [] and rig.r(E1000_TDH) == 1
    assert rig.r(E1000_ICR) == E1000_ICR_TXQE


def test_context_descriptor_with_rs_is_written_back() -> None:
    rig, drv = up()
    ctx = bytearray(context(14, 24, 33, 34, 40, 0, E1000_TXD_CMD_IP))
    ctx[11] |= E1000_TXD_CMD_RS >> 24
    i = drv.put_tx(bytes(ctx))
    drv.kick()
    assert drv.tx_desc_raw(i)[12] == 1
    assert rig.r(E1000_ICR) == E1000_ICR_TXDW | E1000_ICR_TXQE
    assert rig.peer.frames == []


# -- checksum offload ---------------------------------------------------------------------

def test_putsum_rules() -> None:
    """Sum over data[css .. (cse ? cse+1 : n)), stored big-endian at cso, 0 written as
    0xFFFF; nothing stored unless cso < n - 1."""
    buf = bytearray(b"\x00\x00\x12\x34\x56\x78\x9a\xbc\xde")
    putsum(buf, 9, 0, 2, 0)
    assert buf[0:2] == (0xFFFF - csum16(bytes(buf[2:9]))).to_bytes(2, "big")
    buf = bytearray(b"\x00\x00\x12\x34\x56\x78\x9a\xbc\xde")
    putsum(buf, 9, 0, 2, 5)  # bytes 2..5 only
    assert buf[0:2] == (0xFFFF - csum16(bytes(buf[2:6]))).to_bytes(2, "big")
    buf = bytearray(b"\x00\x00\xff\xff")
    putsum(buf, 4, 0, 0, 0)  # sum 0xFFFF -> complement 0 -> stored as 0xFFFF
    assert buf[0:2] == b"\xff\xff"
    buf = bytearray(8)
    putsum(buf, 8, 7, 0, 0)  # cso >= n - 1: not stored
    putsum(buf, 8, 6, 0, 3)  # cse shrinks n to 4
    assert buf == bytearray(8)
    putsum(buf, 4, 0, 200, 0)  # css beyond the end: empty sum -> 0xFFFF
    assert buf[0:2] == b"\xff\xff"
    assert net_checksum(b"") == 0 and net_checksum(b"\x00\x01") == 1
    assert net_checksum(b"\xff\xff\x00\x01") == 1 and net_checksum(b"\x01") == 0x100
    big = payload(65535)
    assert net_checksum(big) == csum16(big)


def test_ixsm_txsm_checksum_offload_ipv4_udp() -> None:
    """Context descriptor (no TSE) + data descriptor with POPTS IXSM|TXSM: TCP/UDP sum
    first, then the IP header sum; both verify on recomputation."""
    rig, drv = up()
    body = payload(333)
    ulen = 8 + len(body)
    ip = bytearray(ipv4(17, total=20 + ulen))
    seed = csum16(pseudo4(SRC4, DST4, 17, ulen))
    pkt = eth(0x0800) + bytes(ip) + udp(ulen, seed) + body
    send_chain(drv, [
        context(14, 24, 33, 34, 40, 0, E1000_TXD_CMD_IP),
        data_desc(drv, pkt[:100], 0, popts=E1000_TXD_POPTS_IXSM | E1000_TXD_POPTS_TXSM),
        data_desc(drv, pkt[100:], EOP_RS),
    ])
    (out,) = rig.peer.frames
    assert len(out) == len(pkt)
    assert csum16(out[14:34]) == 0xFFFF
    assert csum16(pseudo4(SRC4, DST4, 17, ulen) + out[34:]) == 0xFFFF
    assert out[34:40] == pkt[34:40] and out[42:] == pkt[42:]


def test_popts_latched_on_the_first_descriptor() -> None:
    rig, drv = up()
    pkt = eth(0x0800) + ipv4(17, total=20 + 8 + 50) + udp(58) + payload(50)
    ctx = context(14, 24, 33, 34, 40, 0, E1000_TXD_CMD_IP)
    send_chain(drv, [ctx, data_desc(drv, pkt[:60], 0),
                     data_desc(drv, pkt[60:], EOP_RS, popts=3)])
    send_chain(drv, [data_desc(drv, pkt[:60], 0, popts=E1000_TXD_POPTS_IXSM),
                     data_desc(drv, pkt[60:], EOP_RS)])
    first, second = rig.peer.frames
    assert first == pkt  # POPTS of a later descriptor is ignored
    assert csum16(second[14:34]) == 0xFFFF and second[34:] == pkt[34:]


# -- TSO ------------------------------------------------------------------------------------

def tso_ipv4_tcp(drv: Driver, body: bytes, mss: int, flags: int, data_sizes: list[int],
                 vle: int = 0, special: int = 0) -> bytes:
    seed = csum16(pseudo4(SRC4, DST4, 6, 0))
    hdr = eth(0x0800) + ipv4(6, ident=0xFFFE) + tcp(0xFFFFF000, flags, seed)
    pkt = hdr + body
    descs = [context(14, 24, 33, 34, 50, 0, E1000_TXD_CMD_TSE | E1000_TXD_CMD_IP
                     | E1000_TXD_CMD_TCP, paylen=len(body), hdr_len=len(hdr), mss=mss)]
    chunks = split(pkt, data_sizes)
    for j, chunk in enumerate(chunks):
        cmd = E1000_TXD_CMD_TSE | vle | (EOP_RS if j == len(chunks) - 1 else 0)
        descs.append(data_desc(drv, chunk, cmd, popts=3 if j == 0 else 0, special=special))
    send_chain(drv, descs)
    return pkt


@pytest.mark.parametrize("data_sizes", [[54], [10], [54, 1000, 1], [3000, 3000]])
def test_tso_ipv4_tcp_segments(data_sizes: list[int]) -> None:
    """Segments of hdr_len + mss: IP total length = size - ipcss, ID += index, seq +=
    k*mss, PSH/FIN only on the last, IP and TCP checksums valid; TSCTC++."""
    rig, drv = up()
    mss = 1000
    body = payload(3500)
    pkt = tso_ipv4_tcp(drv, body, mss, TCP_ACK | TCP_PSH | TCP_FIN, data_sizes)
    segs = rig.peer.frames
    assert [len(s) for s in segs] == [54 + 1000] * 3 + [54 + 500]
    for k, seg in enumerate(segs):
        ip = seg[14:34]
        total, ident = struct.unpack(">HH", ip[2:6])
        assert total == len(seg) - 14 and ident == (0xFFFE + k) & 0xFFFF
        assert csum16(ip) == 0xFFFF
        seq, _ack, _off, flags = struct.unpack(">IIBB", seg[38:48])
        assert seq == (0xFFFFF000 + k * mss) & 0xFFFFFFFF
        last = k == len(segs) - 1
        assert flags == (TCP_ACK | TCP_PSH | TCP_FIN if last else TCP_ACK)
        assert csum16(pseudo4(SRC4, DST4, 6, len(seg) - 34) + seg[34:]) == 0xFFFF
        assert seg[54:] == body[k * mss:(k + 1) * mss]
        assert seg[:14] == pkt[:14]
    st = rig.nic.hw_stats()
    assert st["TSCTC"] == 1 and st["TPT"] == st["GPTC"] == 4
    assert st["TOT"] == sum(len(s) + 4 for s in segs)
    assert rig.r(E1000_ICR) == E1000_ICR_TXDW | E1000_ICR_TXQE


def test_tso_single_segment_does_not_count_tsctc() -> None:
    rig, drv = up()
    tso_ipv4_tcp(drv, payload(100), 1000, TCP_ACK | TCP_PSH, [200])
    (seg,) = rig.peer.frames
    assert seg[47] == TCP_ACK | TCP_PSH
    assert rig.nic.hw_stats()["TSCTC"] == 0


def test_tso_exact_multiple_of_mss_sends_a_header_only_segment() -> None:
    """QEMU quirk, reproduced: when the payload is a multiple of mss the buffer holds
    just the header at EOP (size == hdr_len), and xmit_seg still sends it."""
    rig, drv = up()
    tso_ipv4_tcp(drv, payload(3000), 1000, TCP_ACK | TCP_PSH, [3054])
    segs = rig.peer.frames
    assert [len(s) for s in segs] == [1054, 1054, 1054, 54]
    assert struct.unpack(">H", segs[3][16:18])[0] == 40
    assert struct.unpack(">I", segs[3][38:42])[0] == (0xFFFFF000 + 3000) & 0xFFFFFFFF
    assert [s[47] for s in segs] == [TCP_ACK, TCP_ACK, TCP_ACK | TCP_PSH, TCP_ACK | TCP_PSH]
    assert csum16(pseudo4(SRC4, DST4, 6, 20) + segs[3][34:]) == 0xFFFF
    assert rig.nic.hw_stats()["TSCTC"] == 2


def test_tso_ipv6_tcp_segments() -> None:
    """IPv6: the payload-length field at ipcss+4 gets size - ipcss (what QEMU writes);
    TCP seq/flags/checksum as for IPv4; no ID fix-up."""
    rig, drv = up()
    mss = 700
    body = payload(2000)
    seed = csum16(pseudo6(SRC6, DST6, 6, 0))
    hdr = eth(0x86DD) + ipv6(6) + tcp(1000, TCP_ACK | TCP_PSH, seed)
    pkt = hdr + body
    send_chain(drv, [
        context(14, 0, 0, 54, 70, 0, E1000_TXD_CMD_TSE | E1000_TXD_CMD_TCP,
                paylen=len(body), hdr_len=len(hdr), mss=mss),
        data_desc(drv, pkt, E1000_TXD_CMD_TSE | EOP_RS, popts=E1000_TXD_POPTS_TXSM),
    ])
    segs = rig.peer.frames
    assert [len(s) for s in segs] == [74 + 700, 74 + 700, 74 + 600]
    for k, seg in enumerate(segs):
        assert struct.unpack(">H", seg[18:20])[0] == len(seg) - 14
        assert seg[14:18] == pkt[14:18] and seg[20:54] == pkt[20:54]
        seq, _ack, _off, flags = struct.unpack(">IIBB", seg[58:68])
        assert seq == 1000 + k * mss
        assert flags == (TCP_ACK | TCP_PSH if k == 2 else TCP_ACK)
        assert csum16(pseudo6(SRC6, DST6, 6, len(seg) - 54) + seg[54:]) == 0xFFFF
        assert seg[74:] == body[k * mss:(k + 1) * mss]


def test_tso_udp_segments() -> None:
    """UDP: length = size - tucss per segment, IP fields as for TCP, checksums valid."""
    rig, drv = up()
    mss = 800
    body = payload(2000)
    seed = csum16(pseudo4(SRC4, DST4, 17, 0))
    hdr = eth(0x0800) + ipv4(17, ident=7) + udp(0, seed)
    pkt = hdr + body
    send_chain(drv, [
        context(14, 24, 33, 34, 40, 0, E1000_TXD_CMD_TSE | E1000_TXD_CMD_IP,
                paylen=len(body), hdr_len=len(hdr), mss=mss),
        data_desc(drv, pkt, E1000_TXD_CMD_TSE | EOP_RS, popts=3),
    ])
    segs = rig.peer.frames
    assert [len(s) for s in segs] == [42 + 800, 42 + 800, 42 + 400]
    for k, seg in enumerate(segs):
        total, ident = struct.unpack(">HH", seg[16:20])
        assert total == len(seg) - 14 and ident == 7 + k
        assert csum16(seg[14:34]) == 0xFFFF
        assert struct.unpack(">H", seg[38:40])[0] == len(seg) - 34
        assert csum16(pseudo4(SRC4, DST4, 17, len(seg) - 34) + seg[34:]) == 0xFFFF
        assert seg[42:] == body[k * mss:(k + 1) * mss]
    assert rig.nic.hw_stats()["TSCTC"] == 0  # only TCP counts


def test_tso_with_vlan_insertion() -> None:
    rig, drv = up()
    rig.w(E1000_CTRL, rig.r(E1000_CTRL) | E1000_CTRL_VME)
    body = payload(1500)
    tso_ipv4_tcp(drv, body, 1000, TCP_ACK, [54, 1500], vle=E1000_TXD_CMD_VLE,
                 special=0x0064)
    segs = rig.peer.frames
    assert [len(s) for s in segs] == [4 + 54 + 1000, 4 + 54 + 500]
    for k, seg in enumerate(segs):
        assert seg[12:16] == b"\x81\x00\x00\x64"
        untagged = seg[:12] + seg[16:]
        assert csum16(untagged[14:34]) == 0xFFFF
        assert csum16(pseudo4(SRC4, DST4, 6, len(untagged) - 34) + untagged[34:]) == 0xFFFF
        assert untagged[54:] == body[k * 1000:(k + 1) * 1000]
    st = rig.nic.hw_stats()
    assert st["TOT"] == (54 + 1000 + 4) + (54 + 500 + 4)  # tag excluded
    assert st["PTC1522"] == 1 and st["PTC1023"] == 1  # 1062 and 562 with tag and FCS


# -- VLAN insertion, clipping, statistics, loopback ------------------------------------------

def test_vlan_insertion_needs_vme_and_vle_on_the_eop_descriptor() -> None:
    rig, drv = up()
    frame = eth_frame(dst=PEER_MAC, src=MAC, size=60)
    drv.send(frame, cmd=EOP_RS | E1000_TXD_CMD_VLE, special=0xA00B)  # no VME yet
    rig.w(E1000_CTRL, rig.r(E1000_CTRL) | E1000_CTRL_VME)
    drv.send(frame, cmd=EOP_RS | E1000_TXD_CMD_VLE, special=0xA00B)
    rig.w(E1000_VET, 0x88A8)
    drv.send(frame, cmd=EOP_RS | E1000_TXD_CMD_VLE, special=0x0001)
    # VLE on a non-EOP legacy descriptor only does not count.
    drv.put_tx(drv.legacy(frame[:20], cmd=E1000_TXD_CMD_VLE, special=5))
    drv.put_tx(drv.legacy(frame[20:], cmd=EOP_RS))
    drv.kick()
    assert rig.peer.frames == [
        frame,
        frame[:12] + b"\x81\x00\xa0\x0b" + frame[12:],
        frame[:12] + b"\x88\xa8\x00\x01" + frame[12:],
        frame,
    ]
    st = rig.nic.hw_stats()
    assert st["PTC64"] == 2 and st["PTC127"] == 2  # 64 vs 68 with tag + FCS
    assert st["GOTC"] == 4 * 64  # tag excluded


def test_64k_buffer_is_clipped_never_overflowed() -> None:
    """Data is gathered into a 64 KiB buffer: 65535 bytes go out intact; past that
    QEMU's 16-bit size wraps, so the buffer restarts (never overflows)."""
    rig, drv = up()
    big = payload(65535)
    drv.put_tx(drv.legacy(big[:40000], cmd=0))
    drv.put_tx(drv.legacy(big[40000:], cmd=EOP_RS))
    drv.kick()
    assert rig.peer.frames == [big]
    rig.peer.frames.clear()
    tail = payload(100)[::-1]
    drv.put_tx(drv.legacy(big[:40000], cmd=0))
    drv.put_tx(drv.legacy(big[:40000], cmd=0))  # clipped to 25536: size wraps to 0
    drv.put_tx(drv.legacy(tail, cmd=EOP_RS))
    drv.kick()
    assert rig.peer.frames == [tail]
    assert len(rig.nic.tx.data) == 0x10000


def test_tx_statistics() -> None:
    """TPT, GPTC, TOTL/H and GOTCL/H += size + 4, PTC buckets by size + 4, BPTC/MPTC
    by destination."""
    rig, drv = up()
    sizes = [60, 61, 124, 252, 600, 1514]
    for s in sizes:
        drv.send(eth_frame(dst=PEER_MAC, src=MAC, size=s))
    drv.send(eth_frame(dst=BCAST, src=MAC))
    drv.send(eth_frame(dst=bytes.fromhex("01005e000001"), src=MAC))
    st = rig.nic.hw_stats()
    assert (st["PTC64"], st["PTC127"], st["PTC255"], st["PTC511"], st["PTC1023"],
            st["PTC1522"]) == (1, 3, 1, 1, 1, 1)
    assert st["TPT"] == st["GPTC"] == 8
    assert st["TOT"] == st["GOTC"] == sum(sizes) + 6 * 4 + 2 * 68
    assert (st["BPTC"], st["MPTC"]) == (1, 1)


def test_phy_loopback_delivers_to_own_receive() -> None:
    """PHY BMCR bit 14: transmitted frames go to the NIC's own receive path (not to
    the peer); RCTL.LBM is ignored."""
    rig, drv = up()
    frame = eth_frame(dst=MAC, src=MAC, size=100)
    rig.w(E1000_RCTL, E1000_RCTL_EN | E1000_RCTL_BAM | E1000_RCTL_LBM_MASK)
    rig.advance_s(1)
    drv.send(frame)
    assert rig.peer.frames == [frame]  # LBM alone: still out to the peer
    rig.peer.frames.clear()
    rig.phy_write(MII_BMCR, 0x1140 | 0x4000)
    drv.send(frame)
    assert rig.peer.frames == []
    assert drv.receive_all() == [frame, frame][:1]
    st = rig.nic.hw_stats()
    assert st["TPT"] == 2 and st["GPRC"] == 1
    # Loopback while our RX cannot receive: the frame is lost (and counted).
    rig.w(E1000_RCTL, 0)
    drv.send(frame)
    assert rig.nic.drops.loopback_refused == 1 and rig.peer.frames == []
