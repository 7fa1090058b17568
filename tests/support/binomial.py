"""The binomial 99% acceptance interval, for tests that count random events.

For a count X ~ Binomial(n, p), ``binomial_interval_99(n, p)`` is the exact
central interval [lo, hi]: the smallest lo with P(X < lo) <= 0.5% and the
largest hi with P(X > hi) <= 0.5%, so P(lo <= X <= hi) >= 99%. Computed from
the probability mass function itself (no normal approximation), which matters
for small n or p, where the normal approximation's interval is too narrow on
the low side and too wide on the high side.
"""

from __future__ import annotations

import math

#: Probability each tail may hold.
TAIL = 0.005


def _pmf(n: int, p: float) -> list[float]:
    """P(X = k) for k = 0..n, through logs (n may be large)."""
    if p <= 0.0:
        return [1.0] + [0.0] * n
    if p >= 1.0:
        return [0.0] * n + [1.0]
    lp, lq = math.log(p), math.log1p(-p)
    base = math.lgamma(n + 1)
    return [math.exp(base - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * lp + (n - k) * lq)
            for k in range(n + 1)]


def binomial_interval_99(n: int, p: float) -> tuple[int, int]:
    """The exact central 99% interval [lo, hi] of Binomial(n, p) (see above)."""
    if n < 0 or not 0.0 <= p <= 1.0:
        raise ValueError(f"no binomial with n={n}, p={p}")
    pmf = _pmf(n, p)
    lo, below = 0, 0.0
    while lo < n and below + pmf[lo] <= TAIL:
        below += pmf[lo]
        lo += 1
    hi, above = n, 0.0
    while hi > 0 and above + pmf[hi] <= TAIL:
        above += pmf[hi]
        hi -= 1
    return lo, hi


def within_binomial_99(count: int, n: int, p: float) -> bool:
    """Whether ``count`` of ``n`` lies in Binomial(n, p)'s 99% interval."""
    lo, hi = binomial_interval_99(n, p)
    return lo <= count <= hi
