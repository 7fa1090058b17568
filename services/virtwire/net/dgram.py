"""Datagram backend (QEMU's net/dgram.c, ``-netdev dgram`` / ``-netdev socket,udp|mcast``).

One frame per datagram, no prefix, no padding.

- unicast: bind ``local``, send every frame to ``remote`` (UDP, or unix
  datagram sockets when both are ``unix:PATH``);
- multicast: bind the group's port, join the group (on ``multicast_interface``
  if given), send to the group with IP_MULTICAST_LOOP on so that members on the
  same host hear each other. The TTL stays at the kernel's default of 1.

Frames only ever go to the configured remote or group. Datagrams are read
``DGRAM_SEND_BUDGET`` per wakeup and sent with ``net_dgram_send_completed``;
a 0 from the send stops reading until it fires, as for tap. EAGAIN on write
keeps the frame queued until the socket is writable. Empty datagrams are
ignored and counted.

virtwire difference: with IP_MULTICAST_LOOP a member also hears its own
datagrams. QEMU hands them to its NIC; behind a hub that would duplicate every
frame onto the other ports, so the backend drops the loopback copies of the
frames it sent itself (``echo_dropped``).
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import os
import socket

from virtwire.address import SockAddr
from virtwire.errors import BackendError, ConfigError
from virtwire.net.eth import NET_BUFSIZE
from virtwire.net.fdpoll import PolledFd
from virtwire.net.net import NetClient
from virtwire.net.stream import claim_unix_path

logger = logging.getLogger(__name__)

#: Datagrams read per wakeup.
DGRAM_SEND_BUDGET = 50
#: Own multicast frames remembered to recognise their loopback copies.
ECHO_WINDOW = 1024

SockTarget = str | tuple[str, int]


def resolve_dgram_addr(addr: SockAddr, *, passive: bool) -> tuple[int, tuple[str, int]]:
    """(family, sockaddr) of a UDP address; ConfigError if it does not resolve."""
    try:
        infos = socket.getaddrinfo(addr.host, addr.port, type=socket.SOCK_DGRAM,
                                   flags=socket.AI_PASSIVE if passive else 0)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve {addr}: {exc.strerror}") from exc
    family, _type, _proto, _name, sockaddr = infos[0]
    return family, (str(sockaddr[0]), int(sockaddr[1]))


def check_multicast_group(addr: SockAddr) -> ipaddress.IPv4Address:
    """The group of ``GROUP:PORT``: an IPv4 multicast address and a real port."""
    if addr.is_unix:
        raise ConfigError(f"multicast group {addr} must be GROUP:PORT, not a unix socket")
    try:
        group = ipaddress.ip_address(addr.host)
    except ValueError:
        raise ConfigError(f"multicast group {addr.host!r} is not an IP address") from None
    if not isinstance(group, ipaddress.IPv4Address) or not group.is_multicast:
        raise ConfigError(f"{addr.host} is not an IPv4 multicast address (224.0.0.0/4)")
    if addr.port == 0:
        raise ConfigError(f"multicast group {addr} needs a port")
    return group


def check_interface_addr(text: str) -> ipaddress.IPv4Address:
    try:
        iface = ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(f"multicast interface {text!r} is not an IPv4 address") from None
    if not isinstance(iface, ipaddress.IPv4Address):
        raise ConfigError(f"multicast interface {text!r} is not an IPv4 address")
    return iface


def _bind_error(what: str, exc: OSError | ValueError) -> BackendError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return BackendError(f"cannot bind {what}: {reason}")


def dgram_unicast_socket(local: SockAddr, remote: SockAddr) -> tuple[socket.socket, SockTarget]:
    """A bound non-blocking socket for ``local`` and where to send: ``remote``."""
    if local.is_unix != remote.is_unix:
        raise ConfigError(f"local {local} and remote {remote} must both be unix:PATH "
                          "or both HOST:PORT")
    dest: SockTarget
    if local.is_unix:
        claim_unix_path(local.path, socket.SOCK_DGRAM)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bind_to: SockTarget = local.path
        dest = remote.path
    else:
        if remote.port == 0:
            raise ConfigError(f"remote {remote} needs a port")
        family, bind_to = resolve_dgram_addr(local, passive=True)
        rfamily, dest = resolve_dgram_addr(remote, passive=False)
        if family != rfamily:
            raise ConfigError(f"local {local} and remote {remote} are of different "
                              "address families")
        sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind(bind_to)
        sock.setblocking(False)
    except (OSError, ValueError) as exc:
        sock.close()
        raise _bind_error(str(local), exc) from exc
    return sock, dest


def dgram_mcast_socket(group_addr: SockAddr, interface: str = "") -> tuple[socket.socket,
                                                                             SockTarget]:
    """QEMU's net_dgram_mcast_create: bound to the group's port, joined, loop on."""
    group = check_multicast_group(group_addr)
    iface = check_interface_addr(interface) if interface else ipaddress.IPv4Address(0)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((str(group), group_addr.port))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                        group.packed + iface.packed)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        if interface:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, iface.packed)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        where = f" on {interface}" if interface else ""
        raise BackendError(f"cannot join multicast group {group_addr}{where}: "
                           f"{exc.strerror}") from exc
    return sock, (str(group), group_addr.port)


class DgramBackend(NetClient):
    """QEMU's NetDgramState: one frame per datagram to a fixed destination."""

    kind = "dgram"
    #: Frames read from outside the LAN start their trace here (docs/tracing.md).
    ingress_span = "tap.read"

    def __init__(self, name: str, local: SockAddr, remote: SockAddr | None = None, *,
                 multicast: bool = False, multicast_interface: str = "") -> None:
        super().__init__(name)
        self.loop = asyncio.get_running_loop()
        self.local = local
        self.remote = remote
        self.multicast = multicast
        self.multicast_interface = multicast_interface
        if multicast:
            if remote is not None:
                raise ConfigError("a multicast dgram backend sends to its group: "
                                  "give no remote")
            self.sock, self.dest = dgram_mcast_socket(local, multicast_interface)
        else:
            if remote is None:
                raise ConfigError("a unicast dgram backend needs a remote address")
            self.sock, self.dest = dgram_unicast_socket(local, remote)
        self.fd = self.sock.fileno()
        #: The address actually bound (a local port of 0 gets a real one).
        self.local_address = local
        if not local.is_unix:
            self.local_address = SockAddr(local.host, int(self.sock.getsockname()[1]))
        self._unix_inode: tuple[int, int] | None = None
        if local.is_unix:
            st = os.stat(local.path)
            self._unix_inode = (st.st_dev, st.st_ino)
        self.closed = False
        self.poll = PolledFd(self.loop, self.fd, self.net_dgram_send, self.flush_queued_packets)
        #: Backend counters beyond NetClientStats.
        self.empty_datagrams = 0
        self.echo_dropped = 0
        self.read_errors = 0
        self.write_errors = 0
        self._last_write_errno = 0
        self._echoes: collections.deque[bytes] = collections.deque()
        self._echo_counts: dict[bytes, int] = {}
        self.poll.set_read_poll(True)
        logger.info("dgram %s: %s", name, self.describe())

    # -- socket -> peer ------------------------------------------------------------
    def net_dgram_send(self) -> None:
        """Read up to DGRAM_SEND_BUDGET datagrams and send each to the peer."""
        sock = self.sock
        completed = self.net_dgram_send_completed
        echo_counts = self._echo_counts
        for _ in range(DGRAM_SEND_BUDGET):
            try:
                frame = sock.recv(NET_BUFSIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.read_errors += 1
                logger.warning("dgram %s: receive failed: %s", self.name, exc.strerror)
                return
            if not frame:
                self.empty_datagrams += 1
                self.stats.dropped_malformed += 1
                continue
            if echo_counts and self._is_own_echo(frame):
                self.echo_dropped += 1
                continue
            ret = self.send_packet_async(frame, completed)
            if ret == 0:
                self.poll.set_read_poll(False)
                return
            if ret < 0:
                return

    def net_dgram_send_completed(self, _sender: NetClient, _ret: int) -> None:
        self.poll.set_read_poll(True)

    def _remember_echo(self, frame: bytes) -> None:
        self._echoes.append(frame)
        self._echo_counts[frame] = self._echo_counts.get(frame, 0) + 1
        if len(self._echoes) > ECHO_WINDOW:
            self._forget_echo(self._echoes.popleft())

    def _forget_echo(self, frame: bytes) -> None:
        n = self._echo_counts[frame] - 1
        if n:
            self._echo_counts[frame] = n
        else:
            del self._echo_counts[frame]

    def _is_own_echo(self, frame: bytes) -> bool:
        """True (and forgotten) if ``frame`` is the loopback copy of one we sent.

        Copies come back in send order, so older remembered frames whose copy
        did not come (lost on the way) are forgotten on the way to this one.
        """
        if frame not in self._echo_counts:
            return False
        while True:
            oldest = self._echoes.popleft()
            self._forget_echo(oldest)
            if oldest == frame:
                return True

    # -- peer -> socket: NetClientInfo ---------------------------------------------
    def receive(self, data: bytes) -> int:
        if self.closed:
            return -1
        try:
            self.sock.sendto(data, self.dest)
        except (BlockingIOError, InterruptedError):
            self.poll.set_write_poll(True)
            return 0
        except OSError as exc:
            self.write_errors += 1
            if exc.errno != self._last_write_errno:
                self._last_write_errno = exc.errno or 0
                logger.warning("dgram %s: send of %d bytes to %s failed: %s", self.name,
                               len(data), self._dest_text(), exc.strerror)
            return -1
        self._last_write_errno = 0
        if self.multicast:
            self._remember_echo(data)
        return len(data)

    def can_receive(self) -> bool:
        return not self.poll.write_poll

    def cleanup(self) -> None:
        if self.closed:
            return
        self.poll.close()
        self.closed = True
        self.sock.close()
        if self._unix_inode is not None:
            try:
                st = os.stat(self.local.path)
                if (st.st_dev, st.st_ino) == self._unix_inode:
                    os.unlink(self.local.path)
            except OSError:
                pass
        logger.info("dgram %s: closed", self.name)

    def _dest_text(self) -> str:
        dest = self.dest
        return f"unix:{dest}" if isinstance(dest, str) else str(SockAddr(dest[0], dest[1]))

    def describe(self) -> str:
        if self.multicast:
            parts = [f"mcast={self.local}"]
            if self.multicast_interface:
                parts.append(f"localaddr={self.multicast_interface}")
        else:
            parts = [f"local={self.local_address}", f"remote={self._dest_text()}"]
        if not self.poll.read_poll and not self.closed:
            parts.append("paused")
        for label in ("empty_datagrams", "echo_dropped", "read_errors", "write_errors"):
            value = getattr(self, label, 0)
            if value:
                parts.append(f"{label}={value}")
        return " ".join(parts)


__all__ = ["DgramBackend", "check_interface_addr", "check_multicast_group"]
