"""A Docker engine and the virtwire image, for the tests that run containers.

``engine`` makes sure a Docker engine answers: as root it installs docker.io
and debootstrap when missing and starts dockerd (deploy/image.py); otherwise
it needs a running engine, or the test skips (support.need). ``image`` builds (or finds up to
date) ``virtwire:<version>``. Both are session-scoped: the image is built once
per run. Everything a test creates carries ``LABEL``; ``remove_labelled``
removes leftovers of an earlier, killed run.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from support.need import need

ROOT = Path(__file__).resolve().parents[2]
LABEL_KEY = "org.virtwire.test"
LABEL = f"{LABEL_KEY}=1"


def load_image_module() -> ModuleType:
    """deploy/image.py (not part of the package) as a module."""
    name = "virtwire_deploy_image"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "deploy/image.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def docker(*args: str, check: bool = True,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The docker CLI; a failure fails the test with its output."""
    proc = subprocess.run(["docker", *args], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        pytest.fail(f"docker {' '.join(args)}: exit {proc.returncode}\n"
                    f"{proc.stdout}{proc.stderr}")
    return proc


def remove_labelled() -> None:
    """Remove every container and network that carries LABEL."""
    ids = docker("container", "ls", "--all", "--quiet", "--filter", f"label={LABEL_KEY}",
                 check=False).stdout.split()
    if ids:
        docker("container", "rm", "--force", *ids, check=False)
    ids = docker("network", "ls", "--quiet", "--filter", f"label={LABEL_KEY}",
                 check=False).stdout.split()
    if ids:
        docker("network", "rm", *ids, check=False)


@pytest.fixture(scope="session")
def image_mod() -> ModuleType:
    return load_image_module()


@pytest.fixture(scope="session")
def engine(image_mod: ModuleType) -> Iterator[None]:
    """A Docker engine that answers (installing and starting it when root)."""
    root = os.geteuid() == 0
    need(root or bool(shutil.which("docker") and image_mod.docker_ready()),
         "needs root (apt-get install docker.io debootstrap, start dockerd) "
         "or a running Docker engine")
    if root:
        try:
            image_mod.install_host_packages()
        except image_mod.ImageError as exc:
            need(False, f"cannot install docker.io/debootstrap: {exc}")
    image_mod.ensure_dockerd()
    remove_labelled()
    yield
    remove_labelled()


@pytest.fixture(scope="session")
def image(image_mod: ModuleType, engine: None) -> str:
    """virtwire:<version>, built (or found up to date) by deploy/image.py."""
    need(os.geteuid() == 0 or image_mod.image_id(image_mod.DEFAULT_BASE) is not None,
         f"not root and no {image_mod.DEFAULT_BASE} image: debootstrap needs root")
    start = time.monotonic()
    tag: str = image_mod.build_image(quiet=True)
    print(f"build_image: {time.monotonic() - start:.1f}s")
    return tag
