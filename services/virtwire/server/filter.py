"""FilterService: runtime NetFilters on a server's NetClients (issue 11).

``FilterHost`` is the plain half every ServiceHost holds: the
``FilterContext`` its filters get (the running loop, ``--dump-dir``, the
``--chardev`` chardevs, its NetClients by name), the ``--object`` filters of
its command line, applied at every start, and the add / update / remove /
list that the RPCs call. A request is checked in full, then the filter is
built, then added: a bad one changes nothing. ``FilterServicer`` adapts it;
``LanFilterServicer`` is the orchestrator's, which forwards each call to the
service hosting a LAN node (NODE or HUB:PORT), as its SetLink and Inject do.

Nothing in a request names a host path or a program: a dump's file is a name
inside ``--dump-dir`` and a chardev an id of ``--chardev``, both checked by
the filter types against the context (docs/filters.md).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from virtwire import tls
from virtwire.address import shorten
from virtwire.errors import ConfigError, LimitError, NotFoundError, VirtwireError
from virtwire.net.filter import (
    MAX_FILTERS,
    FilterContext,
    FilterDirection,
    NetFilter,
    check_filter_id,
)
from virtwire.net.filter_types import MAX_SPEC_CHARS, MAX_SPEC_PROPS, FilterSpec, new_filter
from virtwire.net.net import NetClient
from virtwire.rpc.status import forwarded, translated
from virtwire.v1 import filter_pb2, filter_pb2_grpc

if TYPE_CHECKING:
    from virtwire.orchestrator.core import Orchestrator
    from virtwire.server.registry import NetClientRegistry

logger = logging.getLogger(__name__)

__all__ = ["FilterHost", "FilterServicer", "LanFilterServicer", "filter_info"]

_DIRECTION_TO_PB = {
    FilterDirection.ALL: filter_pb2.FILTER_DIRECTION_ALL,
    FilterDirection.RX: filter_pb2.FILTER_DIRECTION_RX,
    FilterDirection.TX: filter_pb2.FILTER_DIRECTION_TX,
}
_DIRECTION_FROM_PB = {
    filter_pb2.FILTER_DIRECTION_UNSPECIFIED: FilterDirection.ALL,
    **{pb: d for d, pb in _DIRECTION_TO_PB.items()},
}
#: Longest filter kind a request may name.
_KIND_MAX = 64
_RPC_TIMEOUT_S = 10.0


def _direction(value: int) -> FilterDirection:
    try:
        return _DIRECTION_FROM_PB[value]  # type: ignore[index]
    except KeyError:
        raise ConfigError(f"filter direction {value} is not all, rx or tx") from None


def _status(value: int, default: bool | None) -> bool | None:
    if value == filter_pb2.FILTER_STATUS_UNSPECIFIED:
        return default
    if value == filter_pb2.FILTER_STATUS_ON:
        return True
    if value == filter_pb2.FILTER_STATUS_OFF:
        return False
    raise ConfigError(f"filter status {value} is not on or off")


def check_props(props: Mapping[str, str], what: str) -> dict[str, str]:
    """A request's properties, within the caps ``FilterSpec.parse`` keeps."""
    if len(props) > MAX_SPEC_PROPS:
        raise ConfigError(f"{what}: {len(props)} properties, more than {MAX_SPEC_PROPS}")
    size = sum(len(k) + len(v) + 2 for k, v in props.items())
    if size > MAX_SPEC_CHARS:
        raise ConfigError(f"{what}: properties of {size} characters, more than "
                          f"{MAX_SPEC_CHARS}")
    for key in props:
        if not key:
            raise ConfigError(f"{what}: a property without a name")
    return dict(props)


def filter_counters(nf: NetFilter) -> filter_pb2.FilterCounters:
    s = nf.stats
    counters = filter_pb2.FilterCounters(
        seen=s.seen, passed=s.passed, taken=s.taken, released=s.released, added=s.added,
        dropped={k: v for k, v in s.dropped.items() if v}, dropped_total=s.dropped_total)
    # Counters of the kind's own (netem's delayed, reordered...), where it has them.
    extra = getattr(nf, "counters", None)
    if callable(extra):
        counters.extra.update({str(k): int(v) for k, v in extra().items()})
    return counters


def filter_info(netclient: str, nf: NetFilter, position: int) -> filter_pb2.FilterInfo:
    return filter_pb2.FilterInfo(
        netclient=netclient, id=nf.id, kind=nf.kind, direction=_DIRECTION_TO_PB[nf.direction],
        status=filter_pb2.FILTER_STATUS_ON if nf.status else filter_pb2.FILTER_STATUS_OFF,
        position=position, props=nf.properties(), counters=filter_counters(nf))


def _info(nc: NetClient, nf: NetFilter) -> filter_pb2.FilterInfo:
    index = nc.filters.index(nf) if nf in nc.filters else len(nc.filters)
    return filter_info(nc.name, nf, index)


def _open_chardevs(specs: Sequence[Any]) -> Any:
    from virtwire.net.chardev import open_chardevs  # type: ignore[import-not-found,unused-ignore]

    return open_chardevs(specs)


@dataclass
class FilterHost:
    """A server's filters: the context they get, its ``--object`` filters, and
    the operations FilterService calls."""

    registry: NetClientRegistry
    #: ``--object filter-...``: added at every start, after the NetClients exist.
    specs: list[FilterSpec] = field(default_factory=list)
    #: ``--dump-dir``: where dump filters write (None: a dump is refused).
    dump_dir: Path | None = None
    #: ``--chardev``, parsed (virtwire.net.chardev.ChardevSpec); opened at start.
    chardev_specs: list[Any] = field(default_factory=list)
    context: FilterContext = field(init=False)

    def __post_init__(self) -> None:
        self.context = FilterContext(dump_dir=self.dump_dir, netclient=self.registry.get)

    # -- the host's lifecycle -------------------------------------------------------
    async def start(self) -> None:
        """Open the chardevs and add the ``--object`` filters; ConfigError (or the
        error of the first bad one) leaves none of them."""
        self.context.scheduler = asyncio.get_running_loop()
        self.context.dump_dir = self.dump_dir
        if self.chardev_specs:
            opened = _open_chardevs(self.chardev_specs)
            if inspect.isawaitable(opened):
                opened = await opened
            self.context.chardevs = dict(opened)
        added: list[tuple[NetClient, str]] = []
        try:
            for spec in self.specs:
                try:
                    nf = self.add(spec.netdev, spec.kind, spec.id, direction=spec.direction,
                                  status=spec.status, position=spec.position,
                                  insert=spec.insert, props=spec.props)
                except (ConfigError, NotFoundError, LimitError) as exc:
                    raise type(exc)(f"--object {shorten(spec.format(), 200)}: {exc}") from exc
                assert nf.netdev is not None
                added.append((nf.netdev, nf.id))
                logger.info("filter %s (%s) on %s", nf.id, nf.kind, spec.netdev)
        except BaseException:
            for nc, fid in reversed(added):
                nc.remove_filter(fid)
            await self.close_chardevs()
            raise

    async def stop(self) -> None:
        """Remove every filter (releasing what each holds), then close the chardevs."""
        for nc in self.registry.all():
            nc.remove_all_filters()
        await self.close_chardevs()

    async def close_chardevs(self) -> None:
        chardevs, self.context.chardevs = self.context.chardevs, {}
        for chardev in chardevs.values():
            close = getattr(chardev, "close", None)
            if callable(close):
                result = close()
                if inspect.isawaitable(result):
                    await result
        for chardev in chardevs.values():  # net.chardev: close, then wait until closed
            wait_closed = getattr(chardev, "wait_closed", None)
            if callable(wait_closed):
                await wait_closed()

    # -- what the RPCs do -------------------------------------------------------------
    def add(self, netclient: str, kind: str, fid: str, *,
            direction: FilterDirection = FilterDirection.ALL, status: bool = True,
            position: str = "", insert: str = "", props: Mapping[str, str] | None = None
            ) -> NetFilter:
        """Check everything, build the filter, then add it; any error changes nothing."""
        nc = self.registry.get(netclient)
        if not kind or len(kind) > _KIND_MAX:
            raise ConfigError(f"filter kind {shorten(kind)!r}: name one (e.g. dump, netem)")
        check_filter_id(fid)
        position = position or "tail"
        insert = insert or "behind"
        props = check_props(props or {}, f"filter {fid}")
        self._check_placement(nc, fid, position, insert)
        nf = new_filter(kind, fid, props, self.context, direction=direction, status=status)
        try:
            nc.add_filter(nf, position, insert)
        except BaseException:
            nf.cleanup()
            raise
        return nf

    @staticmethod
    def _check_placement(nc: NetClient, fid: str, position: str, insert: str) -> None:
        """What ``add_filter`` would refuse, refused before the filter is built."""
        if any(f.id == fid for f in nc.filters):
            raise ConfigError(f"{nc.name}: a filter {fid!r} is already there")
        if insert not in ("behind", "before"):
            raise ConfigError(f"filter insert {shorten(insert)} is not behind or before")
        if position.startswith("id="):
            nc.find_filter(position[3:])  # NotFoundError
        elif position not in ("head", "tail"):
            raise ConfigError(f"filter position {shorten(position)} is not head, tail "
                              "or id=FILTER")
        if len(nc.filters) >= MAX_FILTERS:
            nc.filters_refused += 1
            raise LimitError(f"{nc.name} already has {MAX_FILTERS} filters, the most it takes")

    def update(self, netclient: str, fid: str, props: Mapping[str, str],
               status: bool | None = None) -> NetFilter:
        """Change properties and status, all or nothing (``NetFilter.configure``)."""
        nf = self.registry.get(netclient).find_filter(fid)
        props = check_props(props, f"filter {fid}")
        if status is not None:
            word = "on" if status else "off"
            if props.get("status", word) != word:
                raise ConfigError(f"filter {fid}: status given twice ({props['status']} "
                                  f"and {word})")
            props["status"] = word
        if props:
            nf.configure(props)
        return nf

    def remove(self, netclient: str, fid: str) -> tuple[NetFilter, int]:
        """Remove a filter (it releases what it holds first); it and its old position."""
        nc = self.registry.get(netclient)
        position = nc.filters.index(nc.find_filter(fid))
        return nc.remove_filter(fid), position

    def listed(self, netclient: str = "") -> list[tuple[NetClient, int, NetFilter]]:
        """(NetClient, position, filter) of one NetClient, or of all ("")."""
        ncs: Iterable[NetClient] = ([self.registry.get(netclient)] if netclient
                                    else self.registry.all())
        return [(nc, i, nf) for nc in ncs for i, nf in enumerate(nc.filters)]


class FilterServicer(filter_pb2_grpc.FilterServiceServicer):
    """virtwire.v1.FilterService over a FilterHost."""

    def __init__(self, host: FilterHost) -> None:
        self.host = host

    async def AddFilter(self, request: filter_pb2.AddFilterRequest,
                        context: grpc.aio.ServicerContext[Any, Any]
                        ) -> filter_pb2.AddFilterResponse:
        nf = self.host.add(
            request.netclient, request.kind, request.id,
            direction=_direction(request.direction),
            status=bool(_status(request.status, True)), position=request.position,
            insert=request.insert, props=request.props)
        assert nf.netdev is not None
        logger.info("AddFilter %s (%s) on %s", nf.id, nf.kind, nf.netdev.name)
        return filter_pb2.AddFilterResponse(filter=_info(nf.netdev, nf))

    async def UpdateFilter(self, request: filter_pb2.UpdateFilterRequest,
                           context: grpc.aio.ServicerContext[Any, Any]
                           ) -> filter_pb2.UpdateFilterResponse:
        nf = self.host.update(request.netclient, request.id, request.props,
                              _status(request.status, None))
        assert nf.netdev is not None
        return filter_pb2.UpdateFilterResponse(filter=_info(nf.netdev, nf))

    async def RemoveFilter(self, request: filter_pb2.RemoveFilterRequest,
                           context: grpc.aio.ServicerContext[Any, Any]
                           ) -> filter_pb2.RemoveFilterResponse:
        nf, position = self.host.remove(request.netclient, request.id)
        logger.info("RemoveFilter %s on %s", nf.id, request.netclient)
        return filter_pb2.RemoveFilterResponse(
            filter=filter_info(request.netclient, nf, position))

    async def ListFilters(self, request: filter_pb2.ListFiltersRequest,
                          context: grpc.aio.ServicerContext[Any, Any]
                          ) -> filter_pb2.ListFiltersResponse:
        return filter_pb2.ListFiltersResponse(filters=[
            filter_info(nc.name, nf, i) for nc, i, nf in self.host.listed(request.netclient)])


class LanFilterServicer(filter_pb2_grpc.FilterServiceServicer):
    """The orchestrator's FilterService: ``netclient`` is a node of its LAN
    (NODE or HUB:PORT), resolved as for SetLink and forwarded to the service
    hosting it; answers name the node the same way."""

    #: Service kinds whose NetClients are LAN nodes (as GetStatus lists them).
    KINDS = ("hub", "tap", "e1000")

    def __init__(self, orch: Orchestrator) -> None:
        self.orch = orch

    @staticmethod
    def _renamed(info: filter_pb2.FilterInfo, target: str) -> filter_pb2.FilterInfo:
        info.netclient = target
        return info

    async def AddFilter(self, request: filter_pb2.AddFilterRequest,
                        context: grpc.aio.ServicerContext[Any, Any]
                        ) -> filter_pb2.AddFilterResponse:
        target = request.netclient
        address, name = self.orch.resolve(target)
        forward = filter_pb2.AddFilterRequest()
        forward.CopyFrom(request)
        forward.netclient = name
        async with tls.aio_channel(address) as ch:
            with forwarded():
                got = await filter_pb2_grpc.FilterServiceStub(ch).AddFilter(
                    forward, timeout=_RPC_TIMEOUT_S)
        return filter_pb2.AddFilterResponse(filter=self._renamed(got.filter, target))

    async def UpdateFilter(self, request: filter_pb2.UpdateFilterRequest,
                           context: grpc.aio.ServicerContext[Any, Any]
                           ) -> filter_pb2.UpdateFilterResponse:
        target = request.netclient
        address, name = self.orch.resolve(target)
        forward = filter_pb2.UpdateFilterRequest()
        forward.CopyFrom(request)
        forward.netclient = name
        async with tls.aio_channel(address) as ch:
            with forwarded():
                got = await filter_pb2_grpc.FilterServiceStub(ch).UpdateFilter(
                    forward, timeout=_RPC_TIMEOUT_S)
        return filter_pb2.UpdateFilterResponse(filter=self._renamed(got.filter, target))

    async def RemoveFilter(self, request: filter_pb2.RemoveFilterRequest,
                           context: grpc.aio.ServicerContext[Any, Any]
                           ) -> filter_pb2.RemoveFilterResponse:
        target = request.netclient
        address, name = self.orch.resolve(target)
        async with tls.aio_channel(address) as ch:
            with forwarded():
                got = await filter_pb2_grpc.FilterServiceStub(ch).RemoveFilter(
                    filter_pb2.RemoveFilterRequest(netclient=name, id=request.id),
                    timeout=_RPC_TIMEOUT_S)
        return filter_pb2.RemoveFilterResponse(filter=self._renamed(got.filter, target))

    async def ListFilters(self, request: filter_pb2.ListFiltersRequest,
                          context: grpc.aio.ServicerContext[Any, Any]
                          ) -> filter_pb2.ListFiltersResponse:
        if request.netclient:
            target = request.netclient
            address, name = self.orch.resolve(target)
            async with tls.aio_channel(address) as ch:
                with forwarded():
                    got = await filter_pb2_grpc.FilterServiceStub(ch).ListFilters(
                        filter_pb2.ListFiltersRequest(netclient=name), timeout=_RPC_TIMEOUT_S)
            return filter_pb2.ListFiltersResponse(
                filters=[self._renamed(info, target) for info in got.filters])
        resp = filter_pb2.ListFiltersResponse()
        topo = self.orch.topology
        if topo is None:
            return resp
        from virtwire.topology import HubNode

        for rec in list(self.orch.services.values()):
            if rec.kind not in self.KINDS:
                continue
            node = topo.nodes.get(rec.node)
            try:
                async with tls.aio_channel(rec.address) as ch:
                    with translated(rec.name):
                        got = await filter_pb2_grpc.FilterServiceStub(ch).ListFilters(
                            filter_pb2.ListFiltersRequest(), timeout=_RPC_TIMEOUT_S)
            except VirtwireError as exc:  # as GetStatus: the others are still listed
                logger.warning("ListFilters: %s", exc)
                continue
            for info in got.filters:
                if isinstance(node, HubNode):
                    resp.filters.append(self._renamed(info, f"{rec.node}:{info.netclient}"))
                elif info.netclient == rec.node:  # a vm's e1000, a tap's backend
                    resp.filters.append(info)
        return resp
