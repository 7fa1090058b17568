"""What a request arriving over an RPC may name on this host.

A program to run (a TAP's ``script=`` / ``downscript=``), a file path (unix
sockets, guest RAM files, ready files, pcap files) or a network namespace
comes only from this host's own command line or from a topology file read
on this host. Over an RPC, a script is a NAME that the receiving service's
command line maps to a path (``--allow-script NAME=PATH``); paths, unix
socket addresses and namespaces (unless ``--allow-netns``) are refused with
PermissionDeniedError, whose message says which field and how to allow it.

QEMU has no such split: its command line and QMP are one trust domain.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from virtwire.address import shorten
from virtwire.errors import ConfigError, PermissionDeniedError
from virtwire.net.tap import check_script

__all__ = ["SCRIPT_NAME_RE", "RpcPolicy", "parse_allow_scripts"]

#: A script NAME: what `--allow-script NAME=PATH` defines and an RPC may say.
SCRIPT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def parse_allow_scripts(items: Iterable[str]) -> dict[str, str]:
    """``--allow-script NAME=PATH`` options -> {NAME: absolute PATH}; ConfigError if bad.

    PATH must be an executable file now (it is this host's own configuration).
    """
    scripts: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise ConfigError(f"bad --allow-script {shorten(item)}: expected NAME=PATH")
        if not SCRIPT_NAME_RE.match(name):
            raise ConfigError(f"bad --allow-script name {shorten(name)}: use 1 to 64 of "
                              "A-Z, a-z, 0-9, '_', '.' and '-', starting with a letter or digit")
        if name in scripts:
            raise ConfigError(f"--allow-script {name} is given twice")
        check_script(f"--allow-script {name}", path)
        scripts[name] = os.path.abspath(path)
    return scripts


def _field(option: str) -> str:
    return f"{option}: " if option else ""


@dataclass(frozen=True, kw_only=True)
class RpcPolicy:
    """What this host lets a request from an RPC use, from its own command line.

    ``command`` is the command whose flags allow more (for messages), e.g.
    ``virtwire serve tap``. Each check names the request's field ``option``
    first (nothing if "").
    """

    command: str
    scripts: Mapping[str, str] = field(default_factory=dict)
    allow_netns: bool = False

    def script(self, option: str, value: str, *, resolve: bool = True) -> str:
        """The path a ``script=``/``downscript=`` NAME stands for ("" stays "").

        ``resolve=False`` only checks that ``value`` is a name (it is looked
        up on another host). PermissionDeniedError for a path or an unknown name.
        """
        if not value or value == "no":
            return ""
        if "/" in value:
            raise PermissionDeniedError(
                f"{_field(option)}{shorten(value)} is a path: over an RPC a script is a NAME "
                f"that the receiving host allows ({self.command} --allow-script NAME=PATH "
                "there), or give the path on that host's own command line or topology file")
        if not SCRIPT_NAME_RE.match(value):
            raise ConfigError(f"{_field(option)}bad script name {shorten(value)}: use 1 to 64 "
                              "of A-Z, a-z, 0-9, '_', '.' and '-'")
        if not resolve:
            return value
        path = self.scripts.get(value)
        if path is None:
            known = (f"allowed: {', '.join(sorted(self.scripts))}" if self.scripts
                     else "none is allowed")
            raise PermissionDeniedError(
                f"{_field(option)}script {value!r} is not allowed on this host ({known}); allow it "
                f"with '{self.command} --allow-script {value}=PATH'")
        return path

    def no_unix(self, option: str, address: str) -> None:
        """PermissionDeniedError if ``address`` is a unix socket path."""
        if address.strip().startswith("unix:"):
            raise PermissionDeniedError(
                f"{_field(option)}{shorten(address)} is a unix socket path: over an RPC only "
                "HOST:PORT addresses are allowed; give unix sockets on this host's own "
                "command line or topology file")

    def netns(self, option: str, name: str) -> None:
        """PermissionDeniedError for a network namespace unless ``--allow-netns``."""
        if name and not self.allow_netns:
            raise PermissionDeniedError(
                f"{_field(option)}network namespace {shorten(name)} is not allowed over an RPC "
                f"on this host; allow it with '{self.command} --allow-netns'")
