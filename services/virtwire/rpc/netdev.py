"""A netdev's wire form, ``virtwire.v1.BackendConfig``, to and from ``net.netdev.Netdev``.

The tap service's AddBackend and the orchestrator's StartService carry the
same message; both convert it here, and ``rpc_netdev`` applies what this
host's command line lets an RPC ask for (``allowlist.RpcPolicy``): unlike
QEMU's netdev_add, a request names no program and no host path.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from google.protobuf.message import Message

from virtwire.allowlist import RpcPolicy
from virtwire.errors import ConfigError
from virtwire.net.netdev import Netdev, NetdevDgram, NetdevStream, NetdevTap, check_netdev
from virtwire.v1 import tap_pb2

__all__ = ["netdev_from_proto", "netdev_to_proto", "rpc_netdev"]

#: Each type's options message; its fields are the config class's own fields.
_OPTIONS_MESSAGE: dict[str, type[Message]] = {
    NetdevTap.type: tap_pb2.TapBackendConfig,
    NetdevStream.type: tap_pb2.StreamBackendConfig,
    NetdevDgram.type: tap_pb2.DgramBackendConfig,
}
_COMMON_FIELDS = ("name", "peer")
#: A TAP's namespace and setup (``serve tap --netns/--tap-ip/--tap-mac``): from a
#: service's own command line only, so never in the wire form.
_LOCAL_FIELDS = ("netns", "ip", "mac")


def _fields(options: Message) -> dict[str, Any]:
    return {f.name: getattr(options, f.name) for f in options.DESCRIPTOR.fields}


def netdev_from_proto(msg: tap_pb2.BackendConfig) -> Netdev:
    """The Netdev a BackendConfig describes (unchecked: see ``check_netdev``)."""
    type_ = msg.WhichOneof("kind")
    if type_ == "tap":
        return NetdevTap(name=msg.name, peer=msg.peer, **_fields(msg.tap))
    if type_ == "stream":
        return NetdevStream(name=msg.name, peer=msg.peer, **_fields(msg.stream))
    if type_ == "dgram":
        return NetdevDgram(name=msg.name, peer=msg.peer, **_fields(msg.dgram))
    raise ConfigError("the backend config sets no kind: give one of tap, stream, dgram")


def netdev_to_proto(config: Netdev) -> tap_pb2.BackendConfig:
    """The BackendConfig of a Netdev."""
    local = [f for f in _LOCAL_FIELDS if getattr(config, f, "")]
    if local:
        raise ConfigError(f"a backend's {', '.join(local)} come from its service's command "
                          "line only (serve tap --netns/--tap-ip/--tap-mac), not over an RPC")
    options = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
               if f.name not in _COMMON_FIELDS and f.name not in _LOCAL_FIELDS}
    kind: dict[str, Any] = {config.type: _OPTIONS_MESSAGE[config.type](**options)}
    return tap_pb2.BackendConfig(name=config.name, peer=config.peer, **kind)


def rpc_netdev(msg: tap_pb2.BackendConfig, policy: RpcPolicy) -> Netdev:
    """The checked Netdev of a BackendConfig that arrived over an RPC, made
    safe to open on this host.

    Its script= / downscript= NAMEs become the paths ``policy`` allows; a path,
    an unknown name or a unix socket address (to listen on, connect to, bind,
    send to or dial as peer) is a PermissionDeniedError.
    """
    policy.no_unix("peer", msg.peer)
    config = netdev_from_proto(msg)
    if isinstance(config, NetdevTap):
        config = dataclasses.replace(
            config, script=policy.script("script", config.script),
            downscript=policy.script("downscript", config.downscript))
    elif isinstance(config, NetdevStream):
        policy.no_unix("listen=" if config.listen else "connect=", config.address)
    else:
        policy.no_unix("local=", config.local)
        policy.no_unix("remote=", config.remote)
    check_netdev(config)
    return config
