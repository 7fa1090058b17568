"""Start virtwire services as child processes (`virtwire serve KIND ...`).

Each child writes its bound gRPC address to a ready file once it serves, so
callers can use port 0. Children are stopped with SIGTERM (graceful), then
SIGKILL after a timeout; none is left behind.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from virtwire.errors import BackendError

logger = logging.getLogger(__name__)

VIRTWIRE_CMD = [sys.executable, "-m", "virtwire.cli"]


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
    deadline = time.monotonic() + timeout
    while not (ready.exists() and ready.read_text().strip()):
        if proc.poll() is not None:
            raise BackendError(f"virtwire serve {kind} exited with {proc.returncode}:\n"
                               + log.read_text())
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise BackendError(f"virtwire serve {kind} did not start in {timeout:.0f}s:\n"
                               + log.read_text())
        time.sleep(0.02)
    return ServiceProcess(kind, proc, ready.read_text().strip(), log)
