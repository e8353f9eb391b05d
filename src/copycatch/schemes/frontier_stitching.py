"""Adversarial frontier stitching (Le Merrer, Pérez and Trédan, Neural Computing and Applications 2020).

Paper: E. Le Merrer, P. Pérez and G. Trédan, "Adversarial frontier stitching for remote neural network
watermarking", Neural Computing and Applications 2020: Algorithms 1 and 2, Sec. 3 and 4.1. Implementations read: the
Watermark-Robustness-Toolbox's ``frontier_stitching.py`` and dunky11's TensorFlow port.

Key (Algorithm 1). FGSM (``copycatch.models.adversarial.fgsm``, L∞, step ``eps`` on [0, 1] inputs, the true label as
target of the ascent) turns owner-training examples that the trained model classifies correctly into candidates,
quantised to 1/255 (the key stores uint8) before they are sorted: one the model now misclassifies is a *true
adversary*, one it still classifies correctly a *false adversary*; both sit close to the decision frontier. The key
K holds ℓ/2 true and ℓ/2 false adversaries, each labelled with its original class.

Embedding. The trained model is fine-tuned at ``lr_factor`` × its training learning rate on its own training data,
with λ × the cross-entropy of ``key_batch`` key inputs added to every step's loss, until every key input is
classified as its key label (checked every ``check_every`` steps; at most ``max_epochs``). ``Embedding.info``
reports the epochs and steps taken and whether the key was fully stitched.

Verification (Algorithm 2). m_K is the Hamming distance between the suspect's labels and the key labels. The paper
models an unmarked model as matching each key label with probability ½: m_K ~ Binomial(|K|, ½), and the mark is found
when m_K < θ, θ the largest count with P(Z ≤ θ−1) < α (θ = 42 for |K| = 100 at α = 0.05, θ = 6 for |K| = 20). That
p-value, m_K and θ are always reported. The ½ model is an assumption about innocent models that fails in both directions
(an innocent model can match far more or far fewer than half of the key, depending on ε; measured:
benchmarks/README.md), so the default null is exact (``null="control"``): the key also holds ``n_control`` extra true
adversaries that are *not* stitched: of ℓ/2 + n_control true adversaries a uniformly random secret subset of ℓ/2 is
stitched and the rest are controls, queried alongside in a secret shuffled order. Null hypothesis: the suspect does not
depend on which subset was chosen. Then, given its answers, the number of stitched true adversaries it labels with their
original class is hypergeometric (one-sided Fisher exact test), whatever the suspect and ε. False adversaries carry no
evidence under this test (the clean model already labels them correctly) but stay in K, holding the frontier.

Parameters (defaults):
    key_length (100): ℓ = |K|, even; ℓ/2 true and ℓ/2 false adversaries are stitched (paper: 20 and 100).
    eps (0.25): FGSM step on [0, 1] inputs (paper default; its 0.025, 0.1 and 0.5 are selectable).
    n_control (50): unstitched true adversaries for the exact test; 0 only with null="paper".
    null ("control"): "control" (exact hypergeometric test on stitched vs control true adversaries) or "paper"
        (Binomial(|K|, ½) on m_K, reported as approximate, exact=False).
    lr_factor (0.1): fine-tuning learning rate as a share of the training learning rate (paper: 1/10).
    max_epochs (10): bound on fine-tuning epochs over the owner's training data.
    key_batch (32): key inputs (drawn with replacement) added to every fine-tuning step.
    lam (0.25): weight of the key loss (the paper gives none; measured: benchmarks/README.md).
    candidate_batch (512): owner-training examples turned into FGSM candidates at a time.
    check_every (10): fine-tuning steps between checks of the key (also checked at every epoch's end); fine-tuning
        stops at the first check that finds the whole key classified as labelled.

Deviations: the paper's TRAIN(k̂, K) does not say on what data; we fine-tune on the training data with the key added
to every step (as WRT does with a boosted key) so accuracy is kept, and stop as soon as the whole key is stitched
instead of after a fixed number of epochs. Candidates come from owner_train (the paper's Fig. 2: "from training
examples"). The control set and its exact test are ours. With little owner data (4,000 Fashion-MNIST images at
ε = 0.25 gave 44 of 50) false adversaries missing at ε are sought at ε/2, then ε/4.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import InvalidArgument
from ..core.evidence import Evidence
from ..core.key import Key
from ..core.params import Params as BaseParams
from ..core.stats import binomial_less, hypergeometric_greater
from ..data.base import Splits, to_float
from ..models.adversarial import fgsm
from ..models.base import Classifier
from ..models.train import TrainConfig, TrainHook, TrainState, fit, predict_logits
from .base import Embedding, Scheme, register_scheme

FALSE_ADVERSARY, TRUE_ADVERSARY, CONTROL = 0, 1, 2


def paper_threshold(key_length: int, alpha: float) -> int:
    """θ of Algorithm 2: the mark is found when m_K < θ, θ the largest value with P(Z <= θ-1) < alpha,
    Z ~ Binomial(key_length, ½) (0 when even a perfect match is not significant)."""
    from scipy import stats as st  # imported when used: 45 MB of resident memory

    below = np.flatnonzero(st.binom.cdf(np.arange(key_length + 1), key_length, 0.5) < alpha)
    return int(below[-1]) + 1 if len(below) else 0


class StitchHook(TrainHook):
    """Adds λ·CE on a batch of key inputs to every step; stops as soon as the whole key is classified as labelled
    (checked every ``check_every`` steps and at every epoch's end)."""

    state_attrs = ("generator", "stitched", "epochs", "steps", "checked_accuracy", "key_accuracy")

    def __init__(self, key_x: torch.Tensor, key_y: torch.Tensor, params: FrontierStitching.Params):
        self.key_x, self.key_y, self.params = key_x, key_y, params
        self.generator: torch.Generator | None = None
        self.stitched = False
        self.epochs = 0
        self.steps = 0  # the training step of the latest check
        self.checked_accuracy = 0.0  # the key accuracy that check found
        self.key_accuracy: list[float] = []

    def on_start(self, state: TrainState) -> None:
        self.key_x, self.key_y = self.key_x.to(state.device), self.key_y.to(state.device)
        self.generator = torch.Generator().manual_seed(state.config.seed + 15485863)

    def extra_loss(self, state, x, y, logits, loss):
        pick = torch.randint(len(self.key_x), (self.params.key_batch,), generator=self.generator).to(state.device)
        return loss + self.params.lam * F.cross_entropy(state.model(self.key_x[pick]), self.key_y[pick])

    def _check(self, state: TrainState) -> float:
        pred = predict_logits(state.model, self.key_x).argmax(1).to(self.key_y.device)
        accuracy = (pred == self.key_y).float().mean().item()
        self.steps, self.checked_accuracy = state.step, accuracy
        if accuracy == 1.0:
            self.stitched = True
            state.stop = True
        return accuracy

    def on_step_end(self, state: TrainState) -> None:
        # The key is 100 inputs: checking it costs a fraction of a step, and stopping the moment it is stitched
        # spares the rest of the epoch (the paper trains "until" the key is classified as labelled).
        if state.step % self.params.check_every == 0:
            self._check(state)

    def on_epoch_end(self, state: TrainState) -> None:
        # no step since the last check (a stop mid-epoch, or a check on the epoch's last step): same weights
        accuracy = self.checked_accuracy if self.steps == state.step else self._check(state)
        self.key_accuracy.append(accuracy)
        state.logs["key_accuracy"] = accuracy
        self.epochs = state.epoch + 1


@register_scheme
class FrontierStitching(Scheme):
    """Frontier stitching (Le Merrer et al. 2020): FGSM true/false adversaries stitched in by fine-tuning."""

    name = "frontier-stitching"
    acts_at = "training"
    needs = "labels"
    pretrain = True
    default_arch = "cnn-small"
    tiny_params: ClassVar[dict[str, Any]] = {
        "key_length": 30,
        "n_control": 30,
        "eps": 0.25,
        "max_epochs": 20,
        "key_batch": 32,
        "lam": 1.0,
    }
    strength = "lam"
    per_item = ("key_x", "key_label", "key_role")
    larger_key = "a longer key (key_length) and more controls (n_control)"
    null_hypothesis = (
        "The suspect does not depend on which true adversaries were secretly stitched: the stitched ones are a "
        "uniform random subset of the stitched-plus-control true adversaries, so the number of stitched ones it "
        "labels with their original class is hypergeometric given its answers."
    )
    paper_null_hypothesis = (
        "The suspect behaves like the paper's null model: it matches each key label with probability 1/2, "
        "independently, so the Hamming distance m_K ~ Binomial(|K|, 1/2)."
    )

    @dataclasses.dataclass(frozen=True)
    class Params(BaseParams):
        kind = "frontier-stitching scheme"
        key_length: int = 100
        eps: float = 0.25
        n_control: int = 50
        null: Literal["control", "paper"] = "control"
        lr_factor: float = 0.1
        max_epochs: int = 10
        key_batch: int = 32
        lam: float = 0.25
        candidate_batch: int = 512
        check_every: int = 10

        def validate(self) -> None:
            if self.key_length < 2 or self.key_length % 2:
                raise InvalidArgument(f"key_length must be an even number >= 2, got {self.key_length}")
            if not 0.0 < self.eps <= 1.0:
                raise InvalidArgument(f"eps must be in (0, 1] for [0, 1] inputs, got eps={self.eps}")
            if self.n_control < 0:
                raise InvalidArgument(f"n_control must be >= 0, got {self.n_control}")
            if self.null == "control" and self.n_control < 1:
                raise InvalidArgument("null='control' needs n_control >= 1 (or use null='paper')")
            if not self.lr_factor > 0:
                raise InvalidArgument(f"lr_factor must be positive, got {self.lr_factor}")
            if self.max_epochs < 1:
                raise InvalidArgument(f"max_epochs must be >= 1, got {self.max_epochs}")
            if self.check_every < 1:
                raise InvalidArgument(f"check_every must be >= 1, got {self.check_every}")
            if self.key_batch < 1 or self.candidate_batch < 1:
                raise InvalidArgument(
                    f"key_batch and candidate_batch must be >= 1, got {self.key_batch}, {self.candidate_batch}"
                )
            if self.lam < 0:
                raise InvalidArgument(f"lam must be >= 0, got {self.lam}")

    # -- key (Algorithm 1, lines 1-10) ----------------------------------------------------------------------------
    def make_key(
        self, model: Classifier, splits: Splits, generator: torch.Generator, progress: bool | None = None
    ) -> dict[str, torch.Tensor]:
        """Key tensors: inputs (uint8), original labels and roles, in a secret random order."""
        half = self.params.key_length // 2
        adversaries = self.find_adversaries(
            model, splits, generator, half + self.params.n_control, half, progress=progress
        )
        return self.assemble_key(*adversaries, generator)

    def find_adversaries(
        self,
        model: Classifier,
        splits: Splits,
        generator: torch.Generator,
        want_true: int,
        want_false: int,
        progress: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(true adversaries as uint8, their labels, false adversaries, their labels) from random owner-training
        examples the model classifies correctly (Algorithm 1, lines 1-9).

        With little owner data a large ε can turn nearly every example into a true adversary; the false ones still
        missing are then sought at ε/2, then ε/4 (they carry no evidence under the exact test, which compares
        stitched true adversaries with controls, so their ε does not touch the p-value)."""
        from ..core.runtime import progress as progress_bar

        p = self.params
        pool = splits.owner_train
        order = torch.randperm(len(pool), generator=generator)
        found: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {TRUE_ADVERSARY: [], FALSE_ADVERSARY: []}
        n_true = n_false = examined = 0
        chunks = range(0, len(order), p.candidate_batch)
        for eps in (p.eps, p.eps / 2, p.eps / 4):
            for start in progress_bar(chunks, total=len(chunks), desc="frontier candidates", enabled=progress):
                idx = order[start : start + p.candidate_batch]
                x, y = pool.batch(idx)
                examined += len(idx)
                correct = predict_logits(model, x).argmax(1) == y
                if not correct.any():
                    continue
                x, y = x[correct], y[correct]
                adv_u8 = (fgsm(model, x, eps, y=y) * 255).round().clamp(0, 255).to(torch.uint8)
                still = predict_logits(model, adv_u8.float() / 255).argmax(1) == y
                if eps == p.eps:
                    take = (~still).nonzero().flatten()[: want_true - n_true]
                    found[TRUE_ADVERSARY].append((adv_u8[take], y[take]))
                    n_true += len(take)
                take = still.nonzero().flatten()[: want_false - n_false]
                found[FALSE_ADVERSARY].append((adv_u8[take], y[take]))
                n_false += len(take)
                if n_true >= want_true and n_false >= want_false:
                    break
            if n_true < want_true or n_false >= want_false:
                break  # true adversaries come only from eps itself; a smaller step is tried for false ones only
        if n_true < want_true or n_false < want_false:
            raise InvalidArgument(
                f"eps={p.eps} gave {n_true} true and {n_false} false adversaries from {examined} training examples "
                f"(false ones also sought at eps/2 and eps/4); the key needs {want_true} true (including "
                f"{p.n_control} controls) and {want_false} false. "
                f"{'Lower' if n_false < want_false else 'Raise'} eps or shorten the key"
            )
        true_x, true_y = (torch.cat(parts) for parts in zip(*found[TRUE_ADVERSARY]))
        false_x, false_y = (torch.cat(parts) for parts in zip(*found[FALSE_ADVERSARY]))
        return true_x, true_y, false_x, false_y

    def assemble_key(
        self,
        true_x: torch.Tensor,
        true_y: torch.Tensor,
        false_x: torch.Tensor,
        false_y: torch.Tensor,
        generator: torch.Generator,
    ) -> dict[str, torch.Tensor]:
        """The secret draw the exact test rests on: which true adversaries are stitched (ℓ/2, uniformly at random)
        and which are controls; then everything in a secret random order."""
        half = self.params.key_length // 2
        if len(true_x) != half + self.params.n_control or len(false_x) != half:
            raise InvalidArgument(
                f"need {half + self.params.n_control} true and {half} false adversaries, got "
                f"{len(true_x)} and {len(false_x)}"
            )
        roles = torch.full((len(true_x),), CONTROL, dtype=torch.long)
        roles[torch.randperm(len(true_x), generator=generator)[:half]] = TRUE_ADVERSARY
        x_all = torch.cat([true_x, false_x])
        y_all = torch.cat([true_y, false_y])
        role_all = torch.cat([roles, torch.full((half,), FALSE_ADVERSARY, dtype=torch.long)])
        shuffle = torch.randperm(len(x_all), generator=generator)
        return {"key_x": x_all[shuffle], "key_label": y_all[shuffle], "key_role": role_all[shuffle]}

    # -- embed (Algorithm 1, line 11) -----------------------------------------------------------------------------
    def embed(
        self, model: Classifier, splits: Splits, *, train: TrainConfig | None = None, progress: bool | None = None
    ) -> Embedding:
        """Build the key from ``model`` (already trained) and fine-tune it until the key is stitched."""
        p = self.params
        train = train or TrainConfig()
        generator = self.key_generator(train.seed, 86028121)
        tensors = self.make_key(model, splits, generator, progress=progress)
        stitched = tensors["key_role"] != CONTROL
        hook = StitchHook(tensors["key_x"][stitched].float() / 255, tensors["key_label"][stitched], p)
        finetune = train.replace(
            lr=train.lr * p.lr_factor, epochs=p.max_epochs, schedule="constant", patience=0, seed=train.seed + 1
        )
        result = fit(model, splits.owner_train, finetune, hooks=[hook], progress=progress, desc="stitch frontier")
        if not hook.stitched:
            warnings.warn(
                f"frontier stitching: {hook.key_accuracy[-1]:.0%} of the key is classified as labelled after "
                f"max_epochs={p.max_epochs}; verification will be weaker (raise max_epochs or lam)",
                stacklevel=2,
            )
        steps_per_epoch = -(-len(splits.owner_train) // finetune.batch_size)
        info: dict[str, Any] = {
            "finetune_epochs": hook.epochs,
            "finetune_steps": hook.steps,
            "finetune_epochs_exact": round(hook.steps / steps_per_epoch, 3),
            "stitched": hook.stitched,
            "key_accuracy_per_epoch": hook.key_accuracy,
            "finetune": result.to_dict(),
        }
        key = Key(
            scheme=self.name,
            params=p.to_dict(),
            tensors=tensors,
            meta=self.key_meta(
                splits,
                model,
                train=finetune.to_dict(),
                finetune_epochs=hook.epochs,
                finetune_steps=hook.steps,
                stitched=hook.stitched,
            ),
        )
        model.provenance.update({"scheme": self.name, "key_digest": key.digest})
        return Embedding(model, key, info)

    # -- verify (Algorithm 2) -------------------------------------------------------------------------------------
    def verification_inputs(self, key: Key) -> torch.Tensor:
        return to_float(key["key_x"])

    def attainable_p_value(self, key: Key, num_classes: int) -> float:
        """Every key input labelled with its key label and every control with another class. The exact null then
        sees all ℓ/2 stitched true adversaries matched and no control: ``1 / C(ℓ/2 + n_control, ℓ/2)``; the paper's
        null sees m_K = 0: ``2^−|K|``."""
        roles = key["key_role"].long()
        if key.params.get("null", "control") == "paper":
            return binomial_less(0, int((roles != CONTROL).sum()), 0.5)
        stitched, controls = int((roles == TRUE_ADVERSARY).sum()), int((roles == CONTROL).sum())
        return hypergeometric_greater(stitched, stitched + controls, stitched, stitched)

    def evidence_from_answers(self, answers: torch.Tensor, key: Key, *, alpha: float, queries: int) -> Evidence:
        roles, labels = key["key_role"].long(), key["key_label"].long()
        if len(answers) != len(labels):
            raise InvalidArgument(f"{len(answers)} answers for a key of {len(labels)} inputs")
        match = answers.argmax(dim=1) == labels
        in_key = roles != CONTROL
        key_size = int(in_key.sum())
        distance = int((~match[in_key]).sum())  # m_K, Eq. 4
        theta = paper_threshold(key_size, alpha)
        paper_p = binomial_less(distance, key_size, 0.5)
        stitched_true = roles == TRUE_ADVERSARY
        controls = roles == CONTROL
        hits, control_hits = int(match[stitched_true].sum()), int(match[controls].sum())
        n_stitched, n_control = int(stitched_true.sum()), int(controls.sum())
        metrics: dict[str, Any] = {
            "hamming_distance": distance,
            "key_size": key_size,
            "theta": theta,
            "paper_detected": distance < theta,
            "paper_p_value": paper_p,
            "key_accuracy": 1.0 - distance / max(key_size, 1),
            "true_adversaries_matched": hits,
            "true_adversaries": n_stitched,
            "false_adversaries_matched": int(match[roles == FALSE_ADVERSARY].sum()),
            "controls_matched": control_hits,
            "controls": n_control,
        }
        null = key.params.get("null", "control")
        if null == "paper":
            return self.evidence(
                key,
                null_hypothesis=self.paper_null_hypothesis,
                statistic_name="Hamming distance m_K (smaller is stronger)",
                statistic=distance,
                p_value=paper_p,
                alpha=alpha,
                queries=queries,
                exact=False,
                metrics=metrics,
                notes=[
                    "the paper's null model (each key label matched with probability 1/2) is an assumption, not a "
                    "guarantee: independently trained models can match far more than half of a key built with a "
                    "small eps; use null='control' for an exact test"
                ],
            )
        p_value = hypergeometric_greater(hits, n_stitched + n_control, hits + control_hits, n_stitched)
        return self.evidence(
            key,
            statistic_name="stitched true adversaries matched",
            statistic=hits,
            p_value=p_value,
            alpha=alpha,
            queries=queries,
            exact=True,
            metrics=metrics,
        )
