"""Run virtwire services as real subprocesses in tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from virtwire.launch import VIRTWIRE_CMD, ServiceProcess, start_service

VIRTWIRE = VIRTWIRE_CMD


@contextlib.contextmanager
def serve(kind: str, args: Sequence[str], workdir: Path,
          timeout: float = 20.0) -> Iterator[ServiceProcess]:
    """`virtwire serve KIND ARGS` for the duration of the block."""
    service = start_service(kind, args, workdir, timeout)
    try:
        yield service
    finally:
        service.stop()
