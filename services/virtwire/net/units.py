"""Durations, percentages and rates as Linux's tc writes them.

netem's properties (virtwire.net.netem) and ``virtwire netem set`` take these
strings; ``format_*`` turn the values back into the shortest exact text
(``netem show``, a filter's listed properties). Pure functions, no I/O; a
bad value is a ConfigError that says what was expected (docs/filters.md).

- duration: a number and a unit, ``250us``, ``20ms``, ``1.5s`` (also ``ns``,
  ``usec``, ``msec``, ``sec``, ``µs``); a bare number only for ``0``.
  Returned in seconds.
- percentage: ``1%``, ``0.1%``; a bare number is a percentage too, as tc reads
  it (``1`` is 1%). 0 to 100; returned as a fraction (``1%`` -> 0.01).
- rate: a number and one of tc's units, returned in bit/s. ``bit kbit mbit
  gbit tbit`` (powers of 1000), ``kibit mibit gibit tibit`` (of 1024), and
  tc's byte rates ``bps kbps mbps gbps tbps kibps mibps gibps tibps`` (bytes
  per second: ``1mbps`` is 8 Mbit/s). A bare number is bit/s, as in tc.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

from virtwire.errors import ConfigError

__all__ = [
    "format_duration",
    "format_percent",
    "format_rate",
    "parse_duration",
    "parse_percent",
    "parse_rate",
]

#: The longest value text taken.
MAX_TEXT = 64

_NUMBER_RE = re.compile(r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d{1,3})?)\s*([A-Za-zµ%/]*)\s*")

#: Duration units, in seconds (lower case).
_DURATION_UNITS: dict[str, Decimal] = {
    **dict.fromkeys(("s", "sec", "secs"), Decimal(1)),
    **dict.fromkeys(("ms", "msec", "msecs"), Decimal("1e-3")),
    **dict.fromkeys(("us", "usec", "usecs", "µs"), Decimal("1e-6")),
    **dict.fromkeys(("ns", "nsec", "nsecs"), Decimal("1e-9")),
}

#: Rate units, in bit/s (lower case), as tc's get_rate reads them.
_RATE_UNITS: dict[str, Decimal] = {"": Decimal(1), "bit": Decimal(1)}
for _i, _p in enumerate(("k", "m", "g", "t"), start=1):
    _RATE_UNITS[f"{_p}bit"] = Decimal(1000) ** _i
    _RATE_UNITS[f"{_p}ibit"] = Decimal(1024) ** _i
    _RATE_UNITS[f"{_p}bps"] = 8 * Decimal(1000) ** _i
    _RATE_UNITS[f"{_p}ibps"] = 8 * Decimal(1024) ** _i
_RATE_UNITS["bps"] = Decimal(8)

_DURATION_FORMAT = ((10**9, "s"), (10**6, "ms"), (10**3, "us"), (1, "ns"))
_RATE_FORMAT = ((1e12, "tbit"), (1e9, "gbit"), (1e6, "mbit"), (1e3, "kbit"))


def _split(text: str, what: str, example: str) -> tuple[Decimal, str]:
    """``text``'s number and its unit (lower case), or a ConfigError."""
    if not isinstance(text, str):
        raise ConfigError(f"{what}: {text!r} is not text (e.g. {example})")
    if len(text) > MAX_TEXT:
        raise ConfigError(f"{what}: {len(text)} characters, more than {MAX_TEXT}")
    m = _NUMBER_RE.fullmatch(text)
    if m is None:
        raise ConfigError(f"{what} {text!r} is not a number with a unit (e.g. {example})")
    try:
        number = Decimal(m.group(1))
    except InvalidOperation:  # pragma: no cover - the pattern admits only numbers
        raise ConfigError(f"{what} {text!r} is not a number (e.g. {example})") from None
    if number < 0:
        raise ConfigError(f"{what} {text!r} may not be negative")
    return number, m.group(2).lower()


def _finite(value: Decimal, text: str, what: str) -> float:
    result = float(value)
    if not math.isfinite(result):
        raise ConfigError(f"{what} {text!r} is too large")
    return result


def parse_duration(text: str, what: str = "duration") -> float:
    """``20ms`` -> 0.02 (seconds); ConfigError for a bad or unitless one."""
    number, unit = _split(text, what, "20ms, 1.5s, 250us")
    if not unit:
        if number == 0:
            return 0.0
        raise ConfigError(f"{what} {text!r} needs a unit: e.g. {text.strip()}ms "
                          "(s, ms, us, ns)")
    factor = _DURATION_UNITS.get(unit)
    if factor is None:
        raise ConfigError(f"{what} {text!r}: unit {unit!r} is not one of s, ms, us, ns")
    return _finite(number * factor, text, what)


def parse_percent(text: str, what: str = "percentage") -> float:
    """``1%`` (or ``1``) -> 0.01; ConfigError unless 0 to 100."""
    number, unit = _split(text, what, "1%, 0.1%")
    if unit not in ("", "%"):
        raise ConfigError(f"{what} {text!r} is not a percentage (e.g. 1%, 0.1%)")
    if number > 100:
        raise ConfigError(f"{what} {text!r} is more than 100%")
    return float(number / 100)


def parse_rate(text: str, what: str = "rate") -> float:
    """``10mbit`` -> 1e7 (bit/s); ConfigError for an unknown unit."""
    number, unit = _split(text, what, "10mbit, 1gbit, 100kbit")
    factor = _RATE_UNITS.get(unit)
    if factor is None:
        raise ConfigError(f"{what} {text!r}: unit {unit!r} is not one of bit, kbit, mbit, "
                          "gbit, tbit, kibit..tibit, or bps, kbps, mbps, gbps, tbps "
                          "(bytes/s)")
    return _finite(number * factor, text, what)


def format_duration(seconds: float) -> str:
    """0.02 -> ``20ms``, 1.5 -> ``1.5s``: the largest unit the value reaches,
    exact to the nanosecond (``parse_duration`` reads it back)."""
    ns = round(seconds * 1_000_000_000)
    if ns == 0:
        return "0s"
    for scale, name in _DURATION_FORMAT:
        if abs(ns) >= scale:
            return f"{_plain(Decimal(ns) / scale)}{name}"
    raise AssertionError("unreachable")  # pragma: no cover


def format_percent(fraction: float) -> str:
    """0.01 -> ``1%``, 0.001 -> ``0.1%``."""
    return f"{fraction * 100:.12g}%"


def format_rate(bits_per_second: float) -> str:
    """1e7 -> ``10mbit``, 1.5e9 -> ``1.5gbit``; in bit units (never bytes)."""
    for scale, name in _RATE_FORMAT:
        if bits_per_second >= scale:
            return f"{bits_per_second / scale:.12g}{name}"
    return f"{bits_per_second:.12g}bit"


def _plain(value: Decimal) -> str:
    """A Decimal without exponent or trailing zeros (``1.50`` -> ``1.5``)."""
    return format(value.normalize(), "f")
