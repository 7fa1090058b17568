"""One LAN on several hosts: the services a host runs for another's orchestrator.

On every host of a topology's ``hosts:`` the user runs ``virtwire serve
orchestrator --listen ADDRESS:PORT``. The orchestrator that runs ``up`` (on
any machine that reaches those addresses) starts a service placed on host H
through H's orchestrator, whose ``Agent`` (here: the StartService,
StopServices and ListServices RPCs) runs it with a ProcessRuntime listening
on H's address; links then dial across hosts over TCP. The controlling side
is ``runtime.remote.RemoteRuntime``.

StartService carries typed options, never argv: the agent checks them and
builds the command line itself (``start_options``). Nothing in a request
names a program or a path on the agent's host: a tap's script is a NAME its
own ``--allow-script NAME=PATH`` defines, a bridge's netns needs its
``--allow-netns``, and guest RAM is always a new file of its own. A service
with a dump filter writes in the agent's own state dir
(``agent/LAN/dump/SERVICE/``): the request names only the file.

A request also says how the service is observed (``ServiceExtras``): where
its /metrics binds on this host, its --trace-sample and --trace-otlp, whether
it writes its spans (always to ``agent/LAN/traces/SERVICE.jsonl``, a file the
agent names) and its --log-format. Each is checked before anything starts.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from virtwire import tls
from virtwire.address import SockAddr, parse_sockaddr, shorten
from virtwire.allowlist import RpcPolicy
from virtwire.errors import ConfigError, ConflictError, NotFoundError
from virtwire.logfmt import LOG_FORMATS
from virtwire.orchestrator.runtime.process import ProcessRuntime
from virtwire.orchestrator.spec import FilteredSpec, ServiceSpec, has_dump, with_dump_dir
from virtwire.orchestrator.start_options import from_start_request
from virtwire.orchestrator.statedir import private_dir
from virtwire.tracing import parse_sample
from virtwire.v1 import orchestrator_pb2

logger = logging.getLogger(__name__)

#: LAN and service names: what topology files allow (and safe as file names).
_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
#: Where a LAN's services write their spans (``trace_file``): agent/LAN/traces/.
TRACES_DIR = "traces"
#: The longest metrics_listen, trace_sample, trace_otlp or log_format looked at.
_FIELD_MAX = 256
#: --trace-otlp's parser (``server.tracesetup.parse_otlp_endpoint``, given by the
#: server layer above): ENDPOINT -> (collector address, TLS wanted), ConfigError.
OtlpParser = Callable[[str], tuple[SockAddr, bool]]


def _check_name(what: str, name: str) -> str:
    if not _NAME_RE.match(name):
        raise ConfigError(f"bad {what} name {name!r}: lowercase letters, digits and '-', "
                          "at most 64")
    return name


@dataclass
class AgentRecord:
    lan: str
    name: str
    kind: str
    address: str
    pid: int


def agent_tls_args(name: str, host: str, metrics: SockAddr | None = None) -> list[str]:
    """Services an agent starts present the agent's own certificate (its host's
    identity, from its command line), or run plaintext as the agent does: with
    --insecure when their gRPC port or their /metrics (``metrics``) is off
    loopback, so both follow the same rule (docs/metrics.md)."""
    identity = tls.active()
    if identity is not None:
        return identity.args()
    local = tls.is_local(parse_sockaddr(f"{host}:0")) and (
        metrics is None or tls.is_local(metrics))
    return [] if local else ["--insecure"]


def _field(what: str, text: str) -> str:
    if len(text) > _FIELD_MAX:
        raise ConfigError(f"StartService.{what}: {len(text)} characters, at most {_FIELD_MAX}")
    return text


@dataclass(frozen=True)
class ServiceExtras:
    """How a service an agent starts is observed: StartService's metrics_listen,
    trace_sample, trace_otlp, trace_file and log_format, checked."""

    #: --metrics-listen (None: no /metrics).
    metrics: SockAddr | None = None
    #: --trace-sample as 1/N ("": off).
    trace_sample: str = ""
    #: --trace-otlp ("": none).
    trace_otlp: str = ""
    #: --trace-file in the agent's traces/ of the LAN.
    trace_file: bool = False
    #: --log-format ("": the agent's own).
    log_format: str = ""

    @classmethod
    def from_request(cls, request: orchestrator_pb2.OrchestratorServiceStartServiceRequest,
                     parse_otlp: OtlpParser | None = None) -> ServiceExtras:
        """The request's fields; ConfigError (INVALID_ARGUMENT) naming the bad one,
        ConflictError (FAILED_PRECONDITION) for a collector this host cannot reach
        over TLS, or when there is no ``parse_otlp`` to check one with."""
        metrics = None
        text = _field("metrics_listen", request.metrics_listen)
        if text:
            try:
                metrics = parse_sockaddr(text, allow_unix=False, allow_port_zero=False)
            except ConfigError as exc:
                raise ConfigError(f"StartService.metrics_listen: {exc} (HOST:PORT over "
                                  "TCP, a port of its own)") from None
        sample = ""
        text = _field("trace_sample", request.trace_sample)
        if text:
            try:
                every = parse_sample(text)
            except ConfigError as exc:
                raise ConfigError(f"StartService.trace_sample: {exc}") from None
            sample = f"1/{every}" if every else ""
        otlp = _field("trace_otlp", request.trace_otlp)
        if otlp:
            if parse_otlp is None:
                raise ConflictError("StartService.trace_otlp: this agent was given no "
                                    "parser of OTLP endpoints, so it takes none")
            try:
                addr, want_tls = parse_otlp(otlp)
            except ConfigError as exc:
                raise ConfigError(f"StartService.trace_otlp: {exc}") from None
            # What the service's own exporter would refuse at its start, said first.
            if not want_tls and not tls.is_local(addr):
                raise ConfigError(f"StartService.trace_otlp {shorten(otlp)}: refusing "
                                  "plaintext to a collector off loopback (write "
                                  "https://HOST:PORT)")
            if want_tls and tls.active() is None:
                raise ConflictError(f"StartService.trace_otlp {shorten(otlp)}: spans to this "
                                    "collector go over TLS, and this host's orchestrator "
                                    "has no TLS identity (--tls-dir)")
        fmt = _field("log_format", request.log_format)
        if fmt and fmt not in LOG_FORMATS:
            raise ConfigError(f"StartService.log_format {shorten(fmt)}: use one of "
                              f"{', '.join(LOG_FORMATS)} (or leave it empty)")
        return cls(metrics, sample, otlp, request.trace_file, fmt)

    def args(self, lan: str, name: str, trace_dir: Path | None) -> list[str]:
        """The service's flags: /metrics labelled with its LAN and name, tracing
        (its file in ``trace_dir``); --log-format goes through the runtime."""
        out: list[str] = []
        if self.metrics is not None:
            out += ["--metrics-listen", str(self.metrics), "--metrics-lan", lan,
                    "--metrics-service", name]
        if self.trace_sample:
            out += ["--trace-sample", self.trace_sample]
        if self.trace_otlp:
            out += ["--trace-otlp", self.trace_otlp]
        if self.trace_file and trace_dir is not None:
            out += ["--trace-file", str(trace_dir / f"{name}.jsonl")]
        return out


NO_EXTRAS = ServiceExtras()


class Agent:
    """Services this host runs for other hosts' orchestrators, per LAN."""

    def __init__(self, workdir: Path, policy: RpcPolicy | None = None, *,
                 parse_otlp: OtlpParser | None = None) -> None:
        self.workdir = workdir
        #: Checks StartService.trace_otlp as the services' --trace-otlp does.
        self.parse_otlp = parse_otlp
        #: What a StartService may use of this host (its command line's --allow-*).
        self.policy = policy or RpcPolicy(command="virtwire serve orchestrator")
        self.runtimes: dict[str, ProcessRuntime] = {}
        self.records: dict[tuple[str, str], AgentRecord] = {}
        #: How each service is observed (StartService's extras), by (LAN, name).
        self.extras: dict[tuple[str, str], ServiceExtras] = {}

    async def start_request(self, request: orchestrator_pb2.OrchestratorServiceStartServiceRequest
                            ) -> AgentRecord:
        """StartService: check the request against this host's policy, then ``start``."""
        _check_name("LAN", request.lan)
        _check_name("service", request.name)
        parse_sockaddr(request.listen, allow_unix=False)
        spec = from_start_request(request, self.policy)
        extras = ServiceExtras.from_request(request, self.parse_otlp)
        return await self.start(request.lan, request.name, spec, request.listen, extras)

    async def start(self, lan: str, name: str, spec: ServiceSpec, listen: str,
                    extras: ServiceExtras = NO_EXTRAS) -> AgentRecord:
        _check_name("LAN", lan)
        _check_name("service", name)
        kind = spec.kind
        host = parse_sockaddr(listen, allow_unix=False).host
        if (lan, name) in self.records:
            await self.stop(lan, [name], timeout=0)
        runtime = self.runtimes.get(lan)
        if runtime is None:
            # The state root (the workdir's parent) and agent/LAN below it: private.
            runtime = self.runtimes[lan] = ProcessRuntime(
                self.workdir / lan, host, tls_args=functools.partial(self._service_args, lan),
                root=self.workdir.parent,
                log_formats=functools.partial(self._log_format, lan))
            await runtime.open()
        if isinstance(spec, FilteredSpec) and has_dump(spec.filters):  # a dir of its own
            spec = with_dump_dir(spec, str(self._lan_subdir(lan, "dump", name)))
        self.extras[(lan, name)] = extras
        try:
            address, pid = await runtime.start(name, spec, listen)
        except BaseException:
            del self.extras[(lan, name)]
            raise
        rec = self.records[(lan, name)] = AgentRecord(lan, name, kind, address, pid)
        logger.info("agent: LAN %s: %s %s serves at %s (pid %d)", lan, kind, name, address, pid)
        return rec

    def _lan_subdir(self, lan: str, *parts: str) -> Path:
        """``agent/LAN/PARTS``, each directory from the state root down private."""
        root = self.workdir.parent
        path = private_dir(root, *(self.workdir / lan).relative_to(root).parts, *parts)
        assert path is not None
        return path

    def _service_args(self, lan: str, name: str, host: str) -> list[str]:
        """What service ``name`` of ``lan`` gets beyond its spec: TLS (for its gRPC
        port and its /metrics), then its metrics and tracing flags."""
        extras = self.extras.get((lan, name), NO_EXTRAS)
        trace_dir = self._lan_subdir(lan, TRACES_DIR) if extras.trace_file else None
        return [*agent_tls_args(name, host, extras.metrics),
                *extras.args(lan, name, trace_dir)]

    def _log_format(self, lan: str, name: str) -> str:
        return self.extras.get((lan, name), NO_EXTRAS).log_format

    async def stop(self, lan: str, names: list[str], timeout: float) -> int:
        runtime = self.runtimes.get(lan)
        if runtime is None:
            if names:
                raise NotFoundError(f"this host runs no service of LAN {lan!r}")
            return 0
        unknown = [n for n in names if (lan, n) not in self.records]
        if unknown:
            raise NotFoundError(f"LAN {lan!r} has no service {', '.join(unknown)} here")
        targets = names or [n for (lan_, n) in reversed(list(self.records)) if lan_ == lan]
        for name in targets:
            await runtime.stop(name, timeout)
            del self.records[(lan, name)]
            self.extras.pop((lan, name), None)
        if not any(lan_ == lan for lan_, _ in self.records):
            del self.runtimes[lan]
        logger.info("agent: LAN %s: stopped %s", lan, ", ".join(targets) or "nothing")
        return len(targets)

    async def list(self, lan: str = "") -> list[tuple[AgentRecord, str]]:
        """(record, why it is not running or "") for LAN ``lan`` (or all)."""
        out = []
        for (lan_, name), rec in self.records.items():
            if lan and lan_ != lan:
                continue
            out.append((rec, await self.runtimes[lan_].exited(name) or ""))
        return out

    async def close(self) -> None:
        for lan in list(self.runtimes):
            await self.stop(lan, [], timeout=5.0)
