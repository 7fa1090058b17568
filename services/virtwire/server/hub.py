"""The hub service: virtwire.v1.HubService over a net.hub.Hub.

Unlike QEMU's hub, the number of ports is capped (``max_ports``; refusals are
counted in ListPorts), and a port made for a link that named none (a dial to
``HUB_ADDR/``) is removed when that link's stream ends; ports named on the
command line or made by AddPort stay.
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
from virtwire.server.base import ServiceHost
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
