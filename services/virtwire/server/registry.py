"""The NetClients one server hosts, their links, and their protobuf view."""

from __future__ import annotations

import logging
from collections.abc import Callable

from virtwire.address import parse_peer
from virtwire.errors import ConflictError, NotFoundError
from virtwire.link import DEFAULT_WINDOW, LinkAcceptor, LinkDialer, LinkPeer, LinkRunState
from virtwire.net.net import NetClient
from virtwire.v1 import netclient_pb2

logger = logging.getLogger(__name__)

_LINK_STATE = {
    LinkRunState.NO_PEER: netclient_pb2.LINK_STATE_NO_PEER,
    LinkRunState.CONNECTING: netclient_pb2.LINK_STATE_CONNECTING,
    LinkRunState.UP: netclient_pb2.LINK_STATE_UP,
}


class NetClientRegistry:
    """Name -> NetClient, plus the dialers and the acceptor of their links."""

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        self._ncs: dict[str, NetClient] = {}
        self.dialers: dict[str, LinkDialer] = {}
        self.window = window
        #: Called for a LinkHello with an empty NetClient name; may create one.
        self.on_anonymous_link: Callable[[str], NetClient] | None = None
        self.acceptor = LinkAcceptor(self._lookup_for_link, window)

    def add(self, nc: NetClient) -> NetClient:
        if nc.name in self._ncs:
            raise ConflictError(f"a NetClient named {nc.name!r} already exists")
        self._ncs[nc.name] = nc
        return nc

    def get(self, name: str) -> NetClient:
        try:
            return self._ncs[name]
        except KeyError:
            known = ", ".join(sorted(self._ncs)) or "none"
            raise NotFoundError(f"no NetClient named {name!r} (known: {known})") from None

    def __contains__(self, name: str) -> bool:
        return name in self._ncs

    def all(self) -> list[NetClient]:
        return list(self._ncs.values())

    def unique_name(self, prefix: str) -> str:
        n = 0
        while f"{prefix}{n}" in self._ncs:
            n += 1
        return f"{prefix}{n}"

    async def remove(self, name: str) -> NetClient:
        """Close the NetClient's link, purge what it queued, and forget it."""
        nc = self.get(name)
        dialer = self.dialers.pop(name, None)
        if dialer is not None:
            await dialer.stop()
        peer = nc.peer
        if isinstance(peer, LinkPeer):
            peer.close()
        nc.purge_queued_packets()
        nc.cleanup()
        del self._ncs[name]
        return nc

    def connect(self, nc: NetClient, peer: str) -> LinkDialer:
        """Dial ``peer`` (ADDR/NETCLIENT) for ``nc`` and keep the link up."""
        spec = parse_peer(peer)
        if nc.peer is not None:
            raise ConflictError(f"{nc.name} already has a peer ({nc.peer.name})")
        dialer = LinkDialer(nc, spec, self.window)
        self.dialers[nc.name] = dialer
        dialer.start()
        return dialer

    async def close(self) -> None:
        for name in list(self._ncs):
            await self.remove(name)

    def _lookup_for_link(self, name: str, dialler: str) -> NetClient:
        if not name:
            if self.on_anonymous_link is None:
                raise NotFoundError("this server cannot create a NetClient for a link: "
                                    "name one in the peer address (ADDR/NETCLIENT)")
            return self.on_anonymous_link(dialler)
        nc = self.get(name)
        if name in self.dialers:
            raise ConflictError(f"{name} dials its own peer ({self.dialers[name].spec}); "
                                "it does not accept links")
        return nc

    # -- protobuf view ----------------------------------------------------------
    def info(self, nc: NetClient) -> netclient_pb2.NetClientInfo:
        peer = nc.peer
        dialer = self.dialers.get(nc.name)
        state = LinkRunState.NO_PEER
        peer_name = ""
        details = nc.describe()
        if isinstance(peer, LinkPeer):
            state = peer.state
            peer_name = str(dialer.spec) if dialer is not None else peer.remote_name
            if dialer is not None and dialer.last_error and state is not LinkRunState.UP:
                details = f"{details} last_error={dialer.last_error!r}".strip()
        elif peer is not None:
            state = LinkRunState.UP
            peer_name = peer.name
        s = nc.stats
        q = nc.incoming_queue
        # Frames a LinkPeer could not send (queue full, link down) count for
        # the NetClient it stands in front of: they were that NetClient's tx.
        out_dropped = out_link_down = out_purged = 0
        if isinstance(peer, LinkPeer):
            out_dropped = peer.incoming_queue.dropped
            out_link_down = peer.stats.dropped_link_down
            out_purged = peer.incoming_queue.purged
        counters = netclient_pb2.NetClientCounters(
            rx_frames=s.rx_frames, rx_bytes=s.rx_bytes,
            tx_frames=s.tx_frames, tx_bytes=s.tx_bytes,
            dropped_queue_full=q.dropped + out_dropped,
            dropped_link_down=s.dropped_link_down + out_link_down,
            dropped_refused=s.dropped_refused,
            dropped_malformed=s.dropped_malformed
            + (peer.stats.dropped_malformed if isinstance(peer, LinkPeer) else 0),
            dropped_purged=q.purged + out_purged,
            queue_len=len(q),
            capture_dropped=nc.capture_dropped,
            peer_queue_len=len(peer.incoming_queue) if isinstance(peer, LinkPeer) else 0,
        )
        return netclient_pb2.NetClientInfo(
            name=nc.name, kind=nc.kind, admin_down=nc.admin_down, link_down=nc.link_down,
            link_state=_LINK_STATE[state], peer=peer_name, counters=counters, info=details)

