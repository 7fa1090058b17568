"""The hub as docs/hub.md describes it (and the hub parts of docs/queues.md).

Plain in-process objects: no gRPC, no sockets. Each test's docstring states the
behaviour it pins. ``Regression`` comments name bugs these tests caught.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from virtwire.address import NAME_MAX, check_name
from virtwire.errors import ConfigError
from virtwire.net.hub import (
    HUB_NAME_MAX,
    Hub,
    HubError,
    HubPort,
    hub_port_name,
    is_numbered_port,
)
from virtwire.net.net import NetClient
from virtwire.net.queue import NQ_MAXLEN

from support.doubles import Receiver, f

# -- test doubles ---------------------------------------------------------------


def plug(port: HubPort, dev: NetClient) -> NetClient:
    port.peer = dev
    dev.peer = port
    return dev


def cb_into(log: list[tuple[NetClient, int]]) -> Callable[[NetClient, int], None]:
    def sent_cb(sender: NetClient, ret: int) -> None:
        log.append((sender, ret))

    return sent_cb


def hub_with(n: int) -> tuple[Hub, list[HubPort], list[Receiver], list[tuple[str, bytes]]]:
    """A hub with ``n`` ports (oldest first in the returned list), a Receiver on each."""
    hub = Hub(0)
    log: list[tuple[str, bytes]] = []
    ports = [hub.add_port() for _ in range(n)]
    devs = [Receiver(f"dev{i}", log) for i in range(n)]
    for port, dev in zip(ports, devs, strict=True):
        plug(port, dev)
    return hub, ports, devs, log


# -- ports ----------------------------------------------------------------------


def test_ports_are_netclients_named_hub_id_port_n() -> None:
    """Spec 2: Hub = {id, ports}; each port is a NetClientState "hub%dport%d"."""
    hub = Hub(3)
    a, b = hub.add_port(), hub.add_port()
    assert isinstance(a, NetClient) and a.kind == "hubport"
    assert (a.name, b.name) == ("hub3port0", "hub3port1")
    assert (a.port_id, b.port_id) == (0, 1)
    assert a.hub is hub and hub.id == 3
    named = hub.add_port("uplink")
    assert named.name == "uplink" and named.port_id == 2


def test_ports_are_named_after_the_hubs_name() -> None:
    """virtwire: a hub has a name, "hub<ID>" unless given one (QEMU's "hub%dport%d"
    for hub 0 stays); its unnamed ports are "<NAME>port<N>"."""
    assert hub_port_name("sw", 1) == "swport1"
    assert hub_port_name("hub0", 1) == "hub0port1"
    assert Hub(0).name == "hub0" and Hub(3).name == "hub3"
    sw = Hub(0, "sw")
    a, b = sw.add_port(), sw.add_port()
    assert (sw.name, sw.id, a.name, b.name) == ("sw", 0, "swport0", "swport1")
    assert Hub(7, "sw").add_port().name == "swport0"  # the name, not the id
    with pytest.raises(HubError, match="hub sw already has a port named 'swport1'"):
        sw.add_port("swport1")


def test_a_hub_name_too_long_for_its_port_names_is_refused() -> None:
    """virtwire: "<NAME>port<N>" must stay a NetClient name (1 to 64 of [A-Za-z0-9._-])."""
    longest = "h" * HUB_NAME_MAX
    check_name(hub_port_name(longest, 10**12 - 1))  # any port number a hub reaches fits
    assert Hub(0, longest).add_port().name == f"{longest}port0"
    for bad in (longest + "h", "a b", "sw/1", "é"):
        with pytest.raises(ConfigError, match=f"bad hub name .*: use 1 to {HUB_NAME_MAX} of .* "
                                              f"named NAMEportN, at most {NAME_MAX} characters"):
            Hub(0, bad)


def test_is_numbered_port() -> None:
    """The names a hub gives its unnamed ports, and only those."""
    assert is_numbered_port("sw", "swport0") and is_numbered_port("sw", "swport12")
    assert is_numbered_port("hub0", "hub0port1")
    for name in ("hub0port1", "swport", "swportx", "swport1a", "sw", "xswport1", "swport\u0661"):
        assert not is_numbered_port("sw", name), name


def test_new_ports_are_inserted_at_the_head() -> None:
    """Spec 2: new ports are inserted at the head."""
    hub = Hub(0)
    p0, p1, p2 = hub.add_port(), hub.add_port(), hub.add_port()
    assert hub.ports == [p2, p1, p0]


def test_duplicate_port_name_raises_hub_error() -> None:
    """Spec 2: ports are named; virtwire rejects a duplicate name with HubError."""
    hub = Hub(0)
    hub.add_port("a")
    with pytest.raises(HubError):
        hub.add_port("a")
    hub.add_port()  # hub0port1
    with pytest.raises(HubError):
        hub.add_port("hub0port1")
    assert [p.name for p in hub.ports] == ["hub0port1", "a"]
    assert issubclass(HubError, ValueError)


def test_unknown_port_name_raises_hub_error() -> None:
    """Spec 2: virtwire: looking up or removing an unknown port raises HubError."""
    hub = Hub(0)
    hub.add_port()
    with pytest.raises(HubError):
        hub.port("nope")
    with pytest.raises(HubError):
        hub.remove_port("nope")
    assert hub.port("hub0port0").name == "hub0port0"


# Regression: once a future default name was taken explicitly, every later
# add_port() without a name raised HubError.
def test_default_name_skips_a_name_taken_explicitly() -> None:
    """Spec 2: each port is "hub%dport%d" (QEMU never fails to name a port)."""
    hub = Hub(0)
    hub.add_port("hub0port1")  # gets port id 0
    hub.add_port()  # hub0port1 is taken: fails, and the counter stays at 1
    port = hub.add_port()
    assert port.name not in {"hub0port1"}
    assert len({p.name for p in hub.ports}) == len(hub.ports)


# -- forwarding -----------------------------------------------------------------


def test_forwards_to_every_port_but_the_source_newest_first() -> None:
    """Spec 2: receive: for each port other than the source,
    qemu_send_packet(port); forwarding runs newest port first."""
    _hub, _ports, devs, log = hub_with(4)
    assert devs[1].send_packet(f(1)) == 64
    assert log == [("dev3", f(1)), ("dev2", f(1)), ("dev0", f(1))]
    assert devs[1].frames == []
    log.clear()
    devs[3].send_packet(f(2))
    assert log == [("dev2", f(2)), ("dev1", f(2)), ("dev0", f(2))]


def test_hub_port_receive_always_returns_len_when_destinations_cannot_receive() -> None:
    """Spec 2: receive ... always returns len (a hub never returns 0 to its
    sender). A destination that can't receive gets the frame in its own
    incoming_queue."""
    _hub, ports, devs, log = hub_with(3)
    devs[0].ready = False
    devs[1].ready = False
    assert ports[2].receive(f(1, 100)) == 100
    assert log == []
    assert [p.data for p in devs[0].incoming_queue.packets] == [f(1, 100)]
    assert [p.data for p in devs[1].incoming_queue.packets] == [f(1, 100)]
    # The packets wait with the forwarding port as sender and no sent_cb.
    packet = devs[0].incoming_queue.packets[0]
    assert packet.sender is ports[0] and packet.sent_cb is None
    devs[0].ready = True
    devs[0].flush_queued_packets()
    assert devs[0].frames == [f(1, 100)]


def test_hub_port_receive_returns_len_even_when_a_destination_returns_0() -> None:
    """Spec 2: receive ... always returns len, even when a destination's
    receive returns 0 (the frame is queued there instead)."""
    _hub, ports, devs, _log = hub_with(3)
    devs[0].ret = 0
    assert devs[2].send_packet(f(1)) == 64
    assert devs[0].receive_disabled is True
    assert [p.data for p in devs[0].incoming_queue.packets] == [f(1)]
    assert devs[1].frames == [f(1)]
    assert ports[2].receive_disabled is False


def test_backend_send_through_the_hub_returns_len_when_one_port_is_busy() -> None:
    """Spec 2: the backend behind a hub is throttled only when no other port
    can take frames: one busy destination does not stop the sender."""
    _hub, ports, devs, _log = hub_with(3)
    devs[0].ready = False
    sent: list[tuple[NetClient, int]] = []
    assert devs[2].send_packet_async(f(1), cb_into(sent)) == 64
    assert devs[1].frames == [f(1)]
    assert len(devs[0].incoming_queue) == 1
    assert len(ports[2].incoming_queue) == 0
    assert sent == []  # delivered at once, so no sent_cb


def test_busy_destination_queue_is_capped_at_10000_then_drops_counted() -> None:
    """Spec 2: a destination that can't receive gets the frame in its own
    incoming_queue (cap 10000, then drop); virtwire counts the drop."""
    _hub, _ports, devs, _log = hub_with(3)
    devs[0].ready = False
    for i in range(NQ_MAXLEN + 3):
        assert devs[2].send_packet(f(i)) == 64
    q = devs[0].incoming_queue
    assert q.nq_count == NQ_MAXLEN
    assert q.dropped == 3
    assert devs[0].dropped_total == 3
    assert len(devs[1].frames) == NQ_MAXLEN + 3  # the ready port lost nothing
    assert q.packets[-1].data == f(NQ_MAXLEN - 1)


def test_forwarding_to_a_port_with_no_peer_is_counted_not_queued() -> None:
    """Spec 2: receive: qemu_send_packet(port) for a port with no peer
    returns size (spec 1: no peer -> dropped but reported as sent)."""
    hub, _ports, devs, _log = hub_with(2)
    empty = hub.add_port()
    assert devs[0].send_packet(f(1)) == 64
    assert devs[1].frames == [f(1)]
    assert empty.stats.dropped_link_down == 1


# -- can_receive ---------------------------------------------------------------


def test_can_receive_is_true_if_any_other_port_can_send() -> None:
    """Spec 2: net_hub_port_can_receive: true if ANY other port can send."""
    _hub, ports, devs, _log = hub_with(3)
    devs[0].ready = False
    devs[1].ready = True
    assert ports[2].can_receive() is True
    devs[1].receive_disabled = True  # can_send = peer's can_receive_packet
    assert ports[2].can_receive() is False
    devs[1].receive_disabled = False
    assert ports[2].can_receive() is True


def test_can_receive_ignores_the_source_port() -> None:
    """Spec 2: net_hub_port_can_receive: ANY *other* port."""
    _hub, ports, devs, _log = hub_with(2)
    devs[0].ready = False
    devs[1].ready = True  # port 1's own peer being ready does not count for port 1
    assert ports[1].can_receive() is False
    assert ports[0].can_receive() is True


def test_can_receive_counts_a_port_with_no_peer_as_ready() -> None:
    """Spec 2: a port with no peer counts as ready."""
    hub, ports, devs, _log = hub_with(2)
    devs[0].ready = False
    assert ports[1].can_receive() is False
    hub.add_port()  # no peer
    assert ports[1].can_receive() is True


def test_can_receive_is_false_when_no_other_port_can_send() -> None:
    """Spec 2: net_hub_port_can_receive is false when no other port can send
    (and for a port alone on its hub)."""
    _hub, ports, devs, _log = hub_with(3)
    for dev in devs:
        dev.ready = False
    assert not any(p.can_receive() for p in ports)
    assert Hub(1).add_port().can_receive() is False


def test_backend_is_throttled_only_when_no_port_can_take_frames() -> None:
    """Spec 2: the backend behind a hub is throttled only when no other port
    can take frames: its packet then waits (with its sent_cb) in its port's
    incoming_queue, and goes out when a destination flushes."""
    _hub, ports, devs, log = hub_with(3)
    devs[0].ready = False
    devs[1].ready = False
    sent: list[tuple[NetClient, int]] = []
    assert devs[2].can_send_packet() is False
    assert devs[2].send_packet_async(f(1), cb_into(sent)) == 0
    assert [p.data for p in ports[2].incoming_queue.packets] == [f(1)]
    assert log == [] and sent == []
    devs[1].ready = True
    devs[1].flush_queued_packets()
    assert devs[1].frames == [f(1)]
    assert [p.data for p in devs[0].incoming_queue.packets] == [f(1)]
    assert sent == [(devs[2], 64)]
    assert len(ports[2].incoming_queue) == 0


# -- flush_queued_packets through a hub ----------------------------------------


def test_flush_queued_packets_with_a_hub_port_peer_flushes_every_other_port() -> None:
    """Spec 1: flush_queued_packets(nc): clear receive_disabled; if nc->peer is
    a hub port, flush every other port's queue; flush own incoming_queue."""
    _hub, ports, devs, _log = hub_with(4)
    for dev in devs:
        dev.ready = False
    # Every backend has a frame stuck in its own port's queue.
    for i, dev in enumerate(devs):
        assert dev.send_packet(f(i)) == 0
        assert [p.data for p in ports[i].incoming_queue.packets] == [f(i)]
    devs[0].ready = True
    devs[0].receive_disabled = True
    devs[0].flush_queued_packets()
    assert devs[0].receive_disabled is False
    # The other ports were flushed, newest first, so dev0 got their frames ...
    assert devs[0].frames == [f(3), f(2), f(1)]
    for port in ports[1:]:
        assert len(port.incoming_queue) == 0
    # ... but dev0's own frame had no ready destination: still in port 0.
    assert [p.data for p in ports[0].incoming_queue.packets] == [f(0)]
    # The busy devices have the forwarded frames in their incoming queues.
    assert [p.data for p in devs[1].incoming_queue.packets] == [f(3), f(2)]


def test_flush_of_a_plain_peer_does_not_touch_hub_ports() -> None:
    """Spec 1: only when nc->peer is a hub port are the other ports flushed."""
    _hub, ports, devs, _log = hub_with(2)
    devs[0].ready = False
    devs[1].ready = False
    devs[1].send_packet(f(1))
    assert len(ports[1].incoming_queue) == 1
    lone = Receiver("lone")
    other = NetClient("other")
    lone.peer, other.peer = other, lone
    lone.flush_queued_packets()
    assert len(ports[1].incoming_queue) == 1


# -- removing ports ------------------------------------------------------------


def test_remove_port_stops_forwarding_to_it() -> None:
    """Spec 2: forwarding goes to the hub's current ports."""
    hub, ports, devs, _log = hub_with(3)
    hub.remove_port(ports[1].name)
    assert ports[1] not in hub.ports
    devs[0].send_packet(f(1))
    assert devs[1].frames == []
    assert devs[2].frames == [f(1)]
    with pytest.raises(HubError):
        hub.port(ports[1].name)


def test_remove_port_purges_what_it_queued_at_other_netclients() -> None:
    """Spec 1: deleting a client purges its pending packets from the peer's
    queue (purge: sent_cb(sender, 0) each); virtwire counts them in purged."""
    hub, ports, devs, _log = hub_with(3)
    devs[1].ready = False
    devs[0].send_packet(f(1))  # forwarded by port 1 into dev1's queue
    devs[2].send_packet(f(2))
    sent: list[tuple[NetClient, int]] = []
    ports[1].send_packet_async(f(3), cb_into(sent))  # queued by port 1, with a sent_cb
    other = NetClient("other")
    other.peer = devs[1]
    other.send_packet(f(4))  # not the port's: must survive
    q = devs[1].incoming_queue
    assert len(q) == 4
    hub.remove_port(ports[1].name)
    assert sent == [(ports[1], 0)]
    assert [p.data for p in q.packets] == [f(4)]
    assert q.purged == 3
    assert devs[1].dropped_total == 3


# Regression: QEMU sets peer->peer = NULL when it frees a client, so the former
# peer's frames are dropped; remove_port once left that pointer in place.
def test_removed_port_no_longer_forwards_frames_from_its_former_peer() -> None:
    """Spec 1: deleting a client: its peer no longer reaches the hub."""
    hub, ports, devs, _log = hub_with(3)
    hub.remove_port(ports[1].name)
    devs[1].send_packet(f(1))
    assert devs[0].frames == [] and devs[2].frames == []


# -- set_link ------------------------------------------------------------------


def test_set_link_never_changes_a_hub_port_peer() -> None:
    """Spec 1: set_link ... if the peer is a NIC, on the peer too; hub ports
    are never changed."""
    _hub, ports, devs, _log = hub_with(2)
    devs[0].set_link(False)
    assert devs[0].link_down is True
    assert ports[0].link_down is False
    assert devs[0].send_packet(f(1)) == 64  # link down: dropped, counted
    assert devs[0].stats.dropped_link_down == 1
    assert devs[1].frames == []


def test_set_link_down_on_a_hub_port_drops_frames_to_and_from_it() -> None:
    """Spec 1: set_link sets link_down on the named client (a hub port too):
    delivery to it returns size (dropped), and it sends nothing."""
    _hub, ports, devs, _log = hub_with(3)
    ports[1].set_link(False)
    assert devs[1].link_down is False
    # Into the hub through the link-down port: dropped at delivery.
    assert devs[1].send_packet(f(1)) == 64
    assert ports[1].stats.dropped_link_down == 1
    assert devs[0].frames == [] and devs[2].frames == []
    # Out of the hub through it: the port, as sender, drops.
    devs[0].send_packet(f(2))
    assert devs[1].frames == []
    assert devs[2].frames == [f(2)]
    assert ports[1].stats.dropped_link_down == 2


# -- capture --------------------------------------------------------------------


def test_capture_hooks_on_hub_ports() -> None:
    """Spec 1: netfilters: "tx" = packets sent by the netdev, "rx" = packets
    sent to it; on a hub port rx is what its peer sent in, tx what it forwards."""
    _hub, ports, devs, _log = hub_with(3)
    seen: list[tuple[str, str, bytes]] = []
    for port in ports:
        port.capture_hooks.append(
            lambda d, data, name=port.name: seen.append((name, d, data)))
    devs[0].send_packet(f(1))
    # Forwarding (tx, newest port first) happens inside port 0's receive, so
    # port 0's rx comes last.
    assert seen == [("hub0port2", "tx", f(1)),
                    ("hub0port1", "tx", f(1)),
                    ("hub0port0", "rx", f(1))]
