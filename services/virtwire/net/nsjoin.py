"""A TAP opened inside another network namespace (a container's), and set up there.

A TUN/TAP device lives in the network namespace its ``/dev/net/tun`` file was
opened in, and an AF_INET socket acts on the namespace it was created in. So
``open_tap_in`` runs a short thread that joins the target namespace with
setns(2) on its file (``/proc/PID/ns/net`` of a container's process, or
``/run/netns/NAME``), which changes that thread's namespace only; there it
opens the TAP (``tap.tap_open``), gives it its MAC, MTU and IPv4 address and
brings it up, with ioctls on a socket of that namespace, and ends. The fd
keeps working from the service's own namespace: frames written to it come
out of the interface inside the container, and what the container sends
there is read from it. Closing it (the service stopping) removes the
interface, as for any non-persistent TAP.

This is how containerlab wires a veth into a container, with a TAP instead
of a veth, so that no interface of the LAN is ever in the host's namespace
and nothing needs ``ip`` or a shell in the container's image. It needs
CAP_SYS_ADMIN (setns) and CAP_NET_ADMIN. The namespace file comes from the
service's command line only (``serve tap --netns``), never from an RPC.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import ipaddress
import os
import socket
import struct
import threading

from virtwire.errors import BackendError, ConfigError
from virtwire.net.eth import parse_mac
from virtwire.net.tap import IFNAMSIZ, tap_open

__all__ = ["TapSetup", "configure_interface", "open_tap_in"]

CLONE_NEWNET = 0x40000000
# <linux/sockios.h>
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCSIFADDR = 0x8916
SIOCSIFBRDADDR = 0x891A
SIOCSIFNETMASK = 0x891C
SIOCSIFMTU = 0x8922
SIOCSIFHWADDR = 0x8924
IFF_UP = 0x1
ARPHRD_ETHER = 1
#: Longest the setup thread may take (it does a handful of syscalls).
SETUP_TIMEOUT_S = 10.0

_libc = ctypes.CDLL(None, use_errno=True)


class TapSetup:
    """What the interface gets once open: a MAC, an MTU, an IPv4 address (CIDR)."""

    def __init__(self, *, mac: str = "", mtu: int = 0, ip: str = "") -> None:
        self.mac = parse_mac(mac) if mac else b""
        if mtu and not 68 <= mtu <= 65535:
            raise ConfigError(f"bad MTU {mtu}: 68 to 65535")
        self.mtu = mtu
        try:
            self.ip = ipaddress.IPv4Interface(ip) if ip else None
        except ValueError:
            raise ConfigError(f"bad address {ip[:60]!r}: an IPv4 address with its prefix, "
                              "e.g. 198.18.0.20/24") from None

    def __bool__(self) -> bool:
        return bool(self.mac or self.mtu or self.ip)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _ifreq(ifname: str, payload: bytes = b"") -> bytes:
    return struct.pack(f"{IFNAMSIZ}s", ifname.encode()) + payload.ljust(24, b"\0")


def _sockaddr_in(ip: ipaddress.IPv4Address) -> bytes:
    return struct.pack("=H2s4s", socket.AF_INET, b"\0\0", ip.packed)


def configure_interface(ifname: str, setup: TapSetup) -> None:
    """Give ``ifname`` (in this thread's namespace) ``setup``, and bring it up."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        def ioctl(request: int, payload: bytes, what: str) -> bytes:
            try:
                return fcntl.ioctl(sock, request, _ifreq(ifname, payload))
            except OSError as exc:
                raise BackendError(f"interface {ifname}: cannot set its {what}: "
                                   f"{exc.strerror}") from exc

        if setup.mac:
            ioctl(SIOCSIFHWADDR, struct.pack("=H6s", ARPHRD_ETHER, setup.mac), "MAC")
        if setup.mtu:
            ioctl(SIOCSIFMTU, struct.pack("=i", setup.mtu), "MTU")
        if setup.ip is not None:
            net = setup.ip.network
            ioctl(SIOCSIFADDR, _sockaddr_in(setup.ip.ip), f"address {setup.ip}")
            ioctl(SIOCSIFNETMASK, _sockaddr_in(net.netmask), "netmask")
            if net.prefixlen < 31:
                ioctl(SIOCSIFBRDADDR, _sockaddr_in(net.broadcast_address), "broadcast")
        flags = struct.unpack_from("=H", ioctl(SIOCGIFFLAGS, b"", "flags"), IFNAMSIZ)[0]
        ioctl(SIOCSIFFLAGS, struct.pack("=H", flags | IFF_UP), "flags (up)")


def _open_netns(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise BackendError(f"cannot open network namespace {path}: {exc.strerror} (has its "
                           "container or process gone?)") from exc


def open_tap_in(netns: str, ifname: str, vnet_hdr: bool, setup: TapSetup) -> tuple[int, str]:
    """Open TAP ``ifname`` in the namespace at ``netns`` ("": this one) and apply
    ``setup`` there: (non-blocking fd, its name). BackendError says what failed."""
    if not netns:
        fd, name = tap_open(ifname, vnet_hdr)
        try:
            if setup:
                configure_interface(name, setup)
        except BaseException:
            os.close(fd)
            raise
        return fd, name
    target = _open_netns(netns)
    result: list[tuple[int, str]] = []
    failure: list[BaseException] = []

    def run() -> None:
        # A thread of its own: setns changes this thread's namespace only, and
        # the thread ends afterwards, so no other code ever runs in it.
        try:
            _setns(target)
        except OSError as exc:
            hint = (" (needs CAP_SYS_ADMIN)" if exc.errno == errno.EPERM else
                    " (not a network namespace)" if exc.errno == errno.EINVAL else "")
            failure.append(BackendError(f"cannot enter network namespace {netns}: "
                                        f"{exc.strerror}{hint}"))
            return
        try:
            fd, name = tap_open(ifname, vnet_hdr)
        except BaseException as exc:
            failure.append(exc)
            return
        try:
            configure_interface(name, setup)
        except BaseException as exc:
            os.close(fd)
            failure.append(exc)
            return
        result.append((fd, name))

    try:
        thread = threading.Thread(target=run, name=f"tap-netns-{ifname}", daemon=True)
        thread.start()
        thread.join(SETUP_TIMEOUT_S)
    finally:
        os.close(target)
    if thread.is_alive():
        raise BackendError(f"TAP {ifname} in {netns}: setting it up took over "
                           f"{SETUP_TIMEOUT_S:g}s")
    if failure:
        raise failure[0]
    return result[0]
