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
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from virtwire import tls
from virtwire.address import parse_sockaddr
from virtwire.allowlist import RpcPolicy
from virtwire.errors import ConfigError, NotFoundError
from virtwire.orchestrator.runtime.process import ProcessRuntime
from virtwire.orchestrator.spec import FilteredSpec, ServiceSpec, has_dump, with_dump_dir
from virtwire.orchestrator.start_options import from_start_request
from virtwire.orchestrator.statedir import private_dir
from virtwire.v1 import orchestrator_pb2

logger = logging.getLogger(__name__)

#: LAN and service names: what topology files allow (and safe as file names).
_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")


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


def agent_tls_args(name: str, host: str) -> list[str]:
    """Services an agent starts present the agent's own certificate (its host's
    identity, from its command line), or run plaintext as the agent does."""
    identity = tls.active()
    if identity is not None:
        return identity.args()
    return [] if tls.is_local(parse_sockaddr(f"{host}:0")) else ["--insecure"]


class Agent:
    """Services this host runs for other hosts' orchestrators, per LAN."""

    def __init__(self, workdir: Path, policy: RpcPolicy | None = None) -> None:
        self.workdir = workdir
        #: What a StartService may use of this host (its command line's --allow-*).
        self.policy = policy or RpcPolicy(command="virtwire serve orchestrator")
        self.runtimes: dict[str, ProcessRuntime] = {}
        self.records: dict[tuple[str, str], AgentRecord] = {}

    async def start_request(self, request: orchestrator_pb2.OrchestratorServiceStartServiceRequest
                            ) -> AgentRecord:
        """StartService: check the request against this host's policy, then ``start``."""
        _check_name("LAN", request.lan)
        _check_name("service", request.name)
        parse_sockaddr(request.listen, allow_unix=False)
        spec = from_start_request(request, self.policy)
        return await self.start(request.lan, request.name, spec, request.listen)

    async def start(self, lan: str, name: str, spec: ServiceSpec, listen: str) -> AgentRecord:
        _check_name("LAN", lan)
        _check_name("service", name)
        kind = spec.kind
        host = parse_sockaddr(listen, allow_unix=False).host
        if (lan, name) in self.records:
            await self.stop(lan, [name], timeout=0)
        runtime = self.runtimes.get(lan)
        if runtime is None:
            # The state root (the workdir's parent) and agent/LAN below it: private.
            runtime = self.runtimes[lan] = ProcessRuntime(self.workdir / lan, host,
                                                          tls_args=agent_tls_args,
                                                          root=self.workdir.parent)
            await runtime.open()
        if isinstance(spec, FilteredSpec) and has_dump(spec.filters):  # a dir of its own
            root = self.workdir.parent
            dump = private_dir(root, *(self.workdir / lan).relative_to(root).parts, "dump", name)
            assert dump is not None
            spec = with_dump_dir(spec, str(dump))
        address, pid = await runtime.start(name, spec, listen)
        rec = self.records[(lan, name)] = AgentRecord(lan, name, kind, address, pid)
        logger.info("agent: LAN %s: %s %s serves at %s (pid %d)", lan, kind, name, address, pid)
        return rec

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
