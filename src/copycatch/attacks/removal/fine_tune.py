"""Fine-tuning: keep training the stolen model on the thief's own data.

Papers: MEA-Defender (Lv et al., "MEA-Defender: A Robust Watermark against Model Extraction Attack", IEEE S&P 2024),
§5.5 ("the adversaries can reuse the samples that were previously used to query the victim model to further
fine-tune the extracted model") and Appendix E; frontier stitching (Le Merrer, Pérez and Trédan, "Adversarial
frontier stitching for remote neural network watermarking", Neural Computing and Applications 2020), §4.4. The four
variants come from Adi et al. (USENIX Security 2018, "Turning your weakness into a strength"): FTLL
(``layers=last``), FTAL (``layers=all``), RTLL (``layers=last, reinit_last=true``) and RTAL
(``layers=all, reinit_last=true``).

Labels: ``labels=data`` trains on the labels that come with the thief's data — true labels, or
the oracle's soft answers when the caller passes them as an N×C matrix (fine-tuning *with*
oracle labels); ``labels=self`` relabels the inputs with the stolen model's own predictions
(fine-tuning *without* any labels, pure self-distillation).

Parameters (defaults):
    epochs (None): fine-tuning epochs; None uses the training configuration's.
    lr (None): learning rate; None uses the training configuration's.
    labels ("data"): "data" or "self" (see above).
    layers ("all"): "all" trains every layer, "last" only the final linear layer.
    reinit_last (false): re-initialise the final linear layer first (RTLL/RTAL).

Deviations: none beyond the papers' silence on hyper-parameters: the optimiser, batch size and
seed come from the training configuration (Adam 1e-3 by default).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import nn

from ...core.errors import InvalidArgument
from ...models.train import fit
from .base import LabelSource, RemovalAttack, TrainingParams, finetune_config, register_removal, thief_targets


def last_linear(model: nn.Module) -> nn.Linear:
    """The final linear layer of a copycatch classifier (the decision layer)."""
    layers = [m for m in model.classifier.modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise InvalidArgument("the model's classifier has no linear layer")
    return layers[-1]


@register_removal
class FineTune(RemovalAttack):
    """Fine-tune on the thief's data (its labels, the oracle's answers, or self-labels); FTAL/FTLL/RTLL/RTAL."""

    name = "fine-tune"
    modalities = ("image", "text", "audio")  # trains on the thief's inputs as they are: nothing image-specific

    @dataclasses.dataclass(frozen=True)
    class Params(TrainingParams):
        labels: LabelSource = "data"
        layers: Literal["all", "last"] = "all"
        reinit_last: bool = False

    def apply(self, model, data, *, train, progress=None):
        p = self.params
        targets = thief_targets(model, data, p.labels)
        head = last_linear(model)
        config = finetune_config(train, epochs=p.epochs, lr=p.lr)
        if p.reinit_last:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                head.reset_parameters()
        parameters = head.parameters() if p.layers == "last" else model.parameters()
        result = fit(model, targets, config, parameters=parameters, progress=progress, desc="fine-tune")
        variant = {("all", False): "FTAL", ("last", False): "FTLL", ("all", True): "RTAL", ("last", True): "RTLL"}
        return {
            "variant": variant[(p.layers, p.reinit_last)],
            "examples": len(targets),
            "training": result.to_dict(),
            "summary": f"{variant[(p.layers, p.reinit_last)]}, {config.epochs} epochs on {len(targets)} "
            f"{'self-labelled' if p.labels == 'self' else 'labelled'} examples",
        }
