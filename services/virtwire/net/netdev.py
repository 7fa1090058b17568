"""Netdev options: QEMU's ``-netdev tap|stream|dgram`` as plain configs.

A ``Netdev`` is one frozen dataclass per type (``NetdevTap``, ``NetdevStream``,
``NetdevDgram``), like QEMU's Netdev union: the common ``name`` (``id=``) and
``peer``, then the type's options. On the command line it is a QEMU-like spec::

    tap[,ifname=vw0][,vnet_hdr=on][,no_padding=on][,script=PATH][,downscript=PATH]
    stream,listen=ADDR | stream,connect=ADDR[,reconnect=SECONDS]
    dgram,local=HOST:PORT,remote=HOST:PORT | dgram,mcast=GROUP:PORT[,localaddr=IP]

ADDR is HOST:PORT or unix:PATH; every spec also takes ``id=NAME`` (or
``name=``) and ``peer=ADDR/NETCLIENT``. A ``,,`` stands for a literal comma.

``net_init_netdev`` opens the backend of a checked config through
``NETDEV_INIT``, a table of init functions keyed by type, as QEMU dispatches
``-netdev``. Wire forms and what an RPC may ask for live above this layer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from virtwire.address import check_name, parse_peer, parse_sockaddr, shorten
from virtwire.errors import ConfigError
from virtwire.net.dgram import DgramBackend, check_interface_addr, check_multicast_group
from virtwire.net.net import NetClient
from virtwire.net.nsjoin import TapSetup, open_tap_in
from virtwire.net.stream import DEFAULT_RECONNECT_S, StreamBackend
from virtwire.net.tap import TapBackend, check_ifname, check_script

__all__ = ["MAX_RECONNECT_S", "NETDEV_INIT", "NETDEV_OPTIONS", "NETDEV_TYPES", "Netdev",
           "NetdevBase", "NetdevDgram", "NetdevStream", "NetdevTap", "check_backend_name",
           "check_netdev", "format_backend_spec", "net_init_netdev", "netdev_from_options",
           "netdev_options", "parse_backend_spec"]

#: Largest reconnect= accepted (an hour).
MAX_RECONNECT_S = 3600
#: Options every type takes.
COMMON_OPTIONS = ("id", "name", "peer")
#: Each type's own spec options.
NETDEV_OPTIONS: Mapping[str, tuple[str, ...]] = {
    "tap": ("ifname", "vnet_hdr", "no_padding", "script", "downscript"),
    "stream": ("listen", "connect", "reconnect"),
    "dgram": ("local", "remote", "mcast", "localaddr"),
}
NETDEV_TYPES = tuple(NETDEV_OPTIONS)
_TRUE = ("on", "yes", "true", "1")
_FALSE = ("off", "no", "false", "0")


# -- the config types ---------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class NetdevBase:
    """What every netdev has: ``name`` ("" lets the server pick ``TYPEn``) and
    ``peer``, the ADDR/NETCLIENT its link dials ("" for none)."""

    type: ClassVar[str]
    name: str = ""
    peer: str = ""


@dataclass(frozen=True, kw_only=True)
class NetdevTap(NetdevBase):
    """A Linux TAP device."""

    type: ClassVar[str] = "tap"
    #: "" lets the kernel pick tapN.
    ifname: str = ""
    vnet_hdr: bool = False
    no_padding: bool = False
    #: Run as ``SCRIPT IFNAME``; "" runs nothing (QEMU's ``script=no``).
    script: str = ""
    downscript: str = ""
    #: From the service's command line only (``serve tap --netns/--tap-ip/--tap-mac``),
    #: never from a spec (so never from an RPC): the network namespace file to open
    #: the TAP in (``net.nsjoin``; "" for the service's own), and what the
    #: interface gets there (an IPv4 CIDR, a MAC; with a netns it is always brought up).
    netns: str = ""
    ip: str = ""
    mac: str = ""


@dataclass(frozen=True, kw_only=True)
class NetdevStream(NetdevBase):
    """QEMU's stream framing (4-byte big-endian length) over TCP or a unix socket."""

    type: ClassVar[str] = "stream"
    #: ADDR to listen on or connect to.
    address: str = ""
    listen: bool = False
    #: Between connection attempts; 0 is the default (1 s).
    reconnect_seconds: int = 0


@dataclass(frozen=True, kw_only=True)
class NetdevDgram(NetdevBase):
    """One frame per datagram, unicast or multicast."""

    type: ClassVar[str] = "dgram"
    #: HOST:PORT to bind; with ``multicast`` the GROUP:PORT to join and send to.
    local: str = ""
    #: Where unicast frames go; "" with ``multicast``.
    remote: str = ""
    multicast: bool = False
    multicast_interface: str = ""


Netdev = NetdevTap | NetdevStream | NetdevDgram


# -- validation ---------------------------------------------------------------------
def check_backend_name(name: str) -> None:
    if "/" in name or "," in name or any(c.isspace() for c in name):
        raise ConfigError(f"backend name {shorten(name)} must not contain '/', ',' or "
                          "whitespace")
    check_name(name, "backend")


def check_netdev(config: Netdev, *, check_scripts: bool = True) -> None:
    """Check what can be checked without opening anything; ConfigError if bad.

    ``check_scripts=False``: script= / downscript= are names another host
    resolves, not checked here.
    """
    if config.name:
        check_backend_name(config.name)
    if config.peer:
        parse_peer(config.peer)
    if isinstance(config, NetdevTap):
        check_ifname(config.ifname)
        if check_scripts:
            check_script("script", config.script)
            check_script("downscript", config.downscript)
    elif isinstance(config, NetdevStream):
        _check_stream(config)
    else:
        _check_dgram(config)


def _check_stream(config: NetdevStream) -> None:
    if not config.address:
        raise ConfigError("a stream backend needs an address (listen=ADDR or connect=ADDR)")
    parse_sockaddr(config.address, allow_port_zero=config.listen)
    if config.reconnect_seconds > MAX_RECONNECT_S:
        raise ConfigError(f"reconnect={config.reconnect_seconds} is above the maximum of "
                          f"{MAX_RECONNECT_S} seconds")
    if config.listen and config.reconnect_seconds:
        raise ConfigError("reconnect= only applies to a connecting stream backend")


def _check_dgram(config: NetdevDgram) -> None:
    if not config.local:
        raise ConfigError("a dgram backend needs local=HOST:PORT (or mcast=GROUP:PORT)")
    local = parse_sockaddr(config.local)
    if config.multicast:
        check_multicast_group(local)
        if config.remote:
            raise ConfigError("a multicast dgram backend sends to its group: "
                              "remote= is not allowed with mcast=")
        if config.multicast_interface:
            check_interface_addr(config.multicast_interface)
        return
    if config.multicast_interface:
        raise ConfigError("localaddr= only applies to a multicast dgram backend")
    if not config.remote:
        raise ConfigError("a unicast dgram backend needs remote=HOST:PORT")
    remote = parse_sockaddr(config.remote, allow_port_zero=False)
    if local.is_unix != remote.is_unix:
        raise ConfigError(f"local {local} and remote {remote} must both be "
                          "unix:PATH or both HOST:PORT")


# -- options <-> config -------------------------------------------------------------
def _parse_bool(option: str, value: str) -> bool:
    low = value.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ConfigError(f"option {option}={value!r}: expected on or off")


def _tap_from_options(name: str, peer: str, opts: Mapping[str, str]) -> NetdevTap:
    script = opts.get("script", "")
    downscript = opts.get("downscript", "")
    return NetdevTap(
        name=name, peer=peer, ifname=opts.get("ifname", ""),
        vnet_hdr=_parse_bool("vnet_hdr", opts["vnet_hdr"]) if "vnet_hdr" in opts else False,
        no_padding=(_parse_bool("no_padding", opts["no_padding"])
                    if "no_padding" in opts else False),
        script="" if script == "no" else script,
        downscript="" if downscript == "no" else downscript)


def _stream_from_options(name: str, peer: str, opts: Mapping[str, str]) -> NetdevStream:
    if ("listen" in opts) == ("connect" in opts):
        raise ConfigError("a stream backend needs exactly one of listen=ADDR or connect=ADDR")
    reconnect = 0
    if "reconnect" in opts:
        if "listen" in opts:
            raise ConfigError("reconnect= only applies with connect=")
        try:
            reconnect = int(opts["reconnect"])
        except ValueError:
            raise ConfigError(f"option reconnect={opts['reconnect']!r}: expected a whole "
                              "number of seconds") from None
        if reconnect < 1:
            raise ConfigError(f"option reconnect={reconnect}: must be at least 1 second")
    listen = "listen" in opts
    return NetdevStream(name=name, peer=peer,
                        address=opts["listen"] if listen else opts["connect"],
                        listen=listen, reconnect_seconds=reconnect)


def _dgram_from_options(name: str, peer: str, opts: Mapping[str, str]) -> NetdevDgram:
    if "mcast" in opts:
        for option in ("local", "remote"):
            if option in opts:
                raise ConfigError(f"{option}= cannot be combined with mcast=")
        return NetdevDgram(name=name, peer=peer, local=opts["mcast"], multicast=True,
                           multicast_interface=opts.get("localaddr", ""))
    if "localaddr" in opts:
        raise ConfigError("localaddr= only applies with mcast=")
    for option in ("local", "remote"):
        if option not in opts:
            raise ConfigError(f"a unicast dgram backend needs {option}=HOST:PORT "
                              "(or use mcast=GROUP:PORT)")
    return NetdevDgram(name=name, peer=peer, local=opts["local"], remote=opts["remote"])


_FROM_OPTIONS: Mapping[str, Callable[[str, str, Mapping[str, str]], Netdev]] = {
    "tap": _tap_from_options,
    "stream": _stream_from_options,
    "dgram": _dgram_from_options,
}


def netdev_from_options(type_: str, opts: Mapping[str, str], *,
                        check_scripts: bool = True) -> Netdev:
    """Build and check a netdev of ``type_`` from QEMU-like options.

    ``check_scripts=False`` leaves script= / downscript= unchecked (names
    that the host running the backend resolves).
    """
    if type_ not in NETDEV_OPTIONS:
        raise ConfigError(f"unknown backend kind {type_!r}: expected one of "
                          f"{', '.join(NETDEV_TYPES)}")
    allowed = (*NETDEV_OPTIONS[type_], *COMMON_OPTIONS)
    for option in opts:
        if option not in allowed:
            raise ConfigError(f"unknown option {option!r} for a {type_} backend "
                              f"(known: {', '.join(allowed)})")
    if "id" in opts and "name" in opts:
        raise ConfigError("give the backend's name once: id= or name=")
    config = _FROM_OPTIONS[type_](opts.get("id", opts.get("name", "")), opts.get("peer", ""),
                                  opts)
    check_netdev(config, check_scripts=check_scripts)
    return config


def netdev_options(config: Netdev) -> tuple[str, dict[str, str]]:
    """(type, options) of a netdev: the inverse of ``netdev_from_options``."""
    check_netdev(config, check_scripts=False)
    opts: dict[str, str] = {}
    if isinstance(config, NetdevTap):
        for option, value in (("ifname", config.ifname), ("script", config.script),
                              ("downscript", config.downscript)):
            if value:
                opts[option] = value
        for option, flag in (("vnet_hdr", config.vnet_hdr), ("no_padding", config.no_padding)):
            if flag:
                opts[option] = "on"
    elif isinstance(config, NetdevStream):
        opts["listen" if config.listen else "connect"] = config.address
        if config.reconnect_seconds:
            opts["reconnect"] = str(config.reconnect_seconds)
    elif config.multicast:
        opts["mcast"] = config.local
        if config.multicast_interface:
            opts["localaddr"] = config.multicast_interface
    else:
        opts["local"] = config.local
        opts["remote"] = config.remote
    if config.name:
        opts["id"] = config.name
    if config.peer:
        opts["peer"] = config.peer
    return config.type, opts


# -- specs --------------------------------------------------------------------------
def format_backend_spec(type_: str, opts: Mapping[str, str]) -> str:
    """``TYPE,opt=value,...`` with ',' doubled: what ``parse_backend_spec`` reads back."""
    return ",".join([type_, *(f"{k}={v.replace(',', ',,')}" for k, v in opts.items())])


def _split_spec(spec: str) -> list[str]:
    """Split at ',' with ',,' standing for a literal comma (QEMU's QemuOpts)."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(spec):
        c = spec[i]
        if c == ",":
            if spec[i + 1:i + 2] == ",":
                current.append(",")
                i += 2
                continue
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
        i += 1
    parts.append("".join(current))
    return parts


def parse_backend_spec(spec: str) -> Netdev:
    """``TYPE,opt=value,...`` (e.g. ``stream,listen=unix:/tmp/x.sock``) -> a checked Netdev."""
    if not spec.strip():
        raise ConfigError("empty backend spec: expected KIND,OPTION=VALUE,... "
                          f"with KIND one of {', '.join(NETDEV_TYPES)}")
    type_, *items = _split_spec(spec.strip())
    opts: dict[str, str] = {}
    for item in items:
        option, sep, value = item.partition("=")
        if not sep or not option:
            raise ConfigError(f"bad backend spec {spec!r}: {item!r} is not OPTION=VALUE")
        if option in opts:
            raise ConfigError(f"bad backend spec {spec!r}: option {option!r} given twice")
        opts[option] = value
    try:
        return netdev_from_options(type_, opts)
    except ConfigError as exc:
        raise ConfigError(f"bad backend spec {spec!r}: {exc}") from exc


# -- init functions -----------------------------------------------------------------
def net_init_tap(name: str, config: NetdevTap) -> TapBackend:
    """Open the TAP device (its script runs later: ``TapBackend.run_script``)."""
    opener = None
    if config.netns or config.ip or config.mac:  # inside a namespace, set up: net.nsjoin
        opener = functools.partial(open_tap_in, config.netns,
                                   setup=TapSetup(ip=config.ip, mac=config.mac))
    return TapBackend(name, config.ifname, vnet_hdr=config.vnet_hdr,
                      no_padding=config.no_padding, script=config.script,
                      downscript=config.downscript, netns=config.netns, opener=opener)


def net_init_stream(name: str, config: NetdevStream) -> StreamBackend:
    return StreamBackend(name, parse_sockaddr(config.address), listen=config.listen,
                         reconnect_seconds=config.reconnect_seconds or DEFAULT_RECONNECT_S)


def net_init_dgram(name: str, config: NetdevDgram) -> DgramBackend:
    return DgramBackend(name, parse_sockaddr(config.local),
                        parse_sockaddr(config.remote) if config.remote else None,
                        multicast=config.multicast,
                        multicast_interface=config.multicast_interface)


#: Type -> the function that opens that type's backend; each takes its own
#: config class (``net_init_netdev`` picks the entry by the config's type).
NETDEV_INIT: Mapping[str, Callable[[str, Any], NetClient]] = {
    NetdevTap.type: net_init_tap,
    NetdevStream.type: net_init_stream,
    NetdevDgram.type: net_init_dgram,
}


def net_init_netdev(name: str, config: Netdev) -> NetClient:
    """Open the backend of a checked ``config`` as NetClient ``name`` (needs a
    running loop); BackendError when the host resource can't be opened."""
    return NETDEV_INIT[config.type](name, config)
