"""net.nsjoin: a TAP opened inside another network namespace, set up there (root).

What a container node's interface is (docs/topology.md, containers): the
service's thread joins the namespace, opens the TAP, gives it its MAC and
address and brings it up; the service's own namespace never sees it, and
closing the fd removes it.
"""

from __future__ import annotations

import pytest

from virtwire.errors import BackendError, ConfigError
from virtwire.net.netdev import NetdevTap, net_init_tap
from virtwire.net.nsjoin import TapSetup

from support.netns import netns, require_root


def test_setup_values_are_checked() -> None:
    with pytest.raises(ConfigError, match="bad address"):
        TapSetup(ip="198.18.0.300/24")
    with pytest.raises(ConfigError, match="bad MTU"):
        TapSetup(mtu=20)
    assert not TapSetup() and TapSetup(ip="198.18.0.2/24")


@pytest.mark.root
async def test_tap_opens_inside_the_namespace_with_its_address() -> None:
    require_root()
    with netns() as ns:
        path = f"/run/netns/{ns.name}"
        be = net_init_tap("c1-eth1", NetdevTap(ifname="eth1", netns=path, ip="198.18.77.2/24",
                                               mac="02:00:00:77:00:02"))
        try:
            shown = ns.ip("-o", "addr", "show", "eth1")
            assert "inet 198.18.77.2/24 brd 198.18.77.255" in shown
            link = ns.ip("-o", "link", "show", "eth1")
            assert "02:00:00:77:00:02" in link and ",UP" in link
            assert be.ifname == "eth1" and f"netns={path}" in be.describe()
        finally:
            be.cleanup()
        assert "eth1" not in ns.ip("-o", "link")  # closing the fd removed it


@pytest.mark.root
async def test_a_missing_namespace_is_a_backend_error() -> None:
    require_root()
    with pytest.raises(BackendError, match="cannot open network namespace"):
        net_init_tap("x", NetdevTap(ifname="eth1", netns="/proc/999999999/ns/net"))
    with pytest.raises(BackendError, match="cannot enter network namespace"):
        net_init_tap("x", NetdevTap(ifname="eth1", netns="/etc/hostname"))  # not a netns
