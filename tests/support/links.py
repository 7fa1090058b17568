"""Join a NetClient to a hub service over a real link, as a backend does."""

from __future__ import annotations

import asyncio

from virtwire.address import parse_peer
from virtwire.link import DEFAULT_WINDOW, Batch, LinkPeer
from virtwire.net.net import NetClient
from virtwire.server.link import LinkDialer

from support.doubles import Sink, until


async def plug(address: str, nc: NetClient, port: str = "",
               window: int = DEFAULT_WINDOW) -> LinkDialer:
    """Dial the hub at ``address`` (its ``port``, or a new one) for ``nc``; return
    the started dialer once the link's session is up."""
    dialer = LinkDialer(nc, parse_peer(f"{address}/{port}"), window=window)
    dialer.start()
    await asyncio.wait_for(dialer.connected.wait(), 10)
    await until(lambda: isinstance(nc.peer, LinkPeer) and nc.peer.session is not None,
                what=f"{nc.name} linked")
    return dialer


async def ready(*ncs: NetClient) -> None:
    """Wait until each dialer knows its hub port can receive (another port exists)."""
    for nc in ncs:
        await until(lambda nc=nc: isinstance(nc.peer, LinkPeer) and nc.peer.remote_ready,
                    what=f"{nc.name} ready")


def linked(window_a: int, window_b: int) -> tuple[Sink, LinkPeer, Sink, LinkPeer]:
    """Sinks a and b joined by two LinkPeers, no transport: the test carries
    each ``take_batch`` to the other side's ``on_batch`` itself."""
    a, b = Sink("a"), Sink("b")
    pa, pb = LinkPeer(a, "b", window_a), LinkPeer(b, "a", window_b)
    # As the hello and welcome do: each side is granted the other's window.
    pa.attach(object(), credits=pb.window, remote_ready=b.can_receive_packet())
    pb.attach(object(), credits=pa.window, remote_ready=a.can_receive_packet())
    return a, pa, b, pb


def carry(src: LinkPeer, dst: LinkPeer) -> Batch | None:
    """One message of the link from ``src`` to ``dst``."""
    batch = src.take_batch()
    if batch is not None:
        dst.on_batch(batch)
    return batch
