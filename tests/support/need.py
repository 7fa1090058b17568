"""The one rule for tests that need something of the host: a package, a device,
a capability.

``make test`` installs every Debian package the suite uses when it runs as root,
and CI runs as root with every capability: there, a missing one means the box is
broken, and the test fails saying what is missing. Without root, nothing could
have installed it, and the test skips with the same reason.

Example::

    need(shutil.which("tshark") is not None, "tshark not installed (Debian package tshark)")
"""

from __future__ import annotations

import os

import pytest


def need(condition: bool, reason: str) -> None:
    """Go on if ``condition``; else fail as root, skip otherwise, with ``reason``."""
    if condition:
        return
    if os.geteuid() == 0:
        pytest.fail(f"{reason} (as root, as in CI, this fails instead of skipping: `make test`"
                    " installs the packages, and CI has the devices and capabilities)",
                    pytrace=False)
    pytest.skip(reason)
