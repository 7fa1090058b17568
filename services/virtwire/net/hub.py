"""Hub (QEMU's net/hub.c): a frame received on one port goes out of every other.

Each port is a NetClient whose peer is the device or backend plugged into it.
New ports are inserted at the head, so forwarding runs newest port first.
QEMU names a port after its hub's id ("hub0port1"); a virtwire hub also has a
name ("hub<ID>" unless given one), and its ports are named after that ("swport1").
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from virtwire.address import NAME_MAX, shorten
from virtwire.errors import ConfigError
from virtwire.logfmt import netclient_extra
from virtwire.net.net import NetClient
from virtwire.tracing import STATE, TracedFrame, add_span, any_traced, now_ns

logger = logging.getLogger(__name__)


class HubError(ConfigError):
    """A port name that is taken or unknown."""


_PORT = "port"
#: Digits a port number may have in a port name (any port id a hub reaches).
_PORT_DIGITS = 12
#: Longest hub name: "<NAME>port<N>" stays a NetClient name (address.NAME_MAX).
HUB_NAME_MAX = NAME_MAX - len(_PORT) - _PORT_DIGITS
_HUB_NAME_RE = re.compile(rf"[A-Za-z0-9._-]{{1,{HUB_NAME_MAX}}}")


def default_hub_name(hub_id: int) -> str:
    """A hub's name when none is given: "hub<ID>", as QEMU's port names begin."""
    return f"hub{hub_id}"


def check_hub_name(name: str) -> str:
    """``name`` if it is 1 to HUB_NAME_MAX of ``[A-Za-z0-9._-]``, else ConfigError."""
    if _HUB_NAME_RE.fullmatch(name) is None:
        raise ConfigError(f"bad hub name {shorten(name)}: use 1 to {HUB_NAME_MAX} of A-Z, "
                          f"a-z, 0-9, '.', '_' and '-' (its ports are named NAME{_PORT}N, "
                          f"at most {NAME_MAX} characters)")
    return name


def hub_port_name(hub: str, port_id: int) -> str:
    """The name of hub ``hub``'s port ``port_id`` when none is given: "<HUB>port<N>"."""
    return f"{hub}{_PORT}{port_id}"


def is_numbered_port(hub: str, name: str) -> bool:
    """Whether ``name`` is of the form hub ``hub`` gives its unnamed ports."""
    number = name.removeprefix(f"{hub}{_PORT}")
    return number != name and number.isascii() and number.isdigit()


class HubPort(NetClient):
    """QEMU's NetHubPort, named ``hub_port_name`` unless given a name."""

    kind = "hubport"
    #: The span a traced frame gets for crossing the hub (docs/tracing.md).
    forward_span = "hub.forward"

    def __init__(self, hub: Hub, name: str, port_id: int) -> None:
        super().__init__(name)
        self.hub = hub
        self.port_id = port_id

    def forward_ports(self) -> Sequence[HubPort]:
        """The ports a frame received here may go out of: for a hub, every other.

        ``can_receive`` and ``flush_peer_side`` are written over these, so a
        learning switch (net.switch) keeps QEMU's hub rules by narrowing them to
        the ports that share a VLAN with this one."""
        return [port for port in self.hub.ports if port is not self]

    def receive(self, data: bytes) -> int:
        """net_hub_port_receive: forward, and always report the frame consumed."""
        start = now_ns() if STATE.live and type(data) is TracedFrame else 0
        for port in self.hub.ports:
            if port is not self:
                port.send_packet(data)
        if start:
            self.forwarded((data,), start)
        return len(data)

    def forwarded(self, frames: Sequence[bytes], start: int,
                  copies: Sequence[Sequence[TracedFrame]] = ()) -> None:
        """A ``hub.forward`` span (``switch.forward`` for a switch) for each
        traced frame of ``frames``, offered to the other ports since ``start``:
        its parent is the frame's context, which becomes the span's. Being set
        after the offer, it is what the hops that send later (links: when their
        batch goes out) take as parent. ``copies``, for a switch, lists beside
        each frame the re-tagged copies it sent, which get the same context."""
        attrs: dict[str, str | int] = {"netclient": self.name, "hub": self.hub.name,
                                       "hub.port": self.name}
        name = self.forward_span
        for i, data in enumerate(frames):
            if type(data) is TracedFrame:
                ctx = add_span(name, data.ctx, start, None, attrs)
                data.ctx = ctx
                if copies:
                    for copy in copies[i]:
                        copy.ctx = ctx

    def deliver_packets(self, sender: NetClient, frames: Sequence[bytes],
                        recheck: bool = False) -> int:
        """A batch of net_hub_port_receive: every other port sends the batch.

        With ``recheck`` (a send) the batch goes in runs that some other port's
        peer can surely take, and stops where no port can send any more, as
        one-by-one sends would stop at can_receive."""
        if not self.batch_fast(frames):
            return super().deliver_packets(sender, frames, recheck)
        start = now_ns() if any_traced(frames) else 0
        others = [port for port in self.hub.ports if port is not self]
        n = len(frames)
        taken = 0
        while taken < n:
            room = n - taken
            if recheck:
                # A port with no peer can always send (it drops, counted).
                room = min(room, max((p.peer.receive_room() if p.peer is not None else n
                                      for p in others), default=0))
                if taken == 0:
                    room = max(room, 1)  # the first frame passed can_send already
                if room <= 0:
                    break
            run = frames if room == n else frames[taken:taken + room]
            for port in others:
                port.send_packets(run)
            taken += len(run)
        stats = self.stats
        stats.rx_frames += taken
        stats.rx_bytes += sum(map(len, frames[:taken])) if taken < n else sum(map(len, frames))
        if start:
            self.forwarded(frames[:taken] if taken < n else frames, start)
        return taken

    def can_receive(self) -> bool:
        """net_hub_port_can_receive: true if ANY port we forward to can send."""
        for port in self.forward_ports():
            if port.can_send_packet():
                return True
        return False

    def flush_peer_side(self) -> None:
        """net_hub_flush: our peer flushed, so flush the queue of every port
        that forwards to us (for a hub, every other port)."""
        for port in self.forward_ports():
            port.incoming_queue.flush()
            if port.peer is not None:
                port.peer.peer_ready_changed()

    def cleanup(self) -> None:
        self.hub.ports = [p for p in self.hub.ports if p is not self]


class Hub:
    """QEMU's NetHub: an id and its ports, newest first; and a name for the ports'."""

    #: What ``add_port`` makes (a switch makes its own kind of port).
    port_class: type[HubPort] = HubPort

    def __init__(self, hub_id: int = 0, name: str = "") -> None:
        self.id = hub_id
        self.name = check_hub_name(name) if name else default_hub_name(hub_id)
        self.ports: list[HubPort] = []
        self._next_port = 0

    def add_port(self, name: str = "") -> HubPort:
        """net_hub_add_port: the new port goes to the head of the list."""
        taken = {p.name for p in self.ports}
        if name and name in taken:
            raise HubError(f"hub {self.name} already has a port named {shorten(name)}")
        port_id = self._next_port
        while not name and hub_port_name(self.name, port_id) in taken:
            port_id += 1
        name = name or hub_port_name(self.name, port_id)
        self._next_port = port_id + 1
        port = self.port_class(self, name, port_id)
        self.ports.insert(0, port)
        logger.info("hub %s: added port %s", self.name, name, extra=netclient_extra(name))
        return port

    def port(self, name: str) -> HubPort:
        for port in self.ports:
            if port.name == name:
                return port
        raise HubError(f"hub {self.name} has no port named {shorten(name)}")

    def remove_port(self, name: str) -> None:
        """Remove a port; what it queued at other NetClients is purged."""
        port = self.port(name)
        port.cleanup()
        port.purge_queued_packets()
        if port.peer is not None and port.peer.peer is port:
            port.peer.peer = None
        port.peer = None
        logger.info("hub %s: removed port %s", self.name, name,
                    extra=netclient_extra(name))
