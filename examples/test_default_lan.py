"""A test a user can copy: the default LAN as a test oracle, with virtwire's
pytest plugin (installed with virtwire; nothing to configure).

    pytest examples/test_default_lan.py

The module's LAN (``examples/default.yaml``) comes up before its first test and
goes down after its last. ``virtwire_lan`` drives the real ``virtwire`` CLI.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.virtwire_topology("default.yaml")

VM1_MAC = bytes.fromhex("525400123401")


def arp_request(sender_mac: bytes, sender_ip: bytes, target_ip: bytes) -> bytes:
    """Who has TARGET_IP? (broadcast), padded to the Ethernet minimum."""
    return (b"\xff" * 6 + sender_mac + b"\x08\x06"
            + b"\x00\x01\x08\x00\x06\x04\x00\x01" + sender_mac + sender_ip
            + b"\x00" * 6 + target_ip).ljust(60, b"\x00")


def test_vm1_reaches_vm2(virtwire_lan):
    result = virtwire_lan.ping("vm1", "vm2", count=3)
    assert result.received == 3, result.output


def test_netem_delay_shows_in_the_round_trip(virtwire_lan):
    before = virtwire_lan.ping("vm1", "vm2", count=3)
    virtwire_lan.netem("vm2", delay="30ms")  # vm2's egress, as tc netem on an interface
    try:
        slowed = virtwire_lan.ping("vm1", "vm2", count=3)
    finally:
        virtwire_lan.netem_reset("vm2")
    assert slowed.received == 3, slowed.output
    assert slowed.rtt_min_ms >= 30.0 > before.rtt_min_ms


def test_a_frame_injected_at_the_hub_reaches_vm2(virtwire_lan):
    # As if a VM on qemu0's port asked for vm2's address: vm2's NIC receives it.
    frame = arp_request(bytes.fromhex("525400123410"), bytes([198, 18, 0, 10]),
                        bytes([198, 18, 0, 2]))
    # vm2 answers: an ARP reply leaves vm2 towards the asker. The watch starts
    # first, then the request is injected (again every 0.5 s until it is seen).
    assert virtwire_lan.expect("vm2", "ethertype=0x0806", timeout=10,
                               while_doing=lambda: virtwire_lan.inject("hub0:qemu0", frame))


def test_a_link_set_down_stops_the_pings(virtwire_lan):
    virtwire_lan.link("vm2", up=False)
    try:
        assert virtwire_lan.ping("vm1", "vm2", count=2, wait=1).received == 0
    finally:
        virtwire_lan.link("vm2", up=True)
    assert virtwire_lan.ping("vm1", "vm2", count=2).received == 2
