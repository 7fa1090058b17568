"""FilterService over an in-process hub (issue 11 items 3 and 8): add, update,
remove and list filters with their counters; every bad request answered with
its status and changing nothing; the ``--object`` filters of a host's command
line applied at each start; the methods' roles.

A test-local filter type (``probe``) stands in for the real ones: it drops
every Nth packet (``every``, range-checked 1..1000) and counts its calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest

from virtwire.cli import build_parser
from virtwire.cli.serve import SERVE_KINDS, configure_filters
from virtwire.errors import ConfigError, NotFoundError
from virtwire.net import filter_types
from virtwire.net.filter import MAX_FILTERS, FilterDirection, NetFilter
from virtwire.net.filter_types import FilterSpec
from virtwire.net.net import NetClient
from virtwire.server.authz import Access, access_of, allowed
from virtwire.server.hub import HubServer
from virtwire.v1 import filter_pb2, filter_pb2_grpc, netclient_pb2, netclient_pb2_grpc

from support.doubles import Sink, frame, until


class Probe(NetFilter):
    """Drops every ``every``-th packet it sees (0: none)."""

    kind = "probe"
    PROPERTIES: Mapping[str, str] = {"every": "drop every Nth packet, 1..1000 (0: none)",
                                     "note": "free text"}

    def __init__(self, fid: str, **kw: Any) -> None:
        super().__init__(fid, **kw)
        self.every = 0
        self.note = ""
        self.calls = 0

    def parse_properties(self, props: Mapping[str, str], initial: bool) -> dict[str, Any]:
        parsed: dict[str, Any] = {}
        if "every" in props:
            try:
                every = int(props["every"])
            except ValueError:
                raise ConfigError(f"every={props['every']!r} is not a number") from None
            if not 0 <= every <= 1000:
                raise ConfigError(f"every={every} is out of range (0..1000)")
            parsed["every"] = every
        if "note" in props:
            parsed["note"] = props["note"]
        return parsed

    def apply(self, parsed: Mapping[str, Any]) -> None:
        self.every = parsed.get("every", self.every)
        self.note = parsed.get("note", self.note)

    def properties(self) -> dict[str, str]:
        return {"every": str(self.every), **({"note": self.note} if self.note else {})}

    def counters(self) -> dict[str, int]:
        return {"calls": self.calls}

    def filter_receive(self, direction: FilterDirection, sender: NetClient, flags: int,
                       data: bytes) -> int:
        self.calls += 1
        if self.every and self.calls % self.every == 0:
            self.drop("probe")
            return len(data)
        return 0


@pytest.fixture(autouse=True)
def probe_type() -> Iterator[None]:
    filter_types._load()  # the built-in types first: a registered type stops their loading
    filter_types.register_filter_type(Probe)
    yield
    filter_types.FILTER_TYPES.pop(Probe.kind, None)


@pytest.fixture
async def lan(hub: HubServer) -> AsyncIterator[tuple[HubServer, Sink]]:
    """The hub with ports p0 and p1; p1's peer is a Sink."""
    hub.add_port("p0")
    p1 = hub.add_port("p1")
    sink = Sink("sink")
    p1.peer, sink.peer = sink, p1
    yield hub, sink


@pytest.fixture
async def stub(hub: HubServer) -> AsyncIterator[filter_pb2_grpc.FilterServiceStub]:
    async with grpc.aio.insecure_channel(hub.address) as ch:
        yield filter_pb2_grpc.FilterServiceStub(ch)


async def _inject(hub: HubServer, name: str, n: int) -> None:
    async with grpc.aio.insecure_channel(hub.address) as ch:
        got = await netclient_pb2_grpc.NetClientServiceStub(ch).Inject(
            netclient_pb2.InjectRequest(name=name, frame=frame(1), repeat=n))
    assert got.accepted == n


def _chain(hub: HubServer, name: str) -> list[tuple[str, str, dict[str, str]]]:
    return [(nf.id, nf.kind, nf.properties()) for nf in hub.registry.get(name).filters]


async def _code(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details() or ""


# -- add, update, remove, list ----------------------------------------------------------
async def test_add_update_remove_list_with_counters(
        lan: tuple[HubServer, Sink], stub: filter_pb2_grpc.FilterServiceStub) -> None:
    hub, sink = lan
    added = (await stub.AddFilter(filter_pb2.AddFilterRequest(
        netclient="p1", kind="probe", id="pr", direction=filter_pb2.FILTER_DIRECTION_TX,
        props={"every": "4"}))).filter
    assert (added.netclient, added.id, added.kind, added.position) == ("p1", "pr", "probe", 0)
    assert added.direction == filter_pb2.FILTER_DIRECTION_TX
    assert added.status == filter_pb2.FILTER_STATUS_ON
    assert dict(added.props) == {"every": "4"}

    await _inject(hub, "p0", 8)  # the hub sends them out of p1: its tx
    await until(lambda: len(sink.frames) == 6, what="6 of 8 frames at the sink")
    listed = (await stub.ListFilters(filter_pb2.ListFiltersRequest(netclient="p1"))).filters
    assert len(listed) == 1
    c = listed[0].counters
    assert (c.seen, c.passed, c.taken, c.dropped_total) == (8, 6, 2, 2)
    assert dict(c.dropped) == {"probe": 2} and dict(c.extra) == {"calls": 8}
    # The NetClient's own counters show the drops too, in dropped_total.
    async with grpc.aio.insecure_channel(hub.address) as ch:
        info = (await netclient_pb2_grpc.NetClientServiceStub(ch).GetNetClient(
            netclient_pb2.GetNetClientRequest(name="p1"))).netclient
    assert info.counters.dropped_filter == 2 and info.counters.dropped_total >= 2

    # Update: all properties at once, status off lets everything through.
    updated = (await stub.UpdateFilter(filter_pb2.UpdateFilterRequest(
        netclient="p1", id="pr", props={"every": "1", "note": "x"},
        status=filter_pb2.FILTER_STATUS_OFF))).filter
    assert dict(updated.props) == {"every": "1", "note": "x"}
    assert updated.status == filter_pb2.FILTER_STATUS_OFF
    await _inject(hub, "p0", 3)
    await until(lambda: len(sink.frames) == 9, what="3 more frames, unfiltered")

    # A second filter before the first; list all, in chain order.
    second = (await stub.AddFilter(filter_pb2.AddFilterRequest(
        netclient="p1", kind="probe", id="front", position="id=pr", insert="before"))).filter
    assert second.position == 0
    assert [f.id for f in (await stub.ListFilters(filter_pb2.ListFiltersRequest())).filters] \
        == ["front", "pr"]
    assert _chain(hub, "p1")[0][0] == "front"

    removed = (await stub.RemoveFilter(filter_pb2.RemoveFilterRequest(
        netclient="p1", id="pr"))).filter
    assert (removed.id, removed.position, removed.counters.seen) == ("pr", 1, 8)
    assert [nf.id for nf in hub.registry.get("p1").filters] == ["front"]
    assert hub.registry.get("p1").filters[0].netdev is not None


async def test_update_with_a_bad_property_changes_nothing(
        lan: tuple[HubServer, Sink], stub: filter_pb2_grpc.FilterServiceStub) -> None:
    hub, _ = lan
    await stub.AddFilter(filter_pb2.AddFilterRequest(
        netclient="p1", kind="probe", id="pr", props={"every": "5", "note": "a"}))
    before = _chain(hub, "p1")
    for props in ({"every": "5000", "note": "b"}, {"every": "x"}, {"nosuch": "1"},
                  {"status": "sideways"}):
        code, details = await _code(stub.UpdateFilter(filter_pb2.UpdateFilterRequest(
            netclient="p1", id="pr", props=props)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (props, details)
        assert _chain(hub, "p1") == before, props
    code, _ = await _code(stub.UpdateFilter(filter_pb2.UpdateFilterRequest(
        netclient="p1", id="pr", props={"status": "on"}, status=filter_pb2.FILTER_STATUS_OFF)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert hub.registry.get("p1").filters[0].status
    code, _ = await _code(stub.UpdateFilter(filter_pb2.UpdateFilterRequest(
        netclient="p1", id="missing", props={"every": "1"})))
    assert code == grpc.StatusCode.NOT_FOUND


# -- bad input (item 8): the right status, nothing changed -------------------------------
BAD_ADDS: list[tuple[dict[str, Any], grpc.StatusCode, str]] = [
    ({"props": {"every": "1001"}}, grpc.StatusCode.INVALID_ARGUMENT, "out of range"),
    ({"props": {"every": "-1"}}, grpc.StatusCode.INVALID_ARGUMENT, "out of range"),
    ({"props": {"every": "often"}}, grpc.StatusCode.INVALID_ARGUMENT, "not a number"),
    ({"props": {"speed": "1"}}, grpc.StatusCode.INVALID_ARGUMENT, "unknown property"),
    ({"netclient": "nosuch"}, grpc.StatusCode.NOT_FOUND, "no NetClient named"),
    ({"id": "pr"}, grpc.StatusCode.INVALID_ARGUMENT, "already there"),
    ({"position": "id=missing"}, grpc.StatusCode.NOT_FOUND, "no filter 'missing'"),
    ({"position": "middle"}, grpc.StatusCode.INVALID_ARGUMENT, "not head, tail"),
    ({"position": "id=pr", "insert": "under"}, grpc.StatusCode.INVALID_ARGUMENT, "insert"),
    ({"kind": "nosuch"}, grpc.StatusCode.INVALID_ARGUMENT, "filter type 'nosuch'"),
    ({"kind": ""}, grpc.StatusCode.INVALID_ARGUMENT, "kind"),
    ({"id": "9lives"}, grpc.StatusCode.INVALID_ARGUMENT, "filter id"),
    ({"id": ""}, grpc.StatusCode.INVALID_ARGUMENT, "filter id"),
    ({"direction": 9}, grpc.StatusCode.INVALID_ARGUMENT, "direction"),
    ({"status": 7}, grpc.StatusCode.INVALID_ARGUMENT, "status"),
    ({"props": {f"k{i}": "v" for i in range(40)}}, grpc.StatusCode.INVALID_ARGUMENT,
     "more than 32"),
]


@pytest.mark.parametrize(("change", "code", "words"), BAD_ADDS,
                         ids=[str(i) for i in range(len(BAD_ADDS))])
async def test_a_bad_add_is_refused_and_changes_nothing(
        lan: tuple[HubServer, Sink], stub: filter_pb2_grpc.FilterServiceStub,
        change: dict[str, Any], code: grpc.StatusCode, words: str) -> None:
    hub, _ = lan
    await stub.AddFilter(filter_pb2.AddFilterRequest(netclient="p1", kind="probe", id="pr",
                                                     props={"every": "3"}))
    before = {name: _chain(hub, name) for name in ("p0", "p1")}
    request = {"netclient": "p1", "kind": "probe", "id": "pr2", **change}
    got, details = await _code(stub.AddFilter(filter_pb2.AddFilterRequest(**request)))
    assert got == code, details
    assert words in details, details
    assert {name: _chain(hub, name) for name in ("p0", "p1")} == before


@pytest.mark.parametrize(("queue", "seen"), [
    (filter_pb2.FILTER_DIRECTION_RX, True), (filter_pb2.FILTER_DIRECTION_ALL, True),
    (filter_pb2.FILTER_DIRECTION_TX, False)])
async def test_inject_walks_the_targets_rx_filters_as_a_peers_frame_would(
        lan: tuple[HubServer, Sink], stub: filter_pb2_grpc.FilterServiceStub,
        queue: int, seen: bool) -> None:
    """Inject delivers "as if from its peer": the frames pass the target's rx
    filters (a tx-only filter never sees them), and what a filter drops is
    reported as dropped and counted in the NetClient's dropped_filter."""
    hub, sink = lan
    await stub.AddFilter(filter_pb2.AddFilterRequest(netclient="p0", kind="probe", id="pr",
                                                     direction=queue, props={"every": "2"}))
    async with grpc.aio.insecure_channel(hub.address) as ch:
        got = await netclient_pb2_grpc.NetClientServiceStub(ch).Inject(
            netclient_pb2.InjectRequest(name="p0", frame=frame(1), repeat=10))
    want_dropped = 5 if seen else 0
    assert (got.accepted, got.dropped) == (10 - want_dropped, want_dropped)
    await until(lambda: len(sink.frames) == 10 - want_dropped)
    p0 = hub.registry.get("p0")
    assert p0.stats.dropped_filter == want_dropped
    assert p0.filters[0].stats.seen == (10 if seen else 0)


async def test_the_filter_cap_is_refused_and_counted(
        lan: tuple[HubServer, Sink], stub: filter_pb2_grpc.FilterServiceStub) -> None:
    hub, _ = lan
    for i in range(MAX_FILTERS):
        await stub.AddFilter(filter_pb2.AddFilterRequest(netclient="p0", kind="probe",
                                                         id=f"f{i}"))
    code, details = await _code(stub.AddFilter(filter_pb2.AddFilterRequest(
        netclient="p0", kind="probe", id="one-more")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION, details
    p0 = hub.registry.get("p0")
    assert len(p0.filters) == MAX_FILTERS and p0.filters_refused == 1


async def test_remove_and_list_of_unknown_names_are_not_found(
        lan: tuple[HubServer, Sink], stub: filter_pb2_grpc.FilterServiceStub) -> None:
    for call in (stub.RemoveFilter(filter_pb2.RemoveFilterRequest(netclient="p0", id="x")),
                 stub.RemoveFilter(filter_pb2.RemoveFilterRequest(netclient="zz", id="x")),
                 stub.ListFilters(filter_pb2.ListFiltersRequest(netclient="zz"))):
        code, _ = await _code(call)
        assert code == grpc.StatusCode.NOT_FOUND


async def test_removing_a_port_removes_its_filters(
        lan: tuple[HubServer, Sink], stub: filter_pb2_grpc.FilterServiceStub) -> None:
    hub, _ = lan
    await stub.AddFilter(filter_pb2.AddFilterRequest(netclient="p0", kind="probe", id="pr"))
    nf = hub.registry.get("p0").filters[0]
    await hub.registry.remove("p0")
    assert nf.netdev is None
    assert not (await stub.ListFilters(filter_pb2.ListFiltersRequest())).filters


# -- --object filters, at every start ---------------------------------------------------
async def test_object_filters_from_argv_are_added_at_each_start(tmp_path: Path) -> None:
    """`serve hub --object ...`: each process that starts from this argv (a restart)
    has the filters, in their positions; stopping removes them."""
    argv = ["serve", "hub", "--port", "p0", "--dump-dir", str(tmp_path),
            "--object", "filter-probe,id=a,netdev=p0,queue=rx,every=2",
            "--object", "filter-probe,id=b,netdev=p0,position=head"]
    for _ in range(2):
        args = build_parser().parse_args(argv)
        host = SERVE_KINDS["hub"].build(args)
        configure_filters(host, args)
        assert host.filters.dump_dir == tmp_path.resolve()
        await host.start()
        try:
            p0 = host.registry.get("p0")
            assert [(nf.id, nf.direction, nf.properties()["every"]) for nf in p0.filters] \
                == [("b", FilterDirection.ALL, "0"), ("a", FilterDirection.RX, "2")]
            assert p0.filters[0].context.dump_dir == tmp_path.resolve()
            async with grpc.aio.insecure_channel(host.address) as ch:
                listed = await filter_pb2_grpc.FilterServiceStub(ch).ListFilters(
                    filter_pb2.ListFiltersRequest())
            assert [f.id for f in listed.filters] == ["b", "a"]
        finally:
            await host.stop(grace=0.1)
        assert not p0.filters


def test_serve_refuses_a_bad_object_or_dump_dir(tmp_path: Path) -> None:
    for argv, words in (
            (["--object", "filter-probe,netdev=p0"], "id= is required"),
            (["--object", "dump,id=a,netdev=p0"], "start with filter-TYPE"),
            (["--dump-dir", str(tmp_path / "nosuch")], "not a directory")):
        args = build_parser().parse_args(["serve", "hub", "--port", "p0", *argv])
        host = SERVE_KINDS["hub"].build(args)
        with pytest.raises(ConfigError, match=words):
            configure_filters(host, args)


@pytest.mark.parametrize(("text", "error", "words"), [
    ("filter-probe,id=a,netdev=nosuch", NotFoundError, "no NetClient named"),
    ("filter-probe,id=a,netdev=p0,every=2000", ConfigError, "out of range"),
    ("filter-nosuch,id=a,netdev=p0", ConfigError, "filter type 'nosuch'"),
    ("filter-probe,id=b,netdev=p0,position=id=zz", NotFoundError, "no filter 'zz'"),
])
async def test_a_bad_object_fails_the_start_and_leaves_nothing(
        text: str, error: type[Exception], words: str) -> None:
    host = HubServer("127.0.0.1:0")
    p0 = host.add_port("p0")
    host.filters.specs = [FilterSpec.parse("filter-probe,id=first,netdev=p0"),
                          FilterSpec.parse(text)]
    with pytest.raises(error) as info:
        await host.start()
    assert words in str(info.value) and "--object" in str(info.value), info.value
    assert host.server is None and not p0.filters


# -- roles ------------------------------------------------------------------------------
def test_mutating_filter_rpcs_are_for_controllers_and_listing_is_a_read() -> None:
    service = filter_pb2.DESCRIPTOR.services_by_name["FilterService"]
    methods = {m.name for m in service.methods}
    assert methods == {"AddFilter", "UpdateFilter", "RemoveFilter", "ListFilters"}
    for name in ("AddFilter", "UpdateFilter", "RemoveFilter"):
        method = f"/virtwire.v1.FilterService/{name}"
        assert access_of(method) is Access.CONTROL
        assert allowed("controller", method)
        assert not allowed("service", method) and not allowed("viewer", method)
    assert access_of("/virtwire.v1.FilterService/ListFilters") is Access.READ
    assert allowed("viewer", "/virtwire.v1.FilterService/ListFilters")
