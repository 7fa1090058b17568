"""The orchestrator service: virtwire.v1.OrchestratorService over an Orchestrator.

Node names (NODE or HUB:PORT) are resolved to the service address and
NetClient name, and the call is forwarded to that service's NetClientService
(or, for Ping, to the vm's GuestService): SetLink, Inject, Capture, and the
assertions WaitForFrame, ExpectNoFrame and CountFrames (with the caller's
deadline, so the service's answer, DEADLINE_EXCEEDED included, is passed on).
StartService, StopServices and ListServices serve another host's
orchestrator (``orchestrator.agent.Agent``).

Up with an empty topology runs the one this server was given at start (read
from a file on this host, trusted); topology text in the request is a
remote caller's, parsed with this host's ``RpcPolicy``: no script paths,
unix sockets, namespaces or directories unless the command line allows them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from virtwire import tls
from virtwire.allowlist import RpcPolicy
from virtwire.errors import ConfigError, OutOfRangeError, PermissionDeniedError, VirtwireError
from virtwire.orchestrator.agent import Agent
from virtwire.orchestrator.core import Orchestrator, state_root
from virtwire.orchestrator.forward import PortForwarder
from virtwire.orchestrator.health import check_health
from virtwire.orchestrator.render import TraceFlags
from virtwire.orchestrator.traces import TraceCollector, check_trace_request, summary
from virtwire.rpc.status import forwarded, translated
from virtwire.server.base import ServiceHost
from virtwire.server.filter import LanFilterServicer
from virtwire.server.switch import LanSwitchServicer
from virtwire.server.tracesetup import parse_otlp_endpoint
from virtwire.topology import Topology, TopologyError, parse_topology
from virtwire.v1 import (
    filter_pb2_grpc,
    guest_pb2,
    guest_pb2_grpc,
    netclient_pb2,
    netclient_pb2_grpc,
    orchestrator_pb2,
    orchestrator_pb2_grpc,
    switch_pb2,
    switch_pb2_grpc,
)

logger = logging.getLogger(__name__)

_EVENT_KINDS = {
    "starting": orchestrator_pb2.UP_EVENT_KIND_SERVICE_STARTING,
    "started": orchestrator_pb2.UP_EVENT_KIND_SERVICE_STARTED,
    "link": orchestrator_pb2.UP_EVENT_KIND_LINK_WIRED,
    "healthy": orchestrator_pb2.UP_EVENT_KIND_HEALTHY,
    "done": orchestrator_pb2.UP_EVENT_KIND_DONE,
    "error": orchestrator_pb2.UP_EVENT_KIND_ERROR,
}
_RPC_TIMEOUT_S = 10.0
#: Characters of an Up request's ``source`` kept (it prefixes every message).
_SOURCE_MAX = 128


class OrchestratorServer(ServiceHost):
    """An Orchestrator behind gRPC; ``stopped`` is set after Down.

    ``local_topology``: read on this host (``--topology FILE``, or ``virtwire up``
    in-process), what Up with an empty topology runs. ``allowed_scripts`` and
    ``allow_netns`` (``--allow-script``, ``--allow-netns``): what topologies sent
    by Up and StartService requests may use of this host.
    """

    service_name = "orchestrator"

    def __init__(self, listen: str = "127.0.0.1:0", state_dir: Path | None = None,
                 exit_on_down: bool = False, *, local_topology: Topology | None = None,
                 allowed_scripts: Mapping[str, str] | None = None,
                 allow_netns: bool = False) -> None:
        super().__init__(listen)
        self.local_topology = local_topology
        self.rpc_policy = RpcPolicy(command="virtwire serve orchestrator",
                                    scripts=dict(allowed_scripts or {}), allow_netns=allow_netns)
        #: `virtwire serve orchestrator`: SIGTERM this process after Down (its
        #: handler stops the server), so a detached orchestrator goes with its LAN.
        self.exit_on_down = exit_on_down
        self.orchestrator = Orchestrator(state_dir=state_dir)
        #: Services this host runs for other hosts' orchestrators.
        self.agent = Agent((state_dir or state_root()) / "agent", self.rpc_policy,
                           parse_otlp=parse_otlp_endpoint)
        self.lan_down = asyncio.Event()

    def add_servicers(self, server: grpc.aio.Server) -> Sequence[str]:
        orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server(
            OrchestratorServicer(self), server)
        # SwitchService on the LAN's switch nodes, forwarded as FilterService is.
        switch_pb2_grpc.add_SwitchServiceServicer_to_server(
            LanSwitchServicer(self.orchestrator), server)
        return [orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"].full_name,
                switch_pb2.DESCRIPTOR.services_by_name["SwitchService"].full_name]

    def filter_servicer(self) -> filter_pb2_grpc.FilterServiceServicer:
        """FilterService on the LAN's nodes, forwarded to their services."""
        return LanFilterServicer(self.orchestrator)

    async def start(self) -> None:
        await super().start()
        self.orchestrator.address = self.address

    async def close_backends(self) -> None:
        await self.orchestrator.down()
        await self.agent.close()

    async def topology_for(self, request: orchestrator_pb2.OrchestratorServiceUpRequest
                           ) -> Topology:
        """The topology an Up runs: this host's own, or the request's, parsed untrusted."""
        if not request.topology:
            if self.local_topology is None:
                raise ConfigError("Up sent no topology and this orchestrator was started "
                                  "without one (virtwire serve orchestrator --topology FILE)")
            return self.local_topology
        source = request.source[:_SOURCE_MAX] or "<topology>"
        try:
            # Parsing a big file takes a while: not on the event loop.
            return await asyncio.to_thread(parse_topology, request.topology, source,
                                           remote=self.rpc_policy)
        except TopologyError as exc:
            if exc.denied:  # only what this host does not allow, no mistake
                raise PermissionDeniedError(str(exc)) from exc
            raise


def relay_status(relay: PortForwarder) -> orchestrator_pb2.PublishRelay:
    """A ``publish:`` relay's addresses and counters, as NodeStatus.relays holds them."""
    return orchestrator_pb2.PublishRelay(
        listen=str(relay.listen), target=str(relay.target), accepted=relay.accepted,
        refused=relay.refused, target_failed=relay.target_failed, active=relay.active)


def assertion_deadline(context: grpc.aio.ServicerContext[Any, Any], wait_ms: int) -> float:
    """Seconds the forwarded assertion may take: what is left of the caller's
    deadline (kept: the service answers within it, as if called directly), at
    most the wait asked for with ``_RPC_TIMEOUT_S`` on top (a caller without a
    deadline). The wait itself is checked by the service (OUT_OF_RANGE), so a
    bad one is answered as the service answers it."""
    bound = wait_ms / 1000 + _RPC_TIMEOUT_S
    remaining = context.time_remaining()
    if remaining is None:
        return bound
    return max(0.0, min(float(remaining), bound))


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    """Thin adapter: RPCs to Orchestrator methods and the services' own RPCs."""

    def __init__(self, host: OrchestratorServer) -> None:
        self.host = host
        self.orch = host.orchestrator

    async def Up(self, request: orchestrator_pb2.OrchestratorServiceUpRequest,
                 context: grpc.aio.ServicerContext[Any, Any]
                 ) -> AsyncIterator[orchestrator_pb2.OrchestratorServiceUpResponse]:
        topo = await self.host.topology_for(request)
        if request.metrics_port:
            if request.metrics_port > 65535:
                raise OutOfRangeError(f"metrics_port {request.metrics_port} is not a port")
            topo = dataclasses.replace(topo, metrics_port=request.metrics_port)
        trace = TraceFlags(sample=request.trace_sample, otlp=request.trace_otlp,
                           file_dir="traces" if request.trace_file else "")
        events = self.orch.up(topo, request.backend or "process", request.subnet, trace)
        async for event in events:
            yield orchestrator_pb2.OrchestratorServiceUpResponse(
                kind=_EVENT_KINDS[event.kind], service=event.service,
                address=event.address, message=event.message)

    async def Down(self, request: orchestrator_pb2.OrchestratorServiceDownRequest,
                   context: grpc.aio.ServicerContext[Any, Any]
                   ) -> orchestrator_pb2.OrchestratorServiceDownResponse:
        stopped = await self.orch.down()
        self.host.lan_down.set()
        if self.host.exit_on_down:
            asyncio.get_running_loop().call_later(0.1, os.kill, os.getpid(), signal.SIGTERM)
        return orchestrator_pb2.OrchestratorServiceDownResponse(stopped=stopped)

    async def GetStatus(self, request: orchestrator_pb2.OrchestratorServiceGetStatusRequest,
                        context: grpc.aio.ServicerContext[Any, Any]
                        ) -> orchestrator_pb2.OrchestratorServiceGetStatusResponse:
        orch = self.orch
        resp = orchestrator_pb2.OrchestratorServiceGetStatusResponse(
            state=orch.state.value, name=orch.topology.name if orch.topology else "")
        if orch.topology is None:
            return resp
        listed: dict[str, list[netclient_pb2.NetClientInfo]] = {}
        for rec in orch.services.values():
            rec.healthy = await check_health(rec.address)
            if rec.kind in ("hub", "tap", "e1000") and rec.healthy:
                try:
                    async with tls.aio_channel(rec.address) as ch:
                        with translated():
                            got = await netclient_pb2_grpc.NetClientServiceStub(
                                ch).ListNetClients(netclient_pb2.ListNetClientsRequest(),
                                                   timeout=_RPC_TIMEOUT_S)
                    listed[rec.name] = list(got.netclients)
                except VirtwireError as exc:
                    logger.warning("status: %s: %s", rec.name, exc)
            if rec.kind == "tap" and rec.backend != "docker":
                orch.note_bound(rec.node, listed.get(rec.name, []))
        for node in orch.topology.nodes.values():
            ns = resp.nodes.add(name=node.name, kind=node.kind,
                                reachable_at=orch.reachable_at(node),
                                relays=[relay_status(f) for f in orch.relays(node)])
            for rec in orch.services.values():
                if rec.node != node.name:
                    continue
                ns.services.add(name=rec.name, kind=rec.kind, node=rec.node,
                                address=rec.address, pid=rec.pid, healthy=rec.healthy,
                                restarts=rec.restarts, host=rec.host, backend=rec.backend,
                                metrics=rec.metrics)
                for nc in listed.get(rec.name, []):
                    ns.netclients.add(name=nc.name, service=rec.name, info=nc)
        for step in orch.schedule.records if orch.schedule is not None else []:
            resp.schedule.add(index=step.step.index, at=step.step.at,
                              what=step.step.describe(), ran=step.ran, ran_at=step.ran_at,
                              error=step.error)
        return resp

    async def SetLink(self, request: orchestrator_pb2.OrchestratorServiceSetLinkRequest,
                      context: grpc.aio.ServicerContext[Any, Any]
                      ) -> orchestrator_pb2.OrchestratorServiceSetLinkResponse:
        address, name = self.orch.resolve(request.target)
        async with tls.aio_channel(address) as ch:
            with forwarded():
                got = await netclient_pb2_grpc.NetClientServiceStub(ch).SetLink(
                    netclient_pb2.SetLinkRequest(name=name, up=request.up),
                    timeout=_RPC_TIMEOUT_S)
        return orchestrator_pb2.OrchestratorServiceSetLinkResponse(netclient=got.netclient)

    async def Inject(self, request: orchestrator_pb2.OrchestratorServiceInjectRequest,
                     context: grpc.aio.ServicerContext[Any, Any]
                     ) -> orchestrator_pb2.OrchestratorServiceInjectResponse:
        address, name = self.orch.resolve(request.target)
        async with tls.aio_channel(address) as ch:
            with forwarded():
                got = await netclient_pb2_grpc.NetClientServiceStub(ch).Inject(
                    netclient_pb2.InjectRequest(name=name, frame=request.frame,
                                                repeat=request.repeat), timeout=_RPC_TIMEOUT_S)
        return orchestrator_pb2.OrchestratorServiceInjectResponse(
            accepted=got.accepted, dropped=got.dropped)

    async def Capture(self, request: orchestrator_pb2.OrchestratorServiceCaptureRequest,
                      context: grpc.aio.ServicerContext[Any, Any]
                      ) -> AsyncIterator[orchestrator_pb2.OrchestratorServiceCaptureResponse]:
        address, name = self.orch.resolve(request.target)
        async with tls.aio_channel(address) as ch:
            call = netclient_pb2_grpc.NetClientServiceStub(ch).Capture(
                netclient_pb2.CaptureRequest(name=name, filter=request.filter,
                                             count=request.count))
            with forwarded():
                async for item in call:
                    yield orchestrator_pb2.OrchestratorServiceCaptureResponse(frame=item)

    # -- assertions, forwarded to the service hosting the node ------------------------
    async def WaitForFrame(self, request: orchestrator_pb2.OrchestratorServiceWaitForFrameRequest,
                           context: grpc.aio.ServicerContext[Any, Any]
                           ) -> orchestrator_pb2.OrchestratorServiceWaitForFrameResponse:
        address, name = self.orch.resolve(request.target)
        async with tls.aio_channel(address) as ch:
            with forwarded():
                got = await netclient_pb2_grpc.NetClientServiceStub(ch).WaitForFrame(
                    netclient_pb2.WaitForFrameRequest(
                        name=name, match=request.match, direction=request.direction,
                        timeout_ms=request.timeout_ms),
                    timeout=assertion_deadline(context, request.timeout_ms))
        return orchestrator_pb2.OrchestratorServiceWaitForFrameResponse(frame=got.frame)

    async def ExpectNoFrame(self,
                            request: orchestrator_pb2.OrchestratorServiceExpectNoFrameRequest,
                            context: grpc.aio.ServicerContext[Any, Any]
                            ) -> orchestrator_pb2.OrchestratorServiceExpectNoFrameResponse:
        address, name = self.orch.resolve(request.target)
        async with tls.aio_channel(address) as ch:
            with forwarded():
                got = await netclient_pb2_grpc.NetClientServiceStub(ch).ExpectNoFrame(
                    netclient_pb2.ExpectNoFrameRequest(
                        name=name, match=request.match, direction=request.direction,
                        duration_ms=request.duration_ms),
                    timeout=assertion_deadline(context, request.duration_ms))
        resp = orchestrator_pb2.OrchestratorServiceExpectNoFrameResponse(seen=got.seen)
        if got.HasField("frame"):
            resp.frame.CopyFrom(got.frame)
        return resp

    async def CountFrames(self, request: orchestrator_pb2.OrchestratorServiceCountFramesRequest,
                          context: grpc.aio.ServicerContext[Any, Any]
                          ) -> orchestrator_pb2.OrchestratorServiceCountFramesResponse:
        address, name = self.orch.resolve(request.target)
        async with tls.aio_channel(address) as ch:
            with forwarded():
                got = await netclient_pb2_grpc.NetClientServiceStub(ch).CountFrames(
                    netclient_pb2.CountFramesRequest(
                        name=name, match=request.match, direction=request.direction,
                        duration_ms=request.duration_ms, at_least=request.at_least),
                    timeout=assertion_deadline(context, request.duration_ms))
        return orchestrator_pb2.OrchestratorServiceCountFramesResponse(
            count=got.count, lost=got.lost, elapsed_ms=got.elapsed_ms)

    async def Trace(self, request: orchestrator_pb2.OrchestratorServiceTraceRequest,
                    context: grpc.aio.ServicerContext[Any, Any]
                    ) -> AsyncIterator[orchestrator_pb2.OrchestratorServiceTraceResponse]:
        timeout_s = check_trace_request(request.count, request.timeout_ms)
        address, name = self.orch.resolve(request.target)
        collector = TraceCollector(self.orch.trace_sources(), count=request.count,
                                   timeout_s=timeout_s)
        with forwarded():  # ArmTrace's answer (a bad match) as the service gave it
            async for trace in collector.run(address, name, request.match):
                yield orchestrator_pb2.OrchestratorServiceTraceResponse(
                    frame=orchestrator_pb2.TracedFrame(
                        trace_id=trace.trace_id, spans=trace.spans, summary=summary(trace),
                        spans_dropped=trace.dropped, delivered=trace.delivered))

    async def Ping(self, request: orchestrator_pb2.OrchestratorServicePingRequest,
                   context: grpc.aio.ServicerContext[Any, Any]
                   ) -> orchestrator_pb2.OrchestratorServicePingResponse:
        guest = self.orch.guest_address(request.from_node)
        ip = self.orch.ip_of(request.to)
        count = request.count or 3
        timeout_ms = request.timeout_ms or 1000
        async with tls.aio_channel(guest) as ch:
            with forwarded():
                got = await guest_pb2_grpc.GuestServiceStub(ch).Ping(
                    guest_pb2.PingRequest(address=ip, count=count, interval_ms=100,
                                          timeout_ms=timeout_ms),
                    timeout=_RPC_TIMEOUT_S + count * (timeout_ms + 100) / 1000)
        return orchestrator_pb2.OrchestratorServicePingResponse(
            address=ip, transmitted=got.transmitted, received=got.received,
            replies=got.replies)

    # -- agent: services of another host's LAN ------------------------------------------
    async def StartService(self, request: orchestrator_pb2.OrchestratorServiceStartServiceRequest,
                           context: grpc.aio.ServicerContext[Any, Any]
                           ) -> orchestrator_pb2.OrchestratorServiceStartServiceResponse:
        rec = await self.host.agent.start_request(request)
        return orchestrator_pb2.OrchestratorServiceStartServiceResponse(
            address=rec.address, pid=rec.pid)

    async def StopServices(self, request: orchestrator_pb2.OrchestratorServiceStopServicesRequest,
                           context: grpc.aio.ServicerContext[Any, Any]
                           ) -> orchestrator_pb2.OrchestratorServiceStopServicesResponse:
        if request.timeout_ms > 60_000:
            raise OutOfRangeError(f"timeout_ms {request.timeout_ms} is over 60000")
        stopped = await self.host.agent.stop(request.lan, list(request.names),
                                             request.timeout_ms / 1000)
        return orchestrator_pb2.OrchestratorServiceStopServicesResponse(stopped=stopped)

    async def ListServices(self, request: orchestrator_pb2.OrchestratorServiceListServicesRequest,
                           context: grpc.aio.ServicerContext[Any, Any]
                           ) -> orchestrator_pb2.OrchestratorServiceListServicesResponse:
        resp = orchestrator_pb2.OrchestratorServiceListServicesResponse()
        for rec, exited in await self.host.agent.list(request.lan):
            resp.services.add(lan=rec.lan, name=rec.name, kind=rec.kind, address=rec.address,
                              pid=rec.pid, exited=exited)
        return resp

