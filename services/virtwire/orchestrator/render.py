"""Render a topology as a compose file or Kubernetes manifests (``virtwire render``).

Each virtwire service becomes one container running ``virtwire serve KIND ...``
with the arguments the orchestration plan gives it (``plan.plan``, as for
the orchestrator's runtimes), except that every service listens on
``0.0.0.0:50051`` and reaches the others by their service DNS name
(``NAME:50051``), and stream/dgram backends that listen on loopback in the
topology listen on ``0.0.0.0`` inside their container. Nothing is published,
except a stream port whose node says ``publish: HOST:PORT`` (compose
``ports:``; that container also joins a second, non-masquerading network,
since Docker publishes no port of a container only on internal networks).
The file's header says how to run it and tear it down.

The compose file runs under ``docker-compose up`` and, unchanged, as a Swarm
stack (``docker stack deploy``); tests/test_compose.py runs both. Swarm
ignores ``restart`` (hence also ``deploy.restart_policy``: it restarts failed
tasks, which also covers ``depends_on``, ignored there too), ``ipc``,
``shm_size`` and ``devices``. So on a Swarm a VM's e1000 and guest reach its
RAM by guestmem RPCs (RPC DMA, slower) instead of a shared /dev/shm, the
guestmem's /dev/shm is Docker's default 64 MiB (a larger guest RAM fails with
ENOSPC), and ``tap`` backends and bridged guests get no /dev/net/tun: those
need compose. The network's subnet is fixed, so one rendered LAN runs at a
time per engine.

Trust: without ``tls:`` in the topology every service gets ``--insecure``
(plaintext on 0.0.0.0, any container on the network may call every RPC), and
the header says so. With ``tls: {dir: PKI}`` render issues, from PKI's CA key,
each service a certificate (role service, SAN its service name) into a
certificates directory (``--certs-dir``, default ``STEM-certs`` next to the
output), plus a ``controller`` identity for the operator; without a CA key
PKI's ``service.pem`` is handed to every service, as the orchestrator does.
A service sees only its own certificate and key and the CA, at
``/run/secrets/{ca.pem,NAME.pem,NAME-key.pem}`` (compose: file ``secrets:``;
Kubernetes: a ``kubernetes.io/tls`` Secret per service, embedded in the
manifests, which are then written 0600, mounted read-only under
``/run/secrets/virtwire``), and ``VIRTWIRE_TLS_DIR``/``VIRTWIRE_TLS_NAME`` name
that identity to the CLI inside the container. docker-compose (not Swarm)
bind-mounts file secrets with their host owner and mode, so render, as root,
gives each key to its container's user (0 or the image's 10000).
"""

from __future__ import annotations

import base64
import dataclasses
import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from virtwire import __version__, certs, tls
from virtwire.address import parse_sockaddr
from virtwire.errors import BackendError, ConfigError
from virtwire.logfmt import LOG_FORMATS
from virtwire.orchestrator.pki import LanPki
from virtwire.orchestrator.plan import plan
from virtwire.orchestrator.spec import (
    GuestMemServiceSpec,
    GuestServiceSpec,
    ServiceSpec,
    TapServiceSpec,
)
from virtwire.orchestrator.subnet import check_subnet
from virtwire.topology import METRICS_KINDS, ContainerNode, Service, TapNode, Topology, VmNode
from virtwire.tracing import parse_otlp_endpoint, parse_sample

PORT = 50051
LISTEN = f"0.0.0.0:{PORT}"
IMAGE = f"virtwire:{__version__}"
#: The compose network's subnet (inside 198.18.0.0/15, RFC 2544 benchmarking space).
SUBNET = "198.18.20.0/24"
NETWORK = "lan"
#: The network a container with a published port also joins: Docker publishes
#: no port of a container that is only on internal networks. It does not
#: masquerade, so the container gets no route out through it.
PUBLISH_NETWORK = "publish"
PUBLISH_DRIVER_OPTS = {"com.docker.network.bridge.enable_ip_masquerade": "false"}
FORMATS = ("compose", "k8s")
_MIB = 1 << 20
#: /dev/shm headroom above the guest RAM for guestmem.
_SHM_HEADROOM = 16 * _MIB
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
#: Backend options that name a local address to bind (rewritten off loopback).
_BIND_OPTIONS = {"stream": ("listen",), "dgram": ("local",)}
#: The image's unprivileged user and group (deploy/Dockerfile).
IMAGE_USER = (10000, 10000)
#: Where a container finds its identity (compose's and Swarm's secrets directory).
SECRETS_DIR = "/run/secrets"
#: The same in a Kubernetes pod (a Secret volume; /run/secrets itself holds the
#: service account's).
K8S_SECRETS_DIR = "/run/secrets/virtwire"


def address_of(service: str) -> str:
    """A service's gRPC address inside the rendered deployment."""
    return f"{service}:{PORT}"


def _unloop(value: str) -> str:
    """``127.0.0.1:PORT`` -> ``0.0.0.0:PORT``; other hosts and unix: paths as given."""
    host, sep, port = value.rpartition(":")
    if sep and host in _LOOPBACK_HOSTS:
        return f"0.0.0.0:{port}"
    return value


def container_tap_options(backend: str, options: Mapping[str, str]) -> dict[str, str]:
    """A tap backend's options with its loopback bind addresses moved to 0.0.0.0."""
    opts = dict(options)
    for key in _BIND_OPTIONS.get(backend, ()):
        if key in opts:
            opts[key] = _unloop(opts[key])
    return opts


def container_spec(spec: ServiceSpec) -> ServiceSpec:
    """``spec`` for a service in its own container.

    Loopback binds of stream/dgram backends move to 0.0.0.0, and a bridged
    guest creates its network namespace (the container's own) itself.
    """
    if isinstance(spec, TapServiceSpec):
        return dataclasses.replace(spec, options=container_tap_options(spec.backend,
                                                                       spec.options))
    if isinstance(spec, GuestServiceSpec) and spec.bridge_tap and spec.netns:
        return dataclasses.replace(spec, netns_create=True)
    return spec


def size_text(size: int) -> str:
    """``67108864`` -> ``"64M"``: a size as ``serve guestmem --size`` takes it."""
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if size and size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return str(size)


def container_command(spec: ServiceSpec) -> list[str]:
    """``serve KIND --listen 0.0.0.0:50051 ARGS`` for a service in its own container.

    Guest RAM is given as a size (``--size 64M``), which a compose file shows
    as written, not as a quoted number of bytes.
    """
    argv = container_spec(spec).argv()
    if isinstance(spec, GuestMemServiceSpec):
        argv[argv.index("--size") + 1] = size_text(spec.size)
    return ["serve", spec.kind, "--listen", LISTEN, *argv]


def published_port(node: TapNode) -> tuple[str, int, int]:
    """A tap node's ``publish:`` as (host IP, host port, container port)."""
    publish = parse_sockaddr(node.publish)
    return publish.host, publish.port, parse_sockaddr(node.listen_address()).port


def identity_files(name: str) -> tuple[str, str, str]:
    """The file names of service ``name``'s CA, certificate and key in its container."""
    return (certs.CA_CERT, certs.cert_path(Path(), name).name,
            certs.key_path(Path(), name).name)


def container_tls_args(name: str, directory: str = SECRETS_DIR) -> list[str]:
    """``--tls-ca/--tls-cert/--tls-key`` of service ``name``'s files in ``directory``."""
    ca, cert, key = identity_files(name)
    return ["--tls-ca", f"{directory}/{ca}", "--tls-cert", f"{directory}/{cert}",
            "--tls-key", f"{directory}/{key}"]


def container_tls_env(name: str, directory: str = SECRETS_DIR) -> dict[str, str]:
    """The environment that gives the CLI in service ``name``'s container its identity."""
    return {tls.ENV_DIR: directory, tls.ENV_NAME: name}


@dataclasses.dataclass(frozen=True)
class TraceFlags:
    """What ``up/render --trace-*`` give every service (docs/tracing.md).

    ``sample``: ``1/N`` (``--trace-sample``), "" or off for none; ``otlp``: the
    ``--trace-otlp`` endpoint; ``file_dir``: with the process backend, each
    service writes ``DIR/NAME.jsonl`` (``--trace-file``), "" for none.
    """

    sample: str = ""
    otlp: str = ""
    file_dir: str = ""

    def checked(self) -> TraceFlags:
        """These flags with ``sample`` as 1/N ("" for off); ConfigError if bad."""
        every = parse_sample(self.sample)
        check_otlp(self.otlp)
        return dataclasses.replace(self, sample=f"1/{every}" if every else "")

    def args(self, name: str, *, files: bool = True) -> list[str]:
        """The flags of service ``name`` (``files``: with --trace-file)."""
        out: list[str] = []
        if self.sample:
            out += ["--trace-sample", self.sample]
        if self.otlp:
            out += ["--trace-otlp", self.otlp]
        if self.file_dir and files:
            out += ["--trace-file", f"{self.file_dir}/{name}.jsonl"]
        return out


NO_TRACE = TraceFlags()


def check_otlp(endpoint: str) -> None:
    """ConfigError unless ``endpoint`` is "" or an OTLP endpoint the services take
    (``tracing.parse_otlp_endpoint``: HOST:PORT or http(s)://HOST:PORT, no path),
    with the message ``serve`` would give."""
    if endpoint:
        parse_otlp_endpoint(endpoint)


def service_commands(topo: Topology, directory: str = SECRETS_DIR,
                     log_format: str = "text", trace: TraceFlags = NO_TRACE
                     ) -> dict[str, list[str]]:
    """``serve KIND --listen 0.0.0.0:50051 ...`` for every service, in start order.

    With the topology's ``tls:`` each gets its identity's files in ``directory``,
    else ``--insecure``; with its ``metrics:``, ``--metrics-listen 0.0.0.0:PORT``;
    with a ``log_format`` other than text, ``--log-format FMT --log-name NAME``;
    ``trace``'s --trace-sample/--trace-otlp (no --trace-file: a container has no
    state dir of the LAN).
    """
    specs = plan(topo, {svc.name: address_of(svc.name) for svc in topo.services})
    return {name: [*container_command(spec),
                   *(container_tls_args(name, directory) if topo.tls_dir else ["--insecure"]),
                   *metrics_args(topo, name), *log_args(name, log_format),
                   *trace.args(name, files=False)]
            for name, spec in specs.items()}


def log_args(name: str, log_format: str) -> list[str]:
    """``--log-format FMT --log-name NAME`` for service ``name`` (docs/logs.md); none
    for text, the services' default, so a text LAN's commands stay as they were."""
    if log_format not in LOG_FORMATS:
        raise ConfigError(f"log format {log_format!r}: use one of {', '.join(LOG_FORMATS)}")
    if log_format == "text":
        return []
    return ["--log-format", log_format, "--log-name", name]


def has_metrics(topo: Topology, svc: Service) -> bool:
    """Whether ``svc``'s container serves /metrics (the topology's ``metrics:``)."""
    return bool(topo.metrics_port) and svc.kind in METRICS_KINDS


def metrics_args(topo: Topology, name: str) -> list[str]:
    """``--metrics-listen 0.0.0.0:PORT`` (every container has its own port PORT, the
    topology's ``metrics.port``) with the LAN and service labels; none without it."""
    svc = next(s for s in topo.services if s.name == name)
    if not has_metrics(topo, svc):
        return []
    return ["--metrics-listen", f"0.0.0.0:{topo.metrics_port}", "--metrics-lan", topo.name,
            "--metrics-service", name]


def scrape_annotations(topo: Topology) -> dict[str, str]:
    """Prometheus's usual ``prometheus.io/*`` annotations (labels in compose) for a
    service with metrics; https with the topology's ``tls:`` (a scraper then needs
    a client certificate from the LAN's CA: docs/metrics.md)."""
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(topo.metrics_port),
            "prometheus.io/path": "/metrics",
            "prometheus.io/scheme": "https" if topo.tls_dir else "http"}


def needs_net_admin(topo: Topology, svc: Service) -> bool:
    """A Linux TAP backend, or a guest bridged to a TAP: NET_ADMIN and /dev/net/tun."""
    node = topo.node(svc.node)
    if isinstance(node, TapNode):
        return node.backend == "tap"
    if isinstance(node, VmNode):
        return svc.kind == "guest" and node.bridge is not None
    return isinstance(node, ContainerNode)  # its TAP, inside the container node


def capabilities(topo: Topology, svc: Service) -> list[str]:
    """The capabilities a service's container needs (none for most)."""
    if not needs_net_admin(topo, svc):
        return []
    caps = ["NET_ADMIN"]
    node = topo.node(svc.node)
    # Creating a network namespace (bridge netns=) is CAP_SYS_ADMIN.
    if isinstance(node, VmNode) and node.bridge is not None and node.bridge.netns:
        caps.append("SYS_ADMIN")
    # Entering a container node's network namespace (setns, net.nsjoin) too.
    if isinstance(node, ContainerNode):
        caps.append("SYS_ADMIN")
    return caps


def container_node_compose(topo: Topology, node: ContainerNode) -> dict[str, Any]:
    """A container node as a compose service: its image, command and environment,
    no network (``network_mode: none``) or only its management network."""
    spec: dict[str, Any] = {"image": node.image, "hostname": node.name,
                            "labels": {"virtwire.lan": topo.name, "virtwire.node": node.name,
                                       "virtwire.kind": "container"}}
    if node.command:
        spec["command"] = list(node.command)
    if node.env:
        spec["environment"] = dict(node.env)
    if node.management:
        spec["networks"] = [node.management]
    else:
        spec["network_mode"] = "none"
    spec["restart"] = "on-failure"
    return spec


def container_owner(topo: Topology, svc: Service) -> tuple[int, int]:
    """The uid and gid service ``svc``'s container runs as: root where it makes a TAP."""
    return (0, 0) if capabilities(topo, svc) else IMAGE_USER


def shm_bytes(node: VmNode) -> int:
    """/dev/shm size for a VM's guestmem: its RAM rounded up to MiB, plus headroom."""
    return -(-node.memory // _MIB) * _MIB + _SHM_HEADROOM


@dataclasses.dataclass(frozen=True)
class Identities:
    """The certificates of a rendered LAN (``issue_identities``), in ``directory``."""

    directory: Path
    #: By service name.
    services: dict[str, tls.TlsConfig]
    #: Keys still owned by the user who rendered (not root), so a non-root
    #: container cannot read them under docker-compose (a Swarm copies them).
    unowned: list[Path]


def default_certs_dir(output: Path) -> Path:
    """``lan.yml`` -> ``lan-certs`` in the same directory."""
    return output.with_name(f"{output.stem}-certs")


def issue_identities(topo: Topology, directory: Path) -> Identities:
    """Each service's certificate and key (``NAME.pem``, ``NAME-key.pem``), ``ca.pem``
    and a ``controller`` identity in ``directory`` (0700), from the topology's tls dir.

    As root, each service's files are given to the user its container runs as.
    """
    assert topo.tls_dir is not None
    if directory.resolve() == topo.tls_dir.resolve():
        raise ConfigError(f"--certs-dir {directory} is the topology's tls.dir: give "
                          "another directory for the rendered LAN's certificates")
    root = os.geteuid() == 0
    services: dict[str, tls.TlsConfig] = {}
    unowned: list[Path] = []
    try:
        pki = LanPki(topo.tls_dir, directory)
        for svc in topo.services:
            ident = pki.identity(svc.name, [svc.name])
            cert, key = certs.cert_path(directory, svc.name), certs.key_path(directory, svc.name)
            if ident.cert.resolve() != cert.resolve():
                # Handed out (no CA key): tls.dir's service.pem, as this service's files.
                certs.write_public(cert, ident.cert_pem)
                certs.write_private(key, ident.key_pem)
            owner = container_owner(topo, svc)
            if root:
                for path in (cert, key):
                    os.chown(path, *owner)
            elif owner != (0, 0) and owner[0] != os.getuid():
                unowned.append(key)
            services[svc.name] = tls.TlsConfig.from_dir(directory, svc.name)
        pki.controller()
    except OSError as exc:
        raise ConfigError(f"cannot write certificates into {directory}: "
                          f"{exc.strerror or exc}") from None
    return Identities(directory, services, unowned)


def _vm(topo: Topology, svc: Service) -> VmNode | None:
    node = topo.node(svc.node)
    return node if isinstance(node, VmNode) else None


def _secret_file(path: Path, base: Path | None) -> str:
    """``path`` as a compose ``file:``: relative to the compose file's directory ``base``."""
    if base is None:
        return str(path.resolve())
    rel = os.path.relpath(path.resolve(), base.resolve())
    return rel if rel.startswith("..") else f"./{rel}"


def _compose_secrets(topo: Topology, svc: Service, identities: Identities,
                     base: Path | None, secrets: dict[str, Any]) -> list[dict[str, Any]]:
    """Service ``svc``'s secrets (the CA, its certificate and key), added to the
    top-level ``secrets``. A Swarm gives the key to the container's user, 0400."""
    ca, cert, key = identity_files(svc.name)
    ident = identities.services[svc.name]
    secrets.setdefault("ca", {"file": _secret_file(identities.directory / ca, base)})
    secrets[f"{svc.name}-cert"] = {"file": _secret_file(ident.cert, base)}
    secrets[f"{svc.name}-key"] = {"file": _secret_file(ident.key, base)}
    uid, gid = container_owner(topo, svc)
    return [{"source": "ca", "target": ca},
            {"source": f"{svc.name}-cert", "target": cert},
            {"source": f"{svc.name}-key", "target": key,
             "uid": str(uid), "gid": str(gid), "mode": 0o400}]


def render_compose(topo: Topology, subnet: str = SUBNET, identities: Identities | None = None,
                   base: Path | None = None, log_format: str = "text",
                   trace: TraceFlags = NO_TRACE) -> dict[str, Any]:
    """A version 3.8 compose file (docker-compose v1, ``docker compose``, ``docker stack``).

    With ``identities`` (the topology has ``tls:``) each service gets its own as
    file secrets, their paths relative to ``base`` (the compose file's directory).
    """
    if topo.tls_dir is not None and identities is None:
        raise ConfigError("the topology has a tls: section: render needs the "
                          "certificates (issue_identities)")
    commands = service_commands(topo, log_format=log_format, trace=trace)
    services: dict[str, Any] = {}
    secrets: dict[str, Any] = {}
    for svc in topo.services:
        spec: dict[str, Any] = {
            "image": IMAGE,
            "command": commands[svc.name],
            "hostname": svc.name,
            "networks": [NETWORK],
            "labels": {"virtwire.lan": topo.name, "virtwire.node": svc.node,
                       "virtwire.kind": svc.kind},
        }
        node = topo.node(svc.node)
        if isinstance(node, TapNode) and node.publish:
            host_ip, host_port, port = published_port(node)
            spec["ports"] = [f"{host_ip}:{host_port}:{port}"]
            spec["networks"] = [NETWORK, PUBLISH_NETWORK]
        if svc.needs:
            spec["depends_on"] = list(svc.needs)
        if has_metrics(topo, svc):
            # Reachable on the LAN's network (for a Prometheus joined to it), not published.
            spec["expose"] = [str(topo.metrics_port)]
            spec["labels"].update(scrape_annotations(topo))
        caps = capabilities(topo, svc)
        if caps:
            spec["cap_add"] = caps
            spec["devices"] = ["/dev/net/tun:/dev/net/tun"]
            spec["user"] = "0"
        if isinstance(node, ContainerNode):
            # Its TAP opens in the container node's namespace: /proc/1/ns/net of
            # the pid namespace they share (plan.CONTAINER_NETNS).
            spec["pid"] = f"service:{node.name}"
            spec["depends_on"] = [*spec.get("depends_on", []), node.name]
        vm = _vm(topo, svc)
        if vm is not None:
            if svc.kind == "guestmem":
                spec["shm_size"] = f"{shm_bytes(vm) // _MIB}m"
                # Shared /dev/shm for the e1000's and guest's DMA (compose only:
                # swarm ignores ipc and GuestMemClient falls back to RPCs).
                spec["ipc"] = "shareable"
            else:
                spec["ipc"] = f"service:{vm.service('guestmem')}"
        if identities is not None:
            spec["secrets"] = _compose_secrets(topo, svc, identities, base, secrets)
            spec["environment"] = container_tls_env(svc.name)
        spec["restart"] = "on-failure"
        # Swarm's equivalent (it ignores `restart`); docker-compose 1.29 accepts it.
        spec["deploy"] = {"restart_policy": {"condition": "on-failure"}}
        services[svc.name] = spec
    for cnode in topo.containers():
        services[cnode.name] = container_node_compose(topo, cnode)
    networks: dict[str, Any] = {NETWORK: {"internal": True,
                                          "ipam": {"config": [{"subnet": subnet}]},
                                          "labels": {"virtwire.lan": topo.name}}}
    if any(node.publish for node in topo.taps()):
        networks[PUBLISH_NETWORK] = {"driver_opts": PUBLISH_DRIVER_OPTS,
                                     "labels": {"virtwire.lan": topo.name}}
    for management in sorted({c.management for c in topo.containers() if c.management}):
        networks[management] = {"external": True}  # the user's, as up requires
    doc: dict[str, Any] = {"version": "3.8", "services": services, "networks": networks}
    if secrets:
        doc["secrets"] = secrets
    return doc


def _labels(topo: Topology, svc: Service) -> dict[str, str]:
    return {"app.kubernetes.io/name": svc.name, "app.kubernetes.io/component": svc.kind,
            "app.kubernetes.io/part-of": "virtwire", "virtwire/lan": topo.name,
            "virtwire/node": svc.node}


def _check_k8s_name(name: str) -> None:
    # Service names are RFC 1035 labels: the topology allows a leading digit.
    if not name[:1].isalpha() or len(name) > 63:
        raise ConfigError(f"service {name!r} cannot be a Kubernetes Service name: "
                          "it must start with a letter and be at most 63 characters")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _k8s_secret(topo: Topology, svc: Service, ident: tls.TlsConfig) -> dict[str, Any]:
    """Service ``svc``'s identity as a ``kubernetes.io/tls`` Secret (plus ``ca.crt``)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"{svc.name}-tls", "labels": _labels(topo, svc)},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": _b64(ident.cert_pem), "tls.key": _b64(ident.key_pem),
                 "ca.crt": _b64(ident.ca_pem)},
    }


def _k8s_tls_volume(topo: Topology, svc: Service) -> dict[str, Any]:
    """The Secret as files ``ca.pem``, ``NAME.pem`` and ``NAME-key.pem``.

    A non-root pod reads them through its fsGroup (kubelet makes them 0440,
    group fsGroup), a root one as their owner (0400).
    """
    ca, cert, key = identity_files(svc.name)
    return {"name": "tls", "secret": {
        "secretName": f"{svc.name}-tls",
        "defaultMode": 0o400 if container_owner(topo, svc) == (0, 0) else 0o440,
        "items": [{"key": "ca.crt", "path": ca}, {"key": "tls.crt", "path": cert},
                  {"key": "tls.key", "path": key}]}}


def render_k8s(topo: Topology, identities: Identities | None = None,
               log_format: str = "text", trace: TraceFlags = NO_TRACE) -> list[dict[str, Any]]:
    """A Deployment and a ClusterIP Service (port 50051) per virtwire service.

    With ``identities`` (the topology has ``tls:``) each service's comes first,
    as a Secret its pod mounts read-only.
    """
    if topo.tls_dir is not None and identities is None:
        raise ConfigError("the topology has a tls: section: render needs the "
                          "certificates (issue_identities)")
    if topo.containers():
        raise ConfigError(f"container nodes ({', '.join(c.name for c in topo.containers())}) "
                          "render as compose only: in Kubernetes their interfaces' services "
                          "would have to share their pod")
    commands = service_commands(topo, K8S_SECRETS_DIR, log_format, trace)
    docs: list[dict[str, Any]] = []
    for svc in topo.services:
        _check_k8s_name(svc.name)
        labels = _labels(topo, svc)
        selector = {"virtwire/lan": topo.name, "app.kubernetes.io/name": svc.name}
        container: dict[str, Any] = {
            "name": svc.kind,
            "image": IMAGE,
            "args": commands[svc.name],
            "ports": [{"name": "grpc", "containerPort": PORT, "protocol": "TCP"}],
        }
        service_ports = [{"name": "grpc", "port": PORT, "targetPort": PORT, "protocol": "TCP"}]
        template: dict[str, Any] = {"labels": labels}
        if has_metrics(topo, svc):
            port = topo.metrics_port
            container["ports"].append({"name": "metrics", "containerPort": port,
                                       "protocol": "TCP"})
            service_ports.append({"name": "metrics", "port": port, "targetPort": port,
                                  "protocol": "TCP"})
            template["annotations"] = scrape_annotations(topo)
        volumes: list[dict[str, Any]] = []
        mounts: list[dict[str, Any]] = []
        caps = capabilities(topo, svc)
        if caps:
            container["securityContext"] = {"runAsUser": 0,
                                            "capabilities": {"add": caps}}
            volumes.append({"name": "tun", "hostPath": {"path": "/dev/net/tun",
                                                        "type": "CharDevice"}})
            mounts.append({"name": "tun", "mountPath": "/dev/net/tun"})
        vm = _vm(topo, svc)
        if vm is not None and svc.kind == "guestmem":
            volumes.append({"name": "shm", "emptyDir": {
                "medium": "Memory", "sizeLimit": f"{shm_bytes(vm) // _MIB}Mi"}})
            mounts.append({"name": "shm", "mountPath": "/dev/shm"})
        pod: dict[str, Any] = {"containers": [container]}
        if identities is not None:
            docs.append(_k8s_secret(topo, svc, identities.services[svc.name]))
            volumes.append(_k8s_tls_volume(topo, svc))
            mounts.append({"name": "tls", "mountPath": K8S_SECRETS_DIR, "readOnly": True})
            container["env"] = [{"name": k, "value": v}
                                for k, v in container_tls_env(svc.name, K8S_SECRETS_DIR).items()]
            if not caps:
                pod["securityContext"] = {"fsGroup": IMAGE_USER[1]}
        if mounts:
            container["volumeMounts"] = mounts
        if volumes:
            pod["volumes"] = volumes
        docs.append({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": svc.name, "labels": labels},
            "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                     "selector": {"matchLabels": selector},
                     "template": {"metadata": template, "spec": pod}},
        })
        docs.append({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": svc.name, "labels": labels},
            "spec": {"type": "ClusterIP", "selector": selector, "ports": service_ports},
        })
    return docs


class _Dumper(yaml.SafeDumper):
    """No ``&id001`` anchors and aliases for the label maps shared between objects."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _trust_header(fmt: str, identities: Identities | None) -> str:
    if identities is None:
        return ("# No tls: in the topology, so every service runs with --insecure: plaintext\n"
                "# gRPC on 0.0.0.0:50051, and anything that reaches the network may call\n"
                "# every RPC. Add `tls: {dir: PKI}` (virtwire certs init PKI) for mutual TLS.\n")
    where = SECRETS_DIR if fmt == "compose" else K8S_SECRETS_DIR
    text = (f"# Mutual TLS: each service has its own certificate and key from\n"
            f"# {identities.directory} (issued from the topology's tls dir), at {where};\n"
            f"# controller.pem there is the operator's identity.\n")
    if fmt == "k8s":
        text += "# This file holds every service's private key (Secrets): keep it private.\n"
    elif identities.unowned:
        files = " ".join(shlex.quote(str(p)) for p in identities.unowned)
        text += ("# Rendered by a non-root user: docker-compose bind-mounts these keys as they\n"
                 "# are, so give them to the image's user first (a Swarm copies them):\n"
                 f"#   sudo chown {IMAGE_USER[0]}:{IMAGE_USER[1]} {files}\n")
    return text


def _run_header(topo: Topology, fmt: str, output: Path | None) -> str:
    """How to run the file and tear it down, and where its stream ports are."""
    file = shlex.quote(str(output)) if output is not None else "FILE"
    lan = topo.name
    if fmt == "k8s":
        return (f"# Run:       kubectl create namespace {lan}; kubectl -n {lan} apply -f {file}\n"
                f"# Tear down: kubectl -n {lan} delete -f {file}\n")
    text = (f"# Run:       docker compose -p {lan} -f {file} up -d   (or docker-compose ...)\n"
            f"# Tear down: docker compose -p {lan} -f {file} down -v\n"
            f"# Swarm:     docker stack deploy -c {file} {lan}; tear down: docker stack rm {lan}\n")
    for node in topo.taps():
        listen = node.options.get("listen") or node.options.get("local", "")
        if node.publish:
            text += (f"# {node.name}: its stream port is published at {node.publish} "
                     "(a Swarm publishes on every interface)\n")
        elif listen and not listen.startswith("unix:"):
            text += (f"# {node.name}: its {node.backend} port is {node.name}:"
                     f"{listen.rpartition(':')[2]} on the network, not published\n"
                     f"#   (publish: 127.0.0.1:PORT on the node publishes a stream port)\n")
    return text


def render(topo: Topology, fmt: str, subnet: str = "", *, output: Path | None = None,
           certs_dir: Path | None = None, log_format: str = "text",
           trace: TraceFlags = NO_TRACE) -> str:
    """The rendered YAML text for ``fmt`` (compose or k8s).

    ``subnet``: the compose network's (inside 198.18.0.0/15; default SUBNET), so
    that several rendered LANs can run on one engine. With the topology's
    ``tls:``, the services' certificates are issued into ``certs_dir`` (default:
    ``default_certs_dir(output)``), and compose secrets name them relative to
    ``output``'s directory. ``log_format``: every service's ``--log-format``
    (text, the default, adds nothing). ``trace``: every service's
    --trace-sample and --trace-otlp (none by default).
    """
    trace = trace.checked()
    if fmt not in FORMATS:
        raise ConfigError(f"unknown render format {fmt!r}: use one of {', '.join(FORMATS)}")
    hosts = [n.name for n in topo.nodes.values() if n.kind in ("netns", "qemu")]
    if hosts:  # a namespace or a VM of this machine: run them with 'virtwire up' here
        raise ConfigError(f"{', '.join(hosts)}: netns and qemu nodes run with 'virtwire up' "
                          "on this machine (process backend), not in a rendered deployment")
    if subnet and fmt != "compose":
        raise ConfigError("--subnet is for the compose format only")
    dumps = [nf for nf in topo.filters if nf.spec.kind == "dump"]
    if dumps:
        raise ConfigError(f"{topo.source}:{dumps[0].line}: a dump filter writes in the LAN's "
                          "state dir, which a rendered deployment has none of: run this LAN "
                          "with 'virtwire up' (process backend), or drop the dump")
    net = SUBNET
    if subnet:
        net = str(check_subnet(subnet))
    identities = None
    if topo.tls_dir is None:
        if certs_dir is not None:
            raise ConfigError("--certs-dir is for a topology with tls: (this one has none)")
    else:
        if certs_dir is None and output is None:
            raise ConfigError("the topology has a tls: section: give --certs-dir DIR for "
                              "the services' certificates (or -o FILE: they go next to it)")
        if certs_dir is None:
            assert output is not None
            certs_dir = default_certs_dir(output)
        identities = issue_identities(topo, certs_dir)
    header = (f"# virtwire {fmt} for LAN {topo.name!r}, rendered from {topo.source}\n"
              + _trust_header(fmt, identities) + _run_header(topo, fmt, output))
    if fmt == "compose":
        doc = render_compose(topo, net, identities,
                             output.parent if output is not None else None, log_format,
                             trace)
        return header + yaml.dump(doc, Dumper=_Dumper, sort_keys=False)
    return header + yaml.dump_all(render_k8s(topo, identities, log_format, trace),
                                  Dumper=_Dumper,
                                  sort_keys=False)


def holds_keys(topo: Topology, fmt: str) -> bool:
    """Whether ``render`` output embeds private keys (k8s Secrets): write it 0600."""
    return fmt == "k8s" and topo.tls_dir is not None


def write_output(path: Path, text: str, private: bool) -> None:
    """Write rendered text to ``path``; 0600 (from the start) when ``private``."""
    try:
        if private:
            certs.write_private(path, text.encode())
        else:
            path.write_text(text)
    except OSError as exc:
        raise BackendError(f"cannot write {path}: {exc.strerror or exc}") from exc
