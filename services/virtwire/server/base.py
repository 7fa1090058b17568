"""What every virtwire server provides.

- NetClientService (list, inject, capture, set_link, and the assertions
  WaitForFrame / ExpectNoFrame / CountFrames) over its registry;
- FilterService (NetFilters on its NetClients, server.filter);
- LinkService, so peers can dial its NetClients;
- TraceService (server.trace) and its tracing flags (server.tracesetup);
- gRPC server reflection and grpc.health.v1;
- graceful shutdown within a bounded grace.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from virtwire import tls
from virtwire.address import SockAddr, parse_sockaddr
from virtwire.errors import ConfigError, DeadlineError
from virtwire.logfmt import netclient_extra
from virtwire.net.assertion import FrameWatch, check_wait
from virtwire.net.capture import CapturedFrame, CaptureFilter, CaptureSubscription
from virtwire.net.eth import check_frame, parse_mac
from virtwire.net.filter import filter_send
from virtwire.net.match import parse_match
from virtwire.net.net import NetClient
from virtwire.net.queue import Defer, install_deferral, remove_deferral
from virtwire.rpc.options import GRPC_OPTIONS
from virtwire.rpc.status import ErrorInterceptor
from virtwire.server.authz import AuthorizationInterceptor
from virtwire.server.filter import FilterHost, FilterServicer
from virtwire.server.metrics import (
    MetricsEndpoint,
    MetricSet,
    RpcMetricsInterceptor,
    Snapshot,
    SnapshotCollector,
    parse_metrics_listen,
    registry_metrics,
    rpc_histogram,
    trace_metrics,
)
from virtwire.server.registry import NetClientRegistry
from virtwire.server.trace import TraceServicer
from virtwire.server.tracesetup import TraceSetup
from virtwire.v1 import (
    filter_pb2,
    filter_pb2_grpc,
    link_pb2,
    link_pb2_grpc,
    netclient_pb2,
    netclient_pb2_grpc,
    trace_pb2,
    trace_pb2_grpc,
)

logger = logging.getLogger(__name__)

MAX_INJECT_REPEAT = 100_000
#: Injected frames delivered between two yields to the event loop.
INJECT_SLICE = 256
SHUTDOWN_GRACE_S = 3.0


class ServerState(enum.Enum):
    """Run state of a ServiceHost."""

    IDLE = "idle"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class _Injector(NetClient):
    """Sends injected frames into a NetClient as if its peer had sent them."""

    kind = "inject"

    def __init__(self, target: NetClient) -> None:
        super().__init__(f"inject>{target.name}")
        self.peer = target

    def can_send_packet(self) -> bool:
        return self.peer is not None and self.peer.can_receive_packet()


def parse_capture_filter(msg: netclient_pb2.CaptureFilter) -> CaptureFilter:
    direction = msg.direction
    if direction not in netclient_pb2.Direction.values():
        raise ConfigError(f"unknown direction {direction}")
    rx = direction in (netclient_pb2.DIRECTION_UNSPECIFIED, netclient_pb2.DIRECTION_RX,
                       netclient_pb2.DIRECTION_BOTH)
    tx = direction in (netclient_pb2.DIRECTION_UNSPECIFIED, netclient_pb2.DIRECTION_TX,
                       netclient_pb2.DIRECTION_BOTH)
    if msg.ethertype > 0xFFFF:
        raise ConfigError(f"ethertype {msg.ethertype:#x} is not 16-bit")
    return CaptureFilter(
        rx=rx, tx=tx, ethertype=msg.ethertype,
        mac=parse_mac(msg.mac) if msg.mac else b"",
        src_mac=parse_mac(msg.src_mac) if msg.src_mac else b"",
        dst_mac=parse_mac(msg.dst_mac) if msg.dst_mac else b"")


class NetClientServicer(netclient_pb2_grpc.NetClientServiceServicer):
    """virtwire.v1.NetClientService over a NetClientRegistry."""

    def __init__(self, registry: NetClientRegistry) -> None:
        self.registry = registry

    async def ListNetClients(self, request: netclient_pb2.ListNetClientsRequest,
                             context: grpc.aio.ServicerContext[Any, Any]
                             ) -> netclient_pb2.ListNetClientsResponse:
        reg = self.registry
        return netclient_pb2.ListNetClientsResponse(
            netclients=[reg.info(nc) for nc in reg.all()], server=reg.server_counters())

    async def GetNetClient(self, request: netclient_pb2.GetNetClientRequest,
                           context: grpc.aio.ServicerContext[Any, Any]
                           ) -> netclient_pb2.GetNetClientResponse:
        nc = self.registry.get(request.name)
        return netclient_pb2.GetNetClientResponse(netclient=self.registry.info(nc))

    async def Inject(self, request: netclient_pb2.InjectRequest,
                     context: grpc.aio.ServicerContext[Any, Any]
                     ) -> netclient_pb2.InjectResponse:
        nc = self.registry.get(request.name)
        check_frame(request.frame)
        if request.repeat > MAX_INJECT_REPEAT:
            raise ConfigError(f"repeat {request.repeat} exceeds {MAX_INJECT_REPEAT}")
        accepted = dropped = 0
        left = request.repeat or 1
        # In slices, so a large repeat does not hold the event loop.
        while left:
            n = min(left, INJECT_SLICE)
            a, d = inject(nc, request.frame, n)
            accepted += a
            dropped += d
            left -= n
            if left:
                await asyncio.sleep(0)
        return netclient_pb2.InjectResponse(accepted=accepted, dropped=dropped)

    async def Capture(self, request: netclient_pb2.CaptureRequest,
                      context: grpc.aio.ServicerContext[Any, Any]
                      ) -> AsyncIterator[netclient_pb2.CaptureResponse]:
        nc = self.registry.get(request.name)
        flt = parse_capture_filter(request.filter)
        sub = CaptureSubscription(nc, flt, max_subscribers=self.registry.max_captures)
        sub.start()  # LimitError at the cap
        sent = 0
        try:
            while not request.count or sent < request.count:
                item = await sub.get()
                frame = item.frame
                if request.snaplen:
                    frame = frame[:request.snaplen]
                yield netclient_pb2.CaptureResponse(
                    frame=frame, orig_len=len(item.frame),
                    direction=(netclient_pb2.DIRECTION_RX if item.direction == "rx"
                               else netclient_pb2.DIRECTION_TX),
                    timestamp_ns=item.timestamp_ns, dropped=sub.dropped)
                sent += 1
        finally:
            sub.close()

    async def SetLink(self, request: netclient_pb2.SetLinkRequest,
                      context: grpc.aio.ServicerContext[Any, Any]
                      ) -> netclient_pb2.SetLinkResponse:
        nc = self.registry.get(request.name)
        nc.set_link(request.up)
        logger.info("set_link %s %s", nc.name, "up" if request.up else "down",
                    extra=netclient_extra(nc.name))
        return netclient_pb2.SetLinkResponse(netclient=self.registry.info(nc))


    # -- assertions (virtwire.net.assertion) -------------------------------------------
    def _watch(self, name: str, match: str, direction: int, wait_ms: int,
               what: str) -> tuple[FrameWatch, float]:
        """The watch a request asks for, checked in full before it starts."""
        nc = self.registry.get(name)
        rx, tx = _directions(direction)
        seconds = check_wait(wait_ms / 1000, what)
        return FrameWatch(nc, parse_match(match), rx=rx, tx=tx,
                          max_subscribers=self.registry.max_captures), seconds

    async def WaitForFrame(self, request: netclient_pb2.WaitForFrameRequest,
                           context: grpc.aio.ServicerContext[Any, Any]
                           ) -> netclient_pb2.WaitForFrameResponse:
        watch, timeout = self._watch(request.name, request.match, request.direction,
                                     request.timeout_ms, "timeout")
        with watch:  # LimitError at the cap
            got = await watch.wait_for_frame(timeout)
        if got is None:
            raise DeadlineError(f"no frame matching {watch.match} on {request.name} "
                                f"within {timeout:g} s")
        return netclient_pb2.WaitForFrameResponse(frame=_matched(got))

    async def ExpectNoFrame(self, request: netclient_pb2.ExpectNoFrameRequest,
                            context: grpc.aio.ServicerContext[Any, Any]
                            ) -> netclient_pb2.ExpectNoFrameResponse:
        watch, duration = self._watch(request.name, request.match, request.direction,
                                      request.duration_ms, "duration")
        with watch:
            got = await watch.expect_no_frame(duration)
        if got is None:
            return netclient_pb2.ExpectNoFrameResponse(seen=False)
        return netclient_pb2.ExpectNoFrameResponse(seen=True, frame=_matched(got))

    async def CountFrames(self, request: netclient_pb2.CountFramesRequest,
                          context: grpc.aio.ServicerContext[Any, Any]
                          ) -> netclient_pb2.CountFramesResponse:
        watch, duration = self._watch(request.name, request.match, request.direction,
                                      request.duration_ms, "duration")
        with watch:
            got = await watch.count_frames(duration, request.at_least)
        return netclient_pb2.CountFramesResponse(
            count=got.count, lost=got.lost, elapsed_ms=round(got.elapsed_s * 1000))


def _directions(direction: int) -> tuple[bool, bool]:
    """(rx, tx) of a Direction; UNSPECIFIED and BOTH are both."""
    if direction not in netclient_pb2.Direction.values():
        raise ConfigError(f"unknown direction {direction}")
    return (direction != netclient_pb2.DIRECTION_TX, direction != netclient_pb2.DIRECTION_RX)


def _matched(item: CapturedFrame) -> netclient_pb2.MatchedFrame:
    return netclient_pb2.MatchedFrame(
        frame=item.frame, timestamp_ns=item.timestamp_ns,
        direction=(netclient_pb2.DIRECTION_RX if item.direction == "rx"
                   else netclient_pb2.DIRECTION_TX))


def inject(nc: NetClient, frame: bytes, repeat: int = 1) -> tuple[int, int]:
    """Deliver ``frame`` to ``nc`` as if from its peer; (accepted, dropped).

    With a sampler armed on ``nc`` (ArmTrace, --trace-sample), the copies it
    picks are traced, each the root of a trace with an ``inject`` span."""
    injector = _Injector(nc)
    queue = nc.incoming_queue
    before = nc.dropped_total
    sampler = nc.sampler
    if sampler is not None and sampler.idle:
        sampler = None
    attrs: dict[str, str | int] = {"netclient": nc.name}
    for _ in range(repeat):
        if sampler is not None:
            sent = sampler.sample((frame,), "inject", attrs)[0]
        else:
            sent = frame
        # As a frame from the peer would, it walks nc's rx filters first
        # (docs/filters.md); one they take is theirs to pass on or drop.
        if nc.filters and filter_send(injector, nc, 0, sent):
            continue
        queue.send(injector, 0, sent, None)
    dropped = nc.dropped_total - before
    return repeat - dropped, dropped


class LinkServicer(link_pb2_grpc.LinkServiceServicer):
    """virtwire.v1.LinkService: accepts links to this server's NetClients."""

    def __init__(self, registry: NetClientRegistry) -> None:
        self.registry = registry

    async def Connect(self, request_iterator: AsyncIterator[link_pb2.ConnectRequest],
                      context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await self.registry.acceptor.serve(context)


class HostRegistry(NetClientRegistry):
    """A ServiceHost's registry: ``on_add`` sees each NetClient it takes."""

    def __init__(self) -> None:
        super().__init__()
        self.on_add: Callable[[NetClient], None] | None = None

    def add(self, nc: NetClient) -> NetClient:
        super().add(nc)
        if self.on_add is not None:
            self.on_add(nc)
        return nc


class ServiceHost:
    """A grpc.aio server with reflection, health and the common services.

    Subclasses add their own servicer in ``add_servicers`` and return the full
    service names they registered (for reflection and health).
    """

    #: Name used in logs, e.g. "hub" or "tap".
    service_name = "virtwire"

    def __init__(self, listen: str = "127.0.0.1:0") -> None:
        self.listen_addr: SockAddr = parse_sockaddr(listen)
        self.registry = HostRegistry()
        self.registry.on_add = self._netclient_added
        self.server: grpc.aio.Server | None = None
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.state = ServerState.IDLE
        self.port = 0
        #: Plaintext on a non-loopback address is allowed (``--insecure``).
        self.insecure = False
        #: With TLS on: refuses callers whose certificate's role does not allow the RPC.
        self.authz = AuthorizationInterceptor(self.service_name)
        #: Its NetFilters: ``--object``, ``--dump-dir``, ``--chardev``, FilterService.
        self.filters = FilterHost(self.registry)
        #: ``--metrics-listen``: where /metrics is served ("": nowhere), and the
        #: ``lan``/``service`` labels of its families (docs/metrics.md).
        self.metrics_listen = ""
        self.metrics_lan = ""
        self.metrics_service = ""
        self.metrics: MetricsEndpoint | None = None
        #: ``--trace-file/--trace-otlp/--trace-sample`` (None: this process's
        #: tracing is left as it is; TraceService answers either way).
        self.trace: TraceSetup | None = None

    def _netclient_added(self, nc: NetClient) -> None:
        if self.trace is not None and self.trace.started:
            self.trace.arm(nc)

    @property
    def metrics_address(self) -> str:
        """Where /metrics is served, HOST:PORT ("" when it is not)."""
        return self.metrics.address if self.metrics is not None else ""

    def metric_labels(self) -> dict[str, str]:
        return {"lan": self.metrics_lan, "service": self.metrics_service or self.service_name}

    def collect_metrics(self, ms: MetricSet) -> Snapshot:
        """Add this service's counters to ``ms``; runs on the event loop at each
        scrape, a step between yields, so it only reads counters. Subclasses add
        their own after these (``yield from super().collect_metrics(ms)``)."""
        yield from registry_metrics(self.registry, ms)
        trace_metrics(self.trace, ms)

    def add_servicers(self, server: grpc.aio.Server) -> Sequence[str]:
        return ()

    def filter_servicer(self) -> filter_pb2_grpc.FilterServiceServicer:
        """The FilterService this host serves (over its own NetClients)."""
        return FilterServicer(self.filters)

    @property
    def address(self) -> str:
        if self.listen_addr.is_unix:
            return str(self.listen_addr)
        return str(SockAddr(self.listen_addr.host, self.port))

    async def start(self) -> None:
        # The exporters first: one that cannot be made fails the start.
        if self.trace is not None:
            self.trace.start()
            for nc in self.registry.all():  # and those added later: _netclient_added
                self.trace.arm(nc)
        try:
            # The --object filters go on the NetClients the subclass made (a bad
            # one fails the start, before anything listens).
            await self.filters.start()
            try:
                await self._listen()
            except BaseException:
                await self.filters.stop()
                raise
        except BaseException:
            self._stop_trace()
            raise

    def _stop_trace(self) -> None:
        if self.trace is not None:
            self.trace.stop()

    async def _listen(self) -> None:
        # No SO_REUSEPORT: a second server on a taken port must fail, not share it.
        # Domain errors become statuses (the interceptor listed first wraps the
        # rest), and authorization runs before any handler.
        interceptors: list[grpc.aio.ServerInterceptor] = [  # type: ignore[type-arg]
            ErrorInterceptor()]
        if self.metrics_listen:
            # Before the gRPC port, so a used metrics port fails the start cleanly.
            endpoint = MetricsEndpoint(parse_metrics_listen(self.metrics_listen),
                                       insecure=self.insecure, what=self.service_name)
            base = self.metric_labels()
            endpoint.registry.register(SnapshotCollector(
                asyncio.get_running_loop(), self.collect_metrics, base))
            # Outermost, so it sees the status the error interceptor sets.
            interceptors.insert(0, RpcMetricsInterceptor(
                rpc_histogram(endpoint.registry, base), base))
            endpoint.start()
            self.metrics = endpoint
        try:
            await self._serve(interceptors)
        except BaseException:
            await self._stop_metrics()
            raise

    async def _stop_metrics(self) -> None:
        endpoint, self.metrics = self.metrics, None
        if endpoint is not None:
            await asyncio.to_thread(endpoint.stop)

    async def _serve(self, interceptors: list[grpc.aio.ServerInterceptor]  # type: ignore[type-arg]
                     ) -> None:
        if tls.active() is not None:
            interceptors.append(self.authz)
        server = grpc.aio.server(options=[*GRPC_OPTIONS, ("grpc.so_reuseport", 0)],
                                 interceptors=interceptors)
        netclient_pb2_grpc.add_NetClientServiceServicer_to_server(
            NetClientServicer(self.registry), server)
        link_pb2_grpc.add_LinkServiceServicer_to_server(LinkServicer(self.registry), server)
        filter_pb2_grpc.add_FilterServiceServicer_to_server(self.filter_servicer(), server)
        trace_pb2_grpc.add_TraceServiceServicer_to_server(TraceServicer(self.registry), server)
        names = [
            netclient_pb2.DESCRIPTOR.services_by_name["NetClientService"].full_name,
            link_pb2.DESCRIPTOR.services_by_name["LinkService"].full_name,
            filter_pb2.DESCRIPTOR.services_by_name["FilterService"].full_name,
            trace_pb2.DESCRIPTOR.services_by_name["TraceService"].full_name,
            *self.add_servicers(server),
        ]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME], server)
        try:
            port = tls.add_port(server, self.listen_addr, insecure=self.insecure,
                                what=self.service_name)
        except RuntimeError as exc:
            raise ConfigError(f"{self.service_name}: cannot listen on {self.listen_addr}: "
                              "address in use or not available") from exc
        if port == 0 and not self.listen_addr.is_unix:
            raise ConfigError(f"{self.service_name}: cannot listen on {self.listen_addr}: "
                              "address in use or not available")
        self.port = port
        await server.start()
        self.server = server
        # NetQueue flushes on this loop are sliced so that none holds it.
        self._flush_defer: Defer = asyncio.get_running_loop().call_soon
        install_deferral(self._flush_defer)
        for name in ["", *names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.state = ServerState.RUNNING
        logger.info("virtwire %s listening on %s (%s)", self.service_name, self.address,
                    "mutual TLS" if tls.active() is not None else "plaintext")

    async def stop(self, grace: float = SHUTDOWN_GRACE_S) -> None:
        if self.state in (ServerState.STOPPING, ServerState.STOPPED):
            return
        self.state = ServerState.STOPPING
        logger.info("virtwire %s on %s stopping", self.service_name, self.address)
        if self.server is not None:
            await self.health.enter_graceful_shutdown()
            await self.server.stop(grace)
        await self.filters.stop()
        await self.registry.close()
        await self.close_backends()
        if self.server is not None:
            remove_deferral(self._flush_defer)
        await self._stop_metrics()
        # Last, so the spans of the last frames are flushed too (off the loop:
        # an OTLP export may wait for its collector).
        await asyncio.to_thread(self._stop_trace)
        self.state = ServerState.STOPPED

    async def close_backends(self) -> None:
        """Release what the subclass opened beyond its NetClients."""

    async def wait(self) -> None:
        if self.server is not None:
            await self.server.wait_for_termination()

    async def __aenter__(self) -> ServiceHost:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop(grace=0.5)


__all__ = ["ServerState", "ServiceHost", "inject"]
