"""Who may call what: the role in a client's certificate decides, per RPC.

With TLS on, every server requires a client certificate from the LAN's CA;
this interceptor then reads the role the certificate carries
(``virtwire.certs.role_of``) and checks it against ``PERMISSIONS``, as the
kubelet authorizes each verb after authenticating the client:

- ``controller`` may call everything;
- ``viewer`` may read: status, lists (of filters too), stats, capture, ping;
- ``service`` is what services present to each other: links, DMA, MMIO and
  interrupts, plus what a viewer may do.

A method missing from the table is for controllers only, so a new RPC is
closed until it is classified. Health checks and reflection are open to any
authenticated client (grpcurl ``list``/``describe`` and health probes need no
role). Without TLS nothing is checked: plaintext is loopback-only (or
``--insecure``), which is the same trust as QEMU's QMP socket.
Refusals are PermissionDeniedErrors (PERMISSION_DENIED) and are counted per
method (``denied``).
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc

from virtwire import certs
from virtwire.errors import PermissionDeniedError
from virtwire.rpc.status import WrappingInterceptor

logger = logging.getLogger(__name__)


class Access(enum.Enum):
    """What an RPC needs of its caller."""

    OPEN = "open"          # any authenticated client
    READ = "read"          # viewer, service, controller
    SERVICE = "service"    # service, controller
    CONTROL = "control"    # controller


_ROLE_ACCESS = {
    "controller": {Access.OPEN, Access.READ, Access.SERVICE, Access.CONTROL},
    "service": {Access.OPEN, Access.READ, Access.SERVICE},
    "viewer": {Access.OPEN, Access.READ},
    "": {Access.OPEN},
}

_V1 = "/virtwire.v1."
PERMISSIONS: dict[str, Access] = {
    # Open: health and reflection.
    "/grpc.health.v1.Health/Check": Access.OPEN,
    "/grpc.health.v1.Health/Watch": Access.OPEN,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": Access.OPEN,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": Access.OPEN,
    # Read.
    **{_V1 + m: Access.READ for m in (
        "NetClientService/ListNetClients", "NetClientService/GetNetClient",
        "NetClientService/Capture", "NetClientService/WaitForFrame",
        "NetClientService/ExpectNoFrame", "NetClientService/CountFrames",
        "FilterService/ListFilters",
        "OrchestratorService/GetStatus", "OrchestratorService/Capture",
        "OrchestratorService/WaitForFrame", "OrchestratorService/ExpectNoFrame",
        "OrchestratorService/CountFrames", "OrchestratorService/Trace",
        "TraceService/ReadSpans",
        "OrchestratorService/Ping", "OrchestratorService/ListServices",
        "HubService/ListPorts", "TapService/ListBackends",
        "SwitchService/ListMacTable", "SwitchService/ListSwitchPorts",
        "GuestService/GetStatus", "GuestService/Ping",
        "E1000Service/GetStats", "E1000Service/DescribeDevice",
        "GuestMemService/Describe", "GuestMemService/Stats")},
    # Between services: links, DMA, MMIO and interrupts.
    **{_V1 + m: Access.SERVICE for m in (
        "LinkService/Connect",
        "GuestMemService/Read", "GuestMemService/Write", "GuestMemService/Batch",
        "E1000Service/ReadRegister", "E1000Service/WriteRegister",
        "E1000Service/AccessRegisters", "E1000Service/Mmio", "E1000Service/SetPciCommand",
        "E1000Service/WatchIrq", "E1000Service/ResetDevice",
        "E1000Service/OfferMmioSocket")},
    # Everything else (Up, Down, StartService, StopServices, SetLink, Inject,
    # AddPort, RemovePort, AddBackend, RemoveBackend, Send, Receive, AddFilter,
    # UpdateFilter, RemoveFilter) is CONTROL.
}


def access_of(method: str) -> Access:
    return PERMISSIONS.get(method, Access.CONTROL)


def allowed(role: str, method: str) -> bool:
    return access_of(method) in _ROLE_ACCESS.get(role, _ROLE_ACCESS[""])


#: Roles of certificates already seen, by PEM (bounded: a few identities per LAN).
_ROLE_CACHE: dict[bytes, str] = {}
_ROLE_CACHE_MAX = 1024


def peer_role(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The role of the verified client certificate ("" without one)."""
    pems = context.auth_context().get("x509_pem_cert")
    if not pems:
        return ""
    pem = next(iter(pems))
    role = _ROLE_CACHE.get(pem)
    if role is None:
        role = certs.role_of(pem)
        if len(_ROLE_CACHE) >= _ROLE_CACHE_MAX:
            _ROLE_CACHE.clear()
        _ROLE_CACHE[pem] = role
    return role


class AuthorizationInterceptor(WrappingInterceptor):
    """Refuses an RPC with PermissionDeniedError unless the caller's role may make it.

    Installed inside ``rpc.status.ErrorInterceptor``, which answers the refusal.
    """

    def __init__(self, service: str) -> None:
        self.service = service
        #: Refusals per method.
        self.denied: Counter[str] = Counter()

    def wraps(self, method: str) -> bool:
        return access_of(method) is not Access.OPEN

    def around(self, context: grpc.aio.ServicerContext[Any, Any],
               method: str) -> contextlib.AbstractAsyncContextManager[None]:
        return self._authorized(context, method)

    @contextlib.asynccontextmanager
    async def _authorized(self, context: grpc.aio.ServicerContext[Any, Any],
                          method: str) -> AsyncIterator[None]:
        role = peer_role(context)
        if not allowed(role, method):
            self.denied[method] += 1
            who = f"role {role!r}" if role else "a certificate without a virtwire role"
            logger.warning("%s: denied %s to %s (%s)", self.service, method, context.peer(),
                           who)
            raise PermissionDeniedError(f"{method.rsplit('/', 1)[-1]} needs the "
                                        f"{_needs(access_of(method))} role; this client has {who}")
        yield


def _needs(access: Access) -> str:
    return {Access.READ: "viewer, service or controller", Access.SERVICE: "service or controller",
            Access.CONTROL: "controller"}.get(access, "any")
