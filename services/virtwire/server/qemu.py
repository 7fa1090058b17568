"""``virtwire serve qemu``: a qemu node's VM as a service (health, logs, restarts).

A thin host over ``orchestrator.qemu.QemuProcess``: it answers grpc.health
while QEMU runs, and exits (status 3) when QEMU does, so the orchestrator's
watcher restarts it as any service that died (docs/topology.md). Stopping the
service stops QEMU; a SIGKILLed service takes QEMU with it (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import logging
import os

from virtwire.orchestrator.qemu import QemuProcess
from virtwire.orchestrator.spec import QemuServiceSpec
from virtwire.server.base import ServiceHost

__all__ = ["QEMU_EXITED_STATUS", "QemuServer"]

logger = logging.getLogger(__name__)

#: This service's exit status when its QEMU ended by itself.
QEMU_EXITED_STATUS = 3


class QemuServer(ServiceHost):
    service_name = "qemu"

    def __init__(self, listen: str, spec: QemuServiceSpec) -> None:
        super().__init__(listen)
        self.vm = QemuProcess(spec)
        self._stopping = False
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.vm.start()
        try:
            await super().start()
        except BaseException:
            await self.vm.stop()
            raise
        self._watch = asyncio.create_task(self._exit_with_qemu(), name="qemu watch")

    async def _exit_with_qemu(self) -> None:
        assert self.vm.exited is not None
        code = await self.vm.exited
        if not self._stopping:
            logger.error("QEMU exited (status %d): this service exits too", code)
            os._exit(QEMU_EXITED_STATUS)  # the orchestrator restarts us, with a new QEMU

    async def close_backends(self) -> None:
        self._stopping = True
        await self.vm.stop()
        if self._watch is not None:
            self._watch.cancel()
