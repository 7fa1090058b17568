"""ProcessRuntime: a LAN's services as local child processes (``virtwire serve KIND``).

Each child runs in its own process group and dies with the orchestrator
(PR_SET_PDEATHSIG); it is not reaped until it is stopped, so its pid and
group number cannot be reused while they may still be signalled.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from virtwire.errors import BackendError
from virtwire.logfmt import log_format
from virtwire.orchestrator.launch import VIRTWIRE_CMD, NotReady, wait_ready
from virtwire.orchestrator.runtime import START_TIMEOUT_S
from virtwire.orchestrator.statedir import private_dir

if TYPE_CHECKING:
    from virtwire.orchestrator.spec import ServiceSpec

logger = logging.getLogger(__name__)

#: (service name, the host it listens on) -> the TLS flags it is started with.
TlsArgs = Callable[[str, str], list[str]]
#: Service name -> its --log-format ("" for this process's own).
LogFormats = Callable[[str], str]


#: Run before the service's own command: PR_SET_PDEATHSIG(SIGKILL), then exec.
#: A wrapper, not preexec_fn: Python code between fork and exec would run
#: grpc's at-fork handlers in the child, which breaks its poller.
_DIE_WITH_PARENT = (
    "import ctypes, os, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, 9)\n"  # PR_SET_PDEATHSIG, SIGKILL
    "if os.getppid() != int(sys.argv[1]): os._exit(1)\n"  # the parent already died
    "os.execv(sys.argv[2], sys.argv[2:])\n")


def _spawn(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    """A child in its own process group that dies with this process."""
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()),
                                 *cmd], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                process_group=0)


def _exit_status(proc: subprocess.Popen[bytes]) -> int | None:
    """The child's exit status (Popen's convention), None while it runs.

    It is not reaped: its zombie keeps its pid, and so its process group's
    number, from being reused until ``proc.wait()``, so a killpg of that
    group can only reach this service's processes.
    """
    if proc.returncode is not None:
        return proc.returncode
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # reaped by someone else
        return proc.poll()
    if info is None:
        return None
    if info.si_code in (os.CLD_KILLED, os.CLD_DUMPED):
        return -info.si_status
    return info.si_status


class ProcessRuntime:
    """Services as local child processes (``virtwire serve KIND``), logs in ``workdir``.

    ``host`` is the address services listen on (loopback unless the LAN spans hosts).
    ``log_formats`` names a service's --log-format (an agent's caller chooses it);
    without it, or where it says "", a service logs as this process does.
    ``workdir`` and every directory from ``root`` (default: its parent, the
    state root) down to it are private (statedir.py).
    """

    kind = "process"

    def __init__(self, workdir: Path, host: str = "127.0.0.1",
                 tls_args: TlsArgs | None = None, root: Path | None = None,
                 log_formats: LogFormats | None = None) -> None:
        self.workdir = workdir
        self.root = root or workdir.parent
        self.host = host
        #: The TLS flags service NAME is started with (its identity), or none.
        self.tls_args = tls_args
        self.log_formats = log_formats
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def listen_address(self, name: str) -> str:
        return f"{self.host}:0"

    async def open(self) -> None:
        self._private_workdir()

    def _private_workdir(self) -> Path:
        path = private_dir(self.root, *self.workdir.relative_to(self.root).parts)
        assert path is not None
        return path

    async def start(self, name: str, spec: ServiceSpec, listen: str) -> tuple[str, int]:
        """Start a service and wait for its ready file; (address, pid)."""
        kind, args = spec.kind, spec.argv()
        self._private_workdir()
        ready = self.workdir / f"{name}.ready"
        ready.unlink(missing_ok=True)
        log = self.workdir / f"{name}.log"
        # Spawned from the event loop's thread: PDEATHSIG follows the thread
        # that forked, and this one lives as long as the orchestrator.
        tls_args = self.tls_args(name, self.host) if self.tls_args is not None else []
        # --log-name names the service in JSON logs and in its spans (docs/tracing.md).
        tls_args = [*tls_args, "--log-name", name]
        # The orchestrator's own --log-format, unless the service's is given.
        fmt = (self.log_formats(name) if self.log_formats is not None else "") or log_format()
        if fmt != "text":
            tls_args = [*tls_args, "--log-format", fmt]
        proc = _spawn([*VIRTWIRE_CMD, "serve", kind, "--listen", listen, *args, *tls_args,
                       "--ready-file", str(ready)], log)
        self.procs[name] = proc
        try:
            address = await wait_ready(ready, lambda: _exit_status(proc), START_TIMEOUT_S)
        except NotReady as exc:
            if exc.status is None:
                await self.stop(name, timeout=0)
            what = f"virtwire serve {kind} {exc}" if exc.status is not None else str(exc)
            raise BackendError(f"{name}: {what}:\n{log.read_text()[-2000:]}") from None
        return address, proc.pid

    async def exited(self, name: str) -> str | None:
        proc = self.procs.get(name)
        if proc is None:
            return "not started"
        code = _exit_status(proc)
        return None if code is None else f"exit {code}"

    async def stop(self, name: str, timeout: float = 5.0) -> None:
        """SIGTERM the service's process group, then SIGKILL it, then reap it.

        The service is reaped last: until then its pid (and group number) is
        still its own, so neither signal can reach a process that reused it.
        """
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        if _exit_status(proc) is None and timeout > 0:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout
            while _exit_status(proc) is None:
                if time.monotonic() > deadline:
                    logger.warning("%s (pid %d) ignored SIGTERM; killing", name, proc.pid)
                    break
                await asyncio.sleep(0.02)
        if proc.returncode is None:  # not reaped: the group is still this service's
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # anything left in its group
            except (ProcessLookupError, PermissionError):
                pass
        await asyncio.to_thread(proc.wait)

    async def close(self) -> None:
        for name in reversed(list(self.procs)):
            await self.stop(name)
