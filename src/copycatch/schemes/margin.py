"""Margin-based watermarking (Kim et al., ICML 2023).

Paper: Kim et al., "Margin-based Neural Network Watermarking", ICML 2023: Algorithm 1 and Eq. 3/6. The authors'
released code (matbambbang/margin-based-watermarking) was read too.

Embedding. ``n_triggers`` held-out inputs (the owner's holdout split, never trained on) each get a secret *wrong*
label. During training, every batch samples ``trigger_batch`` triggers with replacement, runs ``steps`` projected
gradient-*ascent* steps of ``step_size`` on the watermark-label loss inside the L∞ ball of radius ``eps`` (the worst
case in the margin), and adds ``lam`` × the cross-entropy of the perturbed triggers to the clean loss (Eq. 6). A
model that keeps the watermark label on the whole ball has a margin around each trigger, and extraction copies part
of it.

Verification (exact null). With ``label_strategy="random"`` each secret label was drawn uniformly from the C−1 wrong
classes, independently of everything a suspect can know. Null hypothesis: the suspect is independent of the key.
Then the hits on the secret label among the m triggers it misclassifies are Binomial(m, 1/(C−1)) whatever the
suspect is; p = P(X ≥ hits) (labels suffice; the paper's watermark accuracy, hits / n_triggers, is given alongside).

A suspect that answers scores tells more than its top label. Under the same null the secret label is a uniform draw
among the C−1 wrong classes, so its mid-rank among them by the suspect's scores is uniform, independently over
triggers; the fixed test sums the secret labels' doubled mid-ranks and takes the exact share of the (C−1)^n secret
vectors scoring at least as high (:func:`~copycatch.core.stats.independent_choices_greater`; only the top
``RANKED_CLASSES`` wrong classes are told apart). On one-hot answers this is the binomial count, which is reported
then. The sequential test reads the scores too (fixed part: :meth:`score_test_bounds`). The rank test is ours.

Parameters (defaults; inputs on the [0, 1] scale):
    n_triggers (100): size of the trigger set (paper and code README: 100).
    label_strategy ("random"): "random" wrong label (paper default), or §4.5's "highest" / "lowest" confidence wrong
        label of a clean reference model. The last two make the binomial null approximate (an innocent model tends
        to agree with the reference model), which the evidence says.
    steps (5): K, ascent steps per batch (paper).
    step_size (1/255): α, the step of each ascent (paper and code).
    eps (5/255): ε, L∞ radius of the margin (paper; the code does not project and relies on K·α = ε).
    lam (None): λ of Eq. 6; None derives it from the data (:func:`trigger_weight`): each trigger gets the same
        total weight ``exposure`` whatever the owner's data size, λ = exposure·n_triggers / (trigger_batch·training
        steps), at most 1. Algorithm 1's λ = 1 revisits each trigger 12.5× as often on 4,000 owner images as on
        the paper's 50,000, and weighs it more than the code's 0.1·trigger CE.
    exposure (4.0): the per-trigger total weight of the rule above (λ ≈ 0.05 at 4,000 images, 0.007 at 30,000,
        for 10 epochs of batch 128), chosen for the rank test; the label-only hit count needs about twice it
        (``exposure=8``). Its costs and proofs: benchmarks/README.md, "Proof after extraction".
    trigger_batch (25): triggers sampled per training batch (code).
    ascent ("free"): how δ is found. "pgd" is Algorithm 1: K fresh ascent steps from δ = 0 on every batch (K extra
        forward and input-backward passes over the sampled triggers). "free" is a faster option, not in the paper:
        each trigger keeps its δ across batches and every use takes one ascent step of ``step_size`` with the input
        gradient of the same backward pass that updates the weights ("free" adversarial training, Shafahi et al.,
        NeurIPS 2019): one extra forward/backward of ``trigger_batch`` inputs per step, ``steps`` unused (its speed
        and strength: benchmarks/README.md, "Measurements behind the scheme and attack defaults").
    mixup_components (1): holdout images mixed into each trigger (App. B.3, Table 3: 2 or 5). 1 is the plain
        trigger set above; with m > 1 each trigger is the convex mix Σ w_j·x_j of m distinct holdout images (the
        first drawn as for m = 1, the others uniformly), quantised to 1/255 like every trigger.
    mixup_weights ("uniform"): the mixing weights w: "uniform", 1/m each, or "dirichlet", a flat Dirichlet draw
        per trigger from the key's generator (more varied mixes, now and then one near a single image).

Mixup triggers and the null. A mixed trigger's ``trigger_true`` is its heaviest component's class and its secret
label is drawn from the C−1 other classes, so P(label = p) = 1/(C−1) for any prediction p ≠ trigger_true and the
null stays exact (a label wrong for *every* component would not: innocent models often predict a lighter one's class).

Deviations: triggers are sampled per batch as in the code; the ascent starts from the clean trigger every batch (no
random start, as in the code); triggers are quantised to 1/255 as in the code; λ scales with the data size and the
ascent is "free" by default (both above): Algorithm 1's λ = 1 and K = 5 are ``lam=1 ascent=pgd``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import InvalidArgument
from ..core.evidence import Evidence
from ..core.key import Key
from ..core.params import Params as BaseParams
from ..core.stats import binomial_greater, independent_choices_greater
from ..data.base import Splits, TensorData
from ..models.adversarial import pgd
from ..models.base import Classifier, create_for
from ..models.train import TrainConfig, TrainHook, TrainState, fit, predict_logits
from .base import BernoulliOutcomes, Embedding, Scheme, register_scheme


@contextlib.contextmanager
def _weights_frozen(model: torch.nn.Module):
    """The ascent needs input gradients only; not tracking the weights skips their part of the graph."""
    trainable = [q for q in model.parameters() if q.requires_grad]
    for q in trainable:
        q.requires_grad_(False)
    try:
        yield
    finally:
        for q in trainable:
            q.requires_grad_(True)


def trigger_weight(n_triggers: int, trigger_batch: int, n_train: int, train: TrainConfig, exposure: float) -> float:
    """λ that gives every trigger the total weight ``exposure`` over training, at most 1 (the paper's value).

    Each step draws ``trigger_batch`` of the ``n_triggers`` triggers, so over ``epochs·⌈n_train/batch_size⌉`` steps a
    trigger is used trigger_batch·steps/n_triggers times; a fixed λ thus weighs the triggers more the less data the
    owner has (and the model memorises them at the task's expense). Fixing λ·uses keeps that weight constant."""
    steps = max(1, train.epochs * -(-n_train // train.batch_size))
    return min(1.0, exposure * n_triggers / (trigger_batch * steps))


RANKED_CLASSES = 20  # the rank test tells apart the top 20 wrong classes of a trigger; the others tie


def doubled_wrong_ranks(answers: torch.Tensor, true: torch.Tensor) -> tuple[Any, Any]:
    """Per trigger, twice the mid-rank (1 … C−1, ties sharing the average; doubled to stay an integer) of each of the
    C−1 classes other than ``true`` by the suspect's answer, and which class each column holds (``columns[i, j]``)."""
    from ..core.stats import _scipy_stats

    scores = answers.detach().double().cpu().numpy()
    base = np.arange(scores.shape[1] - 1)
    columns = base[None, :] + (base[None, :] >= true.cpu().numpy()[:, None])
    wrong = np.take_along_axis(scores, columns, axis=1)
    return np.rint(2 * _scipy_stats().rankdata(wrong, method="average", axis=1)).astype(np.int64), columns


RANK_STATISTIC = "secret label's rank among the wrong classes (sum of doubled mid-rank scores)"


def secret_rank_scores(answers: torch.Tensor, key: Key) -> tuple[list[Any], list[int], float]:
    """Per answered trigger, every wrong class's score (doubled mid-rank; only the top ``RANKED_CLASSES`` differ, the
    rest score 0, so many classes stay a short convolution), which of them is the secret label, and the secret's mean
    rank among the wrong classes (1: the top one)."""
    n = len(answers)
    true, labels = key["trigger_true"].long()[:n], key["trigger_label"].long()[:n]
    doubled, columns = doubled_wrong_ranks(answers, true)
    chosen = np.argmax(columns == labels.cpu().numpy()[:, None], axis=1)
    scores = np.maximum(doubled - 2 * max(0, doubled.shape[1] - RANKED_CLASSES), 0)
    mean_rank = float((doubled.shape[1] + 1 - doubled[np.arange(n), chosen] / 2).mean())
    return list(scores), [int(c) for c in chosen], mean_rank


def check_trigger_weight(params: Any) -> None:
    """The checks of the trigger-loss weight's parameters (``lam``, ``exposure``, ``trigger_batch``) that the margin
    and trigger-set schemes share."""
    if params.lam is not None and params.lam < 0:
        raise InvalidArgument(f"lam must be >= 0 (or None: from the data size), got {params.lam}")
    if not params.exposure > 0:
        raise InvalidArgument(f"exposure must be > 0, got {params.exposure}")
    if params.trigger_batch < 1:
        raise InvalidArgument(f"trigger_batch must be >= 1, got {params.trigger_batch}")


def resolved_weight(params: Any, n_train: int, train: TrainConfig) -> Any:
    """``params`` with ``lam`` set: as given, or from :func:`trigger_weight` when None (the key records the value)."""
    if params.lam is not None:
        return params
    lam = trigger_weight(params.n_triggers, params.trigger_batch, n_train, train, params.exposure)
    return params.replace(lam=round(lam, 6))


class MarginHook(TrainHook):
    """Adds λ·CE(h(x_q + δ*), y_q) with δ* from K ascent steps (Algorithm 1) to every step's loss."""

    state_attrs = ("generator", "delta")

    def __init__(self, trigger_x: torch.Tensor, trigger_y: torch.Tensor, params: MarginWatermark.Params):
        self.trigger_x, self.trigger_y, self.params = trigger_x, trigger_y, params
        self.generator: torch.Generator | None = None
        self.delta: torch.Tensor | None = None  # "free" ascent: each trigger's perturbation, kept across batches

    def on_start(self, state: TrainState) -> None:
        self.trigger_x = self.trigger_x.to(state.device)
        self.trigger_y = self.trigger_y.to(state.device)
        self.generator = torch.Generator().manual_seed(state.config.seed + 7919)
        self.delta = torch.zeros_like(self.trigger_x)

    def extra_loss(self, state, x, y, logits, loss):
        p = self.params
        pick = torch.randint(len(self.trigger_x), (p.trigger_batch,), generator=self.generator).to(state.device)
        xq, yq = self.trigger_x[pick], self.trigger_y[pick]
        if p.ascent == "free":
            return loss + p.lam * F.cross_entropy(state.model(self._free_input(xq, pick)), yq)
        # Ascent on the watermark-label loss: the worst point in the margin. The model stays in
        # train mode as in the authors' code, so batch-norm statistics see the perturbed triggers.
        with _weights_frozen(state.model):
            xq_adv = pgd(state.model, xq, p.eps, p.step_size, p.steps, y=yq, targeted=False)
        return loss + p.lam * F.cross_entropy(state.model(xq_adv), yq)

    def _free_input(self, xq: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
        p = self.params
        x_in = (xq + self.delta[pick]).clamp(0.0, 1.0).requires_grad_(True)

        def ascend(grad: torch.Tensor) -> None:
            # Runs inside the step's backward: the input gradient of λ·ℓ_wat has the sign of ∇ℓ_wat (λ > 0).
            # A trigger drawn twice in one batch keeps one of its two steps.
            step = self.delta[pick] + p.step_size * grad.sign()
            self.delta[pick] = (xq + step.clamp(-p.eps, p.eps)).clamp(0.0, 1.0) - xq

        x_in.register_hook(ascend)
        return x_in


@register_scheme
class MarginWatermark(Scheme):
    """Margin-based watermark (Kim et al. 2023): wrong-label triggers trained with an adversarial margin."""

    name = "margin"
    acts_at = "training"
    needs = "labels"
    sequential = True
    default_arch = "cnn-small"
    tiny_params: ClassVar[dict[str, Any]] = {"n_triggers": 40, "trigger_batch": 10}
    strength = "lam"
    per_item = ("trigger_x", "trigger_true", "trigger_label")
    larger_key = "more triggers (n_triggers)"
    null_hypothesis = (
        "The suspect is independent of the key: each secret trigger label was drawn uniformly from the C-1 wrong "
        "classes, so among the m triggers the suspect misclassifies, hits on the secret label ~ Binomial(m, 1/(C-1)), "
        "and, for a suspect that answers scores, the secret label's rank among each trigger's wrong classes is "
        "uniform, independently over the triggers."
    )

    @dataclasses.dataclass(frozen=True)
    class Params(BaseParams):
        kind = "margin scheme"
        n_triggers: int = 100
        label_strategy: Literal["random", "highest", "lowest"] = "random"
        steps: int = 5
        step_size: float = 1 / 255
        eps: float = 5 / 255
        lam: float | None = None
        exposure: float = 4.0
        trigger_batch: int = 25
        ascent: Literal["pgd", "free"] = "free"
        mixup_components: int = 1
        mixup_weights: Literal["uniform", "dirichlet"] = "uniform"

        def validate(self) -> None:
            if self.n_triggers < 1:
                raise InvalidArgument(f"n_triggers must be >= 1, got {self.n_triggers}")
            if self.mixup_components < 1:
                raise InvalidArgument(f"mixup_components must be >= 1 (1: plain triggers), got {self.mixup_components}")
            if self.steps < 0:
                raise InvalidArgument(f"steps must be >= 0, got {self.steps}")
            if self.eps < 0 or self.step_size <= 0:
                raise InvalidArgument(
                    f"eps must be >= 0 and step_size > 0, got eps={self.eps}, step_size={self.step_size}"
                )
            check_trigger_weight(self)

    # -- trigger set -----------------------------------------------------------------------------------------------
    def make_trigger_set(
        self, splits: Splits, generator: torch.Generator, reference: Classifier | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inputs quantised to uint8, true labels, secret labels) drawn from the owner's holdout."""
        p = self.params
        pool = splits.owner_holdout
        if len(pool) < p.n_triggers:
            raise InvalidArgument(
                f"owner_holdout has {len(pool)} inputs, fewer than n_triggers={p.n_triggers}; "
                "raise the holdout fraction or lower n_triggers"
            )
        components = getattr(p, "mixup_components", 1)  # subclasses (trigger-set) whose Params lack it: plain
        if components > len(pool):
            raise InvalidArgument(
                f"mixup_components={components} exceeds the owner_holdout's {len(pool)} inputs; "
                "lower mixup_components or raise the holdout fraction"
            )
        pick = torch.randperm(len(pool), generator=generator)[: p.n_triggers]
        if components == 1:
            x_u8 = (pool.subset(pick).x * 255).round().clamp(0, 255).to(torch.uint8)
            true = pool.y[pick].clone()
        else:
            x_u8, true = self._mixup_triggers(pool, pick, generator)
        c = splits.num_classes
        if p.label_strategy == "random":
            labels = (true + torch.randint(1, c, (len(true),), generator=generator)) % c
        else:
            if reference is None:
                raise InvalidArgument(f"label_strategy={p.label_strategy!r} needs a clean reference model")
            conf = torch.softmax(predict_logits(reference, x_u8.float() / 255), dim=1)
            conf[torch.arange(len(true)), true] = float("nan")
            fill = -1.0 if p.label_strategy == "highest" else 2.0
            labels = torch.nan_to_num(conf, nan=fill)
            labels = labels.argmax(1) if p.label_strategy == "highest" else labels.argmin(1)
        return x_u8, true, labels

    def _mixup_triggers(
        self, pool: TensorData, first: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixup triggers: trigger i mixes holdout image ``first[i]`` with m−1 other distinct holdout images, with
        uniform (or flat-Dirichlet) weights; its true label is its heaviest component's class (see the module
        docstring: what keeps the binomial null exact)."""
        p = self.params
        m, n = p.mixup_components, len(first)
        others = []
        for i in range(n):  # m−1 distinct indices among the holdout without first[i]
            rest = torch.randperm(len(pool) - 1, generator=generator)[: m - 1]
            others.append(rest + (rest >= first[i]).long())
        index = torch.cat([first.view(n, 1), torch.stack(others)], dim=1)  # n × m, distinct within each row
        if p.mixup_weights == "dirichlet":
            # a flat Dirichlet draw: normalised Exp(1) variables, from the key's generator
            exp = -torch.log(torch.rand(n, m, generator=generator, dtype=torch.float64).clamp_min(1e-300))
            weights = exp / exp.sum(dim=1, keepdim=True)
        else:
            weights = torch.full((n, m), 1.0 / m, dtype=torch.float64)
        images = pool.subset(index.flatten()).x.double().view(n, m, *pool.input_shape)
        mixed = (weights.view(n, m, *([1] * len(pool.input_shape))) * images).sum(dim=1)
        x_u8 = (mixed * 255).round().clamp(0, 255).to(torch.uint8)
        heaviest = weights.argmax(dim=1)  # the first maximum on a tie
        true = pool.y[index[torch.arange(n), heaviest]].clone()
        return x_u8, true

    # -- embed -----------------------------------------------------------------------------------------------------
    def embed(
        self,
        model: Classifier,
        splits: Splits,
        *,
        train: TrainConfig | None = None,
        progress: bool | None = None,
        reference: Classifier | None = None,
    ) -> Embedding:
        """Train ``model`` (from its current weights) on owner_train with the margin loss."""
        train = train or TrainConfig()
        generator = self.key_generator(train.seed, 104729)
        info: dict[str, Any] = {}
        if self.params.label_strategy != "random" and reference is None:
            reference = create_for(model.arch, model, seed=train.seed, **model.arch_kwargs)
            result = fit(reference, splits.owner_train, train, progress=progress, desc="reference model")
            info["reference_training"] = result.to_dict()
        x_u8, true, labels = self.make_trigger_set(splits, generator, reference)
        params = resolved_weight(self.params, len(splits.owner_train), train)
        hook = MarginHook(x_u8.float() / 255, labels, params)
        result = fit(model, splits.owner_train, train, val=None, hooks=[hook], progress=progress, desc="embed margin")
        info["training"] = result.to_dict()
        key = Key(
            scheme=self.name,
            params=params.to_dict(),
            tensors={"trigger_x": x_u8, "trigger_true": true, "trigger_label": labels},
            meta=self.key_meta(splits, model, train=train.to_dict()),
        )
        model.provenance.update({"scheme": self.name, "key_digest": key.digest})
        return Embedding(model, key, info)

    # -- verify ----------------------------------------------------------------------------------------------------
    def verification_inputs(self, key: Key) -> torch.Tensor:
        return key["trigger_x"].float() / 255

    def bernoulli_outcomes(self, answers: torch.Tensor, key: Key) -> BernoulliOutcomes:
        """Per trigger: not counted when classified correctly, else 1 on the secret label and 0 elsewhere."""
        n = len(answers)
        pred = answers.argmax(dim=1)
        true, labels = key["trigger_true"].long()[:n], key["trigger_label"].long()[:n]
        outcomes = torch.where(
            pred != true, (pred == labels).to(torch.int8), torch.full_like(pred, -1, dtype=torch.int8)
        )
        strategy = key.params.get("label_strategy", "random")
        notes = (
            []
            if strategy == "random"
            else [f"secret labels follow the {strategy!r}-confidence strategy: the binomial null is approximate"]
        )
        return BernoulliOutcomes(
            outcomes,
            1.0 / (answers.shape[1] - 1),
            "trigger hits among misclassified",
            exact=strategy == "random",
            notes=notes,
        )

    def score_test_bounds(self, answers: torch.Tensor, key: Key, remaining: int) -> tuple[float, float] | None:
        """The rank test on the triggers asked so far (:meth:`Scheme.score_test_bounds`). Each trigger adds a score in
        [low, top], so the unasked ones can raise the observed sum over the null's by at most ``remaining·(top −
        low)`` (the bound's slack); at best each is an untied row with the secret on top."""
        if key.params.get("label_strategy", "random") != "random":
            return None  # the rank test is the fixed test only for uniformly drawn secret labels
        wrong = answers.shape[1] - 1
        untied = np.maximum(2 * np.arange(1, wrong + 1) - 2 * max(0, wrong - RANKED_CLASSES), 0)
        low, top = int(untied.min()), int(untied.max())
        scores, chosen = (secret_rank_scores(answers, key)[:2]) if len(answers) else ([], [])
        bound = independent_choices_greater(scores, chosen, slack=remaining * (top - low)) if scores else 1.0
        best_rows = scores + [untied] * remaining
        best = independent_choices_greater(best_rows, chosen + [wrong - 1] * remaining) if best_rows else 1.0
        return bound, best

    def evidence_from_answers(self, answers: torch.Tensor, key: Key, *, alpha: float, queries: int) -> Evidence:
        """Labels (one-hot answers): the binomial count of hits among misclassified triggers. Scores: the rank
        test, which reads where the secret label stands among the wrong classes on *every* trigger."""
        pred = answers.argmax(dim=1)
        true, labels = key["trigger_true"].long(), key["trigger_label"].long()
        num_classes = answers.shape[1]
        wrong = pred != true
        m = int(wrong.sum())
        hits = int((pred == labels).sum())
        null_rate = 1.0 / (num_classes - 1)
        strategy = key.params.get("label_strategy", "random")
        metrics = {
            "hits": hits,
            "misclassified": m,
            "triggers": len(true),
            "watermark_accuracy": hits / max(len(true), 1),
            "null_hit_rate": null_rate,
        }
        label_only = bool(((answers > 0).sum(dim=1) <= 1).all())
        if strategy == "random" and not label_only and len(true):
            return self._rank_evidence(answers, key, alpha=alpha, queries=queries, metrics=metrics)
        p_value = binomial_greater(hits, m, null_rate)
        notes = []
        exact = strategy == "random"
        if not exact:
            notes.append(
                f"secret labels follow the {strategy!r}-confidence strategy, not a uniform draw: the binomial "
                "null is approximate; calibrate against innocent models before relying on it"
            )
        return self.evidence(
            key,
            statistic_name="trigger hits among misclassified",
            statistic=hits,
            p_value=p_value,
            alpha=alpha,
            queries=queries,
            exact=exact,
            metrics=metrics,
            notes=notes,
        )

    def _rank_evidence(
        self, answers: torch.Tensor, key: Key, *, alpha: float, queries: int, metrics: dict[str, Any]
    ) -> Evidence:
        """The secret label's rank among the C−1 wrong classes, summed over the triggers (see the module docstring)."""
        scores, chosen, mean_rank = secret_rank_scores(answers, key)
        metrics["secret_rank_mean"] = mean_rank
        return self.evidence(
            key,
            statistic_name=RANK_STATISTIC,
            statistic=int(sum(row[c] for row, c in zip(scores, chosen))),
            p_value=independent_choices_greater(scores, chosen),
            alpha=alpha,
            queries=queries,
            metrics=metrics,
            notes=[
                "the suspect answered scores: the fixed test ranks the secret label among each trigger's wrong "
                "classes (exact randomisation null; on one-hot answers it is the binomial count of hits)"
            ],
        )
