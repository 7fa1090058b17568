"""One vocabulary for a NetClient's link and backend, and JSON with numbers.

`virtwire status`, `virtwire list` and their ``--json`` say a link is ``up``,
``down (set_link)``, ``down (peer gone)`` or ``connecting`` (the tables add
what carries an up link: ``up (unix socket)``), and a backend
``connected`` or ``waiting for a client at ADDR`` (``connecting to ADDR`` for a
stream that dials): ``cli.format.link_state_text`` and ``backend_text`` make
these words from NetClientInfo's fields. ``--json`` writes counts and pids as
numbers, and the shape of ``status --json`` is pinned by tests/data/status.json.
The CLI tests run the installed console script.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from virtwire.cli.format import (
    LINK_CONNECTING,
    LINK_PEER_GONE,
    LINK_SET_DOWN,
    LINK_UP,
    backend_text,
    format_json,
    link_state_text,
)
from virtwire.net.netdev import parse_backend_spec
from virtwire.net.queue import NQ_MAXLEN
from virtwire.net.stream import StreamBackend
from virtwire.server.hub import HubServer
from virtwire.server.tap import TapServer
from virtwire.v1 import e1000_pb2, netclient_pb2, orchestrator_pb2

from support.doubles import frame, until
from support.procs import serve

pytestmark = pytest.mark.timeout(180)

VIRTWIRE_SCRIPT = Path(sys.executable).parent / "virtwire"
EXAMPLE = Path(__file__).parent.parent / "examples" / "default.yaml"
STATUS_EXAMPLE = Path(__file__).parent / "data" / "status.json"
LINK_WORDS = {LINK_UP, LINK_SET_DOWN, LINK_PEER_GONE, LINK_CONNECTING}
Info = netclient_pb2.NetClientInfo


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(*args: str, env: dict[str, str] | None = None,
        ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
    """`virtwire ARGS` (the console script); its exit code in ``ok``, no traceback."""
    assert VIRTWIRE_SCRIPT.exists(), "pip install -e . makes the virtwire script"
    out = subprocess.run([str(VIRTWIRE_SCRIPT), *args], capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode in ok, (args, out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    return out


def _row(table: str, *first: str) -> str:
    """The line of ``table`` whose first columns are ``first``."""
    lines = [line for line in table.splitlines() if line.split()[:len(first)] == list(first)]
    assert len(lines) == 1, (first, table)
    return lines[0]


# -- the words, from NetClientInfo's fields ----------------------------------------------
@pytest.mark.parametrize(("info", "word"), [
    (Info(link_state=netclient_pb2.LINK_STATE_UP), LINK_UP),
    # A stream port with no client: its link to the hub is up, its backend is
    # not (link_down), which the backend column says; not "up (down)".
    (Info(link_state=netclient_pb2.LINK_STATE_UP, link_down=True, dials=True,
          backend_state=netclient_pb2.BACKEND_STATE_LISTENING), LINK_UP),
    # set_link down wins over everything else; not "up (set down)".
    (Info(link_state=netclient_pb2.LINK_STATE_UP, admin_down=True, link_down=True),
     LINK_SET_DOWN),
    (Info(link_state=netclient_pb2.LINK_STATE_CONNECTING, admin_down=True, dials=True),
     LINK_SET_DOWN),
    (Info(link_state=netclient_pb2.LINK_STATE_NO_PEER, admin_down=True), LINK_SET_DOWN),
    # This side dials and the link is not up: it redials.
    (Info(link_state=netclient_pb2.LINK_STATE_CONNECTING, link_down=True, dials=True,
          link_error="UnavailableError: peer 127.0.0.1:1/ unreachable"), LINK_CONNECTING),
    (Info(link_state=netclient_pb2.LINK_STATE_CONNECTING, link_down=True, dials=True),
     LINK_CONNECTING),
    # The peer dialled in and went away, or none has dialled in yet.
    (Info(link_state=netclient_pb2.LINK_STATE_CONNECTING, link_down=True), LINK_PEER_GONE),
    (Info(link_state=netclient_pb2.LINK_STATE_NO_PEER), LINK_PEER_GONE),
    (Info(), LINK_PEER_GONE),
])
def test_link_state_text(info: netclient_pb2.NetClientInfo, word: str) -> None:
    assert link_state_text(info) == word


def test_link_state_text_says_one_of_four_words_for_every_state() -> None:
    for admin, down, state, dials in itertools.product(
            (False, True), (False, True), netclient_pb2.LinkState.values(), (False, True)):
        info = Info(admin_down=admin, link_down=down, link_state=state, dials=dials)
        assert link_state_text(info) in LINK_WORDS, info


@pytest.mark.parametrize(("state", "text"), [
    (netclient_pb2.BACKEND_STATE_UNSPECIFIED, ""),
    (netclient_pb2.BACKEND_STATE_CONNECTED, "connected"),
    (netclient_pb2.BACKEND_STATE_LISTENING, "waiting for a client at 127.0.0.1:10555"),
    (netclient_pb2.BACKEND_STATE_CONNECTING, "connecting to 127.0.0.1:10555"),
])
def test_backend_text(state: netclient_pb2.BackendState, text: str) -> None:
    assert backend_text(Info(backend_state=state, backend_address="127.0.0.1:10555")) == text


# -- the fields, from the net/ objects -------------------------------------------------------
async def test_tap_server_reports_a_stream_backend_waiting_then_connected(
        hub: HubServer) -> None:
    tapsrv = TapServer("127.0.0.1:0")
    await tapsrv.start()
    try:
        be = await tapsrv.add_backend(parse_backend_spec(
            f"stream,listen=127.0.0.1:0,id=s0,peer={hub.address}/"))
        assert isinstance(be, StreamBackend)
        await until(lambda: tapsrv.registry.info(be).link_state == netclient_pb2.LINK_STATE_UP,
                    what="link up")
        info = tapsrv.registry.info(be)
        assert info.dials and info.link_down and not info.link_error
        assert info.backend_state == netclient_pb2.BACKEND_STATE_LISTENING
        assert info.backend_address == str(be.local_address)
        assert (link_state_text(info), backend_text(info)) == (
            "up", f"waiting for a client at {be.local_address}")
        _reader, writer = await asyncio.open_connection(be.local_address.host,
                                                        be.local_address.port)
        await until(lambda: not be.link_down, what="client connected")
        info = tapsrv.registry.info(be)
        assert info.backend_state == netclient_pb2.BACKEND_STATE_CONNECTED
        assert (link_state_text(info), backend_text(info)) == ("up", "connected")
        writer.close()
        await until(lambda: be.link_down, what="client gone")
        assert backend_text(tapsrv.registry.info(be)).startswith("waiting for a client at ")
        dg = await tapsrv.add_backend(parse_backend_spec(
            "dgram,local=127.0.0.1:0,remote=127.0.0.1:9,id=d0"))
        info = tapsrv.registry.info(dg)
        assert info.backend_state == netclient_pb2.BACKEND_STATE_CONNECTED
        assert info.backend_address.startswith("127.0.0.1:") and not info.dials
        assert link_state_text(info) == LINK_PEER_GONE  # no peer: what it reads is dropped
    finally:
        await tapsrv.stop(grace=0.2)
    port = hub.registry.info(hub.hub.ports[0])
    assert port.backend_state == netclient_pb2.BACKEND_STATE_UNSPECIFIED
    assert backend_text(port) == "" and not port.dials


# -- JSON ----------------------------------------------------------------------------------
def test_format_json_writes_64_bit_integers_as_numbers() -> None:
    resp = orchestrator_pb2.OrchestratorServiceGetStatusResponse(name="lan", state="running")
    node = resp.nodes.add(name="3685", kind="tap")  # a name of digits stays a string
    node.services.add(name="qemu0", pid=3685, restarts=2, healthy=True)
    node.netclients.add(name="qemu0", service="qemu0", info=Info(
        name="qemu0", kind="stream", link_state=netclient_pb2.LINK_STATE_UP, link_down=True,
        dials=True, backend_state=netclient_pb2.BACKEND_STATE_LISTENING,
        backend_address="127.0.0.1:10555",
        counters=netclient_pb2.NetClientCounters(rx_frames=7, dropped_total=1 << 60,
                                                 queue_len=3)))
    data = json.loads(format_json(resp))
    assert data["nodes"][0]["name"] == "3685"
    assert data["nodes"][0]["services"][0]["pid"] == 3685
    info = data["nodes"][0]["netclients"][0]["info"]
    assert info["counters"]["rx_frames"] == 7
    assert info["counters"]["dropped_total"] == 1 << 60  # beyond a double's 53 bits, exact
    assert info["counters"]["tx_bytes"] == 0 and info["counters"]["queue_len"] == 3
    assert info["link"] == "up" and info["link_state"] == "LINK_STATE_UP"
    assert info["backend"] == "waiting for a client at 127.0.0.1:10555"
    # The words sit next to the raw fields they come from.
    keys = list(info)
    assert keys.index("link") == keys.index("link_state") + 1
    assert keys.index("backend") == keys.index("backend_address") + 1
    stats = json.loads(format_json(e1000_pb2.GetStatsResponse(registers={"STATUS": 1 << 40})))
    assert stats["registers"] == {"STATUS": 1 << 40}  # map<string, uint64> values too


def _shape(value: Any) -> Any:
    """Keys and value types of a JSON document, the elements of a list merged."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        merged: Any = None
        for item in value:
            merged = _merge(merged, _shape(item))
        return [] if merged is None else [merged]
    return type(value).__name__


def _merge(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), (sorted(a), sorted(b))
        return {k: _merge(a[k], b[k]) for k in a}
    if isinstance(a, list) and isinstance(b, list):
        return [_merge(a[0] if a else None, b[0] if b else None)] if a or b else []
    assert a == b, (a, b)
    return a


# -- the console script on services ----------------------------------------------------------
def test_list_says_what_a_stream_port_and_its_hub_port_do(tmp_path: Path) -> None:
    with serve("hub", ["--port", "p1"], tmp_path) as hub:
        out = cli("list", "-s", hub.address)
        assert LINK_PEER_GONE in _row(out.stdout, "p1")  # nothing dialled in yet
        with serve("tap", ["--backend", "stream,listen=127.0.0.1:0,id=s0",
                           "--peer", f"{hub.address}/p1"], tmp_path) as tap:
            for _ in range(100):
                listing = json.loads(cli("list", "-s", tap.address, "--json").stdout)
                s0 = listing["netclients"][0]
                if s0["link"] == LINK_UP:
                    break
            assert s0["link"] == LINK_UP and s0["dials"] is True
            address = s0["backend_address"]
            assert address.startswith("127.0.0.1:") and not address.endswith(":0")
            assert s0["backend"] == f"waiting for a client at {address}"
            assert isinstance(s0["counters"]["rx_frames"], int)
            assert isinstance(s0["counters"]["queue_len"], int)
            # Both on this kernel: the link moved to the same-host socket.
            assert s0["link_transport"] == "unix"
            row = _row(cli("list", "-s", tap.address).stdout, "s0")
            assert " ".join(row.split()[2:11]) == (
                f"up (unix socket) waiting for a client at {address}"), row
            assert "(down)" not in row
            with socket.create_connection(("127.0.0.1", int(address.rsplit(":", 1)[1]))):
                for _ in range(100):
                    s0 = json.loads(cli("list", "-s", tap.address, "--json").stdout)[
                        "netclients"][0]
                    if s0["backend"] == "connected":
                        break
                assert (s0["link"], s0["backend"]) == (LINK_UP, "connected")
            out = cli("link", "-s", hub.address, "p1", "down")
            assert "p1: link down (set_link)" in out.stdout
            row = _row(cli("list", "-s", hub.address).stdout, "p1")
            assert LINK_SET_DOWN in row and "set down" not in row
            cli("link", "-s", hub.address, "p1", "up")
            assert LINK_UP in _row(cli("list", "-s", hub.address).stdout, "p1")
        # The tap is gone: the hub port waits for it to dial in again.
        p1 = next(nc for nc in json.loads(cli("list", "-s", hub.address, "--json").stdout)[
            "netclients"] if nc["name"] == "p1")
        assert p1["link"] == LINK_PEER_GONE and p1["dials"] is False


def test_a_dialer_whose_peer_is_gone_is_connecting(tmp_path: Path) -> None:
    with serve("hub", ["--port", "p1"], tmp_path) as hub_proc, \
            serve("tap", ["--backend", "stream,connect=127.0.0.1:1,id=c0",
                          "--peer", f"{hub_proc.address}/p1"], tmp_path) as tap:
        for _ in range(100):
            c0 = json.loads(cli("list", "-s", tap.address, "--json").stdout)["netclients"][0]
            if c0["link"] == LINK_UP:
                break
        assert c0["backend"] == "connecting to 127.0.0.1:1"
        hub_proc.stop()
        for _ in range(100):
            c0 = json.loads(cli("list", "-s", tap.address, "--json").stdout)["netclients"][0]
            if c0["link"] != LINK_UP and c0["link_error"]:
                break
        assert c0["link"] in (LINK_CONNECTING, LINK_PEER_GONE), c0
        assert c0["link_state"] == "LINK_STATE_CONNECTING" and c0["link_error"]
        row = _row(cli("list", "-s", tap.address).stdout, "c0")
        assert c0["link"] in row and "connecting to 127.0.0.1:1" in row


# -- the console script on a LAN -------------------------------------------------------------
@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], str]]:
    """examples/default.yaml, up; (the environment of its CLI, qemu0's listen address)."""
    tmp = tmp_path_factory.mktemp("lan")
    env = {**os.environ, "VIRTWIRE_STATE_DIR": str(tmp / "state")}
    listen = f"127.0.0.1:{_free_port()}"
    file = tmp / "lan.yaml"
    file.write_text(EXAMPLE.read_text().replace("127.0.0.1:10555", listen))
    cli("up", str(file), "--detach", env=env)
    try:
        yield env, listen
    finally:
        cli("down", "default", env=env, ok=(0, 1))


def test_status_says_up_and_waiting_then_down_set_link(lan: tuple[dict[str, str], str]
                                                       ) -> None:
    env, listen = lan
    table = cli("status", env=env).stdout
    row = _row(table.split("\n\n")[1], "qemu0", "qemu0").split()
    assert " ".join(row[2:11]) == f"up (unix socket) waiting for a client at {listen}", row
    assert "(down)" not in table and "(set down)" not in table
    cli("link", "vm2", "down", env=env)
    try:
        table = cli("status", env=env).stdout
        row = _row(table.split("\n\n")[1], "vm2", "vm2").split()
        assert " ".join(row[2:5]) == f"{LINK_SET_DOWN} -", table
        assert "set down" not in table
        data = json.loads(cli("status", "--json", env=env).stdout)
    finally:
        cli("link", "vm2", "up", env=env)
    infos = {nc["name"]: nc["info"] for n in data["nodes"] for nc in n["netclients"]
             if n["name"] != "hub0"}
    assert infos["vm2"]["link"] == LINK_SET_DOWN and infos["vm2"]["admin_down"] is True
    assert infos["vm1"]["link"] == LINK_UP and infos["vm1"]["backend"] == ""
    # Every link of a LAN under the process backend is on one kernel.
    assert {i["link_transport"] for i in infos.values()} == {"unix"}, infos
    assert infos["qemu0"]["backend"] == f"waiting for a client at {listen}"
    assert infos["qemu0"]["backend_address"] == listen
    for node in data["nodes"]:
        for svc in node["services"]:
            assert isinstance(svc["pid"], int) and svc["pid"] > 0
            assert isinstance(svc["restarts"], int)
        for nc in node["netclients"]:
            assert all(isinstance(v, int) for v in nc["info"]["counters"].values()), nc


def test_status_json_keeps_the_documented_shape(lan: tuple[dict[str, str], str]) -> None:
    """The keys and value types of `status --json` are tests/data/status.json's (the
    example docs/cli-json.md describes): a change to them updates both."""
    env, _ = lan
    got = json.loads(cli("status", "--json", env=env).stdout)
    assert _shape(got) == _shape(json.loads(STATUS_EXAMPLE.read_text()))


def _counters(env: dict[str, str]) -> dict[str, dict[str, int]]:
    """Each NetClient's counters in `status --json`, by NetClient name."""
    data = json.loads(cli("status", "--json", env=env).stdout)
    return {nc["name"]: nc["info"]["counters"] for n in data["nodes"] for nc in n["netclients"]}


def test_frames_to_a_vm_set_down_wait_then_drop_on_its_hub_port(
        lan: tuple[dict[str, str], str]) -> None:
    """What the hub sends a vm set down is held, then dropped on its hub port.

    The e1000 cannot receive while its link is down (STATUS.LU clear), so, as in
    QEMU, frames wait: on hub0port2's side of the link and in vm2's
    incoming_queue, which `status` shows as QUEUED. Once that holds nq_maxlen
    frames the hub port drops the rest (dropped_queue_full), shown as DROPPED on
    its row; vm2 itself neither receives nor drops anything. The hub port is
    not link_down (set_link on a NIC leaves its hub port alone).
    """
    env, _ = lan
    before = _counters(env)
    cli("link", "vm2", "down", env=env)
    try:
        cli("ping", "vm1", "vm2", "-c", "2", "-W", "0.2", env=env, ok=(1,))
        for _ in range(100):
            now = _counters(env)
            sent = now["hub0port2"]["tx_frames"] - before["hub0port2"]["tx_frames"]
            held = now["hub0port2"]["peer_queue_len"] + now["vm2"]["queue_len"]
            if sent and held == sent:
                break
        assert sent > 0 and held == sent, now
        netclients = cli("status", env=env).stdout.split("\n\n")[1]
        assert netclients.splitlines()[0].split()[-2:] == ["DROPPED", "QUEUED"], netclients
        port_row = _row(netclients, "hub0", "hub0port2").split()
        vm2_row = _row(netclients, "vm2", "vm2").split()
        assert int(port_row[-1]) + int(vm2_row[-1]) == sent, netclients
        # Past the queues' room (nq_maxlen on the hub port's side, a window at
        # most across the link): the rest is dropped on the hub port.
        cli("inject", "hub0:hub0port1", "--hex", frame(0, 60).hex(), "--repeat",
            str(NQ_MAXLEN + 4000), env=env)
        for _ in range(100):
            now = _counters(env)
            sent = now["hub0port2"]["tx_frames"] - before["hub0port2"]["tx_frames"]
            held = now["hub0port2"]["peer_queue_len"] + now["vm2"]["queue_len"]
            dropped = (now["hub0port2"]["dropped_total"]
                       - before["hub0port2"]["dropped_total"])
            if held + dropped == sent:
                break
        assert held + dropped == sent and dropped > 0, now
        assert now["hub0port2"]["dropped_queue_full"] - before["hub0port2"][
            "dropped_queue_full"] == dropped
        assert now["hub0port2"]["dropped_link_down"] == before["hub0port2"]["dropped_link_down"]
        for key in ("rx_frames", "dropped_total"):
            assert now["vm2"][key] == before["vm2"][key], (key, now["vm2"])
        netclients = cli("status", env=env).stdout.split("\n\n")[1]
        port_row = _row(netclients, "hub0", "hub0port2").split()
        assert int(port_row[-2]) == now["hub0port2"]["dropped_total"], netclients
        assert int(port_row[-1]) == now["hub0port2"]["peer_queue_len"] > 0, netclients
    finally:
        cli("link", "vm2", "up", env=env)


def test_a_port_that_listens_at_port_0_is_reachable_at_its_bound_port(
        tmp_path: Path) -> None:
    """`listen: 127.0.0.1:0` (and a dgram `local:` at port 0) under the process
    backend: `up` and `status` say the port the backend bound, not ':0'."""
    env = {**os.environ, "VIRTWIRE_STATE_DIR": str(tmp_path / "state")}
    file = tmp_path / "zero.yaml"
    file.write_text("name: zero\nnodes:\n  hub0: {kind: hub}\n"
                    "  s0: {kind: tap, backend: stream, listen: 127.0.0.1:0}\n"
                    "  d0: {kind: tap, backend: dgram, local: 127.0.0.1:0, "
                    "remote: 127.0.0.1:9}\n"
                    "links: [[s0, hub0], [d0, hub0]]\n")
    out = cli("up", str(file), "--detach", env=env)
    try:
        assert ":0;" not in out.stdout and not out.stdout.rstrip().endswith(":0"), out.stdout
        data = json.loads(cli("status", "zero", "--json", env=env).stdout)
        nodes = {n["name"]: n for n in data["nodes"]}
        bound = {name: nodes[name]["netclients"][0]["info"]["backend_address"]
                 for name in ("s0", "d0")}
        for name, address in bound.items():
            assert address.startswith("127.0.0.1:") and not address.endswith(":0"), bound
            assert nodes[name]["reachable_at"] == address, nodes[name]
        (started,) = [line for line in out.stdout.splitlines()
                      if line.startswith("service_started") and " s0 " in line]
        assert started.endswith(f"; its stream port listens at {bound['s0']}"), started
        (done,) = [line for line in out.stdout.splitlines() if line.startswith("done")]
        assert done.endswith(f"s0's stream port listens at {bound['s0']}; "
                             f"d0's dgram port listens at {bound['d0']}"), done
        ports = cli("status", "zero", env=env).stdout.split("\n\n")[2]
        assert _row(ports, "s0").split() == ["s0", "stream", bound["s0"]], ports
        assert _row(ports, "d0").split() == ["d0", "dgram", bound["d0"]], ports
        host, _, port = bound["s0"].rpartition(":")
        with socket.create_connection((host, int(port)), timeout=5):
            pass  # where it says, from this host
    finally:
        cli("down", "zero", env=env, ok=(0, 1))
