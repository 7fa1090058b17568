"""The learning switch as docs/switch.md describes it, driven in-process.

Plain objects: a Switch, its ports, a Receiver plugged into each, a fake clock.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from virtwire.cli.plantable import format_plan
from virtwire.errors import ConfigError
from virtwire.net.switch import EXPIRE_BATCH, PortVlans, Switch, SwitchError, SwitchPort
from virtwire.orchestrator.plan import service_spec
from virtwire.orchestrator.spec import SwitchServiceSpec
from virtwire.topology import SwitchNode, TopologyError, load_topology

from support.doubles import Receiver

A = bytes.fromhex("020000000001")
B = bytes.fromhex("020000000002")
C = bytes.fromhex("020000000003")
BCAST = b"\xff" * 6
MCAST = bytes.fromhex("01005e000001")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def frame(dst: bytes, src: bytes, payload: bytes = b"x" * 46, etype: int = 0x0800) -> bytes:
    return dst + src + etype.to_bytes(2, "big") + payload


def tagged(dst: bytes, src: bytes, vid: int, pcp: int = 0, payload: bytes = b"x" * 46) -> bytes:
    return (dst + src + b"\x81\x00" + ((pcp << 13) | vid).to_bytes(2, "big")
            + b"\x08\x00" + payload)


class Rig:
    def __init__(self, *vlans: PortVlans, aging: float = 300.0, max_entries: int = 4096
                 ) -> None:
        self.clock = Clock()
        self.sw = Switch(0, "sw", aging=aging, max_entries=max_entries, clock=self.clock)
        self.ports: list[SwitchPort] = []
        self.devs: list[Receiver] = []
        for i, v in enumerate(vlans):
            port = self.sw.add_port(f"p{i}", v)
            dev = Receiver(f"dev{i}")
            port.peer, dev.peer = dev, port
            self.ports.append(port)
            self.devs.append(dev)

    def send(self, i: int, data: bytes) -> None:
        assert self.devs[i].send_packet(data) == len(data)

    def got(self) -> list[list[bytes]]:
        out = [list(d.frames) for d in self.devs]
        for d in self.devs:
            d.frames.clear()
        return out


def access(*vids: int) -> list[PortVlans]:
    return [PortVlans.access(v) for v in vids]


# -- learning, flooding, unicast -------------------------------------------------------


def test_unknown_unicast_floods_then_a_learned_mac_gets_only_its_port() -> None:
    """Unknown unicast is flooded to every other port of the VLAN; once B is
    learned (it sent a frame), a frame to B goes only to B's port."""
    r = Rig(*access(1, 1, 1))
    ab = frame(B, A)
    r.send(0, ab)
    assert r.got() == [[], [ab], [ab]]
    ba = frame(A, B)
    r.send(1, ba)  # A was learned on p0: only p0
    assert r.got() == [[ba], [], []]
    r.send(0, ab)  # B learned on p1
    assert r.got() == [[], [ab], []]
    assert r.ports[0].switch_stats.flooded == 1
    assert r.ports[0].switch_stats.forwarded_unicast == 1
    assert [(e.mac, e.vlan, e.port) for e in r.sw.table()] == [
        ("02:00:00:00:00:01", 1, "p0"), ("02:00:00:00:00:02", 1, "p1")]


def test_broadcast_and_multicast_flood_never_back_to_the_ingress_port() -> None:
    r = Rig(*access(1, 1, 1))
    r.send(1, frame(A, C))  # learn C on p1
    r.got()
    for dst in (BCAST, MCAST):
        data = frame(dst, C)
        r.send(1, data)
        assert r.got() == [[data], [], [data]]


def test_unicast_to_a_mac_on_the_same_port_is_filtered_and_counted() -> None:
    r = Rig(*access(1, 1))
    r.send(0, frame(B, A))
    r.got()
    r.send(0, frame(A, B))  # A lives on p0, and so (now) does B: back out p0? never
    assert r.got() == [[], []]
    assert r.ports[0].switch_stats.filtered_same_port == 1
    assert r.ports[0].stats.dropped_switch == 1
    assert r.ports[0].dropped_total == 1


def test_a_mac_that_moves_is_relearned_on_its_new_port() -> None:
    r = Rig(*access(1, 1, 1))
    r.send(0, frame(BCAST, A))
    r.send(2, frame(BCAST, A))  # A moved to p2
    r.got()
    r.send(1, frame(A, B))
    assert r.got() == [[], [], [frame(A, B)]]
    assert r.ports[2].switch_stats.moved == 1


def test_a_multicast_source_is_neither_learned_nor_forwarded() -> None:
    r = Rig(*access(1, 1))
    r.send(0, frame(B, MCAST))
    r.send(0, b"\x00" * 10)
    assert r.got() == [[], []]
    assert r.ports[0].switch_stats.filtered_malformed == 2
    assert not r.sw.fdb


# -- aging and flush -------------------------------------------------------------------


def test_entries_age_out_after_the_aging_time_with_a_fake_clock() -> None:
    r = Rig(*access(1, 1, 1), aging=300.0)
    r.send(1, frame(BCAST, B))
    r.got()
    r.clock.now += 299.0
    r.send(0, frame(B, A))
    assert r.got() == [[], [frame(B, A)], []]  # still known
    assert r.sw.table(port="p1")[0].age == pytest.approx(299.0)
    r.clock.now += 2.0  # 301 s since B was seen
    r.send(0, frame(B, A))
    assert r.got() == [[], [frame(B, A)], [frame(B, A)]]  # flooded again
    assert [e.mac for e in r.sw.table()] == ["02:00:00:00:00:01"]


def test_seeing_a_mac_again_refreshes_it() -> None:
    r = Rig(*access(1, 1), aging=10.0)
    r.send(1, frame(BCAST, B))
    r.clock.now += 8
    r.send(1, frame(BCAST, B))
    r.clock.now += 8  # 16 s after the first, 8 after the last
    assert [e.mac for e in r.sw.table()] == ["02:00:00:00:00:02"]


def test_flush_all_per_port_and_per_vlan() -> None:
    trunk = PortVlans.trunked([10, 20])
    r = Rig(trunk, *access(10, 20))
    r.send(0, tagged(BCAST, A, 10))
    r.send(0, tagged(BCAST, A, 20))
    r.send(1, frame(BCAST, B))
    r.send(2, frame(BCAST, C))
    assert len(r.sw.table()) == 4
    assert r.sw.flush(vlan=20) == 2
    assert {(e.mac[-1], e.vlan) for e in r.sw.table()} == {("1", 10), ("2", 10)}
    assert r.sw.flush(port="p1") == 1
    assert r.sw.flush() == 1
    assert r.sw.table() == []
    with pytest.raises(SwitchError):
        r.sw.flush(vlan=4095)


# -- VLANs -----------------------------------------------------------------------------


def test_flooding_stays_within_the_vlan() -> None:
    r = Rig(*access(10, 10, 20, 20))
    data = frame(BCAST, A)
    r.send(0, data)
    assert r.got() == [[], [data], [], []]
    r.send(2, frame(B, C))  # unknown unicast on VLAN 20: p3 only
    assert r.got() == [[], [], [], [frame(B, C)]]


def test_access_to_trunk_tags_and_trunk_to_access_untags() -> None:
    trunk = PortVlans.trunked([10, 20])
    r = Rig(PortVlans.access(10), trunk, PortVlans.access(20))
    data = frame(BCAST, A)
    r.send(0, data)
    assert r.got() == [[], [tagged(BCAST, A, 10)], []]
    r.send(1, tagged(BCAST, B, 20, pcp=5))
    assert r.got() == [[], [], [frame(BCAST, B)]]
    # Trunk to trunk keeps the tag and its priority.
    r2 = Rig(trunk, trunk)
    r2.send(0, tagged(BCAST, A, 20, pcp=3))
    assert r2.got() == [[], [tagged(BCAST, A, 20, pcp=3)]]


def test_native_vlan_is_untagged_on_the_trunk() -> None:
    trunk = PortVlans.trunked([20], native=1)
    r = Rig(trunk, PortVlans.access(1), PortVlans.access(20))
    r.send(1, frame(BCAST, A))
    assert r.got() == [[frame(BCAST, A)], [], []]  # VLAN 1 leaves the trunk untagged
    r.send(0, frame(BCAST, B))  # untagged in on the trunk: native VLAN 1
    assert r.got() == [[], [frame(BCAST, B)], []]
    r.send(0, tagged(BCAST, C, 0, pcp=6))  # priority-tagged: native too
    assert r.got() == [[], [frame(BCAST, C)], []]
    r.send(0, tagged(BCAST, C, 1))  # tagged with the native VLAN: accepted
    assert r.got() == [[], [frame(BCAST, C)], []]


def test_frames_of_vlans_a_port_does_not_carry_are_filtered_and_counted() -> None:
    r = Rig(PortVlans.trunked([10]), PortVlans.access(10), PortVlans.access(20))
    r.send(0, tagged(BCAST, A, 20))  # VLAN 20 not on the trunk
    r.send(0, frame(BCAST, A))  # untagged on a trunk without native
    r.send(1, tagged(BCAST, B, 10))  # a tag on an access port
    assert r.got() == [[], [], []]
    assert r.ports[0].switch_stats.filtered_vlan == 2
    assert r.ports[1].switch_stats.filtered_vlan == 1
    assert r.ports[0].stats.dropped_switch == 2
    assert not r.sw.fdb  # nothing learned from filtered frames


def test_vlan_20_cannot_reach_a_mac_learned_in_vlan_10() -> None:
    """Learning is per (MAC, VLAN): a frame in VLAN 20 to a MAC known in VLAN 10
    is unknown there, so it floods VLAN 20 only."""
    r = Rig(*access(10, 10, 20, 20))
    r.send(1, frame(BCAST, B))  # B in VLAN 10 on p1
    r.got()
    r.send(2, frame(B, C))
    assert r.got() == [[], [], [], [frame(B, C)]]


def test_set_port_vlans_flushes_what_was_learned_there() -> None:
    r = Rig(*access(10, 10, 20))
    r.send(1, frame(BCAST, B))
    r.got()
    r.sw.set_port_vlans("p1", PortVlans.access(20))
    assert r.sw.table() == []
    r.send(0, frame(BCAST, A))
    assert r.got() == [[], [], []]  # p0 is alone in VLAN 10 now
    assert r.ports[0].switch_stats.no_destination == 1
    r.send(2, frame(BCAST, C))
    assert r.got() == [[], [frame(BCAST, C)], []]


def test_port_vlans_parse_and_format() -> None:
    assert PortVlans.parse("10") == PortVlans.access(10)
    t = PortVlans.parse("trunk=20,10,native=1")
    assert t == PortVlans.trunked([10, 20], native=1)
    assert t.format() == "trunk=10,20,native=1" and t.vlans == {1, 10, 20}
    for bad in ("0", "4095", "x", "trunk=", "trunk=10,native=0", "trunk=5000"):
        with pytest.raises(ConfigError):
            PortVlans.parse(bad)
    with pytest.raises(SwitchError):
        PortVlans(vlan=10, native=1)


# -- mirror ----------------------------------------------------------------------------


def test_the_mirror_gets_a_copy_of_every_forwarded_frame() -> None:
    r = Rig(*access(1, 1, 1, 1))
    r.sw.set_mirror("p3")
    ab, ba = frame(B, A), frame(A, B)
    r.send(0, ab)
    r.send(1, ba)
    assert r.got() == [[ba], [ab], [ab], [ab, ba]]
    r.send(0, frame(A, C))  # filtered (same port): not forwarded, not mirrored
    r.send(3, frame(BCAST, C))  # the mirror only listens
    assert r.got() == [[], [], [], []]
    assert r.ports[3].switch_stats.mirrored == 2
    assert r.ports[3].switch_stats.filtered_mirror == 1


# -- the MAC table's cap ---------------------------------------------------------------


def test_the_mac_table_is_capped_and_refusals_counted() -> None:
    r = Rig(*access(1, 1), max_entries=4, aging=10.0)
    for i in range(6):
        r.send(0, frame(BCAST, bytes([2, 0, 0, 0, 1, i])))
    assert len(r.sw.fdb) == 4
    assert r.sw.fdb_refused == 2 and r.ports[0].switch_stats.fdb_refused == 2
    # A MAC not learned is flooded (unknown unicast), not dropped.
    r.got()
    r.send(1, frame(bytes([2, 0, 0, 0, 1, 5]), B))
    assert r.got() == [[frame(bytes([2, 0, 0, 0, 1, 5]), B)], []]
    assert r.sw.fdb_refused == 3  # B did not fit either
    # Aged entries make room.
    r.clock.now += 11
    r.send(1, frame(BCAST, B))
    assert [e.mac for e in r.sw.table()] == ["02:00:00:00:00:02"]


def test_bad_switch_settings_are_refused() -> None:
    for kwargs in ({"aging": 0}, {"aging": -1}, {"max_entries": 0}):
        with pytest.raises(SwitchError):
            Switch(0, "sw", **kwargs)  # type: ignore[arg-type]


# -- NetQueue / can_receive ------------------------------------------------------------


def test_a_port_can_receive_when_a_port_of_its_vlans_can() -> None:
    """As the hub: a port can receive when some port it would forward to can;
    for a switch, the ports sharing one of its VLANs (the mirror not counted)."""
    r = Rig(*access(10, 10, 20), PortVlans.access(10))
    r.sw.set_mirror("p3")
    p0, p2 = r.ports[0], r.ports[2]
    assert p0.can_receive()
    r.devs[1].ready = False
    assert not p0.can_receive()  # p1 is the only other port of VLAN 10
    # Alone in VLAN 20, and the mirror: no port to wait for, so they take
    # (and count) what comes rather than hold their peer back.
    assert p2.can_receive() and r.ports[3].can_receive()
    r.devs[1].ready = True
    assert p0.can_receive()


def test_a_blocked_port_queues_and_its_queue_flushes_when_the_target_is_ready() -> None:
    r = Rig(*access(10, 10, 20))
    r.devs[1].ready = False
    data = frame(BCAST, A)
    assert r.devs[0].send_packet(data) == 0  # queued at p0: nobody in VLAN 10 can take it
    assert len(r.ports[0].incoming_queue) == 1
    r.devs[1].ready = True
    r.devs[1].flush_queued_packets()  # p1's peer is ready: p0's queue flushes
    assert len(r.ports[0].incoming_queue) == 0
    assert r.got() == [[], [data], []]


def test_removing_a_port_forgets_its_macs() -> None:
    r = Rig(*access(1, 1, 1))
    r.sw.set_mirror("p2")
    r.send(1, frame(BCAST, B))
    r.sw.remove_port("p1")
    r.sw.remove_port("p2")
    assert r.sw.table() == [] and r.sw.mirror is None
    assert r.ports[0].targets == ()


# -- topology: kind: switch ------------------------------------------------------------

_SW_LAN = """\
name: lab
nodes:
  sw:
    kind: switch
    aging: 90s
    mirror: mon
    ports:
      a: {{vlan: 10}}
      up: {{trunk: [10, 20], native: 1}}
{extra}  vm1: {{kind: vm}}
  t1: {{kind: tap, backend: stream, listen: 127.0.0.1:0}}
  t2: {{kind: tap, backend: stream, listen: 127.0.0.1:0}}
links:
  - [vm1, sw:a]
  - [t1, sw:up]
  - [t2, sw:mon]
"""


def _lab(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lab.yaml"
    path.write_text(text)
    return path


def test_a_switch_node_is_planned_as_serve_switch(tmp_path: Path) -> None:
    topo = load_topology(_lab(tmp_path, _SW_LAN.format(extra="")))
    node = topo.node("sw")
    assert isinstance(node, SwitchNode) and node.kind == "switch"
    assert dict(node.vlans) == {"a": "10", "up": "trunk=10,20,native=1"}
    assert (node.mirror, node.aging, node.max_entries) == ("mon", 90.0, 4096)
    spec = service_spec(topo, "sw", {})
    assert isinstance(spec, SwitchServiceSpec) and spec.kind == "switch"
    argv = spec.argv()
    assert argv[:6] == ["--name", "sw", "--port", "a", "--port", "up"]
    pairs = list(itertools.pairwise(argv))
    assert ("--vlans", "a=10") in pairs and ("--vlans", "up=trunk=10,20,native=1") in pairs
    assert ("--mirror", "mon") in pairs and ("--aging", "90s") in pairs
    assert "--max-entries" not in argv  # the default is not written
    table = format_plan(topo)  # `virtwire validate FILE`
    row = next(line for line in table.splitlines() if line.startswith("sw "))
    assert row.split()[1] == "switch" and "a (10), up (trunk=10,20,native=1)" in row
    assert "mon (mirror)" in row and "aging 90s" in row


@pytest.mark.parametrize(("ports", "line", "what"), [
    ("      b: {vlan: 4095}\n", 10, "bad VLAN 4095"),
    ("      b: {vlan: 10, trunk: [10]}\n", 10, "not both"),
    ("      b: {native: 1}\n", 10, "only a trunk port has a native VLAN"),
    ("      b: {trunk: []}\n", 10, "at least 1 item"),
    ("      b: {trunk: [0, 10]}\n", 10, "bad VLAN 0"),
    ("      b: {vlan: 10}\n", 10, "port 'b' is in no link"),
])
def test_bad_switch_ports_are_reported_with_their_line(tmp_path: Path, ports: str, line: int,
                                                      what: str) -> None:
    text = _SW_LAN.format(extra="").replace("      up: {trunk: [10, 20], native: 1}\n",
                                            "      up: {trunk: [10, 20], native: 1}\n" + ports)
    with pytest.raises(TopologyError) as err:
        load_topology(_lab(tmp_path, text))
    assert f"lab.yaml:{line}: node 'sw'" in str(err.value) and what in str(err.value), \
        str(err.value)


@pytest.mark.parametrize(("old", "new", "line", "what"), [
    ("aging: 90s", "aging: 0s", 5, "aging"),
    ("aging: 90s", "aging: 9 weeks", 5, "aging"),
    ("mirror: mon", "mirror: nope", 6, "mirror port 'nope' is in no link"),
    ("aging: 90s", "aging: 90s\n    max_entries: 0", 6, "max_entries"),
    ("aging: 90s", "aging: 90s\n    host: h1", 6, "host"),
])
def test_bad_switch_settings_are_reported_with_their_line(tmp_path: Path, old: str, new: str,
                                                         line: int, what: str) -> None:
    text = _SW_LAN.format(extra="").replace(old, new)
    if "host: h1" in new:
        text = text.replace("nodes:\n", "hosts:\n  h1: {address: 198.18.1.1}\nnodes:\n")
        line += 2
    with pytest.raises(TopologyError) as err:
        load_topology(_lab(tmp_path, text))
    assert f"lab.yaml:{line}: node 'sw'" in str(err.value) and what in str(err.value), \
        str(err.value)


# -- batches ---------------------------------------------------------------------------


def _mixed() -> list[bytes]:
    return [frame(BCAST, A), frame(BCAST, B), frame(B, A), tagged(BCAST, C, 20),
            frame(A, C), frame(A, B), b"\x00" * 8, frame(MCAST, A), frame(C, A)]


def test_a_batch_switches_as_the_same_frames_one_by_one() -> None:
    """The batch path (send_packets: each destination port gets its frames in
    one send, in order) ends as single sends do: same frames at every port,
    same table, same counters."""
    def rig() -> Rig:
        r = Rig(*access(1, 1), PortVlans.trunked([1, 20]), PortVlans.access(1))
        r.sw.set_mirror("p3")
        return r

    one, batch = rig(), rig()
    for data in _mixed():
        one.devs[0].send_packet(data)
    assert batch.devs[0].send_packets(_mixed()) == len(_mixed())
    assert batch.got() == one.got()
    assert [(e.mac, e.vlan, e.port) for e in batch.sw.table()] == \
        [(e.mac, e.vlan, e.port) for e in one.sw.table()]
    for a, b in zip(one.ports, batch.ports, strict=True):
        assert a.switch_stats == b.switch_stats
        assert a.stats == b.stats


def test_a_batch_stops_where_no_target_can_take_more() -> None:
    r = Rig(*access(1, 1))
    r.devs[1].ready = False
    frames = [frame(BCAST, A)] * 3
    assert r.devs[0].send_packets(frames) == 0  # all queued at p0
    assert len(r.ports[0].incoming_queue) == 3
    r.devs[1].ready = True
    r.devs[1].flush_queued_packets()
    assert r.got() == [[], frames]


def test_a_table_that_aged_at_once_is_expired_in_bounded_steps() -> None:
    """No data-path call removes more than EXPIRE_BATCH entries (the event loop
    is not held); an aged entry is never used, nor listed, meanwhile."""
    r = Rig(*access(1, 1, 1), max_entries=1000, aging=10.0)
    for i in range(600):
        r.send(0, frame(BCAST, bytes([2, 0, 0, 0, i >> 8, i & 0xFF])))
    assert len(r.sw.fdb) == 600
    r.clock.now += 11
    assert r.sw.lookup(bytes([2, 0, 0, 0, 0, 5]), 1) is None
    assert len(r.sw.fdb) == 600 - EXPIRE_BATCH
    assert r.sw.table() == []
    r.got()
    to_aged = frame(bytes([2, 0, 0, 0, 0, 5]), B)
    r.send(1, to_aged)  # its entry (p0) aged: flooded, not sent to p0 alone
    assert r.got() == [[to_aged], [], [to_aged]]
    while r.sw.expire():
        pass
    assert [e.mac for e in r.sw.table()] == ["02:00:00:00:00:02"]
