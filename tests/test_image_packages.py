"""The container image's package list, without building it (the docker suite,
tests/test_docker_image.py, runs `pcap:` inside a built image): the base rootfs
installs libpcap0.8, so `pcap:` match expressions work on services in
containers; a cached base made before that is not reused; the Dockerfile and
image.py's own description name every package the base gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.docker_engine import load_image_module

ROOT = Path(__file__).resolve().parent.parent


def test_the_base_installs_libpcap_for_pcap_matches() -> None:
    image = load_image_module()
    assert "libpcap0.8" in image.BASE_PACKAGES
    # Still the minimum: an interpreter, its venv, ip(8) and libpcap, no more.
    assert set(image.BASE_PACKAGES) == {"python3", "python3-venv", "iproute2", "libpcap0.8"}
    assert len(image.BASE_PACKAGES) == len(set(image.BASE_PACKAGES))


def test_a_base_cached_without_libpcap_is_rebuilt(monkeypatch: pytest.MonkeyPatch) -> None:
    image = load_image_module()
    now = image.base_recipe()
    monkeypatch.setattr(image, "BASE_PACKAGES",
                        tuple(p for p in image.BASE_PACKAGES if p != "libpcap0.8"))
    before = image.base_recipe()
    monkeypatch.undo()
    assert now != before, "the base tarball's name must change with its packages"
    assert image.base_tarball().name.endswith(f"-{now}.tar")


def test_the_descriptions_name_every_base_package() -> None:
    image = load_image_module()
    dockerfile = " ".join((ROOT / "deploy" / "Dockerfile").read_text().split())
    doc = " ".join((image.__doc__ or "").split())
    for package in image.BASE_PACKAGES:
        assert package in dockerfile, f"deploy/Dockerfile's comment does not name {package}"
        assert package in doc, f"deploy/image.py's docstring does not name {package}"

