"""virtwire.testing: a pytest plugin that runs a LAN for a test module.

Installed with virtwire (the ``pytest11`` entry point), so any test module can
say which topology it wants and get a running LAN::

    import pytest

    pytestmark = pytest.mark.virtwire_topology("lan.yaml")   # relative to the test file

    def test_vm2_answers(virtwire_lan):
        assert virtwire_lan.ping("vm1", "vm2").ok
        virtwire_lan.netem("vm2", delay="20ms", loss="1%")
        virtwire_lan.inject("hub0:qemu0", frame)
        assert virtwire_lan.expect("vm2", "ethertype=0x0806", timeout=2)

The LAN comes up (``virtwire up FILE --detach``) before the module's first test
that uses ``virtwire_lan`` and goes down (``virtwire down``) after its last,
in a state directory of the pytest session's own (``VIRTWIRE_STATE_DIR``), so
it never meets a LAN the user runs. Every helper drives the real ``virtwire``
CLI, the same contract a user's scripts have; a failing command raises
``VirtwireCommandError`` with its output.

Options: ``--virtwire-backend process|docker`` (default process), and
``--virtwire-keep`` to leave LANs running after the session for a look.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from virtwire.errors import VirtwireError
from virtwire.topology import load_topology

__all__ = ["Lan", "PingResult", "VirtwireCommandError"]

#: Longest any one CLI call may take beyond its own timeout.
COMMAND_SLACK_S = 60.0
#: How long ``up`` may take.
UP_TIMEOUT_S = 180.0


class VirtwireCommandError(VirtwireError, AssertionError):
    """A ``virtwire`` command exited non-zero (or could not run in time)."""

    def __init__(self, argv: Sequence[str], returncode: int | None, output: str) -> None:
        shown = " ".join(argv)
        super().__init__(f"`virtwire {shown}` "
                         + (f"exited {returncode}" if returncode is not None else "timed out")
                         + (f":\n{output.strip()}" if output.strip() else ""))
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output


@dataclass(frozen=True)
class PingResult:
    transmitted: int
    received: int
    output: str
    #: Round trips in ms (0.0 when no reply came).
    rtt_min_ms: float = 0.0
    rtt_avg_ms: float = 0.0
    rtt_max_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.received > 0

    @property
    def loss(self) -> float:
        return 1 - self.received / self.transmitted if self.transmitted else 1.0


class Lan:
    """A running LAN, driven through the ``virtwire`` CLI."""

    def __init__(self, topology: Path, name: str, env: Mapping[str, str],
                 backend: str = "process") -> None:
        self.topology = topology
        self.name = name
        self.backend = backend
        self._env = dict(env)

    # -- running commands -------------------------------------------------------
    def run(self, *argv: str, check: bool = True, timeout: float = COMMAND_SLACK_S,
            ) -> subprocess.CompletedProcess[str]:
        """``virtwire ARGV...`` for this LAN; raises VirtwireCommandError on a
        non-zero exit when ``check``."""
        cmd = [sys.executable, "-m", "virtwire.cli", *argv]
        try:
            done = subprocess.run(cmd, env=self._env, capture_output=True, text=True,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            parts = [p.decode(errors="replace") if isinstance(p, bytes) else p
                     for p in (exc.stdout, exc.stderr) if p]
            raise VirtwireCommandError(argv, None, "".join(parts)) from None
        if check and done.returncode != 0:
            raise VirtwireCommandError(argv, done.returncode, done.stdout + done.stderr)
        return done

    def _lan(self) -> list[str]:
        return ["--lan", self.name]

    def up(self) -> None:
        self.run("up", str(self.topology), "--detach", "--backend", self.backend,
                 timeout=UP_TIMEOUT_S)

    def down(self) -> None:
        self.run("down", self.name, check=False, timeout=UP_TIMEOUT_S)

    # -- what users do --------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """``virtwire status --json``."""
        out = self.run("status", self.name, "--json", check=False).stdout
        result: dict[str, Any] = json.loads(out)
        return result

    def ping(self, src: str, dst: str, count: int = 3, interval: float = 0.2,
             wait: float = 2.0) -> PingResult:
        """``virtwire ping SRC DST``; never raises for lost replies (look at ``received``)."""
        done = self.run("ping", *self._lan(), src, dst, "--count", str(count),
                        "--interval", str(interval), "--wait", str(wait), check=False,
                        timeout=count * (interval + wait) + COMMAND_SLACK_S)
        transmitted = received = 0
        rtt = [0.0, 0.0, 0.0]
        for line in done.stdout.splitlines():
            if "transmitted" in line and "received" in line:
                words = line.replace(",", " ").split()
                transmitted = int(words[words.index("transmitted") - 1])
                received = int(words[words.index("received") - 1])
            if "min/avg/max" in line and "=" in line:
                rtt = [float(v) for v in line.split("=")[-1].split()[0].split("/")]
        if done.returncode not in (0, 1):
            raise VirtwireCommandError(["ping", src, dst], done.returncode,
                                       done.stdout + done.stderr)
        return PingResult(transmitted, received, done.stdout + done.stderr, *rtt)

    def inject(self, target: str, frame: bytes, repeat: int = 1) -> None:
        """Deliver ``frame`` to TARGET (NODE or HUB:PORT) as if from its peer."""
        self.run("inject", *self._lan(), target, "--hex", frame.hex(), "--repeat", str(repeat))

    def link(self, target: str, up: bool) -> None:
        self.run("link", *self._lan(), target, "up" if up else "down")

    def capture(self, target: str, path: Path | str, count: int = 0, duration: float = 0,
                direction: str = "both") -> Path:
        """``virtwire capture`` into a pcap at ``path`` (bounded by count or duration)."""
        argv = ["capture", *self._lan(), target, "-w", str(path), "--direction", direction]
        if count:
            argv += ["--count", str(count)]
        if duration:
            argv += ["--duration", str(duration)]
        self.run(*argv, timeout=(duration or 30) + COMMAND_SLACK_S)
        return Path(path)

    def expect(self, target: str, match: str, timeout: float = 2.0,
               while_doing: Callable[[], object] | None = None, every: float = 0.5) -> bool:
        """``virtwire expect TARGET --match MATCH``: True if a matching frame
        came within ``timeout``, False if none did.

        With ``while_doing``, the expectation starts first and ``while_doing()``
        runs then and again every ``every`` seconds until it is met or times
        out: the frame a test provokes (an inject, a link change) cannot pass
        before the watch has begun.
        """
        if while_doing is None:
            return self._expect(target, match, timeout, [])
        argv = ["expect", *self._lan(), target, "--match", match, "--timeout", f"{timeout}s"]
        proc = subprocess.Popen([sys.executable, "-m", "virtwire.cli", *argv], env=self._env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + timeout + COMMAND_SLACK_S
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                while_doing()
                try:
                    proc.wait(every)
                except subprocess.TimeoutExpired:
                    continue
        finally:
            if proc.poll() is None:
                proc.kill()
            out, _ = proc.communicate()
        if proc.returncode not in (0, 1):
            raise VirtwireCommandError(argv, proc.returncode, out)
        return proc.returncode == 0

    def expect_none(self, target: str, match: str, duration: float = 1.0) -> bool:
        """True if no matching frame came for ``duration`` seconds."""
        return self._expect(target, match, duration, ["--none"])

    def _expect(self, target: str, match: str, seconds: float, extra: list[str]) -> bool:
        done = self.run("expect", *self._lan(), target, "--match", match,
                        "--timeout", f"{seconds}s", *extra, check=False,
                        timeout=seconds + COMMAND_SLACK_S)
        if done.returncode not in (0, 1):
            raise VirtwireCommandError(["expect", target, "--match", match], done.returncode,
                                       done.stdout + done.stderr)
        return done.returncode == 0

    def netem(self, target: str, **settings: str | int | float) -> None:
        """``virtwire netem set TARGET --delay 20ms ...``: keyword names are the
        verb's options (delay, jitter, loss, rate, corrupt, duplicate, reorder,
        gap, limit, seed, queue)."""
        argv = ["netem", "set", *self._lan(), target]
        for key, value in settings.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        self.run(*argv)

    def netem_reset(self, target: str) -> None:
        self.run("netem", "reset", *self._lan(), target)

    def netem_show(self, target: str = "") -> str:
        return self.run("netem", "show", *self._lan(), *([target] if target else [])).stdout


# -- the plugin --------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("virtwire")
    group.addoption("--virtwire-backend", default="process", choices=("process", "docker"),
                    help="runtime for virtwire_lan LANs (default: process)")
    group.addoption("--virtwire-keep", action="store_true",
                    help="leave virtwire_lan LANs running after the tests")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "virtwire_topology(path): the topology file virtwire_lan brings up for "
        "this module (relative to the test file)")


def _lan_name(topology: Path) -> str:
    """The LAN's name, from the topology as ``virtwire up`` reads it (a bad
    file fails here, with its line)."""
    try:
        return load_topology(topology).name
    except VirtwireError as exc:
        raise pytest.UsageError(f"virtwire_topology: {exc}") from None


@pytest.fixture(scope="session")
def virtwire_state_dir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """The session's own virtwire state directory (VIRTWIRE_STATE_DIR of its
    LANs); kept, and named on stderr, with --virtwire-keep."""
    path = Path(tempfile.mkdtemp(prefix="virtwire-pytest-"))
    yield path
    if request.config.getoption("--virtwire-keep"):
        sys.stderr.write(f"\nvirtwire: LANs left running; VIRTWIRE_STATE_DIR={path} "
                         "virtwire status\n")
    else:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def virtwire_topology(request: pytest.FixtureRequest) -> Path:
    """The module's topology: its ``virtwire_topology`` mark; override this
    fixture to compute one."""
    mark = request.node.get_closest_marker("virtwire_topology")
    if mark is None or not mark.args:
        raise pytest.UsageError(
            f"{request.node.nodeid}: virtwire_lan needs pytest.mark.virtwire_topology(PATH) "
            "or a virtwire_topology fixture")
    path = Path(str(mark.args[0]))
    if not path.is_absolute():
        path = Path(str(request.node.path)).parent / path
    if not path.is_file():
        raise pytest.UsageError(f"virtwire_topology: {path} is not a file")
    return path


@pytest.fixture(scope="module")
def virtwire_lan(request: pytest.FixtureRequest, virtwire_topology: Path,
                 virtwire_state_dir: Path) -> Iterator[Lan]:
    """The module's LAN, up for its tests and down after the last."""
    env = {**os.environ, "VIRTWIRE_STATE_DIR": str(virtwire_state_dir)}
    lan = Lan(virtwire_topology, _lan_name(virtwire_topology), env,
              backend=request.config.getoption("--virtwire-backend"))
    lan.up()
    try:
        yield lan
    finally:
        if not request.config.getoption("--virtwire-keep"):
            lan.down()
