"""Shared fixtures."""

from __future__ import annotations

import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

# A run started in the background (`.ci/run &`, nohup, some CI shells) inherits
# SIGINT ignored, and so would every process a test starts: the tests that send
# Ctrl-C to the CLI, the demo or make would see it ignored. A caught SIGINT is
# reset to the default in exec'd children, so they get Ctrl-C as from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# First import of virtwire: it turns grpc's fork support off before grpc loads.
from virtwire.server.hub import HubServer

# tests/support is importable as `support`.
sys.path.insert(0, str(Path(__file__).parent))

from support.docker_engine import engine, image, image_mod  # noqa: F401  (fixtures)


@pytest.fixture
async def hub() -> AsyncIterator[HubServer]:
    """An in-process hub service on a loopback port (test_vms overrides it with a
    real process)."""
    host = HubServer("127.0.0.1:0")
    await host.start()
    yield host
    await host.stop(grace=0.2)
