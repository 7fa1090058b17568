"""Per-frame tracing end to end (issue 13 item 2): a frame written into a stream
port is followed through the hub into a virtwire vm's e1000 and guest, across
three service processes, and its spans come back in order with the right parents
two ways: `virtwire trace` (TraceService rings, through the orchestrator) and
`up --trace-sample 1/1 --trace-file` (each service's JSON-lines file, written by
opentelemetry-sdk's exporter)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.procs import VIRTWIRE

pytestmark = pytest.mark.timeout(240)

LAN = """\
name: {name}
nodes:
  hub0: {{kind: hub}}
  vm1: {{kind: vm, mac: "52:54:00:12:34:01", ip: 198.18.0.1/24}}
  q0: {{kind: tap, backend: stream, listen: 127.0.0.1:{port}}}
links:
  - [vm1, hub0]
  - [q0, hub0]
"""

#: The hops of a frame from q0's stream port to vm1's guest: (span, service, parent span).
CHAIN = [
    ("tap.read", "q0", None),
    ("link.send", "q0", "tap.read"),
    ("hub.forward", "hub0", "link.send"),
    ("link.send", "hub0", "hub.forward"),
    ("e1000.receive", "vm1-e1000", "link.send"),
    ("dma.write", "vm1-e1000", "e1000.receive"),
    ("irq", "vm1-e1000", "e1000.receive"),
    ("guest.rx", "vm1-guest", "irq"),
]

#: An ARP request for vm1 (198.18.0.1) from 02:00:00:00:00:99 (198.18.0.99).
SRC_MAC = bytes.fromhex("020000000099")
ARP_REQUEST = (b"\xff" * 6 + SRC_MAC + b"\x08\x06"
               + bytes.fromhex("0001080006040001") + SRC_MAC + bytes([198, 18, 0, 99])
               + b"\0" * 6 + bytes([198, 18, 0, 1])).ljust(60, b"\0")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _up(tmp_path: Path, name: str, *flags: str) -> tuple[dict[str, str], int]:
    port = _free_port()
    (tmp_path / "lan.yaml").write_text(LAN.format(name=name, port=port))
    env = {**os.environ, "VIRTWIRE_STATE_DIR": str(tmp_path / "state")}
    up = subprocess.run([*VIRTWIRE, "up", str(tmp_path / "lan.yaml"), "--detach", *flags],
                        capture_output=True, text=True, timeout=120, env=env)
    assert up.returncode == 0, up.stdout + up.stderr
    return env, port


def _down(env: dict[str, str], name: str) -> None:
    down = subprocess.run([*VIRTWIRE, "down", name], capture_output=True, text=True,
                          timeout=60, env=env)
    assert down.returncode == 0, down.stdout + down.stderr


@pytest.fixture
def lan(tmp_path: Path) -> Iterator[tuple[dict[str, str], int]]:
    env, port = _up(tmp_path, "tlan")
    try:
        yield env, port
    finally:
        _down(env, "tlan")


def check_chain(spans: list[dict[str, Any]]) -> None:
    """``spans`` (name, service, span_id, parent_span_id, start) hold CHAIN, each
    hop's parent the hop before it, no hop starting before its parent."""
    by_id = {s["span_id"]: s for s in spans}
    found: dict[str, dict[str, Any]] = {}
    for name, service, parent in CHAIN:
        cands = [s for s in spans if s["name"] == name and s["service"] == service]
        if parent is not None:
            want = found[parent]
            cands = [s for s in cands if s["parent_span_id"] == want["span_id"]]
        assert cands, (f"no {name} span of {service} under {parent}: "
                       f"{[(s['name'], s['service']) for s in spans]}")
        span = cands[0]
        if parent is None:
            assert not span["parent_span_id"] or span["parent_span_id"] not in by_id
        else:
            assert span["start"] >= found[parent]["start"], (name, span, found[parent])
        # A link.send in the hub must be the hub's, not q0's, for the e1000 to hang off.
        found[name] = span
    assert found["irq"]["start"] >= found["tap.read"]["start"]


async def _trace_while_sending(env: dict[str, str], port: int, *args: str
                               ) -> tuple[int, str, str]:
    """`virtwire trace ARGS` while ARP_REQUEST goes into q0's stream port every
    100 ms (at most 200 frames), until it ends."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    proc = await asyncio.create_subprocess_exec(
        *VIRTWIRE, "trace", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    done = asyncio.ensure_future(proc.communicate())
    try:
        for _ in range(200):
            if done.done():
                break
            writer.write(struct.pack(">I", len(ARP_REQUEST)) + ARP_REQUEST)
            await writer.drain()
            await asyncio.wait({done}, timeout=0.1)
        out, err = await asyncio.wait_for(done, 60)
    finally:
        writer.close()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_virtwire_trace_follows_a_frame_from_a_stream_port_to_the_guest(
        lan: tuple[dict[str, str], int]) -> None:
    env, port = lan
    rc, out, err = await _trace_while_sending(
        env, port, "q0", "--match", "ethertype=arp,bytes@20=0001", "--count", "2",
        "--timeout", "30s", "--json")
    assert rc == 0, (out, err)
    frames = [json.loads(line) for line in out.splitlines()]
    assert len(frames) == 2, frames
    for frame in frames:
        spans = [{**s, "start": s["start_unix_nano"]} for s in frame["spans"]]
        check_chain(spans)
        # Every span of the frame is of its trace, and the table's order is causal.
        names = [s["name"] for s in frame["spans"]]
        assert (names.index("tap.read") < names.index("hub.forward")
                < names.index("e1000.receive") < names.index("irq"))
        assert all(s["hop_us"] is None or s["hop_us"] >= 0 for s in frame["spans"])
    assert frames[0]["trace_id"] != frames[1]["trace_id"]
    # And as the table users read.
    rc, out, err = await _trace_while_sending(env, port, "q0", "-m", "ethertype=arp",
                                              "-t", "30s")
    assert rc == 0, (out, err)
    for name, _, _ in CHAIN:
        assert name in out, out


def _file_spans(traces: Path) -> list[dict[str, Any]]:
    """Every span of every service's JSON-lines file (opentelemetry-sdk's own
    span JSON, one per line), as check_chain takes them."""
    spans = []
    for path in sorted(traces.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            span = json.loads(line)
            spans.append({
                "name": span["name"],
                "service": span["resource"]["attributes"]["service.name"],
                "trace_id": span["context"]["trace_id"],
                "span_id": span["context"]["span_id"],
                "parent_span_id": span.get("parent_id") or "",
                "start": span["start_time"],
            })
    return spans


def _complete(spans: list[dict[str, Any]], roots: list[dict[str, Any]]
              ) -> list[dict[str, Any]]:
    """The roots whose trace holds a span of every (name, service) of CHAIN."""
    want = {(name, service) for name, service, _ in CHAIN}
    return [r for r in roots
            if want <= {(s["name"], s["service"]) for s in spans
                        if s["trace_id"] == r["trace_id"]}]


async def test_every_frame_traced_into_the_services_json_lines_files(tmp_path: Path) -> None:
    env, port = _up(tmp_path, "tfile", "--trace-sample", "1/1", "--trace-file")
    traces = tmp_path / "state" / "tfile" / "traces"
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(5):
            writer.write(struct.pack(">I", len(ARP_REQUEST)) + ARP_REQUEST)
            await writer.drain()
            await asyncio.sleep(0.2)
        writer.close()
        # The batch span processors write within their schedule delay (5 s).
        deadline = time.monotonic() + 30
        while True:
            spans = _file_spans(traces)
            roots = [s for s in spans if s["name"] == "tap.read" and s["service"] == "q0"]
            complete = _complete(spans, roots)
            if len(complete) >= 5 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    finally:
        _down(env, "tfile")
    # Each service's processor writes on its own schedule; a service's exit
    # flushes what it still holds, so after `down` every file is whole.
    spans = _file_spans(traces)
    complete = _complete(spans, [s for s in spans
                                 if s["name"] == "tap.read" and s["service"] == "q0"])
    assert len(complete) >= 5, sorted({(s["name"], s["service"]) for s in spans})
    for root in complete[:5]:
        check_chain([s for s in spans if s["trace_id"] == root["trace_id"]])


def test_removing_a_lan_dir_keeps_its_trace_files(tmp_path: Path) -> None:
    from virtwire.orchestrator.core import DUMP_DIR, TRACES_DIR, remove_lan_dir
    from virtwire.orchestrator.statedir import private_dir

    lan = private_dir(tmp_path, "lab")
    assert lan is not None
    (lan / "state.json").write_text("{}")
    traces = private_dir(tmp_path, "lab", TRACES_DIR)
    dumps = private_dir(tmp_path, "lab", DUMP_DIR)
    assert traces is not None and dumps is not None
    (traces / "hub0.jsonl").write_text("{}\n")
    remove_lan_dir("lab", tmp_path)
    # The empty dump dir goes, the traces stay.
    assert sorted(p.name for p in lan.iterdir()) == [TRACES_DIR]
    assert (traces / "hub0.jsonl").read_text() == "{}\n"
    (traces / "hub0.jsonl").unlink()
    remove_lan_dir("lab", tmp_path)
    assert not lan.exists()
