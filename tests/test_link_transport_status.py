"""What carries a link, where users look.

A link's frames travel on the LinkService Connect stream ("grpc") or, between
two ends on one kernel, on the same-host unix socket the welcome offers
("unix"). NetClientInfo.link_transport says which, on both ends; `virtwire
list` and `status` add it to an up link's LINK ("up (unix socket)", "up (grpc
stream)") and ``--json`` carries it as ``link_transport``. The acceptor's
fast-path counters (offers taken, declined, refused) are in ListNetClients'
server totals. In-process servers on 127.0.0.1:0, and the console script.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from virtwire.cli.format import (
    LINK_PEER_GONE,
    LINK_SET_DOWN,
    LINK_UP,
    format_netclients,
    format_status,
    link_state_text,
    link_text,
)
from virtwire.errors import UnavailableError
from virtwire.link import unix as fastpath
from virtwire.server.hub import HubServer
from virtwire.v1 import netclient_pb2, netclient_pb2_grpc, orchestrator_pb2

from support.doubles import until

pytestmark = pytest.mark.timeout(120)

VIRTWIRE_SCRIPT = Path(sys.executable).parent / "virtwire"
Info = netclient_pb2.NetClientInfo
UP = netclient_pb2.LINK_STATE_UP


# -- the words ------------------------------------------------------------------------------
@pytest.mark.parametrize(("info", "text"), [
    (Info(link_state=UP, link_transport="unix"), "up (unix socket)"),
    (Info(link_state=UP, link_transport="grpc"), "up (grpc stream)"),
    # A peer in the same process (no link session): just "up".
    (Info(link_state=UP), LINK_UP),
    # A transport this CLI does not know yet is shown as the server names it.
    (Info(link_state=UP, link_transport="shm"), "up (shm)"),
    # Only an up link says what carries it; the last session's transport stays
    # in the field (and in --json) but not in the words.
    (Info(link_state=UP, admin_down=True, link_transport="unix"), LINK_SET_DOWN),
    (Info(link_state=netclient_pb2.LINK_STATE_CONNECTING, link_down=True,
          link_transport="unix"), LINK_PEER_GONE),
    (Info(link_state=netclient_pb2.LINK_STATE_CONNECTING, dials=True,
          link_transport="grpc"), "connecting"),
])
def test_link_text(info: netclient_pb2.NetClientInfo, text: str) -> None:
    assert link_text(info) == text
    assert link_text(info).startswith(link_state_text(info))


def test_status_table_says_the_transport_in_link() -> None:
    resp = orchestrator_pb2.OrchestratorServiceGetStatusResponse(name="lan", state="running")
    node = resp.nodes.add(name="vm1", kind="vm")
    node.netclients.add(name="vm1", service="vm1-e1000", info=Info(
        name="vm1", kind="e1000", link_state=UP, dials=True, peer="127.0.0.1:4000/hub0port0",
        link_transport="unix"))
    table = format_status(resp, "127.0.0.1:4001").split("\n\n")[1]
    row = table.splitlines()[1].split()
    assert row[:6] == ["vm1", "vm1", "up", "(unix", "socket)", "-"], table


# -- the fields, from the servers ---------------------------------------------------------------
@pytest.fixture
async def near() -> AsyncIterator[HubServer]:
    """A second in-process hub, whose port dials the ``hub`` fixture's."""
    host = HubServer("127.0.0.1:0")
    await host.start()
    yield host
    await host.stop(grace=0.2)


async def _list(address: str) -> netclient_pb2.ListNetClientsResponse:
    async with grpc.aio.insecure_channel(address) as ch:
        return await netclient_pb2_grpc.NetClientServiceStub(ch).ListNetClients(
            netclient_pb2.ListNetClientsRequest())


async def _link(near: HubServer, hub: HubServer) -> tuple[Info, Info]:
    """near's port "up0" dialling hub's "p0"; their infos once both are up."""
    p0 = hub.add_port("p0")
    assert hub.registry.info(p0).link_transport == ""  # no session yet
    up0 = near.add_port("up0", peer=f"{hub.address}/p0")
    await until(lambda: near.registry.info(up0).link_state == UP
                and hub.registry.info(p0).link_state == UP, what="link up")
    return near.registry.info(up0), hub.registry.info(p0)


def _row(table: str, name: str) -> str:
    (line,) = [line for line in table.splitlines() if line.split()[0] == name]
    return line


async def test_a_same_host_link_is_on_the_unix_socket(near: HubServer, hub: HubServer) -> None:
    dialler, accepted = await _link(near, hub)
    assert (dialler.link_transport, accepted.link_transport) == ("unix", "unix")
    assert "fast_path_declined" not in dialler.info
    listed = await _list(hub.address)
    (p0,) = [nc for nc in listed.netclients if nc.name == "p0"]
    assert p0.link_transport == "unix"
    assert "up (unix socket)" in _row(format_netclients(listed), "p0")
    server = listed.server
    assert (server.fast_path_accepted, server.fast_path_declined,
            server.fast_path_tokens_refused, server.fast_path_handshakes_refused,
            server.fast_path_offers_refused) == (1, 0, 0, 0, 0)
    near_listed = await _list(near.address)
    assert "up (unix socket)" in _row(format_netclients(near_listed), "up0")
    assert near_listed.server.fast_path_accepted == 0  # it dialled; it accepted nothing
    # The dialler goes: its hub port waits, and still says what carried its link.
    await near.remove_port("up0")
    info = await _wait_down(hub, "p0")
    assert info.link_transport == "unix" and link_text(info) == LINK_PEER_GONE


async def _wait_down(host: HubServer, name: str) -> Info:
    nc = host.registry.get(name)
    await until(lambda: host.registry.info(nc).link_state != UP, what=f"{name} down")
    return host.registry.info(nc)


async def test_a_dialler_with_link_transport_grpc_stays_on_the_stream(
        near: HubServer, hub: HubServer) -> None:
    near.registry.set_link_transport("grpc")
    dialler, accepted = await _link(near, hub)
    assert (dialler.link_transport, accepted.link_transport) == ("grpc", "grpc")
    listed = await _list(hub.address)
    assert "up (grpc stream)" in _row(format_netclients(listed), "p0")
    # Nothing was offered: the hello did not ask.
    assert (listed.server.fast_path_accepted, listed.server.fast_path_declined) == (0, 0)
    assert hub.registry.acceptor.listener is None


async def test_an_acceptor_with_link_transport_grpc_offers_nothing(
        near: HubServer, hub: HubServer) -> None:
    hub.registry.set_link_transport("grpc")
    dialler, accepted = await _link(near, hub)
    assert (dialler.link_transport, accepted.link_transport) == ("grpc", "grpc")
    assert "fast_path_declined" not in dialler.info  # no offer, nothing declined


async def test_an_offer_the_dialler_cannot_reach_is_declined_and_counted(
        near: HubServer, hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """As from another network namespace: the dialler falls back to the stream."""
    async def unreachable(socket_name: str, token: bytes) -> fastpath.UnixLinkStream:
        raise UnavailableError(f"cannot reach fast-path socket @{socket_name}: refused")

    monkeypatch.setattr(fastpath, "dial", unreachable)
    dialler, accepted = await _link(near, hub)
    assert (dialler.link_transport, accepted.link_transport) == ("grpc", "grpc")
    assert "fast_path_declined='cannot reach fast-path socket" in dialler.info, dialler.info
    server = (await _list(hub.address)).server
    assert (server.fast_path_accepted, server.fast_path_declined) == (0, 1)


async def test_offers_refused_at_the_cap_are_counted(
        near: HubServer, hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastpath, "MAX_PENDING_OFFERS", 0)
    dialler, accepted = await _link(near, hub)
    assert (dialler.link_transport, accepted.link_transport) == ("grpc", "grpc")
    server = (await _list(hub.address)).server
    assert (server.fast_path_offers_refused, server.fast_path_accepted) == (1, 0)


async def test_bad_tokens_and_handshakes_over_the_cap_are_counted(
        near: HubServer, hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    await _link(near, hub)
    listener = hub.registry.acceptor.listener
    assert listener is not None
    name = "\0" + listener.socket_name
    _reader, writer = await asyncio.open_unix_connection(name)
    writer.write(bytes(fastpath.TOKEN_BYTES))  # no token the listener gave out
    await until(lambda: listener.tokens_refused == 1, what="token refused")
    writer.close()
    monkeypatch.setattr(fastpath, "MAX_HANDSHAKES", 0)
    _reader, writer = await asyncio.open_unix_connection(name)
    await until(lambda: listener.handshakes_refused == 1, what="handshake refused")
    writer.close()
    server = (await _list(hub.address)).server
    assert (server.fast_path_accepted, server.fast_path_tokens_refused,
            server.fast_path_handshakes_refused) == (1, 1, 1)


# -- the console script -------------------------------------------------------------------------
async def _cli(*args: str) -> str:
    """`virtwire ARGS` (the installed console script), while this loop serves."""
    assert VIRTWIRE_SCRIPT.exists(), "pip install -e . makes the virtwire script"
    proc = await asyncio.create_subprocess_exec(
        str(VIRTWIRE_SCRIPT), *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0 and b"Traceback" not in err, (args, err)
    return out.decode()


async def test_list_and_its_json_say_the_transport(near: HubServer, hub: HubServer) -> None:
    await _link(near, hub)
    hub.add_port("idle")
    table = await _cli("list", "-s", hub.address)
    assert _row(table, "p0").split()[:5] == ["p0", "hubport", "up", "(unix", "socket)"], table
    assert _row(table, "idle").split()[2:6] == [*LINK_PEER_GONE.split(), "-"], table
    data = json.loads(await _cli("list", "-s", hub.address, "--json"))
    infos = {nc["name"]: nc for nc in data["netclients"]}
    assert (infos["p0"]["link"], infos["p0"]["link_transport"]) == (LINK_UP, "unix")
    assert infos["idle"]["link_transport"] == ""
    assert data["server"]["fast_path_accepted"] == 1
    assert isinstance(data["server"]["fast_path_declined"], int)
