"""The outcome of a verification: statistic, exact p-value under a stated null, decision."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

STOLEN = "stolen"
NOT_STOLEN = "not stolen"


@dataclasses.dataclass
class Evidence:
    """What a scheme's ``verify`` returns.

    ``decision`` is True when the null hypothesis (the suspect is independent of
    the key) is rejected at ``alpha``. ``exact`` says whether ``p_value`` is exact
    (or conservative) under that null; schemes that cannot guarantee it say why in
    ``notes``.
    """

    scheme: str
    null_hypothesis: str
    statistic_name: str
    statistic: float
    p_value: float
    alpha: float
    queries: int
    key_digest: str
    exact: bool = True
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def decision(self) -> bool:
        return bool(self.p_value <= self.alpha)

    @property
    def verdict(self) -> str:
        return STOLEN if self.decision else NOT_STOLEN

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["decision"] = self.decision
        d["verdict"] = self.verdict
        return _finite(d)

    def summary(self) -> str:
        lines = [
            f"scheme:          {self.scheme}",
            f"null hypothesis: {self.null_hypothesis}",
            f"statistic:       {self.statistic_name} = {_fmt(self.statistic)}",
            f"p-value:         {self.p_value:.3g}{'' if self.exact else ' (approximate: see notes)'}",
            f"alpha:           {self.alpha:g}",
            f"verdict:         {self.verdict.upper()}",
            f"queries used:    {self.queries}",
            f"key digest:      {self.key_digest[:16]}…",
        ]
        for name, value in self.metrics.items():
            lines.append(f"{name + ':':<17}{_fmt(value)}")
        lines += [f"note:            {n}" for n in self.notes]
        return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _finite(obj: Any) -> Any:
    """JSON has no NaN/Inf; write them as strings rather than emit invalid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
