"""The filter types a service can create, keyed by type as QEMU's
``-object filter-TYPE`` names them (``dump``, ``buffer``, ``mirror``,
``redirector``, and virtwire's ``netem``).

``new_filter`` builds one from what a topology, the command line or an RPC
gives: an id, a direction, a status and string properties. Host resources
(the dump directory, chardevs) come from the service's ``FilterContext``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from virtwire.errors import ConfigError
from virtwire.net.filter import (
    FilterContext,
    FilterDirection,
    NetFilter,
    check_filter_id,
    parse_status,
)

__all__ = ["FILTER_TYPES", "FilterSpec", "filter_type", "new_filter", "register_filter_type"]

#: Longest ``--object`` text taken, and most properties in one.
MAX_SPEC_CHARS = 4096
MAX_SPEC_PROPS = 32

#: Filter classes by type name.
FILTER_TYPES: dict[str, type[NetFilter]] = {}


def register_filter_type(cls: type[NetFilter]) -> type[NetFilter]:
    FILTER_TYPES[cls.kind] = cls
    return cls


_loaded = False


def _load() -> None:
    """Import the modules that register the built-in types (each registers
    itself); a module not there yet is skipped. Once, whatever was registered
    before (importing one type's module must not hide the others)."""
    import importlib
    global _loaded
    _loaded = True
    for module in ("filter_dump", "filter_buffer", "filter_mirror", "filter_redirector",
                   "netem"):
        try:
            importlib.import_module(f"virtwire.net.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"virtwire.net.{module}":
                raise


def filter_type(kind: str) -> type[NetFilter]:
    """The class of filter type ``kind`` (the built-in types loaded); ConfigError if unknown."""
    if not _loaded:
        _load()
    cls = FILTER_TYPES.get(kind)
    if cls is None:
        raise ConfigError(f"filter type {kind!r} is not one of {', '.join(sorted(FILTER_TYPES))}")
    return cls


def new_filter(kind: str, fid: str, props: Mapping[str, str], ctx: FilterContext, *,
               direction: FilterDirection | str = FilterDirection.ALL,
               status: bool = True) -> NetFilter:
    """A filter of type ``kind``; ConfigError for an unknown type or a bad property."""
    return filter_type(kind).create(fid, props, ctx, direction=direction, status=status)


@dataclass(frozen=True)
class FilterSpec:
    """One filter as the command line, a topology or an RPC names it.

    Its text form is QEMU's ``-object``: ``filter-KIND,id=ID,netdev=NETCLIENT
    [,queue=all|rx|tx][,status=on|off][,position=head|tail|id=OTHER]
    [,insert=behind|before][,PROP=VALUE...]``. ``virtwire serve --object`` takes it.
    """

    kind: str
    id: str
    netdev: str
    direction: FilterDirection = FilterDirection.ALL
    status: bool = True
    position: str = "tail"
    insert: str = "behind"
    props: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> FilterSpec:
        if len(text) > MAX_SPEC_CHARS:
            raise ConfigError(f"filter object: {len(text)} characters, more than {MAX_SPEC_CHARS}")
        head, _, rest = text.partition(",")
        if not head.startswith("filter-") or len(head) == len("filter-"):
            raise ConfigError(f"filter object {text!r}: start with filter-TYPE "
                              "(e.g. filter-dump,id=f0,netdev=NETCLIENT,file=out.pcap)")
        kind = head[len("filter-"):]
        items: dict[str, str] = {}
        for part in rest.split(",") if rest else []:
            key, eq, value = part.partition("=")
            if not eq or not key:
                raise ConfigError(f"filter object {text!r}: {part!r} is not KEY=VALUE")
            if key in items:
                raise ConfigError(f"filter object {text!r}: {key} given twice")
            items[key] = value
        if len(items) > MAX_SPEC_PROPS:
            raise ConfigError(f"filter object {text!r}: more than {MAX_SPEC_PROPS} properties")
        for required in ("id", "netdev"):
            if not items.get(required):
                raise ConfigError(f"filter object {text!r}: {required}= is required")
        return cls(kind=kind, id=check_filter_id(items.pop("id")), netdev=items.pop("netdev"),
                   direction=FilterDirection.parse(items.pop("queue", "all")),
                   status=parse_status(items.pop("status", "on")),
                   position=items.pop("position", "tail"), insert=items.pop("insert", "behind"),
                   props=items)

    def format(self) -> str:
        """The ``--object`` text ``parse`` reads back."""
        parts = [f"filter-{self.kind}", f"id={self.id}", f"netdev={self.netdev}"]
        if self.direction is not FilterDirection.ALL:
            parts.append(f"queue={self.direction.value}")
        if not self.status:
            parts.append("status=off")
        if self.position != "tail":
            parts.append(f"position={self.position}")
        if self.insert != "behind":
            parts.append(f"insert={self.insert}")
        for key, value in self.props.items():
            if "," in value or "," in key:
                raise ConfigError(f"filter {self.id}: {key}={value!r} may not contain a comma")
            parts.append(f"{key}={value}")
        return ",".join(parts)

    def build(self, ctx: FilterContext) -> NetFilter:
        """The filter (not yet on its NetClient)."""
        return new_filter(self.kind, self.id, self.props, ctx, direction=self.direction,
                          status=self.status)
