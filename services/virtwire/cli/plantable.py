"""`virtwire validate`'s plan: the services a topology starts, who dials whom, addresses.

One row per service in start order, from ``orchestrator.plan`` (what every
runtime starts the services with). A service's gRPC address is chosen by
``up`` (127.0.0.1:0 with the process backend, the LAN network's with docker),
so here its name stands for it: ``hub0/hub0port1`` is port hub0port1 of
service hub0, a link's peer.
"""

from __future__ import annotations

from virtwire.cli.format import format_table
from virtwire.orchestrator import spec
from virtwire.orchestrator.plan import filter_netclient, plan
from virtwire.topology import Service, Topology


def _runs_on(topo: Topology, svc: Service) -> str:
    if svc.host is None:
        return "this host"
    return f"host {svc.host} ({topo.hosts[svc.host].address})"


def _dials(sp: spec.ServiceSpec) -> list[str]:
    """What the service connects to: link peers (SERVICE/NETCLIENT), RAM, its NIC."""
    if isinstance(sp, spec.HubServiceSpec):
        return [f"{port.peer} (from port {port.name})" for port in sp.ports if port.peer]
    if isinstance(sp, spec.TapServiceSpec):
        return [sp.peer] if sp.peer else []
    if isinstance(sp, spec.E1000ServiceSpec):
        return [f"{sp.guestmem} (DMA)", *([sp.peer] if sp.peer else [])]
    if isinstance(sp, spec.GuestServiceSpec):
        return [f"{sp.e1000} (MMIO, IRQ)", f"{sp.guestmem} (rings)"]
    if isinstance(sp, spec.QemuServiceSpec):
        return [f"{sp.name} (-netdev stream, unix:{sp.stream})"]
    return []


def _size(size: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{size} bytes"


def _addresses(sp: spec.ServiceSpec) -> list[str]:
    """Where the service is reached and what it is started with."""
    if isinstance(sp, spec.SwitchServiceSpec):  # its VLANs, mirror and aging too
        vlans = {**dict(sp.vlans), **({sp.mirror: "mirror"} if sp.mirror else {})}
        ports = ", ".join(f"{p.name} ({vlans.get(p.name, '1')})" for p in sp.ports)
        return [*([f"ports {ports}"] if ports else []), f"aging {sp.aging:g}s"]
    if isinstance(sp, spec.HubServiceSpec):
        return [f"ports {', '.join(port.name for port in sp.ports)}"] if sp.ports else []
    if isinstance(sp, spec.TapServiceSpec):
        options = ",".join(f"{k}={v}" for k, v in sp.options.items() if k != "id")
        inside = [f"inside netns {sp.netns}"] if sp.netns else []  # a container's interface
        return [f"{sp.backend} {options}".rstrip(), *inside,
                *([f"ip {sp.ip}"] if sp.ip else []), *([f"mac {sp.mac}"] if sp.mac else [])]
    if isinstance(sp, spec.GuestMemServiceSpec):
        return [f"{_size(sp.size)} RAM"]
    if isinstance(sp, spec.E1000ServiceSpec):
        return [f"mac {sp.mac}", f"{sp.model} (QEMU {sp.compat})"]
    if isinstance(sp, spec.QemuServiceSpec):
        boot = f"kernel {sp.kernel}" if sp.kernel else f"disk {sp.disk}"
        return [boot, f"{_size(sp.memory)} RAM", f"{sp.nic} mac {sp.mac}",
                f"console {sp.console}"]
    texts = [f"ip {sp.ip}"] if sp.ip else []
    if sp.bridge_tap:
        where = [f"netns {sp.netns}"] if sp.netns else []
        where += [sp.bridge_ip] if sp.bridge_ip else []
        texts.append(f"bridge TAP {sp.bridge_tap}" + (f" ({', '.join(where)})" if where else ""))
    return texts


def format_plan(topo: Topology) -> str:
    """The table `virtwire validate FILE` prints under its summary line."""
    specs = plan(topo, {svc.name: svc.name for svc in topo.services})
    rows = [("SERVICE", "KIND", "NODE", "RUNS ON", "DIALS", "ADDRESSES, OPTIONS")]
    for svc in topo.services:
        sp = specs[svc.name]
        options = _addresses(sp)
        if not isinstance(sp, spec.GuestMemServiceSpec | spec.QemuServiceSpec) \
                and sp.link_transport != "auto":
            options.append(f"link transport {sp.link_transport}")
        # The `serve KIND` it runs: a switch node's hub service says switch.
        rows.append((svc.name, sp.kind, svc.node, _runs_on(topo, svc),
                     ", ".join(_dials(sp)) or "-", ", ".join(options) or "-"))
    return format_table(rows)


def format_filters(topo: Topology) -> str:
    """The filters the topology puts on NetClients at start, as `validate` lists
    them: where (NODE or HUB:PORT, a hub's unnamed link end by the port the plan
    gives it), id, kind, queue, status, properties, the service that gets the
    ``--object`` and the line; "" when it has none."""
    rows = [("TARGET", "ID", "KIND", "QUEUE", "STATUS", "PROPS", "SERVICE", "LINE")]
    for nf in topo.filters:
        netclient = filter_netclient(topo, nf)
        target = nf.node if netclient == nf.node else f"{nf.node}:{netclient}"
        sp = nf.spec
        props = ",".join(f"{k}={v}" for k, v in sp.props.items()) or "-"
        rows.append((target, sp.id, sp.kind, sp.direction.value, "on" if sp.status else "off",
                     props, nf.service, str(nf.line)))
    return format_table(rows) if len(rows) > 1 else ""


def format_schedule(topo: Topology) -> str:
    """The topology's schedule as `validate` lists it, by time: "" when it has none."""
    rows = [("STEP", "AT", "WHAT", "LINE")]
    for step in topo.schedule:
        rows.append((str(step.index), f"{step.at:g}s", step.describe(), str(step.line)))
    return format_table(rows) if len(rows) > 1 else ""
