"""One LAN on several hosts: each host's orchestrator runs its nodes' services.

On every host of a topology's ``hosts:`` the user runs ``virtwire serve
orchestrator --listen ADDRESS:PORT``. The orchestrator that runs ``up`` (on
any machine that reaches those addresses) starts a service placed on host H
through H's orchestrator, whose ``Agent`` runs it with a ProcessBackend
listening on H's address; links then dial across hosts over TCP. Both sides
are here: ``Agent`` (the StartService/StopServices/ListServices RPCs) and
``RemoteBackend`` (the Backend the controlling orchestrator uses for H).

StartService carries typed options, never argv: the agent checks them and
builds the command line itself (``start_options``). Nothing in a request
names a program or a path on the agent's host: a tap's script is a NAME its
own ``--allow-script NAME=PATH`` defines, a bridge's netns needs its
``--allow-netns``, and guest RAM is always a new file of its own.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from virtwire import tls
from virtwire.address import parse_sockaddr
from virtwire.allowlist import RpcPolicy
from virtwire.errors import BackendError, ConfigError, NotFoundError
from virtwire.orchestrator.backend import START_TIMEOUT_S, ProcessBackend
from virtwire.orchestrator.spec import ServiceSpec
from virtwire.orchestrator.start_options import from_start_request, to_start_options
from virtwire.topology import Host
from virtwire.v1 import orchestrator_pb2, orchestrator_pb2_grpc

logger = logging.getLogger(__name__)

#: LAN and service names: what topology files allow (and safe as file names).
_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
RPC_TIMEOUT_S = 10.0
#: How long one ListServices answer stands for a host's services.
LIST_CACHE_S = 0.2


def _check_name(what: str, name: str) -> str:
    if not _NAME_RE.match(name):
        raise ConfigError(f"bad {what} name {name!r}: lowercase letters, digits and '-', "
                          "at most 64")
    return name


@dataclass
class AgentRecord:
    lan: str
    name: str
    kind: str
    address: str
    pid: int


def agent_tls_args(name: str, host: str) -> list[str]:
    """Services an agent starts present the agent's own certificate (its host's
    identity, from its command line), or run plaintext as the agent does."""
    identity = tls.active()
    if identity is not None:
        return identity.args()
    return [] if tls.is_local(parse_sockaddr(f"{host}:0")) else ["--insecure"]


class Agent:
    """Services this host runs for other hosts' orchestrators, per LAN."""

    def __init__(self, workdir: Path, policy: RpcPolicy | None = None) -> None:
        self.workdir = workdir
        #: What a StartService may use of this host (its command line's --allow-*).
        self.policy = policy or RpcPolicy(command="virtwire serve orchestrator")
        self.backends: dict[str, ProcessBackend] = {}
        self.records: dict[tuple[str, str], AgentRecord] = {}

    async def start_request(self, request: orchestrator_pb2.OrchestratorServiceStartServiceRequest
                            ) -> AgentRecord:
        """StartService: check the request against this host's policy, then ``start``."""
        _check_name("LAN", request.lan)
        _check_name("service", request.name)
        parse_sockaddr(request.listen, allow_unix=False)
        spec = from_start_request(request, self.policy)
        return await self.start(request.lan, request.name, spec, request.listen)

    async def start(self, lan: str, name: str, spec: ServiceSpec, listen: str) -> AgentRecord:
        _check_name("LAN", lan)
        _check_name("service", name)
        kind = spec.kind
        host = parse_sockaddr(listen, allow_unix=False).host
        if (lan, name) in self.records:
            await self.stop(lan, [name], timeout=0)
        backend = self.backends.get(lan)
        if backend is None:
            # The state root (the workdir's parent) and agent/LAN below it: private.
            backend = self.backends[lan] = ProcessBackend(self.workdir / lan, host,
                                                          tls_args=agent_tls_args,
                                                          root=self.workdir.parent)
            await backend.open()
        address, pid = await backend.start(name, spec, listen)
        rec = self.records[(lan, name)] = AgentRecord(lan, name, kind, address, pid)
        logger.info("agent: LAN %s: %s %s serves at %s (pid %d)", lan, kind, name, address, pid)
        return rec

    async def stop(self, lan: str, names: list[str], timeout: float) -> int:
        backend = self.backends.get(lan)
        if backend is None:
            if names:
                raise NotFoundError(f"this host runs no service of LAN {lan!r}")
            return 0
        unknown = [n for n in names if (lan, n) not in self.records]
        if unknown:
            raise NotFoundError(f"LAN {lan!r} has no service {', '.join(unknown)} here")
        targets = names or [n for (lan_, n) in reversed(list(self.records)) if lan_ == lan]
        for name in targets:
            await backend.stop(name, timeout)
            del self.records[(lan, name)]
        if not any(lan_ == lan for lan_, _ in self.records):
            del self.backends[lan]
        logger.info("agent: LAN %s: stopped %s", lan, ", ".join(targets) or "nothing")
        return len(targets)

    async def list(self, lan: str = "") -> list[tuple[AgentRecord, str]]:
        """(record, why it is not running or "") for LAN ``lan`` (or all)."""
        out = []
        for (lan_, name), rec in self.records.items():
            if lan and lan_ != lan:
                continue
            out.append((rec, await self.backends[lan_].exited(name) or ""))
        return out

    async def close(self) -> None:
        for lan in list(self.backends):
            await self.stop(lan, [], timeout=5.0)


class RemoteBackend:
    """Services on topology host ``host``, through its ``virtwire serve orchestrator``."""

    kind = "remote"

    def __init__(self, host: Host, lan: str) -> None:
        self.host = host
        self.lan = lan
        self.names: list[str] = []
        self._listed: dict[str, str] = {}
        self._listed_at = -1e9
        self._channel: grpc.aio.Channel | None = None
        self._stub: orchestrator_pb2_grpc.OrchestratorServiceStub | None = None

    def listen_address(self, name: str) -> str:
        address = f"[{self.host.address}]" if ":" in self.host.address else self.host.address
        return f"{address}:0"

    def _where(self) -> str:
        return f"host {self.host.name!r} ({self.host.agent})"

    async def open(self) -> None:
        self._channel = tls.aio_channel(self.host.agent)
        self._stub = orchestrator_pb2_grpc.OrchestratorServiceStub(self._channel)
        try:
            await asyncio.wait_for(self._channel.channel_ready(), RPC_TIMEOUT_S)
            got = await self._stub.ListServices(
                orchestrator_pb2.OrchestratorServiceListServicesRequest(lan=self.lan),
                timeout=RPC_TIMEOUT_S)
        except (TimeoutError, grpc.aio.AioRpcError) as exc:
            await self.close()
            raise BackendError(
                f"{self._where()}: no virtwire orchestrator answers; run 'virtwire serve "
                f"orchestrator --listen {self.host.agent}' there ({exc or 'timeout'})") from None
        if got.services:
            await self.close()
            raise BackendError(f"{self._where()} already runs services of LAN {self.lan!r}: "
                               f"run 'virtwire down {self.lan}' first")

    async def start(self, name: str, spec: ServiceSpec, listen: str) -> tuple[str, int]:
        assert self._stub is not None
        options = to_start_options(spec)
        self.names.append(name)
        self._listed_at = -1e9
        try:
            got = await self._stub.StartService(
                orchestrator_pb2.OrchestratorServiceStartServiceRequest(
                    lan=self.lan, name=name, listen=listen, **options),
                timeout=START_TIMEOUT_S + RPC_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            raise BackendError(f"{name} on {self._where()}: {exc.details()}") from exc
        return got.address, got.pid

    async def exited(self, name: str) -> str | None:
        if self._stub is None or name not in self.names:
            return "not started"
        # One ListServices answers for every service of this host in a watch round.
        if time.monotonic() - self._listed_at > LIST_CACHE_S:
            try:
                got = await self._stub.ListServices(
                    orchestrator_pb2.OrchestratorServiceListServicesRequest(lan=self.lan),
                    timeout=RPC_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                # The host is unreachable: not a reason to restart what may still run.
                logger.warning("%s: cannot list services: %s", self._where(), exc.details())
                return None
            self._listed = {svc.name: svc.exited for svc in got.services}
            self._listed_at = time.monotonic()
        if name not in self._listed:
            return "gone from its host"
        return self._listed[name] or None

    async def stop(self, name: str, timeout: float = 5.0) -> None:
        if self._stub is None or name not in self.names:
            return
        self.names.remove(name)
        try:
            await self._stub.StopServices(orchestrator_pb2.OrchestratorServiceStopServicesRequest(
                lan=self.lan, names=[name], timeout_ms=round(timeout * 1000)),
                timeout=timeout + RPC_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                logger.warning("%s: stopping %s: %s", self._where(), name, exc.details())

    async def close(self) -> None:
        for name in reversed(list(self.names)):
            await self.stop(name)
        if self._channel is not None:
            await self._channel.close(None)
        self._channel = self._stub = None


async def stop_remote_lan(agent: str, lan: str) -> int:
    """Stop every service ``agent`` runs for ``lan`` (``down`` of a dead orchestrator)."""
    async with tls.aio_channel(agent) as channel:
        got = await orchestrator_pb2_grpc.OrchestratorServiceStub(channel).StopServices(
            orchestrator_pb2.OrchestratorServiceStopServicesRequest(lan=lan, timeout_ms=5000),
            timeout=RPC_TIMEOUT_S + 5)
    return int(got.stopped)
