"""A `kind: qemu` node: a real QEMU VM the orchestrator starts, watches and stops.

The guest is tests/support/qemu_vm.py's (the host's kernel, a busybox
initramfs with e1000.ko; its /init takes its address from vw.ip= and prints
READY_MARKER on the serial console). It sits on a switch with a netns host.
At each boot the guest pings the host (vw.ping=; its console is output only,
so the result is a line there, PING_MARKER), and the host pings the guest
(the guest's kernel answers); `virtwire console` shows the console, and after
kill -9 of QEMU the orchestrator restarts it, and both pings work again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.netns import list_netns, require_root
from support.procs import VIRTWIRE
from support.qemu_vm import (
    DEFAULT_CACHE_DIR,
    PING_MARKER,
    READY_MARKER,
    boot_kernel,
    build_initramfs,
    require_qemu,
)

pytestmark = [pytest.mark.root, pytest.mark.qemu, pytest.mark.timeout(180)]
BOOT_TIMEOUT_S = 90.0

TOPOLOGY = """\
name: qlan
nodes:
  sw0:
    kind: switch
    ports:
      a: {{vlan: 10}}
      b: {{vlan: 10}}
  h1:
    kind: netns
    interfaces: {{eth0: {{addresses: [198.18.40.1/24]}}}}
  vm:
    kind: qemu
    kernel: {kernel}
    initrd: {initrd}
    append: >-
      console=ttyS0 quiet panic=-1 rdinit=/init ipv6.disable=1
      vw.ip=198.18.40.5/24 vw.name=vm vw.ping=198.18.40.1
    memory: 128M
    nic: e1000
    mac: 52:54:00:40:00:05
links:
  - [h1, sw0:a]
  - [vm, sw0:b]
"""


class QemuLan:
    def __init__(self, tmp: Path) -> None:
        # A short state dir: the VM's stream socket lives there (sun_path is 108 bytes).
        self.state_dir = Path(f"/tmp/vwq-{os.getpid()}")
        self.env = {**os.environ, "VIRTWIRE_STATE_DIR": str(self.state_dir)}
        self.file = tmp / "qlan.yaml"
        self.file.write_text(TOPOLOGY.format(kernel=boot_kernel(DEFAULT_CACHE_DIR),
                                             initrd=build_initramfs(DEFAULT_CACHE_DIR,
                                                                    with_iperf3=False)))

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*VIRTWIRE, *args], capture_output=True, text=True,
                              timeout=timeout, env=self.env)

    def state(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.state_dir / "qlan" / "state.json").read_text())
        return data

    def service(self, name: str) -> dict[str, Any]:
        return next(s for s in self.state()["services"] if s["name"] == name)

    def console(self) -> str:
        out = self.cli("console", "vm", "--no-follow")
        assert out.returncode == 0, out.stderr
        return out.stdout

    def wait_ready(self, times: int) -> None:
        """Until the console shows the guest's READY line ``times`` times (boots)."""
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while self.console().count(READY_MARKER) < times:
            assert time.monotonic() < deadline, f"no boot #{times}:\n{self.console()[-2000:]}"
            time.sleep(0.5)

    def wait_guest_pinged(self, times: int) -> None:
        """Until the console shows the guest's own ping of h1 succeeding ``times`` times."""
        ok = f"{PING_MARKER} 198.18.40.1 ok"
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while self.console().count(ok) < times:
            console = self.console()
            assert f"{PING_MARKER} 198.18.40.1 failed" not in console.split(READY_MARKER)[-1], \
                f"the guest's ping of h1 failed:\n{console[-2000:]}"
            assert time.monotonic() < deadline, f"no ping #{times}:\n{console[-2000:]}"
            time.sleep(0.5)

    def ping(self, count: int = 3) -> bool:
        out = self.cli("exec", "h1", "--", "busybox", "ping", "-c", str(count), "-W", "2",
                       "198.18.40.5")
        return out.returncode == 0


def _qemu_pid(service_pid: int) -> int:
    """The QEMU child of the `serve qemu` service (its wrapper execs into QEMU)."""
    for task in Path(f"/proc/{service_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            if "qemu-system" in Path(f"/proc/{child}/cmdline").read_text():
                return int(child)
    raise AssertionError(f"no QEMU under pid {service_pid}")


@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QemuLan]:
    require_root()
    require_qemu()
    lan = QemuLan(tmp_path_factory.mktemp("qlan"))
    out = lan.cli("up", str(lan.file), "--detach")
    assert out.returncode == 0, out.stdout + out.stderr
    try:
        yield lan
    finally:
        qemu = lan.service("vm-qemu")["pid"]
        assert lan.cli("down", "qlan").returncode == 0
        assert not Path(f"/proc/{qemu}").exists() or "zombie" in Path(
            f"/proc/{qemu}/status").read_text().lower()
        assert "vw-qlan-h1" not in list_netns()
        subprocess.run(["rm", "-rf", str(lan.state_dir)], check=False)


def test_the_vm_boots_and_pings_a_netns_host_through_the_switch(lan: QemuLan) -> None:
    lan.wait_ready(1)
    assert "ip=198.18.40.5/24 carrier=1" in lan.console()
    lan.wait_guest_pinged(1)  # the guest's own ping of h1, through sw0
    assert lan.ping()         # and h1's of the guest
    fdb = lan.cli("fdb", "sw0", "--json")
    assert "52:54:00:40:00:05" in fdb.stdout  # the node's mac:, learned on port b


def test_console_follows_until_ctrl_c(lan: QemuLan) -> None:
    lan.wait_ready(1)
    proc = subprocess.Popen([*VIRTWIRE, "console", "vm"], env=lan.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + 20
    while READY_MARKER.encode() not in seen:
        assert time.monotonic() < deadline
        seen += os.read(proc.stdout.fileno(), 65536)
    time.sleep(0.5)
    assert proc.poll() is None  # it follows: still running at the end of the log
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 130
    bad = lan.cli("console", "h1", "--no-follow")
    assert bad.returncode != 0 and "no qemu node 'h1'" in bad.stderr


def test_the_vm_is_restarted_after_kill_9(lan: QemuLan) -> None:
    lan.wait_ready(1)
    before = lan.console().count(READY_MARKER)
    svc = lan.service("vm-qemu")
    os.kill(_qemu_pid(svc["pid"]), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while lan.service("vm-qemu")["restarts"] < svc["restarts"] + 1:
        assert time.monotonic() < deadline, "vm-qemu was not restarted"
        time.sleep(0.3)
    lan.wait_ready(before + 1)  # it booted again, its console appended to the same log
    lan.wait_guest_pinged(before + 1)
    assert lan.ping()


def test_a_restarted_stream_port_restarts_qemu(lan: QemuLan) -> None:
    """QEMU 7.2's stream client never redials: a new port gets a new QEMU."""
    lan.wait_ready(1)
    before = lan.console().count(READY_MARKER)
    port, vm = lan.service("vm"), lan.service("vm-qemu")
    os.kill(port["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while lan.service("vm-qemu")["restarts"] < vm["restarts"] + 1:
        assert time.monotonic() < deadline, "vm-qemu was not restarted with its port"
        time.sleep(0.3)
    assert lan.service("vm")["restarts"] == port["restarts"] + 1
    lan.wait_ready(before + 1)
    assert lan.ping()
