"""`virtwire render compose` output, run for real: docker-compose up and a Swarm stack.

examples/default.yaml (a hub, two VMs, a stream port) is rendered to a file and
brought up twice: by ``docker-compose up`` (Debian's docker-compose 1.29) and by
``docker stack deploy`` on a single-node Swarm (initialised on 127.0.0.1 when
the engine is not in one, and left again afterwards). Each time vm1's guest
pings vm2 from inside its container, over the rendered internal network
(198.18.0.0/15, nothing published). Under compose the VMs' DMA goes over the
shared /dev/shm (``ipc``); a Swarm ignores ``ipc`` and ``shm_size``, so there it
goes over guestmem RPCs. The compose run is repeated with ``tls:`` in the
topology (and the Swarm run uses it): each service then has its own
certificate as a secret, the in-container CLI pings with it, and a plaintext
client is refused. Each run uses a unique project/stack name, and
everything it creates is removed again, also when the test fails; afterwards
nothing of it may remain.

Needs root (the ``engine`` fixture installs and starts Docker) or a running
engine; skips otherwise, and the compose test also without docker-compose.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from virtwire import certs
from virtwire.cli import main

from support.docker_engine import docker
from support.need import need

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples/default.yaml"
BENCHMARK = ipaddress.ip_network("198.18.0.0/15")
# vm1's guest pings vm2 (examples/default.yaml) through its own guest service.
PING = ("virtwire", "ping", "-s", "127.0.0.1:50051", "-c", "3", "198.18.0.2")
UP_TIMEOUT = 180.0
DOWN_TIMEOUT = 120.0
SWARM_INIT = ("swarm", "init", "--advertise-addr", "127.0.0.1",
              "--listen-addr", "127.0.0.1:2377",
              "--default-addr-pool", "198.19.0.0/16",
              "--default-addr-pool-mask-length", "24")
COMPOSE_KEY = "com.docker.compose.project"
STACK_KEY = "com.docker.stack.namespace"
#: Left behind by `docker swarm leave` (the ingress sandbox's gateway bridge).
SWARM_LEFTOVERS = ("ingress", "docker_gwbridge")

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

T = TypeVar("T")


def _unique() -> str:
    return f"vwtest-{uuid.uuid4().hex[:8]}"


def _render(tmp_path: Path, tls: bool = False) -> tuple[Path, dict[str, Any]]:
    """examples/default.yaml as a compose file, checked to stay internal and unpublished.

    ``tls``: with ``tls: {dir: pki}`` (a new CA), so each service gets its own
    certificate as secrets, and none runs ``--insecure``.
    """
    topology = EXAMPLE
    if tls:
        certs.init_ca(tmp_path / "pki")
        topology = tmp_path / "default-tls.yaml"
        topology.write_text(EXAMPLE.read_text() + "tls: {dir: pki}\n")
    out = tmp_path / "lan.yml"
    assert main(["render", "compose", str(topology), "-o", str(out)]) == 0
    doc: dict[str, Any] = yaml.safe_load(out.read_text())
    for name, spec in doc["services"].items():
        assert ("--insecure" in spec["command"]) != tls, name
        assert ("secrets" in spec) == tls, name
    for net in doc["networks"].values():
        assert net["internal"] is True
        for pool in net["ipam"]["config"]:
            subnet = ipaddress.ip_network(pool["subnet"])
            assert subnet.subnet_of(BENCHMARK), subnet  # type: ignore[arg-type]
    for spec in doc["services"].values():
        assert "ports" not in spec and "network_mode" not in spec
    return out, doc


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _wait(what: str, probe: Callable[[], T | None], timeout: float,
             diagnose: Callable[[], str]) -> T:
    """Poll ``probe`` until it returns something; fail with ``diagnose()`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f}s\n{diagnose()}")
        time.sleep(1)


def _ping(container: str) -> subprocess.CompletedProcess[str] | None:
    """``virtwire ping`` inside the guest's container; None unless it got replies."""
    try:
        proc = docker("exec", container, *PING, check=False, timeout=60)
    except subprocess.TimeoutExpired:
        return None
    return proc if proc.returncode == 0 else None


def _logs(container: str) -> str:
    proc = docker("logs", "--tail", "40", container, check=False)
    return f"--- docker logs {container}\n{proc.stdout}{proc.stderr}"


def _ids(kind: str, *filters: str) -> list[str]:
    """IDs of containers or networks (``kind``) matching every label filter."""
    args = [arg for f in filters for arg in ("--filter", f"label={f}")]
    cmd = ("ps", "--all") if kind == "container" else ("network", "ls")
    return docker(*cmd, "--quiet", *args, check=False).stdout.split()


def _leftovers(name: str, key: str) -> list[str]:
    """What remains of a project/stack: by its own label, and by ``virtwire.lan``."""
    found = []
    if key == STACK_KEY:
        found += [f"service {s}" for s in _services(name)]
    found += [f"container {c}" for c in _ids("container", f"{key}={name}")]
    found += [f"network {n}" for n in _ids("network", f"{key}={name}")]
    # Everything rendered carries virtwire.lan; this run's names start with NAME_.
    for line in _lines(docker("ps", "--all", "--filter", "label=virtwire.lan",
                              "--format", "{{.Names}}", check=False).stdout):
        if line.startswith(f"{name}_"):
            found.append(f"container {line} (virtwire.lan)")
    for line in _lines(docker("network", "ls", "--filter", "label=virtwire.lan",
                              "--format", "{{.Name}}", check=False).stdout):
        if line.startswith(f"{name}_"):
            found.append(f"network {line} (virtwire.lan)")
    return found


def _force_remove(name: str, key: str) -> None:
    """Last resort after a failed teardown: remove what carries the project/stack label."""
    if key == STACK_KEY:
        ids = docker("service", "ls", "--quiet", "--filter", f"label={key}={name}",
                     check=False).stdout.split()
        if ids:
            docker("service", "rm", *ids, check=False)
    ids = _ids("container", f"{key}={name}")
    if ids:
        docker("rm", "--force", "--volumes", *ids, check=False)
    ids = _ids("network", f"{key}={name}")
    if ids:
        docker("network", "rm", *ids, check=False)


# --- docker-compose -------------------------------------------------------------------

def _compose(compose: str, name: str, file: Path, *args: str,
             timeout: float = 300) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([compose, "-p", name, "-f", str(file), *args],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              cwd=file.parent, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(exc.cmd, -1, "", f"timed out after {timeout}s")


def _compose_container(name: str, service: str) -> str | None:
    ids = _ids("container", f"{COMPOSE_KEY}={name}", f"com.docker.compose.service={service}")
    return ids[0] if len(ids) == 1 else None


def _compose_diagnosis(name: str) -> str:
    ps = docker("ps", "--all", "--filter", f"label={COMPOSE_KEY}={name}",
                "--format", "{{.Names}}\t{{.Status}}", check=False).stdout
    return ps + "".join(_logs(c) for c in _ids("container", f"{COMPOSE_KEY}={name}"))


def _plaintext_refused(container: str) -> None:
    """With TLS on, the CLI without an identity cannot even reach the guest service."""
    plain = docker("exec", "-e", "VIRTWIRE_TLS_DIR=", "-e", "VIRTWIRE_TLS_NAME=", container,
                   *PING, check=False, timeout=60)
    assert plain.returncode != 0 and "cannot reach" in plain.stderr, plain.stdout + plain.stderr


@pytest.mark.parametrize("tls", [False, True], ids=["insecure", "tls"])
def test_compose_up_pings(image: str, tmp_path: Path, tls: bool) -> None:
    compose = shutil.which("docker-compose")
    need(compose is not None, "docker-compose is not installed (Debian package docker-compose)")
    assert compose is not None
    file, _ = _render(tmp_path, tls)
    name = _unique()
    start = time.monotonic()
    try:
        up = _compose(compose, name, file, "up", "-d")
        assert up.returncode == 0, f"{up.stdout}{up.stderr}\n{_compose_diagnosis(name)}"
        guest = _wait("vm1-guest container", lambda: _compose_container(name, "vm1-guest"),
                      UP_TIMEOUT, lambda: _compose_diagnosis(name))
        first = _wait("vm1-guest pings vm2", lambda: _ping(guest), UP_TIMEOUT,
                      lambda: _compose_diagnosis(name))
        print(f"compose: first ping after {time.monotonic() - start:.1f}s\n{first.stdout}")
        ping = docker("exec", guest, *PING, timeout=60)
        assert "3 transmitted, 3 received" in ping.stdout, ping.stdout
        # compose honours ipc/shm_size: the e1000 maps the guest RAM from /dev/shm.
        e1000 = _compose_container(name, "vm1-e1000")
        assert e1000 is not None, _compose_diagnosis(name)
        log = docker("logs", e1000)
        assert "over shm" in log.stdout + log.stderr, _logs(e1000)
        assert ("WITHOUT TLS" in log.stderr) != tls, _logs(e1000)
        if tls:
            _plaintext_refused(guest)
    finally:
        down = _compose(compose, name, file, "down", "-v", "--remove-orphans")
        left = _leftovers(name, COMPOSE_KEY)
        if left:
            _force_remove(name, COMPOSE_KEY)
    print(f"compose: up, ping and down in {time.monotonic() - start:.1f}s")
    assert down.returncode == 0, f"{down.stdout}{down.stderr}"
    assert not left, f"left behind by docker-compose down: {left}"


# --- docker stack deploy --------------------------------------------------------------

def _swarm_state() -> str:
    return docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip()


def _swarm_leftovers() -> list[str]:
    names = set(_lines(docker("network", "ls", "--format", "{{.Name}}", check=False).stdout))
    return [n for n in SWARM_LEFTOVERS if n in names]


def _remove_swarm_leftovers() -> None:
    for net in _swarm_leftovers():
        # The ingress sandbox's endpoint can outlive the swarm and block the removal.
        endpoints = docker("network", "inspect", "--format",
                           "{{range .Containers}}{{.Name}} {{end}}", net, check=False)
        for endpoint in endpoints.stdout.split():
            docker("network", "disconnect", "--force", net, endpoint, check=False)
        docker("network", "rm", net, check=False)


@pytest.fixture
def swarm(engine: None) -> Iterator[None]:
    """A single-node Swarm: the engine's own, or one made for this test and left after."""
    state = _swarm_state()
    if state == "active":
        yield
        return
    need(state == "inactive", f"the engine's swarm is {state!r}, not active or inactive")
    docker(*SWARM_INIT)
    try:
        yield
    finally:
        leave = docker("swarm", "leave", "--force", check=False)
        deadline = time.monotonic() + DOWN_TIMEOUT
        while _swarm_leftovers() and time.monotonic() < deadline:
            _remove_swarm_leftovers()
            time.sleep(1)
        left = _swarm_leftovers()
        state = _swarm_state()
        assert leave.returncode == 0, f"{leave.stdout}{leave.stderr}"
        assert state == "inactive" and not left, f"after leaving: swarm {state}, {left}"


def _services(name: str) -> dict[str, str]:
    """The stack's services and their replicas (``1/1``)."""
    out = docker("service", "ls", "--filter", f"label={STACK_KEY}={name}",
                 "--format", "{{.Name}} {{.Replicas}}", check=False).stdout
    return dict(line.split(" ", 1) for line in _lines(out))


def _task_container(name: str, service: str) -> str | None:
    ids = _ids("container", f"com.docker.swarm.service.name={name}_{service}")
    return ids[0] if len(ids) == 1 else None


def _stack_diagnosis(name: str) -> str:
    services = sorted(_services(name))
    text = docker("service", "ls", "--filter", f"label={STACK_KEY}={name}",
                  check=False).stdout
    if services:
        ps = docker("service", "ps", "--no-trunc", *services, check=False)
        text += f"--- docker service ps --no-trunc\n{ps.stdout}{ps.stderr}"
    return text + "".join(_logs(c) for c in _ids("container", f"{STACK_KEY}={name}"))


def _stack_gone(name: str) -> bool | None:
    services = _services(name)
    left = _ids("container", f"{STACK_KEY}={name}") + _ids("network", f"{STACK_KEY}={name}")
    return None if services or left else True


def test_stack_deploy_pings(image: str, swarm: None, tmp_path: Path) -> None:
    # With TLS: Swarm secrets, the key given to the image's user (uid/gid/mode).
    file, doc = _render(tmp_path, tls=True)
    name = _unique()
    start = time.monotonic()
    try:
        deploy = docker("stack", "deploy", "-c", str(file), name)
        # What a Swarm ignores is what render.py's docstring says it ignores.
        ignored = [line.split(":", 1)[1] for line in _lines(deploy.stdout + deploy.stderr)
                   if line.startswith("Ignoring unsupported options:")]
        assert [set(i.replace(",", " ").split()) for i in ignored] == [
            {"ipc", "restart", "shm_size"}], deploy.stdout + deploy.stderr
        want = {f"{name}_{service}" for service in doc["services"]}

        def all_running() -> bool | None:
            services = _services(name)
            return True if set(services) == want and all(
                r == "1/1" for r in services.values()) else None

        _wait("all services 1/1", all_running, UP_TIMEOUT, lambda: _stack_diagnosis(name))
        guest = _wait("vm1-guest task container",
                      lambda: _task_container(name, "vm1-guest"), UP_TIMEOUT,
                      lambda: _stack_diagnosis(name))
        first = _wait("vm1-guest pings vm2", lambda: _ping(guest), UP_TIMEOUT,
                      lambda: _stack_diagnosis(name))
        print(f"swarm: first ping after {time.monotonic() - start:.1f}s\n{first.stdout}")
        ping = docker("exec", guest, *PING, timeout=60)
        assert "3 transmitted, 3 received" in ping.stdout, ping.stdout
        # No ipc on a Swarm: the e1000's DMA falls back to guestmem RPCs.
        e1000 = _task_container(name, "vm1-e1000")
        assert e1000 is not None, _stack_diagnosis(name)
        log = docker("logs", e1000)
        assert "over rpc" in log.stdout + log.stderr, _logs(e1000)
        # A Swarm made the key the service user's own, 0400.
        key = docker("exec", guest, "stat", "-c", "%u %a", "/run/secrets/vm1-guest-key.pem")
        assert key.stdout.split() == ["10000", "400"], key.stdout
        _plaintext_refused(guest)
    finally:
        rm = docker("stack", "rm", name, check=False)
        deadline = time.monotonic() + DOWN_TIMEOUT
        while _stack_gone(name) is None and time.monotonic() < deadline:
            time.sleep(1)
        left = _leftovers(name, STACK_KEY)
        if left:
            _force_remove(name, STACK_KEY)
    print(f"swarm: deploy, ping and rm in {time.monotonic() - start:.1f}s")
    assert rm.returncode == 0, f"{rm.stdout}{rm.stderr}"
    assert not left, f"left behind {DOWN_TIMEOUT:.0f}s after docker stack rm: {left}"
