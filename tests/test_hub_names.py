"""A hub's ports are named after the hub (issue 9): `serve hub --name` and the
remote StartService options carry the name; a hub given none keeps QEMU's
``hub<ID>port<N>``.

CLI tests run the installed console script, as tests/test_cli.py does.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from virtwire.allowlist import RpcPolicy
from virtwire.errors import ConfigError
from virtwire.net.hub import HUB_NAME_MAX
from virtwire.orchestrator.spec import HubPortSpec, HubServiceSpec
from virtwire.orchestrator.start_options import from_start_request, to_start_options
from virtwire.v1 import orchestrator_pb2

from support.procs import serve

pytestmark = pytest.mark.timeout(120)

StartRequest = orchestrator_pb2.OrchestratorServiceStartServiceRequest

VIRTWIRE_SCRIPT = Path(sys.executable).parent / "virtwire"


def _virtwire(*args: str) -> subprocess.CompletedProcess[str]:
    assert VIRTWIRE_SCRIPT.exists(), "pip install -e . makes the virtwire script"
    return subprocess.run([str(VIRTWIRE_SCRIPT), *args], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize(("args", "ports"), [
    ((), ["hub0port1", "hub0port0"]),
    (("--hub-id", "3"), ["hub3port1", "hub3port0"]),
    (("--name", "sw"), ["swport1", "swport0"]),
    (("--name", "sw", "--hub-id", "3"), ["swport1", "swport0"]),
])
def test_serve_hub_names_its_ports_after_its_name(tmp_path: Path, args: tuple[str, ...],
                                                  ports: list[str]) -> None:
    with serve("hub", [*args, "--ports", "2"], tmp_path) as hub:
        out = _virtwire("list", "-s", hub.address)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    shown = {line.split()[0] for line in out.stdout.splitlines()[1:] if line.strip()}
    assert shown == set(ports), out.stdout


@pytest.mark.parametrize("name", ["s" * (HUB_NAME_MAX + 1), "a b", "sw/1"])
def test_serve_hub_refuses_a_name_its_ports_could_not_have(name: str) -> None:
    out = _virtwire("serve", "hub", "--listen", "127.0.0.1:0", "--name", name)
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr and "bad hub name" in out.stderr, out.stderr
    assert f"use 1 to {HUB_NAME_MAX}" in out.stderr, out.stderr


def test_a_remote_hub_gets_its_name() -> None:
    """StartService carries the hub's name, so a hub on another host names ports as
    the plan did; a name its ports could not have is refused there too."""
    policy = RpcPolicy(command="virtwire serve orchestrator")
    hub = HubServiceSpec(name="sw", ports=(HubPortSpec("swport0"), HubPortSpec("uplink")))
    back = from_start_request(StartRequest(**to_start_options(hub)), policy)
    assert back == hub and back.argv()[:2] == ["--name", "sw"]
    bad = orchestrator_pb2.StartHubOptions(name="s" * (HUB_NAME_MAX + 1))
    with pytest.raises(ConfigError, match="bad hub name"):
        from_start_request(StartRequest(hub=bad), policy)
