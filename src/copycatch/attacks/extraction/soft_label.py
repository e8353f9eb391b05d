"""Soft-label extraction (Tramèr et al., USENIX Security 2016; Orekondy et al., CVPR 2019).

The thief queries the oracle on its own inputs (the attacker pool, or any
out-of-distribution set), records the returned posteriors, and trains the
surrogate to match them with KL(victim ‖ surrogate) — Eq. 5 of the margin paper.

Parameters (defaults):
    budget (None): queries to spend; None = one per attacker-pool input.
    query_batch (256): inputs per oracle call.
    shuffle (True): draw the queried inputs at random from the pool (seeded by the training seed).
    data_fraction (1.0): γ, the share of the attacker pool the thief holds (DynaMarks, Sec. IV).

The query set is whatever pool the thief passes: its share of the owner's
distribution, or an out-of-distribution set (``copycatch steal --queries mnist-5k``
against a Fashion-MNIST victim; the margin paper's "different source" extraction).
"""

from __future__ import annotations

import dataclasses

import torch

from ...data.base import TensorData
from ...models.base import Classifier
from ...models.train import TrainConfig, fit, soft_cross_entropy
from ...oracles.base import Oracle, query_all
from .base import ExtractionAttack, ExtractionResult, register_extraction, timed


@register_extraction
class SoftLabelExtraction(ExtractionAttack):
    """Query the oracle on the thief's data and fit the surrogate to the returned posteriors (KL)."""

    name = "soft-label"

    @dataclasses.dataclass(frozen=True)
    class Params(ExtractionAttack.Params):
        query_batch: int = 256
        shuffle: bool = True

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
        train = train or TrainConfig()
        pool = self.attacker_data(pool, train.seed)
        budget = self.plan_budget(oracle, len(pool))
        if self.params.shuffle:
            order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(train.seed))
        else:
            order = torch.arange(len(pool))
        x = pool.x[order[:budget]]
        before = oracle.queries
        answers = query_all(oracle, x, batch_size=self.params.query_batch, progress=progress, desc="query victim")
        spent = oracle.queries - before
        result = fit(
            surrogate,
            TensorData(x, answers),
            train,
            loss_fn=soft_cross_entropy,
            progress=progress,
            desc="train surrogate",
        )
        return ExtractionResult(surrogate, spent, 0.0, {"training": result.to_dict(), "transfer_set": len(x)})
