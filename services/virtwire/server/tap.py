"""The tap service: virtwire.v1.TapService over host-side backends.

Backends are QEMU's ``-netdev tap|stream|dgram`` (net/tap.py, net/stream.py,
net/dgram.py), each a NetClient whose peer is usually reached over a link
(``BackendConfig.peer``). On the command line a backend is a QEMU-like spec::

    tap[,ifname=vw0][,vnet_hdr=on][,no_padding=on][,script=PATH][,downscript=PATH]
    stream,listen=ADDR | stream,connect=ADDR[,reconnect=SECONDS]
    dgram,local=HOST:PORT,remote=HOST:PORT | dgram,mcast=GROUP:PORT[,localaddr=IP]

ADDR is HOST:PORT or unix:PATH; every spec also takes ``id=NAME`` (or
``name=``) and ``peer=ADDR/NETCLIENT``. A ``,,`` stands for a literal comma.

Unlike QEMU's netdev_add, AddBackend names no program and no host path: its
``script=``/``downscript=`` are NAMEs this service's command line maps to
paths (``--allow-script NAME=PATH``), and unix socket addresses are refused
(``rpc_backend_config``); the command line's ``--backend`` specs may use both.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from virtwire.address import check_name, is_valid_name, parse_peer, parse_sockaddr, shorten
from virtwire.allowlist import RpcPolicy
from virtwire.errors import ConfigError, ConflictError, NotFoundError
from virtwire.net.dgram import DgramBackend, check_interface_addr, check_multicast_group
from virtwire.net.net import NetClient
from virtwire.net.stream import DEFAULT_RECONNECT_S, StreamBackend
from virtwire.net.tap import TapBackend, check_ifname, check_script
from virtwire.server.base import SHUTDOWN_GRACE_S, ServerState, ServiceHost, abort_for
from virtwire.v1 import tap_pb2, tap_pb2_grpc

logger = logging.getLogger(__name__)

BACKEND_KINDS = ("tap", "stream", "dgram")
#: Largest reconnect= accepted (an hour).
MAX_RECONNECT_S = 3600
_COMMON_OPTS = ("id", "name", "peer")
_KIND_OPTS: dict[str, tuple[str, ...]] = {
    "tap": ("ifname", "vnet_hdr", "no_padding", "script", "downscript"),
    "stream": ("listen", "connect", "reconnect"),
    "dgram": ("local", "remote", "mcast", "localaddr"),
}
_TRUE = ("on", "yes", "true", "1")
_FALSE = ("off", "no", "false", "0")


# -- validation ---------------------------------------------------------------------
def check_backend_name(name: str) -> None:
    if "/" in name or "," in name or any(c.isspace() for c in name):
        raise ConfigError(f"backend name {shorten(name)} must not contain '/', ',' or "
                          "whitespace")
    check_name(name, "backend")


def check_backend_config(config: tap_pb2.BackendConfig, *, check_scripts: bool = True) -> str:
    """Validate what can be checked without opening anything; returns the kind.

    ``check_scripts=False``: script= / downscript= are names another host
    resolves, not checked here.
    """
    kind: str | None = config.WhichOneof("kind")
    if kind is None:
        raise ConfigError("the backend config sets no kind: give one of tap, stream, dgram")
    if config.name:
        check_backend_name(config.name)
    if config.peer:
        parse_peer(config.peer)
    if kind == "tap":
        tap = config.tap
        check_ifname(tap.ifname)
        if check_scripts:
            check_script("script", tap.script)
            check_script("downscript", tap.downscript)
    elif kind == "stream":
        stream = config.stream
        if not stream.address:
            raise ConfigError("a stream backend needs an address (listen=ADDR or connect=ADDR)")
        parse_sockaddr(stream.address, allow_port_zero=stream.listen)
        if stream.reconnect_seconds > MAX_RECONNECT_S:
            raise ConfigError(f"reconnect={stream.reconnect_seconds} is above the maximum of "
                              f"{MAX_RECONNECT_S} seconds")
        if stream.listen and stream.reconnect_seconds:
            raise ConfigError("reconnect= only applies to a connecting stream backend")
    else:
        dgram = config.dgram
        if not dgram.local:
            raise ConfigError("a dgram backend needs local=HOST:PORT (or mcast=GROUP:PORT)")
        local = parse_sockaddr(dgram.local)
        if dgram.multicast:
            check_multicast_group(local)
            if dgram.remote:
                raise ConfigError("a multicast dgram backend sends to its group: "
                                  "remote= is not allowed with mcast=")
            if dgram.multicast_interface:
                check_interface_addr(dgram.multicast_interface)
        else:
            if dgram.multicast_interface:
                raise ConfigError("localaddr= only applies to a multicast dgram backend")
            if not dgram.remote:
                raise ConfigError("a unicast dgram backend needs remote=HOST:PORT")
            remote = parse_sockaddr(dgram.remote, allow_port_zero=False)
            if local.is_unix != remote.is_unix:
                raise ConfigError(f"local {local} and remote {remote} must both be "
                                  "unix:PATH or both HOST:PORT")
    return kind


def create_backend(name: str, config: tap_pb2.BackendConfig) -> NetClient:
    """Open the backend described by a validated ``config`` (needs a running loop)."""
    kind = config.WhichOneof("kind")
    if kind == "tap":
        tap = config.tap
        return TapBackend(name, tap.ifname, vnet_hdr=tap.vnet_hdr, no_padding=tap.no_padding,
                          script=tap.script, downscript=tap.downscript)
    if kind == "stream":
        stream = config.stream
        return StreamBackend(name, parse_sockaddr(stream.address), listen=stream.listen,
                             reconnect_seconds=stream.reconnect_seconds or DEFAULT_RECONNECT_S)
    dgram = config.dgram
    return DgramBackend(name, parse_sockaddr(dgram.local),
                        parse_sockaddr(dgram.remote) if dgram.remote else None,
                        multicast=dgram.multicast,
                        multicast_interface=dgram.multicast_interface)


# -- command-line specs -------------------------------------------------------------
def _parse_bool(option: str, value: str) -> bool:
    low = value.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ConfigError(f"option {option}={value!r}: expected on or off")


def backend_config_from_args(kind: str, opts: Mapping[str, str], *,
                             check_scripts: bool = True) -> tap_pb2.BackendConfig:
    """Build and validate a BackendConfig from QEMU-like options.

    ``check_scripts=False`` leaves script= / downscript= unchecked (names
    that the host running the backend resolves).
    """
    if kind not in _KIND_OPTS:
        raise ConfigError(f"unknown backend kind {kind!r}: expected one of "
                          f"{', '.join(BACKEND_KINDS)}")
    allowed = (*_KIND_OPTS[kind], *_COMMON_OPTS)
    for option in opts:
        if option not in allowed:
            raise ConfigError(f"unknown option {option!r} for a {kind} backend "
                              f"(known: {', '.join(allowed)})")
    if "id" in opts and "name" in opts:
        raise ConfigError("give the backend's name once: id= or name=")
    config = tap_pb2.BackendConfig(name=opts.get("id", opts.get("name", "")),
                                   peer=opts.get("peer", ""))
    if kind == "tap":
        script = opts.get("script", "")
        downscript = opts.get("downscript", "")
        config.tap.CopyFrom(tap_pb2.TapBackendConfig(
            ifname=opts.get("ifname", ""),
            vnet_hdr=_parse_bool("vnet_hdr", opts["vnet_hdr"]) if "vnet_hdr" in opts else False,
            no_padding=(_parse_bool("no_padding", opts["no_padding"])
                        if "no_padding" in opts else False),
            script="" if script == "no" else script,
            downscript="" if downscript == "no" else downscript))
    elif kind == "stream":
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
        config.stream.CopyFrom(tap_pb2.StreamBackendConfig(
            address=opts["listen"] if listen else opts["connect"], listen=listen,
            reconnect_seconds=reconnect))
    else:
        if "mcast" in opts:
            for option in ("local", "remote"):
                if option in opts:
                    raise ConfigError(f"{option}= cannot be combined with mcast=")
            config.dgram.CopyFrom(tap_pb2.DgramBackendConfig(
                local=opts["mcast"], multicast=True,
                multicast_interface=opts.get("localaddr", "")))
        else:
            if "localaddr" in opts:
                raise ConfigError("localaddr= only applies with mcast=")
            for option in ("local", "remote"):
                if option not in opts:
                    raise ConfigError(f"a unicast dgram backend needs {option}=HOST:PORT "
                                      "(or use mcast=GROUP:PORT)")
            config.dgram.CopyFrom(tap_pb2.DgramBackendConfig(
                local=opts["local"], remote=opts["remote"]))
    check_backend_config(config, check_scripts=check_scripts)
    return config


def backend_options(config: tap_pb2.BackendConfig) -> tuple[str, dict[str, str]]:
    """(kind, options) of a BackendConfig: the inverse of ``backend_config_from_args``."""
    kind = check_backend_config(config, check_scripts=False)
    opts: dict[str, str] = {}
    if kind == "tap":
        tap = config.tap
        for option, value in (("ifname", tap.ifname), ("script", tap.script),
                              ("downscript", tap.downscript)):
            if value:
                opts[option] = value
        for option, flag in (("vnet_hdr", tap.vnet_hdr), ("no_padding", tap.no_padding)):
            if flag:
                opts[option] = "on"
    elif kind == "stream":
        stream = config.stream
        opts["listen" if stream.listen else "connect"] = stream.address
        if stream.reconnect_seconds:
            opts["reconnect"] = str(stream.reconnect_seconds)
    else:
        dgram = config.dgram
        if dgram.multicast:
            opts["mcast"] = dgram.local
            if dgram.multicast_interface:
                opts["localaddr"] = dgram.multicast_interface
        else:
            opts["local"] = dgram.local
            opts["remote"] = dgram.remote
    if config.name:
        opts["id"] = config.name
    if config.peer:
        opts["peer"] = config.peer
    return kind, opts


def format_backend_spec(kind: str, opts: Mapping[str, str]) -> str:
    """``KIND,opt=value,...`` with ',' doubled: what ``parse_backend_spec`` reads back."""
    return ",".join([kind, *(f"{k}={v.replace(',', ',,')}" for k, v in opts.items())])


def rpc_backend_config(config: tap_pb2.BackendConfig, policy: RpcPolicy
                       ) -> tap_pb2.BackendConfig:
    """A BackendConfig that arrived over an RPC, made safe to open on this host.

    Its script= / downscript= NAMEs become the paths ``policy`` allows; a path,
    an unknown name or a unix socket address (to listen on, connect to, bind,
    send to or dial as peer) is a PermissionDeniedError. Returns a copy.
    """
    out = tap_pb2.BackendConfig()
    out.CopyFrom(config)
    policy.no_unix("peer", config.peer)
    kind = config.WhichOneof("kind")
    if kind == "tap":
        out.tap.script = policy.script("script", config.tap.script)
        out.tap.downscript = policy.script("downscript", config.tap.downscript)
    elif kind == "stream":
        policy.no_unix("listen=" if config.stream.listen else "connect=",
                       config.stream.address)
    elif kind == "dgram":
        policy.no_unix("local=", config.dgram.local)
        policy.no_unix("remote=", config.dgram.remote)
    check_backend_config(out)
    return out


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


def parse_backend_spec(spec: str) -> tap_pb2.BackendConfig:
    """``KIND,opt=value,...`` (e.g. ``stream,listen=unix:/tmp/x.sock``) -> BackendConfig."""
    if not spec.strip():
        raise ConfigError("empty backend spec: expected KIND,OPTION=VALUE,... "
                          f"with KIND one of {', '.join(BACKEND_KINDS)}")
    kind, *items = _split_spec(spec.strip())
    opts: dict[str, str] = {}
    for item in items:
        option, sep, value = item.partition("=")
        if not sep or not option:
            raise ConfigError(f"bad backend spec {spec!r}: {item!r} is not OPTION=VALUE")
        if option in opts:
            raise ConfigError(f"bad backend spec {spec!r}: option {option!r} given twice")
        opts[option] = value
    try:
        return backend_config_from_args(kind, opts)
    except ConfigError as exc:
        raise ConfigError(f"bad backend spec {spec!r}: {exc}") from exc


# -- the server -------------------------------------------------------------------
class TapServer(ServiceHost):
    """Host-side backends; each is a NetClient of this server.

    ``allowed_scripts`` (``--allow-script NAME=PATH``): the scripts AddBackend
    may name.
    """

    service_name = "tap"

    def __init__(self, listen: str = "127.0.0.1:0", *,
                 allowed_scripts: Mapping[str, str] | None = None) -> None:
        super().__init__(listen)
        #: What AddBackend may use of this host.
        self.rpc_policy = RpcPolicy(command="virtwire serve tap",
                                    scripts=dict(allowed_scripts or {}))
        #: Backends to create when the server starts (from the command line).
        self.pending_configs: list[tap_pb2.BackendConfig] = []

    def add_servicers(self, server: grpc.aio.Server) -> Sequence[str]:
        tap_pb2_grpc.add_TapServiceServicer_to_server(TapServicer(self), server)
        return [tap_pb2.DESCRIPTOR.services_by_name["TapService"].full_name]

    async def start(self) -> None:
        """Create the pending backends, then serve; nothing stays open on failure."""
        try:
            while self.pending_configs:
                await self.add_backend(self.pending_configs.pop(0))
            await super().start()
        except BaseException:
            await self._run_downscripts()
            await self.registry.close()
            raise

    async def stop(self, grace: float = SHUTDOWN_GRACE_S) -> None:
        """Stop serving; each TAP's downscript runs first, while its device is open."""
        if self.state not in (ServerState.STOPPING, ServerState.STOPPED):
            await self._run_downscripts()
        await super().stop(grace)

    async def _run_downscripts(self) -> None:
        await asyncio.gather(*(nc.run_downscript() for nc in self.registry.all()
                               if isinstance(nc, TapBackend)))

    async def add_backend(self, config: tap_pb2.BackendConfig) -> NetClient:
        """Open a backend and, if ``config.peer`` is set, dial its peer.

        ConfigError for bad input, ConflictError for a taken name, BackendError
        when the host resource can't be opened. A TAP's script runs as a
        subprocess: the server answers other RPCs meanwhile (the backend is
        listed, its name taken, but its device is not read until the script is done).
        """
        kind = check_backend_config(config)
        name = config.name or self.registry.unique_name(kind)
        if name in self.registry:
            raise ConflictError(f"a backend named {name!r} already exists")
        backend = create_backend(name, config)
        try:
            self.registry.add(backend)
        except BaseException:
            backend.cleanup()
            raise
        if isinstance(backend, TapBackend):
            try:
                await backend.run_script()
            except BaseException:
                if name in self.registry and self.registry.get(name) is backend:
                    await self.registry.remove(name)
                raise
        if config.peer:
            self.registry.connect(backend, config.peer)
        logger.info("added %s backend %s: %s%s", kind, name, backend.describe(),
                    f" peer={config.peer}" if config.peer else "")
        return backend

    async def remove_backend(self, name: str) -> None:
        """Close a backend (runs a TAP's downscript) and its link."""
        nc = self.registry.get(name)
        if nc.kind not in BACKEND_KINDS:
            raise NotFoundError(f"{name!r} is not a backend of this server")
        if isinstance(nc, TapBackend):
            await nc.run_downscript()  # a subprocess: other RPCs go on
        await self.registry.remove(name)
        logger.info("removed backend %s", name)

    def backends(self) -> list[NetClient]:
        return [nc for nc in self.registry.all() if nc.kind in BACKEND_KINDS]


class TapServicer(tap_pb2_grpc.TapServiceServicer):
    """Thin adapter: RPCs to TapServer methods."""

    def __init__(self, host: TapServer) -> None:
        self.host = host

    async def AddBackend(self, request: tap_pb2.AddBackendRequest,
                         context: grpc.aio.ServicerContext[Any, Any]
                         ) -> tap_pb2.AddBackendResponse:
        if request.config.name and not is_valid_name(request.config.name):
            self.host.registry.names_refused += 1  # refused below, with the reason
        try:
            config = rpc_backend_config(request.config, self.host.rpc_policy)
            backend = await self.host.add_backend(config)
        except Exception as exc:
            await abort_for(context, exc)
            raise
        return tap_pb2.AddBackendResponse(backend=self.host.registry.info(backend))

    async def RemoveBackend(self, request: tap_pb2.RemoveBackendRequest,
                            context: grpc.aio.ServicerContext[Any, Any]
                            ) -> tap_pb2.RemoveBackendResponse:
        try:
            await self.host.remove_backend(request.name)
        except NotFoundError as exc:
            await abort_for(context, exc)
            raise
        return tap_pb2.RemoveBackendResponse()

    async def ListBackends(self, request: tap_pb2.ListBackendsRequest,
                           context: grpc.aio.ServicerContext[Any, Any]
                           ) -> tap_pb2.ListBackendsResponse:
        reg = self.host.registry
        return tap_pb2.ListBackendsResponse(backends=[reg.info(nc) for nc in self.host.backends()])
