"""Combined evidence: one suspect verified against several keys (stacked protections).

An owner may stack protections (a training-time watermark plus DynaMarks at the API, or several trigger
sets). Each key gives its own p-value; the global null is "the suspect is independent of every key".

* **Holm** (default decision): Holm–Bonferroni adjusted p-values; valid under any dependence between the
  tests. The global null is rejected when the smallest adjusted p-value is ≤ α, and each key whose adjusted
  p-value is ≤ α is individually significant (family-wise error ≤ α).
* **Fisher**: ``-2 Σ log p ~ χ²(2k)``; more powerful when several keys each carry moderate evidence, valid
  when the p-values are independent under the null — true for keys whose secrets were drawn independently
  (separate embeddings), since each test's randomness is its key's secret. Conservative (still valid) for
  the discrete, conservative p-values our schemes produce.

Which one decides (:func:`choose_method`): the user's choice; by default Fisher when the keys are declared
independent (the parts of one key set that says so, such as ``copycatch protect`` writes), Holm otherwise (separate
key files, or a key set mixed with other keys: nothing vouches that their secrets were drawn independently; or a key
set that declares its parts dependent, such as ``protect`` with a fingerprint of the watermarked victim). The
combined evidence says in words which method applies and why (``reason``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ..core.errors import InvalidArgument
from ..core.evidence import NOT_STOLEN, STOLEN, Evidence
from ..core.stats import fisher_combine, holm_adjust

METHODS = ("holm", "fisher")

NULL_HYPOTHESIS = (
    "The suspect is independent of every key: for each key, that key's own null hypothesis holds "
    "(its secret was drawn independently of the suspect)."
)


@dataclasses.dataclass
class CombinedEvidence:
    """The verdict over several keys; ``method`` says which combination decides."""

    method: str
    alpha: float
    p_values: list[float]
    holm_adjusted: list[float]
    fisher_p_value: float
    keys: list[dict[str, Any]]
    null_hypothesis: str = NULL_HYPOTHESIS
    reason: str = ""  # which method decides and why, in words
    independent: bool = False  # the keys were declared independent (one key set that says so)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def p_value(self) -> float:
        return self.fisher_p_value if self.method == "fisher" else min(self.holm_adjusted)

    @property
    def decision(self) -> bool:
        return bool(self.p_value <= self.alpha)

    @property
    def verdict(self) -> str:
        return STOLEN if self.decision else NOT_STOLEN

    @property
    def queries(self) -> int:
        return sum(int(k["queries"]) for k in self.keys)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update({"p_value": self.p_value, "decision": self.decision, "verdict": self.verdict, "queries": self.queries})
        return d

    def summary(self) -> str:
        lines = [
            f"combined evidence over {len(self.keys)} keys ({self.method} decides):",
            f"  null hypothesis: {self.null_hypothesis}",
            f"  method:          {self.reason}",
        ]
        for k, adj in zip(self.keys, self.holm_adjusted):
            lines.append(
                f"  {k['scheme']:<20} key {k['key_digest'][:12]}…  p = {k['p_value']:.3g}  "
                f"Holm-adjusted {adj:.3g}  {'significant' if adj <= self.alpha else ''}".rstrip()
            )
        lines += [
            f"  Fisher combined p-value: {self.fisher_p_value:.3g}",
            f"  Holm global p-value:     {min(self.holm_adjusted):.3g}",
            f"  alpha:                   {self.alpha:g}",
            f"  verdict:                 {self.verdict.upper()}",
            f"  queries used:            {self.queries}",
        ]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def choose_method(method: str | None, independent: bool) -> tuple[str, str]:
    """The combination that decides and why, in words: ``method`` if given, else Fisher for keys declared
    independent and Holm otherwise."""
    if method is not None and method not in METHODS:
        raise InvalidArgument(f"combination method must be one of {', '.join(METHODS)}, got {method!r}")
    declared = (
        "the keys are the parts of one key set whose secrets were drawn independently, so under the null "
        "hypothesis their p-values are independent"
    )
    if method is None and independent:
        return "fisher", f"Fisher's method (the default here): {declared}"
    if method is None:
        return "holm", (
            "Holm's adjustment (the default here): the keys are not declared independent (separate key files, a key "
            "set with other keys, or a key set whose parts depend on each other, such as a fingerprint of the "
            "watermarked victim tested beside its watermark), and Holm's adjustment holds under any dependence "
            "between the tests"
        )
    if method == "fisher" and independent:
        return "fisher", f"Fisher's method, as asked; it is valid: {declared}"
    if method == "fisher":
        return "fisher", (
            "Fisher's method, as asked: valid only if the keys' secrets were drawn independently of each other, "
            "which these keys do not declare; Holm's adjustment holds under any dependence"
        )
    also = "; Fisher's method would be valid too, since the keys are declared independent" if independent else ""
    return "holm", f"Holm's adjustment, as asked: valid under any dependence between the tests{also}"


def combine_evidence(
    evidences: Sequence[Evidence],
    *,
    alpha: float | None = None,
    method: str | None = None,
    independent: bool = False,
) -> CombinedEvidence:
    """Combine per-key evidence about one suspect; ``alpha`` defaults to the evidences' common α, ``method`` (Holm
    or Fisher) to the one :func:`choose_method` picks for keys that are (or are not) declared ``independent``."""
    method, reason = choose_method(method, independent)
    if not evidences:
        raise InvalidArgument("no evidence to combine")
    if alpha is None:
        alphas = {e.alpha for e in evidences}
        if len(alphas) != 1:
            raise InvalidArgument(f"evidence at different alphas {sorted(alphas)}; give alpha")
        alpha = alphas.pop()
    if not 0.0 < alpha < 1.0:
        raise InvalidArgument(f"alpha must be in (0, 1), got alpha={alpha}")
    digests = [e.key_digest for e in evidences]
    if len(set(digests)) != len(digests):
        raise InvalidArgument("the same key appears twice; combining it with itself would double-count its evidence")
    ps = [float(e.p_value) for e in evidences]
    notes = []
    if any(not e.exact for e in evidences):
        notes.append("at least one per-key p-value is approximate (see its notes); so is the combination")
    keys = [
        {
            "scheme": e.scheme,
            "key_digest": e.key_digest,
            "p_value": e.p_value,
            "queries": e.queries,
            "verdict": e.verdict,
        }
        for e in evidences
    ]
    return CombinedEvidence(
        method,
        float(alpha),
        ps,
        holm_adjust(ps),
        fisher_combine(ps),
        keys,
        reason=reason,
        independent=bool(independent),
        notes=notes,
    )
