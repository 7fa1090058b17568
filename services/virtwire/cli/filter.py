"""`virtwire filter add / rm / ls`: net filters on a NetClient, at runtime.

TARGET is what inject, capture and link take: NODE or HUB:PORT of a running
LAN (through its orchestrator's FilterService, which resolves it as for
SetLink), NETCLIENT of ``-s SERVER``, or ADDRESS/NETCLIENT of one service.
``netem`` (cli.netem) drives its filters through ``FilterClient`` too.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc

from virtwire import tls
from virtwire.address import parse_peer, parse_sockaddr
from virtwire.cli import lan
from virtwire.cli.exitcode import EXIT_OK
from virtwire.cli.filtertable import QUEUES, format_filters, queue_word, status_word
from virtwire.cli.format import LAN_ORCHESTRATOR, format_json
from virtwire.errors import ConfigError
from virtwire.rpc.status import translated
from virtwire.v1 import filter_pb2, filter_pb2_grpc

RPC_TIMEOUT_S = 10.0

@dataclass
class FilterClient:
    """The FilterService a TARGET lives on, and its name there."""

    channel: grpc.aio.Channel
    stub: filter_pb2_grpc.FilterServiceStub
    #: The name to send: the service's NetClient, or the LAN node (orchestrator).
    netclient: str
    #: Who answers, as error messages name it.
    where: str
    timeout: float = RPC_TIMEOUT_S

    @classmethod
    def for_target(cls, args: argparse.Namespace, target: str) -> FilterClient:
        """``target`` of ``-s SERVER``, as ADDRESS/NETCLIENT, or NODE[:PORT] of a LAN
        ("" with no ``-s``: the whole LAN)."""
        timeout = getattr(args, "timeout", RPC_TIMEOUT_S)
        if args.server:
            addr = parse_sockaddr(args.server, allow_port_zero=False)
            ch = tls.aio_channel(addr.grpc_target)
            return cls(ch, filter_pb2_grpc.FilterServiceStub(ch), target, args.server, timeout)
        if "/" in target:
            if getattr(args, "lan", None):
                raise ConfigError(f"{target} names a service: --lan is for NODE targets")
            spec = parse_peer(target)
            if not spec.netclient:
                raise ConfigError(f"{target}: name the NetClient, ADDRESS/NETCLIENT")
            ch = tls.aio_channel(spec.addr.grpc_target)
            return cls(ch, filter_pb2_grpc.FilterServiceStub(ch), spec.netclient,
                       str(spec.addr), timeout)
        ch, _ = lan.orchestrator_stub(getattr(args, "lan", None))
        return cls(ch, filter_pb2_grpc.FilterServiceStub(ch), target, LAN_ORCHESTRATOR,
                   timeout)

    async def __aenter__(self) -> FilterClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close(None)

    async def add(self, kind: str, fid: str, props: Mapping[str, str], *,
                  queue: str = "all", off: bool = False, position: str = "",
                  insert: str = "") -> filter_pb2.FilterInfo:
        with translated(self.where):
            request = filter_pb2.AddFilterRequest(
                netclient=self.netclient, kind=kind, id=fid, direction=QUEUES[queue],
                status=filter_pb2.FILTER_STATUS_OFF if off else filter_pb2.FILTER_STATUS_ON,
                position=position, insert=insert, props=props)
            got: filter_pb2.AddFilterResponse = await self.stub.AddFilter(
                request, timeout=self.timeout)
        return got.filter

    async def update(self, fid: str, props: Mapping[str, str]) -> filter_pb2.FilterInfo:
        with translated(self.where):
            request = filter_pb2.UpdateFilterRequest(
                netclient=self.netclient, id=fid, props=props)
            got: filter_pb2.UpdateFilterResponse = await self.stub.UpdateFilter(
                request, timeout=self.timeout)
        return got.filter

    async def remove(self, fid: str) -> filter_pb2.FilterInfo:
        with translated(self.where):
            request = filter_pb2.RemoveFilterRequest(
                netclient=self.netclient, id=fid)
            got: filter_pb2.RemoveFilterResponse = await self.stub.RemoveFilter(
                request, timeout=self.timeout)
        return got.filter

    async def list(self) -> filter_pb2.ListFiltersResponse:
        with translated(self.where):
            resp: filter_pb2.ListFiltersResponse = await self.stub.ListFilters(
                filter_pb2.ListFiltersRequest(netclient=self.netclient), timeout=self.timeout)
        return resp


def parse_props(items: Sequence[str]) -> dict[str, str]:
    """PROP=VALUE words as a map; a bad or repeated one is a usage error."""
    props: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"{item!r} is not PROP=VALUE")
        if key in props:
            raise ConfigError(f"property {key} given twice")
        props[key] = value
    return props


# -- the verbs ------------------------------------------------------------------------
async def cmd_filter_add(args: argparse.Namespace) -> int:
    props = parse_props(args.props)
    async with FilterClient.for_target(args, args.target) as client:
        info = await client.add(args.kind, args.id, props, queue=args.queue, off=args.off,
                                position=args.position or "", insert=args.insert or "")
    print(f"added filter {info.id} ({info.kind}, queue {queue_word(info.direction)}, "
          f"{status_word(info.status)}) to {args.target} at position {info.position}")
    return EXIT_OK


async def cmd_filter_rm(args: argparse.Namespace) -> int:
    async with FilterClient.for_target(args, args.target) as client:
        info = await client.remove(args.id)
    c = info.counters
    print(f"removed filter {info.id} ({info.kind}) from {args.target}: seen {c.seen}, "
          f"passed {c.passed}, taken {c.taken}, released {c.released}, "
          f"dropped {c.dropped_total}")
    return EXIT_OK


async def cmd_filter_ls(args: argparse.Namespace) -> int:
    async with FilterClient.for_target(args, args.target or "") as client:
        resp = await client.list()
    if args.json:
        print(format_json(resp))
    elif resp.filters:
        print(format_filters(resp.filters))
    else:
        print(f"no filters on {args.target or client.where}")
    return EXIT_OK


# -- arguments ------------------------------------------------------------------------
class IntermixedParser(argparse.ArgumentParser):
    """A verb whose PROP=VALUE words may follow its options (``filter add vm1 netem
    --id n delay=20ms``): argparse takes positionals after options only this way."""

    _inner = False

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None
                         ) -> tuple[argparse.Namespace, list[str]]:
        if self._inner:
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def add_target_arguments(sp: argparse.ArgumentParser, optional: bool = False) -> None:
    """TARGET, ``-s SERVER``, ``--lan`` and TLS, as the verbs on NetClients take them."""
    tls.add_arguments(sp, default_name=tls.DEFAULT_CLIENT_NAME)
    sp.add_argument("--server", "-s", help="the service, HOST:PORT (TARGET is one of its "
                                           "NetClients)")
    sp.add_argument("--lan", help="the LAN, when several run (TARGET a node)")
    sp.add_argument("--timeout", type=float, default=RPC_TIMEOUT_S,
                    help="RPC timeout, seconds")
    help_text = ("NODE or HUB:PORT of a running LAN, NETCLIENT with -s SERVER, or "
                 "ADDRESS/NETCLIENT of one service")
    if optional:
        sp.add_argument("target", nargs="?", metavar="TARGET",
                        help=help_text + " (default: every NetClient)")
    else:
        sp.add_argument("target", metavar="TARGET", help=help_text)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    flt = sub.add_parser("filter", allow_abbrev=False,
                         help="add, remove and list net filters on a NetClient",
                         description="Net filters (QEMU's -object filter-*) on a NetClient "
                         "at runtime: add, rm and ls, with each filter's counters.")
    verbs = flt.add_subparsers(dest="filter_verb", required=True, metavar="add|rm|ls",
                               parser_class=IntermixedParser)

    add = verbs.add_parser("add", allow_abbrev=False, help="add a filter",
                           description="Add a filter of KIND (dump, buffer, mirror, "
                           "redirector, netem) with its PROP=VALUE properties.",
                           epilog="example:\n  virtwire filter add vm1 netem --id slow "
                           "--queue tx delay=20ms loss=1%",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target_arguments(add)
    add.set_defaults(verb=cmd_filter_add)
    add.add_argument("kind", metavar="KIND", help="dump, buffer, mirror, redirector, netem")
    add.add_argument("--id", required=True, help="the filter's id on TARGET")
    add.add_argument("--queue", choices=sorted(QUEUES), default="all",
                     help="which packets: rx (to TARGET), tx (from it), all (default)")
    add.add_argument("--position", metavar="head|tail|id=OTHER",
                     help="where in TARGET's chain (default tail)")
    add.add_argument("--insert", choices=["behind", "before"],
                     help="with --position id=OTHER: after (default) or before OTHER")
    add.add_argument("--off", action="store_true", help="add it with status off")
    add.add_argument("props", nargs="*", metavar="PROP=VALUE", help="the kind's properties")

    rm = verbs.add_parser("rm", allow_abbrev=False, help="remove a filter",
                          description="Remove a filter; what it holds is released first. "
                          "Prints its final counters.")
    add_target_arguments(rm)
    rm.set_defaults(verb=cmd_filter_rm)
    rm.add_argument("id", metavar="ID", help="the filter's id")

    ls = verbs.add_parser("ls", allow_abbrev=False, help="list filters with their counters",
                          description="List filters with their counters: of TARGET, or of "
                          "every NetClient of -s SERVER or of the LAN.")
    add_target_arguments(ls, optional=True)
    ls.set_defaults(verb=cmd_filter_ls)
    ls.add_argument("--json", action="store_true", help="machine-readable output")
