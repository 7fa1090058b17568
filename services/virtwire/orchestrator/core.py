"""Run a LAN: start a Topology's services in order, wire links, watch health.

``Orchestrator`` is plain asyncio. What each service is started with comes
from the orchestration plan (``plan.py``); its runtimes (``runtime/``) run
the services: this machine's by ``ProcessRuntime`` (local ``virtwire serve
KIND`` children on 127.0.0.1:0, in their own process groups with
PR_SET_PDEATHSIG, so none outlives the orchestrator) or ``DockerRuntime`` (a
container each), chosen by ``--backend``, and those of nodes placed on other
hosts by ``RemoteRuntime`` (that host's orchestrator). A state directory
(``state_root()/LAN``) holds ``state.json`` (services, where they run, pids,
addresses, the orchestrator's address and pid), so ``virtwire down`` and
``virtwire status`` from another process find a running LAN. The root and
LAN dirs are private (``statedir.py``), a state read back is validated
(names by the topology's rules), and each pid comes with its start time and
the boot id (``pids.py``): one that no longer matches is never signalled.

A topology's filters are in its services' specs (``--object``); a process
service with a dump filter writes in ``LAN/dump/SERVICE/``, which ``down``
keeps (everything else of the LAN's state dir goes). Its ``schedule:`` runs
once the LAN is healthy (``schedule.ScheduleRunner``), until ``down``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import ipaddress
import json
import logging
import os
import shutil
import stat
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from virtwire import tls
from virtwire.address import parse_sockaddr
from virtwire.errors import (
    BackendError,
    ConfigError,
    NotFoundError,
    PermissionDeniedError,
    VirtwireError,
)
from virtwire.logfmt import log_format
from virtwire.orchestrator import pids
from virtwire.orchestrator.containers import ContainerNodes
from virtwire.orchestrator.forward import PortForwarder
from virtwire.orchestrator.health import HEALTH_TIMEOUT_S, check_health, wait_serving
from virtwire.orchestrator.hostnodes import (
    NetnsHosts,
    check_qemu_paths,
    qemu_nodes,
    remove_recorded_netns,
)
from virtwire.orchestrator.pki import LanPki, lan_tls_dir
from virtwire.orchestrator.plan import service_spec
from virtwire.orchestrator.render import NO_TRACE, TraceFlags
from virtwire.orchestrator.runtime import Runtime
from virtwire.orchestrator.runtime.docker import DockerRuntime
from virtwire.orchestrator.runtime.process import ProcessRuntime
from virtwire.orchestrator.runtime.remote import RemoteRuntime
from virtwire.orchestrator.schedule import ScheduleRunner
from virtwire.orchestrator.spec import ServiceSpec, with_hub_ports
from virtwire.orchestrator.statedir import private_dir
from virtwire.orchestrator.subnet import check_subnet
from virtwire.rpc.status import translated
from virtwire.topology import (
    CONTAINER_IFACE_RE,
    LAN_NAME_MAX,
    METRICS_KINDS,
    NETNS_IFACE_RE,
    NODE_NAME_MAX,
    VM_SERVICES,
    ContainerNode,
    HubNode,
    NetnsNode,
    Node,
    QemuNode,
    TapNode,
    Topology,
    VmNode,
    check_lan_name,
    check_node_name,
)
from virtwire.v1 import netclient_pb2, netclient_pb2_grpc

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
#: Where a LAN's process services write their dumps: LAN/dump/SERVICE/.
DUMP_DIR = "dump"
#: ``up --trace-file``: each process service's spans, traces/NAME.jsonl.
TRACES_DIR = "traces"
#: The runtimes of this machine's services, by their ``--backend`` name (other
#: hosts' services run through their orchestrator).
LOCAL_RUNTIMES = ("process", "docker")
WATCH_INTERVAL_S = 0.3
#: Every this many watch rounds, the hubs' port lists are refreshed.
PORT_SNAPSHOT_ROUNDS = 10


class RunState(enum.Enum):
    """Run state of an Orchestrator."""

    IDLE = "idle"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True)
class UpEvent:
    """A progress event of ``Orchestrator.up``.

    ``kind``: starting, started, link, healthy, done or error.
    """

    kind: str
    service: str = ""
    address: str = ""
    message: str = ""


@dataclass
class ServiceRecord:
    """One service of the running LAN, as kept in the state file."""

    name: str
    kind: str
    node: str
    address: str = ""
    pid: int = 0
    #: What it was started with, as `virtwire serve KIND` arguments (for people).
    args: list[str] = field(default_factory=list)
    restarts: int = 0
    healthy: bool = False
    #: A hub's ports as last seen (the ones it numbered included): a restarted
    #: hub gets them back, since its dialers redial the port they were given.
    ports: list[str] = field(default_factory=list)
    #: The topology host it runs on ("" for this machine), and what runs it:
    #: process, docker or remote (``agent``: that host's orchestrator).
    host: str = ""
    backend: str = "process"
    agent: str = ""
    #: The process's start time (``pids.start_time``; 0 when not a local process):
    #: its pid is only signalled while that still matches.
    start_time: int = 0
    #: Where it serves Prometheus /metrics (``metrics:`` / ``up --metrics``; "": nowhere).
    metrics: str = ""


@dataclass
class LanState:
    """The state file of a LAN."""

    name: str
    source: str
    orchestrator: str
    orchestrator_pid: int
    services: list[ServiceRecord]
    #: This machine's backend: process or docker.
    backend: str = "process"
    #: The orchestrator's start time and the boot both pids belong to.
    orchestrator_start_time: int = 0
    boot_id: str = ""

    @classmethod
    def from_dict(cls, data: Any, path: Path | str = STATE_FILE,
                  lan: str | None = None) -> LanState:
        """A state read from ``path`` (of LAN ``lan``), validated.

        ConfigError naming the file for anything malformed: wrong types, a LAN
        or service name outside the topology's rules, a negative pid, a
        ``name`` that is not the directory's.
        """
        try:
            state = _STATE_ADAPTER.validate_python(data)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in err["loc"]) or "the top level"
            raise ConfigError(f"bad state file {path}: {where}: {err['msg'][:200]} "
                              f"({exc.error_count()} problems)") from None
        try:
            check_lan_name(state.name)
            if lan is not None and state.name != lan:
                raise ConfigError(f"it names LAN {state.name!r}, not {lan!r}")
            if state.orchestrator_pid < 0 or state.orchestrator_start_time < 0:
                raise ConfigError("a negative orchestrator pid or start time")
            for rec in state.services:
                _check_record(rec)
        except ConfigError as exc:
            raise ConfigError(f"bad state file {path}: {str(exc)[:300]}") from None
        return state


def _check_record(rec: ServiceRecord) -> None:
    """A service record's names follow the topology's rules (NODE or NODE-KIND)."""
    check_node_name(rec.node[:NODE_NAME_MAX + 1])
    suffix = rec.name[len(rec.node) + 1:] if rec.name.startswith(f"{rec.node}-") else ""
    if rec.name != rec.node and rec.name not in (f"{rec.node}-{k}" for k in VM_SERVICES) \
            and suffix != "qemu" and not NETNS_IFACE_RE.match(suffix) \
            and not CONTAINER_IFACE_RE.match(suffix):
        raise ConfigError(f"service {rec.name[:80]!r} is not a service name of node "
                          f"{rec.node!r}")
    if rec.pid < 0 or rec.start_time < 0:
        raise ConfigError(f"service {rec.name}: a negative pid or start time")


_STATE_ADAPTER = TypeAdapter(LanState)
#: Largest state file read (a 1 MiB topology's state is far smaller).
STATE_MAX_BYTES = 16 << 20


def state_root() -> Path:
    """``$XDG_RUNTIME_DIR/virtwire``, else ``/tmp/virtwire-$UID``."""
    env = os.environ.get("VIRTWIRE_STATE_DIR")
    if env:
        return Path(env)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "virtwire"
    return Path(f"/tmp/virtwire-{os.getuid()}")


def check_lan(name: str) -> str:
    """``name`` if it is a LAN name by the topology's rule, else ConfigError."""
    try:
        return str(check_lan_name(name[:LAN_NAME_MAX + 1]))
    except ConfigError:
        raise ConfigError(f"bad LAN name {name[:40]!r}: use 1 to {LAN_NAME_MAX} of a-z, "
                          "0-9 and '-', starting and ending with a letter or digit") from None


def lan_dir(name: str, root: Path | None = None) -> Path:
    """``root/NAME`` for a valid LAN name (never a path from elsewhere)."""
    return (root or state_root()) / check_lan(name)


def remove_lan_dir(name: str, root: Path | None = None) -> None:
    """Remove LAN ``name``'s state directory: only ``root/NAME``, only when the
    root and it are private directories of ours (PermissionDeniedError if not).

    What a run was for is kept: its dumps (``dump/``) and its trace files
    (``traces/``), each when it is a private directory holding files. The next
    ``up`` of the LAN writes its dumps anew (a dump filter starts its pcap file
    over) and appends to the trace files (services open ``--trace-file`` for
    appending), as docs/tracing.md says.
    """
    path = private_dir(root or state_root(), check_lan(name), create=False)
    if path is None:
        return
    # A crashed orchestrator's network namespaces (netns nodes) go with the LAN.
    remove_recorded_netns(path, check_lan(name))
    keep = {sub for sub in (DUMP_DIR, TRACES_DIR) if _holds_files(path, sub)}
    if not keep:
        shutil.rmtree(path, ignore_errors=True)
        return
    for entry in path.iterdir():
        if entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    for sub in sorted(keep):
        logger.info("LAN %s: its %s stay in %s", name, sub, path / sub)


def _holds_files(path: Path, sub: str) -> bool:
    """``path/sub`` is a private directory of ours (not a link) holding files."""
    entry = path / sub
    try:
        return (not entry.is_symlink() and entry.is_dir()
                and any(p.is_file() for p in entry.rglob("*"))
                and private_dir(path, sub, create=False) is not None)
    except (OSError, PermissionDeniedError):
        return False


def _read_state_file(path: Path) -> Any:
    """The JSON in ``path``: not through a symlink, at most STATE_MAX_BYTES."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigError(f"bad state file {path}: cannot open it: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"bad state file {path}: not a regular file")
        data = file.read(STATE_MAX_BYTES + 1)
    if len(data) > STATE_MAX_BYTES:
        raise ConfigError(f"bad state file {path}: larger than {STATE_MAX_BYTES} bytes")
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ConfigError(f"bad state file {path}: not JSON ({str(exc)[:100]})") from None


def read_state(name: str | None = None, root: Path | None = None) -> LanState:
    """The state of LAN ``name`` (or of the only running LAN).

    The state root and the LAN's directory must be private (statedir.py);
    the file is validated (``LanState.from_dict``).
    """
    base = root or state_root()
    if name is not None:
        check_lan(name)
    if private_dir(base, create=False) is None:
        raise NotFoundError(f"no LAN is running (no state in {base})")
    if name is None:
        names = sorted(p.parent.name for p in base.glob(f"*/{STATE_FILE}"))
        if not names:
            raise NotFoundError(f"no LAN is running (no state in {base})")
        if len(names) > 1:
            shown = ", ".join(n[:40] for n in names[:10])
            raise ConfigError(f"several LANs are running ({shown}): name one")
        name = names[0]
        try:
            check_lan(name)
        except ConfigError as exc:
            raise ConfigError(f"bad state directory {base / name[:40]}: {exc}") from None
    path = base / name / STATE_FILE
    try:
        if private_dir(base, name, create=False) is None:
            raise FileNotFoundError(path)
        data = _read_state_file(path)
    except FileNotFoundError:
        raise NotFoundError(f"LAN {name!r} is not running (no {path})") from None
    return LanState.from_dict(data, path, name)


def metrics_plan(topo: Topology, backend: str = "process") -> dict[str, str]:
    """Each metrics-serving service's ``--metrics-listen``: with ``metrics_port``
    N, the services of each machine get ports N, N+1... in start order, each
    machine numbered on its own (docs/metrics.md): this machine's process
    services on 127.0.0.1, those of a topology host on its address (passed in
    StartService). This machine's containers get none here (the docker runtime
    gives each the topology's port in its own namespace)."""
    if not topo.metrics_port:
        return {}
    by_host: dict[str, list[str]] = {}
    for svc in topo.services:
        if svc.kind in METRICS_KINDS and (svc.host or backend == "process"):
            by_host.setdefault(svc.host or "", []).append(svc.name)
    out: dict[str, str] = {}
    for host, names in by_host.items():
        if topo.metrics_port + len(names) - 1 > 65535:
            where = f"host {host}" if host else "this machine"
            raise ConfigError(f"metrics ports {topo.metrics_port} and up do not fit "
                              f"{len(names)} services of {where} below 65536")
        address = topo.hosts[host].address if host else "127.0.0.1"
        address = f"[{address}]" if ":" in address else address
        out.update({name: f"{address}:{topo.metrics_port + i}" for i, name in enumerate(names)})
    return {svc.name: out[svc.name] for svc in topo.services if svc.name in out}


class Orchestrator:
    """Runs one LAN: ``up``, ``down``, ``resolve`` node names, a restart watcher."""

    def __init__(self, *, state_dir: Path | None = None, address: str = "") -> None:
        self.state_root = state_dir or state_root()
        #: The address of the OrchestratorServer fronting this object (state file).
        self.address = address
        self.state = RunState.IDLE
        self.topology: Topology | None = None
        self.services: dict[str, ServiceRecord] = {}
        #: What each service is started with (``plan.service_spec``), by name.
        self.specs: dict[str, ServiceSpec] = {}
        #: By topology host ("" for this machine).
        self.runtimes: dict[str, Runtime] = {}
        #: This machine's runtime, by its ``--backend`` name (the state's ``backend``).
        self.backend_kind = "process"
        #: Services handed to a runtime, in start order (started or not).
        self._launched: list[tuple[str, str]] = []
        self._watcher: asyncio.Task[None] | None = None
        self.events: list[str] = []
        #: The LAN's certificates (topology ``tls:``), None for plaintext.
        self.pki: LanPki | None = None
        #: Where each tap node's backend is bound, as its service reports it
        #: (NetClientInfo.backend_address: the real port of a ``listen: ...:0``).
        self.bound: dict[str, str] = {}
        #: The topology's schedule as it runs (None: none, or not up yet).
        self.schedule: ScheduleRunner | None = None
        self._scheduler: asyncio.Task[None] | None = None
        #: Each service's --metrics-listen (``metrics_plan``), by name.
        self.metrics: dict[str, str] = {}
        #: The namespaces of the LAN's netns nodes (hostnodes.py).
        self.hostnodes: NetnsHosts | None = None
        #: The LAN's container nodes (containers.py), created before any service.
        self.containers: ContainerNodes | None = None
        #: What ``up --trace-*`` gives every service (docs/tracing.md).
        self.trace = NO_TRACE

    # -- lifecycle -----------------------------------------------------------------
    @property
    def dir(self) -> Path:
        if self.topology is None:
            raise ConfigError("no LAN is up")
        return lan_dir(self.topology.name, self.state_root)

    async def up(self, topo: Topology, backend: str = "process",
                 subnet: str = "", trace: TraceFlags = NO_TRACE) -> AsyncIterator[UpEvent]:
        """Start every service in order, then wait for health; yields progress.

        ``backend`` runs this machine's services (process or docker; ``subnet``
        is the docker network's); nodes placed on a host run through that host's
        orchestrator. ``trace``: the --trace-* flags of every service (its
        ``file_dir`` set means "traces/ in the LAN's state dir", process backend
        only; a host's services write in that host's state dir). On failure
        everything started is stopped and an ``error`` event is the last.
        """
        if self.state not in (RunState.IDLE, RunState.STOPPED, RunState.FAILED):
            raise ConfigError(f"a LAN is already {self.state.value}")
        if backend not in LOCAL_RUNTIMES:
            raise ConfigError(f"unknown backend {backend!r}: use one of "
                              f"{', '.join(LOCAL_RUNTIMES)}")
        if subnet:
            if backend != "docker":
                raise ConfigError("a subnet is for the docker backend only")
            check_subnet(subnet)
        if backend == "docker" and any(
                nf.spec.kind == "dump" and not self._host_of(topo, nf.service)
                for nf in topo.filters):
            raise ConfigError("dump filters write in the LAN's state dir on this machine: run "
                              "this LAN with the process backend (or place those nodes on "
                              "hosts)")
        trace = trace.checked()
        if trace.file_dir and backend != "process":
            raise ConfigError("--trace-file writes in the LAN's state dir on this machine: "
                              "it is for the process backend")
        existing = lan_dir(topo.name, self.state_root) / STATE_FILE
        if existing.exists():
            raise ConfigError(f"LAN {topo.name!r} is already up ({existing}); "
                              f"run 'virtwire down {topo.name}' first")
        # The root and the LAN's dir: 0700 and ours, or PermissionDeniedError.
        private_dir(self.state_root, topo.name)
        self.topology = topo
        self.pki = LanPki(topo.tls_dir, lan_tls_dir(self.dir)) if topo.tls_dir else None
        self.services = {}
        self.specs = {}
        self.runtimes = {}
        self._launched = []
        self.bound = {}
        self.schedule = None
        self.backend_kind = backend
        self.metrics = metrics_plan(topo, backend)
        if trace.file_dir:
            traces = private_dir(self.state_root, topo.name, TRACES_DIR)
            trace = dataclasses.replace(trace, file_dir=str(traces))
        self.trace = trace
        self.state = RunState.STARTING
        loop = asyncio.get_running_loop()
        healthy_at = 0.0
        try:
            self.hostnodes = NetnsHosts(topo, self.dir)
            if backend != "process" and (self.hostnodes.nodes() or qemu_nodes(topo)):
                raise ConfigError("netns and qemu nodes run with the process backend only")
            self.hostnodes.check()
            check_qemu_paths(topo, self.dir)
            self.containers = ContainerNodes(topo, shared_pid=backend == "docker")
            await self.containers.check()  # images: before anything starts
            for host in sorted({s.host or "" for s in topo.services}):
                yield UpEvent("starting", message=self._runtime_message(topo, host, backend))
                self.runtimes[host] = self._make_runtime(topo, host, backend, subnet)
                await self.runtimes[host].open()
            for cnode in self.containers:
                pid = await self.containers.create(cnode)
                yield UpEvent("starting", cnode.name, message=(
                    f"{cnode.name}: container {cnode.image} (pid {pid}), network "
                    f"{cnode.management or 'none'}"))
            for svc in topo.services:
                addresses = {name: rec.address for name, rec in self.services.items()}
                runtime = self.runtimes[svc.host or ""]
                spec = self.specs[svc.name] = service_spec(
                    topo, svc.name, addresses, dump_root=self._dump_root(runtime, svc.name),
                    lan_dir=str(self.dir), netns=self.containers.netns())
                node = topo.node(svc.node)
                if isinstance(node, NetnsNode) and svc.name == node.service(
                        node.interfaces[0].name):
                    ns = await self.hostnodes.create(node)
                    yield UpEvent("starting", svc.name, message=f"{node.name}: network "
                                  f"namespace {ns}")
                where = f" on host {svc.host}" if svc.host else ""
                yield UpEvent("starting", svc.name,
                              message=f"starting {svc.kind} {svc.name}{where}")
                self._launched.append((svc.host or "", svc.name))
                address, pid = await runtime.start(svc.name, spec,
                                                  runtime.listen_address(svc.name))
                agent = topo.hosts[svc.host].agent if svc.host else ""
                self.services[svc.name] = ServiceRecord(
                    svc.name, svc.kind, svc.node, address, pid, spec.argv(), host=svc.host or "",
                    backend=runtime.kind, agent=agent,
                    start_time=self._start_time(runtime, pid),
                    metrics=self._metrics_address(svc.name, svc.kind, runtime))
                self._write_state()
                await self._attach(svc.node, svc.name)
                if svc.kind == "tap" and runtime.kind != "docker":
                    await self._learn_bound(svc.node, address)
                port = self._port_text(svc.node) if svc.kind == "tap" else ""
                yield UpEvent("started", svc.name, address,
                              f"{svc.name} serves at {address} (pid {pid}{where})"
                              + (f"; its {port}" if port else ""))
                for link in topo.links:
                    if link.dialer.service == svc.name:
                        yield UpEvent("link", svc.name, message=(
                            f"link {link.ends[0]} -- {link.ends[1]}: {svc.name} dials "
                            f"{link.listener.service}/{link.listener.netclient}"))
            for netns in self.hostnodes.nodes():
                await self.hostnodes.run_commands(netns)
            await self._wait_healthy()
            await self._snapshot_ports()
            healthy_at = loop.time()  # the schedule's time 0
            yield UpEvent("healthy", message=f"{len(self.services)} services SERVING")
        except Exception as exc:
            logger.error("up failed: %s", exc)
            self.state = RunState.FAILED
            await self._stop_all()
            yield UpEvent("error", message=str(exc))
            return
        self.state = RunState.RUNNING
        self._watcher = asyncio.create_task(self._watch(), name="orchestrator-watch")
        if topo.schedule:
            self.schedule = ScheduleRunner(topo.schedule, self.resolve, self._note)
            self._scheduler = asyncio.create_task(self.schedule.run(healthy_at),
                                                  name="orchestrator-schedule")
            last = topo.schedule[-1].at
            self._note(f"schedule: {len(topo.schedule)} steps, the last {last:g}s after "
                       "the LAN was healthy")
        ports = "".join(f"; {node.name}'s {self._port_text(node.name)}"
                        for node in topo.taps() if self.reachable_at(node))
        yield UpEvent("done", message=f"LAN {topo.name!r} is up{ports}")

    def reachable_at(self, node: Node) -> str:
        """Where tap node ``node``'s stream or dgram backend waits for its peer, as
        this host reaches it (``NodeStatus.reachable_at``); "" for other nodes."""
        if not isinstance(node, TapNode) or not node.listen_address():
            return ""
        runtime = self.runtimes.get(node.host or "")
        if isinstance(runtime, DockerRuntime):
            return runtime.reachable_at(node)
        # A local process, or a process on its host: where its backend is bound.
        return self.bound.get(node.name) or node.listen_address()

    def note_bound(self, node: str, infos: Iterable[netclient_pb2.NetClientInfo]) -> None:
        """Keep where tap node ``node``'s backend is bound, from its service's
        NetClients (a restarted service may have bound another port 0)."""
        for info in infos:
            if info.name == node and info.backend_address:
                self.bound[node] = info.backend_address

    async def _attach(self, node_name: str, service: str) -> None:
        """A netns node's interface just (re)started: its TAP into the namespace."""
        assert self.topology is not None
        node = self.topology.node(node_name)
        if isinstance(node, NetnsNode) and self.hostnodes is not None:
            await self.hostnodes.attach(node, service[len(node.name) + 1:])

    async def _learn_bound(self, node: str, address: str) -> None:
        """``note_bound`` from tap node ``node``'s service at ``address``."""
        try:
            self.note_bound(node, await self._netclients(address))
        except VirtwireError as exc:
            logger.warning("%s: where its backend is bound: %s", node, exc)

    def relays(self, node: Node) -> list[PortForwarder]:
        """The docker runtime's ``publish:`` relays of tap node ``node``
        (``NodeStatus.relays``); none for other nodes and runtimes."""
        runtime = self.runtimes.get(node.host or "")
        if isinstance(runtime, DockerRuntime) and node.name in runtime.forwarders:
            return [runtime.forwarders[node.name]]  # its service is named after it
        return []

    def _port_text(self, name: str) -> str:
        """``stream port listens at ADDR``, as up's events say it ("" if none)."""
        assert self.topology is not None
        node = self.topology.node(name)
        address = self.reachable_at(node)
        if not address or not isinstance(node, TapNode):
            return ""
        on = f" on host {node.host}" if node.host else ""
        return f"{node.backend} port listens at {address}{on}"

    def _tls_args(self, name: str, host: str) -> list[str]:
        """The TLS flags of service ``name`` listening on ``host``: its own
        certificate with the LAN's tls, else plaintext (``--insecure`` off loopback)."""
        if self.pki is not None:
            return self.pki.identity(name, [host]).args()
        return [] if tls.is_local(parse_sockaddr(f"{host}:0")) else ["--insecure"]

    @staticmethod
    def _host_of(topo: Topology, service: str) -> str:
        return next(s.host or "" for s in topo.services if s.name == service)

    def _dump_root(self, runtime: Runtime, name: str) -> str:
        """``LAN/dump`` for a process service of this machine with a dump filter
        (its ``NAME/`` made private there); "" otherwise (an agent picks its own)."""
        assert self.topology is not None
        if runtime.kind != "process" or not any(
                nf.spec.kind == "dump" for nf in self.topology.filters if nf.service == name):
            return ""
        private_dir(self.state_root, self.topology.name, DUMP_DIR, name)
        return str(self.dir / DUMP_DIR)

    def _make_runtime(self, topo: Topology, host: str, backend: str, subnet: str) -> Runtime:
        if host:
            return RemoteRuntime(topo.hosts[host], topo.name, extras=self._remote_fields)
        if backend == "docker":
            return DockerRuntime(topo, subnet, pki=self.pki, trace=self.trace)
        return ProcessRuntime(self.dir, tls_args=self._service_args)

    def _metrics_address(self, name: str, kind: str, runtime: Runtime) -> str:
        """Where service ``name`` serves /metrics, as this machine reaches it: its
        planned port (on loopback, or on its host's address for a service placed
        on a host), or a container's address with the topology's port
        (the docker runtime gives it --metrics-listen 0.0.0.0:PORT); "" for none."""
        assert self.topology is not None
        if runtime.kind == "docker" and self.topology.metrics_port and kind in METRICS_KINDS:
            host = parse_sockaddr(runtime.listen_address(name)).host
            return f"{host}:{self.topology.metrics_port}"
        return self.metrics.get(name, "")

    def _service_args(self, name: str, host: str) -> list[str]:
        """What a process service gets beyond its spec: TLS, metrics if planned,
        and ``up``'s --trace-* flags."""
        args = [*self._tls_args(name, host), *self.trace.args(name)]
        listen = self.metrics.get(name)
        if listen and self.topology is not None:
            args += ["--metrics-listen", listen, "--metrics-lan", self.topology.name,
                     "--metrics-service", name]
        return args

    def _remote_fields(self, name: str) -> dict[str, Any]:
        """What service ``name`` on another host gets beyond its spec, as
        StartService fields: its planned /metrics address on that host, up's
        --trace-* flags (its spans' file in that host's state dir) and this
        orchestrator's --log-format. Its TLS is its host's (the agent's identity)."""
        return {"metrics_listen": self.metrics.get(name, ""),
                "trace_sample": self.trace.sample, "trace_otlp": self.trace.otlp,
                "trace_file": bool(self.trace.file_dir), "log_format": log_format()}

    @staticmethod
    def _runtime_message(topo: Topology, host: str, backend: str) -> str:
        if host:
            return f"host {host}: services through {topo.hosts[host].agent}"
        if backend == "docker":
            return "this machine: a container per service (docker)"
        return "this machine: a process per service"

    async def _wait_healthy(self) -> None:
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        for rec in self.services.values():
            await wait_serving(rec.name, rec.address, deadline)
            rec.healthy = True

    async def _snapshot_ports(self) -> None:
        for rec in self.services.values():
            if rec.kind != "hub":
                continue
            try:
                rec.ports = [nc.name for nc in await self._netclients(rec.address)]
            except VirtwireError:
                continue

    @staticmethod
    async def _netclients(address: str) -> list[netclient_pb2.NetClientInfo]:
        """The NetClients of the service at ``address``; VirtwireError if it fails."""
        async with tls.aio_channel(address) as channel:
            with translated(address):
                got = await netclient_pb2_grpc.NetClientServiceStub(channel).ListNetClients(
                    netclient_pb2.ListNetClientsRequest(), timeout=2.0)
        return list(got.netclients)

    def _restart_spec(self, rec: ServiceRecord) -> ServiceSpec:
        return with_hub_ports(self.specs[rec.name], rec.ports)

    async def down(self) -> int:
        """Stop every service (reverse start order) and remove the state dir."""
        if self.state in (RunState.IDLE, RunState.STOPPED):
            return 0
        self.state = RunState.STOPPING
        if self._scheduler is not None:
            self._scheduler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scheduler
            self._scheduler = None
        if self._watcher is not None:
            self._watcher.cancel()
            try:
                await self._watcher
            except asyncio.CancelledError:
                pass
            self._watcher = None
        stopped = await self._stop_all()
        self.state = RunState.STOPPED
        return stopped

    async def _stop_all(self) -> int:
        """Stop every service handed to a runtime (reverse order), then the runtimes."""
        for host, name in reversed(self._launched):
            try:
                await self.runtimes[host].stop(name)
            except Exception as exc:  # one failure must not leave the rest running
                logger.error("stopping %s: %s", name, exc)
        for runtime in self.runtimes.values():
            try:
                await runtime.close()
            except Exception as exc:
                logger.error("closing the %s backend: %s", runtime.kind, exc)
        stopped = len(self._launched)
        self._launched = []
        self.runtimes = {}
        if self.containers is not None:
            try:  # after their interfaces' services: the TAPs went with them
                await self.containers.close()
            except Exception as exc:
                logger.error("removing the container nodes: %s", exc)
        if self.hostnodes is not None:
            try:
                await self.hostnodes.delete_all()
            except Exception as exc:
                logger.error("removing the network namespaces: %s", exc)
        if self.topology is not None:
            try:
                remove_lan_dir(self.topology.name, self.state_root)
            except PermissionDeniedError as exc:  # not ours: left alone
                logger.error("not removing the LAN's state: %s", exc)
        return stopped

    @staticmethod
    def _start_time(runtime: Runtime, pid: int) -> int:
        """A local child's start time, read while it is our unreaped child (so
        ``pid`` is surely that process); 0 for services run elsewhere."""
        return pids.start_time(pid) if runtime.kind == "process" else 0

    def _write_state(self) -> None:
        assert self.topology is not None
        state = LanState(self.topology.name, self.topology.source, self.address, os.getpid(),
                         list(self.services.values()), self.backend_kind,
                         orchestrator_start_time=pids.start_time(os.getpid()),
                         boot_id=pids.boot_id())
        lan = private_dir(self.state_root, self.topology.name)
        assert lan is not None
        tmp = lan / (STATE_FILE + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        with os.fdopen(fd, "w") as file:
            file.write(json.dumps(asdict(state), indent=1))
        tmp.replace(lan / STATE_FILE)

    async def _watch(self) -> None:
        """Restart a service that died, on its old address.

        A VM's guestmem or e1000 holds state the services started after it
        depend on (the guest RAM its e1000 maps, the registers the guest's
        driver programmed), so those are restarted with it: the VM reboots.
        """
        rounds = 0
        while self.state is RunState.RUNNING:
            await asyncio.sleep(WATCH_INTERVAL_S)
            rounds += 1
            if rounds % PORT_SNAPSHOT_ROUNDS == 0:
                await self._snapshot_ports()
            for rec in list(self.services.values()):
                if self.state is not RunState.RUNNING:
                    break
                why = await self.runtimes[rec.host].exited(rec.name)
                if why is None:
                    continue
                self._event(f"{rec.name} (pid {rec.pid}) died ({why}); restarting")
                if not await self._restart(rec):
                    continue
                for dep in self._vm_dependents(rec):
                    self._event(f"{dep.name}: restarting with {rec.name} (its VM reboots)")
                    await self._restart(dep)

    def _event(self, msg: str) -> None:
        logger.warning("%s", msg)
        self.events.append(msg)

    def _note(self, msg: str) -> None:
        """An event that is no trouble (a schedule step that ran)."""
        logger.info("%s", msg)
        self.events.append(msg)

    def _vm_dependents(self, rec: ServiceRecord) -> list[ServiceRecord]:
        """The services of rec's VM started after it, when rec is its guestmem or e1000."""
        node = self.topology.nodes.get(rec.node) if self.topology else None
        if isinstance(node, QemuNode) and rec.kind == "tap":
            # QEMU's stream client does not redial: a new port needs a new QEMU.
            return [self.services[node.qemu_service]]
        if rec.kind not in ("guestmem", "e1000"):
            return []
        names = list(self.services)
        return [self.services[n] for n in names[names.index(rec.name) + 1:]
                if self.services[n].node == rec.node]

    async def _restart(self, rec: ServiceRecord) -> bool:
        runtime = self.runtimes[rec.host]
        rec.healthy = False
        await runtime.stop(rec.name, timeout=0 if await runtime.exited(rec.name) else 5.0)
        try:
            rec.address, rec.pid = await runtime.start(
                rec.name, self._restart_spec(rec), listen=rec.address)
            rec.start_time = self._start_time(runtime, rec.pid)
            await self._attach(rec.node, rec.name)
        except BackendError as exc:
            self._event(f"restart of {rec.name} failed: {exc}")
            self._write_state()
            return False
        rec.restarts += 1
        rec.healthy = await check_health(rec.address)
        self._write_state()
        return True

    # -- names -----------------------------------------------------------------------
    def resolve(self, target: str) -> tuple[str, str]:
        """NODE or HUB:PORT -> (service address, NetClient name)."""
        if self.topology is None:
            raise ConfigError("no LAN is up")
        node_name, _, port = target.partition(":")
        node = self.topology.nodes.get(node_name)
        if node is None:
            raise NotFoundError(f"no node {node_name!r} in LAN {self.topology.name!r}")
        if isinstance(node, HubNode):
            if not port:
                raise ConfigError(f"{node_name} is a hub: name a port, {node_name}:PORT")
            return self.services[node_name].address, port
        if isinstance(node, NetnsNode | ContainerNode):
            ifaces = [i.name for i in node.interfaces]
            if not port and len(ifaces) == 1:
                port = ifaces[0]
            if port not in ifaces:
                raise NotFoundError(f"{node.kind} {node_name} has no interface {port[:40]!r}: "
                                    f"name one, {node_name}:IFACE ({', '.join(ifaces)})")
            service = node.service(port)
            return self.services[service].address, service
        if port:
            raise ConfigError(f"{node_name} is a {node.kind}: it has no ports")
        service = node.service("e1000") if isinstance(node, VmNode) else node_name
        return self.services[service].address, node_name

    def trace_sources(self) -> dict[str, str]:
        """Every service of the LAN whose spans ``virtwire trace`` reads, name ->
        address (each serves TraceService)."""
        return {name: rec.address for name, rec in self.services.items() if rec.address}

    def _vm(self, node_name: str) -> VmNode:
        """Vm node ``node_name``; NotFoundError naming the LAN's vm nodes."""
        if self.topology is None:
            raise ConfigError("no LAN is up")
        node = self.topology.nodes.get(node_name)
        if not isinstance(node, VmNode):
            known = ", ".join(vm.name for vm in self.topology.vms()) or "none"
            raise NotFoundError(f"no vm node {node_name!r} (known: {known})")
        return node

    def guest_address(self, node_name: str) -> str:
        """The guest service of vm node ``node_name``."""
        return self.services[self._vm(node_name).service("guest")].address

    def ip_of(self, target: str) -> str:
        """A vm node's IPv4 address, or ``target`` if it is an IPv4 address."""
        if self.topology is not None and target not in self.topology.nodes:
            with contextlib.suppress(ValueError):
                return str(ipaddress.IPv4Address(target))
        node = self._vm(target)
        if node.ip is None:
            raise ConfigError(f"vm {target} has no ip")
        return str(node.ip.ip)
