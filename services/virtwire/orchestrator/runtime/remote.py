"""RemoteRuntime: the services of a LAN placed on another host, through its orchestrator.

That host runs ``virtwire serve orchestrator``; its ``agent.Agent`` starts the
services (StartService with typed options, ``start_options``), lists and stops
them. ``stop_remote_lan`` is ``down`` for a LAN whose orchestrator is gone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc

from virtwire import tls
from virtwire.errors import BackendError, NotFoundError, VirtwireError
from virtwire.orchestrator.runtime import START_TIMEOUT_S
from virtwire.orchestrator.spec import ServiceSpec
from virtwire.orchestrator.start_options import to_start_options
from virtwire.rpc.status import translated
from virtwire.topology import Host
from virtwire.v1 import orchestrator_pb2, orchestrator_pb2_grpc

logger = logging.getLogger(__name__)

RPC_TIMEOUT_S = 10.0
#: How long one ListServices answer stands for a host's services.
LIST_CACHE_S = 0.2
#: Service name -> the StartService fields it gets beyond its spec (metrics_listen,
#: trace_sample, trace_otlp, trace_file, log_format).
StartFields = Callable[[str], dict[str, Any]]


class RemoteRuntime:
    """Services on topology host ``host``, through its ``virtwire serve orchestrator``.

    ``extras`` gives each service's StartService fields beyond its spec (how it is
    observed: its /metrics address, tracing, log format), asked at every start so
    a restarted service gets them again."""

    kind = "remote"

    def __init__(self, host: Host, lan: str, extras: StartFields | None = None) -> None:
        self.host = host
        self.lan = lan
        self.extras = extras
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
            with translated():
                got = await self._stub.ListServices(
                    orchestrator_pb2.OrchestratorServiceListServicesRequest(lan=self.lan),
                    timeout=RPC_TIMEOUT_S)
        except (TimeoutError, VirtwireError) as exc:
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
        if self.extras is not None:
            options.update(self.extras(name))
        self.names.append(name)
        self._listed_at = -1e9
        try:
            with translated():
                got = await self._stub.StartService(
                    orchestrator_pb2.OrchestratorServiceStartServiceRequest(
                        lan=self.lan, name=name, listen=listen, **options),
                    timeout=START_TIMEOUT_S + RPC_TIMEOUT_S)
        except VirtwireError as exc:
            raise BackendError(f"{name} on {self._where()}: {exc}") from exc
        return got.address, got.pid

    async def exited(self, name: str) -> str | None:
        if self._stub is None or name not in self.names:
            return "not started"
        # One ListServices answers for every service of this host in a watch round.
        if time.monotonic() - self._listed_at > LIST_CACHE_S:
            try:
                with translated():
                    got = await self._stub.ListServices(
                        orchestrator_pb2.OrchestratorServiceListServicesRequest(lan=self.lan),
                        timeout=RPC_TIMEOUT_S)
            except VirtwireError as exc:
                # The host is unreachable: not a reason to restart what may still run.
                logger.warning("%s: cannot list services: %s", self._where(), exc)
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
            with translated():
                await self._stub.StopServices(
                    orchestrator_pb2.OrchestratorServiceStopServicesRequest(
                        lan=self.lan, names=[name], timeout_ms=round(timeout * 1000)),
                    timeout=timeout + RPC_TIMEOUT_S)
        except NotFoundError:
            pass  # it is gone already
        except VirtwireError as exc:
            logger.warning("%s: stopping %s: %s", self._where(), name, exc)

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
