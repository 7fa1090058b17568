"""DockerRuntime: one container per service, through the docker SDK.

Every service of the LAN runs in its own container of ``virtwire:<version>``
(``make image``), named ``virtwire-LAN-SERVICE``, on one internal bridge
network ``virtwire-LAN`` (no route out) with an explicit /24 in
198.18.0.0/15: ``--subnet``, or the highest 198.19.N.0/24 no Docker network
uses (``subnet.py``). Each service gets a fixed address, 198.19.N.(10 + its
start index),
and listens on port 50051 there; peers dial that address, so a restarted
container comes back where its dialers look for it. The host reaches the
containers through the network's gateway, as the orchestrator must, and so
reaches a stream or dgram port at its container's address (``reachable_at``).
A stream node's ``publish: HOST:PORT`` is served by the orchestrator: Docker
publishes no port of a container only on internal networks, and another
network would give the container a route out, so a ``PortForwarder``
(``orchestrator/forward.py``) listens on HOST:PORT and relays each connection
to the container's address.

Containers run as the image's unprivileged user, except a Linux TAP backend
or a bridged guest: uid 0, NET_ADMIN, /dev/net/tun (and SYS_ADMIN to create a
network namespace), the same rules ``virtwire render`` follows. A container
node's interface (a tap service) also gets SYS_ADMIN and shares the container
node's pid namespace, to open its TAP in that node's network namespace. A VM's
guestmem container gets a /dev/shm big enough for its RAM and a shareable IPC
namespace that its e1000 and guest containers join, so DMA stays in shared
memory. ``close`` removes every container and the network.

Trust: without the topology's ``tls:`` every service runs with ``--insecure``
(it listens off loopback in plaintext, and logs so). With it, each service gets
its own certificate from the LAN's ``LanPki`` (SANs: its fixed address and its
name), bind-mounted read-only with the CA as ``/run/secrets/{ca.pem,NAME.pem,
NAME-key.pem}`` (the paths ``virtwire render compose`` uses) and nothing else
of the LAN's, and ``VIRTWIRE_TLS_DIR``/``VIRTWIRE_TLS_NAME`` for the CLI in the
container. The host copies live in the LAN's state directory, owned by the
user the container runs as: as root, the image's uid 10000 (or 0); otherwise
unprivileged containers run as the orchestrator's own uid and gid.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from virtwire import certs
from virtwire.address import SockAddr, parse_sockaddr
from virtwire.errors import BackendError
from virtwire.logfmt import log_format
from virtwire.orchestrator.forward import PortForwarder
from virtwire.orchestrator.health import check_health
from virtwire.orchestrator.render import (
    IMAGE,
    IMAGE_USER,
    NO_TRACE,
    PORT,
    SECRETS_DIR,
    TraceFlags,
    capabilities,
    container_command,
    container_tls_args,
    container_tls_env,
    identity_files,
    log_args,
    metrics_args,
    published_port,
    shm_bytes,
)
from virtwire.orchestrator.runtime import START_TIMEOUT_S
from virtwire.orchestrator.subnet import check_subnet, pick_subnet, service_ips
from virtwire.topology import ContainerNode, Service, TapNode, Topology, VmNode

if TYPE_CHECKING:
    import docker

    from virtwire.orchestrator.pki import LanPki
    from virtwire.orchestrator.spec import ServiceSpec

logger = logging.getLogger(__name__)

LABEL_BACKEND = "virtwire.backend"
LABEL_LAN = "virtwire.lan"
LABEL_SERVICE = "virtwire.service"
#: Under the LAN's tls dir: each container's copy of its identity.
CONTAINERS_TLS_SUBDIR = "containers"


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
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                continue
            except docker.errors.APIError as exc:
                # e.g. 409 "removal already in progress" (an orchestrator still
                # stopping it): it goes away all the same.
                logger.warning("docker: removing %s: %s", container.name,
                               exc.explanation or exc)
            removed += 1
        for network in client.networks.list(filters=filters):
            try:
                network.remove()
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:  # a container still attached
                logger.warning("docker: removing network %s: %s", network.name,
                               exc.explanation or exc)
        return removed
    finally:
        client.close()


class DockerRuntime:
    """Services of LAN ``topo.name`` as containers; see the module docstring."""

    kind = "docker"

    def __init__(self, topo: Topology, subnet: str = "", image: str = IMAGE,
                 pki: LanPki | None = None, trace: TraceFlags = NO_TRACE) -> None:
        self.topo = topo
        #: ``up --trace-sample/--trace-otlp``, given to every container.
        self.trace = trace
        self.image = image
        self.subnet = check_subnet(subnet) if subnet else None
        self.network = network_name(topo.name)
        #: The LAN's certificates (topology ``tls:``); None: ``--insecure``.
        self.pki = pki
        self.containers: dict[str, str] = {}  # service -> container id
        #: publish: relays, by service.
        self.forwarders: dict[str, PortForwarder] = {}
        self._client: docker.DockerClient | None = None
        self._ips: dict[str, str] = {}
        #: Containers being removed (``stop``), by service.
        self._removals: dict[str, asyncio.Task[None]] = {}
        #: Each service's bind mounts of its identity, made at its first start.
        self._tls_binds: dict[str, dict[str, Mapping[str, str]]] = {}

    # -- what each service gets -----------------------------------------------------
    def listen_address(self, name: str) -> str:
        return f"{self._ips[name]}:{PORT}"

    def reachable_at(self, node: TapNode) -> str:
        """Where this host reaches tap node ``node``'s listening port: its published
        address, else its container's on the LAN's network ("" for a unix socket or
        a multicast group, which stay inside the network)."""
        if node.publish:
            return node.publish
        addr = parse_sockaddr(node.listen_address())
        if addr.is_unix or "mcast" in node.options or node.name not in self._ips:
            return ""
        return f"{self._ips[node.name]}:{addr.port}"

    def _service(self, name: str) -> Service:
        return next(s for s in self.topo.services if s.name == name)

    def _command(self, name: str, spec: ServiceSpec) -> list[str]:
        tls_args = container_tls_args(name) if self.pki is not None else ["--insecure"]
        # With the topology's metrics: /metrics on 0.0.0.0:PORT of its own network
        # namespace, as render gives it (docs/metrics.md). The orchestrator's own
        # --log-format, as ProcessRuntime passes it (docs/logs.md).
        return [*container_command(spec), *tls_args, *metrics_args(self.topo, name),
                *log_args(name, log_format()), *self.trace.args(name, files=False)]

    def _owner(self, name: str) -> tuple[int, int]:
        """The uid and gid service ``name``'s container runs as, with TLS on."""
        if capabilities(self.topo, self._service(name)):
            return (0, 0)
        if os.geteuid() == 0:
            return IMAGE_USER
        # Not root: the key cannot be given to the image's user, so the
        # container runs as its owner (still unprivileged).
        return (os.getuid(), os.getgid())

    def _user(self, name: str) -> str | None:
        """Who the container runs as (None: the image's user)."""
        if capabilities(self.topo, self._service(name)):
            return "0"
        if self.pki is None:
            return None
        return "{}:{}".format(*self._owner(name))

    def identity_mounts(self, name: str, ip: str) -> dict[str, Mapping[str, str]]:
        """Service ``name``'s certificate (SANs ``ip`` and ``name``), key and the CA,
        copied for its container and bind-mounted read-only; issued once, so a
        restarted container gets the same files."""
        if self.pki is None:
            return {}
        if name in self._tls_binds:
            return self._tls_binds[name]
        ident = self.pki.identity(name, [ip, name])
        directory = self.pki.out_dir / CONTAINERS_TLS_SUBDIR / name
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        ca, cert, key = identity_files(name)
        binds: dict[str, Mapping[str, str]] = {}
        for file, data in ((ca, ident.ca_pem), (cert, ident.cert_pem), (key, ident.key_pem)):
            path = directory / file
            (certs.write_private if file == key else certs.write_public)(path, data)
            if os.geteuid() == 0:
                os.chown(path, *self._owner(name))
            binds[str(path)] = {"bind": f"{SECRETS_DIR}/{file}", "mode": "ro"}
        self._tls_binds[name] = binds
        return binds

    def _host_config(self, name: str) -> dict[str, Any]:
        svc = self._service(name)
        config: dict[str, Any] = {}
        caps = capabilities(self.topo, svc)
        if caps:
            config.update(cap_add=caps, devices=["/dev/net/tun:/dev/net/tun:rwm"])
        node = self.topo.node(svc.node)
        if isinstance(node, ContainerNode):
            # Its TAP opens in the container node's namespace, /proc/1/ns/net of
            # the pid namespace they share (orchestrator/containers.py).
            config["pid_mode"] = f"container:{container_name(self.topo.name, node.name)}"
        if isinstance(node, VmNode):
            if svc.kind == "guestmem":
                config.update(shm_size=shm_bytes(node), ipc_mode="shareable")
            else:
                guestmem = container_name(self.topo.name, node.service("guestmem"))
                config["ipc_mode"] = f"container:{guestmem}"
        return config

    # -- Runtime -------------------------------------------------------------------
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
        self._ips = service_ips(self.subnet, [svc.name for svc in self.topo.services])
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

    def _published(self) -> dict[str, TapNode]:
        """This machine's tap nodes with a ``publish:``, by service name."""
        return {node.name: node for node in self.topo.taps()
                if node.publish and node.host is None}

    async def start(self, name: str, spec: ServiceSpec, listen: str) -> tuple[str, int]:
        await self._removed(name)  # its old container, if being removed, has its name
        cid = await asyncio.to_thread(self._create, name, spec, listen)
        self.containers[name] = cid
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            state = await asyncio.to_thread(self._state, cid)
            if state is None or not state.get("Running"):
                logs = await asyncio.to_thread(self._logs, cid)
                code = state.get("ExitCode") if state else "removed"
                raise BackendError(f"{name}: container exited ({code}):\n{logs}")
            if await check_health(listen, timeout=1.0):
                await self._publish(name, ip=listen.rpartition(":")[0])
                return listen, int(state.get("Pid") or 0)
            if time.monotonic() > deadline:
                logs = await asyncio.to_thread(self._logs, cid)
                raise BackendError(f"{name}: not SERVING at {listen} within "
                                   f"{START_TIMEOUT_S:.0f}s:\n{logs}")
            await asyncio.sleep(0.1)

    async def _publish(self, name: str, ip: str) -> None:
        """Start relaying ``name``'s ``publish:`` address to its container, once
        (a restarted container keeps its address, so the relay stays)."""
        node = self._published().get(name)
        if node is None or name in self.forwarders:
            return
        host_ip, host_port, port = published_port(node)
        forwarder = PortForwarder(SockAddr(host_ip, host_port), SockAddr(ip, port))
        await forwarder.start()
        self.forwarders[name] = forwarder

    def _create(self, name: str, spec: ServiceSpec, listen: str) -> str:
        import docker.errors

        assert self._client is not None
        api = self._client.api
        ip = listen.rpartition(":")[0]
        cname = container_name(self.topo.name, name)
        extra = self._host_config(name)
        try:
            binds = self.identity_mounts(name, ip)
        except OSError as exc:
            raise BackendError(f"{name}: cannot write its certificate for the container: "
                               f"{exc.strerror or exc}") from exc
        host_config = api.create_host_config(init=True, binds=binds, **extra)
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
                networking_config=networking, user=self._user(name),
                environment=container_tls_env(name) if self.pki is not None else None)
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
        """Stop the container (SIGTERM, then SIGKILL after ``timeout``) and start
        removing it. Removal (deleting its filesystem, seconds with the vfs
        driver) goes on in the background, so a LAN's containers are removed
        concurrently; a later ``start`` of ``name`` and ``close`` wait for it."""
        cid = self.containers.pop(name, None)
        if cid is None:
            return
        await asyncio.to_thread(self._stop, cid, timeout)
        self._removals[name] = asyncio.create_task(asyncio.to_thread(self._remove, cid),
                                                   name=f"docker-rm-{name}")

    async def _removed(self, name: str) -> None:
        task = self._removals.pop(name, None)
        if task is not None:
            await task

    def _stop(self, cid: str, timeout: float) -> None:
        import docker.errors

        assert self._client is not None
        try:
            if timeout > 0:
                self._client.api.stop(cid, timeout=max(1, round(timeout)))
            else:
                self._client.api.kill(cid)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:  # not running any more, or already going
            logger.debug("docker: stopping %s: %s", cid[:12], exc)

    def _remove(self, cid: str) -> None:
        import docker.errors

        assert self._client is not None
        try:
            self._client.api.remove_container(cid, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            logger.warning("docker: removing %s: %s", cid[:12], exc)

    async def close(self) -> None:
        for forwarder in self.forwarders.values():
            await forwarder.close()
        self.forwarders.clear()
        for name in reversed(list(self.containers)):
            await self.stop(name)
        removals = list(self._removals.values())
        self._removals.clear()
        await asyncio.gather(*removals, return_exceptions=True)
        if self._client is not None:
            await asyncio.to_thread(remove_lan, self.topo.name)
            self._client.close()
            self._client = None
