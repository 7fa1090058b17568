"""What the benchmarks print: markdown tables the README takes as they are,
percentiles, the machine's load, and targets reported as pass/fail (a report,
never an assert)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def percentile(values: Sequence[float], p: float) -> float | None:
    """The nearest-rank percentile ``p`` (0-100) of ``values``; None when empty
    (the rule bench/loadgen.py uses for frame latencies)."""
    if not values:
        return None
    ordered = sorted(values)
    n = len(ordered)
    k = max(0, min(n - 1, int(-(-p * n // 100)) - 1))
    return ordered[k]


def load_figures() -> dict[str, float]:
    """The load averages and the core count."""
    one, five, fifteen = os.getloadavg()
    return {"load1": one, "load5": five, "load15": fifteen, "cores": float(os.cpu_count() or 0)}


def load_note() -> str:
    load = load_figures()
    return (f"load average {load['load1']:.2f} (1 min), {load['load5']:.2f} (5 min), "
            f"{load['load15']:.2f} (15 min) on {load['cores']:.0f} cores")


def num(value: float | None, digits: int = 0) -> str:
    """``1,234`` / ``12.3``; ``-`` for no figure."""
    return "-" if value is None else f"{value:,.{digits}f}"


@dataclass
class Target:
    """One of the issue's targets against its measured figure."""

    what: str
    #: The measured figure (a ratio or an absolute value); None: not measured.
    measured: float | None
    limit: float
    #: "max": measured must be <= limit; "min": >= limit.
    kind: str
    unit: str = "x"

    @property
    def passed(self) -> bool | None:
        if self.measured is None:
            return None
        return self.measured <= self.limit if self.kind == "max" else self.measured >= self.limit

    def cell(self) -> str:
        """``2.10x pass`` / ``4.0x FAIL`` / ``not measured``."""
        if self.measured is None:
            return "not measured"
        # a figure that rounds to the limit gets a digit more (0.495x is no 0.50x pass)
        digits = 2 if round(self.measured, 2) != self.limit else 3
        value = (f"{self.measured:.{digits}f}x" if self.unit == "x"
                 else f"{self.measured:,.{max(0, digits - 2)}f} {self.unit}")
        return f"{value} {'pass' if self.passed else 'FAIL'}"

    def goal(self) -> str:
        sign = "≤" if self.kind == "max" else "≥"
        limit = f"{self.limit:g}x" if self.unit == "x" else f"{self.limit:g} {self.unit}"
        return f"{self.what} {sign} {limit}"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "goal": self.goal(), "passed": self.passed}


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, None when either is missing or b is 0."""
    if a is None or b is None or b == 0:
        return None
    return a / b


@dataclass
class PercentTarget(Target):
    """A target on a fraction measured in percent (``0.012 % pass``): the digits
    a drop fraction needs, which Target's ``12 %`` would round away."""

    unit: str = "%"

    def cell(self) -> str:
        if self.measured is None:
            return "not measured"
        return f"{self.measured:.3f} % {'pass' if self.passed else 'FAIL'}"

    def goal(self) -> str:
        sign = "≤" if self.kind == "max" else "≥"
        return f"{self.what} {sign} {self.limit:g} %"
