"""Health of a LAN's services: grpc.health.v1, which every virtwire server answers."""

from __future__ import annotations

import asyncio
import time

from grpc_health.v1 import health_pb2, health_pb2_grpc

from virtwire import tls
from virtwire.errors import BackendError, VirtwireError
from virtwire.rpc.status import translated

__all__ = ["HEALTH_TIMEOUT_S", "check_health", "wait_serving"]

#: How long ``up`` waits for every service to be SERVING.
HEALTH_TIMEOUT_S = 20.0
POLL_S = 0.05


async def check_health(address: str, timeout: float = 2.0) -> bool:
    """grpc.health.v1 Check("") == SERVING (False when the call fails)."""
    async with tls.aio_channel(address) as channel:
        try:
            with translated(address):
                resp = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except VirtwireError:
            return False
    return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)


async def wait_serving(name: str, address: str, deadline: float) -> None:
    """Return once service ``name`` at ``address`` is SERVING; BackendError when it
    is not by ``deadline`` (``time.monotonic()``)."""
    while not await check_health(address):
        if time.monotonic() > deadline:
            raise BackendError(f"{name} at {address} is not SERVING")
        await asyncio.sleep(POLL_S)
