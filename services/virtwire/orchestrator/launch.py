"""Start virtwire services as child processes (`virtwire serve KIND ...`).

Each child writes its bound gRPC address to a ready file once it serves, so
callers can use port 0; ``wait_ready`` (and ``wait_ready_blocking``) is the
one poll of that file. Children are stopped with SIGTERM (graceful), then
SIGKILL after a timeout; none is left behind.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from virtwire.errors import BackendError

logger = logging.getLogger(__name__)

VIRTWIRE_CMD = [sys.executable, "-m", "virtwire.cli"]
READY_POLL_S = 0.02
#: The child's exit status (Popen's convention), None while it runs.
ExitStatus = Callable[[], int | None]


class NotReady(BackendError):
    """A child wrote no address to its ready file: it exited with ``status``,
    or (``status`` None) it did not within the timeout."""

    def __init__(self, status: int | None, timeout: float) -> None:
        super().__init__(f"exited with {status}" if status is not None
                         else f"did not start in {timeout:.0f}s")
        self.status = status


def _ready_address(ready: Path, exit_status: ExitStatus, deadline: float,
                   timeout: float) -> str:
    """The address in ``ready``; "" while the child runs and has written none yet."""
    if ready.exists():
        address = ready.read_text().strip()
        if address:
            return address
    status = exit_status()
    if status is not None:
        raise NotReady(status, timeout)
    if time.monotonic() > deadline:
        raise NotReady(None, timeout)
    return ""


async def wait_ready(ready: Path, exit_status: ExitStatus, timeout: float) -> str:
    """The address a starting child writes to ``ready``; NotReady if it exits
    first or writes none within ``timeout`` seconds (it is left running)."""
    deadline = time.monotonic() + timeout
    while True:
        address = _ready_address(ready, exit_status, deadline, timeout)
        if address:
            return address
        await asyncio.sleep(READY_POLL_S)


def wait_ready_blocking(ready: Path, exit_status: ExitStatus, timeout: float) -> str:
    """``wait_ready`` for callers without an event loop (it sleeps)."""
    deadline = time.monotonic() + timeout
    while not (address := _ready_address(ready, exit_status, deadline, timeout)):
        time.sleep(READY_POLL_S)
    return address


class ServiceProcess:
    """A running `virtwire serve KIND` child; ``address`` is its gRPC address."""

    def __init__(self, kind: str, proc: subprocess.Popen[bytes], address: str,
                 log: Path) -> None:
        self.kind = kind
        self.proc = proc
        self.address = address
        self.log = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kib(self) -> int:
        """Resident memory of the child, from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise BackendError(f"no VmRSS for pid {self.pid}")

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait, then SIGKILL; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("%s (pid %d) ignored SIGTERM; killing", self.kind, self.pid)
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_service(kind: str, args: Sequence[str], workdir: Path,
                  timeout: float = 20.0) -> ServiceProcess:
    """Start `virtwire serve KIND ARGS` and wait until it serves.

    Raises BackendError with the child's log when it exits or does not come up.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    ready = workdir / f"{kind}-{time.monotonic_ns()}.ready"
    log = ready.with_suffix(".log")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*VIRTWIRE_CMD, "serve", kind, *args, "--ready-file", str(ready)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        address = wait_ready_blocking(ready, proc.poll, timeout)
    except NotReady as exc:
        if exc.status is None:
            proc.kill()
            proc.wait()
        raise BackendError(f"virtwire serve {kind} {exc}:\n" + log.read_text()) from None
    return ServiceProcess(kind, proc, address, log)
