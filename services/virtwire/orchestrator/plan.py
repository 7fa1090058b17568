"""The orchestration plan: what each service of a topology is started with.

A pure function of a resolved ``Topology`` and the services' gRPC addresses
(no I/O, no processes): ``service_spec`` for one service, ``plan`` for all of
them in start order. The Orchestrator calls it as the services come up (each
needs only the addresses of those started before it) and hands the specs to
its runtimes (process, docker, remote); ``render`` calls it with every
service's address inside the deployment (``NAME:50051``).

Links: the dialer of a link is given its listener's address and NetClient,
``ADDRESS/NETCLIENT``. A hub is started with its node's name (a switch
node as a hub with its VLANs, mirror and aging: ``serve switch``); a link end on
it without a port name gets a port created with the hub, named as that hub
names an unnamed port (``net.hub.hub_port_name``: ``swport1`` on hub ``sw``),
so a restarted dialer redials the same port.

A node's ``link_transport`` goes to each of its services that has links (a
vm's e1000 and guest, not its guestmem); "auto" adds no argument.

Filters: a service hosting the NetClient of a topology filter gets it as
``--object filter-KIND,id=ID,netdev=NETCLIENT,...``, in file order; a hub
link end without a port name is the port named as above. A service with a
dump filter writes in ``DUMP_ROOT/SERVICE`` (``--dump-dir``) when the caller
gives ``dump_root`` (the orchestrator: its LAN's state dir); without filters
nothing is added, so a topology without them has the argv it always had.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from virtwire.net.hub import hub_port_name
from virtwire.orchestrator import spec
from virtwire.orchestrator.hostnodes import qemu_paths, tap_name
from virtwire.topology import (
    ContainerNode,
    HubNode,
    Link,
    NetnsNode,
    NodeFilter,
    QemuNode,
    SwitchNode,
    TapNode,
    Topology,
    VmNode,
)

__all__ = ["CONTAINER_NETNS", "auto_ports", "filter_netclient", "filter_objects", "plan",
           "service_spec"]

#: A container node's network namespace as its interfaces' tap services see it
#: when they share its pid namespace (the docker backend, ``render compose``):
#: its first process's. The process backend gives ``/proc/PID/ns/net`` instead.
CONTAINER_NETNS = "/proc/1/ns/net"

#: Addresses by service name.
Addresses = Mapping[str, str]


def auto_ports(topo: Topology, hub: str) -> dict[int, str]:
    """The ports hub node ``hub`` creates for its unnamed link ends (link index -> name).

    The hub numbers every port it creates, named or not, in creation order:
    its named ports, the ports that dial, then these.
    """
    node = topo.node(hub)
    assert isinstance(node, HubNode)
    count = len(node.ports) + sum(1 for link in topo.links if link.dialer.service == hub)
    auto: dict[int, str] = {}
    for link in topo.links:
        if link.listener.service == hub and not link.listener.netclient:
            auto[link.index] = hub_port_name(node.name, count)
            count += 1
    return auto


def dial_port(link: Link) -> str:
    """The port a hub dials ``link`` from: its named one, else ``to-LISTENER``."""
    return link.dialer.netclient or f"to-{link.listener.node}"


def filter_netclient(topo: Topology, nf: NodeFilter) -> str:
    """The NetClient topology filter ``nf`` is on (a hub's unnamed link end: its port)."""
    if nf.netclient or nf.link is None:
        return nf.netclient
    link = next(link for link in topo.links if link.index == nf.link)
    if link.dialer.node == nf.node:
        return dial_port(link)
    return auto_ports(topo, nf.node)[link.index]


def filter_objects(topo: Topology, service: str) -> tuple[str, ...]:
    """The ``--object`` texts of the topology's filters on ``service``'s NetClients."""
    return tuple(replace(nf.spec, netdev=filter_netclient(topo, nf)).format()
                 for nf in topo.filters if nf.service == service)


def peer(topo: Topology, link: Link, addresses: Addresses) -> str:
    """What the dialer of ``link`` dials: ``LISTENER_ADDRESS/NETCLIENT``."""
    netclient = link.listener.netclient
    if not netclient:
        netclient = auto_ports(topo, link.listener.node)[link.index]
    return f"{addresses[link.listener.service]}/{netclient}"


def service_spec(topo: Topology, name: str, addresses: Addresses, *,
                 dump_root: str = "", lan_dir: str = "LAN",
                 netns: Mapping[str, str] | None = None) -> spec.ServiceSpec:
    """What service ``name`` is started with; ``addresses`` has those it needs
    (the listeners it dials, its VM's guestmem and e1000). ``dump_root``: where
    services with a dump filter get their --dump-dir (``DUMP_ROOT/NAME``);
    ``lan_dir``: the LAN's state dir, where a qemu node's socket and console are;
    ``netns``: by container node, its namespace file (default CONTAINER_NETNS)."""
    planned = _service_spec(topo, name, addresses, lan_dir, netns or {})
    return spec.with_dump_dir(planned, f"{dump_root}/{name}") if dump_root else planned


def _service_spec(topo: Topology, name: str, addresses: Addresses,
                  lan_dir: str = "LAN",
                  netns: Mapping[str, str] | None = None) -> spec.ServiceSpec:
    svc = next(s for s in topo.services if s.name == name)
    node = topo.node(svc.node)
    dials = [link for link in topo.links if link.dialer.service == name]
    peers = [peer(topo, link, addresses) for link in dials]
    filters = filter_objects(topo, name)
    if isinstance(node, HubNode):
        # In the hub's creation order: named ports, ports that dial, link ends.
        ports = [spec.HubPortSpec(port) for port in node.ports]
        ports += [spec.HubPortSpec(dial_port(link), dialed)
                  for link, dialed in zip(dials, peers, strict=True)]
        ports += [spec.HubPortSpec(port) for port in auto_ports(topo, name).values()]
        if isinstance(node, SwitchNode):  # a hub with VLANs: `serve switch`
            return spec.SwitchServiceSpec(
                name=node.name, ports=tuple(ports), link_transport=node.link_transport,
                filters=filters, vlans=node.vlans, mirror=node.mirror, aging=node.aging,
                max_entries=node.max_entries)
        return spec.HubServiceSpec(name=node.name, ports=tuple(ports),
                                   link_transport=node.link_transport, filters=filters)
    if isinstance(node, TapNode):
        return spec.TapServiceSpec(backend=node.backend,
                                   options={**node.options, "id": node.name},
                                   peer=peers[0] if peers else "",
                                   link_transport=node.link_transport, filters=filters)
    if isinstance(node, ContainerNode):  # a TAP opened inside the container (net.nsjoin)
        iface = node.interface(name)
        return spec.TapServiceSpec(backend="tap", options={"ifname": iface.name, "id": name},
                                   peer=peers[0] if peers else "",
                                   link_transport=node.link_transport, filters=filters,
                                   netns=(netns or {}).get(node.name, CONTAINER_NETNS),
                                   ip=str(iface.ip) if iface.ip else "", mac=iface.mac)
    if isinstance(node, NetnsNode):  # its TAP, under our name until it moves in
        return spec.TapServiceSpec(backend="tap",
                                   options={"ifname": tap_name(topo.name, name), "id": name},
                                   peer=peers[0] if peers else "",
                                   link_transport=node.link_transport, filters=filters)
    if isinstance(node, QemuNode):
        sock, console = qemu_paths(lan_dir, node.name)
        if svc.kind == "tap":  # its stream port, which QEMU dials
            return spec.TapServiceSpec(backend="stream",
                                       options={"listen": f"unix:{sock}", "id": node.name},
                                       peer=peers[0] if peers else "",
                                       link_transport=node.link_transport, filters=filters)
        return spec.QemuServiceSpec(name=node.name, stream=sock, console=console,
                                    kernel=node.kernel, initrd=node.initrd,
                                    append=node.append, disk=node.disk, memory=node.memory,
                                    nic=node.nic, mac=node.mac, args=node.args)
    assert isinstance(node, VmNode)
    if svc.kind == "guestmem":
        return spec.GuestMemServiceSpec(size=node.memory)
    guestmem = addresses[node.service("guestmem")]
    if svc.kind == "e1000":
        return spec.E1000ServiceSpec(guestmem=guestmem, mac=node.mac, model=node.model,
                                     compat=node.compat, name=node.name,
                                     peer=peers[0] if peers else "",
                                     link_transport=node.link_transport, filters=filters)
    bridge = node.bridge
    return spec.GuestServiceSpec(
        e1000=addresses[node.service("e1000")], guestmem=guestmem,
        ip=str(node.ip) if node.ip is not None else "",
        bridge_tap=bridge.ifname if bridge else "",
        netns=(bridge.netns or "") if bridge else "",
        bridge_ip=str(bridge.ip) if bridge and bridge.ip is not None else "",
        link_transport=node.link_transport)


def plan(topo: Topology, addresses: Addresses, *,
         dump_root: str = "", lan_dir: str = "LAN",
         netns: Mapping[str, str] | None = None) -> dict[str, spec.ServiceSpec]:
    """Every service's spec, in start order, with every address known."""
    return {svc.name: service_spec(topo, svc.name, addresses, dump_root=dump_root,
                                   lan_dir=lan_dir, netns=netns)
            for svc in topo.services}
