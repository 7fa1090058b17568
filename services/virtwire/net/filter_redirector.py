"""filter-redirector (QEMU's net/filter-mirror.c): packets to and from chardevs.

- ``outdev=CHARDEV``: every packet of the filter's direction is written to
  the chardev (QEMU's framing, see virtwire.net.chardev) and taken: it goes
  no further here. One the chardev cannot take (no connection, a reader too
  far behind) is dropped and counted (``outdev_not_connected``,
  ``outdev_slow_reader``). With no outdev packets pass on.
- ``indev=CHARDEV``: frames read from it are injected as if they were
  travelling through this filter in its direction: they walk the filters
  after this one, then the receiver's, then reach its incoming_queue.
  ``queue=tx``: sent by the filter's NetClient, to its peer. ``queue=rx``:
  sent by its peer, to it. ``queue=all``: both, TX first, as QEMU's
  redirector does (each frame is delivered twice, once each way). Each
  injection counts in ``stats.added``; one with nobody to send it (no peer)
  is dropped and counted.

At least one of them is required, and they must differ (QEMU refuses the
same chardev for both). Status off stops reading indev (the bytes wait in
the socket, as QEMU removes its read handler) and lets packets pass. With
``vnet_hdr_support=on`` both use the framing with a vnet header length
(virtwire's frames have none: it is written as 0 and only 0 is taken). See
docs/filters.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from virtwire.errors import ConfigError
from virtwire.net.chardev import Chardev, lookup_chardev, parse_bool
from virtwire.net.filter import FilterDirection, NetFilter, Scheduler
from virtwire.net.filter_types import register_filter_type
from virtwire.net.queue import NET_PACKET_FLAG_NONE

if TYPE_CHECKING:
    from virtwire.net.net import NetClient

__all__ = ["FilterRedirector"]


@register_filter_type
class FilterRedirector(NetFilter):
    """filter-redirector: packets of its direction to outdev; frames of indev in."""

    kind = "redirector"
    PROPERTIES: ClassVar[Mapping[str, str]] = {
        "indev": "chardev id (--chardev) whose frames are injected in the filter's direction",
        "outdev": "chardev id (--chardev) the filter's packets are written to (and taken)",
        "vnet_hdr_support": "on: a 4-byte vnet header length (0) after each length",
    }

    def __init__(self, fid: str, *, direction: FilterDirection | str = FilterDirection.ALL,
                 status: bool = True, scheduler: Scheduler | None = None) -> None:
        super().__init__(fid, direction=direction, status=status, scheduler=scheduler)
        self.indev: Chardev | None = None
        self.outdev: Chardev | None = None
        self.vnet_hdr = False
        self.redirected = 0

    # -- properties ---------------------------------------------------------------------
    def parse_properties(self, props: Mapping[str, str], initial: bool) -> dict[str, Any]:
        what = f"filter redirector {self.id}"
        ids = {key: props.get(key, dev.id if dev is not None else "")
               for key, dev in (("indev", self.indev), ("outdev", self.outdev))}
        if not ids["indev"] and not ids["outdev"]:
            raise ConfigError(f"{what}: give indev=CHARDEV, outdev=CHARDEV or both")
        if ids["indev"] == ids["outdev"]:
            raise ConfigError(f"{what}: indev and outdev must be different chardevs")
        vnet_hdr = self.vnet_hdr
        if "vnet_hdr_support" in props:
            vnet_hdr = parse_bool(what, "vnet_hdr_support", props["vnet_hdr_support"])
        parsed: dict[str, Any] = {"vnet_hdr": vnet_hdr}
        for key, cid in ids.items():
            chardev = lookup_chardev(self.context.chardevs, cid, what) if cid else None
            if chardev is not None:
                chardev.check_free(self, self.id)
            parsed[key] = chardev
        return parsed

    def apply(self, parsed: Mapping[str, Any]) -> None:
        indev: Chardev | None = parsed["indev"]
        outdev: Chardev | None = parsed["outdev"]
        for old in (self.indev, self.outdev):
            if old is not None and old is not indev and old is not outdev:
                old.unclaim(self)
        self.vnet_hdr = parsed["vnet_hdr"]
        for new in (indev, outdev):
            if new is not None:
                new.claim(self, self.id, vnet_hdr=self.vnet_hdr, reads=new is indev)
        if self.indev is not None and self.indev is not indev:
            self.indev.set_frame_handler(None)
        self.indev, self.outdev = indev, outdev
        self._read_indev()

    def _read_indev(self) -> None:
        if self.indev is not None:
            self.indev.set_frame_handler(self.from_indev if self.status else None)

    def set_status(self, on: bool) -> None:
        super().set_status(on)
        self._read_indev()

    def properties(self) -> dict[str, str]:
        props = {"vnet_hdr_support": "on" if self.vnet_hdr else "off"}
        if self.indev is not None:
            props["indev"] = self.indev.id
        if self.outdev is not None:
            props["outdev"] = self.outdev.id
        return props

    def counters(self) -> dict[str, int]:
        """Packets written to outdev (FilterCounters.extra); injections are ``added``."""
        return {"redirected": self.redirected}

    # -- the data path ---------------------------------------------------------------------
    def filter_receive(self, direction: FilterDirection, sender: NetClient, flags: int,
                       data: bytes) -> int:
        outdev = self.outdev
        if outdev is None:
            return 0
        cause = outdev.write_frame(data)
        if cause is None:
            self.redirected += 1
        else:
            self.drop(f"outdev_{cause}")
        return len(data)

    def from_indev(self, frame: bytes) -> None:
        """A frame read from indev: on through the chain, in our direction(s)."""
        netdev = self.netdev
        if netdev is None:
            self.drop("detached")
            return
        if self.direction is FilterDirection.RX:
            directions: tuple[FilterDirection, ...] = (FilterDirection.RX,)
        elif self.direction is FilterDirection.TX:
            directions = (FilterDirection.TX,)
        else:
            directions = (FilterDirection.TX, FilterDirection.RX)
        for direction in directions:
            sender = netdev if direction is FilterDirection.TX else netdev.peer
            if sender is None:
                self.drop("no_peer")
                continue
            self.stats.added += 1
            self.pass_to_next(sender, NET_PACKET_FLAG_NONE, frame, direction)

    def cleanup(self) -> None:
        for dev in (self.indev, self.outdev):
            if dev is not None:
                dev.unclaim(self)
