"""Boot throwaway QEMU VMs running Linux's e1000 driver, for integration tests.

Each VM boots the host's Debian kernel (``find_kernel``) with a tiny
initramfs (``build_initramfs``): static busybox, ``e1000.ko`` and optionally
``iperf3``.  Its ``/init`` configures ``eth0`` from ``vw.ip=`` on the kernel
command line (no default route: the VM can only reach its own subnet) and
then runs a shell on the serial console, which :class:`QemuVM` drives over
QEMU's stdio to run commands.

The NIC is always ``-device e1000,netdev=n0``: callers pass the matching
``-netdev ...,id=n0`` arguments (see :func:`stream_netdev` /
:func:`dgram_netdev`, or a virtwire socket of their own).

Example::

    async with QemuVM("a", stream_netdev(port, server=True),
                      "198.18.0.11/24", "52:54:00:12:34:11", tmp_path) as vm:
        assert await vm.ping("198.18.0.12")
"""

from __future__ import annotations

import asyncio
import codecs
import ctypes
import gzip
import hashlib
import json
import logging
import lzma
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import time
import uuid
import zlib
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

log = logging.getLogger(__name__)

QEMU_BINARY = "qemu-system-x86_64"
READY_MARKER = "VIRTWIRE-VM-READY"
#: Printed on the serial console after the boot-time ping that ``vw.ping=IP``
#: asks for: ``VIRTWIRE-VM-PING IP ok`` (a reply came) or ``... failed``.
PING_MARKER = "VIRTWIRE-VM-PING"
DEFAULT_CACHE_DIR = Path(
    os.environ.get("VIRTWIRE_VM_CACHE", Path.home() / ".cache" / "virtwire-vm")
)
# Bump when the initramfs layout changes in a way the content key can't see.
_LAYOUT_VERSION = "1"
_E1000_DIR = "kernel/drivers/net/ethernet/intel/e1000"
_BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
#: busybox ping's summary line ("3 packets transmitted, 3 packets received").
_PING_SUMMARY = re.compile(
    r"(?P<sent>\d+) packets transmitted, (?P<received>\d+) (?:packets )?received")
#: busybox ping's line per reply ("64 bytes from 198.18.0.12: seq=0 ttl=64 time=0.512 ms").
_PING_REPLY = re.compile(r"^\d+ bytes from .*\btime=(?P<ms>[\d.]+) ms$", re.M)
#: iperf3's default port, where :meth:`QemuVM.iperf3_server` listens.
IPERF3_PORT = 5201

_INIT_SCRIPT = f"""#!/bin/sh
export PATH=/bin HOME=/root PS1='' PS2='' TERM=dumb
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo 1 > /proc/sys/kernel/printk
insmod /lib/modules/e1000.ko
ip=''; name=vm; pingto=''
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    vw.ip=*) ip="${{arg#vw.ip=}}" ;;
    vw.name=*) name="${{arg#vw.name=}}" ;;
    vw.ping=*) pingto="${{arg#vw.ping=}}" ;;
  esac
done
hostname "$name"
ip link set lo up
[ -n "$ip" ] && ip addr add "$ip" dev eth0
ip link set eth0 up
i=0
while [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" != 1 ] && [ $i -lt 100 ]; do
  usleep 50000; i=$((i + 1))
done
stty -F /dev/ttyS0 -echo
echo "{READY_MARKER} name=$name ip=$ip carrier=$(cat /sys/class/net/eth0/carrier)"
if [ -n "$pingto" ]; then  # a guest whose console is output only pings once it is up
  (n=0; r=failed
   while [ $n -lt 10 ]; do
     ping -c 1 -W 2 "$pingto" >/dev/null 2>&1 && {{ r=ok; break; }}; n=$((n + 1))
   done
   echo "{PING_MARKER} $pingto $r") &
fi
while true; do setsid cttyhack sh; done
"""


def require_qemu() -> None:
    """Go on only if QEMU VMs can boot, else name the Debian package to install
    (:func:`support.need.need`: skip without root, fail as root)."""
    from support.need import need

    need(shutil.which("qemu-system-x86_64") is not None,
         "qemu-system-x86_64 not installed (Debian package qemu-system-x86)")
    need(bool(list(Path("/boot").glob("vmlinuz-*"))),
         "no kernel in /boot (Debian package linux-image-amd64)")
    need(shutil.which("busybox") is not None,
         "busybox not installed (Debian package busybox-static)")


class VMError(RuntimeError):
    """QEMU failed to start, died, or the guest did not answer."""


# --------------------------------------------------------------------------
# kernel and initramfs


def _version_key(path: Path) -> list[tuple[int, str]]:
    parts = re.split(r"(\d+)", path.name)
    return [(int(p), "") if p.isdigit() else (-1, p) for p in parts if p]


def find_kernel() -> Path:
    """Return the newest ``/boot/vmlinuz-*`` that has a matching module tree."""
    kernels = [
        k
        for k in Path("/boot").glob("vmlinuz-*")
        if (Path("/lib/modules") / k.name.removeprefix("vmlinuz-")).is_dir()
    ]
    if not kernels:
        raise FileNotFoundError("no /boot/vmlinuz-* with /lib/modules/<ver>")
    return max(kernels, key=_version_key)


def boot_kernel(cache_dir: Path) -> Path:
    """The kernel image to boot: ``find_kernel()``, decompressed if possible.

    Under TCG the bzImage's own xz decompressor costs ~2 s per boot, so when
    the kernel supports PVH (CONFIG_PVH=y) the embedded vmlinux ELF is
    extracted once into ``cache_dir``; QEMU boots such an ELF directly.
    """
    kernel = find_kernel()
    ver = kernel.name.removeprefix("vmlinuz-")
    config = Path("/boot") / f"config-{ver}"
    if not config.exists() or "CONFIG_PVH=y" not in config.read_text().splitlines():
        return kernel
    image = kernel.read_bytes()
    target = cache_dir / f"vmlinux-{ver}-{_content_key([image])}"
    if target.exists():
        return target
    for magic, make in (
        (b"\xfd7zXZ\x00", lzma.LZMADecompressor),
        (b"\x1f\x8b\x08\x00", lambda: zlib.decompressobj(31)),
    ):
        pos = image.find(magic)
        if pos < 0:
            continue
        try:
            elf = make().decompress(image[pos:])
        except (lzma.LZMAError, zlib.error):
            continue
        if elf.startswith(b"\x7fELF"):
            cache_dir.mkdir(parents=True, exist_ok=True)
            _atomic_write(target, elf)
            log.info("extracted %s from %s", target, kernel)
            return target
    log.info("cannot extract vmlinux from %s; booting the bzImage", kernel)
    return kernel


def _atomic_write(target: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, target)


def _e1000_module(kernel: Path) -> Path:
    mod_dir = Path("/lib/modules") / kernel.name.removeprefix("vmlinuz-") / _E1000_DIR
    for suffix in ("", ".xz", ".zst", ".gz"):
        path = mod_dir / f"e1000.ko{suffix}"
        if path.exists():
            return path
    raise FileNotFoundError(f"e1000.ko not found in {mod_dir}")


def _read_module(path: Path) -> bytes:
    """Module bytes, decompressed (busybox insmod only loads plain ELF)."""
    if path.suffix == ".xz":
        return lzma.decompress(path.read_bytes())
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes())
    if path.suffix == ".zst":
        return subprocess.run(["zstd", "-dc", str(path)], check=True, capture_output=True).stdout
    return path.read_bytes()


def _is_static_elf(path: Path) -> bool:
    """True for an ELF64 executable without a PT_INTERP (dynamic loader)."""
    data = path.read_bytes()
    if data[:5] != b"\x7fELF\x02":
        return False
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    types = (struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum))
    return 3 not in types  # PT_INTERP


def _find_busybox() -> Path:
    for cand in _BUSYBOX_CANDIDATES:
        path = Path(cand)
        if path.exists() and _is_static_elf(path):
            return path
    raise FileNotFoundError("static busybox not found (apt-get install busybox-static)")


def _find_iperf3() -> Path:
    found = shutil.which("iperf3")
    if not found:
        raise FileNotFoundError("iperf3 not found (apt-get install iperf3)")
    return Path(found)


def _ldd_closure(binary: Path) -> list[Path]:
    """Shared libraries and loader of ``binary``, as the paths ldd names."""
    out = subprocess.run(["ldd", str(binary)], check=True, capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if m:
            libs.append(Path(m.group(1)))
    return libs


def _content_key(parts: Sequence[bytes | Path]) -> str:
    """Short hash of byte strings and of files' paths and contents."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            h.update(str(part).encode() + b"\0")
            h.update(hashlib.sha256(part.read_bytes()).digest())
        else:
            h.update(part)
    return h.hexdigest()[:16]


class _Cpio:
    """Minimal writer for the cpio 'newc' format the kernel unpacks."""

    def __init__(self) -> None:
        self._out = bytearray()
        self._ino = 0
        self._dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: int = 0) -> None:
        self._ino += 1
        name_z = name.encode() + b"\0"
        # ino mode uid gid nlink mtime filesize devmajor devminor
        fields = [self._ino, mode, 0, 0, 1, 0, len(data), 0, 0]
        # rdevmajor rdevminor namesize check
        fields += [os.major(rdev), os.minor(rdev), len(name_z), 0]
        self._out += b"070701" + "".join(f"{v:08X}" for v in fields).encode()
        self._out += name_z + b"\0" * (-(110 + len(name_z)) % 4)
        self._out += data + b"\0" * (-len(data) % 4)

    def dir(self, name: str, perm: int = 0o755) -> None:
        name = name.strip("/")
        if not name or name in self._dirs:
            return
        self.dir(os.path.dirname(name))
        self._dirs.add(name)
        self._entry(name, stat.S_IFDIR | perm)

    def file(self, name: str, data: bytes, perm: int = 0o755) -> None:
        name = name.strip("/")
        self.dir(os.path.dirname(name))
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        name = name.strip("/")
        self.dir(os.path.dirname(name))
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name.strip("/"), stat.S_IFCHR | 0o600, rdev=os.makedev(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return bytes(self._out)


def build_initramfs(cache_dir: Path, with_iperf3: bool = True) -> Path:
    """Build (or reuse from ``cache_dir``) the guest's gzip'd newc initramfs.

    The file name carries a hash of every input, so a changed kernel,
    busybox, iperf3 or init script yields a new image.  Safe to call
    concurrently (atomic rename).
    """
    kernel = find_kernel()
    module = _e1000_module(kernel)
    busybox = _find_busybox()
    iperf3 = _find_iperf3() if with_iperf3 else None
    libs = _ldd_closure(iperf3) if iperf3 else []
    inputs: list[bytes | Path] = [
        _LAYOUT_VERSION.encode(),
        _INIT_SCRIPT.encode(),
        module,
        busybox,
        *([iperf3] if iperf3 else []),
        *libs,
    ]
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"initramfs-{_content_key(inputs)}.cpio.gz"
    if target.exists():
        return target

    started = time.monotonic()
    cpio = _Cpio()
    for d in ("bin", "dev", "proc", "sys", "root", "etc", "lib/modules"):
        cpio.dir(d)
    cpio.dir("tmp", 0o1777)
    cpio.chardev("dev/console", 5, 1)
    cpio.chardev("dev/null", 1, 3)
    cpio.file("init", _INIT_SCRIPT.encode())
    cpio.file("bin/busybox", busybox.read_bytes())
    applets = subprocess.run(
        [str(busybox), "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox":
            cpio.symlink(f"bin/{applet}", "busybox")
    cpio.file("lib/modules/e1000.ko", _read_module(module), 0o644)
    if iperf3:
        cpio.file("bin/iperf3", iperf3.read_bytes())
        for lib in libs:  # stored under ldd's path, content read through symlinks
            cpio.file(str(lib), lib.read_bytes())
    _atomic_write(target, gzip.compress(cpio.finish(), compresslevel=6, mtime=0))
    log.info(
        "built %s in %.1fs (%d bytes)", target, time.monotonic() - started, target.stat().st_size
    )
    return target


# --------------------------------------------------------------------------
# QEMU helpers


def kvm_usable() -> bool:
    """True if KVM can really run guests (``VIRTWIRE_VM_ACCEL`` overrides).

    ``/dev/kvm`` alone is not enough: inside a VM without nested
    virtualisation it may exist while guests hang, so require vmx/svm too.
    """
    forced = os.environ.get("VIRTWIRE_VM_ACCEL")
    if forced:
        return forced == "kvm"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    flags = Path("/proc/cpuinfo").read_text()
    return re.search(r"^flags\s*:.*\b(vmx|svm)\b", flags, re.M) is not None


def stream_netdev(port: int, server: bool, host: str = "127.0.0.1") -> list[str]:
    """``-netdev stream`` (TCP) args, id ``n0``.

    QEMU 7.2's client never retries: launch the ``server=True`` VM first and
    :func:`wait_tcp_listening` on the port before launching the client.
    """
    return [
        "-netdev",
        f"stream,id=n0,server={'on' if server else 'off'},"
        f"addr.type=inet,addr.host={host},addr.port={port}",
    ]


def dgram_netdev(local_port: int, remote_port: int, host: str = "127.0.0.1") -> list[str]:
    """``-netdev dgram`` (UDP) args (id ``n0``); no start ordering needed."""
    return [
        "-netdev",
        f"dgram,id=n0,local.type=inet,local.host={host},"
        f"local.port={local_port},remote.type=inet,remote.host={host},"
        f"remote.port={remote_port}",
    ]


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A currently unused 127.0.0.1 port (TCP by default, or SOCK_DGRAM)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_tcp_listening(port: int, timeout: float = 10.0) -> None:
    """Wait until something listens on TCP ``port`` (IPv4), without connecting.

    A ``stream`` netdev server accepts a single peer, so probing it with a
    connect would steal the VM's link; read /proc/net/tcp instead.
    """
    needle = re.compile(rf"^\s*\d+: [0-9A-F]{{8}}:{port:04X} [0-9A-F]{{8}}:0000 0A ", re.M)
    async with asyncio.timeout(timeout):
        while True:  # polling: there is no event for "port is listening"
            if needle.search(Path("/proc/net/tcp").read_text()):
                return
            await asyncio.sleep(0.05)


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL QEMU if the test process dies without cleaning up."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# --------------------------------------------------------------------------
# the VM


class QemuVM:
    """One QEMU guest with an e1000 NIC, driven over its serial console.

    ``netdev_args`` must define the backend with ``id=n0``.  Console output is
    logged to ``workdir/<name>-console.log``, QEMU's stderr to
    ``workdir/<name>-qemu.log``.  Use as ``async with`` (starts and stops), or
    call :meth:`start` / :meth:`stop`; :meth:`launch` + :meth:`wait_ready`
    split the start so that several VMs can boot in parallel.

    ``extra_args`` are appended to QEMU's command line; ``wrapper`` is put
    before it and must exec QEMU (e.g. ``NetNs.exec_prefix`` to run it in a
    network namespace with a TAP).  ``kernel``/``initrd`` default to
    :func:`boot_kernel` / :func:`build_initramfs` in ``DEFAULT_CACHE_DIR``
    (``$VIRTWIRE_VM_CACHE`` or ~/.cache/virtwire-vm).
    """

    def __init__(
        self,
        name: str,
        netdev_args: list[str],
        ip_cidr: str,
        mac: str,
        workdir: Path,
        mem_mb: int = 256,
        *,
        extra_args: Sequence[str] = (),
        initrd: Path | None = None,
        kernel: Path | None = None,
        wrapper: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.netdev_args = list(netdev_args)
        self.ip_cidr = ip_cidr
        self.ip = ip_cidr.split("/")[0]
        self.mac = mac
        self.workdir = workdir
        self.mem_mb = mem_mb
        self.extra_args = list(extra_args)
        self.initrd = initrd
        self.kernel = kernel
        self.wrapper = list(wrapper)
        self.boot_seconds: float | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._console_log: TextIO | None = None
        self._buf = ""
        self._eof = False
        self._changed = asyncio.Event()
        self._lock = asyncio.Lock()
        self._launched_at = 0.0

    # ---- lifecycle

    @property
    def pid(self) -> int | None:
        """QEMU's process id once launched (until :meth:`stop`), else None."""
        return self._proc.pid if self._proc is not None else None

    def command(self) -> list[str]:
        """The QEMU command line (kernel and initrd must be resolved)."""
        assert self.kernel and self.initrd
        # ipv6.disable keeps the wire quiet (no RS/DAD/MLD frames); the rest
        # trims boot work that only matters on real hardware.
        append = (
            f"console=ttyS0 quiet loglevel=1 panic=-1 rdinit=/init "
            f"ipv6.disable=1 mitigations=off nokaslr tsc=reliable "
            f"no_timer_check vw.ip={self.ip_cidr} vw.name={self.name}"
        )
        accel = "kvm" if kvm_usable() else "tcg"
        return [
            *self.wrapper,
            QEMU_BINARY,
            *"-nodefaults -no-user-config -no-reboot -display none -smp 1".split(),
            *("-machine", "pc,usb=off,vmport=off,smbus=off", "-accel", accel),
            *("-cpu", "host" if accel == "kvm" else "max", "-m", str(self.mem_mb)),
            *("-kernel", str(self.kernel), "-initrd", str(self.initrd), "-append", append),
            *("-chardev", "stdio,id=ser0,signal=off", "-serial", "chardev:ser0"),
            # romfile=: skip the iPXE option ROM (slow, and ipxe-qemu may be
            # missing); autonegotiation=off: carrier is up at once instead of
            # at the driver's next 2 s watchdog run.
            "-device",
            f"e1000,netdev=n0,mac={self.mac},romfile=,autonegotiation=off",
            *self.netdev_args,
            *self.extra_args,
        ]

    async def launch(self) -> None:
        """Spawn QEMU without waiting for the guest to boot."""
        if self._proc is not None:
            raise VMError(f"{self.name}: already launched")
        if self.kernel is None:
            self.kernel = await asyncio.to_thread(boot_kernel, DEFAULT_CACHE_DIR)
        if self.initrd is None:
            self.initrd = await asyncio.to_thread(build_initramfs, DEFAULT_CACHE_DIR)
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = self.command()
        log.info("%s: %s", self.name, shlex.join(cmd))
        self._console_log = open(self.workdir / f"{self.name}-console.log", "w")
        with open(self.workdir / f"{self.name}-qemu.log", "wb") as stderr:
            self._launched_at = time.monotonic()
            self._proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                preexec_fn=_die_with_parent,
            )
        self._pump_task = asyncio.create_task(self._pump(), name=f"{self.name}-console")

    async def wait_ready(self, timeout: float = 90.0) -> None:
        """Wait for the guest's ready marker; on failure stop QEMU and raise."""
        try:
            m = await self._expect(re.compile(rf"^{READY_MARKER} .*$", re.M), timeout)
        except TimeoutError:
            await self.stop()
            raise VMError(
                f"{self.name}: guest not ready after {timeout}s\n{self._diagnostics()}"
            ) from None
        except BaseException:
            await self.stop()
            raise
        self.boot_seconds = time.monotonic() - self._launched_at
        log.info("%s: booted in %.1fs: %s", self.name, self.boot_seconds, m.group(0))

    async def start(self, timeout: float = 90.0) -> None:
        """Launch QEMU and wait until the guest shell is ready."""
        try:
            await self.launch()
        except BaseException:
            await self.stop()
            raise
        await self.wait_ready(timeout)

    async def stop(self) -> None:
        """Kill QEMU (SIGTERM, then SIGKILL) and release everything; idempotent."""
        proc, self._proc = self._proc, None
        try:
            if proc is not None and proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 5)
                except TimeoutError:
                    log.warning("%s: QEMU ignored SIGTERM, killing", self.name)
        finally:
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
            if self._pump_task is not None:
                self._pump_task.cancel()
                self._pump_task = None
            if self._console_log is not None:
                self._console_log.close()
                self._console_log = None

    async def __aenter__(self) -> QemuVM:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ---- console

    async def run(self, cmd: str, timeout: float = 60.0) -> tuple[int, str]:
        """Run ``cmd`` in the guest shell; return (exit status, output).

        stdin is /dev/null and stdout/stderr are merged.  The command runs in
        a subshell, so ``cd``/``export`` do not persist.  Background jobs
        should redirect their output, or it may interleave with later runs.
        On timeout (or cancellation) the command gets a Ctrl-C, and
        TimeoutError is raised.  Output is meant to be small (< 1 MiB).
        """
        async with self._lock:
            tag = uuid.uuid4().hex[:12]
            # The '' split keeps the markers out of any echoed command line.
            line = f"echo VWB''{tag}; ( {cmd}\n) </dev/null; echo VWE''{tag}:$?\n"
            pattern = re.compile(rf"^VWB{tag}\n(.*?)^VWE{tag}:(\d+)\n", re.M | re.S)
            await self._send(line)
            try:
                m = await self._expect(pattern, timeout)
            except TimeoutError:
                self._interrupt()
                raise TimeoutError(f"{self.name}: {cmd!r} timed out after {timeout}s") from None
            except asyncio.CancelledError:
                self._interrupt()
                raise
            return int(m.group(2)), m.group(1)

    async def check(self, cmd: str, timeout: float = 60.0) -> str:
        """Like :meth:`run` but raise VMError on a non-zero exit status."""
        rc, out = await self.run(cmd, timeout)
        if rc != 0:
            raise VMError(f"{self.name}: {cmd!r} exited {rc}:\n{out}")
        return out

    async def ping(self, ip: str, count: int = 3, timeout: float = 30.0) -> bool:
        """Ping ``ip`` from the guest; True only if every one of the ``count``
        replies came back (busybox's exit status alone means "at least one")."""
        cmd = f"ping -c {count} -i 0.2 -W 2 {shlex.quote(ip)}"
        rc, out = await self.run(cmd, timeout)
        log.debug("%s: ping %s -> %d\n%s", self.name, ip, rc, out)
        m = _PING_SUMMARY.search(out)
        return rc == 0 and m is not None and int(m["sent"]) == int(m["received"]) == count

    async def ping_rtts(self, ip: str, count: int = 20, interval: float = 0.2,
                        timeout: float = 60.0) -> list[float]:
        """Ping ``ip`` from the guest; each reply's round-trip time in ms, in
        order (lost replies are simply missing, so ``len() < count``)."""
        cmd = f"ping -c {count} -i {interval} -W 2 {shlex.quote(ip)}"
        _, out = await self.run(cmd, timeout)
        return [float(m["ms"]) for m in _PING_REPLY.finditer(out)]

    async def iperf3_server(self, timeout: float = 30.0) -> None:
        """Start ``iperf3 -s`` as a daemon in the guest (it serves test after
        test until QEMU stops) and wait until it listens on IPERF3_PORT."""
        polls = max(1, int(timeout / 0.05))
        await self.check(
            "iperf3 -s -D --logfile /tmp/iperf3-s.log && i=0 && "
            f"while ! netstat -ltn | grep -q ':{IPERF3_PORT} '; do "
            f"[ $i -lt {polls} ] || exit 1; usleep 50000; i=$((i + 1)); done",
            timeout + 10)

    async def iperf3_client(self, server_ip: str, seconds: int, reverse: bool = False,
                            timeout: float | None = None) -> dict[str, Any]:
        """``iperf3 -c server_ip -t seconds -J`` (``-R``: the server sends) in
        the guest; its JSON report (``end.sum_received`` is what arrived).

        Raises VMError if iperf3 fails (its ``error`` field) or prints no JSON.
        """
        cmd = (f"iperf3 -c {shlex.quote(server_ip)} -t {int(seconds)} -i 0 -J "
               f"--connect-timeout 5000{' -R' if reverse else ''}")
        rc, out = await self.run(cmd, timeout if timeout is not None else seconds + 60)
        start = out.find("{")
        try:
            report: dict[str, Any] = json.loads(out[start:]) if start >= 0 else {}
        except ValueError:
            report = {}
        if rc != 0 or not report or "error" in report:
            detail = report.get("error") or out[-1000:]
            raise VMError(f"{self.name}: {cmd!r} exited {rc}: {detail}")
        return report

    async def _send(self, text: str) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            raise VMError(f"{self.name}: QEMU is not running")
        proc.stdin.write(text.encode())
        await proc.stdin.drain()

    def _interrupt(self) -> None:
        """Ctrl-C the foreground command so the shell takes input again."""
        proc = self._proc
        if proc is not None and proc.stdin is not None and proc.returncode is None:
            proc.stdin.write(b"\x03")

    async def _pump(self) -> None:
        """Drain the serial console forever (a full pipe would stall the guest)."""
        assert self._proc is not None and self._proc.stdout is not None
        stdout = self._proc.stdout
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            while chunk := await stdout.read(65536):
                text = decoder.decode(chunk).replace("\r", "")
                if self._console_log is not None:
                    self._console_log.write(text)
                    self._console_log.flush()
                self._buf = (self._buf + text)[-(1 << 20) :]
                self._changed.set()
        finally:
            self._eof = True
            self._changed.set()

    async def _expect(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        """Wait for ``pattern`` in the console; consume output up to its end."""
        async with asyncio.timeout(timeout):
            while True:
                m = pattern.search(self._buf)
                if m:
                    self._buf = self._buf[m.end() :]
                    return m
                if self._eof:
                    raise VMError(f"{self.name}: QEMU exited\n{self._diagnostics()}")
                self._changed.clear()
                await self._changed.wait()

    def _diagnostics(self) -> str:
        parts = []
        for suffix in ("qemu", "console"):
            path = self.workdir / f"{self.name}-{suffix}.log"
            if path.exists():
                tail = path.read_text(errors="replace")[-2000:]
                parts.append(f"--- {path} (tail) ---\n{tail}")
        return "\n".join(parts)
