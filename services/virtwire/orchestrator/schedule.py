"""A topology's ``schedule:`` run against its LAN: each step at its time.

``ScheduleRunner.run`` is one asyncio task the Orchestrator starts once
``up`` finds the LAN healthy; every step's ``at`` counts from that moment.
A step resolves its target (NODE or HUB:PORT) as ``virtwire link`` and
``virtwire filter`` do (``Orchestrator.resolve``) and calls the hosting
service's RPC: NetClientService.SetLink for ``link``, FilterService for
``netem`` (the filter ``virtwire netem set`` makes: added if it is not there,
else updated), ``netem_reset`` and ``filter``. Each step is logged as an
orchestrator event; a failed one is logged, counted (``failed``) and kept
with its error, and the schedule goes on. ``down`` cancels the task.

A service the orchestrator restarts comes back with its topology filters
(its ``--object``s), not with what earlier steps changed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from virtwire import tls
from virtwire.errors import ConfigError, NotFoundError
from virtwire.net.filter import FilterDirection
from virtwire.rpc.status import translated
from virtwire.topology import ScheduleStep
from virtwire.v1 import filter_pb2, filter_pb2_grpc, netclient_pb2, netclient_pb2_grpc

logger = logging.getLogger(__name__)

__all__ = ["ScheduleRunner", "StepRecord"]

#: How long one step's RPCs may take.
STEP_TIMEOUT_S = 10.0
_DIRECTIONS = {
    FilterDirection.ALL: filter_pb2.FILTER_DIRECTION_ALL,
    FilterDirection.RX: filter_pb2.FILTER_DIRECTION_RX,
    FilterDirection.TX: filter_pb2.FILTER_DIRECTION_TX,
}

#: NODE or HUB:PORT -> (the hosting service's address, the NetClient's name).
Resolve = Callable[[str], tuple[str, str]]


@dataclass
class StepRecord:
    """A step and how it went: ``ran_at`` in seconds after the LAN was healthy."""

    step: ScheduleStep
    ran: bool = False
    ran_at: float = 0.0
    error: str = ""


def _status(on: bool | None) -> filter_pb2.FilterStatus:
    if on is None:
        return filter_pb2.FILTER_STATUS_UNSPECIFIED
    return filter_pb2.FILTER_STATUS_ON if on else filter_pb2.FILTER_STATUS_OFF


class ScheduleRunner:
    """Runs ``steps`` (sorted by time) once, from ``run(start)``."""

    def __init__(self, steps: Sequence[ScheduleStep], resolve: Resolve,
                 event: Callable[[str], None]) -> None:
        self.records = [StepRecord(step) for step in steps]
        self.resolve = resolve
        self.event = event
        #: Steps that ran, and those that failed.
        self.ran = 0
        self.failed = 0
        #: The loop's time every ``at`` counts from (set by ``run``).
        self.start = 0.0

    async def run(self, start: float) -> None:
        """Each step at ``start`` (the loop's clock) + its ``at``."""
        loop = asyncio.get_running_loop()
        self.start = start
        for rec in self.records:
            step = rec.step
            delay = start + step.at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            rec.ran_at = loop.time() - start
            try:
                done = await self.do(step)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a failed step must not end the schedule
                rec.error = str(exc) or type(exc).__name__
                self.failed += 1
                self.event(f"schedule[{step.index}] at {step.at:g}s: {step.describe()} "
                           f"failed: {rec.error}")
            else:
                self.event(f"schedule[{step.index}] at {step.at:g}s (ran at "
                           f"{rec.ran_at:.3f}s): {done}")
            rec.ran = True
            self.ran += 1

    async def do(self, step: ScheduleStep) -> str:
        """Run one step now; what it did. A VirtwireError when it fails."""
        address, name = self.resolve(step.target)
        async with tls.aio_channel(address) as channel:
            with translated(step.target):
                if step.action == "link":
                    await netclient_pb2_grpc.NetClientServiceStub(channel).SetLink(
                        netclient_pb2.SetLinkRequest(name=name, up=step.up),
                        timeout=STEP_TIMEOUT_S)
                    return step.describe()
                return await self._filter(filter_pb2_grpc.FilterServiceStub(channel), name,
                                          step)

    @staticmethod
    async def _filter(stub: filter_pb2_grpc.FilterServiceStub, name: str,
                      step: ScheduleStep) -> str:
        props = dict(step.props)
        if step.op in ("set", "remove") and step.action != "filter":
            listed = await stub.ListFilters(filter_pb2.ListFiltersRequest(netclient=name),
                                            timeout=STEP_TIMEOUT_S)
            have = next((f for f in listed.filters if f.id == step.fid), None)
            if step.op == "remove":
                if have is None:
                    return f"{step.describe()}: no netem {step.fid!r} there, nothing to do"
                await stub.RemoveFilter(filter_pb2.RemoveFilterRequest(netclient=name,
                                                                       id=step.fid),
                                        timeout=STEP_TIMEOUT_S)
                return step.describe()
            if have is not None:
                if have.kind != step.kind:
                    raise ConfigError(f"{step.target} has a {have.kind} filter "
                                      f"{step.fid!r}: netem sets a netem")
                await stub.UpdateFilter(filter_pb2.UpdateFilterRequest(
                    netclient=name, id=step.fid, props=props), timeout=STEP_TIMEOUT_S)
                return f"{step.describe()} (changed)"
            await stub.AddFilter(filter_pb2.AddFilterRequest(
                netclient=name, kind=step.kind, id=step.fid,
                direction=_DIRECTIONS[step.direction], props=props), timeout=STEP_TIMEOUT_S)
            return f"{step.describe()} (added)"
        if step.op == "add":
            await stub.AddFilter(filter_pb2.AddFilterRequest(
                netclient=name, kind=step.kind, id=step.fid,
                direction=_DIRECTIONS[step.direction], status=_status(step.status),
                position=step.position, insert=step.insert, props=props),
                timeout=STEP_TIMEOUT_S)
        elif step.op == "update":
            await stub.UpdateFilter(filter_pb2.UpdateFilterRequest(
                netclient=name, id=step.fid, props=props, status=_status(step.status)),
                timeout=STEP_TIMEOUT_S)
        elif step.op == "remove":
            await stub.RemoveFilter(filter_pb2.RemoveFilterRequest(netclient=name, id=step.fid),
                                    timeout=STEP_TIMEOUT_S)
        else:
            raise NotFoundError(f"a filter step has no op {step.op!r}")
        return step.describe()
