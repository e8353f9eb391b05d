"""Conferrable adversarial examples: a fingerprint that transfers from a model to its surrogates only.

Paper: N. Lukas, Y. Zhang and F. Kerschbaum, "Deep Neural Network Fingerprinting by Conferrable Adversarial
Examples", ICLR 2021 (arXiv 1912.00888): Sec. 4 (conferrability and the ensemble method), Sec. 5 (verification).

Idea. An adversarial example of the owner's model M whose target label is also what models *derived from M* answer,
but not what independently trained models answer, is "conferrable". A suspect that answers the target labels of
many such examples inherited M's decision boundary. Nothing is trained into M: ``embed`` leaves its weights
untouched and writes a key.

Ensembles (all trained here, on owner-side data only; ``ensemble_data`` owner_train inputs, ``ensemble_epochs``):
    surrogates S — ``n_surrogates`` models distilled from M's probabilities (a soft-label extraction of M with the
        owner's own inputs);
    references R — ``n_references`` models trained with the true labels (other seeds);
    selection references — ``n_select`` more, never used in the optimisation, that pick the examples;
    calibration references — ``n_calibration`` more, used for nothing but the null distribution.
Every role cycles through the same architectures ``archs`` ("victim" is M's own, repeats dropped). The references
must cover the surrogates' architectures: examples optimised to move surrogates of an architecture move independent
models of it too, and only references of that architecture can push them away and show the null how often such
models agree (with same-architecture references only, independent MLPs agreed four times as often as the null
allowed; benchmarks/README.md, "Fingerprints beside watermarks"). The null covers these architectures; a suspect
of an architecture far from all of them is outside what the calibration measured.

Generation. ``candidates`` inputs of owner_holdout (else test) that M classifies correctly each get a secret target
class t ≠ their label. A perturbation in the L∞ ball of radius ``eps`` is optimised (Adam, ``steps`` steps) to
minimise CE(M(x'), t) + CE(S̄(x'), t) − ``reference_weight`` · log(1 − R̄(x')_t), where S̄ and R̄ average the
ensembles' probabilities: M and its surrogates move to t, the references stay away from it. The paper's
conferrability score S̄(x')_t · (1 − max_R R(x')_t) is then measured with the selection references, and the
``n_fingerprints`` highest-scoring examples that M labels t are kept, quantised to 8 bits (what an image API
receives).

Test. The statistic is the number of fingerprints the suspect labels with their target. Null hypothesis: the
suspect was trained independently of the owner's model (it is like the calibration references of one of their
architectures). The calibration references' target agreement, measured at embedding time and stored in the key
with their architectures, fits one beta-binomial distribution per architecture (method of moments, the
over-dispersion floored at ``min_dispersion`` because a handful of references cannot rule out models that agree
more often than they did); the p-value is the largest of their upper tails at the suspect's count, since the
suspect's architecture is unknown and models of the victim's own agree most. It is calibrated, not exact: it is
valid to the extent that innocent models are like the calibration references, which is why they are never used to
generate or select, and why the benchmark verifies other innocents against it.

Parameters (defaults):
    n_fingerprints (100): examples in the key, one query each.
    candidates (2400): inputs optimised, of which the best ``n_fingerprints`` are kept.
    eps (0.1): L∞ radius of the perturbation (inputs in [0, 1]).
    steps (60), lr (0.01): Adam on the perturbation.
    reference_weight (3.0): weight of the references' term of the loss.
    n_surrogates (4), n_references (4), n_select (8), n_calibration (8): ensemble sizes (24 models in all).
    archs (victim, lenet, mlp, cnn): architectures every ensemble cycles through ("victim": M's own).
    ensemble_epochs (5), ensemble_data (10000): training of every ensemble model. Below the owner's own epochs the
        null runs small for models of M's architecture (benchmarks/README.md, "What remains").
    min_dispersion (0.05): floor of the beta-binomial's intra-class correlation ρ.

Measured: benchmarks/README.md, "Fingerprints beside watermarks" (ROC AUC between ten surrogates and 20 innocents,
p-values per surrogate, generation time).

Deviations: the paper's ensemble method optimises an untargeted example with the loss weights λ1-λ3; here the
target is a secret random class per input and the loss has the same three parts (source on t, surrogates on t,
references off t). The paper decides with a threshold on the fingerprint retention; here a calibrated p-value.
The ensembles are CPU-sized (the paper uses 20+ CIFAR-10 models of each kind).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..core.errors import InvalidArgument
from ..core.evidence import Evidence
from ..core.key import Key
from ..core.params import Params as BaseParams
from ..core.runtime import progress as progress_bar
from ..data.base import Splits, TensorData, to_float
from ..models.base import Classifier, create_for
from ..models.io import weights_digest
from ..models.optim import Adam
from ..models.train import TrainConfig, fit, predict_logits
from .base import Embedding, Scheme, register_scheme


def beta_binomial_upper_tail(k: int, n: int, mean: float, rho: float) -> float:
    """P(X >= k) for X ~ BetaBinomial(n, a, b) with mean ``mean`` and intra-class correlation ``rho``
    (a + b = 1/rho − 1), summed in log space."""
    from scipy.special import betaln, gammaln

    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    mean = min(max(mean, 1e-9), 1 - 1e-9)
    total = 1.0 / rho - 1.0
    a, b = mean * total, (1 - mean) * total
    js = torch.arange(k, n + 1, dtype=torch.float64).numpy()
    log_terms = gammaln(n + 1) - gammaln(js + 1) - gammaln(n - js + 1) + betaln(js + a, n - js + b) - betaln(a, b)
    peak = log_terms.max()
    return float(min(1.0, math.exp(peak) * float(torch.tensor(log_terms - peak).exp().sum())))


def fit_null(agreements: torch.Tensor, n: int, min_dispersion: float) -> tuple[float, float]:
    """Mean and intra-class correlation of a beta-binomial fitted by moments to the references' agreement counts
    out of ``n``; the mean is add-one smoothed (no reference agreeing never makes agreement impossible)."""
    counts = agreements.double()
    mean = float((counts.sum() + 1) / (len(counts) * n + 2))
    rates = counts / n
    observed = float(rates.var(unbiased=True)) if len(rates) > 1 else 0.0
    # Var(rate) = mean(1 − mean) (1 + (n − 1) ρ) / n  →  ρ
    rho = (observed * n / max(mean * (1 - mean), 1e-12) - 1) / max(n - 1, 1)
    return mean, float(min(max(rho, min_dispersion), 0.5))


def _soft_targets(model: Classifier, data: TensorData) -> TensorData:
    return TensorData(data.stored, predict_logits(model, data.stored).softmax(1))


@register_scheme
class ConferrableFingerprint(Scheme):
    """Conferrable adversarial examples (Lukas et al., ICLR 2021): a fingerprint that transfers to surrogates only.

    The model is not changed; the key holds the examples, their target labels and the calibration references'
    agreement."""

    name = "cae"
    kind = "fingerprint"
    needs = "labels"
    pretrain = True
    null_hypothesis = (
        "the suspect was trained independently of the owner's model: its agreement with the fingerprints' target "
        "labels follows the beta-binomial fitted to the held-out calibration reference models of one of their "
        "architectures (the p-value is the largest over the architectures)"
    )
    larger_key = "more fingerprints (n_fingerprints) or more calibration references"
    per_item = ("x", "target")
    tiny_params: ClassVar[dict[str, Any]] = {
        "n_fingerprints": 40,
        "candidates": 160,
        "steps": 30,
        "eps": 0.2,
        "reference_weight": 3.0,
        "archs": ["mlp"],
        "n_surrogates": 2,
        "n_references": 2,
        "n_select": 2,
        "n_calibration": 3,
        "ensemble_epochs": 6,
    }
    # ten noisy classes: with four clean ones every adversarial example of the toy MLP transfers to every model
    tiny_data: ClassVar[dict[str, Any]] = {"num_classes": 10, "noise": 0.6}

    @dataclasses.dataclass(frozen=True)
    class Params(BaseParams):
        kind = "CAE fingerprint"
        n_fingerprints: int = 100
        candidates: int = 2400
        eps: float = 0.1
        steps: int = 60
        lr: float = 0.01
        reference_weight: float = 3.0
        n_surrogates: int = 4
        n_references: int = 4
        n_select: int = 8
        n_calibration: int = 8
        archs: tuple[str, ...] = ("victim", "lenet", "mlp", "cnn")
        ensemble_epochs: int = 5
        ensemble_data: int = 10_000
        min_dispersion: float = 0.05

        def validate(self) -> None:
            for name in ("n_fingerprints", "steps", "n_surrogates", "n_references", "n_select", "ensemble_epochs"):
                if getattr(self, name) < 1:
                    raise InvalidArgument(f"{name} must be >= 1, got {name}={getattr(self, name)}")
            if self.candidates < self.n_fingerprints:
                raise InvalidArgument(
                    f"candidates must be >= n_fingerprints, got candidates={self.candidates}, "
                    f"n_fingerprints={self.n_fingerprints}"
                )
            if self.n_calibration < 2:
                raise InvalidArgument(f"n_calibration must be >= 2 (a spread is needed), got {self.n_calibration}")
            if not 0.0 < self.eps <= 1.0:
                raise InvalidArgument(f"need 0 < eps <= 1, got eps={self.eps}")
            if self.lr <= 0 or self.reference_weight < 0:
                raise InvalidArgument(f"need lr > 0 and reference_weight >= 0, got {self.lr}, {self.reference_weight}")
            if not self.archs:
                raise InvalidArgument("archs must name at least one architecture")
            if self.ensemble_data < 10:
                raise InvalidArgument(f"ensemble_data must be >= 10, got {self.ensemble_data}")
            if not 0.0 < self.min_dispersion < 0.5:
                raise InvalidArgument(f"need 0 < min_dispersion < 0.5, got min_dispersion={self.min_dispersion}")

    # -- embed -----------------------------------------------------------------------------------------------------
    def embed(
        self, model: Classifier, splits: Splits, *, train: TrainConfig | None = None, progress: bool | None = None
    ) -> Embedding:
        """Train the ensembles, generate and select the examples, measure the calibration references; ``model``
        (already trained) is returned untouched."""
        p = self.params
        train = train or TrainConfig()
        before = weights_digest(model)
        if splits.num_classes < 2:
            raise InvalidArgument("conferrable fingerprints need at least 2 classes")
        model.eval()
        ensembles = self._ensembles(model, splits, train, progress)
        x0, y0 = self._candidates(model, splits, train.seed)
        generator = self.key_generator(train.seed, 27_182_818)
        target = (y0 + torch.randint(1, splits.num_classes, (len(y0),), generator=generator)) % splits.num_classes
        x = self._optimise(model, ensembles["surrogate"], ensembles["reference"], x0, target, progress)
        x = (x * 255).round().to(torch.uint8)  # what an image API receives; selection sees the same bytes
        chosen, scores = self._select(model, ensembles["surrogate"], ensembles["select"], x, target)
        x, target = x[chosen], target[chosen]
        agreements = torch.tensor([self._agree(m, x, target) for m in ensembles["calibration"]], dtype=torch.long)
        surrogate_agree = [self._agree(m, x, target) / len(x) for m in ensembles["surrogate"]]
        if weights_digest(model) != before:
            raise RuntimeError("CAE changed the model's weights; this is a bug")
        tensors = {"x": x, "target": target.long(), "calibration_agreements": agreements}
        meta = self.key_meta(splits, model, calibration_archs=[m.arch for m in ensembles["calibration"]])
        key = Key(scheme=self.name, params=p.to_dict(), tensors=tensors, meta=meta)
        model.provenance.update({"scheme": self.name, "key_digest": key.digest})
        info = {
            "weights_untouched": True,
            "fingerprints": len(x),
            "mean_conferrability": float(scores.mean()),
            "surrogate_agreement": surrogate_agree,
            "calibration_agreement": (agreements.double() / len(x)).tolist(),
        }
        return Embedding(model, key, info)

    def _ensembles(
        self, model: Classifier, splits: Splits, train: TrainConfig, progress: bool | None
    ) -> dict[str, list[Classifier]]:
        """Surrogates distilled from ``model`` and references trained on the true labels, on owner_train; every
        role cycles through the architectures ``archs``."""
        p = self.params
        archs = list(dict.fromkeys(model.arch if arch == "victim" else arch for arch in p.archs))
        pick = torch.randperm(len(splits.owner_train), generator=torch.Generator().manual_seed(train.seed + 7))
        data = splits.owner_train.subset(pick[: p.ensemble_data])
        soft = _soft_targets(model, data)
        plan = [("surrogate", i) for i in range(p.n_surrogates)]
        plan += [(role, i) for role, n in (("reference", p.n_references), ("select", p.n_select)) for i in range(n)]
        plan += [("calibration", i) for i in range(p.n_calibration)]
        out: dict[str, list[Classifier]] = {"surrogate": [], "reference": [], "select": [], "calibration": []}
        for number, (role, i) in enumerate(progress_bar(plan, desc="CAE ensembles", enabled=progress, unit="model")):
            arch = archs[i % len(archs)]
            seed = train.seed + 1_000 + 97 * number
            member = create_for(arch, splits, seed=seed)
            config = dataclasses.replace(train, epochs=p.ensemble_epochs, seed=seed, patience=0)
            fit(member, soft if role == "surrogate" else data, config, progress=False, desc=f"CAE {role} {arch}")
            out[role].append(member.eval())
        return out

    def _candidates(self, model: Classifier, splits: Splits, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``candidates`` owner_holdout inputs (test when the holdout is too small) that ``model`` gets right."""
        p = self.params
        pool = splits.owner_holdout if len(splits.owner_holdout) >= p.candidates else splits.test
        order = torch.randperm(len(pool), generator=self.key_generator(seed, 11))
        data = pool.subset(order)
        right = predict_logits(model, data.stored).argmax(1) == data.y
        data = data.where(right)
        if len(data) < p.candidates:
            raise InvalidArgument(
                f"CAE needs {p.candidates} correctly classified owner_holdout (or test) inputs, found {len(data)}; "
                "lower candidates"
            )
        part = data.subset(torch.arange(p.candidates))
        return part.x, part.y.long()

    def _optimise(
        self,
        model: Classifier,
        surrogates: list[Classifier],
        references: list[Classifier],
        x0: torch.Tensor,
        target: torch.Tensor,
        progress: bool | None,
    ) -> torch.Tensor:
        p = self.params
        delta = torch.zeros_like(x0, requires_grad=True)
        optimiser = Adam([delta], lr=p.lr)
        for _ in progress_bar(range(p.steps), desc="CAE examples", enabled=progress, unit="step"):
            x = (x0 + delta).clamp(0, 1)
            source = F.cross_entropy(model(x), target)
            surrogate = F.nll_loss(torch.stack([m(x).softmax(1) for m in surrogates]).mean(0).log(), target)
            reference_t = torch.stack([m(x).softmax(1) for m in references]).mean(0).gather(1, target[:, None])
            loss = source + surrogate - p.reference_weight * (1 - reference_t).clamp_min(1e-6).log().mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                delta.clamp_(-p.eps, p.eps)
        return (x0 + delta.detach()).clamp(0, 1)

    def _select(
        self,
        model: Classifier,
        surrogates: list[Classifier],
        selectors: list[Classifier],
        x: torch.Tensor,
        target: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``n_fingerprints`` examples with the highest conferrability S̄(x)_t · (1 − max_R R(x)_t) on the
        selection references, among those the owner's model labels t."""
        rows = torch.arange(len(x))
        with torch.no_grad():
            hits = predict_logits(model, x).argmax(1) == target
            surrogate_t = torch.stack([predict_logits(m, x).softmax(1)[rows, target] for m in surrogates]).mean(0)
            selector_t = torch.stack([predict_logits(m, x).softmax(1)[rows, target] for m in selectors]).amax(0)
        score = surrogate_t * (1 - selector_t)
        score = torch.where(hits, score, torch.full_like(score, -1.0))
        if int(hits.sum()) < self.params.n_fingerprints:
            raise InvalidArgument(
                f"only {int(hits.sum())} of {len(x)} candidates became adversarial examples of the model with their "
                f"target; raise eps or steps, or candidates (n_fingerprints={self.params.n_fingerprints})"
            )
        order = score.argsort(descending=True, stable=True)[: self.params.n_fingerprints]
        return order.sort().values, score[order]

    @staticmethod
    def _agree(model: Classifier, x: torch.Tensor, target: torch.Tensor) -> int:
        return int((predict_logits(model, x).argmax(1) == target).sum())

    # -- verify ----------------------------------------------------------------------------------------------------
    def verification_inputs(self, key: Key) -> torch.Tensor:
        return to_float(key["x"])

    def evidence_from_answers(self, answers: torch.Tensor, key: Key, *, alpha: float, queries: int) -> Evidence:
        target = key["target"]
        agree = int((answers.argmax(1) == target).sum())
        n = len(target)
        p_value, arch, mean, rho = self._null_of_most_agreeing(key, agree)
        return self.evidence(
            key,
            statistic_name="fingerprints answered with their target label",
            statistic=float(agree),
            p_value=p_value,
            alpha=alpha,
            queries=queries,
            exact=False,
            metrics={
                "retention": agree / max(n, 1),
                "null_mean": mean,
                "null_rho": rho,
                "null_arch": arch,
                "calibration_max": float(key["calibration_agreements"].max()) / self._items_measured(key),
            },
            notes=[
                "calibrated p-value: the largest upper tail of beta-binomials fitted, one per architecture, to the "
                f"agreement of {len(key['calibration_agreements'])} held-out reference models (never used to generate "
                f"or select); the largest here is that of {arch}",
                self._coverage_note(key),
            ],
        )

    @staticmethod
    def _calibration_archs(key: Key) -> list[str]:
        """Each calibration reference's architecture (a key made before the references cycled through ``archs``
        has no list: its references were all of the victim's architecture)."""
        counts = key["calibration_agreements"]
        archs = key.meta.get("calibration_archs") or [key.meta.get("arch", "unknown")] * len(counts)
        if len(archs) != len(counts):
            raise InvalidArgument(f"the key lists {len(archs)} calibration architectures for {len(counts)} agreements")
        return archs

    @staticmethod
    def _coverage_note(key: Key) -> str:
        """Which architectures the null was measured on."""
        archs = sorted(set(ConferrableFingerprint._calibration_archs(key)))
        return (
            f"the calibration references are of the architectures {', '.join(archs)}: an independent model of "
            "another architecture can agree more often than they did, so for such a suspect the p-value can be too "
            "small"
        )

    @staticmethod
    def _items_measured(key: Key) -> int:
        """The number of fingerprints the calibration agreements were counted on (the whole key's)."""
        return int(key.params.get("n_fingerprints", len(key["target"])))

    def attainable_p_value(self, key: Key, num_classes: int) -> float | None:
        return self._null_of_most_agreeing(key, len(key["target"]))[0]

    def _null_of_most_agreeing(self, key: Key, agree: int) -> tuple[float, str, float, float]:
        """The p-value of ``agree`` under the beta-binomial of the calibration architecture where it is least
        surprising, that architecture, and the fit's mean and ρ.

        The suspect's architecture is unknown, so the null is composite — an independent model of any calibration
        architecture — and its p-value is the largest of the per-architecture tails. One fit over all references
        would mix architectures that agree rarely (a wider CNN, 0.03-0.06) with the victim's own (0.11-0.25) and
        accuse innocents of the victim's architecture (benchmarks/README.md, "Fingerprints beside watermarks").
        A key without ``calibration_archs`` (made when every reference had the victim's architecture) has one."""
        counts, n = key["calibration_agreements"], self._items_measured(key)
        archs = self._calibration_archs(key)
        fits = []
        for arch in dict.fromkeys(archs):
            mean, rho = fit_null(counts[torch.tensor([a == arch for a in archs])], n, self.params.min_dispersion)
            fits.append((beta_binomial_upper_tail(agree, len(key["target"]), mean, rho), arch, mean, rho))
        return max(fits, key=lambda fit: fit[0])
