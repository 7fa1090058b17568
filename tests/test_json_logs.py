"""--log-format json (issue 13 item 5): one JSON object per log line, with the service,
and the NetClient where a log call is about one; text stays as it was."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from virtwire import logfmt
from virtwire.orchestrator.runtime.process import ProcessRuntime
from virtwire.orchestrator.spec import HubPortSpec, HubServiceSpec
from virtwire.v1 import netclient_pb2, netclient_pb2_grpc

from support.doubles import until
from support.procs import VIRTWIRE, serve

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def _json_lines(log: Path) -> list[dict[str, Any]]:
    """Every line of ``log`` as JSON (a line that is not fails the test)."""
    out = []
    for line in log.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            assert isinstance(record, dict), line
            out.append(record)
    return out


def _set_link(address: str, name: str, up: bool) -> None:
    with grpc.insecure_channel(address) as channel:
        netclient_pb2_grpc.NetClientServiceStub(channel).SetLink(
            netclient_pb2.SetLinkRequest(name=name, up=up), timeout=5)


@pytest.fixture
def json_hub(tmp_path: Path) -> Iterator[Any]:
    with serve("hub", ["--name", "h", "--ports", "2", "--log-format", "json",
                       "--log-name", "hub0"], tmp_path) as hub:
        yield hub


async def test_a_served_hub_writes_json_lines_with_the_fields(json_hub: Any) -> None:
    _set_link(json_hub.address, "hport1", False)
    await until(lambda: any("set_link" in r["msg"] for r in _json_lines(json_hub.log)))
    records = _json_lines(json_hub.log)
    for record in records:
        assert {"ts", "level", "logger", "service", "kind", "msg"} <= record.keys(), record
        assert RFC3339_UTC.match(record["ts"]), record["ts"]
        datetime.fromisoformat(record["ts"].replace("Z", "+00:00"))
        assert record["service"] == "hub0" and record["kind"] == "hub"
        assert "trace_id" not in record and "span_id" not in record  # no tracing yet
    listening = next(r for r in records if "listening on" in r["msg"])
    assert listening["level"] == "INFO" and listening["logger"] == "virtwire.server.base"
    # A NetClient event carries it: the ports made at start, then SetLink.
    added = [r for r in records if "added port" in r["msg"]]
    assert [r["netclient"] for r in added] == ["hport0", "hport1"]
    link = next(r for r in records if "set_link" in r["msg"])
    assert link["netclient"] == "hport1" and link["msg"] == "set_link hport1 down"
    assert link["address"] == json_hub.address
    assert "netclient" not in listening


async def test_text_format_is_unchanged(tmp_path: Path) -> None:
    with serve("hub", ["--ports", "1"], tmp_path) as hub:
        _set_link(hub.address, "hub0port0", False)
        await until(lambda: "set_link" in hub.log.read_text())
        lines = [line for line in hub.log.read_text().splitlines() if line.strip()]
    line = next(line for line in lines if "set_link" in line)
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} hub@\S+ INFO "
                    r"virtwire\.server\.base: set_link hub0port0 down$", line), line
    assert not any(line.startswith("{") for line in lines)


def test_a_bad_log_format_is_a_cli_error(tmp_path: Path) -> None:
    out = subprocess.run([*VIRTWIRE, "serve", "hub", "--log-format", "xml"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "--log-format: invalid choice: 'xml' (choose from 'text', 'json')" in out.stderr


def test_exceptions_are_one_exc_string() -> None:
    logfmt.identity.kind, logfmt.identity.name = "", ""
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed %s", ("now",),
                                   exc_info=sys.exc_info())
    line = logfmt.JsonFormatter().format(record)
    assert "\n" not in line
    got = json.loads(line)
    assert got["msg"] == "failed now" and got["service"] == "virtwire"
    assert got["exc"].startswith("Traceback") and "ValueError: boom" in got["exc"]


async def test_the_orchestrator_passes_its_log_format_on(tmp_path: Path) -> None:
    runtime = ProcessRuntime(tmp_path / "lan")
    await runtime.open()
    logfmt.set_log_format("json")
    try:
        await runtime.start("sw0", HubServiceSpec(ports=(HubPortSpec("p0"),)), "127.0.0.1:0")
    finally:
        logfmt.set_log_format("text")
        await runtime.close()
    records = _json_lines(tmp_path / "lan" / "sw0.log")
    added = next(r for r in records if "added port" in r["msg"])
    assert added["service"] == "sw0" and added["netclient"] == "p0"


# -- a LAN's services: up --log-format, the docker runtime, render ---------------------------
TINY_LAN = """\
name: {name}
nodes:
  hub0: {{kind: hub}}
  q0: {{kind: tap, backend: stream, listen: 127.0.0.1:{port}}}
links:
  - [q0, hub0]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tiny_lan(tmp_path: Path, name: str) -> tuple[Path, dict[str, str]]:
    file = tmp_path / f"{name}.yaml"
    file.write_text(TINY_LAN.format(name=name, port=_free_port()))
    return file, {**os.environ, "VIRTWIRE_STATE_DIR": str(tmp_path / "state")}


def _check_service_logs(lan_dir: Path) -> None:
    """Each service's log in the LAN's state dir is JSON lines naming it."""
    for name in ("hub0", "q0"):
        records = _json_lines(lan_dir / f"{name}.log")
        assert records and {r["service"] for r in records} == {name}, records
        assert any("listening on" in r["msg"] for r in records)
    added = [r for r in _json_lines(lan_dir / "hub0.log") if "added port" in r["msg"]]
    assert [r["netclient"] for r in added] == ["hub0port0"]


def test_up_detached_log_format_json(tmp_path: Path) -> None:
    file, env = _tiny_lan(tmp_path, "jlan")
    up = subprocess.run([*VIRTWIRE, "up", str(file), "--detach", "--log-format", "json"],
                        capture_output=True, text=True, timeout=120, env=env)
    try:
        assert up.returncode == 0, (up.stdout, up.stderr)
        _check_service_logs(tmp_path / "state" / "jlan")
        # The orchestrator's own log, beside the LAN's dir.
        records = _json_lines(tmp_path / "state" / "jlan.orchestrator.log")
        assert records and {r["kind"] for r in records} == {"orchestrator"}, records
    finally:
        down = subprocess.run([*VIRTWIRE, "down", "jlan"], capture_output=True, text=True,
                              timeout=60, env=env)
        assert down.returncode == 0, down.stderr


def test_up_in_the_foreground_log_format_json(tmp_path: Path) -> None:
    file, env = _tiny_lan(tmp_path, "flan")
    proc = subprocess.Popen([*VIRTWIRE, "-v", "up", str(file), "--log-format", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "is up" in line or line.startswith("error"):
                break
        assert "is up" in line, line
        _check_service_logs(tmp_path / "state" / "flan")
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    # The orchestrator in this process logs in JSON too (-v: its INFO events), as itself.
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    listening = next(r for r in records if "orchestrator listening on" in r["msg"])
    assert listening["service"] == listening["kind"] == "orchestrator", listening


def test_the_docker_runtime_passes_the_log_format() -> None:
    """Planned without an engine, as ProcessRuntime passes it."""
    from virtwire.orchestrator.runtime.docker import DockerRuntime
    from virtwire.topology import parse_topology

    topo = parse_topology(TINY_LAN.format(name="d", port=10555), "lan.yaml")
    runtime = DockerRuntime(topo)
    assert "--log-format" not in runtime._command("hub0", HubServiceSpec())
    logfmt.set_log_format("json")
    try:
        command = runtime._command("hub0", HubServiceSpec())
    finally:
        logfmt.set_log_format("text")
    assert command[:2] == ["serve", "hub"]
    assert command[-4:] == ["--log-format", "json", "--log-name", "hub0"]
