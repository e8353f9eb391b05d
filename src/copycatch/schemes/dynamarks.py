"""DynaMarks: an API-time watermark in the served probabilities.

Paper: A. Chakraborty, D. Xing, Y. Liu and A. Srivastava, "DynaMarks: Defending Against Deep Learning Model
Extraction Using Dynamic Watermarking", 2022: Algorithms 1 and 2, Sec. IV and V-B. No public code exists.

Embedding (Algorithm 1). Nothing is trained: the model's weights are untouched. ``protect(oracle, key)`` wraps the
served oracle in a post-processor that, for every answer whose top class i has probability in (α_i, β_i], draws
Δp ~ U(a_i, b_i) and an index j from the secret vector V_i, and moves Δp from class i to class j. V_i weighs one
secret index, drawn uniformly from the N classes, by ``favoured_weight`` and every other index by 1, normalised
(2/11 and 1/11 for N = 10, as in the paper). α_i >= 1/2 + b_i (checked, and checked again on every answer) keeps
the top class, so accuracy is unchanged. A thief that fits a surrogate to these answers copies the secret bias.

Verification (Algorithm 2). The key holds ``n_verify`` test-split inputs (uint8 pixels, token ids or 16-bit
samples) and the owner's unwatermarked answers F_org on them. The suspect's answers are grouped into an N×N table
(cell (i, j): the class-j probabilities of the inputs in row i, as a histogram); δ_org = Σ_ij JSD(D_org_ij ‖
D_sm_ij), δ_alt the same against F_alt, the owner's watermarked answers simulated with the secret, and
η = δ_org / δ_alt: the paper detects the mark when η > τ. η, δ_alt and that decision are reported.

The p-value is ours (the paper has the hand-set τ only): much of what separates F_alt from F_org is public (every
confident answer loses 0.01-0.19 of its top probability), so an innocent model that is merely less confident than
F_org has η > 1. Null hypothesis: the suspect's answers do not depend on the secret (each class's favoured index
and, with ``range_choices`` > 1, sub-range of (a, b)). The secret actually drawn is then one more uniform draw
among the (N·K)^N possible ones, and the p-value is the share of secrets that fit the suspect at least as well as
the true one, computed exactly by convolution for two fit statistics (``DynaMarks.evidence_from_answers``), the
smaller doubled (Bonferroni). The smallest attainable is 2 / (N·K)^N: 2e-10 for 10 classes.

Parameters (defaults; probabilities in [0, 1]):
    alpha (0.9), beta (1.0): the top-class probability range (α, β] that gets perturbed (paper: α=0.9, β=1).
    a (0.01), b (0.19): Δp ~ U(a, b) (paper).
    favoured_weight (2.0): weight of the secret index in V_i relative to 1 for the others (paper: 2/11 vs 1/11 for
        N = 10). Larger values make the secret survive extraction far better (measured: benchmarks/README.md).
    range_choices (1): K; K > 1 splits (a, b) into K equal sub-ranges and gives each class a secret one, log2(K)
        more secret bits per class (the paper's a_i, b_i are per-class secrets; its experiments use K = 1).
    n_verify (1000): verification inputs drawn from the test split (paper: the whole test set); the key stores them
        (uint8 pixels, about 0.8 kB per 28×28 input; token ids and audio samples as the data stores them) with
        F_org's answers. The mechanism never looks at the inputs, so it applies to every modality. 1,000, not the
        paper's whole test set: the p-value is bounded by the secret, not the queries (benchmarks/README.md).
    bins (20): equal histogram bins on [0, 1] (the paper does not say how it builds them).
    tau (1.0): the paper's detection threshold on η, reported as ``paper_detected``.

Deviations: rows of the response table are grouped by F_org's predicted class instead of the true label (the two
agree on correctly classified inputs; it makes the exact null possible and needs no labels); δ_alt takes the better
of two renderings of F_alt (``DynaMarks.evidence_from_answers``); the range is (α, β] so that float32 answers
saturated at exactly 1.0 are perturbed too; the API's noise comes from a generator seeded by the key (reproducible
runs; fresh per query, so repeated queries differ as in the paper).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch

from ..core.errors import InvalidArgument
from ..core.evidence import Evidence
from ..core.key import Key
from ..core.params import Params as BaseParams
from ..core.stats import independent_choices_greater
from ..data.base import Splits, to_float
from ..models.base import Classifier
from ..models.io import weights_digest
from ..models.train import TrainConfig, predict_logits
from ..oracles.base import Oracle
from .base import Embedding, Scheme, register_scheme

LOG_FLOOR = 1e-6  # probabilities below this are equal for the paired statistic (float32 answers saturate)


def selection_probabilities(num_classes: int, favoured: torch.Tensor, weight: float) -> torch.Tensor:
    """V for each favoured index: ``weight`` on it, 1 elsewhere, normalised (shape favoured.shape + (N,))."""
    weights = torch.ones(*favoured.shape, num_classes, dtype=torch.float64)
    weights.scatter_(-1, favoured.unsqueeze(-1), weight)
    return weights / weights.sum(-1, keepdim=True)


def _move(out: torch.Tensor, source: torch.Tensor, target: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Move ``delta`` of probability from class ``source`` to class ``target`` in every row of ``out`` (in place)."""
    out.scatter_add_(-1, source.unsqueeze(-1), -delta.unsqueeze(-1))
    out.scatter_add_(-1, target.unsqueeze(-1), delta.unsqueeze(-1))
    return out


@dataclasses.dataclass(frozen=True)
class DynaMarksSecret:
    """Per-class secret parameters: V (N×N selection probabilities), α, β and the Δp range [low, low + width)."""

    selection: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor
    low: torch.Tensor
    width: torch.Tensor

    @classmethod
    def build(cls, params: DynaMarks.Params, favoured: torch.Tensor, range_index: torch.Tensor) -> DynaMarksSecret:
        n = len(favoured)
        width = (params.b - params.a) / params.range_choices
        return cls(
            selection_probabilities(n, favoured, params.favoured_weight),
            torch.full((n,), params.alpha, dtype=torch.float64),
            torch.full((n,), params.beta, dtype=torch.float64),
            params.a + width * range_index.double(),
            torch.full((n,), width, dtype=torch.float64),
        )

    def perturb(self, probs: torch.Tensor, u_delta: torch.Tensor, u_index: torch.Tensor) -> torch.Tensor:
        """Algorithm 1, lines 4-11, with the uniform draws given (so verification can replay them)."""
        out = probs.double().clone()
        top, i = out.max(dim=1)
        active = (top > self.alpha[i]) & (top <= self.beta[i])
        delta = torch.where(active, self.low[i] + self.width[i] * u_delta.double(), 0.0)
        j = torch.searchsorted(self.selection[i].cumsum(1), u_index.double().unsqueeze(1)).squeeze(1)
        return _move(out, i, j.clamp_max(out.shape[1] - 1), delta).to(probs.dtype)


def candidate_responses(
    params: DynaMarks.Params, cls: int, probs: torch.Tensor, u_delta: torch.Tensor, u_index: torch.Tensor
) -> torch.Tensor:
    """F_alt on inputs whose top class is ``cls``, for every secret of that class at once: (N·K)×n×N, candidate
    f·K + r having favoured index f and sub-range r. Same arithmetic as :meth:`DynaMarksSecret.perturb`."""
    n, num_classes = probs.shape
    k = params.range_choices
    width = (params.b - params.a) / k
    probs = probs.double()
    top = probs[:, cls]
    active = (top > params.alpha) & (top <= params.beta)
    lows = params.a + width * torch.arange(k).double()
    delta = torch.where(active, lows[:, None] + width * u_delta.double()[None, :], 0.0)  # K×n
    selection = selection_probabilities(num_classes, torch.arange(num_classes), params.favoured_weight)
    j = torch.searchsorted(selection.cumsum(1), u_index.double().expand(num_classes, n).contiguous())  # N×n
    out = probs.expand(num_classes, k, n, num_classes).clone()
    shape = (num_classes, k, n)
    _move(
        out, torch.full(shape, cls), j.clamp_max(num_classes - 1)[:, None, :].expand(shape), delta[None].expand(shape)
    )
    return out.reshape(num_classes * k, n, num_classes)


def expected_candidate_responses(params: DynaMarks.Params, cls: int, probs: torch.Tensor) -> torch.Tensor:
    """E[F_alt] on inputs whose top class is ``cls``, for every secret of that class: (N·K)×n×N. Averaged over
    Δp and j, Algorithm 1 moves E[Δp]·V_f[j] to each class j and E[Δp] away from ``cls``."""
    n, num_classes = probs.shape
    k = params.range_choices
    width = (params.b - params.a) / k
    probs = probs.double()
    top = probs[:, cls]
    active = ((top > params.alpha) & (top <= params.beta)).double()
    mean_delta = params.a + width * torch.arange(k).double() + width / 2
    selection = selection_probabilities(num_classes, torch.arange(num_classes), params.favoured_weight)
    selection[:, cls] -= 1.0
    change = selection[:, None, None, :] * mean_delta[None, :, None, None] * active[None, None, :, None]
    return (probs[None, None] + change).reshape(num_classes * k, n, num_classes)


class DynaMarksPerturbation:
    """The API-time post-processor: ``__call__(probs, inputs) -> probs``, row by row, fresh noise per answer."""

    name = "dynamarks"
    output_kind = "probs"

    def __init__(self, secret: DynaMarksSecret, seed: int):
        self.secret = secret
        self.generator = torch.Generator().manual_seed(int(seed))

    def __call__(self, probs: torch.Tensor, inputs: torch.Tensor | None = None) -> torch.Tensor:
        if probs.shape[1] != self.secret.selection.shape[0]:
            raise InvalidArgument(
                f"DynaMarks key is for {self.secret.selection.shape[0]} classes, answers have {probs.shape[1]}"
            )
        u = torch.rand(2, len(probs), generator=self.generator, dtype=torch.float64)
        out = self.secret.perturb(probs, u[0], u[1])
        if not torch.equal(out.argmax(1), probs.argmax(1)):  # guaranteed by α >= 1/2 + b; never trust, check
            raise RuntimeError("DynaMarks changed a predicted class; this is a bug")
        return out

    def spec(self) -> str:
        return self.name  # the parameters are secret


@register_scheme
class DynaMarks(Scheme):
    """DynaMarks (Chakraborty et al. 2022): secret per-class perturbation of the served probabilities."""

    name = "dynamarks"
    acts_at = "api"
    needs = "probs"
    pretrain = True
    default_arch = "cnn-small"
    # the mechanism reads and perturbs output probabilities only; the verification inputs are stored as given
    modalities: ClassVar[tuple[str, ...]] = ("image", "text", "audio")
    tiny_params: ClassVar[dict[str, Any]] = {"n_verify": 400, "range_choices": 4}
    # No parameter costs accuracy: every answer keeps its predicted class (checked on every answer), so the
    # accuracy-cost guard measures the served API at the clean model's accuracy.
    strength = None
    per_item = ("verify_x", "verify_org")
    larger_key = "more secret bits per class (range_choices)"
    null_hypothesis = (
        "The suspect's answers do not depend on the secret (each class's favoured index and sub-range): the secret "
        "actually drawn is then one more uniform draw, so how well it fits the suspect (delta_alt, paired log error) "
        "ranks uniformly among all possible secrets."
    )

    @dataclasses.dataclass(frozen=True)
    class Params(BaseParams):
        kind = "DynaMarks scheme"
        alpha: float = 0.9
        beta: float = 1.0
        a: float = 0.01
        b: float = 0.19
        favoured_weight: float = 2.0
        range_choices: int = 1
        n_verify: int = 1000
        bins: int = 20
        tau: float = 1.0

        def validate(self) -> None:
            if not 0.5 <= self.alpha < self.beta <= 1.0:
                raise InvalidArgument(f"need 0.5 <= alpha < beta <= 1, got alpha={self.alpha}, beta={self.beta}")
            if not 0.0 <= self.a <= self.b:
                raise InvalidArgument(f"need 0 <= a <= b, got a={self.a}, b={self.b}")
            if self.alpha < 0.5 + self.b:
                raise InvalidArgument(
                    f"alpha={self.alpha} < 1/2 + b={0.5 + self.b}: moving up to b could change the "
                    "predicted class; lower b or raise alpha"
                )
            if self.favoured_weight <= 0:
                raise InvalidArgument(f"favoured_weight must be positive, got {self.favoured_weight}")
            if self.range_choices < 1:
                raise InvalidArgument(f"range_choices must be >= 1, got {self.range_choices}")
            if self.n_verify < 1:
                raise InvalidArgument(f"n_verify must be >= 1, got {self.n_verify}")
            if self.bins < 2:
                raise InvalidArgument(f"bins must be >= 2, got {self.bins}")
            if not self.tau > 0:
                raise InvalidArgument(f"tau must be positive, got {self.tau}")

    # -- embed -----------------------------------------------------------------------------------------------------
    def embed(
        self, model: Classifier, splits: Splits, *, train: TrainConfig | None = None, progress: bool | None = None
    ) -> Embedding:
        """Draw the secret and the verification set; ``model`` (already trained) is returned untouched."""
        p = self.params
        train = train or TrainConfig()
        before = weights_digest(model)
        generator = self.key_generator(train.seed, 49979687)
        n = splits.num_classes
        favoured = torch.randint(n, (n,), generator=generator)
        range_index = torch.randint(p.range_choices, (n,), generator=generator)
        if len(splits.test) == 0:
            raise InvalidArgument("DynaMarks draws its verification set from the test split, which is empty")
        pick = torch.randperm(len(splits.test), generator=generator)[: p.n_verify]
        verify = splits.test.subset(pick)
        # images are stored as uint8 pixels; token ids (int64) and audio samples (int16) as the data stores them
        if splits.modality == "image":
            verify_x = (verify.x * 255).round().clamp(0, 255).to(torch.uint8)
        else:
            verify_x = verify.stored
        verify_org = torch.softmax(predict_logits(model, to_float(verify_x)), dim=1)
        seeds = torch.randint(2**62, (2,), generator=generator)
        tensors = {
            "favoured": favoured,
            "range_index": range_index,
            "verify_x": verify_x,
            "verify_org": verify_org.float(),
            "verify_seed": seeds[:1],
            "api_seed": seeds[1:],
        }
        if weights_digest(model) != before:
            raise RuntimeError("DynaMarks changed the model's weights; this is a bug")
        key = Key(scheme=self.name, params=p.to_dict(), tensors=tensors, meta=self.key_meta(splits, model))
        model.provenance.update({"scheme": self.name, "key_digest": key.digest})
        secret = self.secret(key)
        replay = secret.perturb(verify_org, *self._replay_draws(key))
        info = {
            "weights_untouched": True,
            "verification_inputs": len(pick),
            "perturbed_share": float((replay != verify_org.double()).any(1).float().mean()),
            "argmax_preserved": bool(torch.equal(replay.argmax(1), verify_org.argmax(1))),
        }
        return Embedding(model, key, info)

    def secret(self, key: Key) -> DynaMarksSecret:
        return DynaMarksSecret.build(
            self.Params.from_dict(key.params), key["favoured"].long(), key["range_index"].long()
        )

    def protect(self, oracle: Oracle, key: Key) -> Oracle:
        self.check_key(key, oracle)
        return oracle.postprocess(DynaMarksPerturbation(self.secret(key), int(key["api_seed"][0])))

    # -- verify (Algorithm 2) -------------------------------------------------------------------------------------
    def verification_inputs(self, key: Key) -> torch.Tensor:
        return to_float(key["verify_x"])

    def verify(
        self, oracle: Oracle, key: Key, *, alpha: float = 1e-3, progress: bool | None = None, power: bool = False
    ) -> Evidence:
        self.check_oracle(oracle)  # DynaMarks compares probability distributions: labels carry none
        return super().verify(oracle, key, alpha=alpha, progress=progress, power=power)

    def attainable_p_value(self, key: Key, num_classes: int) -> float:
        """Answers that fit the true secret better than any other in every row class: both fit statistics then rank
        it first, and p = ``min(1, 2 / Π_i d_i)``. A row class counts when one of its verification inputs has F_org's
        top probability in (α, β] (elsewhere no candidate secret perturbs anything, so all fit alike); its d_i
        distinct candidates are N favoured indices (one when ``favoured_weight`` = 1 makes every V_i uniform) times
        K sub-ranges (one when a = b)."""
        p = self.Params.from_dict(key.params)
        top, rows = key["verify_org"].double().max(1)
        classes = len(rows[(top > p.alpha) & (top <= p.beta)].unique())
        candidates = (num_classes if p.favoured_weight != 1 else 1) * (p.range_choices if p.b > p.a else 1)
        return min(1.0, 2.0 / float(candidates) ** classes)

    @staticmethod
    def _replay_draws(key: Key) -> tuple[torch.Tensor, torch.Tensor]:
        """The uniform draws F_alt is simulated with; the same for every candidate secret (common random numbers)."""
        n = len(key["verify_x"])
        u = torch.rand(2, n, generator=torch.Generator().manual_seed(int(key["verify_seed"][0])), dtype=torch.float64)
        return u[0], u[1]

    def evidence_from_answers(self, answers: torch.Tensor, key: Key, *, alpha: float, queries: int) -> Evidence:
        """η of Algorithm 2 and the exact p-value over all secrets.

        F_alt is random, so δ_alt renders it two ways: answered once per input (the paper's q_x = F_alt(x), what the
        API itself answers) and in expectation over Δp and j (what a surrogate fitted to many noisy answers converges
        to); δ_alt is the smaller. Grouping rows by F_org's predicted class (the class whose V_i perturbs the input)
        makes each fit statistic (two of them, see ``_compare``) a sum of independent per-class terms, so the share of
        all (N·K)^N secrets that fit at least as well as the true one is computed exactly by convolution
        (``copycatch.core.stats.independent_choices_greater``, conservative on a 2^16 grid). p = twice the smaller
        of the two shares (Bonferroni), so it stays exact (conservative); the smallest attainable is 2 / (N·K)^N:
        2e-10 for 10 classes, 2/256 for 4 classes with range_choices=1."""
        p = self.Params.from_dict(key.params)
        org = key["verify_org"].double()
        answers = answers.double()
        if answers.shape != org.shape:
            raise InvalidArgument(f"answers shaped {tuple(answers.shape)} for a key expecting {tuple(org.shape)}")
        one_hot = ((answers == 0) | (answers == 1)).all() and (answers.sum(1) == 1).all()
        if one_hot:
            raise InvalidArgument("the suspect answered one-hot labels; DynaMarks needs probabilities")
        n = org.shape[1]
        c = self._compare(p, key, answers, org)
        delta_alt = min(c["delta_draw"], c["delta_mean"])
        eta = c["delta_org"] / delta_alt if delta_alt > 0 else float("inf")
        p_distributions = independent_choices_greater(c["distribution_scores"], c["chosen"])
        p_paired = independent_choices_greater(c["paired_scores"], c["chosen"])
        p_value = min(1.0, 2 * min(p_distributions, p_paired))
        return self.evidence(
            key,
            statistic_name="eta = delta_org / delta_alt (Algorithm 2)",
            statistic=eta,
            p_value=p_value,
            alpha=alpha,
            queries=queries,
            exact=True,
            metrics={
                "eta": eta,
                "tau": p.tau,
                "paper_detected": eta > p.tau,
                "delta_org": c["delta_org"],
                "delta_alt": delta_alt,
                "delta_alt_drawn": c["delta_draw"],
                "delta_alt_expected": c["delta_mean"],
                "p_distributions": p_distributions,
                "p_paired": p_paired,
                "mean_secret_rank": float(np.mean(c["ranks"])) if c["ranks"] else float("nan"),
                "candidates_per_class": n * p.range_choices,
                "classes_compared": len(c["chosen"]),
            },
            details={"secret_rank_per_class": c["ranks"]},
        )

    def _compare(self, p: DynaMarks.Params, key: Key, answers: torch.Tensor, org: torch.Tensor) -> dict[str, Any]:
        """Row class by row class (F_org's predicted class): δ_org, δ_alt drawn and expected for the true secret, and
        both fit statistics of every candidate secret (negated: larger is a better fit) with the true one's index:

        * Algorithm 2's δ_alt with F_alt answered once per candidate secret, all with the same random numbers
          (stored in the key): it recognises the API itself, whose answers are such draws;
        * a paired one: Σ over inputs and classes of (log s_x,j − log E[F_alt(x)]_j)², probabilities floored at
          1e-6: it recognises a surrogate, which approximates E[F_alt] input by input (histograms discard that
          pairing, and with it most of the power against surrogates)."""
        rows = org.argmax(1)
        u_delta, u_index = self._replay_draws(key)
        favoured, range_index = key["favoured"].long(), key["range_index"].long()
        log_answers = answers.clamp_min(LOG_FLOOR).log()
        delta_org, delta_draw, delta_mean = 0.0, 0.0, 0.0
        distribution_scores, paired_scores, chosen, ranks = [], [], [], []
        for i in range(org.shape[1]):
            members = rows == i
            if not members.any():
                continue
            true_index = int(favoured[i]) * p.range_choices + int(range_index[i])
            sm = _histograms(answers[members], p.bins)
            delta_org += float(_jsd(_histograms(org[members], p.bins), sm).sum())
            drawn = candidate_responses(p, i, org[members], u_delta[members], u_index[members])
            expected = expected_candidate_responses(p, i, org[members])
            by_draw = _jsd(_histograms(drawn, p.bins), sm).sum(-1)  # Algorithm 2's δ_alt per candidate secret
            delta_draw += float(by_draw[true_index])
            delta_mean += float(_jsd(_histograms(expected[true_index], p.bins), sm).sum())
            paired = ((log_answers[members] - expected.clamp_min(LOG_FLOOR).log()) ** 2).sum((1, 2)).numpy()
            distribution_scores.append(-by_draw)  # smaller distances are stronger evidence
            paired_scores.append(-paired)
            chosen.append(true_index)
            ranks.append(int((paired < paired[true_index]).sum()) + 1)
        return {
            "delta_org": delta_org,
            "delta_draw": delta_draw,
            "delta_mean": delta_mean,
            "distribution_scores": distribution_scores,
            "paired_scores": paired_scores,
            "chosen": chosen,
            "ranks": ranks,
        }


def _histograms(probs: torch.Tensor, bins: int) -> np.ndarray:
    """Responses (…×n×N) → one normalised histogram of each column's values (…×N×bins), equal bins on [0, 1]."""
    p = probs.double().clamp(0.0, 1.0).numpy()
    lead, (n, columns) = p.shape[:-2], p.shape[-2:]
    index = np.minimum((p * bins).astype(np.int64), bins - 1).reshape(-1, n, columns)
    cell = np.arange(len(index))[:, None, None] * columns + np.arange(columns)[None, None, :]
    counts = np.bincount((cell * bins + index).ravel(), minlength=len(index) * columns * bins)
    return counts.reshape(*lead, columns, bins) / n


def _jsd(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence (base 2, in [0, 1]) between matching rows of two histogram arrays."""
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log2(p / m), 0.0).sum(-1)
        kl_q = np.where(q > 0, q * np.log2(q / m), 0.0).sum(-1)
    return (kl_p + kl_q) / 2
