"""TAP backend (QEMU's net/tap.c, net/tap-linux.c): a Linux TAP device as a NetClient.

The device is opened with IFF_TAP|IFF_NO_PI (plus IFF_VNET_HDR on request) and
set non-blocking. Frames read from it go to the peer with ``tap_send``: up to
``TAP_SEND_BUDGET`` (50) per wakeup, each padded to ETH_ZLEN and sent with
``tap_send_completed`` as sent_cb; a 0 from the send stops reading (QEMU's
``tap_read_poll(false)``, here ``poll.set_read_poll``) until that callback
fires. Frames from the peer are written with ``receive``; EAGAIN keeps the
frame queued and polls for writability (``poll.set_write_poll``), which
flushes the queue.

``script IFNAME`` runs after the device exists and ``downscript IFNAME``
before it is closed (QEMU's script=/downscript=). Unlike QEMU, which waits
for them with the main loop stopped, they run as asyncio subprocesses
(``TapBackend.run_script`` / ``run_downscript``), so the service keeps
answering while one runs; the device is not read until the script is done.
A script that fails, or runs longer than SCRIPT_TIMEOUT_S (it is then
killed, with its process group), makes the backend fail to open.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import signal
import struct
from collections.abc import Callable

from virtwire.errors import BackendError, ConfigError
from virtwire.logfmt import netclient_extra
from virtwire.net.eth import ETH_ZLEN, NET_BUFSIZE
from virtwire.net.fdpoll import PolledFd
from virtwire.net.net import NetClient

logger = logging.getLogger(__name__)

TUN_PATH = "/dev/net/tun"
# <linux/if_tun.h>
TUNSETIFF = 0x400454CA
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFNAMSIZ = 16
#: sizeof(struct virtio_net_hdr): what QEMU's host_vnet_hdr_len is set to.
VNET_HDR_LEN = 10
_VNET_HDR_ZERO = bytes(VNET_HDR_LEN)
#: tap_send reads at most this many frames per wakeup (QEMU: 50).
TAP_SEND_BUDGET = 50
#: Longest a script or downscript may run.
SCRIPT_TIMEOUT_S = 30.0
#: How much of a script's output is kept (the end of it), for the log.
SCRIPT_OUTPUT_MAX = 4096


#: Opens a TAP: (ifname, vnet_hdr) -> (non-blocking fd, the interface's name).
TapOpener = Callable[[str, bool], tuple[int, str]]


def check_ifname(ifname: str) -> None:
    """The kernel's dev_valid_name; empty is allowed (the kernel picks tapN)."""
    if not ifname:
        return
    if len(ifname.encode()) >= IFNAMSIZ:
        raise ConfigError(f"bad ifname {ifname!r}: longer than {IFNAMSIZ - 1} bytes")
    if ifname in (".", "..") or any(c in ifname for c in "/:") \
            or any(c.isspace() for c in ifname):
        raise ConfigError(f"bad ifname {ifname!r}: '/', ':', whitespace, '.' and '..' "
                          "are not allowed in interface names")


def check_script(option: str, path: str) -> None:
    """A script= / downscript= must be an executable file."""
    if not path:
        return
    if not os.path.isfile(path):
        raise ConfigError(f"{option} {path!r} does not exist or is not a file")
    if not os.access(path, os.X_OK):
        raise ConfigError(f"{option} {path!r} is not executable")


def tap_open(ifname: str, vnet_hdr: bool) -> tuple[int, str]:
    """Open /dev/net/tun as a TAP: (non-blocking fd, the interface's name)."""
    check_ifname(ifname)
    try:
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise BackendError(f"cannot open {TUN_PATH}: it does not exist "
                           "(load the tun module, or pass --device /dev/net/tun "
                           "to the container)") from exc
    except PermissionError as exc:
        raise BackendError(f"cannot open {TUN_PATH}: permission denied "
                           "(needs CAP_NET_ADMIN)") from exc
    except OSError as exc:
        raise BackendError(f"cannot open {TUN_PATH}: {exc.strerror}") from exc
    try:
        flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
        ifr = struct.pack(f"{IFNAMSIZ}sH", ifname.encode(), flags)
        try:
            ifr = fcntl.ioctl(fd, TUNSETIFF, ifr)
        except OSError as exc:
            raise BackendError(_tunsetiff_error(ifname, exc)) from exc
        name = ifr[:IFNAMSIZ].split(b"\0", 1)[0].decode()
        if vnet_hdr:
            try:
                fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
            except OSError as exc:
                raise BackendError(f"TAP {name}: TUNSETVNETHDRSZ {VNET_HDR_LEN} failed: "
                                   f"{exc.strerror}") from exc
    except BaseException:
        os.close(fd)
        raise
    return fd, name


def _tunsetiff_error(ifname: str, exc: OSError) -> str:
    what = f"TAP {ifname!r}" if ifname else "a TAP device"
    if exc.errno == errno.EBUSY:
        return f"cannot create {what}: the interface is busy (another process has it open)"
    if exc.errno == errno.EPERM:
        return f"cannot create {what}: operation not permitted (needs CAP_NET_ADMIN)"
    if exc.errno == errno.EINVAL:
        return (f"cannot create {what}: invalid name, or an interface of that name "
                "exists and is not a TAP device")
    return f"cannot create {what}: TUNSETIFF failed: {exc.strerror}"


class _OutputTail:
    """Reads a non-blocking pipe from the loop, keeping its last SCRIPT_OUTPUT_MAX bytes."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.data = bytearray()
        self._loop = asyncio.get_running_loop()
        os.set_blocking(fd, False)
        self._loop.add_reader(fd, self.read)

    def read(self) -> None:
        try:
            chunk = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._loop.remove_reader(self.fd)
            return
        self.data += chunk
        del self.data[:-SCRIPT_OUTPUT_MAX]

    def close(self) -> str:
        """What was written up to now (a child the script left may hold the pipe)."""
        self.read()
        self._loop.remove_reader(self.fd)
        os.close(self.fd)
        return self.data.decode(errors="replace").strip()


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the script's process group (it leads one), while it is unreaped."""
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


async def launch_script(option: str, script: str, ifname: str,
                        timeout: float | None = None) -> None:
    """QEMU's launch_script: run ``script ifname``; BackendError unless it exits 0.

    An asyncio subprocess in its own process group: past ``timeout`` (default
    SCRIPT_TIMEOUT_S), or when the caller is cancelled, the group is killed.
    Its output (stdout and stderr, the last SCRIPT_OUTPUT_MAX bytes) is logged.
    """
    timeout = SCRIPT_TIMEOUT_S if timeout is None else timeout
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        proc = await asyncio.create_subprocess_exec(
            script, ifname, stdin=asyncio.subprocess.DEVNULL, stdout=write_end,
            stderr=write_end, close_fds=True, process_group=0)
    except OSError as exc:
        os.close(read_end)
        raise BackendError(f"{option} {script} {ifname}: could not launch: "
                           f"{exc.strerror}") from exc
    finally:
        os.close(write_end)
    tail = _OutputTail(read_end)
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        _kill_group(proc)
        await proc.wait()
        raise BackendError(f"{option} {script} {ifname}: still running after "
                           f"{timeout:g}s, killed") from None
    except BaseException:  # cancelled: the script goes with the request
        _kill_group(proc)
        raise
    finally:
        output = tail.close()
    if output:
        logger.info("%s %s %s: %s", option, script, ifname, output)
    if proc.returncode != 0:
        detail = f": {output.splitlines()[-1][:200]}" if output else ""
        raise BackendError(f"{option} {script} {ifname} failed with status "
                           f"{proc.returncode}{detail}")


class TapBackend(NetClient):
    """QEMU's TAPState: a TAP device whose frames go to and from the peer.

    With a ``script`` the device is opened but not read until ``run_script``
    (``TapBackend.create`` does both); ``close`` runs the downscript, then
    ``cleanup`` closes the device.
    """

    kind = "tap"
    #: Frames read from outside the LAN start their trace here (docs/tracing.md).
    ingress_span = "tap.read"

    def __init__(self, name: str, ifname: str = "", *, vnet_hdr: bool = False,
                 no_padding: bool = False, script: str = "", downscript: str = "",
                 netns: str = "", opener: TapOpener | None = None) -> None:
        super().__init__(name)
        self.vnet_hdr = vnet_hdr
        self.no_padding = no_padding
        self.script = script
        self.downscript = downscript
        #: The network namespace file the TAP was opened in ("": the service's own).
        self.netns = netns
        self._loop = asyncio.get_running_loop()
        # ``opener``: e.g. net.nsjoin's, inside another namespace (net_init_tap).
        self.fd, self.ifname = (opener or tap_open)(ifname, vnet_hdr)
        self.closed = False
        self.poll = PolledFd(self._loop, self.fd, self.tap_send, self.flush_queued_packets)
        #: Backend counters beyond NetClientStats.
        self.read_errors = 0
        self.write_errors = 0
        self.write_eagain = 0
        self._last_write_errno = 0
        self._script_due = bool(script)
        #: Set once the backend is open (its script ran): QEMU's down_script.
        self._downscript_due = False
        if not script:
            self._opened()

    @classmethod
    async def create(cls, name: str, ifname: str = "", *, vnet_hdr: bool = False,
                     no_padding: bool = False, script: str = "",
                     downscript: str = "") -> TapBackend:
        """Open the device and run its script; BackendError (device closed) if it fails."""
        backend = cls(name, ifname, vnet_hdr=vnet_hdr, no_padding=no_padding, script=script,
                      downscript=downscript)
        await backend.run_script()
        return backend

    def _opened(self) -> None:
        self._downscript_due = bool(self.downscript)
        self.poll.set_read_poll(True)
        logger.info("tap %s: opened %s%s", self.name, self.ifname,
                    " (vnet_hdr)" if self.vnet_hdr else "")

    async def run_script(self) -> None:
        """Run ``script IFNAME`` (once), then start reading the device.

        The script runs as a subprocess: the loop goes on meanwhile. If it
        fails (or is cancelled) the device is closed, with no downscript.
        """
        if not self._script_due:
            return
        self._script_due = False
        try:
            await launch_script("script", self.script, self.ifname)
        except BaseException:
            self.cleanup()
            raise
        if self.closed:
            raise BackendError(f"tap {self.name}: closed while its script ran")
        self._opened()

    async def run_downscript(self) -> None:
        """Run ``downscript IFNAME`` (once, if the backend opened), before ``cleanup``."""
        if not self._downscript_due or self.closed:
            return
        self._downscript_due = False
        try:
            await launch_script("downscript", self.downscript, self.ifname)
        except BackendError as exc:
            logger.error("tap %s: %s", self.name, exc)

    async def close(self) -> None:
        """tap_cleanup: the downscript, then close the device."""
        await self.run_downscript()
        self.cleanup()

    # -- host -> peer ----------------------------------------------------------
    def tap_send(self) -> None:
        """Read up to TAP_SEND_BUDGET frames and send each to the peer."""
        fd = self.fd
        strip = VNET_HDR_LEN if self.vnet_hdr else 0
        pad = not self.no_padding
        completed = self.tap_send_completed
        for _ in range(TAP_SEND_BUDGET):
            try:
                buf = os.read(fd, NET_BUFSIZE + strip)
            except BlockingIOError:
                return
            except OSError as exc:
                self.read_errors += 1
                logger.warning("tap %s: read from %s failed: %s", self.name, self.ifname,
                               exc.strerror, extra=netclient_extra(self.name))
                return
            if strip:
                buf = buf[strip:]
            if not buf:
                return
            if pad and len(buf) < ETH_ZLEN:
                buf += bytes(ETH_ZLEN - len(buf))
            ret = self.send_packet_async(buf, completed)
            if ret == 0:
                self.poll.set_read_poll(False)
                return
            if ret < 0:
                return

    def tap_send_completed(self, _sender: NetClient, _ret: int) -> None:
        """The frame that stopped reading was delivered (or purged): read again."""
        self.poll.set_read_poll(True)

    # -- peer -> host: NetClientInfo ------------------------------------------
    def receive(self, data: bytes) -> int:
        """tap_receive: write the frame; 0 (queued) on EAGAIN, -1 on other errors."""
        if self.closed:
            return -1
        try:
            if self.vnet_hdr:
                os.writev(self.fd, (_VNET_HDR_ZERO, data))
            else:
                os.write(self.fd, data)
        except BlockingIOError:
            self.write_eagain += 1
            self.poll.set_write_poll(True)
            return 0
        except OSError as exc:
            self.write_errors += 1
            if exc.errno != self._last_write_errno:
                self._last_write_errno = exc.errno or 0
                hint = " (interface down?)" if exc.errno == errno.EIO else ""
                logger.warning("tap %s: write to %s failed: %s%s", self.name, self.ifname,
                               exc.strerror, hint, extra=netclient_extra(self.name))
            return -1
        self._last_write_errno = 0
        return len(data)

    def can_receive(self) -> bool:
        return not self.poll.write_poll

    def cleanup(self) -> None:
        """Stop polling and close the device (``close`` runs the downscript first)."""
        if self.closed:
            return
        if self._downscript_due:
            logger.warning("tap %s: closed without its downscript %s (not run: close() "
                           "runs it)", self.name, self.downscript)
        self.poll.close()
        self.closed = True
        os.close(self.fd)
        logger.info("tap %s: closed %s", self.name, self.ifname)

    def describe(self) -> str:
        parts = [f"ifname={self.ifname}"]
        if self.netns:
            parts.append(f"netns={self.netns}")
        if self.vnet_hdr:
            parts.append("vnet_hdr=on")
        if self.no_padding:
            parts.append("no_padding=on")
        if self.script:
            parts.append(f"script={self.script}")
        if self.downscript:
            parts.append(f"downscript={self.downscript}")
        if not self.poll.read_poll and not self.closed:
            parts.append("paused")
        if self.read_errors or self.write_errors:
            parts.append(f"read_errors={self.read_errors} write_errors={self.write_errors}")
        return " ".join(parts)
