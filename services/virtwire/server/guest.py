"""The guest service: virtwire.v1.GuestService over an E1000Driver.

``GuestServer`` maps the guest's RAM (a guestmem service, shared memory when
on the same host), opens the e1000 service's MMIO and IRQ streams, brings the
NIC up as Linux's e1000 driver does, and then serves Send / Receive / Ping /
GetStatus. With ``ip`` it answers ARP and ICMP echo for that address (and
Ping uses it as the source); with ``bridge_tap`` the NIC also appears as a
Linux TAP interface (optionally moved into ``netns`` and addressed with
``bridge_ip`` there), so a real kernel stack runs over the emulated NIC.

The MMIO and IRQ streams move to the e1000 service's same-host socket
(``virtwire.guest.mmio_unix``) when it offers one (both on this kernel, and
``--link-transport auto`` on both); otherwise, or if the socket cannot be
reached, they stay on gRPC (``GrpcMmio``).

Run it with ``virtwire serve guest --e1000 ADDR --guestmem ADDR [--ip CIDR]
[--bridge-tap IFNAME [--netns NS] [--bridge-ip CIDR]]`` (``virtwire.cli.serve``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from ipaddress import IPv4Interface
from typing import Any

import grpc

from virtwire import tls
from virtwire.address import parse_sockaddr, shorten
from virtwire.errors import BackendError, ConfigError, VirtwireError
from virtwire.guest.bridge import NETNS_DIR, TapBridge, check_netns, run_ip
from virtwire.guest.driver import (
    DEFAULT_BUF_SIZE,
    DEFAULT_MEM_BASE,
    MAX_FRAME,
    DriverError,
    E1000Driver,
)
from virtwire.guest.mmio import GrpcMmio, MmioPort
from virtwire.guest.mmio_unix import UnixMmio
from virtwire.guest.responder import (
    MAX_PING_COUNT,
    MAX_PING_SIZE,
    MAX_PING_TIMEOUT_MS,
    Responder,
    parse_interface,
)
from virtwire.hw.e1000_regs import E1000_TDT
from virtwire.link import unix as fastpath
from virtwire.mem.client import GuestMemClient
from virtwire.net.eth import format_mac
from virtwire.net.tap import check_ifname
from virtwire.rpc.options import GRPC_OPTIONS
from virtwire.rpc.status import translated
from virtwire.server.base import ServiceHost
from virtwire.server.link import boot_id
from virtwire.server.metrics import MetricSet, Snapshot, mem_metrics
from virtwire.v1 import e1000_pb2, e1000_pb2_grpc, guest_pb2, guest_pb2_grpc

logger = logging.getLogger(__name__)

#: The service's ring sizes: Linux's default is 256; 1024 absorbs the e1000 service's
#: bursts (whole link batches) and keeps more of a Send in flight.
SERVICE_RING = 1024
#: Frames one Send may carry.
MAX_SEND_FRAMES = 65536
MIN_SEND_FRAME = 14
#: Frames a Receive subscriber may fall behind by before frames are dropped for it.
RECEIVE_QUEUE_LEN = 8192
DEFAULT_PING_COUNT = 3
DEFAULT_PING_INTERVAL_MS = 200
DEFAULT_PING_TIMEOUT_MS = 1000
DEFAULT_PING_SIZE = 56


class _Subscriber:
    """One Receive stream: a bounded queue of (frame, timestamp_ns)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, int]] = asyncio.Queue(RECEIVE_QUEUE_LEN)
        self.dropped = 0


class GuestServer(ServiceHost):
    """One guest: the driver of one e1000 service, plus responder and bridge."""

    service_name = "guest"

    def __init__(self, listen: str = "127.0.0.1:0", *, e1000: str, guestmem: str,
                 ip: str = "", bridge_tap: str = "", netns: str = "", bridge_ip: str = "",
                 rx_ring: int = SERVICE_RING, tx_ring: int = SERVICE_RING,
                 mem_base: int = DEFAULT_MEM_BASE, force_rpc: bool = False,
                 connect_timeout: float = 10.0, up_timeout: float = 30.0,
                 netns_create: bool = False) -> None:
        super().__init__(listen)
        self.e1000_target = parse_sockaddr(e1000, allow_port_zero=False).grpc_target
        parse_sockaddr(guestmem, allow_port_zero=False)
        self.e1000_address = e1000
        self.guestmem_address = guestmem
        self.iface: IPv4Interface | None = parse_interface(ip, "--ip") if ip else None
        self.bridge_iface: IPv4Interface | None = (
            parse_interface(bridge_ip, "--bridge-ip") if bridge_ip else None)
        if (netns or bridge_ip) and not bridge_tap:
            raise ConfigError("--netns and --bridge-ip need --bridge-tap")
        if netns_create and not netns:
            raise ConfigError("--netns-create needs --netns")
        if bridge_tap:
            check_ifname(bridge_tap)
        if netns:
            check_netns(netns, must_exist=not netns_create)
        if self.iface is not None and self.bridge_iface is not None and \
                self.iface.ip == self.bridge_iface.ip:
            raise ConfigError(f"--ip and --bridge-ip are both {self.iface.ip}: the responder "
                              "and the TAP's kernel stack would both answer it")
        # Checked here so that a bad ring size is a usage error, not a start failure.
        E1000Driver.check_config(rx_ring=rx_ring, tx_ring=tx_ring, buf_size=DEFAULT_BUF_SIZE,
                                 mem_base=mem_base)
        self.bridge_tap = bridge_tap
        self.netns = netns
        self.netns_create = netns_create
        #: The namespace this service made (--netns-create), deleted when it stops.
        self.created_netns = ""
        self.rx_ring = rx_ring
        self.tx_ring = tx_ring
        self.mem_base = mem_base
        self.force_rpc = force_rpc
        self.connect_timeout = connect_timeout
        self.up_timeout = up_timeout
        self.mem: GuestMemClient | None = None
        self.mmio: MmioPort | None = None
        #: "unix" (the e1000 service's same-host socket) or "grpc".
        self.mmio_path = ""
        #: Why the MMIO stayed on gRPC ("" if it did not).
        self.mmio_reason = ""
        self.driver: E1000Driver | None = None
        self.responder: Responder | None = None
        self.bridge: TapBridge | None = None
        self.subscribers: list[_Subscriber] = []
        self.subscriber_dropped = 0

    def add_servicers(self, server: grpc.aio.Server) -> Sequence[str]:
        guest_pb2_grpc.add_GuestServiceServicer_to_server(GuestServicer(self), server)
        return [guest_pb2.DESCRIPTOR.services_by_name["GuestService"].full_name]

    async def start(self) -> None:
        try:
            self.mem = await GuestMemClient.connect(self.guestmem_address,
                                                    prefer_shm=not self.force_rpc,
                                                    timeout=self.connect_timeout)
            if self.mem.path != "shm":
                logger.warning("guest memory over RPC (%s): the driver's ring accesses "
                               "block on round trips; run next to the guestmem service for "
                               "the shared-memory path", self.mem.reason)
            self.mmio = await self._connect_mmio()
            driver = E1000Driver(self.mmio, self.mem, mem_base=self.mem_base,
                                 rx_ring=self.rx_ring, tx_ring=self.tx_ring,
                                 multicast_promiscuous=bool(self.bridge_tap))
            self.driver = driver
            await driver.up(self.up_timeout)
            driver.rx_handlers.append(self._publish)
            if self.iface is not None:
                self.responder = Responder(driver.mac, self.iface, driver.try_send)
                driver.rx_handlers.append(self.responder.handle)
            if self.bridge_tap:
                if self.netns_create and not (NETNS_DIR / self.netns).exists():
                    await run_ip("netns", "add", self.netns)
                    self.created_netns = self.netns
                    logger.info("guest: created network namespace %s", self.netns)
                self.bridge = TapBridge(driver, self.bridge_tap, netns=self.netns,
                                        cidr=self.bridge_iface)
                await self.bridge.open()
            await super().start()
        except BaseException:
            await self.close_backends()
            raise
        logger.info("guest: e1000 %s up (mac %s, link %s), guest memory %s over %s%s%s",
                    self.e1000_address, format_mac(driver.mac),
                    "up" if driver.link_up else "down", self.guestmem_address, self.mem.path,
                    f", responder {self.iface}" if self.iface else "",
                    f", bridged to {self.bridge.ifname}" if self.bridge else "")

    async def _connect_mmio(self) -> MmioPort:
        """The e1000 service's same-host socket if it offers one, else its gRPC streams."""
        if self.registry.link_transport == "auto":
            port, self.mmio_reason = await open_mmio_socket(
                self.e1000_target, self.e1000_address, self.connect_timeout)
            if port is not None:
                self.mmio_path = "unix"
                return port
            logger.info("guest: MMIO stays on gRPC (%s)", shorten(self.mmio_reason, 200))
        else:
            self.mmio_reason = f"--link-transport {self.registry.link_transport}"
        grpc_port = GrpcMmio(self.e1000_target)
        await grpc_port.connect(self.connect_timeout)
        self.mmio_path = "grpc"
        return grpc_port

    async def close_backends(self) -> None:
        if self.bridge is not None:
            await self.bridge.close()
            self.bridge = None
        if self.created_netns:
            try:
                await run_ip("netns", "del", self.created_netns)
            except BackendError as exc:
                logger.warning("guest: %s", exc)
            self.created_netns = ""
        if self.driver is not None:
            await self.driver.down()
        if self.mmio is not None:
            await self.mmio.close()
            self.mmio = None
        if self.mem is not None:
            await self.mem.close()
            self.mem = None

    # -- receive subscribers -------------------------------------------------------------
    def _publish(self, frames: list[bytes]) -> None:
        if not self.subscribers:
            return
        now = time.time_ns()
        for sub in self.subscribers:
            queue = sub.queue
            for frame in frames:
                if queue.full():
                    sub.dropped += 1
                    self.subscriber_dropped += 1
                else:
                    queue.put_nowait((frame, now))

    def ready_driver(self, need_link: bool = True) -> E1000Driver:
        """The driver if the NIC is up (and its link, if asked); BackendError if not."""
        driver = self.driver
        if driver is None or driver.state != "up":
            why = f": {driver.error}" if driver is not None and driver.error else ""
            raise DriverError(f"the NIC is not up{why}")
        if need_link and not driver.link_up:
            raise DriverError("the NIC's link is down")
        return driver

    def collect_metrics(self, ms: MetricSet) -> Snapshot:
        yield from super().collect_metrics(ms)
        driver = self.driver
        if driver is not None:
            # DriverCounters: plain ints the driver keeps (no reclaim here: read only).
            for what, value in driver.counters.as_dict().items():
                direction, _, rest = what.partition("_")
                if direction in ("rx", "tx") and rest in ("frames", "bytes"):
                    ms.counter(f"virtwire_guest_{rest}",
                               f"{rest.capitalize()} the guest's driver sent (tx) or "
                               "received (rx)", value, direction=direction)
                else:
                    ms.counter(f"virtwire_guest_driver_{what}",
                               f"The guest driver's {what.replace('_', ' ')} counter", value)
            ms.gauge("virtwire_guest_link_up", "1 while the guest's driver sees link up",
                     1 if driver.link_up else 0)
        ms.counter("virtwire_guest_subscriber_dropped_frames",
                   "Frames Receive subscribers lost for not keeping up",
                   self.subscriber_dropped)
        if self.mem is not None:
            mem_metrics(self.mem.counters, ms, netclient="")

    def status(self) -> guest_pb2.GetStatusResponse:
        driver = self.driver
        if driver is not None:
            driver.reclaim_tx()
        c = driver.counters if driver is not None else None
        dropped = self.subscriber_dropped
        if c is not None:
            dropped += c.tx_dropped + c.rx_dropped
        if self.bridge is not None:
            dropped += self.bridge.counters.rx_dropped + self.bridge.counters.tx_dropped
        return guest_pb2.GetStatusResponse(
            mac=format_mac(driver.mac) if driver is not None and driver.mac else "",
            ip=str(self.iface) if self.iface else "",
            link_up=bool(driver and driver.link_up),
            tx_frames=c.tx_frames if c else 0,
            rx_frames=c.rx_frames if c else 0,
            dropped=dropped,
            interrupts=c.interrupts if c else 0,
            responder_replies=self.responder.replies if self.responder else 0,
            bridge_tap=self.bridge.ifname if self.bridge else "",
            e1000=self.e1000_address)


async def open_mmio_socket(target: str, address: str, timeout: float
                           ) -> tuple[UnixMmio | None, str]:
    """The e1000 service's same-host MMIO socket, connected; (None, why) when it
    offers none or its socket cannot be reached or refuses us (the caller then
    uses gRPC). BackendError when the service itself is unreachable."""
    async with tls.aio_channel(target, options=GRPC_OPTIONS) as channel:
        try:
            await asyncio.wait_for(channel.channel_ready(), timeout)
        except TimeoutError:
            raise BackendError(f"e1000 service {address} unreachable") from None
        try:
            with translated(f"e1000 service {address}"):
                offer = await e1000_pb2_grpc.E1000ServiceStub(channel).OfferMmioSocket(
                    e1000_pb2.OfferMmioSocketRequest(boot_id=boot_id()), timeout=timeout)
        except VirtwireError as exc:  # e.g. a service without OfferMmioSocket
            return None, str(exc)
    if not offer.socket:
        return None, offer.reason or "not offered"
    try:
        sock = await fastpath.dial_socket(offer.socket, offer.token)
    except VirtwireError as exc:
        return None, str(exc)
    try:
        _, port = await asyncio.get_running_loop().create_unix_connection(
            lambda: UnixMmio(address, doorbells=(E1000_TDT,)), sock=sock)
    except BaseException:
        sock.close()
        raise
    return port, ""


def check_send_frames(frames: Sequence[bytes]) -> None:
    """ConfigError unless 1..MAX_SEND_FRAMES frames, each 14..16384 bytes."""
    if len(frames) > MAX_SEND_FRAMES:
        raise ConfigError(f"{len(frames)} frames in one Send (at most {MAX_SEND_FRAMES})")
    for i, frame in enumerate(frames):
        if not MIN_SEND_FRAME <= len(frame) <= MAX_FRAME:
            raise ConfigError(f"frame {i} has {len(frame)} bytes: an Ethernet frame without "
                              f"FCS has {MIN_SEND_FRAME} to {MAX_FRAME}")


def ping_parameters(request: guest_pb2.PingRequest) -> tuple[int, float, float, int]:
    """(count, interval s, timeout s, size) with defaults; ConfigError when out of range."""
    count = request.count or DEFAULT_PING_COUNT
    if count > MAX_PING_COUNT:
        raise ConfigError(f"count {count}: at most {MAX_PING_COUNT}")
    interval_ms = request.interval_ms or DEFAULT_PING_INTERVAL_MS
    if interval_ms > 60000:
        raise ConfigError(f"interval_ms {interval_ms}: at most 60000")
    timeout_ms = request.timeout_ms or DEFAULT_PING_TIMEOUT_MS
    if timeout_ms > MAX_PING_TIMEOUT_MS:
        raise ConfigError(f"timeout_ms {timeout_ms}: at most {MAX_PING_TIMEOUT_MS}")
    size = request.size or DEFAULT_PING_SIZE
    if size > MAX_PING_SIZE:
        raise ConfigError(f"size {size}: at most {MAX_PING_SIZE} bytes")
    return count, interval_ms / 1000, timeout_ms / 1000, size


class GuestServicer(guest_pb2_grpc.GuestServiceServicer):
    """Thin adapter: RPCs to GuestServer and its driver."""

    def __init__(self, host: GuestServer) -> None:
        self.host = host

    async def Send(self, request: guest_pb2.SendRequest,
                   context: grpc.aio.ServicerContext[Any, Any]) -> guest_pb2.SendResponse:
        frames = list(request.frames)
        check_send_frames(frames)
        driver = self.host.ready_driver()
        queued, dropped = await driver.send(frames)
        return guest_pb2.SendResponse(queued=queued, dropped=dropped)

    async def Receive(self, request: guest_pb2.ReceiveRequest,
                      context: grpc.aio.ServicerContext[Any, Any]
                      ) -> AsyncIterator[guest_pb2.ReceiveResponse]:
        self.host.ready_driver(need_link=False)
        sub = _Subscriber()
        self.host.subscribers.append(sub)
        try:
            sent = 0
            while not request.count or sent < request.count:
                frame, ts = await sub.queue.get()
                yield guest_pb2.ReceiveResponse(frame=frame, timestamp_ns=ts)
                sent += 1
        finally:
            self.host.subscribers.remove(sub)

    async def Ping(self, request: guest_pb2.PingRequest,
                   context: grpc.aio.ServicerContext[Any, Any]) -> guest_pb2.PingResponse:
        host = self.host
        count, interval, timeout, size = ping_parameters(request)
        if host.responder is None:
            raise DriverError("this guest has no IPv4 address: start it with --ip CIDR")
        host.responder.check_target(request.address)
        host.ready_driver()
        result = await host.responder.ping(request.address, count=count, interval=interval,
                                           timeout=timeout, size=size)
        return guest_pb2.PingResponse(
            replies=[guest_pb2.PingReply(seq=seq, rtt_us=rtt) if rtt is not None
                     else guest_pb2.PingReply(seq=seq) for seq, rtt in result.replies],
            transmitted=result.transmitted, received=result.received)

    async def GetStatus(self, request: guest_pb2.GetStatusRequest,
                        context: grpc.aio.ServicerContext[Any, Any]
                        ) -> guest_pb2.GetStatusResponse:
        return self.host.status()
