"""A topology's schedule against a real LAN (process backend, in-process orchestrator).

Steps run at their ``at`` after the LAN is healthy: a link flap of vm2, netem
set on vm2 and reset, and a step that fails (its filter was removed by hand)
is counted while the schedule goes on; ``down`` stops what is still due.
Times are read on the orchestrator's own loop (the test runs in it); the only
bounds are that nothing runs before its time and that each change is seen
within a generous deadline. A dump filter of the topology writes its pcap in
the LAN's state dir, which ``down`` keeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from virtwire import tls
from virtwire.net.pcap import read_pcap
from virtwire.orchestrator.core import DUMP_DIR, Orchestrator
from virtwire.topology import parse_topology
from virtwire.v1 import (
    filter_pb2,
    filter_pb2_grpc,
    guest_pb2,
    guest_pb2_grpc,
    netclient_pb2,
    netclient_pb2_grpc,
)

#: Each change is seen this long after its time at the latest (a loaded machine).
DEADLINE_S = 20.0

TOPOLOGY = """\
name: sched
nodes:
  hub0: {kind: hub}
  vm1:
    kind: vm
    ip: 198.18.7.1/24
    filters:
      - {type: netem, id: n1, delay: 1ms}
      - {type: dump, file: vm1.pcap}
  vm2:
    kind: vm
    ip: 198.18.7.2/24
    netem: {delay: 1ms}
links:
  - [vm1, hub0]
  - [vm2, hub0]
schedule:
  - {at: 2s, link: {node: vm2, state: down}}
  - {at: 3s, netem: {target: vm2, loss: 30%}}
  - {at: 3.5s, filter: {target: vm1, op: update, id: n1, loss: 10%}}
  - {at: 4s, link: {node: vm2, state: up}}
  - {at: 5s, netem_reset: {target: vm2}}
  - {at: 600s, link: {node: vm2, state: down}}
"""


@pytest.fixture
async def lan(tmp_path: Path) -> AsyncIterator[Orchestrator]:
    orch = Orchestrator(state_dir=tmp_path / "state")
    events = [e async for e in orch.up(parse_topology(TOPOLOGY, "sched.yaml"))]
    assert events[-1].kind == "done", events[-1].message
    try:
        yield orch
    finally:
        await orch.down()


async def _netclient(orch: Orchestrator, target: str) -> netclient_pb2.NetClientInfo:
    address, name = orch.resolve(target)
    async with tls.aio_channel(address) as ch:
        got = await netclient_pb2_grpc.NetClientServiceStub(ch).ListNetClients(
            netclient_pb2.ListNetClientsRequest(), timeout=5)
    return next(nc for nc in got.netclients if nc.name == name)


async def _filters(orch: Orchestrator, target: str) -> dict[str, filter_pb2.FilterInfo]:
    address, name = orch.resolve(target)
    async with tls.aio_channel(address) as ch:
        got = await filter_pb2_grpc.FilterServiceStub(ch).ListFilters(
            filter_pb2.ListFiltersRequest(netclient=name), timeout=5)
    return {f.id: f for f in got.filters}


async def _until(orch: Orchestrator, what: str, check: Callable[[], Awaitable[bool]]) -> float:
    """Poll ``check`` (a coroutine function) until true; the schedule's time then."""
    assert orch.schedule is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S + 6
    while loop.time() < deadline:
        before = loop.time() - orch.schedule.start
        if await check():
            return before
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: not seen in time")


async def test_a_schedule_runs_each_step_at_its_time(lan: Orchestrator) -> None:
    orch = lan
    assert orch.schedule is not None
    # Both topology netems are there from the start, and vm2's link is up.
    assert (await _filters(orch, "vm2"))["netem"].props["delay"] == "1ms"
    assert set(await _filters(orch, "vm1")) == {"n1", "dump"}
    # Step 2 (3.5 s) will find no n1: removed by hand now, so it fails.
    address, name = orch.resolve("vm1")
    async with tls.aio_channel(address) as ch:
        await filter_pb2_grpc.FilterServiceStub(ch).RemoveFilter(
            filter_pb2.RemoveFilterRequest(netclient=name, id="n1"), timeout=5)

    async def down() -> bool:
        return (await _netclient(orch, "vm2")).admin_down

    async def up() -> bool:
        return not await down()

    async def lossy() -> bool:
        netem = (await _filters(orch, "vm2")).get("netem")
        return netem is not None and netem.props.get("loss") == "30%"

    async def reset() -> bool:
        return "netem" not in await _filters(orch, "vm2")

    # Seen before 2 s (polled from now), vm2 is up; the flap comes at its time.
    assert await up()
    went_down = await _until(orch, "vm2 down", down)
    assert went_down >= 2.0 - 0.1  # the poll before it began ahead of the step by <= 0.05 s
    assert (await _until(orch, "netem loss 30%", lossy)) >= 3.0 - 0.1
    # The netem step changed the topology's netem (its delay kept), not a new one.
    assert (await _filters(orch, "vm2"))["netem"].props["delay"] == "1ms"
    assert (await _until(orch, "vm2 up", up)) >= 4.0 - 0.1
    assert (await _until(orch, "netem reset", reset)) >= 5.0 - 0.1

    records = orch.schedule.records
    await _until(orch, "5 steps ran", _ran(orch, 5))
    for rec in records[:5]:
        assert rec.ran and rec.ran_at >= rec.step.at
    assert [r.error != "" for r in records[:5]] == [False, False, True, False, False]
    assert "n1" in records[2].error
    assert orch.schedule.failed == 1 and orch.schedule.ran == 5
    assert any("failed" in e and "schedule[2]" in e for e in orch.events)
    assert any("schedule[0]" in e and "link vm2 down" in e for e in orch.events)

    # down stops the schedule: the step at 600 s never runs.
    await orch.down()
    assert not records[5].ran and orch.schedule.ran == 5


def _ran(orch: Orchestrator, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        assert orch.schedule is not None
        return orch.schedule.ran >= count
    return check


async def test_a_topology_dump_writes_in_the_state_dir_and_down_keeps_it(
        lan: Orchestrator, tmp_path: Path) -> None:
    orch = lan
    async with tls.aio_channel(orch.guest_address("vm1")) as ch:
        got = await guest_pb2_grpc.GuestServiceStub(ch).Ping(
            guest_pb2.PingRequest(address="198.18.7.2", count=2, interval_ms=100,
                                  timeout_ms=1000), timeout=20)
    assert got.transmitted == 2
    dump = tmp_path / "state" / "sched" / DUMP_DIR / "vm1-e1000" / "vm1.pcap"
    await orch.down()
    assert dump.is_file()
    assert not (tmp_path / "state" / "sched" / "state.json").exists()
    frames = read_pcap(dump.read_bytes())
    assert len(frames) >= 2  # the ARP and echo requests vm1 sent, at least
