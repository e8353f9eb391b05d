"""Calibration: each scheme's statistic on reference innocent models, and the false-positive rate it implies.

A scheme's p-value is exact under its stated null. Calibration checks that null against models that are
innocent by construction and shows a court what innocent models look like next to the suspect:

* :func:`build_reference_models` trains innocent models with other seeds and architectures, on the
  owner's data, the thief's data and random subsets of both, and extracts surrogates from a *different*
  owner's model (innocent of our key, yet shaped by extraction the way a stolen model is);
* :func:`calibrate` verifies every reference against a key with the fixed test and records each
  ``Evidence.statistic`` and p-value: the empirical null distribution;
* :class:`Calibration` reports the empirical false-positive rate at each α with a Clopper–Pearson 95 %
  interval, warns when the key can never reach α (its smallest possible p-value is above α) or when the
  p-values look anti-conservative (the interval lies wholly above α), and gives a suspect's empirical
  p-value ``(1 + #{references with p ≤ the suspect's p}) / (N + 1)`` — valid when the suspect is exchangeable
  with the references, and never below 1/(N + 1), so it complements the exact p-value, it does not replace it.

The result is stored beside the key (:func:`calibration_path`: ``<key>.calibration.json``), bound to the
key's digest; ``copycatch verify`` picks it up and adds the comparison to the evidence.

Plan parameters (defaults): ``n_models`` (20), ``archs`` (mlp, cnn-small, lenet), ``epochs`` (3),
``subset`` (0.5: the data fraction of "subset" references), ``budget`` (None: the whole query half of the
thief's data, for extracted references), ``seed`` (1000, the first reference's seed; each gets its own).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..attacks.extraction.base import create_extraction_attack
from ..core.errors import CorruptFile, InvalidArgument
from ..core.evidence import Evidence, _finite
from ..core.key import Key
from ..core.params import Params
from ..core.runtime import progress as progress_bar
from ..data.base import Splits, TensorData
from ..models.base import Classifier, create_for, list_models
from ..models.train import TrainConfig, fit, train_model
from ..oracles.base import Oracle
from ..oracles.local import ModelOracle

FORMAT = "copycatch.calibration/1"
KINDS = ("owner-data", "thief-data", "subset", "extracted")
KIND_WORDS = {
    "owner-data": "trained on the owner's training data (another seed and/or architecture)",
    "thief-data": "trained with true labels on the thief's data",
    "subset": "trained on a random subset of the owner's and the thief's data",
    "extracted": "extracted (soft-label) from a different owner's model",
    "given": "an innocent model supplied by the user",
}


@dataclasses.dataclass(frozen=True)
class CalibrationPlan(Params):
    """Which reference innocent models :func:`build_reference_models` trains."""

    kind = "calibration"
    n_models: int = 20
    archs: tuple[str, ...] = ("mlp", "cnn-small", "lenet")
    epochs: int = 3
    subset: float = 0.5
    budget: int | None = None
    seed: int = 1000

    def validate(self) -> None:
        if self.n_models < 0:
            raise InvalidArgument(f"n_models must be >= 0, got {self.n_models}")
        if not self.archs:
            raise InvalidArgument("archs must name at least one architecture")
        if self.epochs < 1:
            raise InvalidArgument(f"epochs must be >= 1, got {self.epochs}")
        if not 0.0 < self.subset <= 1.0:
            raise InvalidArgument(f"subset must be in (0, 1], got {self.subset}")
        if self.budget is not None and self.budget < 1:
            raise InvalidArgument(f"budget must be >= 1, got {self.budget}")


@dataclasses.dataclass
class ReferenceModel:
    """One innocent reference: an oracle plus how it came to be."""

    name: str
    kind: str
    oracle: Oracle
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    model: Any = None  # the Classifier when we trained it (to save it)


def build_reference_models(
    splits: Splits, plan: CalibrationPlan | None = None, *, progress: bool | None = None, batch_size: int = 128
) -> list[ReferenceModel]:
    """Train ``plan.n_models`` innocent models, cycling through :data:`KINDS` and ``plan.archs``."""
    plan = plan or CalibrationPlan()
    unknown = [a for a in plan.archs if a not in list_models()]
    if unknown:
        raise InvalidArgument(f"unknown architecture {unknown[0]!r}; valid: {', '.join(list_models())}")
    refs: list[ReferenceModel] = []
    for i in progress_bar(
        range(plan.n_models), total=plan.n_models, desc="reference models", enabled=progress, unit="model"
    ):
        kind = KINDS[i % len(KINDS)]
        arch = plan.archs[(i // len(KINDS) + i) % len(plan.archs)]
        seed = plan.seed + i
        config = TrainConfig(epochs=plan.epochs, batch_size=batch_size, seed=seed)
        info: dict[str, Any] = {
            "kind": kind,
            "arch": arch,
            "seed": seed,
            "epochs": plan.epochs,
            "description": KIND_WORDS[kind],
        }
        model = _REFERENCE_BUILDERS[kind](splits, plan, i, arch, config, info)
        model.provenance.update({"calibration_reference": info})
        refs.append(
            ReferenceModel(f"ref{i:02d}-{kind}-{arch}", kind, ModelOracle(model, name=f"ref{i:02d}"), info, model)
        )
    return refs


def _trained(splits: Splits, plan: CalibrationPlan, i: int, arch: str, config: TrainConfig, info: dict) -> Classifier:
    on = "owner_train" if info["kind"] == "owner-data" else "attacker_pool"
    info["data"] = on
    return train_model(arch, splits, on=on, config=config, progress=False)


def _subset(splits: Splits, plan: CalibrationPlan, i: int, arch: str, config: TrainConfig, info: dict) -> Classifier:
    pool = TensorData.concat([splits.owner_train, splits.attacker_pool])
    g = torch.Generator().manual_seed(config.seed)
    keep = max(1, round(plan.subset * len(pool)))
    data = pool.subset(torch.randperm(len(pool), generator=g)[:keep])
    model = create_for(arch, splits, seed=config.seed)
    fit(model, data, config, progress=False, desc=f"train {arch}")
    info["data"] = f"random {plan.subset:g} of owner_train ∪ attacker_pool ({keep} examples)"
    return model


def _extracted(splits: Splits, plan: CalibrationPlan, i: int, arch: str, config: TrainConfig, info: dict) -> Classifier:
    # Another owner trains on one half of the thief's data; a thief steals that model with the other half.
    pool = splits.attacker_pool
    half_a, half_b = pool.subset(slice(0, None, 2)), pool.subset(slice(1, None, 2))
    other_arch = plan.archs[(i + 1) % len(plan.archs)]
    other = create_for(other_arch, splits, seed=config.seed + 50_000)
    fit(other, half_a, config, progress=False, desc=f"other owner {other_arch}")
    surrogate = create_for(arch, splits, seed=config.seed)
    budget = min(plan.budget or len(half_b), len(half_b))
    attack = create_extraction_attack("soft-label", budget=budget)
    attack.run(ModelOracle(other), TensorData(half_b.x, half_b.y), surrogate, train=config, progress=False)
    info.update({"other_owner_arch": other_arch, "extraction": "soft-label", "budget": budget})
    return surrogate


_REFERENCE_BUILDERS = {"owner-data": _trained, "thief-data": _trained, "subset": _subset, "extracted": _extracted}


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided confidence interval for a binomial proportion."""
    from scipy import stats as _st  # imported when used: 45 MB of resident memory

    if n == 0:
        return 0.0, 1.0
    ci = _st.binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


@dataclasses.dataclass
class Calibration:
    """The empirical null of one key: every reference's statistic and p-value."""

    key_digest: str
    scheme: str
    statistic_name: str
    references: list[dict[str, Any]]
    alphas: list[float]
    min_p_value: float | None = None
    created: str = ""
    package_version: str = __version__
    notes: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self.created = self.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

    @property
    def n(self) -> int:
        return len(self.references)

    @property
    def p_values(self) -> list[float]:
        return [float(r["p_value"]) for r in self.references]

    @property
    def statistics(self) -> list[float]:
        return [float(r["statistic"]) for r in self.references]

    def false_positive_rate(self, alpha: float) -> dict[str, Any]:
        k = sum(p <= alpha for p in self.p_values)
        lo, hi = clopper_pearson(k, self.n)
        return {
            "alpha": alpha,
            "false_positives": k,
            "n": self.n,
            "rate": k / self.n if self.n else float("nan"),
            "ci95": [lo, hi],
            "consistent_with_alpha": lo <= alpha,
        }

    def empirical_p_value(self, p_value: float) -> float:
        """Rank of the suspect's p-value among the references' (smaller is more extreme), with the +1 correction."""
        return (1 + sum(p <= p_value for p in self.p_values)) / (self.n + 1)

    def warnings(self) -> list[str]:
        out = []
        for alpha in self.alphas:
            if self.min_p_value is not None and self.min_p_value > alpha:
                out.append(
                    f"the key is too small to ever reach alpha={alpha:g}: its smallest possible p-value is "
                    f"{self.min_p_value:.3g}; use a larger key"
                )
            fpr = self.false_positive_rate(alpha)
            if self.n and not fpr["consistent_with_alpha"]:
                out.append(
                    f"{fpr['false_positives']} of {self.n} innocent references are called stolen at "
                    f"alpha={alpha:g} (95% CI {fpr['ci95'][0]:.3g}–{fpr['ci95'][1]:.3g}, above alpha): the "
                    "scheme's null looks anti-conservative on these models"
                )
        return out

    def summary(self) -> str:
        lines = [f"calibration of key {self.key_digest[:16]}… ({self.scheme}) on {self.n} innocent reference models"]
        kinds: dict[str, int] = {}
        for r in self.references:
            kinds[r.get("kind", "?")] = kinds.get(r.get("kind", "?"), 0) + 1
        lines.append("  references: " + ", ".join(f"{v} {k}" for k, v in kinds.items()))
        if self.references:
            stats = self.statistics
            lines.append(
                f"  {self.statistic_name}: min {min(stats):.4g}, median {_median(stats):.4g}, "
                f"max {max(stats):.4g}; smallest p-value {min(self.p_values):.3g}"
            )
        for alpha in self.alphas:
            f = self.false_positive_rate(alpha)
            lines.append(
                f"  alpha={alpha:g}: {f['false_positives']}/{f['n']} called stolen, empirical FPR "
                f"{f['rate']:.3g} (95% CI {f['ci95'][0]:.3g}–{f['ci95'][1]:.3g})"
            )
        if self.min_p_value is not None:
            lines.append(f"  smallest p-value this key can give: {self.min_p_value:.3g}")
        lines.append(f"  empirical p-values from {self.n} references cannot go below {1 / (self.n + 1):.3g}")
        lines += [f"  WARNING: {w}" for w in self.warnings()]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["format"] = FORMAT
        d["false_positive_rates"] = [self.false_positive_rate(a) for a in self.alphas]
        d["warnings"] = self.warnings()
        return d

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_text(json.dumps(_finite(self.to_dict()), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, key: Key | None = None) -> Calibration:
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InvalidArgument(f"{path}: no such calibration file") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CorruptFile(f"{path}: calibration file is not valid JSON") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise CorruptFile(f"{path}: not a copycatch calibration file (expected format {FORMAT})")
        if key is not None and d.get("key_digest") != key.digest:
            raise CorruptFile(
                f"{path}: calibration was made for key {str(d.get('key_digest'))[:12]}…, not for "
                f"{key.digest[:12]}…; run copycatch calibrate again"
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in d.items() if k in fields})
        except TypeError as exc:
            raise CorruptFile(f"{path}: calibration file lacks a field ({exc})") from None


def calibration_path(key_path: str | os.PathLike, part: int | None = None) -> Path:
    """Where the calibration of the key at ``key_path`` lives: beside it (for ``part`` i of a key set,
    ``<key set>.part<i>.calibration.json``)."""
    key_path = Path(key_path)
    middle = "" if part is None else f".part{int(part)}"
    return key_path.with_name(f"{key_path.name}{middle}.calibration.json")


def calibrate(
    key: Key,
    references: Iterable[ReferenceModel],
    *,
    alphas: Sequence[float] = (1e-3, 0.05),
    progress: bool | None = None,
) -> Calibration:
    """Verify every reference against ``key`` (fixed test, whole key) and collect the empirical null."""
    from ..schemes import scheme_for_key

    alphas = sorted({float(a) for a in alphas})
    for a in alphas:
        if not 0.0 < a < 1.0:
            raise InvalidArgument(f"alpha must be in (0, 1), got {a}")
    scheme = scheme_for_key(key)
    references = list(references)
    rows: list[dict[str, Any]] = []
    statistic_name = ""
    for ref in progress_bar(
        references, total=len(references), desc=f"calibrate {key.scheme}", enabled=progress, unit="model"
    ):
        evidence: Evidence = scheme.verify(ref.oracle, key, alpha=alphas[0], progress=False)
        statistic_name = evidence.statistic_name
        rows.append(
            {
                "name": ref.name,
                "kind": ref.kind,
                **{k: v for k, v in ref.info.items() if k != "kind"},
                "statistic": float(evidence.statistic),
                "p_value": float(evidence.p_value),
                "queries": evidence.queries,
                "exact": evidence.exact,
            }
        )
    num_classes = key.meta.get("num_classes") or (references[0].oracle.num_classes if references else None)
    min_p = scheme.smallest_p_value(key, int(num_classes)) if num_classes else None
    notes = []
    if min_p is None:
        notes.append(f"the smallest p-value the key of scheme {key.scheme!r} can give is not known")
    return Calibration(key.digest, key.scheme, statistic_name or "statistic", rows, list(alphas), min_p, notes=notes)


def _median(values: Sequence[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
