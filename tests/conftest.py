"""Shared fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

# tests/support is importable as `support`.
sys.path.insert(0, str(Path(__file__).parent))

from support.docker_engine import engine, image, image_mod  # noqa: F401  (fixtures)
