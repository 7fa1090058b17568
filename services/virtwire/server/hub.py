"""The hub service: virtwire.v1.HubService over a net.hub.Hub.

Unlike QEMU's hub, the number of ports is capped (``max_ports``; refusals are
counted in ListPorts), and a port made for a link that named none (a dial to
``HUB_ADDR/``) is removed when that link's stream ends; ports named on the
command line or made by AddPort stay.

A port's peer may also be a backend opened in the hub's own process
(``serve hub --port-backend PORT=SPEC``), as QEMU's ``-netdev
hubport,netdev=ID`` plugs a netdev into a hub in one process: a frame then
crosses no link between the backend and the hub, so a QEMU VM on a stream
port reaches the other ports with one process hop (docs/hub.md). Such
backends come from the command line only, never from an RPC; their port
cannot be removed (RemovePort answers FAILED_PRECONDITION).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import grpc

from virtwire.address import parse_peer, shorten
from virtwire.allowlist import RpcPolicy
from virtwire.errors import ConfigError, ConflictError, LimitError, NotFoundError
from virtwire.net.hub import Hub, HubPort
from virtwire.net.net import NetClient
from virtwire.net.netdev import Netdev, check_netdev
from virtwire.server.backends import backend_view, open_backend, run_downscripts
from virtwire.server.base import SHUTDOWN_GRACE_S, ServerState, ServiceHost
from virtwire.v1 import hub_pb2, hub_pb2_grpc

logger = logging.getLogger(__name__)

#: Ports a hub takes unless ``serve hub --max-ports`` says otherwise.
DEFAULT_MAX_PORTS = 256


class HubServer(ServiceHost):
    """One hub; its ports are the server's NetClients."""

    service_name = "hub"

    def __init__(self, listen: str = "127.0.0.1:0", hub_id: int = 0,
                 max_ports: int = DEFAULT_MAX_PORTS, name: str = "") -> None:
        super().__init__(listen)
        if max_ports < 1:
            raise ConfigError(f"max_ports must be at least 1, not {max_ports}")
        #: Its unnamed ports are named after ``name`` (``serve hub --name``), "hub<ID>" if "".
        self.hub = Hub(hub_id, name)
        self.max_ports = max_ports
        #: AddPort calls and anonymous links refused because of max_ports.
        self.ports_refused = 0
        #: Ports made for anonymous links, removed when their stream ends.
        self._anonymous: set[HubPort] = set()
        # A link that names no port gets a new one, so `serve tap --peer HUB`
        # plugs a backend in without first calling AddPort.
        self.registry.on_anonymous_link = self._add_anonymous_port
        self.registry.on_anonymous_link_end = self._remove_anonymous_port
        self.registry.backend_view = backend_view
        #: Ports whose backend opens when the server starts (``add_port_backend``).
        self._pending_backends: list[tuple[HubPort, Netdev]] = []
        #: Port -> the backend opened in this process that is its peer.
        self.port_backends: dict[HubPort, NetClient] = {}

    def add_servicers(self, server: grpc.aio.Server) -> Sequence[str]:
        hub_pb2_grpc.add_HubServiceServicer_to_server(HubServicer(self), server)
        return [hub_pb2.DESCRIPTOR.services_by_name["HubService"].full_name]

    def add_port(self, name: str = "", peer: str = "") -> HubPort:
        if name:
            self.registry.check_name(name, "port")
            if name in self.registry:
                raise ConflictError(f"a port named {name!r} already exists")
        if peer:
            parse_peer(peer)  # a bad address fails before the port exists
        if len(self.hub.ports) >= self.max_ports:
            self.ports_refused += 1
            raise LimitError(f"hub {self.hub.name} has {len(self.hub.ports)} ports, the most "
                             "it takes (serve hub --max-ports)")
        port = self.hub.add_port(name)
        self.registry.add(port)
        if peer:
            self.registry.connect(port, peer)
        return port

    def add_port_backend(self, port_name: str, config: Netdev) -> HubPort:
        """Port ``port_name`` whose peer is ``config``'s backend, opened in this
        process when the server starts (``serve hub --port-backend``; never from
        an RPC: a spec may name host paths). ConfigError for a bad spec or one
        that names a peer of its own."""
        if config.peer:
            raise ConfigError(f"port {shorten(port_name)}: its backend's peer is the port; "
                              "the spec must not name one")
        check_netdev(config)
        if not port_name:
            raise ConfigError("a port backend needs its port's name")
        if config.name and (config.name in self.registry or config.name == port_name
                            or any(c.name == config.name for _, c in self._pending_backends)):
            raise ConflictError(f"a NetClient named {config.name!r} already exists")
        port = self.add_port(port_name)
        self._pending_backends.append((port, config))
        return port

    async def start(self) -> None:
        """Open the port backends, then serve; nothing stays open on failure."""
        try:
            while self._pending_backends:
                port, config = self._pending_backends.pop(0)
                backend = await open_backend(self.registry, config)
                port.peer = backend
                backend.peer = port
                self.port_backends[port] = backend
                logger.info("hub %s: port %s has %s backend %s: %s", self.hub.name, port.name,
                            config.type, backend.name, backend.describe())
            await super().start()
        except BaseException:
            await run_downscripts(self.port_backends.values())
            await self.registry.close()
            raise

    async def stop(self, grace: float = SHUTDOWN_GRACE_S) -> None:
        """Stop serving; each TAP's downscript runs first, while its device is open."""
        if self.state not in (ServerState.STOPPING, ServerState.STOPPED):
            await run_downscripts(self.port_backends.values())
        await super().stop(grace)

    def _add_anonymous_port(self, dialler: str) -> HubPort:
        port = self.add_port()
        self._anonymous.add(port)
        return port

    def _remove_anonymous_port(self, nc: NetClient) -> None:
        if isinstance(nc, HubPort) and nc in self._anonymous:
            self._anonymous.discard(nc)
            self.registry.forget(nc)
            logger.info("hub %s: removed port %s, its link ended", self.hub.name, nc.name)

    async def remove_port(self, name: str) -> None:
        nc: NetClient = self.registry.get(name)
        if not isinstance(nc, HubPort):
            raise NotFoundError(f"{shorten(name)} is not a port of this hub")
        backend = self.port_backends.get(nc)
        if backend is not None:
            raise ConflictError(f"port {nc.name}'s peer is backend {backend.name}, opened by "
                                "this hub's command line (--port-backend): it stays")
        self._anonymous.discard(nc)
        await self.registry.remove(name)


class HubServicer(hub_pb2_grpc.HubServiceServicer):
    """Thin adapter: RPCs to HubServer methods."""

    def __init__(self, host: HubServer) -> None:
        self.host = host

    async def AddPort(self, request: hub_pb2.AddPortRequest,
                      context: grpc.aio.ServicerContext[Any, Any]) -> hub_pb2.AddPortResponse:
        # A unix socket is a path on this host: not something a caller names.
        RpcPolicy(command="virtwire serve hub").no_unix("peer", request.peer)
        port = self.host.add_port(request.name, request.peer)
        return hub_pb2.AddPortResponse(port=self.host.registry.info(port))

    async def RemovePort(self, request: hub_pb2.RemovePortRequest,
                         context: grpc.aio.ServicerContext[Any, Any]
                         ) -> hub_pb2.RemovePortResponse:
        await self.host.remove_port(request.name)
        return hub_pb2.RemovePortResponse()

    async def ListPorts(self, request: hub_pb2.ListPortsRequest,
                        context: grpc.aio.ServicerContext[Any, Any]) -> hub_pb2.ListPortsResponse:
        reg = self.host.registry
        host = self.host
        return hub_pb2.ListPortsResponse(
            hub_id=host.hub.id, ports=[reg.info(p) for p in host.hub.ports],
            max_ports=host.max_ports, ports_refused=host.ports_refused)
