"""Extraction with a margin: query points pushed towards the victim's decision boundary (margin paper, Eq. 8).

Paper: Kim et al., "Margin-based Neural Network Watermarking" (ICML 2023, Appendix D.2, Eq. 8, Table 6):

    min_θ̂ E_x̃ [ ℓ̃( ĥ(x̃ + δ̃), h(x̃ + δ̃) ) ],   δ̃ = argmax_{‖δ‖ ≤ ε} ℓ̃( h(x̃ + δ), h(x̃) ),

i.e. soft-label extraction (ℓ̃ = KL) on inputs perturbed, within an L∞ ball, to change the victim's answer
as much as possible — towards its decision boundary, where the margin watermark lives.

Black-box choice. The inner argmax needs the victim's gradient, which the thief does not have. We run the
PGD on the thief's **own surrogate**: δ̃ maximises KL(h(x̃) ‖ ĥ(x̃ + δ)), the divergence between the
victim's recorded answer at the clean point and the surrogate at the perturbed one (``adversarial.pgd``).
Adversarial directions transfer between models trained to agree (Papernot et al. 2017), and the surrogate
improves as it goes. A finite-difference estimate of the victim's gradient would cost 2·d queries per step
(d = 784 on Fashion-MNIST) and spend the budget on gradient estimation rather than on training points,
so we do not use it.

Procedure. Spend ``clean_fraction`` of the budget on clean pool inputs (their answers are h(x̃) and train
a first surrogate); then, for each of ``rounds`` rounds, perturb clean inputs by PGD on the current
surrogate, query the victim on x̃ + δ̃, add those pairs to the transfer set and continue training the
surrogate on everything collected.

Parameters (defaults):
    eps (5/255): ε, L∞ radius of δ (the paper's margin radius, Sec. 5).
    steps (5): PGD steps (the paper's K).
    step_size (1/255): PGD step.
    rand_init (True): start PGD at a random point of the ball (so repeated inputs get different δ).
    clean_fraction (0.5): share of the budget spent on clean inputs (at least one query).
    rounds (2): perturbation rounds, each preceded by training the surrogate on what is known so far.
    query_batch (256): inputs per oracle call.
    budget (None): queries to spend; None = one per attacker-pool input.
    data_fraction (1.0): γ, the share of the attacker pool the thief holds.

Deviations: the paper trains only on perturbed points and takes δ̃ on the victim; here δ̃ comes from the
surrogate (see above) and the clean answers stay in the transfer set (they were paid for and anchor
the PGD). The surrogate is trained ``rounds + 1`` times with the thief's ``TrainConfig``, continuing
from its previous weights.
"""

from __future__ import annotations

import dataclasses

import torch

from ...core.errors import InvalidArgument
from ...data.base import TensorData
from ...models.adversarial import pgd
from ...models.base import Classifier
from ...models.train import TrainConfig, fit, soft_cross_entropy
from ...oracles.base import Oracle, query_all
from .base import ExtractionAttack, ExtractionResult, answers_to_targets, draw_indices, register_extraction, timed


@register_extraction
class MarginExtraction(ExtractionAttack):
    """Margin paper Eq. 8: soft-label extraction on inputs pushed by PGD (on the thief's surrogate) to the boundary."""

    name = "margin-extraction"
    modalities = ("image",)  # it perturbs inputs by PGD in [0, 1] pixel space

    @dataclasses.dataclass(frozen=True)
    class Params(ExtractionAttack.Params):
        eps: float = 5 / 255
        steps: int = 5
        step_size: float = 1 / 255
        rand_init: bool = True
        clean_fraction: float = 0.5
        rounds: int = 2
        query_batch: int = 256

        def validate(self) -> None:
            super().validate()
            if not self.eps >= 0:
                raise InvalidArgument(f"eps must be >= 0, got eps={self.eps}")
            if not self.step_size > 0:
                raise InvalidArgument(f"step_size must be positive, got step_size={self.step_size}")
            for name in ("steps", "rounds", "query_batch"):
                if getattr(self, name) < 1:
                    raise InvalidArgument(f"{name} must be >= 1, got {name}={getattr(self, name)}")
            if not 0.0 < self.clean_fraction <= 1.0:
                raise InvalidArgument(f"clean_fraction must be in (0, 1], got clean_fraction={self.clean_fraction}")

    def split_budget(self, budget: int, pool_size: int) -> tuple[int, list[int]]:
        """(clean queries, perturbed queries per round) for a budget; every query of the budget is planned."""
        clean = min(pool_size, budget, max(1, round(budget * self.params.clean_fraction)))
        rest = budget - clean
        rounds = self.params.rounds
        return clean, [rest // rounds + (1 if r < rest % rounds else 0) for r in range(rounds)]

    def _perturbed_round(
        self,
        oracle: Oracle,
        surrogate: Classifier,
        clean_x: torch.Tensor,
        clean_answers: torch.Tensor,
        clean_targets: torch.Tensor,
        r: int,
        n: int,
        gen: torch.Generator,
        *,
        seed: int,
        progress: bool | None,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """Round ``r``: PGD on the surrogate from ``n`` clean points whose victim answer is known (cycled through if
        the round needs more), then the victim's answers on the perturbed points."""
        p = self.params
        anchor = draw_indices(len(clean_x), n, seed + 1 + r, refill=True)
        perturbed = pgd(
            surrogate,
            clean_x[anchor],
            p.eps,
            p.step_size,
            p.steps,
            y=clean_targets[anchor],
            rand_init=p.rand_init,
            generator=gen,
            loss_fn=soft_cross_entropy,
        )
        answers = query_all(
            oracle, perturbed, batch_size=p.query_batch, progress=progress, desc=f"query perturbed {r}/{p.rounds}"
        )
        flipped = (answers.argmax(1) != clean_answers[anchor].argmax(1)).float().mean().item()
        return perturbed, answers, {"round": r, "queries": len(perturbed), "victim_label_changed": flipped}

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
        budget = self.plan_budget(oracle, len(pool))
        n_clean, per_round = self.split_budget(budget, len(pool))
        before = oracle.queries
        clean_x = pool.x[draw_indices(len(pool), n_clean, train.seed)]
        clean_answers = query_all(oracle, clean_x, batch_size=p.query_batch, progress=progress, desc="query clean")
        clean_targets = answers_to_targets(clean_answers)
        xs, targets = [clean_x], [clean_targets]
        gen = torch.Generator().manual_seed(train.seed + 1)
        history = []
        for r, n in enumerate([0, *per_round]):
            if n:
                perturbed, answers, record = self._perturbed_round(
                    oracle,
                    surrogate,
                    clean_x,
                    clean_answers,
                    clean_targets,
                    r,
                    n,
                    gen,
                    seed=train.seed,
                    progress=progress,
                )
                history.append(record)
                xs.append(perturbed)
                targets.append(answers_to_targets(answers))
            if n or r == 0:
                fit(
                    surrogate,
                    TensorData(torch.cat(xs), torch.cat(targets)),
                    train.replace(seed=train.seed + r),
                    loss_fn=soft_cross_entropy,
                    progress=progress,
                    desc=f"train surrogate {r + 1}/{p.rounds + 1}",
                )
        return ExtractionResult(
            surrogate,
            oracle.queries - before,
            0.0,
            {
                "clean_queries": n_clean,
                "perturbed_queries": sum(per_round),
                "rounds": history,
                "transfer_set": sum(len(x) for x in xs),
                "gradient_source": "surrogate",
            },
        )
