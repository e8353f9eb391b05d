"""Overwriting by adversarial fine-tuning: fine-tune the stolen model on FGSM adversaries of the thief's data.

Paper: frontier stitching (Le Merrer, Pérez and Trédan, "Adversarial frontier stitching for remote neural network
watermarking", Neural Computing and Applications 2020), §4.4 "Overwriting attack via adversarial fine-tuning": 1,000
images are turned into adversaries with the fast gradient sign method and the leaked model is fine-tuned on them
with their correct labels (adversarial training), which moves decision boundaries near data — where a frontier
watermark lives.

Each of ``n`` inputs drawn (seeded) from the thief's data becomes x + ε·sign(∇ₓ CE(f(x), y)),
clipped to [0, 1], with y its label; the model trains on these adversaries, labelled y
(``mix_clean=true`` adds the clean originals too).

Parameters (defaults):
    n (1000): adversaries generated (paper: 1,000); capped at the data size.
    eps (0.25): FGSM step on the [0, 1] scale (the paper's default ε for FGSM).
    labels ("data"): "data" (the thief's labels; the paper's setting) or "self" (the model's own
        predictions, no labels needed).
    mix_clean (false): train on the clean inputs as well as their adversaries.
    epochs (None), lr (None): None uses the training configuration's.

Deviations: the adversaries are computed once against the model before fine-tuning (as in the
paper), not regenerated every epoch as in adversarial training proper. The paper does not give
ε or the schedule of the overwriting run; we use its FGSM default.
"""

from __future__ import annotations

import dataclasses

import torch

from ...core.errors import InvalidArgument
from ...data.base import TensorData
from ...models.adversarial import fgsm
from ...models.train import fit
from .base import (
    LabelSource,
    RemovalAttack,
    TrainingParams,
    finetune_config,
    hard_labels,
    register_removal,
    thief_targets,
)


@register_removal
class AdversarialOverwrite(RemovalAttack):
    """Overwriting: fine-tune on FGSM adversaries of the thief's data with correct labels (frontier stitching 4.4)."""

    name = "adv-overwrite"

    @dataclasses.dataclass(frozen=True)
    class Params(TrainingParams):
        n: int = 1000
        eps: float = 0.25
        labels: LabelSource = "data"
        mix_clean: bool = False

        def validate(self) -> None:
            if self.n < 1:
                raise InvalidArgument(f"n (adversaries) must be >= 1, got {self.n}")
            if not 0 < self.eps <= 1:
                raise InvalidArgument(f"eps must be in (0, 1], got eps={self.eps}")
            super().validate()

    def apply(self, model, data, *, train, progress=None):
        p = self.params
        config = finetune_config(train, epochs=p.epochs, lr=p.lr)
        pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(config.seed))[: p.n]
        chosen = thief_targets(model, data.subset(pick), p.labels)
        y = hard_labels(chosen.y)
        device = next(model.parameters()).device
        model.eval()
        chosen_x = chosen.x
        adversaries = torch.cat(
            [
                fgsm(model, chosen_x[i : i + 256].to(device), p.eps, y=y[i : i + 256].to(device)).cpu()
                for i in range(0, len(chosen), 256)
            ]
        )
        with torch.no_grad():
            fooled = float((model(adversaries.to(device)).argmax(1).cpu() != y).float().mean())
        train_set = TensorData(adversaries, chosen.y)
        if p.mix_clean:
            train_set = TensorData.concat([chosen, train_set])
        result = fit(model, train_set, config, progress=progress, desc="adversarial fine-tune")
        return {
            "adversaries": len(adversaries),
            "fooled_before": fooled,
            "training": result.to_dict(),
            "summary": f"fine-tuned {config.epochs} epochs on {len(adversaries)} FGSM adversaries "
            f"(eps={p.eps:g}; {fooled:.0%} fooled the model before)",
        }
