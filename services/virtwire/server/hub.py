"""The hub service: virtwire.v1.HubService over a net.hub.Hub."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import grpc

from virtwire.address import parse_peer
from virtwire.errors import ConflictError, NotFoundError
from virtwire.net.hub import Hub, HubPort
from virtwire.net.net import NetClient
from virtwire.server.base import ServiceHost, abort_for
from virtwire.v1 import hub_pb2, hub_pb2_grpc

logger = logging.getLogger(__name__)


class HubServer(ServiceHost):
    """One hub; its ports are the server's NetClients."""

    service_name = "hub"

    def __init__(self, listen: str = "127.0.0.1:0", hub_id: int = 0) -> None:
        super().__init__(listen)
        self.hub = Hub(hub_id)
        # A link that names no port gets a new one, so `serve tap --peer HUB`
        # plugs a backend in without first calling AddPort.
        self.registry.on_anonymous_link = lambda dialler: self.add_port()

    def add_servicers(self, server: grpc.aio.Server) -> Sequence[str]:
        hub_pb2_grpc.add_HubServiceServicer_to_server(HubServicer(self), server)
        return [hub_pb2.DESCRIPTOR.services_by_name["HubService"].full_name]

    def add_port(self, name: str = "", peer: str = "") -> HubPort:
        if name and name in self.registry:
            raise ConflictError(f"a port named {name!r} already exists")
        if peer:
            parse_peer(peer)  # a bad address fails before the port exists
        port = self.hub.add_port(name)
        self.registry.add(port)
        if peer:
            self.registry.connect(port, peer)
        return port

    async def remove_port(self, name: str) -> None:
        nc: NetClient = self.registry.get(name)
        if not isinstance(nc, HubPort):
            raise NotFoundError(f"{name!r} is not a port of this hub")
        await self.registry.remove(name)


class HubServicer(hub_pb2_grpc.HubServiceServicer):
    """Thin adapter: RPCs to HubServer methods."""

    def __init__(self, host: HubServer) -> None:
        self.host = host

    async def AddPort(self, request: hub_pb2.AddPortRequest,
                      context: grpc.aio.ServicerContext[Any, Any]) -> hub_pb2.AddPortResponse:
        try:
            port = self.host.add_port(request.name, request.peer)
        except Exception as exc:
            await abort_for(context, exc)
            raise
        return hub_pb2.AddPortResponse(port=self.host.registry.info(port))

    async def RemovePort(self, request: hub_pb2.RemovePortRequest,
                         context: grpc.aio.ServicerContext[Any, Any]
                         ) -> hub_pb2.RemovePortResponse:
        try:
            await self.host.remove_port(request.name)
        except NotFoundError as exc:
            await abort_for(context, exc)
            raise
        return hub_pb2.RemovePortResponse()

    async def ListPorts(self, request: hub_pb2.ListPortsRequest,
                        context: grpc.aio.ServicerContext[Any, Any]) -> hub_pb2.ListPortsResponse:
        reg = self.host.registry
        return hub_pb2.ListPortsResponse(
            hub_id=self.host.hub.id, ports=[reg.info(p) for p in self.host.hub.ports])
