"""The tap service: virtwire.v1.TapService over host-side backends.

Backends are QEMU's ``-netdev tap|stream|dgram`` (net/tap.py, net/stream.py,
net/dgram.py, opened by ``server.backends``), each a NetClient whose peer is
usually reached over a link (``Netdev.peer``); their options, specs and init
table are ``net.netdev``.

Unlike QEMU's netdev_add, AddBackend names no program and no host path: its
``script=``/``downscript=`` are NAMEs this service's command line maps to
paths (``--allow-script NAME=PATH``), and unix socket addresses are refused
(``rpc.netdev.rpc_netdev``); the command line's ``--backend`` specs may use both.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from virtwire.address import is_valid_name
from virtwire.allowlist import RpcPolicy
from virtwire.net.net import NetClient
from virtwire.net.netdev import Netdev
from virtwire.rpc.netdev import rpc_netdev
from virtwire.server.backends import (
    backend_view,
    close_backend,
    is_backend,
    open_backend,
    run_downscripts,
)
from virtwire.server.base import SHUTDOWN_GRACE_S, ServerState, ServiceHost
from virtwire.v1 import tap_pb2, tap_pb2_grpc

logger = logging.getLogger(__name__)


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
        await run_downscripts(self.registry.all())

    async def add_backend(self, config: Netdev) -> NetClient:
        """Open a backend and, if ``config.peer`` is set, dial its peer.

        ConfigError for bad input, ConflictError for a taken name, BackendError
        when the host resource can't be opened. A TAP's script runs as a
        subprocess: the server answers other RPCs meanwhile (the backend is
        listed, its name taken, but its device is not read until the script is done).
        """
        backend = await open_backend(self.registry, config)
        if config.peer:
            self.registry.connect(backend, config.peer)
        logger.info("added %s backend %s: %s%s", config.type, backend.name, backend.describe(),
                    f" peer={config.peer}" if config.peer else "")
        return backend

    async def remove_backend(self, name: str) -> None:
        """Close a backend (runs a TAP's downscript) and its link."""
        await close_backend(self.registry, name)
        logger.info("removed backend %s", name)

    def backends(self) -> list[NetClient]:
        return [nc for nc in self.registry.all() if is_backend(nc)]


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
