"""Address parsing shared by servers, links and backends.

- ``HOST:PORT`` (IPv6 as ``[::1]:PORT``) for TCP, ``unix:PATH`` for unix sockets.
- A link peer is ``ADDR/NETCLIENT``; an empty NETCLIENT (``ADDR/`` or just
  ``HOST:PORT``) asks the remote server to create one (a hub adds a port).
- Names (NetClients, hub ports, backends, the names in a LinkHello) are 1 to
  ``NAME_MAX`` characters of ``[A-Za-z0-9._-]`` (``check_name``); QEMU's ids are
  similar (letters, digits, '-', '.', '_'), but QEMU has no length limit.
- ``shorten`` is how any text a peer sent appears in an error message: cut
  to a bounded length with a marker, so a message never echoes unbounded input.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from virtwire.errors import ConfigError

#: Longest name of a NetClient, hub port or backend.
NAME_MAX = 64
_NAME_RE = re.compile(rf"[A-Za-z0-9._-]{{1,{NAME_MAX}}}")
_HOST_MAX = 253
_HOST_RE = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?")
#: Characters of peer-supplied text shown in an error message.
SHOWN_MAX = 64


def shorten(text: str, limit: int = SHOWN_MAX) -> str:
    """``repr(text)``, cut to ``limit`` characters with a marker when longer.

    Use it for anything a peer sent that goes into a message: the result is
    at most about ``4 * limit + 30`` characters whatever the input.
    """
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def is_valid_name(name: str) -> bool:
    return _NAME_RE.fullmatch(name) is not None


def check_name(name: str, what: str = "NetClient") -> str:
    """``name`` if it is 1 to NAME_MAX of ``[A-Za-z0-9._-]``, else ConfigError."""
    if _NAME_RE.fullmatch(name) is None:
        raise ConfigError(f"bad {what} name {shorten(name)}: use 1 to {NAME_MAX} of "
                          "A-Z, a-z, 0-9, '.', '_' and '-'")
    return name


@dataclass(frozen=True)
class SockAddr:
    """A TCP (host, port) or a unix socket path."""

    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def is_unix(self) -> bool:
        return bool(self.path)

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def grpc_target(self) -> str:
        return f"unix:{self.path}" if self.path else str(self)


def parse_sockaddr(text: str, *, allow_unix: bool = True, allow_port_zero: bool = True) -> SockAddr:
    """Parse ``HOST:PORT``, ``[V6]:PORT`` or ``unix:PATH``; ConfigError if malformed."""
    text = text.strip()
    if text.startswith("unix:"):
        if not allow_unix:
            raise ConfigError(f"bad address {shorten(text)}: unix sockets are not allowed here")
        path = text[len("unix:"):]
        if not path:
            raise ConfigError(f"bad address {shorten(text)}: empty unix socket path")
        return SockAddr(path=path)
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ConfigError(f"bad address {shorten(text)}: expected [IPV6]:PORT")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ConfigError(f"bad address {shorten(text)}: expected HOST:PORT or unix:PATH")
        if ":" in host:
            raise ConfigError(f"bad address {shorten(text)}: write IPv6 hosts as [ADDR]:PORT")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"bad address {shorten(text)}: port {shorten(port_text)} "
                          "is not a number") from None
    if not (0 if allow_port_zero else 1) <= port <= 65535:
        raise ConfigError(f"bad address {shorten(text)}: port {shorten(port_text)} out of range")
    if not host:
        raise ConfigError(f"bad address {shorten(text)}: empty host")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if len(host) > _HOST_MAX or _HOST_RE.fullmatch(host) is None:
            raise ConfigError(f"bad address {shorten(text)}: {shorten(host)} is not a host "
                              "name or IP") from None
    return SockAddr(host=host, port=port)


@dataclass(frozen=True)
class PeerSpec:
    """Where a link dials: a server address and the NetClient name there."""

    addr: SockAddr
    netclient: str

    def __str__(self) -> str:
        return f"{self.addr}/{self.netclient}"


def parse_peer(text: str) -> PeerSpec:
    """Parse ``ADDR/NETCLIENT`` (NETCLIENT may be empty)."""
    if text.startswith("unix:"):
        path, sep, name = text.rpartition("/")
        if not sep or path == "unix:":
            raise ConfigError(f"bad peer {shorten(text)}: expected unix:PATH/NETCLIENT")
        addr_text = path
    else:
        addr_text, _, name = text.partition("/")
    if "/" in name:
        raise ConfigError(f"bad peer {shorten(text)}: NetClient name {shorten(name)} "
                          "contains '/'")
    if name:
        check_name(name)
    return PeerSpec(parse_sockaddr(addr_text, allow_port_zero=False), name)
