"""A learning switch: an 802.1Q bridge with a capped, aging MAC table (docs/switch.md).

The ports are hub ports (net.hub) with the hub's NetQueue rules narrowed to
forwarding: a port can receive when some port it would forward to can (a port
sharing one of its VLANs), and when a port's peer flushes, the queues of those
ports are flushed. What differs from the hub is where a frame goes:

- every frame is classified on ingress into one VLAN: an access port's, or on
  a trunk its tag's VLAN (an untagged or priority-tagged frame: the trunk's
  native VLAN); a frame of a VLAN the port does not carry is filtered;
- the source MAC is learned per (MAC, VLAN) (independent VLAN learning) with
  the time it was last seen; an entry older than ``aging`` seconds is gone;
- broadcast, multicast and unknown unicast are flooded to every other port of
  the VLAN; a unicast to a learned MAC goes only to its port, and is filtered
  if that is the port it came in on (a frame never goes back out its ingress);
- at egress the frame is untagged on an access port and for a trunk's native
  VLAN, and tagged (802.1Q, with the ingress tag's priority) on a trunk;
- an optional mirror port gets a copy of every forwarded frame as it came in;
  it takes no part in forwarding (frames received on it are filtered).

Each filtered frame is counted on its ingress port by cause (``SwitchPortStats``)
and in the port's ``stats.dropped_switch``, which the NetClient counters show.
The MAC table holds at most ``max_entries`` entries: a new MAC beyond that is not
learned (its frames are flooded, as unknown unicast) and the refusal is counted.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from virtwire.errors import ConfigError, NotFoundError
from virtwire.net.eth import ETH_HLEN, ETH_P_8021Q, format_mac
from virtwire.net.hub import Hub, HubPort
from virtwire.net.net import NetClient
from virtwire.tracing import STATE, TracedFrame, any_traced, now_ns

logger = logging.getLogger(__name__)

#: IEEE 802.1Q VLAN ids a port may carry (0 means priority-tagged, 4095 is reserved).
VLAN_MIN, VLAN_MAX = 1, 4094
#: The VLAN of a port nobody configured (an access port, as most switches ship).
DEFAULT_VLAN = 1
#: Seconds a learned MAC stays without being seen (802.1D's default, vde_switch's too).
DEFAULT_AGING_S = 300.0
#: MAC table entries a switch holds unless told otherwise.
DEFAULT_MAX_ENTRIES = 4096
#: Largest --max-entries / --aging accepted: a table ListMacTable lists in one
#: response (well under the 16 MiB message cap) and sorts off the event loop; a week.
MAX_ENTRIES_LIMIT = 1 << 16
AGING_MAX_S = 7 * 24 * 3600.0
#: Entries one expire() on the data path removes at most, so that a table that
#: aged all at once does not hold the event loop; the rest go on later calls
#: (an aged entry is never used meanwhile: lookup checks its age).
EXPIRE_BATCH = 256
_TAG_LEN = 4
_TPID = ETH_P_8021Q.to_bytes(2, "big")


class SwitchError(ConfigError):
    """A bad VLAN configuration, aging time or table size."""


def check_vlan(vid: int, what: str = "VLAN") -> int:
    if not isinstance(vid, int) or isinstance(vid, bool) or not VLAN_MIN <= vid <= VLAN_MAX:
        raise SwitchError(f"bad {what} {vid!r}: a VLAN id is {VLAN_MIN} to {VLAN_MAX}")
    return vid


@dataclass(frozen=True)
class PortVlans:
    """A port's VLANs: an access port (untagged, ``vlan``), or a trunk carrying
    ``trunk`` tagged and, if ``native``, that VLAN untagged too."""

    vlan: int = DEFAULT_VLAN
    trunk: frozenset[int] | None = None
    native: int | None = None

    def __post_init__(self) -> None:
        if self.trunk is None:
            check_vlan(self.vlan)
            if self.native is not None:
                raise SwitchError("native VLAN: only a trunk port has one")
            return
        if not self.trunk:
            raise SwitchError("a trunk carries at least one VLAN")
        if len(self.trunk) > VLAN_MAX:
            raise SwitchError("a trunk carries at most 4094 VLANs")
        for vid in self.trunk:
            check_vlan(vid, "trunk VLAN")
        if self.native is not None:
            check_vlan(self.native, "native VLAN")

    @classmethod
    def access(cls, vlan: int) -> PortVlans:
        return cls(vlan=vlan)

    @classmethod
    def trunked(cls, vlans: Iterable[int], native: int | None = None) -> PortVlans:
        return cls(trunk=frozenset(vlans), native=native)

    @property
    def is_trunk(self) -> bool:
        return self.trunk is not None

    @property
    def vlans(self) -> frozenset[int]:
        """Every VLAN the port carries, tagged or not."""
        if self.trunk is None:
            return frozenset((self.vlan,))
        return self.trunk | {self.native} if self.native is not None else self.trunk

    @property
    def untagged(self) -> int | None:
        """The VLAN this port sends and takes untagged (None: a trunk without native)."""
        return self.vlan if self.trunk is None else self.native

    def format(self) -> str:
        """``10`` (access) or ``trunk=10,20[,native=1]``: what ``parse`` reads."""
        if self.trunk is None:
            return str(self.vlan)
        text = "trunk=" + ",".join(str(v) for v in sorted(self.trunk))
        return text + (f",native={self.native}" if self.native is not None else "")

    @classmethod
    def parse(cls, text: str) -> PortVlans:
        """``VLAN`` for an access port, ``trunk=V1,V2,...[,native=V]`` for a trunk."""
        try:
            if not text.startswith("trunk="):
                return cls.access(int(text))
            vids: list[int] = []
            native: int | None = None
            for item in text.removeprefix("trunk=").split(","):
                if item.startswith("native="):
                    native = int(item.removeprefix("native="))
                else:
                    vids.append(int(item))
            return cls.trunked(vids, native)
        except ValueError as exc:
            if isinstance(exc, SwitchError):
                raise
            raise SwitchError(f"bad port VLANs {text[:80]!r}: expected VLAN or "
                              "trunk=VLAN,VLAN,...[,native=VLAN]") from exc


@dataclass
class SwitchPortStats:
    """What a switch port did with the frames it received (and, for the mirror, sent)."""

    #: Frames of a VLAN the port does not carry: a tag on an access port, a tag
    #: not in a trunk's list, an untagged frame on a trunk without a native VLAN.
    filtered_vlan: int = 0
    #: Unicast frames to a MAC learned on this same port.
    filtered_same_port: int = 0
    #: Frames shorter than an Ethernet header (or a tag) and frames from a
    #: multicast source address (not learned, not forwarded).
    filtered_malformed: int = 0
    #: Frames received on the mirror port (it only listens).
    filtered_mirror: int = 0
    #: Frames flooded: broadcast, multicast, unknown unicast.
    flooded: int = 0
    #: Unicast frames sent to the one port their MAC was learned on.
    forwarded_unicast: int = 0
    #: Frames that reached no port (alone in their VLAN).
    no_destination: int = 0
    #: New (MAC, VLAN) entries learned from this port, and entries that moved here.
    learned: int = 0
    moved: int = 0
    #: New MACs not learned because the table was full.
    fdb_refused: int = 0
    #: Copies sent out of this port as the mirror.
    mirrored: int = 0

    @property
    def filtered(self) -> int:
        return (self.filtered_vlan + self.filtered_same_port + self.filtered_malformed
                + self.filtered_mirror)


@dataclass
class FdbEntry:
    """A learned MAC: the port it was last seen on, and when (the switch's clock)."""

    port: SwitchPort
    seen: float


@dataclass(frozen=True)
class FdbView:
    """One MAC table row, as ListMacTable shows it."""

    mac: str
    vlan: int
    port: str
    age: float


@dataclass(frozen=True)
class FdbSnapshot:
    """``Switch.snapshot``: the clock, the aging time and the entries then."""

    now: float
    aging: float
    items: list[tuple[tuple[bytes, int], FdbEntry]]


def table_rows(snap: FdbSnapshot, port: str = "", vlan: int = 0) -> list[FdbView]:
    """The live entries of ``snap`` (of one port or VLAN if given) as MAC table
    rows, by VLAN then MAC."""
    oldest = snap.now - snap.aging
    rows = [FdbView(format_mac(mac), vid, e.port.name, max(0.0, snap.now - e.seen))
            for (mac, vid), e in snap.items
            if e.seen > oldest and (not port or e.port.name == port)
            and (not vlan or vid == vlan)]
    rows.sort(key=lambda r: (r.vlan, r.mac))
    return rows


class SwitchPort(HubPort):
    """A port of a ``Switch``: its VLANs, its counters, the ports it forwards to."""

    kind = "switchport"
    forward_span = "switch.forward"
    hub: Switch

    def __init__(self, hub: Hub, name: str, port_id: int) -> None:
        super().__init__(hub, name, port_id)
        self.vlans = PortVlans()
        self.switch_stats = SwitchPortStats()
        #: Ports sharing a VLAN with this one (the switch keeps it current).
        self.targets: tuple[SwitchPort, ...] = ()

    def forward_ports(self) -> Sequence[HubPort]:
        return self.targets

    def can_receive(self) -> bool:
        """The hub's rule over ``targets``; but a port with none (the mirror, a
        port alone in its VLANs) takes every frame and counts it, rather than
        holding its peer back forever."""
        return not self.targets or super().can_receive()

    def receive(self, data: bytes) -> int:
        if STATE.live and type(data) is TracedFrame:
            start = now_ns()
            outs: dict[SwitchPort, list[bytes]] = {}
            copies = self._forward_traced(data, outs)
            for port, out in outs.items():
                for copy in out:
                    port.send_packet(copy)
            self.forwarded((data,), start, (copies,))
            return len(data)
        self.hub.forward(self, data)
        return len(data)

    def _forward_traced(self, data: TracedFrame, outs: dict[SwitchPort, list[bytes]]
                        ) -> list[TracedFrame]:
        """``Switch.forward`` of a traced frame into ``outs``: the copies it
        re-tagged (new bytes) become TracedFrames too; returns them."""
        mine: dict[SwitchPort, list[bytes]] = {}
        self.hub.forward(self, data, mine)
        copies: list[TracedFrame] = []
        made: dict[int, TracedFrame] = {}
        for port, out in mine.items():
            for i, copy in enumerate(out):
                if type(copy) is not TracedFrame:
                    # One copy object may go to several trunk ports: one TracedFrame.
                    traced = made.get(id(copy))
                    if traced is None:
                        traced = made[id(copy)] = TracedFrame(copy, data.ctx)
                        copies.append(traced)
                    out[i] = traced
            outs.setdefault(port, []).extend(out)
        return copies

    def deliver_packets(self, sender: NetClient, frames: Sequence[bytes],
                        recheck: bool = False) -> int:
        """A batch: each frame picks its ports, and each port then sends what it
        got in one ``send_packets``, in order. With ``recheck`` the batch goes in
        runs some target's peer can surely take, as the hub's does."""
        if not self.batch_fast(frames):
            return NetClient.deliver_packets(self, sender, frames, recheck)
        forward = self.hub.forward
        start = now_ns() if any_traced(frames) else 0
        copies: list[list[TracedFrame]] = []
        n = len(frames)
        taken = 0
        while taken < n:
            room = n - taken
            if recheck and self.targets:
                room = min(room, max(p.peer.receive_room() if p.peer is not None else n
                                     for p in self.targets))
                if taken == 0:
                    room = max(room, 1)  # the first frame passed can_send already
                if room <= 0:
                    break
            run = frames if room == n else frames[taken:taken + room]
            outs: dict[SwitchPort, list[bytes]] = {}
            if start:
                for data in run:
                    if type(data) is TracedFrame:
                        copies.append(self._forward_traced(data, outs))
                    else:
                        forward(self, data, outs)
                        copies.append([])
            else:
                for data in run:
                    forward(self, data, outs)
            for port, out in outs.items():
                port.send_packets(out)
            taken += len(run)
        stats = self.stats
        stats.rx_frames += taken
        stats.rx_bytes += sum(map(len, frames[:taken])) if taken < n else sum(map(len, frames))
        if start:
            self.forwarded(frames[:taken] if taken < n else frames, start, copies)
        return taken

    def describe(self) -> str:
        s = self.switch_stats
        role = "mirror" if self.hub.mirror is self else f"vlans={self.vlans.format()}"
        return (f"{role} filtered_vlan={s.filtered_vlan} "
                f"filtered_same_port={s.filtered_same_port} flooded={s.flooded} "
                f"fdb_refused={s.fdb_refused}")

    def cleanup(self) -> None:
        super().cleanup()
        self.hub.port_removed(self)


class Switch(Hub):
    """A learning bridge over hub ports; ``clock`` is monotonic seconds (tests fake it)."""

    port_class = SwitchPort
    ports: list[SwitchPort]  # type: ignore[assignment]

    def __init__(self, hub_id: int = 0, name: str = "", *,
                 aging: float = DEFAULT_AGING_S, max_entries: int = DEFAULT_MAX_ENTRIES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(hub_id, name)
        if not 0 < aging <= AGING_MAX_S:
            raise SwitchError(f"bad aging time {aging!r}: more than 0 s, at most a week")
        if not 1 <= max_entries <= MAX_ENTRIES_LIMIT:
            raise SwitchError(f"bad MAC table size {max_entries!r}: 1 to {MAX_ENTRIES_LIMIT}")
        self.aging = float(aging)
        self.max_entries = max_entries
        self.clock = clock
        #: (MAC, VLAN) -> entry, least recently seen first (so aging pops the front).
        self.fdb: OrderedDict[tuple[bytes, int], FdbEntry] = OrderedDict()
        #: New MACs refused because the table was full (also per port).
        self.fdb_refused = 0
        self.mirror: SwitchPort | None = None

    # -- configuration ---------------------------------------------------------------
    def add_port(self, name: str = "", vlans: PortVlans | None = None) -> SwitchPort:
        port = super().add_port(name)
        assert isinstance(port, SwitchPort)
        if vlans is not None:
            port.vlans = vlans
        self._retarget()
        return port

    def port(self, name: str) -> SwitchPort:
        port = super().port(name)
        assert isinstance(port, SwitchPort)
        return port

    def set_port_vlans(self, name: str, vlans: PortVlans) -> SwitchPort:
        """Change a port's VLANs: what was learned on it is forgotten."""
        port = self.port(name)
        port.vlans = vlans
        self.flush(port=port)
        self._retarget()
        # Ports that could not take frames may now have somewhere to send them.
        port.flush_peer_side()
        logger.info("switch %s: port %s vlans %s", self.name, name, vlans.format())
        return port

    def set_mirror(self, name: str | None) -> None:
        """Make port ``name`` the mirror (None: no mirror)."""
        self.mirror = self.port(name) if name else None
        if self.mirror is not None:
            self.flush(port=self.mirror)
        self._retarget()

    def port_removed(self, port: SwitchPort) -> None:
        if self.mirror is port:
            self.mirror = None
        self.flush(port=port)
        self._retarget()

    def _retarget(self) -> None:
        forwarding = [p for p in self.ports if p is not self.mirror]
        for port in self.ports:
            if port is self.mirror:
                port.targets = ()
                continue
            mine = port.vlans.vlans
            port.targets = tuple(p for p in forwarding
                                 if p is not port and not mine.isdisjoint(p.vlans.vlans))

    # -- the MAC table ---------------------------------------------------------------
    def expire(self, limit: int = EXPIRE_BATCH) -> int:
        """Forget (at most ``limit`` of) the entries not seen for ``aging``
        seconds, oldest first; how many went."""
        oldest = self.clock() - self.aging
        fdb = self.fdb
        gone = 0
        while fdb and gone < limit:
            key, entry = next(iter(fdb.items()))
            if entry.seen > oldest:
                break
            del fdb[key]
            gone += 1
        return gone

    def lookup(self, mac: bytes, vlan: int) -> SwitchPort | None:
        entry = self.fdb.get((mac, vlan))
        if entry is None:
            return None
        if entry.seen <= self.clock() - self.aging:
            self.expire()
            return None
        return entry.port

    def learn(self, port: SwitchPort, mac: bytes, vlan: int) -> None:
        now = self.clock()
        key = (mac, vlan)
        fdb = self.fdb
        entry = fdb.get(key)
        if entry is not None:
            if entry.port is not port:
                entry.port = port
                port.switch_stats.moved += 1
            entry.seen = now
            fdb.move_to_end(key)
            return
        if len(fdb) >= self.max_entries and (not self.expire() or len(fdb) >= self.max_entries):
            self.fdb_refused += 1
            port.switch_stats.fdb_refused += 1
            return
        fdb[key] = FdbEntry(port, now)
        port.switch_stats.learned += 1

    def snapshot(self) -> FdbSnapshot:
        """The table as it is now, copied in one C-level step, for ``table_rows``
        (which may run in another thread: it only reads the copy's entries)."""
        return FdbSnapshot(self.clock(), self.aging, list(self.fdb.items()))

    def table(self, port: str = "", vlan: int = 0) -> list[FdbView]:
        """The live entries (optionally of one port or VLAN), by VLAN then MAC."""
        return table_rows(self.snapshot(), port, vlan)

    def flush(self, port: SwitchPort | str | None = None, vlan: int = 0) -> int:
        """Forget every entry (of ``port`` and/or ``vlan`` if given); how many went."""
        if isinstance(port, str):
            port = self.port(port) if port else None
        if vlan:
            check_vlan(vlan)
        if port is None and not vlan:
            count = len(self.fdb)
            self.fdb.clear()
            return count
        doomed = [key for key, e in self.fdb.items()
                  if (port is None or e.port is port) and (not vlan or key[1] == vlan)]
        for key in doomed:
            del self.fdb[key]
        return len(doomed)

    # -- forwarding ------------------------------------------------------------------
    def forward(self, ingress: SwitchPort, data: bytes,
                outs: dict[SwitchPort, list[bytes]] | None = None) -> None:
        """Switch one frame that came in on ``ingress``: sent at once, or with
        ``outs`` appended to each destination's list (a batch sends them)."""
        stats = ingress.switch_stats
        if ingress is self.mirror:
            stats.filtered_mirror += 1
            ingress.stats.dropped_switch += 1
            return
        if len(data) < ETH_HLEN or data[6] & 1:
            stats.filtered_malformed += 1
            ingress.stats.dropped_switch += 1
            return
        vlans = ingress.vlans
        tagged = data[12:14] == _TPID
        if tagged:
            if len(data) < ETH_HLEN + _TAG_LEN:
                stats.filtered_malformed += 1
                ingress.stats.dropped_switch += 1
                return
            tci = int.from_bytes(data[14:16], "big")
            vid = tci & 0xFFF
            if vid == 0:  # priority-tagged: the port's untagged VLAN
                vid = vlans.untagged or 0
            elif vlans.trunk is None or vid not in vlans.vlans:
                vid = 0
            if not vid:
                stats.filtered_vlan += 1
                ingress.stats.dropped_switch += 1
                return
            untagged_frame = data[:12] + data[16:]
            tagged_frame = data[:14] + ((tci & 0xF000) | vid).to_bytes(2, "big") + data[16:]
        else:
            untagged_vid = vlans.untagged
            if untagged_vid is None:
                stats.filtered_vlan += 1
                ingress.stats.dropped_switch += 1
                return
            vid = untagged_vid
            untagged_frame = data
            tagged_frame = b""
        self.learn(ingress, data[6:12], vid)
        dst = data[0:6]
        if dst[0] & 1:
            out: Iterable[SwitchPort] = ingress.targets
            stats.flooded += 1
        else:
            known = self.lookup(dst, vid)
            if known is ingress:
                stats.filtered_same_port += 1
                ingress.stats.dropped_switch += 1
                return
            if known is not None and vid in known.vlans.vlans:
                out = (known,)
                stats.forwarded_unicast += 1
            else:
                out = ingress.targets
                stats.flooded += 1
        sent = False
        for port in out:
            pv = port.vlans
            if vid == pv.untagged:
                copy = untagged_frame
            elif pv.trunk is not None and vid in pv.trunk:
                if not tagged_frame:
                    tagged_frame = data[:12] + _TPID + vid.to_bytes(2, "big") + data[12:]
                copy = tagged_frame
            else:
                continue
            if outs is None:
                port.send_packet(copy)
            else:
                outs.setdefault(port, []).append(copy)
            sent = True
        if not sent:
            stats.no_destination += 1
            return
        mirror = self.mirror
        if mirror is not None:
            if outs is None:
                mirror.send_packet(data)
            else:
                outs.setdefault(mirror, []).append(data)
            mirror.switch_stats.mirrored += 1

    def require_port(self, name: str) -> SwitchPort:
        for port in self.ports:
            if port.name == name:
                return port
        raise NotFoundError(f"switch {self.name} has no port named {name[:64]!r}")
