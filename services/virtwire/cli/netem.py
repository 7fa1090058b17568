"""`virtwire netem set / show / reset`: Linux netem impairments on a NetClient.

As containerlab's ``tools netem``: ``set`` creates or changes the filter of
kind ``netem`` and id ``netem`` on TARGET (the net filter of net/netem.py),
``show`` prints a table of impairments and drops, ``reset`` removes it. TARGET
is what ``virtwire filter`` takes (cli.filter). As ``tc qdisc ... netem`` on an
interface shapes its egress, a new netem sees what TARGET sends (``--queue
tx``) unless told otherwise.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence

from virtwire.cli.exitcode import EXIT_OK
from virtwire.cli.filter import FilterClient, add_target_arguments
from virtwire.cli.filtertable import queue_word
from virtwire.cli.format import format_json, format_table
from virtwire.errors import ConfigError
from virtwire.net.units import parse_rate
from virtwire.v1 import filter_pb2

#: The filter ``netem set`` makes, and its kind.
NETEM_ID = "netem"
NETEM_KIND = "netem"

#: ``set``'s options: option name -> (netem property, help). Values go to the
#: filter as typed; the service checks them (units, ranges) and refuses a bad
#: one with INVALID_ARGUMENT, changing nothing.
OPTIONS: dict[str, tuple[str, str]] = {
    "delay": ("delay", "added delay, e.g. 20ms"),
    "jitter": ("jitter", "delay variation, e.g. 5ms"),
    "loss": ("loss", "random loss, e.g. 1%%"),
    "rate": ("rate", "rate limit, e.g. 10mbit"),
    "corrupt": ("corrupt", "corrupted frames, e.g. 0.1%%"),
    "duplicate": ("duplicate", "duplicated frames, e.g. 1%%"),
    "reorder": ("reorder", "frames sent at once, ahead of delayed ones, e.g. 5%%"),
    "gap": ("gap", "with --reorder: reorder every Nth frame"),
    "limit": ("limit", "frames the filter holds at most"),
    "seed": ("seed", "random seed, so a run repeats frame for frame"),
}

#: ``show``'s columns: header, then the property shown.
_COLUMNS: tuple[tuple[str, str], ...] = (
    ("Delay", "delay"), ("Jitter", "jitter"), ("Packet Loss", "loss"),
    ("Rate (kbit/s)", "rate"), ("Corruption", "corrupt"), ("Duplicate", "duplicate"),
    ("Reorder", "reorder"),
)


def _rate_kbit(text: str) -> str:
    """A rate property in kbit/s, as containerlab shows it (read by net.units, as
    the filter reads it); as given if it cannot be read."""
    if not text:
        return ""
    try:
        bits = parse_rate(text)
    except ConfigError:
        return text
    return f"{bits / 1000:g}"


def _cell(props: Mapping[str, str], prop: str) -> str:
    value = props.get(prop, "")
    if prop == "rate":
        value = _rate_kbit(value)
    return value or "-"


def format_netem(filters: Sequence[filter_pb2.FilterInfo]) -> str:
    """containerlab's ``tools netem show`` table, with the drops counted by cause."""
    rows = [("Interface", *(h for h, _ in _COLUMNS), "Queue", "Seen", "Dropped")]
    for f in filters:
        c = f.counters
        dropped = str(c.dropped_total)
        if c.dropped:
            dropped += " (" + ", ".join(f"{k} {v}" for k, v in sorted(c.dropped.items())) + ")"
        rows.append((f.netclient if f.id == NETEM_ID else f"{f.netclient} ({f.id})",
                     *(_cell(f.props, p) for _, p in _COLUMNS), queue_word(f.direction),
                     str(c.seen), dropped))
    return format_table(rows)


# -- the verbs ------------------------------------------------------------------------
async def cmd_netem_set(args: argparse.Namespace) -> int:
    props = {prop: str(getattr(args, name)) for name, (prop, _) in OPTIONS.items()
             if getattr(args, name) is not None}
    if not props:
        raise ConfigError("netem set: give at least one of "
                          + ", ".join(f"--{name}" for name in OPTIONS))
    async with FilterClient.for_target(args, args.target) as client:
        current = [f for f in (await client.list()).filters if f.id == NETEM_ID]
        if current:
            have = current[0]
            if have.kind != NETEM_KIND:
                raise ConfigError(f"{args.target} has a {have.kind} filter named {NETEM_ID}: "
                                  "remove it first ('virtwire filter rm')")
            if args.queue is not None and queue_word(have.direction) != args.queue:
                raise ConfigError(f"netem on {args.target} sees {queue_word(have.direction)}: "
                                  f"'virtwire netem reset' it to change --queue")
            info = await client.update(NETEM_ID, props)
            what = "changed"
        else:
            info = await client.add(NETEM_KIND, NETEM_ID, props, queue=args.queue or "tx")
            what = "set"
    print(f"netem {what} on {args.target}: "
          + ", ".join(f"{k}={v}" for k, v in sorted(info.props.items())))
    return EXIT_OK


async def cmd_netem_show(args: argparse.Namespace) -> int:
    async with FilterClient.for_target(args, args.target or "") as client:
        resp = await client.list()
    filters = [f for f in resp.filters if f.kind == NETEM_KIND]
    if args.json:
        print(format_json(filter_pb2.ListFiltersResponse(filters=filters)))
    elif filters:
        print(format_netem(filters))
    else:
        print(f"no netem on {args.target or client.where}")
    return EXIT_OK


async def cmd_netem_reset(args: argparse.Namespace) -> int:
    async with FilterClient.for_target(args, args.target) as client:
        if not any(f.id == NETEM_ID for f in (await client.list()).filters):
            print(f"no netem on {args.target}: nothing to reset")
            return EXIT_OK
        info = await client.remove(NETEM_ID)
    print(f"netem removed from {args.target} (dropped {info.counters.dropped_total} "
          f"of {info.counters.seen} frames)")
    return EXIT_OK


# -- arguments ------------------------------------------------------------------------
def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    netem = sub.add_parser("netem", allow_abbrev=False,
                           help="delay, loss, rate and more on a NetClient (Linux netem)",
                           description="Network impairments on a NetClient, as containerlab's "
                           "'tools netem': set (create or change), show, reset.")
    verbs = netem.add_subparsers(dest="netem_verb", required=True, metavar="set|show|reset")

    st = verbs.add_parser("set", allow_abbrev=False, help="create or change TARGET's netem",
                          description="Create or change TARGET's netem filter (id netem); "
                          "options not given keep their values.",
                          epilog="example:\n  virtwire netem set vm1 --delay 20ms --jitter "
                          "5ms --loss 1% --rate 10mbit",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target_arguments(st)
    st.set_defaults(verb=cmd_netem_set)
    for name, (_, help_text) in OPTIONS.items():
        st.add_argument(f"--{name}", metavar="VALUE", help=help_text)
    st.add_argument("--queue", choices=["all", "rx", "tx"],
                    help="which frames, when created: tx (what TARGET sends: its egress, "
                         "as tc netem on an interface; the default), rx (to TARGET), all "
                         "(both ways, so a delay counts twice in a round trip)")

    sh = verbs.add_parser("show", allow_abbrev=False, help="TARGET's netem, or all of them",
                          description="The netem filters of TARGET, or of every NetClient, "
                          "with their impairments and drops.")
    add_target_arguments(sh, optional=True)
    sh.set_defaults(verb=cmd_netem_show)
    sh.add_argument("--json", action="store_true", help="machine-readable output")

    rs = verbs.add_parser("reset", allow_abbrev=False, help="remove TARGET's netem",
                          description="Remove TARGET's netem filter; frames it holds go on.")
    add_target_arguments(rs)
    rs.set_defaults(verb=cmd_netem_reset)
