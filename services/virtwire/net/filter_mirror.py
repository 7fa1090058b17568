"""filter-mirror (QEMU's net/filter-mirror.c): a copy of every packet, elsewhere.

The original always passes on. The copy goes to one of:

- ``outdev=CHARDEV``: a ``--chardev`` of the service (virtwire.net.chardev),
  in QEMU's framing (4-byte big-endian length, the bytes; with
  ``vnet_hdr_support=on`` a 4-byte vnet header length, always 0, between
  them). A copy written while the chardev has no connection, or while its
  reader lags ``WRITE_BUFFER_MAX`` behind, is dropped and counted.
- ``netdev_out=NETCLIENT`` (virtwire's; QEMU mirrors only to a chardev):
  another NetClient of the same service sends the copy, as if it had sent
  it itself: it walks that NetClient's tx filters and its peer's rx
  filters, and lands in its peer's incoming_queue. This is what QEMU's
  mirror-to-chardev then redirector(``queue=tx``)-on-the-other-netdev does
  in one step, so naming a hub port hands the copy to whatever is plugged
  into that port (a monitor VM's NIC, a tap), not to the hub. A copy for a
  NetClient that is gone, link-down or without a peer is dropped and
  counted; one that would come back through this mirror (a loop) is not
  mirrored again.

Copies handed over count in ``stats.added``; dropped copies in
``counters()`` by cause (``copies_dropped_CAUSE``): they are not packets of
this NetClient, so they are not in its ``dropped_filter``. See
docs/filters.md.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from virtwire.errors import ConfigError, NotFoundError
from virtwire.net.chardev import Chardev, lookup_chardev, parse_bool
from virtwire.net.filter import FilterDirection, NetFilter, Scheduler
from virtwire.net.filter_types import register_filter_type

if TYPE_CHECKING:
    from virtwire.net.net import NetClient

__all__ = ["FilterMirror"]


@register_filter_type
class FilterMirror(NetFilter):
    """filter-mirror: copies each packet to a chardev or another NetClient."""

    kind = "mirror"
    PROPERTIES: ClassVar[Mapping[str, str]] = {
        "outdev": "chardev id (--chardev) the copies are written to",
        "netdev_out": "NetClient that sends the copies to its peer (instead of outdev)",
        "vnet_hdr_support": "on: a 4-byte vnet header length (0) after each length",
    }

    def __init__(self, fid: str, *, direction: FilterDirection | str = FilterDirection.ALL,
                 status: bool = True, scheduler: Scheduler | None = None) -> None:
        super().__init__(fid, direction=direction, status=status, scheduler=scheduler)
        self.outdev: Chardev | None = None
        self.netdev_out = ""
        self.vnet_hdr = False
        self.copies_dropped: dict[str, int] = collections.defaultdict(int)
        self._copying = False

    # -- properties ---------------------------------------------------------------------
    def parse_properties(self, props: Mapping[str, str], initial: bool) -> dict[str, Any]:
        what = f"filter mirror {self.id}"
        outdev_id = props.get("outdev", self.outdev.id if self.outdev is not None else "")
        netdev_out = props.get("netdev_out", self.netdev_out)
        if outdev_id and netdev_out:
            raise ConfigError(f"{what}: give outdev= or netdev_out=, not both (an empty "
                              "value clears one)")
        if not outdev_id and not netdev_out:
            raise ConfigError(f"{what}: outdev=CHARDEV or netdev_out=NETCLIENT is required")
        vnet_hdr = self.vnet_hdr
        if "vnet_hdr_support" in props:
            vnet_hdr = parse_bool(what, "vnet_hdr_support", props["vnet_hdr_support"])
        parsed: dict[str, Any] = {"vnet_hdr": vnet_hdr, "outdev": None, "netdev_out": ""}
        if outdev_id:
            chardev = lookup_chardev(self.context.chardevs, outdev_id, what)
            chardev.check_free(self, self.id)
            parsed["outdev"] = chardev
        else:
            lookup = self.context.netclient
            if lookup is None:
                raise ConfigError(f"{what}: this service cannot look up NetClients; use "
                                  "outdev=CHARDEV")
            target = lookup(netdev_out)  # NotFoundError
            if target is self.netdev:
                raise ConfigError(f"{what}: netdev_out={netdev_out} is the NetClient the "
                                  "filter is on")
            parsed["netdev_out"] = netdev_out
        return parsed

    def apply(self, parsed: Mapping[str, Any]) -> None:
        new: Chardev | None = parsed["outdev"]
        if self.outdev is not None and self.outdev is not new:
            self.outdev.unclaim(self)
        self.vnet_hdr = parsed["vnet_hdr"]
        if new is not None:
            new.claim(self, self.id, vnet_hdr=self.vnet_hdr, reads=False)
        self.outdev = new
        self.netdev_out = parsed["netdev_out"]

    def properties(self) -> dict[str, str]:
        props = {"vnet_hdr_support": "on" if self.vnet_hdr else "off"}
        if self.outdev is not None:
            props["outdev"] = self.outdev.id
        else:
            props["netdev_out"] = self.netdev_out
        return props

    def counters(self) -> dict[str, int]:
        """Copies dropped, in all and by cause (FilterCounters.extra)."""
        counters = {f"copies_dropped_{cause}": n for cause, n in self.copies_dropped.items()}
        counters["copies_dropped"] = sum(self.copies_dropped.values())
        return counters

    # -- the data path ---------------------------------------------------------------------
    def filter_receive(self, direction: FilterDirection, sender: NetClient, flags: int,
                       data: bytes) -> int:
        if self._copying:
            self.copies_dropped["loop"] += 1  # our own copy came back to us
            return 0
        outdev = self.outdev
        if outdev is not None:
            cause = outdev.write_frame(data)
        else:
            cause = self._send_copy(data)
        if cause is None:
            self.stats.added += 1
        else:
            self.copies_dropped[cause] += 1
        return 0

    def _send_copy(self, data: bytes) -> str | None:
        lookup = self.context.netclient
        if lookup is None:
            return "no_target"
        try:
            target = lookup(self.netdev_out)
        except NotFoundError:
            return "no_target"
        if target.peer is None:
            return "no_peer"
        if target.link_down:
            return "link_down"
        self._copying = True
        try:
            target.send_packet(data)
        finally:
            self._copying = False
        return None

    def cleanup(self) -> None:
        if self.outdev is not None:
            self.outdev.unclaim(self)
