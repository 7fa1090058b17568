"""`virtwire demo` (make run) and the Makefile's run and link targets.

The demo runs as a user's shell runs it: the installed console script, with
its own session (a terminal's Ctrl-C reaches its process group), on a copy of
examples/default.yaml whose stream port is free, with its state in a
temporary directory. Stopped by a signal it tears its LAN down and exits 128
+ the signal (130 for Ctrl-C, 143 for SIGTERM) without a traceback, leaving
none of the LAN's processes; the commands it prints run as printed.
"""

from __future__ import annotations

import asyncio
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from virtwire.cli.exitcode import EXIT_INTERRUPTED
from virtwire.orchestrator import pids
from virtwire.orchestrator.core import LanState, read_state

from support.doubles import until
from support.qemu_vm import free_port

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).parent.parent
VIRTWIRE_SCRIPT = Path(sys.executable).parent / "virtwire"
EXAMPLE = REPO / "examples" / "default.yaml"
EXIT_TERMINATED = 128 + signal.SIGTERM
#: How long a LAN of 8 services may take to come up, and to go, on a busy machine.
LAN_START_S = 120.0
LAN_STOP_S = 60.0
TRAFFIC_LINE = re.compile(r"^\d\d:\d\d:\d\d  ping vm1 -> vm2 \(198\.18\.0\.2\): (time=\S+ ms|"
                          r"no reply)   frames through hub0: \d+   dropped: \d+$")


def _path_without_venv() -> str:
    """PATH as a shell without the venv activated has it (and no other virtwire)."""
    return os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if p and not (Path(p) / "virtwire").exists())


class Demo:
    """One `virtwire demo` run and what it printed."""

    def __init__(self, tmp: Path, *, on_path: bool = False) -> None:
        self.tmp = tmp
        self.state_dir = tmp / "state"
        self.file = tmp / "lan.yaml"
        self.file.write_text(EXAMPLE.read_text().replace("127.0.0.1:10555",
                                                         f"127.0.0.1:{free_port()}"))
        path = _path_without_venv()
        if on_path:
            path = f"{VIRTWIRE_SCRIPT.parent}{os.pathsep}{path}"
        self.env = {**os.environ, "VIRTWIRE_STATE_DIR": str(self.state_dir), "PATH": path}
        self.lines: list[str] = []
        self.state: LanState | None = None

    async def start(self, *args: str) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            str(VIRTWIRE_SCRIPT), "demo", str(self.file), *args, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=self.env, start_new_session=True)

    async def until_line(self, pattern: str, timeout: float = LAN_START_S) -> str:
        """Read stdout until a line matches ``pattern``; that line."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no line {pattern!r} in:\n" + "\n".join(self.lines)
            raw = await asyncio.wait_for(self.proc.stdout.readline(), left)
            assert raw, f"stdout ended before {pattern!r}:\n" + "\n".join(self.lines)
            line = raw.decode().rstrip("\n")
            self.lines.append(line)
            if re.search(pattern, line):
                return line

    async def cli(self, *args: str, timeout: float = LAN_STOP_S) -> tuple[int, str]:
        """Run `virtwire ARGS` on the demo's state: (exit code, its output)."""
        proc = await asyncio.create_subprocess_exec(
            str(VIRTWIRE_SCRIPT), *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=self.env)
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        assert proc.returncode is not None
        return proc.returncode, out.decode()

    def read_state(self) -> LanState:
        self.state = read_state("default", root=self.state_dir)
        return self.state

    async def finish(self, timeout: float = LAN_STOP_S) -> tuple[int, str]:
        """Wait for the demo to exit: (exit code, stderr); the rest of stdout is
        added to ``lines``."""
        out, err = await asyncio.wait_for(self.proc.communicate(), timeout)
        self.lines += out.decode().splitlines()
        assert self.proc.returncode is not None
        return self.proc.returncode, err.decode()

    def running(self) -> list[str]:
        """What of the LAN still runs: its recorded processes, and any process
        naming the temporary directory (the topology, the state dir)."""
        left = []
        if self.state is not None:
            s = self.state
            if pids.running(s.orchestrator_pid, s.orchestrator_start_time, s.boot_id):
                left.append(f"orchestrator pid {s.orchestrator_pid}")
            left += [f"{rec.name} pid {rec.pid}" for rec in s.services
                     if rec.pid and pids.running(rec.pid, rec.start_time, s.boot_id)]
        pgrep = subprocess.run(["pgrep", "-af", str(self.tmp)], capture_output=True, text=True)
        return left + pgrep.stdout.splitlines()

    async def assert_nothing_left(self) -> None:
        try:
            await until(lambda: not self.running(), timeout=10, what="the LAN's processes")
        except TimeoutError:
            pytest.fail(f"still running: {self.running()}")
        assert not (self.state_dir / "default").exists(), "the LAN's state is left"

    @property
    def out(self) -> str:
        return "\n".join(self.lines)


async def test_sigterm_tears_the_lan_down_and_recipes_run_as_printed(tmp_path: Path) -> None:
    demo = Demo(tmp_path)
    await demo.start()
    try:
        await demo.until_line(r"every 2 s; Ctrl-C stops the LAN")
        first = await demo.until_line(r"  ping vm1 -> vm2 ", timeout=30)
        second = await demo.until_line(r"  ping vm1 -> vm2 ", timeout=30)
        state = demo.read_state()
        assert len(state.services) == 8
        # A printed recipe runs as printed, virtwire not being on PATH.
        status = next(line.strip() for line in demo.lines
                      if line.startswith("  ") and line.endswith(" status default"))
        assert status.startswith(f"{VIRTWIRE_SCRIPT} "), status
        ran = await asyncio.create_subprocess_exec(
            "bash", "-c", status, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=demo.env)
        out, err = await asyncio.wait_for(ran.communicate(), 60)
        assert ran.returncode == 0, (out + err).decode()
        assert out.decode().startswith("LAN 'default': running"), out.decode()
        demo.proc.send_signal(signal.SIGTERM)
        rc, err_text = await demo.finish()
    finally:
        if demo.proc.returncode is None:
            demo.proc.kill()
    assert rc == EXIT_TERMINATED, (demo.out, err_text)
    assert "Traceback" not in err_text, err_text
    await demo.assert_nothing_left()
    # The banner and recipes once; then one line per ping, until the teardown.
    assert demo.out.count("== Try it while the LAN runs") == 1, demo.out
    assert demo.out.count("every 2 s") == 1, demo.out
    after = demo.lines[next(i for i, line in enumerate(demo.lines) if "every 2 s" in line) + 1:]
    down = after.index(f"== {VIRTWIRE_SCRIPT} down default")
    assert after[down - 1] == "" and after[down + 1:] == [
        "LAN 'default' is down (8 services stopped)"], after
    assert after[:2] == [first, second] and down >= 3, after
    assert all(TRAFFIC_LINE.match(line) for line in after[:down - 1]), after
    assert "not on PATH" in demo.out and "make install" in demo.out, demo.out


async def test_ctrl_c_during_the_first_ping_stops_it_and_the_lan(tmp_path: Path) -> None:
    """A terminal's Ctrl-C goes to the demo's process group; the ping it runs
    then has a group of its own, which the demo stops."""
    demo = Demo(tmp_path)
    await demo.start()
    try:
        await demo.until_line(r"is up \(orchestrator")
        demo.read_state()
        await demo.until_line(r"^== .* ping vm1 vm2 --count 5 --lan default")
        os.killpg(demo.proc.pid, signal.SIGINT)
        rc, err = await demo.finish()
    finally:
        if demo.proc.returncode is None:
            demo.proc.kill()
    assert rc == EXIT_INTERRUPTED, (demo.out, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "Try it while" not in demo.out, demo.out
    assert demo.out.rstrip().endswith("LAN 'default' is down (8 services stopped)"), demo.out
    await demo.assert_nothing_left()


async def test_once_shows_no_recipes_for_a_lan_that_goes(tmp_path: Path) -> None:
    demo = Demo(tmp_path, on_path=True)
    await demo.start("--once")
    try:
        await demo.until_line(r"is up \(orchestrator")
        demo.read_state()
        rc, err = await demo.finish(LAN_START_S)
    finally:
        if demo.proc.returncode is None:
            demo.proc.kill()
    assert rc == 0, (demo.out, err)
    assert "Traceback" not in err, err
    assert "Try it while the LAN runs" not in demo.out, demo.out
    assert "grpcurl" not in demo.out and "qemu-system" not in demo.out, demo.out
    assert "--once: the LAN stops now" in demo.out, demo.out
    # virtwire is on PATH: the commands are shown by name, each step once.
    banners = [line for line in demo.lines if line.startswith("== ")]
    assert banners == [f"== virtwire up {demo.file} --detach",
                       "== virtwire ping vm1 vm2 --count 5 --lan default   "
                       "# guest -> e1000 -> hub -> e1000 -> guest",
                       "== virtwire status default",
                       "== virtwire down default"], banners
    assert "not on PATH" not in demo.out
    await demo.assert_nothing_left()


async def test_a_running_lan_of_that_name_is_refused_not_stopped(tmp_path: Path) -> None:
    """The demo stops the LAN at its end: not one that ran before it."""
    demo = Demo(tmp_path)
    rc, out = await demo.cli("up", str(demo.file), "--detach", timeout=LAN_START_S)
    assert rc == 0, out
    try:
        state = demo.read_state()
        await demo.start("--once")
        rc, err = await demo.finish()
        assert rc == 1, (demo.out, err)
        assert "LAN 'default' is already running" in err and "Traceback" not in err, err
        assert demo.read_state().orchestrator_pid == state.orchestrator_pid
    finally:
        rc, out = await demo.cli("down", "default")
    assert rc == 0, out
    await demo.assert_nothing_left()


# -- the Makefile ----------------------------------------------------------------------
def _make(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`make -s ARGS` in the repository, the venv taken as installed."""
    return subprocess.run(["make", "-s", "-C", str(REPO), "-o", ".venv/.installed", *args],
                          capture_output=True, text=True, timeout=60, env=env)


def test_make_link_puts_virtwire_in_local_bin(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "PATH": _path_without_venv()}
    made = _make("link", env=env)
    assert made.returncode == 0, made.stdout + made.stderr
    link = tmp_path / ".local" / "bin" / "virtwire"
    assert link.is_symlink() and Path(os.readlink(link)) == REPO / ".venv" / "bin" / "virtwire"
    assert link.resolve() == VIRTWIRE_SCRIPT.resolve()
    assert f"linked {link} -> " in made.stdout, made.stdout
    assert f"{link.parent} is not on PATH" in made.stdout, made.stdout
    assert f'export PATH="{link.parent}:$PATH"' in made.stdout, made.stdout
    # Again, with ~/.local/bin on PATH: the link stays, and no advice.
    env["PATH"] = f"{link.parent}{os.pathsep}{env['PATH']}"
    made = _make("link", env=env)
    assert made.returncode == 0 and "not on PATH" not in made.stdout, made.stdout
    assert link.resolve() == VIRTWIRE_SCRIPT.resolve()
    # Someone else's virtwire there is left alone.
    link.unlink()
    link.write_text("#!/bin/sh\n")
    made = _make("link", env=env)
    assert made.returncode == 0 and "left alone" in made.stdout, made.stdout
    assert link.read_text() == "#!/bin/sh\n"


def _fake_venv(tmp: Path, body: str) -> Path:
    """A venv whose bin/virtwire is a Python script with ``body``."""
    venv = tmp / "venv"
    (venv / "bin").mkdir(parents=True)
    script = venv / "bin" / "virtwire"
    script.write_text(f"#!{sys.executable}\nimport sys, time\n{body}\n")
    script.chmod(0o755)
    return venv


def _make_run(venv: Path) -> list[str]:
    """`make run` with ``venv`` and no installing."""
    return ["make", "-s", "-C", str(REPO), "-o", f"{venv}/.installed", "-o", "debs",
            "-o", "link", "run", f"VENV={venv}"]


@pytest.mark.parametrize(("code", "failed"), [(130, False), (0, False), (1, True)])
def test_make_run_keeps_real_failures_only(tmp_path: Path, code: int, failed: bool) -> None:
    venv = _fake_venv(tmp_path, f"sys.exit({code})")
    made = subprocess.run(_make_run(venv), capture_output=True, text=True, timeout=60)
    assert (made.returncode != 0) == failed, made.stdout + made.stderr
    assert ("Error" in made.stderr) == failed, made.stderr


def test_ctrl_c_on_make_run_prints_no_make_error(tmp_path: Path) -> None:
    """At a terminal, Ctrl-C reaches make too: it stops quietly (killed by SIGINT,
    as any interrupted make), with neither "Error 130" nor "Interrupt"."""
    venv = _fake_venv(tmp_path, "try:\n    print('ready', flush=True)\n    time.sleep(60)\n"
                                "except KeyboardInterrupt:\n    print('stopped')\n"
                                "    sys.exit(130)")
    pid, fd = pty.fork()
    if pid == 0:  # the child: make on the pty, as in a terminal
        os.execvp("make", _make_run(venv))
    out = b""
    sent = False
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: the child closed the pty
                    break
                if not chunk:
                    break
                out += chunk
            if not sent and b"ready" in out:
                os.write(fd, b"\x03")  # the terminal's Ctrl-C
                sent = True
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    text = out.decode(errors="replace")
    assert sent and "stopped" in text, text
    assert "Error" not in text and "Interrupt" not in text and "***" not in text, text
    assert os.waitstatus_to_exitcode(status) in (0, -signal.SIGINT), (status, text)
