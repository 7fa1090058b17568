"""Where an Orchestrator's services run: the Runtime interface.

A runtime starts one virtwire service (``virtwire serve KIND ARGS``, from
its typed ``spec.ServiceSpec``), says whether it still runs, and stops it.
Three exist, one module each (users pick one with ``--backend``, and the
state file's ``backend`` field names it):

- ``process.ProcessRuntime``: local child processes on loopback ports;
- ``docker.DockerRuntime``: one container per service on an internal
  network with a 198.18.0.0/15 subnet, through the docker SDK;
- ``remote.RemoteRuntime``: another host's ``virtwire serve orchestrator``,
  whose ``agent.Agent`` runs the services with its own ProcessRuntime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from virtwire.orchestrator.spec import ServiceSpec

__all__ = ["SERVICE_KINDS", "START_TIMEOUT_S", "Runtime"]

START_TIMEOUT_S = 20.0
#: The service kinds a runtime runs (``serve orchestrator`` is not one of them).
SERVICE_KINDS = ("hub", "tap", "guestmem", "e1000", "guest")


class Runtime(Protocol):
    """Runs services for one LAN."""

    #: "process", "docker" or "remote" (kept in the state file as ``backend``).
    kind: str

    def listen_address(self, name: str) -> str:
        """The --listen address service ``name`` gets when first started."""

    async def open(self) -> None:
        """Prepare (a network, a connection); BackendError when impossible."""

    async def start(self, name: str, spec: ServiceSpec, listen: str) -> tuple[str, int]:
        """Start ``virtwire serve KIND --listen LISTEN ARGS`` (``spec``); (address, pid).

        Returns once the service listens; BackendError (with its log) if it
        exits or does not come up in time.
        """

    async def exited(self, name: str) -> str | None:
        """None while service ``name`` runs; else why it does not (e.g. "exit 1")."""

    async def stop(self, name: str, timeout: float = 5.0) -> None:
        """Stop service ``name`` (SIGTERM, then SIGKILL); nothing if unknown."""

    async def close(self) -> None:
        """Stop what is left and release what ``open`` took."""
