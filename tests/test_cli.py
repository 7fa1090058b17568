"""The `virtwire` entry point itself: exit codes, a closed stdout, Ctrl-C.

Each test runs the installed console script (what a user's shell runs), not
``python -m virtwire.cli``. A reader that goes away (``virtwire status | head
-1``) ends the command as SIGPIPE ends a coreutils one: no traceback, exit
141 (128 + SIGPIPE); Ctrl-C ends it with 130 (128 + SIGINT).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from virtwire.cli.exitcode import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_USAGE
from virtwire.server.base import inject
from virtwire.server.hub import HubServer

from support.doubles import frame, until

pytestmark = pytest.mark.timeout(120)

#: The console script pip made from pyproject's [project.scripts].
VIRTWIRE_SCRIPT = Path(sys.executable).parent / "virtwire"
EXAMPLE = Path(__file__).parent.parent / "examples" / "default.yaml"


@pytest.fixture(scope="module")
def script() -> Path:
    assert VIRTWIRE_SCRIPT.exists(), "pip install -e . makes the virtwire script"
    return VIRTWIRE_SCRIPT


async def _run_closed(script: Path, *args: str, env: dict[str, str] | None = None
                      ) -> tuple[int, str]:
    """Run `virtwire ARGS` with its stdout a pipe whose reader is already gone;
    (exit code, stderr)."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = await asyncio.create_subprocess_exec(
            str(script), *args, stdout=write, stderr=subprocess.PIPE, env=env)
    finally:
        os.close(write)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def _run(script: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(script), *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_list_and_help_into_a_closed_pipe_end_quietly(script: Path,
                                                            hub: HubServer) -> None:
    for i in range(3):
        hub.add_port(f"p{i}")
    for args in (("list", "-s", hub.address), ("list", "-s", hub.address, "--json"),
                 ("validate", str(EXAMPLE)), ("--help",)):
        rc, err = await _run_closed(script, *args)
        # argparse itself ignores a failed write of its help, and exits 0.
        assert rc == EXIT_BROKEN_PIPE or (rc == 0 and args == ("--help",)), (args, err)
        assert "Traceback" not in err and "BrokenPipeError" not in err, (args, err)


async def test_capture_to_stdout_into_head_ends_quietly(script: Path, hub: HubServer) -> None:
    """`virtwire capture -w - | head -c 30`: the pcap stream's reader goes away."""
    port = hub.add_port("watched")
    hub.add_port("other")  # a hub with one port takes (and captures) nothing
    proc = await asyncio.create_subprocess_exec(
        str(script), "capture", "-s", hub.address, "watched", "-w", "-",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    await until(lambda: bool(port.capture_hooks), timeout=20)
    inject(port, frame(1))
    head = await asyncio.wait_for(proc.stdout.readexactly(30), 20)
    assert len(head) == 30  # the pcap header and the start of the first record
    proc._transport.get_pipe_transport(1).close()  # type: ignore[attr-defined]
    # Frames keep coming until a write finds the pipe closed.
    while proc.returncode is None:
        inject(port, frame(2))
        try:
            await asyncio.wait_for(proc.wait(), 0.05)
        except TimeoutError:
            continue
    err = (await proc.stderr.read()).decode()
    assert proc.returncode == EXIT_BROKEN_PIPE, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


async def test_ctrl_c_exits_130_without_a_traceback(script: Path, hub: HubServer) -> None:
    port = hub.add_port("watched")
    proc = await asyncio.create_subprocess_exec(
        str(script), "capture", "-s", hub.address, "watched", "-w", os.devnull,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    await until(lambda: bool(port.capture_hooks), timeout=20)
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == EXIT_INTERRUPTED, err.decode()
    assert "Traceback" not in err.decode() and "KeyboardInterrupt" not in err.decode()


@pytest.mark.parametrize(("args", "code", "message"), [
    # A name the server does not know: the caller's mistake.
    (("inject", "-s", "{hub}", "nosuch", "--hex", frame(1).hex()), EXIT_USAGE, "nosuch"),
    (("capture", "-s", "{hub}", "hub0port0", "-w", os.devnull, "--mac", "1:2"), EXIT_USAGE,
     "bad MAC"),
    (("inject", "-s", "{hub}", "hub0port0", "--hex", "zz"), EXIT_USAGE, "not hexadecimal"),
    # Nobody there: the command failed.
    (("list", "-s", "127.0.0.1:1", "--timeout", "2"), 1, "cannot reach 127.0.0.1:1"),
])
async def test_exit_codes(script: Path, hub: HubServer, args: Sequence[str], code: int,
                          message: str) -> None:
    hub.add_port()
    rc, _, err = await _run(script, *(a.format(hub=hub.address) for a in args))
    assert rc == code, err
    assert message in err and err.startswith("virtwire: error: "), err
    assert "Traceback" not in err


# -- a running LAN ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def hub_lan(tmp_path_factory: pytest.TempPathFactory, script: Path) -> Iterator[dict[str, str]]:
    """A LAN of one hub, up (detached) with its state in a temporary directory;
    the environment that finds it."""
    tmp = tmp_path_factory.mktemp("cli-lan")
    env = {**os.environ, "VIRTWIRE_STATE_DIR": str(tmp / "state")}
    (tmp / "lan.yaml").write_text("name: pipes\nnodes:\n  hub0: {kind: hub}\n")
    out = subprocess.run([str(script), "up", str(tmp / "lan.yaml"), "--detach"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    try:
        yield env
    finally:
        down = subprocess.run([str(script), "down", "pipes"], capture_output=True,
                              text=True, timeout=60, env=env)
        assert down.returncode == 0, down.stdout + down.stderr


async def test_status_into_a_closed_pipe_ends_quietly(script: Path,
                                                      hub_lan: dict[str, str]) -> None:
    """`virtwire status | head -1` once ended in a BrokenPipeError traceback."""
    for args in (("status",), ("status", "--json")):
        rc, err = await _run_closed(script, *args, env=hub_lan)
        assert rc == EXIT_BROKEN_PIPE, (args, err)
        assert "Traceback" not in err and "BrokenPipeError" not in err, (args, err)
    # Through a shell, as users type it.
    shell = await asyncio.create_subprocess_exec(
        "bash", "-o", "pipefail", "-c", f"'{script}' status | head -1",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=hub_lan)
    out, err = await asyncio.wait_for(shell.communicate(), 60)
    assert out.decode().startswith("LAN 'pipes': "), (out + err).decode()
    assert shell.returncode in (0, EXIT_BROKEN_PIPE), err.decode()
    assert b"Traceback" not in err
