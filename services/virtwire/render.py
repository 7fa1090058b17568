"""Render a topology as a compose file or Kubernetes manifests (``virtwire render``).

Each virtwire service becomes one container running ``virtwire serve KIND ...``
with the same arguments the orchestrator's process backend gives it
(:meth:`Orchestrator.service_spec`), except that every service listens on
``0.0.0.0:50051`` and reaches the others by their service DNS name
(``NAME:50051``), and stream/dgram backends that listen on loopback in the
topology listen on ``0.0.0.0`` inside their container (nothing is published).

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
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from virtwire import __version__
from virtwire.errors import ConfigError
from virtwire.orchestrator.core import Orchestrator, ServiceRecord
from virtwire.orchestrator.spec import GuestServiceSpec, ServiceSpec, TapServiceSpec
from virtwire.topology import Service, TapNode, Topology, VmNode

PORT = 50051
LISTEN = f"0.0.0.0:{PORT}"
IMAGE = f"virtwire:{__version__}"
#: The compose network's subnet (inside 198.18.0.0/15, RFC 2544 benchmarking space).
SUBNET = "198.18.20.0/24"
NETWORK = "lan"
FORMATS = ("compose", "k8s")
_MIB = 1 << 20
#: /dev/shm headroom above the guest RAM for guestmem.
_SHM_HEADROOM = 16 * _MIB
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
#: Backend options that name a local address to bind (rewritten off loopback).
_BIND_OPTIONS = {"stream": ("listen",), "dgram": ("local",)}


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


def container_command(svc: Service, spec: ServiceSpec) -> list[str]:
    """``serve KIND --listen 0.0.0.0:50051 ARGS`` for ``svc`` in its own container."""
    return ["serve", svc.kind, "--listen", LISTEN, *container_spec(spec).argv()]


def service_commands(topo: Topology) -> dict[str, list[str]]:
    """``serve KIND --listen 0.0.0.0:50051 ...`` for every service, in start order."""
    orch = Orchestrator(state_dir=Path("/nonexistent/virtwire-render"))
    orch.services = {s.name: ServiceRecord(name=s.name, kind=s.kind, node=s.node,
                                           address=address_of(s.name))
                     for s in topo.services}
    return {svc.name: container_command(svc, orch.service_spec(topo, svc.name))
            for svc in topo.services}


def needs_net_admin(topo: Topology, svc: Service) -> bool:
    """A Linux TAP backend, or a guest bridged to a TAP: NET_ADMIN and /dev/net/tun."""
    node = topo.node(svc.node)
    if isinstance(node, TapNode):
        return node.backend == "tap"
    if isinstance(node, VmNode):
        return svc.kind == "guest" and node.bridge is not None
    return False


def capabilities(topo: Topology, svc: Service) -> list[str]:
    """The capabilities a service's container needs (none for most)."""
    if not needs_net_admin(topo, svc):
        return []
    caps = ["NET_ADMIN"]
    node = topo.node(svc.node)
    # Creating a network namespace (bridge netns=) is CAP_SYS_ADMIN.
    if isinstance(node, VmNode) and node.bridge is not None and node.bridge.netns:
        caps.append("SYS_ADMIN")
    return caps


def shm_bytes(node: VmNode) -> int:
    """/dev/shm size for a VM's guestmem: its RAM rounded up to MiB, plus headroom."""
    return -(-node.memory // _MIB) * _MIB + _SHM_HEADROOM


def _vm(topo: Topology, svc: Service) -> VmNode | None:
    node = topo.node(svc.node)
    return node if isinstance(node, VmNode) else None


def render_compose(topo: Topology, subnet: str = SUBNET) -> dict[str, Any]:
    """A version 3.8 compose file (docker-compose v1, ``docker compose``, ``docker stack``)."""
    commands = service_commands(topo)
    services: dict[str, Any] = {}
    for svc in topo.services:
        spec: dict[str, Any] = {
            "image": IMAGE,
            "command": commands[svc.name],
            "hostname": svc.name,
            "networks": [NETWORK],
            "labels": {"virtwire.lan": topo.name, "virtwire.node": svc.node,
                       "virtwire.kind": svc.kind},
        }
        if svc.needs:
            spec["depends_on"] = list(svc.needs)
        caps = capabilities(topo, svc)
        if caps:
            spec["cap_add"] = caps
            spec["devices"] = ["/dev/net/tun:/dev/net/tun"]
            spec["user"] = "0"
        vm = _vm(topo, svc)
        if vm is not None:
            if svc.kind == "guestmem":
                spec["shm_size"] = f"{shm_bytes(vm) // _MIB}m"
                # Shared /dev/shm for the e1000's and guest's DMA (compose only:
                # swarm ignores ipc and GuestMemClient falls back to RPCs).
                spec["ipc"] = "shareable"
            else:
                spec["ipc"] = f"service:{vm.service('guestmem')}"
        spec["restart"] = "on-failure"
        # Swarm's equivalent (it ignores `restart`); docker-compose 1.29 accepts it.
        spec["deploy"] = {"restart_policy": {"condition": "on-failure"}}
        services[svc.name] = spec
    return {
        "version": "3.8",
        "services": services,
        "networks": {NETWORK: {"internal": True,
                               "ipam": {"config": [{"subnet": subnet}]},
                               "labels": {"virtwire.lan": topo.name}}},
    }


def _labels(topo: Topology, svc: Service) -> dict[str, str]:
    return {"app.kubernetes.io/name": svc.name, "app.kubernetes.io/component": svc.kind,
            "app.kubernetes.io/part-of": "virtwire", "virtwire/lan": topo.name,
            "virtwire/node": svc.node}


def _check_k8s_name(name: str) -> None:
    # Service names are RFC 1035 labels: the topology allows a leading digit.
    if not name[:1].isalpha() or len(name) > 63:
        raise ConfigError(f"service {name!r} cannot be a Kubernetes Service name: "
                          "it must start with a letter and be at most 63 characters")


def render_k8s(topo: Topology) -> list[dict[str, Any]]:
    """A Deployment and a ClusterIP Service (port 50051) per virtwire service."""
    commands = service_commands(topo)
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
        if mounts:
            container["volumeMounts"] = mounts
        pod: dict[str, Any] = {"containers": [container]}
        if volumes:
            pod["volumes"] = volumes
        docs.append({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": svc.name, "labels": labels},
            "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                     "selector": {"matchLabels": selector},
                     "template": {"metadata": {"labels": labels}, "spec": pod}},
        })
        docs.append({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": svc.name, "labels": labels},
            "spec": {"type": "ClusterIP", "selector": selector,
                     "ports": [{"name": "grpc", "port": PORT, "targetPort": PORT,
                                "protocol": "TCP"}]},
        })
    return docs


class _Dumper(yaml.SafeDumper):
    """No ``&id001`` anchors and aliases for the label maps shared between objects."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(topo: Topology, fmt: str, subnet: str = "") -> str:
    """The rendered YAML text for ``fmt`` (compose or k8s).

    ``subnet``: the compose network's (inside 198.18.0.0/15; default SUBNET), so
    that several rendered LANs can run on one engine.
    """
    header = f"# virtwire {fmt} for LAN {topo.name!r}, rendered from {topo.source}\n"
    if subnet and fmt != "compose":
        raise ConfigError("--subnet is for the compose format only")
    if fmt == "compose":
        from virtwire.orchestrator.docker import check_subnet

        net = str(check_subnet(subnet)) if subnet else SUBNET
        return header + yaml.dump(render_compose(topo, net), Dumper=_Dumper, sort_keys=False)
    if fmt == "k8s":
        return header + yaml.dump_all(render_k8s(topo), Dumper=_Dumper, sort_keys=False)
    raise ConfigError(f"unknown render format {fmt!r}: use one of {', '.join(FORMATS)}")
