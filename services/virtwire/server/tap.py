"""The tap service: virtwire.v1.TapService over host-side backends.

Backends are QEMU's ``-netdev tap|stream|dgram`` (net/tap.py, net/stream.py,
net/dgram.py), each a NetClient whose peer is usually reached over a link
(``Netdev.peer``); their options, specs and init table are ``net.netdev``.

Unlike QEMU's netdev_add, AddBackend names no program and no host path: its
``script=``/``downscript=`` are NAMEs this service's command line maps to
paths (``--allow-script NAME=PATH``), and unix socket addresses are refused
(``rpc.netdev.rpc_netdev``); the command line's ``--backend`` specs may use both.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from virtwire.address import is_valid_name
from virtwire.allowlist import RpcPolicy
from virtwire.errors import ConflictError, NotFoundError
from virtwire.net.dgram import DgramBackend
from virtwire.net.net import NetClient
from virtwire.net.netdev import NETDEV_TYPES, Netdev, check_netdev, net_init_netdev
from virtwire.net.stream import StreamBackend
from virtwire.net.tap import TapBackend
from virtwire.rpc.netdev import rpc_netdev
from virtwire.server.base import SHUTDOWN_GRACE_S, ServerState, ServiceHost
from virtwire.server.registry import BackendView
from virtwire.v1 import netclient_pb2, tap_pb2, tap_pb2_grpc

logger = logging.getLogger(__name__)


def backend_view(nc: NetClient) -> BackendView:
    """NetClientInfo's backend_state and backend_address of a backend.

    A stream backend is connected while it has a connection, else it waits
    for a client at its bound address (listen) or dials its address
    (connect); a dgram backend's socket and a TAP's device are always open.
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


class TapServer(ServiceHost):
    """Host-side backends; each is a NetClient of this server.

    ``allowed_scripts`` (``--allow-script NAME=PATH``): the scripts AddBackend
    may name.
    """

    service_name = "tap"

    def __init__(self, listen: str = "127.0.0.1:0", *,
                 allowed_scripts: Mapping[str, str] | None = None) -> None:
        super().__init__(listen)
        #: What AddBackend may use of this host.
        self.rpc_policy = RpcPolicy(command="virtwire serve tap",
                                    scripts=dict(allowed_scripts or {}))
        #: Backends to create when the server starts (from the command line).
        self.pending_configs: list[Netdev] = []
        self.registry.backend_view = backend_view

    def add_servicers(self, server: grpc.aio.Server) -> Sequence[str]:
        tap_pb2_grpc.add_TapServiceServicer_to_server(TapServicer(self), server)
        return [tap_pb2.DESCRIPTOR.services_by_name["TapService"].full_name]

    async def start(self) -> None:
        """Create the pending backends, then serve; nothing stays open on failure."""
        try:
            while self.pending_configs:
                await self.add_backend(self.pending_configs.pop(0))
            await super().start()
        except BaseException:
            await self._run_downscripts()
            await self.registry.close()
            raise

    async def stop(self, grace: float = SHUTDOWN_GRACE_S) -> None:
        """Stop serving; each TAP's downscript runs first, while its device is open."""
        if self.state not in (ServerState.STOPPING, ServerState.STOPPED):
            await self._run_downscripts()
        await super().stop(grace)

    async def _run_downscripts(self) -> None:
        await asyncio.gather(*(nc.run_downscript() for nc in self.registry.all()
                               if isinstance(nc, TapBackend)))

    async def add_backend(self, config: Netdev) -> NetClient:
        """Open a backend and, if ``config.peer`` is set, dial its peer.

        ConfigError for bad input, ConflictError for a taken name, BackendError
        when the host resource can't be opened. A TAP's script runs as a
        subprocess: the server answers other RPCs meanwhile (the backend is
        listed, its name taken, but its device is not read until the script is done).
        """
        check_netdev(config)
        name = config.name or self.registry.unique_name(config.type)
        if name in self.registry:
            raise ConflictError(f"a backend named {name!r} already exists")
        backend = net_init_netdev(name, config)
        try:
            self.registry.add(backend)
        except BaseException:
            backend.cleanup()
            raise
        if isinstance(backend, TapBackend):
            try:
                await backend.run_script()
            except BaseException:
                if name in self.registry and self.registry.get(name) is backend:
                    await self.registry.remove(name)
                raise
        if config.peer:
            self.registry.connect(backend, config.peer)
        logger.info("added %s backend %s: %s%s", config.type, name, backend.describe(),
                    f" peer={config.peer}" if config.peer else "")
        return backend

    async def remove_backend(self, name: str) -> None:
        """Close a backend (runs a TAP's downscript) and its link."""
        nc = self.registry.get(name)
        if nc.kind not in NETDEV_TYPES:
            raise NotFoundError(f"{name!r} is not a backend of this server")
        if isinstance(nc, TapBackend):
            await nc.run_downscript()  # a subprocess: other RPCs go on
        await self.registry.remove(name)
        logger.info("removed backend %s", name)

    def backends(self) -> list[NetClient]:
        return [nc for nc in self.registry.all() if nc.kind in NETDEV_TYPES]


class TapServicer(tap_pb2_grpc.TapServiceServicer):
    """Thin adapter: RPCs to TapServer methods."""

    def __init__(self, host: TapServer) -> None:
        self.host = host

    async def AddBackend(self, request: tap_pb2.AddBackendRequest,
                         context: grpc.aio.ServicerContext[Any, Any]
                         ) -> tap_pb2.AddBackendResponse:
        if request.config.name and not is_valid_name(request.config.name):
            self.host.registry.names_refused += 1  # refused below, with the reason
        config = rpc_netdev(request.config, self.host.rpc_policy)
        backend = await self.host.add_backend(config)
        return tap_pb2.AddBackendResponse(backend=self.host.registry.info(backend))

    async def RemoveBackend(self, request: tap_pb2.RemoveBackendRequest,
                            context: grpc.aio.ServicerContext[Any, Any]
                            ) -> tap_pb2.RemoveBackendResponse:
        await self.host.remove_backend(request.name)
        return tap_pb2.RemoveBackendResponse()

    async def ListBackends(self, request: tap_pb2.ListBackendsRequest,
                           context: grpc.aio.ServicerContext[Any, Any]
                           ) -> tap_pb2.ListBackendsResponse:
        reg = self.host.registry
        return tap_pb2.ListBackendsResponse(backends=[reg.info(nc) for nc in self.host.backends()])
