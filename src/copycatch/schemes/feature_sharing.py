"""Feature-sharing watermark: fine-tune only the decision layers on the watermark, so it shares the task's features.

Paper: "Was my Model Stolen? Feature Sharing for Robust and Transferable Watermarks" (Tang et al.), ICLR 2022
submission (anonymous at review): §3.1 (two-step training), §3.2 (Wilcoxon test), §4 (settings, WDR).
No public code exists; everything follows the paper.

Embedding. Step 1 trains the model on clean data only (``pretrain = True``). Step 2 freezes the feature extractor G_e
(``model.features``, in eval mode without gradients, so batch-norm statistics and dropout stay frozen too) and
fine-tunes the decision layers G_d (``model.classifier``) on the clean data plus the watermark set D_w(c_S) → c_T,
so the watermark is remembered with the same features the task uses and travels with the posteriors an extraction
attack copies. ``finetune="whole-network"`` is the paper's baseline: fine-tune every layer on the same data. The
watermark (§3, §4) is either in-distribution (``distribution="in"``: a white ``patch_size``² square stamped in the
bottom-right corner of source-class images) or out-of-distribution (``"out"``: images of one class of another data
set, ``ood_dataset``), relabelled as the target class.

Verification (§3.2). p = f_{c_T}(x_w) is the suspect's target-class probability on a watermark input and q the same
on the same source image without the trigger (in-distribution) or 1/|Y| (out-of-distribution). Null hypothesis (the
paper's): p − q < α_c, tested by the one-sided Wilcoxon signed-rank test on d = (p − q) − α_c, whose exact
(conditional, for ties) null distribution is computed by convolution (``signed_rank_greater``). The key holds
``n_verify`` watermark inputs the victim never trained on. The paper's watermark detection rate (WDR: the share of
``wdr_draws`` random draws of ``wdr_fraction`` of the watermark inputs on which the test rejects at ``wdr_alpha``) is
reported alongside. Whether an innocent model satisfies the null is an assumption, checked on many innocent draws in
the tests. Given one-hot answers the same test runs on 0/1 indicators, and the evidence says so.

Parameters (defaults; probabilities in [0, 1]):
    distribution ("out"): "out" (out-of-distribution source class) or "in" (in-distribution, patch trigger). The
        paper reports both; "out" is the default because only it survived soft-label extraction on Fashion-MNIST
        (measured: benchmarks/README.md, "Measurements behind the scheme and attack defaults").
    source_class (None): c_S, a class of the task (in-distribution) or of ``ood_dataset`` (out-of-distribution);
        None draws it at random (seeded by the training seed) and keeps it secret in the key.
    target_class (None): c_T; None draws it among the other classes (in-distribution) or, out-of-distribution,
        takes the class the clean step-1 model finds least likely for the source images (§3: "it should be unlikely
        for an un-watermarked model to predict x_w as c_T"; otherwise the 1/|Y| null would be false).
    patch_size (3): side of the white square in pixels (paper: 3 for 28×28, 4 for 32×32, 6 for 64×64).
    ood_dataset ("mnist-5k"): registry name of the OOD set, optionally with arguments ("synthetic:seed=7;n=500").
    n_watermark (None): watermark training inputs; None uses every available source-class input (owner_train for
        in-distribution, the OOD class minus the verification inputs for out-of-distribution).
    n_verify (100): watermark inputs kept in the key (owner-holdout source images, or OOD images held back).
    certainty (0.3): α_c of §3.2.
    finetune (None): "last-layer": step 2 trains the network's last parameterised layer only (G_d = the output
        layer); "decision-layers" trains all of ``model.classifier`` (two layers in cnn-small and the MLP);
        "whole-network" is the paper's baseline. None is "last-layer" out of distribution, the split that makes
        the mark travel to a surrogate, and "decision-layers" in distribution, where one linear layer on frozen
        features cannot tell a patched source image from an unpatched one and sends the whole source class to the
        target (measured: benchmarks/README.md "Feature-sharing"; docs/reproductions.md, Table 2).
    trainable_from (None): where the frozen/fine-tuned split of step 2 lies (the watermark location of the paper's
        Figs. 3–4). None keeps ``finetune``'s split. An integer k ≥ 1 fine-tunes the last k parameterised layers
        of the whole network (modules with weights of their own, in registration order: cnn-small has 4: conv,
        conv, linear, linear) and freezes every layer before them (eval mode, no gradients, as G_e above); k = the
        number of such layers fine-tunes everything. Refused with ``finetune="whole-network"`` or above the
        network's layer count.
    finetune_epochs (5): epochs of step 2 (the paper says "keep fine-tuning"; 5 keeps embedding <= 1.5× clean
        training on Fashion-MNIST). finetune_lr (None): step 2's learning rate; None uses the training config's.
    wdr_draws (200), wdr_fraction (0.1), wdr_alpha (0.05): the WDR of §4 (200 draws of 1/10, level 0.05).

Deviations: the trigger sits flush in the bottom-right corner (the paper gives no offset); the out-of-distribution
target defaults to the clean model's least likely class (the paper leaves the choice open); the default kind is
out-of-distribution. Step 2's epochs and learning rate are unstated in the paper. Out of distribution G_d is the
output layer alone (the paper's ResNets have a single fully connected layer after the features; our CNNs have
two, and with both tuned no surrogate was proven).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from ..core.errors import InvalidArgument
from ..core.evidence import Evidence
from ..core.key import Key
from ..core.params import Params as BaseParams
from ..core.params import parse_spec
from ..data.base import Dataset, Splits, TensorData, load_dataset, to_float
from ..models.base import Classifier
from ..models.train import TrainConfig, fit, predict_logits
from .base import Embedding, Scheme, register_scheme

ZERO_METHOD = "pratt"
ROUND_DECIMALS = 6


# ---------------------------------------------------------------------------------------------------------------------
# The one-sided Wilcoxon signed-rank test
# ---------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SignedRank:
    statistic: float  # W+: sum of the (mid-)ranks of the positive differences
    p_value: float
    method: str  # "exact" (scipy), "exact-conditional" (ties or zeros) or "no non-zero differences"
    n: int
    zeros: int
    ties: bool


def _sign_flip_sf(doubled_ranks: np.ndarray, observed: int) -> float:
    """P(Σ b_i a_i ≥ observed) for independent fair coins b_i: the exact conditional null of W+ (a_i = 2·rank)."""
    dist = np.zeros(int(np.sum(doubled_ranks)) + 1)
    dist[0], used = 1.0, 1
    for a in doubled_ranks:
        shifted = dist[:used].copy()
        dist[:used] *= 0.5
        dist[a : a + used] += 0.5 * shifted
        used += a
    return float(min(1.0, dist[observed:].sum()))


def signed_rank_greater(d: np.ndarray | torch.Tensor) -> SignedRank:
    """One-sided (alternative "greater") Wilcoxon signed-rank test of "the d_i are symmetric about 0"; exact.

    The signed-rank null is "the d_i are independent and symmetric about 0" (the boundary of the composite null; for
    a shift family, a centre below 0 only makes the p-value conservative). The p-value is the exact null
    distribution of W+ (the sum of the ranks of the positive d_i), computed by convolving the n fair sign flips of
    the (mid-)ranks: without ties or zeros this is the distribution of ``scipy.stats.wilcoxon(d,
    zero_method="pratt", alternative="greater", method="exact")`` (the tests check they agree); with them it is the
    exact conditional distribution given the tied ranks (suspects answering rounded or one-hot probabilities produce
    ties, where scipy's "exact" is not exact and its default falls back to the normal approximation). Nothing is
    asymptotic. scipy is not called for the p-value itself: its exact upper tail is 1 − CDF in floating point, which
    returns 0 or a negative number below about 1e-16 (e.g. for 60 or more all-positive differences), exactly where
    a victim's evidence lies; the convolution sums the tail directly (its smallest value, 2^−n, is exact).
    Differences are rounded to 1e-6 first (scipy's advice: round-off creates false ties). ``zero_method="pratt"``:
    a zero is a pair exactly at the certainty boundary; Pratt keeps it in the ranking (it pushes the other ranks
    up, as any continuous perturbation would) but gives it no sign, so it is evidence for neither side; with the
    conditional sign-flip null this equals "zsplit" and is the more conservative choice over "wilcox", which would
    discard how many pairs sat at the boundary."""
    from scipy import stats as _st  # imported when used: 45 MB of resident memory

    d = np.round(np.asarray(d, dtype=np.float64), ROUND_DECIMALS)
    if d.ndim != 1 or not np.isfinite(d).all():
        raise InvalidArgument("signed-rank differences must be a finite 1-D array")
    nonzero = d != 0
    zeros = int((~nonzero).sum())
    if not nonzero.any():
        return SignedRank(0.0, 1.0, "no non-zero differences", len(d), zeros, False)
    # Pratt: rank |d| with the zeros included, then let only the non-zero differences carry a sign.
    ranks = _st.rankdata(np.abs(d))[nonzero]
    ties = len(np.unique(np.abs(d[nonzero]))) < int(nonzero.sum())
    w_plus = float(ranks[d[nonzero] > 0].sum())
    doubled = np.rint(2 * ranks).astype(np.int64)  # mid-ranks are multiples of 1/2
    p = _sign_flip_sf(doubled, int(np.rint(2 * w_plus)))
    return SignedRank(w_plus, p, "exact-conditional" if ties or zeros else "exact", len(d), zeros, ties)


def detection_rate(d: np.ndarray, *, draws: int, fraction: float, alpha: float, seed: int) -> tuple[float, int]:
    """The paper's WDR: share of ``draws`` random subsets (``fraction`` of the pairs) on which the test rejects."""
    size = max(1, round(fraction * len(d)))
    rng = np.random.default_rng(seed)
    hits = sum(signed_rank_greater(d[rng.choice(len(d), size, replace=False)]).p_value <= alpha for _ in range(draws))
    return hits / draws, size


# ---------------------------------------------------------------------------------------------------------------------
# Watermark inputs (shared with EWE)
# ---------------------------------------------------------------------------------------------------------------------


def stamp_patch(
    x: torch.Tensor,
    size: int,
    *,
    value: float = 1.0,
    row: int | None = None,
    col: int | None = None,
    channels: slice | int = slice(None),
) -> torch.Tensor:
    """A copy of ``x`` (N×C×H×W) with a ``size``×``size`` square of ``value``; default: the bottom-right corner."""
    h, w = x.shape[-2:]
    if not 1 <= size <= min(h, w):
        raise InvalidArgument(f"patch_size={size} does not fit {h}×{w} inputs")
    row = h - size if row is None else row
    col = w - size if col is None else col
    out = x.clone()
    out[:, channels, row : row + size, col : col + size] = value
    return out


def load_ood(spec: str, input_shape: tuple[int, ...]) -> Dataset:
    """The out-of-distribution set named by ``spec`` ("name" or "name:k=v;k=v"), checked against the model's inputs.

    Arguments are separated by semicolons (commas also work from Python) so a spec survives the CLI's
    comma-separated ``-p`` assignments.
    """
    name, raw = parse_spec(spec.replace(";", ","))
    kwargs: dict[str, Any] = {}
    for k, v in raw.items():
        for cast in (int, float):
            try:
                kwargs[k] = cast(v)
                break
            except ValueError:
                continue
        else:
            kwargs[k] = v
    ood = load_dataset(name, **kwargs)
    if tuple(ood.input_shape) != tuple(input_shape):
        raise InvalidArgument(
            f"ood_dataset {spec!r} has inputs shaped {tuple(ood.input_shape)} but the model takes "
            f"{tuple(input_shape)}; name an OOD set of that shape or use distribution=in"
        )
    return ood


def ood_class_inputs(ood: Dataset, source_class: int, spec: str) -> torch.Tensor:
    """Every input of ``source_class`` in the OOD set (training and test parts)."""
    data = ood.train if ood.test is None else TensorData.concat([ood.train, ood.test])
    if not 0 <= source_class < ood.num_classes:
        raise InvalidArgument(
            f"source_class={source_class} is not a class of ood_dataset {spec!r} (0..{ood.num_classes - 1})"
        )
    return data.where(data.y == source_class).x


def least_likely_class(model: nn.Module, x: torch.Tensor, exclude: tuple[int, ...] = ()) -> int:
    """The class with the lowest mean predicted probability on ``x``: a target independent models rarely predict."""
    mean_prob = torch.softmax(predict_logits(model, x), dim=1).mean(0)
    for c in exclude:
        mean_prob[c] = float("inf")
    return int(mean_prob.argmin())


def random_class(num_classes: int, generator: torch.Generator, exclude: tuple[int, ...] = ()) -> int:
    allowed = [c for c in range(num_classes) if c not in exclude]
    return allowed[int(torch.randint(len(allowed), (1,), generator=generator))]


def check_class(name: str, value: int, num_classes: int) -> int:
    if not 0 <= value < num_classes:
        raise InvalidArgument(f"{name}={value} is not a class of a {num_classes}-class model (0..{num_classes - 1})")
    return value


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round().clamp(0, 255).to(torch.uint8)


def certainty_differences(
    answers: torch.Tensor, n: int, target: int, certainty: float, *, paired: bool
) -> tuple[np.ndarray, dict[str, float]]:
    """d_i = (p_i − q_i) − α_c (``paired``: rows n.. are the untriggered inputs) or (p_i − 1/|Y|) − α_c.

    p_i (q_i) is the target-class probability of the i-th watermark input (of its untriggered original).
    """
    expected = 2 * n if paired else n
    if len(answers) != expected:
        raise InvalidArgument(f"expected {expected} answers, got {len(answers)}")
    probs = answers.double()
    p = probs[:n, target]
    extra: dict[str, float] = {}
    if paired:
        reference = probs[n:, target]
        extra["mean_q"] = float(reference.mean())
    else:
        reference = torch.full_like(p, 1.0 / answers.shape[1])
    d = (p - reference - certainty).numpy()
    if n == 0:
        return d, {}
    metrics = {
        "mean_p": float(p.mean()),
        **extra,
        "watermark_accuracy": float((answers[:n].argmax(1) == target).float().mean()),
        "median_certainty": float(np.median(d) + certainty),
    }
    return d, metrics


def certainty_floor(n: int, certainty: float, *, paired: bool, num_classes: int) -> float:
    """The smallest p-value of a certainty test on ``n`` watermark inputs (the signed-rank test here, EWE's sign
    test): every difference positive (the target certain with the trigger and, when ``paired``, absent without
    it), which one of the 2^n sign patterns gives, so p = ``2^−n``. Unpaired, the best difference is
    1 − 1/|Y| − α_c; when that is not positive after the tests' rounding, no difference can be and p = 1."""
    best = 1.0 - certainty - (0.0 if paired else 1.0 / num_classes)
    return 0.5**n if round(best, ROUND_DECIMALS) > 0 else 1.0


def is_one_hot(answers: torch.Tensor) -> bool:
    return bool(((answers == 0) | (answers == 1)).all() and (answers.sum(1) == 1).all())


# ---------------------------------------------------------------------------------------------------------------------
# The scheme
# ---------------------------------------------------------------------------------------------------------------------


class FrozenFeatures(nn.Module):
    """``model`` with G_e frozen: features in eval mode without gradients, only the decision layers train."""

    def __init__(self, model: Classifier):
        super().__init__()
        self.model = model

    def train(self, mode: bool = True) -> FrozenFeatures:
        self.training = mode
        self.model.eval()
        self.model.classifier.train(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = self.model.features(x)
        return self.model.classifier(features)


def parameterised_layers(net: nn.Module) -> list[nn.Module]:
    """The modules of ``net`` holding parameters of their own, in the order ``net`` registers them."""
    return [m for m in net.modules() if next(m.parameters(recurse=False), None) is not None]


class FrozenPrefix(nn.Module):
    """``model`` with all but its last ``k`` parameterised layers frozen (``trainable_from=k``): the frozen layers
    run in eval mode without gradients, every module from the first fine-tuned layer on follows the training mode.

    Use as a context manager around the fine-tuning: it turns the frozen weights' gradients off and back on."""

    def __init__(self, model: Classifier, k: int):
        super().__init__()
        layers = parameterised_layers(model.net)
        if not 1 <= k <= len(layers):
            raise InvalidArgument(
                f"trainable_from={k}: {model.arch} has {len(layers)} parameterised layers, so it must be in "
                f"[1, {len(layers)}]"
            )
        self.model = model
        modules = list(model.net.modules())
        self._start = next(i for i, m in enumerate(modules) if m is layers[-k])
        self._frozen = [q for layer in layers[:-k] for q in layer.parameters(recurse=False)]
        self._trainable = [q for layer in layers[-k:] for q in layer.parameters(recurse=False)]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self._trainable)

    def train(self, mode: bool = True) -> FrozenPrefix:
        self.training = mode
        self.model.training = mode
        for i, module in enumerate(self.model.net.modules()):
            module.training = mode and i >= self._start
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def __enter__(self) -> FrozenPrefix:
        self._before = [q.requires_grad for q in self._frozen]
        for q in self._frozen:
            q.requires_grad_(False)
        return self

    def __exit__(self, *exc: Any) -> None:
        for q, before in zip(self._frozen, self._before):
            q.requires_grad_(before)


@register_scheme
class FeatureSharingWatermark(Scheme):
    """Feature-sharing watermark (Tang et al.): frozen feature extractor, watermark learnt by the decision layers."""

    name = "feature-sharing"
    acts_at = "training"
    needs = "probs"
    pretrain = True
    default_arch = "cnn-small"
    tiny_params: ClassVar[dict[str, Any]] = {
        "distribution": "out",
        "ood_dataset": "synthetic:seed=11",
        "n_verify": 30,
        "finetune_epochs": 5,
    }
    strength = "n_watermark"
    per_item = ("verify_x",)
    larger_key = "more watermark inputs in the key (n_verify) or a certainty alpha_c below 1 - 1/|Y|"
    null_hypothesis = (
        "The suspect's watermark certainty is below alpha_c: the differences (p - q) - alpha_c (in-distribution; "
        "p, q = target-class probability with and without the trigger) or (p - 1/|Y|) - alpha_c "
        "(out-of-distribution) are independent and symmetric about a centre <= 0 (one-sided Wilcoxon signed-rank)."
    )

    @dataclasses.dataclass(frozen=True)
    class Params(BaseParams):
        kind = "feature-sharing scheme"
        distribution: Literal["in", "out"] = "out"
        source_class: int | None = None
        target_class: int | None = None
        patch_size: int = 3
        ood_dataset: str = "mnist-5k"
        n_watermark: int | None = None
        n_verify: int = 100
        certainty: float = 0.3
        finetune: Literal["last-layer", "decision-layers", "whole-network"] | None = None
        finetune_epochs: int = 5
        finetune_lr: float | None = None
        wdr_draws: int = 200
        wdr_fraction: float = 0.1
        wdr_alpha: float = 0.05
        trainable_from: int | None = None

        def validate(self) -> None:
            if self.finetune is None:  # resolved here, so that the key and a bench cell record the split used
                default = "decision-layers" if self.distribution == "in" else "last-layer"
                object.__setattr__(self, "finetune", default)
            if self.trainable_from is not None:
                if isinstance(self.trainable_from, bool) or self.trainable_from < 1:
                    raise InvalidArgument(
                        f"trainable_from must be >= 1 (the last k layers fine-tuned) or None, "
                        f"got {self.trainable_from!r}"
                    )
                if self.finetune == "whole-network":
                    raise InvalidArgument(
                        f"trainable_from={self.trainable_from} sets the frozen/fine-tuned split itself; "
                        f"finetune='whole-network' trains every layer"
                    )
            if self.patch_size < 1:
                raise InvalidArgument(f"patch_size must be >= 1, got {self.patch_size}")
            if self.n_watermark is not None and self.n_watermark < 1:
                raise InvalidArgument(f"n_watermark must be >= 1 (or None for all), got {self.n_watermark}")
            if not 2 <= self.n_verify <= 1000:
                raise InvalidArgument(f"n_verify must be in [2, 1000], got {self.n_verify}")
            if not 0.0 <= self.certainty < 1.0:
                raise InvalidArgument(f"certainty (alpha_c) must be in [0, 1), got {self.certainty}")
            if self.finetune_epochs < 1:
                raise InvalidArgument(f"finetune_epochs must be >= 1, got {self.finetune_epochs}")
            if self.finetune_lr is not None and not self.finetune_lr > 0:
                raise InvalidArgument(f"finetune_lr must be positive, got {self.finetune_lr}")
            if self.wdr_draws < 1 or not 0.0 < self.wdr_fraction <= 1.0 or not 0.0 < self.wdr_alpha < 1.0:
                raise InvalidArgument(
                    f"need wdr_draws >= 1, wdr_fraction in (0, 1], wdr_alpha in (0, 1); got "
                    f"{self.wdr_draws}, {self.wdr_fraction}, {self.wdr_alpha}"
                )
            for name in ("source_class", "target_class"):
                value = getattr(self, name)
                if value is not None and value < 0:
                    raise InvalidArgument(f"{name} must be >= 0, got {value}")

    # -- watermark sets ----------------------------------------------------------------------------------------------
    def watermark_sets(self, splits: Splits, clean: nn.Module, generator: torch.Generator) -> dict[str, Any]:
        """Source/target classes, the watermark training inputs and the held-back verification inputs (uint8)."""
        p = self.params
        c = splits.num_classes
        if p.distribution == "in":
            source = (
                check_class("source_class", p.source_class, c)
                if p.source_class is not None
                else random_class(c, generator)
            )
            target = (
                check_class("target_class", p.target_class, c)
                if p.target_class is not None
                else random_class(c, generator, exclude=(source,))
            )
            if source == target:
                raise InvalidArgument(
                    f"source_class and target_class are both {source}; the watermark needs two classes"
                )
            train_pool = splits.owner_train.where(splits.owner_train.y == source).x
            verify_pool = splits.owner_holdout.where(splits.owner_holdout.y == source).x
            if len(verify_pool) < p.n_verify:
                raise InvalidArgument(
                    f"owner_holdout has {len(verify_pool)} inputs of source class {source}, fewer "
                    f"than n_verify={p.n_verify}; lower n_verify or enlarge the holdout"
                )
            verify_x = verify_pool[torch.randperm(len(verify_pool), generator=generator)[: p.n_verify]]
            train_x = stamp_patch(
                train_pool[torch.randperm(len(train_pool), generator=generator)[: p.n_watermark]], p.patch_size
            )
        else:
            ood = load_ood(p.ood_dataset, splits.input_shape)
            source = p.source_class if p.source_class is not None else random_class(ood.num_classes, generator)
            pool = ood_class_inputs(ood, source, p.ood_dataset)
            if len(pool) <= p.n_verify:
                raise InvalidArgument(
                    f"ood_dataset {p.ood_dataset!r} has {len(pool)} inputs of class {source}: need "
                    f"more than n_verify={p.n_verify} (the rest are the watermark training inputs)"
                )
            pool = pool[torch.randperm(len(pool), generator=generator)]
            verify_x, train_x = pool[: p.n_verify], pool[p.n_verify :][: p.n_watermark]
            target = (
                check_class("target_class", p.target_class, c)
                if p.target_class is not None
                else least_likely_class(clean, train_x)
            )
        if len(train_x) == 0:
            raise InvalidArgument(f"no watermark training inputs of source class {source}")
        return {"source": source, "target": target, "train_x": train_x, "verify_u8": to_uint8(verify_x)}

    # -- embed -----------------------------------------------------------------------------------------------------
    def embed(
        self, model: Classifier, splits: Splits, *, train: TrainConfig | None = None, progress: bool | None = None
    ) -> Embedding:
        """Step 2 of the paper on a clean trained ``model``: fine-tune the decision layers on clean + watermark data."""
        p = self.params
        train = train or TrainConfig()
        generator = self.key_generator(train.seed, 7877)
        sets = self.watermark_sets(splits, model, generator)
        source, target = sets["source"], sets["target"]
        watermark = TensorData(sets["train_x"], torch.full((len(sets["train_x"]),), target, dtype=torch.long))
        data = TensorData.concat([splits.owner_train, watermark])
        config = train.replace(epochs=p.finetune_epochs, lr=p.finetune_lr or train.lr, patience=0)
        last = p.trainable_from if p.trainable_from is not None else (1 if p.finetune == "last-layer" else None)
        if last is not None:
            with FrozenPrefix(model, last) as wrapped:
                result = fit(
                    wrapped,
                    data,
                    config,
                    parameters=wrapped.trainable_parameters(),
                    progress=progress,
                    desc=f"embed feature-sharing (last {last} layers)",
                )
        elif p.finetune == "decision-layers":
            result = fit(
                FrozenFeatures(model),
                data,
                config,
                parameters=model.classifier.parameters(),
                progress=progress,
                desc="embed feature-sharing (decision layers)",
            )
        else:
            result = fit(model, data, config, progress=progress, desc="embed feature-sharing (whole network)")
        model.eval()
        key = Key(
            scheme=self.name,
            params=p.to_dict(),
            tensors={
                "verify_x": sets["verify_u8"],
                "source_class": torch.tensor(source),
                "target_class": torch.tensor(target),
            },
            meta=self.key_meta(splits, model, train=train.to_dict(), finetune=config.to_dict()),
        )
        model.provenance.update({"scheme": self.name, "key_digest": key.digest})
        info = {"training": result.to_dict(), "watermark_train_inputs": len(watermark)}
        return Embedding(model, key, info)

    # -- verify ----------------------------------------------------------------------------------------------------
    def verification_inputs(self, key: Key) -> torch.Tensor:
        x = to_float(key["verify_x"])
        if key.params.get("distribution", "out") == "in":
            return torch.cat([stamp_patch(x, int(key.params.get("patch_size", 3))), x])
        return x

    def item_queries(self, key: Key, items: torch.Tensor) -> torch.Tensor:
        """In-distribution, every stamped input is asked first and its untriggered original after all of them."""
        if key.params.get("distribution", "out") == "in":
            return torch.cat([items, items + self.key_items(key)])
        return items

    def attainable_p_value(self, key: Key, num_classes: int) -> float:
        """All n differences positive: W+ is then the largest, which one of the 2^n sign patterns reaches."""
        return certainty_floor(
            self.key_items(key),
            float(key.params.get("certainty", 0.3)),
            paired=key.params.get("distribution", "out") == "in",
            num_classes=num_classes,
        )

    def differences(self, answers: torch.Tensor, key: Key) -> tuple[np.ndarray, dict[str, float]]:
        return certainty_differences(
            answers,
            len(key["verify_x"]),
            int(key["target_class"]),
            float(key.params.get("certainty", 0.3)),
            paired=key.params.get("distribution", "out") == "in",
        )

    def evidence_from_answers(self, answers: torch.Tensor, key: Key, *, alpha: float, queries: int) -> Evidence:
        prm = self.Params.from_dict(key.params)
        d, metrics = self.differences(answers, key)
        test = signed_rank_greater(d)
        wdr, size = detection_rate(
            d, draws=prm.wdr_draws, fraction=prm.wdr_fraction, alpha=prm.wdr_alpha, seed=int(key.digest[:12], 16)
        )
        notes = [
            f"p-value exact under the signed-rank null (method {test.method}, zero_method={ZERO_METHOD}); that an "
            "independent model's differences are symmetric about a centre <= 0 is an assumption, checked "
            "empirically on innocent models"
        ]
        if prm.distribution == "out":
            notes.append(
                "out-of-distribution null compares with 1/|Y| (the paper's); it holds only when independent "
                "models rarely predict the target class for the OOD source images"
            )
        if is_one_hot(answers):
            notes.append(
                "the suspect answered labels only: p and q are 0/1 indicators (label-only variant of the test)"
            )
        return self.evidence(
            key,
            statistic_name="Wilcoxon W+ of the differences minus alpha_c",
            statistic=test.statistic,
            p_value=test.p_value,
            alpha=alpha,
            queries=queries,
            exact=True,
            metrics={
                **metrics,
                "pairs": test.n,
                "certainty": prm.certainty,
                "watermark_detection_rate": wdr,
                "wdr_draw_size": size,
                "wdr_draws": prm.wdr_draws,
            },
            details={
                "method": test.method,
                "zero_method": ZERO_METHOD,
                "zeros": test.zeros,
                "ties": test.ties,
                "wdr_alpha": prm.wdr_alpha,
                "distribution": prm.distribution,
            },
            notes=notes,
        )
