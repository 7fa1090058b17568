"""Hub (QEMU's net/hub.c): a frame received on one port goes out of every other.

Each port is a NetClient whose peer is the device or backend plugged into it.
New ports are inserted at the head, so forwarding runs newest port first.
"""

from __future__ import annotations

import logging

from virtwire.address import shorten
from virtwire.errors import ConfigError
from virtwire.net.net import NetClient

logger = logging.getLogger(__name__)


class HubError(ConfigError):
    """A port name that is taken or unknown."""


def hub_port_name(hub_id: int, port_id: int) -> str:
    """The name of hub ``hub_id``'s port ``port_id`` when none is given: "hub<ID>port<N>"."""
    return f"hub{hub_id}port{port_id}"


class HubPort(NetClient):
    """QEMU's NetHubPort, named ``hub_port_name`` unless given a name."""

    kind = "hubport"

    def __init__(self, hub: Hub, name: str, port_id: int) -> None:
        super().__init__(name)
        self.hub = hub
        self.port_id = port_id

    def receive(self, data: bytes) -> int:
        """net_hub_port_receive: forward, and always report the frame consumed."""
        for port in self.hub.ports:
            if port is not self:
                port.send_packet(data)
        return len(data)

    def can_receive(self) -> bool:
        """net_hub_port_can_receive: true if ANY other port can send."""
        for port in self.hub.ports:
            if port is not self and port.can_send_packet():
                return True
        return False

    def flush_peer_side(self) -> None:
        """net_hub_flush: our peer flushed, so flush every other port's queue."""
        for port in self.hub.ports:
            if port is not self:
                port.incoming_queue.flush()
                if port.peer is not None:
                    port.peer.peer_ready_changed()

    def cleanup(self) -> None:
        self.hub.ports = [p for p in self.hub.ports if p is not self]


class Hub:
    """QEMU's NetHub: an id and its ports, newest first."""

    def __init__(self, hub_id: int = 0) -> None:
        self.id = hub_id
        self.ports: list[HubPort] = []
        self._next_port = 0

    def add_port(self, name: str = "") -> HubPort:
        """net_hub_add_port: the new port goes to the head of the list."""
        taken = {p.name for p in self.ports}
        if name and name in taken:
            raise HubError(f"hub {self.id} already has a port named {shorten(name)}")
        port_id = self._next_port
        while not name and hub_port_name(self.id, port_id) in taken:
            port_id += 1
        name = name or hub_port_name(self.id, port_id)
        self._next_port = port_id + 1
        port = HubPort(self, name, port_id)
        self.ports.insert(0, port)
        logger.info("hub %d: added port %s", self.id, name)
        return port

    def port(self, name: str) -> HubPort:
        for port in self.ports:
            if port.name == name:
                return port
        raise HubError(f"hub {self.id} has no port named {shorten(name)}")

    def remove_port(self, name: str) -> None:
        """Remove a port; what it queued at other NetClients is purged."""
        port = self.port(name)
        port.cleanup()
        port.purge_queued_packets()
        if port.peer is not None and port.peer.peer is port:
            port.peer.peer = None
        port.peer = None
        logger.info("hub %d: removed port %s", self.id, name)
