"""The container image: deploy/Dockerfile, built by deploy/image.py, run by Docker.

Needs root (to apt-get install docker.io and debootstrap when missing, to start
dockerd and to debootstrap the base image) or an already running Docker engine
with the base image present; skips otherwise. Containers join only an internal
network this module creates in 198.18.0.0/15 (or none at all), and everything it
creates is removed again, also when a test fails.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from support.docker_engine import LABEL, docker
from support.need import need

ROOT = Path(__file__).resolve().parent.parent
# A cold machine debootstraps the base image (~1 min) before the first test runs.
pytestmark = pytest.mark.timeout(900)

#: A `pcap:` match compiled by the image's libpcap, on an ICMP and an ARP frame.
PCAP_PROBE = (
    "from virtwire.net.match import parse_match\n"
    "from virtwire.guest.responder import build_echo_frame\n"
    "import ipaddress\n"
    "a, b = ipaddress.IPv4Address('198.18.0.1'), ipaddress.IPv4Address('198.18.0.2')\n"
    "icmp = build_echo_frame(8, bytes(6), bytes(6), a, b, 1, 1, b'x')\n"
    "arp = bytes(12) + bytes.fromhex('0806') + bytes(46)\n"
    "m = parse_match('pcap:icmp and host 198.18.0.2')\n"
    "print('pcap:', m.matches(icmp), m.matches(arp))\n"
)
SUBNET = "198.18.10.0/24"
HUB_IP = "198.18.10.10"
GRPC_PORT = 50051

HEALTH_PROBE = """\
import sys, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
channel = grpc.insecure_channel(sys.argv[1])
grpc.channel_ready_future(channel).result(timeout=30)
status = health_pb2_grpc.HealthStub(channel).Check(
    health_pb2.HealthCheckRequest(service=""), timeout=5).status
print(health_pb2.HealthCheckResponse.ServingStatus.Name(status))
answers = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
    iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
for answer in answers:
    for service in answer.list_services_response.service:
        print(service.name)
"""


@pytest.fixture
def network(engine: None) -> Iterator[str]:
    """An internal network (no route out of it) with an explicit 198.18.0.0/15 subnet."""
    name = f"vw-test-{uuid.uuid4().hex[:8]}"
    docker("network", "create", "--internal", "--subnet", SUBNET, "--label", LABEL, name)
    try:
        yield name
    finally:
        for cid in docker("ps", "--all", "--quiet", "--filter", f"network={name}",
                          check=False).stdout.split():
            docker("rm", "--force", cid, check=False)
        docker("network", "rm", name, check=False)


@pytest.fixture
def containers(engine: None) -> Iterator[list[str]]:
    """Names of containers a test starts; all are removed afterwards."""
    names: list[str] = []
    try:
        yield names
    finally:
        if names:
            docker("rm", "--force", *names, check=False)


def _name(prefix: str) -> str:
    return f"vw-test-{prefix}-{uuid.uuid4().hex[:8]}"


def run(image: str, *args: str, docker_args: tuple[str, ...] = ("--network", "none"),
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`docker run --rm` of the image; no network unless docker_args say otherwise."""
    return docker("run", "--rm", "--label", LABEL, *docker_args, image, *args, timeout=timeout)


def test_help(image: str) -> None:
    out = run(image, "--help").stdout
    assert out.startswith("usage: virtwire")
    for command in ("serve", "inject", "capture", "list", "link"):
        assert command in out
    # The default command is --help too.
    assert run(image).stdout == out
    serve = run(image, "serve", "--help").stdout
    for service in ("hub", "tap", "guestmem", "e1000"):
        assert service in serve


def test_image_contents(image: str, image_mod: ModuleType) -> None:
    version = image_mod.project_version()
    assert image == f"virtwire:{version}"
    labels = json.loads(docker("image", "inspect", "--format", "{{json .Config.Labels}}",
                               image).stdout)
    assert labels["org.opencontainers.image.version"] == version
    script = ("id -u; ip -V; python3 --version; /opt/virtwire/bin/python -c "
              "'import grpc, virtwire; print(grpc.__version__)'; /opt/virtwire/bin/python -c "
              f"{shlex.quote(PCAP_PROBE)}; "
              "for c in gcc cc g++ clang make pip; do command -v $c; done; true")
    out = run(image, "-c", script, docker_args=("--network", "none", "--entrypoint", "sh"))
    lines = out.stdout.splitlines()
    assert lines[0] == "10000", "the default user is unprivileged"
    assert "iproute2" in lines[1]
    assert lines[2].startswith("Python 3.")
    assert lines[4] == "pcap: True False", "libpcap compiles pcap: matches in the image"
    assert len(lines) == 5, f"compilers or pip in the image: {lines[5:]}"
    size = image_mod.image_size(image)
    print(f"{image}: {size / 1e6:.0f} MB")
    assert size < 250e6


def test_hub_answers_on_internal_network(
    image: str, network: str, containers: list[str]
) -> None:
    serve = ("serve", "hub", "--listen", f"0.0.0.0:{GRPC_PORT}", "--ports", "2")
    # Plaintext off loopback needs --insecure (or TLS flags).
    refused = docker("run", "--rm", "--label", LABEL, "--network", network, image, *serve,
                     check=False)
    assert refused.returncode != 0 and "--insecure" in refused.stderr, refused.stderr
    hub = _name("hub")
    containers.append(hub)
    docker("run", "--detach", "--name", hub, "--label", LABEL, "--network", network,
           "--ip", HUB_IP, image, *serve, "--insecure")
    target = f"{HUB_IP}:{GRPC_PORT}"
    on_net = ("--network", network)

    # From a second container on the same internal network: grpc.health.v1 and reflection.
    probe = run(image, "-c", HEALTH_PROBE, target,
                docker_args=(*on_net, "--entrypoint", "python"), timeout=90)
    lines = probe.stdout.split()
    assert lines[0] == "SERVING"
    assert "grpc.health.v1.Health" in lines
    assert any(name.startswith("virtwire.v1.") for name in lines), lines

    # ... and the CLI's list, as an operator would use it.
    listed = json.loads(run(image, "list", "-s", target, "--json", docker_args=on_net).stdout)
    names = [nc["name"] for nc in listed["netclients"]]
    assert len(names) == 2, names

    # SIGTERM (docker stop) shuts it down gracefully, well before docker's SIGKILL.
    start = time.monotonic()
    docker("stop", "--time", "20", hub)
    assert time.monotonic() - start < 15
    assert docker("inspect", "--format", "{{.State.ExitCode}}", hub).stdout.strip() == "0"
    logs = docker("logs", hub).stderr
    assert "listening on 0.0.0.0:50051" in logs
    assert "WITHOUT TLS (--insecure)" in logs


def test_tap_needs_and_gets_net_admin(image: str, containers: list[str]) -> None:
    need(Path("/dev/net/tun").exists(), "no /dev/net/tun on this host")
    backend = ("serve", "tap", "--listen", f"127.0.0.1:{GRPC_PORT}",
               "--backend", "tap,ifname=vw0")
    # As the default, unprivileged user it fails with a clear message.
    denied = docker("run", "--rm", "--label", LABEL, "--network", "none",
                    "--device", "/dev/net/tun", image, *backend, check=False)
    assert denied.returncode != 0
    assert "CAP_NET_ADMIN" in denied.stderr

    # As the orchestrator runs it: root in the container, NET_ADMIN, /dev/net/tun.
    tap = _name("tap")
    containers.append(tap)
    docker("run", "--detach", "--name", tap, "--label", LABEL, "--network", "none",
           "--user", "0", "--cap-add", "NET_ADMIN", "--device", "/dev/net/tun", image, *backend)
    deadline = time.monotonic() + 30
    while True:
        link = docker("exec", tap, "ip", "-br", "link", "show", "vw0", check=False)
        listed = docker("exec", tap, "virtwire", "list", "-s", f"127.0.0.1:{GRPC_PORT}",
                        "--json", check=False)
        if link.returncode == 0 and listed.returncode == 0:
            break
        assert time.monotonic() < deadline, f"{link.stderr}{listed.stderr}{docker('logs', tap)}"
        time.sleep(0.5)
    assert link.stdout.startswith("vw0")
    assert [nc["kind"] for nc in json.loads(listed.stdout)["netclients"]] == ["tap"]
