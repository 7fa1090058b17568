"""Host-side backends a server opens in its own process.

The tap service's backends (``serve tap --backend``, AddBackend) and a hub's
port backends (``serve hub --port-backend``) are opened, listed and closed
the same way: each is a NetClient of the server's registry, made by
``net.netdev.net_init_netdev``. A TAP's script runs as a subprocess after the
device is open, and its downscript before it closes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from virtwire.errors import ConflictError, NotFoundError
from virtwire.net.dgram import DgramBackend
from virtwire.net.net import NetClient
from virtwire.net.netdev import NETDEV_TYPES, Netdev, check_netdev, net_init_netdev
from virtwire.net.stream import StreamBackend
from virtwire.net.tap import TapBackend
from virtwire.server.registry import BackendView, NetClientRegistry
from virtwire.v1 import netclient_pb2


def backend_view(nc: NetClient) -> BackendView:
    """NetClientInfo's backend_state and backend_address of a backend.

    A stream backend is connected while it has a connection, else it waits
    for a client at its bound address (listen) or dials its address
    (connect); a dgram backend's socket and a TAP's device are always open.
    Other NetClients (hub ports, links) have no backend state.
    """
    if isinstance(nc, StreamBackend):
        address = str(nc.local_address if nc.listen else nc.addr)
        if nc.conn is not None:
            return netclient_pb2.BACKEND_STATE_CONNECTED, address
        return (netclient_pb2.BACKEND_STATE_LISTENING if nc.listen
                else netclient_pb2.BACKEND_STATE_CONNECTING), address
    if isinstance(nc, DgramBackend):
        return netclient_pb2.BACKEND_STATE_CONNECTED, str(nc.local_address)
    if isinstance(nc, TapBackend):
        return netclient_pb2.BACKEND_STATE_CONNECTED, ""
    return netclient_pb2.BACKEND_STATE_UNSPECIFIED, ""


def is_backend(nc: NetClient) -> bool:
    """Whether ``nc`` is a host-side backend (tap, stream, dgram)."""
    return nc.kind in NETDEV_TYPES


async def open_backend(registry: NetClientRegistry, config: Netdev) -> NetClient:
    """Open ``config``'s backend as a NetClient of ``registry`` (named
    ``config.name``, or TYPEn) and run a TAP's script; it has no peer yet.

    ConfigError for bad input, ConflictError for a taken name, BackendError
    when the host resource can't be opened or the script fails; nothing stays
    open on failure. The script is a subprocess: the server answers other
    RPCs meanwhile (the backend is listed, its name taken, but its device is
    not read until the script is done).
    """
    check_netdev(config)
    name = config.name or registry.unique_name(config.type)
    if name in registry:
        raise ConflictError(f"a backend named {name!r} already exists")
    backend = net_init_netdev(name, config)
    try:
        registry.add(backend)
    except BaseException:
        backend.cleanup()
        raise
    if isinstance(backend, TapBackend):
        try:
            await backend.run_script()
        except BaseException:
            if name in registry and registry.get(name) is backend:
                await registry.remove(name)
            raise
    return backend


async def close_backend(registry: NetClientRegistry, name: str) -> None:
    """Close backend ``name`` (a TAP's downscript runs first) and its link."""
    nc = registry.get(name)
    if not is_backend(nc):
        raise NotFoundError(f"{name!r} is not a backend of this server")
    if isinstance(nc, TapBackend):
        await nc.run_downscript()  # a subprocess: other RPCs go on
    await registry.remove(name)


async def run_downscripts(ncs: Iterable[NetClient]) -> None:
    """Every TAP's downscript, while its device is still open."""
    await asyncio.gather(*(nc.run_downscript() for nc in ncs if isinstance(nc, TapBackend)))
