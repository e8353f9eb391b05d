"""Hinton distillation with true labels: the strongest functionality-stealing baseline of the margin paper.

Papers: Kim et al., "Margin-based Neural Network Watermarking" (ICML 2023, Eq. 4 and Appendix B.2, Eq. 7); Hinton,
Vinyals and Dean, "Distilling the Knowledge in a Neural Network" (2015).

The thief holds labelled data from the owner's task (the margin paper's distillation uses the victim's
own training set; here, whatever labelled pool the thief passes — the standard split's attacker pool
is drawn from the same distribution). It queries the victim on those inputs and trains the surrogate
(the student) with Eq. 7:

    (1 − α) · CE(σ(z_s), y) + 2αT² · KL(σ(z_t / T) ‖ σ(z_s / T))

This attack legitimately uses the pool's **true labels** ``y``: that is what distinguishes it from
soft-label extraction. Pass a labelled pool of the victim's task (``TensorData``): a bare tensor of inputs
has no labels (``copycatch.steal`` gives it zeros), and an out-of-distribution set's labels name other
classes — labels outside the victim's classes are refused, but in-range labels of another task (MNIST
digits against a Fashion-MNIST victim) cannot be told apart; use ``soft-label`` for such pools.

The oracle returns probabilities, not logits. The teacher logits are recovered as log-probabilities,
z_t = log p_t, which is exact up to a per-row constant that the softmax ignores; probabilities that are
exactly zero (label-only or quantised APIs) are clamped to the smallest positive float first.

Parameters (defaults):
    alpha (0.7): α, weight of the distillation term (Eq. 7, Hinton et al.'s value used by the paper).
    temperature (20.0): T (Eq. 7).
    budget (None): queries to spend; None = one per attacker-pool input (at most one query per input).
    query_batch (256): inputs per oracle call.
    shuffle (True): draw the queried inputs at random from the pool (seeded by the training seed).
    data_fraction (1.0): γ, the share of the attacker pool the thief holds.

Deviations: Eq. 7 writes KL(σ(z_s/T), σ(z_t/T)); as in Hinton et al. and the authors' ``distill.py``
(``F.kl_div(log_softmax(s/T), softmax(t/T))``) the divergence is taken from the teacher to the student.
The authors' code uses 0.3·CE + 0.7·KL at T = 1 with no T² factor; we follow the paper's Eq. 7
(α = 0.7, T = 20, factor 2αT²).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ...core.errors import InvalidArgument
from ...data.base import TensorData
from ...oracles.base import Oracle
from .base import TransferSetAttack, register_extraction


def distillation_loss(alpha: float, temperature: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Eq. 7 as a loss on packed targets: each row is the teacher's probabilities followed by the true label."""
    tiny = torch.finfo(torch.float32).tiny

    def loss(logits: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        teacher, labels = packed[:, :-1], packed[:, -1].long()
        teacher_soft = torch.softmax(teacher.clamp_min(tiny).log() / temperature, dim=1)
        kl = F.kl_div(F.log_softmax(logits / temperature, dim=1), teacher_soft, reduction="batchmean")
        return (1 - alpha) * F.cross_entropy(logits, labels) + 2 * alpha * temperature**2 * kl

    return loss


@register_extraction
class DistillationExtraction(TransferSetAttack):
    """Hinton distillation with the pool's true labels: (1−α)·CE(label) + 2αT²·KL(victim ‖ surrogate at T)."""

    name = "distillation"

    @dataclasses.dataclass(frozen=True)
    class Params(TransferSetAttack.Params):
        alpha: float = 0.7
        temperature: float = 20.0

        def validate(self) -> None:
            super().validate()
            if not 0.0 <= self.alpha <= 1.0:
                raise InvalidArgument(f"alpha must be in [0, 1], got alpha={self.alpha}")
            if not self.temperature > 0:
                raise InvalidArgument(f"temperature must be positive, got temperature={self.temperature}")

    def transfer_set(
        self, inputs: TensorData, answers: torch.Tensor, oracle: Oracle
    ) -> tuple[TensorData, Any, dict[str, Any]]:
        labels = inputs.y
        if labels.dtype.is_floating_point or labels.ndim != 1:
            raise InvalidArgument(
                "distillation needs the pool's true class labels (int64, one per input), "
                f"got a {labels.dtype} tensor of shape {tuple(labels.shape)}"
            )
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= oracle.num_classes):
            raise InvalidArgument(
                f"distillation needs true labels in 0…{oracle.num_classes - 1}, the victim's classes; "
                f"the pool has labels {int(labels.min())}…{int(labels.max())} (an out-of-distribution "
                "pool has no labels of the victim's task: use soft-label)"
            )
        packed = torch.cat([answers, labels.to(answers.dtype).unsqueeze(1)], dim=1)
        return (
            TensorData(inputs.x, packed),
            distillation_loss(self.params.alpha, self.params.temperature),
            {"uses_true_labels": True},
        )
