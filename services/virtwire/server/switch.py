"""The switch service: HubService and virtwire.v1.SwitchService over a net.switch.Switch.

A switch's ports are managed as a hub's (the same HubServer: ``max_ports``,
anonymous ports for links that name none); SwitchService adds its MAC table
and VLANs. ``LanSwitchServicer`` is the orchestrator's SwitchService: the
request's ``node`` names a switch node of its LAN and the call goes to it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import grpc

from virtwire import tls
from virtwire.address import shorten
from virtwire.errors import ConfigError, NotFoundError
from virtwire.net.switch import (
    DEFAULT_AGING_S,
    DEFAULT_MAX_ENTRIES,
    PortVlans,
    Switch,
    SwitchError,
    SwitchPort,
    table_rows,
)
from virtwire.rpc.status import forwarded
from virtwire.server.hub import DEFAULT_MAX_PORTS, HubServer
from virtwire.v1 import switch_pb2, switch_pb2_grpc

if TYPE_CHECKING:
    from virtwire.orchestrator.core import Orchestrator

logger = logging.getLogger(__name__)

#: Seconds a forwarded SwitchService call may take.
_RPC_TIMEOUT_S = 10.0


class SwitchServer(HubServer):
    """One switch; its ports are the server's NetClients."""

    service_name = "switch"

    def __init__(self, listen: str = "127.0.0.1:0", hub_id: int = 0,
                 max_ports: int = DEFAULT_MAX_PORTS, name: str = "", *,
                 aging: float = DEFAULT_AGING_S, max_entries: int = DEFAULT_MAX_ENTRIES,
                 clock: Callable[[], float] | None = None) -> None:
        super().__init__(listen, hub_id, max_ports, name)
        kwargs = {"clock": clock} if clock is not None else {}
        self.switch = Switch(hub_id, self.hub.name, aging=aging, max_entries=max_entries,
                             **kwargs)
        self.hub = self.switch

    def add_servicers(self, server: grpc.aio.Server) -> Sequence[str]:
        names = list(super().add_servicers(server))
        switch_pb2_grpc.add_SwitchServiceServicer_to_server(SwitchServicer(self), server)
        return [*names, switch_pb2.DESCRIPTOR.services_by_name["SwitchService"].full_name]

    def add_switch_port(self, name: str = "", peer: str = "",
                        vlans: PortVlans | None = None) -> SwitchPort:
        port = self.add_port(name, peer)
        assert isinstance(port, SwitchPort)
        if vlans is not None:
            self.switch.set_port_vlans(port.name, vlans)
        return port

    def check_node(self, node: str) -> None:
        if node and node != self.switch.name:
            raise NotFoundError(f"this is switch {self.switch.name}, not {shorten(node)}")

    def port_message(self, port: SwitchPort) -> switch_pb2.SwitchPort:
        s = port.switch_stats
        return switch_pb2.SwitchPort(
            port=self.registry.info(port), vlans=vlans_message(port.vlans),
            mirror=self.switch.mirror is port,
            counters=switch_pb2.SwitchPortCounters(
                filtered_vlan=s.filtered_vlan, filtered_same_port=s.filtered_same_port,
                filtered_malformed=s.filtered_malformed, filtered_mirror=s.filtered_mirror,
                flooded=s.flooded, forwarded_unicast=s.forwarded_unicast,
                no_destination=s.no_destination, learned=s.learned, moved=s.moved,
                fdb_refused=s.fdb_refused, mirrored=s.mirrored))


def vlans_message(v: PortVlans) -> switch_pb2.SwitchPortVlans:
    if v.trunk is None:
        return switch_pb2.SwitchPortVlans(trunk=False, vlan=v.vlan)
    return switch_pb2.SwitchPortVlans(trunk=True, allowed=sorted(v.trunk),
                                      native=v.native or 0)


def vlans_from_message(msg: switch_pb2.SwitchPortVlans) -> PortVlans:
    """SwitchError (INVALID_ARGUMENT) for VLAN ids out of 1..4094."""
    if not msg.trunk:
        if msg.allowed or msg.native:
            raise SwitchError("an access port has one vlan: no allowed list, no native")
        return PortVlans.access(msg.vlan)
    if msg.vlan:
        raise SwitchError("a trunk has allowed VLANs (and a native), not vlan")
    return PortVlans.trunked(list(msg.allowed), msg.native or None)


class SwitchServicer(switch_pb2_grpc.SwitchServiceServicer):
    """Thin adapter: RPCs to Switch methods."""

    def __init__(self, host: SwitchServer) -> None:
        self.host = host

    async def ListMacTable(self, request: switch_pb2.ListMacTableRequest,
                           context: grpc.aio.ServicerContext[Any, Any]
                           ) -> switch_pb2.ListMacTableResponse:
        self.host.check_node(request.node)
        sw = self.host.switch
        if request.port:
            sw.require_port(request.port)
        sw.expire()
        # A quick copy on the loop; filtering, formatting and sorting up to
        # 65536 rows off it, so that no ListMacTable holds the event loop.
        rows = await asyncio.to_thread(table_rows, sw.snapshot(), request.port, request.vlan)
        return switch_pb2.ListMacTableResponse(
            entries=[switch_pb2.MacTableEntry(mac=r.mac, vlan=r.vlan, port=r.port,
                                              age_seconds=r.age) for r in rows],
            max_entries=sw.max_entries, entries_refused=sw.fdb_refused,
            aging_seconds=sw.aging, size=len(sw.fdb))

    async def FlushMacTable(self, request: switch_pb2.FlushMacTableRequest,
                            context: grpc.aio.ServicerContext[Any, Any]
                            ) -> switch_pb2.FlushMacTableResponse:
        self.host.check_node(request.node)
        sw = self.host.switch
        port = sw.require_port(request.port) if request.port else None
        flushed = sw.flush(port=port, vlan=request.vlan)
        logger.info("switch %s: flushed %d MAC table entries", sw.name, flushed)
        return switch_pb2.FlushMacTableResponse(flushed=flushed)

    async def SetPortVlans(self, request: switch_pb2.SetPortVlansRequest,
                           context: grpc.aio.ServicerContext[Any, Any]
                           ) -> switch_pb2.SetPortVlansResponse:
        self.host.check_node(request.node)
        sw = self.host.switch
        port = sw.require_port(request.port)
        if not request.HasField("vlans"):
            raise ConfigError("SetPortVlans: give vlans")
        sw.set_port_vlans(port.name, vlans_from_message(request.vlans))
        return switch_pb2.SetPortVlansResponse(port=self.host.port_message(port))

    async def ListSwitchPorts(self, request: switch_pb2.ListSwitchPortsRequest,
                              context: grpc.aio.ServicerContext[Any, Any]
                              ) -> switch_pb2.ListSwitchPortsResponse:
        self.host.check_node(request.node)
        sw = self.host.switch
        return switch_pb2.ListSwitchPortsResponse(
            ports=[self.host.port_message(p) for p in sw.ports],
            mirror=sw.mirror.name if sw.mirror is not None else "")


class LanSwitchServicer(switch_pb2_grpc.SwitchServiceServicer):
    """The orchestrator's SwitchService: ``node`` is a switch node of its LAN."""

    def __init__(self, orch: Orchestrator) -> None:
        self.orch = orch

    def _address(self, node: str) -> str:
        from virtwire.topology import SwitchNode

        topo = self.orch.topology
        if topo is None:
            raise ConfigError("no LAN is up")
        found = topo.nodes.get(node)
        if not isinstance(found, SwitchNode):
            known = ", ".join(n.name for n in topo.nodes.values()
                              if isinstance(n, SwitchNode)) or "none"
            raise NotFoundError(f"no switch node {shorten(node)} in LAN {topo.name!r} "
                                f"(switches: {known})")
        return self.orch.services[node].address

    async def _forward(self, node: str, method: str, request: Any) -> Any:
        """Call ``method`` of the switch service of ``node`` with ``request``,
        its answer and errors passed on (rpc.status.forwarded)."""
        async with tls.aio_channel(self._address(node)) as ch:
            with forwarded():
                call = getattr(switch_pb2_grpc.SwitchServiceStub(ch), method)
                return await call(request, timeout=_RPC_TIMEOUT_S)

    async def ListMacTable(self, request: switch_pb2.ListMacTableRequest,
                           context: grpc.aio.ServicerContext[Any, Any]
                           ) -> switch_pb2.ListMacTableResponse:
        return cast(switch_pb2.ListMacTableResponse,
                    await self._forward(request.node, "ListMacTable", request))

    async def FlushMacTable(self, request: switch_pb2.FlushMacTableRequest,
                            context: grpc.aio.ServicerContext[Any, Any]
                            ) -> switch_pb2.FlushMacTableResponse:
        return cast(switch_pb2.FlushMacTableResponse,
                    await self._forward(request.node, "FlushMacTable", request))

    async def SetPortVlans(self, request: switch_pb2.SetPortVlansRequest,
                           context: grpc.aio.ServicerContext[Any, Any]
                           ) -> switch_pb2.SetPortVlansResponse:
        return cast(switch_pb2.SetPortVlansResponse,
                    await self._forward(request.node, "SetPortVlans", request))

    async def ListSwitchPorts(self, request: switch_pb2.ListSwitchPortsRequest,
                              context: grpc.aio.ServicerContext[Any, Any]
                              ) -> switch_pb2.ListSwitchPortsResponse:
        return cast(switch_pb2.ListSwitchPortsResponse,
                    await self._forward(request.node, "ListSwitchPorts", request))
