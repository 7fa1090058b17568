"""The verbs' help: a one-line description and an example each, and the
top-level list of verbs in groups (argparse lists subcommands in one flat
list, in the order they were added, so ``virtwire --help`` writes its own).

Each verb module adds its verbs with ``sub.add_parser(NAME, help=LINE)`` as
usual; ``Verbs``, the action behind ``sub``, keeps LINE for the top-level
list, makes it the verb's description too, and gives the verb's help an
example from ``EXAMPLES`` unless the verb has an epilog of its own.
"""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

#: The top-level help's groups, in order (serving is for services and hosts, last).
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("lifecycle of a LAN", ("up", "down", "status", "validate", "render", "demo")),
    ("inspect", ("list", "capture", "expect", "trace", "top", "graph", "console")),
    ("drive", ("inject", "link", "ping", "netem", "filter", "replay", "fdb", "exec")),
    ("serve", ("serve", "certs")),
)

#: One example per verb (more lines where one is not enough to see the verb).
EXAMPLES: dict[str, tuple[str, ...]] = {
    "up": ("virtwire up examples/default.yaml            # until Ctrl-C",
           "virtwire up examples/default.yaml --detach   # in the background"),
    "down": ("virtwire down default",),
    "status": ("virtwire status --lan default --json",),
    "validate": ("virtwire validate examples/default.yaml",),
    "render": ("virtwire render compose examples/default.yaml -o default.compose.yaml",),
    "demo": ("virtwire demo --once",),
    "list": ("virtwire list -s 127.0.0.1:7000",),
    "capture": ("virtwire capture vm2 -w vm2.pcap --count 10",
                "virtwire capture vm1 -w - | wireshark -k -i -"),
    "inject": ("virtwire inject vm1 --pcap frames.pcap",),
    "link": ("virtwire link vm2 down",),
    "ping": ("virtwire ping vm1 vm2 -c 5",),
    "serve": ("virtwire serve hub --listen 127.0.0.1:7000 --ports 2",),
    "filter": ("virtwire filter add vm1 dump --id d0 --queue rx file=vm1.pcap",
               "virtwire filter ls"),
    "netem": ("virtwire netem set vm1 --delay 20ms --jitter 5ms --loss 1%",
              "virtwire netem show"),
    "expect": ("virtwire expect vm2 --match 'ip.src=198.18.0.1,ip.proto=icmp' --timeout 2s",
               "virtwire expect vm2 --match 'pcap:arp' --none --timeout 1s"),
    "trace": ("virtwire trace vm1 --match ip.proto=icmp --count 3",
              "virtwire trace p0 --match 'pcap:arp' --json --timeout 10s"),
    "top": ("virtwire top default",
            "virtwire top --count 2 --interval 0.5   # two tables, for scripts"),
    "graph": ("virtwire graph examples/default.yaml -o default.svg",
              "virtwire graph default -o live.mmd      # a running LAN: link states, rates"),
    "replay": ("virtwire replay vm1 -r vm1.pcap --speed 2",
               "virtwire replay -s 127.0.0.1:7000 p0 -r frames.pcap --speed max"),
    "exec": ("virtwire exec h1 -- ip addr show eth0",
             "virtwire exec h1 -- ping -c 3 198.18.10.2"),
    "console": ("virtwire console q1                # follow it; Ctrl-C ends",
                "virtwire console q1 --no-follow"),
    "fdb": ("virtwire fdb sw0                 # MAC, VLAN, port, age",
            "virtwire fdb sw0 --flush --port p1"),
}

#: The whole command: what most users do first.
TOP_EXAMPLE = ("virtwire up examples/default.yaml --detach",
               "virtwire ping vm1 vm2",
               "virtwire status",
               "virtwire down")


def example_epilog(lines: tuple[str, ...]) -> str:
    return "example:\n" + "\n".join(f"  {line}" for line in lines)


class Verbs(argparse._SubParsersAction):  # type: ignore[type-arg]
    """``add_subparsers(action=Verbs)``: verbs with a description and an example."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Each verb's one line, by name, in the order added.
        self.summaries: dict[str, str] = {}

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        # No ``help`` goes to argparse: it would list the verb in its flat list.
        summary = str(kwargs.pop("help", "") or "")
        self.summaries[name] = summary
        description = kwargs.get("description") or (summary[:1].upper() + summary[1:] + ".")
        # Raw (the example keeps its lines), so filled here, paragraph by paragraph.
        kwargs["description"] = "\n\n".join(textwrap.fill(" ".join(par.split()), 79)
                                             for par in description.split("\n\n"))
        if kwargs.get("epilog") is None and name in EXAMPLES:
            kwargs["epilog"] = example_epilog(EXAMPLES[name])
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        kwargs.pop("allow_abbrev", None)
        parser: argparse.ArgumentParser = super().add_parser(name, allow_abbrev=False, **kwargs)
        return parser

    def verb_list(self) -> str:
        """The verbs in GROUPS' order, one line each; any verb not in a group last."""
        grouped = [name for _, names in GROUPS for name in names]
        groups = [*GROUPS, ("other", tuple(n for n in self.summaries if n not in grouped))]
        width = max(len(name) for name in self.summaries) + 2
        out = []
        for title, names in groups:
            names = tuple(n for n in names if n in self.summaries)
            if not names:
                continue
            out.append(f"{title}:")
            for name in names:
                out.append(textwrap.fill(self.summaries[name], 79,
                                         initial_indent=f"  {name:{width}}",
                                         subsequent_indent=" " * (width + 2)))
        return "\n".join(out)
