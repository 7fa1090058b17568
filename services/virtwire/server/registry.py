"""The NetClients one server hosts, their links, and their protobuf view."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

from virtwire.address import check_name, parse_peer, shorten
from virtwire.errors import ConfigError, ConflictError, NotFoundError
from virtwire.link import DEFAULT_WINDOW, LinkPeer, LinkRunState
from virtwire.net.capture import MAX_CAPTURE_SUBSCRIBERS
from virtwire.net.net import NetClient
from virtwire.server.link import LINK_TRANSPORTS, LinkAcceptor, LinkDialer
from virtwire.v1 import netclient_pb2

logger = logging.getLogger(__name__)

_LINK_STATE = {
    LinkRunState.NO_PEER: netclient_pb2.LINK_STATE_NO_PEER,
    LinkRunState.CONNECTING: netclient_pb2.LINK_STATE_CONNECTING,
    LinkRunState.UP: netclient_pb2.LINK_STATE_UP,
}


#: Names listed in a NOT_FOUND message, so it stays short however many exist.
KNOWN_SHOWN = 8

#: NetClientInfo's backend_state and backend_address of one NetClient.
BackendView: TypeAlias = "tuple[netclient_pb2.BackendState, str]"


@dataclass
class LinkTotals:
    """Link counters of NetClients that are gone, so server totals stay monotonic."""

    credits_refused: int = 0
    protocol_errors: int = 0


class NetClientRegistry:
    """Name -> NetClient, plus the dialers and the acceptor of their links."""

    def __init__(self, window: int = DEFAULT_WINDOW,
                 max_captures: int = MAX_CAPTURE_SUBSCRIBERS) -> None:
        self._ncs: dict[str, NetClient] = {}
        self.dialers: dict[str, LinkDialer] = {}
        self.window = window
        #: Capture subscribers allowed per NetClient.
        self.max_captures = max_captures
        #: Called for a LinkHello with an empty NetClient name; may create one.
        self.on_anonymous_link: Callable[[str], NetClient] | None = None
        #: Called when the stream of a link that ``on_anonymous_link`` made a
        #: NetClient for has ended (after the link's teardown).
        self.on_anonymous_link_end: Callable[[NetClient], None] | None = None
        self.acceptor = LinkAcceptor(self._lookup_for_link, window, self._anonymous_link_ended)
        #: ``--link-transport`` of the links this server dials and accepts.
        self.link_transport = "auto"
        #: Names a peer supplied that were refused (too long, bad characters).
        self.names_refused = 0
        #: The backend_state and backend_address of a NetClient, for servers
        #: whose NetClients have host-side backends (the tap server's).
        self.backend_view: Callable[[NetClient], BackendView] | None = None
        self._gone = LinkTotals()

    def check_name(self, name: str, what: str = "NetClient") -> str:
        """``check_name``, counting the refusal."""
        try:
            return check_name(name, what)
        except ConfigError:
            self.names_refused += 1
            raise

    def add(self, nc: NetClient) -> NetClient:
        self.check_name(nc.name)
        if nc.name in self._ncs:
            raise ConflictError(f"a NetClient named {nc.name!r} already exists")
        self._ncs[nc.name] = nc
        return nc

    def get(self, name: str) -> NetClient:
        try:
            return self._ncs[name]
        except KeyError:
            names = sorted(self._ncs)
            known = ", ".join(names[:KNOWN_SHOWN]) or "none"
            if len(names) > KNOWN_SHOWN:
                known += f" and {len(names) - KNOWN_SHOWN} more"
            raise NotFoundError(f"no NetClient named {shorten(name)} "
                                f"(known: {known})") from None

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
        self.forget(nc)
        return nc

    def forget(self, nc: NetClient) -> None:
        """``remove`` for a NetClient that dials nothing; a no-op if it is gone."""
        if self._ncs.get(nc.name) is not nc:
            return
        if nc.name in self.dialers:
            raise ConflictError(f"{nc.name} dials a peer: remove it instead")
        peer = nc.peer
        if isinstance(peer, LinkPeer):
            self._gone.credits_refused += peer.credits_refused
            self._gone.protocol_errors += peer.protocol_errors
            peer.close()
        nc.remove_all_filters()  # each releases what it holds, then cleans up
        nc.purge_queued_packets()
        nc.cleanup()
        del self._ncs[nc.name]

    def _anonymous_link_ended(self, nc: NetClient) -> None:
        if self.on_anonymous_link_end is not None:
            self.on_anonymous_link_end(nc)

    def connect(self, nc: NetClient, peer: str) -> LinkDialer:
        """Dial ``peer`` (ADDR/NETCLIENT) for ``nc`` and keep the link up."""
        spec = parse_peer(peer)
        if nc.peer is not None:
            raise ConflictError(f"{nc.name} already has a peer ({nc.peer.name})")
        dialer = LinkDialer(nc, spec, self.window, transport=self.link_transport)
        self.dialers[nc.name] = dialer
        dialer.start()
        return dialer

    def set_link_transport(self, transport: str) -> None:
        """``--link-transport``: "auto" (the same-host socket where it works) or "grpc"."""
        if transport not in LINK_TRANSPORTS:
            raise ConfigError(f"unknown link transport {shorten(transport)} "
                              f"(one of {', '.join(LINK_TRANSPORTS)})")
        self.link_transport = transport
        self.acceptor.transport = transport

    async def close(self) -> None:
        for name in list(self._ncs):
            await self.remove(name)
        if self.acceptor.listener is not None:
            await self.acceptor.listener.close()

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
    def server_counters(self) -> netclient_pb2.ServerCounters:
        credits_refused = self._gone.credits_refused
        protocol_errors = self._gone.protocol_errors
        for nc in self._ncs.values():
            if isinstance(nc.peer, LinkPeer):
                credits_refused += nc.peer.credits_refused
                protocol_errors += nc.peer.protocol_errors
        counters = netclient_pb2.ServerCounters(
            names_refused=self.names_refused + self.acceptor.names_refused,
            links_refused=self.acceptor.links_refused,
            link_credits_refused=credits_refused, link_protocol_errors=protocol_errors,
            max_capture_subscribers=self.max_captures,
            fast_path_declined=self.acceptor.fast_path_declined)
        listener = self.acceptor.listener  # made on the first offer
        if listener is not None:
            counters.fast_path_accepted = listener.accepted
            counters.fast_path_tokens_refused = listener.tokens_refused
            counters.fast_path_handshakes_refused = listener.handshakes_refused
            counters.fast_path_offers_refused = listener.offers_refused
        return counters

    def info(self, nc: NetClient) -> netclient_pb2.NetClientInfo:
        peer = nc.peer
        dialer = self.dialers.get(nc.name)
        state = LinkRunState.NO_PEER
        peer_name = link_error = transport = ""
        details = nc.describe()
        if isinstance(peer, LinkPeer):
            state = peer.state
            transport = peer.transport
            peer_name = str(dialer.spec) if dialer is not None else peer.remote_name
            if dialer is not None and dialer.last_error and state is not LinkRunState.UP:
                link_error = dialer.last_error
                details = f"{details} last_error={link_error!r}".strip()
            if dialer is not None and dialer.fast_path_reason and transport == "grpc":
                details = f"{details} fast_path_declined={dialer.fast_path_reason!r}".strip()
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
        dropped = {
            "dropped_queue_full": q.dropped + out_dropped,
            "dropped_link_down": s.dropped_link_down + out_link_down,
            "dropped_refused": s.dropped_refused,
            "dropped_malformed": s.dropped_malformed
            + (peer.stats.dropped_malformed if isinstance(peer, LinkPeer) else 0),
            "dropped_purged": q.purged + out_purged,
            "dropped_filter": s.dropped_filter,
            "dropped_switch": s.dropped_switch,
        }
        counters = netclient_pb2.NetClientCounters(
            rx_frames=s.rx_frames, rx_bytes=s.rx_bytes,
            tx_frames=s.tx_frames, tx_bytes=s.tx_bytes,
            **dropped, dropped_total=sum(dropped.values()),
            queue_len=len(q),
            capture_dropped=nc.capture_dropped,
            peer_queue_len=len(peer.incoming_queue) if isinstance(peer, LinkPeer) else 0,
            link_credits_refused=peer.credits_refused if isinstance(peer, LinkPeer) else 0,
            link_protocol_errors=peer.protocol_errors if isinstance(peer, LinkPeer) else 0,
            capture_refused=nc.capture_refused,
            capture_subscribers=len(nc.capture_hooks),
            flush_sliced=q.flush_sliced
            + (peer.incoming_queue.flush_sliced if isinstance(peer, LinkPeer) else 0),
        )
        backend_state, backend_address = (
            self.backend_view(nc) if self.backend_view is not None
            else (netclient_pb2.BACKEND_STATE_UNSPECIFIED, ""))
        return netclient_pb2.NetClientInfo(
            name=nc.name, kind=nc.kind, admin_down=nc.admin_down, link_down=nc.link_down,
            link_state=_LINK_STATE[state], peer=peer_name, counters=counters, info=details,
            dials=dialer is not None, link_error=link_error, backend_state=backend_state,
            backend_address=backend_address, link_transport=transport)

