"""The `virtwire` entry point itself: exit codes, a closed stdout, Ctrl-C, help.

Each test runs the installed console script (what a user's shell runs), not
``python -m virtwire.cli``. A reader that goes away (``virtwire status | head
-1``) ends the command as SIGPIPE ends a coreutils one: no traceback, exit
141 (128 + SIGPIPE); Ctrl-C ends it with 130 (128 + SIGINT). A file the user
names that cannot be opened is a usage error (2) naming it, not a traceback.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

import virtwire
from virtwire.cli import build_parser
from virtwire.cli.exitcode import EXIT_BROKEN_PIPE, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE
from virtwire.cli.verbs import GROUPS, Verbs
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


async def _run(script: Path, *args: str, env: dict[str, str] | None = None
               ) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(script), *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
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
    await until(lambda: bool(port.capture_hooks), timeout=60)
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


@pytest.fixture
def no_lan(tmp_path: Path) -> dict[str, str]:
    """An environment whose state directory holds no LAN."""
    return {**os.environ, "VIRTWIRE_STATE_DIR": str(tmp_path / "state")}


@pytest.mark.parametrize(("args", "code", "message"), [
    # capture opens its file before it captures anything, from -s or from a LAN.
    (("capture", "-s", "{hub}", "hub0port0", "-w", "{missing}/x.pcap"), EXIT_USAGE,
     "cannot write {missing}/x.pcap: No such file or directory"),
    (("capture", "vm1", "-w", "{tmp}"), EXIT_USAGE, "cannot write {tmp}: Is a directory"),
    (("inject", "vm1", "--pcap", "{missing}/x.pcap"), EXIT_USAGE,
     "cannot read {missing}/x.pcap: No such file or directory"),
    (("validate", "{missing}/x.yaml"), EXIT_USAGE, "{missing}/x.yaml: cannot read: No such file"),
    (("up", "{missing}/x.yaml"), EXIT_USAGE, "{missing}/x.yaml: cannot read: No such file"),
    # render's own message; a write that fails there is the command failing (1).
    (("render", "compose", str(EXAMPLE), "-o", "{missing}/x.yaml"), EXIT_ERROR,
     "cannot write {missing}/x.yaml: No such file or directory"),
    (("certs", "init", "{file}/pki"), EXIT_USAGE, "cannot write {file}/pki: Not a directory"),
    (("certs", "issue", "{file}/pki", "alice"), EXIT_USAGE,
     "cannot read {file}/pki/ca.pem: Not a directory"),
    # serve stops at once when it cannot say it is ready.
    (("serve", "hub", "--listen", "127.0.0.1:0", "--ready-file", "{missing}/ready"),
     EXIT_USAGE, "cannot write {missing}/ready: No such file or directory"),
])
async def test_a_file_that_cannot_be_opened_is_named(
        script: Path, hub: HubServer, no_lan: dict[str, str], tmp_path: Path,
        args: Sequence[str], code: int, message: str) -> None:
    """`capture vm1 -w /nonexistent/dir/x.pcap` ended in a FileNotFoundError traceback."""
    hub.add_port()
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    names = {"hub": hub.address, "missing": str(tmp_path / "missing"), "tmp": str(tmp_path),
             "file": str(a_file)}
    rc, out, err = await _run(script, *(a.format(**names) for a in args), env=no_lan)
    assert rc == code, err
    assert err.startswith("virtwire: error: ") and message.format(**names) in err, err
    assert "Traceback" not in err
    assert out == "" and not (tmp_path / "missing").exists()
    assert not any(port.capture_hooks for port in hub.hub.ports), "nothing is captured"


async def test_ping_count_zero_is_refused(script: Path, no_lan: dict[str, str]) -> None:
    """`ping -c 0` sent 3 requests (0 was "the default"); ping(8) refuses it too."""
    for args in (("ping", "vm1", "vm2", "-c", "0"),
                 ("ping", "-s", "127.0.0.1:1", "198.18.0.1", "--count", "0")):
        rc, _, err = await _run(script, *args, env=no_lan)
        assert rc == EXIT_USAGE and "--count" in err and "at least 1" in err, (args, err)
        assert "Traceback" not in err


async def test_validate_prints_the_plan(script: Path, tmp_path: Path) -> None:
    """validate printed one line; the README promises the plan: every service in
    start order, where it runs, whom it dials, its addresses."""
    rc, out, err = await _run(script, "validate", str(EXAMPLE))
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"{EXAMPLE}: LAN 'default': 4 nodes, 3 links, 8 services")
    header = next(line for line in lines if line.startswith("SERVICE "))
    assert header.split()[:5] == ["SERVICE", "KIND", "NODE", "RUNS", "ON"]
    rows = {line.split()[0]: line for line in lines[lines.index(header) + 1:] if line.strip()
            and not line.startswith("(")}
    assert list(rows) == ["hub0", "vm1-guestmem", "vm1-e1000", "vm1-guest", "vm2-guestmem",
                          "vm2-e1000", "vm2-guest", "qemu0"]
    assert "this host" in rows["hub0"] and "ports qemu0, " in rows["hub0"]
    assert "vm1-guestmem (DMA), hub0/" in rows["vm1-e1000"]
    assert "mac 52:54:00:12:34:01" in rows["vm1-e1000"]
    assert "vm1-e1000 (MMIO, IRQ)" in rows["vm1-guest"] and "ip 198.18.0.1/24" in rows["vm1-guest"]
    assert "64 MiB RAM" in rows["vm2-guestmem"]
    assert "hub0/qemu0" in rows["qemu0"] and "stream listen=127.0.0.1:10555" in rows["qemu0"]
    # A warning is printed once as the topology words it, not as "warning: F:L: warning:".
    lonely = tmp_path / "lonely.yaml"
    lonely.write_text("name: lonely\nnodes:\n  hub0: {kind: hub}\n")
    rc, out, err = await _run(script, "validate", str(lonely))
    assert rc == 0 and "hub0" in out, err
    assert err.startswith(f"{lonely}:3: warning: ") and err.count("warning") == 1, err


async def test_down_with_nothing_running_says_so(script: Path, no_lan: dict[str, str]) -> None:
    """A second `down` exited 1: teardown is idempotent."""
    for args in (("down",), ("down", "gone"), ("down", "--lan", "gone")):
        rc, out, err = await _run(script, *args, env=no_lan)
        assert rc == 0, (args, err)
        assert "running" in out and out.endswith(": nothing to stop\n") and err == "", (args, out)


async def test_version(script: Path) -> None:
    rc, out, err = await _run(script, "--version")
    assert rc == 0 and out == f"virtwire {virtwire.__version__}\n", err


async def test_help_groups_the_verbs_and_every_verb_has_an_example(script: Path) -> None:
    """`--help` listed the verbs flat, serve first, with no examples."""
    parsers = next(a for a in build_parser()._actions if isinstance(a, Verbs)).choices
    verbs = list(parsers)
    assert sorted(verbs) == sorted(v for _, names in GROUPS for v in names), "a verb in no group"
    rc, out, err = await _run(script, "--help")
    assert rc == 0, err
    listed = [m.group(1) for m in re.finditer(r"^  ([a-z]+)  +\S", out, re.MULTILINE)]
    assert listed == [v for _, names in GROUPS for v in names], out
    assert listed[-1] == "certs" and listed[-2] == "serve"
    titles = [title for title, _ in GROUPS]
    assert [t.split()[0] for t in titles] == ["lifecycle", "inspect", "drive", "serve"]
    assert all(f"\n{title}:\n" in out for title in titles), out
    assert "example:\n  virtwire up " in out
    # Each verb's help, as `virtwire VERB --help` prints it (a process each is slow).
    for verb, parser in parsers.items():
        out = parser.format_help()
        description = out.split("\n\n")[1]
        assert description[:1].isupper() and not description.startswith(
            ("positional", "options")), (verb, out)
        assert f"example:\n  virtwire {verb} " in out or (
            verb == "certs" and "example:\n  virtwire certs " in out), (verb, out)


async def test_up_help_describes_file(script: Path) -> None:
    rc, out, err = await _run(script, "up", "--help")
    assert rc == 0, err
    assert re.search(r"^  FILE +the topology file \(YAML", out, re.MULTILINE), out


async def test_ctrl_c_on_a_foreground_up_is_quiet(script: Path, tmp_path: Path) -> None:
    """Ctrl-C on `virtwire up FILE` printed a timestamped log line; a LAN that was
    up stops as SIGTERM stops it: exit 0."""
    env = {**os.environ, "VIRTWIRE_STATE_DIR": str(tmp_path / "state")}
    topology = tmp_path / "fg.yaml"
    topology.write_text("name: fg\nnodes:\n  hub0: {kind: hub}\n")
    proc = await asyncio.create_subprocess_exec(
        str(script), "up", str(topology), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=env)
    assert proc.stdout is not None
    seen: list[str] = []
    while not seen or "Ctrl-C stops it" not in seen[-1]:
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert line, "".join(seen)
        seen.append(line)
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode() == "stopping LAN 'fg'\n", out.decode()
    assert not re.search(r"^\d{4}-\d\d-\d\d \d", err.decode(), re.MULTILINE), err.decode()
    assert "Traceback" not in err.decode() and "KeyboardInterrupt" not in err.decode()
    assert not (tmp_path / "state" / "fg").exists()


# -- a running LAN ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def hub_lan(tmp_path_factory: pytest.TempPathFactory, script: Path) -> Iterator[dict[str, str]]:
    """A LAN of one hub and one vm, up (detached) with its state in a temporary
    directory; the environment that finds it."""
    tmp = tmp_path_factory.mktemp("cli-lan")
    env = {**os.environ, "VIRTWIRE_STATE_DIR": str(tmp / "state")}
    (tmp / "lan.yaml").write_text("name: pipes\nnodes:\n  hub0: {kind: hub}\n"
                                  "  vm1: {kind: vm, ip: 198.18.0.1/24}\n"
                                  "links:\n  - [vm1, hub0]\n")
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


async def test_ping_names_an_unknown_vm(script: Path, hub_lan: dict[str, str]) -> None:
    """`ping vm1 vm9` answered "bad IPv4 address 'vm9'" (the guest's words)."""
    for args, unknown in ((("ping", "vm1", "vm9"), "vm9"), (("ping", "hub0", "vm1"), "hub0"),
                          (("ping", "vm1", "hub0", "--lan", "pipes"), "hub0")):
        rc, _, err = await _run(script, *args, env=hub_lan)
        assert rc == EXIT_USAGE, (args, err)
        assert f"no vm node '{unknown}' (known: vm1)" in err, (args, err)
        assert "Traceback" not in err and "IPv4" not in err, (args, err)


async def test_every_lan_verb_takes_lan(script: Path, hub_lan: dict[str, str]) -> None:
    """`status --lan NAME` was refused while `ping --lan NAME` worked."""
    for args in (("status", "--lan", "pipes"), ("status", "pipes"),
                 ("status", "pipes", "--lan", "pipes")):
        rc, out, err = await _run(script, *args, env=hub_lan)
        assert rc == 0 and out.startswith("LAN 'pipes': "), (args, err)
    rc, _, err = await _run(script, "status", "pipes", "--lan", "other", env=hub_lan)
    assert rc == EXIT_USAGE and "two LANs named" in err, err
    rc, out, err = await _run(script, "down", "--lan", "other", env=hub_lan)
    assert rc == 0 and "LAN 'other' is not running" in out, err
    rc, _, err = await _run(script, "status", "--lan", "pipes", env=hub_lan)
    assert rc == 0, "down --lan other left pipes alone"
