"""Papernot et al.'s Jacobian-based dataset augmentation (JBDA): grow a small seed set along the substitute's
gradients and label each new point with the victim.

Paper: Papernot, McDaniel, Goodfellow, Jha, Celik and Swami, "Practical Black-Box Attacks against Machine Learning"
(AsiaCCS 2017), Algorithm 1 and Sec. 4; reference code: cleverhans's ``mnist_blackbox.py`` and
``jacobian_augmentation``.

Round ρ = 0 … rounds−1: train the surrogate (the substitute) on the current set S_ρ; unless it is the last
round, add one new point per point of S_ρ,

    x' = clip(x + λ_ρ · sign(∇ₓ F_sub(x)[y])),

where y is the point's current label and λ_ρ = −λ for ρ < 3 and +λ afterwards (the reference code's
``2·int(int(ρ/3) != 0) − 1``), and label the new points with the victim's **argmax** answer. The set
doubles each round: with the defaults 150 seeds become 4,800 points after 6 rounds and the victim is
asked 150·(2⁵ − 1) = 4,650 times.

The seeds are labelled with the pool's **true labels** (``seed_labels="truth"``), as in the reference
code, where the adversary holds a small labelled hold-out set; this attack legitimately uses them.
``seed_labels="oracle"`` asks the victim for the seeds' labels too (150 extra queries), for a thief whose
pool has no labels of the victim's task (e.g. an out-of-distribution pool).

Parameters (defaults):
    seeds (150): size of the initial substitute set, drawn at random from the pool.
    rounds (6): ρ, substitute training rounds (augmentations = rounds − 1).
    lam (0.1): λ, step of each augmentation (inputs in [0, 1]).
    flip_every (3): the sign of λ flips after this many augmentations (reference code: 3; 0 = never,
        as in CFW's PyTorch variant).
    seed_labels ("truth"): "truth" (pool labels) or "oracle" (queried).
    soft (False): train on the victim's full answers instead of argmax labels (CFW's variant).
    query_batch (256): inputs per oracle call.
    budget (None): queries to spend; None = the full schedule. A smaller budget cuts the schedule: the
        last augmentation queries only as many new points as the budget still pays for (the rest are
        dropped); a larger one is not used up (the schedule, not the budget, decides).
    data_fraction (1.0): γ, the share of the attacker pool the thief holds.

Each round trains with the thief's ``TrainConfig`` (the reference: 10 epochs, Adam 1e-3, batch 128 — the
``TrainConfig`` defaults), continuing from the previous round's weights as the reference code does.

Deviations: new points are clipped to [0, 1], the valid input range of every copycatch oracle (the
reference code does not clip). The Jacobian is that of the substitute's logits, as in the reference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

from ...core.errors import InvalidArgument
from ...data.base import TensorData
from ...models.base import Classifier
from ...models.train import TrainConfig, fit, soft_cross_entropy
from ...oracles.base import Oracle, query_all
from .base import ExtractionAttack, ExtractionResult, answers_to_targets, draw_indices, register_extraction, timed


def jacobian_step(
    model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, lam: float, *, batch_size: int = 1024
) -> torch.Tensor:
    """x + lam · sign(∂ logit_label / ∂x), clipped to [0, 1], batched; the model is left in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for s in range(0, len(x), batch_size):
        xb = x[s : s + batch_size].to(device).detach().requires_grad_(True)
        yb = labels[s : s + batch_size].to(device)
        (grad,) = torch.autograd.grad(model(xb).gather(1, yb.unsqueeze(1)).sum(), xb)
        out.append((xb.detach() + lam * grad.sign()).clamp(0, 1).cpu())
    return torch.cat(out) if out else x.clone()


@register_extraction
class JacobianAugmentation(ExtractionAttack):
    """Papernot's JBDA: label 150 seeds, then double the set each round along the substitute's Jacobian signs."""

    name = "jacobian"
    modalities = ("image",)  # its synthetic inputs step along input gradients and are clipped to [0, 1] pixels

    @dataclasses.dataclass(frozen=True)
    class Params(ExtractionAttack.Params):
        seeds: int = 150
        rounds: int = 6
        lam: float = 0.1
        flip_every: int = 3
        seed_labels: Literal["truth", "oracle"] = "truth"
        soft: bool = False
        query_batch: int = 256

        def validate(self) -> None:
            super().validate()
            for name in ("seeds", "rounds", "query_batch"):
                if getattr(self, name) < 1:
                    raise InvalidArgument(f"{name} must be >= 1, got {name}={getattr(self, name)}")
            if not self.lam > 0:
                raise InvalidArgument(f"lam must be positive, got lam={self.lam}")
            if self.flip_every < 0:
                raise InvalidArgument(f"flip_every must be >= 0, got flip_every={self.flip_every}")

    def step_size(self, augmentation: int) -> float:
        """λ_ρ of augmentation ρ (0-based): −λ before the flip, +λ after it."""
        if self.params.flip_every == 0:
            return self.params.lam
        return self.params.lam if augmentation >= self.params.flip_every else -self.params.lam

    def planned_queries(self, n_seeds: int) -> int:
        augmented = n_seeds * (2 ** (self.params.rounds - 1) - 1)
        return augmented + (n_seeds if self.params.seed_labels == "oracle" else 0)

    def _targets(self, answers: torch.Tensor) -> torch.Tensor:
        if self.params.soft:
            return answers_to_targets(answers)
        return F.one_hot(answers.argmax(dim=1), answers.shape[1]).to(answers.dtype)

    def _label_seeds(
        self, seeds: TensorData, num_classes: int, ask: Callable[[torch.Tensor, str], torch.Tensor], budget: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """S_0: the seeds with the victim's answers (``seed_labels="oracle"``) or their one-hot pool labels."""
        if self.params.seed_labels == "oracle":
            x = seeds.x[:budget]
            return x, ask(x, "label seeds")
        if seeds.y.dtype.is_floating_point or int(seeds.y.min()) < 0 or int(seeds.y.max()) >= num_classes:
            raise InvalidArgument(
                f"seed_labels=truth needs pool labels in 0…{num_classes - 1}; "
                "use seed_labels=oracle for a pool without the victim's labels"
            )
        return seeds.x, F.one_hot(seeds.y, num_classes).float()

    @timed
    def run(
        self,
        oracle: Oracle,
        pool: TensorData,
        surrogate: Classifier,
        *,
        train: TrainConfig | None = None,
        progress: bool | None = None,
    ) -> ExtractionResult:
        p = self.params
        train = train or TrainConfig()
        pool = self.attacker_data(pool, train.seed)
        seeds = pool.subset(draw_indices(len(pool), p.seeds, train.seed))
        budget = self.plan_budget(oracle, self.planned_queries(len(seeds)))
        before = oracle.queries

        def ask(x: torch.Tensor, desc: str) -> torch.Tensor:
            affordable = budget - (oracle.queries - before)
            return self._targets(
                query_all(oracle, x[:affordable], batch_size=p.query_batch, progress=progress, desc=desc)
            )

        x, targets = self._label_seeds(seeds, oracle.num_classes, ask, budget)
        history = []
        for rho in range(p.rounds):
            result = fit(
                surrogate,
                TensorData(x, targets),
                train.replace(seed=train.seed + rho),
                loss_fn=soft_cross_entropy,
                progress=progress,
                desc=f"substitute round {rho + 1}/{p.rounds}",
            )
            history.append(
                {
                    "round": rho + 1,
                    "set_size": len(x),
                    "queries": oracle.queries - before,
                    "final_loss": result.history[-1]["loss"] if result.history else None,
                }
            )
            if rho == p.rounds - 1 or oracle.queries - before >= budget:
                break
            new_x = jacobian_step(surrogate, x, targets.argmax(dim=1), self.step_size(rho))
            new_targets = ask(new_x, f"label augmentation {rho + 1}")
            x, targets = torch.cat([x, new_x[: len(new_targets)]]), torch.cat([targets, new_targets])
        return ExtractionResult(
            surrogate,
            oracle.queries - before,
            0.0,
            {
                "rounds": history,
                "transfer_set": len(x),
                "seeds": len(seeds),
                "seed_labels": p.seed_labels,
                "planned_queries": self.planned_queries(len(seeds)),
            },
        )
