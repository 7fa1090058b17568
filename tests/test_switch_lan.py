"""A LAN with a `kind: switch` node, brought up by `virtwire up` (process backend).

Frames are injected into switch ports through the orchestrator (as if the
node on that port had sent them) and watched with the orchestrator's
CountFrames on the other ports (what each port sends to its node): a unicast
to a learned MAC reaches only its port, VLAN 20 never sees VLAN 10, a trunk
gets VLAN 10 tagged. `virtwire fdb NODE` goes through the orchestrator.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from virtwire.v1 import netclient_pb2, orchestrator_pb2, orchestrator_pb2_grpc

from support.procs import VIRTWIRE

A, B, C = "02:00:00:00:0a:01", "02:00:00:00:0a:02", "02:00:00:00:14:01"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def frame(dst: str, src: str, tag: bytes = b"") -> bytes:
    return _mac(dst) + _mac(src) + tag + b"\x88\xb5" + b"virtwire-switch".ljust(46, b"\0")


TOPOLOGY = """\
name: swtest
nodes:
  sw:
    kind: switch
    aging: 120s
    ports:
      a: {{vlan: 10}}
      b: {{vlan: 10}}
      c: {{vlan: 20}}
      t: {{trunk: [10, 20]}}
  na: {{kind: tap, backend: stream, listen: 127.0.0.1:{p0}}}
  nb: {{kind: tap, backend: stream, listen: 127.0.0.1:{p1}}}
  nc: {{kind: tap, backend: stream, listen: 127.0.0.1:{p2}}}
  nt: {{kind: tap, backend: stream, listen: 127.0.0.1:{p3}}}
links:
  - [na, sw:a]
  - [nb, sw:b]
  - [nc, sw:c]
  - [nt, sw:t]
"""


class SwitchLan:
    def __init__(self, tmp: Path) -> None:
        self.dir = tmp
        self.env = {**os.environ, "VIRTWIRE_STATE_DIR": str(tmp / "state")}
        self.file = tmp / "swtest.yaml"
        self.file.write_text(TOPOLOGY.format(**{f"p{i}": _free_port() for i in range(4)}))

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*VIRTWIRE, *args], capture_output=True, text=True, timeout=60,
                              env=self.env)

    def address(self) -> str:
        state: dict[str, Any] = json.loads(
            (self.dir / "state" / "swtest" / "state.json").read_text())
        return str(state["orchestrator"])


@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwitchLan]:
    lan = SwitchLan(tmp_path_factory.mktemp("swlan"))
    out = lan.cli("up", str(lan.file), "--detach")
    assert out.returncode == 0, out.stdout + out.stderr
    try:
        yield lan
    finally:
        lan.cli("down", "swtest")


def _watch(stub: orchestrator_pb2_grpc.OrchestratorServiceStub, targets: list[str],
           match: str, inject: tuple[str, bytes], duration_ms: int = 1500) -> dict[str, int]:
    """CountFrames of ``match`` leaving each target port while ``inject`` is sent,
    once, after every watch has had time to subscribe."""
    counts: dict[str, int] = {}

    def count(target: str) -> None:
        resp = stub.CountFrames(orchestrator_pb2.OrchestratorServiceCountFramesRequest(
            target=target, match=match, direction=netclient_pb2.DIRECTION_TX,
            duration_ms=duration_ms), timeout=30)
        counts[target] = int(resp.count)

    threads = [threading.Thread(target=count, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # the watches subscribe (a capture each) before the frame goes
    got = stub.Inject(orchestrator_pb2.OrchestratorServiceInjectRequest(
        target=inject[0], frame=inject[1]), timeout=10)
    assert got.accepted == 1
    for thread in threads:
        thread.join(30)
    return counts


def test_unicast_to_a_learned_mac_reaches_only_its_port(lan: SwitchLan) -> None:
    with grpc.insecure_channel(lan.address()) as ch:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
        # B speaks first (a broadcast): the switch learns B on port b, VLAN 10.
        flood = _watch(stub, ["sw:a", "sw:b", "sw:c", "sw:t"], f"eth.src={B}",
                       ("sw:b", frame("ff:ff:ff:ff:ff:ff", B)))
        assert flood == {"sw:a": 1, "sw:b": 0, "sw:c": 0, "sw:t": 1}, flood
        # A to B: only port b sends it.
        uni = _watch(stub, ["sw:a", "sw:b", "sw:c", "sw:t"], f"eth.src={A}",
                     ("sw:a", frame(B, A)))
        assert uni == {"sw:a": 0, "sw:b": 1, "sw:c": 0, "sw:t": 0}, uni
        # VLAN 20 (port c) floods to the trunk only: VLAN 10's ports see nothing.
        v20 = _watch(stub, ["sw:a", "sw:b", "sw:t"], f"eth.src={C}",
                     ("sw:c", frame("ff:ff:ff:ff:ff:ff", C)))
        assert v20 == {"sw:a": 0, "sw:b": 0, "sw:t": 1}, v20
        # And what leaves the trunk for VLAN 20 carries its tag.
        tagged = _watch(stub, ["sw:t"], f"eth.src={C},vlan=20",
                        ("sw:c", frame("ff:ff:ff:ff:ff:ff", C)))
        assert tagged == {"sw:t": 1}
        # A tagged VLAN 20 frame in on the trunk reaches c untagged, not a or b.
        back = _watch(stub, ["sw:a", "sw:b", "sw:c"], "eth.src=02:00:00:00:14:99",
                      ("sw:t", frame(C, "02:00:00:00:14:99", b"\x81\x00\x00\x14")))
        assert back == {"sw:a": 0, "sw:b": 0, "sw:c": 1}, back


def test_fdb_through_the_orchestrator(lan: SwitchLan) -> None:
    with grpc.insecure_channel(lan.address()) as ch:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
        stub.Inject(orchestrator_pb2.OrchestratorServiceInjectRequest(
            target="sw:a", frame=frame("ff:ff:ff:ff:ff:ff", A)), timeout=10)
    out = lan.cli("fdb", "sw", "--json")
    assert out.returncode == 0, out.stderr
    entries = {(e["mac"], e["vlan"], e["port"]) for e in json.loads(out.stdout)["entries"]}
    assert (A, 10, "a") in entries
    text = lan.cli("fdb", "sw")
    assert text.returncode == 0 and A in text.stdout and "aging 120s" in text.stdout
    ports = lan.cli("fdb", "sw", "--ports", "--json")
    names = {p["port"]["name"]: p for p in json.loads(ports.stdout)["ports"]}
    assert names["t"]["vlans"]["trunk"] and names["a"]["vlans"]["vlan"] == 10
    flush = lan.cli("fdb", "sw", "--flush", "--vlan", "10")
    assert flush.returncode == 0 and "flushed" in flush.stdout, flush.stderr
    after = json.loads(lan.cli("fdb", "sw", "--json").stdout)["entries"]
    assert all(e["vlan"] != 10 for e in after)
    # Not a switch, or no such node: NOT_FOUND, a message, a non-zero exit.
    for node in ("na", "nosuch"):
        bad = lan.cli("fdb", node)
        assert bad.returncode != 0 and "no switch node" in bad.stderr, bad.stderr
    # The filtered-frame counter is in the status users already see.
    status = json.loads(lan.cli("status", "swtest", "--json").stdout)
    sw = next(n for n in status["nodes"] if n["name"] == "sw")
    assert all("dropped_switch" in nc["info"]["counters"] for nc in sw["netclients"])


TRUNK_TOPOLOGY = """\
name: swtrunk
nodes:
  sw0:
    kind: switch
    ports:
      a: {{vlan: 10}}
      trunk: {{trunk: [10, 20]}}
  sw1:
    kind: switch
    ports:
      a: {{vlan: 10}}
      b: {{vlan: 20}}
      up: {{trunk: [10, 20]}}
  n0: {{kind: tap, backend: stream, listen: 127.0.0.1:{p0}}}
  n1: {{kind: tap, backend: stream, listen: 127.0.0.1:{p1}}}
  n2: {{kind: tap, backend: stream, listen: 127.0.0.1:{p2}}}
links:
  - [n0, sw0:a]
  - [n1, sw1:a]
  - [n2, sw1:b]
  - [sw1:up, sw0:trunk]
"""


def test_a_trunk_carries_vlan_10_to_a_second_switch_and_not_to_vlan_20(
        tmp_path: Path) -> None:
    """sw1 dials sw0 from its port up; both ends are trunks. A VLAN 10 frame
    from sw0:a crosses the trunk tagged and leaves sw1 at its VLAN 10 port
    untagged, not at its VLAN 20 port; and sw1 learned the MAC on up."""
    lan = SwitchLan(tmp_path)
    lan.file.write_text(TRUNK_TOPOLOGY.format(**{f"p{i}": _free_port() for i in range(3)}))
    out = lan.cli("up", str(lan.file), "--detach")
    assert out.returncode == 0, out.stdout + out.stderr
    try:
        state = json.loads((lan.dir / "state" / "swtrunk" / "state.json").read_text())
        with grpc.insecure_channel(state["orchestrator"]) as ch:
            stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
            got = _watch(stub, ["sw1:a", "sw1:b", "sw1:up", "sw0:trunk"], f"eth.src={A}",
                         ("sw0:a", frame("ff:ff:ff:ff:ff:ff", A)))
            # sw0:trunk and sw1:up send to each other: sw0's trunk carries it (tagged)
            # towards sw1, and sw1's up port never sends it back.
            assert got == {"sw1:a": 1, "sw1:b": 0, "sw1:up": 0, "sw0:trunk": 1}, got
            tagged = _watch(stub, ["sw0:trunk"], f"eth.src={A},vlan=10",
                            ("sw0:a", frame("ff:ff:ff:ff:ff:ff", A)))
            assert tagged == {"sw0:trunk": 1}
        fdb = json.loads(lan.cli("fdb", "sw1", "--lan", "swtrunk", "--json").stdout)
        assert [(e["mac"], e["vlan"], e["port"]) for e in fdb["entries"]] == [(A, 10, "up")]
    finally:
        lan.cli("down", "swtrunk")
