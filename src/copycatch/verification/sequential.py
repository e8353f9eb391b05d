"""Sequential verification: query the key in batches and stop as soon as the decision is reached.

Every query costs money and shows the suspect part of the key, so ``copycatch verify`` asks the key's
inputs a batch at a time and stops when the answer is settled. It works for every scheme whose statistic is
a count of per-query Bernoulli outcomes under an exact binomial null (the optional
:meth:`~copycatch.schemes.base.Scheme.bernoulli_outcomes` hook: margin, frontier stitching …); other
schemes fall back to the fixed test on the whole key, and the evidence says so.

The test (valid at any stopping time). Split α into an early share ``w`` (default 0.2) and ``1 − w``:

* **always-valid part**: over the counted outcomes, the mixture likelihood ratio
  ``E_t = ∫ Π (p/q)^x (1−p)/(1−q))^(1−x) dπ(p)`` with π uniform on [q, 1] is a non-negative martingale with
  ``E_0 = 1`` under the null (success rate q), so by Ville's inequality ``P(sup_t E_t ≥ 1/a) ≤ a`` whatever
  the stopping rule. ``p_e = 1 / max_t E_t``.
* **fixed part**: the exact binomial p-value of the whole key, ``p_f = P(Bin(m, q) ≥ s)``. Before the whole key
  is asked, ``p_f`` is bounded by its least favourable completion (every unasked input a counted failure),
  which is never below the value the full key would give. A suspect that answers scores (not labels only) is
  tested on them when the scheme's fixed test reads them (:meth:`~copycatch.schemes.base.Scheme.score_test_bounds`:
  margin's rank test): ``p_f`` is then that test's p-value of the whole key, bounded before the end over every
  answer the unasked inputs could give (a loose bound: such runs seldom stop by curtailment, and ask the whole key
  unless the always-valid part rejects first). Which one is used is settled by the first batch's answers (scores
  if any of them is not one-hot): both tests are exact given the answers, so the choice may depend on their format,
  never on the key.

Reported p-value ``p = min(1, p_e / w, p_f / (1 − w))`` (weighted Bonferroni: ``P(p ≤ a) ≤ w·a + (1−w)·a``).
The test stops after a batch as soon as

* ``p_e ≤ w·α`` (early rejection: stolen),
* or ``p_f``'s bound ``≤ (1 − w)·α`` (curtailment: the full key would reject whatever the rest answers),
* or neither part can reach its share even if every remaining input were a success (futility: not stolen);

otherwise it goes on to the end of the key. So the decision equals that of the fixed test at level
``(1 − w)·α`` unless the always-valid part rejects first; the price of early stopping is that borderline
fixed p-values in ``((1 − w)·α, α]`` are no longer enough.

Parameters (defaults): ``batch_size`` (10) inputs per round; ``early_share`` (0.2) the share w of α spent on
the always-valid part.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from scipy import special

from ..core.errors import InvalidArgument
from ..core.evidence import Evidence
from ..core.key import Key
from ..core.params import Params
from ..core.runtime import progress as progress_bar
from ..core.stats import binomial_greater
from ..oracles.base import Oracle
from ..schemes.base import note_reachability


@dataclasses.dataclass(frozen=True)
class SequentialPlan(Params):
    """How sequential verification spends queries and α."""

    kind = "sequential verification"
    batch_size: int = 10
    early_share: float = 0.2

    def validate(self) -> None:
        if self.batch_size < 1:
            raise InvalidArgument(f"sequential batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 < self.early_share < 1.0:
            raise InvalidArgument(f"early_share must be in (0, 1), got {self.early_share}")


def log_mixture_e_value(successes: int, trials: int, null_rate: float) -> float:
    """log E for ``successes`` of ``trials`` Bernoulli outcomes; E mixes likelihood ratios uniformly over [q, 1]."""
    q = float(null_rate)
    if not 0.0 < q < 1.0:
        raise InvalidArgument(f"null rate must be in (0, 1), got {q}")
    if trials == 0:
        return 0.0
    a, b = successes + 1, trials - successes + 1
    tail = float(special.betaincc(a, b, q))  # P(Beta(a, b) > q)
    if tail <= 0.0:
        return -math.inf
    log_integral = float(special.betaln(a, b)) + math.log(tail) - math.log1p(-q)
    return log_integral - successes * math.log(q) - (trials - successes) * math.log1p(-q)


@dataclasses.dataclass
class SequentialState:
    """The test's state after some batches (also one row of the recorded trajectory)."""

    queried: int
    successes: int
    counted: int
    max_log_e: float
    p_early: float
    p_fixed_bound: float
    p_value: float

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["max_e_value"] = math.exp(min(self.max_log_e, 700.0))
        del d["max_log_e"]
        return d


STOP_REASONS = {
    "early": "the always-valid e-value crossed its threshold",
    "curtailed": "the whole key would reject whatever the remaining inputs answer",
    "futility": "no answers to the remaining inputs could reach the stopping level",
    "exhausted": "every input of the key was asked",
}


def verify_sequential(
    scheme: Any,
    oracle: Oracle,
    key: Key,
    *,
    alpha: float = 1e-3,
    plan: SequentialPlan | None = None,
    progress: bool | None = None,
    stop_alpha: float | None = None,
) -> Evidence:
    """Sequential verification of ``oracle`` against ``key``; the fixed test when the scheme has no hook.

    ``stop_alpha`` (default ``alpha``) is the level the stopping rule aims at; the p-value does not depend on it.
    Combining k keys with Holm needs one p-value ≤ α/k, so :func:`copycatch.verification.session.verify_suspect`
    passes α/k there.
    """
    plan = plan or SequentialPlan()
    decision_alpha = scheme.check_alpha(alpha)
    alpha = scheme.check_alpha(stop_alpha if stop_alpha is not None else alpha)
    scheme.check_key(key, oracle)
    if not scheme.sequential:
        return _fixed_test_instead(scheme, oracle, key, alpha=decision_alpha, progress=progress)
    run = _query_in_batches(scheme, oracle, key, plan, alpha, progress)
    last, n, q = run.trajectory[-1], run.key_size, run.null_rate
    metrics: dict[str, Any] = {}
    notes = list(run.outcome.notes)
    details: dict[str, Any] = {}
    if last.queried == n and n:
        full = scheme.evidence_from_answers(torch.cat(run.answers), key, alpha=decision_alpha, queries=run.queries)
        metrics.update(full.metrics)
        notes += [note for note in full.notes if note not in notes]
        details["fixed_test_p_value"] = full.p_value
        if not run.reads_scores and full.statistic_name != run.outcome.statistic_name:  # scores behind a labels run
            notes.append(
                f"the fixed test (--fixed) reads more from these answers ({full.statistic_name}): p = "
                f"{full.p_value:.3g} on the same answers; this sequential p-value counts {run.outcome.statistic_name}"
            )
    metrics.update(
        {
            "queried": last.queried,
            "key_size": n,
            "successes": last.successes,
            "counted": last.counted,
            "null_rate": q,
            "max_e_value": math.exp(min(run.max_log_e, 700.0)),
            "stopped": run.reason,
        }
    )
    notes += _sequential_notes(run, plan.early_share, alpha, decision_alpha)
    details.update(_sequential_details(run, plan, alpha))
    statistic_name = run.outcome.statistic_name
    if run.reads_scores:
        statistic_name += " (always-valid part; the fixed part ranks the suspect's scores)"
    evidence = scheme.evidence(
        key,
        statistic_name=statistic_name,
        statistic=last.successes,
        p_value=last.p_value,
        alpha=decision_alpha,
        queries=run.queries,
        exact=run.outcome.exact,
        metrics=metrics,
        details=details,
        notes=notes,
    )
    smallest = reachable_p_value(scheme, key, oracle.num_classes, early_share=plan.early_share)
    note_reachability(evidence, smallest, scheme.larger_key)
    return evidence


def _fixed_test_instead(scheme: Any, oracle: Oracle, key: Key, *, alpha: float, progress: bool | None) -> Evidence:
    """The fixed test on the whole key, for a scheme without per-query Bernoulli outcomes; the evidence says so."""
    evidence = scheme.verify(oracle, key, alpha=alpha, progress=progress)
    evidence.notes.append(
        f"scheme {scheme.name!r} has no per-query Bernoulli statistic: verified with the fixed "
        "test on the whole key (no sequential stopping)"
    )
    evidence.details.setdefault("sequential", {"used": False})
    return evidence


@dataclasses.dataclass
class _SequentialRun:
    """What asking the key batch by batch gave: the answers, the test's trajectory and why it stopped."""

    key_size: int
    null_rate: float
    answers: list[torch.Tensor]
    trajectory: list[SequentialState]
    outcome: Any
    reason: str
    max_log_e: float
    queries: int
    reads_scores: bool  # the fixed part is the scheme's test of the suspect's scores, not the binomial count


def _query_in_batches(
    scheme: Any, oracle: Oracle, key: Key, plan: SequentialPlan, alpha: float, progress: bool | None
) -> _SequentialRun:
    """Ask the key's inputs ``plan.batch_size`` at a time, updating the test after each batch, until it stops."""
    probe = scheme.bernoulli_outcomes(torch.empty(0, oracle.num_classes), key)
    q = float(probe.null_rate)
    x = scheme.verification_inputs(key)
    n = len(x)
    w = plan.early_share
    answers: list[torch.Tensor] = []
    trajectory: list[SequentialState] = []
    start_queries = oracle.queries
    reason, max_log_e, outcome = "exhausted", 0.0, probe
    reads_scores = False
    starts = range(0, n, plan.batch_size)
    for start in progress_bar(starts, total=len(starts), desc="verify (sequential)", enabled=progress, unit="batch"):
        answers.append(oracle.query(x[start : start + plan.batch_size]))
        asked = torch.cat(answers)
        if len(answers) == 1:  # the format is known from the first answers (an HTTP suspect's "auto" kind too)
            scored = oracle.output_kind != "labels" and bool((asked.count_nonzero(dim=1) > 1).any())
            reads_scores = scored and scheme.score_test_bounds(asked, key, n) is not None
        outcome = scheme.bernoulli_outcomes(asked, key)
        fixed = scheme.score_test_bounds(asked, key, n - len(asked)) if reads_scores else None
        state, can_still_reject = _update(outcome, n, q, w, alpha, max_log_e, fixed)
        max_log_e = state.max_log_e
        trajectory.append(state)
        stop = _stop_reason(state, n, w, alpha, can_still_reject)
        if stop is not None:
            reason = stop
            break
    if not trajectory:  # an empty key: no evidence at all
        trajectory.append(SequentialState(0, 0, 0, 0.0, 1.0, 1.0, 1.0))
    queries = oracle.queries - start_queries
    return _SequentialRun(n, q, answers, trajectory, outcome, reason, max_log_e, queries, reads_scores)


def _stop_reason(state: SequentialState, n: int, w: float, alpha: float, can_still_reject: bool) -> str | None:
    """Why the test stops after this batch (a key of :data:`STOP_REASONS`), or None to ask the next batch."""
    if state.p_early <= w * alpha:
        return "early"
    if state.queried == n:
        return "exhausted"
    if state.p_fixed_bound <= (1 - w) * alpha:
        return "curtailed"
    if not can_still_reject:
        return "futility"
    return None


def _sequential_notes(run: _SequentialRun, w: float, alpha: float, decision_alpha: float) -> list[str]:
    """The notes that explain the sequential test, where it stopped and why."""
    last, n = run.trajectory[-1], run.key_size
    saved = n - last.queried
    fixed = (
        "the fixed test's p-value of the suspect's scores (the scheme's --fixed test) on the whole key, bounded "
        "over every answer the unasked inputs could give"
        if run.reads_scores
        else "the exact binomial p-value of the whole key under the least favourable answers to the unasked inputs"
    )
    notes = [
        f"sequential test, valid at any stopping time: p = min(1, p_e/{w:g}, p_fixed/{1 - w:g}), where p_e = 1/max "
        f"e-value (mixture likelihood ratio over success rates in [{run.null_rate:.3g}, 1]; Ville's inequality) and "
        f"p_fixed = {fixed}",
        f"stopped after {last.queried} of {n} inputs ({saved} queries saved): {STOP_REASONS[run.reason]}",
    ]
    if alpha != decision_alpha:
        notes.append(
            f"the stopping rule aimed at {alpha:g} (α shared among combined keys), the decision uses "
            f"α = {decision_alpha:g}"
        )
    return notes


def _sequential_details(run: _SequentialRun, plan: SequentialPlan, alpha: float) -> dict[str, Any]:
    """The evidence's ``null_model`` and ``sequential`` details: the binomial null and the whole trajectory."""
    last, w = run.trajectory[-1], plan.early_share
    details: dict[str, Any] = {}
    if not run.reads_scores:  # with scores the p-value is not the binomial tail of these counts
        details["null_model"] = {
            "type": "binomial",
            "trials": last.counted,
            "rate": run.null_rate,
            "observed": last.successes,
            "statistic_name": run.outcome.statistic_name,
        }
    return {
        **details,
        "sequential": {
            "used": True,
            "fixed_part": "scores" if run.reads_scores else "binomial count",
            "batch_size": plan.batch_size,
            "early_share": w,
            "stop_alpha": alpha,
            "early_threshold": w * alpha,
            "fixed_threshold": (1 - w) * alpha,
            "stop_reason": run.reason,
            "queries_saved": run.key_size - last.queried,
            "trajectory": [s.to_dict() for s in run.trajectory],
        },
    }


def combined_p_value(
    max_log_e: float, successes: int, counted: int, remaining: int, null_rate: float, early_share: float
) -> tuple[float, float, float]:
    """The test's two parts and its p-value after some batches: ``p_e = 1/max E``, the fixed part's bound (every one
    of the ``remaining`` unasked inputs a counted failure) and ``min(1, p_e/w, p_f/(1 − w))``. Also what
    ``copycatch evidence check`` recomputes from a recorded trajectory."""
    p_early = min(1.0, math.exp(-max_log_e))
    p_fixed_bound = binomial_greater(successes, counted + remaining, null_rate)
    return p_early, p_fixed_bound, min(1.0, p_early / early_share, p_fixed_bound / (1 - early_share))


def _update(
    outcome: Any, n: int, q: float, w: float, alpha: float, max_log_e: float, fixed: tuple[float, float] | None
) -> tuple[SequentialState, bool]:
    """The state after a batch; ``fixed`` is the scores' fixed part (its bound and best case) or None for the count."""
    queried = len(outcome.outcomes)
    s, m = outcome.successes, outcome.counted
    remaining = n - queried
    max_log_e = max(max_log_e, log_mixture_e_value(s, m, q))
    p_early, p_fixed_bound, p_value = combined_p_value(max_log_e, s, m, remaining, q, w)
    # Each further success raises every likelihood ratio in the mixture, so all-successes is the best case.
    best_log_e = max(max_log_e, log_mixture_e_value(s + remaining, m + remaining, q))
    best_p_fixed = binomial_greater(s + remaining, m + remaining, q)
    if fixed is not None:
        p_fixed_bound, best_p_fixed = fixed
        p_value = min(1.0, p_early / w, p_fixed_bound / (1 - w))
    can_still_reject = best_log_e >= -math.log(w * alpha) or best_p_fixed <= (1 - w) * alpha
    return SequentialState(queried, s, m, max_log_e, p_early, p_fixed_bound, p_value), can_still_reject


def reachable_p_value(
    scheme: Any, key: Key, num_classes: int, *, early_share: float | None = None, queries: int | None = None
) -> float | None:
    """The smallest p-value verification can report with ``key`` and at most ``queries`` inputs asked.

    The fixed test (``early_share`` None, or a scheme without per-query outcomes): the scheme's
    :meth:`~copycatch.schemes.base.Scheme.smallest_p_value`. The sequential test with early share w: every asked
    item a counted success, so ``min(1, p_e/w, p_f/(1 − w))`` with p_e = 1/E of those k successes and p_f =
    ``P(Binomial(k + r, q) >= k)``, r the unasked inputs counted as failures (the fixed part's least favourable
    completion; ``q^n`` when the whole key is asked). When no success is possible at all, 1."""
    fixed = scheme.smallest_p_value(key, num_classes, queries)
    if early_share is None or not scheme.sequential or fixed is None or fixed >= 1.0:
        return fixed
    total = len(scheme.verification_inputs(key))
    if queries is None or queries >= total:
        k, remaining = scheme.key_items(key), 0
    else:
        sub, asked = scheme.restrict_key(key, queries)
        k, remaining = scheme.key_items(sub), total - len(asked)
    q = float(scheme.bernoulli_outcomes(torch.empty(0, num_classes), key).null_rate)
    p_early = math.exp(-log_mixture_e_value(k, k, q))
    return min(1.0, p_early / early_share, binomial_greater(k, k + remaining, q) / (1 - early_share))
