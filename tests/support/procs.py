"""Run virtwire services as real subprocesses (`virtwire serve ...`)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

VIRTWIRE = [sys.executable, "-m", "virtwire.cli"]


class ServiceProcess:
    """A `virtwire serve KIND` child; ``address`` is its bound gRPC address."""

    def __init__(self, proc: subprocess.Popen[bytes], address: str, log: Path) -> None:
        self.proc = proc
        self.address = address
        self.log = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"no VmRSS for pid {self.pid}")

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@contextlib.contextmanager
def serve(kind: str, args: Sequence[str], workdir: Path,
          timeout: float = 20.0) -> Iterator[ServiceProcess]:
    """Start `virtwire serve KIND ARGS --ready-file ...` and wait until it serves."""
    ready = workdir / f"{kind}-{time.monotonic_ns()}.ready"
    log = ready.with_suffix(".log")
    with open(log, "wb") as out:
        proc = subprocess.Popen([*VIRTWIRE, "serve", kind, *args, "--ready-file", str(ready)],
                                stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    service = None
    try:
        deadline = time.monotonic() + timeout
        while not ready.exists() or not ready.read_text().strip():
            if proc.poll() is not None:
                raise RuntimeError(f"virtwire serve {kind} exited {proc.returncode}:\n"
                                   + log.read_text())
            if time.monotonic() > deadline:
                raise TimeoutError(f"virtwire serve {kind} did not start:\n" + log.read_text())
            time.sleep(0.02)
        service = ServiceProcess(proc, ready.read_text().strip(), log)
        yield service
    finally:
        if service is not None:
            service.stop()
        elif proc.poll() is None:
            proc.kill()
            proc.wait()
