"""Dataset inference: a fingerprint from the owner's private training data, read with label-only queries.

Paper: P. Maini, M. Yaghini and N. Papernot, "Dataset Inference: Ownership Resolution in Machine Learning",
ICLR 2021 (arXiv 2104.10706): Sec. 4 (the black-box "blind walk"), Sec. 5 (the confidence regressor and the
hypothesis test).

Idea. A model is farther from its decision boundary at the points it was trained on than at unseen points of the
same distribution, and a model derived from it (a surrogate fitted to its answers, a fine-tuned or pruned copy)
inherits that boundary. Nothing is trained into the model: ``embed`` leaves its weights untouched and writes a key.

Blind walk (label-only). For an input x with true label y and a direction δ (uniform, Gaussian or Laplace noise,
scaled to a root-mean-square of 1 per input value), the suspect is asked for the labels of clamp(x + ρ·δ, 0, 1) at
``radii`` geometrically spaced noise levels ρ from ``min_radius`` to ``max_radius``; the walk's distance is the
share of levels, from the smallest up, that the suspect survives with the label y (0 when it already misclassifies
x). ``directions`` directions cycle through the three noise kinds; an input's features are whether x itself is
classified y and the mean distance per noise kind. Every input costs 1 + directions × radii queries.

Confidence regressor. On the owner's own model, the blind-walk features of ``n_fit`` private inputs (owner_train)
and ``n_fit`` public ones (owner_holdout, else test: the same distribution, never trained on) fit a logistic
regression (private = 1). Its weights, and a second, disjoint set of ``n_test`` private and ``n_test`` public
inputs, are the key.

Test. The suspect's walk over the key's test inputs gives each a regressor score; the statistic is the private
inputs' mean score minus the public inputs' mean score. Null hypothesis: the suspect's answers do not depend on
which of the key's inputs were in the owner's training data (it was neither trained on the owner's private data nor
derived from a model that was). Private and public inputs are a random split of the same data, so under the null
the scores are exchangeable between the two groups, and the p-value is a one-sided permutation test: the share of
``permutations`` random relabellings (plus the observed one) whose statistic reaches the observed one. It is
exact (valid at every α) and its smallest value is 1 / (permutations + 1); when the two groups can be split in
at most ``permutations`` ways (a small query budget), every split is enumerated instead.

Parameters (defaults):
    n_fit (500): private and public inputs each that fit the regressor on the owner's model.
    n_test (500): private and public inputs each that the suspect is asked about (disjoint from ``n_fit``'s):
        2 × 500 × (1 + 6 × 8) = 49,000 queries with the defaults.
    directions (6): noise directions per input, cycling through uniform, Gaussian and Laplace noise.
    radii (8): noise levels per direction, geometric from ``min_radius`` to ``max_radius``.
    min_radius (0.05), max_radius (1.5): root-mean-square noise per input value (inputs in [0, 1]).
    permutations (99999): random relabellings of the permutation test (smallest p-value 1e-5).

Power. The test can only see what the owner's model memorised. Measured on Fashion-MNIST with 10,000 owner images
(cnn-small, 10 epochs: 91-92 % accuracy on its training inputs, 87-88 % on unseen ones; benchmarks/README.md,
"Dataset inference"): with 1,000 + 1,000 test inputs (98,000 label queries) one seed proved the owner's model and its
soft-label surrogate (p 3.5e-4, 6.9e-4) and the other did not (p 0.16, 0.49); 500 + 500 did not prove the owner's
model (p 0.05). No innocent came below p 0.016. It is a fingerprint for models that overfit their private data, not a
replacement for a watermark on a model that generalises well.

Deviations: the paper walks with a fixed step until the label changes and records the distance; here the walk
asks a fixed geometric grid of levels in one batch (a fixed, known query cost; the share of levels survived is the
distance on a log scale). The paper's regressor is a small neural network and its test a one-sided t-test; here a
logistic regression (a dozen features, a few hundred inputs) and a permutation test, whose p-value is exact where
the t-test's is approximate (the t-test's p-value is reported beside it as ``paper_t_test_p``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import warnings
from typing import Any, ClassVar

import numpy as np
import torch

from ..core.errors import InvalidArgument
from ..core.evidence import Evidence
from ..core.key import Key
from ..core.params import Params as BaseParams
from ..data.base import Splits, to_float
from ..models.base import Classifier
from ..models.io import weights_digest
from ..models.train import TrainConfig, predict_logits
from .base import Embedding, Scheme, register_scheme

NOISE_KINDS = ("uniform", "gaussian", "laplace")
PERMUTATION_CHUNK = 2000
RIDGE = 1e-2  # the regressor's L2 penalty (on standardised features)


def walk_directions(count: int, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """``count`` noise directions of ``shape``, cycling through uniform, Gaussian and Laplace noise, each scaled to
    a root-mean-square of 1 per value."""
    out = []
    for i in range(count):
        kind = NOISE_KINDS[i % len(NOISE_KINDS)]
        if kind == "uniform":
            d = torch.rand(shape, generator=generator) * 2 - 1
        elif kind == "gaussian":
            d = torch.randn(shape, generator=generator)
        else:  # Laplace: the difference of two unit exponentials
            u = torch.rand((2, *shape), generator=generator).clamp_min(1e-12)
            d = torch.log(u[0]) - torch.log(u[1])
        out.append(d / d.pow(2).mean().sqrt())
    return torch.stack(out).float()


def walk_inputs(x: torch.Tensor, directions: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """The blind walk's queries: per input, the input itself, then every direction at every level, in that order
    (N · (1 + D·S) rows)."""
    steps = (levels.view(1, -1, *([1] * (directions.dim() - 1))) * directions.unsqueeze(1)).flatten(0, 1)  # D·S
    walked = (x.unsqueeze(1) + steps.unsqueeze(0)).clamp(0, 1)  # N × D·S
    return torch.cat([x.unsqueeze(1), walked], dim=1).flatten(0, 1)


def walk_distances(labels: torch.Tensor, y: torch.Tensor, directions: int, levels: int) -> torch.Tensor:
    """Per input and direction, the share of levels (from the smallest up) at which the label stays ``y``; 0 when
    the input itself is misclassified. ``labels`` are the answers to :func:`walk_inputs`' rows."""
    per_input = labels.view(len(y), 1 + directions * levels)
    correct = per_input == y.view(-1, 1)
    walked = correct[:, 1:].view(len(y), directions, levels)
    survived = walked.int().cumprod(dim=2).sum(dim=2).float() / levels
    return survived * correct[:, :1].float()


def walk_features(labels: torch.Tensor, y: torch.Tensor, directions: int, levels: int) -> torch.Tensor:
    """The regressor's features per input: whether the input itself is classified ``y``, then the mean distance
    (:func:`walk_distances`) over the directions of each noise kind. Averaging within a kind keeps the features few
    and not collinear (single directions are noisy copies of one another and a regressor over them fits noise)."""
    distances = walk_distances(labels, y, directions, levels)
    correct = (labels.view(len(y), -1)[:, 0] == y).float().unsqueeze(1)
    kinds = [
        distances[:, k :: len(NOISE_KINDS)].mean(1, keepdim=True) for k in range(min(directions, len(NOISE_KINDS)))
    ]
    return torch.cat([correct, *kinds], dim=1)


def fit_regressor(features: torch.Tensor, member: torch.Tensor) -> dict[str, torch.Tensor]:
    """Logistic regression of membership on standardised features (L-BFGS, a small L2 penalty); deterministic."""
    mean = features.mean(0)
    std = features.std(0).clamp_min(1e-6)
    z = ((features - mean) / std).double()
    target = member.double()
    weight = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        logits = z @ weight + bias
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target) + RIDGE * weight.pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return {
        "feature_mean": mean.float(),
        "feature_std": std.float(),
        "regressor_weight": weight.detach().float(),
        "regressor_bias": bias.detach().float(),
    }


def regressor_scores(features: torch.Tensor, key: Key) -> torch.Tensor:
    z = (features - key["feature_mean"]) / key["feature_std"]
    return torch.sigmoid(z @ key["regressor_weight"] + key["regressor_bias"])


def permutation_p_value(scores: np.ndarray, n_first: int, permutations: int, seed: int) -> tuple[float, float]:
    """One-sided permutation test of mean(scores[:n_first]) − mean(scores[n_first:]) > 0: the statistic and its
    p-value. When there are at most ``permutations`` ways to split the scores, every split is enumerated and the
    p-value is the exact share reaching the observed statistic; otherwise it is (1 + #random relabellings at least
    as large) / (1 + permutations)."""
    scores = np.asarray(scores, dtype=np.float64)
    n = len(scores)
    total = scores.sum()

    def difference(first_sum: np.ndarray | float) -> np.ndarray | float:
        return first_sum / n_first - (total - first_sum) / (n - n_first)

    observed = float(difference(scores[:n_first].sum()))
    tolerance = 1e-12 * max(1.0, float(np.abs(scores).max(initial=0.0)))
    if math.comb(n, n_first) <= permutations:
        splits = np.array(list(itertools.combinations(range(n), n_first)), dtype=np.int64)
        return observed, float(np.mean(difference(scores[splits].sum(1)) >= observed - tolerance))
    rng = np.random.default_rng(seed)
    reached = 0
    for start in range(0, permutations, PERMUTATION_CHUNK):
        rows = min(PERMUTATION_CHUNK, permutations - start)
        order = rng.permuted(np.broadcast_to(np.arange(n), (rows, n)), axis=1)
        reached += int((difference(scores[order[:, :n_first]].sum(1)) >= observed - tolerance).sum())
    return observed, (1 + reached) / (1 + permutations)


def smallest_permutation_p_value(n_first: int, n_second: int, permutations: int) -> float:
    """The smallest p-value :func:`permutation_p_value` can give: the first group's scores all above the second's."""
    splits = math.comb(n_first + n_second, n_first)  # an int that can exceed any float: compare, never divide
    return 1.0 / (permutations + 1) if splits > permutations else 1.0 / splits


@register_scheme
class DatasetInference(Scheme):
    """Dataset inference (Maini et al. 2021): label-only blind walk, a fingerprint of the owner's private data.

    The model is not changed; the key holds private and public inputs, the walk's directions and the regressor."""

    name = "dataset-inference"
    kind = "fingerprint"
    needs = "labels"
    pretrain = True
    null_hypothesis = (
        "the suspect's answers do not depend on which of the key's inputs were in the owner's training data (it was "
        "neither trained on the owner's private data nor derived from a model that was): its blind-walk scores are "
        "exchangeable between the private and the public inputs"
    )
    larger_key = "more test inputs (n_test) or more permutations"
    # an item is a pair: the i-th private and the i-th public test input (a budget asks both, so the groups stay equal)
    per_item = ("x_private", "y_private", "x_public", "y_public")
    tiny_params: ClassVar[dict[str, Any]] = {
        "n_fit": 60,
        "n_test": 60,
        "directions": 6,
        "radii": 8,
        "min_radius": 0.05,
        "max_radius": 2.0,
        "permutations": 9999,
    }
    tiny_data: ClassVar[dict[str, Any]] = {"n": 600, "noise": 1.0}  # few, noisy examples: the MLP memorises them

    @dataclasses.dataclass(frozen=True)
    class Params(BaseParams):
        kind = "dataset-inference scheme"
        n_fit: int = 500
        n_test: int = 500
        directions: int = 6
        radii: int = 8
        min_radius: float = 0.05
        max_radius: float = 1.5
        permutations: int = 99_999

        def validate(self) -> None:
            for name in ("n_fit", "n_test"):
                if getattr(self, name) < 10:
                    raise InvalidArgument(f"{name} must be >= 10, got {name}={getattr(self, name)}")
            if self.directions < 1 or self.radii < 1:
                raise InvalidArgument(f"need directions >= 1 and radii >= 1, got {self.directions}, {self.radii}")
            if not 0.0 < self.min_radius < self.max_radius:
                raise InvalidArgument(
                    f"need 0 < min_radius < max_radius, got min_radius={self.min_radius}, max_radius={self.max_radius}"
                )
            if self.permutations < 99:
                raise InvalidArgument(f"permutations must be >= 99, got permutations={self.permutations}")

    def levels(self) -> torch.Tensor:
        p = self.params
        if p.radii == 1:
            return torch.tensor([p.min_radius], dtype=torch.float32)
        return torch.logspace(np.log10(p.min_radius), np.log10(p.max_radius), p.radii, dtype=torch.float64).float()

    # -- embed -----------------------------------------------------------------------------------------------------
    def embed(
        self, model: Classifier, splits: Splits, *, train: TrainConfig | None = None, progress: bool | None = None
    ) -> Embedding:
        """Draw the private and public inputs and the directions, fit the regressor on ``model``'s own blind walk;
        ``model`` (already trained) is returned untouched."""
        p = self.params
        train = train or TrainConfig()
        before = weights_digest(model)
        public = splits.owner_holdout if len(splits.owner_holdout) >= 2 * p.n_fit else splits.test
        for part, data in (("owner_train", splits.owner_train), ("the public split", public)):
            if len(data) < p.n_fit + p.n_test:
                raise InvalidArgument(
                    f"dataset inference needs n_fit + n_test = {p.n_fit + p.n_test} inputs from {part}, which has "
                    f"{len(data)}; lower n_fit or n_test"
                )
        generator = self.key_generator(train.seed, 31_415_927)
        private_order = torch.randperm(len(splits.owner_train), generator=generator)[: p.n_fit + p.n_test]
        public_order = torch.randperm(len(public), generator=generator)[: p.n_fit + p.n_test]
        private = splits.owner_train.subset(private_order)
        public_part = public.subset(public_order)
        directions = walk_directions(p.directions, tuple(splits.input_shape), generator)
        tensors = {
            "x_private": private.stored[p.n_fit :].clone(),
            "y_private": private.y[p.n_fit :].long().clone(),
            "x_public": public_part.stored[p.n_fit :].clone(),
            "y_public": public_part.y[p.n_fit :].long().clone(),
            "directions": directions,
        }
        fit_x = torch.cat([to_float(private.stored[: p.n_fit]), to_float(public_part.stored[: p.n_fit])])
        fit_y = torch.cat([private.y[: p.n_fit], public_part.y[: p.n_fit]]).long()
        labels = predict_logits(model, walk_inputs(fit_x, directions, self.levels())).argmax(1)
        features = walk_features(labels, fit_y, p.directions, p.radii)
        member = torch.cat([torch.ones(p.n_fit), torch.zeros(p.n_fit)])
        tensors.update(fit_regressor(features, member))
        if weights_digest(model) != before:
            raise RuntimeError("dataset inference changed the model's weights; this is a bug")
        key = Key(scheme=self.name, params=p.to_dict(), tensors=tensors, meta=self.key_meta(splits, model))
        model.provenance.update({"scheme": self.name, "key_digest": key.digest})
        fit_scores = regressor_scores(features, key)
        info = {
            "weights_untouched": True,
            "queries_per_verification": len(self.verification_inputs(key)),
            "fit_score_gap": float(fit_scores[: p.n_fit].mean() - fit_scores[p.n_fit :].mean()),
        }
        return Embedding(model, key, info)

    # -- verify ----------------------------------------------------------------------------------------------------
    def verification_inputs(self, key: Key) -> torch.Tensor:
        x = torch.cat([to_float(key["x_private"]), to_float(key["x_public"])])
        return walk_inputs(x, key["directions"], self.levels())

    def item_queries(self, key: Key, items: torch.Tensor) -> torch.Tensor:
        """Each item's private walk, then each item's public walk (the order :meth:`verification_inputs` asks)."""
        walk, n = 1 + self.params.directions * self.params.radii, self.key_items(key)
        steps = torch.arange(walk)
        private = (items.view(-1, 1) * walk + steps).flatten()
        return torch.cat([private, ((items.view(-1, 1) + n) * walk + steps).flatten()])

    def evidence_from_answers(self, answers: torch.Tensor, key: Key, *, alpha: float, queries: int) -> Evidence:
        from scipy import stats

        p = self.params
        y = torch.cat([key["y_private"], key["y_public"]])
        features = walk_features(answers.argmax(1), y, p.directions, p.radii)
        scores = regressor_scores(features, key).double().numpy()
        n_private = len(key["y_private"])
        seed = int.from_bytes(hashlib.sha256(key.digest.encode()).digest()[:8], "little")
        gap, p_value = permutation_p_value(scores, n_private, p.permutations, seed)
        with warnings.catch_warnings():  # constant groups (a suspect that answers alike everywhere): p is then nan
            warnings.simplefilter("ignore", RuntimeWarning)
            t_test = stats.ttest_ind(scores[:n_private], scores[n_private:], equal_var=False, alternative="greater")
        paper_p = float(t_test.pvalue) if np.isfinite(t_test.pvalue) else 1.0
        return self.evidence(
            key,
            statistic_name="mean regressor score, private minus public inputs",
            statistic=gap,
            p_value=p_value,
            alpha=alpha,
            queries=queries,
            metrics={
                "private_score": float(scores[:n_private].mean()),
                "public_score": float(scores[n_private:].mean()),
                "private_walk": float(features[:n_private, 1:].mean()),
                "public_walk": float(features[n_private:, 1:].mean()),
                "private_correct": float(features[:n_private, 0].mean()),
                "public_correct": float(features[n_private:, 0].mean()),
                "paper_t_test_p": paper_p,
            },
            notes=[
                f"permutation test of {n_private} private against {len(y) - n_private} public inputs: smallest "
                f"attainable p {self.attainable_p_value(key, 0):.1g}"
            ],
        )

    def attainable_p_value(self, key: Key, num_classes: int) -> float | None:
        n_private = len(key["y_private"])
        return smallest_permutation_p_value(n_private, len(key["y_public"]), self.params.permutations)
