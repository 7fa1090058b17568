"""The orchestrator's side of container nodes (``kind: container``, docs/topology.md).

A container node is a container of the local Docker engine, named
``virtwire-LAN-NODE`` (as the docker backend names its services' containers)
and labelled with the LAN, the node and ``virtwire.kind=container``. It is
created from the node's image, command and environment with no network of its
own (``--network none``: only ``lo``), or on the management network the node
names (its ``eth0``). It is created before any service starts, with both
backends, and removed on ``down`` and when ``up`` fails.

Its interfaces ethN are tap services NODE-ethN that open their TAP inside
the container's network namespace (``net.nsjoin``) and bring it up there with
its address. That service learns the namespace from its command line only
(``serve tap --netns FILE``; never from an RPC): with the process backend it
is ``/proc/PID/ns/net`` of the container's first process, which the
orchestrator reads from the engine here (``netns``); with the docker backend
the service's own container shares the container node's pid namespace, so it
is ``/proc/1/ns/net`` there (``plan.CONTAINER_NETNS``), as in ``render
compose``.

An image missing from the engine is an error of ``up`` before anything
starts, naming the node's line (``check``): virtwire pulls nothing.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from virtwire.errors import BackendError, ConfigError, VirtwireError
from virtwire.orchestrator.nodeexec import register
from virtwire.orchestrator.plan import CONTAINER_NETNS
from virtwire.topology import ContainerNode, Topology

if TYPE_CHECKING:
    import docker

    from virtwire.orchestrator.core import LanState

__all__ = ["LABEL_KIND", "LABEL_LAN", "LABEL_NODE", "ContainerNodes", "container_name",
           "find_container", "remove_lan_containers"]

logger = logging.getLogger(__name__)

LABEL_LAN = "virtwire.lan"
LABEL_NODE = "virtwire.node"
LABEL_KIND = "virtwire.kind"
#: How long a created container may take to be running.
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 3


def container_name(lan: str, node: str) -> str:
    """``virtwire-LAN-NODE``: as the docker backend names its containers
    (a node name never equals a service name of another node)."""
    return f"virtwire-{lan}-{node}"


def _client() -> docker.DockerClient:
    try:
        import docker
        import docker.errors
    except ImportError:
        raise BackendError("container nodes need the docker SDK: "
                           "pip install 'virtwire[docker]'") from None
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        raise BackendError(f"container nodes need a local Docker engine, and none answers "
                           f"({exc}); start dockerd") from exc
    return client


def _labels(lan: str, node: str = "") -> dict[str, str]:
    labels = {LABEL_LAN: lan, LABEL_KIND: "container"}
    return {**labels, LABEL_NODE: node} if node else labels


def _label_filter(labels: dict[str, str]) -> dict[str, Any]:
    return {"label": [f"{k}={v}" for k, v in labels.items()]}


def find_container(lan: str, node: str) -> str:
    """The id of container node ``node`` of running LAN ``lan``; NotFound-like
    ConfigError when the engine has none (``virtwire exec``)."""
    client = _client()
    try:
        found = client.containers.list(filters=_label_filter(_labels(lan, node)))
    finally:
        client.close()
    if not found:
        raise ConfigError(f"no running container for node {node!r} of LAN {lan!r} "
                          "in the local Docker engine")
    return str(found[0].id)


def _enter_container(state: LanState, lan_dir: Path, node: str) -> list[str] | None:
    """``virtwire exec``: ``docker exec [-i] [-t] ID`` for a container node (the
    engine's container labelled with the LAN and the node), None for other nodes."""
    if not any(rec.node == node and rec.kind == "tap" for rec in state.services):
        return None
    try:
        cid = find_container(state.name, node)
    except VirtwireError:
        return None
    docker_cli = shutil.which("docker")
    if docker_cli is None:
        raise BackendError("virtwire exec on a container node runs the docker CLI, and "
                           "there is none on PATH (apt-get install docker.io)")
    tty = ["-t"] if sys.stdin.isatty() and sys.stdout.isatty() else []
    return [docker_cli, "exec", "-i", *tty, cid]


register("container", _enter_container)


def remove_lan_containers(lan: str) -> int:
    """Remove every container node of LAN ``lan`` (``down`` after a crash too)."""
    import docker.errors

    client = _client()
    removed = 0
    try:
        for container in client.containers.list(all=True,
                                                filters=_label_filter(_labels(lan))):
            try:
                container.remove(force=True)
                removed += 1
            except docker.errors.NotFound:
                continue
            except docker.errors.APIError as exc:
                logger.warning("docker: removing %s: %s", container.name,
                               exc.explanation or exc)
    finally:
        client.close()
    return removed


class ContainerNodes:
    """The container nodes of one LAN: ``check``, ``create``, ``netns``, ``close``.

    ``shared_pid``: the interfaces' services share each container's pid
    namespace (docker backend), so they see it as CONTAINER_NETNS.
    """

    def __init__(self, topo: Topology, *, shared_pid: bool = False) -> None:
        self.topo = topo
        self.shared_pid = shared_pid
        #: Created containers: node -> (id, pid of its first process).
        self.created: dict[str, tuple[str, int]] = {}
        self._client: docker.DockerClient | None = None

    def nodes(self) -> list[ContainerNode]:
        return self.topo.containers()

    def __iter__(self) -> Iterator[ContainerNode]:
        return iter(self.nodes())

    def _where(self, node: ContainerNode) -> str:
        return f"{self.topo.source}:{node.line}: node {node.name!r}"

    async def check(self) -> None:
        """The engine answers, every node's image is in it, and no container has
        a node's name; ConfigError (FILE:LINE) or BackendError if not."""
        if self.nodes():
            await asyncio.to_thread(self._check)

    def _check(self) -> None:
        import docker.errors

        self._client = client = self._client or _client()
        problems: list[str] = []
        for node in self.nodes():
            try:
                client.images.get(node.image)
            except docker.errors.ImageNotFound:
                problems.append(f"{self._where(node)}: no image {node.image!r} in the local "
                                "Docker engine (virtwire pulls nothing: docker pull, "
                                "docker import or docker build it first)")
            except docker.errors.APIError as exc:
                problems.append(f"{self._where(node)}: image {node.image!r}: "
                                f"{exc.explanation or exc}")
            if node.management:
                try:
                    client.networks.get(node.management)
                except docker.errors.NotFound:
                    problems.append(f"{self._where(node)}: no Docker network "
                                    f"{node.management!r} (management:); create it first")
            name = container_name(self.topo.name, node.name)
            if client.containers.list(all=True, filters={"name": f"^/{name}$"}):
                problems.append(f"{self._where(node)}: a container {name} already exists; "
                                f"run 'virtwire down {self.topo.name}' or 'docker rm -f {name}'")
        if problems:
            raise ConfigError("\n".join(problems))

    async def create(self, node: ContainerNode) -> int:
        """Create and start node ``node``'s container; the pid of its first process."""
        cid, pid = await asyncio.to_thread(self._create, node)
        self.created[node.name] = (cid, pid)
        logger.info("container %s: %s, pid %d", node.name, cid[:12], pid)
        return pid

    def _create(self, node: ContainerNode) -> tuple[str, int]:
        import docker.errors

        self._client = client = self._client or _client()
        api = client.api
        name = container_name(self.topo.name, node.name)
        host_config = api.create_host_config(network_mode=node.management or "none")
        try:
            created = api.create_container(
                node.image, command=list(node.command) or None, name=name,
                hostname=node.name, environment=dict(node.env) or None,
                labels=_labels(self.topo.name, node.name), host_config=host_config)
        except docker.errors.APIError as exc:
            raise BackendError(f"{self._where(node)}: docker could not create {name}: "
                               f"{exc.explanation or exc}") from exc
        cid = str(created["Id"])
        # Recorded before it starts, so a failure from here on removes it.
        self.created[node.name] = (cid, 0)
        try:
            api.start(cid)
        except docker.errors.APIError as exc:
            raise BackendError(f"{self._where(node)}: docker could not start {name}: "
                               f"{exc.explanation or exc}") from exc
        state = api.inspect_container(cid)["State"]
        pid = int(state.get("Pid") or 0)
        if not state.get("Running") or pid <= 0:
            logs = api.logs(cid, tail=20).decode(errors="replace")
            raise BackendError(f"{self._where(node)}: container {name} is not running (exit "
                               f"{state.get('ExitCode')}): its command must keep running "
                               f"(e.g. command: sleep infinity):\n{logs}")
        return cid, pid

    def netns(self) -> dict[str, str]:
        """By created node, the namespace file its interfaces' services open."""
        if self.shared_pid:
            return {name: CONTAINER_NETNS for name in self.created}
        return {name: f"/proc/{pid}/ns/net" for name, (_, pid) in self.created.items()}

    async def exited(self, node: str) -> str | None:
        """None while node ``node``'s container runs; else why not."""
        cid, _ = self.created.get(node, ("", 0))
        if not cid:
            return "not created"
        return await asyncio.to_thread(self._exited, cid)

    def _exited(self, cid: str) -> str | None:
        import docker.errors

        assert self._client is not None
        try:
            state = self._client.api.inspect_container(cid)["State"]
        except docker.errors.NotFound:
            return "container removed"
        return None if state.get("Running") else f"exit {state.get('ExitCode')}"

    async def close(self) -> None:
        """Remove every container created (stopped first, then removed)."""
        created, self.created = self.created, {}
        if created and self._client is not None:
            await asyncio.gather(*(asyncio.to_thread(self._remove, name, cid)
                                   for name, (cid, _) in created.items()))
        if self._client is not None:
            self._client.close()
            self._client = None

    def _remove(self, node: str, cid: str) -> None:
        import docker.errors

        assert self._client is not None
        try:
            self._client.api.remove_container(cid, force=True)
            logger.info("container %s: removed", node)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            logger.error("container %s: removing it: %s", node, exc.explanation or exc)
