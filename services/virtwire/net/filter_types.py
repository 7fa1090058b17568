"""The filter types a service can create, keyed by type as QEMU's
``-object filter-TYPE`` names them (``dump``, ``buffer``, ``mirror``,
``redirector``, and virtwire's ``netem``).

``new_filter`` builds one from what a topology, the command line or an RPC
gives: an id, a direction, a status and string properties. Host resources
(the dump directory, chardevs) come from the service's ``FilterContext``.
"""

from __future__ import annotations

from collections.abc import Mapping

from virtwire.errors import ConfigError
from virtwire.net.filter import FilterContext, FilterDirection, NetFilter

__all__ = ["FILTER_TYPES", "new_filter", "register_filter_type"]

#: Filter classes by type name.
FILTER_TYPES: dict[str, type[NetFilter]] = {}


def register_filter_type(cls: type[NetFilter]) -> type[NetFilter]:
    FILTER_TYPES[cls.kind] = cls
    return cls


def _load() -> None:
    """Import the modules that register the built-in types (each registers
    itself); a module not there yet is skipped."""
    import importlib
    for module in ("filter_dump", "filter_buffer", "filter_mirror", "filter_redirector",
                   "netem"):
        try:
            importlib.import_module(f"virtwire.net.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"virtwire.net.{module}":
                raise


def new_filter(kind: str, fid: str, props: Mapping[str, str], ctx: FilterContext, *,
               direction: FilterDirection | str = FilterDirection.ALL,
               status: bool = True) -> NetFilter:
    """A filter of type ``kind``; ConfigError for an unknown type or a bad property."""
    if not FILTER_TYPES:
        _load()
    cls = FILTER_TYPES.get(kind)
    if cls is None:
        raise ConfigError(f"filter type {kind!r} is not one of {', '.join(sorted(FILTER_TYPES))}")
    return cls.create(fid, props, ctx, direction=direction, status=status)
