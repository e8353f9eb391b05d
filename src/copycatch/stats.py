"""Exact tests used by the schemes' verifications, and ways to combine them."""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy import stats as _st

from .errors import InvalidArgument


def _check_counts(k: int, n: int, p: float) -> None:
    if n < 0 or k < 0 or k > n:
        raise InvalidArgument(f"binomial counts must satisfy 0 <= k <= n, got k={k}, n={n}")
    if not 0.0 <= p <= 1.0:
        raise InvalidArgument(f"binomial probability must be in [0, 1], got p={p}")


def binomial_greater(k: int, n: int, p: float) -> float:
    """Exact P(X >= k) for X ~ Binomial(n, p); 1.0 when n == 0 (no evidence)."""
    _check_counts(k, n, p)
    if n == 0 or k == 0:
        return 1.0
    return float(_st.binom.sf(k - 1, n, p))


def binomial_less(k: int, n: int, p: float) -> float:
    """Exact P(X <= k) for X ~ Binomial(n, p)."""
    _check_counts(k, n, p)
    if n == 0 or k == n:
        return 1.0
    return float(_st.binom.cdf(k, n, p))


def binomial_critical_greater(n: int, p: float, alpha: float) -> int | None:
    """Smallest k with P(X >= k) <= alpha, or None when no k out of n can reach alpha."""
    if n == 0:
        return None
    k = int(_st.binom.isf(alpha, n, p)) + 1  # first k whose survival is <= alpha
    while k > 0 and binomial_greater(k - 1, n, p) <= alpha:
        k -= 1
    while k <= n and binomial_greater(k, n, p) > alpha:
        k += 1
    return k if k <= n else None


def fisher_combine(p_values: Sequence[float]) -> float:
    """Fisher's method: valid for independent p-values."""
    ps = _check_ps(p_values)
    stat = -2.0 * sum(math.log(max(p, 1e-300)) for p in ps)
    return float(_st.chi2.sf(stat, 2 * len(ps)))


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (valid under any dependence), in input order."""
    ps = _check_ps(p_values)
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        adjusted[i] = running
    return adjusted


def _check_ps(p_values: Sequence[float]) -> list[float]:
    ps = [float(p) for p in p_values]
    if not ps:
        raise InvalidArgument("no p-values to combine")
    bad = [p for p in ps if not 0.0 <= p <= 1.0]
    if bad:
        raise InvalidArgument(f"p-values must be in [0, 1], got {bad[0]}")
    return ps
