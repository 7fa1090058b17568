"""A real QEMU VM of a ``kind: qemu`` node: its command line and its process.

``qemu_command`` builds the command from a ``QemuServiceSpec`` (options from
a topology file read on this host, never from an RPC): the NIC (e1000 or
virtio-net-pci) on ``-netdev stream`` dialling the node's stream port (a
unix socket), the serial console appended to a log file, kernel + initrd +
append or a disk, memory, the node's extra arguments last. ``QemuProcess``
runs it as a child that dies with its parent (PR_SET_PDEATHSIG) and says
when it exits; ``serve qemu`` (server/qemu.py) wraps it so the orchestrator
health-checks and restarts it as any service (docs/topology.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import sys
from pathlib import Path

from virtwire.errors import BackendError
from virtwire.orchestrator.runtime.process import _DIE_WITH_PARENT
from virtwire.orchestrator.spec import QemuServiceSpec

__all__ = ["QEMU_BINARY", "QemuProcess", "accel", "qemu_command"]

logger = logging.getLogger(__name__)

QEMU_BINARY = "qemu-system-x86_64"
STOP_TIMEOUT_S = 5.0


def accel() -> str:
    """kvm when it can really run guests (``/dev/kvm`` and vmx/svm), else tcg."""
    forced = os.environ.get("VIRTWIRE_QEMU_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "tcg"
    return "kvm" if re.search(r"^flags\s*:.*\b(vmx|svm)\b", flags, re.M) else "tcg"


def qemu_command(spec: QemuServiceSpec, binary: str = QEMU_BINARY) -> list[str]:
    """The QEMU command line of ``spec``."""
    mode = accel()
    cmd = [binary, "-name", spec.name, "-nodefaults", "-no-user-config", "-display", "none",
           "-no-reboot", "-m", f"{max(spec.memory >> 20, 16)}M"]
    if "-accel" not in spec.args and "-machine" not in spec.args:
        cmd += ["-machine", "pc", "-accel", mode, "-cpu", "host" if mode == "kvm" else "max"]
    if spec.kernel:
        cmd += ["-kernel", spec.kernel]
        cmd += ["-initrd", spec.initrd] if spec.initrd else []
        cmd += ["-append", spec.append] if spec.append else []
    else:
        # QEMU's option syntax: a comma in the path is doubled, so the path
        # cannot add options of its own to the drive.
        cmd += ["-drive", f"file={spec.disk.replace(',', ',,')},if=virtio"]
    cmd += ["-chardev", f"file,id=vwser0,path={spec.console},append=on",
            "-serial", "chardev:vwser0",
            "-netdev", f"stream,id=vwnet0,server=off,addr.type=unix,addr.path={spec.stream}",
            # romfile=: no iPXE option ROM (slow to run, and often not installed).
            "-device", f"{spec.nic},netdev=vwnet0,mac={spec.mac},romfile="]
    return cmd + list(spec.args)


class QemuProcess:
    """One QEMU child; ``exited`` is set with its status when it ends."""

    def __init__(self, spec: QemuServiceSpec, binary: str = QEMU_BINARY) -> None:
        self.spec = spec
        self.binary = binary
        self.proc: asyncio.subprocess.Process | None = None
        self.exited: asyncio.Future[int] | None = None

    async def start(self) -> int:
        """Start QEMU (BackendError if it cannot be); its pid."""
        path = shutil.which(self.binary)
        if path is None:
            raise BackendError(f"{self.binary} is not installed (Debian: qemu-system-x86)")
        Path(self.spec.console).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        cmd = qemu_command(self.spec, path)
        logger.info("qemu %s: %s", self.spec.name, " ".join(cmd))
        # A wrapper, not preexec_fn (see runtime.process); from the loop's thread,
        # which PR_SET_PDEATHSIG follows.
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *cmd,
            stdin=asyncio.subprocess.DEVNULL)
        self.exited = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().create_task(self._wait(), name=f"qemu {self.spec.name}")
        return self.proc.pid

    async def _wait(self) -> None:
        assert self.proc is not None and self.exited is not None
        code = await self.proc.wait()
        logger.warning("qemu %s (pid %d) exited with status %d", self.spec.name,
                       self.proc.pid, code)
        if not self.exited.done():
            self.exited.set_result(code)

    async def stop(self) -> None:
        """SIGTERM QEMU, SIGKILL it if it is still there after STOP_TIMEOUT_S."""
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
