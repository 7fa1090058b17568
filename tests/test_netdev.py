"""Netdev options (net.netdev): specs, checks, the init table; and their wire form (rpc.netdev)."""

from __future__ import annotations

import dataclasses

import pytest

from virtwire.allowlist import RpcPolicy
from virtwire.errors import ConfigError, PermissionDeniedError
from virtwire.net.dgram import DgramBackend
from virtwire.net.netdev import (
    NETDEV_INIT,
    NETDEV_TYPES,
    NetdevDgram,
    NetdevStream,
    NetdevTap,
    format_backend_spec,
    net_init_netdev,
    netdev_from_options,
    netdev_options,
    parse_backend_spec,
)
from virtwire.net.stream import StreamBackend
from virtwire.net.tap import TapBackend
from virtwire.rpc.netdev import netdev_from_proto, netdev_to_proto, rpc_netdev
from virtwire.v1 import tap_pb2

from support.netns import require_root, unique_name

SPECS = [
    "stream,listen=unix:/tmp/x.sock",
    "stream,connect=127.0.0.1:5000,reconnect=2,id=up0",
    "tap,ifname=vw0,vnet_hdr=on,no_padding=on,script=/bin/true,downscript=/bin/true",
    "tap",
    "dgram,local=127.0.0.1:6000,remote=127.0.0.1:6001",
    "dgram,mcast=230.0.0.1:1234,localaddr=127.0.0.1",
    "stream,listen=unix:/tmp/a,,b.sock,peer=127.0.0.1:1/",
]


# -- specs ---------------------------------------------------------------------------------
def test_parse_backend_specs() -> None:
    cfg = parse_backend_spec("stream,listen=unix:/tmp/x.sock")
    assert cfg.type == "stream" and isinstance(cfg, NetdevStream)
    assert cfg.listen and cfg.address == "unix:/tmp/x.sock"
    cfg = parse_backend_spec("stream,connect=127.0.0.1:5000,reconnect=2,id=up0")
    assert isinstance(cfg, NetdevStream)
    assert not cfg.listen and cfg.reconnect_seconds == 2 and cfg.name == "up0"
    cfg = parse_backend_spec("tap,ifname=vw0,vnet_hdr=on,script=/bin/true,downscript=no")
    assert isinstance(cfg, NetdevTap)
    assert cfg.ifname == "vw0" and cfg.vnet_hdr and cfg.script == "/bin/true"
    assert cfg.downscript == ""
    cfg = parse_backend_spec("tap")
    assert cfg.type == "tap" and isinstance(cfg, NetdevTap) and cfg.ifname == ""
    cfg = parse_backend_spec("dgram,local=127.0.0.1:6000,remote=127.0.0.1:6001")
    assert isinstance(cfg, NetdevDgram)
    assert cfg.local == "127.0.0.1:6000" and cfg.remote == "127.0.0.1:6001"
    cfg = parse_backend_spec("dgram,mcast=230.0.0.1:1234,localaddr=127.0.0.1")
    assert isinstance(cfg, NetdevDgram)
    assert cfg.multicast and cfg.local == "230.0.0.1:1234"
    assert cfg.multicast_interface == "127.0.0.1"
    cfg = parse_backend_spec("stream,listen=unix:/tmp/a,,b.sock,peer=127.0.0.1:1/")
    assert isinstance(cfg, NetdevStream)
    assert cfg.address == "unix:/tmp/a,b.sock" and cfg.peer == "127.0.0.1:1/"


@pytest.mark.parametrize(("spec", "message"), [
    ("", "empty backend spec"),
    ("vde,sock=/x", "unknown backend kind 'vde'"),
    ("stream,listen=127.0.0.1:1,bogus=1", "unknown option 'bogus' for a stream backend"),
    ("tap,ifname=vw0,ifname=vw1", "given twice"),
    ("tap,vnet_hdr", "'vnet_hdr' is not OPTION=VALUE"),
    ("tap,vnet_hdr=maybe", "expected on or off"),
    ("tap,ifname=waytoolonginterface", "longer than 15"),
    ("tap,script=/nonexistent/ifup", "does not exist"),
    ("stream", "exactly one of listen=ADDR or connect=ADDR"),
    ("stream,listen=a:1,connect=b:2", "exactly one of"),
    ("stream,connect=nohost", "expected HOST:PORT"),
    ("stream,connect=127.0.0.1:0", "port .0. out of range"),
    ("stream,connect=127.0.0.1:99999", "out of range"),
    ("stream,listen=127.0.0.1:1,reconnect=2", "only applies with connect"),
    ("stream,connect=127.0.0.1:1,reconnect=soon", "whole number"),
    ("dgram,local=127.0.0.1:1", "needs remote="),
    ("dgram,mcast=10.0.0.1:1234", "not an IPv4 multicast address"),
    ("dgram,mcast=230.0.0.1:1234,remote=1.2.3.4:5", "cannot be combined"),
    ("dgram,mcast=230.0.0.1:1234,localaddr=eth0", "not an IPv4 address"),
    ("dgram,local=127.0.0.1:1,remote=127.0.0.1:2,localaddr=127.0.0.1", "only applies"),
    ("stream,listen=127.0.0.1:1,peer=nowhere", "bad"),
    ("stream,listen=127.0.0.1:1,id=a/b", "must not contain"),
])
def test_bad_specs_are_config_errors(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_backend_spec(spec)
    if spec:
        assert repr(spec) in str(info.value), "the message names the spec"


@pytest.mark.parametrize("spec", SPECS)
def test_spec_round_trips_through_options_and_format(spec: str) -> None:
    config = parse_backend_spec(spec)
    type_, opts = netdev_options(config)
    assert type_ == config.type
    assert netdev_from_options(type_, opts) == config
    assert parse_backend_spec(format_backend_spec(type_, opts)) == config


def test_format_doubles_commas() -> None:
    spec = format_backend_spec("stream", {"listen": "unix:/tmp/a,b.sock", "id": "s"})
    assert spec == "stream,listen=unix:/tmp/a,,b.sock,id=s"
    config = parse_backend_spec(spec)
    assert isinstance(config, NetdevStream) and config.address == "unix:/tmp/a,b.sock"


def test_unchecked_scripts_are_names_for_another_host() -> None:
    config = netdev_from_options("tap", {"script": "up", "downscript": "no"},
                                 check_scripts=False)
    assert config == NetdevTap(script="up")
    with pytest.raises(ConfigError, match="script 'up' does not exist"):
        netdev_from_options("tap", {"script": "up"})


# -- the init table ------------------------------------------------------------------------
def test_init_table_has_one_function_per_type() -> None:
    assert tuple(NETDEV_INIT) == NETDEV_TYPES == ("tap", "stream", "dgram")
    for cls in (NetdevTap, NetdevStream, NetdevDgram):
        assert cls.type in NETDEV_INIT


async def test_init_table_opens_stream_and_dgram_backends() -> None:
    stream = net_init_netdev("s", parse_backend_spec("stream,listen=127.0.0.1:0"))
    dgram = net_init_netdev("d", parse_backend_spec(
        "dgram,local=127.0.0.1:0,remote=127.0.0.1:9"))
    try:
        assert isinstance(stream, StreamBackend) and stream.name == "s"
        assert "listen=127.0.0.1:" in stream.describe()
        assert isinstance(dgram, DgramBackend) and dgram.name == "d"
    finally:
        stream.cleanup()
        dgram.cleanup()


@pytest.mark.root
async def test_init_table_opens_a_tap() -> None:
    require_root()
    ifname = unique_name("vwt")
    tap = net_init_netdev("t", NetdevTap(ifname=ifname, vnet_hdr=True))
    try:
        assert isinstance(tap, TapBackend) and tap.ifname == ifname and tap.vnet_hdr
    finally:
        tap.cleanup()


# -- the wire form (rpc.netdev) ------------------------------------------------------------
@pytest.mark.parametrize("spec", SPECS)
def test_proto_round_trip(spec: str) -> None:
    config = parse_backend_spec(spec)
    msg = netdev_to_proto(config)
    assert msg.WhichOneof("kind") == config.type
    assert (msg.name, msg.peer) == (config.name, config.peer)
    assert netdev_from_proto(msg) == config


def test_each_config_class_has_its_messages_fields() -> None:
    for cls, message in ((NetdevTap, tap_pb2.TapBackendConfig),
                         (NetdevStream, tap_pb2.StreamBackendConfig),
                         (NetdevDgram, tap_pb2.DgramBackendConfig)):
        # A TAP's netns/ip/mac come from its service's command line only.
        own = {f.name for f in dataclasses.fields(cls)} - {"name", "peer", "netns", "ip", "mac"}
        assert own == {f.name for f in message.DESCRIPTOR.fields}


def test_a_taps_namespace_never_goes_on_the_wire() -> None:
    with pytest.raises(ConfigError, match="command line only"):
        netdev_to_proto(NetdevTap(name="t", ifname="eth1", netns="/proc/1/ns/net"))
    assert netdev_to_proto(NetdevTap(name="t", ifname="eth1")).tap.ifname == "eth1"


def test_a_message_without_a_kind_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="sets no kind"):
        netdev_from_proto(tap_pb2.BackendConfig(name="x"))


def test_rpc_netdev_resolves_script_names_and_refuses_paths() -> None:
    policy = RpcPolicy(command="virtwire serve tap", scripts={"up": "/bin/true"})
    config = rpc_netdev(tap_pb2.BackendConfig(name="t", tap=tap_pb2.TapBackendConfig(
        ifname="vw0", script="up")), policy)
    assert config == NetdevTap(name="t", ifname="vw0", script="/bin/true")
    with pytest.raises(PermissionDeniedError, match="is a path"):
        rpc_netdev(tap_pb2.BackendConfig(tap=tap_pb2.TapBackendConfig(script="/bin/true")),
                   policy)
    with pytest.raises(PermissionDeniedError, match=r"peer: 'unix:/tmp/h\.sock/' is a unix"):
        rpc_netdev(tap_pb2.BackendConfig(peer="unix:/tmp/h.sock/"), policy)
