"""Where an Orchestrator's services run: the Backend protocol and ProcessBackend.

A backend starts one virtwire service (``virtwire serve KIND ARGS``), says
whether it still runs, and stops it. Three exist, one per module:

- ``ProcessBackend`` (here): local child processes on loopback ports;
- ``DockerBackend`` (``docker.py``): one container per service on an internal
  network with a 198.18.0.0/15 subnet, through the docker SDK;
- ``RemoteBackend`` (``remote.py``): another host's ``virtwire serve
  orchestrator``, which runs the services with its own ProcessBackend.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Protocol

from virtwire.errors import BackendError
from virtwire.launch import VIRTWIRE_CMD

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 20.0
#: The service kinds a backend runs (``serve orchestrator`` is not one of them).
SERVICE_KINDS = ("hub", "tap", "guestmem", "e1000", "guest")


class Backend(Protocol):
    """Runs services for one LAN."""

    #: "process", "docker" or "remote" (kept in the state file).
    kind: str

    def listen_address(self, name: str) -> str:
        """The --listen address service ``name`` gets when first started."""

    async def open(self) -> None:
        """Prepare (a network, a connection); BackendError when impossible."""

    async def start(self, name: str, kind: str, args: list[str],
                    listen: str) -> tuple[str, int]:
        """Start ``virtwire serve KIND --listen LISTEN ARGS``; (address, pid).

        Returns once the service listens; BackendError (with its log) if it
        exits or does not come up in time.
        """

    async def exited(self, name: str) -> str | None:
        """None while service ``name`` runs; else why it does not (e.g. "exit 1")."""

    async def stop(self, name: str, timeout: float = 5.0) -> None:
        """Stop service ``name`` (SIGTERM, then SIGKILL); nothing if unknown."""

    async def close(self) -> None:
        """Stop what is left and release what ``open`` took."""


#: Run before the service's own command: PR_SET_PDEATHSIG(SIGKILL), then exec.
#: A wrapper, not preexec_fn: Python code between fork and exec would run
#: grpc's at-fork handlers in the child, which breaks its poller.
_DIE_WITH_PARENT = (
    "import ctypes, os, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, 9)\n"  # PR_SET_PDEATHSIG, SIGKILL
    "if os.getppid() != int(sys.argv[1]): os._exit(1)\n"  # the parent already died
    "os.execv(sys.argv[2], sys.argv[2:])\n")


def _spawn(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    """A child in its own process group that dies with this process."""
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()),
                                 *cmd], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                process_group=0)


class ProcessBackend:
    """Services as local child processes (``virtwire serve KIND``), logs in ``workdir``.

    ``host`` is the address services listen on (loopback unless the LAN spans hosts).
    """

    kind = "process"

    def __init__(self, workdir: Path, host: str = "127.0.0.1") -> None:
        self.workdir = workdir
        self.host = host
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def listen_address(self, name: str) -> str:
        return f"{self.host}:0"

    async def open(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)

    async def start(self, name: str, kind: str, args: list[str],
                    listen: str) -> tuple[str, int]:
        """Start a service and wait for its ready file; (address, pid)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        ready = self.workdir / f"{name}.ready"
        ready.unlink(missing_ok=True)
        log = self.workdir / f"{name}.log"
        # Spawned from the event loop's thread: PDEATHSIG follows the thread
        # that forked, and this one lives as long as the orchestrator.
        proc = _spawn([*VIRTWIRE_CMD, "serve", kind, "--listen", listen, *args,
                       "--ready-file", str(ready)], log)
        self.procs[name] = proc
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (ready.exists() and ready.read_text().strip()):
            if proc.poll() is not None:
                raise BackendError(f"{name}: virtwire serve {kind} exited with "
                                   f"{proc.returncode}:\n{log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                await self.stop(name, timeout=0)
                raise BackendError(f"{name}: did not start in {START_TIMEOUT_S:.0f}s:\n"
                                   + log.read_text()[-2000:])
            await asyncio.sleep(0.02)
        return ready.read_text().strip(), proc.pid

    async def exited(self, name: str) -> str | None:
        proc = self.procs.get(name)
        if proc is None:
            return "not started"
        code = proc.poll()
        return None if code is None else f"exit {code}"

    async def stop(self, name: str, timeout: float = 5.0) -> None:
        """SIGTERM the service's process group, then SIGKILL it."""
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        if proc.poll() is None and timeout > 0:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                await asyncio.to_thread(proc.wait, timeout)
            except subprocess.TimeoutExpired:
                logger.warning("%s (pid %d) ignored SIGTERM; killing", name, proc.pid)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything left in its group
        except (ProcessLookupError, PermissionError):
            pass
        await asyncio.to_thread(proc.wait)

    async def close(self) -> None:
        for name in reversed(list(self.procs)):
            await self.stop(name)
