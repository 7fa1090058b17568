"""Address parsing shared by servers, links and backends.

- ``HOST:PORT`` (IPv6 as ``[::1]:PORT``) for TCP, ``unix:PATH`` for unix sockets.
- A link peer is ``ADDR/NETCLIENT``; an empty NETCLIENT (``ADDR/`` or just
  ``HOST:PORT``) asks the remote server to create one (a hub adds a port).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from virtwire.errors import ConfigError


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
            raise ConfigError(f"bad address {text!r}: unix sockets are not allowed here")
        path = text[len("unix:"):]
        if not path:
            raise ConfigError(f"bad address {text!r}: empty unix socket path")
        return SockAddr(path=path)
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ConfigError(f"bad address {text!r}: expected [IPV6]:PORT")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ConfigError(f"bad address {text!r}: expected HOST:PORT or unix:PATH")
        if ":" in host:
            raise ConfigError(f"bad address {text!r}: write IPv6 hosts as [ADDR]:PORT")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"bad address {text!r}: port {port_text!r} is not a number") from None
    if not (0 if allow_port_zero else 1) <= port <= 65535:
        raise ConfigError(f"bad address {text!r}: port {port} out of range")
    if not host:
        raise ConfigError(f"bad address {text!r}: empty host")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not all(part.isalnum() or "-" in part for part in host.split(".")):
            raise ConfigError(f"bad address {text!r}: {host!r} is not a host name or IP") from None
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
            raise ConfigError(f"bad peer {text!r}: expected unix:PATH/NETCLIENT")
        addr_text = path
    else:
        addr_text, _, name = text.partition("/")
    if "/" in name:
        raise ConfigError(f"bad peer {text!r}: NetClient name {name!r} contains '/'")
    return PeerSpec(parse_sockaddr(addr_text, allow_port_zero=False), name)
