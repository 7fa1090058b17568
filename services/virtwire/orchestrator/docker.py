"""DockerBackend: one container per service, through the docker SDK.

Every service of the LAN runs in its own container of ``virtwire:<version>``
(``make image``), named ``virtwire-LAN-SERVICE``, on one internal bridge
network ``virtwire-LAN`` (no route out) with an explicit /24 in
198.18.0.0/15: ``--subnet``, or the highest 198.19.N.0/24 no Docker network
uses. Each service gets a fixed address, 198.19.N.(10 + its start index),
and listens on port 50051 there; peers dial that address, so a restarted
container comes back where its dialers look for it. The host reaches the
containers through the network's gateway, as the orchestrator must.

Containers run as the image's unprivileged user, except a Linux TAP backend
or a bridged guest: uid 0, NET_ADMIN, /dev/net/tun (and SYS_ADMIN to create a
network namespace), the same rules ``virtwire render`` follows. A VM's
guestmem container gets a /dev/shm big enough for its RAM and a shareable IPC
namespace that its e1000 and guest containers join, so DMA stays in shared
memory. ``close`` removes every container and the network.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from typing import TYPE_CHECKING, Any

from virtwire.errors import BackendError, ConfigError
from virtwire.orchestrator.backend import START_TIMEOUT_S
from virtwire.render import IMAGE, PORT, capabilities, container_command, shm_bytes

if TYPE_CHECKING:
    import docker

    from virtwire.orchestrator.spec import ServiceSpec
    from virtwire.topology import Service, Topology

logger = logging.getLogger(__name__)

#: Where automatic subnets come from (the top of 198.18.0.0/15, downwards).
AUTO_SUBNETS = ipaddress.IPv4Network("198.19.0.0/16")
BENCHMARK_NET = ipaddress.IPv4Network("198.18.0.0/15")
FIRST_HOST = 10
LABEL_BACKEND = "virtwire.backend"
LABEL_LAN = "virtwire.lan"
LABEL_SERVICE = "virtwire.service"


def _client() -> docker.DockerClient:
    try:
        import docker
        import docker.errors
    except ImportError:
        raise BackendError("the docker backend needs the docker SDK: "
                           "pip install 'virtwire[docker]'") from None
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        raise BackendError(f"no Docker engine answers ({exc}); start dockerd, or "
                           "run 'python deploy/image.py dockerd'") from exc
    return client


def container_name(lan: str, service: str) -> str:
    return f"virtwire-{lan}-{service}"


def network_name(lan: str) -> str:
    return f"virtwire-{lan}"


def pick_subnet(used: list[ipaddress.IPv4Network | ipaddress.IPv6Network]
                ) -> ipaddress.IPv4Network:
    """The highest /24 of AUTO_SUBNETS that overlaps none of ``used``."""
    for subnet in reversed(list(AUTO_SUBNETS.subnets(new_prefix=24))):
        if not any(u.version == 4 and subnet.overlaps(u) for u in used):
            return subnet
    raise BackendError(f"every /24 of {AUTO_SUBNETS} is taken by a Docker network; "
                       "give one with --subnet")


def check_subnet(text: str) -> ipaddress.IPv4Network:
    """A --subnet: an IPv4 network inside 198.18.0.0/15, at least a /28."""
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ConfigError(f"bad subnet {text!r}: {exc}") from None
    if not (isinstance(net, ipaddress.IPv4Network) and net.subnet_of(BENCHMARK_NET)):
        raise ConfigError(f"subnet {text} is not inside {BENCHMARK_NET} (the benchmarking "
                          "range virtwire keeps its networks in)")
    if net.prefixlen > 28:
        raise ConfigError(f"subnet {text} is too small: at least a /28")
    return net


def remove_lan(lan: str) -> int:
    """Remove every container and the network of docker-backend LAN ``lan``.

    For ``virtwire down`` when the orchestrator is gone; returns containers removed.
    """
    import docker.errors

    client = _client()
    try:
        filters: dict[str, str | list[str] | bool] = {
            "label": [f"{LABEL_BACKEND}=docker", f"{LABEL_LAN}={lan}"]}
        removed = 0
        for container in client.containers.list(all=True, filters=filters):
            container.remove(force=True)
            removed += 1
        for network in client.networks.list(filters=filters):
            try:
                network.remove()
            except docker.errors.NotFound:
                pass
        return removed
    finally:
        client.close()


class DockerBackend:
    """Services of LAN ``topo.name`` as containers; see the module docstring."""

    kind = "docker"

    def __init__(self, topo: Topology, subnet: str = "", image: str = IMAGE) -> None:
        self.topo = topo
        self.image = image
        self.subnet = check_subnet(subnet) if subnet else None
        self.network = network_name(topo.name)
        self.containers: dict[str, str] = {}  # service -> container id
        self._client: docker.DockerClient | None = None
        self._ips: dict[str, str] = {}

    # -- what each service gets -----------------------------------------------------
    def listen_address(self, name: str) -> str:
        return f"{self._ips[name]}:{PORT}"

    def _service(self, name: str) -> Service:
        return next(s for s in self.topo.services if s.name == name)

    def _command(self, name: str, spec: ServiceSpec) -> list[str]:
        return container_command(self._service(name), spec)

    def _host_config(self, name: str) -> dict[str, Any]:
        from virtwire.topology import VmNode

        svc = self._service(name)
        config: dict[str, Any] = {}
        caps = capabilities(self.topo, svc)
        if caps:
            config.update(cap_add=caps, devices=["/dev/net/tun:/dev/net/tun:rwm"])
        node = self.topo.node(svc.node)
        if isinstance(node, VmNode):
            if svc.kind == "guestmem":
                config.update(shm_size=shm_bytes(node), ipc_mode="shareable")
            else:
                guestmem = container_name(self.topo.name, node.service("guestmem"))
                config["ipc_mode"] = f"container:{guestmem}"
        return config

    # -- Backend -------------------------------------------------------------------
    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        import docker.errors
        import docker.types

        self._client = client = _client()
        try:
            client.images.get(self.image)
        except docker.errors.ImageNotFound:
            raise BackendError(f"no image {self.image}: build it with 'make image' "
                               "(deploy/image.py)") from None
        lan = self.topo.name
        stale = client.containers.list(all=True, filters={"label": [
            f"{LABEL_BACKEND}=docker", f"{LABEL_LAN}={lan}"]})
        if stale or client.networks.list(names=[self.network]):
            raise BackendError(f"Docker already has containers or a network of LAN {lan!r} "
                               f"({self.network}); run 'virtwire down {lan}' first")
        if self.subnet is None:
            used = [ipaddress.ip_network(c["Subnet"]) for n in client.api.networks()
                    for c in ((n.get("IPAM") or {}).get("Config") or []) if "Subnet" in c]
            self.subnet = pick_subnet(used)
        hosts = list(self.subnet.hosts())
        if len(hosts) < FIRST_HOST + len(self.topo.services):
            raise ConfigError(f"subnet {self.subnet} has too few addresses for "
                              f"{len(self.topo.services)} services")
        self._ips = {svc.name: str(hosts[FIRST_HOST - 1 + i])
                     for i, svc in enumerate(self.topo.services)}
        try:
            client.networks.create(
                self.network, driver="bridge", internal=True, check_duplicate=True,
                ipam=docker.types.IPAMConfig(pool_configs=[
                    docker.types.IPAMPool(subnet=str(self.subnet))]),
                labels={LABEL_BACKEND: "docker", LABEL_LAN: lan})
        except docker.errors.APIError as exc:
            raise BackendError(f"cannot create network {self.network} "
                               f"({self.subnet}): {exc.explanation or exc}") from exc
        logger.info("docker: network %s, internal, subnet %s", self.network, self.subnet)

    async def start(self, name: str, spec: ServiceSpec, listen: str) -> tuple[str, int]:
        cid = await asyncio.to_thread(self._create, name, spec, listen)
        self.containers[name] = cid
        from virtwire.orchestrator.core import check_health

        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            state = await asyncio.to_thread(self._state, cid)
            if state is None or not state.get("Running"):
                logs = await asyncio.to_thread(self._logs, cid)
                code = state.get("ExitCode") if state else "removed"
                raise BackendError(f"{name}: container exited ({code}):\n{logs}")
            if await check_health(listen, timeout=1.0):
                return listen, int(state.get("Pid") or 0)
            if time.monotonic() > deadline:
                logs = await asyncio.to_thread(self._logs, cid)
                raise BackendError(f"{name}: not SERVING at {listen} within "
                                   f"{START_TIMEOUT_S:.0f}s:\n{logs}")
            await asyncio.sleep(0.1)

    def _create(self, name: str, spec: ServiceSpec, listen: str) -> str:
        import docker.errors

        assert self._client is not None
        api = self._client.api
        ip = listen.rpartition(":")[0]
        cname = container_name(self.topo.name, name)
        extra = self._host_config(name)
        host_config = api.create_host_config(init=True, **extra)
        endpoint = api.create_endpoint_config(ipv4_address=ip, aliases=[name])
        # docker-py takes {network: endpoint config}; its stubs say otherwise.
        networking = api.create_networking_config(
            {self.network: endpoint})  # type: ignore[arg-type]
        labels = {LABEL_BACKEND: "docker", LABEL_LAN: self.topo.name, LABEL_SERVICE: name,
                  "virtwire.kind": spec.kind}
        try:
            created = api.create_container(
                self.image, command=self._command(name, spec), name=cname,
                hostname=name, labels=labels, host_config=host_config,
                networking_config=networking,
                user="0" if "cap_add" in extra else None)
            api.start(created["Id"])
        except docker.errors.APIError as exc:
            with_ = f" ({exc.explanation})" if exc.explanation else ""
            raise BackendError(f"{name}: docker could not run {cname}{with_}") from exc
        return str(created["Id"])

    def _state(self, cid: str) -> dict[str, Any] | None:
        import docker.errors

        assert self._client is not None
        try:
            state: dict[str, Any] = self._client.api.inspect_container(cid)["State"]
        except docker.errors.NotFound:
            return None
        return state

    def _logs(self, cid: str) -> str:
        import docker.errors

        assert self._client is not None
        try:
            raw: bytes = self._client.api.logs(cid, tail=40)
        except docker.errors.APIError:
            return "(no logs)"
        return raw.decode(errors="replace")

    async def exited(self, name: str) -> str | None:
        cid = self.containers.get(name)
        if cid is None:
            return "not started"
        state = await asyncio.to_thread(self._state, cid)
        if state is None:
            return "container removed"
        if state.get("Running"):
            return None
        return f"exit {state.get('ExitCode')}"

    async def stop(self, name: str, timeout: float = 5.0) -> None:
        cid = self.containers.pop(name, None)
        if cid is not None:
            await asyncio.to_thread(self._remove, cid, timeout)

    def _remove(self, cid: str, timeout: float) -> None:
        import docker.errors

        assert self._client is not None
        api = self._client.api
        try:
            if timeout > 0:
                api.stop(cid, timeout=max(1, round(timeout)))
            api.remove_container(cid, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            logger.warning("docker: removing %s: %s", cid[:12], exc)

    async def close(self) -> None:
        for name in reversed(list(self.containers)):
            await self.stop(name)
        if self._client is not None:
            await asyncio.to_thread(remove_lan, self.topo.name)
            self._client.close()
            self._client = None
