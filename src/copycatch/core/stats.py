"""Exact tests used by the schemes' verifications, and ways to combine them."""

from __future__ import annotations

import math
from collections.abc import Sequence

from .errors import InvalidArgument


def _scipy_stats():
    """scipy.stats, imported on first use: it holds 45 MB of resident memory that an embed never needs."""
    from scipy import stats

    return stats


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
    return float(_scipy_stats().binom.sf(k - 1, n, p))


def binomial_less(k: int, n: int, p: float) -> float:
    """Exact P(X <= k) for X ~ Binomial(n, p)."""
    _check_counts(k, n, p)
    if n == 0 or k == n:
        return 1.0
    return float(_scipy_stats().binom.cdf(k, n, p))


def binomial_critical_greater(n: int, p: float, alpha: float) -> int | None:
    """Smallest k with P(X >= k) <= alpha, or None when no k out of n can reach alpha."""
    if n == 0:
        return None
    k = int(_scipy_stats().binom.isf(alpha, n, p)) + 1  # first k whose survival is <= alpha
    while k > 0 and binomial_greater(k - 1, n, p) <= alpha:
        k -= 1
    while k <= n and binomial_greater(k, n, p) > alpha:
        k += 1
    return k if k <= n else None


def fisher_combine(p_values: Sequence[float]) -> float:
    """Fisher's method: valid for independent p-values."""
    ps = _check_ps(p_values)
    stat = -2.0 * sum(math.log(max(p, 1e-300)) for p in ps)
    return float(_scipy_stats().chi2.sf(stat, 2 * len(ps)))


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


def hypergeometric_greater(k: int, population: int, successes: int, draws: int) -> float:
    """Exact P(X >= k) for X the successes among ``draws`` taken without replacement from ``population``
    items of which ``successes`` are successes (Fisher's exact test, one-sided)."""
    if not 0 <= successes <= population or not 0 <= draws <= population or k < 0:
        raise InvalidArgument(
            f"hypergeometric counts must satisfy 0 <= successes, draws <= population and k >= 0, "
            f"got k={k}, population={population}, successes={successes}, draws={draws}"
        )
    if k <= max(0, draws + successes - population):
        return 1.0
    return float(_scipy_stats().hypergeom.sf(k - 1, population, successes, draws))


def independent_choices_greater(
    scores: Sequence[Sequence[float]], chosen: Sequence[int], *, resolution: int = 1 << 16, slack: float = 0.0
) -> float:
    """P(Σ_g scores[g][U_g] >= Σ_g scores[g][chosen[g]] − slack) for independent U_g, each uniform over its group's
    choices (``slack`` >= 0 lowers the bar: a bound that holds whatever groups not yet observed would add).

    The null distribution of a randomisation test whose secret is one independent, uniform choice per group (a
    secret target label per source class, a secret index per class, …): under "the suspect is independent of the
    secret", the secret actually drawn is one more uniform draw, so this is its exact p-value. The distribution is
    computed by convolution, not sampling. Integer scores give the exact value; other scores are put on a grid of
    ``resolution`` steps over their total range in the direction that can only raise the p-value (conservative by
    at most the mass within two grid steps per group of the observed sum).
    """
    import numpy as np

    if len(scores) != len(chosen) or not len(scores):
        raise InvalidArgument(
            f"need one chosen index per group and at least one group, got {len(scores)} groups "
            f"and {len(chosen)} choices"
        )
    if resolution < 16:
        raise InvalidArgument(f"resolution must be >= 16, got {resolution}")
    if not slack >= 0:
        raise InvalidArgument(f"slack must be >= 0, got {slack}")
    groups = []
    for g, (values, pick) in enumerate(zip(scores, chosen)):
        a = np.asarray(values, dtype=np.float64).ravel()
        if a.size == 0 or not np.isfinite(a).all():
            raise InvalidArgument(f"group {g} needs at least one finite score")
        if not 0 <= int(pick) < a.size:
            raise InvalidArgument(f"chosen index {pick} is out of range for group {g} with {a.size} choices")
        groups.append((a - a.min(), int(pick)))
    total_range = sum(float(a.max()) for a, _ in groups)
    if total_range == 0.0:
        return 1.0
    integral = all(np.array_equal(a, np.round(a)) for a, _ in groups) and total_range <= 4 * resolution
    if integral:
        units = [a.astype(np.int64) for a, _ in groups]
        threshold = int(sum(u[pick] for u, (_, pick) in zip(units, groups))) - math.ceil(slack)
    else:
        # Rounding every choice up by a full step and the observed sum down keeps {sum >= observed} inside
        # {units >= threshold}, so the grid can only overstate the p-value.
        step = total_range / resolution
        units = [np.floor(a / step).astype(np.int64) + 1 for a, _ in groups]
        threshold = int(sum(np.floor(a[pick] / step) for a, pick in groups)) - math.ceil(slack / step)
    pmf = np.ones(1)
    for u in units:
        weights = np.bincount(u) / u.size
        out = np.zeros(pmf.size + weights.size - 1)
        for value in np.flatnonzero(weights):
            out[value : value + pmf.size] += weights[value] * pmf
        pmf = out
    return float(min(1.0, pmf[max(threshold, 0) :].sum()))
